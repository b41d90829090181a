"""The ring engine's early address (``rtl/engine.py``, ``AddressAdder``; issue 16).

In the cycle after a ring access's operands are chosen, the early address (``va_early``, the
lookup address the DMA engine reads a cycle ahead) holds X + Y on its low ``EARLY_BITS`` bits,
as ``va_next`` does. Checked here against Python's sum for random ring bases and offsets, with
bases drawn just below boundaries of 2^12 to 2^39 so that the carry out of the offset's bits
runs through the bits the early sums keep apart (the sums keep only the bits below the widest
offset; the bits above are the base's or the base's plus one). Amaranth's simulator, the
``AddressAdder`` alone: the avail ring's entry (``y_default``) and two used-ring offsets.
"""

from __future__ import annotations

import random

from amaranth import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from rtl.engine import EARLY_BITS, XS_AVAIL, XS_DESC, XS_PF, XS_USED, Y_REG, AddressAdder

MASK = (1 << EARLY_BITS) - 1


class Harness(Elaboratable):
    def __init__(self):
        self.bases = {sel: Signal(64, name=f"base{sel}") for sel in (XS_DESC, XS_AVAIL, XS_USED,
                                                                      XS_PF)}
        self.ring_off = Signal(18)  # the avail entry's offset (y_default)
        self.used_off = Signal(19)  # a used element's offset
        self.f_used = Signal()
        self.f_uidx = Signal()  # the used index (offset 2)
        self.pick = Signal()  # 0: the avail ring, 1: the used ring
        self.adder = None

    def elaborate(self, platform):
        m = Module()
        cases = [(self.f_used, self.used_off), (self.f_uidx, 2)]
        adder = self.adder = AddressAdder(
            m, self.bases, Signal(16), Signal(32), cases, self.ring_off, Signal(EARLY_BITS),
            {XS_DESC: [], XS_AVAIL: [(None, self.ring_off)], XS_USED: list(cases)}, Signal())
        with m.If(self.pick):
            adder.operand(XS_USED, Y_REG)
        with m.Else():
            adder.operand(XS_AVAIL, Y_REG)
        return m


def test_early_address_is_the_sum():
    dut = Harness()
    rng = random.Random(16)
    checked = {"carries above bit 18": 0, "trials": 0}

    async def bench(ctx):
        for _ in range(400):
            k = rng.randrange(12, EARLY_BITS)
            base = ((rng.getrandbits(64) >> k << k) - rng.randrange(1, 1 << 12)) % (1 << 64)
            pick = rng.randrange(3)  # avail entry, used element, used index
            ring_off, used_off = rng.getrandbits(18) & ~1, rng.getrandbits(19) & ~7
            sel = XS_USED if pick else XS_AVAIL
            for s, sig in dut.bases.items():
                ctx.set(sig, base if s == sel else rng.getrandbits(64))
            ctx.set(dut.ring_off, ring_off)
            ctx.set(dut.used_off, used_off)
            ctx.set(dut.pick, pick != 0)
            ctx.set(dut.f_used, pick == 1)
            ctx.set(dut.f_uidx, pick == 2)
            await ctx.tick().repeat(3)  # the sums lag their operands by a cycle
            offset = (ring_off, used_off, 2)[pick]
            want = (base + offset) & MASK
            early = ctx.get(dut.adder.va_early) & MASK
            assert early == (ctx.get(dut.adder.va_next) & MASK) == want, (
                f"base {base:#x} + {offset:#x}: early {early:#x}, want {want:#x}")
            checked["trials"] += 1
            checked["carries above bit 18"] += ((base & MASK) >> 19) != (want >> 19)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert checked["trials"] == 400
    assert checked["carries above bit 18"] >= 50  # the draw does reach the kept-apart bits
