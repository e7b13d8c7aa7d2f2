"""Write the canonical TAR stream (`casstore-tar-1`, docs/tar-format.md) of scanned entries.

`write_tar` streams the headers (`header.py`) and the data of the entries `scan.py` listed
into one or more sinks at once (the digest, the blob being written, the stat cache's head
buffer), in ~1 MiB pieces. Reading and safe extraction are `read.py` and `extract.py`."""

from __future__ import annotations

import io
import os
from typing import Callable, Iterable, Protocol, runtime_checkable

from casstore.cas.tar.header import BLOCK, CHUNK, FILE, end_of_archive, header
from casstore.cas.tar.scan import Entry
from casstore.errors import SourceChanged


class Sink(Protocol):
    """Where a TAR stream goes: a hasher, a file, a buffer (anything with `write`)."""

    def write(self, data: bytes | memoryview, /) -> object: ...


@runtime_checkable
class Lender(Sink, Protocol):
    """A sink that can lend the buffer where the next bytes of the stream go (the chunked
    writer's block of a large file), so that a file's data is read straight into it:
    `lend(n)` gives a writable view of at most `n` bytes, or None; `took(k)` says that its
    first `k` bytes now hold the stream's next bytes (which the other sinks get as usual)."""

    def lend(self, n: int, /) -> memoryview | None: ...

    def took(self, n: int, /) -> None: ...


class BufferedSink:
    """Batches small writes into ~1 MiB chunks: per-call costs of hashers and files add up
    over tens of thousands of small members.

    `buf` is public so that `write_tar` can append headers, small files and padding to it
    directly (and flush once it holds CHUNK bytes) instead of paying a method call for each."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self._sinks = list(sinks)
        self.buf = bytearray()
        self._flushed = 0
        self._lender = next((s for s in self._sinks if isinstance(s, Lender)), None)

    def lend(self, n: int, fallback: memoryview) -> tuple[memoryview, bool]:
        """Where to read the stream's next (at most `n`) bytes, and whether it is lent: a
        lending sink's buffer, or `fallback[:n]`. Flushes first: what is buffered comes
        before them."""
        self.flush()
        lent = self._lender.lend(n) if self._lender is not None else None
        return (lent, True) if lent is not None else (fallback[:n], False)

    def write_read(self, data: memoryview, lent: bool) -> None:
        """`data`, read into what `lend` gave, to every sink (a lender that lent it only
        takes note)."""
        for sink in self._sinks:
            if lent and sink is self._lender:
                self._lender.took(len(data))
            else:
                sink.write(data)
        self._flushed += len(data)

    @property
    def count(self) -> int:
        """Bytes written so far (flushed or not)."""
        return self._flushed + len(self.buf)

    def write(self, data: bytes | memoryview) -> None:
        if len(data) >= CHUNK:
            self.flush()
            self._emit(data)
            self._flushed += len(data)
            return
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self._emit(memoryview(self.buf))
            self._flushed += len(self.buf)
            self.buf = bytearray()

    def _emit(self, data: bytes | memoryview) -> None:
        """Hand `data` to every sink (`buf` as a view of it: sinks take bytes or memoryview)."""
        for sink in self._sinks:
            sink.write(data)


_ZEROS = bytes(BLOCK)


def write_tar(entries: list[Entry], sinks: Iterable[Sink], progress: Callable[[int], None] | None = None) -> int:
    """Stream the canonical TAR of `entries` into every sink; return the bytes written.

    A file that changes size or mtime while it is read raises SourceChanged: the stream
    written so far must then be discarded (callers write to a temp area)."""
    out = BufferedSink(sinks)
    view = memoryview(bytearray(CHUNK))
    for e in entries:
        out.buf += header(e.name, e.kind, e.mode, e.size, e.linkname)
        if e.kind == FILE:
            _copy_file(e, out, view, progress)
        if len(out.buf) >= CHUNK:
            out.flush()
    return finish(out)


def finish(out: BufferedSink) -> int:
    """End the archive written into `out` (end blocks, record padding), flush it and
    return the bytes written in all."""
    out.buf += end_of_archive(out.count)
    out.flush()
    return out.count


def _copy_file(e: Entry, out: BufferedSink, view: memoryview, progress: Callable[[int], None] | None) -> None:
    """Append the data of file member `e` and its padding to `out`.

    A file of at most CHUNK bytes is read with one `os.read` of size + 1 bytes (one byte
    more shows at once that it grew); a larger one in CHUNK pieces through `view`."""
    size = e.size
    try:
        fd = os.open(e.path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SourceChanged(f"{e.path} vanished while it was archived") from exc
    try:
        if 0 < size <= CHUNK:
            data = os.read(fd, size + 1)
            while len(data) < size:  # local file systems read short only at the end; others may
                more = os.read(fd, size + 1 - len(data))
                if not more:
                    raise SourceChanged(f"{e.path} shrank while it was archived")
                data += more
            if len(data) > size:
                raise SourceChanged(f"{e.path} grew while it was archived")
            out.buf += data
            if progress is not None:
                progress(size)
        elif size:
            remaining = size
            while remaining:
                target, lent = out.lend(remaining, view)
                n = os.readv(fd, [target])
                if n == 0:
                    raise SourceChanged(f"{e.path} shrank while it was archived")
                out.write_read(target[:n], lent)
                remaining -= n
                if progress is not None:
                    progress(n)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if after.st_size != size or after.st_mtime_ns != e.mtime_ns:
        raise SourceChanged(f"{e.path} changed while it was archived")
    out.buf += _ZEROS[:-size % BLOCK]


def tar_bytes(entries: list[Entry]) -> bytes:
    """The whole canonical TAR in memory (only for the inline `Archive` type)."""
    buf = io.BytesIO()
    write_tar(entries, [buf])
    return buf.getvalue()

