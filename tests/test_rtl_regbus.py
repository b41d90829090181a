"""AXI4LiteRegBridge (rtl/regbus.py) driven at its AXI4-Lite pins.

Contract (module and class docstrings): one access in flight; a write is accepted (both
channels handshake) in the cycle after the first idle cycle with ``awvalid`` and ``wvalid``
both high, that cycle being one of ``w_next`` and the accepting one one of ``w_en``, both with
the write's ``addr``/``w_data``/``w_strb``; a read is one cycle of ``r_en`` with
``addr`` and the register file presents ``r_data`` on the next cycle; a write wins over a read
requested in the same cycle; every response is OKAY; write response 1 cycle after the
handshake, read data 2 cycles after ``arvalid`` is accepted, or 3 when the register file raises
``r_wait`` in the cycle after ``r_en`` (and presents ``r_data`` in the one after).

Behind the bridge sits a small register file (a byte-strobed RAM) whose ``r_data`` is the
addressed word only in the cycle after ``r_en`` and ``POISON`` in every other cycle, so a bridge
that samples ``r_data`` in the wrong cycle returns ``POISON``; with ``slow``, a read of the
upper half (address bit 8) raises ``r_wait`` and presents the word only a cycle later.
"""

from __future__ import annotations

import random

import pytest
from amaranth import Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import memory
from amaranth.sim import Simulator

from rtl.axi import RESP_OKAY
from rtl.regbus import AXI4LiteRegBridge

ADDR_WIDTH = 9
WORDS = 1 << (ADDR_WIDTH - 2)
POISON = 0xDEAD_BEEF


class Harness(Elaboratable):
    """The bridge plus a register file of ``WORDS`` 32-bit words (byte strobes, read latency 1;
    2 for the upper half with ``slow``)."""

    def __init__(self, init=(), *, slow=False):
        self.bridge = AXI4LiteRegBridge(ADDR_WIDTH)
        self.init = list(init)
        self.slow = slow

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        reg = bridge.reg
        m.submodules.regs = regs = memory.Memory(shape=unsigned(32), depth=WORDS, init=self.init)
        rp, wp = regs.read_port(), regs.write_port(granularity=8)
        pending = Signal()
        slow_q = Signal()  # the read raises r_wait
        pending2 = Signal()  # the cycle after r_wait
        data_q = Signal(32)
        m.d.sync += [pending.eq(reg.r_en), pending2.eq(pending & slow_q), data_q.eq(rp.data)]
        with m.If(reg.r_en):
            m.d.sync += slow_q.eq(reg.addr[ADDR_WIDTH - 1] & self.slow)
        m.d.comb += [
            rp.addr.eq(reg.addr[2:]), rp.en.eq(reg.r_en),
            reg.r_wait.eq(pending & slow_q),
            reg.r_data.eq(Mux(pending & ~slow_q, rp.data, Mux(pending2, data_q, POISON))),
            wp.addr.eq(reg.addr[2:]), wp.data.eq(reg.w_data),
            wp.en.eq(Mux(reg.w_en, reg.w_strb, 0)),
        ]
        return m


AXI_OUT = ("awready", "wready", "bvalid", "bresp", "arready", "rvalid", "rdata", "rresp")
REG_OUT = ("addr", "w_next", "w_en", "w_data", "w_strb", "r_en")


