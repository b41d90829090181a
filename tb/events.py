"""Edge-by-edge recorder of what the event-exact timing bench compares (docs/timing.md "Every
event"): the memory side of ``m_axi`` (the cycle model's input, :class:`models.timing.MemorySide`)
and every event the device drives (its output, :class:`models.timing.Event`).

Edges are counted from the one the recorder is started on (``cycle``); the recorder keeps the
accepted QueueNotify writes on the same scale (``notify_cycles``). Every value is read right
after the edge, before the design's registers update (as :class:`tb.monitor.AxiMonitor` reads
them): the value sampled at that edge. The monitor records transactions (addresses, data,
responses); this records levels and handshakes per edge, which the monitor does not keep.

Device-side events: ``AR``/``AW`` (valid and ready, with the address and beats), ``W``
(``wvalid & wready``), ``R`` (``rvalid & rready``), ``B`` (``bvalid & bready``),
``irq_rise``/``irq_fall`` (the ``irq`` output), ``fault`` (the privileged register file's
HV_FAULT_STATUS bit rising, with HV_FAULT_CAUSE as ``cause=``) and ``needs_reset`` (the
virtio-mmio Status register's DEVICE_NEEDS_RESET bit rising). The two registers are read from
the simulated design's register file (``dut.hv.fault_status``, ``dut.hv.fault_cause``,
``dut.mmio.status``): the values a register read returns, without a bus access in every cycle.
Register-side inputs: accepted writes on ``s_axil`` (``acks``: InterruptACK's value by cycle).
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import RisingEdge

from models import spec
from models.timing import Event, MemorySide


class EventRecorder:
    """Records from the edge it is started on (see the module)."""

    def __init__(self, dut, prefix: str = "m_axi__") -> None:
        self.dut = dut
        self.cycle = 0
        self.notify_cycles: list[int] = []
        self.mem = MemorySide()
        self.events: list[Event] = []
        self.acks: dict[int, int] = {}
        self.s = {n: getattr(dut, prefix + n) for n in (
            "arvalid", "arready", "araddr", "arlen", "awvalid", "awready", "awaddr", "awlen",
            "wvalid", "wready", "rvalid", "rready", "rlast", "rresp", "bvalid", "bready",
            "bresp")}
        self.task = None

    def start(self) -> None:
        self.task = cocotb.start_soon(self._run())

    def _u(self, name: str) -> int:
        v = self.s[name].value
        return int(v) if v.is_resolvable else 0

    @staticmethod
    def _int(handle) -> int:
        v = handle.value
        return int(v) if v.is_resolvable else 0

    def events_between(self, first: int, last: int) -> list[Event]:
        """Recorded events at edges ``first`` to ``last``."""
        return [e for e in self.events if first <= e.cycle <= last]

    async def _run(self) -> None:
        dut, u, mem, ev = self.dut, self._u, self.mem, self.events
        irq = needs = fstat = 0
        while True:
            await RisingEdge(dut.clk)
            self.cycle += 1
            c = self.cycle
            if not dut.rst.value.is_resolvable or int(dut.rst.value):
                continue
            arready, awready, wready = u("arready"), u("awready"), u("wready")
            if arready:
                mem.arready.add(c)
            if awready:
                mem.awready.add(c)
            if wready:
                mem.wready.add(c)
            if u("arvalid") and arready:
                ev.append(Event("AR", c, f"addr={u('araddr'):#x} beats={u('arlen') + 1}"))
            if u("awvalid") and awready:
                ev.append(Event("AW", c, f"addr={u('awaddr'):#x} beats={u('awlen') + 1}"))
            if u("wvalid") and wready:
                ev.append(Event("W", c))
            if u("rvalid"):
                mem.rvalid[c] = (bool(u("rlast")), u("rresp"))
                if u("rready"):
                    ev.append(Event("R", c))
            if u("bvalid"):
                mem.bvalid[c] = u("bresp")
                if u("bready"):
                    ev.append(Event("B", c))
            new_irq = self._int(dut.irq)
            if new_irq != irq:
                ev.append(Event("irq_rise" if new_irq else "irq_fall", c))
            irq = new_irq
            new_f = self._int(dut.hv.fault_status)
            if new_f and not fstat:
                ev.append(Event("fault", c, f"cause={self._int(dut.hv.fault_cause)}"))
            fstat = new_f
            new_n = self._int(dut.mmio.status) & spec.STATUS_DEVICE_NEEDS_RESET
            if new_n and not needs:
                ev.append(Event("needs_reset", c))
            needs = new_n
            if self._int(dut.s_axil__awvalid) and self._int(dut.s_axil__awready):
                addr = self._int(dut.s_axil__awaddr)
                if addr == spec.MMIO_INTERRUPT_ACK:
                    self.acks[c] = self._int(dut.s_axil__wdata)
                elif addr == spec.MMIO_QUEUE_NOTIFY:
                    self.notify_cycles.append(c)
