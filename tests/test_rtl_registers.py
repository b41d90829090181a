"""The register files (rtl/mmio.py, rtl/hvregs.py) in lock step with the reference model.

Contract: docs/architecture.md ("virtio-mmio register file", "Faults", "Privileged register
file"), the maps of ``models/regmap.py`` and the components' docstrings. Each register file is
judged against the reference model's register port (``ReferenceDevice.guest`` / ``.hv``,
models/device.py), itself checked against the maps by ``tests/test_models_registers.py``: with
the same inputs in every cycle, every output is compared with the model's in every cycle, and
``r_data`` in the cycle after ``r_en`` (the only cycle its contract defines). What the untimed
model does not have is stated here from the contract: when a write lands, the driver reset that
waits for the engine, the HV_SYNC barrier, the grant table port's decode, and the engine's
events (``used_irq``, ``fault``, ``xlate``, ``completed``), applied to the model as its own engine
applies them. Accesses come as the AXI4-Lite bridge makes them: one at a time, the next no
earlier than two cycles after a write and three after a read. The stimulus is seeded and biased
towards the registers' corner cases (driver reset while the engine is busy, FEATURES_OK with
every feature combination, QueueSel != 0, selectors 0/1/2, faults in the cycle of the
HV_FAULT_STATUS clear, HV_SYNC while bursts complete, grant words with partial strobes, offsets
outside the table and aliases of the 9-bit guest decode); each test also checks that those cases
did occur.
"""

from __future__ import annotations

import collections
import random

import pytest
from amaranth.sim import Simulator

from models import spec
from models.device import ReferenceDevice
from models.features import Features
from models.memory import GuestMemory
from models.regmap import GUEST, HV
from rtl.hvregs import PrivilegedRegs
from rtl.mmio import MMIO_ADDR_WIDTH, VirtioMmioRegs

from .regmap_check import check_map

U32 = 0xFFFF_FFFF
BUS_INPUTS = ("bus.addr", "bus.w_next", "bus.w_en", "bus.w_data", "bus.w_strb", "bus.r_en")


class GuestModel:
    """The reference model's guest port with the register file's timing (rtl/mmio.py): a write
    lands at the end of its ``w_en`` cycle; a write of 0 to Status is decoded in its ``w_next``
    cycle, pulses ``dev_reset`` in its ``w_en`` cycle, and the reset completes in the first later
    cycle with ``engine_idle`` and no ``dev_reset`` (until then the registers keep their values
    and take writes); a read returns the values of its ``r_en`` cycle. In a cycle, a write comes
    first, then the engine's events, then a reset that completes."""

    def __init__(self, *, queue_num_max: int, disk_bytes: int):
        self.dev = ReferenceDevice(GuestMemory(4096), queue_num_max=queue_num_max, disk_bytes=0)
        self.dev.disk_bytes = disk_bytes  # only its size is seen here (no 2 TiB disk in memory)
        self.reset_write = self.reset_pending = False
        self.r_data = 0

    @staticmethod
    def _access(i: dict) -> tuple[int, int]:
        return i["bus.addr"] & ~3 & (1 << MMIO_ADDR_WIDTH) - 1, i["bus.w_data"]

    def outputs(self, i: dict) -> dict:
        d = self.dev
        offset, data = self._access(i)
        notify = (i["bus.w_en"] and offset == spec.MMIO_QUEUE_NOTIFY and data == 0
                  and d.queue_ready and d.status & spec.STATUS_DRIVER_OK)
        return {"queue_num": d.queue_num, "queue_ready": d.queue_ready,
                "queue_desc": d.queue_desc, "queue_avail": d.queue_driver,
                "queue_used": d.queue_device, "status": d.status, "notify": int(bool(notify)),
                "dev_reset": int(self.reset_write), "irq": int(d.irq), "bus.r_data": self.r_data,
                "bus.r_wait": 0}

    def edge(self, i: dict) -> None:
        d = self.dev
        offset, data = self._access(i)
        if bool(i["handle_mode"]) != d.handle_mode:
            d.hv.write(spec.HV_CTRL, i["handle_mode"])
        if i["bus.r_en"]:
            self.r_data = d.guest.read(offset)
        # QueueNotify would run the model's engine: here it is only the notify pulse above.
        if i["bus.w_en"] and offset != spec.MMIO_QUEUE_NOTIFY and not (
                offset == spec.MMIO_STATUS and data == 0):
            d.guest.write(offset, data, i["bus.w_strb"])
        # The engine's events, as models/device.py's engine makes them (_serve_one, _fault).
        if i["used_irq"]:
            d.interrupt_status |= spec.INT_USED_BUFFER
        if i["fault"]:
            d.status |= spec.STATUS_DEVICE_NEEDS_RESET
            d.interrupt_status |= spec.INT_CONFIG_CHANGE
        dev_reset = self.reset_write
        if self.reset_pending and not dev_reset and i["engine_idle"]:
            d.guest.write(spec.MMIO_STATUS, 0)
            self.reset_pending = False
        self.reset_pending |= dev_reset
        self.reset_write = bool(i["bus.w_next"] and offset == spec.MMIO_STATUS and data == 0)


