"""Host side of the board's UART link: a :class:`sw.transport.DeviceLink` over a byte pipe.

The guest driver and hypervisor models are ``async`` and treat guest memory as synchronous
(``mem.read``/``mem.write``), because a CPU's loads and stores are. Over a serial line every
access is a blocking round trip, so this transport is synchronous underneath: the ``async``
register methods do their I/O and return without suspending, ``mem`` blocks, and the driver
runs in ``asyncio.run`` on the host. Nothing is cached: the driver reads the used ring the
device just wrote, so every read goes to the board. That is what makes the same driver code
correct here, against the reference model and on the simulated RTL.

Writes are posted: a register or memory write is sent at once and its response is collected
later (before the next read, ``wait_irq``, or when ``max_posted`` are outstanding). The bridge
executes requests strictly in order, so a later read sees every earlier write, exactly as with
posted MMIO writes on a CPU; an error in a posted write is raised at the next collection point.

The pipe is anything with ``write(bytes)`` and ``read(n, timeout) -> bytes``: :class:`SerialPipe`
on a real serial port (pyserial), or the cocotb bridge of ``tb/test_board.py`` in simulation,
where ``read`` runs the simulator until the bytes have arrived.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from models import hostlink as p

__all__ = ["BoardInfo", "BytePipe", "LinkError", "SerialPipe", "UartLink"]

MEM_READ_CHUNK = 4096


class LinkError(RuntimeError):
    """The link or the bridge reported an error (bad frame, CRC, bus error, range)."""


class BytePipe(Protocol):
    """A full-duplex byte stream to the board."""

    baud: int

    def write(self, data: bytes) -> None: ...

    def read(self, n: int, timeout: float) -> bytes:
        """Exactly ``n`` bytes; ``TimeoutError`` if they do not all arrive within ``timeout``
        seconds (of the board's time)."""
        ...


class SerialPipe:
    """A serial port through pyserial (``pip install .[board]``), 8N1, no flow control."""

    def __init__(self, port: str, baud: int = 1_000_000, *, latency: float = 0.5) -> None:
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise LinkError("pyserial is not installed: pip install -e '.[board]'") from exc
        self.baud = baud
        self.latency = latency  # USB round trips and scheduling, added to every timeout
        self._port = serial.Serial(port, baudrate=baud, timeout=0.1)
        self._port.reset_input_buffer()

    def write(self, data: bytes) -> None:
        self._port.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout + self.latency
        out = bytearray()
        while len(out) < n:
            out += self._port.read(n - len(out))
            if len(out) < n and time.monotonic() > deadline:
                raise TimeoutError(f"{len(out)} of {n} byte(s) from the board within "
                                   f"{timeout + self.latency:.2f} s")
        return bytes(out)

    def close(self) -> None:
        self._port.close()


@dataclass(frozen=True)
class BoardInfo:
    """What INFO reports."""

    mem_bytes: int
    clk_hz: int
    clks_per_bit: int
    mem_write_max: int
    data_width: int

    @property
    def baud(self) -> float:
        return self.clk_hz / self.clks_per_bit


class LinkRegisterPort:
    """A :class:`sw.transport.RegisterPort` over the link (guest or privileged port)."""

    def __init__(self, link: UartLink, read_cmd: int, write_cmd: int) -> None:
        self._link = link
        self._read = read_cmd
        self._write = write_cmd

    async def read32(self, offset: int) -> int:
        return int.from_bytes(self._link.request(self._read, offset, 4), "little")

    async def write32(self, offset: int, value: int) -> None:
        self._link.post(self._write, offset, (value & 0xFFFF_FFFF).to_bytes(4, "little"))


class LinkMemory:
    """A :class:`sw.transport.GuestMemory`: the board's guest memory window."""

    def __init__(self, link: UartLink, size: int) -> None:
        self._link = link
        self.size = size

    def _check(self, what: str, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise ValueError(f"{what} of {length} byte(s) at {addr:#x} is outside guest memory "
                             f"[0, {self.size:#x})")

    def read(self, addr: int, length: int) -> bytes:
        self._check("read", addr, length)
        out = bytearray()
        for pos in range(0, length, MEM_READ_CHUNK):
            n = min(MEM_READ_CHUNK, length - pos)
            out += self._link.request(p.CMD_MEM_READ, addr + pos, n)
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        self._check("write", addr, len(data))
        step = self._link.info.mem_write_max
        for pos in range(0, len(data), step):
            self._link.post(p.CMD_MEM_WRITE, addr + pos, data[pos:pos + step])


class UartLink:
    """:class:`sw.transport.DeviceLink` to the board (``guest``, ``hv``, ``mem``,
    ``wait_irq``), plus ``info``, ``reset_device`` and the last irq level seen (``irq``).

    Parameters
    ----------
    pipe : BytePipe
    max_posted : int
        Posted writes allowed in flight before their responses are collected.
    irq_timeout : int
        ``wait_irq``'s timeout in clock cycles when the caller gives none.
    """

    def __init__(self, pipe: BytePipe, *, max_posted: int = 32,
                 irq_timeout: int = 1 << 24) -> None:
        self.pipe = pipe
        self.max_posted = max_posted
        self.irq_timeout = irq_timeout
        self.irq = False
        self.requests = self.bytes_sent = self.bytes_received = 0
        self._posted: deque[str] = deque()  # descriptions of requests awaiting responses
        self._posted_bytes = 0  # response bytes they will produce
        self.info = self._read_info()
        if abs(self.info.baud - pipe.baud) > 0.03 * pipe.baud:
            raise LinkError(f"the board runs its UART at {self.info.baud:.0f} baud, the port "
                            f"at {pipe.baud}")
        self.guest = LinkRegisterPort(self, p.CMD_GUEST_READ, p.CMD_GUEST_WRITE)
        self.hv = LinkRegisterPort(self, p.CMD_HV_READ, p.CMD_HV_WRITE)
        self.mem = LinkMemory(self, self.info.mem_bytes)

    # -- framing ----------------------------------------------------------------------------
    def _byte_time(self, nbytes: int) -> float:
        return nbytes * 10 / self.pipe.baud

    def _send(self, cmd: int, addr: int, length: int, payload: bytes = b"") -> None:
        frame = p.encode_request(cmd, addr, length, payload)
        self.pipe.write(frame)
        self.requests += 1
        self.bytes_sent += len(frame)

    def _receive(self, what: str, expect: int | None, extra_wait: float = 0.0) -> bytes:
        """One response; ``expect`` is its payload length when the request succeeds."""
        # generous: the bytes still queued ahead of it in both directions, plus the wait
        timeout = 2 * self._byte_time(self._posted_bytes + 64 + (expect or 0)) + 0.01 \
            + extra_wait
        head = self.pipe.read(4, timeout)
        if head[0] != p.SYNC_RESPONSE:
            raise LinkError(f"{what}: response starts with {head[0]:#04x}, not "
                            f"{p.SYNC_RESPONSE:#04x} (link out of step)")
        status, length = p.RESPONSE_HEADER.unpack(head[1:])
        rest = self.pipe.read(length + 2, 2 * self._byte_time(length + 2) + 0.01)
        self.bytes_received += 4 + length + 2
        if p.crc16(head[1:] + rest) != 0:
            raise LinkError(f"{what}: response CRC error")
        self.irq = bool(status & p.STATUS_IRQ)
        if status & p.STATUS_ERRORS:
            names = [n for bit, n in ((p.STATUS_ERR_CRC, "request CRC error"),
                                      (p.STATUS_ERR_BUS, "bus error response"),
                                      (p.STATUS_ERR_RANGE, "outside guest memory"),
                                      (p.STATUS_ERR_CMD, "bad command or length"))
                     if status & bit]
            raise LinkError(f"{what}: {', '.join(names)} (status {status:#04x})")
        if expect is not None and length != expect:
            raise LinkError(f"{what}: {length} byte(s) in the response, {expect} expected")
        if status & p.STATUS_TIMEOUT:
            raise TimeoutError(what)
        return rest[:length]

    def sync(self) -> None:
        """Collect the responses of every posted write (raises on the first failed one)."""
        while self._posted:
            what = self._posted[0]
            self._receive(what, 0)
            self._posted.popleft()
            self._posted_bytes -= 6

    def post(self, cmd: int, addr: int, payload: bytes) -> None:
        """Send a write request without waiting for its response."""
        self._send(cmd, addr, len(payload), payload)
        self._posted.append(f"write {cmd:#04x} of {len(payload)} byte(s) at {addr:#x}")
        self._posted_bytes += 6
        if len(self._posted) >= self.max_posted:
            self.sync()

    def request(self, cmd: int, addr: int = 0, length: int = 0, *,
                extra_wait: float = 0.0) -> bytes:
        """A request whose response matters: sent after the posted ones, then waited for."""
        self._send(cmd, addr, length)
        self.sync()
        return self._receive(f"request {cmd:#04x} at {addr:#x} ({length})",
                             length if cmd in (p.CMD_MEM_READ, p.CMD_GUEST_READ,
                                               p.CMD_HV_READ) else None, extra_wait)

    def _read_info(self) -> BoardInfo:
        try:
            raw = self.request(p.CMD_INFO)
        except TimeoutError as exc:
            raise LinkError(f"no answer from the board at {self.pipe.baud} baud: is the "
                            f"bitstream loaded and the baud rate right?") from exc
        if len(raw) != p.INFO_BYTES:
            raise LinkError(f"INFO answered {len(raw)} byte(s), {p.INFO_BYTES} expected")
        magic, mem_bytes, clk_hz, cpb, wmax, width, _ = p.INFO.unpack(raw)
        if magic != p.INFO_MAGIC:
            raise LinkError(f"INFO magic {magic:#010x}, expected {p.INFO_MAGIC:#010x}")
        return BoardInfo(mem_bytes, clk_hz, cpb, wmax, width)

    # -- DeviceLink -------------------------------------------------------------------------
    async def wait_irq(self, timeout_cycles: int | None = None) -> None:
        """Return once ``irq`` is high; ``TimeoutError`` if it stays low ``timeout_cycles``."""
        cycles = self.irq_timeout if timeout_cycles is None else timeout_cycles
        cycles = min(max(cycles, 0), 0xFFFF_FFFF)
        self.request(p.CMD_WAIT_IRQ, cycles, extra_wait=cycles / self.info.clk_hz)

    def reset_device(self) -> None:
        """Hold the device in reset for a few cycles (bridge and memories keep running)."""
        self.request(p.CMD_RESET)
