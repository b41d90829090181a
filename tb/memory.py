"""Guest memory behind ``m_axi``: the driver's :class:`models.memory.GuestMemory`, served by
cocotbext-axi's AXI4 subordinate model, with bus errors on chosen pages.
"""

from __future__ import annotations

from models.memory import BusErrorPages, GuestMemory

__all__ = ["BusErrorPages", "MemoryTarget"]


class MemoryTarget:
    """Target of ``cocotbext.axi.AxiSlave``: raising makes the model answer SLVERR. Counts the
    bytes moved and records the refused accesses, as ``tb.detmem.DeterministicMemory`` does."""

    def __init__(self, mem: GuestMemory, errors: BusErrorPages):
        self.mem = mem
        self.errors = errors
        self.refused: list[str] = []
        self.bytes_read = self.bytes_written = 0

    def _check(self, kind: str, address: int, length: int) -> None:
        if self.errors.hit(kind, address) or not self.mem.contains(address, length):
            self.refused.append(f"{kind} {length} B at {address:#x}")
            raise OSError(f"bus error (injected or outside memory): {self.refused[-1]}")

    async def read(self, address: int, length: int) -> bytes:
        self._check("R", address, length)
        self.bytes_read += length
        return self.mem.read(address, length)

    async def write(self, address: int, data: bytes) -> None:
        self._check("W", address, len(data))
        self.bytes_written += len(data)
        self.mem.write(address, data)