class HvModel:
    """The reference model's hypervisor port with the register file's timing and its table port
    (rtl/hvregs.py): registers as :class:`GuestModel`; a table read raises ``r_wait`` in the
    cycle after ``r_en`` and reads, in the cycle after that, the word its address selects of
    ``tbl_rdata`` as it was in the cycle before (registered); ``tbl_*`` decode the address of
    every cycle; HV_SYNC reads 1 once the transactions in flight at its write have completed."""

    def __init__(self, *, entries: int):
        self.dev = ReferenceDevice(GuestMemory(4096), entries=entries)
        self.entries = entries
        self.ref_mask = (1 << max(1, (entries - 1).bit_length())) - 1
        self.sync_count = 0  # transactions the barrier still waits for (mod 16, as inflight)
        self.r_reg, self.r_word = 0, None  # a register's value, or the table word to read
        self.tbl_prev = 0  # tbl_rdata in the cycle before

    def _access(self, i: dict) -> tuple[int, int, bool]:
        offset = i["bus.addr"] & ~3
        end = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * self.entries
        return offset, i["bus.w_data"], spec.HV_GRANT_BASE <= offset < end

    def outputs(self, i: dict) -> dict:
        d = self.dev
        offset, data, in_table = self._access(i)
        ref = (offset - spec.HV_GRANT_BASE) >> 3 & self.ref_mask
        write = i["bus.w_en"]
        strb = i["bus.w_strb"] << 4 if offset & 4 else i["bus.w_strb"]
        r_data = self.r_reg if self.r_word is None else self.tbl_prev >> 32 * self.r_word & U32
        iotlb_write = write and offset in (spec.HV_IOTLB_CMD, spec.HV_MISS_RESOLVE) \
            and 1 <= data <= 3  # docs/iotlb.md: the commands are 1 to 3 (the unit ignores
        #                          MISS_RESOLVE = 3)
        return {"handle_mode": int(d.handle_mode), "iova_mode": int(d.mode == spec.MODE_IOVA),
                "stage_iova": d.iotlb_iova, "stage_pa": d.iotlb_pa,
                "stage_size": d.iotlb_attr & spec.IOTLB_ATTR_SIZE_MASK,
                "stage_r": int(bool(d.iotlb_attr & spec.IOTLB_ATTR_READ)),
                "stage_w": int(bool(d.iotlb_attr & spec.IOTLB_ATTR_WRITE)),
                "iotlb_cmd": data if iotlb_write and offset == spec.HV_IOTLB_CMD else 0,
                "resolve": data if iotlb_write and offset == spec.HV_MISS_RESOLVE else 0,
                "w_hold": i["iotlb_busy"],
                "domid": d.domid, "tbl_addr": ref,
                "tbl_ref": ref, "tbl_wdata": data | data << 32,
                "tbl_wen": strb if write and in_table else 0,
                "tbl_changed": int(bool(write and in_table)),
                "cfg_changed": int(bool(write and offset in (spec.HV_CTRL, spec.HV_DOMID))),
                "bus.r_data": r_data, "bus.r_wait": int(self.r_word is not None)}

    def edge(self, i: dict) -> None:
        d = self.dev
        offset, data, in_table = self._access(i)
        self.tbl_prev = i["tbl_rdata"]
        # What the translation unit reports (docs/iotlb.md: IOTLB_MISS bit 0 pending, bit 1 the
        # access reads memory, bit 2 it writes), read through these registers.
        miss = i["miss"]
        d.iotlb_miss = miss | (miss & ~i["miss_write"] & 1) << 1 | (miss & i["miss_write"]) << 2
        d.miss_iova = i["miss_iova"]
        d.stat_iotlb_hits, d.stat_iotlb_misses = i["hits"], i["misses"]
        d.stat_iotlb_invalidated = i["invalidated"]
        if i["bus.r_en"]:
            self.r_word = offset >> 2 & 1 if in_table else None
            # HV_SYNC: 1 once the barrier's transactions completed and no IOTLB command runs
            self.r_reg = int(self.sync_count == 0 and not i["iotlb_busy"]) \
                if offset == spec.HV_SYNC else d.hv.read(offset)
        if i["bus.w_en"]:
            d.hv.write(offset, data, i["bus.w_strb"])
        if i["fault"]:
            d._fault(i["fault_cause"], i["fault_addr"])  # the model's own fault path
        d.stat_xlate = d.stat_xlate + i["xlate"] & U32
        d.stat_requests = d.stat_requests + i["completed"] & U32
        if i["burst_done"] and self.sync_count:
            self.sync_count -= 1
        if i["bus.w_en"] and offset == spec.HV_SYNC:
            self.sync_count = i["inflight"] - i["burst_done"] & 15


