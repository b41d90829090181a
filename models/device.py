"""Reference model of the virtio-blk device with grant-handle DMA.

Implements docs/architecture.md (the behavioural contract) and, where it is silent, virtio 1.x:

* virtio-mmio version 2 register file (virtio 1.x section 4.2.2), one queue;
* split virtqueue ring engine (section 2.7) serving virtio-blk requests (section 5.2.6);
* the privileged register file (mode, domain, fault latch) and the grant table;
* translation (``models.grant``) and DMA splitting (``models.bus``) of every device access;
* faults: halt until a driver reset, ``DEVICE_NEEDS_RESET`` (section 2.1.2), configuration
  change interrupt.

The model is untimed: an accepted QueueNotify write runs the engine to idle (or halt) inside the
write. It records every bus transaction in issue order so the RTL can be compared with it
transaction by transaction.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from models import spec
from models.bus import DmaFault, Transaction, iter_bursts
from models.grant import GrantTable, Translation, translate
from models.memory import GuestMemory

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = spec.ADDR_MASK

# Statistics counters after the fixed privileged map (read-only, cleared by rst). They are not
# in docs/architecture.md; they mirror the RTL's extension (rtl/hvregs.py).
HV_STAT_XLATE = spec.HV_STAT_XLATE
HV_STAT_REQUESTS = spec.HV_STAT_REQUESTS

_DESC = struct.Struct("<QIHH")  # virtq_desc: le64 addr, le32 len, le16 flags, le16 next
_HEADER = struct.Struct("<IIQ")  # virtio_blk_req header: le32 type, le32 reserved, le64 sector


class _Halt(Exception):
    """Unwinds the engine after a fault was recorded, or to stop it for a driver reset."""


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


class Fault(NamedTuple):
    """A fault the engine raised: ``cause`` (``spec.FAULT_*``) and 64-bit ``addr``."""

    cause: int
    addr: int


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


class RegisterPortModel:
    """A 32-bit register window (AXI4-Lite port) of the reference device.

    ``read``/``write`` are synchronous; ``read32``/``write32`` are the async
    :class:`sw.transport.RegisterPort` interface. Offsets are byte offsets; the two low bits
    are ignored (a word access covers the aligned word). Values are taken modulo 2**32.
    """

    def __init__(
        self,
        reader: Callable[[int], int],
        writer: Callable[[int, int, int], None],
        name: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.name = name

    def read(self, offset: int) -> int:
        if offset < 0:
            raise ValueError(f"{self.name}: negative register offset {offset!r}")
        return self._reader(offset & ~3) & _U32

    def write(self, offset: int, value: int, strb: int = 0xF) -> None:
        if offset < 0:
            raise ValueError(f"{self.name}: negative register offset {offset!r}")
        self._writer(offset & ~3, value & _U32, strb & 0xF)

    async def read32(self, offset: int) -> int:
        return self.read(offset)

    async def write32(self, offset: int, value: int) -> None:
        self.write(offset, value)

    def __repr__(self) -> str:
        return f"<RegisterPortModel {self.name}>"


class ReferenceDevice:
    """The whole device: guest and hypervisor register ports, grant table, RAM disk, engine.

    Parameters mirror the RTL's: ``entries`` grant table entries, ``queue_num_max``,
    ``disk_bytes`` of RAM disk (a multiple of 512), ``data_width`` of ``m_axi`` (32/64/128).
    ``bus_error(txn)`` returning True makes that transaction fail (SLVERR); a transaction not
    fully inside ``mem`` fails with DECERR. Either gives fault cause 6.

    ``on_transaction(txn)`` is called after every transaction completes (before the engine
    goes on). It may write registers, which models register accesses that the RTL sees while
    its engine runs: a QueueNotify then only sets the pending notify (one more round after the
    engine goes idle), and Status = 0 lets the engine stop after that burst ("a reset never cuts
    a bus transaction").

    Recording (not device state, kept across resets; see :meth:`clear_records`):
    ``transactions`` in issue order, ``translations`` (page pieces presented to the translation
    unit in handle mode), ``faults`` (every fault, latched or only counted) and ``completed``
    (used elements published).
    """

    def __init__(
        self,
        mem: GuestMemory,
        *,
        entries: int = spec.DEFAULT_ENTRIES,
        queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
        disk_bytes: int = spec.DEFAULT_DISK_BYTES,
        data_width: int = spec.DEFAULT_DATA_WIDTH,
        bus_error: Callable[[Transaction], bool] | None = None,
        on_transaction: Callable[[Transaction], None] | None = None,
    ) -> None:
        # Bumped by every write to the grant table, HV_CTRL or HV_DOMID: a DMA access looks its
        # page up again before its next burst (docs/architecture.md "Grant revocation").
        self.table_gen = 0
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

    # ==========================================================================================
    # Reset, recording, interrupt
    # ==========================================================================================
    def reset(self) -> None:
        """Hardware reset (``rst``): every register to its reset value, fault registers
        cleared, ``HV_CTRL``/``HV_DOMID`` 0. The grant table and the disk are kept."""
        self.handle_mode = False
        self.domid = 0
        self.fault_status = 0
        self.fault_cause = spec.FAULT_NONE
        self.fault_addr = 0
        self.fault_count = 0
        self.stat_xlate = 0
        self.stat_requests = 0
        self._driver_reset()

    def _driver_reset(self) -> None:
        """Status = 0 (virtio 1.x section 4.2.2.1): the guest-visible state to reset values.

        The privileged fault registers are not touched; a halted engine restarts.
        """
        self.status = 0
        self.device_features_sel = 0
        self.driver_features = [0, 0]
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.queue_num = self.queue_num_max
        self.queue_ready = 0
        self.queue_desc = 0
        self.queue_driver = 0
        self.queue_device = 0
        self.interrupt_status = 0
        self.last_avail_idx = 0
        self.used_idx = 0
        self.halted = False
        self.pending_notify = False
        self._werr = None
        if self._running:
            self._abort = True  # the engine stops after the burst in flight

    def clear_records(self) -> None:
        """Forget recorded transactions, translations, faults and completions."""
        self.transactions: list[Transaction] = []
        self.translations = 0
        self.faults: list[Fault] = []
        self.completed = 0

    @property
    def irq(self) -> bool:
        """The interrupt line: high while InterruptStatus is non-zero."""
        return self.interrupt_status != 0

    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        """Return if ``irq`` is high; the untimed model never waits, so raise ``TimeoutError``."""
        if not self.irq:
            raise TimeoutError("irq is low (the reference model has nothing pending)")

    # ==========================================================================================
    # Features
    # ==========================================================================================
    @property
    def device_features(self) -> int:
        """64-bit device feature set: FLUSH, VERSION_1, and ACCESS_PLATFORM in handle mode."""
        f = 1 << spec.VIRTIO_BLK_F_FLUSH | 1 << spec.VIRTIO_F_VERSION_1
        if self.handle_mode:
            f |= 1 << spec.VIRTIO_F_ACCESS_PLATFORM
        return f

    @property
    def driver_features_value(self) -> int:
        return self.driver_features[0] | self.driver_features[1] << 32

    def features_acceptable(self) -> bool:
        """FEATURES_OK may be set (virtio 1.x section 3.1.1 step 5/6): the driver's features are
        a subset of the device's, contain VERSION_1, and ACCESS_PLATFORM in handle mode."""
        drv = self.driver_features_value
        if drv & ~self.device_features:
            return False
        if not drv >> spec.VIRTIO_F_VERSION_1 & 1:
            return False
        return not (self.handle_mode and not drv >> spec.VIRTIO_F_ACCESS_PLATFORM & 1)

    # ==========================================================================================
    # virtio-mmio register file (guest port), virtio 1.x section 4.2.2
    # ==========================================================================================
    _QUEUE_REGS = frozenset(
        {
            spec.MMIO_QUEUE_NUM_MAX,
            spec.MMIO_QUEUE_NUM,
            spec.MMIO_QUEUE_READY,
            spec.MMIO_QUEUE_DESC_LOW,
            spec.MMIO_QUEUE_DESC_HIGH,
            spec.MMIO_QUEUE_DRIVER_LOW,
            spec.MMIO_QUEUE_DRIVER_HIGH,
            spec.MMIO_QUEUE_DEVICE_LOW,
            spec.MMIO_QUEUE_DEVICE_HIGH,
        }
    )

    def _guest_read(self, offset: int) -> int:
        if offset in self._QUEUE_REGS and self.queue_sel != 0:
            return 0
        match offset:
            case spec.MMIO_MAGIC_VALUE:
                return spec.MAGIC_VALUE
            case spec.MMIO_VERSION:
                return spec.MMIO_VERSION_VALUE
            case spec.MMIO_DEVICE_ID:
                return spec.VIRTIO_ID_BLOCK
            case spec.MMIO_VENDOR_ID:
                return spec.VENDOR_ID
            case spec.MMIO_DEVICE_FEATURES:
                sel = self.device_features_sel
                return self.device_features >> (32 * sel) & _U32 if sel < 2 else 0
            case spec.MMIO_DEVICE_FEATURES_SEL:
                return self.device_features_sel
            case spec.MMIO_DRIVER_FEATURES:
                sel = self.driver_features_sel
                return self.driver_features[sel] if sel < 2 else 0
            case spec.MMIO_DRIVER_FEATURES_SEL:
                return self.driver_features_sel
            case spec.MMIO_QUEUE_SEL:
                return self.queue_sel
            case spec.MMIO_QUEUE_NUM_MAX:
                return self.queue_num_max
            case spec.MMIO_QUEUE_NUM:
                return self.queue_num
            case spec.MMIO_QUEUE_READY:
                return self.queue_ready
            case spec.MMIO_INTERRUPT_STATUS:
                return self.interrupt_status
            case spec.MMIO_STATUS:
                return self.status
            case spec.MMIO_QUEUE_DESC_LOW:
                return self.queue_desc & _U32
            case spec.MMIO_QUEUE_DESC_HIGH:
                return self.queue_desc >> 32
            case spec.MMIO_QUEUE_DRIVER_LOW:
                return self.queue_driver & _U32
            case spec.MMIO_QUEUE_DRIVER_HIGH:
                return self.queue_driver >> 32
            case spec.MMIO_QUEUE_DEVICE_LOW:
                return self.queue_device & _U32
            case spec.MMIO_QUEUE_DEVICE_HIGH:
                return self.queue_device >> 32
            case spec.MMIO_CONFIG_GENERATION:
                return 0
            case 0x100:  # virtio_blk_config.capacity, low word (section 5.2.4)
                return (self.disk_bytes // spec.SECTOR_SIZE) & _U32
            case 0x104:  # capacity, high word
                return (self.disk_bytes // spec.SECTOR_SIZE) >> 32 & _U32
            case _:
                # QueueNotify and InterruptACK have no storage; everything else is unmapped.
                return 0

    @staticmethod
    def _set_lo(reg: int, value: int) -> int:
        return reg & ~_U32 | value

    @staticmethod
    def _set_hi(reg: int, value: int) -> int:
        return reg & _U32 | value << 32

    def _guest_write(self, offset: int, value: int, strb: int) -> None:
        # wstrb is ignored on the guest port: every write is a full-word write.
        del strb
        if offset in self._QUEUE_REGS and self.queue_sel != 0:
            return
        match offset:
            case spec.MMIO_DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            case spec.MMIO_DRIVER_FEATURES:
                if self.driver_features_sel < 2:
                    self.driver_features[self.driver_features_sel] = value
            case spec.MMIO_DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            case spec.MMIO_QUEUE_SEL:
                self.queue_sel = value
            case spec.MMIO_QUEUE_NUM:
                self.queue_num = value
            case spec.MMIO_QUEUE_READY:
                self.queue_ready = value & 1
            case spec.MMIO_QUEUE_NOTIFY:
                self._notify(value)
            case spec.MMIO_INTERRUPT_ACK:
                self.interrupt_status &= ~value
            case spec.MMIO_STATUS:
                self._write_status(value)
            case spec.MMIO_QUEUE_DESC_LOW:
                self.queue_desc = self._set_lo(self.queue_desc, value)
            case spec.MMIO_QUEUE_DESC_HIGH:
                self.queue_desc = self._set_hi(self.queue_desc, value)
            case spec.MMIO_QUEUE_DRIVER_LOW:
                self.queue_driver = self._set_lo(self.queue_driver, value)
            case spec.MMIO_QUEUE_DRIVER_HIGH:
                self.queue_driver = self._set_hi(self.queue_driver, value)
            case spec.MMIO_QUEUE_DEVICE_LOW:
                self.queue_device = self._set_lo(self.queue_device, value)
            case spec.MMIO_QUEUE_DEVICE_HIGH:
                self.queue_device = self._set_hi(self.queue_device, value)
            case _:
                pass  # read-only or unmapped

    def _write_status(self, value: int) -> None:
        """Status write (section 4.2.2): 0 resets the device; otherwise store the device status
        byte (bits 7:0, section 2.1), keeping DEVICE_NEEDS_RESET as the device has it and
        refusing FEATURES_OK (section 3.1.1)."""
        if value == 0:
            self._driver_reset()
            return
        value = value & 0xFF & ~spec.STATUS_DEVICE_NEEDS_RESET | (
            self.status & spec.STATUS_DEVICE_NEEDS_RESET
        )
        if value & spec.STATUS_FEATURES_OK and not self.features_acceptable():
            value &= ~spec.STATUS_FEATURES_OK
        self.status = value

    def _notify(self, value: int) -> None:
        """QueueNotify: value 0 with QueueReady and DRIVER_OK starts the engine."""
        if value != 0 or not self.queue_ready or not self.status & spec.STATUS_DRIVER_OK:
            return
        if self._running:
            self.pending_notify = True
            return
        if self.halted:
            return
        self._run()

    # ==========================================================================================
    # Privileged register file (hypervisor port)
    # ==========================================================================================
    def _grant_word_index(self, offset: int) -> int | None:
        if offset < spec.HV_GRANT_BASE:
            return None
        index = (offset - spec.HV_GRANT_BASE) // 4
        return index if index < 2 * self.entries else None

    def _hv_read(self, offset: int) -> int:
        index = self._grant_word_index(offset)
        if index is not None:
            return self.grants.read_word(index)
        match offset:
            case spec.HV_VERSION:
                return spec.HV_VERSION_VALUE
            case spec.HV_CTRL:
                return spec.HV_CTRL_HANDLE_MODE if self.handle_mode else 0
            case spec.HV_DOMID:
                return self.domid
            case spec.HV_ENTRIES:
                return self.entries
            case spec.HV_FAULT_STATUS:
                return self.fault_status
            case spec.HV_FAULT_CAUSE:
                return self.fault_cause
            case spec.HV_FAULT_ADDR_LO:
                return self.fault_addr & _U32
            case spec.HV_FAULT_ADDR_HI:
                return self.fault_addr >> 32
            case spec.HV_FAULT_COUNT:
                return self.fault_count
            case spec.HV_SYNC:
                return 1  # the model completes every transaction before a register access
            case _ if offset == HV_STAT_XLATE:
                return self.stat_xlate
            case _ if offset == HV_STAT_REQUESTS:
                return self.stat_requests
            case _:
                return 0

    def _hv_write(self, offset: int, value: int, strb: int) -> None:
        index = self._grant_word_index(offset)
        if index is not None or offset in (spec.HV_CTRL, spec.HV_DOMID):
            self.table_gen += 1
        if index is not None:
            self.grants.write_word(index, value, strb)  # grant words honour wstrb
            return
        match offset:
            case spec.HV_CTRL:
                self.handle_mode = bool(value & spec.HV_CTRL_HANDLE_MODE)
            case spec.HV_DOMID:
                self.domid = value & _U16
            case spec.HV_FAULT_STATUS:
                self.fault_status &= ~value & 1  # RW1C
            case _:
                pass  # read-only or unmapped

    # ==========================================================================================
    # Faults
    # ==========================================================================================
    def _fault(self, cause: int, addr: int) -> _Halt:
        """Record a fault (docs "Faults") and return the exception that halts the engine."""
        addr &= _U64
        self._werr = None  # a pending write error never surfaces once the engine has halted
        self.faults.append(Fault(cause, addr))
        self.fault_count = (self.fault_count + 1) & _U32
        if not self.fault_status & 1:
            self.fault_status = 1
            self.fault_cause = cause
            self.fault_addr = addr
        self.status |= spec.STATUS_DEVICE_NEEDS_RESET
        self.interrupt_status |= spec.INT_CONFIG_CHANGE
        self.halted = True
        return _Halt()

    # ==========================================================================================
    # Translation unit and DMA engine
    # ==========================================================================================
    def _translate(self, v: int, write: bool) -> Translation:
        if self.handle_mode:
            self.translations += 1
            self.stat_xlate = (self.stat_xlate + 1) & _U32
        return translate(
            v,
            write,
            handle_mode=self.handle_mode,
            domid=self.domid,
            table=self.grants,
            entries=self.entries,
        )

    def _issue(self, txn: Transaction) -> bytes | None:
        """Issue one transaction on ``m_axi``; returns the read data, or raises on an error
        (fault 6) or when a driver reset arrived during it (the engine stops, no fault)."""
        ok = self.mem.contains(txn.addr, txn.nbytes)  # else DECERR
        if ok and self.bus_error is not None and self.bus_error(txn):
            ok = False  # SLVERR
        data: bytes | None = None
        if not ok and txn.kind == "W":
            # Writes are posted (docs "Bus transactions"): the error is reported at the next
            # drain, and the writes issued before it go ahead.
            done = Transaction(txn.kind, txn.addr, txn.nbytes, txn.data, error=True)
            if self._werr is None:
                self._werr = txn.addr
            self.transactions.append(done)
            if self.on_transaction is not None:
                self.on_transaction(done)
            if self._abort:
                raise _Halt()
            return None
        if not ok:
            done = Transaction(txn.kind, txn.addr, txn.nbytes, txn.data, error=True)
        elif txn.kind == "W":
            assert txn.data is not None
            self.mem.write(txn.addr, txn.data)
            done = txn
        else:
            data = self.mem.read(txn.addr, txn.nbytes)
            done = Transaction("R", txn.addr, txn.nbytes, data)
        self.transactions.append(done)
        if self.on_transaction is not None:
            self.on_transaction(done)
        if self._abort:
            raise _Halt()
        if not ok:
            raise self._fault(spec.FAULT_BUS_ERROR, txn.addr)
        return data

    def drain(self) -> None:
        """Wait for every posted write's response; the first failed one faults (cause 6)."""
        if self._werr is not None:
            addr, self._werr = self._werr, None
            raise self._fault(spec.FAULT_BUS_ERROR, addr)

    def _bursts(self, v: int, n: int, write: bool):
        """The access's bursts. The mode is latched per access, as the DMA engine does: in GPA
        mode nothing is looked up again."""
        gen = (lambda: self.table_gen) if self.handle_mode else None
        return iter_bursts(v, n, write, self.data_width, self._translate, gen)

    def dma_read(self, v: int, n: int, sink: Callable[[int, bytes], None] | None = None) -> bytes:
        """One DMA read access of ``n`` bytes at virtual ``v``.

        ``sink(offset, data)`` is called after every successful transaction (data streamed into
        the RAM disk). Raises the engine's halt on a fault.
        """
        out = bytearray()
        for item in self._bursts(v, n, False):
            if isinstance(item, DmaFault):
                raise self._fault(item.cause, item.addr)
            data = self._issue(Transaction("R", item.addr, item.nbytes))
            assert data is not None
            if sink is not None:
                sink(item.offset, data)
            out += data
        return bytes(out)

    def dma_write(self, v: int, data: bytes) -> None:
        """One DMA write access of ``data`` at virtual ``v``. Raises the halt on a fault."""
        for item in self._bursts(v, len(data), True):
            if isinstance(item, DmaFault):
                raise self._fault(item.cause, item.addr)
            chunk = bytes(data[item.offset : item.offset + item.nbytes])
            self._issue(Transaction("W", item.addr, item.nbytes, chunk))

    # ==========================================================================================
    # Ring engine (docs "Ring engine", virtio 1.x section 2.7)
    # ==========================================================================================
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
                except _Halt:
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
        avail_flags, avail_idx = struct.unpack("<HH", self.dma_read(self.queue_driver, 4))
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
        i = head
        while True:
            if i >= n:
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            if len(descs) + 1 > n:  # descriptor number N + 1: a loop
                raise self._fault(spec.FAULT_BAD_CHAIN, i)
            raw = self.dma_read((self.queue_desc + spec.DESC_BYTES * i) & _U64, spec.DESC_BYTES)
            addr, length, flags, nxt = _DESC.unpack(raw)
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

    def _read_range(
        self,
        descs: list[Descriptor],
        start: int,
        length: int,
        sink: Callable[[int, bytes], None] | None = None,
    ) -> bytes:
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
        ring_addr = (self.queue_driver + 4 + 2 * (self.last_avail_idx % n)) & _U64
        (head,) = struct.unpack("<H", self.dma_read(ring_addr, 2))
        descs = self._walk_chain(head, n)
        readable = [d for d in descs if not d.writable]
        writable = [d for d in descs if d.writable]
        r_total = sum(d.len for d in readable)
        w_total = sum(d.len for d in writable)
        # 3.3 Request framing (section 5.2.6: header, data, status byte).
        if r_total < spec.BLK_HEADER_BYTES or w_total < 1:
            raise self._fault(spec.FAULT_BAD_REQUEST, head)
        # 3.4 Header.
        req_type, _reserved, sector = _HEADER.unpack(
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
        elem_addr = (self.queue_device + 4 + 8 * (self.used_idx % n)) & _U64
        self.dma_write(elem_addr, struct.pack("<II", head, written + 1))
        # 3.8 Used index.
        self.used_idx = (self.used_idx + 1) & _U16
        self.dma_write((self.queue_device + 2) & _U64, struct.pack("<H", self.used_idx))
        self.drain()  # the interrupt (and the next request) follow the used index
        self.completed += 1
        self.stat_requests = (self.stat_requests + 1) & _U32
        # 3.9 Consume the entry; interrupt unless suppressed (section 2.7.7).
        self.last_avail_idx = (self.last_avail_idx + 1) & _U16
        if not avail_flags & spec.VIRTQ_AVAIL_F_NO_INTERRUPT:
            self.interrupt_status |= spec.INT_USED_BUFFER
