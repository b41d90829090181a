"""Adversarial cases on the reference model (issue 4): more than 20,000 hostile and good cases
from :mod:`verif.cases`, seeded streams and hypothesis-drawn ones, with the isolation
invariants checked on every case:

* every bus transaction in handle mode lies in one page granted, at that moment, to the
  configured domain with the permission its direction needs;
* every case ends, in a completion or a fault, within a bound on its transactions computed
  from the case alone (no busy loop on a bad chain, no avail index left behind);
* each category gets the outcome it aims at (the fault cause, or completions with the
  statuses virtio-blk defines), so a generator or a reference that stopped being hostile
  shows;
* nothing outside the pages granted writable changed;
* after every fault, a driver reset and good requests that succeed.

Plus grant revocations and driver resets racing with the engine at every transaction, and the
contract's stale-translation rule ("Grant revocation"), which the plain reference model lacks.
"""

from __future__ import annotations

import random
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import spec
from models.device import ReferenceDevice
from models.grant import GrantEntry
from models.memory import GuestMemory
from verif.cases import (
    CATEGORIES,
    case_refs,
    categories_for,
    gen_big_request,
    gen_table_write,
    generate,
)
from verif.choosers import DrawChooser, RandomChooser
from verif.harness import HandDriver
from verif.oracle import OracleDevice, check_expectation, cycle_bound
from verif.stream import ReferenceStream
from verif.world import PAGE, Case, World

FIGURES: Counter = Counter()  # summed over the module, printed by test_figures


def structural_bound(case: Case, world: World) -> int:
    """Transactions a case may take at most, from the case alone: the poll, then per chain the
    head, one descriptor read per queue slot (a longer chain is a loop), and per descriptor its
    bytes in bursts (at least one per page), plus the used element and index, and a poll per
    round. A device that spins or re-reads without end exceeds it."""
    b = spec.burst_bytes(world.data_width)
    per_desc = sum(-(-ln // b) + ln // PAGE + 2 for _, _, ln, _, _ in case.descs if ln)
    n = max(case.queue.n, 1) if case.queue.n <= world.queue_num_max else 1
    chains = max(len(case.heads), 1)
    return 4 + chains * (4 + min(n, 0xFFFF) + 1 + per_desc + 2) + chains


def run_stream(world: World, ch, count: int, *, label: str) -> Counter:
    """``count`` generated cases on the reference with every check; returns tallies."""
    rs = ReferenceStream(world)
    tally: Counter = Counter()
    for i in range(count):
        case = generate(ch, world, i)
        out = rs.run(case)
        tally["cases"] += 1
        tally["generated"] += 1
        tally[case.category] += 1
        tally["hostile"] += case.category != "good"
        why = check_expectation(case, out)
        assert why is None, f"{label} {case.describe()}: {why}"
        assert not rs.violations, f"{label}: {rs.violations[0]}"
        limit = structural_bound(case, world)
        assert len(out.transactions) <= limit, \
            f"{label} {case.describe()}: {len(out.transactions)} transactions, bound {limit}"
        assert out.bound(world.data_width) >= cycle_bound(0, 0, 0, 0)
        if out.fault is not None:
            tally["faults"] += 1
            # recovery: reset (done by the next case's prepare) and good requests succeed
            probe = generate(ch, world, i, "good")
            pout = rs.run(probe)
            tally["cases"] += 1
            tally["recoveries"] += 1
            assert pout.fault is None and len(pout.completions) == len(probe.heads), \
                f"{label} {case.describe()}: no recovery after the fault: {pout.summary()}"
            assert check_expectation(probe, pout) is None
            assert not rs.violations, f"{label}: {rs.violations[0]}"
    return tally


STREAMS = [
    # (id, world keyword arguments, seed, cases)
    ("handle-w64-a", {}, 101, 4000),
    ("handle-w64-b", {}, 102, 4000),
    ("handle-w32", {"data_width": 32}, 103, 3000),
    ("handle-w128", {"data_width": 128}, 104, 3000),
    ("handle-e12-q8", {"entries": 64, "queue_num_max": 64}, 105, 2000),
    ("gpa-w64", {"handle_mode": False}, 106, 3000),
    ("gpa-w32", {"handle_mode": False, "data_width": 32}, 107, 1500),
]


@pytest.mark.parametrize(("kw", "seed", "count"), [s[1:] for s in STREAMS],
                         ids=[s[0] for s in STREAMS])
def test_seeded_stream(kw, seed, count):
    world = World(seed=seed, domid=seed, **kw)
    tally = run_stream(world, RandomChooser(random.Random(seed)), count, label=f"seed {seed}")
    FIGURES.update(tally)
    # every category of the mode was exercised
    missing = [c for c in categories_for(world.handle_mode) if not tally[c]]
    assert not missing, f"categories never generated: {missing}"


HYPOTHESIS_STREAMS = 150
HYPOTHESIS_CASES = 8
CATEGORY_EXAMPLES = 200


@settings(max_examples=HYPOTHESIS_STREAMS, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), handle_mode=st.booleans(), width=st.sampled_from([32, 64, 128]),
       seed=st.integers(0, 2**16))
def test_hypothesis_stream(data, handle_mode, width, seed):
    """Short streams drawn by hypothesis (shrinkable: a failure reduces to a minimal case)."""
    world = World(seed=seed, handle_mode=handle_mode, data_width=width, domid=seed % 60000 + 1)
    tally = run_stream(world, DrawChooser(data.draw), HYPOTHESIS_CASES, label="hypothesis")
    FIGURES.update(tally)


@settings(max_examples=CATEGORY_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), category=st.sampled_from(sorted(CATEGORIES)))
def test_each_category_alone(data, category):
    """Every category, drawn directly, against a fresh device."""
    world = World(seed=7, handle_mode=True)
    rs = ReferenceStream(world)
    case = generate(DrawChooser(data.draw), world, 0, category)
    out = rs.run(case)
    assert check_expectation(case, out) is None, check_expectation(case, out)
    assert not rs.violations, rs.violations[0]
    FIGURES["cases"] += 1
    FIGURES["generated"] += 1


