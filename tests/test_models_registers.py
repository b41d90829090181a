"""Register maps of the reference model: virtio-mmio v2 (guest) and privileged (hypervisor)."""

from __future__ import annotations

import asyncio

import pytest

from models import spec
from models.device import ReferenceDevice
from models.features import Features
from models.grant import GrantEntry
from models.memory import GuestMemory
from models.regmap import GUEST, HV

from .regmap_check import check_map

F_FLUSH = 1 << spec.VIRTIO_BLK_F_FLUSH
F_V1 = 1 << spec.VIRTIO_F_VERSION_1
F_AP = 1 << spec.VIRTIO_F_ACCESS_PLATFORM


def dev_(**kw) -> ReferenceDevice:
    """The foundation's device (``Features.none()``) unless ``features`` is given."""
    return ReferenceDevice(GuestMemory(1 << 16), **{"features": Features.none(), **kw})


def features(dev: ReferenceDevice, sel: int) -> int:
    dev.guest.write(spec.MMIO_DEVICE_FEATURES_SEL, sel)
    return dev.guest.read(spec.MMIO_DEVICE_FEATURES)


def set_driver_features(dev: ReferenceDevice, value: int) -> None:
    for sel in (0, 1):
        dev.guest.write(spec.MMIO_DRIVER_FEATURES_SEL, sel)
        dev.guest.write(spec.MMIO_DRIVER_FEATURES, value >> (32 * sel) & 0xFFFF_FFFF)


def try_features_ok(dev: ReferenceDevice, value: int) -> bool:
    g = dev.guest
    g.write(spec.MMIO_STATUS, 0)
    g.write(spec.MMIO_STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER)
    set_driver_features(dev, value)
    g.write(
        spec.MMIO_STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
    )
    st = g.read(spec.MMIO_STATUS)
    assert st & 3 == 3  # the other bits are stored
    return bool(st & spec.STATUS_FEATURES_OK)


def test_identification_registers():
    d = dev_()
    g = d.guest
    assert g.read(spec.MMIO_MAGIC_VALUE) == 0x74726976
    assert g.read(spec.MMIO_VERSION) == 2
    assert g.read(spec.MMIO_DEVICE_ID) == 2
    assert g.read(spec.MMIO_VENDOR_ID) == spec.VENDOR_ID
    assert g.read(spec.MMIO_CONFIG_GENERATION) == 0
    g.write(spec.MMIO_MAGIC_VALUE, 0)
    assert g.read(spec.MMIO_MAGIC_VALUE) == spec.MAGIC_VALUE


@pytest.mark.parametrize(("disk", "cap"), [(65536, 128), (512, 1), (0, 0), (1 << 20, 2048)])
def test_capacity(disk, cap):
    d = dev_(disk_bytes=disk)
    assert d.guest.read(spec.MMIO_CONFIG) == cap
    assert d.guest.read(spec.MMIO_CONFIG + 4) == 0
    assert d.guest.read(spec.MMIO_CONFIG + 8) == 0
    d.guest.write(spec.MMIO_CONFIG, 5)
    assert d.guest.read(spec.MMIO_CONFIG) == cap


def test_device_features_per_mode():
    d = dev_()
    assert [features(d, s) for s in (0, 1, 2, 0xFFFF_FFFF)] == [F_FLUSH, 1, 0, 0]
    d.hv.write(spec.HV_CTRL, 1)
    assert [features(d, s) for s in (0, 1, 2)] == [F_FLUSH, 3, 0]
    assert d.guest.read(spec.MMIO_DEVICE_FEATURES_SEL) == 2


def test_driver_features_words():
    d = dev_()
    g = d.guest
    for sel, value in ((0, 0xDEAD_BEEF), (1, 0x1234_5678), (2, 0xFFFF_FFFF)):
        g.write(spec.MMIO_DRIVER_FEATURES_SEL, sel)
        g.write(spec.MMIO_DRIVER_FEATURES, value)
    for sel, value in ((0, 0xDEAD_BEEF), (1, 0x1234_5678), (2, 0), (7, 0)):
        g.write(spec.MMIO_DRIVER_FEATURES_SEL, sel)
        assert g.read(spec.MMIO_DRIVER_FEATURES) == value
    assert g.read(spec.MMIO_DRIVER_FEATURES_SEL) == 7


def test_features_ok_acceptance_gpa_mode():
    d = dev_()
    assert try_features_ok(d, F_V1)
    assert try_features_ok(d, F_V1 | F_FLUSH)
    assert not try_features_ok(d, F_FLUSH)  # no VERSION_1
    assert not try_features_ok(d, 0)
    assert not try_features_ok(d, F_V1 | F_AP)  # ACCESS_PLATFORM not offered in GPA mode
    assert not try_features_ok(d, F_V1 | 1 << 28)  # not a subset


