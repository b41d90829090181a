"""Hypervisor model: programs the device's privileged port (``s_hv``).

The guest never touches this port; the hypervisor selects the addressing mode, names the
domain the device serves and writes grant entries on the guest's behalf (in Xen the guest
writes its own grant table; here the table lives in the device, so the grant DMA backend asks
the hypervisor to copy entries into it).

In IOVA mode (mode 2, ``docs/iotlb.md``) the hypervisor fills the device's IOTLB: it inserts
mappings (staged in ``IOTLB_IOVA``/``IOTLB_PA``/``IOTLB_ATTR``, then ``IOTLB_CMD``), answers
misses (``IOTLB_MISS``, ``MISS_IOVA``, ``MISS_RESOLVE``) and invalidates, with an ``HV_SYNC``
barrier after an invalidation. The register writes of each command are built by pure functions
(:func:`insert_writes`, :func:`invalidate_writes`, ...) so that a synchronous hook of the
reference model and an asynchronous bench coroutine issue exactly the same sequence.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from models import spec
from models.virtio import GRANT_ENTRY
from sw.transport import RegisterPort


class HypervisorError(RuntimeError):
    """The privileged port does not look like this project's device."""


@dataclass(frozen=True)
class FaultInfo:
    """Snapshot of the fault registers (the first latched fault plus a running count)."""

    latched: bool
    cause: int
    addr: int
    count: int

    @property
    def cause_name(self) -> str:
        return spec.FAULT_NAMES.get(self.cause, f"unknown cause {self.cause}")

    def __str__(self) -> str:
        state = "latched" if self.latched else "not latched"
        return (
            f"fault {state}: cause {self.cause} ({self.cause_name}) at {self.addr:#x}, "
            f"count {self.count}"
        )


class IotlbMiss(NamedTuple):
    """A pending IOTLB miss: ``MISS_IOVA`` and the direction bits of ``IOTLB_MISS``."""

    iova: int
    read: bool
    write: bool

    def __str__(self) -> str:
        rw = ("R" if self.read else "") + ("W" if self.write else "")
        return f"miss at IOVA {self.iova:#x} ({rw or 'no direction'})"


@dataclass(frozen=True)
class IotlbStats:
    """``STAT_IOTLB_HITS`` / ``MISSES`` / ``INVALIDATED`` (32-bit counters since ``rst``)."""

    hits: int
    misses: int
    invalidated: int

    def __sub__(self, other: IotlbStats) -> IotlbStats:
        """Counts between two snapshots (modulo 2**32, as the counters wrap)."""
        m = 0xFFFF_FFFF
        return IotlbStats((self.hits - other.hits) & m, (self.misses - other.misses) & m,
                          (self.invalidated - other.invalidated) & m)


def decode_miss(miss: int, iova_lo: int, iova_hi: int) -> IotlbMiss | None:
    """The miss ``IOTLB_MISS`` and ``MISS_IOVA_LO``/``HI`` describe, or None if none pends."""
    if not miss & spec.IOTLB_MISS_PENDING:
        return None
    return IotlbMiss(iova_hi << 32 | iova_lo, bool(miss & spec.IOTLB_MISS_READ),
                     bool(miss & spec.IOTLB_MISS_WRITE))


#: One register write on ``s_hv``: ``(offset, value)``.
RegWrite = tuple[int, int]


def _check_size(size_log2: int) -> None:
    if not spec.IOTLB_MIN_SIZE <= size_log2 <= spec.IOTLB_MAX_SIZE:
        raise ValueError(f"size_log2 must be in [{spec.IOTLB_MIN_SIZE}, {spec.IOTLB_MAX_SIZE}], "
                         f"not {size_log2!r}")


def _addr_writes(lo: int, value: int) -> list[RegWrite]:
    return [(lo, value & 0xFFFF_FFFF), (lo + 4, value >> 32 & 0xFFFF_FFFF)]


def iotlb_attr(size_log2: int, read: bool, write: bool) -> int:
    """The ``IOTLB_ATTR`` value: size in bits 5:0, R bit 8, W bit 9."""
    return ((size_log2 & spec.IOTLB_ATTR_SIZE_MASK) | (spec.IOTLB_ATTR_READ if read else 0)
            | (spec.IOTLB_ATTR_WRITE if write else 0))


