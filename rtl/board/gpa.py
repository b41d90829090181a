"""The device without its translation unit ("GPA-only"), for the area and Fmax comparison.

``make fpga-report`` builds every configuration twice: the device as it is, and
``VirtioBlkHandle(translation=False)``, in which the grant table and the handle check are
replaced by a pass-through with the same interface and the same one-cycle latency
(:class:`rtl.translate.PassThroughUnit`). The difference between the two is the cost of
translation.
"""

from __future__ import annotations

from ..top import VirtioBlkHandle

__all__ = ["VirtioBlkHandleGpaOnly"]


def VirtioBlkHandleGpaOnly(**params) -> VirtioBlkHandle:
    """``VirtioBlkHandle(translation=False, **params)``."""
    return VirtioBlkHandle(translation=False, **params)