def test_features_ok_acceptance_handle_mode():
    d = dev_()
    d.hv.write(spec.HV_CTRL, 1)
    assert try_features_ok(d, F_V1 | F_AP)
    assert try_features_ok(d, F_V1 | F_AP | F_FLUSH)
    assert not try_features_ok(d, F_V1)  # ACCESS_PLATFORM required in handle mode
    assert not try_features_ok(d, F_V1 | F_FLUSH)
    assert not try_features_ok(d, F_AP)
    assert not try_features_ok(d, F_V1 | F_AP | 1 << 63)


def test_queue_registers_and_queue_sel():
    d = dev_(queue_num_max=64)
    g = d.guest
    assert g.read(spec.MMIO_QUEUE_NUM_MAX) == 64
    assert g.read(spec.MMIO_QUEUE_NUM) == 64  # reset value
    regs = {
        spec.MMIO_QUEUE_NUM: 16,
        spec.MMIO_QUEUE_DESC_LOW: 0x1000,
        spec.MMIO_QUEUE_DESC_HIGH: 0x8000_0001,
        spec.MMIO_QUEUE_DRIVER_LOW: 0x2002,
        spec.MMIO_QUEUE_DRIVER_HIGH: 0x2,
        spec.MMIO_QUEUE_DEVICE_LOW: 0x3004,
        spec.MMIO_QUEUE_DEVICE_HIGH: 0xFFFF_FFFF,
    }
    for off, value in regs.items():
        g.write(off, value)
    g.write(spec.MMIO_QUEUE_READY, 0xFF)
    assert g.read(spec.MMIO_QUEUE_READY) == 1
    for off, value in regs.items():
        assert g.read(off) == value
    assert d.queue_desc == 0x8000_0001_0000_1000
    # QueueSel != 0: reads 0, writes ignored
    g.write(spec.MMIO_QUEUE_SEL, 1)
    assert g.read(spec.MMIO_QUEUE_SEL) == 1
    for off in [*regs, spec.MMIO_QUEUE_READY, spec.MMIO_QUEUE_NUM_MAX]:
        assert g.read(off) == 0
        g.write(off, 0x40)
    g.write(spec.MMIO_QUEUE_SEL, 0)
    for off, value in regs.items():
        assert g.read(off) == value
    assert g.read(spec.MMIO_QUEUE_READY) == 1


def test_write_only_action_registers_read_zero_and_unmapped():
    d = dev_()
    g = d.guest
    for off in (spec.MMIO_QUEUE_NOTIFY, spec.MMIO_INTERRUPT_ACK, 0x0B0, 0x0F8, 0x108, 0x1FC):
        g.write(off, 0xFFFF_FFFF)
        assert g.read(off) == 0


def test_values_masked_and_wstrb_ignored_on_guest_port():
    d = dev_()
    g = d.guest
    g.write(spec.MMIO_QUEUE_DESC_LOW, 0x1_2345_6789)
    assert g.read(spec.MMIO_QUEUE_DESC_LOW) == 0x2345_6789
    g.write(spec.MMIO_QUEUE_DESC_LOW, 0xAABB_CCDD, strb=0x1)
    assert g.read(spec.MMIO_QUEUE_DESC_LOW) == 0xAABB_CCDD
    g.write(spec.MMIO_QUEUE_DESC_LOW + 2, 0x10)  # low address bits ignored
    assert g.read(spec.MMIO_QUEUE_DESC_LOW + 1) == 0x10


