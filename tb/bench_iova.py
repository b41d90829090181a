"""One simulator process of ``make bench`` in IOVA mode (docs/iotlb.md): the RTL and the timed
reference model side by side, the hypervisor a coroutine answering misses (``tb.hv_iommu``).

Guest memory is mapped IOVA = PA in the guest's IOMMU page table, in one 1 GiB page (as an
identity domain maps it: the largest page the IOTLB takes, so one entry holds all of it); the
hypervisor inserts either the whole page or only the 4 KiB page holding the missed IOVA
(``sw.iommu.MissPolicy.size_log2``), the reference model's hook inserts the same, so both
IOTLBs hold the same entries and raise the same misses. Every completion's cycle is checked
against ``models.timing``: lookups that hit cost what grant lookups cost; a miss's burst
follows the cycle its ``MISS_RESOLVE`` write was accepted.

Parameters (:func:`tb.runner.params`): ``latency`` (memory), ``out`` (JSON lines appended),
and any of

* ``warm``: workload rows (as ``tb.bench_sweep``); the row's first request fills the IOTLB (the
  1 GiB page covers every page the row uses), then the whole row runs, measured, with
  ``STAT_IOTLB_MISSES`` unchanged;
* ``miss``: ``{"rows": [...], "hv_latencies": [...]}``: per row and hypervisor latency, the
  row on a warm IOTLB, then the same requests with the IOTLB invalidated before each notify
  and 4 KiB pages inserted on each miss after that latency; reports the device's own cycles
  per miss (docs/bench-iova.md);
* ``sweep``: ``{"requests", "in_flight", "pool_pages", "hv_latency", "seed"}``: 4 KiB reads
  of buffers on every pool page once (seeded order), then ``requests`` reads of pages drawn
  uniformly (seeded) from the pool, measured; 4 KiB pages inserted on each miss: the hit rate
  and cycles per request of this build's ``IOTLB_ENTRIES`` (``"mixed": true``: half of the
  requests write instead, for the timing tests).
"""

from __future__ import annotations

import functools
import json
import random

import cocotb

from models import spec
from models.timing import TimedDevice
from sw.alloc import PageAllocator
from sw.dma import IdentityDma
from sw.driver import BlkRequest, VirtioBlkDriver
from sw.hypervisor import Hypervisor, decode_miss
from sw.iommu import IommuPageTable, MissPolicy, answer_miss

from .bench_sweep import requests_for
from .hv_iommu import MissServer, MissTimes
from .runner import DeviceConfig, params
from .scenario import Pair, Scenario, Session, run_on_both, used_index_writes

HUGE = spec.IOTLB_MAX_SIZE  # the page table's page size: 1 GiB
SMALL = MissPolicy(size_log2=spec.PAGE_SHIFT)  # insert the 4 KiB piece of the mapping
WHOLE = MissPolicy()  # insert the whole 1 GiB mapping


class SpreadAllocator(PageAllocator):
    """Contiguous runs (IdentityDma needs them) from the lowest free pages, or, while
    ``pool`` is set to ``(first_pfn, npages)``, at a seeded random place inside that pool."""

    def __init__(self, *args, rng_seed: int = 0, **kw) -> None:
        super().__init__(*args, **kw)
        self.pool: tuple[int, int] | None = None
        self.rng = random.Random(rng_seed)
        self.queue: list[int] = []  # pages to hand out first, in order, for one-page runs

    def _alloc_run(self, n: int) -> list[int]:
        if self.pool is None:
            return super()._alloc_run(n)
        if n == 1 and self.queue and self.queue[0] in self._free:
            return [self.queue.pop(0)]
        first, npages = self.pool
        for _ in range(1000):
            start = first + self.rng.randrange(npages - n + 1)
            run = list(range(start, start + n))
            if all(p in self._free for p in run):
                return run
        raise MemoryError("no free run in the pool")


