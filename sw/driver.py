"""Guest driver model: Linux ``virtio_mmio`` + ``virtio_ring`` (split) + ``virtio_blk``.

The driver only uses :mod:`sw.transport` (registers, guest memory, ``wait_irq``) and a
:class:`sw.dma.DmaApi`, so the same code runs against the reference model and the RTL bench.
Everything touching a register is ``async``; completion is only ever learnt from the used ring
(after an interrupt, or by polling with ``no_interrupt``), never assumed after a write.

Determinism: page allocation, grant references and descriptor indices depend only on the seeds
and the sequence of calls. ``wait`` reaps used entries one at a time and stops as soon as what
it waits for is complete, so how far it reaps never depends on how fast the device was
(``wait_any`` is the exception: it reaps whatever the device has completed, as an interrupt
handler does).

Features (issue 17) are the caller's choice (``init(features=...)``): by default the driver
negotiates what it always did (VERSION_1, FLUSH, ACCESS_PLATFORM), so its register and memory
traffic is unchanged. With INDIRECT_DESC a request goes through an indirect table the driver
allocates and maps like a data buffer (virtio 1.2 section 2.7.5.3; Linux
``virtqueue_add_split``); with EVENT_IDX it writes ``used_event`` before it sleeps and kicks
only when ``avail_event`` asks (sections 2.7.7, 2.7.10; Linux ``virtqueue_enable_cb``,
``virtqueue_enable_cb_delayed``, ``virtqueue_kick_prepare``); with SEG_MAX, SIZE_MAX,
BLK_SIZE, DISCARD and WRITE_ZEROES it reads the configuration fields and refuses a request
over them (section 5.2.4).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NoReturn

from models import spec, virtio
from models.virtio import FeaturesRefused, InitError
from sw.alloc import PageAllocator
from sw.dma import FROM_DEVICE, TO_DEVICE, Direction, DmaApi, GuestBuffer
from sw.transport import DeviceLink

SUPPORTED_FEATURES = (
    1 << spec.VIRTIO_F_VERSION_1
    | 1 << spec.VIRTIO_BLK_F_FLUSH
    | 1 << spec.VIRTIO_F_ACCESS_PLATFORM
)  # what the driver negotiates by default (the foundation's set)
TRANSPORT_FEATURES = 1 << spec.VIRTIO_F_VERSION_1 | 1 << spec.VIRTIO_F_ACCESS_PLATFORM
# The device features ``init(features=...)`` may name (bit numbers); "all" is every one of them.
DEFAULT_FEATURES = frozenset({spec.VIRTIO_BLK_F_FLUSH})
ALL_FEATURES = frozenset({
    spec.VIRTIO_BLK_F_FLUSH, spec.VIRTIO_F_INDIRECT_DESC, spec.VIRTIO_RING_F_EVENT_IDX,
    spec.VIRTIO_BLK_F_SEG_MAX, spec.VIRTIO_BLK_F_SIZE_MAX, spec.VIRTIO_BLK_F_BLK_SIZE,
    spec.VIRTIO_BLK_F_DISCARD, spec.VIRTIO_BLK_F_WRITE_ZEROES,
})
# used_event policies with EVENT_IDX (what the driver writes before it waits for an interrupt)
EVENT_POLICIES = ("enable_cb", "delayed")
# struct virtio_blk_discard_write_zeroes (virtio 1.2 section 5.2.6): the data of T_DISCARD and
# T_WRITE_ZEROES, one 16-byte segment per range
DWZ_SEGMENT = virtio.DWZ_SEGMENT
SLOT_BYTES = 32  # per-head area: 16-byte request header at 0, status byte at 16
STATUS_POISON = 0xFF  # not a valid virtio-blk status: shows a status the device never wrote


__all__ = ["ALL_FEATURES", "DEFAULT_FEATURES", "BlkError", "BlkRequest", "BlkResult",
           "DeviceFault", "DeviceLimits", "FeaturesRefused", "InitError", "ProtocolError",
           "QueueFull", "VirtioBlkDriver", "descriptor_lengths", "dwz_request",
           "vring_need_event"]


def vring_need_event(event_idx: int, new: int, old: int) -> bool:
    """Linux ``vring_need_event`` (virtio 1.2 sections 2.7.7.2, 2.7.10): ``event_idx`` lies in
    ``[old, new)`` modulo 2**16."""
    return (new - event_idx - 1) & 0xFFFF < (new - old) & 0xFFFF


class DeviceFault(RuntimeError):
    """The device set DEVICE_NEEDS_RESET: requests in flight will not complete.

    Recover with ``await driver.reset()`` then ``await driver.init()``; the hypervisor's fault
    registers (``Hypervisor.fault()``) tell why.
    """

    def __init__(self, status: int, in_flight: list[int]) -> None:
        self.status = status
        self.in_flight = in_flight
        super().__init__(
            f"device needs reset (Status={status:#04x}, DEVICE_NEEDS_RESET set) with "
            f"{len(in_flight)} request(s) in flight (tokens {in_flight[:8]}"
            f"{'...' if len(in_flight) > 8 else ''}); call reset() and init() to recover"
        )


class QueueFull(RuntimeError):
    """Not enough free descriptors for the request's chain."""


class ProtocolError(RuntimeError):
    """The device wrote something to the used ring that no correct device writes."""


class BlkError(RuntimeError):
    """A convenience call (``read``/``write``/...) completed with a status other than OK."""

    def __init__(self, what: str, result: BlkResult) -> None:
        self.result = result
        name = {spec.VIRTIO_BLK_S_IOERR: "IOERR", spec.VIRTIO_BLK_S_UNSUPP: "UNSUPP"}.get(
            result.status, "?"
        )
        super().__init__(f"{what} failed: status {result.status} ({name})")


