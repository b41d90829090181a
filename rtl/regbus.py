"""AXI4-Lite subordinate that turns bus accesses into single-cycle register strobes.

A register file behind :class:`AXI4LiteRegBridge` sees one access at a time on its
:class:`RegBusSignature` port: a write is one cycle of ``w_en`` with ``addr``/``w_data``/
``w_strb``; a read is one cycle of ``r_en`` with ``addr``, and the register file must present
``r_data`` on the next cycle (one cycle of read latency, which lets it read block RAM).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import RESP_OKAY, AXI4LiteSignature

__all__ = ["AXI4LiteRegBridge", "RegBusSignature"]


class RegBusSignature(wiring.Signature):
    """Register strobes, from the bridge's (manager's) point of view."""

    def __init__(self, addr_width: int):
        self._addr_width = addr_width
        super().__init__({
            "addr": Out(addr_width),
            "w_en": Out(1), "w_data": Out(32), "w_strb": Out(4),
            "r_en": Out(1), "r_data": In(32),
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

    One access in flight. A write is accepted when ``awvalid`` and ``wvalid`` are both high
    (both channels handshake in that cycle); writes win over a read requested in the same cycle.
    Every response is OKAY: unmapped offsets read 0 and ignore writes (docs/architecture.md).

    Latency: write response 1 cycle after the handshake; read data 2 cycles after ``arvalid``
    is accepted.
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
        rdata = Signal(32)

        m.d.comb += [axi.bresp.eq(RESP_OKAY), axi.rresp.eq(RESP_OKAY), axi.rdata.eq(rdata)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(axi.awvalid & axi.wvalid):
                    m.d.comb += [
                        axi.awready.eq(1), axi.wready.eq(1),
                        reg.addr.eq(axi.awaddr), reg.w_en.eq(1),
                        reg.w_data.eq(axi.wdata), reg.w_strb.eq(axi.wstrb),
                    ]
                    m.next = "BRESP"
                with m.Elif(axi.arvalid):
                    m.d.comb += [axi.arready.eq(1), reg.addr.eq(axi.araddr), reg.r_en.eq(1)]
                    m.next = "RDATA"
            with m.State("BRESP"):
                m.d.comb += axi.bvalid.eq(1)
                with m.If(axi.bready):
                    m.next = "IDLE"
            with m.State("RDATA"):
                m.d.sync += rdata.eq(reg.r_data)
                m.next = "RRESP"
            with m.State("RRESP"):
                m.d.comb += axi.rvalid.eq(1)
                with m.If(axi.rready):
                    m.next = "IDLE"
        return m
