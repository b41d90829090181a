"""The device's two register maps, declared once: offset, name, access, reset value, meaning.

``GUEST``: the virtio-mmio version 2 registers of the guest port ``s_axil`` (virtio 1.2 section
4.2.2, one queue, virtio-blk configuration of section 5.2.4); ``HV``: the privileged registers of
``s_hv`` (``docs/architecture.md``); offsets are the names of :mod:`models.spec`. From them
``rtl/mmio.py`` and ``rtl/hvregs.py`` generate their read multiplexers and decode by name, the
reference model reads, resets and stores (:class:`Storage`), ``tools/regdoc.py`` writes the
documents' tables and ``tests/regmap_check.py`` checks a port. The pattern is amaranth-soc's
(registers with an access mode, collected into a map) without the dependency: behaviour beyond
"store what is written" is explicit code in the register files, keyed by these names.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from models import spec

__all__ = ["GUEST", "HV", "Access", "Register", "RegisterMap", "Storage"]


class Access(enum.Enum):
    """What an access does, beyond the side effects the meaning states."""

    RO = "RO"  #: writes are ignored
    WO = "WO"  #: reads return 0
    RW = "RW"  #: a read returns what was written (``width`` bits), unless the meaning says
    RW1C = "RW1C"  #: writing a 1 clears that bit


RO, WO, RW, RW1C = Access.RO, Access.WO, Access.RW, Access.RW1C


@dataclass(frozen=True)
class Register:
    """One register of a map.

    ``reset`` is what a read returns after reset: an int, the name of a device parameter (a
    ``str``, resolved with :meth:`value`), or None for storage reset does not touch. ``width``
    bits are stored (or read); the others read 0. A register wider than 32 bits is read as
    32-bit words: at one offset, word ``selector`` (the selector register's name), or, without
    a selector, at consecutive offsets. ``queue``: a register of the queue QueueSel selects;
    only queue 0 exists, so while QueueSel != 0 it reads 0 and ignores writes. ``count``: an
    array of that many registers (a device parameter), ``width // 8`` bytes apart.
    """

    offset: int
    name: str
    access: Access
    reset: int | str | None
    meaning: str
    width: int = 32
    selector: str | None = None
    queue: bool = False
    count: str | None = None

    @property
    def words(self) -> int:
        """32-bit words at consecutive offsets (1 for a selected or a one-word register)."""
        return 1 if self.selector else max(1, self.width // 32)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(self.offset + 4 * word for word in range(self.words))

    @property
    def mask(self) -> int:
        """The stored bits of each 32-bit word."""
        return (1 << min(self.width, 32)) - 1

    def value(self, params: dict[str, int]) -> int:
        """The whole reset value, device parameters taken from ``params``."""
        return params[self.reset] if isinstance(self.reset, str) else self.reset or 0


class RegisterMap:
    """Registers by offset, each found by its name; no two may overlap."""

    def __init__(self, name: str, registers: list[Register]):
        self.name, self._registers = name, sorted(registers, key=lambda r: r.offset)
        self._by_name = {r.name: r for r in self._registers}
        offsets = [o for r in self._registers for o in r.offsets]
        if len(self._by_name) != len(registers) or len(set(offsets)) != len(offsets):
            raise ValueError(f"{name}: register names or offsets repeat")

    def __iter__(self) -> Iterator[Register]:
        return iter(self._registers)

    def __getitem__(self, name: str) -> Register:
        return self._by_name[name]

    def markdown(self) -> str:
        """The map as the Markdown table of README.md and docs/architecture.md."""
        rows = ["| offset | name | access | reset | meaning |", "|---|---|---|---|---|"]
        for r in self:
            offset = "/".join(f"0x{o:03X}" for o in r.offsets)
            if r.count:  # an array: "GRANT[ref]" at offset + 8·ref
                offset = f"0x{r.offset:03X} + {r.width // 8}·{r.name[r.name.index('[') + 1:-1]}"
            reset = ("not reset" if r.reset is None else f"`{r.reset}`" if isinstance(r.reset, str)
                     else f"{r.reset}" if r.reset < 10 else f"0x{r.reset:X}")
            rows.append(f"| {offset} | {r.name} | {r.access.value} | {reset} | {r.meaning} |")
        return "\n".join(rows) + "\n"

    def resets(self, r: Register, params: dict[str, int]) -> list[int]:
        """The reset value of each of ``r``'s words, parameters taken from ``params``."""
        return [r.value(params) >> 32 * word & 0xFFFF_FFFF for word in range(max(1, r.width // 32))]


class Storage:
    """A map's registers kept in attributes of a model (with its device parameters as ``params``):
    ``attrs[name]`` is what register ``name`` reads and a plain write stores, registers naming one
    attribute its 32-bit words in offset order; any other register reads its reset value."""

    def __init__(self, regmap: RegisterMap, attrs: dict[str, str]):
        self.regmap, self.attrs, names = regmap, attrs, [r.name for r in regmap if r.name in attrs]
        self._shift = {n: 32 * [attrs[m] for m in names[:i]].count(attrs[n])
                       for i, n in enumerate(names)}
        self._at = {o: (r, w) for r in regmap if not r.count for w, o in enumerate(r.offsets)}

    def get(self, model: Any, name: str) -> int:  # register ``name``, from its word 0 on
        return int(getattr(model, self.attrs[name])) >> self._shift[name]

    def locate(self, model: Any, offset: int) -> tuple[Register, int] | None:
        """The register and its word an access at ``offset`` reaches, or None: unmapped or an
        array, a queue register while QueueSel != 0, a selected word beyond the register."""
        reg, word = self._at.get(offset, (None, 0))
        if reg is None or (reg.queue and self.get(model, "QueueSel")):
            return None
        word = self.get(model, reg.selector) if reg.selector else word
        return (reg, word) if word < max(1, reg.width // 32) else None

    def read(self, model: Any, offset: int) -> int:
        """What a read at ``offset`` returns: 0 if it reaches no register or a WO one."""
        reg, word = self.locate(model, offset) or (None, 0)
        if reg is None or reg.access is WO:
            return 0
        value = self.get(model, reg.name) if reg.name in self.attrs else reg.value(model.params)
        return value >> 32 * word & reg.mask

    def store(self, model: Any, reg: Register, word: int, value: int) -> None:
        """A plain write: word ``word`` of ``reg`` takes ``value``'s ``width`` bits."""
        attr, shift = self.attrs[reg.name], self._shift[reg.name] + 32 * word
        old = getattr(model, attr) & ~(reg.mask << shift)
        setattr(model, attr, old | (value & reg.mask) << shift)

    def reset(self, model: Any) -> None:
        """Every stored register to its reset value (a property is computed, not stored)."""
        for attr in dict.fromkeys(self.attrs.values()):
            if not isinstance(getattr(type(model), attr, None), property):
                setattr(model, attr, sum(self.regmap[n].value(model.params) << self._shift[n]
                                         for n, a in self.attrs.items() if a == attr))


_R, _Q = Register, {"queue": True}

#: virtio-mmio version 2 (virtio 1.2 section 4.2.2), one queue, virtio-blk (section 5.2).
GUEST = RegisterMap("guest", [
    _R(spec.MMIO_MAGIC_VALUE, "MagicValue", RO, spec.MAGIC_VALUE, 'the string "virt"'),
    _R(spec.MMIO_VERSION, "Version", RO, spec.MMIO_VERSION_VALUE,
       "virtio-mmio version 2 (not legacy)"),
    _R(spec.MMIO_DEVICE_ID, "DeviceID", RO, spec.VIRTIO_ID_BLOCK, "block device"),
    _R(spec.MMIO_VENDOR_ID, "VendorID", RO, spec.VENDOR_ID, 'the string "HANK": this project'),
    _R(spec.MMIO_DEVICE_FEATURES, "DeviceFeatures", RO, "device_features",
       "features offered, 64 bits read as word DeviceFeaturesSel (others read 0): FLUSH (9), "
       "VERSION_1 (32), those of the build (SIZE_MAX 1, SEG_MAX 2, BLK_SIZE 6, DISCARD 13, "
       "WRITE_ZEROES 14, INDIRECT_DESC 28, EVENT_IDX 29; all by default) and, in handle and "
       "IOVA modes, ACCESS_PLATFORM (33)", 64, "DeviceFeaturesSel"),
    _R(spec.MMIO_DEVICE_FEATURES_SEL, "DeviceFeaturesSel", RW, 0,
       "word of DeviceFeatures (write-only in the specification; reads back)"),
    _R(spec.MMIO_DRIVER_FEATURES, "DriverFeatures", RW, 0, "features the driver accepts, 64 bits "
       "written as word DriverFeaturesSel (others ignore writes and read 0)", 64,
       "DriverFeaturesSel"),
    _R(spec.MMIO_DRIVER_FEATURES_SEL, "DriverFeaturesSel", RW, 0, "word of DriverFeatures"),
    _R(spec.MMIO_QUEUE_SEL, "QueueSel", RW, 0, "queue of the queue registers (QueueNumMax to "
       "QueueDeviceHigh but QueueNotify): only queue 0 exists; for any other they read 0 and "
       "ignore writes"),
    _R(spec.MMIO_QUEUE_NUM_MAX, "QueueNumMax", RO, "queue_num_max", "largest queue size", **_Q),
    _R(spec.MMIO_QUEUE_NUM, "QueueNum", RW, "queue_num_max", "queue size", **_Q),
    _R(spec.MMIO_QUEUE_READY, "QueueReady", RW, 0, "bit 0: the queue may be used", 1, **_Q),
    _R(spec.MMIO_QUEUE_NOTIFY, "QueueNotify", WO, 0, "write 0 while QueueReady = 1 and Status "
       "has DRIVER_OK: start the engine; any other write is ignored"),
    _R(spec.MMIO_INTERRUPT_STATUS, "InterruptStatus", RO, 0,
       "bit 0 used buffer, bit 1 configuration change (a fault)", 2),
    _R(spec.MMIO_INTERRUPT_ACK, "InterruptACK", WO, 0, "write 1s to clear InterruptStatus bits"),
    _R(spec.MMIO_STATUS, "Status", RW, 0, "device status byte (section 2.1); writing 0 resets "
       "the device; FEATURES_OK is refused unless the driver features are acceptable, "
       "DEVICE_NEEDS_RESET is kept", 8),
    _R(spec.MMIO_QUEUE_DESC_LOW, "QueueDescLow", RW, 0, "descriptor table, bits 31:0", **_Q),
    _R(spec.MMIO_QUEUE_DESC_HIGH, "QueueDescHigh", RW, 0, "descriptor table, bits 63:32", **_Q),
    _R(spec.MMIO_QUEUE_DRIVER_LOW, "QueueDriverLow", RW, 0, "avail ring, bits 31:0", **_Q),
    _R(spec.MMIO_QUEUE_DRIVER_HIGH, "QueueDriverHigh", RW, 0, "avail ring, bits 63:32", **_Q),
    _R(spec.MMIO_QUEUE_DEVICE_LOW, "QueueDeviceLow", RW, 0, "used ring, bits 31:0", **_Q),
    _R(spec.MMIO_QUEUE_DEVICE_HIGH, "QueueDeviceHigh", RW, 0, "used ring, bits 63:32", **_Q),
    _R(spec.MMIO_CONFIG_GENERATION, "ConfigGeneration", RO, 0, "the configuration never changes"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_CAPACITY, "capacity", RO, "disk_bytes / 512",
       "virtio_blk_config.capacity (section 5.2.4): the disk in 512-byte sectors", 64),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_SIZE_MAX, "size_max", RO, "size_max",
       "the longest descriptor, in bytes (SIZE_MAX; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_SEG_MAX, "seg_max", RO, "seg_max",
       "the most data descriptors of a request (SEG_MAX; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_BLK_SIZE, "blk_size", RO, "blk_size",
       "block size, 512 (BLK_SIZE; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_MAX_DISCARD_SECTORS, "max_discard_sectors", RO,
       "max_discard_sectors", "the whole disk (DISCARD; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_MAX_DISCARD_SEG, "max_discard_seg", RO,
       "max_discard_seg", "1 (DISCARD; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_DISCARD_SECTOR_ALIGNMENT, "discard_sector_alignment",
       RO, "discard_sector_alignment", "8 sectors, a hint (DISCARD; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS, "max_write_zeroes_sectors",
       RO, "max_write_zeroes_sectors", "the whole disk (WRITE_ZEROES; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_MAX_WRITE_ZEROES_SEG, "max_write_zeroes_seg", RO,
       "max_write_zeroes_seg", "1 (WRITE_ZEROES; 0 when not offered)"),
    _R(spec.MMIO_CONFIG + spec.BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP, "write_zeroes_may_unmap", RO, 0,
       "bits 7:0: 0, the device never deallocates (the byte's word reads 0 above it)", 8),
])

#: The privileged register file (docs/architecture.md, "Privileged register file").
HV = RegisterMap("hv", [
    _R(spec.HV_VERSION, "HV_VERSION", RO, spec.HV_VERSION_VALUE,
       "implementation version (major 1, minor 0)"),
    _R(spec.HV_CTRL, "HV_CTRL", RW, 0, "bits 1:0: the mode, 0 GPA, 1 grant handles, 2 IOVA "
       "(docs/iotlb.md); a write of 3 leaves it unchanged", 2),
    _R(spec.HV_DOMID, "HV_DOMID", RW, 0, "bits 15:0: the domain id every grant entry must name",
       16),
    _R(spec.HV_ENTRIES, "HV_ENTRIES", RO, "entries", "number of table entries"),
    _R(spec.HV_FAULT_STATUS, "HV_FAULT_STATUS", RW1C, 0, "bit 0: a fault is latched", 1),
    _R(spec.HV_FAULT_CAUSE, "HV_FAULT_CAUSE", RO, 0, "cause of the first latched fault", 4),
    _R(spec.HV_FAULT_ADDR_LO, "HV_FAULT_ADDR_LO", RO, 0,
       "the address or handle that faulted, bits 31:0"),
    _R(spec.HV_FAULT_ADDR_HI, "HV_FAULT_ADDR_HI", RO, 0, "the same, bits 63:32"),
    _R(spec.HV_FAULT_COUNT, "HV_FAULT_COUNT", RO, 0, "faults since reset"),
    _R(spec.HV_SYNC, "HV_SYNC", RW, 1, "write: start a barrier; read: 1 once every transaction "
       "issued before the write has completed (a later burst is looked up again if its entry "
       "was written)", 1),
    _R(spec.HV_STAT_XLATE, "HV_STAT_XLATE", RO, 0, "table lookups since reset (extension)"),
    _R(spec.HV_STAT_REQUESTS, "HV_STAT_REQUESTS", RO, 0,
       "used elements published since reset (extension)"),
    _R(spec.HV_IOTLB_IOVA_LO, "IOTLB_IOVA_LO", RW, 0, "staged IOVA, bits 31:0 (the low bits "
       "below the staged size are ignored)"),
    _R(spec.HV_IOTLB_IOVA_HI, "IOTLB_IOVA_HI", RW, 0, "staged IOVA, bits 63:32"),
    _R(spec.HV_IOTLB_PA_LO, "IOTLB_PA_LO", RW, 0, "staged physical address, bits 31:0 (same "
       "alignment)"),
    _R(spec.HV_IOTLB_PA_HI, "IOTLB_PA_HI", RW, 0, "staged physical address, bits 63:32"),
    _R(spec.HV_IOTLB_ATTR, "IOTLB_ATTR", RW, 0, "bits 5:0 log2 of the size, 12 to 30; bit 8 the "
       "device may read; bit 9 the device may write", 10),
    _R(spec.HV_IOTLB_CMD, "IOTLB_CMD", WO, 0, "1 insert the staged mapping (replacing every "
       "entry it overlaps); 2 invalidate every entry overlapping the staged range; 3 "
       "invalidate all"),
    _R(spec.HV_IOTLB_MISS, "IOTLB_MISS", RO, 0, "bit 0 a miss is pending; bit 1 the access "
       "reads memory; bit 2 it writes memory", 3),
    _R(spec.HV_MISS_IOVA_LO, "MISS_IOVA_LO", RO, 0, "the IOVA of the first byte the stalled "
       "access needs in its 4 KiB page, bits 31:0"),
    _R(spec.HV_MISS_IOVA_HI, "MISS_IOVA_HI", RO, 0, "the same, bits 63:32"),
    _R(spec.HV_MISS_RESOLVE, "MISS_RESOLVE", WO, 0, "1 look up again (a second miss raises a new "
       "one); 2 fail: the access faults with cause 10"),
    _R(spec.HV_STAT_IOTLB_HITS, "STAT_IOTLB_HITS", RO, 0, "IOTLB lookups that hit, since rst"),
    _R(spec.HV_STAT_IOTLB_MISSES, "STAT_IOTLB_MISSES", RO, 0, "IOTLB misses raised, since rst"),
    _R(spec.HV_STAT_IOTLB_INVALIDATED, "STAT_IOTLB_INVALIDATED", RO, 0,
       "IOTLB entries removed by invalidation (commands 2 and 3), since rst"),
    _R(spec.HV_IOTLB_ENTRIES, "HV_IOTLB_ENTRIES", RO, "iotlb_entries",
       "number of IOTLB entries"),
    _R(spec.HV_GRANT_BASE, "GRANT[ref]", RW, None,
       "word 0: flags (15:0), domid (31:16); word 1: frame", 64, count="entries"),
])
