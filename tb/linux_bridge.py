"""The simulation side of the vhost-user bridge: a real Linux guest under QEMU drives the RTL.

QEMU's ``vhost-user-blk-pci`` gives the guest a virtio-pci block device and hands its queue to
a vhost-user back-end (``sw/vhost_user.py``). Here the back-end plays the *transport*, not the
device: :class:`MmioTransport` programs the RTL through its virtio-mmio guest port exactly as a
virtio-mmio driver would (features, queue size, ring addresses converted from QEMU's virtual
addresses to guest physical addresses, DRIVER_OK), turns each kick into a QueueNotify write and
the RTL's interrupt into a write to the call eventfd. The RTL's AXI4 manager reads and writes
the guest's real memory, mmapped from the memfd QEMU shares, served by the benches' fast
deterministic AXI4 memory (``tb/detmem.py``, latency 0) or cocotbext-axi's ``AxiSlave``
(``tb/memory.py``).

:class:`LinuxBridge` runs it all inside the cocotb process: it polls the vhost-user socket and
the kick eventfd between clock cycles (``select`` with timeout 0 while the device has work, so
the simulation never blocks and QEMU, which waits for every reply, is answered within a few
cycles), and blocks in ``select`` only while the device is idle, which hands the CPU to QEMU.

The same transport also runs against the reference model (:class:`ModelLink`, untimed): a fast
way to debug the protocol and the guest side without the simulator.

In IOVA mode (``make linux LINUX_MODE=iova``, docs/linux.md) the guest sits behind QEMU's
emulated IOMMU, the device translates every address through its IOTLB (docs/iotlb.md) and the
transport plays the hypervisor: QEMU's IOTLB updates and invalidations become IOTLB commands
(an invalidation acknowledged only after ``HV_SYNC``), a device miss (``hv_irq``) becomes a miss
message to QEMU or is answered from the bridge's own copy of QEMU's updates (:class:`IovaMap`),
through which the request log reads guest memory too (:class:`IovaView`).

A :class:`RequestLog` decodes every request the guest makes available (at kick time, while its
buffers are stable), keeps a shadow of the disk with every write applied, and checks every used
element; after the guest has powered off, the RAM disk is read back through the device and
compared with that shadow.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import tempfile
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from models import spec, virtio
from models.virtio import BLK_HEADER, DESC, USED_ELEM, InitError, SplitRing
from sw.alloc import PageAllocator
from sw.compare import first_difference, read_disk
from sw.dma import IdentityDma
from sw.driver import VirtioBlkDriver
from sw.transport import ClockedLink, run_coroutine
from sw.vhost_user import (
    VHOST_ACCESS_RO,
    VHOST_ACCESS_RW,
    VHOST_ACCESS_WO,
    IotlbMsg,
    IotlbType,
    MemoryTable,
    Request,
    VhostUserBackend,
    VhostUserError,
    Vring,
    listen,
)

BLK_TYPES = {spec.VIRTIO_BLK_T_IN: "read", spec.VIRTIO_BLK_T_OUT: "write",
             spec.VIRTIO_BLK_T_FLUSH: "flush", spec.VIRTIO_BLK_T_GET_ID: "get-id",
             spec.VIRTIO_BLK_T_DISCARD: "discard", spec.VIRTIO_BLK_T_WRITE_ZEROES: "write-zeroes"}
DWZ_SEGMENT = struct.Struct("<QII")  # struct virtio_blk_discard_write_zeroes
DWZ_TYPES = frozenset({spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES})


class BridgeError(RuntimeError):
    """The run cannot go on: a device fault, a protocol error, a timeout."""


# --- guest memory on m_axi ------------------------------------------------------------------------

class GuestRam:
    """The guest's physical memory as the current vhost-user memory table maps it.

    A :class:`sw.transport.GuestMemory` (``size``, ``read``, ``write``); the table is swapped
    when QEMU sends a new one.
    """

    def __init__(self) -> None:
        self.table: MemoryTable | None = None

    @property
    def size(self) -> int:
        return self.table.size if self.table is not None else 0

    def contains(self, addr: int, length: int) -> bool:
        return self.table is not None and self.table.contains(addr, length)

    def read(self, addr: int, length: int) -> bytes:
        if self.table is None:
            raise ValueError("no memory table yet")
        return self.table.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        if self.table is None:
            raise ValueError("no memory table yet")
        self.table.write(addr, data)

    def le16(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 2), "little")


# --- what the transport drives: a sw.transport.ClockedLink whose ``mem`` (and ``ram``) is a
# GuestRam -----------------------------------------------------------------------------------------

class ModelLink:
    """The reference model (``models.device``) as a :class:`sw.transport.ClockedLink`: untimed,
    a QueueNotify write runs the engine to idle before it returns.

    In IOVA mode the model raises an IOTLB miss inside that write and calls its
    ``on_iotlb_miss`` hook, which must resolve it before returning: ``miss_handler`` (set by
    :class:`MmioTransport`) serves it there, talking to QEMU synchronously
    (:meth:`MmioTransport.serve_miss_now`)."""

    def __init__(self, disk_bytes: int, data_width: int = 128, features: Any = None) -> None:
        from models.device import ReferenceDevice

        self.ram = GuestRam()
        self.miss_handler: Any = None
        self.dev = ReferenceDevice(self.ram, disk_bytes=disk_bytes,  # type: ignore[arg-type]
                                   data_width=data_width, on_iotlb_miss=self._on_miss,
                                   features=features)
        self.guest = self.dev.guest
        self.hv = self.dev.hv
        self.mem = self.ram

    def _on_miss(self, dev: Any) -> None:
        if self.miss_handler is None:
            dev.hv.write(spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_FAIL)
        else:
            self.miss_handler()

    @property
    def irq(self) -> bool:
        return self.dev.irq

    @property
    def hv_irq(self) -> bool:
        return bool(self.dev.hv.read(spec.HV_IOTLB_MISS) & spec.IOTLB_MISS_PENDING)

    @property
    def cycle(self) -> int:
        return 0

    async def advance(self, cycles: int) -> None:
        self.dev.transactions.clear()  # the model records every transaction; keep none

    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        await self.dev.wait_irq(timeout_cycles)


class LinuxBench:
    """The RTL in cocotb: clock, reset, AXI4-Lite managers on both register ports and an AXI4
    subordinate on ``m_axi`` backed by the guest's memory. No per-cycle monitor: the
    simulation's speed is the guest's disk speed."""

    def __init__(self, dut, data_width: int, axi_model: str = "fast") -> None:
        import cocotb
        from cocotb.clock import Clock
        from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiSlave

        from .bench import CLOCK_NS, AxiLitePort, hold_reset
        from .detmem import DeterministicMemory
        from .memory import BusErrorPages, MemoryTarget

        self.dut = dut
        self.clock_ns = CLOCK_NS
        hold_reset(dut)
        self._hv_irq = getattr(dut, "hv_irq", None)  # IOVA mode's miss line (issue 16)
        # The clock in C (cocotb's GPI clock; the Python one costs a coroutine per edge),
        # starting low so that the first rising edge comes after time 0 and no bus model
        # samples the design's outputs before its initial blocks have run.
        clock = Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi")
        cocotb.start_soon(clock.start(start_high=False))
        self.ram = GuestRam()
        self.mem = self.ram  # sw.transport.DeviceLink, for the read-back driver
        self.guest = AxiLitePort(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"),
                                               dut.clk, dut.rst))
        self.hv = AxiLitePort(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_hv_"), dut.clk,
                                            dut.rst))
        self.target: MemoryTarget | DeterministicMemory  # bytes_read, bytes_written, refused
        if axi_model == "cocotbext":
            self.target = MemoryTarget(self.ram, BusErrorPages())
            self.axi = AxiSlave(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst,
                                target=self.target)
        elif axi_model == "fast":
            self.target = DeterministicMemory(dut, self.ram, latency=0, data_width=data_width)
        else:
            raise ValueError(f"axi_model must be 'fast' or 'cocotbext', not {axi_model!r}")
        for prefix in ("m_axi_", "s_axil_", "s_hv_"):  # the bus models log every burst at INFO
            logging.getLogger(f"cocotb.{dut._name}.{prefix}").setLevel(logging.WARNING)

    async def reset(self, cycles: int = 4) -> None:
        from .bench import reset

        await reset(self.dut, cycles)

    @property
    def irq(self) -> bool:
        v = self.dut.irq.value
        return v.is_resolvable and bool(int(v))

    @property
    def hv_irq(self) -> bool | None:
        """The ``hv_irq`` port (an IOTLB miss is pending); None if the design has none."""
        port = self._hv_irq
        if port is None:
            return None
        v = port.value
        return v.is_resolvable and bool(int(v))

    @property
    def cycle(self) -> int:
        from cocotb.simtime import get_sim_time

        return int(get_sim_time(unit="ns")) // self.clock_ns

    async def advance(self, cycles: int) -> None:
        """``cycles`` clock cycles, or fewer if ``irq`` or ``hv_irq`` rises meanwhile."""
        from cocotb.triggers import ClockCycles, First, RisingEdge

        if cycles <= 1 or self.irq or self.hv_irq:
            await ClockCycles(self.dut.clk, max(cycles, 1))
        else:
            edges = [RisingEdge(self.dut.irq)]
            if self._hv_irq is not None:
                edges.append(RisingEdge(self._hv_irq))
            await First(*edges, ClockCycles(self.dut.clk, cycles))

    async def wait_irq(self, timeout_cycles: int | None = 200_000) -> None:
        """sw.transport.DeviceLink.wait_irq, for the read-back driver."""
        from cocotb.triggers import ClockCycles, First, RisingEdge

        if self.irq:
            return
        await First(RisingEdge(self.dut.irq), ClockCycles(self.dut.clk,
                                                          timeout_cycles or 10**9))
        if not self.irq:
            raise TimeoutError(f"irq did not rise within {timeout_cycles} cycles")
        await RisingEdge(self.dut.clk)


# --- IOVA mode: the bridge's own view of QEMU's translations -------------------------------------

PAGE = 1 << spec.IOTLB_MIN_SIZE


class Untranslated(LookupError):
    """An IOVA the bridge has no translation for (yet): QEMU has not sent its update."""


class Mapping(NamedTuple):
    iova: int
    size: int
    gpa: int
    perm: int  # VHOST_ACCESS_RO 1, WO 2, RW 3

    @property
    def end(self) -> int:
        return self.iova + self.size


class IovaMap:
    """QEMU's IOTLB updates as the bridge keeps them (IOVA range -> guest physical address,
    permission): the hypervisor's own table, of which the device's IOTLB holds a subset.

    Ranges never overlap: an insert replaces what it overlaps, an invalidation trims.
    """

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.maps: list[Mapping] = []

    def __len__(self) -> int:
        return len(self.maps)

    def clear(self) -> None:
        self.starts.clear()
        self.maps.clear()

    def remove(self, iova: int, size: int) -> int:
        """Forget ``[iova, iova + size)``; returns how many bytes of mappings went."""
        end = iova + size
        i = max(bisect_right(self.starts, iova) - 1, 0)
        gone = 0
        keep: list[Mapping] = []
        j = i
        while j < len(self.maps) and self.maps[j].iova < end:
            m = self.maps[j]
            if m.end > iova:
                lo, hi = max(m.iova, iova), min(m.end, end)
                gone += hi - lo
                if m.iova < iova:
                    keep.append(Mapping(m.iova, iova - m.iova, m.gpa, m.perm))
                if m.end > end:
                    keep.append(Mapping(end, m.end - end, m.gpa + end - m.iova, m.perm))
            else:
                keep.append(m)
            j += 1
        self.maps[i:j] = keep
        self.starts[i:j] = [m.iova for m in keep]
        return gone

    def insert(self, iova: int, size: int, gpa: int, perm: int) -> None:
        self.remove(iova, size)
        i = bisect_right(self.starts, iova)
        self.maps.insert(i, Mapping(iova, size, gpa, perm))
        self.starts.insert(i, iova)

    def lookup(self, iova: int) -> Mapping | None:
        i = bisect_right(self.starts, iova) - 1
        if i >= 0 and self.maps[i].iova <= iova < self.maps[i].end:
            return self.maps[i]
        return None

    def translate(self, iova: int, length: int) -> list[tuple[int, int]]:
        """``(gpa, n)`` pieces of ``[iova, iova + length)``; :class:`Untranslated` if a byte of
        it has no mapping."""
        out = []
        while length > 0:
            m = self.lookup(iova)
            if m is None:
                raise Untranslated(f"IOVA {iova:#x} is not mapped (no update from QEMU)")
            n = min(length, m.end - iova)
            out.append((m.gpa + iova - m.iova, n))
            iova += n
            length -= n
        return out


def aligned_pieces(iova: int, size: int, gpa: int | None = None) -> list[tuple[int, int, int]]:
    """``[iova, iova + size)`` as naturally aligned powers of two of 4 KiB to 1 GiB, the sizes
    the device's IOTLB takes: ``(iova, gpa, log2 size)`` (``gpa`` None for an invalidation, else
    each piece's IOVA and physical address are both aligned to its size). The range is widened
    to whole 4 KiB pages."""
    lo = iova & ~(PAGE - 1)
    end = (iova + size + PAGE - 1) & ~(PAGE - 1)
    delta = None if gpa is None else gpa - iova
    if delta is not None and delta % PAGE:
        raise ValueError(f"IOVA {iova:#x} and physical address {gpa:#x} differ inside a page")
    out = []
    while lo < end:
        k = spec.IOTLB_MAX_SIZE
        while k > spec.IOTLB_MIN_SIZE and (lo & ((1 << k) - 1) or lo + (1 << k) > end
                                           or (delta is not None and delta & ((1 << k) - 1))):
            k -= 1
        out.append((lo, None if delta is None else lo + delta, k))
        lo += 1 << k
    return out


class IovaView:
    """Guest memory addressed by IOVA through the bridge's :class:`IovaMap`: what the request
    log reads in IOVA mode (rings, descriptors, buffers). :class:`Untranslated` for an IOVA
    QEMU has not mapped yet."""

    def __init__(self, ram: GuestRam, iomap: IovaMap) -> None:
        self.ram = ram
        self.map = iomap

    def read(self, addr: int, length: int) -> bytes:
        return b"".join(self.ram.read(g, n) for g, n in self.map.translate(addr, length))

    def le16(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 2), "little")


# --- request decoding -----------------------------------------------------------------------------

@dataclass
class BlkReq:
    """One request as the guest made it available (decoded from guest memory at the kick)."""

    seq: int  # position in the avail ring (free-running)
    head: int
    type: int
    sector: int
    data_len: int  # data bytes (readable after the header for OUT, writable before status else)
    writable: int  # device-writable bytes including the status byte
    kick_cycle: int
    kick_time: float
    done_cycle: int | None = None
    used_len: int | None = None
    descs: int = 0  # descriptors of the chain, the indirect one not counted
    indirect: bool = False  # its descriptors came from an indirect table
    dwz: tuple[int, int, int] | None = None  # DISCARD / WRITE_ZEROES: sector, sectors, flags

    @property
    def kind(self) -> str:
        return BLK_TYPES.get(self.type, f"type-{self.type}")

    def expected_used_len(self, disk_bytes: int) -> int:
        """Used ``len``: bytes written including the status byte (docs/architecture.md)."""
        if self.type == spec.VIRTIO_BLK_T_IN and self._in_range(disk_bytes):
            return self.data_len + 1
        if self.type == spec.VIRTIO_BLK_T_GET_ID:
            return min(spec.VIRTIO_BLK_ID_BYTES, self.writable - 1) + 1
        return 1

    def _in_range(self, disk_bytes: int) -> bool:
        return (self.data_len % spec.SECTOR_SIZE == 0
                and self.sector * spec.SECTOR_SIZE + self.data_len <= disk_bytes)


class RequestLog:
    """Every request the guest hands the device, and a shadow of the disk it writes.

    Decoding happens at the kick, before the device is notified: from then until its used
    element is published the guest leaves a request's descriptors and buffers alone, so reading
    them here races with nothing.

    In IOVA mode ``mem`` is an :class:`IovaView`: the rings, descriptors and buffers are read
    through the translations QEMU sent. QEMU pushes only the used ring's; the others come as
    the device misses on them, so an entry whose pages are not translated yet is decoded later
    (at every poll, at the latest when its used element is matched: by then the device has
    had every page of it translated, and the guest unmaps nothing before it sees the used
    element). Its kick cycle is the one at which its avail entry was first seen.
    """

    def __init__(self, ram: GuestRam, disk_bytes: int) -> None:
        self.ram = ram
        self.mem: GuestRam | IovaView = ram
        self.kicked = False  # a kick since start (IOVA mode: the avail ring may be unreadable)
        self.first_seen: dict[int, tuple[int, float]] = {}  # avail seq -> (cycle, time)
        self.deferred = ""  # why the last decode had to wait
        self.unread_since: tuple[int, float] | None = None  # kicked, avail ring unreadable
        self.disk_bytes = disk_bytes
        self.shadow = bytearray(spec.ramdisk_init(disk_bytes))
        self.pending: deque[BlkReq] = deque()
        self.done: list[BlkReq] = []
        self.errors: list[str] = []
        self.num = 0
        self.ring = SplitRing(0)
        self.desc = self.avail = self.used = 0
        self.seen_avail = 0
        self.seen_used = 0
        self.max_in_flight = 0  # avail index - used index, the most seen (at each decode)
        # Marker requests (a 512-byte read at one of these sectors) and the counters at their
        # completion: ``probe`` returns them (set by the transport).
        self.mark_sectors: tuple[int, ...] = ()
        self.marks: list[tuple[int, dict[str, Any]]] = []
        self.probe: Any = None

    def start(self, num: int, desc: int, avail: int, used: int) -> None:
        self.num, self.desc, self.avail, self.used = num, desc, avail, used
        self.ring = SplitRing(num)
        self.seen_avail = self.seen_used = 0
        self.pending.clear()
        self.first_seen.clear()
        self.kicked = False
        self.unread_since = None

    @property
    def running(self) -> bool:
        return self.num != 0

    def avail_idx(self) -> int:
        return self.mem.le16(self.avail + SplitRing.AVAIL_IDX)

    def used_idx(self) -> int:
        return self.mem.le16(self.used + SplitRing.USED_IDX)

    def outstanding(self) -> bool:
        """The device has work: entries made available that it has not used yet."""
        if not self.running:
            return False
        if self.pending:
            return True
        try:
            return self.avail_idx() != self.used_idx()
        except Untranslated:  # IOVA mode, before the device first read the avail ring
            return self.kicked

    def _chain(self, head: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int,
                                          bool]:
        """``(readable, writable, descriptors, indirect)`` of the chain at ``head``, following an
        indirect table (virtio 1.2 section 2.7.5.3) as docs/architecture.md's walk does."""
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        table, size, indirect = self.desc, self.num, False
        i = head
        for _ in range(self.num + 1):
            addr, length, flags, nxt = DESC.unpack(self.mem.read(table + DESC.size * i,
                                                                 DESC.size))
            if flags & spec.VIRTQ_DESC_F_INDIRECT:
                if indirect or flags & spec.VIRTQ_DESC_F_NEXT or not length \
                        or length % DESC.size or length > DESC.size * self.num:
                    raise ValueError(f"descriptor {i}: malformed INDIRECT ({length} bytes, "
                                     f"flags {flags:#x})")
                table, size, indirect, i = addr, length // DESC.size, True, 0
                continue
            (writable if flags & spec.VIRTQ_DESC_F_WRITE else readable).append((addr, length))
            if not flags & spec.VIRTQ_DESC_F_NEXT:
                return readable, writable, len(readable) + len(writable), indirect
            i = nxt
            if i >= size:
                raise ValueError(f"next index {i} outside the "
                                 + ("indirect table" if indirect else "queue"))
        raise ValueError("chain longer than the queue")

    def _gather(self, pieces: list[tuple[int, int]], start: int, length: int) -> bytes:
        out = bytearray()
        pos = 0
        for addr, n in pieces:
            lo, hi = max(start, pos), min(start + length, pos + n)
            if lo < hi:
                out += self.mem.read(addr + lo - pos, hi - lo)
            pos += n
        return bytes(out)

    def take_avail(self, cycle: int) -> int:
        """Decode the entries made available since the last call, in order, as far as their
        pages are translated (IOVA mode). Returns how many were decoded."""
        if not self.running:
            return 0
        try:
            idx = self.avail_idx()
        except Untranslated as exc:
            # Entries were made available, we cannot tell which yet: they date from now.
            self.deferred = str(exc)
            if self.kicked and self.unread_since is None:
                self.unread_since = (cycle, time.monotonic())
            return 0
        new = (idx - self.seen_avail) & 0xFFFF
        with contextlib.suppress(Untranslated):  # made available and not used yet, at once
            self.max_in_flight = max(self.max_in_flight, (idx - self.used_idx()) & 0xFFFF)
        seen = self.unread_since or (cycle, time.monotonic())
        self.unread_since = None
        for k in range(new):
            self.first_seen.setdefault((self.seen_avail + k) & 0xFFFF, seen)
        done = 0
        for k in range(new):
            seq = (self.seen_avail + k) & 0xFFFF
            try:
                head = self.mem.le16(self.avail + self.ring.avail_ring(seq))
                req = self._decode(seq, head)
            except Untranslated as exc:
                self.deferred = f"avail entry {seq}: {exc}"
                break
            done += 1
            if req is not None:
                self.pending.append(req)
        self.seen_avail = (self.seen_avail + done) & 0xFFFF
        return done

    def dwz_range(self, rtype: int, sector: int, num: int, flags: int) -> tuple[int, int] | None:
        """The bytes a DISCARD or WRITE_ZEROES segment zeroes (docs/architecture.md step
        3.5: within the disk, no flag but UNMAP, and UNMAP only for WRITE_ZEROES), else None."""
        lo, hi = sector * spec.SECTOR_SIZE, (sector + num) * spec.SECTOR_SIZE
        if hi > self.disk_bytes or flags & ~spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
            return None
        if rtype == spec.VIRTIO_BLK_T_DISCARD and flags:
            return None
        return lo, hi

    def _decode(self, seq: int, head: int) -> BlkReq | None:
        """One avail entry as a request (None, with an error noted, if it is malformed); the
        shadow disk takes a write's data. Raises :class:`Untranslated` before changing
        anything."""
        try:
            readable, writable, descs, indirect = self._chain(head)
            total_r = sum(n for _, n in readable)
            total_w = sum(n for _, n in writable)
            rtype, _, sector = BLK_HEADER.unpack(
                self._gather(readable, 0, BLK_HEADER.size).ljust(BLK_HEADER.size, b"\0"))
            data_len = (total_r - BLK_HEADER.size if rtype in DWZ_TYPES | {spec.VIRTIO_BLK_T_OUT}
                        else max(total_w - 1, 0))
            cycle, when = self.first_seen.get(seq, (0, time.monotonic()))
            req = BlkReq(seq, head, rtype, sector, data_len, total_w, cycle, when,
                         descs=descs, indirect=indirect)
            if rtype == spec.VIRTIO_BLK_T_OUT and req._in_range(self.disk_bytes):
                data = self._gather(readable, BLK_HEADER.size, data_len)
                off = sector * spec.SECTOR_SIZE
                self.shadow[off:off + data_len] = data
            elif rtype in DWZ_TYPES and data_len == DWZ_SEGMENT.size:
                req.dwz = DWZ_SEGMENT.unpack(self._gather(readable, BLK_HEADER.size,
                                                          DWZ_SEGMENT.size))
                zero = self.dwz_range(rtype, *req.dwz)
                if zero is not None:
                    self.shadow[zero[0]:zero[1]] = bytes(zero[1] - zero[0])
        except (ValueError, struct.error) as exc:
            self.errors.append(f"avail entry {seq} (head {head}): {exc}")
            self.first_seen.pop(seq, None)
            return None
        self.first_seen.pop(seq, None)
        return req

    def collect(self, cycle: int) -> int:
        """Match the used elements published since the last call. Returns how many."""
        if not self.running:
            return 0
        try:
            idx = self.used_idx()
        except Untranslated as exc:  # QEMU pushes the used ring's translation first
            self.errors.append(f"the used ring cannot be read: {exc}")
            return 0
        # The device may have taken entries made available after the last kick we saw (it
        # polls the avail index itself): decode those first.
        self.take_avail(cycle)
        new = (idx - self.seen_used) & 0xFFFF
        for k in range(new):
            seq = (self.seen_used + k) & 0xFFFF
            head, used_len = USED_ELEM.unpack(
                self.mem.read(self.used + self.ring.used_ring(seq), USED_ELEM.size))
            if not self.pending:
                self.errors.append(f"used element {seq} (head {head}) for no request made "
                                   "available" + (f" that the bridge could decode "
                                                  f"({self.deferred})" if self.deferred else ""))
                continue
            req = self.pending.popleft()
            if head != req.head:
                self.errors.append(f"used element {seq} names head {head}, expected "
                                   f"{req.head} (in-order device)")
            req.done_cycle, req.used_len = cycle, used_len
            if (req.type == spec.VIRTIO_BLK_T_IN and req.data_len == spec.SECTOR_SIZE
                    and req.sector in self.mark_sectors and self.probe is not None):
                self.marks.append((req.sector, {"done": len(self.done) + 1, **self.probe()}))
            want = req.expected_used_len(self.disk_bytes)
            if used_len != want:
                self.errors.append(f"used element {seq} ({req.kind} of {req.data_len} B at "
                                   f"sector {req.sector}): len {used_len}, expected {want}")
            self.done.append(req)
        self.seen_used = idx
        return new


