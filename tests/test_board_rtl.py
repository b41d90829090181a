"""Amaranth-simulator tests of the board blocks: UART, the link bridge, the AXI4 guest memory.

The bridge is checked against the protocol (``models/hostlink.py``) with frames built by
the host's own encoder, including the paths the end-to-end co-simulation never takes: CRC
errors, a frame cut short, bad lengths, ranges, bus errors, WAIT_IRQ timeouts and RESET.
"""

from __future__ import annotations

import random

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.sim import Simulator

from models import hostlink as p
from rtl.axi import RESP_DECERR, RESP_OKAY, RESP_SLVERR, AXI4LiteSignature
from rtl.board.bridge import LinkBridge
from rtl.board.memory import AxiRam
from rtl.board.uart import UartRx, UartTx

MEM = 4096


class LiteRegs(wiring.Component):
    """16 words of AXI4-Lite registers; offset 0x3C answers SLVERR."""

    def __init__(self):
        super().__init__({"bus": In(AXI4LiteSignature(addr_width=9))})

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(32, name=f"r{i}") for i in range(16)]
        bus = self.bus
        with m.FSM():
            with m.State("IDLE"):
                with m.If(bus.arvalid):
                    m.d.comb += bus.arready.eq(1)
                    with m.Switch(bus.araddr[2:6]):
                        for i in range(16):
                            with m.Case(i):
                                m.d.sync += bus.rdata.eq(regs[i])
                    m.d.sync += bus.rresp.eq(RESP_SLVERR * (bus.araddr[:6] == 0x3C))
                    m.next = "R"
                with m.Elif(bus.awvalid & bus.wvalid):
                    m.d.comb += [bus.awready.eq(1), bus.wready.eq(1)]
                    with m.Switch(bus.awaddr[2:6]):
                        for i in range(16):
                            with m.Case(i):
                                m.d.sync += regs[i].eq(bus.wdata)
                    m.d.sync += bus.bresp.eq(RESP_OKAY)
                    m.next = "B"
            for state, valid, ready in (("R", bus.rvalid, bus.rready),
                                        ("B", bus.bvalid, bus.bready)):
                with m.State(state):
                    m.d.comb += valid.eq(1)
                    with m.If(ready):
                        m.next = "IDLE"
        return m


def bridge_dut(frame_timeout=64):
    m = Module()
    m.submodules.bridge = bridge = LinkBridge(
        guest_addr_width=9, hv_addr_width=9, mem_bytes=MEM, data_width=64, clk_hz=1_000_000,
        clks_per_bit=8, frame_timeout=frame_timeout)
    m.submodules.mem = mem = AxiRam(mem_bytes=MEM, data_width=64)
    m.submodules.guest = guest = LiteRegs()
    m.submodules.hv = hv = LiteRegs()
    wiring.connect(m, bridge.guest, guest.bus)
    wiring.connect(m, bridge.hv, hv.bus)
    m.d.comb += [mem.host_addr.eq(bridge.mem_addr), bridge.mem_rdata.eq(mem.host_rdata),
                 mem.host_wdata.eq(bridge.mem_wdata), mem.host_wen.eq(bridge.mem_wen),
                 bridge.mem_ready.eq(mem.host_ready)]
    return m, bridge


def run_bridge(script, *, irq_at=None, frame_timeout=64):
    """``script`` is a list of byte strings (sent in turn, each after the previous one's
    response, or ``("gap", cycles)``); returns the raw response bytes."""
    m, bridge = bridge_dut(frame_timeout)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    got = bytearray()
    resets = []

    async def collect(ctx):
        ctx.set(bridge.tx.ready, 1)
        cycle = 0
        while True:
            if irq_at is not None:
                ctx.set(bridge.irq, cycle >= irq_at)
            if ctx.get(bridge.tx.valid):
                got.append(ctx.get(bridge.tx.payload))
            if ctx.get(bridge.dev_reset):
                resets.append(cycle)
            await ctx.tick()
            cycle += 1

    async def host(ctx):
        for item in script:
            if isinstance(item, tuple):
                await ctx.tick().repeat(item[1])
                continue
            for byte in item:
                ctx.set(bridge.rx.valid, 1)
                ctx.set(bridge.rx.payload, byte)
                await ctx.tick().until(bridge.rx.ready)
                ctx.set(bridge.rx.valid, 0)
                # the bytes of a real link are spaced; a gap of a few cycles is enough here
                await ctx.tick().repeat(2)
            before = len(got)
            for _ in range(5000):  # the response, or none (a dropped frame)
                await ctx.tick()
                if len(got) > before and _complete(got):
                    break

    sim.add_testbench(collect, background=True)
    sim.add_testbench(host)
    sim.run()
    return bytes(got), resets


