"""Adversarial co-simulation (issue 4): hostile request streams, resets at random cycles and
grant revocation racing in-flight DMA, every case compared with the reference model.

Three cocotb tests, each running many cases in one simulator process (the knobs come from
:func:`tb.runner.params`; the figures go to the JSON file named by ``report``):

``test_stream``
    A seeded stream of :mod:`verif.cases` cases. For each case the reference
    (:class:`verif.oracle.OracleDevice`) runs first; then the RTL must make the same bus
    transactions (``tb.scoreboard``), leave the same guest memory, latch the same fault (cause,
    address, count) or none, within the cycle bound the reference's counts give; the bench's
    :class:`tb.isolation.IsolationChecker` checks every ``m_axi`` handshake.
``test_reset_race``
    A request is started and, at a random cycle, the driver resets the device (Status = 0) or
    the bench pulses ``rst``. The grant the request used is then moved to another frame; the
    device must make no access that uses a translation from before the reset, and good
    requests must succeed afterwards. For Status = 0 the reference is stopped after the same
    number of transactions and everything is compared.
``test_revoke_race``
    A request moving several bursts is started and, at a random cycle, the hypervisor revokes,
    write-protects or remaps a grant it uses, writes HV_SYNC and polls it. Cycle by cycle
    (:class:`WireWatch`): no transaction issued after the table write used the old entry, and
    HV_SYNC read 1 only once every transaction issued before it had completed. The reference
    applies the same write after the same number of transactions and must agree.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge

from models import spec
from models.features import Features
from models.grant import GrantEntry
from sw.hypervisor import Hypervisor, IotlbMiss
from sw.iommu import Answer, IommuModel
from verif.cases import (
    TableWrite,
    case_ranges,
    case_refs,
    gen_big_request,
    gen_disk_audit,
    gen_table_write,
    generate,
)
from verif.choosers import RandomChooser
from verif.oracle import Outcome, check_expectation, read_completions
from verif.stream import ReferenceStream, StreamDriver, run_coroutine
from verif.world import (
    F_QUARANTINE,
    R_AVAIL,
    R_DATA,
    R_DESC,
    R_SLOT,
    R_USED,
    Case,
    Expect,
    World,
)

from .bench import DeviceBench
from .runner import DeviceConfig, params
from .scoreboard import (
    compare_bytes,
    compare_completions,
    compare_interrupt,
    compare_transactions,
)

SETTLE = 24  # cycles after the last expected transaction in which nothing more may happen


class CaseFailure(AssertionError):
    """A case went wrong; ``kind`` is "violation", "hang" or "mismatch"."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass
class Figures:
    """What one process reports (summed by the pytest wrapper and the soak)."""

    test: str
    seed: int
    cases: int = 0
    hostile: int = 0
    faults: int = 0
    requests: int = 0
    transactions: int = 0
    violations: int = 0
    hangs: int = 0
    mismatches: int = 0
    cycles: int = 0
    max_bound_ratio: float = 0.0
    misses: int = 0  # IOVA: IOTLB misses raised (the same sequence as the reference's)
    evictions: int = 0  # IOVA: entries the reference's IOTLB replaced round robin
    isolation: dict[str, int] = field(default_factory=dict)  # handshakes checked per mode
    interrupts: int = 0  # cases that ended with InterruptStatus bit 0 (compared every case)
    audited_sectors: int = 0  # disk sectors read back at the end of a stream and compared
    # reset races: per race, cycles from the nearest address issue (valid rising) to the reset
    reset_distance: list[int] = field(default_factory=list)
    by_category: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0

    def fail(self, exc: CaseFailure) -> None:
        if exc.kind == "violation":
            self.violations += 1
        elif exc.kind == "hang":
            self.hangs += 1
        else:
            self.mismatches += 1
        self.failures.append(f"[{exc.kind}] {exc}")

    def write(self, path: str | None) -> None:
        if path:
            with open(path, "w") as f:
                json.dump(self.__dict__, f, indent=1)


# params "negotiate": the ring features every case that does not choose its own negotiates
NEGOTIATE = {"none": 0, "indirect": 1 << spec.VIRTIO_F_INDIRECT_DESC,
             "event_idx": 1 << spec.VIRTIO_RING_F_EVENT_IDX,
             "all": 1 << spec.VIRTIO_F_INDIRECT_DESC | 1 << spec.VIRTIO_RING_F_EVENT_IDX}


def _world(p: dict, cfg: DeviceConfig, seed: int) -> World:
    """The stream's world; the features the build offers are the RTL build's (the reference
    is built with the same)."""
    return World(seed=seed, handle_mode=p.get("handle_mode", True), iova=p.get("iova", False),
                 domid=seed % 0xFFF0 + 1,
                 iotlb_entries=getattr(cfg, "iotlb_entries", spec.DEFAULT_IOTLB_ENTRIES),
                 entries=cfg.entries, queue_num_max=cfg.queue_num_max,
                 disk_bytes=cfg.disk_bytes, data_width=cfg.data_width,
                 features=getattr(cfg, "features", Features()),
                 negotiate=NEGOTIATE[p.get("negotiate", "none")],
                 withhold=NEGOTIATE[p.get("withhold", "none")])


