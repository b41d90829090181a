"""The reference model's ring engine: one split virtqueue serving virtio-blk (``rtl/engine.py``).

docs/architecture.md "Ring engine" (virtio 1.2 sections 2.7, 5.2.6) and "Features a build
offers": indirect tables (section 2.7.5.3), EVENT_IDX (sections 2.7.7, 2.7.10), the SEG_MAX and
SIZE_MAX limits, DISCARD and WRITE_ZEROES (section 5.2.6). Every access is a DMA access
(:class:`models.dma.DmaEngine`); rings are read through :mod:`models.virtio`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from models import spec, virtio
from models.hvregs import Halt

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = spec.ADDR_MASK


def vring_need_event(event_idx: int, new: int, old: int) -> bool:
    """Linux ``vring_need_event`` (``include/uapi/linux/virtio_ring.h``, virtio 1.2 section
    2.7.7.2): an interrupt is due if ``used_event`` lies in ``[old, new)`` modulo 2**16."""
    return (new - event_idx - 1) & _U16 < (new - old) & _U16


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor of a walked chain (virtio 1.x section 2.7.5)."""

    index: int  # in the ring's descriptor table, or in the indirect table when ``table``
    addr: int
    len: int
    flags: int
    next: int
    table: bool = False  # read from an indirect table (section 2.7.5.3)

    @property
    def writable(self) -> bool:
        return bool(self.flags & spec.VIRTQ_DESC_F_WRITE)



def _segments(descs: Iterable[Descriptor], start: int, length: int) -> list[tuple[int, int, int]]:
    """Map bytes ``[start, start + length)`` of the concatenation of ``descs`` to accesses.

    Returns ``(virtual address, nbytes, offset in the range)`` per descriptor with a non-empty
    share, in chain order (each share is one DMA access; empty shares make none).
    """
    out: list[tuple[int, int, int]] = []
    end = start + length
    pos = 0
    for d in descs:
        lo = max(start, pos)
        hi = min(end, pos + d.len)
        if hi > lo:
            out.append(((d.addr + (lo - pos)) & _U64, hi - lo, lo - start))
        pos += d.len
        if pos >= end:
            break
    return out



