"""Hypervisor model: programs the device's privileged port (``s_hv``).

The guest never touches this port; the hypervisor selects the addressing mode, names the
domain the device serves and writes grant entries on the guest's behalf (in Xen the guest
writes its own grant table; here the table lives in the device, so the grant DMA backend asks
the hypervisor to copy entries into it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


_WORDS = struct.Struct("<II")  # a grant entry as the two 32-bit registers that hold it


def _grant_offset(ref: int) -> int:
    return spec.HV_GRANT_BASE + GRANT_ENTRY.size * ref


class Hypervisor:
    """Privileged register access. All methods are bus transactions, hence ``async``."""

    def __init__(self, hv: RegisterPort) -> None:
        self.hv = hv
        self._entries: int | None = None

    async def version(self) -> int:
        return await self.hv.read32(spec.HV_VERSION)

    async def setup(self, handle_mode: bool, domid: int) -> None:
        """Check the port, set the domain, then the mode (domain first so that a handle-mode
        device never sees a stale domid)."""
        if not 0 <= domid <= 0xFFFF:
            raise ValueError(f"domid must fit 16 bits, not {domid!r}")
        ver = await self.version()
        if ver >> 16 != spec.HV_VERSION_VALUE >> 16:
            raise HypervisorError(
                f"HV_VERSION reads {ver:#010x}, expected major version "
                f"{spec.HV_VERSION_VALUE >> 16} ({spec.HV_VERSION_VALUE:#010x})"
            )
        await self.hv.write32(spec.HV_DOMID, domid)
        await self.hv.write32(spec.HV_CTRL, spec.HV_CTRL_HANDLE_MODE if handle_mode else 0)

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
