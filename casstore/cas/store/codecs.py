"""How a blob's canonical TAR is stored: "none" keeps it as it is (`.tar`), "zstd" as one
zstd frame (`.tar.zst`) that records the TAR's size; and reading a zstd copy back."""

from __future__ import annotations

from typing import BinaryIO

import zstandard

from casstore.errors import InvalidInput

CODECS = ("none", "zstd")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_MAX_FRAME_HEADER = 18


def check_codec(codec: object, level: object, where: str = "") -> None:
    """InvalidInput unless `codec` is known and `level` a zstd level (1-22)."""
    if codec not in CODECS:
        raise InvalidInput(f"{where}codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
        raise InvalidInput(f"{where}level must be an integer from 1 to 22, got {level!r}")


def decompressed(f: BinaryIO, read_size: int) -> zstandard.ZstdDecompressionReader:
    """The TAR bytes of a zstd copy open in `f`; closing the reader leaves `f` open."""
    return zstandard.ZstdDecompressor().stream_reader(f, read_size=read_size, closefd=False)
