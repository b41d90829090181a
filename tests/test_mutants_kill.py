"""Tests added because a mutant of ``make mutants`` survived the existing ones (docs/mutants.md):
each states the contract it checks and names the mutant it kills."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from models import spec
from rtl.iotlb import Iotlb


@pytest.mark.parametrize("start", [None, 0, 1, 2])
def test_iotlb_stale_when_a_command_starts_near_a_lookup(start):
    """rtl/iotlb.py's contract: in cycle ``t + 2`` of a lookup read in cycle ``t``, ``stale`` is
    1 exactly when a command ran or started in cycle ``t``, ``t + 1`` or ``t + 2`` (here: an
    invalidate-all starting in cycle ``t + start``, or none). Kills ``iotlb_stale_dropped`` (a
    command starting in ``t + 2`` itself not seen: the device's translation unit ORs
    ``active`` in again, so only the block's own contract tells)."""
    dut = Iotlb(64)

    async def bench(ctx):
        c = dut.ctrl
        ctx.set(c.stage_size, spec.PAGE_SHIFT)
        for cycle in range(3):  # t: the sets are read, t + 1: the key, t + 2: the answer
            ctx.set(c.cmd, spec.IOTLB_CMD_INVALIDATE_ALL if cycle == start else 0)
            ctx.set(dut.small, 3)
            ctx.set(dut.key, 3)
            if cycle < 2:
                await ctx.tick()
        assert ctx.get(dut.stale) == (start is not None)
        ctx.set(c.cmd, 0)
        await ctx.tick()
        while ctx.get(c.busy):
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
