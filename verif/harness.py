"""A hand-written minimal driver for exercising :class:`models.device.ReferenceDevice`.

It lays out a split virtqueue (virtio 1.x section 2.7) directly in :class:`GuestMemory` through
the layouts and ring geometry of :mod:`models.virtio`, and runs its bring-up programs on the
register ports synchronously. It deliberately does not use ``sw/`` (the real driver model), so
the reference can be tested on its own; it also makes hand-crafted malformed rings easy (raw
descriptor and avail-ring writes).

Addresses the device sees ("DMA addresses") are guest physical addresses in GPA mode and grant
handles in handle mode; the harness keeps the physical location of everything so it can read
and write the structures directly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from models import spec, virtio
from models.device import ReferenceDevice
from models.grant import GrantEntry
from models.memory import GuestMemory


@dataclass
class Buffer:
    """``nbytes`` bytes at ``offset`` in the pages ``frames`` (in that order).

    ``dma`` is the address the device uses for byte 0 (handle or GPA).
    """

    dma: int
    frames: list[int]
    offset: int
    nbytes: int
    refs: list[int] = field(default_factory=list)

    def phys(self, i: int) -> int:
        """Physical address of byte ``i``."""
        pos = self.offset + i
        return self.frames[pos >> spec.PAGE_SHIFT] << spec.PAGE_SHIFT | pos & (spec.PAGE_SIZE - 1)

    def pieces(self, start: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        """``(physical address, nbytes)`` runs covering bytes ``[start, start + length)``."""
        length = self.nbytes - start if length is None else length
        out = []
        i = start
        while i < start + length:
            room = spec.PAGE_SIZE - ((self.offset + i) & (spec.PAGE_SIZE - 1))
            size = min(room, start + length - i)
            out.append((self.phys(i), size))
            i += size
        return out


@dataclass
class Request:
    """A virtio-blk request laid out by :meth:`HandDriver.request`."""

    head: int
    header: Buffer
    data: Buffer | None
    status: Buffer
    writable_data: bool


class HandDriver:
    """Drives a :class:`ReferenceDevice` through its ports with hand-built rings.

    Pages are allocated from ``first_frame`` upwards. In handle mode each mapped page gets the
    next free grant reference, granted to ``domid``.
    """

    def __init__(
        self,
        dev: ReferenceDevice,
        *,
        handle_mode: bool = False,
        domid: int = 1,
        first_frame: int = 1,
        first_ref: int = 0,
    ) -> None:
        self.dev = dev
        self.mem = dev.mem
        self.handle_mode = handle_mode
        self.domid = domid
        self.next_frame = first_frame
        self.next_ref = first_ref
        self.n = self.avail_idx = self.used_seen = self.next_desc = 0
        dev.hv.write(spec.HV_CTRL, spec.HV_CTRL_HANDLE_MODE if handle_mode else 0)
        dev.hv.write(spec.HV_DOMID, domid)

    # --- memory and grants ---------------------------------------------------------------------
    def alloc_frames(self, count: int, *, stride: int = 1) -> list[int]:
        """``count`` fresh page frames, ``stride`` apart (stride > 1: discontiguous)."""
        frames = [self.next_frame + k * stride for k in range(count)]
        self.next_frame += count * stride
        if (self.next_frame << spec.PAGE_SHIFT) > self.mem.size:
            raise MemoryError("harness ran out of guest memory")
        for f in frames:
            self.mem.fill(f << spec.PAGE_SHIFT, spec.PAGE_SIZE, 0)
        return frames

    def grant(self, frame: int, *, readonly: bool = False, ref: int | None = None) -> int:
        """Grant ``frame`` to the harness's domain; returns the reference."""
        if ref is None:
            ref = self.next_ref
            self.next_ref += 1
        self.set_grant(ref, GrantEntry.permit(self.domid, frame, readonly=readonly))
        return ref

    def set_grant(self, ref: int, entry: GrantEntry) -> None:
        """Program ``GRANT[ref]`` through the hypervisor port."""
        w0, w1 = entry.pack()
        self.dev.hv.write(spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * ref, w0)
        self.dev.hv.write(spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * ref + 4, w1)

    def buffer(
        self,
        nbytes: int,
        *,
        offset: int = 0,
        readonly: bool = False,
        stride: int = 1,
        frames: list[int] | None = None,
    ) -> Buffer:
        """A buffer of ``nbytes`` at ``offset`` in fresh pages (one grant per page in handle
        mode, consecutive references; GPA mode needs contiguous frames)."""
        pages = max(1, -(-(offset + nbytes) // spec.PAGE_SIZE))
        if frames is None:
            frames = self.alloc_frames(pages, stride=stride)
        if self.handle_mode:
            refs = [self.grant(f, readonly=readonly) for f in frames]
            dma = spec.make_handle(refs[0], offset)
        else:
            if any(b - a != 1 for a, b in itertools.pairwise(frames)):
                raise ValueError("GPA mode buffers need contiguous frames")
            refs = []
            dma = frames[0] << spec.PAGE_SHIFT | offset
        return Buffer(dma, frames, offset, nbytes, refs)

    def write_buf(self, buf: Buffer, data: bytes, start: int = 0) -> None:
        pos = 0
        for addr, size in buf.pieces(start, len(data)):
            self.mem.write(addr, data[pos : pos + size])
            pos += size

    def read_buf(self, buf: Buffer, start: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.mem.read(a, s) for a, s in buf.pieces(start, length))

    # --- device initialisation (virtio 1.x section 3.1.1) --------------------------------------
    def negotiate(self, features: int | None = None) -> bool:
        """Reset, ACKNOWLEDGE, DRIVER, features (by default the offered ones), FEATURES_OK;
        True if the device kept it."""

        def program() -> virtio.Program:
            yield from virtio.reset()
            yield from virtio.acknowledge()
            offered = (yield from virtio.read_device_features()) if features is None else None
            yield from virtio.negotiate(offered if features is None else features)

        try:
            virtio.run_sync(program(), self.dev.guest)
        except virtio.FeaturesRefused:
            return False
        return True

    def setup(self, n: int = 8, *, avail_offset: int = 0, used_offset: int = 0) -> None:
        """Full initialisation with an ``n``-entry queue; rings in fresh (granted) pages."""
        if not self.negotiate():
            raise RuntimeError("device refused FEATURES_OK")
        self.n = n
        self.ring = virtio.SplitRing(n)
        self.desc = self.buffer(self.ring.desc_bytes)
        self.avail = self.buffer(self.ring.avail_bytes, offset=avail_offset)
        self.used = self.buffer(self.ring.used_bytes, offset=used_offset)
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0
        self.program_queue(self.desc.dma, self.avail.dma, self.used.dma, n)
        self.driver_ok()

    def program_queue(self, desc: int, driver: int, device: int, n: int) -> None:
        """Queue 0 with any size and addresses (unchecked: hostile values welcome)."""
        virtio.run_sync(virtio.setup_queue(n, desc, driver, device, check=False), self.dev.guest)

    def driver_ok(self) -> None:
        virtio.run_sync(virtio.driver_ok(), self.dev.guest)

    # --- raw ring access -----------------------------------------------------------------------
    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.write_buf(self.desc, virtio.DESC.pack(addr, length, flags, nxt), self.ring.desc(i))

    def set_avail_flags(self, flags: int) -> None:
        offset = virtio.AVAIL_HEADER.offsets["flags"]
        self.write_buf(self.avail, flags.to_bytes(2, "little"), offset)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.write_buf(self.avail, self.avail_idx.to_bytes(2, "little"), self.ring.AVAIL_IDX)

    def set_ring(self, pos: int, head: int) -> None:
        self.write_buf(self.avail, virtio.AVAIL_ELEM.pack(head), self.ring.avail_ring(pos))

    def publish(self, head: int) -> None:
        """Put ``head`` in the next avail ring slot and advance avail.idx."""
        self.set_ring(self.avail_idx % self.n, head)
        self.set_avail_idx(self.avail_idx + 1)

    def notify(self) -> None:
        self.dev.guest.write(spec.MMIO_QUEUE_NOTIFY, 0)

    def used_idx(self) -> int:
        return int.from_bytes(self.read_buf(self.used, self.ring.USED_IDX, 2), "little")

    def used_elem(self, k: int) -> tuple[int, int]:
        """Used ring element at ring position ``k mod n``: ``(id, len)``."""
        elem = self.read_buf(self.used, self.ring.used_ring(k), virtio.USED_ELEM.size)
        return virtio.USED_ELEM.unpack(elem)

    def take_used(self) -> list[tuple[int, int]]:
        """Used elements published since the last call."""
        idx = self.used_idx()
        out = []
        while self.used_seen != idx:
            out.append(self.used_elem(self.used_seen))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    # --- chains and requests -------------------------------------------------------------------
    def chain(self, segments: list[tuple[int, int, bool]]) -> int:
        """Write descriptors for ``(dma addr, len, device-writable)`` segments at the next free
        indices (cyclic); returns the head index."""
        idx = [(self.next_desc + k) % self.n for k in range(len(segments))]
        self.next_desc = (self.next_desc + len(segments)) % self.n
        for k, (addr, length, writable) in enumerate(segments):
            flags = spec.VIRTQ_DESC_F_WRITE if writable else 0
            nxt = 0
            if k + 1 < len(segments):
                flags |= spec.VIRTQ_DESC_F_NEXT
                nxt = idx[k + 1]
            self.write_desc(idx[k], addr, length, flags, nxt)
        return idx[0]

    def request(
        self,
        req_type: int,
        sector: int = 0,
        *,
        data: bytes | None = None,
        read_len: int = 0,
        data_offset: int = 0,
        data_stride: int = 1,
        publish: bool = True,
    ) -> Request:
        """Lay out a virtio-blk request (section 5.2.6): header, optional data, status byte.

        ``data`` makes a device-readable data buffer (T_OUT); ``read_len`` a device-writable one
        (T_IN, GET_ID).
        """
        header = self.buffer(spec.BLK_HEADER_BYTES, readonly=True)
        self.write_buf(header, virtio.BLK_HEADER.pack(req_type, 0, sector))
        segs = [(header.dma, spec.BLK_HEADER_BYTES, False)]
        buf = None
        writable = False
        if data is not None:
            buf = self.buffer(len(data), offset=data_offset, readonly=True, stride=data_stride)
            self.write_buf(buf, data)
            segs.append((buf.dma, len(data), False))
        elif read_len:
            buf = self.buffer(read_len, offset=data_offset, stride=data_stride)
            self.write_buf(buf, b"\xee" * read_len)
            segs.append((buf.dma, read_len, True))
            writable = True
        status = self.buffer(1)
        self.write_buf(status, b"\xff")
        segs.append((status.dma, 1, True))
        head = self.chain(segs)
        if publish:
            self.publish(head)
        return Request(head, header, buf, status, writable)

    def status_of(self, req: Request) -> int:
        return self.read_buf(req.status, 0, 1)[0]


def make(
    *,
    handle_mode: bool = False,
    n: int | None = 8,
    mem_size: int = 1 << 20,
    domid: int = 1,
    **device_kwargs: object,
) -> tuple[ReferenceDevice, HandDriver]:
    """A fresh device over fresh memory and a harness driver; queue set up when ``n``."""
    dev = ReferenceDevice(GuestMemory(mem_size), **device_kwargs)  # type: ignore[arg-type]
    drv = HandDriver(dev, handle_mode=handle_mode, domid=domid)
    if n:
        drv.setup(n)
    return dev, drv
