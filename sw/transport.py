"""What the driver and hypervisor models need from a device, whatever implements it.

The same driver code runs against the reference model (``models.device``), the simulated RTL
(``tb/``) and, later, a board. Each of those provides a :class:`DeviceLink`.
"""

from __future__ import annotations

from typing import Protocol


class RegisterPort(Protocol):
    """A 32-bit register window (one AXI4-Lite port)."""

    async def read32(self, offset: int) -> int: ...

    async def write32(self, offset: int, value: int) -> None: ...


class GuestMemory(Protocol):
    """Guest physical memory as the device sees it on ``m_axi`` (physical addresses)."""

    size: int

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class DeviceLink(Protocol):
    """Everything a guest driver and a hypervisor model touch."""

    guest: RegisterPort  # virtio-mmio v2 registers (s_axil)
    hv: RegisterPort  # privileged registers and grant table (s_hv)
    mem: GuestMemory

    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        """Return once ``irq`` is high (immediately if it already is).

        Raises ``TimeoutError`` if it does not rise within ``timeout_cycles`` (implementation
        defined unit for the reference model, which never waits).
        """
        ...