def test_status_write_and_driver_reset():
    d = dev_()
    g = d.guest
    g.write(spec.MMIO_STATUS, 0x1_0003)
    assert g.read(spec.MMIO_STATUS) == 3  # the device status byte (section 2.1)
    g.write(spec.MMIO_STATUS, 0x100)  # non-zero: not a reset; stores status byte 0
    assert g.read(spec.MMIO_STATUS) == 0
    g.write(spec.MMIO_QUEUE_READY, 1)
    assert g.read(spec.MMIO_QUEUE_READY) == 1
    g.write(spec.MMIO_STATUS, spec.STATUS_DEVICE_NEEDS_RESET | 1)
    assert g.read(spec.MMIO_STATUS) == 1  # the driver cannot set DEVICE_NEEDS_RESET
    # populate everything a driver reset clears
    g.write(spec.MMIO_DEVICE_FEATURES_SEL, 1)
    g.write(spec.MMIO_DRIVER_FEATURES_SEL, 1)
    g.write(spec.MMIO_DRIVER_FEATURES, 3)
    g.write(spec.MMIO_QUEUE_NUM, 8)
    g.write(spec.MMIO_QUEUE_READY, 1)
    g.write(spec.MMIO_QUEUE_DESC_LOW, 0x10)
    g.write(spec.MMIO_QUEUE_DRIVER_HIGH, 0x10)
    g.write(spec.MMIO_QUEUE_DEVICE_LOW, 0x10)
    d.interrupt_status = 3
    d.last_avail_idx, d.used_idx = 5, 6
    d.hv.write(spec.HV_DOMID, 9)
    g.write(spec.MMIO_QUEUE_SEL, 3)
    g.write(spec.MMIO_STATUS, 0)
    for off, value in (
        (spec.MMIO_STATUS, 0),
        (spec.MMIO_DEVICE_FEATURES_SEL, 0),
        (spec.MMIO_DRIVER_FEATURES_SEL, 0),
        (spec.MMIO_DRIVER_FEATURES, 0),
        (spec.MMIO_QUEUE_SEL, 0),
        (spec.MMIO_QUEUE_NUM, 256),
        (spec.MMIO_QUEUE_READY, 0),
        (spec.MMIO_QUEUE_DESC_LOW, 0),
        (spec.MMIO_QUEUE_DRIVER_HIGH, 0),
        (spec.MMIO_QUEUE_DEVICE_LOW, 0),
        (spec.MMIO_INTERRUPT_STATUS, 0),
    ):
        assert g.read(off) == value, hex(off)
    g.write(spec.MMIO_DRIVER_FEATURES_SEL, 1)
    assert g.read(spec.MMIO_DRIVER_FEATURES) == 0
    assert (d.last_avail_idx, d.used_idx, d.irq) == (0, 0, False)
    assert d.hv.read(spec.HV_DOMID) == 9  # privileged state untouched


def test_interrupt_ack():
    d = dev_()
    d.interrupt_status = 3
    assert d.irq
    d.guest.write(spec.MMIO_INTERRUPT_ACK, 1)
    assert d.guest.read(spec.MMIO_INTERRUPT_STATUS) == 2 and d.irq
    d.guest.write(spec.MMIO_INTERRUPT_STATUS, 0)  # read-only
    assert d.guest.read(spec.MMIO_INTERRUPT_STATUS) == 2
    d.guest.write(spec.MMIO_INTERRUPT_ACK, 0xFFFF_FFFE)
    assert d.guest.read(spec.MMIO_INTERRUPT_STATUS) == 0 and not d.irq


def test_hv_registers():
    d = dev_(entries=64)
    h = d.hv
    assert h.read(spec.HV_VERSION) == spec.HV_VERSION_VALUE
    assert h.read(spec.HV_ENTRIES) == 64
    assert h.read(spec.HV_CTRL) == 0 and h.read(spec.HV_DOMID) == 0
    h.write(spec.HV_CTRL, 0xFFFF_FFFD)  # bits 1:0 are the mode (docs/iotlb.md)
    assert h.read(spec.HV_CTRL) == 1 and d.handle_mode
    h.write(spec.HV_CTRL, 0xFFFF_FFFF)  # mode 3: unchanged
    assert h.read(spec.HV_CTRL) == 1 and d.handle_mode
    h.write(spec.HV_CTRL, 0xFFFF_FFFE)  # IOVA mode is not grant mode
    assert h.read(spec.HV_CTRL) == 2 and not d.handle_mode
    h.write(spec.HV_CTRL, 3)
    assert h.read(spec.HV_CTRL) == 2
    h.write(spec.HV_CTRL, 1)
    h.write(spec.HV_DOMID, 0x1234_5678)
    assert h.read(spec.HV_DOMID) == 0x5678
    for off in (spec.HV_VERSION, spec.HV_ENTRIES, spec.HV_FAULT_CAUSE, spec.HV_FAULT_COUNT):
        before = h.read(off)
        h.write(off, 0xAAAA)
        assert h.read(off) == before
    for off in (0x028, 0x048, 0x100, 0xFFC, spec.HV_GRANT_BASE + 8 * 64, 0x8000):
        h.write(off, 0xFFFF_FFFF)
        assert h.read(off) == 0
    h.write(spec.HV_SYNC, 1)  # the model has nothing in flight: the barrier is complete
    assert h.read(spec.HV_SYNC) == 1


