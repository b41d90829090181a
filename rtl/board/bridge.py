"""The board's host link bridge: UART frames to register and guest-memory accesses.

The framing, commands and status bits are in :mod:`models.hostlink` (and docs/board.md).
The bridge executes one request at a time, in order, and only once its CRC has checked good;
every framed request gets exactly one response. A frame that stalls for ``frame_timeout``
cycles between two bytes is dropped without a response, so a host can always resynchronise by
waiting that long.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from models import hostlink as p

from ..axi import AXI4LiteSignature
from .memory import host_port

__all__ = ["LinkBridge", "crc16_byte"]


def crc16_byte(crc, byte):
    """CRC-16/CCITT-FALSE register after one more byte (MSB first), as an expression."""
    for i in reversed(range(8)):
        feedback = crc[15] ^ byte[i]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(feedback, 0x1021, 0)
    return crc


class LinkBridge(wiring.Component):
    """Executes link requests on the device's two register ports and on guest memory.

    Parameters
    ----------
    guest_addr_width, hv_addr_width : int
        Address widths of the device's ``s_axil`` and ``s_hv`` (offsets are truncated to them,
        as the device decodes them).
    mem_bytes, data_width : int
        Guest memory size and word width (the ``mem_*`` port is one word wide).
    clk_hz, clks_per_bit : int
        Reported by INFO (the host checks its baud rate against them).
    frame_timeout : int
        Cycles without a byte after which a partial request frame is dropped.

    Members
    -------
    rx : In(stream.Signature(8))
        Received bytes (from a FIFO behind the UART receiver).
    tx : Out(stream.Signature(8))
        Response bytes to the UART transmitter.
    guest, hv : Out(AXI4LiteSignature)
        Managers on the device's ``s_axil`` and ``s_hv``; one access at a time.
    mem_addr, mem_rdata, mem_wdata, mem_wen, mem_ready :
        The guest memory's host port (:class:`rtl.board.memory.AxiRam`): an access is done in
        a cycle with ``mem_ready``; read data is valid in the next cycle only.
    irq : In(1)
        The device's interrupt line (reported in every response, waited for by WAIT_IRQ).
    dev_reset : Out(1)
        High for :data:`models.hostlink.RESET_CYCLES` cycles on a RESET request.
    """

    def __init__(self, *, guest_addr_width: int, hv_addr_width: int, mem_bytes: int,
                 data_width: int, clk_hz: int, clks_per_bit: int,
                 frame_timeout: int = 1 << 20):
        if not isinstance(frame_timeout, int) or not 16 <= frame_timeout < 1 << 32:
            raise ValueError(f"Frame timeout must be an integer in [16, 2**32), "
                             f"not {frame_timeout!r}")
        self._mem_bytes = mem_bytes
        self._data_width = data_width
        self._frame_timeout = frame_timeout
        self._depth = mem_bytes // (data_width // 8)
        self._info = p.INFO.pack(p.INFO_MAGIC, mem_bytes, clk_hz, clks_per_bit, p.MEM_WRITE_MAX,
                                 data_width, 0)  # the INFO reply, fixed at build time
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "guest": Out(AXI4LiteSignature(addr_width=guest_addr_width)),
            "hv": Out(AXI4LiteSignature(addr_width=hv_addr_width)),
            **host_port("mem", self._depth, data_width, flip=True),
            "irq": In(1),
            "dev_reset": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self._data_width // 8
        lane_bits = exact_log2(lanes)
        word_bits = ceil_log2(self._depth)

        m.submodules.stage = stage = memory.Memory(shape=unsigned(8), depth=p.MEM_WRITE_MAX,
                                                   init=[])
        stage_wr = stage.write_port()
        stage_rd = stage.read_port()

        crc = Signal(16)
        hdr = Signal(56)  # cmd, addr, len as received (little endian: shifted in from the top)
        cmd, addr, length = hdr[0:8], hdr[8:40], hdr[40:56]
        cnt = Signal(16)
        timer = Signal(32)
        wdata = Signal(32)  # last four payload bytes, little endian
        status = Signal(8)
        rlen = Signal(16)
        shreg = Signal(8 * p.INFO_BYTES)  # register read data or INFO, sent LSB first
        ptr = Signal(32)  # guest memory byte address
        mem_byte = Signal(8)  # the guest memory byte being sent
        to_hv = Signal()  # register access on s_hv (else s_axil)
        aw_done = Signal()
        w_done = Signal()

        byte = self.rx.payload
        in_range = Signal()
        m.d.comb += [
            in_range.eq(addr + length <= self._mem_bytes),
            self.mem_addr.eq(ptr[lane_bits:lane_bits + word_bits]),
            self.mem_wdata.eq(stage_rd.data.replicate(lanes)),
            stage_wr.addr.eq(cnt), stage_wr.data.eq(byte),
            stage_rd.addr.eq(cnt),
        ]

        for bus in (self.guest, self.hv):
            m.d.comb += [bus.araddr.eq(addr), bus.awaddr.eq(addr), bus.wdata.eq(wdata),
                         bus.wstrb.eq(0xF)]

        def receive(next_state, last, on_byte=()):
            """A byte of a request: CRC it, count it, and watch the gap before the next."""
            m.d.comb += self.rx.ready.eq(1)
            with m.If(self.rx.valid):
                m.d.sync += [crc.eq(crc16_byte(crc, byte)), cnt.eq(cnt + 1), timer.eq(0),
                             *on_byte]
                with m.If(last):
                    m.d.sync += cnt.eq(0)
                    m.next = next_state
            with m.Elif(timer >= self._frame_timeout):
                m.next = "IDLE"
            with m.Else():
                m.d.sync += timer.eq(timer + 1)

        def respond(st=0, n=0):
            m.d.sync += [status.eq(st), rlen.eq(n), cnt.eq(0)]
            m.next = "R_SYNC"

        def send(value, next_state, update_crc=True):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
            with m.If(self.tx.ready):
                if update_crc:
                    m.d.sync += crc.eq(crc16_byte(crc, value))
                m.next = next_state

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid & (byte == p.SYNC_REQUEST)):
                    m.d.sync += [crc.eq(0xFFFF), cnt.eq(0), timer.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                receive("DECODE", cnt == p.HEADER.size - 1, [hdr.eq(Cat(hdr[8:], byte))])
            with m.State("DECODE"):
                is_write = ((cmd == p.CMD_GUEST_WRITE) | (cmd == p.CMD_HV_WRITE)
                            | (cmd == p.CMD_MEM_WRITE))
                m.d.sync += timer.eq(0)
                with m.If(is_write & (length != 0)):
                    m.next = "PAYLOAD"
                with m.Else():
                    m.next = "CRC"
            with m.State("PAYLOAD"):
                m.d.comb += stage_wr.en.eq(self.rx.valid & (cnt < p.MEM_WRITE_MAX))
                receive("CRC", cnt + 1 == length, [wdata.eq(Cat(wdata[8:], byte))])
            with m.State("CRC"):
                receive("EXECUTE", cnt == 1)
            with m.State("EXECUTE"):
                m.d.sync += [ptr.eq(addr), timer.eq(0), aw_done.eq(0), w_done.eq(0),
                             to_hv.eq((cmd == p.CMD_HV_READ) | (cmd == p.CMD_HV_WRITE))]
                with m.If(crc != 0):
                    respond(p.STATUS_ERR_CRC)
                with m.Else():
                    with m.Switch(cmd):
                        with m.Case(p.CMD_INFO):
                            m.d.sync += shreg.eq(int.from_bytes(self._info, "little"))
                            respond(0, p.INFO_BYTES)
                        with m.Case(p.CMD_GUEST_READ, p.CMD_HV_READ):
                            with m.If(length != 4):
                                respond(p.STATUS_ERR_CMD)
                            with m.Else():
                                m.next = "BUS_AR"
                        with m.Case(p.CMD_GUEST_WRITE, p.CMD_HV_WRITE):
                            with m.If(length != 4):
                                respond(p.STATUS_ERR_CMD)
                            with m.Else():
                                m.next = "BUS_W"
                        with m.Case(p.CMD_MEM_READ):
                            with m.If(~in_range):
                                respond(p.STATUS_ERR_RANGE)
                            with m.Else():
                                respond(0, length)
                        with m.Case(p.CMD_MEM_WRITE):
                            with m.If(length > p.MEM_WRITE_MAX):
                                respond(p.STATUS_ERR_CMD)
                            with m.Elif(~in_range):
                                respond(p.STATUS_ERR_RANGE)
                            with m.Elif(length == 0):
                                respond()
                            with m.Else():
                                m.d.sync += cnt.eq(0)
                                m.next = "COPY_READ"
                        with m.Case(p.CMD_WAIT_IRQ):
                            m.next = "WAIT_IRQ"
                        with m.Case(p.CMD_RESET):
                            m.next = "RESET"
                        with m.Default():
                            respond(p.STATUS_ERR_CMD)

            # -- register accesses (AXI4-Lite, one at a time) ------------------------------
            with m.State("BUS_AR"):
                m.d.comb += [self.hv.arvalid.eq(to_hv), self.guest.arvalid.eq(~to_hv)]
                with m.If(Mux(to_hv, self.hv.arready, self.guest.arready)):
                    m.next = "BUS_R"
            with m.State("BUS_R"):
                m.d.comb += [self.hv.rready.eq(to_hv), self.guest.rready.eq(~to_hv)]
                with m.If(to_hv & self.hv.rvalid):
                    m.d.sync += shreg.eq(self.hv.rdata)
                    respond(Mux(self.hv.rresp != 0, p.STATUS_ERR_BUS, 0), 4)
                with m.Elif(~to_hv & self.guest.rvalid):
                    m.d.sync += shreg.eq(self.guest.rdata)
                    respond(Mux(self.guest.rresp != 0, p.STATUS_ERR_BUS, 0), 4)
            with m.State("BUS_W"):
                m.d.comb += [
                    self.hv.awvalid.eq(to_hv & ~aw_done), self.hv.wvalid.eq(to_hv & ~w_done),
                    self.guest.awvalid.eq(~to_hv & ~aw_done),
                    self.guest.wvalid.eq(~to_hv & ~w_done),
                ]
                aw_ok = aw_done | Mux(to_hv, self.hv.awready, self.guest.awready)
                w_ok = w_done | Mux(to_hv, self.hv.wready, self.guest.wready)
                m.d.sync += [aw_done.eq(aw_ok), w_done.eq(w_ok)]
                with m.If(aw_ok & w_ok):
                    m.next = "BUS_B"
            with m.State("BUS_B"):
                m.d.comb += [self.hv.bready.eq(to_hv), self.guest.bready.eq(~to_hv)]
                with m.If(to_hv & self.hv.bvalid):
                    respond(Mux(self.hv.bresp != 0, p.STATUS_ERR_BUS, 0))
                with m.Elif(~to_hv & self.guest.bvalid):
                    respond(Mux(self.guest.bresp != 0, p.STATUS_ERR_BUS, 0))

            # -- guest memory writes: from the staging buffer, after the CRC checked -------
            with m.State("COPY_READ"):
                m.next = "COPY_WRITE"  # stage_rd.data is byte cnt in the next cycle
            with m.State("COPY_WRITE"):
                m.d.comb += self.mem_wen.eq(Const(1, lanes) << ptr[:lane_bits])
                with m.If(self.mem_ready):  # else a burst has the memory: try again
                    m.d.sync += [ptr.eq(ptr + 1), cnt.eq(cnt + 1)]
                    with m.If(cnt + 1 == length):
                        respond()
                    with m.Else():
                        m.next = "COPY_READ"

            with m.State("WAIT_IRQ"):
                with m.If(self.irq):
                    respond()
                with m.Elif(timer >= addr):
                    respond(p.STATUS_TIMEOUT)
                with m.Else():
                    m.d.sync += timer.eq(timer + 1)
            with m.State("RESET"):
                m.d.comb += self.dev_reset.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == p.RESET_CYCLES - 1):
                    respond()

            # -- the response ---------------------------------------------------------------
            mem_payload = cmd == p.CMD_MEM_READ
            with m.State("R_SYNC"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(p.SYNC_RESPONSE)]
                with m.If(self.tx.ready):
                    m.d.sync += crc.eq(0xFFFF)
                    m.next = "R_STATUS"
            with m.State("R_STATUS"):
                send(status | self.irq, "R_LEN0")
            with m.State("R_LEN0"):
                send(rlen[:8], "R_LEN1")
            with m.State("R_LEN1"):
                with m.If(rlen == 0):
                    send(rlen[8:], "R_CRC0")
                with m.Elif(mem_payload):
                    send(rlen[8:], "R_MEM")
                with m.Else():
                    send(rlen[8:], "R_DATA")
            with m.State("R_MEM"):
                with m.If(self.mem_ready):  # else a burst has the memory: try again
                    m.next = "R_MEM_DATA"
            with m.State("R_MEM_DATA"):
                m.d.sync += mem_byte.eq(self.mem_rdata.word_select(ptr[:lane_bits], 8))
                m.next = "R_DATA"
            with m.State("R_DATA"):
                value = Mux(mem_payload, mem_byte, shreg[:8])
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
                with m.If(self.tx.ready):
                    m.d.sync += [crc.eq(crc16_byte(crc, value)), cnt.eq(cnt + 1),
                                 ptr.eq(ptr + 1), shreg.eq(shreg[8:])]
                    with m.If(cnt + 1 == rlen):
                        m.next = "R_CRC0"
                    with m.Elif(mem_payload):
                        m.next = "R_MEM"
            with m.State("R_CRC0"):
                send(crc[8:], "R_CRC1", update_crc=False)
            with m.State("R_CRC1"):
                send(crc[:8], "IDLE", update_crc=False)
        return m
