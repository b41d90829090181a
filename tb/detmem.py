"""A deterministic AXI4 memory for cycle-exact benches.

Every ready is always high (no backpressure). A read burst whose address handshake is sampled at
clock edge ``h`` returns beat ``j`` at edge ``h + 1 + latency + j`` (bursts queue behind each
other); a write burst whose last data beat is sampled at edge ``w`` gets its response at edge
``w + 1 + latency``. Edges are counted by :class:`tb.monitor.AxiMonitor` (``monitor.cycle``), the
same numbering ``models.timing`` predicts.
"""

from __future__ import annotations

from collections import deque

import cocotb
from cocotb.triggers import RisingEdge

from models.memory import GuestMemory

from .memory import BusErrorPages

OKAY, SLVERR = 0, 2


class DeterministicMemory:
    def __init__(self, dut, mem: GuestMemory, errors: BusErrorPages, *, latency: int,
                 data_width: int, prefix: str = "m_axi__"):
        self.dut = dut
        self.mem = mem
        self.errors = errors
        self.latency = latency
        self.lanes = data_width // 8
        self.p = prefix
        self._reads: deque[list] = deque()  # [first drive edge, addr, beats, sent]
        self._r_free = 0
        self._aws: deque[tuple[int, int]] = deque()  # (addr, beats)
        self._wbeats: list[tuple[int, int]] = []
        self._bs: deque[tuple[int, int]] = deque()  # (drive edge, resp)
        self.edge = 0
        for name in ("arready", "awready", "wready"):
            self.sig(name).value = 1
        for name in ("rvalid", "bvalid", "rlast", "rresp", "bresp", "rid", "bid"):
            self.sig(name).value = 0
        self._task = cocotb.start_soon(self._run())

    def sig(self, name):
        return getattr(self.dut, self.p + name)

    def val(self, name) -> int:
        v = self.sig(name).value
        return int(v) if v.is_resolvable else 0

    def _addr_ok(self, kind: str, addr: int, nbytes: int) -> bool:
        return not self.errors.hit(kind, addr) and self.mem.contains(addr, nbytes)

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            self.edge += 1
            e = self.edge
            if self.val("rvalid") and not self.val("rready"):
                raise AssertionError("deterministic memory: read data not accepted "
                                     "(the device applied backpressure)")
            if self.val("arvalid"):
                beats = self.val("arlen") + 1
                start = max(e + self.latency, self._r_free)
                self._reads.append([start, self.val("araddr"), beats, 0])
                self._r_free = start + beats
            if self.val("awvalid"):
                self._aws.append((self.val("awaddr"), self.val("awlen") + 1))
            if self.val("wvalid"):
                self._wbeats.append((self.val("wdata"), self.val("wstrb")))
                if self.val("wlast"):
                    addr, beats = self._aws.popleft()
                    base = addr // self.lanes * self.lanes
                    ops = []
                    for j, (data, strb) in enumerate(self._wbeats):
                        for lane in range(self.lanes):
                            if strb >> lane & 1:
                                ops.append((base + j * self.lanes + lane,
                                            data >> (8 * lane) & 0xFF))
                    if len(self._wbeats) != beats:
                        raise AssertionError(f"write at {addr:#x}: {len(self._wbeats)} beats, "
                                             f"awlen says {beats}")
                    self._wbeats = []
                    ok = bool(ops) and self._addr_ok("W", ops[0][0], len(ops))
                    if ok:
                        for a, v in ops:
                            self.mem.write(a, bytes([v]))
                    self._bs.append((e + self.latency, OKAY if ok else SLVERR))
            # drive for the next edge
            if self._bs and self._bs[0][0] <= e:
                _, resp = self._bs.popleft()
                self.sig("bvalid").value = 1
                self.sig("bresp").value = resp
            else:
                self.sig("bvalid").value = 0
            if self._reads and self._reads[0][0] <= e:
                burst = self._reads[0]
                start, addr, beats, sent = burst
                base = addr // self.lanes * self.lanes + sent * self.lanes
                ok = self._addr_ok("R", addr, 1)
                data = self.mem.read(base, self.lanes) if ok else bytes(self.lanes)
                self.sig("rdata").value = int.from_bytes(data, "little")
                self.sig("rresp").value = OKAY if ok else SLVERR
                self.sig("rvalid").value = 1
                self.sig("rlast").value = int(sent + 1 == beats)
                burst[3] += 1
                if burst[3] == beats:
                    self._reads.popleft()
            else:
                self.sig("rvalid").value = 0
                self.sig("rlast").value = 0
