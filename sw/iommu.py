"""The guest's IOMMU as IOVA mode sees it: page table, IOVA allocator, and the miss server.

* :class:`IommuPageTable`: the IOMMU domain's translation, IOVA page -> physical page with R/W
  permission, like the second-level tables of Linux ``drivers/iommu/intel/iommu.c`` (4 KiB
  pages, and larger aligned pages, 2 MiB and 1 GiB there, any power of two from 2**12 to 2**30
  here, as the IOTLB takes). The guest writes it (``sw.dma.IovaDma``); the hypervisor reads it
  to answer the device's IOTLB misses, as QEMU's vIOMMU walks the guest's tables.
* :class:`IovaAllocator`: Linux ``drivers/iommu/iova.c`` ``alloc_iova`` as dma-iommu calls it
  (``alloc_iova_fast(iovad, iova_len, dma_limit >> shift, true)``): ranges of whole pages,
  sizes below 32 pages rounded up to a power of two, size aligned, the highest free range
  below the limit. Deterministic: the result depends only on the sequence of calls.
* :func:`answer_miss`: the hypervisor's answering policy as a pure function, a pending miss ->
  the register writes that answer it, so the reference model's synchronous hook and a cocotb
  coroutine watching ``hv_irq`` answer identically. :class:`IommuModel` applies it (after a
  latency, with a timeout for a miss it never answers) and logs every miss.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from models import spec
from sw.hypervisor import (
    Hypervisor,
    IotlbMiss,
    RegWrite,
    decode_miss,
    insert_writes,
    resolve_writes,
)

__all__ = ["Answer", "IommuError", "IommuMapping", "IommuModel", "IommuPageTable",
           "IovaAllocator", "MissPolicy", "MissRecord", "OutOfIova", "answer_miss"]


class SyncPort(Protocol):
    """A register port with synchronous access (``models.mmio.RegisterPortModel``)."""

    def read(self, offset: int) -> int: ...

    def write(self, offset: int, value: int) -> None: ...


class SyncPortOwner(Protocol):
    """What the reference model passes its ``on_iotlb_miss`` hook: the device, ``hv`` its
    privileged port."""

    @property
    def hv(self) -> SyncPort: ...


class IommuError(ValueError):
    """A page table operation that Linux's ``iommu_map``/``iommu_unmap`` would refuse."""


class OutOfIova(MemoryError):
    """No free IOVA range large enough below the allocator's limit."""


@dataclass(frozen=True)
class IommuMapping:
    """``[iova, iova + 2**size_log2) -> [pa, ...)`` with the device's permissions."""

    iova: int
    pa: int
    size_log2: int = spec.PAGE_SHIFT
    read: bool = True
    write: bool = True

    @property
    def size(self) -> int:
        return 1 << self.size_log2

    @property
    def end(self) -> int:
        return self.iova + self.size

    def covers(self, iova: int) -> bool:
        return self.iova <= iova < self.end

    def overlaps(self, iova: int, length: int) -> bool:
        return iova < self.end and self.iova < iova + length

    def translate(self, iova: int) -> int:
        return self.pa + (iova - self.iova)

    def __str__(self) -> str:
        rw = ("R" if self.read else "-") + ("W" if self.write else "-")
        return f"IOVA [{self.iova:#x}, {self.end:#x}) -> {self.pa:#x} {rw}"


