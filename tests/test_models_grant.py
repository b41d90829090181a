"""Translation rules of the reference model (docs/architecture.md, "Handles and translation")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import spec
from models.grant import GrantEntry, GrantTable, Translation, translate
from models.memory import GuestMemory

ENTRIES = 16
DOMID = 7


def _table() -> list[GrantEntry]:
    table = [GrantEntry() for _ in range(ENTRIES)]
    table[1] = GrantEntry.permit(DOMID, 0x123)
    table[2] = GrantEntry.permit(DOMID, 0x456, readonly=True)
    table[3] = GrantEntry(flags=spec.GTF_accept_transfer, domid=DOMID, frame=0x9)
    table[4] = GrantEntry(flags=3, domid=DOMID, frame=0x9)
    table[5] = GrantEntry.permit(DOMID + 1, 0x777)
    table[6] = GrantEntry(flags=spec.GTF_readonly, domid=DOMID + 1, frame=0x9)  # invalid
    table[7] = GrantEntry.permit(DOMID + 1, 0x777, readonly=True)
    table[8] = GrantEntry(flags=spec.GTF_permit_access | 0xFFF8, domid=DOMID, frame=0xFFFF_FFFF)
    return table


def tr(v: int, write: bool = False, *, handle_mode: bool = True, entries: int = ENTRIES):
    return translate(
        v, write, handle_mode=handle_mode, domid=DOMID, table=_table(), entries=entries
    )


def test_success_read_and_write():
    assert tr(spec.make_handle(1, 0x10)) == Translation(0x123 << 12 | 0x10)
    assert tr(spec.make_handle(1, 0xFFF), write=True).paddr == 0x123FFF
    assert tr(spec.make_handle(2, 5)).paddr == 0x456005  # read of a read-only grant


def test_high_flag_bits_and_largest_frame():
    # Only flags & 3 and GTF_readonly matter; other bits (GTF_reading, ...) are ignored.
    t = tr(spec.make_handle(8, 0xABC), write=True)
    assert t.ok and t.paddr == 0xFFFF_FFFF << 12 | 0xABC


def test_cause_1_not_a_handle():
    assert tr(0x123000).cause == spec.FAULT_NOT_HANDLE
    assert tr(spec.make_handle(1) & ~spec.HANDLE_BIT).cause == spec.FAULT_NOT_HANDLE


@pytest.mark.parametrize("ref", [ENTRIES, ENTRIES + 1, spec.GRANT_REF_MASK, 1 << 50])
def test_cause_2_reference_outside(ref):
    assert tr(spec.make_handle(ref)).cause == spec.FAULT_REF_RANGE


def test_cause_2_does_not_look_up_the_table():
    def lookup(ref: int) -> GrantEntry:
        raise AssertionError("table consulted")

    t = translate(
        spec.make_handle(ENTRIES), False, handle_mode=True, domid=0, table=lookup, entries=ENTRIES
    )
    assert t.cause == spec.FAULT_REF_RANGE


@pytest.mark.parametrize("ref", [0, 3, 4, 6])
def test_cause_3_not_permit_access(ref):
    assert tr(spec.make_handle(ref)).cause == spec.FAULT_NOT_PERMITTED
    assert tr(spec.make_handle(ref), write=True).cause == spec.FAULT_NOT_PERMITTED


def test_cause_4_wrong_domain():
    assert tr(spec.make_handle(5)).cause == spec.FAULT_WRONG_DOMAIN
    assert tr(spec.make_handle(7), write=True).cause == spec.FAULT_WRONG_DOMAIN  # 4 before 5


def test_cause_5_readonly():
    assert tr(spec.make_handle(2), write=True).cause == spec.FAULT_READONLY


def test_precedence_entries_parameter_wins_over_table_length():
    # ref 1 is a valid entry, but the device only has 1 entry: cause 2.
    assert tr(spec.make_handle(1), entries=1).cause == spec.FAULT_REF_RANGE


def test_domid_compared_on_16_bits():
    t = translate(
        spec.make_handle(1),
        False,
        handle_mode=True,
        domid=DOMID | 0x10000,
        table=_table(),
        entries=ENTRIES,
    )
    assert t.ok


@given(v=st.integers(0, spec.ADDR_MASK), write=st.booleans())
def test_gpa_mode_is_identity_without_checks(v, write):
    t = translate(v, write, handle_mode=False, domid=0, table=[], entries=0)
    assert t == Translation(v)


@given(
    ref=st.integers(0, ENTRIES - 1),
    off=st.integers(0, spec.PAGE_SIZE - 1),
    frame=st.integers(0, 0xFFFF_FFFF),
    flags=st.integers(0, 0xFFFF),
    domid=st.integers(0, 0xFFFF),
    write=st.booleans(),
)
def test_translation_matches_the_rules(ref, off, frame, flags, domid, write):
    entry = GrantEntry(flags, domid, frame)
    t = translate(
        spec.make_handle(ref, off),
        write,
        handle_mode=True,
        domid=DOMID,
        table=lambda r: entry,
        entries=ENTRIES,
    )
    if flags & 3 != 1:
        assert t.cause == spec.FAULT_NOT_PERMITTED
    elif domid != DOMID:
        assert t.cause == spec.FAULT_WRONG_DOMAIN
    elif write and flags & 4:
        assert t.cause == spec.FAULT_READONLY
    else:
        assert t.ok and t.paddr == frame << 12 | off  # offset passes through
    assert t.ok == (t.paddr is not None)


def test_translation_fault_constructor_rejects_non_translation_causes():
    with pytest.raises(ValueError):
        Translation.fault(spec.FAULT_BUS_ERROR)


@given(
    flags=st.integers(0, 0xFFFF),
    domid=st.integers(0, 0xFFFF),
    frame=st.integers(0, 0xFFFF_FFFF),
)
def test_entry_pack_unpack_roundtrip(flags, domid, frame):
    e = GrantEntry(flags, domid, frame)
    w0, w1 = e.pack()
    assert w0 == flags | domid << 16 and w1 == frame
    assert GrantEntry.unpack(w0, w1) == e
    assert e.to_bytes() == flags.to_bytes(2, "little") + domid.to_bytes(2, "little") + (
        frame.to_bytes(4, "little")
    )


def test_entry_rejects_out_of_range_fields():
    with pytest.raises(ValueError):
        GrantEntry(flags=0x10000)
    with pytest.raises(ValueError):
        GrantEntry(frame=1 << 32)


def test_grant_table_words_and_strobes():
    t = GrantTable(4)
    assert len(t) == 4 and all(e == GrantEntry() for e in t)
    t.write_word(2, 0x0007_0001)
    t.write_word(3, 0x1234)
    assert t[1] == GrantEntry.permit(7, 0x1234)
    t.write_word(3, 0xAABBCCDD, strb=0b0100)  # byte 2 only
    assert t.read_word(3) == 0x00BB1234
    t.write_word(2, 0xFFFF_0005, strb=0b0001)
    assert t[1] == GrantEntry(flags=5, domid=7, frame=0xBB1234)
    t[3] = GrantEntry.permit(1, 2, readonly=True)
    assert (t.read_word(6), t.read_word(7)) == (0x0001_0005, 2)
    with pytest.raises(IndexError):
        t[4]


def test_guest_memory_bounds():
    m = GuestMemory(0x100)
    m.write(0xF0, b"\x01" * 0x10)
    assert m.read(0xFF, 1) == b"\x01"
    assert m.contains(0, 0x100) and not m.contains(0xFF, 2) and not m.contains(-1, 1)
    with pytest.raises(ValueError, match="outside guest memory"):
        m.read(0xFF, 2)
    with pytest.raises(ValueError, match="outside guest memory"):
        m.write(0x100, b"\x00")
    m.write32(0, 0x11223344)
    assert m.read(0, 4) == b"\x44\x33\x22\x11" and m.read64(0) == 0x11223344
    snap = m.snapshot()
    assert len(snap) == 0x100 and snap[0xF0] == 1