@dataclass
class PendingMiss:
    """A device IOTLB miss the bridge is serving."""

    iova: int
    write: bool
    start_cycle: int
    t0: float
    asked: bool = False  # sent to QEMU
    end_cycle: int | None = None  # MISS_RESOLVE written
    wall_s: float = 0.0
    source: str = ""  # "qemu" (its update), "bridge" (the bridge's copy), "failed"


@dataclass
class IotlbStats:
    """What the bridge did as the hypervisor (IOVA mode)."""

    updates: int = 0  # IOTLB_MSG updates from QEMU
    update_perms: Counter = field(default_factory=Counter)  # by perm: 1 RO, 2 WO, 3 RW
    invalidations: int = 0  # IOTLB_MSG invalidations from QEMU
    inserts: int = 0  # IOTLB_CMD 1 written
    invalidate_cmds: int = 0  # IOTLB_CMD 2 or 3 written for QEMU's invalidations
    hv_writes: int = 0  # register writes on s_hv for the IOTLB
    misses: list[PendingMiss] = field(default_factory=list)  # resolved or failed, in order


# --- the transport --------------------------------------------------------------------------------

@dataclass
class Identity:
    magic: int
    version: int
    device_id: int
    vendor: int
    features: int
    queue_num_max: int
    capacity: int  # sectors


