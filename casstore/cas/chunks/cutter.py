"""Cutting a canonical TAR stream into chunks, as it is written (policy.py says where).

The cutter follows the TAR's structure as the bytes go by (headers are 512-byte blocks that
give each member's size), so it can cut a large file's data apart from its header, in fixed
blocks from the file's first byte, and everything else at member boundaries: before a header
once the chunk holds `cdc_min` bytes, where a hash of that header says so (about one chunk
of `cdc_avg` bytes, whatever the members' sizes), and always once it holds `cdc_max`. The
cuts depend only on the bytes (a header's hash and the sizes of the members before it), so a
small file added or removed changes the chunk around it only; and they cost no pass over the
data, which content-defined chunking of every byte did (about as much CPU as the disk
write it saves). A stretch between two such cuts that grows over `cdc_max` (a member larger
than that under the large-file line), and a stream that stops parsing as a TAR (a header
whose numbers do not read), are cut by content (FastCDC). The cut points only decide what
can be shared, never what is stored: the chunks concatenated are always the stream."""

from __future__ import annotations

import mmap
from typing import Callable

from pyfastcdc import FastCDC
from xxhash import xxh3_64_intdigest

from casstore.cas.backends.base import ChunkData
from casstore.cas.buffers import BufferPool
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.tar.header import BLOCK, FILE_KINDS
from casstore.cas.tar.read import number_field
from casstore.errors import CorruptBlob

Emit = Callable[[ChunkData], None]  # a chunk, handed over: the cutter keeps no reference
_FILE_KIND_CODES = frozenset(kind[0] for kind in FILE_KINDS)


class TarCutter:
    """Feed it the stream (`write`), then `finish`; every chunk goes to `emit`, in order."""

    def __init__(self, policy: ChunkPolicy, emit: Emit, pool: BufferPool | None = None):
        self._policy = policy
        self._emit = emit
        self.pool = pool or BufferPool(policy.block)  # large files' blocks, given back by the writer once stored
        self._cdc = FastCDC(policy.cdc_avg, min_size=policy.cdc_min, max_size=policy.cdc_max)
        self._cut_at = 2 * policy.cdc_max
        self._span = max(1, policy.cdc_avg - policy.cdc_min)
        self._pending = bytearray()  # bytes of the chunk being gathered
        self._stretch = 0  # bytes since the last cut at a member boundary (pending and cut by content)
        self._record = 0  # bytes of the member whose header came last (header, data, padding)
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
                self._append(view)
                break
            elif self._head or (not self._skip and len(view) < BLOCK):
                view = self._take_header(view)
            else:
                view = self._take_members(view)
        self._cut_some()  # once a write, not once a member: the cuts are the same (see _cut_some)

    def finish(self) -> None:
        self._emit_block()
        self._append(self._head)
        self._head.clear()
        self._cut_stretch()

    def _take_members(self, view: memoryview) -> memoryview:
        """Members' data and headers parsed in place, up to a large file's data, a header
        split across writes or the end of `view`, added to the chunk being gathered in one
        copy a chunk: a folder of small files costs one append a write, not two a member."""
        pos, end, start = 0, len(view), 0
        while pos < end:
            if self._skip:
                take = min(end - pos, self._skip)
                self._skip -= take
                pos += take
            elif end - pos >= BLOCK:
                block = view[pos:pos + BLOCK]
                if self._cuts_before(block, self._stretch + pos - start):
                    self._append(view[start:pos])
                    self._cut_stretch()
                    start = pos
                pos += BLOCK
                self._after_header(block)
                if self._file_left or self._lost:
                    break
            else:
                break
        self._append(view[start:pos])
        if self._file_left:
            self._cut_stretch()  # a large file's header ends the chunk before its blocks
        return view[pos:]

    def _take_header(self, view: memoryview) -> memoryview:
        """A header block that a write boundary splits, gathered in `_head`."""
        need = BLOCK - len(self._head)
        self._head += view[:need]
        if len(self._head) < BLOCK:
            return view[need:]
        block = memoryview(bytes(self._head))
        self._head.clear()
        if self._cuts_before(block, self._stretch):
            self._cut_stretch()
        self._append(block)
        self._after_header(block)
        if self._file_left:
            self._cut_stretch()
        return view[need:]

    def _cuts_before(self, header: memoryview, stretch: int) -> bool:
        """Whether the chunk ends before `header`, `stretch` bytes after the last cut at a
        member boundary: never under cdc_min, always from cdc_max, in between with a
        chance of (the last member's bytes) / (cdc_avg - cdc_min), drawn from the header's
        hash, so that a chunk holds about cdc_avg bytes."""
        if stretch < self._policy.cdc_min:
            return False
        if stretch >= self._policy.cdc_max:
            return True
        return xxh3_64_intdigest(header) * self._span < self._record << 64

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        self._stretch += len(data)

    def _cut_stretch(self) -> None:
        """Cut at a member boundary (or the end): the chunk being gathered is emitted as it
        is, or, if the stretch since the last such cut is over cdc_max, cut by content as
        the whole stretch would be (see _cut_some)."""
        if self._stretch > self._policy.cdc_max:
            self._cut_all()
        elif self._pending:
            chunk, self._pending = self._pending, bytearray()
            self._emit(chunk)
        self._stretch = 0

    def _after_header(self, block: memoryview) -> None:
        """What the header `block` says follows it: a large file's data (cut in blocks), a
        small member's data (skipped into the chunk being gathered), or nothing parseable
        (an end-of-archive block reads as an empty member)."""
        field = bytes(block[124:136])
        try:  # the form casstore writes (11 octal digits and a NUL) read at once, others in full
            size = int(field[:11], 8) if field[11] == 0 and field[:11].isdigit() else number_field(field)
        except (ValueError, CorruptBlob):
            self._lost = True
            return
        if block[156] in _FILE_KIND_CODES and size >= self._policy.large_file:
            self._file_left = size
            self._skip = -size % BLOCK
        else:
            self._skip = size + -size % BLOCK
        self._record = BLOCK + self._skip

    def lend(self, n: int) -> memoryview | None:
        """Where the stream's next bytes go if they are a large file's data (at most `n`,
        and at most the rest of the block being filled); None elsewhere (tar/write.Lender)."""
        if not self._file_left:
            return None
        if self._slot is None:
            self._slot = self.pool.take()
        n = min(n, self._file_left, self._policy.block - self._filled)
        return memoryview(self._slot)[self._filled:self._filled + n]

    def took(self, n: int) -> None:
        """The first `n` bytes of what `lend` gave hold the stream's next bytes."""
        self._filled += n
        self._file_left -= n
        if self._filled == self._policy.block or not self._file_left:
            self._emit_block()

    def _take_file(self, view: memoryview) -> memoryview:
        """A large file's data written to the cutter: copied once into the block `lend`
        gives, as the writer would have read it there; the rest of `view` is returned."""
        while view and self._file_left:
            block = self.lend(len(view))
            assert block is not None
            block[:] = view[:len(block)]
            self.took(len(block))
            view = view[len(block):]
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
