"""The DMA engine's W FIFO: a small first-in first-out queue held in distributed RAM.

The DMA engine's write beats on their way to the W channel are a queue a few entries deep
(``W_FIFO_DEPTH``, 8) and up to 145 bits wide. Amaranth's ``SyncFIFOBuffered`` has the right
structure (a synchronous read port, then an output register); :class:`LutRamFIFO` is that queue
with its memory marked ``ram_style = "distributed"`` for Yosys (other tools read the attribute
alike, or ignore it), so that the choice does not depend on the tool's cost model.

Fmax (issues 16 and 17): it was block RAM before (issue 5: area; a LUT-RAM cell per 4
bits). But a block RAM sits where the block RAM columns are, and the write path's lane rotator
ends at its data inputs: that route was the worst path of two or three seeds of ten. In LUT
RAM the queue sits by the rotator, for 175 LUT4 more at 64 x 1024 (docs/board.md). (The
addresses of posted writes, once a second such queue, are a log of their own: ``rtl/dma.py``,
``posted_responses``.)
"""

from __future__ import annotations

from amaranth.lib.fifo import SyncFIFOBuffered

__all__ = ["LutRamFIFO"]


class LutRamFIFO(SyncFIFOBuffered):
    """:class:`amaranth.lib.fifo.SyncFIFOBuffered` of ``depth`` entries of ``width`` bits,
    its memory in distributed RAM. An entry written into an empty queue is readable two cycles
    later (one for the memory's read, one to present it).

    ``depth`` must be at least 2: the memory holds ``depth - 1`` entries, the output register
    one (``SyncFIFOBuffered`` of depth 1 is a register, with no memory to place).
    """

    def __init__(self, *, width: int, depth: int):
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"Depth must be an integer of at least 2, not {depth!r}")
        super().__init__(width=width, depth=depth)

    def elaborate(self, platform):
        m = super().elaborate(platform)
        # SyncFIFOBuffered names its memory "storage" (Amaranth 0.5); a later version that
        # does not fails here, at elaboration, rather than silently letting the tool choose.
        m.submodules.storage.attrs["ram_style"] = "distributed"
        return m