class MmioTransport:
    """A :class:`sw.vhost_user.VhostUserDevice` that is a virtio-mmio driver of the device.

    The guest's virtio-pci driver negotiated with QEMU; QEMU relays the outcome (features, ring
    size and addresses) and this class replays it on the device's register port, in the order
    of virtio 1.x section 3.1.1.

    ``mode`` ``"gpa"``: the device runs in GPA mode (``HV_CTRL`` 0), ring addresses are
    converted from QEMU's virtual addresses to guest physical ones. ``"iova"``: the device runs
    in IOVA mode (``HV_CTRL`` 2) behind the guest's IOMMU and this class plays the hypervisor
    (docs/iotlb.md, ``../shared/notes/vhost-user-iotlb.md``): QEMU's IOTLB updates become
    inserts into the device's IOTLB (and resolve the miss they answer), its invalidations
    become invalidate commands and an ``HV_SYNC`` barrier before the acknowledgement, and a
    device miss (:meth:`poll_miss`) becomes a miss message to QEMU, or is answered from the
    bridge's own copy of QEMU's updates (:class:`IovaMap`) when the device had evicted the
    entry. A miss QEMU does not answer within ``miss_timeout_s`` is failed (cause 10).
    """

    def __init__(self, link: ClockedLink, disk_bytes: int, *, mode: str = "gpa",
                 miss_timeout_s: float = 10.0, log: logging.Logger | None = None) -> None:
        if mode not in ("gpa", "iova"):
            raise ValueError(f"mode must be 'gpa' or 'iova', not {mode!r}")
        self.link = link
        self.mode = mode
        self.ram: GuestRam = link.mem  # type: ignore[assignment]
        self.log = log or logging.getLogger("linux.transport")
        self.requests = RequestLog(self.ram, disk_bytes)
        self.iomap = IovaMap()
        self.iotlb = IotlbStats()
        self.miss: PendingMiss | None = None
        self.miss_timeout_s = miss_timeout_s
        self._staged: dict[int, int] = {}  # IOTLB staging registers as last written
        self.held: list[Any] = []  # messages read while serving a miss synchronously
        if mode == "iova" and hasattr(link, "miss_handler"):
            link.miss_handler = self.serve_miss_now  # type: ignore[attr-defined]
        self.backend: VhostUserBackend | None = None
        self.ident: Identity | None = None
        self.features = 0
        self.vring: Vring | None = None
        self.notifies = 0
        self.interrupts = 0
        self.calls = 0
        self.guest_kicks = 0  # the guest's notifies: the kick eventfd's counts (CountingBackend)
        self.starts = 0
        self.stops = 0
        self.negotiated: list[int] = []  # DriverFeatures as the device holds it, per ring start
        self.requests.probe = self.counters

    def counters(self) -> dict[str, Any]:
        """The notification counters now (the request log snapshots them at marker requests)."""
        return {"kicks": self.guest_kicks, "notifies": self.notifies,
                "interrupts": self.interrupts, "calls": self.calls, "cycle": self.link.cycle,
                "time": time.monotonic(), "features": self.negotiated[-1] if self.negotiated
                else 0}

    async def driver_features(self) -> int:
        """DriverFeatures read back from the device (both words): what it negotiated."""
        out = 0
        for sel in (1, 0):
            await self._w(spec.MMIO_DRIVER_FEATURES_SEL, sel)
            out |= await self._r(spec.MMIO_DRIVER_FEATURES) << (32 * sel)
        return out

    async def _r(self, off: int) -> int:
        return await self.link.guest.read32(off)

    async def _w(self, off: int, value: int) -> None:
        await self.link.guest.write32(off, value)

    @property
    def iova(self) -> bool:
        return self.mode == "iova"

    async def identify(self) -> Identity:
        """Put the device in its mode (GPA: the guest's addresses are physical; IOVA: they are
        the guest IOMMU's) and read who it is (IOVA mode offers ACCESS_PLATFORM)."""
        await self.link.hv.write32(spec.HV_CTRL, spec.MODE_IOVA if self.iova else spec.MODE_GPA)
        features = await virtio.run_async(virtio.read_device_features(), self.link.guest)
        await self._w(spec.MMIO_QUEUE_SEL, 0)
        ident = Identity(
            magic=await self._r(spec.MMIO_MAGIC_VALUE),
            version=await self._r(spec.MMIO_VERSION),
            device_id=await self._r(spec.MMIO_DEVICE_ID),
            vendor=await self._r(spec.MMIO_VENDOR_ID),
            features=features,
            queue_num_max=await self._r(spec.MMIO_QUEUE_NUM_MAX),
            capacity=(await self._r(spec.MMIO_CONFIG + 4)) << 32
            | await self._r(spec.MMIO_CONFIG),
        )
        if (ident.magic, ident.version, ident.device_id) != (
                spec.MAGIC_VALUE, spec.MMIO_VERSION_VALUE, spec.VIRTIO_ID_BLOCK):
            raise BridgeError(f"not a virtio-mmio v2 block device: {ident}")
        self.ident = ident
        return ident

    # -- VhostUserDevice ---------------------------------------------------------------------------
    async def get_config(self, offset: int, size: int) -> bytes:
        """The device's configuration space, read from its registers (32-bit accesses)."""
        first, last = offset & ~3, (offset + size + 3) & ~3
        raw = bytearray()
        for off in range(first, last, 4):
            raw += (await self._r(spec.MMIO_CONFIG + off)).to_bytes(4, "little")
        return bytes(raw[offset - first:offset - first + size])

    async def set_features(self, features: int) -> None:
        assert self.ident is not None
        extra = features & ~self.ident.features
        if extra:
            raise VhostUserError(f"the driver accepted features {extra:#x} the device does not "
                                 f"offer ({self.ident.features:#x})")
        self.features = features

    async def set_mem_table(self, table: MemoryTable) -> None:
        self.ram.table = table
        if self.iova:
            # Every translation names a place in the old table: forget them all (as DPDK does).
            self.iomap.clear()
            await self._iotlb_cmd(spec.IOTLB_CMD_INVALIDATE_ALL)
            await self._sync()

    async def start_ring(self, vring: Vring) -> None:
        assert self.ident is not None and self.backend is not None
        mem = self.backend.mem
        assert mem is not None and vring.desc is not None
        assert vring.avail is not None and vring.used is not None
        if vring.index != 0:
            raise VhostUserError(f"queue {vring.index}: the device has one queue")
        if vring.base != 0:
            raise VhostUserError(
                f"SET_VRING_BASE {vring.base}: a virtio-mmio device starts its queue at avail "
                "index 0 after a reset; resuming a ring elsewhere (migration, a stop/start "
                "without a guest reset) is not supported")
        n = vring.num
        if not 1 <= n <= self.ident.queue_num_max or n & (n - 1):
            raise VhostUserError(f"queue size {n} is not a power of two <= QueueNumMax "
                                 f"{self.ident.queue_num_max}")
        ring = SplitRing(n)
        if self.iova:
            # With ACCESS_PLATFORM, SET_VRING_ADDR carries IOVAs: the device translates them.
            desc, avail, used = vring.desc, vring.avail, vring.used
            self.requests.mem = IovaView(self.ram, self.iomap)
        else:
            # QEMU's virtual addresses -> guest physical (the device's view), through the table.
            desc = mem.uva_to_gpa(vring.desc, ring.desc_bytes)
            avail = mem.uva_to_gpa(vring.avail, ring.avail_bytes)
            used = mem.uva_to_gpa(vring.used, ring.used_bytes)
        # virtio 1.2 section 3.1.1, FeaturesRefused if FEATURES_OK does not stick
        await virtio.run_async(virtio.bring_up(self.features, n, desc, avail, used),
                               self.link.guest)
        self.negotiated.append(await self.driver_features())
        self.requests.start(n, desc, avail, used)
        self.vring = vring
        self.starts += 1
        self.log.info("queue 0 running: %d entries, desc %#x avail %#x used %#x (%s), "
                      "features %#x", n, desc, avail, used, "IOVA" if self.iova else "GPA",
                      self.features)

    async def kick(self, vring: Vring) -> None:
        self.requests.kicked = True
        self.requests.take_avail(self.link.cycle)
        await self._w(spec.MMIO_QUEUE_NOTIFY, 0)
        self.notifies += 1

    async def stop_ring(self, vring: Vring, drain_cycles: int = 2_000_000) -> int:
        """Let the device finish what was made available, then reset it. The reply to
        GET_VRING_BASE is the next avail index: the used index, as the device is in order."""
        waited = 0
        while self.requests.outstanding() and waited < drain_cycles:
            if self.link.irq:
                await self.service_irq()
            # QEMU waits for this message's reply and reads nothing else meanwhile: a miss
            # the bridge cannot answer itself is failed at once.
            await self.poll_miss(can_ask=False)
            await self.link.advance(64)
            waited += 64
        if self.link.irq:
            await self.service_irq()
        self.requests.collect(self.link.cycle)
        base = self.requests.used_idx() if self.requests.running else 0
        await virtio.run_async(virtio.reset(), self.link.guest)
        self.requests.num = 0
        self.vring = None
        self.stops += 1
        self.log.info("queue 0 stopped at avail index %d", base)
        return base

    async def iotlb_message(self, msg: IotlbMsg) -> None:
        """QEMU's update or invalidation; the acknowledgement goes out after this returns."""
        if not self.iova:
            raise VhostUserError(f"IOTLB_MSG {msg}: the device runs in GPA mode "
                                 "(LINUX_MODE=iova runs it behind the guest's IOMMU)")
        if msg.type == IotlbType.UPDATE:
            await self._update(msg)
        elif msg.type == IotlbType.INVALIDATE:
            await self._invalidate(msg.iova, msg.size)
        else:
            raise VhostUserError(f"IOTLB_MSG of type {msg.type} from the front-end ({msg})")

    # -- IOVA mode: the hypervisor's side of the IOTLB --------------------------------------------
    async def _hv_w(self, off: int, value: int, *, staging: bool = False) -> None:
        """A write on s_hv; a staging register is written only when its value changes (the
        registers keep what was written, docs/iotlb.md)."""
        if staging and self._staged.get(off) == value:
            return
        await self.link.hv.write32(off, value)
        if staging:
            self._staged[off] = value
        self.iotlb.hv_writes += 1

    async def _stage(self, iova: int, log2: int, gpa: int = 0, perm: int = 0) -> None:
        attr = log2 | (spec.IOTLB_ATTR_READ if perm & VHOST_ACCESS_RO else 0) \
            | (spec.IOTLB_ATTR_WRITE if perm & VHOST_ACCESS_WO else 0)
        await self._hv_w(spec.HV_IOTLB_IOVA_LO, iova & 0xFFFF_FFFF, staging=True)
        await self._hv_w(spec.HV_IOTLB_IOVA_HI, iova >> 32, staging=True)
        if perm:
            await self._hv_w(spec.HV_IOTLB_PA_LO, gpa & 0xFFFF_FFFF, staging=True)
            await self._hv_w(spec.HV_IOTLB_PA_HI, gpa >> 32, staging=True)
        await self._hv_w(spec.HV_IOTLB_ATTR, attr, staging=True)

    async def _iotlb_cmd(self, cmd: int) -> None:
        await self._hv_w(spec.HV_IOTLB_CMD, cmd)

    async def _sync(self) -> None:
        """``HV_SYNC``: once it reads 1, no bus transaction uses a removed translation."""
        await self._hv_w(spec.HV_SYNC, 1)
        for _ in range(100_000):
            if await self.link.hv.read32(spec.HV_SYNC) & 1:
                return
            await self.link.advance(1)
        raise BridgeError("HV_SYNC did not complete within 100,000 polls")

    async def _insert(self, iova: int, gpa: int, log2: int, perm: int) -> None:
        await self._stage(iova, log2, gpa, perm)
        await self._iotlb_cmd(spec.IOTLB_CMD_INSERT)
        self.iotlb.inserts += 1

    async def _update(self, msg: IotlbMsg) -> None:
        """Insert what QEMU maps (its ``uaddr`` -> guest physical through the memory table),
        in naturally aligned pieces; resolve the pending miss it answers."""
        self.iotlb.updates += 1
        self.iotlb.update_perms[msg.perm] += 1
        mem = self.backend.mem if self.backend is not None else None
        if mem is None:
            raise VhostUserError(f"IOTLB update {msg} before any memory table")
        if msg.perm & VHOST_ACCESS_RW == 0 or msg.size == 0:
            self.log.warning("IOTLB update without permission or size ignored: %s", msg)
            return
        gpa = mem.uva_to_gpa(msg.uaddr, msg.size)
        if (msg.iova | gpa | msg.size) % PAGE:
            raise VhostUserError(f"IOTLB update {msg} is not made of whole 4 KiB pages "
                                 f"(guest physical {gpa:#x})")
        self.iomap.insert(msg.iova, msg.size, gpa, msg.perm & VHOST_ACCESS_RW)
        for iova, pa, log2 in aligned_pieces(msg.iova, msg.size, gpa):
            await self._insert(iova, pa, log2, msg.perm)  # type: ignore[arg-type]
        miss = self.miss
        if miss is not None and msg.iova <= miss.iova < msg.iova + msg.size:
            await self._resolve(spec.MISS_RESOLVE_RETRY, "qemu")

    async def _invalidate(self, iova: int, size: int) -> None:
        """Remove ``[iova, iova + size)`` from the device (and the bridge's copy), then
        ``HV_SYNC``: QEMU is acknowledged only once no transaction can use it any more."""
        self.iotlb.invalidations += 1
        self.iomap.remove(iova, size)
        pieces = aligned_pieces(iova, min(size, 1 << 48))
        if size >= 1 << 48 or len(pieces) > 64:  # a whole address space: one command
            await self._iotlb_cmd(spec.IOTLB_CMD_INVALIDATE_ALL)
            self.iotlb.invalidate_cmds += 1
        else:
            for lo, _, log2 in pieces:
                await self._stage(lo, log2)
                await self._iotlb_cmd(spec.IOTLB_CMD_INVALIDATE)
                self.iotlb.invalidate_cmds += 1
        await self._sync()

    async def _resolve(self, how: int, source: str) -> None:
        miss = self.miss
        assert miss is not None
        await self._hv_w(spec.HV_MISS_RESOLVE, how)
        self.miss = None
        miss.end_cycle = self.link.cycle
        miss.wall_s = time.monotonic() - miss.t0
        miss.source = source if how == spec.MISS_RESOLVE_RETRY else "failed"
        self.iotlb.misses.append(miss)

    async def poll_miss(self, *, can_ask: bool = True) -> None:
        """Serve the device's IOTLB miss, if one is pending (``hv_irq``): from the bridge's
        copy of QEMU's updates if it has the page (the device evicted it), else by a miss
        message to QEMU, whose update resolves it later (:meth:`_update`). A miss QEMU leaves
        unanswered for ``miss_timeout_s`` (or any, when QEMU cannot answer: ``can_ask``
        False) is failed."""
        if not self.iova:
            return
        miss = self.miss
        if miss is not None:
            if not can_ask or time.monotonic() - miss.t0 > self.miss_timeout_s:
                self.log.error("IOTLB miss at IOVA %#x (%s) unanswered after %.1f s: failed",
                               miss.iova, "write" if miss.write else "read",
                               time.monotonic() - miss.t0)
                await self._resolve(spec.MISS_RESOLVE_FAIL, "failed")
            return
        if getattr(self.link, "hv_irq", None) is False:  # None: no port, read the register
            return
        seen = self.link.cycle  # hv_irq ends the bridge's wait: the miss rose just before
        status = await self.link.hv.read32(spec.HV_IOTLB_MISS)
        if not status & spec.IOTLB_MISS_PENDING:
            return
        iova = await self.link.hv.read32(spec.HV_MISS_IOVA_LO) \
            | await self.link.hv.read32(spec.HV_MISS_IOVA_HI) << 32
        write = bool(status & spec.IOTLB_MISS_WRITE)
        miss = self.miss = PendingMiss(iova, write, seen, time.monotonic())
        m = self.iomap.lookup(iova)
        if m is not None:
            # The device's IOTLB had it and evicted it: insert the aligned piece that holds it.
            for k in range(spec.IOTLB_MAX_SIZE, spec.IOTLB_MIN_SIZE - 1, -1):
                base = iova & ~((1 << k) - 1)
                if base >= m.iova and base + (1 << k) <= m.end and not (m.gpa - m.iova) % (1 << k):
                    await self._insert(base, m.gpa + base - m.iova, k, m.perm)
                    break
            await self._resolve(spec.MISS_RESOLVE_RETRY, "bridge")
        elif not can_ask or self.backend is None or self.backend.backend_channel is None:
            await self._resolve(spec.MISS_RESOLVE_FAIL, "failed")
        else:
            self.backend.send_iotlb_miss(iova, VHOST_ACCESS_WO if write else VHOST_ACCESS_RO)
            miss.asked = True

    def serve_miss_now(self) -> None:
        """Serve the pending miss before returning (the untimed model calls this inside a
        register write): the bridge's copy, else a miss message to QEMU and the main socket
        read here until its update has resolved it. Other messages are held for the main loop
        (QEMU waits for their replies, so a miss behind one times out)."""
        run_coroutine(self.poll_miss())
        deadline = self.miss.t0 + self.miss_timeout_s if self.miss is not None else 0.0
        while self.miss is not None:
            be = self.backend
            left = deadline - time.monotonic()
            if be is None or be.closed or left <= 0:
                run_coroutine(self.poll_miss(can_ask=False))
                break
            if not select.select([be], [], [], left)[0]:
                continue
            msg = be.receive()
            if msg is None:
                run_coroutine(self.poll_miss(can_ask=False))
                break
            if msg.request == Request.IOTLB_MSG:
                run_coroutine(be.handle(msg))
            else:
                self.held.append(msg)

    async def iotlb_counters(self) -> dict[str, int]:
        """The device's IOTLB statistics (0 in GPA mode)."""
        return {"hits": await self.link.hv.read32(spec.HV_STAT_IOTLB_HITS),
                "misses": await self.link.hv.read32(spec.HV_STAT_IOTLB_MISSES),
                "invalidated": await self.link.hv.read32(spec.HV_STAT_IOTLB_INVALIDATED),
                "entries": await self.link.hv.read32(spec.HV_IOTLB_ENTRIES)}

    async def identity_map(self) -> None:
        """After the guest: forget QEMU's translations and map IOVA = guest physical over the
        first GiB, read and write (the read-back driver's addresses are physical)."""
        self.iomap.clear()
        await self._iotlb_cmd(spec.IOTLB_CMD_INVALIDATE_ALL)
        await self._insert(0, 0, spec.IOTLB_MAX_SIZE, VHOST_ACCESS_RO | VHOST_ACCESS_WO)
        await self._sync()

    # -- interrupt ---------------------------------------------------------------------------------
    async def service_irq(self) -> None:
        """irq is high: acknowledge, account the completions, signal the call eventfd."""
        isr = await self._r(spec.MMIO_INTERRUPT_STATUS)
        if not isr:
            return
        await self._w(spec.MMIO_INTERRUPT_ACK, isr)
        self.interrupts += 1
        if isr & spec.INT_CONFIG_CHANGE:
            status = await self._r(spec.MMIO_STATUS)
            if status & spec.STATUS_DEVICE_NEEDS_RESET:
                cause = await self.link.hv.read32(spec.HV_FAULT_CAUSE)
                addr = (await self.link.hv.read32(spec.HV_FAULT_ADDR_HI)) << 32 | \
                    await self.link.hv.read32(spec.HV_FAULT_ADDR_LO)
                target = getattr(self.link, "target", None)
                bus = target.refused[:4] if target is not None else []
                raise BridgeError(f"device fault: cause {cause} "
                                  f"({spec.FAULT_NAMES.get(cause, '?')}) at {addr:#x}"
                                  + (f"; accesses outside guest memory: {bus}" if bus else ""))
        if isr & spec.INT_USED_BUFFER:
            # Account before signalling: once called, the guest may reuse the buffers.
            self.requests.collect(self.link.cycle)
            if self.backend is not None and self.vring is not None:
                self.backend.call(self.vring)
                self.calls += 1

    def busy(self) -> bool:
        return self.requests.outstanding() or self.miss is not None

    @property
    def waiting_for_qemu(self) -> bool:
        """A miss is with QEMU: the device can do nothing until its update arrives."""
        return self.miss is not None and self.miss.asked


