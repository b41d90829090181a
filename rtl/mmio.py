"""virtio-mmio version 2 register file (virtio 1.x section 4.2.2) for one virtio-blk queue.

Behaviour, reset values and the FEATURES_OK rule are those of ``docs/architecture.md``
("virtio-mmio register file"); the map is :data:`models.regmap.GUEST`, from which the read
multiplexer and the read-back RAM's words are generated; the decode is by its register names.

How it is built, for area (the behaviour does not depend on it): the values the ring engine
needs (QueueNum, QueueReady, the three queue addresses, Status) are flip-flops loaded straight
from the write data; every value the guest can write is *also* written to a 16 x 32 distributed
RAM (:data:`READBACK_SLOTS`), and reads of those words come from that RAM, so the read
multiplexer does not see the 64-bit queue addresses at all. A valid bit per RAM word, cleared by
a reset, stands for the reset value. The selectors and the driver features are kept only as a
few flags computed when they are written (QueueSel is 0, a selector is 0 or 1, the FEATURES_OK
conditions on each feature word), so no wide comparison is left in the design. A read copies
the addressed value into registers in the ``r_en`` cycle, already gated by its select, and ORs
them in the next, so no data bit of the read multiplexer depends on the address bits.
"""

from __future__ import annotations

import functools
import operator

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from models import spec
from models.features import Features
from models.regmap import GUEST, Access

from .interfaces import QueueSignature
from .regbus import RegBusSignature

__all__ = ["MMIO_ADDR_WIDTH", "READBACK_SLOTS", "VirtioMmioRegs"]

MMIO_ADDR_WIDTH = 9  # 0x000-0x1FF: common registers and the device configuration space

_U32 = 0xFFFF_FFFF

# Device features (docs/architecture.md): FLUSH and VERSION_1 always, the build's
# (models.features.Features), ACCESS_PLATFORM in handle mode; VERSION_1 is required, and
# ACCESS_PLATFORM too in handle mode.
_OFFERED_HANDLE = 1 << spec.VIRTIO_F_ACCESS_PLATFORM

def _slot(offset: int, driver_word: int = 0) -> int:
    """The read-back RAM word of register ``offset`` (``driver_word``: which DriverFeatures
    word). The hardware computes it from the address bits with one XOR per slot bit (see
    ``VirtioMmioRegs.elaborate``); :data:`READBACK_SLOTS` checks that no two words collide."""
    bit = [offset >> n & 1 for n in range(MMIO_ADDR_WIDTH)]
    return bit[2] | (bit[3] ^ bit[7]) << 1 | bit[4] << 2 | (bit[5] ^ driver_word) << 3


