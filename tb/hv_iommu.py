"""The hypervisor side of IOVA mode on the RTL bench: a coroutine that watches ``hv_irq`` and
answers each IOTLB miss from a page table (docs/iotlb.md), after a chosen latency, and a
recorder of when each miss was raised and resolved on the bus (``make bench``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from models import spec
from sw.hypervisor import IotlbMiss, RegWrite, decode_miss


class _Background:
    """A coroutine ``_run`` started by :meth:`start` on the simulator and cancelled by
    :meth:`stop` (a no-op before :meth:`start`)."""

    _task = None

    def start(self) -> None:
        self._task = cocotb.start_soon(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        raise NotImplementedError


class MissServer(_Background):
    """Answers misses: ``lookup(iova_page) -> (pa_page, read, write) or None``; None fails the
    miss (cause 10). Or, with ``writes``, ``writes(miss) -> [(offset, value), ...]`` gives the
    register writes that answer it (``sw.iommu.answer_miss``, what the reference model's hook
    writes). ``latency``: cycles between ``hv_irq`` and the first register access (it may be
    changed between misses)."""

    def __init__(self, dut, hv, lookup: Callable[[int], tuple[int, bool, bool] | None] | None
                 = None, *, latency: int = 0,
                 writes: Callable[[IotlbMiss], list[RegWrite]] | None = None) -> None:
        if (lookup is None) == (writes is None):
            raise ValueError("MissServer needs lookup or writes, not both")
        self.dut, self.hv, self.lookup, self.latency = dut, hv, lookup, latency
        self.writes = writes
        self.misses: list[tuple[int, bool]] = []  # (iova, write), in the order raised
        self.log = logging.getLogger("cocotb.hv_iommu")

    async def _run(self) -> None:
        while True:
            await ReadOnly()
            if not int(self.dut.hv_irq.value):
                await RisingEdge(self.dut.hv_irq)
            await RisingEdge(self.dut.clk)
            if self.latency:
                await ClockCycles(self.dut.clk, self.latency)
            await self.answer()

    async def answer(self) -> None:
        hv = self.hv
        miss = await hv.read32(spec.HV_IOTLB_MISS)
        if not miss & spec.IOTLB_MISS_PENDING:
            return  # (a driver reset cancelled it)
        iova = (await hv.read32(spec.HV_MISS_IOVA_HI)) << 32 | await hv.read32(spec.HV_MISS_IOVA_LO)
        write = bool(miss & spec.IOTLB_MISS_WRITE)
        self.misses.append((iova, write))
        if self.writes is not None:
            pending = decode_miss(miss, iova & 0xFFFF_FFFF, iova >> 32)
            assert pending is not None
            for off, value in self.writes(pending):
                await hv.write32(off, value)
            return
        found = self.lookup(iova >> spec.PAGE_SHIFT)
        if found is None:
            await hv.write32(spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_FAIL)
            return
        pa_page, r, w = found
        page = iova & ~(spec.PAGE_SIZE - 1)
        pa = pa_page << spec.PAGE_SHIFT
        for off, value in ((spec.HV_IOTLB_IOVA_LO, page & 0xFFFF_FFFF),
                           (spec.HV_IOTLB_IOVA_HI, page >> 32),
                           (spec.HV_IOTLB_PA_LO, pa & 0xFFFF_FFFF), (spec.HV_IOTLB_PA_HI, pa >> 32),
                           (spec.HV_IOTLB_ATTR, spec.PAGE_SHIFT | spec.IOTLB_ATTR_READ * r
                            | spec.IOTLB_ATTR_WRITE * w),
                           (spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INSERT),
                           (spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_RETRY)):
            await hv.write32(off, value)


class MissTimes(_Background):
    """When each miss was raised and resolved, on the bus, in the cycles of ``monitor``
    (``tb.monitor.AxiMonitor.cycle``): ``raised`` holds the cycle of each rising edge of
    ``hv_irq`` (its first high sample), ``resolved`` the cycle of each ``MISS_RESOLVE`` write's
    acceptance on ``s_hv`` (the cycle AW and W both handshake: the register file's ``w_en``).
    ``held(i)`` is what the hypervisor holds miss ``i``: ``resolved[i] - raised[i]``."""

    def __init__(self, dut, monitor) -> None:
        self.dut, self.monitor = dut, monitor
        self.raised: list[int] = []
        self.resolved: list[int] = []

    def held(self, i: int) -> int:
        return self.resolved[i] - self.raised[i]

    async def _run(self) -> None:
        d = self.dut
        irq_was = 0
        while True:
            await RisingEdge(d.clk)
            irq = int(d.hv_irq.value)  # (the values sampled at this edge)
            accepted = (int(d.s_hv__awvalid.value) and int(d.s_hv__awready.value)
                        and int(d.s_hv__wvalid.value) and int(d.s_hv__wready.value)
                        and int(d.s_hv__awaddr.value) == spec.HV_MISS_RESOLVE)
            await ReadOnly()  # the monitor has counted this edge
            if irq and not irq_was:
                self.raised.append(self.monitor.cycle)
            if accepted:
                self.resolved.append(self.monitor.cycle)
            irq_was = irq
