"""AXI4 and AXI4-Lite signatures (AMBA AXI and ACE Protocol Specification, IHI 0022).

Port names follow the specification (``awaddr``, ``wstrb``, ...). When a component with a port
``m_axi`` of :class:`AXI4Signature` is converted to Verilog, Amaranth flattens the members to
``m_axi__awaddr`` and so on, which cocotbext-axi binds with ``AxiBus.from_prefix(dut, "m_axi_")``
(the prefix carries one of the two underscores).
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "BURST_INCR",
    "RESP_DECERR",
    "RESP_OKAY",
    "RESP_SLVERR",
    "AXI4LiteSignature",
    "AXI4Signature",
]

BURST_INCR = 0b01
RESP_OKAY = 0b00
RESP_EXOKAY = 0b01
RESP_SLVERR = 0b10
RESP_DECERR = 0b11


class _AxiSignature(wiring.Signature):
    """What the two signatures share: their widths, as properties, in ``==`` and ``repr``."""

    def __init__(self, members: dict, **widths: int):
        self._widths = widths
        super().__init__(members)

    addr_width = property(lambda self: self._widths["addr_width"])
    data_width = property(lambda self: self._widths["data_width"])

    def __eq__(self, other):
        return type(other) is type(self) and other._widths == self._widths

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self._widths.items())})"


class AXI4LiteSignature(_AxiSignature):
    """AXI4-Lite, from the manager's point of view (use ``.flip()`` for a subordinate port).

    Parameters
    ----------
    addr_width : int
        Width of ``awaddr``/``araddr``.
    data_width : int
        32 or 64.
    """

    def __init__(self, *, addr_width: int, data_width: int = 32):
        if not isinstance(addr_width, int) or addr_width < 1:
            raise TypeError(f"Address width must be a positive integer, not {addr_width!r}")
        if data_width not in (32, 64):
            raise ValueError(f"Data width must be 32 or 64, not {data_width!r}")
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        }, addr_width=addr_width, data_width=data_width)


class AXI4Signature(_AxiSignature):
    """AXI4 (full), from the manager's point of view, with every signal cocotbext-axi's
    ``AxiBus`` requires (the ID signals included) plus ``lock``, ``cache`` and ``prot``.
    """

    def __init__(self, *, addr_width: int = 64, data_width: int = 64, id_width: int = 4):
        if data_width not in (32, 64, 128):
            raise ValueError(f"Data width must be 32, 64 or 128, not {data_width!r}")
        if not isinstance(id_width, int) or id_width < 1:
            raise TypeError(f"ID width must be a positive integer, not {id_width!r}")
        members = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1),
                f"{ch}cache": Out(4), f"{ch}prot": Out(3), f"{ch}valid": Out(1),
                f"{ch}ready": In(1),
            })
        members.update({
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members, addr_width=addr_width, data_width=data_width,
                         id_width=id_width)

    id_width = property(lambda self: self._widths["id_width"])
