"""Guest memory behind ``m_axi``: the driver's :class:`models.memory.GuestMemory`, served by
cocotbext-axi's AXI4 subordinate model, with bus errors on chosen pages.
"""

from __future__ import annotations

from models import spec
from models.memory import GuestMemory


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


class MemoryTarget:
    """Target of ``cocotbext.axi.AxiSlave``: raising makes the model answer SLVERR."""

    def __init__(self, mem: GuestMemory, errors: BusErrorPages):
        self.mem = mem
        self.errors = errors

    def _check(self, kind: str, address: int, length: int) -> None:
        if self.errors.hit(kind, address):
            raise OSError(f"injected bus error: {kind} at {address:#x}")
        if not self.mem.contains(address, length):
            raise OSError(f"{kind} of {length} bytes at {address:#x} outside guest memory")

    async def read(self, address: int, length: int) -> bytes:
        self._check("R", address, length)
        return self.mem.read(address, length)

    async def write(self, address: int, data: bytes) -> None:
        self._check("W", address, len(data))
        self.mem.write(address, data)
