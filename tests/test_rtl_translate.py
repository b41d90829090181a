"""TranslationUnit (rtl/translate.py) against the reference translation (models/grant.py).

Contract: docs/architecture.md, "Handles and translation", and the component's docstring:
one response exactly one cycle after each request, ``resp_fault`` = 0 or the cause of the first
failing check, ``resp_paddr`` = ``frame << 12 | offset`` (or ``v`` in GPA mode); the table is
written through ``tbl_addr``/``tbl_wdata``/``tbl_wen`` (byte enables; bytes 0-3 = GRANT word 0,
bytes 4-7 = word 1) and read back on ``tbl_rdata`` one cycle after ``tbl_addr``.
"""

from __future__ import annotations

import collections
import random

import pytest
from amaranth.sim import Simulator

from models import spec
from models.grant import GrantEntry, GrantTable, Translation, translate
from rtl.translate import TranslationUnit

DOMID = 0x1234
U64 = (1 << 64) - 1


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def entry_word(entry: GrantEntry) -> int:
    w0, w1 = entry.pack()
    return w0 | w1 << 32


async def program(ctx, dut, table: GrantTable, ref: int, value: int, wen: int = 0xFF):
    """Write ``value`` to entry ``ref`` with byte enables ``wen``, in the RTL and the model."""
    ctx.set(dut.tbl_addr, ref)
    ctx.set(dut.tbl_wdata, value)
    ctx.set(dut.tbl_wen, wen)
    await ctx.tick()
    ctx.set(dut.tbl_wen, 0)
    table.write_word(2 * ref, value & 0xFFFF_FFFF, wen & 0xF)
    table.write_word(2 * ref + 1, value >> 32, wen >> 4)


async def lookup(ctx, dut, v: int, write: bool) -> Translation:
    """One request; returns the response two cycles later as a model ``Translation``."""
    ctx.set(dut.req_valid, 1)
    ctx.set(dut.req_vaddr, v)
    ctx.set(dut.req_write, write)
    await ctx.tick()
    # Change the request inputs: the response must come from the registered request.
    ctx.set(dut.req_valid, 0)
    ctx.set(dut.req_vaddr, v ^ U64)
    ctx.set(dut.req_write, not write)
    assert ctx.get(dut.resp_valid) == 0
    await ctx.tick()
    assert ctx.get(dut.resp_valid) == 1
    return response(ctx, dut)


def response(ctx, dut) -> Translation:
    fault = ctx.get(dut.resp_fault)
    if fault:
        return Translation.fault(fault)
    return Translation.hit(ctx.get(dut.resp_paddr))


def oracle(table: GrantTable, v: int, write: bool, handle_mode: bool, domid: int) -> Translation:
    return translate(v, write, handle_mode=handle_mode, domid=domid, table=table,
                     entries=table.entries)


# --- Named table used by the explicit cases -----------------------------------------------------

NAMED_ENTRIES = {
    0: GrantEntry.permit(DOMID, 0x00ABC),
    1: GrantEntry.permit(DOMID, 0xFFFF_FFFF),
    2: GrantEntry.permit(DOMID, 0x456, readonly=True),
    3: GrantEntry(flags=spec.GTF_invalid, domid=DOMID, frame=0x9),
    4: GrantEntry(flags=spec.GTF_accept_transfer, domid=DOMID, frame=0x9),
    5: GrantEntry(flags=3, domid=DOMID, frame=0x9),
    6: GrantEntry(flags=spec.GTF_readonly, domid=DOMID, frame=0x9),  # readonly, no permit
    7: GrantEntry.permit(DOMID ^ 0x8000, 0x777),  # domid differs in bit 15 only
    8: GrantEntry.permit(DOMID + 1, 0x777, readonly=True),
    9: GrantEntry(flags=spec.GTF_permit_access | 0xFFF0, domid=DOMID, frame=0x1234_5678),
    10: GrantEntry(flags=spec.GTF_invalid, domid=DOMID + 1, frame=0x9),  # invalid + domain
    11: GrantEntry.permit(DOMID, 0x42),
}

