"""The host transport (``sw/link.py``) and the demo (``sw/board.py``) without a simulator.

:class:`ModelBoard` is a byte-level model of the bridge's contract (``models/hostlink.py``)
in front of the reference device, so the framing, the posted writes, the error paths and the
whole demo workload are checked in milliseconds; ``tests/test_board_sim.py`` runs the same
transport against the RTL.
"""

from __future__ import annotations

import asyncio
import tty

import pytest

from models import hostlink as p
from models.device import ReferenceDevice
from models.memory import GuestMemory
from sw.board import DemoConfig, Mismatch, run_demo
from sw.link import LinkError, UartLink
from sw.transport import run_coroutine

_now = run_coroutine  # the reference model's register ports never suspend


class ModelBoard:
    """A :class:`sw.link.BytePipe` answering like the bridge, on a reference device."""

    def __init__(self, mem_bytes: int = 65536, *, corrupt_after: int | None = None,
                 baud: int = 25_000_000, info_baud: int | None = None) -> None:
        self.dev = ReferenceDevice(GuestMemory(mem_bytes), data_width=64)
        self.mem_bytes = mem_bytes
        self.baud = baud  # the pipe's
        self.info_baud = info_baud or baud  # the board's, as INFO reports it
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.frames = 0
        self.corrupt_after = corrupt_after  # flip a bit in the request numbered this

    def write(self, data: bytes) -> None:
        self.inbox += data
        while len(self.inbox) >= 10:
            assert self.inbox[0] == p.SYNC_REQUEST
            cmd, _addr, length = p.HEADER.unpack(self.inbox[1:8])
            n = 10 + (length if cmd in p.WRITE_COMMANDS else 0)
            if len(self.inbox) < n:
                return
            frame = bytearray(self.inbox[:n])
            del self.inbox[:n]
            if self.frames == self.corrupt_after:
                frame[2] ^= 0x10
            self.frames += 1
            self.outbox += self.execute(bytes(frame))

    def execute(self, frame: bytes) -> bytes:
        irq = p.STATUS_IRQ if _now(self.dev.guest.read32(0x60)) else 0
        if p.crc16(frame[1:]) != 0:
            return p.encode_response(p.STATUS_ERR_CRC | irq)
        cmd, addr, length = p.HEADER.unpack(frame[1:8])
        payload = frame[8:-2]
        data, status = b"", 0
        ports = {p.CMD_GUEST_READ: self.dev.guest, p.CMD_GUEST_WRITE: self.dev.guest,
                 p.CMD_HV_READ: self.dev.hv, p.CMD_HV_WRITE: self.dev.hv}
        if cmd == p.CMD_INFO:
            data = p.INFO.pack(p.INFO_MAGIC, self.mem_bytes, 4 * self.info_baud, 4,
                               p.MEM_WRITE_MAX, 64, 0)
        elif cmd in (p.CMD_GUEST_READ, p.CMD_HV_READ):
            data = _now(ports[cmd].read32(addr)).to_bytes(4, "little")
        elif cmd in (p.CMD_GUEST_WRITE, p.CMD_HV_WRITE):
            _now(ports[cmd].write32(addr, int.from_bytes(payload, "little")))
        elif cmd in (p.CMD_MEM_READ, p.CMD_MEM_WRITE):
            if addr + length > self.mem_bytes:
                status = p.STATUS_ERR_RANGE
            elif cmd == p.CMD_MEM_READ:
                data = self.dev.mem.read(addr, length)
            elif length > p.MEM_WRITE_MAX:
                status = p.STATUS_ERR_CMD
            else:
                self.dev.mem.write(addr, payload)
        elif cmd == p.CMD_WAIT_IRQ:
            status = 0 if irq else p.STATUS_TIMEOUT
        elif cmd != p.CMD_RESET:
            status = p.STATUS_ERR_CMD
        irq = p.STATUS_IRQ if _now(self.dev.guest.read32(0x60)) else 0
        return p.encode_response(status | irq, data)

    def read(self, n: int, timeout: float) -> bytes:
        if len(self.outbox) < n:
            raise TimeoutError(f"{len(self.outbox)} of {n} byte(s)")
        out = bytes(self.outbox[:n])
        del self.outbox[:n]
        return out


