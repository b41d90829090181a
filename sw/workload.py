"""Seeded request workloads and the results the contract predicts for them.

The bench runs the same workload against the reference model and the RTL; tests compare the
driver's results with :class:`ExpectedDisk`, which is written from docs/architecture.md
("Ring engine", step 5) and never looks at a device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from models import spec
from sw.driver import BlkRequest


@dataclass(frozen=True)
class Expected:
    status: int
    used_len: int
    data: bytes | None  # prefix of the writable data the device must have written


class ExpectedDisk:
    """The RAM disk as the driver expects it; ``expect`` applies OUT requests."""

    def __init__(self, size: int = spec.DEFAULT_DISK_BYTES) -> None:
        self.data = bytearray(spec.ramdisk_init(size))

    def expect(self, req: BlkRequest) -> Expected:
        readable = spec.BLK_HEADER_BYTES + (0 if req.data_writable else req.data_len)
        writable = 1 + (req.data_len if req.data_writable else 0)
        cap = len(self.data)
        if req.type in (spec.VIRTIO_BLK_T_IN, spec.VIRTIO_BLK_T_OUT):
            d = (writable - 1 if req.type == spec.VIRTIO_BLK_T_IN
                 else readable - spec.BLK_HEADER_BYTES)
            base = req.sector * spec.SECTOR_SIZE
            if d % spec.SECTOR_SIZE or base + d > cap:
                return Expected(spec.VIRTIO_BLK_S_IOERR, 1, None)
            if req.type == spec.VIRTIO_BLK_T_IN:
                return Expected(spec.VIRTIO_BLK_S_OK, d + 1, bytes(self.data[base : base + d]))
            assert req.data is not None
            self.data[base : base + d] = req.data
            return Expected(spec.VIRTIO_BLK_S_OK, 1, None)
        if req.type == spec.VIRTIO_BLK_T_FLUSH:
            return Expected(spec.VIRTIO_BLK_S_OK, 1, None)
        if req.type == spec.VIRTIO_BLK_T_GET_ID:
            n = min(spec.VIRTIO_BLK_ID_BYTES, writable - 1)
            return Expected(spec.VIRTIO_BLK_S_OK, n + 1, spec.DEVICE_SERIAL[:n])
        return Expected(spec.VIRTIO_BLK_S_UNSUPP, 1, None)


def _split(rng: random.Random, n: int, max_segments: int) -> list[int]:
    k = rng.randint(1, max_segments)
    cuts = sorted(rng.randint(0, n) for _ in range(k - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


def random_request(
    rng: random.Random,
    capacity_sectors: int,
    *,
    max_sectors: int = 8,
    max_segments: int = 4,
    errors: bool = True,
) -> BlkRequest:
    """One request with a random type, size and descriptor layout.

    ``errors`` mixes in requests the device must answer with IOERR/UNSUPP (unaligned length,
    beyond the disk, unknown type). Zero-length and page-crossing segments are included.
    """
    roll = rng.random()
    if errors and roll < 0.06:
        kind = rng.choice(["unaligned", "beyond", "unsupp"])
        if kind == "unsupp":
            return BlkRequest(rng.choice([2, 3, 11, 0xFFFF_FFFF]), rng.randrange(capacity_sectors))
        n = rng.randint(1, max_sectors) * spec.SECTOR_SIZE
        sector = capacity_sectors - rng.randint(0, n // spec.SECTOR_SIZE - 1)
        if kind == "unaligned":
            n = rng.randint(1, max_sectors * spec.SECTOR_SIZE - 1) | 1
            sector = rng.randrange(capacity_sectors)
        if rng.random() < 0.5:
            return BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=n)
        return BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=rng.randbytes(n))
    if roll < 0.12:
        return BlkRequest(spec.VIRTIO_BLK_T_FLUSH, header_segments=_hsplit(rng))
    if roll < 0.18:
        n = rng.choice([spec.VIRTIO_BLK_ID_BYTES, rng.randint(1, 40)])
        return BlkRequest(spec.VIRTIO_BLK_T_GET_ID, length=n,
                          status_with_data=rng.random() < 0.3)
    count = rng.randint(1, min(max_sectors, capacity_sectors))
    sector = rng.randint(0, capacity_sectors - count)
    n = count * spec.SECTOR_SIZE
    segs = _split(rng, n, max_segments)
    offs = [rng.choice([0, 0, rng.randrange(spec.PAGE_SIZE), spec.PAGE_SIZE - rng.randint(1, 64)])
            for _ in segs]
    if roll < 0.59:
        return BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=n, segments=segs, offsets=offs,
                          status_with_data=rng.random() < 0.2,
                          header_segments=_hsplit(rng))
    hwd = rng.random() < 0.2
    return BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=rng.randbytes(n), segments=segs,
                      offsets=offs, header_with_data=hwd,
                      header_segments=None if hwd else _hsplit(rng))


def _hsplit(rng: random.Random) -> list[int] | None:
    if rng.random() < 0.8:
        return None
    return _split(rng, spec.BLK_HEADER_BYTES, 3)


def random_requests(
    seed: int,
    count: int,
    capacity_sectors: int,
    *,
    max_sectors: int = 8,
    max_segments: int = 4,
    errors: bool = True,
) -> list[BlkRequest]:
    """``count`` requests from :func:`random_request` with ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [
        random_request(rng, capacity_sectors, max_sectors=max_sectors,
                       max_segments=max_segments, errors=errors)
        for _ in range(count)
    ]
