"""The virtio vocabulary, defined once: structure layouts, split-ring geometry, device bring-up.

Read from the virtio 1.2 specification (section numbers in each docstring) and Xen's
``grant_table.h``, nothing from the implementation. The reference model decodes guest memory
with these layouts; the RTL derives its ``data.StructLayout``s from the same field lists
(``rtl/layouts.py``); every driver (the guest model, the benches, the hostile driver, the
vhost-user bridge) lays out rings and brings the device up with them. Nothing is checked: a
layout packs whatever fits its width, so a hostile driver writes raw values the same way.

The bring-up (section 3.1.1) is a *register program*: a generator that yields :class:`Read` and
:class:`Write` and receives each read's value, run by :func:`run_sync` on a synchronous port
(the reference model) or :func:`run_async` on an asynchronous one (AXI4-Lite, a board's link).
"""

from __future__ import annotations

import struct
from collections import namedtuple
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from models import spec

__all__ = [
    "AVAIL_ELEM", "AVAIL_HEADER", "BLK_HEADER", "DESC", "DWZ_SEGMENT", "GRANT_ENTRY", "USED_ELEM",
    "USED_HEADER", "FeaturesRefused", "InitError", "Layout", "Read", "SplitRing", "Write",
    "acknowledge", "bring_up", "driver_ok", "negotiate", "read_device_features", "reset",
    "run_async", "run_sync", "set_queue_addresses", "setup_queue",
]

_FORMAT = {8: "B", 16: "H", 32: "I", 64: "Q"}


class Layout:
    """A little-endian structure in guest memory, ``name`` in the specification (``virtq_desc``):
    ``fields``, ``(name, bits)`` pairs of 8, 16, 32 or 64 bits in memory order, from which the
    ``struct`` format, the byte ``offsets`` and (``rtl/layouts.py``) the Amaranth
    ``data.StructLayout`` are derived. The first field is at byte 0, the least significant bits
    of the structure read as one little-endian integer, as Amaranth lays out a ``StructLayout``.
    """

    def __init__(self, name: str, fields: tuple[tuple[str, int], ...]) -> None:
        for fname, bits in fields:
            if bits not in _FORMAT:
                raise ValueError(f"field {fname!r} must be 8, 16, 32 or 64 bits, not {bits!r}")
        self.name = name
        self.fields = tuple(fields)
        fmt = "<" + "".join(_FORMAT[b] for _, b in self.fields)
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        self.offsets = {f: struct.calcsize(fmt[:i + 1]) for i, (f, _) in enumerate(self.fields)}
        self.tuple = namedtuple(name, [f for f, _ in self.fields])  # type: ignore[misc]

    def pack(self, *values: int, **named: int) -> bytes:
        """Bytes of one structure; fields by position or by name (missing named fields are 0).

        Values are masked to their field's width, so a hostile driver can write anything.
        """
        if values and named:
            raise TypeError(f"{self.name}: give the fields by position or by name, not both")
        if named:
            unknown = set(named) - set(self.offsets)
            if unknown:
                raise TypeError(f"{self.name} has no field {sorted(unknown)[0]!r}")
            values = tuple(named.get(f, 0) for f, _ in self.fields)
        return self.struct.pack(*(v & ((1 << b) - 1) for v, (_, b) in zip(values, self.fields,
                                                                          strict=True)))

    def unpack(self, data: bytes, offset: int = 0) -> Any:
        """The named tuple of the structure at ``data[offset:]``."""
        return self.tuple._make(self.struct.unpack_from(data, offset))

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, {self.fields!r})"


# virtio 1.2 section 2.7.5: struct virtq_desc.
DESC = Layout("virtq_desc", (("addr", 64), ("len", 32), ("flags", 16), ("next", 16)))
# section 2.7.6: struct virtq_avail { le16 flags; le16 idx; le16 ring[]; le16 used_event; }
AVAIL_HEADER = Layout("virtq_avail", (("flags", 16), ("idx", 16)))
AVAIL_ELEM = Layout("virtq_avail_elem", (("id", 16),))
# section 2.7.8: struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[];
# le16 avail_event; }, struct virtq_used_elem { le32 id; le32 len; }
USED_HEADER = Layout("virtq_used", (("flags", 16), ("idx", 16)))
USED_ELEM = Layout("virtq_used_elem", (("id", 32), ("len", 32)))
# section 5.2.6: struct virtio_blk_req { le32 type; le32 reserved; le64 sector; ... }
BLK_HEADER = Layout("virtio_blk_req", (("type", 32), ("reserved", 32), ("sector", 64)))
# section 5.2.6: struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors;
# le32 flags; } (flags bit 0: UNMAP)
DWZ_SEGMENT = Layout("virtio_blk_discard_write_zeroes",
                     (("sector", 64), ("num_sectors", 32), ("flags", 32)))
