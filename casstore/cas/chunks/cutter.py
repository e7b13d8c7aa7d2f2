"""Cutting a canonical TAR stream into chunks, as it is written (policy.py says where).

The cutter follows the TAR's structure as the bytes go by (headers are 512-byte blocks that
give each member's size), so it can cut a large file's data apart from its header, in fixed
blocks from the file's first byte, and everything else by content (FastCDC). Where the
stream does not parse as a TAR (a header whose numbers do not read), the rest is cut by
content: the cut points only decide what can be shared, never what is stored, since the
chunks concatenated are always the stream."""

from __future__ import annotations

import mmap
from typing import Callable

from pyfastcdc import FastCDC

from casstore.cas.backends.base import ChunkData
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.tar.header import BLOCK, FILE_KINDS
from casstore.cas.tar.read import number_field
from casstore.errors import CorruptBlob

Emit = Callable[[ChunkData], None]  # a chunk, handed over: the cutter keeps no reference
_ZERO_BLOCK = bytes(BLOCK)
POOL_MAX = 32  # free blocks kept for reuse (64 MiB at the default block size)


class BlockPool:
    """Page-aligned buffers of one block's size, reused. Why: a fresh 2 MiB buffer for every
    block of a large file costs a page fault per 4 KiB on first touch, which was most of a
    chunked first persist's extra time on this VM (docs/performance.md); and an mmap can go
    to the disk with O_DIRECT as it is (local_ingest.direct_write). A block given back must
    no longer be referenced by anyone: the writer gives back a batch's blocks only once the
    datastore has taken their bytes (ChunkStager.add returned)."""

    def __init__(self, size: int):
        self.size = size
        self._free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        return self._free.pop() if self._free else mmap.mmap(-1, self.size)

    def give_back(self, chunk: ChunkData) -> None:
        """Keep `chunk` for reuse if it is one of this pool's blocks (other chunks are
        left to the garbage collector)."""
        if isinstance(chunk, mmap.mmap) and len(chunk) == self.size and len(self._free) < POOL_MAX:
            self._free.append(chunk)


class TarCutter:
    """Feed it the stream (`write`), then `finish`; every chunk goes to `emit`, in order."""

    def __init__(self, policy: ChunkPolicy, emit: Emit, pool: BlockPool | None = None):
        self._policy = policy
        self._emit = emit
        self.pool = pool or BlockPool(policy.block)  # large files' blocks are taken from it
        self._cdc = FastCDC(policy.cdc_avg, min_size=policy.cdc_min, max_size=policy.cdc_max)
        self._cut_at = 2 * policy.cdc_max
        self._pending = bytearray()  # bytes to cut by content
        self._head = bytearray()  # a header block being gathered
        self._skip = 0  # bytes of member data (and padding) before the next header
        self._file_left = 0  # bytes left of a large file's data, cut in blocks
        self._slot: mmap.mmap | None = None  # a block of a large file being gathered
        self._filled = 0
        self._lost = False  # the stream stopped parsing as a TAR: cut the rest by content

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            if self._file_left:
                view = self._take_file(view)
            elif self._lost:
                self._pending += view
                break
            elif self._head or (not self._skip and len(view) < BLOCK):
                view = self._take_header(view)
            else:
                view = self._take_members(view)
        self._cut_some()  # once a write, not once a member: the cuts are the same (see _cut_some)

    def finish(self) -> None:
        self._emit_block()
        self._pending += self._head
        self._head.clear()
        self._cut_all()

    def _take_members(self, view: memoryview) -> memoryview:
        """Members' data and headers parsed in place, up to a large file's data, a header
        split across writes or the end of `view`, then added to what is cut by content in one
        copy: a folder of small files costs one append a write, not two a member."""
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                take = min(end - pos, self._skip)
                self._skip -= take
                pos += take
            elif end - pos >= BLOCK:
                pos += BLOCK
                self._after_header(view[pos - BLOCK:pos])
                if self._file_left or self._lost:
                    break
            else:
                break
        self._pending += view[:pos]
        if self._file_left:
            self._cut_all()  # a large file's header ends what is cut by content before its blocks
        return view[pos:]

    def _take_header(self, view: memoryview) -> memoryview:
        """A header block that a write boundary splits, gathered in `_head`."""
        need = BLOCK - len(self._head)
        self._head += view[:need]
        if len(self._head) < BLOCK:
            return view[need:]
        block = bytes(self._head)
        self._head.clear()
        self._pending += block
        self._after_header(memoryview(block))
        if self._file_left:
            self._cut_all()
        return view[need:]

    def _after_header(self, block: memoryview) -> None:
        """What the header `block` says follows it: a large file's data (cut in blocks), a
        small member's data (skipped into what is cut by content), or nothing parseable."""
        if block == _ZERO_BLOCK:
            return
        try:
            size = number_field(bytes(block[124:136]))
        except CorruptBlob:
            self._lost = True
            return
        if bytes(block[156:157]) in FILE_KINDS and size >= self._policy.large_file:
            self._file_left = size
            self._skip = -size % BLOCK
        else:
            self._skip = size + -size % BLOCK

    def _take_file(self, view: memoryview) -> memoryview:
        """A large file's data in blocks, each copied once into a block of the pool (which
        the writer gives back once it is stored), emitted as it is."""
        block_size = self._policy.block
        take = min(len(view), self._file_left)
        self._file_left -= take
        piece, view = view[:take], view[take:]
        while piece:
            if self._slot is None:
                self._slot = self.pool.take()
            n = min(len(piece), block_size - self._filled)
            self._slot[self._filled:self._filled + n] = piece[:n]
            self._filled += n
            piece = piece[n:]
            if self._filled == block_size:
                self._emit_block()
        if not self._file_left:
            self._emit_block()
        return view

    def _emit_block(self) -> None:
        if self._slot is not None and self._filled:
            slot, filled, self._slot, self._filled = self._slot, self._filled, None, 0
            if filled == len(slot):
                self._emit(slot)
            else:  # a file's last, short block: its own bytes, and the block back to the pool
                self._emit(bytes(memoryview(slot)[:filled]))
                self.pool.give_back(slot)

    def _cut_some(self) -> None:
        """Cut what is pending once there is plenty: every chunk but the last, which the
        end of the buffer may have cut short (FastCDC's cuts depend only on the bytes
        from a chunk's start, so cutting in pieces gives the cuts of the whole)."""
        if len(self._pending) < self._cut_at:
            return
        last = 0
        for chunk in self._cdc.cut_buf(self._pending):
            if chunk.offset + chunk.length == len(self._pending):
                last = chunk.offset
                break
            self._emit(bytes(chunk.data))
        self._pending = bytearray(memoryview(self._pending)[last:])

    def _cut_all(self) -> None:
        if self._pending:
            for chunk in self._cdc.cut_buf(self._pending):
                self._emit(bytes(chunk.data))
            self._pending = bytearray()
