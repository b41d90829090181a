"""The IOTLB (rtl/iotlb.py) in lockstep with the reference IOTLB (models/iotlb.py).

Both are written from docs/iotlb.md. Random command sequences (inserts of every size class and
of sizes outside 12..30, range invalidations, invalidate all) interleaved with lookups; after
every command each IOVA of interest is looked up and the RTL's verdict (hit, R, W, physical
page) must be the model's, and STAT_IOTLB_INVALIDATED (``ctrl.invalidated``) the model's count.
The component's contract: a lookup reads sets ``small``/``large`` in cycle t, takes ``key`` in
t + 1 and answers in t + 2; a command is a one-cycle ``ctrl.cmd`` with the staged mapping, and
``ctrl.busy`` is high until it is done (the register file holds writes meanwhile); a lookup that
overlaps a command answers ``stale``.
"""

from __future__ import annotations

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from models import spec
from models.iotlb import Iotlb as ModelIotlb
from rtl.iotlb import Iotlb, check_iotlb_entries, gt_const

PAGE = spec.PAGE_SHIFT


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


class Lockstep:
    def __init__(self, ctx, dut: Iotlb, model: ModelIotlb):
        self.ctx, self.dut, self.model = ctx, dut, model
        self.invalidated = 0
        self.hits = 0
        self.busy_cycles: list[int] = []

    async def command(self, cmd: int, iova: int, pa: int = 0, size: int = 12, r: bool = True,
                      w: bool = True) -> None:
        ctx, c = self.ctx, self.dut.ctrl
        ctx.set(c.stage_iova, iova)
        ctx.set(c.stage_pa, pa)
        ctx.set(c.stage_size, size)
        ctx.set(c.stage_r, r)
        ctx.set(c.stage_w, w)
        ctx.set(c.cmd, cmd)
        await ctx.tick()
        ctx.set(c.cmd, 0)
        cycles = 0
        while ctx.get(c.busy):
            await ctx.tick()
            cycles += 1
            assert cycles < 4 * self.model.n_sets + 16, "the command never ends"
        self.busy_cycles.append(cycles)
        m = self.model
        if cmd == spec.IOTLB_CMD_INSERT:
            m.insert(iova, pa, size, r, w)
        elif cmd == spec.IOTLB_CMD_INVALIDATE:
            self.invalidated += m.invalidate(iova, size)
        elif cmd == spec.IOTLB_CMD_INVALIDATE_ALL:
            self.invalidated += m.invalidate_all()
        assert ctx.get(c.invalidated) == self.invalidated & 0xFFFF_FFFF

    async def lookup(self, iova: int, write: bool) -> None:
        ctx, d = self.ctx, self.dut
        page = iova >> PAGE
        sb = d.set_bits
        ctx.set(d.small, page & ((1 << sb) - 1))
        ctx.set(d.large, page >> 18 & ((1 << sb) - 1))
        await ctx.tick()
        ctx.set(d.key, page)
        ctx.set(d.write, write)
        await ctx.tick()
        assert not ctx.get(d.stale)
        hit = self.model.lookup(iova)
        got = tuple(ctx.get(getattr(d, n)) for n in ("hit", "r", "w", "ppn", "ok", "fault"))
        if hit is None:
            assert got == (0,) * 6, f"{iova:#x}: the model misses, the RTL answers {got}"
        else:
            self.hits += 1
            # docs/iotlb.md: a hit without the permission faults, 5 for a write, 11 for a read
            fault = (0 if hit.permits(write) else
                     spec.FAULT_READONLY if write else spec.FAULT_IOTLB_NO_READ)
            want = (1, int(hit.r), int(hit.w), hit.translate(iova) >> PAGE, int(fault == 0),
                    fault)
            assert got == want, f"{iova:#x}: RTL {got}, model {want} ({hit})"


def random_iova(rng: random.Random, pool: list[int], sets: int) -> int:
    if rng.random() < 0.25:  # pages that share small set 5 (or large set 1): replacements
        return (rng.randrange(8) * sets + 5) << PAGE if rng.random() < 0.8 else \
            (rng.randrange(4) * sets + 1) << 30
    if pool and rng.random() < 0.6:
        base = rng.choice(pool)
        return base + rng.randrange(1 << 14) if rng.random() < 0.5 else base
    region = rng.choice([0, 1 << 30, 3 << 30, 0xFFFF_FFFF_C000_0000, rng.getrandbits(64)])
    return (region + rng.randrange(1 << 26)) & spec.ADDR_MASK


