"""Compare a device with the reference model as a driver sees it: byte strings, completions,
and the RAM disk read back through the device. Used by the benches (``tb/``) and by the board
demo (``sw/board.py``); each check raises :class:`Mismatch` on the first difference.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from models import spec
from sw.driver import BlkRequest, BlkResult

__all__ = ["Mismatch", "compare_bytes", "compare_results", "first_difference", "read_disk"]


class Mismatch(AssertionError):
    """The device and the reference model disagree."""


def first_difference(expected: bytes, actual: bytes) -> str:
    """Where ``actual`` first differs from ``expected``, with the bytes around it."""
    if expected == actual:
        return "equal"
    if len(expected) != len(actual):
        return f"{len(expected)} bytes expected, {len(actual)} found"
    first = next(i for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b)
    lo = max(0, first - 8)
    ndiff = sum(a != b for a, b in zip(expected, actual, strict=True))
    return (f"differs at offset {first:#x} (sector {first // spec.SECTOR_SIZE}; {ndiff} "
            f"byte(s) differ):\n  expected {expected[lo:first + 16].hex(' ')}\n"
            f"  actual   {actual[lo:first + 16].hex(' ')}")


def compare_bytes(what: str, expected: bytes, actual: bytes) -> None:
    """Equal byte strings, or :class:`Mismatch` naming the first difference."""
    if expected != actual:
        raise Mismatch(f"{what}: {first_difference(expected, actual)}")


def compare_results(expected: Sequence[BlkResult], actual: Sequence[BlkResult]) -> None:
    """Driver-visible completions (status, used length, head, data) request by request."""
    if len(expected) != len(actual):
        raise Mismatch(f"{len(expected)} completions expected, {len(actual)} seen")
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if (e.status, e.used_len, e.head) != (a.status, a.used_len, a.head):
            raise Mismatch(f"request #{i} (type {e.request.type}, sector {e.request.sector}): "
                           f"expected status={e.status} used_len={e.used_len} head={e.head}, "
                           f"got status={a.status} used_len={a.used_len} head={a.head}")
        compare_bytes(f"data of request #{i}", e.data or b"", a.data or b"")


async def read_disk(run_batch: Callable[[list[BlkRequest]], Awaitable[Sequence[BlkResult]]],
                    capacity: int, chunk_sectors: int = 16) -> bytes:
    """The whole RAM disk as the device returns it: ``capacity`` sectors read in requests of
    ``chunk_sectors`` through ``run_batch`` (a driver's, or one that runs a batch on a device
    and the reference and compares them)."""
    reqs = [BlkRequest(spec.VIRTIO_BLK_T_IN, s,
                       length=min(chunk_sectors, capacity - s) * spec.SECTOR_SIZE)
            for s in range(0, capacity, chunk_sectors)]
    out = bytearray()
    for res in await run_batch(reqs):
        if not res.ok:
            raise Mismatch(f"read-back of sector {res.request.sector} failed: status "
                           f"{res.status}")
        out += res.data or b""
    return bytes(out)
