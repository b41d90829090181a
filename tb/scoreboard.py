"""Compare what the RTL did with what the reference model says it must do.

Every comparison fails on the first difference with a readable report: which transaction (or
byte, or request), the expected and the actual value, and the transactions just before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.bus import Transaction

from .monitor import BusRecord


def _fmt_ref(t: Transaction, width: int) -> str:
    data = "" if t.kind == "R" or t.data is None else f" data={t.data[:16].hex()}" + (
        "..." if len(t.data) > 16 else "")
    return (f"{t.kind} addr={t.addr:#x} nbytes={t.nbytes} beats={t.beats(width)}"
            f"{' ERROR' if t.error else ''}{data}")


def _fmt_rtl(r: BusRecord) -> str:
    data = "" if r.kind == "R" else f" first={r.first:#x} nbytes={len(r.data)} data=" \
        f"{r.data[:16].hex()}" + ("..." if len(r.data) > 16 else "")
    return f"{r.kind} addr={r.addr:#x} beats={r.beats} cycle={r.cycle}{data}"


def compare_transactions(expected: Sequence[Transaction], actual: Sequence[BusRecord],
                         data_width: int) -> None:
    """Transaction by transaction: kind, address, burst length, and for writes the bytes."""
    for i, (t, r) in enumerate(zip(expected, actual, strict=False)):
        problems = []
        if t.kind != r.kind:
            problems.append("direction")
        if t.addr != r.addr:
            problems.append("address")
        if t.beats(data_width) != r.beats:
            problems.append("burst length")
        if t.kind == "W" and t.kind == r.kind and (r.first != t.addr or r.data != t.data):
            problems.append("write strobes/data")
        if problems:
            context = "\n".join(f"    #{j}: {_fmt_ref(expected[j], data_width)}"
                                for j in range(max(0, i - 3), i))
            raise AssertionError(
                f"bus transaction #{i} differs ({', '.join(problems)}):\n"
                f"  expected {_fmt_ref(t, data_width)}\n  actual   {_fmt_rtl(r)}\n"
                f"  preceding (both agree):\n{context or '    (none)'}")
    if len(expected) != len(actual):
        n = min(len(expected), len(actual))
        extra = (f"expected #{n}: {_fmt_ref(expected[n], data_width)}" if len(expected) > n
                 else f"actual #{n}: {_fmt_rtl(actual[n])}")
        raise AssertionError(f"the reference made {len(expected)} bus transactions, the RTL "
                             f"{len(actual)}; first unmatched: {extra}")


def compare_bytes(what: str, expected: bytes, actual: bytes) -> None:
    """Equal byte strings, or the first differing offset with a window around it."""
    if expected == actual:
        return
    if len(expected) != len(actual):
        raise AssertionError(f"{what}: {len(expected)} bytes expected, {len(actual)} found")
    first = next(i for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b)
    lo = max(0, first - 8)
    ndiff = sum(a != b for a, b in zip(expected, actual, strict=True))
    raise AssertionError(
        f"{what} differs at offset {first:#x} ({ndiff} byte(s) differ):\n"
        f"  expected {expected[lo:first + 16].hex(' ')}\n"
        f"  actual   {actual[lo:first + 16].hex(' ')}")


def compare_results(expected: Sequence, actual: Sequence) -> None:
    """Driver-visible completions (status, used length, data) request by request."""
    if len(expected) != len(actual):
        raise AssertionError(f"{len(expected)} completions expected, {len(actual)} seen")
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if (e.status, e.used_len, e.head) != (a.status, a.used_len, a.head):
            raise AssertionError(
                f"request #{i} (type {e.request.type}, sector {e.request.sector}): expected "
                f"status={e.status} used_len={e.used_len} head={e.head}, got status={a.status} "
                f"used_len={a.used_len} head={a.head}")
        if e.data != a.data:
            compare_bytes(f"data of request #{i}", e.data or b"", a.data or b"")