#: Guest-writable words kept in the read-back RAM, ``(register name, selected word) -> slot``:
#: every RW register of :data:`models.regmap.GUEST` that is 32 bits wide or more (QueueReady and
#: Status, narrower, are only flip-flops), a word per DriverFeatures word.
READBACK_SLOTS = {
    (reg.name, word): _slot(reg.offset, word)
    for reg in GUEST if reg.access is Access.RW and reg.width >= 32
    for word in range(reg.width // 32)
}
assert len(set(READBACK_SLOTS.values())) == len(READBACK_SLOTS), "read-back slots collide"
# The stored-word check in elaborate() compares address bits 5 to 8; bits 6 and 8 are 0.
assert all(GUEST[name].offset & 0x140 == 0 for name, _ in READBACK_SLOTS)
# Only DriverFeatures word 1 moves with the selector, and only in slot bit 3.
assert READBACK_SLOTS["DriverFeatures", 1] == READBACK_SLOTS["DriverFeatures", 0] ^ 8


class VirtioMmioRegs(wiring.Component):
    """Guest-visible registers.

    A write takes effect at the end of its ``w_en`` cycle (a write of 0 to Status is decoded in
    the ``w_next`` cycle before it); a read presents ``r_data`` in the cycle after ``r_en``, with
    the registers' values of the ``r_en`` cycle. Accesses come one at a time
    (:class:`~rtl.regbus.RegBusSignature`). Offsets decode 9 address bits (bits 1:0
    ignored); ``w_strb`` is ignored (every write is a full-word write).

    Parameters
    ----------
    queue_num_max : int
        QueueNumMax of queue 0.
    disk_bytes : int
        RAM disk size; ``capacity`` is this in 512-byte sectors.
    features : Features
        What the build offers; the configuration fields follow from it.

    Members
    -------
    bus : In(RegBusSignature)
        From the ``s_axil`` bridge.
    handle_mode : In
        Decides whether VIRTIO_F_ACCESS_PLATFORM is offered and required.
    queue : Out(:func:`~rtl.interfaces.QueueSignature`)
        To the ring engine: the registers of queue 0 (``avail`` is QueueDriver, ``used``
        QueueDevice); ``notify``, ``dev_reset``: one-cycle pulses in the ``w_en`` cycle, an
        accepted QueueNotify, a write of 0 to Status. Back: ``idle``, the ring engine is idle
        with no bus transaction in flight (a reset completes, the registers return to their
        reset values and Status reads 0, only in a cycle with ``idle`` and no ``dev_reset``);
        ``used_irq``, ``fault``: one-cycle pulses that set InterruptStatus bit 0, bit 1 (a fault
        also sets DEVICE_NEEDS_RESET in Status); ``indirect``, ``event_idx``: DriverFeatures
        has the bit (0 unless the build offers it).
    status : Out
        Status as the driver reads it.
    irq : Out
        High while InterruptStatus is non-zero.
    """

    def __init__(self, *, queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES, features: Features | None = None):
        self._queue_num_max = queue_num_max
        self._disk_bytes = disk_bytes
        self._features = Features() if features is None else features
        self._offered = self._features.offered(queue_num_max)
        super().__init__({
            "bus": In(RegBusSignature(MMIO_ADDR_WIDTH)),
            "handle_mode": In(1),
            "queue": Out(QueueSignature()),
            "status": Out(8),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus, q = self.bus, self.queue
        qmax = self._queue_num_max
        data = bus.w_data
        addr = bus.addr

        def at(name, word=0):
            """The access is to word ``word`` of register ``name`` of :data:`GUEST` (9-bit
            decode; bits 1:0 ignored)."""
            return addr[2:] == GUEST[name].offsets[word] >> 2

        # --- Stored words: every value the guest can write except QueueReady (a single bit) is
        # written to the read-back RAM too (READBACK_SLOTS). Slot bits are address bits 2,
        # 3 ^ 7, 4 and 5, bit 5 flipped for DriverFeatures word 1.
        queue0 = Signal(init=1)           # QueueSel == 0
        dev_sel = Signal(2, init=0b01)    # DeviceFeaturesSel == 0, == 1
        drv_sel = Signal(2, init=0b01)    # DriverFeaturesSel == 0, == 1
        slot = Signal(4)
        m.d.comb += slot.eq(Cat(addr[2], addr[3] ^ addr[7], addr[4],
                                addr[5] ^ (at("DriverFeatures") & drv_sel[1])))

        def slot_table(pred):
            """Bit ``slot`` of a constant: ``pred(register, word)`` of the slot's stored word
            (0 for an unused slot)."""
            bits = sum(1 << s for (name, word), s in READBACK_SLOTS.items()
                       if pred(GUEST[name], word))
            return Const(bits, 16).bit_select(slot, 1)

        # ``stored``: the access is to a stored word and takes the write or reads the stored
        # value (queue registers only while QueueSel = 0, DriverFeatures only while its
        # selector is 0 or 1). The slot fixes address bits 2, 4 and 3 ^ 7, so comparing bits
        # 5 to 8 with those of the slot's word identifies it: a few LUTs instead of a compare
        # of the whole offset with each stored word.
        stored = Signal()
        m.d.comb += stored.eq(
            slot_table(lambda reg, word: True) & ~addr[8] & ~addr[6]
            & (addr[7] == slot_table(lambda reg, word: reg.offset >> 7 & 1))
            & (addr[5] == slot_table(lambda reg, word: reg.offset >> 5 & 1))
            & (queue0 | ~slot_table(lambda reg, word: reg.queue))
            & (drv_sel.any() | ~slot_table(lambda reg, word: reg.name == "DriverFeatures")))
        m.submodules.readback = readback = Memory(shape=32, depth=16, init=[])
        rd = readback.read_port(domain="comb")
        wr = readback.write_port()
        m.d.comb += [rd.addr.eq(slot), wr.addr.eq(slot), wr.data.eq(data),
                     wr.en.eq(bus.w_en & stored)]

        def written(name, word=0):
            """A write to the stored word: the RAM's write enable and its slot."""
            return wr.en & (slot == READBACK_SLOTS[name, word])

        # A valid bit per slot: the word was written since the last reset (else it reads its
        # reset value: 0, or QueueNumMax for QueueNum).
        valid = Signal(16)
        for (name, word), s in READBACK_SLOTS.items():
            with m.If(written(name, word)):
                m.d.sync += valid[s].eq(1)
        slot_valid = Signal()
        m.d.comb += slot_valid.eq(valid.bit_select(slot, 1))

        # --- Flags computed at write time instead of keeping the selectors and the driver
        # features: each replaces a wide comparison. Reset values are those of the registers
        # they stand for (selectors 0, driver features 0).
        # Per DriverFeatures word: no bit the device could not offer; VERSION_1 and
        # ACCESS_PLATFORM (FEATURES_OK rule, virtio 1.x section 3.1.1).
        drv_only_offered = Signal(2, init=0b11)
        drv_version_1 = Signal()
        drv_access_platform = Signal()
        drv_indirect = Signal()  # negotiated features the ring engine needs
        drv_event_idx = Signal()
        m.d.comb += [q.indirect.eq(drv_indirect), q.event_idx.eq(drv_event_idx)]
        features_ok = Signal()
        m.d.comb += features_ok.eq(drv_only_offered.all() & drv_version_1
                                   & (drv_access_platform == self.handle_mode))

        # Write-data checks, sharing one zero test of the bits no check looks at.
        offered = self._offered
        allowed = [(offered | _OFFERED_HANDLE) >> (32 * word) & _U32 for word in range(2)]
        looked_at = allowed[0] | allowed[1] | 1  # 1: the selectors' "== 1"
        rest_zero = Signal()
        m.d.comb += rest_zero.eq((data & ~looked_at & _U32) == 0)

        def equals(value):
            """``data == value`` for a value within ``looked_at``."""
            return rest_zero & ((data & looked_at) == value)

        def only(mask):
            """``data & ~mask == 0`` for a mask within ``looked_at``."""
            return rest_zero & ((data & looked_at & ~mask) == 0)

        data_zero = Signal()
        m.d.comb += data_zero.eq(equals(0))

        def one_hot_sel():
            return Cat(data_zero, equals(1))

        with m.If(written("DeviceFeaturesSel")):
            m.d.sync += dev_sel.eq(one_hot_sel())
        with m.If(written("DriverFeaturesSel")):
            m.d.sync += drv_sel.eq(one_hot_sel())
        with m.If(written("QueueSel")):
            m.d.sync += queue0.eq(data_zero)
        for word in range(2):
            with m.If(written("DriverFeatures", word)):
                m.d.sync += drv_only_offered[word].eq(only(allowed[word]))
                if word == spec.VIRTIO_F_VERSION_1 // 32:
                    m.d.sync += drv_version_1.eq(data[spec.VIRTIO_F_VERSION_1 % 32])
                if word == spec.VIRTIO_F_ACCESS_PLATFORM // 32:
                    m.d.sync += drv_access_platform.eq(data[spec.VIRTIO_F_ACCESS_PLATFORM % 32])
                for bit, flag in ((spec.VIRTIO_F_INDIRECT_DESC, drv_indirect),
                                  (spec.VIRTIO_RING_F_EVENT_IDX, drv_event_idx)):
                    if word == bit // 32 and offered >> bit & 1:
                        m.d.sync += flag.eq(data[bit % 32])

        # --- Driver reset (virtio 1.x section 2.1): Status = 0 starts it; it completes, and
        # Status reads 0, once the engine has finished the burst it was in.
        reset_pending = Signal()
        reset_done = Signal()
        # decoded in the w_next cycle (the same address and data), so that the reset reaches
        # the DMA engine from a flip-flop (rtl/regbus.py)
        reset_write = Signal()
        m.d.comb += q.reset_next.eq(bus.w_next & at("Status") & data_zero)
        m.d.sync += reset_write.eq(q.reset_next)
        m.d.comb += [
            q.dev_reset.eq(reset_write),
            reset_done.eq(reset_pending & ~q.dev_reset & q.idle),
        ]
        with m.If(q.dev_reset):
            m.d.sync += reset_pending.eq(1)

        # --- Queue registers: flip-flops for the engine, loaded from the write data. Queue
        # registers ignore writes while QueueSel != 0.
        queue_num = Signal(32, init=qmax)
        queue_ready = Signal()
        queue_addr = [Signal(64, name=n) for n in ("desc", "avail", "used")]
        m.d.comb += [
            q.num.eq(queue_num), q.ready.eq(queue_ready),
            q.desc.eq(queue_addr[0]), q.avail.eq(queue_addr[1]),
            q.used.eq(queue_addr[2]),
        ]
        with m.If(written("QueueNum")):
            m.d.sync += queue_num.eq(data)
        with m.If(bus.w_en & queue0 & at("QueueReady")):
            m.d.sync += queue_ready.eq(data[0])
        for name, reg in zip(("QueueDesc", "QueueDriver", "QueueDevice"), queue_addr, strict=True):
            for half, suffix in enumerate(("Low", "High")):
                with m.If(written(name + suffix)):
                    m.d.sync += reg.word_select(half, 32).eq(data)

        # --- Interrupt status: acknowledged bits clear, engine events set (set wins).
        int_status = Signal(2)
        int_ack = Signal(2)
        with m.If(bus.w_en & at("InterruptACK")):
            m.d.comb += int_ack.eq(data[:2])
        m.d.sync += int_status.eq((int_status & ~int_ack) | Cat(q.used_irq, q.fault))
        m.d.comb += self.irq.eq(int_status.any())

        # --- Status: a fault sets DEVICE_NEEDS_RESET, which writes keep as the device has it;
        # FEATURES_OK is refused unless the driver features are acceptable.
        status = Signal(8)
        m.d.comb += self.status.eq(status)
        with m.If(q.fault):
            m.d.sync += status[6].eq(1)
        with m.If(bus.w_en & at("Status") & ~data_zero):
            m.d.sync += [status[:3].eq(data[:3]), status[3].eq(data[3] & features_ok),
                         status[4:6].eq(data[4:6]), status[7].eq(data[7])]

        m.d.comb += q.notify.eq(bus.w_en & at("QueueNotify") & data_zero
                                   & queue_ready & status[2])  # DRIVER_OK

        with m.If(reset_done):
            m.d.sync += [
                reset_pending.eq(0),
                queue0.eq(1), dev_sel.eq(0b01), drv_sel.eq(0b01),
                drv_only_offered.eq(0b11), drv_version_1.eq(0), drv_access_platform.eq(0),
                drv_indirect.eq(0), drv_event_idx.eq(0),
                valid.eq(0),
                queue_num.eq(qmax), queue_ready.eq(0), *(r.eq(0) for r in queue_addr),
                status.eq(0), int_status.eq(0),
            ]

        # --- Reads: one cycle of latency, in two halves. In the r_en cycle the offset is
        # decoded into one-hot selects, registered, and every value that is not a constant is
        # registered already gated by its select (a flip-flop's clock enable and synchronous
        # reset do that, without a LUT); in the next cycle r_data is the OR of those registers
        # with the constants of the registered selects. No bit of the read multiplexer then
        # depends on the address bits themselves, which keeps the delay-driven LUT mapping from
        # folding the address decode into every data bit.
        access_platform = 1 << spec.VIRTIO_F_ACCESS_PLATFORM - 32
        values = {  # (conditions, value) read terms of the registers that change (models.regmap)
            "DeviceFeatures": [((dev_sel[0],), offered & _U32), ((dev_sel[1],), offered >> 32),
                               ((dev_sel[1], self.handle_mode), access_platform)],
            "QueueReady": [((queue_ready,), 1)],
            "InterruptStatus": [((), int_status)],
            "Status": [((), status)],
        }
        params = {"queue_num_max": qmax, "disk_bytes / 512": self._disk_bytes // spec.SECTOR_SIZE,
                  **self._features.params(qmax, self._disk_bytes)}

        def selected(reg, word=0):
            """The access is to the word, and QueueSel is 0 if it is a queue register."""
            return at(reg.name, word) & queue0 if reg.queue else at(reg.name, word)

        # (select in the r_en cycle, value: a constant or a signal): a stored word from the RAM,
        # or its reset value until it is written; then every other register that can read
        # non-zero, its reset value unless ``values`` says otherwise.
        terms = [(stored & slot_valid, rd.data)]
        for (name, word), s in READBACK_SLOTS.items():
            reset = GUEST.resets(GUEST[name], params)[word]
            if reset:
                terms.append((selected(GUEST[name]) & ~valid[s], reset))
        for reg in GUEST:
            if reg.access is Access.WO or (reg.name, 0) in READBACK_SLOTS or (
                    reg.reset == 0 and reg.name not in values):
                continue
            resets = GUEST.resets(reg, params)
            for word in range(reg.words):
                for conds, value in values.get(reg.name, [((), resets[word])]):
                    terms.append((functools.reduce(operator.and_, conds, selected(reg, word)),
                                  value))
        r_terms = []
        for n, (sel, value) in enumerate(terms):
            if isinstance(value, int):
                if value == 0:
                    continue
                r_sel = Signal(name=f"r_sel{n}", reset_less=True)
                with m.If(bus.r_en):
                    m.d.sync += r_sel.eq(sel)
                r_terms.append(Mux(r_sel, value, 0))
            else:
                r_value = Signal.like(value, name=f"r_value{n}", reset_less=True)
                with m.If(bus.r_en):
                    m.d.sync += r_value.eq(Mux(sel, value, 0))
                r_terms.append(r_value)
        m.d.comb += [bus.r_data.eq(functools.reduce(operator.or_, r_terms)),
                     bus.r_wait.eq(0)]  # (every read: one cycle)
        return m
