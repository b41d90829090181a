"""IOVA mode's IOTLB: a 4-way set-associative translation cache in block RAM that the
hypervisor fills (docs/iotlb.md is the specification; ``models/iotlb.py`` the reference).

Organisation: ``entries / 2`` sets of 2 ways. A 4 KiB entry lives in the *small set* of its
IOVA (page-number bits ``sb - 1 : 0``), a larger one (8 KiB to 1 GiB) in the *large set*
(page-number bits ``18 + sb - 1 : 18``, IOVA bits 30 and up), so every page an entry covers
names the same set of the entry's kind, and a lookup reads two sets, one per kind, in one cycle
(two read ports: Yosys gives each its own copy of the block RAM). The valid bits are flip-flops,
so that ``rst`` clears them and invalidation needs no RAM write.

The lookup is the translation unit's pipeline (``rtl/translate.py``): the sets are read in the
cycle of the table read, the words registered straight out of the RAM in the next, and the ways
compared in the third, from registers. A hypervisor command uses the same read ports and the
same compare: it visits the sets a range can touch (the two a lookup of its IOVA reads, for a
4 KiB range; every set, two per cycle, otherwise), and the ways that overlap the range are
cleared where the compare sees them; an insert then writes its way. While a command runs the
lookups read what the command reads: their answers are *stale* and the DMA engine looks up
again.
"""

from __future__ import annotations

import functools
import operator

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from models import spec

from .interfaces import IotlbCmdSignature

__all__ = ["Entry", "Iotlb", "check_iotlb_entries", "large_set_shift"]

WAYS = spec.IOTLB_WAYS
VPN_BITS = 64 - spec.PAGE_SHIFT  # an IOVA's page number
MASK_BITS = spec.IOTLB_MAX_SIZE - spec.PAGE_SHIFT  # page-number bits a mapping may cover (18)


def large_set_shift() -> int:
    """Page-number bit where a large entry's set index starts (IOVA bit 30)."""
    return MASK_BITS


#: One way of a set, as stored: the base page number, the page-number bits the entry covers
#: (``mask``: bit ``i`` set when page-number bit ``i`` lies inside the mapping, a thermometer
#: of ``size - 12`` ones), the base physical page, the permissions.
Entry = data.StructLayout({"vpn": VPN_BITS, "mask": MASK_BITS, "ppn": VPN_BITS,
                           "r": 1, "w": 1})
assert Entry["mask"].offset == VPN_BITS  # (pack and unpack rely on it)


def pack(entry):
    """An entry as its way of a block RAM row stores it: the low ``MASK_BITS`` page-number
    bits each beside its mask bit, then the rest of the entry in :data:`Entry`'s order.

    Fmax (issue 16): the compare's first level (``ne_lo``) takes a page-number bit and its
    mask bit straight out of the block RAM, and a block RAM is 36 bits wide; side by side the
    two come out of one block RAM, and the LUT can sit beside it."""
    raw = Value.cast(entry)
    vpn, mask = raw[:VPN_BITS], raw[VPN_BITS:VPN_BITS + MASK_BITS]
    return Cat(*[Cat(vpn[i], mask[i]) for i in range(MASK_BITS)], vpn[MASK_BITS:],
               raw[VPN_BITS + MASK_BITS:])


def unpack(raw):
    """The :data:`Entry` a way of a block RAM row holds (:func:`pack`'s inverse)."""
    pairs, rest = 2 * MASK_BITS, 2 * MASK_BITS + VPN_BITS - MASK_BITS
    return Entry(Cat(*[raw[2 * i] for i in range(MASK_BITS)], raw[pairs:rest],
                     *[raw[2 * i + 1] for i in range(MASK_BITS)], raw[rest:]))


def check_iotlb_entries(entries) -> int:
    if (not isinstance(entries, int) or isinstance(entries, bool)
            or not (entries == 0 or 8 <= entries <= 1024) or entries & (entries - 1)):
        raise ValueError(f"IOTLB entries must be 0 or a power of two in [8, 1024], "
                         f"not {entries!r}")
    return entries


def gt_const(value, k: int):
    """``value > k`` for a constant ``k``, as gates.

    Area: Yosys maps a comparison with a constant to a carry chain (the IOTLB's 22 comparisons of
    the staged size took 29 carry cells, two LUT4 sites each); as gates they take one or two
    LUT4s each. At 64 x 1024 the placed device is 77 LUT4 smaller, formally equivalent
    (``tools/rtlil_equiv.py``)."""
    width = len(value)
    if k < 0:
        return Const(1, 1)
    if k >= (1 << width) - 1:
        return Const(0, 1)
    terms = []
    for i in reversed(range(width)):  # equal above bit i, and 1 where k has 0 at bit i
        if not (k >> i) & 1:
            equal_above = [value[j] if (k >> j) & 1 else ~value[j] for j in range(i + 1, width)]
            terms.append(functools.reduce(operator.and_, equal_above, value[i]))
    return functools.reduce(operator.or_, terms)