def insert_writes(iova: int, pa: int, size_log2: int = spec.IOTLB_MIN_SIZE, read: bool = True,
                  write: bool = True) -> list[RegWrite]:
    """Stage IOVA (LO, HI), PA (LO, HI) and ATTR, then ``IOTLB_CMD`` = 1.

    Both addresses must be aligned to the size: the device ignores the low bits, and a caller
    who passes unaligned ones has made a mistake (``stage_writes`` writes anything).
    """
    _check_size(size_log2)
    mask = (1 << size_log2) - 1
    for name, a in (("iova", iova), ("pa", pa)):
        if not 0 <= a <= spec.ADDR_MASK or a & mask:
            raise ValueError(f"{name} must be a 64-bit address aligned to 2**{size_log2}, "
                             f"not {a:#x}")
    return [*stage_writes(iova, pa, iotlb_attr(size_log2, read, write)),
            (spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INSERT)]


def stage_writes(iova: int | None, pa: int | None, attr: int | None) -> list[RegWrite]:
    """Raw staging writes, no checks (``None``: leave that register as it is)."""
    out: list[RegWrite] = []
    if iova is not None:
        out += _addr_writes(spec.HV_IOTLB_IOVA_LO, iova)
    if pa is not None:
        out += _addr_writes(spec.HV_IOTLB_PA_LO, pa)
    if attr is not None:
        out.append((spec.HV_IOTLB_ATTR, attr & 0xFFFF_FFFF))
    return out


def invalidate_writes(iova: int, size_log2: int = spec.IOTLB_MIN_SIZE) -> list[RegWrite]:
    """Stage IOVA and ATTR (the size; R and W clear), then ``IOTLB_CMD`` = 2."""
    _check_size(size_log2)
    if not 0 <= iova <= spec.ADDR_MASK:
        raise ValueError(f"iova must be a 64-bit address, not {iova!r}")
    return [*stage_writes(iova & ~((1 << size_log2) - 1), None, size_log2),
            (spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE)]


def invalidate_all_writes() -> list[RegWrite]:
    return [(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE_ALL)]


def resolve_writes(retry: bool = True) -> list[RegWrite]:
    """``MISS_RESOLVE``: 1 look up again, 2 fail the access (cause 10)."""
    return [(spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_RETRY if retry else spec.MISS_RESOLVE_FAIL)]


_WORDS = struct.Struct("<II")  # a grant entry as the two 32-bit registers that hold it


def _grant_offset(ref: int) -> int:
    return spec.HV_GRANT_BASE + GRANT_ENTRY.size * ref


class PortLock(AbstractAsyncContextManager[None]):
    """Mutual exclusion for the IOTLB's command sequences, whatever runs the coroutines.

    The staging registers are shared: a miss handler inserting while the DMA backend
    invalidates would otherwise mix the two commands' IOVAs and attributes. A coroutine that
    finds the lock held waits by reading ``HV_VERSION`` (a bus access, so the holder runs on);
    a port whose accesses never yield (the reference model's) never finds it held. A bench can
    pass its framework's lock instead (``Hypervisor(port, lock=cocotb.triggers.Lock())``).
    """

    def __init__(self, port: RegisterPort, spin_limit: int = 1_000_000) -> None:
        self.port, self.spin_limit, self.held = port, spin_limit, False

    async def __aenter__(self) -> None:
        for _ in range(self.spin_limit):
            if not self.held:
                self.held = True
                return
            await self.port.read32(spec.HV_VERSION)
        raise TimeoutError(f"IOTLB command lock still held after {self.spin_limit} polls")

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.held = False


