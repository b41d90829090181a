"""Preparing the device's RTLIL for FPGA synthesis with Yosys (``make board``,
``make fpga-report``).

Amaranth marks every synchronous memory read port as returning the *old* row when a write port
writes the row it reads in the same cycle (``COLLISION_X_MASK = 0`` in RTLIL). A block RAM whose
ports are separate (ECP5 DP16KD, port A writing, port B reading) gives no such guarantee, so
Yosys builds the old value itself: a register of the write data and address beside every such
read port, an address comparator and a data multiplexer, and for a table with two read ports
a second copy of the block RAM. On the device that is 167 LUT4 and 4 DP16KD in the
translation unit alone.

In this design no such collision is ever observed, so :func:`relax_collisions` tells Yosys the
value read in a colliding cycle is undefined (``COLLISION_X_MASK`` all ones):

* translation unit, lookup port: a lookup whose table read meets a write to the same entry is
  marked stale (``resp_stale``) and is looked up again before any burst uses it
  (``rtl/translate.py``); the privileged read port: the register bridge makes one access at a
  time, so a cycle that writes the table never reads it;
* descriptor cache (``rtl/engine.py``): written only in DESC_CHECK, and read only when a state
  fetches an entry into the prefetch register, which DESC_CHECK never does;
* RAM disk (``rtl/ramdisk.py``): the DMA engine reads it only for a write command and writes it
  only for a read command; the two are never in flight together.
* posted-write log (``rtl/dma.py``, ``posted_responses``): written every cycle, at the free
  slot after the newest address; its read port reads the oldest address, which is that free
  slot only when no response is outstanding, and a response comes two or more cycles after
  its address was written.
* W FIFO (``rtl/fifo.py``, Amaranth's ``SyncFIFOBuffered``): it reads the oldest slot only
  while the queue holds one, and writes the next free slot only while it is not full; the two
  slots are one only when the queue is empty or full.
* IOTLB (``rtl/iotlb.py``): written only in a command's WRITE step, while ``active`` makes
  every lookup's answer stale (looked up again); a command reads its sets only before it.
* indirect table buffer (``rtl/engine.py``, a RAM disk without an image): written by the DMA
  engine's table read, read by the chain walker after that command has ended.

(Written down after 921ed6d; the W FIFO's, the IOTLB's and the table buffer's ports were relaxed
before with no reason given here.)

Simulation (``make verilog``, the cocotb benches) keeps Amaranth's old-data semantics; only the
Yosys synthesis flows use the relaxed netlist (``make board`` relaxes the device's memories
only: ``within``). Asynchronous read ports and transparent ports are left as they are.
"""

from __future__ import annotations

import re

__all__ = ["relax_collisions"]

_CELL = re.compile(r"(  cell \$memrd_v2 .*?\n)(?=  end\n)", re.S)


_MODULE = re.compile(r"^module (\S+)\n.*?^end\n", re.S | re.M)


def relax_collisions(il: str, *, within: str | None = None) -> str:
    """``il`` with every synchronous, non-transparent memory read port's collisions undefined;
    with ``within``, only in the modules whose RTLIL name starts with it (``make board``: the
    device, ``\\ulx3s.top.device``; the board's guest memory and UART bridge keep their
    semantics, which the reasons above do not cover)."""
    if within is not None:
        return _MODULE.sub(lambda mo: relax_collisions(mo.group(0))
                           if mo.group(1).startswith(within) else mo.group(0), il)

    def fix(mo: re.Match) -> str:
        cell = mo.group(1)
        if not re.search(r"parameter \\CLK_ENABLE 1\n", cell):
            return cell
        trans = re.search(r"parameter \\TRANSPARENCY_MASK (\d+)'([01]+)\n", cell)
        if trans is None or "1" in trans.group(2):
            return cell
        width = int(trans.group(1))
        return re.sub(r"parameter \\COLLISION_X_MASK \d+'[01]+\n",
                      f"parameter \\\\COLLISION_X_MASK {width}'{'1' * width}\n", cell)

    return _CELL.sub(fix, il)
