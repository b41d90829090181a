"""Cycle-by-cycle recorder of the ``m_axi`` transactions the device makes.

Every started monitor is also listed in :data:`STARTED`, and with
:attr:`AxiMonitor.record_registers` set it records every handshake on the two register ports
too (``reg_events``): ``tests/test_simulators.py`` compares all of it between Icarus and
Verilator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import First, RisingEdge

from models.spec import MMIO_QUEUE_NOTIFY

STARTED: list[AxiMonitor] = []  # every monitor started in this process, in order
_REG_CHANNELS = (("aw", "awaddr"), ("w", "wdata"), ("b", "bresp"), ("ar", "araddr"),
                 ("r", "rdata"))


@dataclass
class BusRecord:
    """One AXI transaction as seen on the wires.

    ``addr`` is the address of the address handshake; for writes, ``first``/``data`` are the
    strobed bytes (contiguous, checked); ``cycle`` is the clock cycle of the handshake.
    """

    kind: str
    addr: int
    beats: int
    cycle: int
    data: bytes = b""
    first: int | None = None
    resp: int | None = None
    resp_cycle: int | None = None  # write response handshake
    beats_seen: int = 0
    strobes: list[tuple[int, int]] = field(default_factory=list)  # (byte address, value)

    def write_range(self) -> tuple[int, bytes]:
        """The contiguous bytes this write strobed: (first address, data)."""
        if not self.strobes:
            return self.addr, b""
        addrs = [a for a, _ in self.strobes]
        first = addrs[0]
        if addrs != list(range(first, first + len(addrs))):
            raise AssertionError(f"write at {self.addr:#x} strobes non-contiguous bytes")
        return first, bytes(v for _, v in self.strobes)


class AxiMonitor:
    """Records every address handshake, write beat and response on ``m_axi``, the cycles of
    QueueNotify writes on ``s_axil`` and of the rises of ``irq``.

    ``cycle`` counts the rising edges of ``clk`` since the monitor started. The monitor samples
    every edge while anything it watches is under way (a valid high, a burst open, ``irq``
    high) and otherwise sleeps until one of the valids or ``irq`` changes: the edges it sleeps
    through change nothing it records, and ``cycle`` counts them from the simulated time (the
    clock's period is measured on the first two edges). Sleeping is what makes the monitor
    cheap on long idle stretches (docs/simulation.md gives the figures).
    """

    # Class-wide switch (set before the bench is built): also record every handshake on
    # s_axil and s_hv as (port, channel, value, cycle) in ``reg_events``. Off by default: it
    # reads ten more signals every cycle the ports are busy.
    record_registers = False

    def __init__(self, dut, prefix: str = "m_axi__", data_width: int = 64, on_address=None):
        self.dut = dut
        self.on_address = on_address  # (kind, addr, max bytes, cycle) at each handshake
        self.p = prefix
        self.lanes = data_width // 8
        self.records: list[BusRecord] = []
        self._cycle = 0
        self._asleep_at: int | None = None  # sim time (steps) of the last edge before a sleep
        self._period = 0  # clock period in simulation steps (0 until measured)
        self.notify_cycles: list[int] = []  # accepted writes to QueueNotify on s_axil
        self.irq_rise_cycles: list[int] = []
        self._irq = 0
        self._open_writes: list[BusRecord] = []  # AW seen, W not yet complete
        self._open_reads: list[BusRecord] = []
        self._wait_b: list[BusRecord] = []
        self._task = None
        self.reg_events: list[tuple[str, str, int, int]] = []
        self._h: dict[str, object] = {}  # handles, looked up once
        self._raw: dict[str, object] = {}  # their bit-string readers (bits())

    @property
    def cycle(self) -> int:
        """Rising edges of ``clk`` since the start (those slept through included)."""
        if self._asleep_at is None:
            return self._cycle
        return self._cycle + (get_sim_time("step") - self._asleep_at) // self._period

    def sig(self, name: str):
        h = self._h.get(name)
        if h is None:
            h = self._h[name] = getattr(self.dut, self.p + name)
        return h

    def bits(self, name: str):
        """A function returning the signal's value as the simulator's bit string ("1", "0",
        "x", ...; MSB first), read through cocotb's GPI object directly: ``handle.value``
        builds a ``Logic``/``LogicArray`` on each read, about 5 times the cost (1.3-2.3 us
        against 0.2 us per read on Verilator). cocotb is pinned to 2.1 (``pyproject.toml``):
        ``_handle.get_signal_val_binstr`` is what its own ``value`` calls."""
        f = self._raw.get(name)
        if f is None:
            f = self._raw[name] = self.sig(name)._handle.get_signal_val_binstr
        return f

    def val(self, name: str) -> int:
        """The signal's value; an undriven (X/Z) handshake signal counts as 0."""
        f = self._raw.get(name) or self.bits(name)
        try:
            return int(f(), 2)
        except ValueError:
            return 0

    def start(self, own_task: bool = True) -> None:
        """Start recording. ``own_task=False``: no coroutine of its own; the caller takes the
        clock edges and calls :meth:`step` at each (after :meth:`sleep` for the edges it sleeps
        through), as ``tb.detmem.PipelinedMemory`` does."""
        STARTED.append(self)
        self._setup()
        if own_task:
            self._task = cocotb.start_soon(self._run())

    def clear(self) -> None:
        self.records.clear()

    @property
    def reads(self) -> list[BusRecord]:
        return [r for r in self.records if r.kind == "R"]

    @property
    def writes(self) -> list[BusRecord]:
        return [r for r in self.records if r.kind == "W"]

    def _address(self, rec: BusRecord) -> None:
        if self.on_address is not None:
            span = rec.beats * self.lanes - rec.addr % self.lanes  # bytes the burst may touch
            self.on_address(rec.kind, rec.addr, span, rec.cycle)

    def _register_valids(self) -> list:
        if not self.record_registers:
            return []
        return [getattr(self.dut, f"{port}{ch}valid") for port in ("s_axil__", "s_hv__")
                for ch, _ in _REG_CHANNELS]

    def _record_registers(self) -> None:
        for port in ("s_axil__", "s_hv__"):
            for ch, field_ in _REG_CHANNELS:
                valid = getattr(self.dut, f"{port}{ch}valid").value
                ready = getattr(self.dut, f"{port}{ch}ready").value
                if valid.is_resolvable and ready.is_resolvable and int(valid) and int(ready):
                    v = getattr(self.dut, port + field_).value
                    self.reg_events.append((port[:-2], ch, int(v) if v.is_resolvable else -1,
                                            self.cycle))

    def can_sleep(self) -> bool:
        """Nothing is under way (see the class): the edges until one of :attr:`watched`
        changes would record nothing."""
        if (self._open_reads or self._open_writes or self._wait_b or self._pending_w
                or self._irq or not self._period):
            return False
        # (high, X or Z: stay awake)
        return all(h._handle.get_signal_val_binstr() == "0" for h in self.watched)

    async def sleep(self) -> None:
        """Sleep until one of :attr:`watched` changes, then take the next clock edge; the edges
        in between are not stepped (:meth:`step`) but counted. Call :meth:`step` after it for
        the edge it took."""
        self._asleep_at = get_sim_time("step")
        await First(*(h.value_change for h in self.watched))
        await RisingEdge(self.dut.clk)
        self._cycle = self.cycle - 1  # the edge just taken is counted by step()
        self._asleep_at = None

    @staticmethod
    def _bit(read, name: str) -> int:
        """A 1-bit signal that must be 0 or 1 (X or Z raises ValueError)."""
        b = read()
        if b == "1" or b == "0":
            return b == "1"
        raise ValueError(f"{name} is {b!r}")

    def _setup(self) -> None:
        dut = self.dut
        # bit-string readers (see bits()): every signal read per cycle
        self._rst = dut.rst._handle.get_signal_val_binstr
        self._notify = (dut.s_axil__awvalid._handle.get_signal_val_binstr,
                        dut.s_axil__awready._handle.get_signal_val_binstr,
                        dut.s_axil__awaddr._handle.get_signal_val_binstr)
        self._irq_h = dut.irq._handle.get_signal_val_binstr
        self._valids = tuple(self.bits(n + "valid") for n in ("ar", "aw", "w", "b", "r"))
        # what ends a sleep: a valid rising (a response only follows an open burst), irq
        self.watched = [self.sig("arvalid"), self.sig("awvalid"), self.sig("wvalid"),
                        dut.s_axil__awvalid, dut.irq, *self._register_valids()]
        self._pending_w: list[tuple[int, int, int]] = []  # (wdata, wstrb, wlast) before AW
        self._first_edge = None

    async def _run(self) -> None:
        clk = self.dut.clk
        await RisingEdge(clk)
        while True:
            if self.step() and self.can_sleep():
                await self.sleep()
            else:
                await RisingEdge(clk)

    def step(self) -> bool:
        """Record what the clock edge just taken shows (the values sampled before it). False
        while the device is in reset (no sleeping then)."""
        bit = self._bit
        self._cycle += 1
        if not self._period:  # measured on the first two edges
            now = get_sim_time("step")
            if self._first_edge is not None:
                self._period = now - self._first_edge
            self._first_edge = now
        if self._rst() != "0":  # in reset, or rst X/Z
            self._open_writes.clear()
            self._open_reads.clear()
            self._wait_b.clear()
            self._pending_w.clear()
            return False
        notify_v, notify_r, notify_a = self._notify
        if (bit(notify_v, "s_axil__awvalid") and bit(notify_r, "s_axil__awready")
                and int(notify_a(), 2) == MMIO_QUEUE_NOTIFY):
            self.notify_cycles.append(self._cycle)
        irq = bit(self._irq_h, "irq")
        if irq and not self._irq:
            self.irq_rise_cycles.append(self._cycle)
        self._irq = irq
        if self.record_registers:
            self._record_registers()
        arvalid, awvalid, wvalid, bvalid, rvalid = self._valids
        pending_w = self._pending_w
        for kind, ch, valid, opened in (("R", "ar", arvalid, self._open_reads),
                                        ("W", "aw", awvalid, self._open_writes)):
            if valid() == "1" and self.val(ch + "ready"):
                rec = BusRecord(kind, self.val(ch + "addr"), self.val(ch + "len") + 1,
                                self._cycle)
                self.records.append(rec)
                opened.append(rec)
                self._address(rec)
        if wvalid() == "1" and self.val("wready"):
            pending_w.append((self.val("wdata"), self.val("wstrb"),
                              self.val("wlast")))
        while pending_w and self._open_writes:
            wdata, wstrb, wlast = pending_w.pop(0)
            rec = self._open_writes[0]
            base = (rec.addr // self.lanes) * self.lanes + rec.beats_seen * self.lanes
            for lane in range(self.lanes):
                if wstrb >> lane & 1:
                    rec.strobes.append((base + lane, wdata >> (8 * lane) & 0xFF))
            rec.beats_seen += 1
            if wlast:
                if rec.beats_seen != rec.beats:
                    raise AssertionError(f"write at {rec.addr:#x}: wlast on beat "
                                         f"{rec.beats_seen} of {rec.beats}")
                rec.first, rec.data = rec.write_range()
                self._open_writes.pop(0)
                self._wait_b.append(rec)
        if bvalid() == "1" and self.val("bready"):
            if not self._wait_b:
                raise AssertionError("write response without a completed write")
            rec = self._wait_b.pop(0)
            rec.resp = self.val("bresp")
            rec.resp_cycle = self._cycle
        if rvalid() == "1" and self.val("rready"):
            if not self._open_reads:
                raise AssertionError("read data without a read address")
            rec = self._open_reads[0]
            rec.beats_seen += 1
            resp = self.val("rresp")
            rec.resp = resp if rec.resp in (None, 0) else rec.resp
            if self.val("rlast"):
                if rec.beats_seen != rec.beats:
                    raise AssertionError(f"read at {rec.addr:#x}: rlast on beat "
                                         f"{rec.beats_seen} of {rec.beats}")
                self._open_reads.pop(0)
        return True
