"""Workload scenarios that run unchanged on the reference model and on the RTL bench.

A scenario brings the device up with the driver and hypervisor models from ``sw/`` and then
runs a body. The bench runs it twice, once against :class:`models.device.ReferenceDevice` and
once against the RTL (a :class:`Pair`), and hands both outcomes to :mod:`tb.scoreboard`.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.device import ReferenceDevice
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.compare import compare_bytes, compare_results
from sw.dma import DmaApi, GrantDma, IdentityDma
from sw.driver import BlkRequest, BlkResult, VirtioBlkDriver
from sw.hypervisor import Hypervisor
from sw.transport import DeviceLink

from .bench import DeviceBench
from .runner import DeviceConfig
from .scoreboard import compare_transactions


@dataclass(frozen=True)
class Scenario:
    handle_mode: bool = True
    domid: int = 7
    seed: int = 1
    queue_size: int | None = None
    mem_bytes: int = 1 << 22
    no_interrupt: bool = False


@dataclass
class Session:
    link: DeviceLink
    driver: VirtioBlkDriver
    hv: Hypervisor
    dma: DmaApi


async def bring_up(link: DeviceLink, sc: Scenario) -> Session:
    """Hypervisor set-up (mode, domain), then the guest driver's virtio initialisation."""
    hv = Hypervisor(link.hv)
    await hv.setup(sc.handle_mode, sc.domid)
    alloc = PageAllocator(link.mem, seed=sc.seed)
    dma: DmaApi = await GrantDma.create(hv, sc.domid) if sc.handle_mode else IdentityDma()
    driver = VirtioBlkDriver(link, dma, alloc, seed=sc.seed, no_interrupt=sc.no_interrupt)
    await driver.init(sc.queue_size)
    return Session(link, driver, hv, dma)


class Pair:
    """The RTL bench and a reference device with the same configuration and memory size: the
    fixture of every system bench (``tb/test_system.py``, ``tb/test_faults.py``, ...)."""

    def __init__(self, dut, sc: Scenario, mem_latency: int | None = None,
                 ref_cls=ReferenceDevice):
        self.cfg = DeviceConfig.from_env()
        self.sc = sc
        self.tb = DeviceBench(dut, mem_bytes=sc.mem_bytes, data_width=self.cfg.data_width,
                              mem_latency=mem_latency)
        self.ref = ref_cls(GuestMemory(sc.mem_bytes), entries=self.cfg.entries,
                           features=self.cfg.features,
                           queue_num_max=self.cfg.queue_num_max,
                           disk_bytes=self.cfg.disk_bytes,
                           data_width=self.cfg.data_width, bus_error=self.tb.errors)
        self.log = self.tb.log

    async def start(self, timing: int | None = None) -> tuple[Session, Session]:
        """Reset, set the memory timing, bring both up. Returns (reference, RTL) sessions."""
        await self.tb.reset()
        self.tb.set_memory_timing(timing)
        return await bring_up(self.ref, self.sc), await bring_up(self.tb, self.sc)

    def check(self, what: str = "") -> None:
        """Isolation held, and the bus transactions and all of guest memory match."""
        iso = self.tb.isolation
        if iso.violations:
            raise AssertionError(f"isolation violated ({len(iso.violations)} transaction(s)): "
                                 + "; ".join(iso.violations[:5]))
        # every address handshake was checked (these benches expose nothing per page)
        iso.require_all_checked(len(self.tb.monitor.records), per_page=False)
        compare_transactions(self.ref.transactions, self.tb.monitor.records,
                             self.cfg.data_width)
        compare_bytes(f"guest memory{what}", self.ref.mem.snapshot(), self.tb.mem.snapshot())
        self.log.info("scoreboard%s: %d bus transactions and all of guest memory match; "
                      "isolation held on %d address handshakes", what,
                      len(self.ref.transactions), iso.checked)


async def run_on_both(pair: Pair, ref_sess: Session, rtl_sess: Session,
                      reqs: list[BlkRequest]) -> tuple[list[BlkResult], list[BlkResult]]:
    """``reqs`` as one batch on the reference, then on the RTL; the completions must match."""
    ref_res = await ref_sess.driver.run_batch(reqs)
    rtl_res = await rtl_sess.driver.run_batch(reqs)
    compare_results(ref_res, rtl_res)
    return ref_res, rtl_res
