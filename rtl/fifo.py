"""A small first-in first-out queue held in block RAM.

The DMA engine's write beats on their way to the W channel are a queue a few entries deep but
up to 145 bits wide. In distributed RAM it would cost a LUT-RAM cell per 4 bits; a block RAM is
the resource this design has spare (issue 5: area). (The addresses of posted writes, once a
second such queue, are a log of their own: ``rtl/dma.py``, ``posted_responses``.)
Amaranth's ``SyncFIFOBuffered`` has the right structure (a synchronous read port, then the
output register that block RAM provides) but lets the synthesis tool choose the memory, which
for a few entries is distributed RAM;
:class:`BlockRAMFIFO` is that queue with its memory marked ``ram_style = "block"`` for Yosys
(other tools read the attribute alike, or ignore it).
"""

from __future__ import annotations

from amaranth.lib.fifo import SyncFIFOBuffered

__all__ = ["BlockRAMFIFO"]


class BlockRAMFIFO(SyncFIFOBuffered):
    """:class:`amaranth.lib.fifo.SyncFIFOBuffered` of ``depth`` entries of ``width`` bits,
    its memory in block RAM. An entry written into an empty queue is readable two cycles later
    (one for the memory's read, one to present it).

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
        # does not fails here, at elaboration, rather than silently using distributed RAM.
        m.submodules.storage.attrs["ram_style"] = "block"
        return m