def _complete(buf: bytes) -> bool:
    """True when ``buf`` ends with a whole response."""
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < 4:
            return False
        n = int.from_bytes(buf[pos + 2:pos + 4], "little")
        end = pos + 4 + n + 2
        if end > len(buf):
            return False
        pos = end
    return True


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(raw):
        assert raw[pos] == p.SYNC_RESPONSE
        status, n = p.RESPONSE_HEADER.unpack(raw[pos + 1:pos + 4])
        frame = raw[pos + 1:pos + 4 + n + 2]
        assert p.crc16(frame) == 0, f"response CRC wrong: {raw[pos:pos + 6 + n].hex()}"
        out.append((status, raw[pos + 4:pos + 4 + n]))
        pos += 6 + n
    return out


req = p.encode_request


def test_info_registers_and_memory():
    raw, _ = run_bridge([
        req(p.CMD_INFO),
        req(p.CMD_GUEST_WRITE, 0x8, 4, (0x1234_5678).to_bytes(4, "little")),
        req(p.CMD_HV_WRITE, 0x8, 4, (0xCAFE).to_bytes(4, "little")),
        req(p.CMD_GUEST_READ, 0x8, 4),
        req(p.CMD_HV_READ, 0x8, 4),
        req(p.CMD_MEM_WRITE, 3, 10, bytes(range(1, 11))),
        req(p.CMD_MEM_READ, 0, 16),
    ])
    r = responses(raw)
    assert [s for s, _ in r] == [0] * 7
    magic, mem, clk, cpb, wmax, width, _ = p.INFO.unpack(r[0][1])
    assert (magic, mem, clk, cpb, wmax, width) == (p.INFO_MAGIC, MEM, 1_000_000, 8,
                                                   p.MEM_WRITE_MAX, 64)
    assert r[3][1] == (0x1234_5678).to_bytes(4, "little")
    assert r[4][1] == (0xCAFE).to_bytes(4, "little")
    assert r[6][1] == bytes(3) + bytes(range(1, 11)) + bytes(3)


def test_errors_execute_nothing():
    bad = bytearray(req(p.CMD_MEM_WRITE, 0, 4, b"\xff" * 4))
    bad[9] ^= 0x01  # a payload bit flipped on the wire
    raw, _ = run_bridge([
        bytes(bad),
        req(p.CMD_MEM_WRITE, MEM - 2, 4, b"abcd"),  # crosses the end of memory
        req(p.CMD_MEM_WRITE, 0, 300, bytes(300)),  # longer than the staging buffer
        req(p.CMD_GUEST_READ, 0, 2),  # register accesses take len 4
        req(0x55),  # unknown command
        req(p.CMD_GUEST_READ, 0x3C, 4),  # the register answers SLVERR
        req(p.CMD_MEM_READ, MEM - 4, 8),
        req(p.CMD_MEM_READ, 0, 4),
    ])
    r = responses(raw)
    assert [s for s, _ in r] == [p.STATUS_ERR_CRC, p.STATUS_ERR_RANGE, p.STATUS_ERR_CMD,
                                 p.STATUS_ERR_CMD, p.STATUS_ERR_CMD, p.STATUS_ERR_BUS,
                                 p.STATUS_ERR_RANGE, 0]
    assert r[-1][1] == bytes(4)  # the corrupted write wrote nothing


def test_a_cut_frame_is_dropped_after_the_timeout():
    frame = req(p.CMD_GUEST_WRITE, 0, 4, b"\x01\x02\x03\x04")
    raw, _ = run_bridge([frame[:6], ("gap", 100), req(p.CMD_GUEST_READ, 0, 4)],
                        frame_timeout=64)
    assert responses(raw) == [(0, bytes(4))]  # no answer to the cut frame, nothing written