H = spec.make_handle

# (name, entries, v, write, expected cause or None for a hit)
CAUSE_CASES = [
    ("hit read", 16, H(0, 0x123), False, None),
    ("hit write max frame", 16, H(1, 0xFFF), True, None),
    ("read of read-only grant", 16, H(2, 5), False, None),
    ("upper flag bits ignored", 16, H(9, 0x800), True, None),
    ("last entry (12)", 12, H(11, 1), True, None),
    ("1 not a handle", 16, 0x0000_0000_0000_1000, False, spec.FAULT_NOT_HANDLE),
    ("1 not a handle, all other bits set", 16, U64 >> 1, True, spec.FAULT_NOT_HANDLE),
    ("1 beats 2 (bit 63 clear, ref huge)", 12, (U64 >> 1) & ~0xFFF, False,
     spec.FAULT_NOT_HANDLE),
    ("2 ref == entries (16, aliases 0)", 16, H(16), False, spec.FAULT_REF_RANGE),
    ("2 ref == entries (12)", 12, H(12), False, spec.FAULT_REF_RANGE),
    ("2 ref 15 > entries (12)", 12, H(15), True, spec.FAULT_REF_RANGE),
    ("2 ref aliases entry 0 in low bits", 12, H(1 << 20), False, spec.FAULT_REF_RANGE),
    ("2 ref = 2**51 - 1", 16, H(spec.GRANT_REF_MASK, 0xFFF), False, spec.FAULT_REF_RANGE),
    ("3 invalid", 16, H(3), False, spec.FAULT_NOT_PERMITTED),
    ("3 accept_transfer", 16, H(4), False, spec.FAULT_NOT_PERMITTED),
    ("3 type 3", 16, H(5), True, spec.FAULT_NOT_PERMITTED),
    ("3 readonly without permit", 16, H(6), False, spec.FAULT_NOT_PERMITTED),
    ("3 beats 4 (invalid, wrong domain)", 16, H(10), False, spec.FAULT_NOT_PERMITTED),
    ("3 never-written entry", 16, H(13), False, spec.FAULT_NOT_PERMITTED),
    ("4 wrong domain (bit 15)", 16, H(7), False, spec.FAULT_WRONG_DOMAIN),
    ("4 beats 5 (wrong domain, read-only write)", 16, H(8), True, spec.FAULT_WRONG_DOMAIN),
    ("5 write to read-only", 16, H(2, 0x10), True, spec.FAULT_READONLY),
]


@pytest.mark.parametrize(("entries", "v", "write", "cause"),
                         [c[1:] for c in CAUSE_CASES], ids=[c[0] for c in CAUSE_CASES])
def test_fault_causes(entries, v, write, cause):
    """Each fault cause 1-5 and the check order (first failing check wins), handle mode."""
    dut = TranslationUnit(entries)
    table = GrantTable(entries)

    async def bench(ctx):
        ctx.set(dut.handle_mode, 1)
        ctx.set(dut.domid, DOMID)
        for ref, entry in NAMED_ENTRIES.items():
            if ref < entries:
                await program(ctx, dut, table, ref, entry_word(entry))
        got = await lookup(ctx, dut, v, write)
        want = oracle(table, v, write, True, DOMID)
        assert got == want
        if cause is None:
            entry = NAMED_ENTRIES[spec.split_handle(v)[0]]
            assert got == Translation.hit(entry.frame << 12 | v & 0xFFF)
        else:
            assert got == Translation.fault(cause)

    run(dut, bench)