class Bus:
    """Drives the AXI pins one cycle at a time and records what every cycle showed."""

    def __init__(self, ctx, harness):
        self.ctx, self.axi, self.reg = ctx, harness.bridge.axi, harness.bridge.reg
        self.trace: list[dict[str, int]] = []

    def set(self, **kw):
        for name, value in kw.items():
            self.ctx.set(getattr(self.axi, name), value)

    async def step(self):
        """Record this cycle's outputs (and handshakes), then clock."""
        s = {n: self.ctx.get(getattr(self.axi, n)) for n in AXI_OUT}
        s.update({n: self.ctx.get(getattr(self.reg, n)) for n in REG_OUT})
        for n in ("awvalid", "wvalid", "arvalid", "bready", "rready", "awaddr", "araddr"):
            s[n] = self.ctx.get(getattr(self.axi, n))
        s["aw_hs"] = s["awvalid"] & s["awready"]
        s["w_hs"] = s["wvalid"] & s["wready"]
        s["ar_hs"] = s["arvalid"] & s["arready"]
        s["b_hs"] = s["bvalid"] & s["bready"]
        s["r_hs"] = s["rvalid"] & s["rready"]
        s["cycle"] = len(self.trace)
        self.trace.append(s)
        await self.ctx.tick()
        return s

    async def until(self, key, limit=20):
        """Step until a cycle with ``key`` set; return that cycle's record."""
        for _ in range(limit):
            s = await self.step()
            if s[key]:
                return s
        raise AssertionError(f"no {key} within {limit} cycles")

    def cycles(self, key):
        return [s["cycle"] for s in self.trace if s[key]]

    async def write(self, addr, data, strb=0xF, *, w_lead=0, aw_lead=0, bready_delay=0):
        """An AXI write; ``w_lead``/``aw_lead`` cycles of one channel valid before the other."""
        self.set(bready=0)
        if w_lead:
            self.set(wvalid=1, wdata=data, wstrb=strb)
        if aw_lead:
            self.set(awvalid=1, awaddr=addr)
        for _ in range(w_lead + aw_lead):
            s = await self.step()
            assert not (s["awready"] or s["wready"] or s["w_en"] or s["w_next"]), \
                "accepted half a write"
        self.set(awvalid=1, awaddr=addr, wvalid=1, wdata=data, wstrb=strb)
        pre = await self.step()
        assert pre["w_next"] and not (pre["w_en"] or pre["aw_hs"] or pre["w_hs"]), \
            "the first cycle with both channels valid is w_next"
        assert (pre["addr"], pre["w_data"], pre["w_strb"]) == (addr, data, strb)
        hs = await self.step()
        assert hs["w_en"] and not hs["w_next"], "w_en in the cycle after w_next"
        assert hs["aw_hs"] and hs["w_hs"], "both channels handshake with the w_en cycle"
        assert (hs["addr"], hs["w_data"], hs["w_strb"]) == (addr, data, strb)
        self.set(awvalid=0, wvalid=0)
        for _ in range(bready_delay):
            s = await self.step()
            assert s["bvalid"] and not s["w_en"] and not s["r_en"]
        self.set(bready=1)
        b = await self.until("b_hs")
        self.set(bready=0)
        assert b["bresp"] == RESP_OKAY
        return hs, b

    async def read(self, addr, *, rready_delay=0):
        self.set(arvalid=1, araddr=addr, rready=0)
        ar = await self.until("ar_hs")
        assert ar["r_en"] and ar["addr"] == addr and not ar["w_en"]
        self.set(arvalid=0)
        for _ in range(rready_delay):
            s = await self.step()
            assert not s["r_en"] and not s["w_en"]
        self.set(rready=1)
        r = await self.until("r_hs")
        self.set(rready=0)
        assert r["rresp"] == RESP_OKAY
        return ar, r


def run(harness, bench):
    sim = Simulator(harness)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def bytes_merge(old, data, strb):
    mask = sum(0xFF << 8 * k for k in range(4) if strb >> k & 1)
    return old & ~mask | data & mask


WRITE_ORDERS = [
    pytest.param({}, id="aw-and-w-together"),
    pytest.param({"w_lead": 1}, id="w-1-cycle-before-aw"),
    pytest.param({"w_lead": 3}, id="w-3-cycles-before-aw"),
    pytest.param({"aw_lead": 2}, id="aw-2-cycles-before-w"),
]


@pytest.mark.parametrize("order", WRITE_ORDERS)
@pytest.mark.parametrize("bready_delay", [0, 3])
def test_write(order, bready_delay):
    """One w_next strobe, then one w_en strobe, both with the written address/data/strobes;
    both channels handshake in the w_en cycle; bvalid exactly 1 cycle later, held until bready;
    bresp OKAY; no read strobe."""
    h = Harness()

    async def bench(ctx):
        bus = Bus(ctx, h)
        hs, b = await bus.write(0x1A4, 0x1234_5678, 0b0110, bready_delay=bready_delay, **order)
        for _ in range(3):
            await bus.step()
        assert bus.cycles("w_en") == bus.cycles("aw_hs") == bus.cycles("w_hs") == [hs["cycle"]]
        assert bus.cycles("w_next") == [hs["cycle"] - 1]
        assert bus.cycles("bvalid")[0] == hs["cycle"] + 1
        assert bus.cycles("b_hs") == [b["cycle"]] == [hs["cycle"] + 1 + bready_delay]
        assert bus.cycles("bvalid") == list(range(hs["cycle"] + 1, b["cycle"] + 1))
        assert not bus.cycles("r_en") and not bus.cycles("rvalid")
        _, r = await bus.read(0x1A4)
        assert r["rdata"] == 0x0034_5600  # only bytes 1 and 2 were strobed

    run(h, bench)


@pytest.mark.parametrize("rready_delay", [0, 4])
def test_read_latency(rready_delay):
    """r_en with araddr in the arready cycle; rdata is what the register file presented the
    cycle after r_en (never POISON); rvalid exactly 2 cycles after the accept, held with
    stable rdata until rready; rresp OKAY; no write strobe."""
    init = [0x5000_0000 | i * 0x0101 for i in range(WORDS)]
    h = Harness(init)

    async def bench(ctx):
        bus = Bus(ctx, h)
        await bus.step()
        for addr in (0x000, 0x004, 0x1FC, 0x0A0):
            ar, r = await bus.read(addr, rready_delay=rready_delay)
            assert r["rdata"] == init[addr >> 2]
            rvalid = [s for s in bus.trace if s["rvalid"] and s["cycle"] > ar["cycle"]]
            assert rvalid[0]["cycle"] == ar["cycle"] + 2
            assert [s["cycle"] for s in rvalid] == list(range(ar["cycle"] + 2, r["cycle"] + 1))
            assert {s["rdata"] for s in rvalid} == {init[addr >> 2]}
            assert bus.cycles("r_en")[-1] == ar["cycle"]
        assert len(bus.cycles("r_en")) == 4 and not bus.cycles("w_en")
        assert not bus.cycles("bvalid")

    run(h, bench)