def thermometer(m, size, name):
    """``size - 12`` ones (sizes 12..30), as the page-number bits a mapping covers."""
    out = Signal(MASK_BITS, name=name)
    for i in range(MASK_BITS):
        m.d.comb += out[i].eq(gt_const(size, spec.PAGE_SHIFT + i))
    return out


class Iotlb(wiring.Component):
    """The IOTLB's storage, commands and compare.

    Parameters
    ----------
    entries : int
        Number of entries (a power of two, 8 to 1024).

    Members
    -------
    small, large : In
        The sets a lookup reads: in the translation unit's table-read cycle (``t``); they are
        ``small_fast`` and ``large_fast`` instead when ``large_sel`` (a late choice: one gate to
        the RAM after it).
    key, write : In
        The page number of the lookup kept in cycle ``t + 1``, and its direction.
    fast_key, fast : In
        In cycle ``t + 1``: the page number is ``fast_key`` instead. It passes a single gate to
        the key's register (``key`` may pass more): for an address that arrives late.
    enable : In
        IOVA mode: lookups answer only while it is high (commands work in every mode).
    hit, ok, fault, r, w, ppn : Out
        In cycle ``t + 2`` (combinational, from registers): a valid entry covers ``key``; it
        allows the direction; 0 or the fault cause of a hit without the permission (5 for a
        write, 11 for a read); its permissions; the physical page of ``key`` through it. All
        0 without a hit.
    key_q : Out
        In cycle ``t + 2``: the page number the answer is for (``key`` or ``fast_key`` as
        taken in ``t + 1``; a command's page while it runs, when the answer is ``stale``).
    stale : Out
        In cycle ``t + 2``: a command ran (or started) in cycle ``t``, ``t + 1`` or ``t + 2``;
        the answer must not be used.
    active : Out
        A command starts in this cycle (``ctrl.cmd``) or runs.
    ctrl : In(:func:`~rtl.interfaces.IotlbCmdSignature`)
        From the privileged registers: the staged mapping and the command pulse; ``busy`` (a
        command runs: the register file holds writes) and ``invalidated`` back.
    """

    def __init__(self, entries: int = spec.DEFAULT_IOTLB_ENTRIES):
        self._entries = check_iotlb_entries(entries)
        if not entries:
            raise ValueError("An IOTLB needs at least 8 entries")
        self._sets = entries // WAYS
        self._sb = exact_log2(self._sets)
        super().__init__({
            "small": In(self._sb), "large": In(self._sb), "large_fast": In(self._sb),
            "large_sel": In(1), "small_fast": In(self._sb), "key": In(VPN_BITS),
            "fast_key": In(VPN_BITS), "fast": In(1), "write": In(1),
            "enable": In(1),
            "hit": Out(1), "ok": Out(1), "fault": Out(4), "r": Out(1), "w": Out(1),
            "ppn": Out(VPN_BITS), "key_q": Out(VPN_BITS), "stale": Out(1), "active": Out(1),
            "ctrl": In(IotlbCmdSignature()),
        })

    @property
    def set_bits(self) -> int:
        return self._sb

    def elaborate(self, platform):
        m = Module()
        S, sb = self._sets, self._sb
        E = Entry.size
        wb = exact_log2(WAYS)
        ctrl = self.ctrl
        m.submodules.ram = ram = memory.Memory(shape=unsigned(WAYS * E), depth=S, init=[],
                                               attrs={"ram_style": "block"})
        port_a = ram.read_port()
        port_b = ram.read_port()
        wr = ram.write_port(granularity=E)
        valid = Signal(S * WAYS)
        rr = Signal(wb * S)  # round-robin pointer of each set

        # ---- Command: latched from the staging registers in its IOTLB_CMD write cycle --------
        op = Signal(2)
        c_vpn = Signal(VPN_BITS)
        c_mask = Signal(MASK_BITS)
        c_all = Signal()
        c_wide = Signal()  # the range is larger than 4 KiB: every set is visited
        c_set = Signal(sb)  # an insert's set
        new = Signal(Entry)  # an insert's entry
        size = ctrl.stage_size
        above_min = gt_const(size, spec.IOTLB_MIN_SIZE)  # larger than 4 KiB: a large entry
        above_max = gt_const(size, spec.IOTLB_MAX_SIZE)
        size_ok = gt_const(size, spec.IOTLB_MIN_SIZE - 1) & ~above_max
        start = Signal()
        m.d.comb += start.eq(
            ((ctrl.cmd == spec.IOTLB_CMD_INSERT) & size_ok)
            | (ctrl.cmd == spec.IOTLB_CMD_INVALIDATE) | (ctrl.cmd == spec.IOTLB_CMD_INVALIDATE_ALL))
        new_mask = thermometer(m, size, "new_mask")
        above = Cat(new_mask, Const(0, VPN_BITS - MASK_BITS))  # page bits inside the range
        step = Signal(max(1, sb - 1))  # the walk's step (sets 2k and 2k + 1)
        last_step = Signal()
        walking = Signal()  # the read ports are the command's this cycle
        busy = Signal()
        choosing = Signal()  # VICTIM: the insert's way is chosen
        writing = Signal()  # WRITE: the insert's entry is written

        m.d.comb += [ctrl.busy.eq(busy), self.active.eq(busy | start)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(start):
                    inval_all = ((ctrl.cmd == spec.IOTLB_CMD_INVALIDATE_ALL)
                                 | ((ctrl.cmd == spec.IOTLB_CMD_INVALIDATE)
                                    & above_max))
                    iova_page = ctrl.stage_iova[spec.PAGE_SHIFT:]
                    m.d.sync += [
                        op.eq(ctrl.cmd), c_vpn.eq(iova_page),
                        c_mask.eq(new_mask), c_all.eq(inval_all),
                        c_wide.eq(inval_all | above_min),
                        c_set.eq(Mux(above_min,
                                     iova_page[MASK_BITS:MASK_BITS + sb], iova_page[:sb])),
                        new.vpn.eq(iova_page & ~above), new.mask.eq(new_mask),
                        new.ppn.eq(ctrl.stage_pa[spec.PAGE_SHIFT:] & ~above),
                        new.r.eq(ctrl.stage_r), new.w.eq(ctrl.stage_w),
                        step.eq(0), busy.eq(1),
                    ]
                    m.next = "WALK"
            with m.State("WALK"):
                m.d.comb += walking.eq(1)
                m.d.comb += last_step.eq(~c_wide | (step == (S // 2) - 1))
                m.d.sync += step.eq(step + 1)
                with m.If(last_step):
                    m.next = "DRAIN1"
            with m.State("DRAIN1"):  # the last step's words come out of the RAM,
                m.next = "DRAIN2"
            with m.State("DRAIN2"):  # are compared,
                m.next = "DRAIN3"
            with m.State("DRAIN3"):  # and the ways that overlap are cleared
                with m.If(op == spec.IOTLB_CMD_INSERT):
                    m.next = "VICTIM"
                with m.Else():
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
            with m.State("VICTIM"):
                m.d.comb += choosing.eq(1)
                m.next = "WRITE"
            with m.State("WRITE"):  # the new entry into its set's chosen way
                m.d.comb += writing.eq(1)
                m.d.sync += busy.eq(0)
                m.next = "IDLE"

        # ---- Read ports: the lookup's two sets, or the command's --------------------------------
        walk_a = Mux(c_wide, Cat(Const(0, 1), step)[:sb], c_vpn[:sb])
        walk_b = Mux(c_wide, Cat(Const(1, 1), step)[:sb], c_vpn[MASK_BITS:MASK_BITS + sb])
        m.d.comb += [port_a.addr.eq(Mux(self.large_sel & ~walking, self.small_fast,
                                        Mux(walking, walk_a, self.small))),
                     port_b.addr.eq(Mux(self.large_sel & ~walking, self.large_fast,
                                        Mux(walking, walk_b, self.large)))]

        # Stage 1: what the read was for.
        set_a1, set_b1 = Signal(sb, name="set_a1"), Signal(sb, name="set_b1")
        step1 = Signal()
        act1 = Signal()
        m.d.sync += [set_a1.eq(port_a.addr), set_b1.eq(port_b.addr), step1.eq(walking),
                     act1.eq(self.active)]
        # Stage 2: the words registered straight out of the RAM, the key and its range.
        raw_a = Signal(WAYS * E, reset_less=True)
        raw_b = Signal(WAYS * E, reset_less=True)
        key2 = Signal(VPN_BITS)
        kall2 = Signal()
        write2 = Signal()
        set_a2, set_b2 = Signal(sb, name="set_a2"), Signal(sb, name="set_b2")
        step2 = Signal()
        act2 = Signal()
        # The key in stage 1: the command's page in a step, else ``fast_key`` or ``key``.
        # Area (issue 16): the command's page and range come from copies that the flip-flops'
        # reset clears outside a step (``walking`` a cycle earlier is ``step1``; both are
        # loaded in IDLE only, so a copy holds them in every step), and ``key`` is masked
        # apart, so that each key bit takes two LUTs where the three-way choice took three.
        # (The copies have no reset: after a reset in a step they hold the command one cycle
        # more, when no entry is valid; formal/iotlb.py states both.)
        c_vpn1 = Signal(VPN_BITS, reset_less=True)
        kmask1 = Signal(MASK_BITS, reset_less=True)
        with m.If(walking):
            m.d.sync += [c_vpn1.eq(c_vpn), kmask1.eq(c_mask)]
        with m.Else():
            m.d.sync += [c_vpn1.eq(0), kmask1.eq(0)]
        key_slow = Signal(VPN_BITS, attrs={"keep": 1})
        m.d.comb += key_slow.eq(Mux(step1, 0, self.key))
        key1 = Signal(VPN_BITS)
        m.d.comb += key1.eq(Mux(self.fast & ~step1, self.fast_key, c_vpn1 | key_slow))
        # Fmax (issue 16): the compare's first level is made in the cycle the ways leave the
        # block RAM and registered in place of their page numbers (``ne_*``: per way, a bit for
        # each page-number bit inside the mapping's largest range, masked by the entry's and
        # the command's range, and one for each pair above it: a LUT each). Stage 3 only ORs
        # them, so the compare ends a few LUT levels after flip-flops.
        ne2 = {}
        for port, tag in ((port_a, "a"), (port_b, "b")):
            for w in range(WAYS):
                e1 = unpack(port.data[w * E:(w + 1) * E])
                lo = Signal(MASK_BITS, name=f"ne_lo_{tag}{w}")
                hi = Signal((VPN_BITS - MASK_BITS) // 2, name=f"ne_hi_{tag}{w}")
                m.d.sync += lo.eq((e1.vpn[:MASK_BITS] ^ key1[:MASK_BITS]) & ~(e1.mask | kmask1))
                m.d.sync += hi.eq(Cat(*[e1.vpn[MASK_BITS + 2 * k:MASK_BITS + 2 * k + 2]
                                        != key1[MASK_BITS + 2 * k:MASK_BITS + 2 * k + 2]
                                        for k in range((VPN_BITS - MASK_BITS) // 2)]))
                ne2[tag, w] = Cat(lo, hi)
        m.d.sync += [
            raw_a.eq(port_a.data), raw_b.eq(port_b.data),
            key2.eq(key1),
            kall2.eq(step1 & c_all), write2.eq(self.write),
            set_a2.eq(set_a1), set_b2.eq(set_b1), step2.eq(step1),
            act2.eq(act1 | self.active),
        ]
        m.d.comb += self.stale.eq(act2 | self.active)
        m.d.comb += self.key_q.eq(key2)

        # The compare: a way matches when it is valid and agrees with the key on every
        # page-number bit outside both ranges (a lookup's range is its one page). Everything a
        # lookup answers is prepared per way beside the compare (the physical page with the
        # key's bits inside the mapping, the verdict for the direction), so that after it only
        # an AND-OR of the ways remains: that is the unit's longest path.
        same = Signal()  # (both reads named one set: count it once; registered, Fmax)
        m.d.sync += same.eq(set_a1 == set_b1)
        # Fmax: the sets' valid bits as they were in stage 1, registered. A write to them at
        # the end of stage 1 is a command's (``active`` then), which makes a lookup's answer
        # stale; a walk's own steps write sets that its later steps do not read.
        v_a = Signal(WAYS, name="v_a2")
        v_b = Signal(WAYS, name="v_b2")
        m.d.sync += [v_a.eq(valid.word_select(set_a1, WAYS)),
                     v_b.eq(valid.word_select(set_b1, WAYS))]
        ways = []  # (match, entry, physical page, fault)
        for raw, vbits, tag in ((raw_a, v_a, "a"), (raw_b, v_b, "b")):
            for w in range(WAYS):
                entry = unpack(raw[w * E:(w + 1) * E])
                diff = ne2[tag, w]
                match = Signal(name=f"match_{tag}{w}")
                m.d.comb += match.eq(vbits[w] & (kall2 | (diff == 0)) & (step2 | self.enable)
                                     & (~same if tag == "b" else 1))
                ppn = Signal(VPN_BITS, name=f"ppn_{tag}{w}")
                m.d.comb += ppn.eq(entry.ppn | (key2 & Cat(entry.mask,
                                                           Const(0, VPN_BITS - MASK_BITS))))
                fault = Mux(write2, Mux(entry.w, 0, spec.FAULT_READONLY),
                            Mux(entry.r, 0, spec.FAULT_IOTLB_NO_READ))
                ways.append((match, entry, ppn, fault))

        def any_way(value):
            return functools.reduce(operator.or_, [Mux(mt, value(e, p, f), 0)
                                                   for mt, e, p, f in ways])

        m.d.comb += [
            self.hit.eq(Cat(*[mt for mt, _, _, _ in ways]).any()),
            self.ppn.eq(any_way(lambda e, p, f: p)),
            self.fault.eq(any_way(lambda e, p, f: f)),
            self.ok.eq(any_way(lambda e, p, f: f == 0)),
            self.r.eq(any_way(lambda e, p, f: e.r)),
            self.w.eq(any_way(lambda e, p, f: e.w)),
        ]

        # ---- A command's step, one cycle later: the ways that matched are cleared ------------
        match_a3 = Signal(WAYS)
        match_b3 = Signal(WAYS)
        # Area: the sets' valid bits as stage 2 read them. Nothing else writes a set between a
        # step's stages 2 and 3: a walk's steps visit disjoint sets, and the insert's write and
        # the next command come after the last step's stage 3.
        v_a3 = Signal(WAYS, name="v_a3")
        v_b3 = Signal(WAYS, name="v_b3")
        set_a3, set_b3 = Signal(sb, name="set_a3"), Signal(sb, name="set_b3")
        step3 = Signal()
        same3 = Signal()
        m.d.sync += [
            match_a3.eq(Cat(*[mt for mt, _, _, _ in ways[:WAYS]])),
            match_b3.eq(Cat(*[mt for mt, _, _, _ in ways[WAYS:]])),
            set_a3.eq(set_a2), set_b3.eq(set_b2), step3.eq(step2), same3.eq(same),
            v_a3.eq(v_a), v_b3.eq(v_b),
        ]
        removed = Signal(range(2 * WAYS + 1))
        m.d.comb += removed.eq(sum(match_a3) + sum(match_b3))
        counted = Signal(32)
        m.d.comb += ctrl.invalidated.eq(counted)
        with m.If(step3 & (op != spec.IOTLB_CMD_INSERT)):
            m.d.sync += counted.eq(counted + removed)

        # The insert's way (VICTIM, from the valid bits once its overlaps are cleared): the
        # lowest invalid one of its set, else the one the set's pointer names; written in WRITE.
        t_valid = valid.word_select(c_set, WAYS)
        t_rr = rr.word_select(c_set, wb)
        victim = Signal(wb)
        m.d.comb += victim.eq(t_rr)
        for w in reversed(range(WAYS)):
            with m.If(~t_valid[w]):
                m.d.comb += victim.eq(w)
        w_way = Signal(WAYS)  # the chosen way, one-hot
        w_bits = Signal(WAYS)  # the set's valid bits with it
        with m.If(choosing):
            m.d.sync += [w_way.eq(1 << victim), w_bits.eq(t_valid | (1 << victim))]
            with m.If(t_valid.all()):
                m.d.sync += rr.word_select(c_set, wb).eq(t_rr + 1)
        m.d.comb += [wr.addr.eq(c_set), wr.data.eq(Cat(*[pack(new)] * WAYS))]
        with m.If(writing):
            m.d.comb += wr.en.eq(w_way)

        # The valid bits change one or two sets at a time: a step's two sets (the ways that
        # matched cleared), or the insert's set. Each set takes its new bits from one of two
        # shared sources, so a valid bit costs a multiplexer, not a decoder.
        set_1, bits_1, en_1 = Signal(sb), Signal(WAYS), Signal()
        m.d.comb += [
            en_1.eq(step3 | writing),
            set_1.eq(Mux(writing, c_set, set_a3)),
            bits_1.eq(Mux(writing, w_bits, v_a3 & ~match_a3)),
        ]
        bits_2 = Signal(WAYS)
        m.d.comb += bits_2.eq(v_b3 & ~match_b3)
        for n in range(S):
            with m.If(en_1 & (set_1 == n)):
                m.d.sync += valid.word_select(n, WAYS).eq(bits_1)
            with m.Elif(step3 & ~same3 & (set_b3 == n)):
                m.d.sync += valid.word_select(n, WAYS).eq(bits_2)
        return m
