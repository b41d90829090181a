"""Applying cases: one hostile driver for the reference and the RTL, and a stream on the reference.

:class:`StreamDriver` applies a case to anything with the :class:`sw.transport.FaultLink` shape
(register ports, guest memory, an ``errors`` set of failing bus pages), so the same code lays
out the case in the reference model's memory and in the RTL bench's. It is deliberately not
``sw.driver``: a hostile driver writes raw descriptors, ring indices and queue registers that
the real driver never would (through the layouts of :mod:`models.virtio`).
:class:`ReferenceStream` runs cases on the reference and checks the isolation invariants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models import spec, virtio
from models.bus import Transaction
from models.grant import GrantEntry
from models.memory import GuestMemory
from sw.hypervisor import IotlbMiss, decode_miss, invalidate_writes
from sw.iommu import Answer, IommuModel, MissPolicy
from sw.transport import FaultLink, run_coroutine
from verif.oracle import (
    MISS_COST,
    TABLE_ENTRY_CYCLES,
    GrantView,
    OracleDevice,
    Outcome,
    read_completions,
)
from verif.world import F_AVAIL, F_DESC, F_USED, PAGE, Case, QueueSpec, World


class StreamDriver:
    """The hostile driver's shadow state and register sequences, over any
    :class:`sw.transport.FaultLink`.

    The bring-up is the register program of :mod:`models.virtio` (section 3.1.1): reset
    (waiting for Status to read 0), ACKNOWLEDGE, DRIVER, VERSION_1 (and ACCESS_PLATFORM in
    handle mode), FEATURES_OK, the queue registers as the case gives them (unchecked),
    QueueReady, DRIVER_OK.
    """

    def __init__(self, link: FaultLink, world: World, *, reset_poll_limit: int = 10_000
                 ) -> None:
        self.link = link
        self.w = world
        self.queue: QueueSpec | None = None  # programmed queue, None after a reset
        self.features: int | None = None  # DriverFeatures of the bring-up, None after a reset
        self.avail_idx = 0
        self.needs_reset = True
        self.reset_poll_limit = reset_poll_limit
        # IOVA mode: this side's copy of the guest's IOMMU page table (the hypervisor answers
        # misses from it) and the hypervisor's answers for the case under way
        self.table = world.iommu_table() if world.iova else None
        self.policies: dict[int, MissPolicy] = {}
        self.policy = MissPolicy()

    def policy_for(self, miss: IotlbMiss) -> MissPolicy:
        """How the hypervisor answers ``miss`` in the case under way."""
        return self.policies.get(miss.iova >> spec.PAGE_SHIFT, self.policy)

    async def hv_setup(self) -> None:
        """Hypervisor: domain, mode, every grant entry of the world (word 1 first)."""
        await self.hv_config()
        if self.w.handle_mode:
            for ref, e in sorted(self.w.grants.items()):
                await self.write_grant(ref, e)

    async def hv_config(self) -> None:
        """Domain and mode only (after ``rst``: the table survives in block RAM)."""
        await self.link.hv.write32(spec.HV_DOMID, self.w.domid)
        await self.link.hv.write32(spec.HV_CTRL, self.w.mode)

    async def write_grant(self, ref: int, e: GrantEntry) -> None:
        w0, w1 = e.pack()
        off = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * ref
        await self.link.hv.write32(off + 4, w1)
        await self.link.hv.write32(off, w0)

    async def reset(self) -> None:
        await virtio.run_async(virtio.reset(self.reset_poll_limit), self.link.guest)
        self.queue = None
        self.features = None
        self.avail_idx = 0
        self.needs_reset = False

    async def init(self, q: QueueSpec, extra: int | None = None) -> None:
        """Reset and bring the device up with queue ``q`` (rings zeroed in memory first),
        negotiating ``World.driver_features(extra)``."""
        await self.reset()
        for f in (F_DESC, F_AVAIL, F_USED):
            self.link.mem.write(f * PAGE, bytes(PAGE))
        features = self.w.driver_features(extra)

        def program() -> virtio.Program:
            yield from virtio.acknowledge()
            yield from virtio.negotiate(features)
            yield from virtio.setup_queue(q.n, q.desc, q.avail, q.used, check=False)
            yield from virtio.driver_ok()
        await virtio.run_async(program(), self.link.guest)
        self.queue = q
        self.features = features

    async def prepare(self, case: Case) -> None:
        """Everything up to the notify: reset and init if needed, memory, rings, grants, bus
        errors; and the register state an ignored notify needs."""
        if (self.needs_reset or case.fresh or self.queue != case.queue
                or self.features != self.w.driver_features(case.features)):
            await self.init(case.queue, case.features)
        mem = self.link.mem
        for addr, data in case.writes:
            mem.write(addr, data)
        q = case.queue
        valid_n = 1 <= q.n <= self.w.queue_num_max and not q.n & (q.n - 1)
        dbase, abase = self.w.phys(q.desc), self.w.phys(q.avail)
        ring = virtio.SplitRing(q.n)
        if valid_n and dbase is not None:
            for i, a, ln, fl, nx in case.descs:
                mem.write(dbase + ring.desc(i), virtio.DESC.pack(a, ln, fl, nx))
        if valid_n and abase is not None:
            for k, h in enumerate(case.heads):  # (page by page: a ring may span two)
                self.put(q.avail + ring.avail_ring(self.avail_idx + k), virtio.AVAIL_ELEM.pack(h))
            delta = len(case.heads) if case.avail_delta is None else case.avail_delta
            if case.used_event is not None:  # EVENT_IDX (section 2.7.10), before avail.idx
                self.put(q.avail + ring.used_event, case.used_event.to_bytes(2, "little"))
            mem.write(abase, virtio.AVAIL_HEADER.pack(case.avail_flags, self.avail_idx + delta))
            self.avail_idx = (self.avail_idx + delta) & 0xFFFF
        for ref, e in case.patches:
            await self.write_grant(ref, e)
        for kind, addr in case.errors:
            self.link.errors.add(kind, addr)
        if self.w.iova:
            await self._iova_prepare(case)
        g = self.link.guest
        if case.notify == "not_ready":
            await g.write32(spec.MMIO_QUEUE_READY, 0)
        elif case.notify == "no_driver_ok":  # a raw write: the bring-up programs only set bits
            await g.write32(spec.MMIO_STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER
                            | spec.STATUS_FEATURES_OK)

    def put(self, addr: int, data: bytes) -> None:
        """Write ``data`` at device address ``addr``, page by page through the world (bytes
        in a page that does not translate are left alone)."""
        pos = 0
        while pos < len(data):
            a = (addr + pos) & spec.ADDR_MASK
            size = min(PAGE - (a & (PAGE - 1)), len(data) - pos)
            p = self.w.phys(a)
            if p is not None and p + size <= self.w.mem_bytes:
                self.link.mem.write(p, data[pos:pos + size])
            pos += size

    async def take_interrupt(self) -> int:
        """InterruptStatus, then acknowledged (each case's interrupt is its own)."""
        irq = await self.link.guest.read32(spec.MMIO_INTERRUPT_STATUS)
        if irq:
            await self.link.guest.write32(spec.MMIO_INTERRUPT_ACK, irq)
        return irq

    # -- IOVA mode --------------------------------------------------------------------------------
    async def sync(self) -> None:
        """HV_SYNC written, then polled until it reads 1."""
        hv = self.link.hv
        await hv.write32(spec.HV_SYNC, 1)
        for _ in range(self.reset_poll_limit):
            if await hv.read32(spec.HV_SYNC) & 1:
                return
        raise TimeoutError("HV_SYNC never read 1")

    async def _remap(self, page: int, new: tuple[int, bool, bool] | None) -> None:
        """The guest changes its page table at ``page``, then (strict) invalidates it."""
        assert self.table is not None
        self.table.unmap(page << spec.PAGE_SHIFT)
        if new is not None:
            frame, r, w = new
            self.table.map(page << spec.PAGE_SHIFT, frame << spec.PAGE_SHIFT, read=r, write=w)
        for offset, value in invalidate_writes(page << spec.PAGE_SHIFT):
            await self.link.hv.write32(offset, value)

    async def _iova_prepare(self, case: Case) -> None:
        for page, new in case.iova_patches:
            await self._remap(page, new)
        if case.flush:
            await self.link.hv.write32(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE_ALL)
        if case.iova_patches or case.flush:
            await self.sync()
        self.policies = dict(case.policies)
        self.policy = case.policy or MissPolicy()

    async def _iova_finish(self, case: Case) -> None:
        for page, _ in case.iova_patches:
            await self._remap(page, self.w.iova_map.get(page))
        if case.iova_patches:
            await self.sync()
        self.policies, self.policy = {}, MissPolicy()
        if case.expect.stalls:  # the driver reset the device in the miss
            self.queue, self.avail_idx, self.needs_reset = None, 0, True

    async def kick(self, case: Case, *, first: bool) -> None:
        """The notify; for an ignored-notify case, ``first`` is the notify to be ignored and
        the second call fixes the register state and kicks properly."""
        g = self.link.guest
        if first and case.notify == "bad_value":
            await g.write32(spec.MMIO_QUEUE_NOTIFY, 1)
            return
        if not first:
            if case.notify == "not_ready":
                await g.write32(spec.MMIO_QUEUE_READY, 1)
            elif case.notify == "no_driver_ok":
                await virtio.run_async(virtio.driver_ok(), g)
        await g.write32(spec.MMIO_QUEUE_NOTIFY, 0)

    async def finish(self, case: Case, faulted: bool) -> None:
        """After the case: bus errors off, patched grants restored, fault unlatched."""
        self.link.errors.clear()
        for ref, _ in case.patches:
            await self.write_grant(ref, self.w.grants.get(ref, GrantEntry()))
        if self.w.iova:
            await self._iova_finish(case)
        if faulted:
            await self.link.hv.write32(spec.HV_FAULT_STATUS, 1)
            self.needs_reset = True


class ReferenceStream:
    """A stream of cases on the reference model, checking the invariants of issue 4 on every
    case: every transaction in handle mode lies in a page granted, at that moment, with the
    permission it needs (in IOVA mode: in the physical range of an IOTLB entry with the
    permission); nothing outside pages granted (mapped) writable changed; the outcome is the one
    the category aims at. (Recovery after a fault is the next case's reset and init.)

    In IOVA mode the device's ``on_iotlb_miss`` is the hypervisor: it answers each miss with
    the case's policy (:meth:`StreamDriver.policy_for`) from the driver's page table through
    :class:`sw.iommu.IommuModel` (the pure miss policy the RTL bench's hypervisor uses too);
    a miss it never answers and never times out is ended by the driver's reset (Status = 0).
    ``model.log`` records every miss it saw."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.dev = OracleDevice(GuestMemory(world.mem_bytes, world.initial_memory()),
                                entries=world.entries, queue_num_max=world.queue_num_max,
                                disk_bytes=world.disk_bytes, data_width=world.data_width,
                                iotlb_entries=world.iotlb_entries, features=world.features,
                                on_iotlb_miss=self._on_miss if world.iova else None)
        self.drv = StreamDriver(self.dev, world)
        self.model = IommuModel(self.drv.table) if self.drv.table is not None else None
        self.after_miss: Callable[[], None] | None = None  # called once a miss is answered
        self.view = GrantView(self.dev)
        self.violations: list[str] = []
        self.case: Case | None = None
        self.granted_w: set[int] = set()
        self.extra_hook: Callable[[Transaction], None] | None = None
        self.dev.on_transaction = self._on_transaction
        run_coroutine(self.drv.hv_setup())

    def _on_miss(self, dev: OracleDevice) -> None:
        port = dev.hv
        miss = decode_miss(port.read(spec.HV_IOTLB_MISS), port.read(spec.HV_MISS_IOVA_LO),
                           port.read(spec.HV_MISS_IOVA_HI))
        assert miss is not None and self.model is not None
        policy = self.drv.policy_for(miss)
        rec = self.model.decide(miss, policy)
        if policy.answer is Answer.NEVER and not policy.times_out:
            dev.guest.write(spec.MMIO_STATUS, 0)  # the driver gives up and resets
            return
        for offset, value in rec.writes:
            port.write(offset, value)
        if self.after_miss is not None:
            self.after_miss()

    def _iova_permits(self, t: Transaction) -> bool:
        n = max(t.nbytes, 1)
        return any(e.pa <= t.addr and t.addr + n <= e.pa + (1 << e.size)
                   and e.permits(t.kind == "W") for e in self.dev.iotlb.entries())

    def _on_transaction(self, t: Transaction) -> None:
        if self.dev.mode == spec.MODE_IOVA:
            if not self._iova_permits(t):
                what = self.case.describe() if self.case else "set-up"
                self.violations.append(
                    f"{what}: {t.kind} {t.addr:#x}+{t.nbytes} outside the IOTLB entries mapped "
                    f"for {'write' if t.kind == 'W' else 'read'}")
            elif t.kind == "W":  # mapped writable when written (a remap during the case)
                self.granted_w.add(t.addr >> spec.PAGE_SHIFT)
        if self.dev.handle_mode:
            if not self.view.permits(t.kind, t.addr, t.nbytes):
                what = self.case.describe() if self.case else "set-up"
                self.violations.append(
                    f"{what}: {t.kind} {t.addr:#x}+{t.nbytes} outside the pages granted for "
                    f"{'write' if t.kind == 'W' else 'read'}")
            self.granted_w |= self.view.writable
        if self.extra_hook is not None:
            self.extra_hook(t)

    def run(self, case: Case, at: tuple[int, Callable[[], None]] | None = None) -> Outcome:
        """Run one case, check its invariants (into ``violations``) and return its outcome.

        ``at = (k, action)``: call ``action()`` (register writes that race with the device)
        right after the case's ``k``-th bus transaction, or before the notify if ``k == 0``.
        This is how a race seen on the RTL is replayed: the RTL's transactions issued before
        the racing write took effect are the ``k`` the reference must make before it.
        """
        self.case = case
        dev = self.dev
        run_coroutine(self.drv.prepare(case))
        hook = self.extra_hook
        if at is not None:
            k_at, action = at
            count = [0]

            def race(t: Transaction) -> None:
                count[0] += 1
                if count[0] == k_at:
                    action()
            self.extra_hook = race
        used_before = dev.used_idx
        dev.clear_records()
        acc0 = dev.dma_accesses
        tables0 = dev.table_reads
        self.view.refresh()
        self.granted_w = set(self.view.writable)
        if self.w.iova:
            assert self.drv.table is not None
            self.granted_w = {m.pa >> spec.PAGE_SHIFT for m in self.drv.table if m.write}
        n_log = len(self.model.log) if self.model else 0
        before = dev.mem._mem.copy()  # a cheap snapshot (numpy)
        ignored_ok = True
        if case.expect.ignored_notify:
            run_coroutine(self.drv.kick(case, first=True))
            ignored_ok = not dev.transactions and not dev.faults
        if at is not None and at[0] == 0:
            at[1]()
        try:
            run_coroutine(self.drv.kick(case, first=False))
        finally:
            self.extra_hook = hook
        fault = (dev.faults[0].cause, dev.faults[0].addr) if dev.faults else None
        completions = read_completions(dev.mem, self.w, case, used_before, dev.completed) \
            if dev.completed else []
        out = Outcome(completions, fault, list(dev.transactions), dev.translations,
                      dev.dma_accesses - acc0, ignored_ok, dev.fault_count)
        if case.expect.zeroed is not None:
            lo, hi = case.expect.zeroed
            out.zeroed_ok = not any(dev.disk[lo:hi])
            out.zero_bytes = hi - lo
        out.used_first = used_before
        # a table read starts a walk of at most queue size + 1 entries (the loop check)
        out.table_walk = TABLE_ENTRY_CYCLES * (case.queue.n + 1) * (dev.table_reads - tables0)
        out.interrupt = run_coroutine(self.drv.take_interrupt())
        if self.model is not None:
            out.misses = list(dev.misses)
            out.evictions = len(dev.iotlb.evictions)
            for rec in self.model.log[n_log:]:
                p = rec.policy
                out.miss_wait += MISS_COST + (p.timeout if p.times_out else p.latency)
        self._check_memory(before, case)
        run_coroutine(self.drv.finish(case, fault is not None))
        return out

    def _check_memory(self, before: Any, case: Case) -> None:
        """Nothing outside the pages granted (mapped) writable during the case changed."""
        if not self.w.translated:
            return
        diff = (self.dev.mem._mem != before).nonzero()[0]
        if not len(diff):
            return
        bad = set((diff >> spec.PAGE_SHIFT).tolist()) - self.granted_w
        if bad:
            self.violations.append(f"{case.describe()}: frames {sorted(bad)} changed without "
                                   "a writable grant")
