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

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from models import spec

from .params import check_entries

__all__ = ["GrantEntry", "PassThroughUnit", "TranslationUnit", "lookup_fields"]


class GrantEntry(data.Struct):
    """Xen ``grant_entry_v1``: word 0 is ``flags | domid << 16``, word 1 is ``frame``."""

    flags: 16
    domid: 16
    frame: 32


def lookup_fields(vpage, ref_bits: int):
    """``(ref, high, handle)`` of a virtual page number ``vpage`` (bits 63:12 of an address):
    the table index, "a reference bit above the table's index bits is set", and bit 63."""
    return (vpage[:ref_bits], vpage[ref_bits:51].any(), vpage[51])


class TranslationUnit(wiring.Component):
    """Grant table in block RAM plus the handle check.

    Parameters
    ----------
    entries : int
        Number of grant entries (table depth).

    Members
    -------
    handle_mode, domid : In
        Configuration from the privileged register file.
    cfg_changed : In
        HV_CTRL or HV_DOMID is written in this cycle.
    req_ref : In
        The table is read every cycle at ``req_ref`` (bits ``12 + ref_bits - 1 : 12`` of the
        virtual address): a lookup starts in every cycle.
    keep, req_high, req_handle, req_write : In
        ``keep``: the lookup started in the previous cycle becomes the unit's answer. Two cycles
        after ``keep`` (three after the table read) the ``resp_*`` registers hold its verdict,
        and they hold it until the next kept lookup answers. With ``keep`` come the fields of
        the request that need the whole address, so that they can come from registers:
        ``req_high``, a reference bit above the table's index bits is set (bits ``62:12 +
        ref_bits``; the reference is outside the table), ``req_handle``, bit 63, and
        ``req_write``, the direction.
    resp_new : Out
        The ``resp_*`` registers took a new answer at the start of this cycle.
    resp_fault, resp_ok, resp_frame, resp_mode : Out
        ``resp_fault`` is 0 or the cause of the first failing check, against ``handle_mode``
        and ``domid`` as they were in the check's cycle (two after the table read, one after
        ``keep``), and ``resp_ok`` is
        ``resp_fault == 0`` (a flip-flop of its own); ``resp_frame`` is the entry's
        frame (meaningful when ``resp_fault`` is 0 and ``resp_mode`` is 1); ``resp_mode`` is
        the mode the check was made in (0: GPA mode, the address passes through).
    resp_stale : Out
        Since the table read of the current answer, its entry was written (in handle mode), or
        HV_CTRL or HV_DOMID was: the answer must not be used for a new burst (grant
        revocation, docs/architecture.md). A write in the cycle of the read itself counts: the
        read sees the entry as it was before the write.
    tbl_addr, tbl_wdata, tbl_wen, tbl_rdata :
        The privileged port's access to the table: byte write enables, read data one cycle
        after ``tbl_addr``.
    """

    def __init__(self, entries: int = spec.DEFAULT_ENTRIES):
        self._entries = check_entries(entries)
        self._ref_bits = max(1, ceil_log2(entries))
        super().__init__({
            "handle_mode": In(1),
            "domid": In(16),
            "cfg_changed": In(1),
            "req_ref": In(self._ref_bits),
            "req_high": In(1),
            "req_handle": In(1),
            "req_write": In(1),
            "keep": In(1),
            "resp_new": Out(1),
            "resp_fault": Out(4),
            "resp_ok": Out(1),
            "resp_frame": Out(32),
            "resp_mode": Out(1),
            "resp_stale": Out(1),
            "tbl_addr": In(self._ref_bits),
            "tbl_wdata": In(64),
            "tbl_wen": In(8),
            "tbl_rdata": Out(64),
        })

    @property
    def entries(self) -> int:
        return self._entries

    @property
    def ref_bits(self) -> int:
        return self._ref_bits

    def _written(self, ref):
        """Entry ``ref`` is written in this cycle."""
        return self.tbl_wen.any() & (self.tbl_addr == ref)

    def elaborate(self, platform):
        m = Module()
        bits = self._ref_bits
        m.submodules.table = table = memory.Memory(
            shape=unsigned(64), depth=self._entries, init=[])
        lookup = table.read_port()
        hv_read = table.read_port()
        hv_write = table.write_port(granularity=8)
        m.d.comb += [
            lookup.addr.eq(self.req_ref),
            hv_read.addr.eq(self.tbl_addr),
            self.tbl_rdata.eq(hv_read.data),
            hv_write.addr.eq(self.tbl_addr),
            hv_write.data.eq(self.tbl_wdata),
            hv_write.en.eq(self.tbl_wen),
        ]

        # Stage 1 (the cycle after the table read, that of ``keep``): the reference, and whether
        # its entry was written in the read's cycle (the read saw it as it was before), from the
        # write registered beside it: nothing but the table's address port waits for req_ref.
        ref1 = Signal(bits)
        wr_addr1 = Signal(bits)
        wr_any1 = Signal()
        m.d.sync += [ref1.eq(self.req_ref), wr_addr1.eq(self.tbl_addr),
                     wr_any1.eq(self.tbl_wen.any())]
        tbl_stale1 = Signal()
        m.d.comb += tbl_stale1.eq(wr_any1 & (wr_addr1 == ref1))

        # Stage 2: the entry registered straight out of the block RAM, for a kept lookup, with
        # the checks that need no entry.
        valid2 = Signal()
        raw = Signal(64)
        ref2 = Signal(bits)
        not_handle2 = Signal()
        out_of_range2 = Signal()
        write2 = Signal()
        tbl_stale2 = Signal()
        oor = self.req_high
        if self._entries != 1 << bits:
            oor = oor | (ref1 >= self._entries)
        m.d.sync += [valid2.eq(self.keep), raw.eq(lookup.data), ref2.eq(ref1),
                     not_handle2.eq(~self.req_handle), out_of_range2.eq(oor),
                     write2.eq(self.req_write), tbl_stale2.eq(tbl_stale1 | self._written(ref1))]

        # The check (docs/architecture.md, first failing check wins), from registers only.
        entry = GrantEntry(raw)
        fault = Signal(4)
        with m.If(~self.handle_mode):
            m.d.comb += fault.eq(spec.FAULT_NONE)
        with m.Elif(not_handle2):
            m.d.comb += fault.eq(spec.FAULT_NOT_HANDLE)
        with m.Elif(out_of_range2):
            m.d.comb += fault.eq(spec.FAULT_REF_RANGE)
        with m.Elif(entry.flags[0:2] != spec.GTF_permit_access):
            m.d.comb += fault.eq(spec.FAULT_NOT_PERMITTED)
        with m.Elif(entry.domid != self.domid):
            m.d.comb += fault.eq(spec.FAULT_WRONG_DOMAIN)
        with m.Elif(write2 & entry.flags[2]):
            m.d.comb += fault.eq(spec.FAULT_READONLY)

        # Stage 3: the answer, held until the next kept lookup answers, and its staleness; every
        # output is a flip-flop of its own (the DMA engine decides on them in one cycle).
        resp_ref = Signal(bits)
        m.d.sync += self.resp_new.eq(valid2)
        with m.If(valid2):
            m.d.sync += [
                self.resp_fault.eq(fault), self.resp_ok.eq(fault == spec.FAULT_NONE),
                self.resp_frame.eq(entry.frame), self.resp_mode.eq(self.handle_mode),
                resp_ref.eq(ref2),
                # a table write counts in handle mode only (GPA mode reads no entry)
                self.resp_stale.eq(self.cfg_changed
                                   | (self.handle_mode
                                      & (tbl_stale2 | self._written(ref2)))),
            ]
        with m.Elif(self.cfg_changed | (self.resp_mode & self._written(resp_ref))):
            m.d.sync += self.resp_stale.eq(1)
        return m


class PassThroughUnit(TranslationUnit):
    """:class:`TranslationUnit`'s ports with no table and no check: the GPA-only device.

    Every answer is "GPA mode, no fault" (``resp_mode`` 0: the DMA engine uses the virtual
    address as it is), with the same timing; ``tbl_rdata`` is always 0. Used by
    ``VirtioBlkHandle(translation=False)``, whose area and Fmax beside the device's are the cost
    of translation (``make fpga-report``).
    """

    def elaborate(self, platform):
        m = Module()
        valid2 = Signal()
        m.d.sync += [valid2.eq(self.keep), self.resp_new.eq(valid2)]
        m.d.comb += [self.resp_fault.eq(0), self.resp_ok.eq(1), self.resp_frame.eq(0),
                     self.resp_mode.eq(0), self.resp_stale.eq(0), self.tbl_rdata.eq(0)]
        return m
