"""The shared virtio vocabulary: layouts against the specification's byte positions, and the
bring-up program against a register file that records what it is given."""

from __future__ import annotations

import asyncio
import struct

import pytest
from amaranth.hdl import Shape

from models import spec, virtio
from rtl.layouts import struct_layout


def test_descriptor_bytes_are_the_specifications():
    # virtio 1.2 section 2.7.5: le64 addr, le32 len, le16 flags, le16 next
    raw = virtio.DESC.pack(0x1122334455667788, 0x99AABBCC, 0xDDEE, 0xFF01)
    assert raw == bytes.fromhex("8877665544332211ccbbaa99eedd01ff")
    assert virtio.DESC.unpack(raw) == (0x1122334455667788, 0x99AABBCC, 0xDDEE, 0xFF01)
    assert virtio.DESC.offsets == {"addr": 0, "len": 8, "flags": 12, "next": 14}
    assert virtio.DESC.pack(flags=spec.VIRTQ_DESC_F_NEXT, next=3) == struct.pack(
        "<QIHH", 0, 0, 1, 3)


def test_pack_masks_hostile_values_to_the_field():
    assert virtio.USED_ELEM.pack(-1, 1 << 40) == b"\xff" * 4 + b"\0" * 4


def test_pack_rejects_unknown_fields_and_mixed_arguments():
    with pytest.raises(TypeError, match=r"^virtq_desc has no field 'length'$"):
        virtio.DESC.pack(length=1)
    with pytest.raises(TypeError, match=r"^virtq_desc: give the fields by position or by name"):
        virtio.DESC.pack(1, flags=2)


def test_layout_rejects_odd_widths():
    with pytest.raises(ValueError, match=r"^field 'x' must be 8, 16, 32 or 64 bits, not 12$"):
        virtio.Layout("bad", (("x", 12),))


@pytest.mark.parametrize("layout", [virtio.DESC, virtio.BLK_HEADER, virtio.USED_ELEM,
                                    virtio.GRANT_ENTRY, virtio.AVAIL_HEADER])
def test_amaranth_layout_matches_bytes(layout):
    sl = struct_layout(layout)
    assert sl.size == 8 * layout.size
    for name, bits in layout.fields:
        assert sl[name].offset == 8 * layout.offsets[name]
        assert Shape.cast(sl[name].shape).width == bits


def test_split_ring_geometry():
    # section 2.7: 16 * num, 6 + 2 * num, 6 + 8 * num
    r = virtio.SplitRing(8)
    assert (r.desc_bytes, r.avail_bytes, r.used_bytes) == (128, 22, 70)
    assert r.avail_ring(9) == 4 + 2 and r.used_ring(17) == 4 + 8
    assert r.used_event == 20 and r.avail_event == 68


class Regs:
    """A virtio-mmio register file reduced to what the bring-up touches."""

    def __init__(self, offered: int, refuse: bool = False) -> None:
        self.offered, self.refuse, self.log = offered, refuse, []
        self.regs = {spec.MMIO_STATUS: 0, spec.MMIO_QUEUE_NUM_MAX: 256,
                     spec.MMIO_QUEUE_READY: 0}

    def read(self, off: int) -> int:
        if off == spec.MMIO_DEVICE_FEATURES:
            v = self.offered >> 32 * self.regs[spec.MMIO_DEVICE_FEATURES_SEL] & 0xFFFF_FFFF
        else:
            v = self.regs.get(off, 0)
        self.log.append(("r", off, v))
        return v

    def write(self, off: int, value: int) -> None:
        self.log.append(("w", off, value))
        if off == spec.MMIO_STATUS and value & spec.STATUS_FEATURES_OK and self.refuse:
            value &= ~spec.STATUS_FEATURES_OK
        self.regs[off] = value


def test_bring_up_follows_section_3_1_1():
    regs = Regs(offered=1 << spec.VIRTIO_F_VERSION_1 | 1 << spec.VIRTIO_BLK_F_FLUSH)
    got = virtio.run_sync(virtio.bring_up(lambda f: f & (1 << 32), 16, 0x1_0000_1000, 0x2000,
                                          0x3000), regs)
    assert got == 1 << 32
    writes = [(off, v) for k, off, v in regs.log if k == "w"]
    statuses = [v for off, v in writes if off == spec.MMIO_STATUS]
    assert statuses == [0, 1, 3, 11, 15]
    assert (spec.MMIO_QUEUE_DESC_HIGH, 1) in writes and (spec.MMIO_QUEUE_NUM, 16) in writes
    assert writes.index((spec.MMIO_QUEUE_READY, 1)) < len(writes) - 1


def test_refused_features_raise_and_set_failed():
    regs = Regs(offered=1 << 32, refuse=True)
    with pytest.raises(virtio.FeaturesRefused, match=r"^device refused features 0x100000000"):
        virtio.run_sync(virtio.bring_up(1 << 32, 8, 0, 0, 0), regs)
    assert regs.regs[spec.MMIO_STATUS] & spec.STATUS_FAILED


def test_setup_queue_checks_queue_num_max():
    with pytest.raises(virtio.InitError, match=r"^queue size 512 is not in \[1, QueueNumMax=256"):
        virtio.run_sync(virtio.setup_queue(512, 0, 0, 0), Regs(0))
    regs = Regs(0)
    virtio.run_sync(virtio.setup_queue(512, 0, 0, 0, check=False), regs)
    assert ("w", spec.MMIO_QUEUE_NUM, 512) in regs.log


def test_async_runner_gives_the_same_accesses():
    class Async:
        def __init__(self, inner: Regs) -> None:
            self.inner = inner

        async def read32(self, off: int) -> int:
            return self.inner.read(off)

        async def write32(self, off: int, value: int) -> None:
            self.inner.write(off, value)

    a, b = Regs(1 << 32), Regs(1 << 32)
    virtio.run_sync(virtio.bring_up(1 << 32, 4, 1, 2, 3), a)
    asyncio.run(virtio.run_async(virtio.bring_up(1 << 32, 4, 1, 2, 3), Async(b)))
    assert a.log == b.log
