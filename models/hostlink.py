"""The wire format of the UART link between a host and the board's bridge.

A specification of this project's link, so it sits at the ground floor: the gateware
(``rtl/board/bridge.py``) and the host transport (``sw/link.py``) both read it here.
docs/board.md ("Link protocol") is the user-facing description.

A request::

    0xA5 | cmd | addr (u32 LE) | len (u16 LE) | payload (len bytes, write commands only) | crc16

A response::

    0x5A | status | len (u16 LE) | payload (len bytes) | crc16

``crc16`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no
final XOR; Python's ``binascii.crc_hqx(data, 0xFFFF)``) over every byte after the sync byte,
sent most significant byte first, so that the CRC of a whole good frame after its sync byte is
0. The bridge executes a request only when its CRC is good; it answers every request it framed,
in order, with exactly one response.
"""

from __future__ import annotations

import binascii
import struct

SYNC_REQUEST = 0xA5
SYNC_RESPONSE = 0x5A

# commands
CMD_INFO = 0x00  # len 0 -> the 20-byte INFO payload
CMD_GUEST_READ = 0x01  # addr = s_axil offset, len 4 -> 4 bytes
CMD_GUEST_WRITE = 0x02  # addr = s_axil offset, len 4, payload = value (LE)
CMD_HV_READ = 0x03  # addr = s_hv offset, len 4 -> 4 bytes
CMD_HV_WRITE = 0x04  # addr = s_hv offset, len 4, payload = value (LE)
CMD_MEM_READ = 0x05  # addr = guest physical address, len bytes -> len bytes
CMD_MEM_WRITE = 0x06  # addr = guest physical address, len <= MEM_WRITE_MAX, payload = data
CMD_WAIT_IRQ = 0x07  # addr = timeout in clock cycles, len 0: answers once irq is high
CMD_RESET = 0x08  # len 0: holds the device (not the bridge or memory) in reset 16 cycles

WRITE_COMMANDS = (CMD_GUEST_WRITE, CMD_HV_WRITE, CMD_MEM_WRITE)

# status bits of a response
STATUS_IRQ = 0x01  # the device's irq line when the response was sent
STATUS_ERR_CRC = 0x02  # the request's CRC was wrong: nothing was done
STATUS_ERR_BUS = 0x04  # the AXI4-Lite access got SLVERR or DECERR
STATUS_ERR_RANGE = 0x08  # memory window access outside [0, mem_bytes)
STATUS_ERR_CMD = 0x10  # unknown command or a length the command does not take
STATUS_TIMEOUT = 0x20  # WAIT_IRQ: irq stayed low for the whole timeout
STATUS_ERRORS = STATUS_ERR_CRC | STATUS_ERR_BUS | STATUS_ERR_RANGE | STATUS_ERR_CMD

MEM_WRITE_MAX = 256  # payload bytes of one MEM_WRITE (the bridge's staging buffer)
RESET_CYCLES = 16

INFO_MAGIC = 0x314B_4E4C  # "LNK1"
# INFO payload: magic, mem_bytes, clk_hz, clks_per_bit, MEM_WRITE_MAX, data_width, reserved
INFO = struct.Struct("<IIIHHHH")
INFO_BYTES = INFO.size  # 20

HEADER = struct.Struct("<BIH")  # cmd, addr, len (after the sync byte)
RESPONSE_HEADER = struct.Struct("<BH")  # status, len


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (continuing from ``crc``)."""
    return binascii.crc_hqx(data, crc)


def encode_request(cmd: int, addr: int = 0, length: int = 0, payload: bytes = b"") -> bytes:
    """One request frame. ``length`` is the payload length for write commands."""
    if not 0 <= cmd <= 0xFF or not 0 <= addr <= 0xFFFF_FFFF or not 0 <= length <= 0xFFFF:
        raise ValueError(f"request fields out of range: cmd={cmd!r} addr={addr!r} "
                         f"len={length!r}")
    if cmd in WRITE_COMMANDS and len(payload) != length:
        raise ValueError(f"payload of {len(payload)} byte(s) for len {length}")
    if cmd not in WRITE_COMMANDS and payload:
        raise ValueError(f"command {cmd:#04x} takes no payload")
    body = HEADER.pack(cmd, addr, length) + payload
    return bytes([SYNC_REQUEST]) + body + crc16(body).to_bytes(2, "big")


def encode_response(status: int, payload: bytes = b"") -> bytes:
    """One response frame (what the bridge sends; used by host-side tests)."""
    body = RESPONSE_HEADER.pack(status, len(payload)) + payload
    return bytes([SYNC_RESPONSE]) + body + crc16(body).to_bytes(2, "big")
