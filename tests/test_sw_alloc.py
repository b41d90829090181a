"""Unit tests of the page allocator (sw/alloc.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.memory import GuestMemory
from sw.alloc import PageAllocator

PAGES = 64


def make(seed: int = 0, base: int = 0, npages: int = PAGES) -> PageAllocator:
    return PageAllocator(GuestMemory(1 << 20), base, npages * 4096, seed=seed)


def test_range_validation() -> None:
    mem = GuestMemory(1 << 16)
    with pytest.raises(ValueError, match="whole 4 KiB pages"):
        PageAllocator(mem, 100, 4096)
    with pytest.raises(ValueError, match="exceeds guest memory"):
        PageAllocator(mem, 0, 1 << 17)
    assert PageAllocator(mem).npages == 16


def test_contiguous_is_lowest_run_and_inside_range() -> None:
    a = make(base=0x8000, npages=8)
    p = a.alloc_pages(3, contiguous=True)
    assert p == [8, 9, 10]
    q = a.alloc_pages(2, contiguous=True)
    assert q == [11, 12]
    a.free([9])
    assert a.alloc_pages(2, contiguous=True) == [13, 14]  # 9 alone is too short
    assert a.alloc_pages(1, contiguous=True) == [9]


def test_scattered_pages_avoid_adjacent_frames() -> None:
    a = make(seed=5)
    p = a.alloc_pages(16)
    assert len(set(p)) == 16
    assert all(abs(x - y) != 1 for x, y in itertools.pairwise(p))
    assert p != sorted(p)


def test_deterministic_per_seed() -> None:
    def run(seed: int) -> list[list[int]]:
        a = make(seed)
        out = [a.alloc_pages(3), a.alloc_pages(5), a.alloc_pages(2, contiguous=True)]
        a.free(out[1])
        out.append(a.alloc_pages(4))
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_exhaustion_and_double_free() -> None:
    a = make(npages=4)
    p = a.alloc_pages(4)
    with pytest.raises(MemoryError, match="exhausted"):
        a.alloc_pages(1)
    a.free(p[:2])
    with pytest.raises(ValueError, match="double free"):
        a.free([p[0]])
    with pytest.raises(ValueError, match="outside"):
        a.free([1000])
    with pytest.raises(ValueError):
        a.alloc_pages(0)


def test_contiguous_fragmented_error() -> None:
    a = make(npages=4)
    a.alloc_pages(4, contiguous=True)
    a.free([0, 2])
    with pytest.raises(MemoryError, match="fragmented"):
        a.alloc_pages(2, contiguous=True)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.booleans(), st.booleans()), max_size=40),
       st.integers(0, 1000))
def test_never_hands_out_a_page_twice(ops: list[tuple[int, bool, bool]], seed: int) -> None:
    a = make(seed, npages=16)
    live: list[list[int]] = []
    for n, contig, free_first in ops:
        if free_first and live:
            a.free(live.pop(0))
        try:
            p = a.alloc_pages(n, contiguous=contig)
        except MemoryError:
            continue
        if contig:
            assert p == list(range(p[0], p[0] + n))
        live.append(p)
        flat = [x for q in live for x in q]
        assert len(flat) == len(set(flat))
        assert a.free_count == 16 - len(flat)