@dataclass
class BlkRequest:
    """One virtio-blk request and how to lay it out in descriptors.

    The data is device-readable when ``data`` is given (OUT) and device-writable otherwise,
    ``length`` bytes (IN, GET_ID). Layout knobs (the device must accept any of them):

    * ``segments``: lengths of the data descriptors (sum = data length; zero lengths allowed);
      default one descriptor, or none for zero data bytes;
    * ``offsets``: page offset of each data buffer (unaligned buffers), default 0;
    * ``header_with_data``: header and first data segment share a descriptor (readable data);
    * ``status_with_data``: status byte ends the last data descriptor (writable data);
    * ``header_segments``: split the 16 header bytes over several descriptors;
    * ``indirect``: the chain in an indirect table (True), in the ring's table (False), or as
      the driver decides (None: an indirect table when INDIRECT_DESC is negotiated, as Linux
      does for any chain of more than one descriptor).

    ``unchecked``: submit even if the request is over the limits the driver negotiated
    (SEG_MAX, SIZE_MAX, BLK_SIZE, the DISCARD and WRITE_ZEROES fields): tests of the device's
    IOERR. A correct driver never sets it.
    """

    type: int
    sector: int = 0
    data: bytes | None = None
    length: int = 0
    segments: list[int] | None = None
    offsets: list[int] | None = None
    header_with_data: bool = False
    status_with_data: bool = False
    header_segments: list[int] | None = None
    indirect: bool | None = None
    unchecked: bool = False

    @property
    def data_len(self) -> int:
        return len(self.data) if self.data is not None else self.length

    @property
    def data_writable(self) -> bool:
        return self.data is None


@dataclass
class BlkResult:
    """Completion of one request. ``data`` is what the device wrote to the writable data
    buffers (all ``length`` bytes, None for readable data); ``used_len`` is the used element's
    ``len`` (bytes written including the status byte)."""

    token: int
    status: int
    used_len: int
    data: bytes | None
    request: BlkRequest
    head: int

    @property
    def ok(self) -> bool:
        return self.status == spec.VIRTIO_BLK_S_OK


def dwz_request(type_: int, ranges: Sequence[tuple[int, int, int]], **layout: Any) -> BlkRequest:
    """A ``T_DISCARD`` or ``T_WRITE_ZEROES`` request: one ``virtio_blk_discard_write_zeroes``
    segment per ``(sector, num_sectors, flags)`` range, header sector 0 (Linux
    ``virtblk_setup_discard_write_zeroes_erase``)."""
    data = b"".join(DWZ_SEGMENT.pack(*r) for r in ranges)
    return BlkRequest(type_, 0, data=data, **layout)


def descriptor_lengths(req: BlkRequest) -> list[int]:
    """The lengths of the descriptors :meth:`VirtioBlkDriver.submit` lays ``req`` out in, in
    chain order (header pieces, data, status; an indirect descriptor not counted)."""
    segs, _offs, hsegs = VirtioBlkDriver._check_layout(req)
    out = [] if req.header_with_data else list(hsegs)
    for k, s in enumerate(segs):
        out.append(s + (spec.BLK_HEADER_BYTES if req.header_with_data and k == 0 else 0)
                   + (1 if req.status_with_data and k == len(segs) - 1 else 0))
    if not req.status_with_data:
        out.append(1)
    return out


@dataclass(frozen=True)
class DeviceLimits:
    """The configuration fields the driver read (virtio 1.2 section 5.2.4); a field whose
    feature was not negotiated is 0 (no limit the driver knows of)."""

    seg_max: int = 0
    size_max: int = 0
    blk_size: int = 0
    max_discard_sectors: int = 0
    max_discard_seg: int = 0
    discard_sector_alignment: int = 0
    max_write_zeroes_sectors: int = 0
    max_write_zeroes_seg: int = 0
    write_zeroes_may_unmap: int = 0

    def check(self, req: BlkRequest, features: int) -> None:
        """``ValueError`` naming the first limit ``req`` is over (the negotiated ones only)."""
        lengths = descriptor_lengths(req)
        if self.seg_max and len(lengths) > self.seg_max + 2:
            raise ValueError(f"the request has {len(lengths) - 2} data descriptor(s) beyond "
                             f"its header and status, more than seg_max={self.seg_max}")
        if self.size_max and max(lengths) > self.size_max:
            raise ValueError(f"a descriptor of {max(lengths)} bytes is longer than "
                             f"size_max={self.size_max}")
        if (self.blk_size and req.type in (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT)
                and req.data_len % self.blk_size):
            raise ValueError(f"{req.data_len} data bytes are not a multiple of "
                             f"blk_size={self.blk_size}")
        for t, bit, most, nseg, what in (
                (spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_F_DISCARD, self.max_discard_sectors,
                 self.max_discard_seg, "discard"),
                (spec.VIRTIO_BLK_T_WRITE_ZEROES, spec.VIRTIO_BLK_F_WRITE_ZEROES,
                 self.max_write_zeroes_sectors, self.max_write_zeroes_seg, "write_zeroes")):
            if req.type != t or not features >> bit & 1:
                continue
            if req.data_writable or not req.data_len or req.data_len % spec.DWZ_SEGMENT_BYTES:
                raise ValueError(f"a {what} request's data must be whole 16-byte segments")
            n = req.data_len // spec.DWZ_SEGMENT_BYTES
            if n > nseg:
                raise ValueError(f"{n} {what} segment(s), more than max_{what}_seg={nseg}")
            assert req.data is not None
            for k in range(n):
                seg = DWZ_SEGMENT.unpack(req.data, spec.DWZ_SEGMENT_BYTES * k)
                if seg.num_sectors > most:
                    raise ValueError(f"{seg.num_sectors} sectors to {what}, more than "
                                     f"max_{what}_sectors={most}")


@dataclass
class _Piece:
    """One descriptor: its buffer, mapping and whether the buffer owns its pages."""

    buf: GuestBuffer
    direction: Direction
    owned: bool
    handle: int | None = None

    @property
    def writable(self) -> bool:
        return self.direction == FROM_DEVICE