# Xen include/public/grant_table.h: struct grant_entry_v1 { uint16_t flags; domid_t domid;
# uint32_t frame; }
GRANT_ENTRY = Layout("grant_entry_v1", (("flags", 16), ("domid", 16), ("frame", 32)))

assert DESC.size == spec.DESC_BYTES
assert BLK_HEADER.size == spec.BLK_HEADER_BYTES
assert DWZ_SEGMENT.size == spec.DWZ_SEGMENT_BYTES
assert GRANT_ENTRY.size == spec.GRANT_ENTRY_BYTES


@dataclass(frozen=True)
class SplitRing:
    """The geometry of a split virtqueue of ``num`` entries (virtio 1.2 section 2.7).

    Offsets are from the start of each part (descriptor table, driver area, device area);
    ``num`` is not checked, so a hostile geometry can be described too.
    """

    num: int

    # section 2.7: alignment of each part
    DESC_ALIGN = spec.DESC_ALIGN
    AVAIL_ALIGN = spec.AVAIL_ALIGN
    USED_ALIGN = spec.USED_ALIGN

    @property
    def desc_bytes(self) -> int:
        return DESC.size * self.num

    @property
    def avail_bytes(self) -> int:
        """flags, idx, ring[num], used_event."""
        return AVAIL_HEADER.size + AVAIL_ELEM.size * self.num + 2

    @property
    def used_bytes(self) -> int:
        """flags, idx, ring[num], avail_event."""
        return USED_HEADER.size + USED_ELEM.size * self.num + 2

    def desc(self, i: int) -> int:
        """Offset of descriptor ``i`` in the descriptor table."""
        return DESC.size * i

    def avail_ring(self, idx: int) -> int:
        """Offset of the avail ring entry that free-running index ``idx`` names."""
        return AVAIL_HEADER.size + AVAIL_ELEM.size * (idx % self.num)

    def used_ring(self, idx: int) -> int:
        """Offset of the used element that free-running index ``idx`` names."""
        return USED_HEADER.size + USED_ELEM.size * (idx % self.num)

    @property
    def used_event(self) -> int:
        return AVAIL_HEADER.size + AVAIL_ELEM.size * self.num

    @property
    def avail_event(self) -> int:
        return USED_HEADER.size + USED_ELEM.size * self.num

    AVAIL_IDX = AVAIL_HEADER.offsets["idx"]
    USED_IDX = USED_HEADER.offsets["idx"]


# --- device initialisation (virtio 1.2 section 3.1.1), as a register program ----------------------

class InitError(RuntimeError):
    """The device cannot be brought up (wrong identity, no queue, reset never completes)."""


class FeaturesRefused(InitError):
    """FEATURES_OK did not stick: the device refused the driver's feature set."""


@dataclass(frozen=True)
class Read:
    """Read the 32-bit register at ``offset``; the program receives its value."""

    offset: int


@dataclass(frozen=True)
class Write:
    """Write ``value`` (masked to 32 bits by the runner) to the register at ``offset``."""

    offset: int
    value: int


Program = Generator[Read | Write, int | None, Any]


def run_sync(program: Program, port: Any) -> Any:
    """Run a register program on a synchronous port (``read``/``write``); return what the
    program returns."""
    try:
        op = next(program)
        while True:
            if isinstance(op, Read):
                op = program.send(port.read(op.offset))
            else:
                port.write(op.offset, op.value & 0xFFFF_FFFF)
                op = program.send(None)
    except StopIteration as stop:
        return stop.value


async def run_async(program: Program, port: Any) -> Any:
    """Run a register program on an asynchronous port (``read32``/``write32``)."""
    try:
        op = next(program)
        while True:
            if isinstance(op, Read):
                op = program.send(await port.read32(op.offset))
            else:
                await port.write32(op.offset, op.value & 0xFFFF_FFFF)
                op = program.send(None)
    except StopIteration as stop:
        return stop.value


def _add_status(bit: int) -> Program:
    """Linux ``virtio_add_status``: read-modify-write of Status."""
    status = yield Read(spec.MMIO_STATUS)
    yield Write(spec.MMIO_STATUS, status | bit)


