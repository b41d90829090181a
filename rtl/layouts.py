"""Amaranth forms of the virtio and Xen structures, derived from ``models/virtio.py``.

A field added to a :class:`models.virtio.Layout` appears here with no further edit, so the RTL,
the reference model and the drivers read the same bytes the same way. Flag words are layouts
of their bits, placed by the masks in ``models/spec.py``.
"""

from __future__ import annotations

from amaranth import unsigned
from amaranth.lib import data

from models import spec, virtio

__all__ = ["BlkHeader", "DescFlags", "Descriptor", "DwzSegment", "GrantEntry", "GrantFlags",
           "VirtualPage", "flags_layout", "struct_layout"]


def struct_layout(layout: virtio.Layout, **shapes) -> data.StructLayout:
    """The ``data.StructLayout`` of ``layout``: its fields in memory order from bit 0, as the
    structure's bytes read as one little-endian integer (``shapes``: a field's own layout)."""
    if not isinstance(layout, virtio.Layout):
        raise TypeError(f"Layout must be a models.virtio.Layout, not {layout!r}")
    return data.StructLayout({name: shapes.get(name, bits) for name, bits in layout.fields})


def flags_layout(width: int, masks: dict[str, int]) -> data.FlexibleLayout:
    """A ``width``-bit flag word whose field ``name`` is the bits set in ``masks[name]``."""
    def field(mask):
        low = (mask & -mask).bit_length() - 1
        return data.Field(unsigned(mask.bit_length() - low), low)
    return data.FlexibleLayout(width, {name: field(mask) for name, mask in masks.items()})


# virtio 1.2 section 2.7.5; Xen include/public/grant_table.h (GTF_type_mask, GTF_readonly)
DescFlags = flags_layout(16, {"next": spec.VIRTQ_DESC_F_NEXT, "write": spec.VIRTQ_DESC_F_WRITE,
                              "indirect": spec.VIRTQ_DESC_F_INDIRECT})
GrantFlags = flags_layout(16, {"type": spec.GTF_TYPE_MASK, "readonly": spec.GTF_readonly})
Descriptor = struct_layout(virtio.DESC, flags=DescFlags)
BlkHeader = struct_layout(virtio.BLK_HEADER)
DwzSegment = struct_layout(virtio.DWZ_SEGMENT)
GrantEntry = struct_layout(virtio.GRANT_ENTRY, flags=GrantFlags)
# Bits 63:12 of a DMA address (spec.make_handle): the grant reference and the handle bit.
VirtualPage = data.StructLayout({"ref": spec.GRANT_REF_MASK.bit_length(), "handle": 1})
assert spec.PAGE_SHIFT + VirtualPage.size == 64 and spec.HANDLE_BIT == 1 << 63
