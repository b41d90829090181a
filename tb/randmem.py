"""An AXI4 memory on ``m_axi`` with random timing, for the event-exact timing bench
(``tb/test_timing.py``, docs/timing.md "Every event").

Seeded (``random.Random(seed)``), per clock edge and per burst:

* ``arready``, ``awready``, ``wready`` are each low in a cycle with probability ``stall``,
  whether or not the device is valid (AXI lets a ready wait for valid, or not);
* a read burst's first beat is sampled ``2 + x`` edges after its address handshake, ``x``
  random in ``0 .. max_latency`` (bursts in order, behind each other); every later beat is held
  back a cycle with probability ``stall``; ``rvalid`` stays high until ``rready``;
* a write burst's response is sampled ``2 + x`` edges after the later of its address and its
  last data beat (which may come first), ``x`` random in ``0 .. max_latency`` (``bvalid`` held
  until ``bready``);
* a burst whose first address is on an error page (``errors``, :class:`models.memory.BusErrorPages`)
  or that is not inside ``mem`` gets an error response: SLVERR, or DECERR on the pages listed in
  ``decerr`` (every read beat carries it; reads deliver zeros, writes write nothing). A burst the
  device must not issue (not INCR of full beats inside one 4 KiB page) is refused the same way
  and recorded in ``refused``.

With ``stall=0`` and ``max_latency=0`` it answers as :class:`tb.detmem.DeterministicMemory`
at latency 1. It never sleeps (every edge draws its ready values), which costs simulation
speed but keeps the random stream a function of the seed and of what the device did.
"""

from __future__ import annotations

import random
from collections import deque

from cocotb.triggers import RisingEdge

from models.memory import BusErrorPages

from .detmem import OKAY, SLVERR, BusMemory, DeterministicMemory

DECERR = 3


class RandomMemory(DeterministicMemory):
    """An AXI4 subordinate with random latency and backpressure (see the module)."""

    def __init__(self, dut, mem: BusMemory, errors: BusErrorPages | None = None, *,
                 data_width: int, seed: int, stall: float = 0.3, max_latency: int = 12,
                 prefix: str = "m_axi__"):
        self.rng = random.Random(seed)
        self.stall = stall
        self.max_latency = max_latency
        self.decerr: set[int] = set()  # pages (addr >> 12) whose errors are DECERR
        super().__init__(dut, mem, errors, latency=0, data_width=data_width, prefix=prefix)
        self.s["bready"] = getattr(dut, prefix + "bready")

    def set_timing(self, seed: int, stall: float, max_latency: int) -> None:
        self.rng = random.Random(seed)
        self.stall, self.max_latency = stall, max_latency

    def _err(self, addr: int) -> int:
        return DECERR if addr >> 12 in self.decerr else SLVERR

    def _read_burst(self, addr: int, beats: int) -> tuple[bytes, int]:
        data, resp = super()._read_burst(addr, beats)
        return data, (self._err(addr) if resp != OKAY else OKAY)

    def _write_burst(self, addr: int, beats: int) -> int:
        resp = super()._write_burst(addr, beats)
        return self._err(addr) if resp != OKAY else OKAY

    def _ready(self) -> int:
        return int(self.rng.random() >= self.stall)

    async def _run(self) -> None:
        s = self.s
        for name in ("arready", "awready", "wready"):
            self._drive(name, 1)
        reads: deque[list] = deque()  # [first beat edge, addr, id, beats, sent, data, resp]
        r_free = 0
        held_r = held_b = False
        wbeats: list[tuple[int, int]] = []  # the W burst being received
        wbursts: deque[list[tuple[int, int]]] = deque()  # whole W bursts awaiting their AW
        while True:
            await RisingEdge(self.dut.clk)
            self.edge += 1
            e = self.edge
            if self._out["arready"] and self._u("arvalid"):
                addr, beats = self._address("ar")
                start = max(e + 1 + self.rng.randint(0, self.max_latency), r_free)
                reads.append([start, addr, self._u("arid"), beats, 0])
                r_free = start + beats
            if self._out["awready"] and self._u("awvalid"):
                self._aws.append((*self._address("aw"), self._u("awid")))
            if self._out["wready"] and self._u("wvalid"):
                wbeats.append((self._u("wdata"), self._u("wstrb")))
                if self._u("wlast"):  # (the data may come before its address)
                    wbursts.append(wbeats)
                    wbeats = []
            while wbursts and self._aws:  # a burst is written once its address and data are in
                addr, beats, bid = self._aws.popleft()
                self._wbeats = wbursts.popleft()
                resp = self._write_burst(addr, beats)
                self._bs.append((e + 1 + self.rng.randint(0, self.max_latency), resp, bid))
            # the R and B beats driven in the cycle that ended at this edge
            if held_r and self._u("rready"):
                burst = reads[0]
                burst[4] += 1
                if burst[4] == burst[3]:
                    reads.popleft()
                held_r = False
            if held_b and self._u("bready"):
                self._bs.popleft()
                held_b = False
            # drive for the next cycle
            for name in ("arready", "awready", "wready"):
                self._drive(name, self._ready())
            if not held_b:
                if self._bs and self._bs[0][0] <= e:
                    _, resp, bid = self._bs[0]
                    self._drive("bvalid", 1)
                    self._drive("bresp", resp)
                    self._drive("bid", bid)
                    held_b = True
                else:
                    self._drive("bvalid", 0)
            if not held_r:
                if reads and reads[0][0] <= e and (reads[0][4] == 0 or self._ready()):
                    burst = reads[0]
                    _, addr, rid, beats, sent = burst[:5]
                    if not sent:
                        burst[5:] = self._read_burst(addr, beats)
                    data, resp = burst[5:]
                    s["rdata"].value = int.from_bytes(
                        data[sent * self.lanes:(sent + 1) * self.lanes], "little")
                    self._drive("rresp", resp)
                    self._drive("rid", rid)
                    self._drive("rvalid", 1)
                    self._drive("rlast", int(sent + 1 == beats))
                    held_r = True
                else:
                    self._drive("rvalid", 0)
                    self._drive("rlast", 0)


def install(bench, *, seed: int, stall: float, max_latency: int) -> RandomMemory:
    """Replace the :class:`tb.detmem.DeterministicMemory` of a :class:`tb.bench.DeviceBench`
    (built with a ``mem_latency``) by a :class:`RandomMemory` on the same memory and error
    pages. Call before the first clock edge after the bench was built."""
    bench.detmem._task.cancel()
    bench.detmem = RandomMemory(bench.dut, bench.mem, bench.errors,
                                data_width=bench.data_width, seed=seed, stall=stall,
                                max_latency=max_latency)
    return bench.detmem
