"""Guest physical memory as the device sees it on its AXI4 master port (``m_axi``).

Physical addresses ``0 .. size - 1`` are backed by a numpy ``uint8`` array. Anything outside is
not memory: the reference device answers a bus transaction that is not fully inside with DECERR
(fault cause 6, docs/architecture.md "Bus transactions").

The class satisfies :class:`sw.transport.GuestMemory` (``size``, ``read``, ``write``).
"""

from __future__ import annotations

import numpy as np

from models import spec


class GuestMemory:
    """``size`` bytes of byte-addressed guest physical memory, initially zero.

    ``init`` (optional) is copied to address 0 at construction.
    """

    def __init__(self, size: int, init: bytes | None = None) -> None:
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"memory size must be a positive integer, not {size!r}")
        self.size = size
        self._mem = np.zeros(size, dtype=np.uint8)
        if init is not None:
            self.write(0, init)

    # --- range checks ------------------------------------------------------------------------
    def contains(self, addr: int, length: int) -> bool:
        """True if the ``length`` bytes at ``addr`` are all inside memory (``length >= 0``)."""
        return addr >= 0 and length >= 0 and addr + length <= self.size

    def _check(self, what: str, addr: int, length: int) -> None:
        if not self.contains(addr, length):
            raise ValueError(
                f"{what} of {length} byte(s) at {addr:#x} is outside guest memory "
                f"[0, {self.size:#x})"
            )

    # --- byte access -------------------------------------------------------------------------
    def read(self, addr: int, length: int) -> bytes:
        """The ``length`` bytes at ``addr``; ``ValueError`` if any is outside memory."""
        self._check("read", addr, length)
        return self._mem[addr : addr + length].tobytes()

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``addr``; ``ValueError`` (and nothing written) if outside memory."""
        data = bytes(data)
        self._check("write", addr, len(data))
        self._mem[addr : addr + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def fill(self, addr: int, length: int, value: int = 0) -> None:
        """Set ``length`` bytes at ``addr`` to ``value``."""
        self._check("fill", addr, length)
        self._mem[addr : addr + length] = value & 0xFF

    def snapshot(self) -> bytes:
        """A copy of the whole memory."""
        return self._mem.tobytes()

    # --- little-endian helpers (virtio structures are little-endian, section 1.4) --------------
    def read_le(self, addr: int, nbytes: int) -> int:
        """Unsigned little-endian integer of ``nbytes`` bytes at ``addr``."""
        return int.from_bytes(self.read(addr, nbytes), "little")

    def write_le(self, addr: int, nbytes: int, value: int) -> None:
        """Store ``value`` as an unsigned little-endian integer of ``nbytes`` bytes at ``addr``."""
        mask = (1 << (8 * nbytes)) - 1
        self.write(addr, (value & mask).to_bytes(nbytes, "little"))

    def read16(self, addr: int) -> int:
        return self.read_le(addr, 2)

    def read32(self, addr: int) -> int:
        return self.read_le(addr, 4)

    def read64(self, addr: int) -> int:
        return self.read_le(addr, 8)

    def write16(self, addr: int, value: int) -> None:
        self.write_le(addr, 2, value)

    def write32(self, addr: int, value: int) -> None:
        self.write_le(addr, 4, value)

    def write64(self, addr: int, value: int) -> None:
        self.write_le(addr, 8, value)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"GuestMemory(size={self.size:#x})"


class BusErrorPages:
    """Which (direction, physical page) pairs answer with an error response.

    Bursts never cross a 4 KiB page, so marking a page fails every beat of every transaction
    that touches it, in one direction: exactly the model's ``bus_error`` rule.
    """

    def __init__(self) -> None:
        self.pages: set[tuple[str, int]] = set()

    def add(self, kind: str, addr: int) -> None:
        if kind not in ("R", "W"):
            raise ValueError(f"kind must be 'R' or 'W', not {kind!r}")
        self.pages.add((kind, addr >> spec.PAGE_SHIFT))

    def clear(self) -> None:
        self.pages.clear()

    def hit(self, kind: str, addr: int) -> bool:
        return (kind, addr >> spec.PAGE_SHIFT) in self.pages

    def __call__(self, txn) -> bool:
        """The reference model's hook: does transaction ``txn`` get an error response?"""
        return self.hit(txn.kind, txn.addr)
