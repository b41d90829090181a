"""Guest memory behind ``m_axi``: the driver's :class:`models.memory.GuestMemory`, served by
cocotbext-axi's AXI4 subordinate model, with bus errors on chosen pages.
"""

from __future__ import annotations

from models.memory import BusErrorPages, GuestMemory

__all__ = ["BusErrorPages", "MemoryTarget"]


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
