"""Compare what the RTL did with what the reference model says it must do.

Every comparison fails on the first difference with a readable report: which transaction (or
byte, or request), the expected and the actual value, and the transactions just before it.
Bytes and completions are compared as the board demo does (:mod:`sw.compare`).
"""

from __future__ import annotations

from collections.abc import Sequence

from models.bus import Transaction
from sw.compare import compare_bytes, compare_results

from .monitor import BusRecord

__all__ = ["compare_bytes", "compare_results", "compare_transactions"]


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
