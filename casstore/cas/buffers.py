"""Reused buffers for chunks. Why: on this VM a fresh 2 MiB buffer costs a page fault per
4 KiB on first touch, about 0.7 s a GB, which was most of a chunked write's and a chunked
load's extra time over a whole blob's (docs/performance.md). A pool hands out page-aligned
buffers (mmaps) of one size and keeps those given back; a local write hands an mmap to the
disk with O_DIRECT as it is (backends/local_ingest.direct_write)."""

from __future__ import annotations

import mmap
import threading

POOL_MAX = 32
"""Free buffers a pool keeps (64 MiB of 2 MiB blocks): more than any write or read holds
at once; a buffer over that is left to the garbage collector."""


class BufferPool:
    """Page-aligned buffers of `size` bytes, reused; safe to share between threads. A buffer
    given back must no longer be referenced by anyone who reads or writes it."""

    def __init__(self, size: int):
        self.size = size
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self.size)

    def give_back(self, buffer: object) -> None:
        """Keep `buffer` for reuse if it is one of this pool's size (anything else, such
        as a chunk's own bytes, is left to the garbage collector)."""
        if isinstance(buffer, mmap.mmap) and len(buffer) == self.size:
            with self._lock:
                if len(self._free) < POOL_MAX:
                    self._free.append(buffer)
