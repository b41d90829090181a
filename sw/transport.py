"""The one link protocol between a driver and a device, whatever implements the device.

The same driver code runs against the reference model (``models.device``), the simulated RTL
(``tb/``) and a board (``sw/board.py``). Each of those provides a :class:`DeviceLink`; a bench
that injects bus errors adds :class:`ErrorSet` (:class:`FaultLink`), and one whose clock the
caller steps (the vhost-user bridge) adds :class:`ClockedLink`. Drivers name the narrowest
protocol they need.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol


def run_coroutine(coro: Coroutine[Any, Any, Any],
                  what: str = "a coroutine of the untimed reference model") -> Any:
    """Run a coroutine that never suspends (the untimed reference model's register ports) to
    its end; one that suspends is a usage error (``RuntimeError`` naming ``what``)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError(f"{what} suspended")


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


class ErrorSet(Protocol):
    """Pages of guest memory that answer with an error response
    (:class:`models.memory.BusErrorPages`)."""

    def add(self, kind: str, addr: int) -> None: ...

    def clear(self) -> None: ...


class FaultLink(DeviceLink, Protocol):
    """A device link whose memory can be made to answer bus errors."""

    errors: ErrorSet


class ClockedLink(DeviceLink, Protocol):
    """A device link whose clock the caller advances, and whose interrupt line it samples."""

    @property
    def irq(self) -> bool: ...

    @property
    def cycle(self) -> int: ...

    async def advance(self, cycles: int) -> None:
        """Let the device run ``cycles`` clock cycles (fewer if ``irq`` rises)."""
        ...