class Lockstep:
    """Drives a register file and its model with the same inputs and compares their outputs."""

    def __init__(self, ctx, dut, model, outputs, inputs):
        self.ctx, self.dut, self.model, self.outputs = ctx, dut, model, outputs
        self.inputs = dict.fromkeys((*BUS_INPUTS, *inputs), 0)
        self.cycle = 0
        self.read_pending = 0
        self.waited = False
        self.busy = 0  # cycles before the bridge can start the next access
        self.seen = collections.Counter()

    def set(self, name, value):
        self.ctx.set(_member(self.dut, name), value)
        self.inputs[name] = value

    def compare(self):
        expected = self.model.outputs(self.inputs)
        for name in self.outputs:
            got = self.ctx.get(_member(self.dut, name))
            assert got == expected[name], (
                f"cycle {self.cycle}: {name} = {got:#x}, model {expected[name]:#x}")
        # read_pending: 1 in the cycle after r_en (r_data, or r_wait: a cycle more), 2 in the
        # cycle after an r_wait
        if self.read_pending == 1:
            got = self.ctx.get(self.dut.bus.r_wait)
            assert got == expected["bus.r_wait"], (
                f"cycle {self.cycle}: r_wait = {got}, model {expected['bus.r_wait']} "
                f"(read of {self.read_addr:#x})")
            self.waited = bool(got)
            if got:
                self.busy += 1
                return expected
        if self.read_pending:
            got = self.ctx.get(self.dut.bus.r_data)
            assert got == expected["bus.r_data"], (
                f"cycle {self.cycle}: r_data = {got:#x}, model {expected['bus.r_data']:#x} "
                f"(read of {self.read_addr:#x})")
        return expected

    async def _tick(self):
        self.model.edge(self.inputs)
        await self.ctx.tick()
        self.cycle += 1

    async def cycle_with(self, access=None):
        """One clock cycle; two for a write, whose ``w_en`` cycle follows a ``w_next`` cycle with
        the same address and data. ``access``: None, ("w", addr, data, strb) or ("r", addr)."""
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
            self.set("bus.addr", random.getrandbits(len(self.dut.bus.addr)))
            self.set("bus.w_data", random.getrandbits(32))
            self.set("bus.w_strb", random.getrandbits(4))
        self.set("bus.w_next", 0)
        self.set("bus.w_en", w_en)
        self.set("bus.r_en", r_en)
        self.now = self.compare()
        self.read_pending = 1 if r_en else 2 if self.read_pending == 1 and self.waited else 0
        await self._tick()
        self.busy = max(0, self.busy - 1)

    async def _w_next(self, addr, data, strb):
        """The cycle before a write's ``w_en``: ``w_next`` with its address and data."""
        for name, value in (("bus.addr", addr), ("bus.w_data", data), ("bus.w_strb", strb),
                            ("bus.w_next", 1), ("bus.w_en", 0), ("bus.r_en", 0)):
            self.set(name, value)
        self.compare()
        self.read_pending = 0
        await self._tick()


