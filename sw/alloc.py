"""Guest-physical page allocator for the driver model.

The driver allocates every ring and buffer from here so that, for a given seed and sequence of
calls, the same physical pages are used: the cocotb bench compares the device's bus
transactions against the reference model, so allocation must be reproducible.

Pages are identified by their page frame number (PFN, physical address >> 12), which is what a
grant entry's ``frame`` field holds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from models import spec
from sw.transport import GuestMemory


class PageAllocator:
    """4 KiB pages of ``[base, base + size)`` of guest memory.

    ``alloc_pages(n, contiguous=False)`` hands pages out in a seeded-shuffled order and avoids
    putting two physically adjacent frames next to each other, so a multi-page buffer (and the
    consecutive grant references that map it) sits on scattered frames: that exercises the
    device's one-lookup-per-page translation. ``contiguous=True`` returns the lowest run of
    ``n`` free pages, which GPA (identity) mode needs.
    """

    def __init__(
        self, mem: GuestMemory, base: int = 0, size: int | None = None, *, seed: int = 0
    ) -> None:
        if size is None:
            size = mem.size - base
        if base < 0 or base % spec.PAGE_SIZE or size % spec.PAGE_SIZE or size <= 0:
            raise ValueError(
                f"allocator range must be whole 4 KiB pages: base={base:#x}, size={size:#x}"
            )
        if base + size > mem.size:
            raise ValueError(
                f"allocator range [{base:#x}, {base + size:#x}) exceeds guest memory "
                f"({mem.size:#x} bytes)"
            )
        self.mem = mem
        self.base = base
        self.size = size
        self.first_pfn = base >> spec.PAGE_SHIFT
        self.npages = size >> spec.PAGE_SHIFT
        self._order = list(range(self.first_pfn, self.first_pfn + self.npages))
        random.Random(seed).shuffle(self._order)
        self._free: set[int] = set(self._order)

    @property
    def free_count(self) -> int:
        """Number of free pages."""
        return len(self._free)

    def is_free(self, pfn: int) -> bool:
        return pfn in self._free

    def alloc_pages(self, n: int, contiguous: bool = False) -> list[int]:
        """``n`` free pages (PFNs, in buffer order); ``MemoryError`` if they are not available."""
        if n < 1:
            raise ValueError(f"alloc_pages needs n >= 1, not {n!r}")
        if n > len(self._free):
            raise MemoryError(
                f"page allocator exhausted: {n} page(s) requested, {len(self._free)} free "
                f"of {self.npages} in [{self.base:#x}, {self.base + self.size:#x})"
            )
        pages = self._alloc_run(n) if contiguous else self._alloc_scattered(n)
        self._free.difference_update(pages)
        return pages

    def _alloc_run(self, n: int) -> list[int]:
        run = 0
        for pfn in range(self.first_pfn, self.first_pfn + self.npages):
            run = run + 1 if pfn in self._free else 0
            if run == n:
                return list(range(pfn - n + 1, pfn + 1))
        raise MemoryError(
            f"no {n} physically contiguous free page(s) in [{self.base:#x}, "
            f"{self.base + self.size:#x}) ({len(self._free)} free but fragmented)"
        )

    def _alloc_scattered(self, n: int) -> list[int]:
        pages: list[int] = []
        skipped: list[int] = []
        for pfn in self._order:
            if len(pages) == n:
                break
            if pfn not in self._free:
                continue
            if pages and abs(pfn - pages[-1]) == 1:
                skipped.append(pfn)  # adjacent to the previous page: keep for later
                continue
            pages.append(pfn)
        pages.extend(skipped[: n - len(pages)])
        return pages

    def free(self, pages: Iterable[int]) -> None:
        """Return pages; ``ValueError`` on a double free or a page outside the range."""
        pages = list(pages)
        for pfn in pages:
            if not self.first_pfn <= pfn < self.first_pfn + self.npages:
                raise ValueError(f"page {pfn:#x} is outside this allocator's range")
            if pfn in self._free:
                raise ValueError(f"double free of page {pfn:#x}")
        if len(set(pages)) != len(pages):
            raise ValueError(f"page list has duplicates: {pages}")
        self._free.update(pages)
