"""The IOTLB of IOVA mode (docs/iotlb.md "Organisation"), the reference model of ``rtl/iotlb.py``.

``N`` entries in ``S = N / 2`` sets of 2 ways. An entry maps the naturally aligned IOVA range
``[base, base + 2**size)`` (``size`` 12 to 30) to the physical range at ``pa`` with the R and W
permissions. A 4 KiB entry lives in the *small set* of its IOVA, ``IOVA[12 + b - 1 : 12]``, a
larger one in the *large set*, ``IOVA[30 + b - 1 : 30]`` (``b = log2(S)``); a lookup reads both
sets of its page. No two valid entries overlap (an insert removes what it overlaps), so at most
one hits. The victim of an insert is the lowest invalid way of the set, else the way the set's
round-robin pointer names (the pointer then moves on, mod 2). Only :meth:`Iotlb.reset` (``rst``)
resets the pointers.

The model is untimed and keeps every entry in the set and way the hardware would, so its
contents (:meth:`Iotlb.entries`) and replacements (:attr:`Iotlb.evictions`) can be compared with
the RTL's entry by entry.
"""

from __future__ import annotations

from typing import NamedTuple

from models import spec

__all__ = ["Iotlb", "IotlbEntry", "overlaps"]


def overlaps(a: int, a_size: int, b: int, b_size: int) -> bool:
    """Whether the aligned ranges ``[a, a + 2**a_size)`` and ``[b, b + 2**b_size)`` overlap:
    they agree on every address bit above the larger of the two sizes (docs/iotlb.md)."""
    return ((a ^ b) & spec.ADDR_MASK) >> max(a_size, b_size) == 0


class IotlbEntry(NamedTuple):
    """A valid entry where it lives: ``set``, ``way``; the mapping ``[base, base + 2**size)`` ->
    ``pa`` (both aligned to ``2**size``) and the permissions ``r`` (device reads) and ``w``
    (device writes)."""

    set: int
    way: int
    base: int
    size: int
    pa: int
    r: bool
    w: bool

    def covers(self, iova: int) -> bool:
        """The entry hits for ``iova``: ``(iova ^ base) >> size == 0``."""
        return ((iova ^ self.base) & spec.ADDR_MASK) >> self.size == 0

    def translate(self, iova: int) -> int:
        """The physical address of ``iova`` (which the entry covers): ``pa + (iova - base)``."""
        return (self.pa + (iova - self.base)) & spec.ADDR_MASK

    def permits(self, write: bool) -> bool:
        """The device may write (``write``) or read through the entry."""
        return self.w if write else self.r


