"""DMA access splitting and bus transactions (docs/architecture.md, "Bus transactions").

A *DMA access* is "read (or write) ``n`` bytes at virtual address ``v``". It is split

1. into page pieces at every 4 KiB boundary of ``v`` (addresses modulo 2**64); each piece is
   translated once, when the engine reaches it. A failed translation stops the access before
   the piece's first transaction, with the piece's first virtual byte as the fault address;
2. each translated piece into bursts at every physical address that is a multiple of
   ``spec.burst_bytes(data_width)``. One burst is one AXI4 INCR transaction.

:func:`iter_bursts` does this lazily (the device stops consuming it at a bus error, so later
pages are never translated); :func:`split_access` is the eager, side-effect-free form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from models import spec
from models.grant import Translation

TranslateFn = Callable[[int, bool], Translation]
"""``translate_fn(v, write)``: translation of the page piece starting at virtual ``v``."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """One AXI4 burst on ``m_axi`` as the contract records it: ``(kind, addr, nbytes[, data])``.

    ``data`` is the bytes written (``"W"``) or the bytes read (``"R"``; ``None`` before the read
    is performed or when the read failed). ``error`` is True when the transaction got a SLVERR or
    DECERR response (fault cause 6).
    """

    kind: Literal["R", "W"]
    addr: int
    nbytes: int
    data: bytes | None = None
    error: bool = False

    def beats(self, data_width: int) -> int:
        """Number of full-width beats: ``ceil(((addr % W) + nbytes) / W)``, ``W = width / 8``.

        The AXI ``len`` field is this value minus one.
        """
        w = data_width // 8
        return -(-((self.addr % w) + self.nbytes) // w)

    @property
    def end(self) -> int:
        """One past the last physical byte."""
        return self.addr + self.nbytes

    def key(self) -> tuple[str, int, int, bytes | None]:
        """``(kind, addr, nbytes, data)`` for transaction-by-transaction comparison."""
        return self.kind, self.addr, self.nbytes, self.data


@dataclass(frozen=True, slots=True)
class Burst:
    """A translated, burst-sized part of a DMA access, not yet issued.

    ``offset`` is the position of its first byte inside the DMA access.
    """

    addr: int
    nbytes: int
    offset: int


@dataclass(frozen=True, slots=True)
class DmaFault:
    """A translation fault that stopped a DMA access: ``cause`` 1..5, virtual ``addr``."""

    cause: int
    addr: int


def page_pieces(v: int, n: int) -> Iterator[tuple[int, int, int]]:
    """``(virtual address, nbytes, offset in access)`` of each 4 KiB page piece of ``v, n``."""
    if n < 0:
        raise ValueError(f"access length must be >= 0, not {n!r}")
    v &= spec.ADDR_MASK
    offset = 0
    while offset < n:
        room = spec.PAGE_SIZE - (v & (spec.PAGE_SIZE - 1))
        size = min(room, n - offset)
        yield v, size, offset
        v = (v + size) & spec.ADDR_MASK
        offset += size


def burst_pieces(paddr: int, n: int, data_width: int) -> Iterator[tuple[int, int]]:
    """``(physical address, nbytes)`` of the bursts of a physical piece, cut at multiples of
    ``spec.burst_bytes(data_width)``."""
    b = spec.burst_bytes(data_width)
    done = 0
    while done < n:
        size = min(b - (paddr % b), n - done)
        yield paddr, size
        paddr += size
        done += size


def iter_bursts(
    v: int, n: int, write: bool, data_width: int, translate_fn: TranslateFn,
    generation: Callable[[], int] | None = None,
) -> Iterator[Burst | DmaFault]:
    """Bursts of the access in issue order; a :class:`DmaFault` ends the iteration.

    ``translate_fn`` is called once per page piece, only when the iteration reaches it, and
    again before a later burst of the same page if ``generation()`` changed since the last call
    (a write to the grant table, the mode or the domain: docs/architecture.md "Grant
    revocation"); that lookup's fault address is where the access resumes.
    """
    b = spec.burst_bytes(data_width)
    if n < 0:
        raise ValueError(f"access length must be >= 0, not {n!r}")
    v &= spec.ADDR_MASK
    offset = 0
    while offset < n:  # page pieces (same rule as page_pieces, inlined: hot path)
        size = min(spec.PAGE_SIZE - (v & (spec.PAGE_SIZE - 1)), n - offset)
        t = translate_fn(v, write)
        if t.cause or t.paddr is None:
            yield DmaFault(t.cause, v)
            return
        paddr = t.paddr
        gen = generation() if generation is not None else 0
        done = 0
        while done < size:  # bursts (same rule as burst_pieces)
            if generation is not None and generation() != gen:
                here = (v + done) & spec.ADDR_MASK
                t = translate_fn(here, write)
                gen = generation()
                if t.cause or t.paddr is None:
                    yield DmaFault(t.cause, here)
                    return
                paddr = t.paddr
            burst = min(b - paddr % b, size - done)
            yield Burst(paddr, burst, offset + done)
            paddr += burst
            done += burst
        v = (v + size) & spec.ADDR_MASK
        offset += size


@dataclass
class SplitResult:
    """The transactions an access issues, and the translation fault that ended it (if any).

    Read transactions carry no data (they are not performed here).
    """

    transactions: list[Transaction]
    fault: DmaFault | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None


def split_access(
    v: int,
    n: int,
    write: bool,
    data_width: int,
    translate_fn: TranslateFn,
    data: bytes | None = None,
) -> SplitResult:
    """Split the access ``n`` bytes at ``v`` into transactions (the prefix before a fault).

    For writes, ``data`` (``n`` bytes, default zeros) is sliced into the transactions.
    """
    if write:
        data = bytes(n) if data is None else bytes(data)
        if len(data) != n:
            raise ValueError(f"write data has {len(data)} bytes, access has {n}")
    txns: list[Transaction] = []
    for item in iter_bursts(v, n, write, data_width, translate_fn):
        if isinstance(item, DmaFault):
            return SplitResult(txns, item)
        if write:
            assert data is not None
            chunk = data[item.offset : item.offset + item.nbytes]
            txns.append(Transaction("W", item.addr, item.nbytes, chunk))
        else:
            txns.append(Transaction("R", item.addr, item.nbytes))
    return SplitResult(txns)
