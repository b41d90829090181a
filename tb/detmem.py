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
from sw.transport import run_coroutine

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


def _now(coro):
    """The result of a coroutine that does not suspend (``MemoryTarget``'s read and write)."""
    return run_coroutine(coro, "the memory target (PipelinedMemory needs one that does not "
                               "suspend)")


class PipelinedMemory:
    """cocotbext-axi's ``AxiSlave`` over a :class:`tb.memory.MemoryTarget`, without random
    pauses, at a fraction of its cost: the same handshakes on the same cycles, the same memory
    accesses through the same target (``make demo``'s memory; ``tests/test_simspeed.py``
    compares the two on every handshake).

    ``AxiSlave`` is five channel coroutines (a sink or source per channel, queues of at most
    two entries) and two processes that move bursts between them; this is the same state
    machine in one coroutine, woken once per clock edge while anything is under way, reading
    its signals as bit strings. At each edge, with the values sampled before it:

    - a sink (AR, AW, W) takes the item if its ready and valid are high, then drives
      ready = its queue holds fewer than two items (ready is low until the first edge after
      reset);
    - a source (R, B) whose item was taken, or that drives none, drives the next item of its
      queue (or valid low);
    - then the processes, as far as they can: the read process takes the next AR, reads each
      beat from memory and queues it while the R queue holds fewer than two beats (a beat is
      read before it waits for room); the write process takes the next AW, writes each W beat
      to memory (one access per run of strobed bytes), then queues B (waiting for room).

    Bus errors (the target raises) give SLVERR, as in ``AxiSlave``. It handles one reset, the
    bench's first (``AxiSlave`` reacts to ``rst`` when it changes, this model at the next
    edge; the same while the DUT is held in reset from the start, not afterwards: a second
    reset raises).
    """

    LIMIT = 2  # AxiSlave's queue_occupancy_limit on every channel

    def __init__(self, dut, target, *, data_width: int, prefix: str = "m_axi__"):
        from cocotb.types import LogicArray

        self.dut = dut
        self.target = target  # read(addr, n) / write(addr, data), raising on a bus error
        self.lanes = data_width // 8
        self.h = {n: getattr(dut, prefix + n) for n in (
            "araddr", "arlen", "arsize", "arburst", "arid", "arvalid", "arready",
            "rready", "rvalid", "rlast", "rresp", "rid", "rdata",
            "awaddr", "awlen", "awsize", "awburst", "awid", "awvalid", "awready",
            "wdata", "wstrb", "wlast", "wvalid", "wready", "bready", "bvalid", "bresp", "bid")}
        self.b = {n: h._handle.get_signal_val_binstr for n, h in self.h.items()}
        # AxiSlave's initial values: readies and valids 0, the sources' payloads X
        for n in ("arready", "awready", "wready", "rvalid", "bvalid"):
            self.h[n].setimmediatevalue(0)
        for n in ("rdata", "rid", "rresp", "rlast", "bid", "bresp"):
            self.h[n].setimmediatevalue(LogicArray("x" * len(self.h[n])))
        self._out: dict[str, int | None] = {n: None for n in ("rdata", "rid", "rresp", "rlast",
                                                              "bid", "bresp")}
        self._out.update(arready=0, awready=0, wready=0, rvalid=0, bvalid=0)
        self._started = False  # the first edge out of reset has been taken
        # a tb.monitor.AxiMonitor started with own_task=False, stepped at each edge taken
        # here: one coroutine wake-up per edge for both (set before the first edge)
        self.monitor = None
        self._clear()
        self._task = cocotb.start_soon(self._run())

    def _clear(self) -> None:
        self.ar_q: deque = deque()  # (addr, len, size, burst, id)
        self.aw_q: deque = deque()
        self.w_q: deque = deque()  # (data, strb, last)
        self.r_q: deque = deque()  # (data, resp, last, id)
        self.b_q: deque = deque()  # (resp, id)
        self._rd = None  # the read process: [addr, beats left, num_bytes, burst, id, wrap lo/hi]
        self._r_held = None  # a beat read, waiting for room in r_q
        self._wr = None  # the write process: [addr, beats, n, num_bytes, burst, id, resp, ...]
        self._b_held = None  # a response waiting for room in b_q

    def _drive(self, name: str, value: int) -> None:
        if self._out[name] != value:
            self._out[name] = value
            self.h[name].value = value

    def _u(self, name: str) -> int:
        return int(self.b[name](), 2)

    def _sample(self, ch: str) -> tuple[int, int, int, int, int]:
        return (self._u(ch + "addr"), self._u(ch + "len"), self._u(ch + "size"),
                self._u(ch + "burst"), self._u(ch + "id"))

    def _burst(self, addr: int, length: int, size: int, burst: int, bid: int) -> list:
        """AxiSlave's burst set-up: [address, beats, bytes per beat, type, id, wrap bounds]."""
        num_bytes = 2 ** size
        assert 0 < num_bytes <= self.lanes
        aligned = addr // num_bytes * num_bytes
        beats = length + 1
        transfer = num_bytes * beats
        lo = addr // transfer * transfer
        if burst == 1:  # INCR: no 4 KiB crossing
            assert 0x1000 - (aligned & 0xFFF) >= transfer
        return [aligned, beats, num_bytes, burst, bid, lo, lo + transfer]

    @staticmethod
    def _advance(st: list) -> None:
        if st[3] != 0:  # not FIXED
            st[0] += st[2]
            if st[3] == 2 and st[0] == st[6]:  # WRAP
                st[0] = st[5]

    def _busy(self) -> bool:
        """Work for the processes (an item to move, a beat or response to queue)."""
        return bool(self.ar_q or self.aw_q or self.w_q or self._rd or self._wr
                    or self._r_held or self._b_held)

    def _process(self) -> None:
        lanes = self.lanes
        # the read process
        while True:
            if self._r_held is not None:
                if len(self.r_q) >= self.LIMIT:
                    break
                self.r_q.append(self._r_held)
                self._r_held = None
                if self._rd[1] == 0:
                    self._rd = None
                continue
            if self._rd is None:
                if not self.ar_q:
                    break
                self._rd = self._burst(*self.ar_q.popleft())
                continue
            st = self._rd
            word = st[0] // lanes * lanes
            try:
                data, resp = int.from_bytes(_now(self.target.read(word, lanes)), "little"), 0
            except Exception:
                data, resp = 0, SLVERR
            st[1] -= 1
            self._r_held = (data, resp, int(st[1] == 0), st[4])
            self._advance(st)
        # the write process
        while True:
            if self._b_held is not None:
                if len(self.b_q) >= self.LIMIT:
                    break
                self.b_q.append(self._b_held)
                self._b_held = None
                self._wr = None
                continue
            if self._wr is None:
                if not self.aw_q:
                    break
                self._wr = [*self._burst(*self.aw_q.popleft()), 0, OKAY]  # + beats done, resp
                continue
            if not self.w_q:
                break
            st = self._wr
            data, strb, last = self.w_q.popleft()
            word = st[0] // lanes * lanes
            raw = data.to_bytes(lanes, "little")
            try:
                for i, j in (m.span() for m in re.finditer("1+", f"{strb:0{lanes}b}"[::-1])):
                    _now(self.target.write(word + i, raw[i:j]))
            except Exception:
                st[8] = SLVERR
            st[7] += 1
            assert last == (st[7] == st[1]), "wlast on the wrong beat"
            self._advance(st)
            if st[7] == st[1]:
                self._b_held = (st[8], st[4])

    def _idle(self) -> bool:
        o = self._out
        return not (self.r_q or self.b_q or o["rvalid"] or o["bvalid"] or self._busy()
                    ) and o["arready"] == 1 and o["awready"] == 1 and o["wready"] == 1

    async def _run(self) -> None:
        b = self.b
        clk = self.dut.clk
        rst = self.dut.rst._handle.get_signal_val_binstr
        valids = [self.h["arvalid"].value_change, self.h["awvalid"].value_change,
                  self.h["wvalid"].value_change]
        mon_idle = False  # the monitor's last step allows a sleep
        while True:
            mon = self.monitor
            if (self._started and self._idle() and b["arvalid"]() != "1"
                    and b["awvalid"]() != "1" and b["wvalid"]() != "1"
                    and (mon is None or (mon_idle and mon.can_sleep()))):
                # nothing to do until a valid changes (or, for the monitor, irq)
                if mon is None:
                    await First(*valids)
                    await RisingEdge(clk)
                else:  # (its watched signals include the three valids)
                    await mon.sleep()
            else:
                await RisingEdge(clk)
            if mon is not None:
                mon_idle = mon.step()
            if rst() != "0":
                if self._started:
                    raise AssertionError("PipelinedMemory: rst asserted again (one reset only)")
                continue
            self._started = True
            # sinks: take an item on ready and valid, then ready = room in the queue
            out = self._out
            if out["arready"] and b["arvalid"]() == "1":
                self.ar_q.append(self._sample("ar"))
            if out["awready"] and b["awvalid"]() == "1":
                self.aw_q.append(self._sample("aw"))
            if out["wready"] and b["wvalid"]() == "1":
                self.w_q.append((self._u("wdata"), self._u("wstrb"), self._u("wlast")))
            for ch, q in (("arready", self.ar_q), ("awready", self.aw_q), ("wready", self.w_q)):
                if out[ch] != (len(q) < self.LIMIT):
                    self._drive(ch, int(len(q) < self.LIMIT))
            # sources: the next item once the current one is taken (or none is driven)
            if not self._out["rvalid"] or b["rready"]() == "1":
                if self.r_q:
                    data, resp, last, rid = self.r_q.popleft()
                    self._drive("rdata", data)
                    self._drive("rid", rid)
                    self._drive("rresp", resp)
                    self._drive("rlast", last)
                    self._drive("rvalid", 1)
                else:
                    self._drive("rvalid", 0)
            if not self._out["bvalid"] or b["bready"]() == "1":
                if self.b_q:
                    resp, bid = self.b_q.popleft()
                    self._drive("bid", bid)
                    self._drive("bresp", resp)
                    self._drive("bvalid", 1)
                else:
                    self._drive("bvalid", 0)
            # the processes
            if self._busy():
                self._process()
