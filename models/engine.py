"""The reference model's ring engine: one split virtqueue serving virtio-blk (``rtl/engine.py``).

docs/architecture.md "Ring engine" (virtio 1.x sections 2.7, 5.2.6). Every access is a DMA
access (:class:`models.dma.DmaEngine`); rings are read through :mod:`models.virtio`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from models import spec, virtio
from models.hvregs import Halt

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = spec.ADDR_MASK



@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor of a walked chain (virtio 1.x section 2.7.5)."""

    index: int
    addr: int
    len: int
    flags: int
    next: int

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
    ``last_avail_idx``, ``used_idx``, ``halted``, ``pending_notify``, the disk and the
    ``completed`` count. The engine stops by raising :class:`models.hvregs.Halt`.
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
        """One round. Returns False when the engine goes idle."""
        n = self.queue_num
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
            return False
        # 3. Serve the pending entries one at a time.
        for _ in range(pending):
            self._serve_one(n, avail_flags)
        return True

    def _walk_chain(self, head: int, n: int) -> list[Descriptor]:
        """Pass 1 (section 2.7.5 / 2.7.13.1): read and validate every descriptor of the chain."""
        descs: list[Descriptor] = []
        total = 0
        seen_writable = False
        ring = virtio.SplitRing(n)
        i = head
        while True:
            if i >= n:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            if len(descs) + 1 > n:  # descriptor number N + 1: a loop
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            raw = self.dma_read((self.queue_desc + ring.desc(i)) & _U64, virtio.DESC.size)
            addr, length, flags, nxt = virtio.DESC.unpack(raw)
            d = Descriptor(i, addr, length, flags, nxt)
            if flags & spec.VIRTQ_DESC_F_INDIRECT:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
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
        # 3.3 Request framing (section 5.2.6: header, data, status byte).
        if r_total < spec.BLK_HEADER_BYTES or w_total < 1:
            raise self._fault(spec.FAULT_BAD_REQUEST, head)
        # 3.4 Header.
        req_type, _reserved, sector = virtio.BLK_HEADER.unpack(
            self._read_range(readable, 0, spec.BLK_HEADER_BYTES)
        )
        # 3.5 Data.
        written = 0
        status = spec.VIRTIO_BLK_S_OK
        cap = self.disk_bytes
        if req_type == spec.VIRTIO_BLK_T_IN:
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
        # 3.9 Consume the entry; interrupt unless suppressed (section 2.7.7).
        self.last_avail_idx = (self.last_avail_idx + 1) & _U16
        if not avail_flags & spec.VIRTQ_AVAIL_F_NO_INTERRUPT:
            self.interrupt_status |= spec.INT_USED_BUFFER