class IovaBench:
    """The RTL and the timed reference in IOVA mode, identity-mapped, one miss policy."""

    def __init__(self, dut, latency: int, mem_bytes: int) -> None:
        self.latency = latency
        self.table = IommuPageTable()
        for base in range(0, max(mem_bytes, 1 << HUGE), 1 << HUGE):
            self.table.map(base, base, HUGE)
        self.policy = WHOLE
        ref_cls = functools.partial(TimedDevice, on_iotlb_miss=self._ref_hook,
                                    iotlb_entries=DeviceConfig.from_env().iotlb_entries)
        self.pair = Pair(dut, Scenario(handle_mode=False, seed=1, mem_bytes=mem_bytes),
                         mem_latency=latency, ref_cls=ref_cls)
        self.ref: TimedDevice = self.pair.ref
        self.server = MissServer(dut, self.pair.tb.hv, writes=self._writes)
        self.times = MissTimes(dut, self.pair.tb.monitor)
        self.allocs: list[SpreadAllocator] = []

    def _writes(self, miss):
        return answer_miss(self.table, miss, self.policy)

    def _ref_hook(self, device) -> None:
        port = device.hv
        miss = decode_miss(port.read(spec.HV_IOTLB_MISS), port.read(spec.HV_MISS_IOVA_LO),
                           port.read(spec.HV_MISS_IOVA_HI))
        assert miss is not None
        for off, value in self._writes(miss):
            port.write(off, value)

    async def start(self) -> tuple[Session, Session]:
        tb = self.pair.tb
        await tb.reset()
        tb.set_memory_timing(None)
        self.server.start()
        self.times.start()
        sessions = []
        for link in (self.ref, tb):
            hv = Hypervisor(link.hv)
            await hv.setup(False, 7)
            await hv.set_mode(spec.MODE_IOVA)
            alloc = SpreadAllocator(link.mem, seed=1, rng_seed=5)
            self.allocs.append(alloc)
            dma = IdentityDma()
            driver = VirtioBlkDriver(link, dma, alloc, seed=1)
            await driver.init(None)
            sessions.append(Session(link, driver, hv, dma))
        self.ref_s, self.rtl_s = sessions
        return self.ref_s, self.rtl_s

    async def invalidate_all(self) -> None:
        for s in (self.ref_s, self.rtl_s):
            await s.hv.iotlb_invalidate_all()
            await s.hv.sync()

    async def stat(self, offset: int) -> int:
        return await self.rtl_s.hv.hv.read32(offset)

    async def run(self, batches: list[list[BlkRequest]], *, expect_misses: bool,
                  invalidate: bool = False) -> dict:
        """Run ``batches`` (one notify each) on both; check every completion against the timing
        model (with each miss's observed resolve cycle). Returns the cycles (notify to the last
        completion, summed over batches), the all-hit prediction of the same, requests, misses
        and the cycles the hypervisor held them, and the IOTLB statistics' deltas."""
        pair, ref, mon = self.pair, self.ref, self.pair.tb.monitor
        h0 = await self.stat(spec.HV_STAT_IOTLB_HITS)
        m0 = await self.stat(spec.HV_STAT_IOTLB_MISSES)
        cycles = warm = nreq = held = 0
        for batch in batches:
            if invalidate:
                await self.invalidate_all()
            kick = len(ref.kicks)
            k0 = len(self.times.resolved)
            n_rec, n_notify = len(mon.records), len(mon.notify_cycles)
            await run_on_both(pair, self.ref_s, self.rtl_s, batch)
            await pair.tb.wait_cycles(2 * self.latency + 40)
            # the closing poll may miss too (its page evicted): until it is answered and done
            for _ in range(10_000):
                if len(self.times.resolved) >= len(ref.misses):
                    break
                await pair.tb.wait_cycles(16)
            else:
                raise AssertionError("a miss was never resolved")
            await pair.tb.wait_cycles(2 * self.latency + 40)
            notify = mon.notify_cycles[n_notify]
            done = used_index_writes(pair, n_rec, self.rtl_s.driver)
            assert len(done) == len(batch)
            assert self.server.misses == ref.misses, \
                f"misses differ: RTL {self.server.misses[-3:]}, reference {ref.misses[-3:]}"
            assert len(self.times.resolved) == len(self.times.raised) == len(ref.misses)
            resolved = {k: self.times.resolved[k] - notify
                        for k in range(k0, len(self.times.resolved))}
            predicted = ref.schedule(kick, latency=self.latency, resolved=resolved).completions
            assert [c - notify for c in done] == predicted, \
                f"completions {[c - notify for c in done]}, model {predicted} " \
                f"(misses resolved at {resolved})"
            warm += ref.schedule(kick, latency=self.latency).completions[-1]
            cycles += done[-1] - notify
            held += sum(self.times.held(k) for k in range(k0, len(self.times.resolved)))
            nreq += len(batch)
        hits = await self.stat(spec.HV_STAT_IOTLB_HITS) - h0
        misses = await self.stat(spec.HV_STAT_IOTLB_MISSES) - m0
        if not expect_misses:
            assert misses == 0, f"{misses} IOTLB misses in a warm measurement"
        return {"cycles": cycles, "warm_predicted": warm, "requests": nreq, "hits": hits,
                "misses": misses, "held": held}


