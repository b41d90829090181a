"""Seeded request workloads and the results the contract predicts for them.

The bench runs the same workload against the reference model and the RTL; tests compare the
driver's results with :class:`ExpectedDisk`, which is written from docs/architecture.md
("Ring engine", step 5) and never looks at a device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from models import spec
from models.features import Features
from sw.driver import DWZ_SEGMENT, BlkRequest, descriptor_lengths, dwz_request


@dataclass(frozen=True)
class Expected:
    status: int
    used_len: int
    data: bytes | None  # prefix of the writable data the device must have written


class ExpectedDisk:
    """The RAM disk as the driver expects it; ``expect`` applies OUT, DISCARD and WRITE_ZEROES
    requests.

    ``features``: what the device's build offers (default: :class:`Features`' defaults, the
    default build), ``queue_num_max`` its QueueNumMax (SEG_MAX's default depends on it): the
    limits, DISCARD and WRITE_ZEROES apply whenever the build offers them, negotiated or not
    (docs/architecture.md "Features a build offers").
    """

    def __init__(self, size: int = spec.DEFAULT_DISK_BYTES, *,
                 features: Features | None = None,
                 queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX) -> None:
        self.data = bytearray(spec.ramdisk_init(size))
        self.features = Features() if features is None else features
        self.params = self.features.params(queue_num_max, size)

    def over_limits(self, req: BlkRequest) -> bool:
        """Step 3.3: more than ``seg_max + 2`` descriptors, or one longer than ``size_max``."""
        lengths = descriptor_lengths(req)
        seg_max, size_max = self.params["seg_max"], self.params["size_max"]
        return bool((seg_max and len(lengths) > seg_max + 2)
                    or (size_max and max(lengths) > size_max))

    def expect(self, req: BlkRequest) -> Expected:
        readable = spec.BLK_HEADER_BYTES + (0 if req.data_writable else req.data_len)
        writable = 1 + (req.data_len if req.data_writable else 0)
        cap = len(self.data)
        if self.over_limits(req):
            return Expected(spec.VIRTIO_BLK_S_IOERR, 1, None)
        dwz = {spec.VIRTIO_BLK_T_DISCARD: self.features.discard,
               spec.VIRTIO_BLK_T_WRITE_ZEROES: self.features.write_zeroes}
        if dwz.get(req.type):
            return self._dwz(req, readable - spec.BLK_HEADER_BYTES)
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

    def _dwz(self, req: BlkRequest, d: int) -> Expected:
        """Step 3.5, ``T_DISCARD`` and ``T_WRITE_ZEROES``: exactly one segment, then range,
        then flags; the range becomes zeros."""
        ioerr = Expected(spec.VIRTIO_BLK_S_IOERR, 1, None)
        if d != spec.DWZ_SEGMENT_BYTES or req.data is None:
            return ioerr
        seg = DWZ_SEGMENT.unpack(req.data)
        most = self.params["max_discard_sectors" if req.type == spec.VIRTIO_BLK_T_DISCARD
                           else "max_write_zeroes_sectors"]
        start, n = seg.sector * spec.SECTOR_SIZE, seg.num_sectors * spec.SECTOR_SIZE
        if seg.num_sectors > most or start + n > len(self.data):
            return ioerr
        if seg.flags & ~spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (
                req.type == spec.VIRTIO_BLK_T_DISCARD and seg.flags):
            return Expected(spec.VIRTIO_BLK_S_UNSUPP, 1, None)
        self.data[start : start + n] = bytes(n)
        return Expected(spec.VIRTIO_BLK_S_OK, 1, None)


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


def page_segments_request(op: str, sector: int, size: int, *, indirect: bool | None,
                          data: bytes | None = None) -> BlkRequest:
    """A ``size``-byte read (``op="read"``: T_IN) or write (T_OUT, ``data``) as page-sized
    data descriptors (a 64 KiB request: 16), in a direct chain (``indirect=False``) or an
    indirect table (True)."""
    segs = [spec.PAGE_SIZE] * (size // spec.PAGE_SIZE)
    if size % spec.PAGE_SIZE:
        segs.append(size % spec.PAGE_SIZE)
    if op == "read":
        return BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=size, segments=segs,
                          indirect=indirect)
    if data is None or len(data) != size:
        raise ValueError(f"a write of {size} bytes needs {size} bytes of data")
    return BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=data, segments=segs,
                      indirect=indirect)


def random_feature_requests(seed: int, count: int, capacity_sectors: int, *,
                            max_segments: int = 20, errors: bool = True) -> list[BlkRequest]:
    """``count`` requests for a driver that negotiated issue 17's features: reads and writes
    of up to 32 KiB in up to ``max_segments`` data descriptors (direct or indirect at random),
    DISCARD and WRITE_ZEROES ranges, and (``errors``) ranges beyond the disk, UNMAP on a
    discard, and more than one segment (sent ``unchecked``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        roll = rng.random()
        indirect = rng.choice([None, True, False])
        if roll < 0.25:
            t = rng.choice([spec.VIRTIO_BLK_T_DISCARD, spec.VIRTIO_BLK_T_WRITE_ZEROES])
            n = rng.randint(0, 16)
            sector = rng.randint(0, capacity_sectors - n)
            flags = (rng.choice([0, spec.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP])
                     if t == spec.VIRTIO_BLK_T_WRITE_ZEROES else 0)
            ranges = [(sector, n, flags)]
            unchecked = False
            if errors and rng.random() < 0.3:
                kind = rng.choice(["beyond", "unmap", "two"])
                unchecked = True
                if kind == "beyond":
                    ranges = [(capacity_sectors - rng.randint(0, 3), rng.randint(4, 9), flags)]
                elif kind == "unmap":
                    ranges = [(sector, n, rng.choice([1, 2, 0x80000000]))]
                else:
                    ranges = [(sector, n, flags), (0, 1, 0)]
            req = dwz_request(t, ranges, indirect=indirect, unchecked=unchecked)
        else:
            count_s = rng.randint(1, min(64, capacity_sectors))
            sector = rng.randint(0, capacity_sectors - count_s)
            n = count_s * spec.SECTOR_SIZE
            segs = _split(rng, n, max_segments)
            offs = [rng.choice([0, 0, rng.randrange(spec.PAGE_SIZE)]) for _ in segs]
            if roll < 0.6:
                req = BlkRequest(spec.VIRTIO_BLK_T_IN, sector, length=n, segments=segs,
                                 offsets=offs, indirect=indirect,
                                 status_with_data=rng.random() < 0.2)
            else:
                req = BlkRequest(spec.VIRTIO_BLK_T_OUT, sector, data=rng.randbytes(n),
                                 segments=segs, offsets=offs, indirect=indirect,
                                 header_with_data=rng.random() < 0.2)
        out.append(req)
    return out
