"""The register files (rtl/mmio.py, rtl/hvregs.py) in lock step with their previous versions.

Contract: docs/architecture.md ("virtio-mmio register file", "Faults", "Privileged register
file") and the components' docstrings. The area-reduced register files must behave exactly as
the ones they replace (``tests/regs_reference.py``, kept verbatim from commit 771d5aa): with the
same inputs in every cycle, every output is compared in every cycle, and ``r_data`` in the cycle
after ``r_en`` (the only cycle its contract defines). Accesses come as the AXI4-Lite bridge
makes them: one at a time, the next no earlier than two cycles after a write and three after a
read. The stimulus is seeded and biased towards the registers' corner cases (driver reset while
the engine is busy, FEATURES_OK with every feature combination, QueueSel != 0, selectors 0/1/2,
faults in the cycle of the HV_FAULT_STATUS clear, HV_SYNC while bursts complete, grant words
with partial strobes, offsets outside the table and aliases of the 9-bit guest decode); each
test also checks that those cases did occur.
"""

from __future__ import annotations

import collections
import random

import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator

from models import spec
from rtl.hvregs import PrivilegedRegs
from rtl.mmio import VirtioMmioRegs

from .regs_reference import ReferenceMmioRegs, ReferencePrivilegedRegs

U32 = 0xFFFF_FFFF


class Pair(Elaboratable):
    def __init__(self, new, ref):
        self.new, self.ref = new, ref

    def elaborate(self, platform):
        m = Module()
        m.submodules.new = self.new
        m.submodules.ref = self.ref
        return m


class Lockstep:
    """Drives both register files with the same inputs and compares their outputs."""

    def __init__(self, ctx, new, ref, outputs):
        self.ctx, self.new, self.ref, self.outputs = ctx, new, ref, outputs
        self.cycle = 0
        self.read_pending = False
        self.busy = 0  # cycles before the bridge can start the next access
        self.seen = collections.Counter()

    def set(self, name, value):
        for dut in (self.new, self.ref):
            self.ctx.set(_member(dut, name), value)

    def get(self, name):
        return self.ctx.get(_member(self.new, name)), self.ctx.get(_member(self.ref, name))

    def compare(self):
        for name in self.outputs:
            new, ref = self.get(name)
            assert new == ref, f"cycle {self.cycle}: {name} = {new:#x}, reference {ref:#x}"
        if self.read_pending:
            new, ref = self.get("bus.r_data")
            assert new == ref, (f"cycle {self.cycle}: r_data = {new:#x}, reference {ref:#x} "
                                f"(read of {self.read_addr:#x})")

    async def cycle_with(self, access=None):
        """One clock cycle; two for a write, whose ``w_en`` cycle follows a ``w_next`` cycle with
        the same address and data. ``access``: None, ("w", addr, data, strb) or ("r", addr)."""
        ctx = self.ctx
        w_en = r_en = 0
        if access is not None:
            assert self.busy == 0, "the bridge makes one access at a time"
            if access[0] == "w":
                _, addr, data, strb = access
                await self._w_next(addr, data, strb)
                w_en = 1
                self.set("bus.w_data", data)
                self.set("bus.w_strb", strb)
                self.busy = 2
            else:
                _, addr = access
                r_en = 1
                self.busy = 3
                self.read_addr = addr
            self.set("bus.addr", addr)
        else:
            # Between accesses the strobes' companions carry garbage.
            self.set("bus.addr", random.getrandbits(len(self.new.bus.addr)))
            self.set("bus.w_data", random.getrandbits(32))
            self.set("bus.w_strb", random.getrandbits(4))
        self.set("bus.w_next", 0)
        self.set("bus.w_en", w_en)
        self.set("bus.r_en", r_en)
        self.compare()
        self.now = {name: self.get(name)[1] for name in self.outputs}
        self.read_pending = bool(r_en)
        await ctx.tick()
        self.cycle += 1
        self.busy = max(0, self.busy - 1)

    async def _w_next(self, addr, data, strb):
        """The cycle before a write's ``w_en``: ``w_next`` with its address and data."""
        for name, value in (("bus.addr", addr), ("bus.w_data", data), ("bus.w_strb", strb),
                            ("bus.w_next", 1), ("bus.w_en", 0), ("bus.r_en", 0)):
            self.set(name, value)
        self.compare()
        self.read_pending = False
        await self.ctx.tick()
        self.cycle += 1


def _member(dut, name):
    obj = dut
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def run(new, ref, bench):
    sim = Simulator(Pair(new, ref))
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# ------------------------------------------------------------------------------------------------
# virtio-mmio register file
# ------------------------------------------------------------------------------------------------

