"""Reference model of the virtio-blk device with grant-handle and IOVA DMA.

Implements docs/architecture.md (the behavioural contract) and, where it is silent, virtio 1.x.
Split the way ``rtl/`` is: the virtio-mmio register file (``models/mmio.py``), the privileged
registers and faults (``models/hvregs.py``), the DMA engine with its translation per page
(``models/dma.py``) and the ring engine (``models/engine.py``); :class:`ReferenceDevice`
composes them and owns the state they share. The model is untimed: an
accepted QueueNotify write runs the engine to idle (or halt) inside the write. It records every
bus transaction in issue order so the RTL can be compared with it transaction by transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from models import spec
from models.bus import Transaction
from models.dma import DmaEngine
from models.engine import Descriptor, RingEngine
from models.features import Features
from models.grant import GrantTable
from models.hvregs import Fault, HvRegisters
from models.iotlb import Iotlb
from models.memory import GuestMemory
from models.mmio import MmioRegisters, RegisterPortModel
from models.spec import HV_STAT_REQUESTS, HV_STAT_XLATE

__all__ = ["HV_STAT_REQUESTS", "HV_STAT_XLATE", "Descriptor", "Fault", "ReferenceDevice",
           "RegisterPortModel"]


class ReferenceDevice(MmioRegisters, HvRegisters, DmaEngine, RingEngine):
    """The whole device: guest and hypervisor register ports, grant table, IOTLB, RAM disk,
    engine.

    Parameters mirror the RTL's: ``entries`` grant table entries, ``iotlb_entries`` IOTLB
    entries (docs/iotlb.md: a power of two from 8 to 1024), ``queue_num_max``,
    ``disk_bytes`` of RAM disk (a multiple of 512), ``data_width`` of ``m_axi`` (32/64/128).
    ``bus_error(txn)`` returning True makes that transaction fail (SLVERR); a transaction not
    fully inside ``mem`` fails with DECERR. Either gives fault cause 6.

    ``on_transaction(txn)`` is called after every transaction completes (before the engine
    goes on). It may write registers, which models register accesses that the RTL sees while
    its engine runs: a QueueNotify then only sets the pending notify (one more round after the
    engine goes idle), and Status = 0 lets the engine stop after that burst ("a reset never cuts
    a bus transaction").

    ``on_iotlb_miss(device)`` models the hypervisor in IOVA mode (docs/iotlb.md "Lookups,
    misses and faults"): it is called once per IOTLB miss raised, with the miss pending
    (``IOTLB_MISS``, ``MISS_IOVA`` set), and must either write ``MISS_RESOLVE`` (1 or 2; it may
    insert or invalidate mappings first) or reset the device (Status = 0); the engine then
    looks the page up again, faults (cause 10) or stops. A miss without a hook, or a hook that
    leaves the miss pending, is a usage error of the model (``RuntimeError``).

    Recording (not device state, kept across resets; see :meth:`clear_records`):
    ``transactions`` in issue order, ``translations`` (page pieces presented to the translation
    unit in grant and IOVA modes, one per lookup), ``misses`` (``(iova, write)`` of every IOTLB
    miss raised), ``iotlb.evictions`` (entries an insert replaced), ``faults`` (every fault,
    latched or only counted) and ``completed`` (used elements published).
    """

    def __init__(self, mem: GuestMemory, *, entries: int = spec.DEFAULT_ENTRIES,
                 queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES,
                 data_width: int = spec.DEFAULT_DATA_WIDTH,
                 bus_error: Callable[[Transaction], bool] | None = None,
                 on_transaction: Callable[[Transaction], None] | None = None,
                 iotlb_entries: int = spec.DEFAULT_IOTLB_ENTRIES,
                 on_iotlb_miss: Callable[[ReferenceDevice], None] | None = None,
                 features: Features | None = None) -> None:
        # What the build offers (docs/architecture.md "Features a build offers").
        self.features = Features() if features is None else features
        # Bumped by every write to the grant table, HV_CTRL or HV_DOMID: a DMA access looks its
        # page up again before its next burst (docs/architecture.md "Grant revocation").
        self.table_gen = 0
        # Bumped by every IOTLB command that runs and every write to HV_CTRL or HV_DOMID: the
        # same, in IOVA mode (docs/iotlb.md "Invalidation is strict").
        self.iotlb_gen = 0
        self.iotlb = Iotlb(iotlb_entries)  # validates
        self.iotlb_entries = iotlb_entries
        self.on_iotlb_miss = on_iotlb_miss
        self._miss_resolve = 0  # MISS_RESOLVE's value for the pending miss, 0 while none
        self._resets = 0  # driver resets (and rst) so far
        spec.burst_bytes(data_width)  # validates
        if not 1 <= queue_num_max <= 32768 or queue_num_max & (queue_num_max - 1):
            raise ValueError(f"queue_num_max must be a power of two <= 32768: {queue_num_max!r}")
        if disk_bytes < 0 or disk_bytes % spec.SECTOR_SIZE:
            raise ValueError(f"disk_bytes must be a multiple of 512: {disk_bytes!r}")
        self.mem = mem
        self.entries = entries
        self.queue_num_max = queue_num_max
        self.disk_bytes = disk_bytes
        self.data_width = data_width
        self.bus_error = bus_error
        self.on_transaction = on_transaction
        self._running = False
        self._abort = False
        self._werr: int | None = None  # first failed posted write since the last drain
        self.grants = GrantTable(entries)
        self.disk = bytearray(spec.ramdisk_init(disk_bytes))
        self.guest = RegisterPortModel(self._guest_read, self._guest_write, "guest")
        self.hv = RegisterPortModel(self._hv_read, self._hv_write, "hv")
        self.clear_records()
        self.reset()

    def reset(self) -> None:
        """Hardware reset (``rst``): every register to its reset value, fault registers
        cleared, ``HV_CTRL``/``HV_DOMID`` 0, the IOTLB empty (entries, round-robin pointers,
        staging registers, statistics). The grant table and the disk are kept."""
        self.HV_REGS.reset(self)
        self.iotlb.reset()
        self._driver_reset()

    def _driver_reset(self) -> None:
        """Status = 0 (virtio 1.x section 4.2.2.1): the guest-visible state to reset values.

        The privileged fault registers are not touched; a halted engine restarts. A pending
        IOTLB miss is cancelled (``IOTLB_MISS`` reads 0); the IOTLB keeps its entries, which
        are the hypervisor's (docs/iotlb.md).
        """
        self.GUEST_REGS.reset(self)
        self.last_avail_idx = 0
        self.used_idx = 0
        self.signalled_used = 0  # EVENT_IDX: used_idx at the last interrupt decision
        self.avail_event_pub = 0  # EVENT_IDX: the avail_event last written
        self.halted = False
        self.pending_notify = False
        self._werr = None
        self.iotlb_miss = 0  # cancels a pending miss
        self._resets += 1  # a DMA access waiting for a miss's resolution stops
        if self._running:
            self._abort = True  # the engine stops after the burst in flight

    def clear_records(self) -> None:
        """Forget recorded transactions, translations, misses, evictions, faults and
        completions."""
        self.transactions: list[Transaction] = []
        self.translations = 0
        self.misses: list[tuple[int, bool]] = []
        self.iotlb.evictions.clear()
        self.faults: list[Fault] = []
        self.completed = 0

    @property
    def params(self) -> dict[str, int]:
        """The device parameters the register maps' reset values name (models.regmap)."""
        return {"queue_num_max": self.queue_num_max, "entries": self.entries,
                "disk_bytes / 512": self.disk_bytes // spec.SECTOR_SIZE,
                "iotlb_entries": self.iotlb_entries,
                **self.features.params(self.queue_num_max, self.disk_bytes)}

    @property
    def irq(self) -> bool:
        """The interrupt line: high while InterruptStatus is non-zero."""
        return self.interrupt_status != 0

    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        """Return if ``irq`` is high; the untimed model never waits, so raise ``TimeoutError``."""
        if not self.irq:
            raise TimeoutError("irq is low (the reference model has nothing pending)")

