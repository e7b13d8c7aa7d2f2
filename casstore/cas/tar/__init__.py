"""The canonical TAR format (casstore-tar-1, docs/tar-format.md): choose the files of a folder
(match), list them (scan), the header format (header), write the stream (write), read one
back, bounded (read), judge each member (rules), extract safely, staged (extract)."""