MMIO_OUTPUTS = ("queue.num", "queue.ready", "queue.desc", "queue.avail", "queue.used", "status",
                "queue.notify", "queue.dev_reset", "irq")
MMIO_OFFSETS = [
    spec.MMIO_MAGIC_VALUE, spec.MMIO_VERSION, spec.MMIO_DEVICE_ID, spec.MMIO_VENDOR_ID,
    spec.MMIO_DEVICE_FEATURES, spec.MMIO_DEVICE_FEATURES_SEL, spec.MMIO_DRIVER_FEATURES,
    spec.MMIO_DRIVER_FEATURES_SEL, spec.MMIO_QUEUE_SEL, spec.MMIO_QUEUE_NUM_MAX,
    spec.MMIO_QUEUE_NUM, spec.MMIO_QUEUE_READY, spec.MMIO_QUEUE_NOTIFY,
    spec.MMIO_INTERRUPT_STATUS, spec.MMIO_INTERRUPT_ACK, spec.MMIO_STATUS,
    spec.MMIO_QUEUE_DESC_LOW, spec.MMIO_QUEUE_DESC_HIGH, spec.MMIO_QUEUE_DRIVER_LOW,
    spec.MMIO_QUEUE_DRIVER_HIGH, spec.MMIO_QUEUE_DEVICE_LOW, spec.MMIO_QUEUE_DEVICE_HIGH,
    spec.MMIO_CONFIG_GENERATION, spec.MMIO_CONFIG, spec.MMIO_CONFIG + 4,
]
MMIO_UNMAPPED = [0x018, 0x028, 0x03C, 0x040, 0x088, 0x098, 0x0A8, 0x0B0, 0x0F8, 0x108, 0x1FC]


def mmio_value(offset: int) -> int:
    """Write data biased to what the register's logic distinguishes."""
    r = random.random()
    if offset == spec.MMIO_STATUS:
        if r < 0.3:
            return 0
        value = random.getrandbits(8) | spec.STATUS_FEATURES_OK * (random.random() < 0.5)
        return value | (random.getrandbits(24) << 8 if random.random() < 0.1 else 0)
    if offset in (spec.MMIO_DEVICE_FEATURES_SEL, spec.MMIO_DRIVER_FEATURES_SEL,
                  spec.MMIO_QUEUE_SEL):
        return random.choice([0, 0, 0, 1, 1, 2, 3, 1 << random.randrange(32),
                              random.getrandbits(32)])
    if offset == spec.MMIO_DRIVER_FEATURES:
        value = random.choice([0, 1, 2, 3, 1 << 9]) | random.choice([0, 1 << 9, 0])
        if r < 0.15:
            value |= 1 << random.randrange(32)
        return value
    if offset in (spec.MMIO_QUEUE_NOTIFY, spec.MMIO_INTERRUPT_ACK):
        return random.choice([0, 0, 1, 2, 3, random.getrandbits(32)])
    if offset == spec.MMIO_QUEUE_READY:
        return random.choice([0, 1, 2, 3, random.getrandbits(32)])
    return random.getrandbits(32)


def driver_init(handle_mode: int) -> list:
    """The driver's initialisation (virtio 1.x section 3.1.1), with a random feature choice
    that is acceptable most of the time, then the queue set-up and a notify."""
    acceptable = 1 | handle_mode << 1
    word1 = acceptable if random.random() < 0.7 else random.choice([0, 1, 2, 3, 5])
    word0 = random.choice([0, 1 << 9, 1 << 9, 1, 1 << 31])
    # Status = 0 once, or twice (the second while the first may still be pending).
    seq = [("w", spec.MMIO_STATUS, 0, 0xF)] * random.choice([1, 2])
    seq += [("w", spec.MMIO_STATUS, 3, 0xF),
           ("w", spec.MMIO_DRIVER_FEATURES_SEL, 1, 0xF),
           ("w", spec.MMIO_DRIVER_FEATURES, word1, 0xF),
           ("w", spec.MMIO_DRIVER_FEATURES_SEL, 0, 0xF),
           ("w", spec.MMIO_DRIVER_FEATURES, word0, 0xF),
           ("w", spec.MMIO_STATUS, 0xB, 0xF), ("r", spec.MMIO_STATUS),
           ("w", spec.MMIO_QUEUE_SEL, 0, 0xF), ("w", spec.MMIO_QUEUE_NUM, 16, 0xF),
           ("w", spec.MMIO_QUEUE_DESC_LOW, random.getrandbits(32), 0xF),
           ("w", spec.MMIO_QUEUE_READY, 1, 0xF), ("w", spec.MMIO_STATUS, 0xF, 0xF),
           ("w", spec.MMIO_QUEUE_NOTIFY, 0, 0xF)]
    return [a for a in seq if random.random() < 0.95]  # now and then a step is left out