class RingEngine:
    """The engine's rounds, a mixin of :class:`models.device.ReferenceDevice`.

    State (on the device): the queue registers of :class:`models.mmio.MmioRegisters`,
    ``last_avail_idx``, ``used_idx``, ``signalled_used`` and ``avail_event_pub`` (EVENT_IDX),
    ``halted``, ``pending_notify``, the build's ``features``, the disk and the ``completed``
    count. The engine stops by raising :class:`models.hvregs.Halt`.

    INDIRECT_DESC and EVENT_IDX count as negotiated when the build offers them and
    DriverFeatures has the bit at the moment the engine decides (``indirect_negotiated``,
    ``event_idx_negotiated`` are read at each use, not latched); the limits, DISCARD and
    WRITE_ZEROES apply whenever the build offers them.
    """

    def _run(self) -> None:
        """Run rounds until the engine goes idle (nothing pending and no pending notify), halts
        on a fault, or stops for a driver reset."""
        self._running = True
        try:
            while True:
                self._abort = False
                try:
                    while self._round():
                        pass
                except Halt:
                    if not self._abort:
                        return  # fault: halted until a driver reset
                # Idle, or stopped by a driver reset. A notify accepted since (kept pending
                # while the engine ran) starts it again.
                if not self.pending_notify or self.halted:
                    return
                self.pending_notify = False
        finally:
            self._running = False
            self._abort = False

    def _round(self) -> bool:
        """One round (steps 1 to 4). Returns False when the engine goes idle."""
        n = self.queue_num
        ring = virtio.SplitRing(n)
        # 1. Queue check.
        if not 1 <= n <= self.queue_num_max or n & (n - 1):
            raise self._fault(spec.FAULT_BAD_RING, n)
        if self.queue_desc % spec.DESC_ALIGN:
            raise self._fault(spec.FAULT_BAD_RING, self.queue_desc)
        if self.queue_driver % spec.AVAIL_ALIGN:
            raise self._fault(spec.FAULT_BAD_RING, self.queue_driver)
        if self.queue_device % spec.USED_ALIGN:
            raise self._fault(spec.FAULT_BAD_RING, self.queue_device)
        # 2. Poll: avail.flags, avail.idx (section 2.7.6).
        hdr = virtio.AVAIL_HEADER
        avail_flags, avail_idx = hdr.unpack(self.dma_read(self.queue_driver, hdr.size))
        pending = (avail_idx - self.last_avail_idx) & _U16
        if pending > n:
            raise self._fault(spec.FAULT_BAD_RING, avail_idx)
        if pending == 0:
            if self.event_idx_negotiated and self.avail_event_pub != self.last_avail_idx:
                # Section 2.7.10: publish avail_event = the next entry the device wants a
                # notification for; the poll of the next round sees any entry the driver
                # added before reading it.
                addr = (self.queue_device + ring.avail_event) & _U64
                self.dma_write(addr, self.last_avail_idx.to_bytes(2, "little"))
                self.drain()
                self.avail_event_pub = self.last_avail_idx
                return True
            return False
        # 3. Serve the pending entries one at a time.
        for _ in range(pending):
            self._serve_one(n, avail_flags)
        # 4. EVENT_IDX (sections 2.7.7.2, 2.7.10): one interrupt decision per round, after the
        # used index was written and drained.
        if self.event_idx_negotiated:
            raw = self.dma_read((self.queue_driver + ring.used_event) & _U64, 2)
            used_event = int.from_bytes(raw, "little")
            if vring_need_event(used_event, self.used_idx, self.signalled_used):
                self.interrupt_status |= spec.INT_USED_BUFFER
            self.signalled_used = self.used_idx
        return True

    @property
    def indirect_negotiated(self) -> bool:
        """VIRTIO_F_INDIRECT_DESC: offered by the build and in DriverFeatures."""
        return self.features.indirect and bool(
            self.driver_features >> spec.VIRTIO_F_INDIRECT_DESC & 1)

    @property
    def event_idx_negotiated(self) -> bool:
        """VIRTIO_RING_F_EVENT_IDX: offered by the build and in DriverFeatures."""
        return self.features.event_idx and bool(
            self.driver_features >> spec.VIRTIO_RING_F_EVENT_IDX & 1)

    def _walk_chain(self, head: int, n: int) -> list[Descriptor]:
        """Pass 1 (section 2.7.5 / 2.7.13.1): read and validate every descriptor of the chain.

        Returns the chain's descriptors that carry bytes, in chain order: an indirect
        descriptor is replaced by its table's entries (section 2.7.5.3) and is not counted.
        """
        descs: list[Descriptor] = []
        total = 0
        seen_writable = False
        ring = virtio.SplitRing(n)
        limit = n  # the ring's table, then the indirect table's T entries
        table: bytes | None = None  # the indirect table as read, once the walk is in it
        i = head
        while True:
            if i >= limit:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            if len(descs) + 1 > n:  # descriptor number N + 1: a loop
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            if table is None:
                raw = self.dma_read((self.queue_desc + ring.desc(i)) & _U64, virtio.DESC.size)
            else:
                raw = self._table_entry(table, i)
            addr, length, flags, nxt = virtio.DESC.unpack(raw)
            in_table = table is not None
            if flags & spec.VIRTQ_DESC_F_INDIRECT:
                # Section 2.7.5.3.1: only with the feature, one table per descriptor, never
                # with NEXT; a table of whole descriptors, at most the queue size.
                if (not self.indirect_negotiated or in_table
                        or flags & spec.VIRTQ_DESC_F_NEXT
                        or length == 0 or length % spec.DESC_BYTES
                        or length > spec.DESC_BYTES * n or addr + length > 1 << 64):
                    raise self._fault(spec.FAULT_BAD_CHAIN, i)
                # Its WRITE flag is ignored (section 2.7.5.3.2); it moves no byte. The whole
                # table is one DMA access: a fault on it comes before any entry is checked.
                table = self._read_table(addr, length)
                limit = length // spec.DESC_BYTES
                i = 0
                continue
            d = Descriptor(i, addr, length, flags, nxt, in_table)
            if not d.writable and seen_writable:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            if addr + length > 1 << 64:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            total += length
            if total > _U32:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            seen_writable |= d.writable
            descs.append(d)
            if not flags & spec.VIRTQ_DESC_F_NEXT:
                return descs
            i = nxt

    def _read_table(self, addr: int, length: int) -> bytes:
        """The indirect table, ``length`` bytes at ``addr``: one DMA read access (step 3.2)."""
        return self.dma_read(addr, length)

    @staticmethod
    def _table_entry(table: bytes, i: int) -> bytes:
        """Entry ``i`` of an indirect table already read: its bytes ``[16 i, 16 i + 16)``."""
        return table[spec.DESC_BYTES * i : spec.DESC_BYTES * (i + 1)]

    def _over_limits(self, descs: list[Descriptor]) -> bool:
        """Step 3.3: more than ``seg_max + 2`` descriptors (SEG_MAX offered) or one longer than
        ``size_max`` (SIZE_MAX offered); the indirect descriptor is not in ``descs``."""
        seg_max = self.features.seg_limit(self.queue_num_max)
        size_max = self.features.size_max
        return bool((seg_max and len(descs) > seg_max + 2)
                    or (size_max and any(d.len > size_max for d in descs)))

    def _read_range(self, descs: list[Descriptor], start: int, length: int,
                    sink: Callable[[int, bytes], None] | None = None) -> bytes:
        """Read bytes ``[start, start + length)`` of the readable buffers, one access per
        descriptor share; ``sink(offset in range, data)`` per transaction."""
        out = bytearray()
        for addr, size, off in _segments(descs, start, length):
            piece_sink = None
            if sink is not None:

                def piece_sink(o: int, data: bytes, _base: int = off) -> None:
                    sink(_base + o, data)

            out += self.dma_read(addr, size, piece_sink)
        return bytes(out)

    def _write_range(self, descs: list[Descriptor], start: int, data: bytes) -> None:
        """Write ``data`` to bytes ``[start, ...)`` of the writable buffers, one access per
        descriptor share."""
        for addr, size, off in _segments(descs, start, len(data)):
            self.dma_write(addr, data[off : off + size])

    def _discard_write_zeroes(self, req_type: int, readable: list[Descriptor],
                              r_total: int) -> int:
        """Step 3.5 for ``T_DISCARD`` and ``T_WRITE_ZEROES`` (section 5.2.6): one 16-byte
        segment ``struct virtio_blk_discard_write_zeroes``; returns the status."""
        if r_total - spec.BLK_HEADER_BYTES != spec.DWZ_SEGMENT_BYTES:  # max_*_seg = 1
            return spec.VIRTIO_BLK_S_IOERR
        seg = self._read_range(readable, spec.BLK_HEADER_BYTES, spec.DWZ_SEGMENT_BYTES)
        sector, num_sectors, flags = virtio.DWZ_SEGMENT.unpack(seg)
        max_sectors = spec.dwz_max_sectors(self.disk_bytes)
        start, end = sector * spec.SECTOR_SIZE, (sector + num_sectors) * spec.SECTOR_SIZE
        if num_sectors > max_sectors or end > self.disk_bytes:
            return spec.VIRTIO_BLK_S_IOERR
        if flags & ~spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
            return spec.VIRTIO_BLK_S_UNSUPP
        if req_type == spec.VIRTIO_BLK_T_DISCARD and flags:  # section 5.2.6.2: UNMAP is
            return spec.VIRTIO_BLK_S_UNSUPP  # for WRITE_ZEROES only
        self.disk[start:end] = bytes(end - start)  # DISCARD zeroes too (README)
        return spec.VIRTIO_BLK_S_OK

    def _serve_one(self, n: int, avail_flags: int) -> None:
        """Steps 3.1-3.9 for the entry at ``last_avail_idx``."""
        ring = virtio.SplitRing(n)
        ring_addr = (self.queue_driver + ring.avail_ring(self.last_avail_idx)) & _U64
        head = virtio.AVAIL_ELEM.unpack(self.dma_read(ring_addr, virtio.AVAIL_ELEM.size)).id
        descs = self._walk_chain(head, n)
        readable = [d for d in descs if not d.writable]
        writable = [d for d in descs if d.writable]
        r_total = sum(d.len for d in readable)
        w_total = sum(d.len for d in writable)
        # 3.3 Request framing (section 5.2.6: header, data, status byte), then the limits.
        if r_total < spec.BLK_HEADER_BYTES or w_total < 1:
            raise self._fault(spec.FAULT_BAD_REQUEST, head)
        over_limits = self._over_limits(descs)
        # 3.4 Header.
        req_type, _reserved, sector = virtio.BLK_HEADER.unpack(
            self._read_range(readable, 0, spec.BLK_HEADER_BYTES)
        )
        # 3.5 Data.
        written = 0
        status = spec.VIRTIO_BLK_S_OK
        cap = self.disk_bytes
        if over_limits:
            status = spec.VIRTIO_BLK_S_IOERR
        elif req_type == spec.VIRTIO_BLK_T_IN:
            d = w_total - 1
            base = sector * spec.SECTOR_SIZE
            if d % spec.SECTOR_SIZE or base + d > cap:
                status = spec.VIRTIO_BLK_S_IOERR
            else:
                self._write_range(writable, 0, bytes(self.disk[base : base + d]))
                written = d
        elif req_type == spec.VIRTIO_BLK_T_OUT:
            d = r_total - spec.BLK_HEADER_BYTES
            base = sector * spec.SECTOR_SIZE
            if d % spec.SECTOR_SIZE or base + d > cap:
                status = spec.VIRTIO_BLK_S_IOERR
            else:

                def to_disk(off: int, data: bytes) -> None:
                    self.disk[base + off : base + off + len(data)] = data

                self._read_range(readable, spec.BLK_HEADER_BYTES, d, to_disk)
        elif req_type == spec.VIRTIO_BLK_T_FLUSH:
            pass
        elif req_type == spec.VIRTIO_BLK_T_GET_ID:
            k = min(spec.VIRTIO_BLK_ID_BYTES, w_total - 1)
            self._write_range(writable, 0, spec.DEVICE_SERIAL[:k])
            written = k
        elif (req_type == spec.VIRTIO_BLK_T_DISCARD and self.features.discard) or (
                req_type == spec.VIRTIO_BLK_T_WRITE_ZEROES and self.features.write_zeroes):
            status = self._discard_write_zeroes(req_type, readable, r_total)
        else:
            status = spec.VIRTIO_BLK_S_UNSUPP
        # 3.6 Status byte: the last writable byte; then no used element unless every data and
        # status write arrived.
        self._write_range(writable, w_total - 1, bytes([status]))
        self.drain()
        # 3.7 Used element (section 2.7.8): le32 id, le32 len.
        elem_addr = (self.queue_device + ring.used_ring(self.used_idx)) & _U64
        self.dma_write(elem_addr, virtio.USED_ELEM.pack(head, written + 1))
        # 3.8 Used index.
        self.used_idx = (self.used_idx + 1) & _U16
        used_idx = self.used_idx.to_bytes(2, "little")
        self.dma_write((self.queue_device + ring.USED_IDX) & _U64, used_idx)
        self.drain()  # the interrupt (and the next request) follow the used index
        self.completed += 1
        self.stat_requests = (self.stat_requests + 1) & _U32
        # 3.9 Consume the entry; interrupt unless suppressed (section 2.7.7). With EVENT_IDX
        # the flag is ignored and step 4 of the round decides.
        self.last_avail_idx = (self.last_avail_idx + 1) & _U16
        if not self.event_idx_negotiated and not avail_flags & spec.VIRTQ_AVAIL_F_NO_INTERRUPT:
            self.interrupt_status |= spec.INT_USED_BUFFER