def test_hv_grant_words_and_strobes():
    d = dev_(entries=4)
    h = d.hv
    assert all(h.read(spec.HV_GRANT_BASE + 4 * k) == 0 for k in range(8))
    h.write(spec.HV_GRANT_BASE + 8 * 3, 0x0005_0001)
    h.write(spec.HV_GRANT_BASE + 8 * 3 + 4, 0xABCDE)
    assert d.grants[3] == GrantEntry.permit(5, 0xABCDE)
    h.write(spec.HV_GRANT_BASE + 8 * 3, 0xFFFF_0005, strb=0b0001)
    assert h.read(spec.HV_GRANT_BASE + 8 * 3) == 0x0005_0005
    assert d.grants[3].readonly
    h.write(spec.HV_GRANT_BASE + 8 * 3 + 4, 0x7700_0000, strb=0b1000)
    assert h.read(spec.HV_GRANT_BASE + 8 * 3 + 4) == 0x770A_BCDE


def test_fault_status_rw1c_and_hardware_reset():
    d = dev_(entries=4)
    d.hv.write(spec.HV_GRANT_BASE, 0x0001_0001)
    d.disk[0] = 0x99
    d.fault_status, d.fault_cause, d.fault_addr, d.fault_count = 1, 7, 0x1_2345_6789, 3
    h = d.hv
    assert h.read(spec.HV_FAULT_ADDR_LO) == 0x2345_6789 and h.read(spec.HV_FAULT_ADDR_HI) == 1
    h.write(spec.HV_FAULT_STATUS, 0)
    assert h.read(spec.HV_FAULT_STATUS) == 1
    h.write(spec.HV_FAULT_STATUS, 1)
    assert h.read(spec.HV_FAULT_STATUS) == 0
    assert h.read(spec.HV_FAULT_CAUSE) == 7  # cause/address stay until the next latch
    h.write(spec.HV_CTRL, 1)
    h.write(spec.HV_DOMID, 3)
    d.guest.write(spec.MMIO_STATUS, 0xF)
    d.reset()
    assert [h.read(o) for o in (0x4, 0x8, 0x10, 0x14, 0x18, 0x1C, 0x20)] == [0] * 7
    assert d.guest.read(spec.MMIO_STATUS) == 0
    assert h.read(spec.HV_GRANT_BASE) == 0x0001_0001 and d.disk[0] == 0x99


def test_async_ports_and_wait_irq():
    d = dev_()

    async def main():
        await d.guest.write32(spec.MMIO_QUEUE_DESC_LOW, 0x40)
        assert await d.guest.read32(spec.MMIO_QUEUE_DESC_LOW) == 0x40
        await d.hv.write32(spec.HV_DOMID, 4)
        assert await d.hv.read32(spec.HV_DOMID) == 4
        with pytest.raises(TimeoutError):
            await d.wait_irq(100)
        d.interrupt_status = 1
        await d.wait_irq()

    asyncio.run(main())


def test_constructor_validation():
    with pytest.raises(ValueError):
        dev_(data_width=16)
    with pytest.raises(ValueError):
        dev_(queue_num_max=100)
    with pytest.raises(ValueError):
        dev_(disk_bytes=1000)


@pytest.mark.parametrize("kw", [{}, {"queue_num_max": 4, "disk_bytes": 1 << 20, "entries": 3},
                                {"queue_num_max": 32768, "disk_bytes": 512, "entries": 1},
                                {"features": Features()},
                                {"features": Features(seg_max=7, size_max=512, discard=False),
                                 "queue_num_max": 4, "disk_bytes": 1 << 20}])
def test_ports_follow_the_maps(kw):
    """Both ports against models/regmap.py: offsets, reset values (after construction and after
    ``rst``), access, widths, QueueSel and the selectors, the grant array, unmapped words."""
    d = dev_(**kw)
    params = {"queue_num_max": d.queue_num_max, "disk_bytes / 512": d.disk_bytes // 512,
              "entries": d.entries, "iotlb_entries": d.iotlb_entries,
              **d.features.params(d.queue_num_max, d.disk_bytes)}
    for _ in range(2):
        asyncio.run(check_map(GUEST, d.guest, params, window=0x200))
        asyncio.run(check_map(HV, d.hv, params, window=spec.HV_GRANT_BASE))
        d.reset()


def test_maps_name_every_offset_of_the_specification():
    """Each register offset of models/spec.py starts exactly one entry of its map, and back."""
    for prefix, regmap in (("MMIO_", GUEST), ("HV_", HV)):
        named = {value for name, value in vars(spec).items() if name.startswith(prefix)
                 and name not in ("MMIO_VERSION_VALUE", "HV_VERSION_VALUE",
                                  "HV_CTRL_HANDLE_MODE", "HV_CTRL_MODE_MASK")}
        if regmap is GUEST:  # the virtio_blk_config fields, from MMIO_CONFIG on
            named |= {spec.MMIO_CONFIG + value for name, value in vars(spec).items()
                      if name.startswith("BLK_CONFIG_") and name != "BLK_CONFIG_BYTES"}
        assert sorted(named) == [reg.offset for reg in regmap]
