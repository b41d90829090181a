"""IOVA mode and the IOTLB of the reference model (docs/iotlb.md).

:class:`models.iotlb.Iotlb` on its own (placement, the two-set probe, overlap removal, the
replacement order, invalidation), against a naive model of mappings (hypothesis), then the
device through its register ports: the IOTLB registers, DMA in IOVA mode with a hypervisor hook,
misses, faults 5, 10 and 11, resets. Expected values come from docs/iotlb.md.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import spec
from models.device import ReferenceDevice
from models.features import Features
from models.hvregs import Halt
from models.iotlb import Iotlb, IotlbEntry, overlaps
from models.memory import GuestMemory
from verif.harness import Buffer, HandDriver
from verif.harness import make as _make


def make(**kw):
    """The harness's device and driver, built as the foundation's device (``Features.none()``)
    unless ``features`` is given: these tests are the foundation's behaviour."""
    return _make(**{"features": Features.none(), **kw})

K = 1 << 12  # 4 KiB
M2 = 1 << 21  # 2 MiB
G = 1 << 30  # 1 GiB
RW = {"r": True, "w": True}


# =================================================================================================
# Iotlb on its own
# =================================================================================================


@pytest.mark.parametrize("bad", [0, 4, 7, 12, 2048, 96, -8, "64", 64.0])
def test_entries_must_be_a_power_of_two_from_8_to_1024(bad):
    with pytest.raises(ValueError, match=r"^IOTLB entries must be a power of two from 8 to 1024"):
        Iotlb(bad)


@pytest.mark.parametrize(("entries", "sets", "bits"), [(8, 4, 2), (64, 32, 5), (1024, 512, 9)])
def test_geometry(entries, sets, bits):
    t = Iotlb(entries)
    assert (t.n_entries, t.n_sets, t.set_bits) == (entries, sets, bits)
    assert t.pointers == [0] * sets and t.entries() == [] and len(t) == 0


def test_placement_small_and_large_sets():
    t = Iotlb(64)  # S = 32, b = 5: small set IOVA[16:12], large set IOVA[34:30]
    assert t.small_set(0x5000) == 5 and t.small_set(0x2_5FFF) == 5 and t.small_set(0xF000) == 15
    assert t.small_set(0x1_5000) == 21 and t.small_set(0x1_F000) == 31  # bit 16 is in the index
    assert t.large_set(0x5000) == 0 and t.large_set(G) == 1 and t.large_set(0x3_C000_0000) == 15
    assert t.large_set(0x4_0000_0000) == 16 and t.large_set(0x7_C000_0000) == 31  # bit 34 too
    assert t.large_set(0x8_0000_0000) == 0  # bit 35 is above the index
    assert t.insert(0x3000, 0x9000, 12, **RW) == IotlbEntry(3, 0, 0x3000, 12, 0x9000, True, True)
    assert t.insert(0x4020_0000, 0, 21, **RW).set == 1  # large set of 0x4020_0000
    assert t.insert(0x8_0001_0000, 0, 16, **RW).set == 0  # 64 KiB: large set too
    assert t.insert(0x2_C000_0000, 0, 30, **RW).set == 11
    assert t.insert(0x7_0000_D000, 0, 12, **RW).set == 13  # small set of 0x7_0000_D000


def test_insert_aligns_base_and_pa_to_the_size():
    t = Iotlb(8)
    assert t.insert(0x1_2345, 0xABC_DEF1, 12, r=True, w=False) == IotlbEntry(  # S = 4: set 2
        2, 0, 0x1_2000, 12, 0xABC_D000, True, False)
    e = t.insert(0x7654_3210, 0x1234_5678, 21, r=False, w=True)
    assert (e.base, e.pa, e.r, e.w) == (0x7640_0000, 0x1220_0000, False, True)
    assert t.lookup(0x7654_3210) == e and e.translate(0x7654_3210) == 0x1234_3210
    assert t.lookup(0x1_2FFF).translate(0x1_2FFF) == 0xABC_DFFF


def test_lookup_probes_the_small_and_the_large_set():
    t = Iotlb(64)
    big = t.insert(0x20_0000, 0x4000_0000, 21, **RW)  # large set 0, covers small sets 0..31
    small = t.insert(0x4020_5000, 0x7000, 12, **RW)  # small set 5, outside the 2 MiB entry
    assert t.lookup(0x20_0000) == big and t.lookup(0x3F_FFFF) == big
    assert t.lookup(0x20_5123) == big  # small set 5 holds `small`, which does not cover it
    assert t.lookup(0x4020_5FFF) == small
    assert t.lookup(0x4020_6000) is None and t.lookup(0x40_0000) is None
    assert t.lookup(0x1F_FFFF) is None and t.lookup(0x4000_0000_0020_0000) is None