def test_frames_have_a_zero_residue():
    frame = p.encode_request(p.CMD_MEM_WRITE, 0x1234, 3, b"abc")
    assert frame[0] == p.SYNC_REQUEST and len(frame) == 1 + 7 + 3 + 2
    assert p.crc16(frame[1:]) == 0
    assert p.crc16(b"123456789") == 0x29B1  # the CRC-16/CCITT-FALSE check value
    assert p.crc16(p.encode_response(0x01, b"xy")[1:]) == 0


@pytest.mark.parametrize(("args", "match"), [
    ((p.CMD_GUEST_WRITE, 0, 4, b"abc"), r"^payload of 3 byte\(s\) for len 4$"),
    ((p.CMD_GUEST_READ, 0, 4, b"abcd"), r"^command 0x01 takes no payload$"),
    ((p.CMD_MEM_READ, 1 << 32, 4), r"^request fields out of range"),
])
def test_bad_requests_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        p.encode_request(*args)


def test_registers_memory_and_posted_writes():
    board = ModelBoard()
    link = UartLink(board, max_posted=4)
    assert link.info.mem_bytes == 65536 and link.info.data_width == 64
    assert asyncio.run(link.guest.read32(0)) == 0x74726976
    link.mem.write(0x100, bytes(range(256)) * 3)  # three posted MEM_WRITEs
    assert link.mem.read(0x100, 768) == bytes(range(256)) * 3
    for i in range(10):  # more than max_posted: collected on the way
        asyncio.run(link.hv.write32(0x1000 + 8 * i, i))
    assert len(link._posted) < 4
    assert asyncio.run(link.hv.read32(0x1000 + 8 * 9)) == 9
    with pytest.raises(ValueError, match="outside guest memory"):
        link.mem.read(65536 - 4, 8)


def test_errors_are_raised():
    board = ModelBoard(corrupt_after=2)
    link = UartLink(board)  # frame 0: INFO
    asyncio.run(link.guest.write32(0x70, 0))  # frame 1: fine, posted
    asyncio.run(link.guest.write32(0x70, 0))  # frame 2: corrupted on the wire
    with pytest.raises(LinkError, match="request CRC error"):
        link.sync()
    with pytest.raises(LinkError, match="outside guest memory"):
        link.request(p.CMD_MEM_READ, 65530, 16)
    with pytest.raises(LinkError, match="bad command or length"):
        link.request(0x3F)
    with pytest.raises(TimeoutError):
        asyncio.run(link.wait_irq(100))


def test_baud_mismatch_is_reported():
    board = ModelBoard(info_baud=25_000_000)
    board.baud = 1_000_000  # the port's
    with pytest.raises(LinkError, match=r"runs its UART at 25000000 baud, the port at 1000000"):
        UartLink(board)


@pytest.mark.parametrize("handle_mode", [True, False])
def test_demo_on_the_model(handle_mode):
    board = ModelBoard()
    link = UartLink(board)
    cfg = DemoConfig(handle_mode=handle_mode, requests=24, sizes=(512, 4096, 32768))
    res = asyncio.run(run_demo(link, cfg))
    assert res.summary["matches_reference"] and res.summary["requests"] == 24
    assert res.summary["translations"] == res.ref.translations
    assert (res.summary["translations"] > 0) == handle_mode


def test_demo_reports_a_mismatch():
    board = ModelBoard()
    link = UartLink(board)
    board.dev.disk[4096] ^= 1  # the "board" disk differs from the reference's (sector 8)
    with pytest.raises(Mismatch, match="differs"):
        asyncio.run(run_demo(link, DemoConfig(requests=0, sizes=(512,), restore_disk=False)))


def test_cli_over_a_pseudo_terminal(capsys):
    """``python -m sw.board`` through pyserial, with the model board behind a pty."""
    pytest.importorskip("serial")
    import os
    import pty
    import threading

    from sw import board as cli

    master, slave = pty.openpty()
    tty.setraw(slave)
    model = ModelBoard(baud=1_000_000)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            model.write(data)
            if model.outbox:
                os.write(master, bytes(model.outbox))
                model.outbox.clear()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        status = cli.main(["--port", os.ttyname(slave), "--requests", "8", "--mode", "gpa"])
    finally:
        stop.set()
        os.close(master)
        os.close(slave)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "matches reference: yes" in out and "1 Mbaud" in out
