"""The Linux guest bridge: the vhost-user protocol side against a scripted front-end (always),
and ``make linux`` end to end when QEMU is installed (the reference model, then the RTL)."""

from __future__ import annotations

import array
import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sw.vhost_user import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_USER_VERSION,
    IotlbMsg,
    IotlbType,
    MemoryTable,
    ProtocolFeature,
    Request,
    VhostUserBackend,
    VhostUserError,
    Vring,
)

ROOT = Path(__file__).resolve().parent.parent


class FakeDevice:
    """Records what the back-end asks of the device."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.table: MemoryTable | None = None

    async def get_config(self, offset: int, size: int) -> bytes:
        self.calls.append(("get_config", offset, size))
        return bytes(range(offset, offset + size))

    async def set_features(self, features: int) -> None:
        self.calls.append(("set_features", features))

    async def set_mem_table(self, table: MemoryTable) -> None:
        self.table = table
        self.calls.append(("set_mem_table",))

    async def start_ring(self, vring: Vring) -> None:
        self.calls.append(("start_ring", vring.index, vring.num, vring.desc))

    async def kick(self, vring: Vring) -> None:
        self.calls.append(("kick", vring.index))

    async def stop_ring(self, vring: Vring) -> int:
        self.calls.append(("stop_ring", vring.index))
        return 42

    async def iotlb_message(self, msg: IotlbMsg) -> None:
        self.calls.append(("iotlb", msg))


class FrontEnd:
    """A scripted QEMU: sends messages, reads replies."""

    def __init__(self, features: int = 1 << 32 | 1 << 9) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.dev = FakeDevice()
        self.be = VhostUserBackend(theirs, self.dev, features=features)

    def send(self, req: int, payload: bytes = b"", fds: list[int] = (), flags: int = 0) -> None:
        data = HEADER.pack(req, VHOST_USER_VERSION | flags, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def step(self) -> None:
        msg = self.be.receive()
        assert msg is not None
        asyncio.run(self.be.handle(msg))

    def reply(self) -> tuple[int, int, bytes]:
        self.sock.settimeout(2)
        req, flags, size = HEADER.unpack(self.sock.recv(HEADER.size))
        payload = self.sock.recv(size) if size else b""
        assert flags & FLAG_REPLY
        return req, flags, payload

    def u64(self, req: int) -> int:
        self.send(req)
        self.step()
        r, _, payload = self.reply()
        assert r == req
        return struct.unpack("<Q", payload)[0]


def test_features_and_protocol_features():
    fe = FrontEnd()
    assert fe.u64(Request.GET_FEATURES) == (1 << 32 | 1 << 9
                                            | 1 << VHOST_USER_F_PROTOCOL_FEATURES)
    pf = fe.u64(Request.GET_PROTOCOL_FEATURES)
    assert pf == (1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK
                  | 1 << ProtocolFeature.CONFIG)
    assert fe.u64(Request.GET_QUEUE_NUM) == 1
    # SET_FEATURES hands the device the virtio bits only; REPLY_ACK answers 0.
    fe.send(Request.SET_FEATURES, struct.pack("<Q", 1 << 32 | 1 << 30), flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    assert fe.dev.calls[-1] == ("set_features", 1 << 32)
    fe.send(Request.SET_FEATURES, struct.pack("<Q", 1 << 5))
    with pytest.raises(VhostUserError, match="not offered"):
        fe.step()


def test_get_config_comes_from_the_device():
    fe = FrontEnd()
    fe.send(Request.GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60))
    fe.step()
    req, _, payload = fe.reply()
    assert req == Request.GET_CONFIG
    assert payload == struct.pack("<III", 0, 60, 0) + bytes(range(60))


def test_memory_table_maps_fds_and_translates():
    fe = FrontEnd()
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 3 << 20)
    regions = [(0, 0xA0000, 0x7F00_0000_0000, 0), (0x100000, 0x200000, 0x7F00_0010_0000,
                                                   0x100000)]
    payload = struct.pack("<II", len(regions), 0) + b"".join(
        struct.pack("<QQQQ", *r) for r in regions)
    fe.send(Request.SET_MEM_TABLE, payload, fds=[fd, fd], flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    t = fe.dev.table
    assert t is not None and t.size == 0x300000
    assert t.uva_to_gpa(0x7F00_0010_1234) == 0x101234
    t.write(0x100010, b"hello")
    assert os.pread(fd, 5, 0x100010) == b"hello"  # the same memory QEMU's guest sees
    os.pwrite(fd, b"xyz", 0x20)
    assert t.read(0x20, 3) == b"xyz"
    with pytest.raises(ValueError, match="not inside one region"):
        t.read(0xA0000 - 2, 4)  # straddles the hole below 1 MiB
    with pytest.raises(VhostUserError, match="not inside one region"):
        t.uva_to_gpa(0x7F00_0000_0000 + 0xA0000)
    os.close(fd)


def _ring(fe: FrontEnd, kick: int) -> None:
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 0, 128))
    fe.send(Request.SET_VRING_BASE, struct.pack("<II", 0, 0))
    fe.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0x1000, 0x3000, 0x2000, 0))
    fe.send(Request.SET_VRING_KICK, struct.pack("<Q", 0), fds=[kick])
    for _ in range(4):
        fe.step()


def test_ring_start_kick_before_enable_and_stop():
    fe = FrontEnd()
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 1 << 20)
    fe.send(Request.SET_MEM_TABLE, struct.pack("<II", 1, 0)
            + struct.pack("<QQQQ", 0, 1 << 20, 0, 0), fds=[fd])
    fe.step()
    os.close(fd)
    kick = os.eventfd(0)
    _ring(fe, os.dup(kick))
    assert ("start_ring", 0, 128, 0x1000) in fe.dev.calls
    vring = fe.be.vrings[0]
    # The first kick can arrive before SET_VRING_ENABLE: it must not be lost.
    os.eventfd_write(kick, 1)
    asyncio.run(fe.be.kicked(vring))
    assert ("kick", 0) not in fe.dev.calls and vring.kick_pending
    fe.send(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
    fe.step()
    assert fe.dev.calls[-1] == ("kick", 0)
    # Completions go to the call eventfd, and wait for one if there is none yet.
    fe.be.call(vring)
    assert vring.call_pending
    call = os.eventfd(0)
    fe.send(Request.SET_VRING_CALL, struct.pack("<Q", 0), fds=[os.dup(call)])
    fe.step()
    assert os.eventfd_read(call) == 1
    fe.send(Request.GET_VRING_BASE, struct.pack("<II", 0, 0))
    fe.step()
    assert fe.reply()[2] == struct.pack("<II", 0, 42)
    assert fe.dev.calls[-1] == ("stop_ring", 0) and vring.kick_fd is None
    os.close(kick)
    os.close(call)


def test_unknown_and_unsupported_messages_are_clear_errors():
    fe = FrontEnd()
    fe.send(Request.SET_LOG_BASE, struct.pack("<QQ", 0, 0), flags=FLAG_NEED_REPLY)
    with pytest.raises(VhostUserError, match=r"SET_LOG_BASE \(6\) is not implemented"):
        fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 1)  # QEMU is told it failed
    fe.send(99)
    with pytest.raises(VhostUserError, match=r"unknown \(99\)"):
        fe.step()
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 3, 128))
    with pytest.raises(VhostUserError, match="queue index 3"):
        fe.step()


def test_iotlb_messages_reach_the_device_hook():
    fe = FrontEnd()
    msg = IotlbMsg(0x1000, 0x2000, 0x7F00_0000_0000, 3, IotlbType.UPDATE)
    fe.send(Request.IOTLB_MSG, msg.pack(), flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    assert fe.dev.calls[-1] == ("iotlb", msg)
    assert len(msg.pack()) == 32


# --- the transport on the reference model, with a scripted front-end -----------------------------

def test_transport_replays_the_ring_on_the_device():
    """SET_* messages become virtio-mmio register writes; a kick serves the request on the
    reference model, in the front-end's shared memory; the completion signals the call fd."""
    from models import spec
    from tb.linux_bridge import MmioTransport, ModelLink

    disk = 64 * 1024
    link = ModelLink(disk, data_width=64)
    t = MmioTransport(link, disk)
    ident = asyncio.run(t.identify())
    fe = FrontEnd(features=ident.features)
    fe.be.device = t
    t.backend = fe.be
    uva = 0x7F00_0000_0000  # where "QEMU" has the guest's RAM
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 1 << 20)
    fe.send(Request.SET_FEATURES, struct.pack("<Q", ident.features))
    fe.send(Request.SET_MEM_TABLE, struct.pack("<II", 1, 0)
            + struct.pack("<QQQQ", 0, 1 << 20, uva, 0), fds=[fd])
    desc, avail, used, n = 0x10000, 0x11000, 0x12000, 8
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 0, n))
    fe.send(Request.SET_VRING_BASE, struct.pack("<II", 0, 0))
    fe.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, uva + desc, uva + used,
                                                uva + avail, 0))
    kick, call = os.eventfd(0), os.eventfd(0)
    fe.send(Request.SET_VRING_CALL, struct.pack("<Q", 0), fds=[os.dup(call)])
    fe.send(Request.SET_VRING_KICK, struct.pack("<Q", 0), fds=[os.dup(kick)])
    fe.send(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
    for _ in range(8):
        fe.step()
    regs = link.dev
    assert regs.status & spec.STATUS_DRIVER_OK and regs.queue_desc == desc  # GPA, not uva
    assert (regs.queue_driver, regs.queue_device, regs.queue_num) == (avail, used, n)
    # One write of 512 bytes at sector 2, as a guest would lay it out in its memory.
    mem = os.fdopen(os.dup(fd), "r+b", buffering=0)
    data = bytes(range(256)) * 2
    mem.seek(0x20000)
    mem.write(struct.pack("<IIQ", spec.VIRTIO_BLK_T_OUT, 0, 2) + data + b"\xff")
    mem.seek(desc)
    mem.write(struct.pack("<QIHH", 0x20000, 16, 1, 1) + struct.pack("<QIHH", 0x20010, 512, 1, 2)
              + struct.pack("<QIHH", 0x20210, 1, 2, 0))
    mem.seek(avail)
    mem.write(struct.pack("<HHH", 0, 1, 0))
    os.eventfd_write(kick, 1)
    asyncio.run(fe.be.kicked(fe.be.vrings[0]))
    assert link.irq
    asyncio.run(t.service_irq())
    assert os.eventfd_read(call) == 1 and not link.irq
    mem.seek(used)
    assert mem.read(12) == struct.pack("<HHII", 0, 1, 0, 1)
    mem.seek(0x20210)
    assert mem.read(1) == b"\0"  # VIRTIO_BLK_S_OK
    assert bytes(regs.disk[1024:1536]) == data == bytes(t.requests.shadow[1024:1536])
    assert [r.kind for r in t.requests.done] == ["write"] and not t.requests.errors
    fe.send(Request.GET_VRING_BASE, struct.pack("<II", 0, 0))
    fe.step()
    assert fe.reply()[2] == struct.pack("<II", 0, 1) and regs.status == 0
    mem.close()
    for f in (fd, kick, call):
        os.close(f)


def test_request_log_flags_a_wrong_used_element():
    from models import spec
    from models.memory import GuestMemory
    from tb.linux_bridge import GuestRam, RequestLog

    ram = GuestRam()
    ram.table = GuestMemory(1 << 16)  # type: ignore[assignment]
    log = RequestLog(ram, 64 * 1024)
    log.start(4, 0x1000, 0x2000, 0x3000)
    ram.write(0x4000, struct.pack("<IIQ", spec.VIRTIO_BLK_T_IN, 0, 1))
    ram.write(0x1000, struct.pack("<QIHH", 0x4000, 16, 1, 1)
              + struct.pack("<QIHH", 0x5000, 1024, 3, 2) + struct.pack("<QIHH", 0x6000, 1, 2, 0))
    ram.write(0x2000, struct.pack("<HHH", 0, 1, 0))
    assert log.take_avail(10) == 1 and log.outstanding()
    ram.write(0x3000, struct.pack("<HHII", 0, 1, 0, 1024))  # len must count the status byte
    assert log.collect(20) == 1
    assert log.errors == ["used element 0 (read of 1024 B at sector 1): len 1024, expected 1025"]


# --- end to end -----------------------------------------------------------------------------------

def _missing() -> str | None:
    """What ``tools/linux/guest.py`` needs (checked here too: ``tools`` is not installed)."""
    missing = [what for what, ok in (
        ("qemu-system-x86_64", shutil.which("qemu-system-x86_64")),
        ("/usr/share/qemu/qboot.rom", Path("/usr/share/qemu/qboot.rom").exists()),
        ("/bin/busybox (busybox-static)", Path("/bin/busybox").exists()),
        ("cpio", shutil.which("cpio")), ("iverilog", shutil.which("iverilog")),
        ("apt-get", shutil.which("apt-get"))) if not ok]
    return "needs " + ", ".join(missing) + " (make linux installs them)" if missing else None


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.linux.run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.sim
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed (make linux installs it)")
@pytest.mark.parametrize("mode", ["model", "rtl"])
def test_linux_guest(mode):
    if os.environ.get("VHB_SKIP_LINUX"):
        pytest.skip("VHB_SKIP_LINUX is set (CI runs make linux separately)")
    reason = _missing()
    if reason:
        pytest.skip(reason)
    res = _run(*(["--model"] if mode == "model" else []))
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, f"make linux ({mode}) failed:\n{tail}"
    assert "result               PASS" in res.stdout, tail


@pytest.mark.sim
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="the configuration is built for make linux only")
@pytest.mark.parametrize("model", ["fast", "cocotbext"])
def test_bridge_memory_models(model):
    """Both ``m_axi`` models of the bridge (``--axi-model``) serve 4 KiB writes and reads on
    the configuration ``make linux`` runs, and count the bytes; the simulation log has cycles
    per second (``-s`` shows it; 200 requests gave the figures in docs/linux.md)."""
    if os.environ.get("VHB_SKIP_LINUX"):
        pytest.skip("VHB_SKIP_LINUX is set (CI runs make linux separately)")
    from tb.runner import DeviceConfig, run

    tests, failed, xml = run(
        "tb.test_linux", DeviceConfig(data_width=128, disk_bytes=2 << 20),
        testcase="test_memory_model_speed", results_name=f"linux_speed_{model}",
        params={"axi_model": model, "requests": 8})
    assert (tests, failed) == (1, 0), f"the {model} model failed; log above, results {xml}"
