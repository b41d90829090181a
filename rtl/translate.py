"""Handle translation unit: the on-chip grant table and the permission check.

Every burst the device puts on ``m_axi`` is checked by :class:`TranslationUnit`. The checks and
their order are those of ``docs/architecture.md`` ("Handles and translation"), which follows
Xen's ``grant_entry_v1`` (``include/public/grant_table.h``) and Linux's grant DMA address format
(``drivers/xen/grant-dma-ops.c``).

The unit is a three-stage pipeline so that nothing downstream ever waits on a combinational
check (issue 5: the unit must stay off the critical path): the table is read in the request's
cycle, the entry is registered straight out of the block RAM (whose clock-to-output is most of a
10 ns cycle on an ECP5), the check is computed from registers and its verdict registered again.
The DMA engine hides the three cycles by looking up the address a command will use one cycle
before the command is handed over (``docs/timing.md``).
"""

import functools
import operator

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2

from models import spec

from .interfaces import IotlbCtrlSignature, LookupSignature, TableSignature
from .iotlb import Iotlb, check_iotlb_entries, large_set_shift
from .layouts import GrantEntry, VirtualPage
from .params import check_entries

__all__ = ["GrantEntry", "PassThroughUnit", "TranslationUnit", "lookup_fields"]


def lookup_fields(vpage, ref_bits: int):
    """``(ref, high, handle)`` of a virtual page number ``vpage`` (bits 63:12 of an address):
    the table index, "a reference bit above the table's index bits is set", and bit 63."""
    page = VirtualPage(vpage)
    return (page.ref[:ref_bits], page.ref[ref_bits:].any(), page.handle)


