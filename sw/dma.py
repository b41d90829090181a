"""The guest's DMA API, modelled on Linux's ``dma_map_single`` / ``dma_unmap_single``.

A driver never puts a physical address in a descriptor; it maps a buffer and uses what the
DMA API returns. Two backends mirror the two Linux cases:

* :class:`IdentityDma` -- no IOMMU: the DMA address is the guest physical address (GPA mode).
* :class:`GrantDma` -- Linux ``drivers/xen/grant-dma-ops.c``: the buffer's pages are granted
  under consecutive references and the DMA address is ``1 << 63 | first_ref << 12 | offset``.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from models import spec
from sw.alloc import PageAllocator
from sw.hypervisor import Hypervisor
from sw.transport import GuestMemory


class Direction(enum.IntEnum):
    """Linux ``enum dma_data_direction`` values."""

    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2


BIDIRECTIONAL = Direction.BIDIRECTIONAL
TO_DEVICE = Direction.TO_DEVICE
FROM_DEVICE = Direction.FROM_DEVICE


class DmaMappingError(ValueError):
    """The buffer cannot be mapped by this backend (e.g. not physically contiguous)."""


class OutOfGrantRefs(MemoryError):
    """No run of free grant references long enough for the buffer."""


@dataclass
class GuestBuffer:
    """``length`` bytes starting ``offset`` bytes into the first of ``pages`` (PFNs).

    The pages need not be physically adjacent: byte ``pos`` of the buffer lives in page
    ``(offset + pos) // 4096`` of the list. Reads and writes go straight to guest memory (the
    CPU's view), never through the device.
    """

    mem: GuestMemory
    pages: list[int]
    offset: int
    length: int

    def __post_init__(self) -> None:
        if not 0 <= self.offset < spec.PAGE_SIZE:
            raise ValueError(f"buffer offset must be in [0, 4096), not {self.offset!r}")
        if self.length < 0:
            raise ValueError(f"buffer length must be >= 0, not {self.length!r}")
        if not self.pages or self.offset + self.length > len(self.pages) * spec.PAGE_SIZE:
            raise ValueError(
                f"{len(self.pages)} page(s) cannot hold {self.length} byte(s) at offset "
                f"{self.offset}"
            )

    @classmethod
    def allocate(
        cls, alloc: PageAllocator, length: int, *, offset: int = 0, contiguous: bool = False
    ) -> GuestBuffer:
        """A new buffer on freshly allocated pages (``free`` gives them back)."""
        return cls(alloc.mem, alloc.alloc_pages(pages_spanned(offset, length), contiguous),
                   offset, length)

    def free(self, alloc: PageAllocator) -> None:
        alloc.free(self.pages)

    @property
    def used_pages(self) -> list[int]:
        """The pages the bytes actually touch (a zero-length buffer touches its first page)."""
        return self.pages[: pages_spanned(self.offset, self.length)]

    @property
    def contiguous(self) -> bool:
        p = self.used_pages
        return all(b == a + 1 for a, b in itertools.pairwise(p))

    def phys(self, pos: int = 0) -> int:
        """Guest physical address of byte ``pos``."""
        if not 0 <= pos <= self.length:
            raise ValueError(f"position {pos} outside buffer of {self.length} byte(s)")
        page, off = divmod(self.offset + pos, spec.PAGE_SIZE)
        return self.pages[page] << spec.PAGE_SHIFT | off

    def _pieces(self, pos: int, n: int) -> list[tuple[int, int, int]]:
        """``(phys, buffer_pos, nbytes)`` per page of ``[pos, pos + n)``."""
        if pos < 0 or n < 0 or pos + n > self.length:
            raise ValueError(f"[{pos}, {pos + n}) outside buffer of {self.length} byte(s)")
        out = []
        while n:
            page, off = divmod(self.offset + pos, spec.PAGE_SIZE)
            k = min(n, spec.PAGE_SIZE - off)
            out.append((self.pages[page] << spec.PAGE_SHIFT | off, pos, k))
            pos += k
            n -= k
        return out

    def read(self, pos: int = 0, n: int | None = None) -> bytes:
        if n is None:
            n = self.length - pos
        return b"".join(self.mem.read(a, k) for a, _, k in self._pieces(pos, n))

    def write(self, pos: int, data: bytes) -> None:
        data = bytes(data)
        for a, p, k in self._pieces(pos, len(data)):
            self.mem.write(a, data[p - pos : p - pos + k])


def pages_spanned(offset: int, length: int) -> int:
    """Pages touched by ``length`` bytes at page offset ``offset`` (at least one)."""
    return max(1, -(-(offset + length) // spec.PAGE_SIZE))


class DmaApi:
    """What a driver calls; backends override ``map`` and ``unmap``.

    ``needs_contiguous`` tells the driver how to allocate; ``requires_access_platform`` tells
    it that the device must offer VIRTIO_F_ACCESS_PLATFORM (Linux refuses a device without it
    when grant DMA is in use).
    """

    needs_contiguous: bool = False
    requires_access_platform: bool = False

    async def map(self, buf: GuestBuffer, direction: Direction) -> int:
        raise NotImplementedError

    async def unmap(self, handle: int) -> None:
        raise NotImplementedError

    @staticmethod
    def _check_direction(direction: int) -> Direction:
        try:
            return Direction(direction)
        except ValueError:
            raise ValueError(f"invalid DMA direction {direction!r}") from None


class IdentityDma(DmaApi):
    """GPA mode: the DMA address is the physical address; the buffer must be contiguous."""

    needs_contiguous = True

    def __init__(self) -> None:
        self.mappings: dict[int, int] = {}  # address -> number of live mappings

    async def map(self, buf: GuestBuffer, direction: Direction) -> int:
        self._check_direction(direction)
        if not buf.contiguous:
            raise DmaMappingError(
                f"IdentityDma needs a physically contiguous buffer, but its pages are "
                f"{[hex(p) for p in buf.used_pages]}; allocate with contiguous=True"
            )
        addr = buf.phys(0)
        self.mappings[addr] = self.mappings.get(addr, 0) + 1
        return addr

    async def unmap(self, handle: int) -> None:
        n = self.mappings.get(handle, 0)
        if n == 0:
            raise ValueError(f"unmap of {handle:#x}, which is not mapped")
        if n == 1:
            del self.mappings[handle]
        else:
            self.mappings[handle] = n - 1


@dataclass
class GrantMapping:
    first_ref: int
    frames: list[int]
    direction: Direction
    refs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.refs = list(range(self.first_ref, self.first_ref + len(self.frames)))


class GrantDma(DmaApi):
    """Handle mode: consecutive grant references per buffer, programmed by the hypervisor.

    References ``[first_ref, entries)`` are managed; like Xen (GNTTAB_NR_RESERVED_ENTRIES) the
    first 8 are reserved by default. Allocation is first fit (lowest run), so it depends only
    on the sequence of calls.
    """

    requires_access_platform = True

    def __init__(self, hv: Hypervisor, domid: int, entries: int, *, first_ref: int = 8) -> None:
        if not 0 <= first_ref < entries:
            raise ValueError(f"first_ref {first_ref} must be inside the table of {entries}")
        self.hv = hv
        self.domid = domid
        self.entries = entries
        self.first_ref = first_ref
        self._used = [False] * entries
        self.mappings: dict[int, GrantMapping] = {}  # handle -> mapping

    @classmethod
    async def create(cls, hv: Hypervisor, domid: int, *, first_ref: int = 8) -> GrantDma:
        """Backend sized from HV_ENTRIES."""
        return cls(hv, domid, await hv.entries(), first_ref=first_ref)

    @property
    def free_refs(self) -> int:
        return self._used[self.first_ref :].count(False)

    def _alloc_refs(self, n: int) -> int:
        run = 0
        for ref in range(self.first_ref, self.entries):
            run = 0 if self._used[ref] else run + 1
            if run == n:
                first = ref - n + 1
                for r in range(first, first + n):
                    self._used[r] = True
                return first
        raise OutOfGrantRefs(
            f"no {n} consecutive free grant reference(s) in [{self.first_ref}, {self.entries}) "
            f"({self.free_refs} free, {len(self.mappings)} mapping(s) live)"
        )

    async def map(self, buf: GuestBuffer, direction: Direction) -> int:
        direction = self._check_direction(direction)
        frames = buf.used_pages
        first = self._alloc_refs(len(frames))
        readonly = direction == Direction.TO_DEVICE
        m = GrantMapping(first, list(frames), direction)
        for ref, frame in zip(m.refs, frames, strict=True):
            await self.hv.grant(ref, frame, self.domid, readonly)
        handle = spec.make_handle(first, buf.offset)
        self.mappings[handle] = m
        return handle

    async def unmap(self, handle: int) -> None:
        m = self.mappings.pop(handle, None)
        if m is None:
            raise ValueError(f"unmap of handle {handle:#x}, which is not mapped")
        for ref in m.refs:
            await self.hv.revoke(ref)
            self._used[ref] = False