class Iotlb:
    """The IOTLB: ``entries`` entries (a power of two, 8 to 1024), ``entries // 2`` sets of 2
    ways, all invalid at construction and after :meth:`reset`.

    Commands (the hypervisor's ``IOTLB_CMD``): :meth:`insert`, :meth:`invalidate`,
    :meth:`invalidate_all`; the last two return the number of entries they removed
    (``STAT_IOTLB_INVALIDATED``). :meth:`lookup` is the DMA engine's lookup of one page.

    Records (not state; :meth:`reset` keeps them): ``evictions``, every valid entry an insert
    replaced through the round-robin pointer (both ways valid), in order; an entry an insert
    removes because it overlaps the new one is not an eviction.
    """

    def __init__(self, entries: int = spec.DEFAULT_IOTLB_ENTRIES) -> None:
        if not isinstance(entries, int) or not 8 <= entries <= 1024 or entries & (entries - 1):
            raise ValueError(f"IOTLB entries must be a power of two from 8 to 1024, "
                             f"not {entries!r}")
        self.n_entries = entries
        self.n_sets = entries // spec.IOTLB_WAYS
        self.set_bits = self.n_sets.bit_length() - 1  # b = log2(S)
        self.evictions: list[IotlbEntry] = []
        self.reset()

    def reset(self) -> None:
        """``rst``: every entry invalid, every round-robin pointer at way 0."""
        self._sets: list[list[IotlbEntry | None]] = [
            [None] * spec.IOTLB_WAYS for _ in range(self.n_sets)]
        self.pointers = [0] * self.n_sets

    # --- placement ----------------------------------------------------------------------------
    def small_set(self, iova: int) -> int:
        """``IOVA[12 + b - 1 : 12]``: where a 4 KiB entry of ``iova`` lives."""
        return iova >> spec.IOTLB_MIN_SIZE & (self.n_sets - 1)

    def large_set(self, iova: int) -> int:
        """``IOVA[30 + b - 1 : 30]``: where an entry of ``iova`` of size 13 to 30 lives."""
        return iova >> spec.IOTLB_MAX_SIZE & (self.n_sets - 1)

    def set_of(self, iova: int, size: int) -> int:
        """The set an entry of ``size`` at ``iova`` lives in."""
        return self.small_set(iova) if size == spec.IOTLB_MIN_SIZE else self.large_set(iova)

    # --- lookup -------------------------------------------------------------------------------
    def lookup(self, iova: int) -> IotlbEntry | None:
        """The entry covering ``iova``, or None (a miss): the page's small and large sets are
        probed, all 4 ways compared."""
        iova &= spec.ADDR_MASK
        small, large = self.small_set(iova), self.large_set(iova)
        hits = [e for s in dict.fromkeys((small, large)) for e in self._sets[s]
                if e is not None and e.covers(iova)]
        assert len(hits) <= 1, f"IOTLB: {len(hits)} entries hit {iova:#x}: {hits}"
        return hits[0] if hits else None

    # --- commands -----------------------------------------------------------------------------
    def _remove_overlapping(self, base: int, size: int) -> int:
        """Remove every valid entry overlapping ``[base, base + 2**size)``; return how many."""
        removed = 0
        for ways in self._sets:
            for way, e in enumerate(ways):
                if e is not None and overlaps(e.base, e.size, base, size):
                    ways[way] = None
                    removed += 1
        return removed

    def insert(self, iova: int, pa: int, size: int, r: bool, w: bool) -> IotlbEntry | None:
        """Command 1: map ``[base, base + 2**size)`` to ``pa``'s range, ``base`` and ``pa`` the
        addresses with the bits below ``size`` cleared. Returns the new entry, or None when
        ``size`` is outside 12 to 30 (the command does nothing).

        Every entry overlapping the range is removed first (not counted as invalidated); the
        entry then takes the lowest invalid way of its set, else the way the set's round-robin
        pointer names (recorded in :attr:`evictions`), and the pointer moves to the next way.
        """
        if not spec.IOTLB_MIN_SIZE <= size <= spec.IOTLB_MAX_SIZE:
            return None
        align = ~((1 << size) - 1) & spec.ADDR_MASK
        base, pa = iova & align, pa & align
        self._remove_overlapping(base, size)
        index = self.set_of(base, size)
        ways = self._sets[index]
        free = [way for way, e in enumerate(ways) if e is None]
        if free:
            way = free[0]
        else:
            way = self.pointers[index]
            victim = ways[way]
            assert victim is not None
            self.evictions.append(victim)
            self.pointers[index] = (way + 1) % spec.IOTLB_WAYS
        entry = IotlbEntry(index, way, base, size, pa, bool(r), bool(w))
        ways[way] = entry
        return entry

    def invalidate(self, iova: int, size: int) -> int:
        """Command 2: remove every entry overlapping ``[base, base + 2**size)`` (``base`` as
        for :meth:`insert`; a size below 12 counts as 12, one above 30 removes every entry).
        Returns the number of entries removed."""
        if size > spec.IOTLB_MAX_SIZE:
            return self.invalidate_all()
        size = max(size, spec.IOTLB_MIN_SIZE)
        return self._remove_overlapping(iova & ~((1 << size) - 1) & spec.ADDR_MASK, size)

    def invalidate_all(self) -> int:
        """Command 3: remove every entry. Returns the number of entries removed."""
        removed = sum(e is not None for ways in self._sets for e in ways)
        for ways in self._sets:
            ways[:] = [None] * spec.IOTLB_WAYS
        return removed

    # --- contents -----------------------------------------------------------------------------
    def entries(self) -> list[IotlbEntry]:
        """Every valid entry, by set then way: ``(set, way, base, size, pa, r, w)``."""
        return [e for ways in self._sets for e in ways if e is not None]

    def __len__(self) -> int:
        """The number of valid entries."""
        return len(self.entries())

    def __repr__(self) -> str:
        return f"<Iotlb {len(self)}/{self.n_entries} valid, {self.n_sets} sets>"
