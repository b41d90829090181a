"""The hypervisor side of IOVA mode on the RTL bench: a coroutine that watches ``hv_irq`` and
answers each IOTLB miss from a page table (docs/iotlb.md), after a chosen latency."""

from __future__ import annotations

import logging
from collections.abc import Callable

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from models import spec


class MissServer:
    """Answers misses: ``lookup(iova_page) -> (pa_page, read, write) or None``; None fails the
    miss (cause 10). ``latency``: cycles between ``hv_irq`` and the first register access."""

    def __init__(self, dut, hv, lookup: Callable[[int], tuple[int, bool, bool] | None], *,
                 latency: int = 0) -> None:
        self.dut, self.hv, self.lookup, self.latency = dut, hv, lookup, latency
        self.misses: list[tuple[int, bool]] = []  # (iova, write), in the order raised
        self.log = logging.getLogger("cocotb.hv_iommu")
        self._task = None

    def start(self) -> None:
        self._task = cocotb.start_soon(self._serve())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _serve(self) -> None:
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