class CountingBackend(VhostUserBackend):
    """The vhost-user back-end, counting the guest's notifies: an eventfd read returns how many
    writes QEMU made since the last read (one per notify the guest wrote), so kicks that arrive
    between two polls are counted, not merged."""

    async def kicked(self, v: Vring) -> None:
        if v.kick_fd is None:
            return
        try:
            n = os.eventfd_read(v.kick_fd)
        except BlockingIOError:
            return
        dev = self.device
        if hasattr(dev, "guest_kicks"):
            dev.guest_kicks += n
        if v.started and v.enabled:
            await dev.kick(v)
        else:
            v.kick_pending = True


# --- the run --------------------------------------------------------------------------------------

_RESULT = re.compile(r"VHB RESULT (\S+) (PASS|FAIL)\s*(.*)")


class Console:
    """QEMU's serial console (a file), read incrementally: the guest's result lines."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        self.pos = 0
        self.partial = b""
        self.results: dict[str, tuple[bool, str]] = {}
        self.started_at: float | None = None
        self.done_at: float | None = None
        self.dmesg: list[str] = []
        self._last = 0.0

    def poll(self, min_interval_s: float = 0.0) -> None:
        now = time.monotonic()
        if now - self._last < min_interval_s:
            return
        self._last = now
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            self.log.info("guest| %s", line)
            if line.startswith("VHB START") and self.started_at is None:
                self.started_at = time.monotonic()
            elif line.startswith("VHB DONE"):
                self.done_at = time.monotonic()
            elif line.startswith("VHB DMESG"):
                self.dmesg.append(line[10:])
            m = _RESULT.search(line)
            if m:
                self.results[m.group(1)] = (m.group(2) == "PASS", m.group(3).strip())


def _die_with_parent() -> None:
    """In the QEMU child: SIGKILL when the simulator process dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class BridgeConfig:
    qemu: list[str]  # argv; "{socket}" is replaced by the socket path
    console: Path
    deadline_s: float = 480.0
    idle_wait_s: float = 0.05
    poll_cycles: int = 16
    miss_wait_s: float = 0.02  # select timeout while a miss is with QEMU
    stall_cycles: int = 300_000  # requests outstanding and no used element for this long


