"""Unit tests of the DMA API (sw/dma.py) and the hypervisor model (sw/hypervisor.py)."""

from __future__ import annotations

import asyncio

import pytest

from models import spec
from models.memory import GuestMemory
from sw.alloc import PageAllocator
from sw.dma import (
    BIDIRECTIONAL,
    FROM_DEVICE,
    TO_DEVICE,
    DmaMappingError,
    GrantDma,
    GuestBuffer,
    IdentityDma,
    OutOfGrantRefs,
)
from sw.hypervisor import FaultInfo, Hypervisor, HypervisorError


class FakeHvPort:
    """Privileged port stand-in: stores words, logs writes."""

    def __init__(self, entries: int = 64, version: int = spec.HV_VERSION_VALUE) -> None:
        self.words: dict[int, int] = {spec.HV_ENTRIES: entries, spec.HV_VERSION: version}
        self.writes: list[tuple[int, int]] = []

    async def read32(self, offset: int) -> int:
        return self.words.get(offset, 0)

    async def write32(self, offset: int, value: int) -> None:
        self.writes.append((offset, value))
        self.words[offset] = value

    def entry(self, ref: int) -> tuple[int, int, int]:
        w0 = self.words.get(spec.HV_GRANT_BASE + 8 * ref, 0)
        return w0 & 0xFFFF, w0 >> 16, self.words.get(spec.HV_GRANT_BASE + 8 * ref + 4, 0)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def alloc() -> PageAllocator:
    return PageAllocator(GuestMemory(1 << 20), 0x10000, 0x40000, seed=3)


# --- GuestBuffer ----------------------------------------------------------------------------------
def test_buffer_read_write_across_scattered_pages(alloc: PageAllocator) -> None:
    buf = GuestBuffer.allocate(alloc, 9000, offset=100)
    assert len(buf.pages) == 3 and not buf.contiguous
    data = bytes(i * 7 & 0xFF for i in range(9000))
    buf.write(0, data)
    assert buf.read() == data
    assert buf.read(3990, 20) == data[3990:4010]
    # byte 3996 is the first byte of the second page
    assert buf.phys(3996) == buf.pages[1] << 12
    assert alloc.mem.read(buf.pages[1] << 12, 4) == data[3996:4000]
    with pytest.raises(ValueError):
        buf.read(8990, 20)
    with pytest.raises(ValueError):
        GuestBuffer(alloc.mem, [1], 4000, 200)


def test_zero_length_buffer_uses_one_page(alloc: PageAllocator) -> None:
    buf = GuestBuffer.allocate(alloc, 0, offset=4095)
    assert len(buf.pages) == 1 and buf.read() == b""


# --- IdentityDma ----------------------------------------------------------------------------------
def test_identity_returns_gpa(alloc: PageAllocator) -> None:
    dma = IdentityDma()
    buf = GuestBuffer.allocate(alloc, 5000, offset=12, contiguous=True)
    h = run(dma.map(buf, TO_DEVICE))
    assert h == (buf.pages[0] << 12) + 12
    run(dma.unmap(h))
    with pytest.raises(ValueError, match="not mapped"):
        run(dma.unmap(h))


def test_identity_rejects_discontiguous(alloc: PageAllocator) -> None:
    buf = GuestBuffer.allocate(alloc, 5000, contiguous=False)
    assert not buf.contiguous
    with pytest.raises(DmaMappingError, match="contiguous"):
        run(IdentityDma().map(buf, FROM_DEVICE))
    # a buffer that fits one page is always contiguous, whatever the allocation mode
    small = GuestBuffer.allocate(alloc, 100, offset=3000)
    run(IdentityDma().map(small, FROM_DEVICE))


def test_bad_direction(alloc: PageAllocator) -> None:
    buf = GuestBuffer.allocate(alloc, 10, contiguous=True)
    with pytest.raises(ValueError, match="direction"):
        run(IdentityDma().map(buf, 7))  # type: ignore[arg-type]


# --- GrantDma -------------------------------------------------------------------------------------
def test_grant_consecutive_refs_and_entries(alloc: PageAllocator) -> None:
    port = FakeHvPort()
    dma = run(GrantDma.create(Hypervisor(port), 5))
    buf = GuestBuffer.allocate(alloc, 3 * 4096, offset=0x123)  # spans 4 pages
    h = run(dma.map(buf, FROM_DEVICE))
    ref, off = spec.split_handle(h)
    assert h >> 63 == 1 and off == 0x123 and ref == 8  # first free after the reserved 8
    for i in range(4):
        assert port.entry(ref + i) == (spec.GTF_permit_access, 5, buf.pages[i])
    # frame is written before the flags word (Xen ordering)
    first = [o for o, _ in port.writes]
    assert first[:2] == [spec.HV_GRANT_BASE + 8 * ref + 4, spec.HV_GRANT_BASE + 8 * ref]
    h2 = run(dma.map(GuestBuffer.allocate(alloc, 10), BIDIRECTIONAL))
    assert spec.split_handle(h2)[0] == 12
    run(dma.unmap(h))
    for i in range(4):
        assert port.entry(ref + i)[0] == 0
    assert dma.free_refs == 64 - 8 - 1
    # freed refs are reused first-fit
    assert spec.split_handle(run(dma.map(GuestBuffer.allocate(alloc, 1), TO_DEVICE)))[0] == 8


