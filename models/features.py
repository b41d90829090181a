"""The build-time feature set of a device: what it offers and the configuration it announces.

Each feature of issue 17 is a build parameter (all on by default), shared by the RTL
(``rtl.top.VirtioBlkHandle``), the reference model (``models.device.ReferenceDevice``) and the
benches (``tb.runner.DeviceConfig``), so that the three agree on the offered bits and on every
configuration field (virtio 1.2 section 5.2.4; ``models/regmap.py`` names them). Written from
the specification; nothing here knows how either side implements a feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from models import spec

__all__ = ["Features"]


@dataclass(frozen=True)
class Features:
    """What a build offers.

    ``indirect``: VIRTIO_F_INDIRECT_DESC. ``event_idx``: VIRTIO_RING_F_EVENT_IDX.
    ``seg_max``: VIRTIO_BLK_F_SEG_MAX with this value (``None``: :func:`spec.default_seg_max`;
    0: not offered, and no segment limit). ``size_max``: VIRTIO_BLK_F_SIZE_MAX with this value in
    bytes (0: not offered, no limit). ``blk_size``: VIRTIO_BLK_F_BLK_SIZE (512). ``discard``,
    ``write_zeroes``: VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES (one segment a request, up
    to the whole disk).
    """

    indirect: bool = True
    event_idx: bool = True
    seg_max: int | None = None
    size_max: int = spec.DEFAULT_SIZE_MAX
    blk_size: bool = True
    discard: bool = True
    write_zeroes: bool = True

    def __post_init__(self):
        for name in ("indirect", "event_idx", "blk_size", "discard", "write_zeroes"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, not {getattr(self, name)!r}")
        if self.seg_max is not None and (not isinstance(self.seg_max, int)
                                         or isinstance(self.seg_max, bool)
                                         or not 0 <= self.seg_max <= 0xFFFF):
            raise ValueError(f"seg_max must be None or an integer in [0, 65535], "
                             f"not {self.seg_max!r}")
        if (not isinstance(self.size_max, int) or isinstance(self.size_max, bool)
                or not (self.size_max == 0 or 512 <= self.size_max <= 0xFFFF_FFFF)):
            raise ValueError(f"size_max must be 0 or an integer in [512, 2**32 - 1], "
                             f"not {self.size_max!r}")

    @classmethod
    def none(cls) -> Features:
        """The foundation's device: none of issue 17's features."""
        return cls(indirect=False, event_idx=False, seg_max=0, size_max=0, blk_size=False,
                   discard=False, write_zeroes=False)

    def seg_limit(self, queue_num_max: int) -> int:
        """SEG_MAX's value (0: not offered)."""
        if self.seg_max is None:
            return spec.default_seg_max(queue_num_max)
        return self.seg_max

    def offered(self, queue_num_max: int) -> int:
        """The feature bits offered in GPA mode (ACCESS_PLATFORM comes with the handle modes)."""
        bits = spec.BASE_FEATURES
        for on, bit in ((self.indirect, spec.VIRTIO_F_INDIRECT_DESC),
                        (self.event_idx, spec.VIRTIO_RING_F_EVENT_IDX),
                        (self.seg_limit(queue_num_max) != 0, spec.VIRTIO_BLK_F_SEG_MAX),
                        (self.size_max != 0, spec.VIRTIO_BLK_F_SIZE_MAX),
                        (self.blk_size, spec.VIRTIO_BLK_F_BLK_SIZE),
                        (self.discard, spec.VIRTIO_BLK_F_DISCARD),
                        (self.write_zeroes, spec.VIRTIO_BLK_F_WRITE_ZEROES)):
            if on:
                bits |= 1 << bit
        return bits

    def params(self, queue_num_max: int, disk_bytes: int) -> dict[str, int]:
        """The register map's parameters these features name (``models.regmap.GUEST``)."""
        dwz = spec.dwz_max_sectors(disk_bytes)
        return {
            "device_features": self.offered(queue_num_max),
            "size_max": self.size_max,
            "seg_max": self.seg_limit(queue_num_max),
            "blk_size": spec.SECTOR_SIZE if self.blk_size else 0,
            "max_discard_sectors": dwz if self.discard else 0,
            "max_discard_seg": spec.DWZ_MAX_SEG if self.discard else 0,
            "discard_sector_alignment": spec.DISCARD_SECTOR_ALIGNMENT if self.discard else 0,
            "max_write_zeroes_sectors": dwz if self.write_zeroes else 0,
            "max_write_zeroes_seg": spec.DWZ_MAX_SEG if self.write_zeroes else 0,
        }

    @property
    def tag(self) -> str:
        """A short name of what differs from the default (build directories)."""
        default = Features()
        parts = []
        for name in ("indirect", "event_idx", "blk_size", "discard", "write_zeroes"):
            if getattr(self, name) != getattr(default, name):
                parts.append(f"no{name.replace('_', '')}")
        if self.seg_max != default.seg_max:
            parts.append(f"sg{self.seg_max}")
        if self.size_max != default.size_max:
            parts.append(f"sz{self.size_max}")
        return "_".join(parts)
