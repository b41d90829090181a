"""8N1 UART receiver and transmitter with an integer clock divider.

The host link needs nothing more: 8 data bits, no parity, one stop bit, LSB first. The bit time
is ``clks_per_bit`` cycles of the ``sync`` domain (25 at 25 MHz for 1 Mbaud on the ULX3S, 4 in
simulation), so the divider must be exact to within the UART's tolerance: the receiver samples
each bit once, in its middle, counted from the falling edge of the start bit.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "check_clks_per_bit"]


def check_clks_per_bit(clks_per_bit) -> int:
    if not isinstance(clks_per_bit, int) or isinstance(clks_per_bit, bool) or clks_per_bit < 4:
        raise ValueError(f"Clocks per bit must be an integer of at least 4, "
                         f"not {clks_per_bit!r}")
    return clks_per_bit


class _Uart(wiring.Component):
    def __init__(self, clks_per_bit: int, members: dict):
        self._clks_per_bit = check_clks_per_bit(clks_per_bit)
        super().__init__(members)


class UartRx(_Uart):
    """UART receiver of ``clks_per_bit`` (at least 4) cycles a bit.

    Members
    -------
    rx : In(1)
        The serial line (asynchronous: synchronised by two flip-flops here).
    data : Out(stream.Signature(8, always_ready=True))
        One byte per ``valid`` pulse, ``5.5 * clks_per_bit + 3`` cycles after the start
        bit's falling edge (mid stop bit). There is no backpressure: put a FIFO behind it.
    frame_error : Out(1)
        Pulses when a stop bit reads 0 (the byte is dropped).
    """

    def __init__(self, clks_per_bit: int):
        super().__init__(clks_per_bit, {
            "rx": In(1, init=1),
            "data": Out(stream.Signature(8, always_ready=True)),
            "frame_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cpb = self._clks_per_bit
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(cpb))
        bit = Signal(range(10))
        shreg = Signal(9)  # 8 data bits and the stop bit, shifted in from the top

        m.d.sync += self.data.valid.eq(0)
        m.d.sync += self.frame_error.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(cpb // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                # middle of the start bit: still low, or it was a glitch
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(cpb - 1), bit.eq(0)]
                    m.next = "BITS"
            with m.State("BITS"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(cpb - 1), bit.eq(bit + 1),
                                 shreg.eq(Cat(shreg[1:], rx))]
                    with m.If(bit == 8):  # the stop bit was just sampled
                        with m.If(rx):
                            m.d.sync += [self.data.payload.eq(shreg[1:]),
                                         self.data.valid.eq(1)]
                        with m.Else():
                            m.d.sync += self.frame_error.eq(1)
                        m.next = "IDLE"
        return m


class UartTx(_Uart):
    """UART transmitter of ``clks_per_bit`` (at least 4) cycles a bit.

    Members
    -------
    data : In(stream.Signature(8))
        A byte is taken when ``valid & ready``; ``ready`` is high while the line is idle, so
        back-to-back bytes leave one stop bit between them.
    tx : Out(1)
        The serial line, idle high, driven from a flip-flop.
    """

    def __init__(self, clks_per_bit: int):
        super().__init__(clks_per_bit, {
            "data": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        cpb = self._clks_per_bit
        timer = Signal(range(cpb))
        left = Signal(range(11))  # bits still to send, the current one included
        shreg = Signal(10, init=0x3FF)

        m.d.comb += self.data.ready.eq(left == 0)
        m.d.sync += self.tx.eq(shreg[0])
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [shreg.eq(Cat(0, self.data.payload, 1)), left.eq(10),
                         timer.eq(cpb - 1)]
        with m.Elif(left != 0):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [timer.eq(cpb - 1), left.eq(left - 1),
                             shreg.eq(Cat(shreg[1:], 1))]
        return m
