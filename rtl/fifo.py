"""A small first-in first-out queue held in block RAM.

The DMA engine's two queues (write beats on their way to the W channel, addresses of posted
writes awaiting their response) are a few entries deep but 64 to 145 bits wide. In distributed
RAM they cost a LUT-RAM cell per 4 bits (about 210 LUT4 on the ECP5 for both); a block RAM is
the resource this design has spare (issue 5: area). Amaranth's ``SyncFIFOBuffered`` has the
right structure (a synchronous read port, then the output register that block RAM provides)
but lets the synthesis tool choose the memory, which for a few entries is distributed RAM;
:class:`BlockRAMFIFO` is the same queue with its memory marked ``ram_style = "block"`` for
Yosys (other tools read the attribute alike, or ignore it).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BlockRAMFIFO"]


class BlockRAMFIFO(wiring.Component):
    """First-in first-out queue of ``depth`` entries of ``width`` bits in block RAM.

    The interface is :class:`amaranth.lib.fifo.SyncFIFOBuffered`'s: ``w_en`` / ``w_rdy`` /
    ``w_data``, ``r_en`` / ``r_rdy`` / ``r_data`` (first-word fall-through), ``level``. An
    entry written into an empty queue is readable two cycles later (one for the memory's read,
    one to present it).

    Parameters
    ----------
    width : int
        Bits of an entry.
    depth : int
        Entries, at least 2 (the memory holds ``depth - 1``, the output register one).
    """

    def __init__(self, *, width: int, depth: int):
        if not isinstance(width, int) or width < 1:
            raise TypeError(f"Width must be a positive integer, not {width!r}")
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"Depth must be an integer of at least 2, not {depth!r}")
        self._width = width
        self._depth = depth
        super().__init__({
            "w_en": In(1), "w_rdy": Out(1), "w_data": In(width),
            "r_en": In(1), "r_rdy": Out(1), "r_data": Out(width),
            "level": Out(range(depth + 1)),
        })

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        inner_depth = self._depth - 1
        storage = m.submodules.storage = memory.Memory(
            shape=self._width, depth=inner_depth, init=[], attrs={"ram_style": "block"})
        w_port = storage.write_port()
        r_port = storage.read_port(domain="sync")
        produce = Signal(range(inner_depth))
        consume = Signal(range(inner_depth))
        inner_level = Signal(range(inner_depth + 1))

        def incr(ptr):
            return Mux(ptr == inner_depth - 1, 0, ptr + 1)

        do_write = self.w_en & self.w_rdy
        do_inner_read = (inner_level != 0) & (~self.r_rdy | self.r_en)
        m.d.comb += [
            self.w_rdy.eq(inner_level != inner_depth),
            w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(do_write),
            r_port.addr.eq(consume), r_port.en.eq(do_inner_read), self.r_data.eq(r_port.data),
            self.level.eq(inner_level + self.r_rdy),
        ]
        with m.If(do_write):
            m.d.sync += produce.eq(incr(produce))
        with m.If(do_inner_read):
            m.d.sync += consume.eq(incr(consume))
        with m.If(do_write & ~do_inner_read):
            m.d.sync += inner_level.eq(inner_level + 1)
        with m.Elif(do_inner_read & ~do_write):
            m.d.sync += inner_level.eq(inner_level - 1)
        with m.If(do_inner_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m

