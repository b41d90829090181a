"""The fast, deterministic AXI4 memory on ``m_axi``: the cycle-exact benches' and the bridge's.

Every ready is always high (no backpressure). A read burst whose address handshake is sampled at
clock edge ``h`` returns beat ``j`` at edge ``h + 1 + latency + j`` (bursts queue behind each
other); a write burst whose last data beat is sampled at edge ``w`` gets its response at edge
``w + 1 + latency``. Edges are counted by :class:`tb.monitor.AxiMonitor` (``monitor.cycle``), the
same numbering ``models.timing`` predicts. Responses carry the burst's ID.

A burst whose first address is on an error page (``errors``), that is not inside ``mem``, or
that the device must not issue (anything but an INCR burst of full beats inside one 4 KiB page)
is answered SLVERR (reads deliver zeros, writes write nothing) and recorded in ``refused``. A
burst is read or written with one memory access per run of strobed bytes.

Speed (the vhost-user bridge serves a whole Linux guest with it): only public cocotb API
(``handle.value``, ints), but the model sleeps until a valid rises while it has nothing to do,
samples only the signals it needs and drives a signal only when its value changes. cocotbext-axi's
``AxiSlave`` (``tb/memory.py``), with random backpressure, is the model for everything else;
``docs/linux.md`` compares the two on the bridge's traffic.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Protocol

import cocotb
from cocotb.triggers import First, RisingEdge

from models.memory import BusErrorPages

OKAY, SLVERR = 0, 2


class BusMemory(Protocol):
    """What the model reads and writes (``models.memory.GuestMemory``, the bridge's
    ``GuestRam``)."""

    def contains(self, addr: int, length: int) -> bool: ...

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class DeterministicMemory:
    """An AXI4 subordinate on ``dut``'s ``m_axi`` ports over ``mem`` (see the module)."""

    def __init__(self, dut, mem: BusMemory, errors: BusErrorPages | None = None, *,
                 latency: int, data_width: int, prefix: str = "m_axi__"):
        self.dut = dut
        self.mem = mem
        self.errors = errors if errors is not None else BusErrorPages()
        self.latency = latency
        self.lanes = data_width // 8
        self.s = {n: getattr(dut, prefix + n) for n in (
            "araddr", "arlen", "arsize", "arburst", "arid", "arvalid", "rready", "awaddr",
            "awlen", "awsize", "awburst", "awid", "awvalid", "wdata", "wstrb", "wlast", "wvalid",
            "arready", "awready", "wready", "rvalid", "rlast", "rresp", "rid", "rdata",
            "bvalid", "bresp", "bid")}
        self.refused: list[str] = []  # bursts answered SLVERR
        self.bytes_read = self.bytes_written = 0
        self._reads: deque[list] = deque()  # [first drive edge, addr, id, beats, sent, data, resp]
        self._r_free = 0
        self._aws: deque[tuple[int, int, int]] = deque()  # (addr, beats, id)
        self._wbeats: list[tuple[int, int]] = []
        self._bs: deque[tuple[int, int, int]] = deque()  # (drive edge, resp, id)
        self._out: dict[str, int] = {}
        self.edge = 0
        for name in ("arready", "awready", "wready"):
            self.s[name].value = 1
        for name in ("rvalid", "bvalid", "rlast", "rresp", "bresp", "rid", "bid"):
            self._drive(name, 0)
        self._task = cocotb.start_soon(self._run())

    def _drive(self, name: str, value: int) -> None:
        if self._out.get(name) != value:
            self._out[name] = value
            self.s[name].value = value

    def _u(self, name: str) -> int:
        """The signal's value; 0 if it has X or Z bits."""
        try:
            return int(self.s[name].value)
        except ValueError:
            return 0

    def _refuse(self, kind: str, addr: int, nbytes: int) -> bool:
        """True (and recorded) if the burst gets SLVERR."""
        if self.errors.hit(kind, addr) or not self.mem.contains(addr, nbytes):
            self.refused.append(f"{kind} {nbytes} B at {addr:#x}")
            return True
        return False

    def _address(self, ch: str) -> tuple[int, int]:
        """(address, beats) of the burst on channel ``ch`` ("ar", "aw"); the address is -1
        (SLVERR) for what the device must not issue: anything but INCR bursts of full beats
        inside one 4 KiB page (``docs/architecture.md``, "Bus transactions")."""
        addr, beats = self._u(ch + "addr"), self._u(ch + "len") + 1
        size, burst = self._u(ch + "size"), self._u(ch + "burst")
        first = addr & 0xFFF & -self.lanes  # the first beat's offset in its page
        if 1 << size != self.lanes or burst != 1 or first + beats * self.lanes > 0x1000:
            self.refused.append(f"{ch} at {addr:#x}: {beats} beats, AxSIZE {size}, "
                                f"AxBURST {burst}")
            return -1, beats
        return addr, beats

    def _read_burst(self, addr: int, beats: int) -> tuple[bytes, int]:
        base, n = addr // self.lanes * self.lanes, beats * self.lanes
        if addr < 0 or self._refuse("R", base, n):
            return bytes(n), SLVERR
        self.bytes_read += n
        return self.mem.read(base, n), OKAY

    def _write_burst(self, addr: int, beats: int) -> int:
        if len(self._wbeats) != beats:
            raise AssertionError(f"write at {addr:#x}: {len(self._wbeats)} beats, "
                                 f"awlen says {beats}")
        lanes = self.lanes
        base = addr // lanes * lanes
        data = b"".join(d.to_bytes(lanes, "little") for d, _ in self._wbeats)
        strobes = "".join(f"{strb:0{lanes}b}"[::-1] for _, strb in self._wbeats)  # byte order
        runs = [m.span() for m in re.finditer("1+", strobes)]
        self._wbeats = []
        nbytes = sum(j - i for i, j in runs)
        if addr < 0 or not runs or self._refuse("W", base + runs[0][0], nbytes):
            return SLVERR
        for i, j in runs:
            self.mem.write(base + i, data[i:j])
        self.bytes_written += nbytes
        return OKAY

    def _idle(self) -> bool:
        return not (self._reads or self._aws or self._wbeats or self._bs
                    or self._out["rvalid"] or self._out["bvalid"])

    async def _run(self) -> None:
        s = self.s
        while True:
            if self._idle() and not (self._u("arvalid") or self._u("awvalid")
                                     or self._u("wvalid")):
                # Nothing queued: the next burst's timing is relative to its own handshake,
                # so the skipped edges need not be counted.
                await First(s["arvalid"].rising_edge, s["awvalid"].rising_edge,
                            s["wvalid"].rising_edge)
            await RisingEdge(self.dut.clk)
            self.edge += 1
            e = self.edge
            if self._out["rvalid"] and not self._u("rready"):
                raise AssertionError("deterministic memory: read data not accepted "
                                     "(the device applied backpressure)")
            if self._u("arvalid"):
                addr, beats = self._address("ar")
                start = max(e + self.latency, self._r_free)
                self._reads.append([start, addr, self._u("arid"), beats, 0])
                self._r_free = start + beats
            if self._u("awvalid"):
                self._aws.append((*self._address("aw"), self._u("awid")))
            if self._u("wvalid"):
                self._wbeats.append((self._u("wdata"), self._u("wstrb")))
                if self._u("wlast"):
                    addr, beats, bid = self._aws.popleft()
                    self._bs.append((e + self.latency, self._write_burst(addr, beats), bid))
            # drive for the next edge
            if self._bs and self._bs[0][0] <= e:
                _, resp, bid = self._bs.popleft()
                self._drive("bvalid", 1)
                self._drive("bresp", resp)
                self._drive("bid", bid)
            else:
                self._drive("bvalid", 0)
            if self._reads and self._reads[0][0] <= e:
                burst = self._reads[0]
                _, addr, rid, beats, sent = burst[:5]
                if not sent:  # the whole burst is read when its first beat goes out
                    burst[5:] = self._read_burst(addr, beats)
                data, resp = burst[5:]
                self.s["rdata"].value = int.from_bytes(
                    data[sent * self.lanes:(sent + 1) * self.lanes], "little")
                self._drive("rresp", resp)
                self._drive("rid", rid)
                self._drive("rvalid", 1)
                self._drive("rlast", int(sent + 1 == beats))
                burst[4] += 1
                if sent + 1 == beats:
                    self._reads.popleft()
            else:
                self._drive("rvalid", 0)
                self._drive("rlast", 0)