class RtlStream:
    """The RTL bench and the reference, driven with the same cases by two StreamDrivers."""

    def __init__(self, dut, world: World, *, pause: float, timing_seed: int | None):
        self.dut = dut
        self.w = world
        self.cfg = DeviceConfig.from_env()
        self.tb = DeviceBench(dut, mem_bytes=world.mem_bytes, data_width=world.data_width)
        # the memory model warns about every error response; here they are injected on purpose
        logging.getLogger(f"cocotb.{dut._name}.m_axi_").setLevel(logging.ERROR)
        self.tb.mem.write(0, world.initial_memory())
        self.ref = ReferenceStream(world)
        self.drv = StreamDriver(self.tb, world)
        self.pause = pause
        self.timing_seed = timing_seed
        self.log = self.tb.log
        iso = self.tb.isolation
        iso.clock = lambda: self.tb.monitor.cycle
        iso.entries_limit = self.cfg.entries  # GRANT[ref >= entries] maps nothing
        iso.lanes = world.data_width // 8
        if not world.translated:
            iso.mem_bytes = world.mem_bytes  # GPA: bursts stay inside guest memory
        # IOVA mode: the hypervisor answering misses (the reference's policy, sw.iommu)
        self.hvm = Hypervisor(self.tb.hv)
        self.model = IommuModel(self.drv.table, self.drv.policy_for,
                                delay=lambda n: ClockCycles(dut.clk, n))
        self.serving = False
        self.server_errors: list[str] = []
        self.miss_cycles: list[tuple[int, int]] = []  # per logged miss: (read, answered) cycles

    async def start(self) -> None:
        await self.tb.reset()
        if self.pause:
            self.tb.set_memory_timing(self.timing_seed, self.pause)
        await self.drv.hv_setup()
        if self.w.iova:
            cocotb.start_soon(self._serve_misses())

    # -- IOVA mode: the bench's hypervisor -------------------------------------------------------
    def hv_irq(self) -> bool:
        v = self.dut.hv_irq.value
        return bool(int(v)) if v.is_resolvable else False

    async def _serve_misses(self) -> None:
        """Watch ``hv_irq``; read each miss (IOTLB_MISS, MISS_IOVA) and answer it with the
        case's policy after its latency or timeout (``IommuModel.answer``); a miss it never
        answers (NEVER, no timeout) ends with the driver's reset (Status = 0), after which the
        miss must be cancelled: IOTLB_MISS reads 0 and ``hv_irq`` is low."""
        while True:
            if not self.hv_irq():
                await RisingEdge(self.dut.hv_irq)
            self.serving = True
            miss = await self.hvm.pending_miss()
            if miss is not None:
                seen = self.tb.cycle
                policy = self.drv.policy_for(miss)
                if policy.answer is Answer.NEVER and not policy.times_out:
                    self.model.decide(miss, policy)
                    await self._reset_in_miss(miss)
                else:
                    await self.model.answer(self.hvm, miss)
                self.miss_cycles.append((seen, self.tb.cycle))
            self.serving = False
            await RisingEdge(self.dut.clk)

    async def _reset_in_miss(self, miss: IotlbMiss) -> None:
        g = self.tb.guest
        await ClockCycles(self.dut.clk, 10)
        await g.write32(spec.MMIO_STATUS, 0)
        for _ in range(1000):
            if await g.read32(spec.MMIO_STATUS) == 0:
                break
        pending = await self.tb.hv.read32(spec.HV_IOTLB_MISS)
        if pending & spec.IOTLB_MISS_PENDING or self.hv_irq():
            self.server_errors.append(f"{miss}: a driver reset did not cancel it (IOTLB_MISS "
                                      f"{pending:#x}, hv_irq {int(self.hv_irq())})")

    async def wait_misses(self, k0: int, count: int, bound: int) -> int:
        """Wait until ``count`` misses were seen since log entry ``k0`` and none is pending or
        being answered; returns the cycles waited (``bound + 1`` if not within ``bound``)."""
        c0 = self.tb.cycle
        while len(self.model.log) - k0 < count or self.serving or self.hv_irq():
            if self.tb.cycle - c0 > bound:
                return bound + 1
            await RisingEdge(self.dut.clk)
        return self.tb.cycle - c0

    # -- helpers -------------------------------------------------------------------------------
    async def prepare(self, case: Case) -> None:
        """The driver's set-up of ``case``; the isolation monitor is told what it exposes."""
        iso = self.tb.isolation
        iso.expose(case_ranges(case, self.w))
        iso.outside_ok = case.category == "bus_error" and case.note == "decerr"
        await self.drv.prepare(case)

    def require_all_checked(self) -> None:
        """Every address handshake the monitor saw was checked per page (and there were
        some): a bench that checked nothing fails."""
        try:
            self.tb.isolation.require_all_checked(len(self.tb.monitor.records))
        except AssertionError as exc:
            raise CaseFailure("violation", str(exc)) from None

    async def fault_regs(self) -> tuple[int, int, int, int]:
        hv = self.tb.hv
        status = await hv.read32(spec.HV_FAULT_STATUS)
        cause = await hv.read32(spec.HV_FAULT_CAUSE)
        lo = await hv.read32(spec.HV_FAULT_ADDR_LO)
        hi = await hv.read32(spec.HV_FAULT_ADDR_HI)
        return status, cause, hi << 32 | lo, await hv.read32(spec.HV_FAULT_COUNT)

    async def wait_fault(self, bound: int) -> int:
        """Wait until HV_FAULT_STATUS reads 1 (polled); returns the cycles waited (``bound + 1``
        if it did not within ``bound``)."""
        c0 = self.tb.cycle
        while not await self.tb.hv.read32(spec.HV_FAULT_STATUS):
            if self.tb.cycle - c0 > bound:
                return bound + 1
        return self.tb.cycle - c0

    def _records_done(self, start: int, count: int) -> bool:
        recs = self.tb.monitor.records
        if len(recs) - start < count:
            return False
        if count == 0:
            return True
        last = recs[start + count - 1]
        return last.resp is not None and (last.kind == "W" or last.beats_seen == last.beats)

    async def wait_transactions(self, start: int, count: int, bound: int) -> int:
        """Wait until ``count`` transactions from record ``start`` completed; returns the
        cycles waited (``bound + 1`` if they did not within ``bound``)."""
        c0 = self.tb.cycle
        while not self._records_done(start, count):
            if self.tb.cycle - c0 > bound:
                return bound + 1
            await RisingEdge(self.dut.clk)
        return self.tb.cycle - c0

    # -- one case --------------------------------------------------------------------------------
    async def run_case(self, case: Case, fig: Figures) -> Outcome:
        ref_out = self.ref.run(case)
        why = check_expectation(case, ref_out)
        if why:  # the generator or the reference is wrong: report it as a mismatch
            raise CaseFailure("mismatch", f"{case.describe()}: the reference does not give the "
                              f"category's outcome: {why}")
        if self.ref.violations:
            raise CaseFailure("violation", f"reference: {self.ref.violations[0]}")
        mon = self.tb.monitor
        iso = self.tb.isolation
        await self.prepare(case)
        i0, k0 = len(mon.records), len(self.model.log)
        if case.expect.ignored_notify:
            await self.drv.kick(case, first=True)
            await ClockCycles(self.dut.clk, SETTLE)
            if len(mon.records) != i0:
                raise CaseFailure("mismatch", f"{case.describe()}: a notify that must be "
                                  f"ignored started {len(mon.records) - i0} transaction(s)")
        await self.drv.kick(case, first=False)
        bound = ref_out.bound(self.w.data_width, self.pause)
        n = len(ref_out.transactions)
        waited = await self.wait_transactions(i0, n, bound)
        if self.w.iova and waited <= bound:
            await ClockCycles(self.dut.clk, SETTLE)
            waited += SETTLE + await self.wait_misses(k0, len(ref_out.misses), bound - waited)
        if ref_out.fault and waited <= bound:
            # the fault may come after the last transaction by more than SETTLE: an indirect
            # table is walked out of the table buffer, with no bus access
            waited += await self.wait_fault(bound - waited)
        fig.cycles += min(waited, bound)
        fig.max_bound_ratio = max(fig.max_bound_ratio, waited / bound)
        await ClockCycles(self.dut.clk, SETTLE)
        got = mon.records[i0:]
        if iso.violations:
            raise CaseFailure("violation", f"{case.describe()}: {iso.violations[0]}")
        if self.server_errors:
            raise CaseFailure("mismatch", f"{case.describe()}: {self.server_errors[0]}")
        if self.w.iova:
            rtl_misses = [(r.miss.iova, r.miss.write) for r in self.model.log[k0:]]
            if rtl_misses != ref_out.misses:
                raise CaseFailure("mismatch", f"{case.describe()}: misses (IOVA, write) "
                                  f"{[(hex(a), w) for a, w in rtl_misses]}, reference "
                                  f"{[(hex(a), w) for a, w in ref_out.misses]}")
            fig.misses += len(rtl_misses)
            fig.evictions += ref_out.evictions
        status, cause, addr, count = await self.fault_regs()
        want_count = ref_out.fault_count
        if waited > bound:
            kind = "mismatch" if count != want_count or len(got) > n else "hang"
            raise CaseFailure(kind, f"{case.describe()}: {len(got)} of {n} transactions "
                              f"after {bound} cycles (reference: {ref_out.summary()}); fault "
                              f"registers status={status} cause={cause} addr={addr:#x} "
                              f"count={count}")
        try:
            compare_transactions(ref_out.transactions, got, self.w.data_width)
        except AssertionError as exc:
            raise CaseFailure("mismatch", f"{case.describe()}: {exc}\n  fault registers "
                              f"status={status} cause={cause} addr={addr:#x} count={count}; "
                              f"reference: {ref_out.summary()}") from None
        want = (1, *ref_out.fault, want_count) if ref_out.fault else (0, count)
        have = (status, cause, addr, count) if ref_out.fault else (status, count)
        if have != want:
            raise CaseFailure("mismatch", f"{case.describe()}: fault registers "
                              f"{have} expected {want} (reference: {ref_out.summary()})")
        try:
            compare_bytes(f"{case.describe()}: guest memory", self.ref.dev.mem.snapshot(),
                          self.tb.mem.snapshot())
        except AssertionError as exc:
            raise CaseFailure("mismatch", str(exc)) from None
        # the used elements (id, len, status byte) and InterruptStatus with irq (issue 17:
        # EVENT_IDX decides the interrupt), then acknowledged on both sides
        try:
            got_used = read_completions(self.tb.mem, self.w, case, ref_out.used_first,
                                        len(ref_out.completions)) \
                if ref_out.completions else []
            compare_completions(ref_out.completions, got_used)
            irq = int(self.dut.irq.value)
            compare_interrupt(ref_out.interrupt, await self.drv.take_interrupt(), irq)
        except AssertionError as exc:
            raise CaseFailure("mismatch", f"{case.describe()}: {exc}") from None
        fig.interrupts += bool(ref_out.interrupt & spec.INT_USED_BUFFER)
        await self.drv.finish(case, ref_out.fault is not None)
        fig.transactions += n
        return ref_out


