"""The device without its translation unit ("GPA-only"), for the area and Fmax comparison.

``make fpga-report`` builds every configuration twice: the device as it is, and this form, in
which the grant table and the handle check are replaced by a pass-through with the same
interface and the same one-cycle latency (physical address = virtual address, never a fault,
the table reads 0). The difference between the two is the cost of the translation unit itself.

The device's top level has no parameter for this yet, so :class:`VirtioBlkHandleGpaOnly`
substitutes the translation unit while the parent elaborates (``rtl.top`` looks the class up
by name at elaboration). It is a report-only device: in handle mode it would not check
anything.
"""

from __future__ import annotations

import contextlib

from amaranth import Module, Signal

from .. import top as _top
from ..translate import TranslationUnit

__all__ = ["GpaPassThrough", "VirtioBlkHandleGpaOnly"]


class GpaPassThrough(TranslationUnit):
    """:class:`rtl.translate.TranslationUnit`'s ports, with no table and no check.

    ``resp_paddr`` is the request's ``req_vaddr`` one cycle later, ``resp_fault`` is always 0
    and ``tbl_rdata`` always 0.
    """

    def elaborate(self, platform):
        m = Module()
        valid = Signal()
        vaddr = Signal(64)
        m.d.sync += [valid.eq(self.req_valid), vaddr.eq(self.req_vaddr)]
        m.d.comb += [self.resp_valid.eq(valid), self.resp_paddr.eq(vaddr),
                     self.resp_fault.eq(0), self.tbl_rdata.eq(0)]
        return m


@contextlib.contextmanager
def _without_translation():
    saved = _top.TranslationUnit
    _top.TranslationUnit = GpaPassThrough
    try:
        yield
    finally:
        _top.TranslationUnit = saved


class VirtioBlkHandleGpaOnly(_top.VirtioBlkHandle):
    """:class:`rtl.top.VirtioBlkHandle` with :class:`GpaPassThrough` as its translation unit."""

    def elaborate(self, platform):
        if getattr(_top, "TranslationUnit", None) is not TranslationUnit:
            raise RuntimeError("rtl.top no longer elaborates rtl.translate.TranslationUnit "
                               "by name: update rtl/board/gpa.py")
        with _without_translation():
            m = super().elaborate(platform)
        return m
