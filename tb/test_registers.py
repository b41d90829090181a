"""Register-level checks of both AXI4-Lite ports, against the reference model.

Every access is made on the RTL and on :class:`models.device.ReferenceDevice` (its register
ports ``guest`` and ``hv``, the maps of ``models/regmap.py``), and every read compared with the
model's, besides the documented values stated here. The guest port's privilege test writes every
guest offset and checks that nothing privileged moved.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles

from models import spec
from models.device import ReferenceDevice
from models.memory import GuestMemory
from models.regmap import HV
from tb.bench import DeviceBench
from tb.runner import DeviceConfig


def guest_offsets(dut) -> range:
    """Every word offset of the guest port ``s_axil`` (its address width is a top-level port,
    a fixed external contract: 9 bits)."""
    return range(0, 1 << len(dut.s_axil__awaddr), 4)


class Both:
    """The RTL bench and the reference model, accessed alike; every read compared."""

    def __init__(self, dut) -> None:
        self.cfg = cfg = DeviceConfig.from_env()
        self.tb = DeviceBench(dut, data_width=cfg.data_width)
        self.ref = ReferenceDevice(GuestMemory(1 << 16), entries=cfg.entries,
                                   features=cfg.features,
                                   queue_num_max=cfg.queue_num_max, disk_bytes=cfg.disk_bytes,
                                   data_width=cfg.data_width)

    async def write(self, port: str, offset: int, value: int) -> None:
        getattr(self.ref, port).write(offset, value)
        await getattr(self.tb, port).write32(offset, value)

    async def read(self, port: str, offset: int) -> int:
        got = await getattr(self.tb, port).read32(offset)
        want = getattr(self.ref, port).read(offset)
        assert got == want, f"{port} {offset:#x}: RTL reads {got:#x}, the model {want:#x}"
        return got

    async def hv_state(self) -> dict[int, int]:
        """Every privileged register of the map and every grant table word, read back (and
        compared with the model)."""
        offsets = [o for r in HV if r.count is None for o in r.offsets]
        offsets += [spec.HV_GRANT_BASE + 4 * k for k in range(2 * self.cfg.entries)]
        return {o: await self.read("hv", o) for o in offsets}


@cocotb.test()
async def test_identity_and_hv_map(dut):
    b = Both(dut)
    cfg, tb = b.cfg, b.tb
    await tb.reset()
    assert await b.read("guest", spec.MMIO_MAGIC_VALUE) == spec.MAGIC_VALUE
    assert await b.read("guest", spec.MMIO_VERSION) == 2
    assert await b.read("guest", spec.MMIO_DEVICE_ID) == spec.VIRTIO_ID_BLOCK
    assert await b.read("guest", spec.MMIO_QUEUE_NUM_MAX) == cfg.queue_num_max
    cap = cfg.disk_bytes // 512
    assert await b.read("guest", spec.MMIO_CONFIG) == cap
    assert await b.read("hv", spec.HV_VERSION) == spec.HV_VERSION_VALUE
    assert await b.read("hv", spec.HV_ENTRIES) == cfg.entries
    # GPA mode: no ACCESS_PLATFORM
    await b.write("guest", spec.MMIO_DEVICE_FEATURES_SEL, 1)
    assert await b.read("guest", spec.MMIO_DEVICE_FEATURES) == 1
    await b.write("hv", spec.HV_CTRL, 1)
    assert await b.read("guest", spec.MMIO_DEVICE_FEATURES) == 3
    await b.write("guest", spec.MMIO_DEVICE_FEATURES_SEL, 0)
    offered = cfg.features.offered(cfg.queue_num_max)  # models.features: the contract
    assert await b.read("guest", spec.MMIO_DEVICE_FEATURES) == offered & 0xFFFF_FFFF
    assert offered & 0xFFFF_FFFF & 1 << spec.VIRTIO_BLK_F_FLUSH
    # grant table words, both halves and the last entry
    for ref in (0, 1, cfg.entries - 1):
        base = spec.HV_GRANT_BASE + 8 * ref
        await b.write("hv", base, 0x0007_0001 + ref)
        await b.write("hv", base + 4, 0x1234_0000 + ref)
    for ref in (0, 1, cfg.entries - 1):
        base = spec.HV_GRANT_BASE + 8 * ref
        assert await b.read("hv", base) == 0x0007_0001 + ref
        assert await b.read("hv", base + 4) == 0x1234_0000 + ref
    # the guest port cannot reach the privileged registers (the full test: below)
    await b.write("guest", spec.HV_CTRL, 0)
    assert await b.read("hv", spec.HV_CTRL) == 1
    # every guest register reads as the model's
    for offset in guest_offsets(dut):
        await b.read("guest", offset)


@cocotb.test()
async def test_guest_port_cannot_reach_privileged_state(dut):
    """Every guest offset (mapped or not: all 128 words of the 9-bit port) written with all ones,
    with 0 and with a seeded random value, in ascending order: afterwards every privileged
    register and every grant table word reads back as before (and as the model), and the
    device made no bus access. A notify is ignored throughout: all ones and the random values
    name a queue other than 0 (docs/architecture.md), and the zeros come after QueueReady was
    written 0."""
    b = Both(dut)
    cfg, tb = b.cfg, b.tb
    await tb.reset()
    rng = random.Random(18)
    # a privileged state away from the reset values: handle mode, a domain, grants, staging
    await b.write("hv", spec.HV_CTRL, spec.HV_CTRL_HANDLE_MODE)
    await b.write("hv", spec.HV_DOMID, 0x1234)
    for ref in (0, 1, 2, rng.randrange(3, cfg.entries - 1), cfg.entries - 1):
        await b.write("hv", spec.HV_GRANT_BASE + 8 * ref, rng.getrandbits(32))
        await b.write("hv", spec.HV_GRANT_BASE + 8 * ref + 4, rng.getrandbits(32))
    for offset in (spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_IOVA_HI, spec.HV_IOTLB_PA_LO,
                   spec.HV_IOTLB_PA_HI, spec.HV_IOTLB_ATTR):
        await b.write("hv", offset, rng.getrandbits(32))
    before = await b.hv_state()
    for value in (0xFFFF_FFFF, 0, None):
        for offset in guest_offsets(dut):
            v = value
            if v is None:
                v = rng.getrandbits(32)
                if offset == spec.MMIO_QUEUE_NOTIFY:
                    v |= 1  # a queue other than 0: ignored
            await b.write("guest", offset, v)
        for offset in guest_offsets(dut):
            await b.read("guest", offset)
    await ClockCycles(dut.clk, 24)
    after = await b.hv_state()
    moved = {hex(o): (hex(before[o]), hex(after[o])) for o in before if before[o] != after[o]}
    assert not moved, f"privileged words changed by guest writes: {moved}"
    assert before[spec.HV_CTRL] == spec.HV_CTRL_HANDLE_MODE
    assert not tb.monitor.records, f"{len(tb.monitor.records)} bus access(es) made"
    assert not b.ref.transactions, "the model made bus accesses"


@cocotb.test()
async def test_hv_sync_idle(dut):
    """HV_SYNC with nothing in flight completes at once."""
    cfg = DeviceConfig.from_env()
    tb = DeviceBench(dut, data_width=cfg.data_width)
    await tb.reset()
    assert await tb.hv.read32(spec.HV_SYNC) == 1
    await tb.hv.write32(spec.HV_SYNC, 1)
    assert await tb.hv.read32(spec.HV_SYNC) == 1