async def _begin(dut, test: str, bench: type, handle_mode: bool | None = None,
                 iova: bool = False):
    """A campaign's start: its params, its figures, a started ``bench`` on a seeded world, and
    the seeded chooser."""
    p = params()
    seed = p.get("seed", 1)
    fig = Figures(test, seed, wall=time.monotonic())  # the start, until _end
    mode = p if handle_mode is None else {"handle_mode": handle_mode}
    if iova:
        mode = {"handle_mode": False, "iova": True}
    world = _world(mode, DeviceConfig.from_env(), seed)
    pause = p.get("pause", 0.0)
    b = bench(dut, world, pause=pause, timing_seed=seed if pause else None)
    await b.start()
    return p, fig, b, RandomChooser(random.Random(seed))


async def _attempt(b: RtlStream, fig: Figures, step) -> bool:
    """Await one case; on a :class:`CaseFailure` log and count it and say False: the two sides
    no longer start from the same state, so the campaign stops."""
    try:
        await step
        return True
    except CaseFailure as exc:
        b.log.error("seed %d %s", fig.seed, exc)
        fig.fail(exc)
        return False


def _end(fig: Figures, p: dict, b: RtlStream) -> None:
    """The campaign's end: unless it already failed, every handshake was checked per page
    (:meth:`RtlStream.require_all_checked`); the figures written."""
    if not fig.failures:
        try:
            b.require_all_checked()
        except CaseFailure as exc:
            fig.fail(exc)
    fig.wall = time.monotonic() - fig.wall
    fig.isolation = b.tb.isolation.summary()
    fig.write(p.get("report"))