# The register files' ports to the engines, by the names the models above give them.
PORTS = {"queue_num": "queue.num", "queue_ready": "queue.ready", "queue_desc": "queue.desc",
         "queue_avail": "queue.avail", "queue_used": "queue.used", "notify": "queue.notify",
         "dev_reset": "queue.dev_reset", "used_irq": "queue.used_irq", "fault": "queue.fault",
         "engine_idle": "queue.idle"}
HV_PORTS = {"iova_mode": "iotlb.iova_mode", "stage_iova": "iotlb.cmd.stage_iova",
            "stage_pa": "iotlb.cmd.stage_pa", "stage_size": "iotlb.cmd.stage_size",
            "stage_r": "iotlb.cmd.stage_r", "stage_w": "iotlb.cmd.stage_w",
            "iotlb_cmd": "iotlb.cmd.cmd", "resolve": "iotlb.resolve", "w_hold": "bus.w_hold",
            "iotlb_busy": "iotlb.cmd.busy", "invalidated": "iotlb.cmd.invalidated",
            "miss": "iotlb.miss", "miss_write": "iotlb.miss_write", "miss_iova": "iotlb.miss_iova",
            "hits": "iotlb.hits", "misses": "iotlb.misses",
            "handle_mode": "table.handle_mode", "domid": "table.domid", "tbl_addr": "table.addr",
            "tbl_wdata": "table.wdata", "tbl_wen": "table.wen",
            "cfg_changed": "table.cfg_changed", "tbl_rdata": "table.rdata",
            "fault": "status.engine.fault", "fault_cause": "status.engine.fault_cause",
            "completed": "status.engine.completed", "fault_addr": "status.dma.fault_addr",
            "xlate": "status.dma.xlate", "inflight": "status.dma.inflight",
            "burst_done": "status.dma.burst_done"}


def _member(dut, name):
    obj = dut
    name = (HV_PORTS if isinstance(dut, PrivilegedRegs) else PORTS).get(name, name)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# ------------------------------------------------------------------------------------------------
# virtio-mmio register file
# ------------------------------------------------------------------------------------------------

MMIO_OUTPUTS = ("queue_num", "queue_ready", "queue_desc", "queue_avail", "queue_used", "status",
                "notify", "dev_reset", "irq")
MMIO_INPUTS = ("handle_mode", "used_irq", "fault", "engine_idle")
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
    dut = VirtioMmioRegs(**kw)

    async def bench(ctx):
        ls = Lockstep(ctx, dut, GuestModel(**kw), MMIO_OUTPUTS, MMIO_INPUTS)
        idle_bias = 0.9
        script = []
        handle_mode = 0
        resetting = False
        for _ in range(6000):
            if random.random() < 0.01:
                idle_bias = random.choice([0.05, 0.5, 0.9, 1.0])  # long busy engine phases too
            ls.set("engine_idle", int(random.random() < idle_bias))
            ls.set("used_irq", int(random.random() < 0.04))
            ls.set("fault", int(random.random() < 0.02))
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
            idle = ls.inputs["engine_idle"]
            await ls.cycle_with(access)
            # Coverage of the cases the register file must get right.
            now = ls.now
            ls.seen["features_ok_kept"] += bool(now["status"] & spec.STATUS_FEATURES_OK)
            ls.seen["needs_reset"] += bool(now["status"] & spec.STATUS_DEVICE_NEEDS_RESET)
            ls.seen["notify"] += now["notify"]
            ls.seen["reset_waits"] += resetting and not idle
            ls.seen["reset_again"] += resetting and bool(now["dev_reset"])
            resetting = bool(now["dev_reset"]) or (resetting and not idle)
        for case in ("features_ok_kept", "needs_reset", "queue_sel_not_0", "notify",
                     "reset_waits", "reset_again"):
            assert ls.seen[case] > 0, f"{case} never happened"

    run(dut, bench)


