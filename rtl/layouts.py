"""Amaranth forms of the virtio and Xen structures, derived from ``models/virtio.py``.

A field added to a :class:`models.virtio.Layout` appears here with no further edit, so the RTL,
the reference model and the drivers read the same bytes the same way.
"""

from __future__ import annotations

from amaranth.lib import data

from models import virtio

__all__ = ["BlkHeader", "Descriptor", "GrantEntry", "UsedElem", "struct_layout"]


def struct_layout(layout: virtio.Layout) -> data.StructLayout:
    """The ``data.StructLayout`` of ``layout``: its fields in memory order from bit 0, as the
    structure's bytes read as one little-endian integer."""
    if not isinstance(layout, virtio.Layout):
        raise TypeError(f"Layout must be a models.virtio.Layout, not {layout!r}")
    return data.StructLayout({name: bits for name, bits in layout.fields})


Descriptor = struct_layout(virtio.DESC)
BlkHeader = struct_layout(virtio.BLK_HEADER)
UsedElem = struct_layout(virtio.USED_ELEM)
GrantEntry = struct_layout(virtio.GRANT_ENTRY)