def test_grant_readonly_only_for_to_device(alloc: PageAllocator) -> None:
    port = FakeHvPort()
    dma = GrantDma(Hypervisor(port), 9, 64)
    flags = {}
    for d in (TO_DEVICE, FROM_DEVICE, BIDIRECTIONAL):
        ref = spec.split_handle(run(dma.map(GuestBuffer.allocate(alloc, 8), d)))[0]
        flags[d] = port.entry(ref)[0]
    assert flags[TO_DEVICE] == spec.GTF_permit_access | spec.GTF_readonly
    assert flags[FROM_DEVICE] == spec.GTF_permit_access
    assert flags[BIDIRECTIONAL] == spec.GTF_permit_access


def test_grant_ref_exhaustion(alloc: PageAllocator) -> None:
    port = FakeHvPort(entries=16)
    dma = GrantDma(Hypervisor(port), 1, 16, first_ref=10)
    h = run(dma.map(GuestBuffer.allocate(alloc, 4 * 4096), TO_DEVICE))  # refs 10..13
    run(dma.map(GuestBuffer.allocate(alloc, 10), TO_DEVICE))  # ref 14
    with pytest.raises(OutOfGrantRefs, match="consecutive"):
        run(dma.map(GuestBuffer.allocate(alloc, 4096 + 1), TO_DEVICE))  # needs 2, 1 free
    assert isinstance(OutOfGrantRefs("x"), MemoryError)
    run(dma.unmap(h))
    assert spec.split_handle(run(dma.map(GuestBuffer.allocate(alloc, 8000), TO_DEVICE)))[0] == 10
    with pytest.raises(ValueError, match="not mapped"):
        run(dma.unmap(h | 1))


def test_grant_refs_fragmentation_needs_a_run(alloc: PageAllocator) -> None:
    dma = GrantDma(Hypervisor(FakeHvPort(entries=12)), 1, 12, first_ref=8)
    hs = [run(dma.map(GuestBuffer.allocate(alloc, 1), TO_DEVICE)) for _ in range(4)]
    run(dma.unmap(hs[0]))
    run(dma.unmap(hs[2]))
    assert dma.free_refs == 2
    with pytest.raises(OutOfGrantRefs):
        run(dma.map(GuestBuffer.allocate(alloc, 5000), TO_DEVICE))


# --- Hypervisor -----------------------------------------------------------------------------------
def test_hypervisor_setup_and_fault_registers() -> None:
    port = FakeHvPort()
    hv = Hypervisor(port)
    run(hv.setup(True, 0x1234))
    assert port.words[spec.HV_DOMID] == 0x1234 and port.words[spec.HV_CTRL] == 1
    assert port.writes.index((spec.HV_DOMID, 0x1234)) < port.writes.index((spec.HV_CTRL, 1))
    port.words.update({spec.HV_FAULT_STATUS: 1, spec.HV_FAULT_CAUSE: 5,
                       spec.HV_FAULT_ADDR_LO: 0x2345, spec.HV_FAULT_ADDR_HI: 0x8000_0000,
                       spec.HV_FAULT_COUNT: 3})
    f = run(hv.fault())
    assert f == FaultInfo(True, 5, 0x8000_0000_0000_2345, 3)
    assert "read-only" in str(f)
    run(hv.clear_fault())
    assert port.writes[-1] == (spec.HV_FAULT_STATUS, 1)
    with pytest.raises(ValueError):
        run(hv.setup(False, 0x10000))


def test_hypervisor_version_check_and_ref_range() -> None:
    with pytest.raises(HypervisorError, match="HV_VERSION"):
        run(Hypervisor(FakeHvPort(version=0x0002_0000)).setup(False, 0))
    hv = Hypervisor(FakeHvPort(entries=4))
    with pytest.raises(ValueError, match="outside"):
        run(hv.grant(4, 1, 1))
    run(hv.write_entry(4, 0xFFFF, 0xFFFF, 0xFFFF_FFFF))  # raw: no table check
    with pytest.raises(ValueError):
        run(hv.write_entry(0, 0x10000, 0, 0))
    run(hv.grant(3, 0x77, 2, readonly=True))
    assert run(hv.read_entry(3)) == (spec.GTF_permit_access | spec.GTF_readonly, 2, 0x77)
    run(hv.revoke(3))
    assert run(hv.read_entry(3))[0] == 0