def emit(out: str, rec: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")


@cocotb.test()
async def test_iova(dut):
    p = params()
    latency = p["latency"]
    sweep = p.get("sweep")
    mem_bytes = 1 << 23
    bench = IovaBench(dut, latency, mem_bytes)
    await bench.start()
    cfg = bench.pair.cfg
    common = {"mem_latency": latency, "data_width": cfg.data_width,
              "iotlb_entries": cfg.iotlb_entries}
    capacity = cfg.disk_bytes // spec.SECTOR_SIZE
    for i, row in enumerate(p.get("warm", [])):
        bench.policy = WHOLE
        # the row's first request inserts the one mapping that covers every page the row uses
        first = requests_for(row, capacity, random.Random(i))[0][:1]
        await bench.run([first], expect_misses=True)
        m = await bench.run(requests_for(row, capacity, random.Random(i)), expect_misses=False)
        assert m["cycles"] == m["warm_predicted"]
        emit(p["out"], {"kind": "warm", **row, **common, **m, "mode": "iova"})
    miss = p.get("miss")
    for i, row in enumerate(miss["rows"] if miss else []):
        for hv_latency in miss["hv_latencies"]:
            bench.policy = WHOLE
            batches = requests_for(row, capacity, random.Random(100 + i))
            await bench.run([batches[0][:1]], expect_misses=True)  # the 1 GiB entry in
            warm = await bench.run(batches, expect_misses=False)
            bench.policy, bench.server.latency = SMALL, hv_latency
            cold = await bench.run(batches, expect_misses=True, invalidate=True)
            bench.server.latency = 0
            # the same requests, all hits: measured above, and predicted for the cold run's
            assert cold["warm_predicted"] == warm["cycles"], (cold, warm)
            await bench.invalidate_all()
            emit(p["out"], {"kind": "miss", **row, **common, "hv_latency": hv_latency,
                            "cycles": cold["cycles"], "warm_cycles": warm["cycles"],
                            "requests": cold["requests"], "misses": cold["misses"],
                            "hits": cold["hits"], "held": cold["held"]})
    if sweep:
        bench.policy, bench.server.latency = SMALL, sweep["hv_latency"]
        pool_first = (mem_bytes >> spec.PAGE_SHIFT) - sweep["pool_pages"]
        for alloc in bench.allocs:
            alloc.pool = (pool_first, sweep["pool_pages"])
        rng = random.Random(sweep["seed"])
        n_in = sweep["in_flight"]

        def one() -> BlkRequest:
            sector = rng.randrange(capacity - 8)
            if sweep.get("mixed") and rng.random() < 0.5:  # the device reads the buffer
                return BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=rng.randbytes(4096))
            return BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=4096)

        def batches(n: int) -> list[list[BlkRequest]]:
            reqs = [one() for _ in range(n)]
            return [reqs[k:k + n_in] for k in range(0, n, n_in)]

        # fill: every pool page once, in a seeded order (the IOTLB then holds the pages used
        # last, as in the steady state of uniform accesses), then the measured requests
        order = list(range(pool_first, pool_first + sweep["pool_pages"]))
        random.Random(sweep["seed"]).shuffle(order)
        for alloc in bench.allocs:
            alloc.queue = list(order)
        await bench.run(batches(sweep["pool_pages"]), expect_misses=True)
        m = await bench.run(batches(sweep["requests"]), expect_misses=True)
        emit(p["out"], {"kind": "sweep", **common, **sweep, **m})
    bench.server.stop()
    bench.times.stop()
    bench.pair.check(" (IOVA bench)")