@pytest.mark.parametrize("entries", [16, 12])
def test_gpa_mode_passthrough(entries):
    """GPA mode: paddr = v, no fault, whatever v, the direction or the table hold."""
    dut = TranslationUnit(entries)
    table = GrantTable(entries)
    rng = random.Random(entries)
    addrs = [0, U64, 1 << 63, U64 >> 1, H(0, 0x123), H(entries), H(spec.GRANT_REF_MASK, 7)]
    addrs += [rng.getrandbits(64) for _ in range(50)]

    async def bench(ctx):
        ctx.set(dut.handle_mode, 0)
        ctx.set(dut.domid, DOMID)
        await program(ctx, dut, table, 0, entry_word(GrantEntry.permit(DOMID, 0x55)))
        await program(ctx, dut, table, 1, entry_word(GrantEntry()))
        for i, v in enumerate(addrs):
            got = await lookup(ctx, dut, v, bool(i & 1))
            assert got == Translation.hit(v) == oracle(table, v, bool(i & 1), False, DOMID)

    run(dut, bench)


def test_latency_exactly_two_cycles():
    """resp_valid is high exactly two cycles after each req_valid cycle, and only then."""
    dut = TranslationUnit(16)
    pattern = [0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0]

    async def bench(ctx):
        ctx.set(dut.handle_mode, 1)
        ctx.set(dut.domid, DOMID)
        assert ctx.get(dut.resp_valid) == 0
        history = [0, 0]
        for valid in [*pattern, 0, 0]:
            ctx.set(dut.req_valid, valid)
            ctx.set(dut.req_vaddr, H(0))
            assert ctx.get(dut.resp_valid) == history[-2]  # not combinational from req_valid
            await ctx.tick()
            history.append(valid)
            assert ctx.get(dut.resp_valid) == history[-2]

    run(dut, bench)


def _random_entry(rng: random.Random, domid: int) -> GrantEntry:
    flags = rng.choice([0, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 7, rng.getrandbits(16)])
    dom = rng.choice([domid] * 6 + [domid ^ 1 << rng.randrange(16), rng.getrandbits(16)])
    frame = rng.choice([0, 0xFFFF_FFFF, rng.getrandbits(32), rng.getrandbits(20)])
    return GrantEntry(flags=flags, domid=dom, frame=frame)


def _random_vaddr(rng: random.Random, entries: int) -> int:
    kind = rng.randrange(10)
    if kind == 0:
        return rng.getrandbits(64)  # anything, half of them not handles
    if kind == 1:
        return rng.getrandbits(63)  # not a handle
    if kind == 2:
        return H(rng.getrandbits(51), rng.getrandbits(12))  # mostly out of range
    if kind == 3:
        return H(entries + rng.randrange(64), rng.getrandbits(12))
    return H(rng.randrange(entries), rng.getrandbits(12))


