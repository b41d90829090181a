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

__all__ = ["compare_bytes", "compare_completions", "compare_interrupt", "compare_results",
           "compare_transactions"]


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
            after = "\n".join(
                [f"    expected #{j}: {_fmt_ref(expected[j], data_width)}"
                 for j in range(i + 1, min(len(expected), i + 4))]
                + [f"    actual   #{j}: {_fmt_rtl(actual[j])}"
                   for j in range(i + 1, min(len(actual), i + 4))])
            raise AssertionError(
                f"bus transaction #{i} differs ({', '.join(problems)}):\n"
                f"  expected {_fmt_ref(t, data_width)}\n  actual   {_fmt_rtl(r)}\n"
                f"  preceding (both agree):\n{context or '    (none)'}\n"
                f"  following:\n{after or '    (none)'}")
    if len(expected) != len(actual):
        n = min(len(expected), len(actual))
        extra = (f"expected #{n}: {_fmt_ref(expected[n], data_width)}" if len(expected) > n
                 else f"actual #{n}: {_fmt_rtl(actual[n])}")
        raise AssertionError(f"the reference made {len(expected)} bus transactions, the RTL "
                             f"{len(actual)}; first unmatched: {extra}")


def compare_completions(expected: Sequence[tuple[int, int, int]],
                        actual: Sequence[tuple[int, int, int]]) -> None:
    """Used elements one by one (virtio 1.2 section 2.7.8): the chain's head (``id``), the
    bytes written plus the status byte (``len``), and the status byte the chain ended with, as
    ``verif.oracle.read_completions`` reads them from guest memory."""
    for k, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if e != a:
            raise AssertionError(f"used element #{k}: expected id={e[0]} len={e[1]} status="
                                 f"{e[2]}, found id={a[0]} len={a[1]} status={a[2]}")
    if len(expected) != len(actual):
        raise AssertionError(f"{len(expected)} used element(s) expected, {len(actual)} found")


def compare_interrupt(expected: int, actual: int, irq: int) -> None:
    """InterruptStatus after a case (bit 0 used buffer: under EVENT_IDX the device's
    ``used_event`` decision; bit 1 a fault), and ``irq`` high exactly while it is non-zero."""
    if actual != expected:
        raise AssertionError(f"InterruptStatus {actual:#x}, the reference {expected:#x}")
    if irq != bool(actual):
        raise AssertionError(f"irq is {irq} with InterruptStatus {actual:#x}")