class IommuPageTable:
    """An IOMMU domain's page table: non-overlapping aligned mappings of 2**12 to 2**30 bytes.

    ``map`` refuses an overlap (``iommu_map`` returns -EEXIST on a present PTE); ``unmap``
    removes every mapping that overlaps a range, whole (a large page is never split, as
    ``iommu_unmap`` of part of a superpage removes all of it), and returns what it removed so
    that the caller invalidates those ranges.
    """

    def __init__(self) -> None:
        self._by_size: dict[int, dict[int, IommuMapping]] = {}  # size_log2 -> base -> mapping

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_size.values())

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted((m for d in self._by_size.values() for m in d.values()),
                           key=lambda m: m.iova))

    def lookup(self, iova: int) -> IommuMapping | None:
        """The mapping covering ``iova``, if any (at most one: mappings never overlap)."""
        for size_log2, d in self._by_size.items():
            m = d.get(iova & ~((1 << size_log2) - 1))
            if m is not None:
                return m
        return None

    def overlapping(self, iova: int, length: int) -> list[IommuMapping]:
        """The mappings overlapping ``[iova, iova + length)``, by IOVA."""
        out = []
        for size_log2, d in self._by_size.items():
            first, last = iova >> size_log2, (iova + max(length, 1) - 1) >> size_log2
            if last - first < len(d):  # probe the aligned bases the range touches
                hits = (d.get(b << size_log2) for b in range(first, last + 1))
                out += [m for m in hits if m is not None]
            else:
                out += [m for m in d.values() if m.overlaps(iova, length)]
        return sorted(out, key=lambda m: m.iova)

    def map(self, iova: int, pa: int, size_log2: int = spec.PAGE_SHIFT, *, read: bool = True,
            write: bool = True) -> IommuMapping:
        if not spec.IOTLB_MIN_SIZE <= size_log2 <= spec.IOTLB_MAX_SIZE:
            raise IommuError(f"page size 2**{size_log2} is not one of 2**{spec.IOTLB_MIN_SIZE} "
                             f"to 2**{spec.IOTLB_MAX_SIZE}")
        mask = (1 << size_log2) - 1
        if iova & mask or pa & mask or not 0 <= iova <= spec.ADDR_MASK - mask or pa < 0:
            raise IommuError(f"mapping of IOVA {iova:#x} -> {pa:#x} is not aligned to its "
                             f"page size 2**{size_log2}")
        if not (read or write):
            raise IommuError(f"mapping of IOVA {iova:#x} grants neither read nor write")
        clash = self.overlapping(iova, 1 << size_log2)
        if clash:
            raise IommuError(f"IOVA [{iova:#x}, {iova + (1 << size_log2):#x}) is already "
                             f"mapped: {clash[0]}")
        m = IommuMapping(iova, pa, size_log2, read, write)
        self._by_size.setdefault(size_log2, {})[iova] = m
        return m

    def unmap(self, iova: int, length: int = spec.PAGE_SIZE) -> list[IommuMapping]:
        gone = self.overlapping(iova, length)
        for m in gone:
            del self._by_size[m.size_log2][m.iova]
        return gone


def _roundup_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


class IovaAllocator:
    """Page-granular IOVA ranges in ``[base_pfn, limit_pfn]``, handed out from the top.

    Linux ``alloc_iova(iovad, size, limit_pfn, size_aligned=true)``: the range is aligned to
    ``size`` rounded up to a power of two, and it is the highest such range that fits below
    ``limit_pfn`` (inclusive) above every allocated range it would collide with. dma-iommu
    first rounds a size below ``2**(IOVA_RANGE_CACHE_MAX_SIZE - 1)`` = 32 pages up to a power of
    two (``iommu_dma_alloc_iova``), which :meth:`alloc` does too. ``base_pfn`` defaults to 1:
    IOVA 0 is never handed out (``init_iova_domain(..., start_pfn=1)`` in dma-iommu's
    ``iova_reserve``/``IOVA_START_PFN``). The rcache in front of the tree is not modelled: it
    reuses freed ranges in LIFO order, which only changes which free range is chosen.
    """

    RCACHE_MAX_ORDER = 6  # IOVA_RANGE_CACHE_MAX_SIZE

    #: dma-iommu tries below 4 GiB first (a 32-bit DMA mask): the default limit
    LIMIT_4G = (1 << 32 >> spec.PAGE_SHIFT) - 1

    def __init__(self, limit_pfn: int = LIMIT_4G, base_pfn: int = 1) -> None:
        if not 0 <= base_pfn <= limit_pfn:
            raise ValueError(f"base_pfn {base_pfn:#x} must be in [0, limit_pfn {limit_pfn:#x}]")
        self.base_pfn, self.limit_pfn = base_pfn, limit_pfn
        self._starts: list[int] = []  # allocated ranges, sorted by start pfn
        self._size: dict[int, int] = {}  # start pfn -> pages

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def allocated_pages(self) -> int:
        return sum(self._size.values())

    def size_of(self, pfn: int) -> int | None:
        """Pages of the range starting at ``pfn``, or None if no range starts there."""
        return self._size.get(pfn)

    def alloc(self, npages: int) -> int:
        """The first pfn of a new range of ``npages`` (after dma-iommu's rounding)."""
        if npages < 1:
            raise ValueError(f"npages must be >= 1, not {npages!r}")
        if npages < 1 << (self.RCACHE_MAX_ORDER - 1):
            npages = _roundup_pow2(npages)
        align = _roundup_pow2(npages)
        # Walk the allocated ranges from the top; the gap above each is a candidate.
        hi = self.limit_pfn + 1  # exclusive end of the current gap
        for start in reversed(self._starts):
            pfn = self._fit(hi, start + self._size[start], npages, align)
            if pfn is not None:
                return self._insert(pfn, npages)
            hi = start
        pfn = self._fit(hi, self.base_pfn, npages, align)
        if pfn is None:
            raise OutOfIova(f"no {npages} free IOVA page(s) aligned to {align} in "
                            f"[{self.base_pfn:#x}, {self.limit_pfn:#x}] ({len(self)} range(s), "
                            f"{self.allocated_pages} page(s) allocated)")
        return self._insert(pfn, npages)

    @staticmethod
    def _fit(hi: int, lo: int, npages: int, align: int) -> int | None:
        """The highest ``align``-aligned start of ``npages`` inside ``[lo, hi)``, if any."""
        pfn = (hi - npages) // align * align
        return pfn if pfn >= lo else None

    def _insert(self, pfn: int, npages: int) -> int:
        bisect.insort(self._starts, pfn)
        self._size[pfn] = npages
        return pfn

    def free(self, pfn: int) -> int:
        """Give back the range starting at ``pfn``; returns its size in pages."""
        n = self._size.pop(pfn, None)
        if n is None:
            raise ValueError(f"IOVA pfn {pfn:#x} does not start an allocated range")
        self._starts.remove(pfn)
        return n