class Hypervisor:
    """Privileged register access. All methods are bus transactions, hence ``async``.

    ``lock`` serialises the IOTLB command sequences (staging writes and ``IOTLB_CMD``) of
    concurrent coroutines (a miss server and a DMA backend); default :class:`PortLock`.
    ``sync_poll_limit`` bounds the reads of ``HV_SYNC`` in :meth:`sync`.
    """

    def __init__(self, hv: RegisterPort, *, sync_poll_limit: int = 10_000,
                 lock: AbstractAsyncContextManager[object] | None = None) -> None:
        self.hv = hv
        self.sync_poll_limit = sync_poll_limit
        self.lock = PortLock(hv) if lock is None else lock
        self._entries: int | None = None
        self._iotlb_entries: int | None = None

    async def version(self) -> int:
        return await self.hv.read32(spec.HV_VERSION)

    async def setup(self, handle_mode: bool | int, domid: int) -> None:
        """Check the port, set the domain, then the mode (domain first so that a handle-mode
        device never sees a stale domid).

        ``handle_mode``: False / True (GPA / grant handles, the foundation's API) or a mode
        number, ``spec.MODE_GPA``, ``MODE_GRANT`` or ``MODE_IOVA``.
        """
        mode = self._check_mode(handle_mode)
        if not 0 <= domid <= 0xFFFF:
            raise ValueError(f"domid must fit 16 bits, not {domid!r}")
        ver = await self.version()
        if ver >> 16 != spec.HV_VERSION_VALUE >> 16:
            raise HypervisorError(
                f"HV_VERSION reads {ver:#010x}, expected major version "
                f"{spec.HV_VERSION_VALUE >> 16} ({spec.HV_VERSION_VALUE:#010x})"
            )
        await self.hv.write32(spec.HV_DOMID, domid)
        await self.set_mode(mode)

    @staticmethod
    def _check_mode(mode: bool | int) -> int:
        if mode not in (spec.MODE_GPA, spec.MODE_GRANT, spec.MODE_IOVA):
            raise ValueError(f"mode must be 0 (GPA), 1 (grant handles) or 2 (IOVA), not {mode!r}")
        return int(mode)

    async def set_mode(self, mode: bool | int) -> None:
        """Write ``HV_CTRL``: 0 GPA, 1 grant handles, 2 IOVA (True / False as 1 / 0)."""
        await self.hv.write32(spec.HV_CTRL, self._check_mode(mode))

    async def mode(self) -> int:
        return await self.hv.read32(spec.HV_CTRL) & spec.HV_CTRL_MODE_MASK

    async def entries(self) -> int:
        """Number of grant table entries (read once, then cached: it is a synthesis constant)."""
        if self._entries is None:
            self._entries = await self.hv.read32(spec.HV_ENTRIES)
        return self._entries

    async def _check_ref(self, ref: int) -> None:
        n = await self.entries()
        if not 0 <= ref < n:
            raise ValueError(f"grant reference {ref} outside the device's table of {n} entries")

    async def grant(self, ref: int, frame: int, domid: int, readonly: bool = False) -> None:
        """Give ``domid`` access to ``frame`` as ``ref``.

        Like Xen's ``gnttab_grant_foreign_access_ref``, frame and domid are written before the
        flags word makes the entry valid (word 1 first, then word 0).
        """
        await self._check_ref(ref)
        flags = spec.GTF_permit_access | (spec.GTF_readonly if readonly else 0)
        await self.write_entry(ref, flags, domid, frame)

    async def revoke(self, ref: int) -> None:
        """Invalidate ``ref`` (flags and domid cleared; one write)."""
        await self._check_ref(ref)
        await self.hv.write32(_grant_offset(ref), 0)

    async def write_entry(self, ref: int, flags: int, domid: int, frame: int) -> None:
        """Raw entry write, no checks beyond field widths (hostile tests use it)."""
        if not 0 <= flags <= 0xFFFF or not 0 <= domid <= 0xFFFF:
            raise ValueError(f"flags {flags!r} and domid {domid!r} must fit 16 bits")
        if not 0 <= frame <= 0xFFFF_FFFF:
            raise ValueError(f"frame {frame!r} must fit 32 bits")
        off = _grant_offset(ref)
        w0, w1 = _WORDS.unpack(GRANT_ENTRY.pack(flags, domid, frame))
        await self.hv.write32(off + 4, w1)
        await self.hv.write32(off, w0)

    async def read_entry(self, ref: int) -> tuple[int, int, int]:
        """``(flags, domid, frame)`` of entry ``ref``."""
        off = _grant_offset(ref)
        w0 = await self.hv.read32(off)
        return GRANT_ENTRY.unpack(_WORDS.pack(w0, await self.hv.read32(off + 4)))

    async def fault(self) -> FaultInfo:
        status = await self.hv.read32(spec.HV_FAULT_STATUS)
        cause = await self.hv.read32(spec.HV_FAULT_CAUSE)
        lo = await self.hv.read32(spec.HV_FAULT_ADDR_LO)
        hi = await self.hv.read32(spec.HV_FAULT_ADDR_HI)
        count = await self.hv.read32(spec.HV_FAULT_COUNT)
        return FaultInfo(bool(status & 1), cause, hi << 32 | lo, count)

    async def clear_fault(self) -> None:
        """Unlatch the fault (RW1C) so that the next fault's cause and address are captured."""
        await self.hv.write32(spec.HV_FAULT_STATUS, 1)

    # --- IOVA mode: the IOTLB (docs/iotlb.md) ----------------------------------------------
    async def apply(self, writes: list[RegWrite]) -> None:
        """Issue register writes in order (what the pure ``*_writes`` functions build), as one
        sequence no other :meth:`apply` of this hypervisor interleaves with."""
        if not writes:
            return
        async with self.lock:
            for offset, value in writes:
                await self.hv.write32(offset, value)

    async def apply_built(self, build: Callable[[], list[RegWrite]]) -> list[RegWrite]:
        """Under the lock, ``build()`` the writes, then issue them; returns them. A miss server
        looks the page table up inside ``build``, so an unmap's invalidation (which follows its
        removal from the table) either precedes the lookup or removes what was inserted."""
        async with self.lock:
            writes = build()
            for offset, value in writes:
                await self.hv.write32(offset, value)
        return writes

    async def iotlb_entries(self) -> int:
        """``HV_IOTLB_ENTRIES`` (read once, then cached: a synthesis constant)."""
        if self._iotlb_entries is None:
            self._iotlb_entries = await self.hv.read32(spec.HV_IOTLB_ENTRIES)
        return self._iotlb_entries

    async def iotlb_insert(self, iova: int, pa: int, size_log2: int = spec.IOTLB_MIN_SIZE,
                           read: bool = True, write: bool = True) -> None:
        """Insert ``[iova, iova + 2**size_log2) -> pa`` with permissions R / W (the device
        removes every entry it overlaps first)."""
        await self.apply(insert_writes(iova, pa, size_log2, read, write))

    async def iotlb_stage(self, iova: int | None = None, pa: int | None = None,
                          attr: int | None = None) -> None:
        """Raw staging writes, unchecked (hostile tests: unaligned, sizes out of range)."""
        await self.apply(stage_writes(iova, pa, attr))

    async def iotlb_command(self, cmd: int) -> None:
        """Raw ``IOTLB_CMD`` write with the staging registers as they are."""
        await self.apply([(spec.HV_IOTLB_CMD, cmd)])

    async def iotlb_invalidate(self, iova: int, size_log2: int = spec.IOTLB_MIN_SIZE) -> None:
        """Remove every entry overlapping the aligned ``2**size_log2`` range holding ``iova``.
        Follow with :meth:`sync` before relying on it (strict invalidation)."""
        await self.apply(invalidate_writes(iova, size_log2))

    async def iotlb_invalidate_all(self) -> None:
        await self.apply(invalidate_all_writes())

    async def sync(self) -> int:
        """``HV_SYNC`` barrier: write it, then poll until it reads 1 (at most
        ``sync_poll_limit`` reads). Returns the number of reads. Raises ``TimeoutError``."""
        await self.hv.write32(spec.HV_SYNC, 1)
        for n in range(1, self.sync_poll_limit + 1):
            if await self.hv.read32(spec.HV_SYNC) & 1:
                return n
        raise TimeoutError(
            f"HV_SYNC still reads 0 after {self.sync_poll_limit} polls: the device has not "
            "completed the transactions issued before the barrier (is a DMA access stalled on "
            "a pending IOTLB miss, or a bus response missing?)")

    async def pending_miss(self) -> IotlbMiss | None:
        """The pending miss (``IOTLB_MISS`` bit 0 set) or None."""
        miss = await self.hv.read32(spec.HV_IOTLB_MISS)
        if not miss & spec.IOTLB_MISS_PENDING:
            return None
        lo = await self.hv.read32(spec.HV_MISS_IOVA_LO)
        return decode_miss(miss, lo, await self.hv.read32(spec.HV_MISS_IOVA_HI))

    async def resolve_miss(self, retry: bool = True) -> None:
        """``MISS_RESOLVE``: look up again (``retry``) or fail the access with cause 10."""
        await self.apply(resolve_writes(retry))

    async def iotlb_stats(self) -> IotlbStats:
        return IotlbStats(await self.hv.read32(spec.HV_STAT_IOTLB_HITS),
                          await self.hv.read32(spec.HV_STAT_IOTLB_MISSES),
                          await self.hv.read32(spec.HV_STAT_IOTLB_INVALIDATED))
