"""AXI4-Lite subordinate that turns bus accesses into single-cycle register strobes.

A register file behind :class:`AXI4LiteRegBridge` sees one access at a time on its
:class:`RegBusSignature` port: a write is one cycle of ``w_en`` with ``addr``/``w_data``/
``w_strb``, announced by one cycle of ``w_next`` with the same values just before it; a read is
one cycle of ``r_en`` with ``addr``, and the register file must present ``r_data`` on the next
cycle (one cycle of read latency, which lets it read block RAM), or raise ``r_wait`` in that
cycle and present ``r_data`` in the one after (two cycles: the block RAM's word registered
before it goes anywhere, Fmax).

``w_next`` lets a register file decode a write a cycle ahead, so that what the write does in its
own cycle comes from flip-flops: the device reset (Status = 0) stops the DMA engine in the cycle
the write is accepted, and that path would otherwise run from the bus through the address and
data decode into the DMA engine's address handshake (issue 5, Fmax).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import RESP_OKAY, AXI4LiteSignature

__all__ = ["AXI4LiteRegBridge", "RegBusSignature"]


class RegBusSignature(wiring.Signature):
    """Register strobes, from the bridge's (manager's) point of view. ``w_hold``: the register
    file cannot take a write now; the bridge does not start one while it is high. ``r_wait``,
    in the cycle after ``r_en``: ``r_data`` comes a cycle later."""

    def __init__(self, addr_width: int):
        self._addr_width = addr_width
        super().__init__({
            "addr": Out(addr_width),
            "w_next": Out(1), "w_en": Out(1), "w_data": Out(32), "w_strb": Out(4),
            "r_en": Out(1), "r_data": In(32), "w_hold": In(1), "r_wait": In(1),
        })

    @property
    def addr_width(self) -> int:
        return self._addr_width

    def __eq__(self, other):
        return isinstance(other, RegBusSignature) and self.addr_width == other.addr_width

    def __repr__(self):
        return f"RegBusSignature({self.addr_width})"


class AXI4LiteRegBridge(wiring.Component):
    """AXI4-Lite (32-bit data) to register strobes.

    One access in flight. A write is accepted (both channels handshake, ``w_en``) in the cycle
    after the first one in which the bridge is idle and sees ``awvalid`` and ``wvalid`` both
    high; that first cycle is ``w_next``, with the address and data the write will have (AXI
    holds them stable until the handshake). Writes win over a read requested in the same cycle.
    Every response is OKAY: unmapped offsets read 0 and ignore writes (docs/architecture.md).

    Latency: write accepted 1 cycle after both channels are valid, write response 1 cycle
    after the handshake; read data 2 cycles after ``arvalid`` is accepted, 3 if the register
    file asks for a cycle more (``r_wait``).
    """

    def __init__(self, addr_width: int):
        self._addr_width = addr_width
        super().__init__({
            "axi": In(AXI4LiteSignature(addr_width=addr_width)),
            "reg": Out(RegBusSignature(addr_width)),
        })

    def elaborate(self, platform):
        m = Module()
        axi, reg = self.axi, self.reg

        # One-hot state: every output below is a single gate of the state bits and the valids.
        idle = Signal(init=1)
        w_accept = Signal()  # the cycle after w_next: both channels handshake
        bresp = Signal()
        rdata_wait = Signal()  # the cycle after r_en: the register file presents r_data
        rdata_wait2 = Signal()  # ... or in this one, the next, if it raised r_wait
        r_take = Signal()
        rresp = Signal()
        rdata = Signal(32)

        write = Signal()  # w_next
        read = Signal()
        m.d.comb += [
            write.eq(idle & axi.awvalid & axi.wvalid & ~reg.w_hold),
            read.eq(idle & axi.arvalid & ~(axi.awvalid & axi.wvalid)),
            axi.awready.eq(w_accept), axi.wready.eq(w_accept), axi.arready.eq(read),
            reg.w_next.eq(write), reg.w_en.eq(w_accept), reg.r_en.eq(read),
            # addr, w_data and w_strb only count in a cycle with w_next, w_en or r_en, so they
            # are not gated with the state: the address is a single 2:1 mux and the write data
            # wires.
            reg.addr.eq(Mux(axi.awvalid & axi.wvalid, axi.awaddr, axi.araddr)),
            reg.w_data.eq(axi.wdata), reg.w_strb.eq(axi.wstrb),
            axi.bvalid.eq(bresp), axi.bresp.eq(RESP_OKAY),
            axi.rvalid.eq(rresp), axi.rresp.eq(RESP_OKAY), axi.rdata.eq(rdata),
        ]

        b_done = bresp & axi.bready
        r_done = rresp & axi.rready
        m.d.sync += [
            idle.eq((idle & ~write & ~read) | b_done | r_done),
            w_accept.eq(write),
            bresp.eq(w_accept | (bresp & ~axi.bready)),
            rdata_wait.eq(read),
            rdata_wait2.eq(rdata_wait & reg.r_wait),
            rresp.eq(r_take | (rresp & ~axi.rready)),
        ]
        m.d.comb += r_take.eq((rdata_wait & ~reg.r_wait) | rdata_wait2)
        with m.If(r_take):
            m.d.sync += rdata.eq(reg.r_data)
        return m