@pytest.mark.parametrize(("entries", "seed"), [(16, 1), (12, 2)])
def test_random_lookups_match_model(entries, seed):
    """~2000 back-to-back lookups per table (random valid gaps, directions, modes, domids,
    table rewrites with random byte enables) agree with models.grant.translate."""
    dut = TranslationUnit(entries)
    table = GrantTable(entries)
    rng = random.Random(seed)
    seen = collections.Counter()  # outcome -> count (0 = hit in handle mode, -1 = GPA)

    async def bench(ctx):
        for batch in range(50):
            handle_mode = batch % 5 != 4
            domid = DOMID if batch % 3 else rng.choice([0, 0xFFFF, rng.getrandbits(16)])
            # Reprogram a few entries (all of them first), some with partial byte enables.
            refs = range(entries) if batch == 0 else rng.sample(range(entries), entries // 2)
            for ref in refs:
                wen = 0xFF if batch == 0 or rng.random() < 0.5 else rng.getrandbits(8)
                await program(ctx, dut, table, ref, entry_word(_random_entry(rng, domid)), wen)
            ctx.set(dut.handle_mode, handle_mode)
            ctx.set(dut.domid, domid)
            # (v, write) requested two cycles ago and in the previous cycle, if any
            pipe = [None, None]
            for i in range(42):
                valid = i < 40 and rng.random() < 0.8
                v, write = _random_vaddr(rng, entries), rng.random() < 0.5
                ctx.set(dut.req_valid, valid)
                ctx.set(dut.req_vaddr, v)
                ctx.set(dut.req_write, write)
                # The response to the request of two cycles ago, with later requests in flight.
                prev = pipe[0]
                assert ctx.get(dut.resp_valid) == (prev is not None)
                if prev is not None:
                    want = oracle(table, *prev, handle_mode, domid)
                    assert response(ctx, dut) == want, (hex(prev[0]), prev[1], handle_mode)
                    seen[want.cause if handle_mode else -1] += 1
                pipe = [pipe[1], (v, write) if valid else None]
                await ctx.tick()

    run(dut, bench)
    assert sum(seen.values()) > 1400
    assert all(seen[outcome] >= 20 for outcome in range(-1, 6)), seen  # every outcome covered


def test_table_write_seen_by_next_lookup_only():
    """A lookup reads the entry as it is in the cycle of the request; a table write in that
    same cycle is seen by the next lookup (TranslationUnit docstring)."""
    dut = TranslationUnit(16)
    table = GrantTable(16)
    old, new = GrantEntry.permit(DOMID, 0x111), GrantEntry.permit(DOMID, 0x222)

    async def bench(ctx):
        ctx.set(dut.handle_mode, 1)
        ctx.set(dut.domid, DOMID)
        await program(ctx, dut, table, 5, entry_word(old))
        ctx.set(dut.tbl_addr, 5)
        ctx.set(dut.tbl_wdata, entry_word(new))
        ctx.set(dut.tbl_wen, 0xFF)
        got = await lookup(ctx, dut, H(5, 0x10), False)
        ctx.set(dut.tbl_wen, 0)
        assert got == Translation.hit(0x111010)
        assert await lookup(ctx, dut, H(5, 0x10), False) == Translation.hit(0x222010)

    run(dut, bench)


@pytest.mark.parametrize(("entries", "seed"), [(16, 3), (12, 4)])
def test_table_readback_and_byte_enables(entries, seed):
    """tbl_rdata holds entry tbl_addr one cycle later (pipelined, one read per cycle); a
    write changes exactly the bytes enabled in tbl_wen (models.grant.GrantTable.write_word)."""
    dut = TranslationUnit(entries)
    table = GrantTable(entries)
    rng = random.Random(seed)

    def model_word(ref: int) -> int:
        return table.read_word(2 * ref) | table.read_word(2 * ref + 1) << 32

    async def read_all(ctx):
        order = list(range(entries))
        rng.shuffle(order)
        last = None
        for ref in order:
            ctx.set(dut.tbl_addr, ref)
            if last is not None:  # rdata does not follow tbl_addr combinationally
                assert ctx.get(dut.tbl_rdata) == model_word(last)
            await ctx.tick()
            assert ctx.get(dut.tbl_rdata) == model_word(ref), f"entry {ref}"
            last = ref

    async def bench(ctx):
        for ref in range(entries):
            await program(ctx, dut, table, ref, rng.getrandbits(64))
        await read_all(ctx)
        wens = [1 << k for k in range(8)] + [0x0F, 0xF0, 0x00, 0x81, 0x5A]
        wens += [rng.getrandbits(8) for _ in range(20)]
        for wen in wens:
            ref = rng.randrange(entries)
            before = model_word(ref)
            await program(ctx, dut, table, ref, rng.getrandbits(64), wen)
            ctx.set(dut.tbl_addr, ref)
            await ctx.tick()
            got = ctx.get(dut.tbl_rdata)
            assert got == model_word(ref)
            for k in range(8):  # the disabled bytes kept their old value
                if not wen >> k & 1:
                    assert (got ^ before) >> 8 * k & 0xFF == 0, (hex(wen), k)
        await read_all(ctx)

    run(dut, bench)