def test_mmio_every_offset():
    """Every word of the 512-byte window written, then read back with every stored register,
    under each QueueSel and DriverFeaturesSel case: no offset aliases a register it is not."""
    random.seed(7)
    dut = VirtioMmioRegs()
    stored = [spec.MMIO_DEVICE_FEATURES_SEL, spec.MMIO_DRIVER_FEATURES,
              spec.MMIO_DRIVER_FEATURES_SEL, spec.MMIO_QUEUE_SEL, spec.MMIO_QUEUE_NUM,
              spec.MMIO_QUEUE_READY, spec.MMIO_QUEUE_DESC_LOW, spec.MMIO_QUEUE_DESC_HIGH,
              spec.MMIO_QUEUE_DRIVER_LOW, spec.MMIO_QUEUE_DRIVER_HIGH,
              spec.MMIO_QUEUE_DEVICE_LOW, spec.MMIO_QUEUE_DEVICE_HIGH, spec.MMIO_STATUS,
              spec.MMIO_INTERRUPT_STATUS]

    async def bench(ctx):
        ls = Lockstep(ctx, dut, GuestModel(queue_num_max=spec.DEFAULT_QUEUE_NUM_MAX,
                                           disk_bytes=spec.DEFAULT_DISK_BYTES),
                      MMIO_OUTPUTS, MMIO_INPUTS)
        ls.set("engine_idle", 1)

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

    run(dut, bench)


# ------------------------------------------------------------------------------------------------
# privileged register file
# ------------------------------------------------------------------------------------------------

HV_OUTPUTS = ("handle_mode", "domid", "tbl_addr", "tbl_wdata", "tbl_wen", "tbl_changed",
              "tbl_ref", "cfg_changed", "iova_mode", "stage_iova", "stage_pa", "stage_size",
              "stage_r", "stage_w", "iotlb_cmd", "resolve", "w_hold")
HV_INPUTS = ("fault", "fault_cause", "fault_addr", "xlate", "completed", "inflight", "burst_done",
             "tbl_rdata", "iotlb_busy", "invalidated", "miss", "miss_write", "miss_iova", "hits",
             "misses")
HV_OFFSETS = [spec.HV_VERSION, spec.HV_CTRL, spec.HV_DOMID, spec.HV_ENTRIES,
              spec.HV_FAULT_STATUS, spec.HV_FAULT_CAUSE, spec.HV_FAULT_ADDR_LO,
              spec.HV_FAULT_ADDR_HI, spec.HV_FAULT_COUNT, spec.HV_SYNC, spec.HV_STAT_XLATE,
              spec.HV_STAT_REQUESTS]
IOTLB_OFFSETS = list(range(spec.HV_IOTLB_IOVA_LO, spec.HV_IOTLB_ENTRIES + 4, 4))


def hv_access(entries: int, addr_width: int):
    r = random.random()
    end = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * entries
    if r < 0.5:
        offset = random.choice(HV_OFFSETS)
    elif r < 0.6:
        offset = random.choice(IOTLB_OFFSETS)
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
        elif offset in (spec.HV_IOTLB_CMD, spec.HV_MISS_RESOLVE):
            data = random.choice([0, 1, 2, 3, 4, 5, random.getrandbits(32)])
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
    dut = PrivilegedRegs(entries=entries, iotlb_entries=spec.DEFAULT_IOTLB_ENTRIES)
    # the registers and GRANT[entries - 1]: ceil(log2(0x1000 + 8 * entries)) bits
    end = spec.HV_GRANT_BASE + spec.GRANT_ENTRY_BYTES * entries
    assert dut.addr_width == (end - 1).bit_length()

    async def bench(ctx):
        ls = Lockstep(ctx, dut, HvModel(entries=entries), HV_OUTPUTS, HV_INPUTS)
        fault_rate = 0.05
        for _ in range(6000):
            if random.random() < 0.01:
                fault_rate = random.choice([0.0, 0.05, 0.3])
            fault = int(random.random() < fault_rate)
            ls.set("fault", fault)
            ls.set("fault_cause", random.getrandbits(4))
            ls.set("fault_addr", random.getrandbits(64))
            ls.set("xlate", int(random.random() < 0.3))
            ls.set("completed", int(random.random() < 0.1))
            ls.set("inflight", random.randrange(16))
            ls.set("burst_done", int(random.random() < 0.3))
            ls.set("tbl_rdata", random.getrandbits(64))
            ls.set("iotlb_busy", int(random.random() < 0.1))
            if random.random() < 0.05:
                for name in ("invalidated", "hits", "misses"):
                    ls.set(name, random.getrandbits(32))
                ls.set("miss", random.getrandbits(1))
                ls.set("miss_write", random.getrandbits(1))
                ls.set("miss_iova", random.getrandbits(64))
            access = hv_access(entries, dut.addr_width) \
                if ls.busy == 0 and random.random() < 0.6 else None
            if (access and access[0] == "w" and access[1] >> 2 == spec.HV_FAULT_STATUS >> 2
                    and access[2] & 1 and fault):
                ls.seen["fault_with_clear"] += 1
            if access and access[0] == "r" and access[1] >> 2 == spec.HV_SYNC >> 2:
                ls.seen["sync_read"] += 1
            await ls.cycle_with(access)
        assert ls.seen["fault_with_clear"] > 0
        assert ls.seen["sync_read"] > 0

    run(dut, bench)