class TranslationUnit(wiring.Component):
    """Grant table in block RAM plus the handle check.

    Parameters
    ----------
    entries : int
        Number of grant entries (table depth).

    Members
    -------
    table : In(:func:`~rtl.interfaces.TableSignature`)
        From the privileged register file: ``handle_mode`` and ``domid``; ``cfg_changed``,
        HV_CTRL or HV_DOMID is written in this cycle; the table access ``addr``, ``wdata``,
        ``wen`` (byte write enables) and ``rdata`` (one cycle after ``addr``).
    lookup : In(:func:`~rtl.interfaces.LookupSignature`)
        From the DMA engine. The table is read every cycle at ``ref`` (bits
        ``12 + ref_bits - 1 : 12`` of the virtual address): a lookup starts in every cycle.
        ``keep``: the lookup started in the previous cycle becomes the unit's answer. Two
        cycles after ``keep`` (three after the table read) the answer registers hold its
        verdict until the next kept lookup answers. With ``keep`` come the fields of the
        request that need the whole address, so that they can come from registers: ``high``,
        a reference bit above the table's index bits is set (bits ``62:12 + ref_bits``; the
        reference is outside the table), ``handle``, bit 63, and ``write``, the direction.
        The answer: ``new``, the registers took a new answer at the start of this cycle;
        ``fault``, 0 or the cause of the first failing check, against ``handle_mode`` and
        ``domid`` as they were in the check's cycle (two after the table read, one after
        ``keep``); ``ok``, ``fault == 0`` (a flip-flop of its own); ``frame``, the entry's
        frame (meaningful when ``ok`` and ``mode``); ``mode``, the mode the check was made in
        (0: GPA mode, the address passes through); ``stale``: since the table read of the
        answer, its entry was written (in handle mode), or HV_CTRL or HV_DOMID was: the answer
        must not be used for a new burst (grant revocation, docs/architecture.md). A write in
        the cycle of the read itself counts: the read sees the entry as it was before it.
    """

    def __init__(self, entries: int = spec.DEFAULT_ENTRIES, iotlb_entries: int = 0):
        self._entries = check_entries(entries)
        self._iotlb_entries = check_iotlb_entries(iotlb_entries)
        self._grant_bits = max(1, ceil_log2(entries))
        self._set_bits = ceil_log2(iotlb_entries // spec.IOTLB_WAYS) if iotlb_entries else 0
        # (the lookup's ``ref`` carries the IOTLB's small set too: page-number bits from 0)
        self._ref_bits = max(self._grant_bits, self._set_bits)
        members = {"lookup": In(LookupSignature(self._ref_bits, self._set_bits)),
                   "table": In(TableSignature(self._grant_bits))}
        if iotlb_entries:
            members["iotlb"] = In(IotlbCtrlSignature())
        super().__init__(members)

    @property
    def entries(self) -> int:
        return self._entries

    @property
    def ref_bits(self) -> int:
        return self._ref_bits

    @property
    def set_bits(self) -> int:
        """The IOTLB's set index width (0: no IOTLB)."""
        return self._set_bits

    def _written(self, ref):
        """Entry ``ref`` is written in this cycle."""
        return self.table.wen.any() & (self.table.addr == ref[:self._grant_bits])

    def elaborate(self, platform):
        m = Module()
        lk, tb = self.lookup, self.table
        bits = self._ref_bits
        m.submodules.table = table = memory.Memory(
            shape=unsigned(64), depth=self._entries, init=[])
        lookup = table.read_port()
        hv_read = table.read_port()
        hv_write = table.write_port(granularity=8)
        m.d.comb += [
            lookup.addr.eq(lk.ref[:self._grant_bits]),
            hv_read.addr.eq(tb.addr),
            tb.rdata.eq(hv_read.data),
            hv_write.addr.eq(tb.addr),
            hv_write.data.eq(tb.wdata),
            hv_write.en.eq(tb.wen),
        ]

        # Stage 1 (the cycle after the table read, that of ``keep``): the reference, and whether
        # its entry was written in the read's cycle (the read saw it as it was before), from the
        # write registered beside it: nothing but the table's address port waits for lookup.ref.
        ref1 = Signal(bits)
        wr_addr1 = Signal(bits)
        wr_any1 = Signal()
        m.d.sync += [ref1.eq(lk.ref), wr_addr1.eq(tb.addr),
                     wr_any1.eq(tb.wen.any())]
        tbl_stale1 = Signal()
        m.d.comb += tbl_stale1.eq(wr_any1 & (wr_addr1 == ref1))

        # Stage 2: the entry registered straight out of the block RAM, for a kept lookup, with
        # the checks that need no entry.
        valid2 = Signal()
        # Fmax: no reset, so that on an ECP5 the block RAM's output register holds it
        # (rtl/board/outreg.py); only a kept lookup (``valid2``, which the reset clears) takes it.
        raw = Signal(64, reset_less=True)
        ref2 = Signal(bits)
        not_handle2 = Signal()
        out_of_range2 = Signal()
        write2 = Signal()
        tbl_stale2 = Signal()
        oor = lk.high
        if self._entries != 1 << bits:
            oor = oor | (ref1 >= self._entries)
        m.d.sync += [valid2.eq(lk.keep), raw.eq(lookup.data), ref2.eq(ref1),
                     not_handle2.eq(~lk.handle), out_of_range2.eq(oor),
                     write2.eq(lk.write), tbl_stale2.eq(tbl_stale1 | self._written(ref1))]
        self._tbl_stale2 = tbl_stale2

        # The check (docs/architecture.md, first failing check wins), from registers only.
        # Each condition is written once: the cause takes the first that fails, and ``ok``
        # (Fmax) is the AND of their negations, not ``fault == FAULT_NONE`` through the
        # priority chain (3 LUT levels from ``raw`` where the chain took 7).
        entry = GrantEntry(raw)
        checks = [  # (fails, cause)
            (not_handle2, spec.FAULT_NOT_HANDLE),
            (out_of_range2, spec.FAULT_REF_RANGE),
            (entry.flags.type != spec.GTF_permit_access, spec.FAULT_NOT_PERMITTED),
            (entry.domid != tb.domid, spec.FAULT_WRONG_DOMAIN),
            (write2 & entry.flags.readonly, spec.FAULT_READONLY),
        ]
        assert spec.FAULT_NONE == 0 and all(cause != 0 for _, cause in checks)
        checking = tb.handle_mode  # (GPA mode reads no entry)
        fault = Signal(4)
        grant_ok = Signal()
        with m.If(~checking):
            m.d.comb += fault.eq(spec.FAULT_NONE)
        for fails, cause in checks:
            with m.Elif(fails):
                m.d.comb += fault.eq(cause)
        m.d.comb += grant_ok.eq(~checking
                                | ~functools.reduce(operator.or_, [f for f, _ in checks]))

        if self._iotlb_entries:
            self._iova(m, valid2, write2, ref2, fault, grant_ok, entry)
            return m

        # Stage 3: the answer, held until the next kept lookup answers, and its staleness; every
        # output is a flip-flop of its own (the DMA engine decides on them in one cycle).
        resp_ref = Signal(bits)
        m.d.sync += lk.new.eq(valid2)
        with m.If(valid2):
            m.d.sync += [
                lk.fault.eq(fault), lk.ok.eq(grant_ok),
                lk.frame.eq(entry.frame), lk.mode.eq(tb.handle_mode),
                resp_ref.eq(ref2),
                # a table write counts in handle mode only (GPA mode reads no entry)
                lk.stale.eq(tb.cfg_changed
                                   | (tb.handle_mode
                                      & (tbl_stale2 | self._written(ref2)))),
            ]
        with m.Elif(tb.cfg_changed | (lk.mode & self._written(resp_ref))):
            m.d.sync += lk.stale.eq(1)
        return m


    def _iova(self, m, valid2, write2, ref2, grant_fault, grant_ok, entry):
        """IOVA mode beside the grant check: the IOTLB looks up the same page in the same
        cycles (docs/iotlb.md), and stage 3 takes its verdict in mode 2. A miss is held
        (``lookup.miss``, ``iotlb.miss``: the ``hv_irq`` port) until the hypervisor resolves it:
        1, the answer turns stale (the DMA engine looks up again); 2, it turns into fault 10."""
        lk, tb, ctl = self.lookup, self.table, self.iotlb
        m.submodules.iotlb = iotlb = Iotlb(self._iotlb_entries)
        wiring.connect(m, wiring.flipped(ctl.cmd), iotlb.ctrl)
        sb = self._set_bits
        # Area: the page number of the answer is the IOTLB's key register (``key_q``); only the
        # page offset is registered here
        off2 = Signal(spec.PAGE_SHIFT)
        m.d.sync += off2.eq(Mux(lk.fast, lk.cvaddr, lk.vaddr)[:spec.PAGE_SHIFT])
        m.d.comb += [iotlb.small.eq(lk.ref[:sb]), iotlb.large.eq(lk.lset),
                     iotlb.large_fast.eq(lk.lset_fast), iotlb.large_sel.eq(lk.lset_sel),
                     iotlb.small_fast.eq(lk.sset_fast),
                     iotlb.key.eq(lk.vaddr[spec.PAGE_SHIFT:]),
                     iotlb.fast_key.eq(lk.cvaddr[spec.PAGE_SHIFT:]), iotlb.fast.eq(lk.fast)]
        assert large_set_shift() == 18

        iova = ctl.iova_mode
        m.d.comb += [iotlb.write.eq(lk.write), iotlb.enable.eq(iova)]
        # (the IOTLB answers nothing outside IOVA mode: its verdict ORs with the grant one)
        fault = Signal(4)
        m.d.comb += fault.eq(iotlb.fault | Mux(iova, 0, grant_fault))
        io_stale = iotlb.stale | iotlb.active

        # Stage 3, as the grant unit's, plus the IOTLB's verdict and the pending miss. The miss
        # is a field of the answer like ``ok`` (``miss``: the DMA engine waits, hv_irq is high),
        # so that the compare's result reaches one register; what the hypervisor reads of it
        # (MISS_IOVA, the count) follows a cycle later, from registers.
        resp_ref = Signal(self._ref_bits)
        io_answer = Signal()  # the held answer is an IOVA-mode one
        io_hit = Signal()
        miss = Signal()
        vaddr3 = Signal(64)  # the held answer's address
        write3 = Signal()
        miss_iova = Signal(64)
        hits = Signal(32)
        misses = Signal(32)
        m.d.comb += [lk.miss.eq(miss), ctl.miss.eq(miss), ctl.miss_write.eq(write3),
                     ctl.miss_iova.eq(miss_iova), ctl.hits.eq(hits), ctl.misses.eq(misses)]
        m.d.sync += lk.new.eq(valid2)
        with m.If(valid2):
            m.d.sync += [
                lk.fault.eq(fault),
                lk.ok.eq(iotlb.ok | (~iova & grant_ok)),
                lk.frame.eq(iotlb.ppn | Mux(iova, 0, entry.frame)),
                lk.mode.eq(tb.handle_mode | iova),
                # a stale answer is looked up again, not reported
                miss.eq(iova & ~iotlb.hit & ~io_stale & ~tb.cfg_changed & ~lk.cancel),
                resp_ref.eq(ref2), io_answer.eq(iova), io_hit.eq(iotlb.hit),
                vaddr3.eq(Cat(off2, iotlb.key_q)), write3.eq(write2),
                lk.stale.eq(tb.cfg_changed
                            | (tb.handle_mode & (self._tbl_stale2 | self._written(ref2)))
                            | (iova & io_stale)),
            ]
        with m.Elif(miss & (ctl.resolve == spec.MISS_RESOLVE_FAIL)):
            m.d.sync += [lk.fault.eq(spec.FAULT_IOTLB_FAILED), lk.ok.eq(0), lk.stale.eq(0),
                         miss.eq(0)]
        with m.Elif(miss & ((ctl.resolve == spec.MISS_RESOLVE_RETRY) | lk.cancel)):
            m.d.sync += [lk.stale.eq(1), miss.eq(0)]  # (MISS_RESOLVE = 3: nothing)
        with m.Elif(tb.cfg_changed | (lk.mode & ~io_answer & self._written(resp_ref))
                    | (io_answer & iotlb.active)):
            m.d.sync += lk.stale.eq(1)

        with m.If(lk.new & miss):  # a miss was raised
            m.d.sync += [miss_iova.eq(vaddr3), misses.eq(misses + 1)]
        with m.If(lk.used & io_answer & io_hit & ~lk.stale):
            m.d.sync += hits.eq(hits + 1)


class PassThroughUnit(TranslationUnit):
    """:class:`TranslationUnit`'s ports with no table and no check: the GPA-only device.

    Every answer is "GPA mode, no fault" (``lookup.mode`` 0: the DMA engine uses the virtual
    address as it is), constant, so the DMA engine built beside it (``lookups=False``) never
    waits for it; ``new`` keeps the translation unit's timing (statistics only);
    ``table.rdata`` is always 0. Used by
    ``VirtioBlkHandle(translation=False)``, whose area and Fmax beside the device's are the cost
    of translation (``make fpga-report``).
    """

    def elaborate(self, platform):
        m = Module()
        lk, tb = self.lookup, self.table
        valid2 = Signal()
        m.d.sync += [valid2.eq(lk.keep), lk.new.eq(valid2)]
        m.d.comb += [lk.fault.eq(0), lk.ok.eq(1), lk.frame.eq(0),
                     lk.mode.eq(0), lk.stale.eq(0), tb.rdata.eq(0)]
        return m