# --- races on the reference: revocation and reset at every transaction ------------------------


def _race_case(seed: int, width: int):
    world = World(seed=seed, data_width=width, domid=3)
    ch = RandomChooser(random.Random(seed))
    return world, ch


@pytest.mark.parametrize("width", [32, 64, 128])
def test_revocation_at_every_transaction(width):
    """A grant the request uses is revoked, made read-only or remapped right after its k-th
    transaction, for every k: isolation holds at each transaction, the old frame is never used
    afterwards, and the outcome is a completion or the fault the write causes."""
    world, ch = _race_case(200 + width, width)
    rs = ReferenceStream(world)
    races = 0
    for i in range(60):
        case = gen_big_request(ch, world, i)
        tw = gen_table_write(ch, world, case)
        # a dry run tells how many transactions the request makes
        n = len(rs.run(case).transactions)
        for k in sorted({0, 1, n // 3, n // 2, n - 2, n - 1, ch.int(0, n)}):
            old = world.grants[tw.ref]
            after: list = []
            rs.extra_hook = lambda t, a=after: a.append(t) if a and a[0] == "go" else None

            def act(tw=tw, after=after):
                rs.dev.hv.write(tw.offset, tw.value)
                after.append("go")
            out = rs.run(case, at=(k, act))
            rs.extra_hook = None
            races += 1
            assert not rs.violations, rs.violations[0]
            new = tw.apply(old)
            for t in after[1:]:
                if t.addr >> spec.PAGE_SHIFT == old.frame and (
                        not new.permits_access or new.frame != old.frame
                        or (t.kind == "W" and new.readonly)):
                    raise AssertionError(f"{case.describe()}: {tw.what} of ref {tw.ref} after "
                                         f"transaction {k}: {t} used the old entry")
            if out.fault is not None:
                assert out.fault[0] in (spec.FAULT_NOT_PERMITTED, spec.FAULT_READONLY), \
                    f"{case.describe()}: {tw.what}: {out.summary()}"
            # restore and recover
            rs.dev.hv.write(tw.offset, old.pack()[tw.word])
            if out.fault is not None:
                pout = rs.run(generate(ch, world, i, "good"))
                assert pout.fault is None, pout.summary()
    FIGURES["cases"] += races
    FIGURES["revocation races"] += races


@pytest.mark.parametrize("width", [32, 64])
def test_reset_at_every_transaction(width):
    """A driver reset right after the k-th transaction of a request: no transaction after it,
    the device comes back clean (Status 0, indices 0), and good requests then succeed."""
    world, ch = _race_case(300 + width, width)
    rs = ReferenceStream(world)
    races = 0
    for i in range(40):
        case = gen_big_request(ch, world, i)
        n = len(rs.run(case).transactions)
        for k in sorted({0, 1, n // 2, n - 1, ch.int(0, n)}):
            seen: list = []
            rs.extra_hook = seen.append
            out = rs.run(case, at=(k, lambda: rs.dev.guest.write(spec.MMIO_STATUS, 0)))
            rs.extra_hook = None
            races += 1
            assert len(out.transactions) == k or (k == 0 and not out.transactions), \
                f"{case.describe()}: reset after transaction {k}, {len(out.transactions)} made"
            assert rs.dev.guest.read(spec.MMIO_STATUS) == 0
            assert (rs.dev.last_avail_idx, rs.dev.used_idx, rs.dev.queue_ready) == (0, 0, 0)
            assert not rs.violations, rs.violations[0]
            rs.drv.queue = None
            rs.drv.needs_reset = True
            pout = rs.run(generate(ch, world, i, "good"))
            assert pout.fault is None and len(pout.completions) >= 1, pout.summary()
    FIGURES["cases"] += races
    FIGURES["reset races"] += races


# --- the contract's stale-translation rule ------------------------------------------------------


def _revoke_mid_page(device_cls):
    """T_IN of one whole page at data width 32 (four 1 KiB bursts in the page); the data grant
    is revoked right after the first data burst. The contract (docs/architecture.md, "Grant
    revocation"): the next burst, even inside the same page, is preceded by a new lookup, which
    faults (cause 3) at the virtual address where the access resumed."""
    dev = device_cls(GuestMemory(1 << 20), data_width=32, entries=64)
    drv = HandDriver(dev, handle_mode=True, domid=5)
    drv.setup(8)
    req = drv.request(spec.VIRTIO_BLK_T_IN, 0, read_len=PAGE)
    data_ref = req.data.refs[0]
    data_frame = req.data.frames[0]
    state = {"n": 0}

    def hook(t):
        if t.kind == "W" and t.addr >> spec.PAGE_SHIFT == data_frame:
            state["n"] += 1
            if state["n"] == 1:
                dev.hv.write(spec.HV_GRANT_BASE + 8 * data_ref, 0)  # revoke
    dev.on_transaction = hook
    drv.notify()
    used_after = [t for t in dev.transactions if t.addr >> spec.PAGE_SHIFT == data_frame]
    return dev, used_after, req


def test_oracle_retranslates_after_a_table_write():
    dev, used_after, req = _revoke_mid_page(OracleDevice)
    assert len(used_after) == 1
    assert (dev.fault_cause, dev.fault_addr) == (spec.FAULT_NOT_PERMITTED, req.data.dma + 1024)


def test_reference_retranslates_after_a_table_write():
    """docs/architecture.md "Grant revocation": a new lookup before the next burst, even inside
    a page."""
    _, used_after, _ = _revoke_mid_page(ReferenceDevice)
    assert len(used_after) == 1, f"{len(used_after)} bursts used the revoked frame"


# --- the generator itself -----------------------------------------------------------------------


def test_streams_are_reproducible():
    world = World(seed=9)
    a = [generate(RandomChooser(random.Random(9)), world, i) for i in range(50)]
    b = [generate(RandomChooser(random.Random(9)), world, i) for i in range(50)]
    assert [(c.category, c.descs, c.heads, c.writes) for c in a] == \
        [(c.category, c.descs, c.heads, c.writes) for c in b]


def test_world_grants_every_frame_once():
    """Each frame is named by at most one entry usable by the domain: the isolation checks
    decide by frame."""
    world = World(seed=3)
    frames = Counter(e.frame for e in world.grants.values()
                     if e.permits_access and e.domid == world.domid)
    assert max(frames.values()) == 1
    assert case_refs(gen_big_request(RandomChooser(random.Random(1)), world, 0))


def test_table_write_values():
    world = World(seed=4)
    e = world.grants[8]
    case = gen_big_request(RandomChooser(random.Random(2)), world, 0)
    tw = gen_table_write(RandomChooser(random.Random(5)), world, case)
    assert tw.offset == spec.HV_GRANT_BASE + 8 * tw.ref + 4 * tw.word
    w0, w1 = e.pack()
    assert type(tw).apply(tw, e) == GrantEntry.unpack(tw.value if tw.word == 0 else w0,
                                                      tw.value if tw.word == 1 else w1)
    assert struct.calcsize("<QIHH") == spec.DESC_BYTES


def test_figures():
    """The module generates at least the 20,000 cases the issue asks for (recovery probes and
    races come on top); prints the measured tallies when the module ran in this process."""
    planned = sum(s[3] for s in STREAMS) + HYPOTHESIS_STREAMS * HYPOTHESIS_CASES \
        + CATEGORY_EXAMPLES
    assert planned >= 20_000
    if FIGURES["generated"]:
        print(f"\nadversarial cases on the reference: {FIGURES['cases']} "
              f"({FIGURES['generated']} generated, {FIGURES['hostile']} of them hostile; "
              f"{FIGURES['faults']} faults, {FIGURES['recoveries']} recoveries, "
              f"{FIGURES['revocation races']} revocation races, {FIGURES['reset races']} reset "
              f"races); violations 0")


def test_soak_plan():
    """``make soak``'s plan: the cases add up, stream k has seed + k, a seed's kind never
    changes (so a stream can be replayed alone), and every kind of stream is in it."""
    from tb.soak import plan, stream_for

    p = plan(1, 500, 100_000, None)
    assert sum(s.cases for s in p) == 100_000
    assert [s.seed for s in p] == list(range(1, len(p) + 1))
    assert all(s == stream_for(s.seed, 500) for s in p[:-1])
    assert {s.test for s in p} == {"test_stream", "test_revoke_race", "test_reset_race"}
    assert plan(7, 500, None, 1)[0] == stream_for(7, 500)
