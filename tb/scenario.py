"""Workload scenarios that run unchanged on the reference model and on the RTL bench.

A scenario brings the device up with the driver and hypervisor models from ``sw/`` and then
runs a body. The bench runs it twice, once against :class:`models.device.ReferenceDevice` and
once against the RTL, and hands both outcomes to :mod:`tb.scoreboard`.
"""

from __future__ import annotations

from dataclasses import dataclass

from models import spec
from sw.alloc import PageAllocator
from sw.dma import DmaApi, GrantDma, IdentityDma
from sw.driver import BlkRequest, VirtioBlkDriver
from sw.hypervisor import Hypervisor
from sw.transport import DeviceLink


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


async def read_whole_disk(driver: VirtioBlkDriver, chunk_sectors: int = 16) -> bytes:
    """The RAM disk as the device returns it, read in ``chunk_sectors`` requests."""
    out = bytearray()
    cap = driver.capacity
    reqs = [BlkRequest(spec.VIRTIO_BLK_T_IN, s, length=min(chunk_sectors, cap - s) * 512)
            for s in range(0, cap, chunk_sectors)]
    for res in await driver.run_batch(reqs):
        if not res.ok:
            raise AssertionError(f"read-back of sector {res.request.sector} failed: "
                                 f"status {res.status}")
        out += res.data
    return bytes(out)