# --- answering misses ------------------------------------------------------------------------
class Answer(enum.Enum):
    """What the hypervisor does with a miss."""

    MAP = "map"  #: insert the page table's mapping covering the IOVA, resolve 1 (fail: unmapped)
    FAIL = "fail"  #: resolve 2 whatever the table says (the access faults, cause 10)
    NEVER = "never"  #: leave it pending (a timeout, if any, then fails it)
    RETRY = "retry"  #: resolve 1 without inserting anything (the lookup misses again)


@dataclass(frozen=True)
class MissPolicy:
    """How to answer a miss: ``answer``, after ``latency`` (cycles or the caller's unit);
    ``perms`` = (read, write) replaces the page table's permission in the inserted entry (a
    hostile hypervisor); ``size_log2`` inserts only that much of a larger mapping (the aligned
    piece holding the IOVA); ``timeout``: a miss still unanswered after that long is failed
    (the answer comes too late, or never)."""

    answer: Answer = Answer.MAP
    latency: int = 0
    perms: tuple[bool, bool] | None = None
    size_log2: int | None = None
    timeout: int | None = None

    @property
    def times_out(self) -> bool:
        """The timeout fires before the answer: NEVER, or a latency beyond the timeout."""
        return self.timeout is not None and (self.answer is Answer.NEVER
                                             or self.latency > self.timeout)


def answer_miss(table: IommuPageTable, miss: IotlbMiss,
                policy: MissPolicy = MissPolicy()) -> list[RegWrite]:
    """The register writes answering ``miss`` under ``policy`` (pure; timing is the caller's).

    MAP: the mapping covering ``miss.iova`` is inserted whole (its page size, its permission,
    or ``policy.perms``) and the miss resolved with 1; an unmapped IOVA is failed (2). The
    permission is the table's, not the one the access asked for: an access the mapping does
    not permit then faults at the device (cause 5 or 11), as a real IOMMU reports it.
    A policy that times out gives the fail.
    """
    if policy.times_out:
        return resolve_writes(retry=False)
    if policy.answer is Answer.NEVER:
        return []
    if policy.answer is Answer.FAIL:
        return resolve_writes(retry=False)
    if policy.answer is Answer.RETRY:
        return resolve_writes(retry=True)
    m = table.lookup(miss.iova)
    if m is None:
        return resolve_writes(retry=False)
    read, write = policy.perms if policy.perms is not None else (m.read, m.write)
    size = m.size_log2 if policy.size_log2 is None else min(m.size_log2, policy.size_log2)
    base = miss.iova & ~((1 << size) - 1)
    return insert_writes(base, m.translate(base), size, read, write) + resolve_writes(True)


@dataclass
class MissRecord:
    """One miss the model saw and what it did: ``writes`` (empty: left pending),
    ``mapping`` (the table's, or None), ``timed_out``."""

    miss: IotlbMiss
    policy: MissPolicy
    mapping: IommuMapping | None
    writes: list[RegWrite]
    timed_out: bool = False

    @property
    def resolved(self) -> int | None:
        """The MISS_RESOLVE value written (1, 2) or None."""
        return next((v for o, v in self.writes if o == spec.HV_MISS_RESOLVE), None)


