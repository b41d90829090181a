"""The cocotb bench around ``virtio_blk_handle``: clock, reset, bus models, monitor.

:class:`DeviceBench` is a :class:`sw.transport.DeviceLink`, so the guest driver and hypervisor
models in ``sw/`` drive the RTL exactly as they drive the reference model.
"""

from __future__ import annotations

import logging
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, ReadWrite, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiSlave

from models.memory import GuestMemory

from .detmem import DeterministicMemory, PipelinedMemory
from .isolation import IsolationChecker
from .memory import BusErrorPages, MemoryTarget
from .monitor import AxiMonitor

CLOCK_NS = 10


class AxiLitePort:
    """A :class:`sw.transport.RegisterPort` over cocotbext-axi's AXI4-Lite manager.

    ``on_write(offset, value)`` is called once a write has completed (its response arrived).
    """

    def __init__(self, master: AxiLiteMaster, on_write=None):
        self.master = master
        self.on_write = on_write

    async def read32(self, offset: int) -> int:
        return await self.master.read_dword(offset)

    async def write32(self, offset: int, value: int) -> None:
        await self.master.write_dword(offset, value & 0xFFFF_FFFF)
        if self.on_write is not None:
            self.on_write(offset, value & 0xFFFF_FFFF)


def pause_generator(rng: random.Random, probability: float):
    """Cycle-by-cycle pauses with the given probability (seeded)."""
    while True:
        yield rng.random() < probability


def hold_reset(dut) -> None:
    """Hold reset and drive every handshake input low until the bus models take over, so no
    X/Z reaches the DUT's state machines."""
    dut.rst.value = 1
    for port in ("s_axil__", "s_hv__"):
        for name in ("awvalid", "wvalid", "bready", "arvalid", "rready"):
            getattr(dut, port + name).value = 0
    for name in ("awready", "wready", "bvalid", "arready", "rvalid"):
        getattr(dut, "m_axi__" + name).value = 0


async def start_clock(dut) -> None:
    """Start ``clk`` (rising at once, then every ``CLOCK_NS``) as cocotb's GPI clock, toggled
    in C with no Python per edge, on either simulator. It starts in the first ReadWrite phase,
    as cocotb's Python clock did on Icarus (its first write was applied there): by then
    :func:`hold_reset`'s values (Icarus applies them in that phase too) and the DUT's outputs
    are settled, and the bus models that sample at the first edge see no Z."""
    await ReadWrite()
    Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()


async def reset(dut, cycles: int = 4) -> None:
    """Synchronous reset (``rst`` high for ``cycles`` clock cycles)."""
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


class DeviceBench:
    """Everything around one DUT instance.

    Parameters
    ----------
    dut : cocotb handle of ``virtio_blk_handle``
    mem_bytes : guest memory size (physical addresses ``[0, mem_bytes)``)
    data_width : the DUT's ``m_axi`` width
    """

    # Class-wide switch (set before the bench is built; make demo sets it): serve m_axi with
    # tb.detmem.PipelinedMemory, cocotbext-axi's AxiSlave's timing without its cost, where no
    # random memory timing is wanted (set_memory_timing(None) only).
    pipelined_memory = False

    def __init__(self, dut, *, mem_bytes: int = 1 << 22, data_width: int = 64,
                 mem_latency: int | None = None):
        self.dut = dut
        self.log = logging.getLogger("cocotb.bench")
        self.data_width = data_width
        self.mem = GuestMemory(mem_bytes)
        self.errors = BusErrorPages()
        hold_reset(dut)
        cocotb.start_soon(start_clock(dut))
        self.guest_master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk,
                                          dut.rst)
        self.hv_master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_hv_"), dut.clk, dut.rst)
        if mem_latency is None and self.pipelined_memory:  # AxiSlave's timing, no pauses
            self.axi = None
            self.pipelined = PipelinedMemory(dut, MemoryTarget(self.mem, self.errors),
                                             data_width=data_width)
        elif mem_latency is None:  # cocotbext-axi's memory model, with optional random pauses
            self.axi = AxiSlave(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst,
                                target=MemoryTarget(self.mem, self.errors))
        else:  # fixed latency, no backpressure: the cycle-exact benches
            self.axi = None
            self.detmem = DeterministicMemory(dut, self.mem, self.errors, latency=mem_latency,
                                              data_width=data_width)
        for prefix in ("m_axi_", "s_axil_", "s_hv_"):  # the bus models log every burst at INFO
            logging.getLogger(f"cocotb.{dut._name}.{prefix}").setLevel(logging.WARNING)
        # (GPA mode: every burst must lie inside guest memory)
        self.isolation = IsolationChecker(mem_bytes=mem_bytes)
        self.guest = AxiLitePort(self.guest_master)
        self.hv = AxiLitePort(self.hv_master, on_write=self.isolation.hv_write)
        self.monitor = AxiMonitor(dut, data_width=data_width, on_address=self.isolation.check)
        if self.axi is None and mem_latency is None:  # one wake-up per edge for both
            self.pipelined.monitor = self.monitor
            self.monitor.start(own_task=False)
        else:
            self.monitor.start()

    # -- stimulus knobs ---------------------------------------------------------------------------
    def set_memory_timing(self, seed: int | None, probability: float = 0.3) -> None:
        """Random memory latency and backpressure on every ``m_axi`` channel (None: none)."""
        if self.axi is None:
            if seed is not None:
                raise ValueError("random memory timing needs the cocotbext-axi memory model")
            return
        channels = (self.axi.write_if.aw_channel, self.axi.write_if.w_channel,
                    self.axi.write_if.b_channel, self.axi.read_if.ar_channel,
                    self.axi.read_if.r_channel)
        for i, ch in enumerate(channels):
            if seed is None:
                ch.set_pause_generator(None)
            else:
                ch.set_pause_generator(pause_generator(random.Random(seed * 31 + i),
                                                       probability))

    async def reset(self, cycles: int = 4) -> None:
        await reset(self.dut, cycles)

    @property
    def cycle(self) -> int:
        return self.monitor.cycle

    # -- DeviceLink -------------------------------------------------------------------------------
    @property
    def irq(self) -> bool:
        return bool(int(self.dut.irq.value))

    async def wait_irq(self, timeout_cycles: int | None = 200_000) -> None:
        await ReadOnly()
        if self.irq:
            await RisingEdge(self.dut.clk)
            return
        if timeout_cycles is None:
            await RisingEdge(self.dut.irq)
        else:
            await First(RisingEdge(self.dut.irq), Timer(timeout_cycles * CLOCK_NS, unit="ns"))
            if not self.irq:
                raise TimeoutError(f"irq did not rise within {timeout_cycles} cycles "
                                   f"(cycle {self.cycle})")
        await RisingEdge(self.dut.clk)

    async def wait_cycles(self, n: int) -> None:
        await ClockCycles(self.dut.clk, n)