def mmio_access():
    r = random.random()
    offset = random.choice(MMIO_OFFSETS) if r < 0.85 else (
        random.choice(MMIO_UNMAPPED) if r < 0.95 else random.getrandbits(9) & ~3)
    addr = offset | random.getrandbits(2) * (random.random() < 0.1)  # bits 1:0 are ignored
    if random.random() < 0.45:
        return ("w", addr, mmio_value(offset), random.getrandbits(4))
    return ("r", addr)


@pytest.mark.parametrize(("queue_num_max", "disk_bytes", "seed"), [
    (256, 65536, 1), (256, 65536, 2), (4, 1024, 3), (32768, 1 << 41, 4), (1, 512, 5),
])
def test_mmio_lockstep(queue_num_max, disk_bytes, seed):
    random.seed(seed)
    kw = dict(queue_num_max=queue_num_max, disk_bytes=disk_bytes)
    new, ref = VirtioMmioRegs(**kw), ReferenceMmioRegs(**kw)

    async def bench(ctx):
        ls = Lockstep(ctx, new, ref, MMIO_OUTPUTS)
        idle_bias = 0.9
        script = []
        handle_mode = 0
        resetting = False
        for _ in range(6000):
            if random.random() < 0.01:
                idle_bias = random.choice([0.05, 0.5, 0.9, 1.0])  # long busy engine phases too
            ls.set("queue.idle", int(random.random() < idle_bias))
            ls.set("queue.used_irq", int(random.random() < 0.04))
            ls.set("queue.fault", int(random.random() < 0.02))
            if random.random() < 0.005:
                handle_mode = random.getrandbits(1)
                ls.set("handle_mode", handle_mode)
            if not script and random.random() < 0.01:
                script = driver_init(handle_mode)
            access = None
            if ls.busy == 0 and random.random() < 0.6:
                access = script.pop(0) if script else mmio_access()
            if access and access[0] == "w" and access[1] >> 2 == spec.MMIO_QUEUE_SEL >> 2:
                ls.seen["queue_sel_not_0"] += access[2] != 0
            idle = ctx.get(ref.queue.idle)
            await ls.cycle_with(access)
            # Coverage of the cases the register file must get right.
            now = ls.now
            ls.seen["features_ok_kept"] += bool(now["status"] & spec.STATUS_FEATURES_OK)
            ls.seen["needs_reset"] += bool(now["status"] & spec.STATUS_DEVICE_NEEDS_RESET)
            ls.seen["notify"] += now["queue.notify"]
            ls.seen["reset_waits"] += resetting and not idle
            ls.seen["reset_again"] += resetting and bool(now["queue.dev_reset"])
            resetting = bool(now["queue.dev_reset"]) or (resetting and not idle)
        for case in ("features_ok_kept", "needs_reset", "queue_sel_not_0", "notify",
                     "reset_waits", "reset_again"):
            assert ls.seen[case] > 0, f"{case} never happened"

    run(new, ref, bench)


def test_mmio_every_offset():
    """Every word of the 512-byte window written, then read back with every stored register,
    under each QueueSel and DriverFeaturesSel case: no offset aliases a register it is not."""
    random.seed(7)
    new, ref = VirtioMmioRegs(), ReferenceMmioRegs()
    stored = [spec.MMIO_DEVICE_FEATURES_SEL, spec.MMIO_DRIVER_FEATURES,
              spec.MMIO_DRIVER_FEATURES_SEL, spec.MMIO_QUEUE_SEL, spec.MMIO_QUEUE_NUM,
              spec.MMIO_QUEUE_READY, spec.MMIO_QUEUE_DESC_LOW, spec.MMIO_QUEUE_DESC_HIGH,
              spec.MMIO_QUEUE_DRIVER_LOW, spec.MMIO_QUEUE_DRIVER_HIGH,
              spec.MMIO_QUEUE_DEVICE_LOW, spec.MMIO_QUEUE_DEVICE_HIGH, spec.MMIO_STATUS,
              spec.MMIO_INTERRUPT_STATUS]

    async def bench(ctx):
        ls = Lockstep(ctx, new, ref, MMIO_OUTPUTS)
        ls.set("queue.idle", 1)

        async def play(accesses):
            for access in accesses:
                while ls.busy:
                    await ls.cycle_with()
                await ls.cycle_with(access)

        for queue_sel, drv_sel in ((0, 0), (0, 1), (1, 2), (0, 2), (2, 1)):
            for offset in range(0, 1 << 9, 4):
                if offset == spec.MMIO_STATUS:
                    continue  # a reset would hide what the other writes did
                await play([("w", spec.MMIO_DRIVER_FEATURES_SEL, drv_sel, 0xF),
                            ("w", spec.MMIO_QUEUE_SEL, queue_sel, 0xF),
                            ("w", offset, random.getrandbits(32), 0xF), ("r", offset),
                            *(("r", o) for o in stored)])
            await play([("w", spec.MMIO_STATUS, 0, 0xF)])
        for _ in range(4):
            await ls.cycle_with()

    run(new, ref, bench)