@dataclass
class _InFlight:
    token: int
    head: int
    req: BlkRequest
    descs: list[int]
    pieces: list[_Piece]
    status_at: tuple[GuestBuffer, int]
    data_at: list[tuple[GuestBuffer, int, int]] = field(default_factory=list)
    table: _Piece | None = None  # the indirect table, if the chain is in one


@dataclass(eq=False, repr=False)
class VirtioBlkDriver:
    """One virtio-blk device, queue 0."""

    link: DeviceLink
    dma: DmaApi
    alloc: PageAllocator
    _: KW_ONLY
    seed: int | None = 0
    no_interrupt: bool = False
    irq_timeout: int | None = None
    poll_limit: int = 100_000
    event_policy: str = "enable_cb"

    def __post_init__(self) -> None:
        if self.event_policy not in EVENT_POLICIES:
            raise ValueError(f"event_policy must be one of {EVENT_POLICIES}, "
                             f"not {self.event_policy!r}")
        self.regs = self.link.guest
        self._clear_state()

    def _clear_state(self) -> None:
        self.ready = False
        self.device_features = 0
        self.features = 0
        self.vendor_id = 0
        self.capacity = 0  # sectors
        self.queue_num_max = 0
        self.queue_size = 0
        self.ring = virtio.SplitRing(0)
        self.desc_buf: GuestBuffer | None = None
        self.avail_buf: GuestBuffer | None = None
        self.used_buf: GuestBuffer | None = None
        self.slot_buf: GuestBuffer | None = None
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self._ring_bufs: list[GuestBuffer] = []  # pages to free on reset
        self._ring_handles: list[int] = []  # mappings to undo on reset
        self.avail_idx = 0  # shadow of avail.idx (16 bit)
        self.last_used = 0  # next used entry to reap (16 bit)
        self._free: deque[int] = deque()
        self._inflight: OrderedDict[int, _InFlight] = OrderedDict()  # token -> request
        self._by_head: dict[int, _InFlight] = {}
        self._done: OrderedDict[int, BlkResult] = OrderedDict()  # reaped, unclaimed
        self._next_token = 0
        self._needs_reset = False
        self.limits = DeviceLimits()
        self._kick_old = 0  # avail.idx at the last kick_prepare (Linux: avail_idx - num_added)
        # Counters since init: notifies written, notifies EVENT_IDX made unnecessary, and
        # used-buffer interrupts taken (InterruptStatus read with bit 0 set after a wake).
        self.kicks = 0
        self.kicks_suppressed = 0
        self.interrupts = 0

    # --- registers -------------------------------------------------------------------------
    async def _r(self, off: int) -> int:
        return await self.regs.read32(off)

    async def _w(self, off: int, value: int) -> None:
        await self.regs.write32(off, value & 0xFFFF_FFFF)

    async def device_status(self) -> int:
        return await self._r(spec.MMIO_STATUS)

    async def _fail(self, exc: InitError) -> NoReturn:
        """Set FAILED (read-modify-write, Linux ``virtio_add_status``), then raise ``exc``."""
        await self._w(spec.MMIO_STATUS, await self.device_status() | spec.STATUS_FAILED)
        raise exc

    # --- bring-up --------------------------------------------------------------------------
    async def init(self, queue_size: int | None = None, *,
                   features: int | Iterable[int] | str | None = None) -> None:
        """Probe and bring the device to DRIVER_OK (virtio 1.x section 3.1.1).

        ``features``: None (default) negotiates what the driver always did, VERSION_1, FLUSH
        and ACCESS_PLATFORM when the device offers them (:data:`DEFAULT_FEATURES`); a set of
        device feature bit numbers from :data:`ALL_FEATURES` negotiates those of them the
        device offers, plus VERSION_1 and ACCESS_PLATFORM; ``"all"`` is :data:`ALL_FEATURES`.
        An ``int`` is written to DriverFeatures as it is, unchecked (tests of refusal).
        """
        magic = await self._r(spec.MMIO_MAGIC_VALUE)
        if magic != spec.MAGIC_VALUE:
            raise InitError(f"MagicValue is {magic:#010x}, expected {spec.MAGIC_VALUE:#010x}")
        version = await self._r(spec.MMIO_VERSION)
        if version != spec.MMIO_VERSION_VALUE:
            raise InitError(
                f"virtio-mmio Version is {version}, this driver needs "
                f"{spec.MMIO_VERSION_VALUE} (legacy devices are not supported)"
            )
        dev_id = await self._r(spec.MMIO_DEVICE_ID)
        if dev_id != spec.VIRTIO_ID_BLOCK:
            raise InitError(
                f"DeviceID is {dev_id}, expected {spec.VIRTIO_ID_BLOCK} (block)"
                + (" -- 0 is a placeholder with no device" if dev_id == 0 else "")
            )
        self.vendor_id = await self._r(spec.MMIO_VENDOR_ID)

        await self.reset()
        await virtio.run_async(virtio.acknowledge(), self.regs)
        await self._negotiate(features)
        await self._setup_queue(queue_size)
        self.capacity = await self._read_config()
        await virtio.run_async(virtio.driver_ok(), self.regs)
        self.ready = True

    @staticmethod
    def _wanted(features: Iterable[int] | str | None) -> int:
        if features is None:
            return SUPPORTED_FEATURES
        if isinstance(features, str):
            if features != "all":
                raise ValueError(f"features must be None, 'all', a set of feature bits or an "
                                 f"int, not {features!r}")
            features = ALL_FEATURES
        bits = set(features)
        unknown = bits - ALL_FEATURES
        if unknown:
            raise ValueError(f"this driver does not implement feature bit(s) {sorted(unknown)} "
                             f"(it knows {sorted(ALL_FEATURES)})")
        return TRANSPORT_FEATURES | sum(1 << b for b in bits)

    async def _negotiate(self, override: int | Iterable[int] | str | None) -> None:
        self.device_features = dev = await virtio.run_async(virtio.read_device_features(),
                                                            self.regs)
        if not isinstance(override, int):
            want = self._wanted(override)
            if not dev >> spec.VIRTIO_F_VERSION_1 & 1:
                await self._fail(InitError(
                    f"device does not offer VIRTIO_F_VERSION_1 (features {dev:#x})"))
            if self.dma.requires_access_platform and not dev >> spec.VIRTIO_F_ACCESS_PLATFORM & 1:
                await self._fail(InitError(
                    f"the DMA backend ({type(self.dma).__name__}) hands out handles (grant "
                    "references or IOVAs), but the device does not offer "
                    f"VIRTIO_F_ACCESS_PLATFORM (features {dev:#x}): it would treat them as "
                    "physical addresses"))
            drv = dev & want
        else:
            drv = override
        self.features = drv
        await virtio.run_async(virtio.negotiate(drv), self.regs)  # FeaturesRefused, FAILED set

    async def _setup_queue(self, queue_size: int | None) -> None:
        """Queue 0 as Linux ``vm_setup_vq`` sets it up: probe, allocate and map the rings, then
        the shared queue program (which selects queue 0 again: the probe and the setup are
        one selection in Linux, two idempotent writes here)."""
        await self._w(spec.MMIO_QUEUE_SEL, 0)
        if await self._r(spec.MMIO_QUEUE_READY):
            raise InitError("queue 0 is already ready after reset")
        self.queue_num_max = nmax = await self._r(spec.MMIO_QUEUE_NUM_MAX)
        if nmax == 0:
            raise InitError("QueueNumMax is 0: queue 0 not available")
        n = nmax if queue_size is None else queue_size
        if n < 1 or n & (n - 1) or n > nmax or n > 0x8000:
            raise ValueError(
                f"queue size {n} must be a power of two in [1, {min(nmax, 0x8000)}] "
                f"(QueueNumMax={nmax})"
            )
        self.queue_size = n
        self.ring = ring = virtio.SplitRing(n)
        contig = self.dma.needs_contiguous

        def new(length: int) -> GuestBuffer:
            buf = GuestBuffer.allocate(self.alloc, length, contiguous=contig)
            self._ring_bufs.append(buf)
            return buf

        self.desc_buf = new(ring.desc_bytes)
        self.avail_buf = new(ring.avail_bytes)
        self.used_buf = new(ring.used_bytes)
        self.slot_buf = new(SLOT_BYTES * n)
        for b in (self.desc_buf, self.avail_buf, self.used_buf):
            b.write(0, bytes(b.length))
        if self.no_interrupt:
            self.set_avail_flags(spec.VIRTQ_AVAIL_F_NO_INTERRUPT)
            if self.negotiated(spec.VIRTIO_RING_F_EVENT_IDX):  # (the device ignores the flag)
                self.set_used_event(0x8000)
        order = list(range(n))
        if self.seed is not None:
            random.Random(self.seed).shuffle(order)
        self._free = deque(order)
        # Linux maps the (coherent) ring like any DMA buffer: grant handles in mode 1, IOVAs
        # in mode 2.
        for buf, direction in ((self.desc_buf, TO_DEVICE), (self.avail_buf, TO_DEVICE),
                               (self.used_buf, FROM_DEVICE)):
            self._ring_handles.append(await self.dma.map(buf, direction))
        self.desc_addr, self.avail_addr, self.used_addr = self._ring_handles
        await virtio.run_async(virtio.setup_queue(n, *self._ring_handles, check=False),
                               self.regs)

    def negotiated(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    async def _read_config(self) -> int:
        """The capacity, and the fields of the negotiated features, inside one
        ConfigGeneration loop (Linux ``virtio_cread64``; ``virtio_cread_feature`` reads a
        field only if its feature was negotiated). Returns the capacity; sets ``limits``."""
        fields: list[tuple[str, int, int]] = []  # (name, offset, feature bit)
        for name, off, bit in (
                ("size_max", spec.BLK_CONFIG_SIZE_MAX, spec.VIRTIO_BLK_F_SIZE_MAX),
                ("seg_max", spec.BLK_CONFIG_SEG_MAX, spec.VIRTIO_BLK_F_SEG_MAX),
                ("blk_size", spec.BLK_CONFIG_BLK_SIZE, spec.VIRTIO_BLK_F_BLK_SIZE),
                ("max_discard_sectors", spec.BLK_CONFIG_MAX_DISCARD_SECTORS,
                 spec.VIRTIO_BLK_F_DISCARD),
                ("max_discard_seg", spec.BLK_CONFIG_MAX_DISCARD_SEG, spec.VIRTIO_BLK_F_DISCARD),
                ("discard_sector_alignment", spec.BLK_CONFIG_DISCARD_SECTOR_ALIGNMENT,
                 spec.VIRTIO_BLK_F_DISCARD),
                ("max_write_zeroes_sectors", spec.BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS,
                 spec.VIRTIO_BLK_F_WRITE_ZEROES),
                ("max_write_zeroes_seg", spec.BLK_CONFIG_MAX_WRITE_ZEROES_SEG,
                 spec.VIRTIO_BLK_F_WRITE_ZEROES),
                ("write_zeroes_may_unmap", spec.BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP,
                 spec.VIRTIO_BLK_F_WRITE_ZEROES)):
            if self.negotiated(bit):
                fields.append((name, off, bit))
        for _ in range(100):
            gen = await self._r(spec.MMIO_CONFIG_GENERATION)
            lo = await self._r(spec.MMIO_CONFIG + spec.BLK_CONFIG_CAPACITY)
            hi = await self._r(spec.MMIO_CONFIG + spec.BLK_CONFIG_CAPACITY + 4)
            values = {}
            for name, off, _bit in fields:  # (write_zeroes_may_unmap is a u8: bits 7:0)
                v = await self._r(spec.MMIO_CONFIG + off)
                values[name] = v & 0xFF if name == "write_zeroes_may_unmap" else v
            if await self._r(spec.MMIO_CONFIG_GENERATION) == gen:
                self.limits = DeviceLimits(**values)
                return hi << 32 | lo
        raise InitError("ConfigGeneration kept changing while reading the configuration")

    async def reset(self) -> None:
        """Write 0 to Status, then release everything the driver had mapped or allocated.

        Unclaimed completed results stay claimable; requests in flight are dropped.
        """
        await virtio.run_async(virtio.reset(self.poll_limit), self.regs)
        for rec in list(self._inflight.values()):
            await self._release(rec)
        for handle in self._ring_handles:
            await self.dma.unmap(handle)
        for buf in self._ring_bufs:
            buf.free(self.alloc)
        done, token = self._done, self._next_token
        self._clear_state()
        self._done, self._next_token = done, token

    # --- low-level ring access (also for hostile tests) ------------------------------------
    async def set_queue_addresses(self, desc: int, driver: int, device: int) -> None:
        """Write the six queue address registers (Linux order: desc, driver, device)."""
        await virtio.run_async(virtio.set_queue_addresses(desc, driver, device), self.regs)

    def _ring(self, buf: GuestBuffer | None) -> GuestBuffer:
        if buf is None:
            raise RuntimeError("queue not set up: call init() first")
        return buf

    def write_desc(self, i: int, addr: int, length: int, flags: int, next_: int) -> None:
        """Store descriptor ``i`` in the table (guest memory write, no bus access)."""
        self._ring(self.desc_buf).write(self.ring.desc(i),
                                        virtio.DESC.pack(addr, length, flags, next_))

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        return virtio.DESC.unpack(self._ring(self.desc_buf).read(self.ring.desc(i),
                                                                 virtio.DESC.size))

    def publish(self, head: int) -> None:
        """Put ``head`` in the next avail slot, then make it visible by bumping avail.idx."""
        self._ring(self.avail_buf).write(self.ring.avail_ring(self.avail_idx),
                                         virtio.AVAIL_ELEM.pack(head))
        self.set_avail_idx((self.avail_idx + 1) & 0xFFFF)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self._ring(self.avail_buf).write(self.ring.AVAIL_IDX, self.avail_idx.to_bytes(2, "little"))

    def set_avail_flags(self, flags: int) -> None:
        self._ring(self.avail_buf).write(virtio.AVAIL_HEADER.offsets["flags"],
                                         (flags & 0xFFFF).to_bytes(2, "little"))

    def set_used_event(self, value: int) -> None:
        """Write ``used_event`` (the driver area's last field, EVENT_IDX)."""
        self._ring(self.avail_buf).write(self.ring.used_event, (value & 0xFFFF).to_bytes(2,
                                                                                       "little"))

    def used_event(self) -> int:
        return int.from_bytes(self._ring(self.avail_buf).read(self.ring.used_event, 2), "little")

    def avail_event(self) -> int:
        """``avail_event`` as the device last wrote it (the device area's last field)."""
        return int.from_bytes(self._ring(self.used_buf).read(self.ring.avail_event, 2),
                              "little")

    def used_flags(self) -> int:
        return int.from_bytes(self._ring(self.used_buf).read(0, 2), "little")

    def used_idx(self) -> int:
        return int.from_bytes(self._ring(self.used_buf).read(self.ring.USED_IDX, 2), "little")

    def used_elem(self, i: int) -> tuple[int, int]:
        """``(id, len)`` of used ring slot ``i % queue_size``."""
        return virtio.USED_ELEM.unpack(self._ring(self.used_buf).read(self.ring.used_ring(i),
                                                                      virtio.USED_ELEM.size))

    def take_used_raw(self) -> list[tuple[int, int]]:
        """Consume every new used element without interpreting it (for hand-built chains
        published with ``publish``; do not mix with requests from ``submit`` in flight)."""
        out = []
        while self.last_used != self.used_idx():
            out.append(self.used_elem(self.last_used))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    async def map_buffer(
        self, length: int, direction: Direction, *, offset: int = 0
    ) -> tuple[GuestBuffer, int]:
        """Allocate and map a buffer as the driver would (for hand-built chains)."""
        buf = GuestBuffer.allocate(self.alloc, length, offset=offset,
                                   contiguous=self.dma.needs_contiguous)
        try:
            return buf, await self.dma.map(buf, direction)
        except BaseException:
            buf.free(self.alloc)
            raise

    async def unmap_buffer(self, buf: GuestBuffer, handle: int) -> None:
        await self.dma.unmap(handle)
        buf.free(self.alloc)

    # --- requests ----------------------------------------------------------------------------
    @property
    def free_descriptors(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> list[int]:
        return list(self._inflight)

    def _slot(self, head: int, pos: int, length: int) -> GuestBuffer:
        slot = self._ring(self.slot_buf)
        page, off = divmod(slot.offset + SLOT_BYTES * head + pos, spec.PAGE_SIZE)
        return GuestBuffer(slot.mem, [slot.pages[page]], off, length)

    @staticmethod
    def _check_layout(req: BlkRequest) -> tuple[list[int], list[int], list[int]]:
        n = req.data_len
        segs = list(req.segments) if req.segments is not None else ([n] if n else [])
        if any(s < 0 for s in segs) or sum(segs) != n:
            raise ValueError(f"segments {segs} must be >= 0 and sum to the data length {n}")
        offs = list(req.offsets) if req.offsets is not None else [0] * len(segs)
        if len(offs) != len(segs) or any(not 0 <= o < spec.PAGE_SIZE for o in offs):
            raise ValueError(f"offsets {offs} must be one page offset per segment {segs}")
        hsegs = list(req.header_segments) if req.header_segments else [spec.BLK_HEADER_BYTES]
        if any(s < 0 for s in hsegs) or sum(hsegs) != spec.BLK_HEADER_BYTES:
            raise ValueError(f"header_segments {hsegs} must be >= 0 and sum to 16")
        if req.data is not None and req.length:
            raise ValueError("give data (device-readable) or length (device-writable), not both")
        if req.header_with_data and (req.data_writable or not segs or req.header_segments):
            raise ValueError("header_with_data needs readable data segments, unsplit header")
        if req.status_with_data and (not req.data_writable or not segs):
            raise ValueError("status_with_data needs writable data segments")
        if not 0 <= req.sector < 1 << 64 or not 0 <= req.type < 1 << 32:
            raise ValueError("sector must fit 64 bits and type 32 bits")
        return segs, offs, hsegs

    def uses_indirect(self, req: BlkRequest) -> bool:
        """Whether :meth:`submit` puts ``req``'s chain in an indirect table."""
        neg = self.negotiated(spec.VIRTIO_F_INDIRECT_DESC)
        if req.indirect is None:  # Linux virtqueue_add_split: vq->indirect && total_sg > 1
            return neg and len(descriptor_lengths(req)) > 1
        if req.indirect and not neg:
            raise ValueError("an indirect table needs VIRTIO_F_INDIRECT_DESC negotiated")
        return req.indirect

    async def submit(self, req: BlkRequest) -> int:
        """Build the chain (header, data, status), map it and publish it; no notify.

        With an indirect table (:meth:`uses_indirect`) the chain's descriptors go in a table the
        driver allocates and maps device-readable after filling it (Linux
        ``virtqueue_add_split``), and the ring holds one INDIRECT descriptor naming it.

        Raises ``QueueFull`` (too few descriptors), ``MemoryError`` (pages or grant refs
        exhausted) or ``ValueError`` (a bad layout, or over a negotiated limit: see
        ``BlkRequest.unchecked``) with nothing left allocated.
        """
        if not self.ready:
            raise RuntimeError("driver not initialised: call init() first")
        segs, offs, hsegs = self._check_layout(req)
        if not req.unchecked:
            self.limits.check(req, self.features)
        indirect = self.uses_indirect(req)
        nchain = (0 if req.header_with_data else len(hsegs)) + len(segs) + (
            0 if req.status_with_data else 1)
        if indirect and nchain > self.queue_size and not req.unchecked:
            raise ValueError(f"an indirect table of {nchain} descriptors is longer than the "
                             f"queue ({self.queue_size})")
        ndesc = 1 if indirect else nchain
        if ndesc > len(self._free):
            raise QueueFull(
                f"request needs {ndesc} descriptor(s), {len(self._free)} free of "
                f"{self.queue_size} ({len(self._inflight)} request(s) in flight)"
            )
        descs = [self._free.popleft() for _ in range(ndesc)]
        head = descs[0]
        header = virtio.BLK_HEADER.pack(req.type, 0, req.sector)
        pieces: list[_Piece] = []
        data_at: list[tuple[GuestBuffer, int, int]] = []
        table: _Piece | None = None
        try:
            # Header pieces (own slot) unless it shares the first data descriptor.
            if not req.header_with_data:
                self._slot(head, 0, len(header)).write(0, header)
                pos = 0
                for h in hsegs:
                    pieces.append(_Piece(self._slot(head, pos, h), TO_DEVICE, False))
                    pos += h
            data = req.data or b""
            pos = 0
            for k, (s, o) in enumerate(zip(segs, offs, strict=True)):
                extra_h = spec.BLK_HEADER_BYTES if req.header_with_data and k == 0 else 0
                extra_s = 1 if req.status_with_data and k == len(segs) - 1 else 0
                buf = GuestBuffer.allocate(self.alloc, extra_h + s + extra_s, offset=o,
                                           contiguous=self.dma.needs_contiguous)
                pieces.append(_Piece(buf, FROM_DEVICE if req.data_writable else TO_DEVICE, True))
                if extra_h:
                    buf.write(0, header)
                if req.data_writable:
                    data_at.append((buf, 0, s))
                else:
                    buf.write(extra_h, data[pos : pos + s])
                pos += s
            if req.status_with_data:
                last = pieces[-1].buf
                status_at = (last, last.length - 1)
            else:
                sbuf = self._slot(head, len(header), 1)
                pieces.append(_Piece(sbuf, FROM_DEVICE, False))
                status_at = (sbuf, 0)
            status_at[0].write(status_at[1], bytes([STATUS_POISON]))
            for p in pieces:
                p.handle = await self.dma.map(p.buf, p.direction)
            if indirect:
                # the table: entry k's next is k + 1 (Linux), filled before it is mapped
                tbuf = GuestBuffer.allocate(self.alloc, spec.DESC_BYTES * len(pieces),
                                            contiguous=self.dma.needs_contiguous)
                table = _Piece(tbuf, TO_DEVICE, True)
                for k, (flags, nxt) in enumerate(self._links(pieces, list(range(len(pieces))))):
                    p = pieces[k]
                    assert p.handle is not None
                    tbuf.write(spec.DESC_BYTES * k,
                               virtio.DESC.pack(p.handle, p.buf.length, flags, nxt))
                table.handle = await self.dma.map(tbuf, TO_DEVICE)
        except BaseException:
            await self._unmap_free(pieces + ([table] if table is not None else []))
            self._free.extendleft(reversed(descs))
            raise
        if table is not None:
            assert table.handle is not None
            self.write_desc(head, table.handle, table.buf.length, spec.VIRTQ_DESC_F_INDIRECT, 0)
        else:
            for k, (flags, nxt) in enumerate(self._links(pieces, descs)):
                p = pieces[k]
                assert p.handle is not None
                self.write_desc(descs[k], p.handle, p.buf.length, flags, nxt)
        token = self._next_token
        self._next_token += 1
        rec = _InFlight(token, head, req, descs, pieces, status_at, data_at, table)
        self._inflight[token] = rec
        self._by_head[head] = rec
        self.publish(head)
        return token

    @staticmethod
    def _links(pieces: list[_Piece], index: list[int]) -> list[tuple[int, int]]:
        """``(flags, next)`` of each piece's descriptor, the chain in ``index`` order."""
        out = []
        for k, p in enumerate(pieces):
            more = k + 1 < len(pieces)
            out.append(((spec.VIRTQ_DESC_F_NEXT if more else 0)
                        | (spec.VIRTQ_DESC_F_WRITE if p.writable else 0),
                        index[k + 1] if more else 0))
        return out

    async def _unmap_free(self, pieces: list[_Piece]) -> None:
        for p in pieces:
            if p.handle is not None:
                await self.dma.unmap(p.handle)
                p.handle = None
            if p.owned:
                p.buf.free(self.alloc)
                p.owned = False

    async def _release(self, rec: _InFlight) -> None:
        """Unmap and free a request's buffers and give its descriptors back (Linux
        ``detach_buf_split``: the chain goes to the front of the free list)."""
        await self._unmap_free(rec.pieces + ([rec.table] if rec.table is not None else []))
        self._free.extendleft(reversed(rec.descs))
        del self._inflight[rec.token]
        del self._by_head[rec.head]

    async def kick(self) -> None:
        """Notify queue 0 (unconditionally: :meth:`notify` is the driver's own kick)."""
        self.kicks += 1
        await self._w(spec.MMIO_QUEUE_NOTIFY, 0)

    def kick_prepare(self) -> bool:
        """Whether the entries published since the last call need a notify (Linux
        ``virtqueue_kick_prepare_split``): with EVENT_IDX, if ``avail_event`` lies in
        ``[old, new)`` (section 2.7.10); without, unless the device set NO_NOTIFY in
        ``used.flags`` (ours never does)."""
        old, new = self._kick_old, self.avail_idx
        self._kick_old = new
        if self.negotiated(spec.VIRTIO_RING_F_EVENT_IDX):
            need = vring_need_event(self.avail_event(), new, old)
        else:
            need = not self.used_flags() & 1  # VIRTQ_USED_F_NO_NOTIFY
        if not need:
            self.kicks_suppressed += 1
        return need

    async def notify(self) -> bool:
        """Linux ``virtqueue_kick``: :meth:`kick_prepare`, then the notify if it is needed.
        Returns whether the driver notified."""
        if self.kick_prepare():
            await self.kick()
            return True
        return False

    def _enable_cb(self) -> bool:
        """Before sleeping with EVENT_IDX: write ``used_event`` and say whether the used ring
        is still empty (True: sleep). ``enable_cb`` (Linux ``virtqueue_enable_cb``, what
        ``virtblk_done`` uses): ``used_event = last_used``, an interrupt at the next
        completion. ``delayed`` (``virtqueue_enable_cb_delayed``): ``used_event = last_used +
        3/4 of the requests outstanding``, and no sleep if that many completed already."""
        bufs = 0
        if self.event_policy == "delayed":
            bufs = ((self.avail_idx - self.last_used) & 0xFFFF) * 3 // 4
        self.set_used_event(self.last_used + bufs)
        return (self.used_idx() - self.last_used) & 0xFFFF <= bufs

    async def _reap_one(self) -> bool:
        """Consume one used element if there is one."""
        idx = self.used_idx()
        ahead = (idx - self.last_used) & 0xFFFF
        if ahead == 0:
            return False
        if ahead > self.queue_size:
            raise ProtocolError(
                f"used.idx {idx} is {ahead} entries past the last reaped {self.last_used}, "
                f"more than the queue size {self.queue_size}"
            )
        head, used_len = self.used_elem(self.last_used)
        rec = self._by_head.get(head)
        if rec is None:
            raise ProtocolError(
                f"used element {self.last_used} names head {head}, which is not in flight"
            )
        self.last_used = (self.last_used + 1) & 0xFFFF
        sbuf, spos = rec.status_at
        status = sbuf.read(spos, 1)[0]
        data = b"".join(b.read(p, n) for b, p, n in rec.data_at) if rec.req.data_writable \
            else None
        await self._release(rec)
        self._done[rec.token] = BlkResult(rec.token, status, used_len, data, rec.req, rec.head)
        return True

    async def wait(self, what: int | Iterable[int] | None = None) -> list[BlkResult]:
        """Wait for completions and return their results.

        ``what`` is a list of tokens (results in that order), a count (the next ``count``
        completions in used-ring order) or None (everything outstanding). Raises
        ``DeviceFault`` if the device needs a reset before they complete.
        """
        if isinstance(what, int):
            count = what
            if count > len(self._done) + len(self._inflight):
                raise ValueError(f"waiting for {count} completion(s), only "
                                 f"{len(self._done) + len(self._inflight)} outstanding")

            def satisfied() -> bool:
                return len(self._done) >= count
        else:
            tokens = list(self._done) + list(self._inflight) if what is None else list(what)
            if len(set(tokens)) != len(tokens):
                raise ValueError(f"duplicate tokens in {tokens}")
            for t in tokens:
                if t not in self._done and t not in self._inflight:
                    raise ValueError(f"token {t} is neither in flight nor completed-unclaimed")

            def satisfied() -> bool:
                return all(t in self._done for t in tokens)

        await self._wait_until(satisfied)
        if isinstance(what, int):
            return [self._done.pop(t) for t in list(self._done)[:what]]
        return [self._done.pop(t) for t in tokens]

    async def _reap_until(self, satisfied: Callable[[], bool]) -> bool:
        while not satisfied():
            if not await self._reap_one():
                return False
        return True

    async def wait_any(self) -> list[BlkResult]:
        """Wait for at least one completion, then reap every one the used ring holds (Linux
        ``virtblk_done``); returns them with any completed-unclaimed ones, in used-ring
        order. How many it returns depends on how fast the device was."""
        if not self._done and not self._inflight:
            raise ValueError("nothing in flight")
        await self._wait_until(lambda: bool(self._done))
        while await self._reap_one():
            pass
        return [self._done.pop(t) for t in list(self._done)]

    async def _wait_until(self, satisfied: Callable[[], bool]) -> None:
        polls = 0
        event_idx = self.negotiated(spec.VIRTIO_RING_F_EVENT_IDX)
        while not await self._reap_until(satisfied):
            if self._needs_reset:
                raise DeviceFault(await self.device_status(), self.in_flight)
            if self.no_interrupt and event_idx:  # (keep used_event out of the device's way)
                self.set_used_event(self.last_used + 0x8000)
            elif event_idx and not self._enable_cb():
                continue  # completions arrived meanwhile: reap them before sleeping
            if self.no_interrupt:
                status = await self.device_status()
                if status & spec.STATUS_DEVICE_NEEDS_RESET:
                    await self._fault_seen(satisfied, status)
                    return
                polls += 1
                if polls > self.poll_limit:
                    raise TimeoutError(
                        f"no completion after {self.poll_limit} polls of the used ring "
                        f"({len(self._inflight)} in flight; was the queue kicked?)"
                    )
                continue
            try:
                if self.irq_timeout is None:
                    await self.link.wait_irq()
                else:
                    await self.link.wait_irq(self.irq_timeout)
            except TimeoutError:
                status = await self.device_status()
                if status & spec.STATUS_DEVICE_NEEDS_RESET:
                    await self._fault_seen(satisfied, status)
                    return
                raise TimeoutError(
                    f"no interrupt while waiting ({len(self._inflight)} request(s) in flight, "
                    f"Status={status:#04x}; was the queue kicked?)"
                ) from None
            isr = await self._r(spec.MMIO_INTERRUPT_STATUS)
            if isr & spec.INT_USED_BUFFER:
                self.interrupts += 1
            if isr:
                await self._w(spec.MMIO_INTERRUPT_ACK, isr)
            if isr & spec.INT_CONFIG_CHANGE:
                status = await self.device_status()
                if status & spec.STATUS_DEVICE_NEEDS_RESET:
                    await self._fault_seen(satisfied, status)
                    return

    async def _fault_seen(self, satisfied: Callable[[], bool], status: int) -> None:
        """Entries completed before the fault are still delivered; anything else raises."""
        self._needs_reset = True
        if not await self._reap_until(satisfied):
            raise DeviceFault(status, self.in_flight)

    # --- convenience ------------------------------------------------------------------------
    async def request(self, req: BlkRequest) -> BlkResult:
        """Submit, kick and wait for one request."""
        token = await self.submit(req)
        await self.notify()
        return (await self.wait([token]))[0]

    async def run_batch(self, reqs: Sequence[BlkRequest]) -> list[BlkResult]:
        """Submit all, kick once, wait for all. If the ring or the grant references run out,
        the batch is split: what fits is kicked and completed before the rest is submitted."""
        for req in reqs:  # a bad layout must not leave half a batch published
            self._check_layout(req)
        results: list[BlkResult] = []
        i = 0
        while i < len(reqs):
            tokens: list[int] = []
            while i < len(reqs):
                try:
                    tokens.append(await self.submit(reqs[i]))
                except (QueueFull, MemoryError):
                    if not tokens:
                        raise
                    break
                i += 1
            await self.notify()
            results += await self.wait(tokens)
        return results

    async def read(self, sector: int, nsectors: int = 1) -> bytes:
        res = await self.request(BlkRequest(spec.VIRTIO_BLK_T_IN, sector,
                                            length=nsectors * spec.SECTOR_SIZE))
        if not res.ok:
            raise BlkError(f"read of {nsectors} sector(s) at {sector}", res)
        assert res.data is not None
        return res.data

    async def write(self, sector: int, data: bytes) -> None:
        res = await self.request(BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=bytes(data)))
        if not res.ok:
            raise BlkError(f"write of {len(data)} byte(s) at sector {sector}", res)

    async def flush(self) -> None:
        if not self.features >> spec.VIRTIO_BLK_F_FLUSH & 1:
            raise RuntimeError("VIRTIO_BLK_F_FLUSH was not negotiated")
        res = await self.request(BlkRequest(spec.VIRTIO_BLK_T_FLUSH))
        if not res.ok:
            raise BlkError("flush", res)

    async def get_id(self) -> bytes:
        """The 20-byte serial (NUL padded)."""
        res = await self.request(BlkRequest(spec.VIRTIO_BLK_T_GET_ID,
                                            length=spec.VIRTIO_BLK_ID_BYTES))
        if not res.ok:
            raise BlkError("get_id", res)
        assert res.data is not None
        return res.data

    async def _dwz(self, type_: int, bit: int, what: str, sector: int, nsectors: int,
                   flags: int) -> None:
        if not self.negotiated(bit):
            raise RuntimeError(f"VIRTIO_BLK_F_{what.upper()} was not negotiated")
        res = await self.request(dwz_request(type_, [(sector, nsectors, flags)]))
        if not res.ok:
            raise BlkError(f"{what} of {nsectors} sector(s) at {sector}", res)

    async def discard(self, sector: int, nsectors: int) -> None:
        """One ``T_DISCARD`` range (no UNMAP flag: section 5.2.6.2)."""
        await self._dwz(spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_F_DISCARD, "discard",
                        sector, nsectors, 0)

    async def write_zeroes(self, sector: int, nsectors: int, *, unmap: bool = False) -> None:
        """One ``T_WRITE_ZEROES`` range (``unmap``: flags bit 0, a hint)."""
        await self._dwz(spec.VIRTIO_BLK_T_WRITE_ZEROES, spec.VIRTIO_BLK_F_WRITE_ZEROES,
                        "write_zeroes", sector, nsectors,
                        spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if unmap else 0)
