"""Guest memory for the board: block RAM behind an AXI4 subordinate, plus a host port.

The device's ``m_axi`` reaches it through :class:`AxiRam`; the UART bridge reads and writes it
through ``host_*``, in the cycles when no AXI burst uses the block RAM. Physical addresses
``[0, mem_bytes)`` are memory; a transaction that is not entirely inside gets DECERR on every
beat and writes nothing, like the reference model's ``models.memory.GuestMemory``
(docs/architecture.md, "Bus transactions").
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from ..axi import RESP_DECERR, RESP_OKAY, AXI4Signature
from ..params import check_data_width

__all__ = ["AxiRam", "check_mem_bytes", "host_port"]


def check_mem_bytes(mem_bytes) -> int:
    if (not isinstance(mem_bytes, int) or isinstance(mem_bytes, bool) or mem_bytes < 4096
            or mem_bytes & (mem_bytes - 1)):
        raise ValueError(f"Guest memory size must be a power of two of at least 4096 bytes, "
                         f"not {mem_bytes!r}")
    return mem_bytes


def host_port(prefix: str, depth: int, data_width: int, *, flip: bool = False) -> dict:
    """The members of the host port, as :class:`AxiRam` has them (``flip``: as the bridge
    that drives it has them): ``{prefix}_addr`` (a word), ``_wdata`` and ``_wen`` (a write of
    the lanes set), ``_ready`` (the access is done), ``_rdata`` (valid in the next cycle)."""
    i, o = (Out, In) if flip else (In, Out)
    return {f"{prefix}_addr": i(range(depth)), f"{prefix}_rdata": o(data_width),
            f"{prefix}_wdata": i(data_width), f"{prefix}_wen": i(data_width // 8),
            f"{prefix}_ready": o(1)}


class AxiRam(wiring.Component):
    """``mem_bytes`` of zero-initialised block RAM.

    Parameters
    ----------
    mem_bytes : int
        Size, a power of two of at least 4 KiB.
    data_width : int
        32, 64 or 128, the AXI data width and the RAM word.
    id_width : int
        AXI ID width (IDs are echoed).

    Members
    -------
    axi : In(AXI4Signature(addr_width=64, data_width=data_width))
        Subordinate. INCR bursts of full-width beats (``awsize``/``arsize`` are not checked),
        one transaction at a time; writes honour ``wstrb``. A read returns one beat per cycle
        (the first two cycles after the address handshake; a stalled beat is held); a write
        takes one beat per cycle and answers one cycle after ``wlast``. The first beat of an
        unaligned address is the whole word that holds it.
    host_addr, host_rdata, host_wdata, host_wen, host_ready : the host's access
        In a cycle with ``host_ready`` high (no burst is using the RAM), ``host_wen`` writes
        the enabled bytes of ``host_wdata`` at ``host_addr`` and the word at ``host_addr`` is
        read: ``host_rdata`` holds it in the next cycle only. A cycle without ``host_ready``
        does nothing for the host.
    """

    def __init__(self, *, mem_bytes: int = 65536, data_width: int = 64, id_width: int = 4):
        check_mem_bytes(mem_bytes)
        self._data_width = check_data_width(data_width)
        self._depth = mem_bytes // (data_width // 8)
        super().__init__({
            "axi": In(AXI4Signature(addr_width=64, data_width=data_width, id_width=id_width)),
            **host_port("host", self._depth, data_width),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self._data_width // 8
        lane_bits = exact_log2(lanes)
        word_bits = ceil_log2(self._depth)
        axi = self.axi

        m.submodules.ram = ram = memory.Memory(shape=unsigned(self._data_width),
                                               depth=self._depth, init=[])
        # One read and one write port (simple dual-port block RAM, PDPW16KD on the ECP5),
        # shared by the AXI side and the host: the host's accesses are a few bytes now and
        # then, so they take the ports only while no burst uses them. (Two read-write ports
        # would need true dual-port RAM with defined cross-port collisions, which block RAM
        # does not give.)
        rd = ram.read_port()
        wr = ram.write_port(granularity=8)
        m.d.comb += rd.en.eq(1)
        ptr = Signal(word_bits)  # word address of the next beat
        held = Signal(word_bits)  # word address of the read beat on offer
        a_addr = Signal(word_bits)  # port A's one address
        left = Signal(9)  # read beats still to fetch
        tid = Signal.like(axi.arid)
        bad = Signal()  # the transaction is not entirely inside memory
        rvalid = Signal()
        rlast = Signal()
        # Both ports read every cycle (no read enable, which block RAM could only share with
        # the write enable): a stalled read beat is held by reading its word again.
        m.d.comb += [
            a_addr.eq(ptr),
            # the host's access: performed in a cycle of no burst, read data a cycle later
            self.host_ready.eq(1), rd.addr.eq(self.host_addr), self.host_rdata.eq(rd.data),
            wr.addr.eq(self.host_addr), wr.data.eq(self.host_wdata), wr.en.eq(self.host_wen),
        ]

        def inside(addr, length):
            # every beat's word inside: the memory size is a multiple of the word size
            return ((addr[lane_bits + word_bits:] == 0)
                    & (addr[lane_bits:lane_bits + word_bits] + length < self._depth))

        m.d.comb += [
            axi.rdata.eq(rd.data), axi.rvalid.eq(rvalid), axi.rlast.eq(rlast),
            axi.rid.eq(tid), axi.rresp.eq(RESP_OKAY),
            axi.bid.eq(tid), axi.bresp.eq(RESP_OKAY),
        ]
        with m.If(bad):
            m.d.comb += [axi.rdata.eq(0), axi.rresp.eq(RESP_DECERR), axi.bresp.eq(RESP_DECERR)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [axi.awready.eq(1), axi.arready.eq(~axi.awvalid)]
                with m.If(axi.awvalid):
                    m.d.sync += [ptr.eq(axi.awaddr[lane_bits:]), tid.eq(axi.awid),
                                 bad.eq(~inside(axi.awaddr, axi.awlen))]
                    m.next = "WRITE"
                with m.Elif(axi.arvalid):
                    m.d.sync += [ptr.eq(axi.araddr[lane_bits:]), tid.eq(axi.arid),
                                 bad.eq(~inside(axi.araddr, axi.arlen)),
                                 left.eq(axi.arlen + 1)]
                    m.next = "READ"
            with m.State("WRITE"):
                m.d.comb += [axi.wready.eq(1), self.host_ready.eq(0), wr.addr.eq(ptr),
                             wr.data.eq(axi.wdata), wr.en.eq(0)]
                with m.If(axi.wvalid):
                    m.d.comb += wr.en.eq(axi.wstrb & ~bad.replicate(lanes))
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(axi.wlast):
                        m.next = "BRESP"
            with m.State("BRESP"):
                m.d.comb += axi.bvalid.eq(1)
                with m.If(axi.bready):
                    m.next = "IDLE"
            with m.State("READ"):
                # The RAM output is the beat on offer: the next word is fetched as the current
                # one is taken, and while the manager stalls the same word is read again.
                advance = ~rvalid | axi.rready
                m.d.comb += [self.host_ready.eq(0), rd.addr.eq(a_addr), wr.en.eq(0)]
                with m.If(advance):
                    with m.If(left != 0):
                        m.d.sync += [ptr.eq(ptr + 1), held.eq(ptr), left.eq(left - 1),
                                     rvalid.eq(1), rlast.eq(left == 1)]
                    with m.Else():
                        m.d.sync += [rvalid.eq(0), rlast.eq(0)]
                        m.next = "IDLE"
                with m.Else():
                    m.d.comb += a_addr.eq(held)
        return m