@dataclass
class IommuModel:
    """The hypervisor's IOMMU side: answers the device's IOTLB misses from ``table``.

    ``policy`` is a :class:`MissPolicy` or a function of the miss returning one (a different
    answer per IOVA, per count, ...). ``delay(n)``, if given, is awaited for a latency or a
    timeout of ``n`` (cocotb: ``ClockCycles(dut.clk, n)``); without it latencies are only
    recorded. ``log`` holds every miss in order.

    Two ways to run it:

    * synchronous, inside the reference model: :meth:`hook` gives the device's
      ``on_iotlb_miss(device)``, which reads the miss and writes the answer at once through
      ``device.hv`` (untimed: nothing waits; a policy that times out, NEVER with a timeout
      or a latency beyond it, fails the miss at once);
      :meth:`answer_now` answers a miss given as such through any ``write(offset, value)``;
    * asynchronous: :meth:`serve_one` reads the pending miss through a :class:`Hypervisor` and
      answers it; :meth:`serve` loops on ``wait()`` (e.g. ``RisingEdge(dut.hv_irq)``).
    """

    table: IommuPageTable
    policy: MissPolicy | Callable[[IotlbMiss], MissPolicy] = field(default_factory=MissPolicy)
    delay: Callable[[int], Awaitable[object]] | None = None
    log: list[MissRecord] = field(default_factory=list)

    def policy_for(self, miss: IotlbMiss) -> MissPolicy:
        return self.policy(miss) if callable(self.policy) else self.policy

    def decide(self, miss: IotlbMiss, policy: MissPolicy | None = None) -> MissRecord:
        """Decide and log (no register access)."""
        policy = self.policy_for(miss) if policy is None else policy
        rec = MissRecord(miss, policy, self.table.lookup(miss.iova),
                         answer_miss(self.table, miss, policy), policy.times_out)
        self.log.append(rec)
        return rec

    @property
    def misses(self) -> list[IotlbMiss]:
        return [r.miss for r in self.log]

    def answer_now(self, miss: IotlbMiss, write: Callable[[int, int], object]) -> MissRecord:
        """Decide and write the answer at once through ``write(offset, value)`` (untimed)."""
        rec = self.decide(IotlbMiss(*miss))
        for offset, value in rec.writes:
            write(offset, value)
        return rec

    def hook(self) -> Callable[[SyncPortOwner], None]:
        """The reference model's ``on_iotlb_miss(device)``: read the pending miss through
        ``device.hv`` (synchronous ``read``/``write``) and answer it at once: nothing waits in
        the untimed model; a policy that times out fails the miss, NEVER without a timeout
        leaves it pending (which the model refuses: ``RuntimeError``)."""
        def on_iotlb_miss(device: SyncPortOwner) -> None:
            port = device.hv
            miss = decode_miss(port.read(spec.HV_IOTLB_MISS), port.read(spec.HV_MISS_IOVA_LO),
                               port.read(spec.HV_MISS_IOVA_HI))
            if miss is not None:
                self.answer_now(miss, port.write)
        return on_iotlb_miss

    async def answer(self, hv: Hypervisor, miss: IotlbMiss) -> MissRecord:
        """Wait the latency (or the timeout), then look the table up and write the answer as
        one locked sequence (:meth:`Hypervisor.apply_built`)."""
        policy = self.policy_for(miss)
        if policy.answer is Answer.NEVER and not policy.times_out:
            return self.decide(miss, policy)  # left pending: nothing to wait for
        wait = policy.timeout if policy.times_out else policy.latency
        if self.delay is not None and wait:
            await self.delay(wait)
        recs: list[MissRecord] = []

        def build() -> list[RegWrite]:
            recs.append(self.decide(miss, policy))
            return recs[0].writes

        await hv.apply_built(build)
        return recs[0]

    async def serve_one(self, hv: Hypervisor) -> MissRecord | None:
        """Answer the pending miss, if there is one."""
        miss = await hv.pending_miss()
        return None if miss is None else await self.answer(hv, miss)

    async def serve(self, hv: Hypervisor, wait: Callable[[], Awaitable[object]],
                    count: int | None = None) -> None:
        """Until ``count`` misses are answered (or forever): ``await wait()``, then answer what
        is pending. A miss left pending (NEVER without a timeout) ends the loop: nothing else
        happens until a driver reset cancels it."""
        served = 0
        while count is None or served < count:
            await wait()
            rec = await self.serve_one(hv)
            if rec is not None:
                served += 1
                if not rec.writes:
                    return