@dataclass
class BridgeStats:
    wall_s: float = 0.0
    boot_s: float | None = None
    guest_s: float | None = None  # VHB START to VHB DONE
    first_kick_s: float | None = None
    cycles: int = 0
    busy_cycles: int = 0  # cycles with requests outstanding, the bridge's register traffic too
    sim_cycles: int = 0  # of those, the cycles simulated while the bridge waited for a poll
    busy_wall_s: float = 0.0  # the wall time of those sim_cycles
    qemu_rc: int | None = None
    messages: dict[str, int] = field(default_factory=dict)


class LinuxBridge:
    """Start QEMU, serve its vhost-user connection with the device, until the guest powers off."""

    def __init__(self, link: ClockedLink, transport: MmioTransport, cfg: BridgeConfig,
                 log: logging.Logger | None = None) -> None:
        self.link = link
        self.transport = transport
        self.cfg = cfg
        self.log = log or logging.getLogger("linux.bridge")
        self.console = Console(cfg.console, self.log)
        self.stats = BridgeStats()

    async def run(self) -> BridgeStats:
        ident = self.transport.ident or await self.transport.identify()
        features = ident.features
        with tempfile.TemporaryDirectory(prefix="vhb-linux-") as tmp:
            path = os.path.join(tmp, "vhost-user.sock")
            srv = listen(path)
            argv = [a.replace("{socket}", path) for a in self.cfg.qemu]
            self.cfg.console.parent.mkdir(parents=True, exist_ok=True)
            self.log.info("starting: %s", " ".join(argv))
            with open(self.cfg.console, "wb") as out:
                qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            t0 = time.monotonic()
            backend: VhostUserBackend | None = None
            try:
                backend = await self._serve(srv, qemu, features, t0)
            finally:
                srv.close()
                if qemu.poll() is None:
                    qemu.kill()
                self.stats.qemu_rc = qemu.wait()
                self.console.poll()
                if backend is not None:
                    self.stats.messages = dict(backend.counts)
                    backend.close()
                self.stats.wall_s = time.monotonic() - t0
                if self.console.started_at is not None:
                    self.stats.boot_s = self.console.started_at - t0
                    if self.console.done_at is not None:
                        self.stats.guest_s = self.console.done_at - self.console.started_at
        return self.stats

    async def _serve(self, srv: socket.socket, qemu: subprocess.Popen, features: int,
                     t0: float) -> VhostUserBackend | None:
        backend: VhostUserBackend | None = None
        hung_up = False
        t = self.transport
        last_used, last_progress = -1, self.link.cycle
        c_iter, busy_prev = self.link.cycle, False
        while True:
            # Cycles of the last iteration, its handlers' register accesses included (IOVA
            # mode: inserts, invalidations and HV_SYNC barriers run there), if it had work.
            if busy_prev:
                self.stats.busy_cycles += self.link.cycle - c_iter
            c_iter = self.link.cycle
            if time.monotonic() - t0 > self.cfg.deadline_s:
                raise BridgeError(f"timeout: the guest did not finish within "
                                  f"{self.cfg.deadline_s:.0f} s (see {self.cfg.console})")
            self.console.poll(0.1)
            if qemu.poll() is not None and (backend is None or hung_up):
                return backend
            busy = t.busy() or self.link.irq
            # While a miss is with QEMU the device can do nothing: wait for its update in
            # select (the clock stops) instead of simulating cycles that change nothing.
            asking = t.waiting_for_qemu and not self.link.irq
            wait = self.cfg.miss_wait_s if asking else 0.0 if busy else self.cfg.idle_wait_s
            try:
                used = t.requests.used_idx() if t.requests.running else -1
            except Untranslated:
                used = -1
            if not busy or used != last_used:
                last_used, last_progress = used, self.link.cycle
            elif self.link.cycle - last_progress > self.cfg.stall_cycles:
                raise BridgeError(f"the device published no used element for "
                                  f"{self.cfg.stall_cycles} cycles with requests outstanding "
                                  f"(used index {used}, avail index "
                                  f"{t.requests.avail_idx()})")
            if backend is None:
                fds: list[Any] = [srv]
            elif not hung_up:
                fds = [backend, *(fd for fd, _ in backend.kick_fds())]
            else:
                fds = []  # QEMU hung up: wait for it to exit
            ready = select.select(fds, [], [], wait)[0] if fds else []
            if not fds:
                time.sleep(wait)
            for obj in ready:
                if obj is srv:
                    conn, _ = srv.accept()
                    backend = CountingBackend(conn, t, features=features, iommu=t.iova)
                    t.backend = backend
                    self.log.info("QEMU connected after %.2f s", time.monotonic() - t0)
                elif obj is backend:
                    msg = backend.receive()
                    if msg is None:
                        hung_up = True
                        self.log.info("QEMU closed the vhost-user connection")
                    else:
                        await backend.handle(msg)
                elif backend is not None and not hung_up:
                    for fd, vring in list(backend.kick_fds()):
                        if fd == obj:
                            if self.stats.first_kick_s is None:
                                self.stats.first_kick_s = time.monotonic() - t0
                            await backend.kicked(vring)
            while t.held and backend is not None:  # read while a miss was served in a write
                await backend.handle(t.held.pop(0))
            # Decode what the guest made available before the device can complete it (the
            # device takes far more than poll_cycles to read a chain and move its data).
            t.requests.take_avail(self.link.cycle)
            if self.link.irq:
                await t.service_irq()
            if backend is not None and not hung_up:
                await t.poll_miss()
            c0, w0 = self.link.cycle, time.monotonic()
            await self.link.advance(self.cfg.poll_cycles if busy and not asking else 1)
            busy_prev = busy
            if busy:
                self.stats.sim_cycles += self.link.cycle - c0
                self.stats.busy_wall_s += time.monotonic() - w0


