"""Cycle-by-cycle recorder of the ``m_axi`` transactions the device makes.

Every started monitor is also listed in :data:`STARTED`, and with
:attr:`AxiMonitor.record_registers` set it records every handshake on the two register ports
too (``reg_events``): ``tests/test_simulators.py`` compares all of it between Icarus and
Verilator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cocotb
from cocotb.triggers import RisingEdge

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
    """Records every address handshake, write beat and response on ``m_axi``."""

    # Class-wide switch (set before the bench is built): also record every handshake on
    # s_axil and s_hv as (port, channel, value, cycle) in ``reg_events``. Off by default: it
    # reads ten more signals every cycle.
    record_registers = False

    def __init__(self, dut, prefix: str = "m_axi__", data_width: int = 64, on_address=None):
        self.dut = dut
        self.on_address = on_address  # (kind, addr, max bytes, cycle) at each handshake
        self.p = prefix
        self.lanes = data_width // 8
        self.records: list[BusRecord] = []
        self.cycle = 0
        self.notify_cycles: list[int] = []  # accepted writes to QueueNotify on s_axil
        self.irq_rise_cycles: list[int] = []
        self._irq = 0
        self._open_writes: list[BusRecord] = []  # AW seen, W not yet complete
        self._open_reads: list[BusRecord] = []
        self._wait_b: list[BusRecord] = []
        self._task = None
        self.reg_events: list[tuple[str, str, int, int]] = []

    def sig(self, name: str):
        return getattr(self.dut, self.p + name)

    def val(self, name: str) -> int:
        """The signal's value; an undriven (X/Z) handshake signal counts as 0."""
        v = self.sig(name).value
        return int(v) if v.is_resolvable else 0

    def start(self) -> None:
        STARTED.append(self)
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

    def _record_registers(self) -> None:
        for port in ("s_axil__", "s_hv__"):
            for ch, field_ in _REG_CHANNELS:
                valid = getattr(self.dut, f"{port}{ch}valid").value
                ready = getattr(self.dut, f"{port}{ch}ready").value
                if valid.is_resolvable and ready.is_resolvable and int(valid) and int(ready):
                    v = getattr(self.dut, port + field_).value
                    self.reg_events.append((port[:-2], ch, int(v) if v.is_resolvable else -1,
                                            self.cycle))

    async def _run(self) -> None:
        clk = self.dut.clk
        pending_w: list[tuple[int, int, int]] = []  # (wdata, wstrb, wlast) before their AW
        while True:
            await RisingEdge(clk)
            self.cycle += 1
            if not self.dut.rst.value.is_resolvable or int(self.dut.rst.value):
                self._open_writes.clear()
                self._open_reads.clear()
                self._wait_b.clear()
                pending_w.clear()
                continue
            if (int(self.dut.s_axil__awvalid.value) and int(self.dut.s_axil__awready.value)
                    and int(self.dut.s_axil__awaddr.value) == MMIO_QUEUE_NOTIFY):
                self.notify_cycles.append(self.cycle)
            irq = int(self.dut.irq.value)
            if irq and not self._irq:
                self.irq_rise_cycles.append(self.cycle)
            self._irq = irq
            if self.record_registers:
                self._record_registers()
            for kind, ch, opened in (("R", "ar", self._open_reads), ("W", "aw", self._open_writes)):
                if self.val(ch + "valid") and self.val(ch + "ready"):
                    rec = BusRecord(kind, self.val(ch + "addr"), self.val(ch + "len") + 1,
                                    self.cycle)
                    self.records.append(rec)
                    opened.append(rec)
                    self._address(rec)
            if self.val("wvalid") and self.val("wready"):
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
            if self.val("bvalid") and self.val("bready"):
                if not self._wait_b:
                    raise AssertionError("write response without a completed write")
                rec = self._wait_b.pop(0)
                rec.resp = self.val("bresp")
                rec.resp_cycle = self.cycle
            if self.val("rvalid") and self.val("rready"):
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