def reset(poll_limit: int = 100_000) -> Program:
    """Write 0 to Status and wait until it reads 0 (section 4.2.3.1: the reset is complete)."""
    yield Write(spec.MMIO_STATUS, 0)
    for _ in range(poll_limit):
        if (yield Read(spec.MMIO_STATUS)) == 0:
            return
    raise TimeoutError(f"Status did not read 0 within {poll_limit} reads after reset")


def acknowledge() -> Program:
    """ACKNOWLEDGE, then DRIVER (section 3.1.1 steps 2 and 3)."""
    yield from _add_status(spec.STATUS_ACKNOWLEDGE)
    yield from _add_status(spec.STATUS_DRIVER)


def read_device_features() -> Program:
    """The 64 feature bits the device offers (DeviceFeaturesSel 1, then 0, as Linux reads)."""
    yield Write(spec.MMIO_DEVICE_FEATURES_SEL, 1)
    hi = yield Read(spec.MMIO_DEVICE_FEATURES)
    yield Write(spec.MMIO_DEVICE_FEATURES_SEL, 0)
    lo = yield Read(spec.MMIO_DEVICE_FEATURES)
    return hi << 32 | lo


def negotiate(features: int) -> Program:
    """Write the driver's features, set FEATURES_OK and read it back (section 3.1.1 steps 5, 6).

    Returns the Status read back; raises :class:`FeaturesRefused` if FEATURES_OK did not
    stick, after setting FAILED as the specification asks of a driver that gives up.
    """
    yield Write(spec.MMIO_DRIVER_FEATURES_SEL, 1)
    yield Write(spec.MMIO_DRIVER_FEATURES, features >> 32)
    yield Write(spec.MMIO_DRIVER_FEATURES_SEL, 0)
    yield Write(spec.MMIO_DRIVER_FEATURES, features)
    yield from _add_status(spec.STATUS_FEATURES_OK)
    status = yield Read(spec.MMIO_STATUS)
    if not status & spec.STATUS_FEATURES_OK:
        yield from _add_status(spec.STATUS_FAILED)
        raise FeaturesRefused(f"device refused features {features:#x}: FEATURES_OK did not "
                              f"stick (Status={status:#04x})")
    return status


def set_queue_addresses(desc: int, driver: int, device: int) -> Program:
    """The six queue address registers, low word then high word (Linux order: desc, driver,
    device)."""
    for low, value in ((spec.MMIO_QUEUE_DESC_LOW, desc), (spec.MMIO_QUEUE_DRIVER_LOW, driver),
                       (spec.MMIO_QUEUE_DEVICE_LOW, device)):
        yield Write(low, value)
        yield Write(low + 4, value >> 32)


def setup_queue(num: int, desc: int, driver: int, device: int, *, check: bool = True
                ) -> Program:
    """Queue 0: select it, size it, give its addresses, make it ready (section 4.2.3.2).

    With ``check`` the program first reads QueueReady (must be 0) and QueueNumMax (``num``
    must fit) and raises :class:`InitError` otherwise; returns QueueNumMax (``None`` without
    ``check``). ``num`` and the addresses are written as given: a hostile driver passes
    ``check=False`` and any values.
    """
    yield Write(spec.MMIO_QUEUE_SEL, 0)
    nmax = None
    if check:
        if (yield Read(spec.MMIO_QUEUE_READY)):
            raise InitError("queue 0 is already ready after reset")
        nmax = yield Read(spec.MMIO_QUEUE_NUM_MAX)
        if nmax == 0:
            raise InitError("QueueNumMax is 0: queue 0 not available")
        if not 1 <= num <= nmax:
            raise InitError(f"queue size {num} is not in [1, QueueNumMax={nmax}]")
    yield Write(spec.MMIO_QUEUE_NUM, num)
    yield from set_queue_addresses(desc, driver, device)
    yield Write(spec.MMIO_QUEUE_READY, 1)
    return nmax


def driver_ok() -> Program:
    """DRIVER_OK (section 3.1.1 step 8): the device is live."""
    yield from _add_status(spec.STATUS_DRIVER_OK)


def bring_up(choose: Callable[[int], int] | int, num: int, desc: int, driver: int, device: int,
             *, poll_limit: int = 100_000) -> Program:
    """The whole initialisation of section 3.1.1 for one queue; returns the accepted features.

    ``choose`` is the driver's feature set, or a function from the offered features to it.
    """
    yield from reset(poll_limit)
    yield from acknowledge()
    offered = yield from read_device_features()
    features = choose(offered) if callable(choose) else choose
    yield from negotiate(features)
    yield from setup_queue(num, desc, driver, device)
    yield from driver_ok()
    return features

