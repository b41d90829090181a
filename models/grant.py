"""Grant table and handle translation (docs/architecture.md, "Handles and translation").

A *handle* is a Linux grant DMA address (``drivers/xen/grant-dma-ops.c``): bit 63 set,
bits 62:12 a grant reference, bits 11:0 the offset in a 4 KiB page. The on-chip table holds
Xen ``grant_entry_v1`` entries (``include/public/grant_table.h``): ``u16 flags, u16 domid,
u32 frame``, visible to the hypervisor as two 32-bit words per entry (``GRANT[ref]``): word 0 =
``flags | domid << 16``, word 1 = ``frame``.

:func:`translate` is the pure translation function with the contract's check order (first failing
check wins):

1. handle mode and bit 63 clear               -> cause 1 (not a handle)
2. ``ref >= entries``                          -> cause 2 (reference outside the table)
3. ``flags & 3 != GTF_permit_access``          -> cause 3 (entry not permit_access)
4. ``domid != HV_DOMID``                       -> cause 4 (wrong domain)
5. device write and ``flags & GTF_readonly``  -> cause 5 (device write to a read-only grant)

In GPA mode the physical address is ``v`` itself and nothing is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from models import spec

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class GrantEntry:
    """One Xen ``grant_entry_v1``: ``u16 flags, u16 domid, u32 frame``."""

    flags: int = 0
    domid: int = 0
    frame: int = 0

    def __post_init__(self) -> None:
        for name, limit in (("flags", _U16), ("domid", _U16), ("frame", _U32)):
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise ValueError(f"grant entry {name} must be in [0, {limit:#x}], not {value!r}")

    @classmethod
    def permit(cls, domid: int, frame: int, *, readonly: bool = False) -> GrantEntry:
        """A ``GTF_permit_access`` entry for ``domid`` (optionally ``GTF_readonly``)."""
        flags = spec.GTF_permit_access | (spec.GTF_readonly if readonly else 0)
        return cls(flags=flags, domid=domid, frame=frame)

    def pack(self) -> tuple[int, int]:
        """The two 32-bit words of ``GRANT[ref]``: ``(flags | domid << 16, frame)``."""
        return self.flags | self.domid << 16, self.frame

    @classmethod
    def unpack(cls, word0: int, word1: int) -> GrantEntry:
        """Inverse of :meth:`pack` (each word is taken modulo 2**32)."""
        word0 &= _U32
        return cls(flags=word0 & _U16, domid=word0 >> 16, frame=word1 & _U32)

    def to_bytes(self) -> bytes:
        """The 8-byte little-endian in-memory layout of ``grant_entry_v1``."""
        w0, w1 = self.pack()
        return w0.to_bytes(4, "little") + w1.to_bytes(4, "little")

    @property
    def permits_access(self) -> bool:
        return self.flags & spec.GTF_TYPE_MASK == spec.GTF_permit_access

    @property
    def readonly(self) -> bool:
        return bool(self.flags & spec.GTF_readonly)


@dataclass(frozen=True, slots=True)
class Translation:
    """Outcome of one translation: ``paddr`` on success, else ``cause`` (1..5) and no address."""

    paddr: int | None
    cause: int = spec.FAULT_NONE

    @property
    def ok(self) -> bool:
        return self.cause == spec.FAULT_NONE

    @classmethod
    def hit(cls, paddr: int) -> Translation:
        return cls(paddr=paddr & spec.ADDR_MASK)

    @classmethod
    def fault(cls, cause: int) -> Translation:
        if not spec.FAULT_NOT_HANDLE <= cause <= spec.FAULT_READONLY:
            raise ValueError(f"{cause!r} is not a translation fault cause")
        return cls(paddr=None, cause=cause)


_INVALID = GrantEntry()

GrantLookup = Sequence[GrantEntry] | Callable[[int], GrantEntry]
"""Where :func:`translate` finds entry ``ref``: ``table[ref]`` or ``table(ref)``."""


def translate(
    v: int,
    write: bool,
    *,
    handle_mode: bool,
    domid: int,
    table: GrantLookup,
    entries: int,
) -> Translation:
    """Translate virtual address ``v`` for a device read (``write=False``) or write.

    ``table`` is only consulted for ``ref < entries`` (one lookup). ``domid`` is compared on
    its low 16 bits (``HV_DOMID`` bits 15:0).
    """
    v &= spec.ADDR_MASK
    if not handle_mode:
        return Translation(v)
    if not v & spec.HANDLE_BIT:
        return Translation.fault(spec.FAULT_NOT_HANDLE)
    ref, offset = spec.split_handle(v)
    if ref >= entries:
        return Translation.fault(spec.FAULT_REF_RANGE)
    entry = table(ref) if callable(table) else table[ref]
    if entry.flags & spec.GTF_TYPE_MASK != spec.GTF_permit_access:
        return Translation.fault(spec.FAULT_NOT_PERMITTED)
    if entry.domid != domid & _U16:
        return Translation.fault(spec.FAULT_WRONG_DOMAIN)
    if write and entry.flags & spec.GTF_readonly:
        return Translation.fault(spec.FAULT_READONLY)
    return Translation(entry.frame << spec.PAGE_SHIFT | offset)


class GrantTable:
    """The on-chip grant table: ``entries`` entries of two 32-bit words, all 0 (invalid) at
    construction. Hardware reset does not clear it (block RAM, docs/architecture.md).

    Behaves as a ``Sequence[GrantEntry]`` (so it can be passed to :func:`translate`) and offers
    word access for the ``GRANT[ref]`` registers, with byte strobes.
    """

    def __init__(self, entries: int = spec.DEFAULT_ENTRIES) -> None:
        if not isinstance(entries, int) or entries < 1:
            raise ValueError(f"entries must be a positive integer, not {entries!r}")
        self.entries = entries
        self._words = [0] * (2 * entries)
        self._cache = [_INVALID] * entries  # decoded entries, kept in step with _words

    def __len__(self) -> int:
        return self.entries

    def __getitem__(self, ref: int) -> GrantEntry:
        if not 0 <= ref < self.entries:
            raise IndexError(f"grant reference {ref} outside the table of {self.entries}")
        return self._cache[ref]

    def __setitem__(self, ref: int, entry: GrantEntry) -> None:
        if not 0 <= ref < self.entries:
            raise IndexError(f"grant reference {ref} outside the table of {self.entries}")
        self._words[2 * ref], self._words[2 * ref + 1] = entry.pack()
        self._cache[ref] = entry

    def __iter__(self) -> Iterator[GrantEntry]:
        return (self[ref] for ref in range(self.entries))

    def read_word(self, index: int) -> int:
        """Word ``index`` (``2 * ref`` = flags/domid, ``2 * ref + 1`` = frame)."""
        return self._words[index]

    def write_word(self, index: int, value: int, strb: int = 0xF) -> None:
        """Write word ``index``; only the bytes selected by ``strb`` (bit ``k`` = byte ``k``)."""
        mask = 0
        for k in range(4):
            if strb >> k & 1:
                mask |= 0xFF << (8 * k)
        self._words[index] = (self._words[index] & ~mask | value & mask) & _U32
        ref = index // 2
        self._cache[ref] = GrantEntry.unpack(self._words[2 * ref], self._words[2 * ref + 1])

    def clear(self) -> None:
        """Invalidate every entry (not done by reset; offered for tests)."""
        self._words = [0] * (2 * self.entries)
        self._cache = [_INVALID] * self.entries