@pytest.mark.parametrize("size", [12, 16, 21, 30])
def test_an_entry_covers_exactly_its_range(size):
    t = Iotlb(16)
    base = 0x5 << 33 | 3 << size  # aligned to 2**size, not to more
    e = t.insert(base + (1 << size) // 3, 0xF << 40, size, r=True, w=False)
    assert (e.base, e.size, e.set) == (base, size, t.set_of(base, size))
    for iova in (base, base + (1 << size) - 1, base + (1 << size) // 2 + 7):
        assert t.lookup(iova) == e and e.translate(iova) == 0xF << 40 | iova - base
    assert t.lookup(base - 1) is None and t.lookup(base + (1 << size)) is None


def test_top_of_the_address_space():
    t = Iotlb(8)
    e = t.insert(spec.ADDR_MASK, spec.ADDR_MASK, 12, **RW)
    assert (e.base, e.pa) == (0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000)
    assert t.lookup(spec.ADDR_MASK) == e and t.lookup(0) is None
    f = t.insert(0xFFFF_FFFF_C000_0000, 0, 30, **RW)  # replaces the 4 KiB entry it covers
    assert t.entries() == [f] and t.lookup(spec.ADDR_MASK).translate(spec.ADDR_MASK) == G - 1


@pytest.mark.parametrize("size", [0, 11, 31, 32, 63])
def test_an_insert_of_a_bad_size_does_nothing(size):
    t = Iotlb(8)
    e = t.insert(0x20_0000, 0, 21, **RW)
    assert t.insert(0x20_0000, 0x1000, size, **RW) is None
    assert t.entries() == [e] and t.pointers == [0, 0, 0, 0] and t.evictions == []


def test_insert_removes_every_entry_it_overlaps():
    t = Iotlb(16)  # S = 8
    smalls = [t.insert(0x20_0000 + k * K, k * K, 12, **RW) for k in (0, 1, 5, 511)]
    outside = t.insert(0x40_0000, 0, 12, **RW)
    big = t.insert(0x2F_0000, 0x8000_0000, 21, r=True, w=False)  # base 0x20_0000
    assert all(t.lookup(e.base) == big for e in smalls)
    assert t.entries() == [big, outside] or set(t.entries()) == {big, outside}
    assert t.evictions == []  # removed, not evicted
    # A 4 KiB insert inside the 2 MiB entry removes it in turn.
    small = t.insert(0x21_0000, 0x5000, 12, **RW)
    assert set(t.entries()) == {small, outside} and t.lookup(0x20_0000) is None
    # The same range again with another PA: replaced, in the way it frees.
    again = t.insert(0x21_0000, 0x6000, 12, r=False, w=True)
    assert (again.set, again.way) == (small.set, small.way) and len(t) == 2


def test_round_robin_replacement_order():
    t = Iotlb(8)  # S = 4: pages 0x0000, 0x4000, 0x8000, ... share small set 0
    page = [4 * k * K for k in range(9)]
    ways = [t.insert(p, p, 12, **RW).way for p in page[:2]]
    assert ways == [0, 1] and t.pointers == [0, 0, 0, 0]  # invalid ways first: no pointer move
    e2 = t.insert(page[2], 0, 12, **RW)
    assert e2.way == 0 and t.pointers == [1, 0, 0, 0] and [e.base for e in t.evictions] == [0]
    assert t.insert(page[3], 0, 12, **RW).way == 1 and t.pointers == [0, 0, 0, 0]  # wraps
    # Way 1 freed: the next insert takes it (lowest invalid way), not the pointer's way 0,
    # and the pointer stays at 0.
    assert t.invalidate(page[3], 12) == 1
    assert t.insert(page[4], 0, 12, **RW).way == 1 and t.pointers == [0, 0, 0, 0]
    assert t.insert(page[5], 0, 12, **RW).way == 0 and t.pointers == [1, 0, 0, 0]
    assert t.insert(page[6], 0, 12, **RW).way == 1 and t.pointers == [0, 0, 0, 0]  # wraps
    assert t.insert(page[7], 0, 12, **RW).way == 0 and t.pointers == [1, 0, 0, 0]
    assert t.insert(page[8], 0, 12, **RW).way == 1 and t.pointers == [0, 0, 0, 0]  # wraps
    assert [e.base for e in t.evictions] == [page[0], page[1], page[2], page[4], page[5],
                                             page[6]]
    assert [(e.way, e.base) for e in t.entries()] == [(0, page[7]), (1, page[8])]
    # Re-inserting a resident page frees its own way first (way 1, while the pointer names
    # way 0): no eviction, pointer unchanged.
    assert t.insert(page[8], 0x1000, 12, **RW).way == 1 and t.pointers == [0, 0, 0, 0]
    assert len(t.evictions) == 6 and t.lookup(page[7]).way == 0
    # Set 1 has its own pointer, still at 0.
    odd = [t.insert((4 * k + 1) * K, 0, 12, **RW).way for k in range(5)]
    assert odd == [0, 1, 0, 1, 0] and t.pointers == [0, 1, 0, 0] and len(t.evictions) == 9
    assert [e.base for e in t.evictions[6:]] == [1 * K, 5 * K, 9 * K]
    # Small and large entries share the S sets: the large set of 0x4000_0000 is set 1, full.
    big = t.insert(0x4000_0000, 0, 21, **RW)
    assert (big.set, big.way) == (1, 1) and t.pointers == [0, 0, 0, 0] and len(t.evictions) == 10
    assert t.evictions[-1].base == 13 * K  # the odd page that was in set 1 way 1


def test_invalidate_range_and_counts():
    t = Iotlb(16)
    for k in range(4):
        t.insert(0x10_0000 + k * K, 0, 12, **RW)
    big = t.insert(0x4000_0000, 0, 21, **RW)
    assert t.invalidate(0x10_0000, 13) == 2  # 8 KiB: the first two pages
    assert t.invalidate(0x10_2000, 12) == 1
    assert t.invalidate(0x10_2000, 12) == 0  # already gone
    assert t.invalidate(0x10_3FFF, 5) == 1  # a size below 12 counts as 12, low bits ignored
    assert t.invalidate(0x4010_0000, 12) == 1 and big not in t.entries()  # inside the 2 MiB
    for k in range(3):
        t.insert(k * G, 0, 30, **RW)
    t.insert(5 * G + 0x7000, 0, 12, **RW)
    assert t.invalidate(0x1234, 31) == 4 and len(t) == 0  # a size above 30: all
    for k in range(5):  # one large set (0) of 2 ways: the third, fourth, fifth evict
        t.insert(k * M2, 0, 21, **RW)
    assert [e.base for e in t.evictions] == [0, M2, 2 * M2] and t.pointers[0] == 1
    assert t.invalidate(0, 30) == 2  # 1 GiB covers both left
    for k in range(7):  # small sets 0 to 6 (S = 8)
        t.insert(k * K, 0, 12, **RW)
    pointers = list(t.pointers)
    assert t.invalidate_all() == 7 and t.entries() == [] and t.invalidate_all() == 0
    assert t.pointers == pointers  # invalidation never moves a pointer


def test_reset_clears_entries_and_pointers_keeps_the_record():
    t = Iotlb(8)
    for k in range(3):  # small set 0 (S = 4) of 2 ways: the third evicts the first
        t.insert(4 * k * K, 0, 12, **RW)
    assert t.pointers == [1, 0, 0, 0] and len(t.evictions) == 1
    t.reset()
    assert t.entries() == [] and t.pointers == [0, 0, 0, 0] and len(t.evictions) == 1
    assert t.insert(0, 0, 12, **RW).way == 0


def test_overlaps():
    for a, sa, b, sb in itertools.product((0, 0x20_0000, 0x3F_F000, 0x40_0000, 0xC000_0000),
                                          (12, 21), (0, 0x3F_F000, 0x8000_0000), (12, 30)):
        a, b = a >> sa << sa, b >> sb << sb
        assert overlaps(a, sa, b, sb) == intersect(a, sa, b, sb)
    assert overlaps(0x20_0000, 21, 0x3F_F000, 12) and overlaps(0x3F_F000, 12, 0x20_0000, 21)
    assert not overlaps(0x20_0000, 21, 0x40_0000, 12)
    assert overlaps(0, 30, 0x3FFF_F000, 12) and not overlaps(0, 29, 0x3FFF_F000, 12)


# --- against a naive model ---------------------------------------------------------------------

SIZES = st.sampled_from([12] * 8 + [13, 16, 21, 21, 22, 30, 11, 31, 0])
# IOVAs from a small universe, so that sets, ranges and overlaps collide.
IOVA = st.builds(lambda hi, page, off: hi | page << 12 | off,
                 st.sampled_from([0, 1 << 30, 3 << 30, 1 << 40, 0xFFFF_FFFF_0000_0000]),
                 st.integers(0, 600), st.integers(0, 4095))
OP = st.one_of(
    st.tuples(st.just("insert"), IOVA, st.integers(0, 1 << 40), SIZES, st.booleans(),
              st.booleans()),
    st.tuples(st.just("invalidate"), IOVA, SIZES),
    st.tuples(st.just("all")),
)


def intersect(a: int, a_size: int, b: int, b_size: int) -> bool:
    """The ranges ``[a, a + 2**a_size)`` and ``[b, b + 2**b_size)`` share an address."""
    return a < b + (1 << b_size) and b < a + (1 << a_size)


class NaiveIotlb:
    """Mappings ``{(base, size): (pa, r, w)}`` with no sets: what the IOTLB must answer, apart
    from what it evicted (which the IOTLB reports)."""

    def __init__(self) -> None:
        self.maps: dict[tuple[int, int], tuple[int, bool, bool]] = {}

    def remove(self, base: int, size: int) -> int:
        gone = [k for k in self.maps if intersect(k[0], k[1], base, size)]
        for k in gone:
            del self.maps[k]
        return len(gone)

    def lookup(self, iova: int) -> tuple[int, int, int, bool, bool] | None:
        hits = [(b, s, *v) for (b, s), v in self.maps.items() if b <= iova < b + (1 << s)]
        assert len(hits) <= 1
        return hits[0] if hits else None


def _check_invariants(t: Iotlb) -> None:
    entries = t.entries()
    assert all(c <= spec.IOTLB_WAYS for c in Counter(e.set for e in entries).values())
    assert len({(e.set, e.way) for e in entries}) == len(entries)
    for e in entries:
        assert e.set == t.set_of(e.base, e.size) and e.base % (1 << e.size) == 0
    for a, b in itertools.combinations(entries, 2):
        assert not intersect(a.base, a.size, b.base, b.size), (a, b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.sampled_from([8, 16, 64]), ops=st.lists(OP, max_size=60),
       probes=st.lists(IOVA, min_size=1, max_size=20))
def test_iotlb_agrees_with_a_naive_model(entries, ops, probes):
    t, naive = Iotlb(entries), NaiveIotlb()
    for op in ops:
        if op[0] == "insert":
            _, iova, pa, size, r, w = op
            evicted = len(t.evictions)
            got = t.insert(iova, pa, size, r, w)
            if not 12 <= size <= 30:
                assert got is None
            else:
                mask = ~((1 << size) - 1) & spec.ADDR_MASK
                naive.remove(iova & mask, size)
                naive.maps[(iova & mask, size)] = (pa & mask, r, w)
                for e in t.evictions[evicted:]:  # at most one, in the new entry's set
                    assert e.set == got.set and e.way == got.way
                    assert naive.maps.pop((e.base, e.size)) == (e.pa, e.r, e.w)
                assert len(t.evictions) - evicted <= 1
        elif op[0] == "invalidate":
            _, iova, size = op
            if size > 30:
                expected = len(naive.maps)
                naive.maps.clear()
            else:
                size = max(size, 12)
                expected = naive.remove(iova & ~((1 << size) - 1) & spec.ADDR_MASK, size)
            assert t.invalidate(iova, size) == expected
        else:
            assert t.invalidate_all() == len(naive.maps)
            naive.maps.clear()
        _check_invariants(t)
        assert {(e.base, e.size): (e.pa, e.r, e.w) for e in t.entries()} == naive.maps
    for iova in probes + [e.base for e in t.entries()]:
        hit = t.lookup(iova)
        assert (hit and (hit.base, hit.size, hit.pa, hit.r, hit.w)) == (naive.lookup(iova) or None)


# =================================================================================================
# The device: registers
# =================================================================================================


def dev_(**kw) -> ReferenceDevice:
    return ReferenceDevice(GuestMemory(1 << 20), **kw)


def stage(dev: ReferenceDevice, iova: int, pa: int, attr: int) -> None:
    h = dev.hv
    h.write(spec.HV_IOTLB_IOVA_LO, iova)
    h.write(spec.HV_IOTLB_IOVA_HI, iova >> 32)
    h.write(spec.HV_IOTLB_PA_LO, pa)
    h.write(spec.HV_IOTLB_PA_HI, pa >> 32)
    h.write(spec.HV_IOTLB_ATTR, attr)


def insert(dev: ReferenceDevice, iova: int, pa: int, size: int = 12, *, r: bool = True,
           w: bool = True) -> None:
    stage(dev, iova, pa, size | r * spec.IOTLB_ATTR_READ | w * spec.IOTLB_ATTR_WRITE)
    dev.hv.write(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INSERT)


def miss_iova(dev: ReferenceDevice) -> int:
    return dev.hv.read(spec.HV_MISS_IOVA_LO) | dev.hv.read(spec.HV_MISS_IOVA_HI) << 32


def stats(dev: ReferenceDevice) -> tuple[int, int, int, int]:
    """``(STAT_IOTLB_HITS, STAT_IOTLB_MISSES, STAT_IOTLB_INVALIDATED, HV_STAT_XLATE)``."""
    return tuple(dev.hv.read(o) for o in (spec.HV_STAT_IOTLB_HITS, spec.HV_STAT_IOTLB_MISSES,
                                          spec.HV_STAT_IOTLB_INVALIDATED, spec.HV_STAT_XLATE))


def test_hv_ctrl_modes_and_a_write_of_3():
    d = dev_()
    for value, mode in ((2, 2), (3, 2), (0xFFFF_FFFF, 2), (0, 0), (7, 0), (5, 1), (3, 1), (6, 2)):
        d.hv.write(spec.HV_CTRL, value)
        assert d.hv.read(spec.HV_CTRL) == mode == d.mode
        assert d.handle_mode == (mode == spec.MODE_GRANT)


@pytest.mark.parametrize(("mode", "offered"), [(0, False), (1, True), (2, True)])
def test_access_platform_in_grant_and_iova_modes(mode, offered):
    d = dev_()
    d.hv.write(spec.HV_CTRL, mode)
    d.guest.write(spec.MMIO_DEVICE_FEATURES_SEL, 1)
    assert bool(d.guest.read(spec.MMIO_DEVICE_FEATURES) & 2) == offered
    d.guest.write(spec.MMIO_DRIVER_FEATURES_SEL, 1)
    d.guest.write(spec.MMIO_DRIVER_FEATURES, 1)  # VERSION_1 only
    d.guest.write(spec.MMIO_STATUS, spec.STATUS_FEATURES_OK)
    assert bool(d.guest.read(spec.MMIO_STATUS) & spec.STATUS_FEATURES_OK) != offered


def test_iotlb_registers():
    d = dev_(iotlb_entries=16)
    h = d.hv
    assert h.read(spec.HV_IOTLB_ENTRIES) == 16 and dev_().hv.read(spec.HV_IOTLB_ENTRIES) == 64
    stage(d, 0x1234_5678_9ABC_DEF0, 0xFEDC_BA98_7654_3210, 0xFFFF_FFFF)
    assert [h.read(o) for o in range(spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_ATTR + 4, 4)] == [
        0x9ABC_DEF0, 0x1234_5678, 0x7654_3210, 0xFEDC_BA98, 0x3FF]  # ATTR keeps bits 9:0
    for wo in (spec.HV_IOTLB_CMD, spec.HV_MISS_RESOLVE):
        assert h.read(wo) == 0
    h.write(spec.HV_IOTLB_CMD, 1)  # size 63: nothing
    assert d.iotlb.entries() == []
    insert(d, 0x20_1234, 0x40_5678, 21, r=True, w=False)
    assert d.iotlb.entries() == [IotlbEntry(0, 0, 0x20_0000, 21, 0x40_0000, True, False)]
    insert(d, 0x7000, 0x9000)
    for cmd in (0, 4, 0xFFFF_FFFF):
        h.write(spec.HV_IOTLB_CMD, cmd)  # other values do nothing
    assert len(d.iotlb) == 2 and stats(d) == (0, 0, 0, 0)
    stage(d, 0x20_0000, 0, 12)
    h.write(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE)
    assert len(d.iotlb) == 1 and stats(d)[2] == 1
    insert(d, 0x20_0000, 0, 16)
    h.write(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE_ALL)
    assert len(d.iotlb) == 0 and stats(d)[2] == 3
    # No miss pending: IOTLB_MISS reads 0, MISS_RESOLVE is ignored.
    h.write(spec.HV_MISS_RESOLVE, 1)
    assert h.read(spec.HV_IOTLB_MISS) == 0 and not d.hv_irq
    for ro in (spec.HV_IOTLB_MISS, spec.HV_STAT_IOTLB_HITS, spec.HV_IOTLB_ENTRIES):
        h.write(ro, 0xFFFF_FFFF)
    assert h.read(spec.HV_IOTLB_MISS) == 0 and h.read(spec.HV_IOTLB_ENTRIES) == 16


def test_rst_clears_the_iotlb_a_driver_reset_keeps_it():
    d = dev_(iotlb_entries=8)
    for k in range(5):  # small sets 0, 2, 0, 2, 0 (S = 4): page 8 evicts page 0
        insert(d, 2 * k * K, 0)
    d.hv.write(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE)  # staged: page 8, 4 KiB
    assert len(d.iotlb) == 3 and d.iotlb.pointers == [1, 0, 0, 0] and stats(d)[2] == 1
    d.guest.write(spec.MMIO_STATUS, 0)
    assert len(d.iotlb) == 3 and d.iotlb.pointers == [1, 0, 0, 0] and stats(d)[2] == 1
    assert d.hv.read(spec.HV_IOTLB_ATTR) == 12 | 0x300
    d.reset()
    assert d.iotlb.entries() == [] and d.iotlb.pointers == [0, 0, 0, 0] and stats(d) == (0, 0, 0, 0)
    staging = range(spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_ATTR + 4, 4)
    assert [d.hv.read(o) for o in staging] == [0] * 5


def test_device_iotlb_entries_is_checked():
    with pytest.raises(ValueError, match=r"^IOTLB entries must be"):
        dev_(iotlb_entries=48)


# =================================================================================================
# The device: DMA in IOVA mode
# =================================================================================================


class Hypervisor:
    """The ``on_iotlb_miss`` hook: maps the missing page from ``pages`` (IOVA page -> (PA page,
    R, W)) as a 4 KiB entry and resolves with 1, or fails the miss (2) if it has none.

    Records what it saw: ``(MISS_IOVA, IOTLB_MISS)`` per miss."""

    def __init__(self) -> None:
        self.pages: dict[int, tuple[int, bool, bool]] = {}
        self.seen: list[tuple[int, int]] = []
        self.action = None  # a callable replacing the default behaviour once

    def __call__(self, dev: ReferenceDevice) -> None:
        iova, miss = miss_iova(dev), dev.hv.read(spec.HV_IOTLB_MISS)
        assert dev.hv_irq and miss & spec.IOTLB_MISS_PENDING
        self.seen.append((iova, miss))
        if self.action is not None:
            action, self.action = self.action, None
            action(dev)
            return
        page = self.pages.get(iova >> 12)
        if page is None:
            dev.hv.write(spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_FAIL)
            return
        pa, r, w = page
        insert(dev, iova, pa << 12, r=r, w=w)
        dev.hv.write(spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_RETRY)


IOVA_BASE = 0x5_0000_0000  # the IOVAs the driver hands out: far from the physical addresses


class IovaDriver(HandDriver):
    """The hand driver in IOVA mode: each buffer gets fresh IOVA pages (two apart, so the
    IOVA space is not the physical one) that the :class:`Hypervisor` maps on demand."""

    def __init__(self, dev: ReferenceDevice, hyp: Hypervisor) -> None:
        super().__init__(dev)
        self.hyp = hyp
        self.next_iova_page = IOVA_BASE >> 12
        dev.hv.write(spec.HV_CTRL, spec.MODE_IOVA)

    def buffer(self, nbytes: int, *, offset: int = 0, readonly: bool = False, stride: int = 1,
               frames: list[int] | None = None) -> Buffer:
        pages = max(1, -(-(offset + nbytes) // spec.PAGE_SIZE))
        if frames is None:
            frames = self.alloc_frames(pages, stride=stride)
        first = self.next_iova_page
        for k, frame in enumerate(frames):
            self.hyp.pages[first + k] = (frame, True, not readonly)
        self.next_iova_page += len(frames) + 1  # a hole after each buffer
        return Buffer(first << 12 | offset, frames, offset, nbytes)


def iova_setup(n: int = 8, **kw) -> tuple[ReferenceDevice, IovaDriver, Hypervisor]:
    hyp = Hypervisor()
    kw.setdefault("features", Features.none())  # the foundation's transactions
    dev = ReferenceDevice(GuestMemory(1 << 21), on_iotlb_miss=hyp, **kw)
    drv = IovaDriver(dev, hyp)
    drv.setup(n)
    return dev, drv, hyp


def test_requests_in_iova_mode():
    dev, drv, hyp = iova_setup(data_width=32)
    data = bytes((7 * i + 3) & 0xFF for i in range(2 * 512))
    out = drv.request(spec.VIRTIO_BLK_T_OUT, 4, data=data, data_offset=0xE00)  # 2 pages
    drv.notify()
    assert drv.take_used() == [(out.head, 1)] and drv.status_of(out) == spec.VIRTIO_BLK_S_OK
    assert dev.disk[4 * 512 : 6 * 512] == data and dev.faults == []
    page2 = (out.data.dma & ~0xFFF) + K
    expected = [
        (drv.avail.dma, False),  # avail.flags, avail.idx; then ring[0] in the same page: a hit
        (drv.desc.dma, False),  # descriptor 0; descriptors 1 and 2 hit
        (out.header.dma, False),
        (out.data.dma, False), (page2, False),  # the data, page by page
        (out.status.dma, True),
        (drv.used.dma + drv.ring.used_ring(0), True),  # used element; used.idx then hits
    ]
    assert dev.misses == expected
    assert hyp.seen == [(iova, 1 | (4 if w else 2)) for iova, w in expected]
    assert all(t.addr < 1 << 21 for t in dev.transactions)  # physical, not IOVAs
    # Page pieces: avail x2, desc x3, header, data x2, status, used x2, and the next round's
    # poll of avail: 12, each ends in a hit; 7 misses before; HV_STAT_XLATE counts all 19.
    assert stats(dev) == (12, 7, 0, 19) and dev.translations == 19
    assert dev.hv.read(spec.HV_IOTLB_MISS) == 0 and not dev.hv_irq
    # A read of what was written; the rings' pages are mapped already.
    inn = drv.request(spec.VIRTIO_BLK_T_IN, 4, read_len=2 * 512)
    drv.notify()
    assert drv.take_used() == [(inn.head, 2 * 512 + 1)] and drv.read_buf(inn.data) == data
    assert len(dev.misses) == 7 + 3  # header, data (one page), status


def test_a_large_mapping_serves_every_page_it_covers():
    dev, drv, hyp = iova_setup()
    pool = drv.alloc_frames(32)
    base = -(-pool[0] // 16) * 16  # a 64 KiB aligned physical range
    frames = list(range(base + 3, base + 7))
    buf = Buffer(0x9_0000_3000, frames, 0, 4 * K)  # IOVA pages 3..6 of a 64 KiB mapping

    def map_64k(d):
        insert(d, 0x9_0000_0000, base << 12 | 0x1234, 16, r=True, w=True)
        d.hv.write(spec.HV_MISS_RESOLVE, 1)

    drv.write_buf(buf, b"\x11" * 4 * K)
    hyp.action = map_64k
    dev.dma_write(buf.dma + 5, b"\x22" * (4 * K - 10))
    assert dev.misses == [(buf.dma + 5, True)] and dev.faults == []
    assert drv.read_buf(buf) == b"\x11" * 5 + b"\x22" * (4 * K - 10) + b"\x11" * 5
    assert dev.dma_read(buf.dma + 3 * K, K) == b"\x22" * (K - 5) + b"\x11" * 5
    assert stats(dev)[:2] == (5, 1)  # pages 3 (again), 4, 5, 6 and the read of page 6


def test_a_failed_miss_faults_with_cause_10():
    dev, drv, hyp = iova_setup()
    req = drv.request(spec.VIRTIO_BLK_T_IN, 0, read_len=512)
    del hyp.pages[req.data.dma >> 12]
    drv.notify()
    assert dev.faults == [(spec.FAULT_IOTLB_FAILED, req.data.dma)]
    assert dev.hv.read(spec.HV_FAULT_CAUSE) == 10 and dev.halted
    assert dev.hv.read(spec.HV_FAULT_ADDR_LO) | dev.hv.read(spec.HV_FAULT_ADDR_HI) << 32 == \
        req.data.dma
    assert dev.hv.read(spec.HV_IOTLB_MISS) == 0 and not dev.hv_irq
    assert dev.misses[-1] == (req.data.dma, True) and drv.take_used() == []
    assert not any(t.kind == "W" for t in dev.transactions)


@pytest.mark.parametrize("write", [False, True])
def test_a_hit_without_the_permission_faults(write):
    dev, drv, hyp = iova_setup()
    if write:  # the status byte's page without W: cause 5
        req = drv.request(spec.VIRTIO_BLK_T_FLUSH)
        target, cause = req.status.dma, spec.FAULT_READONLY
        hyp.pages[target >> 12] = (hyp.pages[target >> 12][0], True, False)
    else:  # the header's page without R: cause 11
        req = drv.request(spec.VIRTIO_BLK_T_FLUSH)
        target, cause = req.header.dma, spec.FAULT_IOTLB_NO_READ
        hyp.pages[target >> 12] = (hyp.pages[target >> 12][0], False, True)
    hits = stats(dev)[0]
    drv.notify()
    assert dev.faults == [(cause, target)] and dev.hv.read(spec.HV_FAULT_CAUSE) == cause
    assert dev.misses[-1] == (target, write)  # then the hit without the permission
    assert stats(dev)[0] > hits and drv.take_used() == []
    assert all(t.addr >> 12 != dev.iotlb.lookup(target).pa >> 12 for t in dev.transactions)


def test_a_miss_looks_up_again_and_may_miss_again():
    dev, drv, hyp = iova_setup()
    req = drv.request(spec.VIRTIO_BLK_T_FLUSH)
    target = req.header.dma

    def not_yet(d: ReferenceDevice) -> None:  # resolve without mapping: a second miss
        d.hv.write(spec.HV_MISS_RESOLVE, 7)  # ignored: the miss stays pending
        assert d.hv.read(spec.HV_IOTLB_MISS) == 0b011
        d.hv.write(spec.HV_MISS_RESOLVE, spec.MISS_RESOLVE_RETRY)
        assert d.hv.read(spec.HV_IOTLB_MISS) == 0 and not d.hv_irq

    def hook(d: ReferenceDevice) -> None:
        if miss_iova(d) == target and (target, 0b011) not in hyp.seen:
            hyp.action = not_yet  # the first miss on the header's page
        hyp(d)

    dev.on_iotlb_miss = hook
    done, lookups = len(dev.misses), stats(dev)[3]
    drv.notify()
    assert dev.misses[done:].count((target, False)) == 2 and dev.faults == []
    assert drv.take_used() == [(req.head, 1)]
    # Lookups per piece: avail header 2 (miss, hit), ring element 1, descriptors 2 + 1,
    # header 3 (miss, miss, hit), status 2, used element 2, used index 1, next poll 1.
    assert stats(dev)[3] - lookups == 15 and stats(dev)[:2] == (9, 6)


def test_a_driver_reset_during_a_miss_cancels_it_and_keeps_the_entries():
    dev, drv, hyp = iova_setup()
    req = drv.request(spec.VIRTIO_BLK_T_IN, 0, read_len=512)
    entries = None

    def reset(d):
        nonlocal entries
        entries = d.iotlb.entries()
        d.guest.write(spec.MMIO_STATUS, 0)
        assert d.hv.read(spec.HV_IOTLB_MISS) == 0 and not d.hv_irq

    dev.on_iotlb_miss = lambda d: (reset if miss_iova(d) == req.data.dma else hyp)(d)
    before = len(dev.transactions)
    drv.notify()
    assert dev.misses[-1] == (req.data.dma, True) and dev.faults == [] and not dev.halted
    assert dev.iotlb.entries() == entries and len(entries) == 3  # avail, desc, header
    assert not any(t.kind == "W" for t in dev.transactions[before:])
    assert dev.guest.read(spec.MMIO_STATUS) == 0 and dev.hv.read(spec.HV_FAULT_STATUS) == 0
    # The entries serve the next bring-up: only new pages miss.
    dev.on_iotlb_miss = hyp
    drv.setup(8)
    misses = len(dev.misses)
    again = drv.request(spec.VIRTIO_BLK_T_GET_ID, read_len=20)
    drv.notify()
    assert drv.take_used() == [(again.head, 21)] and drv.read_buf(again.data) == \
        spec.DEVICE_SERIAL
    assert len(dev.misses) - misses == 6  # the new rings (avail, desc, used) and buffers


def test_a_miss_needs_a_hypervisor_that_answers():
    dev = ReferenceDevice(GuestMemory(1 << 16))
    dev.hv.write(spec.HV_CTRL, spec.MODE_IOVA)
    with pytest.raises(RuntimeError, match="on_iotlb_miss"):
        dev.dma_read(0x1000, 4)
    dev.on_iotlb_miss = lambda d: None
    with pytest.raises(RuntimeError, match="pending"):
        dev.dma_read(0x1000, 4)
    assert dev.misses == [(0x1000, False)] * 2


def test_an_iotlb_command_makes_the_next_burst_look_up_again():
    """docs/iotlb.md "Invalidation is strict": after a command, the next burst of a page is
    looked up again; its miss names the first byte it needs."""
    dev, drv, hyp = iova_setup(data_width=32)  # 1 KiB bursts: 4 per page
    frames = drv.alloc_frames(1)
    iova = 0x7_0000_0000
    hyp.pages[iova >> 12] = (frames[0], True, True)
    invalidated = []

    def invalidate_once(t):
        if not invalidated and t.addr >> 12 == frames[0]:
            stage(dev, iova, 0, 12)
            dev.hv.write(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE)
            invalidated.append(t)

    dev.on_transaction = invalidate_once
    xlate = stats(dev)[3]
    dev.dma_write(iova + 0x10, bytes(3000))
    assert dev.misses[-2:] == [(iova + 0x10, True), (iova + 1024, True)]
    assert [t.nbytes for t in dev.transactions[-3:]] == [1024 - 0x10, 1024, 3000 - 2048 + 0x10]
    assert stats(dev)[3] - xlate == 4 and stats(dev)[2] == 1  # miss, again, miss, again


@pytest.mark.parametrize(("start", "next_mapped", "ahead"), [
    (0xC00, False, True),  # the failed burst ends its page, the access goes on: looked ahead
    (0xC00, True, False),  # the same, the next page mapped: the lookup hits, nothing to see
    (0x800, False, False),  # the failed burst does not end its page: the access ends before
])
def test_a_failed_read_burst_that_ends_its_page_raised_the_next_pages_miss(start, next_mapped,
                                                                            ahead):
    """docs/iotlb.md "Looked up ahead": the next page of a read is looked up in the address
    handshake of the burst that ends the page before it; if that burst fails, its miss was
    raised all the same (once, answered, its answer unused), and the access ends with cause 6.
    (Found by the soak of seed 70091: the RTL raised it, the model did not.)"""
    dev, drv, hyp = iova_setup(data_width=32)  # 1 KiB bursts: 4 per page
    frames = drv.alloc_frames(2)
    iova = 0x7_0000_0000
    hyp.pages[iova >> 12] = (frames[0], True, True)
    hyp.pages[(iova >> 12) + 1] = (frames[1], True, True)
    if next_mapped:
        insert(dev, iova + spec.PAGE_SIZE, frames[1] << 12)
    dev.bus_error = lambda t: t.addr >> 12 == frames[0]
    hits, misses, xlate = stats(dev)[0], stats(dev)[1], stats(dev)[3]
    with pytest.raises(Halt):
        dev.dma_read(iova + start, 2048)
    want = [(iova + start, False)] + [(iova + spec.PAGE_SIZE, False)] * ahead
    assert dev.misses[-len(want):] == want and stats(dev)[1] - misses == len(want)
    assert [(f.cause, f.addr) for f in dev.faults] == [(spec.FAULT_BUS_ERROR,
                                                        (frames[0] << 12) + start)]
    assert [t.addr >> 12 for t in dev.transactions[-1:]] == [frames[0]]  # one burst, failed
    assert dev.transactions[-1].error
    # the look-ahead is no translation the engine used: one lookup, one hit (after the miss)
    assert (stats(dev)[0] - hits, stats(dev)[3] - xlate) == (1, 2)
    assert (dev.iotlb.lookup(iova + spec.PAGE_SIZE) is not None) == (ahead or next_mapped)


@pytest.mark.parametrize(("action", "again"), [
    (lambda d: insert(d, 0x8_0000_0000, 0), True),  # any command that runs: an insert elsewhere
    (lambda d: d.hv.write(spec.HV_IOTLB_CMD, spec.IOTLB_CMD_INVALIDATE_ALL), None),
    (lambda d: d.hv.write(spec.HV_DOMID, 5), True),  # "Grant revocation": the mode or the domain
    (lambda d: d.hv.write(spec.HV_CTRL, 3), True),  # a write of HV_CTRL, even one of 3
    (lambda d: insert(d, 0x8_0000_0000, 0, 31), False),  # a command that does nothing
    (lambda d: d.hv.write(spec.HV_IOTLB_CMD, 0), False),
    (lambda d: d.hv.write(spec.HV_GRANT_BASE, 0x1_0001), False),  # the grant table: not IOVA
])
def test_what_makes_the_next_burst_look_up_again(action, again):
    dev, drv, hyp = iova_setup(data_width=32)  # 1 KiB bursts: 4 per page
    frames = drv.alloc_frames(1)
    iova = 0x7_0000_0000
    hyp.pages[iova >> 12] = (frames[0], True, True)
    dev.dma_read(iova, 1)  # mapped
    done = []

    def once(t):
        if not done:
            action(dev)
            done.append(t)

    dev.on_transaction = once
    hits, misses, xlate = stats(dev)[0], stats(dev)[1], stats(dev)[3]
    dev.dma_read(iova, 3000)  # 3 bursts
    if again is None:  # the entry is gone: a miss at the second burst, then a hit
        assert dev.misses[-1] == (iova + 1024, False) and stats(dev)[1] - misses == 1
        assert (stats(dev)[0] - hits, stats(dev)[3] - xlate) == (2, 3)
    else:
        assert stats(dev)[1] == misses
        assert stats(dev)[0] - hits == 1 + again == stats(dev)[3] - xlate
    assert dev.mode == spec.MODE_IOVA and dev.faults == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.sampled_from([32, 64, 128]), entries=st.sampled_from([8, 64]),
       requests=st.lists(st.tuples(st.sampled_from([spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT,
                                                     spec.VIRTIO_BLK_T_GET_ID]),
                                   st.integers(1, 9), st.integers(0, 4095), st.integers(0, 60)),
                         min_size=1, max_size=5))
def test_iova_mode_issues_the_gpa_mode_transactions(width, entries, requests):
    """With 4 KiB mappings of the same frames, IOVA mode moves the same bytes in the same
    transactions as GPA mode: the IOTLB changes addresses, never the bursts."""
    gpa, gdrv = make(data_width=width, mem_size=1 << 21)
    iova, idrv, _ = iova_setup(data_width=width, iotlb_entries=entries)
    for req_type, sectors, offset, sector in requests:
        for drv in (gdrv, idrv):
            if req_type == spec.VIRTIO_BLK_T_OUT:
                drv.request(req_type, sector, data=bytes([sector]) * 512 * sectors,
                            data_offset=offset)
            else:
                drv.request(req_type, sector, read_len=512 * sectors, data_offset=offset)
            drv.notify()
        assert idrv.take_used() == gdrv.take_used()
    def seen(dev: ReferenceDevice) -> list[tuple]:  # descriptors hold IOVAs or GPAs
        return [(t.kind, t.addr, t.nbytes, t.data if t.kind == "W" else None)
                for t in dev.transactions]

    assert seen(iova) == seen(gpa)
    assert iova.disk == gpa.disk and iova.faults == gpa.faults == []
    hits, misses, _, xlate = stats(iova)
    assert misses == len(iova.misses) and xlate == hits + misses == iova.translations
    # A page misses again only after its entry was evicted (nothing is invalidated here).
    assert len(iova.misses) <= len({i >> 12 for i, _ in iova.misses}) + len(iova.iotlb.evictions)