# --- after the guest: read the disk back through the device, compare, report ---------------------

SCRATCH_BASE = 16 << 20  # guest RAM the read-back driver borrows once the guest is gone
SCRATCH_BYTES = 4 << 20


async def read_back(link: Any, capacity: int, chunk_sectors: int = 256) -> bytes:
    """The whole RAM disk as the device returns it, read by this project's driver model
    (``sw/driver.py``) with rings and buffers in the dead guest's memory."""
    alloc = PageAllocator(link.ram, base=SCRATCH_BASE, size=SCRATCH_BYTES, seed=0)
    driver = VirtioBlkDriver(link, IdentityDma(), alloc, seed=None, irq_timeout=2_000_000)
    await driver.init(16)
    out = await read_disk(driver.run_batch, capacity, chunk_sectors)
    await driver.reset()
    return out


def summarize(transport: MmioTransport, stats: BridgeStats, console: Console,
              checks: list[str], readback: bytes | None, expected: bytes | None,
              hv: dict[str, int], mode: str, errors: list[str],
              io: list[tuple[int, int]] = (), plan: dict[str, Any] | None = None,
              boot2: tuple[BridgeStats, Console, list[str]] | None = None,
              boot1_requests: int | None = None) -> dict[str, Any]:
    """Every check (guest's and host's) and the figures, as one JSON-able dict. The figures
    are the first boot's (``boot1_requests``: how many of the requests were its own); the
    second boot (``boot2``: its stats, console and checks) adds its checks and its
    notification window."""
    log = transport.requests
    done = log.done[:boot1_requests]
    results: list[tuple[str, bool, str]] = []
    for name in checks:
        ok, detail = console.results.get(name, (False, "no result line from the guest"))
        results.append((f"guest {name}", ok, detail))
    if boot2 is not None:
        for name in boot2[2]:
            ok, detail = boot2[1].results.get(name, (False, "no result line from the guest"))
            results.append((f"boot2 {name}", ok, detail))
    by_kind = Counter(r.kind for r in done)
    data_bytes = Counter()
    for r in done:
        data_bytes[r.kind] += r.data_len if r.type in (spec.VIRTIO_BLK_T_IN,
                                                       spec.VIRTIO_BLK_T_OUT) else 0
    served = hv.get("requests", len(log.done))
    results.append(("host requests", served == len(log.done) and not log.pending,
                    f"device counted {served}, bridge matched {len(log.done)} used elements, "
                    f"{len(log.pending)} left pending"))
    results.append(("host used-elements", not log.errors, "; ".join(log.errors[:3]) or
                    "every used element names the right head and length"))
    for size, offset in io:
        # O_DIRECT reaches the device as requests inside the range that add up to it; a
        # buffered fallback would show as page-sized requests around unaligned ranges.
        s0, s1 = offset // spec.SECTOR_SIZE, (offset + size) // spec.SECTOR_SIZE
        for kind in ("write", "read"):
            inside = sum(r.data_len for r in done if r.kind == kind and s0 <= r.sector
                         and r.sector + r.data_len // spec.SECTOR_SIZE <= s1)
            results.append((f"host direct-{kind}-{size}", inside == size,
                            f"{inside} bytes in {kind} requests inside sectors [{s0}, {s1})"))
    results.append(("host faults", hv.get("faults", 0) == 0,
                    f"HV_FAULT_COUNT {hv.get('faults', 0)}"))
    results.append(("host flush-served", by_kind["flush"] > 0,
                    f"{by_kind['flush']} VIRTIO_BLK_T_FLUSH"))
    results.append(("host get-id-served", by_kind["get-id"] > 0,
                    f"{by_kind['get-id']} VIRTIO_BLK_T_GET_ID"))
    if readback is not None:
        results.append(("host disk-vs-guest-writes", readback == bytes(log.shadow),
                        "RAM disk read back through the device vs the initial pattern with "
                        "every write the guest made: " + first_difference(readback,
                                                                          bytes(log.shadow))))
    if expected is not None:
        # The plan covers the disk's first len(expected) bytes (in IOVA mode the rest holds
        # the guest's filesystem, which the guest checks itself; the read-back covers it all).
        wrote = bytes(log.shadow[:len(expected)])
        results.append(("host guest-writes-vs-plan", wrote == expected,
                        "what the guest wrote vs the plan"
                        + ("" if len(expected) == len(log.shadow)
                           else f" (first {len(expected) // 1024} KiB)") + ": "
                        + first_difference(wrote, expected)))
    iotlb = _iotlb_figures(transport, hv, done, stats) if transport.iova or "iotlb" in hv else None
    if transport.iova and iotlb is not None:
        results += _iova_checks(transport, hv, iotlb)
    feat = _feature_figures(transport, done, console, boot2, plan or {}, mode)
    results += feat.pop("checks")
    results.append(("host guest-exit", stats.qemu_rc == 0 and console.done_at is not None
                    and not errors, f"QEMU exit {stats.qemu_rc}; " + ("; ".join(errors)
                                                                       or "no bridge error")))
    if boot2 is not None:
        results.append(("host boot2-exit", boot2[0].qemu_rc == 0 and boot2[1].done_at
                        is not None, f"second boot's QEMU exit {boot2[0].qemu_rc}"))
    lat = [r.done_cycle - r.kick_cycle for r in done if r.done_cycle is not None]
    # Service time of the in-order device (completions are seen within poll_cycles).
    service: dict[str, list[int]] = {}
    for r, start in _service_starts(done):
        service.setdefault(f"{r.kind} {r.data_len}", []).append(r.done_cycle - start)
    sizes = Counter(r.data_len for r in done if r.type in (spec.VIRTIO_BLK_T_IN,
                                                           spec.VIRTIO_BLK_T_OUT))
    bus = getattr(transport.link, "target", None)  # the m_axi model (none for the reference)
    figures = {
        "mode": mode,
        "requests": len(done),
        "requests_by_type": dict(by_kind),
        "data_bytes": sum(data_bytes.values()),
        "data_bytes_by_type": dict(data_bytes),
        "request_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "bus_bytes_read": bus.bytes_read if bus else 0,
        "bus_bytes_written": bus.bytes_written if bus else 0,
        "cycles": stats.cycles,
        "busy_cycles": stats.busy_cycles,
        "cycles_per_request": (stats.busy_cycles / len(done)) if done else None,
        "latency_cycles": {"min": min(lat), "mean": sum(lat) / len(lat), "max": max(lat)}
        if lat else None,
        "service_cycles": {k: {"n": len(v), "mean": sum(v) / len(v), "min": min(v)}
                           for k, v in sorted(service.items())},
        "wall_s": stats.wall_s,
        "boot_s": stats.boot_s,
        "guest_s": stats.guest_s,
        "first_kick_s": stats.first_kick_s,
        "busy_wall_s": stats.busy_wall_s,
        "requests_per_s": len(done) / stats.wall_s if stats.wall_s else None,
        "requests_per_busy_s": len(done) / stats.busy_wall_s if stats.busy_wall_s else None,
        "cycles_per_s": stats.sim_cycles / stats.busy_wall_s if stats.busy_wall_s else None,
        "notifies": transport.notifies,
        "interrupts": transport.interrupts,
        "calls": transport.calls,
        "ring_starts": transport.starts,
        "messages": stats.messages,
        "readback_md5": hashlib.md5(readback).hexdigest() if readback is not None else None,
        "translation": transport.mode,
        "iotlb": iotlb,
        **feat,
    }
    trace = [[r.kind, r.sector, r.data_len, r.kick_cycle, r.done_cycle] for r in done]
    return {"checks": results, "figures": figures, "dmesg": console.dmesg, "requests": trace}


def _bin(n: int) -> int:
    """The power-of-two bin of a request size: the smallest power of two >= n (512 at least)."""
    return max(512, 1 << max(n - 1, 0).bit_length())


def _feature_names(bits: int) -> list[str]:
    return [spec.FEATURE_NAMES.get(b, str(b)) for b in range(64) if bits >> b & 1]


def _window(marks: list[tuple[int, dict[str, Any]]], m0: int, m1: int,
            start: int) -> tuple[dict[str, Any] | None, int]:
    """The counters between the completion of the next ``m0`` marker from ``start`` and the
    next ``m1`` one (their difference), and where the search stops."""
    for i in range(start, len(marks)):
        if marks[i][0] != m0:
            continue
        for j in range(i + 1, len(marks)):
            if marks[j][0] == m1:
                a, b = marks[i][1], marks[j][1]
                w = {k: b[k] - a[k] for k in ("done", "kicks", "notifies", "interrupts", "calls",
                                              "cycle", "time")}
                w["event_idx"] = bool(b["features"] >> spec.VIRTIO_RING_F_EVENT_IDX & 1)
                n = w["done"] or 1
                w.update(kicks_per_request=w["kicks"] / n,
                         interrupts_per_request=w["calls"] / n)
                return w, j + 1
        break
    return None, len(marks)


_GUEST_NOTIFY = re.compile(r"interrupts (-?\d+) reads (-?\d+) writes (-?\d+)")


def _feature_figures(transport: MmioTransport, done: list[BlkReq], console: Console,
                     boot2: tuple[BridgeStats, Console, list[str]] | None,
                     plan: dict[str, Any], mode: str) -> dict[str, Any]:
    """Issue 17's figures and host checks: the features offered and negotiated (DriverFeatures
    read back from the device at each ring start), the request size histogram, indirect
    tables, requests in flight, DISCARD and WRITE_ZEROES served, and the notification windows
    (kicks and interrupts per request with and without EVENT_IDX). The requests in flight are
    checked against the RTL only: the untimed model serves every notify at once, so requests
    pile up only as far as the guest batches them."""
    log = transport.requests
    offered = transport.ident.features if transport.ident is not None else 0
    neg = transport.negotiated
    first = neg[0] if neg else 0
    want = [b for b in (spec.VIRTIO_F_INDIRECT_DESC, spec.VIRTIO_RING_F_EVENT_IDX,
                        spec.VIRTIO_BLK_F_SEG_MAX) if offered >> b & 1]
    missing = [spec.FEATURE_NAMES[b] for b in want if not first >> b & 1]
    checks: list[tuple[str, bool, str]] = [
        ("host negotiated", bool(neg) and len(want) == 3 and not missing,
         f"DriverFeatures {first:#x}: {' '.join(_feature_names(first))}"
         + (f"; missing {' '.join(missing)}" if missing else "")
         + ("" if len(want) == 3 else "; the device does not offer all of INDIRECT_DESC, "
            "EVENT_IDX, SEG_MAX"))]
    rw = [r for r in done if r.type in (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT)]
    hist = Counter(_bin(r.data_len) for r in rw)
    biggest = max((r.data_len for r in rw), default=0)
    min_req = plan.get("min_request", 512 * 1024)
    checks.append(("host request-size", biggest >= min_req,
                   f"largest read or write {biggest // 1024} KiB (at least "
                   f"{min_req // 1024} KiB wanted)"))
    ind = [r for r in done if r.indirect]
    checks.append(("host indirect", bool(ind) or not first >> spec.VIRTIO_F_INDIRECT_DESC & 1,
                   f"{len(ind)} of {len(done)} requests through an indirect table"))
    min_fl = plan.get("min_in_flight", 32)
    if mode == "rtl":
        checks.append(("host in-flight", log.max_in_flight >= min_fl,
                       f"at most {log.max_in_flight} requests made available and not used at "
                       f"once (at least {min_fl} wanted)"))
    for kind, key in (("discard", "discard"), ("write-zeroes", "zeroout")):
        rng = plan.get(key)
        if not rng:
            continue
        off, n = rng
        s0, s1 = off // spec.SECTOR_SIZE, (off + n) // spec.SECTOR_SIZE
        got = sum(r.dwz[1] for r in done if r.kind == kind and r.dwz is not None
                  and s0 <= r.dwz[0] and r.dwz[0] + r.dwz[1] <= s1) * spec.SECTOR_SIZE
        checks.append((f"host {kind}-served", got == n,
                       f"{got} bytes in {kind} requests inside sectors [{s0}, {s1})"))
    windows = []
    m = plan.get("mark_sectors")
    if m:
        log_marks = log.marks
        w1, k = _window(log_marks, m[0], m[1], 0)
        windows.append(w1)
        if boot2 is not None:
            windows.append(_window(log_marks, m[0], m[1], k)[0])
        consoles = [console, boot2[1] if boot2 is not None else None]
        for w, con in zip(windows, consoles, strict=False):
            if w is None:
                continue
            res = (con.results if con is not None else {}).get("notify")
            g = _GUEST_NOTIFY.search(res[1]) if res else None
            if g:
                w["guest_interrupts"], w["guest_reads"], w["guest_writes"] = map(int, g.groups())
        ok = windows[0] is not None and windows[0]["event_idx"]
        detail = "first boot: " + ("no window" if windows[0] is None else
                                   f"EVENT_IDX {'on' if windows[0]['event_idx'] else 'off'}")
        if boot2 is not None:
            w2 = windows[1]
            ok = ok and w2 is not None and not w2["event_idx"]
            detail += "; second boot: " + ("no window" if w2 is None else
                                           f"EVENT_IDX {'on' if w2['event_idx'] else 'off'}")
        checks.append(("host notify-windows", ok, detail))
    return {
        "checks": checks,
        "features_offered": offered,
        "features_negotiated": neg,
        "request_size_bins": {str(k): v for k, v in sorted(hist.items())},
        "largest_request": biggest,
        "indirect_requests": len(ind),
        "descriptors_max": max((r.descs for r in done), default=0),
        "max_in_flight": log.max_in_flight,
        "dwz": {kind: [r.dwz for r in done if r.kind == kind]
                for kind in ("discard", "write-zeroes")},
        "notify_windows": windows,
    }


def _service_starts(done: list[BlkReq]) -> Iterator[tuple[BlkReq, int]]:
    """``(request, start)`` of each completed request of the in-order device, in order: its
    service interval runs from the later of its kick and the previous completion to its
    completion."""
    prev: int | None = None
    for r in done:
        if r.done_cycle is None:
            continue
        yield r, r.kick_cycle if prev is None else max(r.kick_cycle, prev)
        prev = r.done_cycle


def _overlap(a0: int, a1: int, spans: list[tuple[int, int]]) -> int:
    return sum(max(0, min(a1, b1) - max(a0, b0)) for b0, b1 in spans)


def _iotlb_figures(transport: MmioTransport, hv: dict[str, Any], done: list[BlkReq],
                   stats: BridgeStats) -> dict[str, Any]:
    """IOTLB figures of the guest phase: the device's counters, what the bridge did as the
    hypervisor, and the cycles requests spent stalled on misses (a miss's first cycle to the
    cycle its MISS_RESOLVE was written), separated from the device's own cycles."""
    st = transport.iotlb
    dev = hv.get("iotlb") or {}
    n = len(done) or 1
    misses = st.misses
    spans = [(m.start_cycle, m.end_cycle) for m in misses if m.end_cycle is not None]
    stall = sum(b - a for a, b in spans)
    by_source = Counter(m.source for m in misses)
    asked = [m.wall_s for m in misses if m.asked and m.source == "qemu"]
    # Per request: stall cycles inside its service interval, and the device's own cycles.
    own: dict[str, list[int]] = {}
    stalled: dict[str, list[int]] = {}
    for r, start in _service_starts(done):
        s = _overlap(start, r.done_cycle, spans)
        key = f"{r.kind} {r.data_len}"
        stalled.setdefault(key, []).append(s)
        own.setdefault(key, []).append(r.done_cycle - start - s)
    return {
        "entries": dev.get("entries"),
        "hits": dev.get("hits"),
        "misses": dev.get("misses"),
        "invalidated": dev.get("invalidated"),
        "hits_per_request": dev["hits"] / n if "hits" in dev else None,
        "misses_per_request": dev["misses"] / n if "misses" in dev else None,
        "invalidated_per_request": dev["invalidated"] / n if "invalidated" in dev else None,
        "qemu_updates": st.updates,
        "qemu_updates_by_perm": {{1: "read-only", 2: "write-only", 3: "read-write"}.get(k, str(k)):
                                 v for k, v in sorted(st.update_perms.items())},
        "qemu_invalidations": st.invalidations,
        "qemu_invalidations_per_request": st.invalidations / n,
        "inserts": st.inserts,
        "invalidate_cmds": st.invalidate_cmds,
        "hv_writes": st.hv_writes,
        "misses_served": len(misses),
        "misses_answered_by_qemu": by_source["qemu"],
        "misses_answered_by_bridge": by_source["bridge"],
        "misses_failed": by_source["failed"],
        "failed": [[m.iova, m.write, round(m.wall_s, 3)] for m in misses
                   if m.source == "failed"],
        "stall_cycles": stall,
        "stall_cycles_per_request": stall / n,
        "stall_cycles_per_miss": stall / len(spans) if spans else None,
        "device_cycles_per_request": (stats.busy_cycles - stall) / n,
        "qemu_miss_ms": {"n": len(asked), "mean": 1e3 * sum(asked) / len(asked),
                         "max": 1e3 * max(asked)} if asked else None,
        "service_own_cycles": {k: {"n": len(v), "mean": sum(v) / len(v)}
                               for k, v in sorted(own.items())},
        "service_stall_cycles": {k: {"n": len(v), "mean": sum(v) / len(v)}
                                 for k, v in sorted(stalled.items())},
    }


def _iova_checks(transport: MmioTransport, hv: dict[str, Any],
                 f: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The host's checks that the guest's DMA went through IOVA handles."""
    ctrl = hv.get("ctrl", 0) & spec.HV_CTRL_MODE_MASK
    platform = bool(transport.features >> spec.VIRTIO_F_ACCESS_PLATFORM & 1)
    return [
        ("host iova-mode", ctrl == spec.MODE_IOVA and platform,
         f"HV_CTRL mode {ctrl}; the driver {'accepted' if platform else 'did not accept'} "
         "VIRTIO_F_ACCESS_PLATFORM"),
        ("host iotlb-used", bool(f["hits"]) and bool(f["misses"]) and bool(f["qemu_updates"]),
         f"{f['hits']} hits, {f['misses']} misses, {f['qemu_updates']} updates from QEMU"),
        ("host iotlb-invalidations", f["qemu_invalidations"] > 0,
         f"{f['qemu_invalidations']} invalidations from QEMU (strict mode), "
         f"{f['invalidated']} entries removed"),
        ("host iotlb-misses-answered", f["misses_failed"] == 0,
         f"{f['misses_served']} misses served: {f['misses_answered_by_qemu']} by QEMU, "
         f"{f['misses_answered_by_bridge']} from the bridge's copy, {f['misses_failed']} failed"
         + (f" {f['failed'][:3]}" if f["failed"] else "")),
    ]


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


async def run_guest(link: Any, cfg: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    """The whole run on ``link`` (RTL bench or reference model): identify the device, boot the
    guest against it, read the disk back, check everything. ``cfg`` is the JSON the
    orchestrator (``tools/linux/run.py``) passes: ``qemu``, ``console``, ``result``,
    ``expected``, ``checks``, ``disk_bytes``, ``deadline_s``, ``mode``."""
    mode = cfg.get("linux_mode", "gpa")
    transport = MmioTransport(link, cfg["disk_bytes"], mode=mode,
                              miss_timeout_s=cfg.get("miss_timeout_s", 10.0), log=log)
    errors: list[str] = []
    ident = await transport.identify()
    log.info("device: vendor %#x, features %#x, QueueNumMax %d, capacity %d sectors",
             ident.vendor, ident.features, ident.queue_num_max, ident.capacity)
    if ident.capacity * spec.SECTOR_SIZE != cfg["disk_bytes"]:
        errors.append(f"the device has {ident.capacity} sectors, the plan "
                      f"{cfg['disk_bytes'] // spec.SECTOR_SIZE}")
    bridge = LinuxBridge(link, transport,
                         BridgeConfig(qemu=cfg["qemu"], console=Path(cfg["console"]),
                                      deadline_s=cfg["deadline_s"]), log)
    plan = cfg.get("plan") or {}
    transport.requests.mark_sectors = tuple(plan.get("mark_sectors", ()))
    try:
        stats = await bridge.run()
    except (BridgeError, InitError, VhostUserError, OSError, ValueError) as exc:
        log.error("bridge: %s", exc)
        errors.append(f"{type(exc).__name__}: {exc}")
        stats = bridge.stats
    stats.cycles = link.cycle
    transport.requests.collect(link.cycle)
    boot1_requests = len(transport.requests.done)
    # The IOTLB figures are the first boot's: its counters, the bridge's side of it.
    iotlb1: dict[str, int] | None = None
    if mode == "iova" or cfg.get("iotlb_counters", True):
        try:
            iotlb1 = await transport.iotlb_counters()
        except Exception as exc:  # a device without the IOTLB registers (GPA-only builds)
            log.info("no IOTLB counters: %s", exc)
    if transport.miss is not None:  # QEMU is gone: it will not answer
        await transport.poll_miss(can_ask=False)
    hv_side1 = copy.deepcopy(transport.iotlb)
    boot2: tuple[BridgeStats, Console, list[str]] | None = None
    if cfg.get("qemu2") and not errors:
        # The same notification workload again, QEMU hiding EVENT_IDX from the guest.
        log.info("second boot: the notification workload with event_idx=off")
        bridge2 = LinuxBridge(link, transport,
                              BridgeConfig(qemu=cfg["qemu2"], console=Path(cfg["console2"]),
                                           deadline_s=cfg.get("deadline2_s", 600.0)), log)
        try:
            await bridge2.run()
        except (BridgeError, InitError, VhostUserError, OSError, ValueError) as exc:
            log.error("bridge (second boot): %s", exc)
            errors.append(f"second boot: {type(exc).__name__}: {exc}")
        transport.requests.collect(link.cycle)
        boot2 = (bridge2.stats, bridge2.console, cfg.get("checks2", []))
    hv: dict[str, Any] = {"requests": await link.hv.read32(spec.HV_STAT_REQUESTS),
                          "faults": await link.hv.read32(spec.HV_FAULT_COUNT),
                          "ctrl": await link.hv.read32(spec.HV_CTRL)}
    if iotlb1 is not None:
        hv["iotlb"] = iotlb1
    if transport.miss is not None:  # QEMU is gone: it will not answer
        await transport.poll_miss(can_ask=False)
    transport.iotlb = hv_side1
    readback = None
    rb_cycles, rb_wall = link.cycle, time.monotonic()
    if link.ram.table is not None:
        try:
            if mode == "iova":  # the read-back driver's addresses are physical: map them 1:1
                await transport.identity_map()
            chunk = 256  # sectors a read-back request (one data descriptor): within SIZE_MAX
            if ident.features >> spec.VIRTIO_BLK_F_SIZE_MAX & 1:
                size_max = int.from_bytes(await transport.get_config(spec.BLK_CONFIG_SIZE_MAX,
                                                                     4), "little")
                chunk = max(1, min(chunk, size_max // spec.SECTOR_SIZE))
            readback = await read_back(link, ident.capacity, chunk)
        except Exception as exc:  # report it with everything else
            log.error("read-back: %s", exc)
            errors.append(f"read-back: {type(exc).__name__}: {exc}")
    else:
        errors.append("no memory table: the guest never used the device")
    rb_cycles, rb_wall = link.cycle - rb_cycles, time.monotonic() - rb_wall
    expected = Path(cfg["expected"]).read_bytes() if cfg.get("expected") else None
    result = summarize(transport, stats, bridge.console, cfg["checks"], readback, expected, hv,
                       cfg.get("mode", "rtl"), errors, [tuple(x) for x in cfg.get("io", [])],
                       plan, boot2, boot1_requests)
    if boot2 is not None:
        result["figures"].update(boot2_wall_s=boot2[0].wall_s, boot2_boot_s=boot2[0].boot_s)
    result["figures"].update(readback_cycles=rb_cycles, readback_wall_s=rb_wall,
                             device=ident.__dict__)
    write_result(Path(cfg["result"]), result)
    return result