@cocotb.test()
async def test_stream(dut):
    """A seeded adversarial stream; params: seed, cases, handle_mode, iova, pause, negotiate
    (the ring features of the cases that do not choose: "none", "indirect", "event_idx",
    "all"), withhold (ring features never negotiated, the same names), audit (read the disk
    back at the end, default True), only (a list of categories to draw from, uniformly)."""
    p, fig, rs, ch = await _begin(dut, "stream", RtlStream)

    async def one(case: Case) -> None:
        out = await rs.run_case(case, fig)
        fig.faults += out.fault is not None
        fig.requests += len(out.completions) + (out.fault is not None)

    only = p.get("only")  # a list of categories to draw from (default: all, by weight)
    for i in range(p.get("cases", 100)):
        case = generate(ch, rs.w, i, ch.choice(only) if only else None)
        fig.cases += 1
        fig.by_category[case.category] = fig.by_category.get(case.category, 0) + 1
        fig.hostile += case.category != "good"
        if not await _attempt(rs, fig, one(case)):
            break
    if not fig.failures and p.get("audit", True):
        # the disk: read back whole through the device on both sides, guest memory compared
        # (what DISCARD, WRITE_ZEROES and T_OUT left on the RTL's RAM disk)
        cap = rs.w.capacity
        for k, first in enumerate(range(0, cap, 16)):
            case = gen_disk_audit(ch, rs.w, fig.cases + k, first, min(16, cap - first))
            if not await _attempt(rs, fig, rs.run_case(case, fig)):
                break
            fig.audited_sectors += min(16, cap - first)
    if not fig.failures:  # the monitor checked the stream's mode (GPA: memory bounds)
        try:
            rs.tb.isolation.require_checked(rs.w.mode, at_least=fig.cases // 4)
        except AssertionError as exc:
            fig.fail(CaseFailure("violation", str(exc)))
    _end(fig, p, rs)
    rs.log.info("stream seed %d: %d cases (%d hostile), %d faults, %d transactions, %d cycles, "
                "max %.2f of the bound", fig.seed, fig.cases, fig.hostile, fig.faults,
                fig.transactions, fig.cycles, fig.max_bound_ratio)
    assert not fig.failures, fig.failures[0]


# =================================================================================================
# Races: cycle-level observation
# =================================================================================================


@dataclass
class WireTxn:
    """One ``m_axi`` transaction: first cycle its address valid was high (``rise``, when it
    was committed with the translation it carries), handshake, and completion (last read beat
    or write response)."""

    kind: str
    addr: int
    rise: int
    hs: int
    end: int | None = None


class WireWatch:
    """Cycle-by-cycle record of ``m_axi`` transactions and of the register writes that race
    with them (``s_hv`` and ``s_axil`` handshakes, ``rst``). Values are sampled at the rising
    edge, as the flip-flops see them, so a register write with handshake in cycle ``c`` takes
    effect for everything the device decides from cycle ``c + 1`` on."""

    def __init__(self, dut):
        self.dut = dut
        self.cycle = 0
        self.txns: list[WireTxn] = []
        self.hv_writes: list[tuple[int, int, int]] = []  # (cycle, offset, data)
        self.hv_reads: list[tuple[int, int]] = []  # (cycle of the AR handshake, offset)
        self.guest_writes: list[tuple[int, int, int]] = []
        self.rst_cycles: list[int] = []  # the last cycle of each rst pulse
        self.rst_starts: list[int] = []  # the first cycle of each rst pulse
        self._rise = {"R": None, "W": None}
        self._open_r: list[WireTxn] = []
        self._open_w: list[WireTxn] = []

    def start(self) -> None:
        cocotb.start_soon(self._run())

    def _v(self, name: str) -> int:
        v = getattr(self.dut, name).value
        return int(v) if v.is_resolvable else 0

    async def _run(self) -> None:
        v = self._v
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1
            c = self.cycle
            if v("rst"):
                if not self.rst_cycles or self.rst_cycles[-1] != c - 1:
                    self.rst_cycles.append(c)
                    self.rst_starts.append(c)
                else:
                    self.rst_cycles[-1] = c  # keep the last cycle of a reset pulse
                self._open_r.clear()
                self._open_w.clear()
                self._rise = {"R": None, "W": None}
                continue
            for kind, ch in (("R", "ar"), ("W", "aw")):
                if v(f"m_axi__{ch}valid"):
                    if self._rise[kind] is None:
                        self._rise[kind] = c
                    if v(f"m_axi__{ch}ready"):
                        t = WireTxn(kind, v(f"m_axi__{ch}addr"), self._rise[kind], c)
                        self.txns.append(t)
                        (self._open_r if kind == "R" else self._open_w).append(t)
                        self._rise[kind] = None
            if v("m_axi__rvalid") and v("m_axi__rready") and v("m_axi__rlast") and self._open_r:
                self._open_r.pop(0).end = c
            if v("m_axi__bvalid") and v("m_axi__bready") and self._open_w:
                self._open_w.pop(0).end = c
            if v("s_hv__awvalid") and v("s_hv__awready"):
                self.hv_writes.append((c, v("s_hv__awaddr"), v("s_hv__wdata")))
            if v("s_hv__arvalid") and v("s_hv__arready"):
                self.hv_reads.append((c, v("s_hv__araddr")))
            if v("s_axil__awvalid") and v("s_axil__awready"):
                self.guest_writes.append((c, v("s_axil__awaddr"), v("s_axil__wdata")))


def _permits(table: dict[int, GrantEntry], domid: int, kind: str, addr: int) -> bool:
    frame = addr >> spec.PAGE_SHIFT
    return any(e.frame == frame and e.permits_access and e.domid == domid
               and (kind == "R" or not e.readonly) for e in table.values())


class RaceBench(RtlStream):
    """An :class:`RtlStream` plus a :class:`WireWatch` and the race steps."""

    def __init__(self, dut, world: World, *, pause: float, timing_seed: int | None):
        super().__init__(dut, world, pause=pause, timing_seed=timing_seed)
        self.watch = WireWatch(dut)
        self.watch.start()
        self.reset_lead: dict[str, int] = {}  # cycles from starting a reset to its effect

    async def both(self, fn) -> None:
        """The same driver step on the reference (synchronously) and on the RTL."""
        run_coroutine(fn(self.ref.drv))
        await fn(self.drv)

    async def ack(self) -> None:
        async def step(d: StreamDriver) -> None:
            await d.link.guest.write32(spec.MMIO_INTERRUPT_ACK, 3)
        await self.both(step)

    async def sync(self, log: dict) -> None:
        """The hypervisor's HV_SYNC: written, then polled (at most 10,000 reads) until it reads
        1; the cycles of the write and of that read in ``log`` (``sync_write``, ``sync_read``)."""
        await self.tb.hv.write32(spec.HV_SYNC, 1)
        log["sync_write"] = self.watch.hv_writes[-1][0]
        for _ in range(10_000):
            if await self.tb.hv.read32(spec.HV_SYNC) & 1:
                log["sync_read"] = self.watch.hv_reads[-1][0]
                return

    @staticmethod
    def check_sync(txns, log: dict, what: str) -> None:
        """A violation if HV_SYNC (:meth:`sync`'s ``log``) read 1 before every transaction of
        ``txns`` issued up to its write had completed."""
        for t in txns:
            if t.rise <= log["sync_write"] and (t.end is None or t.end >= log["sync_read"]):
                raise CaseFailure("violation", f"{what}: HV_SYNC written in cycle "
                                  f"{log['sync_write']} read 1 in cycle {log['sync_read']} "
                                  f"while {t.kind} at {t.addr:#x} (issued {t.rise}) "
                                  f"completed {t.end}")

    async def wait_end(self, limit: int) -> int:
        """Wait for the request to end (irq: a used buffer or a fault); returns cycles."""
        c0 = self.watch.cycle
        try:
            await self.tb.wait_irq(limit)
        except TimeoutError:
            return limit + 1
        return self.watch.cycle - c0

    def dump(self, what: str, t0: int) -> str:
        """Debugging help for a hang: the internal state machines (names of the generated
        Verilog, so best effort) and the last transactions."""
        parts = []
        for path in ("engine.fsm_state", "dma.fsm_state", "dma.bq_level", "engine.abort"):
            try:
                h = self.dut
                for name in path.split("."):
                    h = getattr(h, name)
                parts.append(f"{path}={h.value}")
            except AttributeError:
                pass
        last = [(t.kind, hex(t.addr), t.rise, t.hs, t.end) for t in self.watch.txns[t0:][-6:]]
        return f"{what}: {' '.join(parts)}; cycle {self.watch.cycle}; last transactions {last}"

    def estimate(self, case: Case) -> int:
        """Rough cycles the case takes on the RTL (to spread the race over all of it)."""
        nbytes = sum(ln for _, _, ln, _, _ in case.descs)
        return int((150 + 2 * nbytes // (self.w.data_width // 8)) / (1 - self.pause))

    def check_isolation_by_cycle(self, txns: list[WireTxn], writes: list[tuple[int, TableWrite]],
                                 what: str) -> None:
        """Every transaction against the table as of the cycle before its address went valid
        (``writes``: table writes with the cycle they took effect)."""
        if not self.w.handle_mode:
            return
        for t in txns:
            table = dict(self.w.grants)
            for c, tw in writes:
                if c < t.rise:
                    table[tw.ref] = tw.apply(table.get(tw.ref, GrantEntry()))
            if not _permits(table, self.w.domid, t.kind, t.addr):
                raise CaseFailure("violation", f"{what}: {t.kind} at {t.addr:#x} issued in cycle "
                                  f"{t.rise} is not granted at that moment (table writes "
                                  f"{[(c, tw.what, tw.ref) for c, tw in writes]})")

    async def check_outcome(self, what: str, ref_out, fig: Figures, *, waited: int, limit: int,
                            slack: int, t0: int, i0: int, note: str = "") -> None:
        """A race case ended within the reference's cycle bound (plus ``slack``), with the
        reference's bus transactions (from record ``i0``), fault registers and memory."""
        bound = ref_out.bound(self.w.data_width, self.pause)
        if waited > limit or waited > bound + slack:
            raise CaseFailure("hang", self.dump(f"{what}: no completion or fault after {waited} "
                                                f"cycles (bound {bound}{note})", t0))
        fig.max_bound_ratio = max(fig.max_bound_ratio, waited / (bound + slack))
        fig.cycles += waited
        self.compare_bus(what, ref_out.transactions, i0)
        status, cause, addr, count = await self.fault_regs()
        want = (1, *ref_out.fault, ref_out.fault_count) if ref_out.fault else (0, count)
        have = (status, cause, addr, count) if ref_out.fault else (status, count)
        if have != want:
            raise CaseFailure("mismatch", f"{what}: fault registers {have}, reference {want}")
        self.compare_memory(what)

    def compare_memory(self, what: str) -> None:
        try:
            compare_bytes(f"{what}: guest memory", self.ref.dev.mem.snapshot(),
                          self.tb.mem.snapshot())
        except AssertionError as exc:
            raise CaseFailure("mismatch", str(exc)) from None

    def compare_bus(self, what: str, expected, i0: int) -> None:
        try:
            compare_transactions(expected, self.tb.monitor.records[i0:], self.w.data_width)
        except AssertionError as exc:
            raise CaseFailure("mismatch", f"{what}: {exc}") from None

    async def restore(self, ref: int) -> None:
        e = self.w.grants.get(ref, GrantEntry())

        async def step(d: StreamDriver) -> None:
            await d.write_grant(ref, e)
        await self.both(step)

    async def probe_after_reset(self, case: Case, reset_cycle: int, fig: Figures) -> None:
        """After a reset: move a grant the interrupted request used to another frame, run the
        same request again (compared with the reference), and check that nothing issued after
        the reset used the old translation; then put the grant back."""
        refs = [r for r in case_refs(case) if r in R_DATA] or case_refs(case)
        tw = TableWrite(refs[0], 1, F_QUARANTINE[refs[0] % len(F_QUARANTINE)], "remap")

        async def remap(d: StreamDriver) -> None:
            await d.link.hv.write32(tw.offset, tw.value)
        await self.both(remap)
        c_remap = self.watch.hv_writes[-1][0]
        t0 = len(self.watch.txns)
        probe = Case(case.index, "after_reset", Expect(0), case.queue, descs=case.descs,
                     heads=case.heads, writes=case.writes, note=case.note)
        out = await self.run_case(probe, fig)
        fig.requests += len(out.completions)
        self.check_isolation_by_cycle(self.watch.txns[t0:], [(c_remap, tw)],
                                      f"{case.describe()}: after the reset of cycle "
                                      f"{reset_cycle}")
        await self.restore(tw.ref)
        await self.ack()


async def _revoker(rb: RaceBench, tw: TableWrite, delay: int, log: dict) -> None:
    """The hypervisor's side of the race: after ``delay`` cycles, the table write, then
    :meth:`RaceBench.sync`."""
    await ClockCycles(rb.dut.clk, delay)
    await rb.tb.hv.write32(tw.offset, tw.value)
    log["write"] = rb.watch.hv_writes[-1][0]
    await rb.sync(log)


async def _revoke_case(rb: RaceBench, case: Case, tw: TableWrite, delay: int,
                       fig: Figures) -> None:
    await rb.ack()
    await rb.prepare(case)
    i0, t0 = len(rb.tb.monitor.records), len(rb.watch.txns)
    log: dict[str, int] = {}
    await rb.drv.kick(case, first=False)
    race = cocotb.start_soon(_revoker(rb, tw, delay, log))
    limit = 20 * rb.estimate(case) + 2000
    waited = await rb.wait_end(limit)
    await race
    await ClockCycles(rb.dut.clk, SETTLE)
    txns = rb.watch.txns[t0:]
    what = f"{case.describe()}: {tw.what} of ref {tw.ref} after {delay} cycles"
    if "sync_read" not in log:
        raise CaseFailure("hang", f"{what}: HV_SYNC never read 1")
    # 1. Nothing issued after the write used the old entry.
    rb.check_isolation_by_cycle(txns, [(log["write"], tw)], what)
    # 2. HV_SYNC read 1 only once everything issued up to its write had completed.
    rb.check_sync(txns, log, what)
    # 3. The reference, with the same write after the same transactions, agrees.
    k = sum(t.rise <= log["write"] for t in txns)
    tally = fig.by_category
    if any(t.rise <= log["write"] and (t.end is None or t.end > log["write"]) for t in txns):
        tally["landed_during_a_transaction"] = tally.get("landed_during_a_transaction", 0) + 1
    if 0 < k < len(txns):
        tally["landed_mid_request"] = tally.get("landed_mid_request", 0) + 1
    ref_out = rb.ref.run(case, at=(k, lambda: rb.ref.dev.hv.write(tw.offset, tw.value)))
    if rb.ref.violations:
        raise CaseFailure("violation", f"reference: {rb.ref.violations[0]}")
    await rb.check_outcome(what, ref_out, fig, waited=waited, limit=limit,
                           slack=delay + 200, t0=t0, i0=i0,
                           note=f", write in cycle {log['write']}")
    fig.transactions += len(txns)
    fig.faults += ref_out.fault is not None
    fig.requests += 1
    await rb.drv.finish(case, ref_out.fault is not None)
    await rb.restore(tw.ref)


@cocotb.test()
async def test_revoke_race(dut):
    """Grant revocation racing in-flight DMA; params: seed, cases, pause."""
    p, fig, rb, ch = await _begin(dut, "revoke", RaceBench, handle_mode=True)
    for i in range(p.get("cases", 20)):
        case = gen_big_request(ch, rb.w, i)
        tw = gen_table_write(ch, rb.w, case)
        delay = ch.int(0, rb.estimate(case) * 3 // 4)
        fig.cases += 1
        fig.hostile += 1
        fig.by_category[tw.what] = fig.by_category.get(tw.what, 0) + 1
        if not await _attempt(rb, fig, _revoke_case(rb, case, tw, delay, fig)):
            break
    _end(fig, p, rb)
    assert not fig.failures, fig.failures[0]


async def _aim(rb: RaceBench, t0: int, k: int, offset: int, lead: int, limit: int) -> str:
    """Wait so that a reset started now plus ``lead`` cycles lands ``offset`` cycles after the
    request's next address issue, predicted from its ``k``-th and ``k + 1``-th issues (bursts
    of a request issue at a steady interval on memory without pauses). Returns what was aimed
    at; if the request had fewer issues within ``limit`` cycles, returns at once."""
    c0 = rb.watch.cycle
    while len(rb.watch.txns) - t0 < k + 1:
        if rb.watch.cycle - c0 > limit:
            return "not aimed (too few issues)"
        await RisingEdge(rb.dut.clk)
    r1, r2 = rb.watch.txns[t0 + k - 1].rise, rb.watch.txns[t0 + k].rise
    target = 2 * r2 - r1 + offset
    while rb.watch.cycle + lead < target:
        await RisingEdge(rb.dut.clk)
    return f"aimed at issue {k + 2} + {offset} (predicted cycle {target - offset})"


async def _reset_case(rb: RaceBench, case: Case, how: str, delay: int, fig: Figures,
                      window: int, aim: tuple[int, int] | None = None) -> None:
    await rb.ack()
    await rb.prepare(case)
    i0, t0 = len(rb.tb.monitor.records), len(rb.watch.txns)
    await rb.drv.kick(case, first=False)
    if aim is None:
        await ClockCycles(rb.dut.clk, delay)
        what = f"{case.describe()}: {how} after {delay} cycles"
    else:
        lead = rb.reset_lead.get(how, 1)
        what = f"{case.describe()}: {how} " + await _aim(rb, t0, *aim, lead,
                                                         rb.estimate(case))
    called = rb.watch.cycle
    if how == "status":
        await rb.tb.guest.write32(spec.MMIO_STATUS, 0)
        c = start = rb.watch.guest_writes[-1][0]
        for _ in range(10_000):
            if await rb.tb.guest.read32(spec.MMIO_STATUS) == 0:
                break
        else:
            raise CaseFailure("hang", f"{what}: Status never read 0 after the reset")
    else:
        await rb.tb.reset()
        c, start = rb.watch.rst_cycles[-1], rb.watch.rst_starts[-1]
    rb.reset_lead[how] = start - called  # for the next aimed reset
    await ClockCycles(rb.dut.clk, SETTLE)
    txns = rb.watch.txns[t0:]
    if txns:  # how close the reset came to an address issue (0: in the same cycle)
        fig.reset_distance.append(min(abs(start - t.rise) for t in txns))
        rb.log.debug("%s: reset from cycle %d (last %d), issues nearby %s", what, start, c,
                     [t.rise for t in txns if abs(t.rise - start) < 40])
    late = [t for t in txns if t.rise > c + window]
    if any(c < t.rise <= c + window for t in txns):
        fig.by_category["issued_in_reset_window"] = \
            fig.by_category.get("issued_in_reset_window", 0) + 1
    if late:
        raise CaseFailure("violation", f"{what}: {len(late)} transaction(s) issued after the "
                          f"reset of cycle {c}, first {late[0].kind} at {late[0].addr:#x} in "
                          f"cycle {late[0].rise}")
    k = len(txns)
    ref = rb.ref
    if how == "status":
        ref_out = ref.run(case, at=(k, lambda: ref.dev.guest.write(spec.MMIO_STATUS, 0)))
        rb.compare_bus(what, ref_out.transactions, i0)
        rb.compare_memory(what)
        status, _, _, count = await rb.fault_regs()
        if (status, count) != (int(bool(ref.dev.fault_status)), ref.dev.fault_count):
            raise CaseFailure("mismatch", f"{what}: fault status/count {(status, count)}, "
                              f"reference {(ref.dev.fault_status, ref.dev.fault_count)}")
    else:
        # rst cuts the burst in flight wherever it is: the reference is reset before the
        # notify and takes over the RTL's memory; the request wrote nothing to the disk.
        ref.run(case, at=(0, ref.dev.reset))
        ref.dev.mem.write(0, rb.tb.mem.snapshot())

        async def reconfigure(d: StreamDriver) -> None:
            await d.hv_config()
        await rb.both(reconfigure)
    for d in (rb.drv, ref.drv):
        d.queue, d.avail_idx, d.needs_reset = None, 0, True
        d.link.errors.clear()
    fig.transactions += len(txns)
    fig.requests += 1
    await rb.probe_after_reset(case, c, fig)


@cocotb.test()
async def test_reset_race(dut):
    """Driver reset (Status = 0) or ``rst`` at random cycles of a request, most of them aimed
    at -2 to +2 cycles of an address issue; params: seed, cases, pause, how ("status", "rst"
    or "mixed"), window (cycles after the reset write in which a transaction may still start:
    0, the contract, unless a run asks otherwise). ``Figures.reset_distance`` records, per
    race, the cycles between the reset and the nearest address issue."""
    p, fig, rb, ch = await _begin(dut, "reset", RaceBench)
    mode = p.get("how", "mixed")
    for i in range(p.get("cases", 20)):
        how = ch.choice(("status", "status", "rst")) if mode == "mixed" else mode
        case = gen_big_request(ch, rb.w, i, disk_writes=how == "status")
        delay = ch.int(0, rb.estimate(case))
        # three in four resets aimed at -2 to +2 cycles of an address issue (predicted), the
        # fifth to the tenth (the first ones' intervals are not steady: the poll's, the head's
        # and the descriptor reads' rules differ, docs/timing.md)
        aim = (ch.int(3, 8), ch.choice((-2, -1, 0, 0, 1, 2))) if ch.bool(0.75) else None
        fig.cases += 1
        fig.hostile += 1
        fig.by_category[how] = fig.by_category.get(how, 0) + 1
        step = _reset_case(rb, case, how, delay, fig, p.get("window", 0), aim)
        if not await _attempt(rb, fig, step):
            break
    _end(fig, p, rb)
    assert not fig.failures, fig.failures[0]


# =================================================================================================
# IOVA mode: invalidation racing DMA
# =================================================================================================


def _iova_pages(case: Case, rb: RaceBench) -> list[int]:
    """IOVA pages of the case's buffers (every page they span), in order, rings and header
    slots first."""
    w = rb.w
    pages = [w.iova_page(r) for r in (R_DESC, R_AVAIL, R_USED, *R_SLOT)]
    for _, a, ln, _, _ in case.descs:
        if ln:
            pages += [pg for pg in range(a >> spec.PAGE_SHIFT, ((a + ln - 1) >> spec.PAGE_SHIFT)
                                         + 1) if pg not in pages]
    return pages


def _reachable(table, pages: list[int]) -> set[tuple[int, str]]:
    """(frame, "R"/"W") the device may use through ``pages`` under ``table``."""
    out = set()
    for pg in pages:
        m = table.lookup(pg << spec.PAGE_SHIFT)
        if m is not None:
            frame = m.translate(pg << spec.PAGE_SHIFT) >> spec.PAGE_SHIFT
            out |= {(frame, k) for k, ok in (("R", m.read), ("W", m.write)) if ok}
    return out


async def _invalidator(rb: RaceBench, page: int, new, delay: int, log: dict) -> None:
    """The guest's strict unmap racing the request: after ``delay`` cycles, under the
    hypervisor's IOTLB lock (which the miss server also takes), change the page table at
    ``page`` and invalidate it; then :meth:`RaceBench.sync`."""
    await ClockCycles(rb.dut.clk, delay)
    async with rb.hvm.lock:
        await rb.drv._remap(page, new)
        log["cmd"] = next(c for c, off, _ in reversed(rb.watch.hv_writes)
                          if off == spec.HV_IOTLB_CMD)
    await rb.sync(log)


async def _iova_race_case(rb: RaceBench, case: Case, page: int, what: str, new, delay: int,
                          fig: Figures) -> None:
    w = rb.w
    await rb.ack()
    await rb.prepare(case)
    i0, t0, k0 = len(rb.tb.monitor.records), len(rb.watch.txns), len(rb.model.log)
    pages = _iova_pages(case, rb)
    before = _reachable(rb.drv.table, pages)
    log: dict = {}
    await rb.drv.kick(case, first=False)
    race = cocotb.start_soon(_invalidator(rb, page, new, delay, log))
    limit = 20 * rb.estimate(case) + 2000 + 8 * 400
    waited = await rb.wait_end(limit)
    await race
    await ClockCycles(rb.dut.clk, SETTLE)
    waited += SETTLE + await rb.wait_misses(k0, 0, limit)
    txns = rb.watch.txns[t0:]
    label = f"{case.describe()}: {what} of IOVA page {page:#x} after {delay} cycles"
    if "sync_read" not in log:
        raise CaseFailure("hang", f"{label}: HV_SYNC never read 1")
    after = _reachable(rb.drv.table, pages)
    # 1. Nothing issued after the invalidation command used the removed mapping.
    for t in txns:
        allowed = before if t.rise <= log["cmd"] else after
        if (t.addr >> spec.PAGE_SHIFT, t.kind) not in allowed:
            raise CaseFailure("violation", f"{label}: {t.kind} at {t.addr:#x} issued in cycle "
                              f"{t.rise} (invalidation in cycle {log['cmd']}) is not mapped "
                              f"at that moment")
    # 2. HV_SYNC read 1 only once everything issued up to its write had completed.
    rb.check_sync(txns, log, label)
    # 3. The reference, with the same change after the same transactions and the same
    #    answered misses (the RTL looks a page up before its bursts: a miss answered before
    #    the change and raised again after it is in both), agrees.
    k = sum(t.rise <= log["cmd"] for t in txns)
    cycles = rb.miss_cycles[k0:]
    m = sum(done < log["cmd"] for _, done in cycles)
    racy = any(seen < log["cmd"] < done for seen, done in cycles)  # pending across the change
    tally = fig.by_category
    if 0 < k < len(txns):
        tally["landed_mid_request"] = tally.get("landed_mid_request", 0) + 1
    ref = rb.ref
    state = {"tx": False, "done": False}

    def change(tx: bool = False) -> None:
        state["tx"] |= tx
        if state["tx"] and not state["done"] and len(ref.dev.misses) >= m:
            state["done"] = True
            run_coroutine(ref.drv._remap(page, new))
    ref.after_miss = change
    try:
        ref_out = ref.run(case, at=(k, lambda: change(True)))
    finally:
        ref.after_miss = None
    if ref.violations:
        raise CaseFailure("violation", f"reference: {ref.violations[0]}")
    await rb.check_outcome(label, ref_out, fig, waited=waited, limit=limit,
                           slack=delay + 1000, t0=t0, i0=i0)
    rtl_misses = [(r.miss.iova, r.miss.write) for r in rb.model.log[k0:]]
    if rtl_misses != ref_out.misses:
        if not racy:
            writes = [(c, hex(o), hex(v)) for c, o, v in rb.watch.hv_writes
                      if c >= rb.watch.txns[t0].rise - 200] if txns else []
            raise CaseFailure("mismatch", f"{label}: misses "
                              f"{[(hex(a), wr) for a, wr in rtl_misses]}, reference "
                              f"{[(hex(a), wr) for a, wr in ref_out.misses]}; invalidation "
                              f"in cycle {log['cmd']}; s_hv writes {writes}; transactions "
                              f"{[(t.kind, hex(t.addr), t.rise, t.end) for t in txns]}; k {k}")
        tally["misses_differ_miss_in_flight"] = tally.get("misses_differ_miss_in_flight", 0) + 1
    fig.misses += len(rtl_misses)
    fig.transactions += len(txns)
    fig.faults += ref_out.fault is not None
    fig.requests += 1
    await rb.drv.finish(case, ref_out.fault is not None)

    async def restore(d: StreamDriver) -> None:
        await d._remap(page, w.iova_map.get(page))
        await d.sync()
    await rb.both(restore)


@cocotb.test()
async def test_iova_race(dut):
    """IOVA mode: the guest unmaps, write-protects, remaps or only invalidates a page a
    request uses, at a random cycle of it, with the IOTLB invalidation and HV_SYNC of a strict
    unmap, while the bench's hypervisor answers misses; params: seed, cases, pause."""
    p, fig, rb, ch = await _begin(dut, "iova_race", RaceBench, iova=True)
    w = rb.w
    for i in range(p.get("cases", 20)):
        case = gen_big_request(ch, w, i)
        case.flush = True  # only this request's pages are in the IOTLB
        data = [pg for pg in _iova_pages(case, rb)[5:] if pg in w.iova_map]
        page = ch.choice(data)
        frame = w.iova_map[page][0]
        what = ch.choice(("unmap", "unmap", "readonly", "remap", "invalidate"))
        new = {"unmap": None, "readonly": (frame, True, False),
               "remap": (F_QUARANTINE[page % len(F_QUARANTINE)], True, True),
               "invalidate": w.iova_map[page]}[what]
        delay = ch.int(0, rb.estimate(case))
        fig.cases += 1
        fig.hostile += 1
        fig.by_category[what] = fig.by_category.get(what, 0) + 1
        if not await _attempt(rb, fig, _iova_race_case(rb, case, page, what, new, delay, fig)):
            break
    if not fig.failures:
        try:
            rb.tb.isolation.require_checked("iova", at_least=fig.cases)
        except AssertionError as exc:
            fig.fail(CaseFailure("violation", str(exc)))
    _end(fig, p, rb)
    assert not fig.failures, fig.failures[0]
