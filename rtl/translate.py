"""Handle translation unit: the on-chip grant table and the permission check.

Every address the device puts on ``m_axi`` in handle mode passes through :class:`TranslationUnit`.
The checks and their order are those of ``docs/architecture.md`` ("Handles and translation"),
which follows Xen's ``grant_entry_v1`` (``include/public/grant_table.h``) and Linux's grant DMA
address format (``drivers/xen/grant-dma-ops.c``).
"""


from amaranth import Module, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from models import spec

from .params import check_entries

__all__ = ["GrantEntry", "PassThroughUnit", "TranslationUnit"]


class GrantEntry(data.Struct):
    """Xen ``grant_entry_v1``: word 0 is ``flags | domid << 16``, word 1 is ``frame``."""

    flags: 16
    domid: 16
    frame: 32


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
    req_valid, req_vaddr, req_write : In
        One lookup request per cycle at most.
    resp_valid, resp_paddr, resp_fault : Out
        The result, exactly two cycles after the request (``resp_fault`` is 0 or a fault cause
        from ``models.spec``), checked against ``handle_mode`` and ``domid`` as they are in
        that cycle. ``resp_paddr`` is only meaningful when ``resp_fault`` is 0.
    tbl_addr, tbl_wdata, tbl_wen, tbl_rdata :
        The privileged port's access to the table: byte write enables, read data one cycle
        after ``tbl_addr``.

    A lookup reads the entry as it is in the cycle of the request; a table write in that same
    cycle is seen by the next lookup.
    """

    def __init__(self, entries: int = spec.DEFAULT_ENTRIES):
        self._entries = check_entries(entries)
        self._ref_bits = max(1, ceil_log2(entries))
        super().__init__({
            "handle_mode": In(1),
            "domid": In(16),
            "req_valid": In(1),
            "req_vaddr": In(64),
            "req_write": In(1),
            "resp_valid": Out(1),
            "resp_paddr": Out(64),
            "resp_fault": Out(4),
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

    def _out_of_range(self, ref):
        """``ref >= entries``, as "a bit above the table's index is set" (a wide OR) or, when
        ``entries`` is not a power of two, a compare of the index bits only: no 51-bit carry
        chain on the lookup path (issue 5, Fmax)."""
        high = ref[self._ref_bits:].any()
        if self._entries == 1 << self._ref_bits:
            return high
        return high | (ref[:self._ref_bits] >= self._entries)

    def elaborate(self, platform):
        m = Module()
        m.submodules.table = table = memory.Memory(
            shape=unsigned(64), depth=self._entries, init=[])
        lookup = table.read_port()
        hv_read = table.read_port()
        hv_write = table.write_port(granularity=8)

        ref = Signal(51)
        m.d.comb += [
            ref.eq(self.req_vaddr[spec.PAGE_SHIFT:63]),
            lookup.addr.eq(ref),
            hv_read.addr.eq(self.tbl_addr),
            self.tbl_rdata.eq(hv_read.data),
            hv_write.addr.eq(self.tbl_addr),
            hv_write.data.eq(self.tbl_wdata),
            hv_write.en.eq(self.tbl_wen),
        ]

        # Stage 1: the request, registered beside the table read.
        valid = Signal()
        vaddr = Signal(64)
        write = Signal()
        m.d.sync += [
            valid.eq(self.req_valid),
            vaddr.eq(self.req_vaddr),
            write.eq(self.req_write),
        ]
        # Stage 2: the entry as read, registered straight out of the block RAM (whose clock to
        # output is most of a 10 ns cycle on an ECP5), with the request beside it.
        valid2 = Signal()
        vaddr2 = Signal(64)
        write2 = Signal()
        raw = Signal(64)
        not_handle = Signal()
        out_of_range = Signal()
        m.d.sync += [valid2.eq(valid), vaddr2.eq(vaddr), write2.eq(write), raw.eq(lookup.data),
                     # the checks that need no entry, beside the table read
                     not_handle.eq(~vaddr[63]),
                     out_of_range.eq(self._out_of_range(vaddr[spec.PAGE_SHIFT:63]))]

        # The check (docs/architecture.md, first failing check wins), from registers.
        entry = GrantEntry(raw)
        fault = Signal(4)
        with m.If(~self.handle_mode):
            m.d.comb += fault.eq(spec.FAULT_NONE)
        with m.Elif(not_handle):
            m.d.comb += fault.eq(spec.FAULT_NOT_HANDLE)
        with m.Elif(out_of_range):
            m.d.comb += fault.eq(spec.FAULT_REF_RANGE)
        with m.Elif(entry.flags[0:2] != spec.GTF_permit_access):
            m.d.comb += fault.eq(spec.FAULT_NOT_PERMITTED)
        with m.Elif(entry.domid != self.domid):
            m.d.comb += fault.eq(spec.FAULT_WRONG_DOMAIN)
        with m.Elif(write2 & entry.flags[2]):
            m.d.comb += fault.eq(spec.FAULT_READONLY)

        m.d.comb += [
            self.resp_valid.eq(valid2),
            self.resp_fault.eq(fault),
        ]
        with m.If(self.handle_mode):
            m.d.comb += self.resp_paddr.eq(entry.frame << spec.PAGE_SHIFT
                                           | vaddr2[:spec.PAGE_SHIFT])
        with m.Else():
            m.d.comb += self.resp_paddr.eq(vaddr2)
        return m


class PassThroughUnit(TranslationUnit):
    """:class:`TranslationUnit`'s ports with no table and no check: the GPA-only device.

    ``resp_paddr`` is the request's ``req_vaddr`` two cycles later, ``resp_fault`` is always 0
    and ``tbl_rdata`` always 0. Used by ``VirtioBlkHandle(translation=False)``, whose area and
    Fmax beside the device's are the cost of translation (``make fpga-report``).
    """

    def elaborate(self, platform):
        m = Module()
        valid = Signal()
        vaddr = Signal(64)
        valid2 = Signal()
        vaddr2 = Signal(64)
        m.d.sync += [valid.eq(self.req_valid), vaddr.eq(self.req_vaddr),
                     valid2.eq(valid), vaddr2.eq(vaddr)]
        m.d.comb += [self.resp_valid.eq(valid2), self.resp_paddr.eq(vaddr2),
                     self.resp_fault.eq(0), self.tbl_rdata.eq(0)]
        return m
