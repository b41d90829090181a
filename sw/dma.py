"""The guest's DMA API, modelled on Linux's ``dma_map_single`` / ``dma_unmap_single``.

A driver never puts a physical address in a descriptor; it maps a buffer and uses what the
DMA API returns. Two backends mirror the two Linux cases:

* :class:`IdentityDma` -- no IOMMU: the DMA address is the guest physical address (GPA mode).
* :class:`GrantDma` -- Linux ``drivers/xen/grant-dma-ops.c``: the buffer's pages are granted
  under consecutive references and the DMA address is ``1 << 63 | first_ref << 12 | offset``.
* :class:`IovaDma` -- Linux ``drivers/iommu/dma-iommu.c`` behind an IOMMU (IOVA mode,
  ``docs/iotlb.md``): the buffer's pages are mapped at consecutive IOVA pages of a range from an
  IOVA allocator, in the IOMMU page table the hypervisor answers the device's IOTLB misses
  from; unmap is strict (``iommu.strict=1``): the IOTLB range is invalidated and an
  ``HV_SYNC`` barrier completes before unmap returns.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from models import spec
from sw.alloc import PageAllocator
from sw.hypervisor import Hypervisor, HypervisorError
from sw.iommu import IommuMapping, IommuPageTable, IovaAllocator
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


@dataclass
class IovaMapping:
    """One live :class:`IovaDma` mapping: ``npages`` IOVA pages allocated from ``pfn`` (after
    the allocator's rounding), ``frames`` mapped at the first ``len(frames)`` of them."""

    pfn: int
    npages: int
    frames: list[int]
    offset: int
    direction: Direction
    read: bool
    write: bool

    @property
    def iova(self) -> int:
        """IOVA of the first mapped page."""
        return self.pfn << spec.PAGE_SHIFT

    @property
    def handle(self) -> int:
        """What ``map`` returned: the IOVA of the buffer's first byte."""
        return self.iova + self.offset

    @property
    def end(self) -> int:
        return self.iova + (len(self.frames) << spec.PAGE_SHIFT)

    def invalidate_ranges(self) -> list[tuple[int, int]]:
        """``(iova, size_log2)`` commands covering the allocated range: one aligned power of
        two, as VT-d's page-selective invalidation (address mask) flushes it, split at 1 GiB
        (the largest size ``IOTLB_CMD`` takes) or into aligned pieces if unaligned."""
        pfn, n = self.pfn, self.npages
        top = spec.IOTLB_MAX_SIZE - spec.PAGE_SHIFT
        order = (n - 1).bit_length()
        if order <= top and pfn % (1 << order) == 0:
            return [(pfn << spec.PAGE_SHIFT, spec.PAGE_SHIFT + order)]
        out = []
        end = pfn + n
        while pfn < end:
            k = min(top, (pfn & -pfn).bit_length() - 1 if pfn else top,
                    (end - pfn).bit_length() - 1)
            out.append((pfn << spec.PAGE_SHIFT, spec.PAGE_SHIFT + k))
            pfn += 1 << k
        return out


class IovaDma(DmaApi):
    """IOVA mode: Linux dma-iommu over the guest's IOMMU domain (``sw.iommu``).

    ``map`` allocates an IOVA range for the pages the buffer touches (:class:`IovaAllocator`:
    top-down below ``limit_pfn``, power-of-two sizes under 32 pages, size aligned), maps each
    page at the next IOVA page in ``table`` with the permission Linux ``dma_info_to_prot``
    gives (TO_DEVICE: the device may read; FROM_DEVICE: write; BIDIRECTIONAL: both) and
    returns the IOVA of the buffer's first byte. The IOTLB is not touched (the hypervisor fills
    it on a miss) unless ``prefetch``, which inserts the new pages at once.

    ``unmap`` with ``strict`` (``iommu.strict=1``, the default): remove the pages from the
    table, invalidate the range in the IOTLB (one command per aligned power of two), wait for
    ``HV_SYNC``, and only then free the IOVA range. Without ``strict`` (lazy, Linux's flush
    queue): the IOTLB may keep the old translation until :meth:`flush` (invalidate all and
    sync), which runs when ``flush_queue_size`` unmaps are pending; their IOVAs are reused only
    after it.
    """

    requires_access_platform = True

    def __init__(self, hv: Hypervisor, table: IommuPageTable | None = None,
                 allocator: IovaAllocator | None = None, *, strict: bool = True,
                 prefetch: bool = False, flush_queue_size: int = 256) -> None:
        self.hv = hv
        self.table = IommuPageTable() if table is None else table
        self.iovad = IovaAllocator() if allocator is None else allocator
        self.strict = strict
        self.prefetch = prefetch
        self.flush_queue_size = flush_queue_size
        self.mappings: dict[int, IovaMapping] = {}  # handle -> mapping
        self._unmapped: set[int] = set()  # handles unmapped and not handed out again
        self._flush_queue: list[IovaMapping] = []

    @classmethod
    async def create(cls, hv: Hypervisor, table: IommuPageTable | None = None,
                     **kw: object) -> IovaDma:
        """Backend for a device with an IOTLB (``HV_IOTLB_ENTRIES`` non-zero)."""
        n = await hv.iotlb_entries()
        if n == 0:
            raise HypervisorError("HV_IOTLB_ENTRIES reads 0: this device has no IOTLB, so no "
                                  "IOVA mode")
        return cls(hv, table, **kw)  # type: ignore[arg-type]

    @staticmethod
    def prot(direction: Direction) -> tuple[bool, bool]:
        """``(read, write)`` the device gets: Linux ``dma_info_to_prot``."""
        return {Direction.BIDIRECTIONAL: (True, True), Direction.TO_DEVICE: (True, False),
                Direction.FROM_DEVICE: (False, True)}[direction]

    async def map(self, buf: GuestBuffer, direction: Direction) -> int:
        direction = self._check_direction(direction)
        frames = list(buf.used_pages)
        read, write = self.prot(direction)
        pfn = self.iovad.alloc(len(frames))
        m = IovaMapping(pfn, self.iovad.size_of(pfn) or len(frames), frames, buf.offset,
                        direction, read, write)
        done: list[IommuMapping] = []
        try:
            for i, frame in enumerate(frames):
                done.append(self.table.map((pfn + i) << spec.PAGE_SHIFT,
                                           frame << spec.PAGE_SHIFT, read=read, write=write))
        except BaseException:
            for d in done:
                self.table.unmap(d.iova)
            self.iovad.free(pfn)
            raise
        self.mappings[m.handle] = m
        self._unmapped.discard(m.handle)
        if self.prefetch:
            for d in done:
                await self.hv.iotlb_insert(d.iova, d.pa, d.size_log2, d.read, d.write)
        return m.handle

    def lookup(self, handle: int) -> IovaMapping | None:
        """The live mapping whose pages hold the IOVA ``handle`` (any byte of them)."""
        for m in self.mappings.values():
            if m.iova <= handle < m.end:
                return m
        return None

    async def unmap(self, handle: int) -> None:
        m = self.mappings.pop(handle, None)
        if m is None:
            if handle in self._unmapped:
                raise DmaMappingError(f"double unmap of IOVA {handle:#x}: it was already "
                                      "unmapped")
            inside = self.lookup(handle)
            where = (f"; it lies inside the mapping at {inside.handle:#x}, and unmap takes "
                     "the address map returned" if inside else "")
            raise DmaMappingError(f"unmap of IOVA {handle:#x}, which is not mapped{where}")
        self._unmapped.add(handle)
        self.table.unmap(m.iova, m.end - m.iova)
        if not self.strict:
            self._flush_queue.append(m)
            if len(self._flush_queue) >= self.flush_queue_size:
                await self.flush()
            return
        for iova, size_log2 in m.invalidate_ranges():
            await self.hv.iotlb_invalidate(iova, size_log2)
        await self.hv.sync()
        self.iovad.free(m.pfn)

    async def flush(self) -> None:
        """Lazy mode: invalidate the whole IOTLB, sync, then free the queued IOVA ranges."""
        if not self._flush_queue:
            return
        await self.hv.iotlb_invalidate_all()
        await self.hv.sync()
        for m in self._flush_queue:
            self.iovad.free(m.pfn)
        self._flush_queue.clear()


async def dma_for_mode(hv: Hypervisor, mode: bool | int, domid: int, *,
                       table: IommuPageTable | None = None, **kw: object) -> DmaApi:
    """The backend Linux would use for the device in ``mode`` (``spec.MODE_*``, or the
    foundation's bool): identity in GPA mode, grant DMA in mode 1, dma-iommu in mode 2 (over
    ``table``, the page table the hypervisor's :class:`sw.iommu.IommuModel` answers from).
    ``kw`` goes to the backend's ``create``."""
    if mode == spec.MODE_IOVA:
        return await IovaDma.create(hv, table, **kw)
    if mode == spec.MODE_GRANT:
        return await GrantDma.create(hv, domid, **kw)  # type: ignore[arg-type]
    if mode == spec.MODE_GPA:
        return IdentityDma()
    raise ValueError(f"mode must be 0 (GPA), 1 (grant handles) or 2 (IOVA), not {mode!r}")
