"""The oracle: the reference model says what must happen in a case, and how fast.

:class:`OracleDevice` is the reference device plus an access count; :class:`Outcome` is what it
did in one case (completions, or the fault that stopped it, and the counts from which
:func:`cycle_bound` derives the "no hang" bound for the RTL); :func:`check_expectation` says
whether that is the outcome the case's category aims at; :class:`GrantView` is the isolation
invariant on the reference's own transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models import spec, virtio
from models.bus import Transaction
from models.device import ReferenceDevice
from models.memory import BusErrorPages, GuestMemory
from verif.world import U64, Case, World


class OracleDevice(ReferenceDevice):
    """:class:`ReferenceDevice` plus what the isolation tests need from the oracle.

    It counts DMA accesses (``dma_accesses``), for :func:`cycle_bound`, and indirect table
    reads (``table_reads``, through the engine's ``_read_table``), and its ``errors``
    (the failing bus pages) make it a :class:`sw.transport.FaultLink`. The "Grant revocation"
    rule of docs/architecture.md (a new lookup before the next burst after a table write, even
    inside a page) is the reference's own (``table_gen``).
    """

    def __init__(self, mem: GuestMemory, **kw: Any) -> None:
        self.dma_accesses = 0
        self.table_reads = 0  # indirect tables read (each starts a walk with no bus access)
        self.errors = BusErrorPages()
        super().__init__(mem, bus_error=self.errors, **kw)

    def dma_read(self, v: int, n: int, sink: Callable[[int, bytes], None] | None = None) -> bytes:
        self.dma_accesses += 1
        return super().dma_read(v, n, sink)

    def _read_table(self, addr: int, length: int) -> bytes:
        self.table_reads += 1
        return super()._read_table(addr, length)

    def dma_write(self, v: int, data: bytes) -> None:
        self.dma_accesses += 1
        super().dma_write(v, data)


TABLE_ENTRY_CYCLES = 4  # at most, per indirect table entry walked out of the table buffer
# (docs/timing.md: 3 cycles an entry, 4 at data width 32; no bus access)

MISS_COST = 500  # cycles the bench's hypervisor may take to read and answer one miss, beyond
# its chosen latency or timeout (3 register reads, 6 writes on AXI4-Lite, a command)


def cycle_bound(transactions: int, beats: int, lookups: int, accesses: int, *,
                pause: float = 0.0) -> int:
    """Cycles within which the RTL must finish what the reference did with these counts.

    Per DMA access a few cycles of engine and DMA control, per lookup the translation's two
    cycles, per transaction an address handshake, per beat one cycle (all stretched by the
    memory model's random pauses of probability ``pause`` on every channel), then a factor 2 of
    margin. A device that spins on a bad chain, or never advances after an error, blows it.
    """
    stretch = 1.0 / (1.0 - pause) if pause < 1 else 100.0
    base = 64 + 12 * accesses + 4 * lookups + (12 * transactions + 2 * beats) * stretch
    return int(2 * base)


# =================================================================================================
# Isolation on the reference's transactions
# =================================================================================================


class GrantView:
    """Which physical frames the table grants to the configured domain, for read and for write,
    recomputed when the table, the mode or the domain changed (``ReferenceDevice.table_gen``)."""

    def __init__(self, dev: OracleDevice) -> None:
        self.dev = dev
        self._gen = -1
        self.readable: set[int] = set()
        self.writable: set[int] = set()

    def refresh(self) -> None:
        if self._gen == self.dev.table_gen:
            return
        self._gen = self.dev.table_gen
        self.readable, self.writable = set(), set()
        for e in self.dev.grants:
            if e.permits_access and e.domid == self.dev.domid & 0xFFFF:
                self.readable.add(e.frame)
                if not e.readonly:
                    self.writable.add(e.frame)

    def permits(self, kind: str, addr: int, nbytes: int) -> bool:
        self.refresh()
        page = addr >> spec.PAGE_SHIFT
        if (addr + max(nbytes, 1) - 1) >> spec.PAGE_SHIFT != page:
            return False
        return page in (self.writable if kind == "W" else self.readable)



@dataclass
class Outcome:
    """What the device did in one case: used elements published ``(id, len, status byte)``,
    the fault it raised (cause, address) if any, and the counts the bound is computed from."""

    completions: list[tuple[int, int, int]]
    fault: tuple[int, int] | None
    transactions: list[Transaction]
    lookups: int
    accesses: int
    ignored_ok: bool = True  # an ignored notify made no bus access
    fault_count: int = 0  # HV_FAULT_COUNT after the case
    misses: list[tuple[int, bool]] = field(default_factory=list)  # IOVA: (iova, write) raised
    miss_wait: int = 0  # IOVA: cycles the bench's hypervisor may take over the misses
    evictions: int = 0  # IOVA: IOTLB entries inserts replaced (round robin)
    interrupt: int = 0  # InterruptStatus after the case (then acknowledged)
    zeroed_ok: bool | None = None  # the disk range ``Expect.zeroed`` reads as zeros
    zero_bytes: int = 0  # bytes the case zeroes on the disk (``Expect.zeroed``)
    table_walk: int = 0  # cycles the walks of the indirect tables read may take (no bus access)
    used_first: int = 0  # the used index the case's first used element has

    def beats(self, data_width: int) -> int:
        return sum(t.beats(data_width) for t in self.transactions)

    def bound(self, data_width: int, pause: float = 0.0) -> int:
        # zeroing the disk (DISCARD, WRITE_ZEROES) makes no bus access: at least 4 bytes a
        # cycle, twice over
        return (cycle_bound(len(self.transactions), self.beats(data_width), self.lookups,
                            self.accesses, pause=pause) + self.miss_wait + self.zero_bytes // 2
                + 2 * self.table_walk)

    def summary(self) -> str:
        done = f"{len(self.completions)} completion(s), statuses " \
               f"{[c[2] for c in self.completions]}"
        if self.fault:
            return (f"fault cause {self.fault[0]} ({spec.FAULT_NAMES.get(self.fault[0])}) at "
                    f"{self.fault[1]:#x} after {done}")
        return done


def status_addr(case: Case, head: int) -> int | None:
    """Device address of the status byte of the chain at ``head``: the last byte of the last
    non-empty device-writable descriptor (docs "Ring engine", step 6), following an indirect
    descriptor into the table the case laid out at its address (whose own WRITE flag does not
    count)."""
    by_idx = {d[0]: d for d in case.descs}
    tables = {a: {d[0]: d for d in entries} for a, entries in case.tables}
    i, last = head, None
    steps = len(by_idx) + sum(len(t) for t in tables.values()) + 2
    for _ in range(steps):
        if i not in by_idx:
            break
        _, a, ln, fl, nx = by_idx[i]
        if fl & spec.VIRTQ_DESC_F_INDIRECT:
            if a not in tables:
                break
            by_idx, i = tables.pop(a), 0  # (a table inside a table is not followed)
            continue
        if fl & spec.VIRTQ_DESC_F_WRITE and ln:
            last = (a + ln - 1) & U64
        if not fl & spec.VIRTQ_DESC_F_NEXT:
            break
        i = nx
    return last


def read_completions(mem: GuestMemory, w: World, case: Case, first: int, count: int
                     ) -> list[tuple[int, int, int]]:
    """Used elements ``first .. first + count - 1`` of the case's queue, each with the status
    byte its chain ended with (-1 where that is not in memory)."""
    q = case.queue
    assert w.phys(q.used) is not None
    ring = virtio.SplitRing(q.n)
    out = []
    for k in range(count):  # (each through its own page: a ring may span two)
        p = w.phys(q.used + ring.used_ring(first + k))
        assert p is not None
        elem = mem.read(p, virtio.USED_ELEM.size)
        uid, ulen = virtio.USED_ELEM.unpack(elem)
        a = status_addr(case, uid)
        p = w.phys(a) if a is not None else None
        st = mem.read(p, 1)[0] if p is not None and mem.contains(p, 1) else -1
        out.append((uid, ulen, st))
    return out


def check_expectation(case: Case, out: Outcome) -> str | None:
    """None if the reference's outcome is the one the case's category aims at, else why not."""
    e = case.expect
    if e.ignored_notify and not out.ignored_ok:
        return "the notify that must be ignored made the device act"
    if e.stalls:
        if out.fault is not None or len(out.completions) != len(case.heads) - 1:
            return f"expected the last chain to stall and be reset, got {out.summary()}"
        return None
    if e.cause:
        if out.fault is None or out.fault[0] != e.cause:
            return f"expected fault cause {e.cause}, got {out.summary()}"
        if e.fault_addr is not None and out.fault[1] != e.fault_addr:
            return f"expected the fault at {e.fault_addr:#x}, got {out.summary()}"
        return None
    if out.fault is not None:
        return f"expected completions, got {out.summary()}"
    if len(out.completions) != len(case.heads):
        return f"expected {len(case.heads)} completion(s), got {out.summary()}"
    got = [c[2] for c in out.completions]
    if e.statuses is not None and None not in e.statuses and len(e.statuses) == len(got) \
            and got != list(e.statuses):
        return f"expected statuses {list(e.statuses)}, got {got}"
    if e.interrupt is not None and bool(out.interrupt & spec.INT_USED_BUFFER) != e.interrupt:
        return (f"expected InterruptStatus bit 0 {int(e.interrupt)}, got {out.interrupt:#x} "
                f"after {out.summary()}")
    if e.zeroed is not None and not out.zeroed_ok:
        return f"expected disk bytes [{e.zeroed[0]:#x}, {e.zeroed[1]:#x}) to read as zeros"
    return None

