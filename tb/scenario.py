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


def used_index_writes(pair: Pair, n_rec: int, driver: VirtioBlkDriver) -> list[int]:
    """The response cycles of the RTL's writes of ``driver``'s used index, from record ``n_rec``."""
    used_idx_addr = driver.used_buf.phys(2)
    return [r.resp_cycle for r in pair.tb.monitor.records[n_rec:]
            if r.kind == "W" and r.addr == used_idx_addr]


async def timed_batch(pair: Pair, ref_sess: Session, rtl_sess: Session, reqs: list[BlkRequest],
                      *, settle: int, before_kick=None, what: str = ""
                      ) -> tuple[list[BlkResult], int]:
    """``reqs`` as one batch on the reference, then on the RTL, notified once (``before_kick()``
    just before); the completions must match, one used-index write per request. Waits
    ``settle`` cycles (the closing poll, then idle). Returns the RTL's results and the cycles
    from the notify to the last used-index write's response."""
    mon = pair.tb.monitor
    n_rec, n_notify = len(mon.records), len(mon.notify_cycles)
    ref_res = await ref_sess.driver.run_batch(reqs)
    tokens = [await rtl_sess.driver.submit(r) for r in reqs]
    if before_kick is not None:
        before_kick()
    await rtl_sess.driver.kick()
    rtl_res = await rtl_sess.driver.wait(tokens)
    compare_results(ref_res, rtl_res)
    await pair.tb.wait_cycles(settle)
    done = used_index_writes(pair, n_rec, rtl_sess.driver)
    assert len(done) == len(reqs), f"{what}: {len(done)} completions"
    return rtl_res, done[-1] - mon.notify_cycles[n_notify]