@pytest.mark.parametrize("rready_delay", [0, 3])
def test_read_wait(rready_delay):
    """A register file that raises r_wait in the cycle after r_en: rvalid exactly 3 cycles
    after the accept, with the word it presented the cycle after r_wait (never POISON); reads
    without r_wait keep 2 cycles."""
    init = [0x7000_0000 | i * 0x0203 for i in range(WORDS)]
    h = Harness(init, slow=True)

    async def bench(ctx):
        bus = Bus(ctx, h)
        await bus.step()
        for addr in (0x100, 0x004, 0x1FC, 0x0FC, 0x180):
            ar, r = await bus.read(addr, rready_delay=rready_delay)
            assert r["rdata"] == init[addr >> 2]
            rvalid = [s for s in bus.trace if s["rvalid"] and s["cycle"] > ar["cycle"]]
            latency = 3 if addr & 0x100 else 2
            assert rvalid[0]["cycle"] == ar["cycle"] + latency
            assert {s["rdata"] for s in rvalid} == {init[addr >> 2]}
        assert len(bus.cycles("r_en")) == 5

    run(h, bench)


def test_write_wins_over_simultaneous_read():
    """aw, w and ar valid in the same cycle: the write is announced and then strobed (no
    r_en, no arready); the read, held valid, is served after the write response and sees the
    written value."""
    h = Harness([0x1111_1111] * WORDS)

    async def bench(ctx):
        bus = Bus(ctx, h)
        bus.set(awvalid=1, awaddr=0x40, wvalid=1, wdata=0xCAFE_F00D, wstrb=0xF,
                arvalid=1, araddr=0x40, bready=1, rready=1)
        pre = await bus.step()
        assert pre["w_next"] and not (pre["r_en"] or pre["arready"] or pre["aw_hs"])
        first = await bus.step()
        assert first["w_en"] and first["aw_hs"] and first["w_hs"]
        assert not first["r_en"] and not first["arready"]
        bus.set(awvalid=0, wvalid=0)
        ar = await bus.until("ar_hs")
        bus.set(arvalid=0)
        r = await bus.until("r_hs")
        assert r["rdata"] == 0xCAFE_F00D
        b = bus.cycles("b_hs")
        assert b == [first["cycle"] + 1] and ar["cycle"] > b[0]
        assert bus.cycles("r_en") == [ar["cycle"]]

    run(h, bench)


def test_one_access_in_flight():
    """While a response is pending (bready or rready low), no channel is accepted and no
    strobe is issued, whatever else is valid."""
    h = Harness()

    async def bench(ctx):
        bus = Bus(ctx, h)
        bus.set(awvalid=1, awaddr=0x8, wvalid=1, wdata=1, wstrb=0xF, bready=0)
        await bus.step()  # w_next
        await bus.step()  # write accepted
        bus.set(awaddr=0xC, wdata=2, arvalid=1, araddr=0x10)
        for _ in range(4):
            s = await bus.step()
            assert s["bvalid"] and not (s["awready"] or s["wready"] or s["arready"])
            assert not (s["w_en"] or s["r_en"])
        bus.set(awvalid=0, wvalid=0, bready=1)
        await bus.until("b_hs")
        bus.set(bready=0, rready=0)
        await bus.until("ar_hs")
        bus.set(arvalid=0, awvalid=1, wvalid=1)
        for _ in range(5):
            s = await bus.step()
            assert not (s["awready"] or s["wready"] or s["w_en"] or s["r_en"])
        assert s["rvalid"]

    run(h, bench)


def test_random_sequence_against_model():
    """Random writes (strobes, channel orders, response delays) and reads against a dict."""
    rng = random.Random(5)
    model = [rng.getrandbits(32) for _ in range(WORDS)]
    h = Harness(model, slow=True)

    async def bench(ctx):
        bus = Bus(ctx, h)
        for _ in range(150):
            addr = rng.randrange(WORDS) * 4
            if rng.random() < 0.5:
                data, strb = rng.getrandbits(32), rng.getrandbits(4)
                order = rng.choice([{}, {"w_lead": rng.randint(1, 3)},
                                    {"aw_lead": rng.randint(1, 3)}])
                await bus.write(addr, data, strb, bready_delay=rng.randint(0, 2), **order)
                model[addr >> 2] = bytes_merge(model[addr >> 2], data, strb)
            else:
                _, r = await bus.read(addr, rready_delay=rng.randint(0, 2))
                assert r["rdata"] == model[addr >> 2], hex(addr)
            for _ in range(rng.randint(0, 1)):
                await bus.step()

    run(h, bench)