@pytest.mark.parametrize(("entries", "seed"), [(64, 1), (64, 2), (8, 3), (256, 4)])
def test_iotlb_lockstep(entries, seed):
    rng = random.Random(seed)
    dut = Iotlb(entries)
    model = ModelIotlb(entries)

    async def bench(ctx):
        ctx.set(dut.enable, 1)  # IOVA mode
        ls = Lockstep(ctx, dut, model)
        pool: list[int] = []
        for _ in range(250):
            r = rng.random()
            iova = random_iova(rng, pool, model.n_sets)
            if r < 0.6:
                size = rng.choice([12] * 8 + [13, 16, 21, 21, 29, 30, 11, 31, 0])
                pa = rng.getrandbits(64) & spec.ADDR_MASK
                await ls.command(spec.IOTLB_CMD_INSERT, iova, pa, size, rng.random() < 0.8,
                                 rng.random() < 0.6)
                pool.append(iova & ~((1 << max(size, 12)) - 1))
            elif r < 0.78:
                await ls.command(spec.IOTLB_CMD_INVALIDATE, iova,
                                 size=rng.choice([12, 12, 12, 14, 21, 30, 5, 40, 63]))
            elif r < 0.8:
                await ls.command(spec.IOTLB_CMD_INVALIDATE_ALL, iova)
            else:  # a value that is no command: nothing happens
                await ls.command(0, iova, size=12)
            probes = [*rng.sample(pool, min(len(pool), 6)), random_iova(rng, pool, model.n_sets)]
            for probe in probes:
                await ls.lookup(probe, rng.random() < 0.5)
        assert ls.hits > 100
        assert ls.invalidated > 0
        assert model.evictions, "the sequence never evicted: replacement is not checked"
        # outside IOVA mode the IOTLB answers nothing, whatever it holds
        ctx.set(dut.enable, 0)
        for base in pool[-8:]:
            if model.lookup(base) is not None:
                sb = dut.set_bits
                ctx.set(dut.small, base >> PAGE & ((1 << sb) - 1))
                ctx.set(dut.large, base >> 30 & ((1 << sb) - 1))
                await ctx.tick()
                ctx.set(dut.key, base >> PAGE)
                await ctx.tick()
                assert (ctx.get(dut.hit), ctx.get(dut.ppn), ctx.get(dut.fault)) == (0, 0, 0)

    run(dut, bench)


def test_lookup_during_a_command_is_stale():
    dut = Iotlb(64)

    async def bench(ctx):
        c = dut.ctrl
        ctx.set(c.stage_size, 21)  # a 2 MiB invalidation visits every set
        ctx.set(c.cmd, spec.IOTLB_CMD_INVALIDATE)
        ctx.set(dut.small, 0)
        await ctx.tick()
        ctx.set(c.cmd, 0)
        stale = []
        while ctx.get(c.busy):
            await ctx.tick()
            stale.append(ctx.get(dut.stale))
        assert len(stale) >= 64 // spec.IOTLB_WAYS // 2  # two sets a cycle
        assert all(stale[:-1])
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.stale)

    run(dut, bench)


@pytest.mark.parametrize("bad", [4, 12, 2048, -8, True, 64.0])
def test_bad_entries(bad):
    with pytest.raises(ValueError, match=r"^IOTLB entries must be 0 or a power of two in "
                                         r"\[8, 1024\], not "):
        check_iotlb_entries(bad)


def test_gt_const_every_value():
    """``gt_const`` (the gates the thermometer and the size checks are made of) is ``>`` for
    every 6-bit value against every constant from -1 to 64."""
    ks = range(-1, 65)
    m = Module()
    value = Signal(6)
    outs = [Signal(name=f"gt_{k + 1}") for k in ks]
    m.d.comb += [o.eq(gt_const(value, k)) for o, k in zip(outs, ks, strict=True)]

    async def bench(ctx):
        for v in range(64):
            ctx.set(value, v)
            got = [ctx.get(o) for o in outs]
            assert got == [int(v > k) for k in ks], v

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
