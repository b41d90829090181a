"""``BoardTop``: the device, its guest memory and the UART host link, without board pins.

::

    uart_rx --> UartRx --> FIFO --> LinkBridge --> UartTx --> uart_tx
                                     |  |  |  \\__ dev_reset, irq
                              s_axil |  | s_hv
                                     v  v       host port
                          VirtioBlkHandle ---------------------+
                                 | m_axi (AXI4)                |
                                 v                             v
                          AxiRam: guest memory in block RAM (between bursts)

The RAM disk is inside the device. ``rtl.board.build`` puts this on the ULX3S's clock and FTDI
serial port; ``tb/test_board.py`` simulates it as is, driving ``uart_rx``/``uart_tx``.
"""

from __future__ import annotations

from amaranth import Module, ResetInserter, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from models import spec

from ..hvregs import hv_addr_width
from ..mmio import MMIO_ADDR_WIDTH
from ..top import VirtioBlkHandle
from .bridge import LinkBridge
from .memory import AxiRam, check_mem_bytes
from .uart import UartRx, UartTx, check_clks_per_bit

__all__ = ["BoardTop"]

DEFAULT_MEM_BYTES = 65536
RX_FIFO_DEPTH = 64
POR_CYCLES = 4  # cycles the device is held in reset after configuration


class BoardTop(wiring.Component):
    """The board's logic.

    Parameters
    ----------
    data_width, entries, queue_num_max, disk_bytes : int
        The device's parameters (:class:`rtl.top.VirtioBlkHandle`).
    mem_bytes : int
        Guest memory (block RAM) size, a power of two (default 64 KiB).
    clk_hz : int
        The clock frequency (reported to the host by INFO; sets the default frame timeout).
    clks_per_bit : int
        UART bit time in clock cycles (25 for 1 Mbaud at 25 MHz).
    frame_timeout : int or None
        Cycles of silence that drop a partial request (default: 20 ms).
    translation : bool
        ``False`` builds the GPA-only device (:class:`rtl.top.VirtioBlkHandle`).

    Members
    -------
    uart_rx : In(1)
        Serial data from the host (idle high).
    uart_tx : Out(1)
        Serial data to the host.
    irq : Out(1)
        The device's interrupt line (an LED on the board).
    activity : Out(1)
        Toggles on every byte received (an LED on the board).
    """

    def __init__(self, *, data_width: int = spec.DEFAULT_DATA_WIDTH,
                 entries: int = spec.DEFAULT_ENTRIES,
                 queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES,
                 mem_bytes: int = DEFAULT_MEM_BYTES, clk_hz: int = 25_000_000,
                 clks_per_bit: int = 25, frame_timeout: int | None = None,
                 translation: bool = True):
        self.mem_bytes = check_mem_bytes(mem_bytes)
        if not isinstance(clk_hz, int) or clk_hz <= 0:
            raise ValueError(f"Clock frequency must be a positive integer, not {clk_hz!r}")
        self.clk_hz = clk_hz
        self.clks_per_bit = check_clks_per_bit(clks_per_bit)
        self.device = VirtioBlkHandle(data_width=data_width, entries=entries,
                                      queue_num_max=queue_num_max, disk_bytes=disk_bytes,
                                      translation=translation)
        self.frame_timeout = clk_hz // 50 if frame_timeout is None else frame_timeout
        self.data_width = data_width
        self.entries = entries
        super().__init__({
            "uart_rx": In(1, init=1),
            "uart_tx": Out(1, init=1),
            "irq": Out(1),
            "activity": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        dev_reset = Signal()
        dev = self.device
        # The link's RESET command resets the device alone: the bridge must keep running to
        # answer, and guest memory (block RAM) is not reset anyway.
        m.submodules.device = ResetInserter({"sync": dev_reset})(dev)
        # Power-on reset of the device: on an ECP5 the sync domain is reset-less (the global
        # set/reset loads each flip-flop's initial value), but Yosys drops the initial value of
        # a state register it re-encodes one-hot (rtl/params.py), so the device is held in
        # reset for its first cycles, as a system would hold ARESETn.
        por = Signal(range(POR_CYCLES + 1), init=POR_CYCLES)
        with m.If(por != 0):
            m.d.sync += por.eq(por - 1)
        m.submodules.mem = mem = AxiRam(mem_bytes=self.mem_bytes, data_width=self.data_width)
        m.submodules.uart_rx = rx = UartRx(self.clks_per_bit)
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=RX_FIFO_DEPTH)
        m.submodules.uart_tx = tx = UartTx(self.clks_per_bit)
        m.submodules.bridge = bridge = LinkBridge(
            guest_addr_width=MMIO_ADDR_WIDTH, hv_addr_width=hv_addr_width(self.entries),
            mem_bytes=self.mem_bytes, data_width=self.data_width, clk_hz=self.clk_hz,
            clks_per_bit=self.clks_per_bit, frame_timeout=self.frame_timeout)

        wiring.connect(m, dev.m_axi, mem.axi)
        wiring.connect(m, bridge.guest, dev.s_axil)
        wiring.connect(m, bridge.hv, dev.s_hv)
        wiring.connect(m, bridge.tx, tx.data)
        activity = Signal()
        with m.If(rx.data.valid):
            m.d.sync += activity.eq(~activity)
        m.d.comb += [
            rx.rx.eq(self.uart_rx),
            self.uart_tx.eq(tx.tx),
            rx_fifo.w_data.eq(rx.data.payload),
            rx_fifo.w_en.eq(rx.data.valid),
            bridge.rx.payload.eq(rx_fifo.r_data),
            bridge.rx.valid.eq(rx_fifo.r_rdy),
            rx_fifo.r_en.eq(bridge.rx.ready),
            mem.host_addr.eq(bridge.mem_addr),
            bridge.mem_rdata.eq(mem.host_rdata),
            mem.host_wdata.eq(bridge.mem_wdata),
            mem.host_wen.eq(bridge.mem_wen),
            bridge.mem_ready.eq(mem.host_ready),
            bridge.irq.eq(dev.irq),
            dev_reset.eq(bridge.dev_reset | (por != 0)),
            self.irq.eq(dev.irq),
            self.activity.eq(activity),
        ]
        return m