# ------------------------------------------------------------------------------------------------
# privileged register file
# ------------------------------------------------------------------------------------------------

HV_OUTPUTS = ("table.handle_mode", "table.domid", "table.addr", "table.wdata", "table.wen",
              "tbl_changed", "tbl_ref", "table.cfg_changed")
HV_OFFSETS = [spec.HV_VERSION, spec.HV_CTRL, spec.HV_DOMID, spec.HV_ENTRIES,
              spec.HV_FAULT_STATUS, spec.HV_FAULT_CAUSE, spec.HV_FAULT_ADDR_LO,
              spec.HV_FAULT_ADDR_HI, spec.HV_FAULT_COUNT, spec.HV_SYNC, spec.HV_STAT_XLATE,
              spec.HV_STAT_REQUESTS]


def hv_access(entries: int, addr_width: int):
    r = random.random()
    end = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * entries
    if r < 0.55:
        offset = random.choice(HV_OFFSETS)
    elif r < 0.85:
        offset = spec.HV_GRANT_BASE + 4 * random.randrange(2 * entries)
    elif r < 0.9:
        offset = random.choice([end, end + 4, spec.HV_GRANT_BASE - 4, 0x28, 0x3C, 0x48, 0xFFC])
    else:
        offset = random.getrandbits(addr_width) & ~3
    offset &= (1 << addr_width) - 1
    addr = offset | random.getrandbits(2) * (random.random() < 0.1)
    if random.random() < 0.45:
        if offset == spec.HV_FAULT_STATUS:
            data = random.choice([0, 1, 1, 2, 3, random.getrandbits(32)])
        elif offset == spec.HV_CTRL:
            data = random.choice([0, 1, 2, 3, random.getrandbits(32)])
        else:
            data = random.getrandbits(32)
        strb = 0xF if random.random() < 0.6 else random.getrandbits(4)
        return ("w", addr, data, strb)
    return ("r", addr)


@pytest.mark.parametrize(("entries", "seed"), [
    (1024, 1), (1024, 2), (1000, 3), (1, 4), (4096, 5), (3, 6),
])
def test_hv_lockstep(entries, seed):
    random.seed(seed)
    new, ref = PrivilegedRegs(entries=entries), ReferencePrivilegedRegs(entries=entries)
    assert new.addr_width == ref.addr_width

    async def bench(ctx):
        ls = Lockstep(ctx, new, ref, HV_OUTPUTS)
        fault_rate = 0.05
        for _ in range(6000):
            if random.random() < 0.01:
                fault_rate = random.choice([0.0, 0.05, 0.3])
            fault = int(random.random() < fault_rate)
            ls.set("status.engine.fault", fault)
            ls.set("status.engine.fault_cause", random.getrandbits(4))
            ls.set("status.dma.fault_addr", random.getrandbits(64))
            ls.set("status.dma.xlate", int(random.random() < 0.3))
            ls.set("status.engine.completed", int(random.random() < 0.1))
            ls.set("status.dma.inflight", random.randrange(16))
            ls.set("status.dma.burst_done", int(random.random() < 0.3))
            ls.set("table.rdata", random.getrandbits(64))
            access = hv_access(entries, new.addr_width) \
                if ls.busy == 0 and random.random() < 0.6 else None
            if (access and access[0] == "w" and access[1] >> 2 == spec.HV_FAULT_STATUS >> 2
                    and access[2] & 1 and fault):
                ls.seen["fault_with_clear"] += 1
            if access and access[0] == "r" and access[1] >> 2 == spec.HV_SYNC >> 2:
                ls.seen["sync_read"] += 1
            await ls.cycle_with(access)
        assert ls.seen["fault_with_clear"] > 0
        assert ls.seen["sync_read"] > 0

    run(new, ref, bench)