def test_wait_irq_and_reset():
    raw, resets = run_bridge([req(p.CMD_WAIT_IRQ, 20), req(p.CMD_WAIT_IRQ, 100_000),
                              req(p.CMD_RESET)], irq_at=200)
    r = responses(raw)
    assert r[0][0] == p.STATUS_TIMEOUT
    assert r[1][0] == p.STATUS_IRQ and r[2][0] == p.STATUS_IRQ
    assert len(resets) == p.RESET_CYCLES and resets == list(range(resets[0], resets[-1] + 1))


@pytest.mark.parametrize("cpb", [4, 7])
def test_uart_loopback(cpb):
    m = Module()
    m.submodules.tx = tx = UartTx(cpb)
    m.submodules.rx = rx = UartRx(cpb)
    m.d.comb += rx.rx.eq(tx.tx)
    data = random.Random(cpb).randbytes(20)
    got = []
    sim = Simulator(m)
    sim.add_clock(1e-6)

    async def send(ctx):
        for b in data:
            ctx.set(tx.data.valid, 1)
            ctx.set(tx.data.payload, b)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)

    async def receive(ctx):
        while len(got) < len(data):
            await ctx.tick()
            if ctx.get(rx.data.valid):
                got.append(ctx.get(rx.data.payload))
            assert not ctx.get(rx.frame_error)

    sim.add_testbench(send)
    sim.add_testbench(receive)
    sim.run_until(len(data) * 12 * cpb * 1e-6 + 1e-4)
    assert bytes(got) == data


def test_axi_ram_bursts_strobes_and_decerr():
    dut = AxiRam(mem_bytes=MEM, data_width=32)
    axi = dut.axi
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    results = {}

    async def bench(ctx):
        ctx.set(axi.bready, 1)
        ctx.set(axi.rready, 1)

        async def write(addr, beats):
            ctx.set(axi.awaddr, addr)
            ctx.set(axi.awlen, len(beats) - 1)
            ctx.set(axi.awvalid, 1)
            await ctx.tick().until(axi.awready)
            ctx.set(axi.awvalid, 0)
            for i, (data, strb) in enumerate(beats):
                ctx.set(axi.wdata, data)
                ctx.set(axi.wstrb, strb)
                ctx.set(axi.wlast, i == len(beats) - 1)
                ctx.set(axi.wvalid, 1)
                await ctx.tick().until(axi.wready)
            ctx.set(axi.wvalid, 0)
            (resp,) = await ctx.tick().sample(axi.bresp).until(axi.bvalid)
            return resp

        async def read(addr, n, stall=False):
            ctx.set(axi.araddr, addr)
            ctx.set(axi.arlen, n - 1)
            ctx.set(axi.arvalid, 1)
            await ctx.tick().until(axi.arready)
            ctx.set(axi.arvalid, 0)
            out = []
            while True:
                if stall:
                    ctx.set(axi.rready, 0)
                    await ctx.tick().repeat(2)
                    ctx.set(axi.rready, 1)
                data, resp, last = await ctx.tick().sample(
                    axi.rdata, axi.rresp, axi.rlast).until(axi.rvalid)
                out.append((data, resp))
                if last:
                    return out

        results["w"] = await write(8, [(0x11223344, 0b1100), (0x55667788, 0b1111),
                                       (0x99AABBCC, 0b0001)])
        results["r"] = await read(8, 3, stall=True)
        results["bad_w"] = await write(MEM - 4, [(1, 0xF), (2, 0xF)])
        results["bad_r"] = await read(1 << 40, 2)
        results["tail"] = await read(MEM - 4, 1)

    sim.add_testbench(bench)
    sim.run()
    assert results["w"] == RESP_OKAY
    assert results["r"] == [(0x11220000, 0), (0x55667788, 0), (0x000000CC, 0)]
    assert results["bad_w"] == RESP_DECERR
    assert results["bad_r"] == [(0, RESP_DECERR)] * 2
    assert results["tail"] == [(0, RESP_OKAY)]  # the out-of-range write wrote nothing