# ------------------------------------------------------------------------------------------------
# both register files against their maps (models/regmap.py), as the model is
# ------------------------------------------------------------------------------------------------

class BusPort:
    """``read32``/``write32`` on a register file's bus, as the bridge makes the accesses."""

    def __init__(self, ctx, bus):
        self.ctx, self.bus = ctx, bus

    async def write32(self, offset, value):
        ctx, bus = self.ctx, self.bus
        for name, level in (("addr", offset), ("w_data", value), ("w_strb", 0xF),
                            ("w_next", 1)):
            ctx.set(getattr(bus, name), level)
        await ctx.tick()
        ctx.set(bus.w_next, 0)
        ctx.set(bus.w_en, 1)
        await ctx.tick()
        ctx.set(bus.w_en, 0)
        await ctx.tick().repeat(2)  # a driver reset completes

    async def read32(self, offset):
        self.ctx.set(self.bus.addr, offset)
        self.ctx.set(self.bus.r_en, 1)
        await self.ctx.tick()
        self.ctx.set(self.bus.r_en, 0)
        if self.ctx.get(self.bus.r_wait):  # (a table word: a cycle more)
            await self.ctx.tick()
        return self.ctx.get(self.bus.r_data)


@pytest.mark.parametrize("features", [Features(), Features.none(),
                                      Features(seg_max=7, size_max=4096, discard=False)],
                         ids=["all", "none", "some"])
@pytest.mark.parametrize(("queue_num_max", "disk_bytes"), [(256, 65536), (32768, 1 << 41)])
def test_mmio_follows_the_map(queue_num_max, disk_bytes, features):
    dut = VirtioMmioRegs(queue_num_max=queue_num_max, disk_bytes=disk_bytes, features=features)
    # the configuration fields' values come from models.features (the contract)
    params = {"queue_num_max": queue_num_max, "disk_bytes / 512": disk_bytes // 512,
              **features.params(queue_num_max, disk_bytes)}

    async def bench(ctx):
        ctx.set(dut.queue.idle, 1)
        await check_map(GUEST, BusPort(ctx, dut.bus), params, window=1 << MMIO_ADDR_WIDTH)

    run(dut, bench)


@pytest.mark.parametrize("entries", [1024, 3])
def test_hv_follows_the_map(entries):
    """The registers; the grant words are the translation unit's (tbl_*, checked above)."""
    dut = PrivilegedRegs(entries=entries, iotlb_entries=spec.DEFAULT_IOTLB_ENTRIES)

    async def bench(ctx):
        await check_map(HV, BusPort(ctx, dut.bus),
                        {"entries": entries, "iotlb_entries": spec.DEFAULT_IOTLB_ENTRIES},
                        window=spec.HV_GRANT_BASE, arrays=False)

    run(dut, bench)


@pytest.mark.sim
def test_guest_port_cannot_reach_privileged_state():
    """The whole device (``tb/test_registers.py``, about 25 s): every guest offset written,
    every privileged register and grant word read back unchanged and as the reference model
    reads it, no bus access. (``tests/test_sim.py::test_registers`` runs the bench's other
    tests, whose reads are compared with the model too.)"""
    from tb.runner import DeviceConfig, run

    testcase = "test_guest_port_cannot_reach_privileged_state"
    tests, failed, xml = run("tb.test_registers", DeviceConfig(), testcase=testcase,
                             results_name=f"registers_model_{testcase}")
    assert tests == 1, f"tb.test_registers.{testcase} did not run (see {xml})"
    assert failed == 0, f"tb.test_registers.{testcase} failed; log above, results {xml}"
