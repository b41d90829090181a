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

    def __init__(self, features: int = 1 << 32 | 1 << 9, iommu: bool = False) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.dev = FakeDevice()
        self.be = VhostUserBackend(theirs, self.dev, features=features, iommu=iommu)

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


def _start_ring(fe: FrontEnd, n: int, desc: int, avail: int, used: int) -> tuple[int, int]:
    """Queue 0 as QEMU sets it up (addresses in the front-end's space), enabled; its kick
    and call eventfds."""
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 0, n))
    fe.send(Request.SET_VRING_BASE, struct.pack("<II", 0, 0))
    fe.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, desc, used, avail, 0))
    kick, call = os.eventfd(0), os.eventfd(0)
    fe.send(Request.SET_VRING_CALL, struct.pack("<Q", 0), fds=[os.dup(call)])
    fe.send(Request.SET_VRING_KICK, struct.pack("<Q", 0), fds=[os.dup(kick)])
    fe.send(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
    return kick, call


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

def _lay_write(mem, table: int, avail: int, addr: int) -> bytes:
    """One write of 512 bytes at sector 2, as a guest lays it out in its memory (``mem``, at
    GPAs): header, data and status byte at 0x20000, device address ``addr`` (the GPA, or an
    IOVA); the three descriptors at ``table``; the avail ring at ``avail`` offering chain 0.
    Returns the data."""
    from models import spec

    data = bytes(range(256)) * 2
    mem.seek(0x20000)
    mem.write(struct.pack("<IIQ", spec.VIRTIO_BLK_T_OUT, 0, 2) + data + b"\xff")
    mem.seek(table)
    mem.write(_desc(addr, 16, 1, 1) + _desc(addr + 16, 512, 1, 2) + _desc(addr + 0x210, 1, 2))
    mem.seek(avail)
    mem.write(struct.pack("<HHH", 0, 1, 0))
    return data


def _check_write_served(t, ident, mem, used: int, call: int, data: bytes) -> None:
    """:func:`_lay_write`'s request is pending on the transport ``t``: its interrupt serviced
    signals ``call``; the used ring at GPA ``used`` holds chain 0 (1 byte written), the status
    is OK, the disk and the request log's shadow hold the data, the log has the one write."""
    assert t.link.irq
    asyncio.run(t.service_irq())
    assert os.eventfd_read(call) == 1 and not t.link.irq
    mem.seek(used)
    assert mem.read(12) == struct.pack("<HHII", 0, 1, 0, 1)
    mem.seek(0x20210)
    assert mem.read(1) == b"\0"  # VIRTIO_BLK_S_OK
    assert bytes(t.link.dev.disk[1024:1536]) == data == bytes(t.requests.shadow[1024:1536])
    assert [r.kind for r in t.requests.done] == ["write"] and not t.requests.errors
    assert t.negotiated == [ident.features]  # DriverFeatures read back from the device

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
    kick, call = _start_ring(fe, n, uva + desc, uva + avail, uva + used)
    for _ in range(8):
        fe.step()
    regs = link.dev
    assert regs.status & spec.STATUS_DRIVER_OK and regs.queue_desc == desc  # GPA, not uva
    assert (regs.queue_driver, regs.queue_device, regs.queue_num) == (avail, used, n)
    mem = os.fdopen(os.dup(fd), "r+b", buffering=0)
    data = _lay_write(mem, desc, avail, 0x20000)
    os.eventfd_write(kick, 1)
    asyncio.run(fe.be.kicked(fe.be.vrings[0]))
    _check_write_served(t, ident, mem, used, call, data)
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


def _request_log(num: int = 8):
    from models.memory import GuestMemory
    from tb.linux_bridge import GuestRam, RequestLog

    ram = GuestRam()
    ram.table = GuestMemory(1 << 17)  # type: ignore[assignment]
    log = RequestLog(ram, 64 * 1024)
    log.start(num, 0x1000, 0x2000, 0x3000)
    return ram, log


def _desc(addr: int, length: int, flags: int, nxt: int = 0) -> bytes:
    return struct.pack("<QIHH", addr, length, flags, nxt)


def test_request_log_follows_indirect_tables_and_zeroes_for_discard_and_write_zeroes():
    """Issue 17: a chain through an indirect table is decoded from the table; DISCARD and
    WRITE_ZEROES zero the shadow disk exactly where docs/architecture.md says the device does
    (a DISCARD with UNMAP is UNSUPP and zeroes nothing)."""
    from models import spec

    ram, log = _request_log()
    data = bytes(range(256)) * 4
    # 0: OUT of 1024 bytes at sector 2, header / two data segments / status in a table.
    ram.write(0x4000, struct.pack("<IIQ", spec.VIRTIO_BLK_T_OUT, 0, 2) + data)
    ram.write(0x8000, _desc(0x4000, 16, 1, 1) + _desc(0x4010, 512, 1, 2)
              + _desc(0x4210, 512, 1, 3) + _desc(0x4500, 1, 2))
    ram.write(0x1000, _desc(0x8000, 64, spec.VIRTQ_DESC_F_INDIRECT))
    segs = [(spec.VIRTIO_BLK_T_WRITE_ZEROES, 2, 1, 1), (spec.VIRTIO_BLK_T_DISCARD, 3, 1, 1),
            (spec.VIRTIO_BLK_T_DISCARD, 0, 1, 0)]
    for k, (rtype, sector, num, flags) in enumerate(segs, start=1):
        hdr = 0x5000 + 0x100 * k
        ram.write(hdr, struct.pack("<IIQ", rtype, 0, 0) + struct.pack("<QII", sector, num, flags))
        ram.write(0x1000 + 16 * 2 * k, _desc(hdr, 32, 1, 2 * k + 1) + _desc(hdr + 0x80, 1, 2))
    ram.write(0x2000, struct.pack("<HH", 0, 4) + struct.pack("<4H", 0, 2, 4, 6))
    before = bytes(log.shadow)
    assert log.take_avail(1) == 4 and not log.errors
    reqs = list(log.pending)
    assert [r.kind for r in reqs] == ["write", "write-zeroes", "discard", "discard"]
    assert (reqs[0].indirect, reqs[0].descs, reqs[0].data_len) == (True, 4, 1024)
    assert [r.dwz for r in reqs[1:]] == [(2, 1, 1), (3, 1, 1), (0, 1, 0)]
    assert not any(r.indirect for r in reqs[1:]) and reqs[1].descs == 2
    shadow = bytes(log.shadow)
    assert shadow[:512] == bytes(512)  # the plain DISCARD
    assert shadow[1024:1536] == bytes(512)  # WRITE_ZEROES with UNMAP (the OUT came first)
    assert shadow[1536:2048] == data[512:]  # DISCARD with UNMAP: UNSUPP, the OUT's data stays
    assert shadow[512:1024] == before[512:1024] and log.max_in_flight == 4
    ram.write(0x3000, struct.pack("<HH", 0, 4) + b"".join(
        struct.pack("<II", h, 1) for h in (0, 2, 4, 6)))
    assert log.collect(2) == 4 and not log.errors


@pytest.mark.parametrize("flags, length", [
    (4 | 1, 64),  # INDIRECT with NEXT
    (4, 0),  # an empty table
    (4, 24),  # not a multiple of 16
    (4, 16 * 9),  # longer than the queue (8)
])
def test_request_log_flags_a_malformed_indirect_descriptor(flags, length):
    ram, log = _request_log()
    ram.write(0x1000, _desc(0x8000, length, flags, 1))
    ram.write(0x2000, struct.pack("<HHH", 0, 1, 0))
    assert log.take_avail(1) == 1 and not log.pending
    assert log.errors and "INDIRECT" in log.errors[0]


def test_request_log_snapshots_counters_at_marker_reads():
    """A 512-byte read at a marker sector snapshots the transport's counters when its used
    element is matched; a window is the difference between two markers."""
    from models import spec
    from tb.linux_bridge import _window

    ram, log = _request_log()
    n = {"kicks": 0}
    log.mark_sectors = (40, 41)
    log.probe = lambda: {"kicks": n["kicks"], "notifies": 0, "interrupts": 0, "calls": 0,
                         "cycle": 0, "time": 0.0, "features": 1 << 29}
    for k, sector in enumerate((40, 7, 41)):
        ram.write(0x4000 + 0x100 * k, struct.pack("<IIQ", spec.VIRTIO_BLK_T_IN, 0, sector))
        ram.write(0x1000 + 32 * k, _desc(0x4000 + 0x100 * k, 16, 1, 2 * k + 1)
                  + _desc(0x6000, 512, 2))
    # Only three used elements' worth: the middle read is a 512-byte read too, not a marker.
    ram.write(0x1000 + 16, _desc(0x6000, 513, 2))
    ram.write(0x1000 + 48, _desc(0x6000, 513, 2))
    ram.write(0x1000 + 80, _desc(0x6000, 513, 2))
    ram.write(0x2000, struct.pack("<HH", 0, 3) + struct.pack("<3H", 0, 2, 4))
    log.take_avail(0)
    for k in range(3):
        n["kicks"] += 5
        ram.write(0x3004 + 8 * k, struct.pack("<II", 2 * k, 513))
        ram.write(0x3000, struct.pack("<HH", 0, k + 1))
        log.collect(k)
    assert [m[0] for m in log.marks] == [40, 41] and not log.errors
    w, _ = _window(log.marks, 40, 41, 0)
    assert w is not None and (w["done"], w["kicks"], w["event_idx"]) == (2, 10, True)
    assert w["kicks_per_request"] == 5.0


def test_counting_backend_counts_every_notify():
    """Kicks that arrive between two polls are counted one by one (the eventfd's count)."""
    from tb.linux_bridge import CountingBackend

    fe = FrontEnd()
    fe.dev.guest_kicks = 0  # type: ignore[attr-defined]
    fe.be = CountingBackend(fe.be.sock, fe.dev, features=1 << 32)
    kick = os.eventfd(0)
    _ring(fe, kick)
    for _ in range(3):
        os.eventfd_write(kick, 1)
    asyncio.run(fe.be.kicked(fe.be.vrings[0]))
    assert fe.dev.guest_kicks == 3  # type: ignore[attr-defined]
    os.close(kick)


def test_guest_plan_zeroes_the_discard_and_zeroout_ranges():
    from models import spec
    from tools.linux.guest import GuestPlan, Kernel, init_script, qemu_command

    plan = GuestPlan.for_mode("gpa")
    disk = plan.expected_disk()
    init = spec.ramdisk_init(plan.disk_bytes)
    for off, n in (plan.discard, plan.zeroout):
        assert disk[off:off + n] == bytes(n) != init[off:off + n]
    data = plan.scatter_data()
    at = plan.scatter_at
    assert disk[at:at + 4096] == data[:4096]  # every other page from scatter_at
    assert disk[at + 4096:at + 8192] == init[at + 4096:at + 8192]
    script = init_script(plan)
    assert f"blkdiscard -o {plan.discard[0]} -l {plan.discard[1]} /dev/vda" in script
    assert "queue_depth" not in script and "vhb.only=notify" in script
    assert plan.checks[-1] == "io-errors" and "notify" in plan.second_boot_checks
    argv = qemu_command(Kernel("v", Path("vmlinuz")), Path("initrd"), "S", event_idx=False,
                        only_notify=True)
    dev = argv[argv.index("-device") + 1]
    assert "queue-size=128" in dev and dev.endswith(",event_idx=off")
    assert "vhb.only=notify" in argv[argv.index("-append") + 1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="runs the guest's x86-64 BLKZEROOUT program on the host")
def test_zeroout_program_reports_the_errno(tmp_path):
    """The guest's BLKZEROOUT program: open fails (ENOENT, 2), the ioctl on a character device
    fails (ENOTTY, 25); the exit status is the errno."""
    from tools.linux.guest import zeroout_elf

    for path, errno in ((b"/nonexistent", 2), (b"/dev/null", 25)):
        prog = tmp_path / "zeroout"
        prog.write_bytes(zeroout_elf(0, 4096, path))
        prog.chmod(0o755)
        assert subprocess.run([str(prog)], check=False).returncode == errno


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
                          capture_output=True, text=True, timeout=3600, check=False)


@pytest.mark.sim
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed (make linux installs it)")
@pytest.mark.parametrize("translation", ["gpa", "iova"])
@pytest.mark.parametrize("mode", ["model", "rtl"])
def test_linux_guest(mode, translation):
    if os.environ.get("VHB_SKIP_LINUX"):
        pytest.skip("VHB_SKIP_LINUX is set (CI runs make linux separately)")
    reason = _missing()
    if reason:
        pytest.skip(reason)
    res = _run(*(["--model"] if mode == "model" else []), "--mode", translation)
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, f"make linux ({mode}, {translation}) failed:\n{tail}"
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


# --- IOVA mode: the bridge as the hypervisor, a scripted QEMU, a recording s_hv -------------------

class RecordingHv:
    """The device's privileged port as far as the bridge's IOTLB code uses it: records every
    write; HV_SYNC reads 0 ``sync_busy`` times after each write before it reads 1 (and the
    test's ``on_sync`` sees the moment it completes); a miss can be raised."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []
        self.start = 0  # commands() shows the writes from here
        self.regs: dict[int, int] = {}
        self.sync_busy = 2
        self._busy = 0
        self.on_sync = None

    async def write32(self, off: int, value: int) -> None:
        from models import spec

        self.writes.append((off, value))
        self.regs[off] = value
        if off == spec.HV_SYNC:
            self._busy = self.sync_busy
        if off == spec.HV_MISS_RESOLVE:
            self.regs[spec.HV_IOTLB_MISS] = 0

    async def read32(self, off: int) -> int:
        from models import spec

        if off == spec.HV_SYNC:
            if self._busy:
                self._busy -= 1
                return 0
            if self.on_sync is not None:
                self.on_sync()
            return 1
        return self.regs.get(off, 0)

    def raise_miss(self, iova: int, write: bool) -> None:
        from models import spec

        self.regs[spec.HV_IOTLB_MISS] = spec.IOTLB_MISS_PENDING | (
            spec.IOTLB_MISS_WRITE if write else spec.IOTLB_MISS_READ)
        self.regs[spec.HV_MISS_IOVA_LO] = iova & 0xFFFF_FFFF
        self.regs[spec.HV_MISS_IOVA_HI] = iova >> 32

    def clear(self) -> None:
        self.start = len(self.writes)

    def commands(self) -> list[tuple]:
        """The IOTLB commands as (cmd, iova, pa, attr), with the staging registers' values
        when each command was written; ("sync",) and ("resolve", how) in between."""
        from models import spec

        staged: dict[int, int] = {}
        out: list[tuple] = []
        for i, (off, v) in enumerate(self.writes):
            staged[off] = v
            if i < self.start:
                continue
            if off == spec.HV_IOTLB_CMD:
                out.append((v, staged.get(spec.HV_IOTLB_IOVA_HI, 0) << 32
                            | staged.get(spec.HV_IOTLB_IOVA_LO, 0),
                            staged.get(spec.HV_IOTLB_PA_HI, 0) << 32
                            | staged.get(spec.HV_IOTLB_PA_LO, 0),
                            staged.get(spec.HV_IOTLB_ATTR, 0)))
            elif off == spec.HV_SYNC:
                out.append(("sync",))
            elif off == spec.HV_MISS_RESOLVE:
                out.append(("resolve", v))
        return out


class IovaLink:
    """A :class:`sw.transport.ClockedLink` with a recording s_hv and no device behind it."""

    def __init__(self) -> None:
        from tb.linux_bridge import GuestRam

        self.ram = GuestRam()
        self.mem = self.ram
        self.hv = RecordingHv()
        self.guest = None
        self.cycle = 0
        self.irq = False

    @property
    def hv_irq(self) -> bool:
        from models import spec

        return bool(self.hv.regs.get(spec.HV_IOTLB_MISS, 0) & spec.IOTLB_MISS_PENDING)

    async def advance(self, cycles: int) -> None:
        self.cycle += max(cycles, 1)


UVA = 0x7F00_0000_0000  # where the scripted QEMU has the guest's RAM (GPA 0 up)


def _iova_setup(miss_timeout_s: float = 10.0):
    """A scripted QEMU connected to an IOVA-mode transport, a memory table of 8 MiB at GPA 0
    and the back-end channel; returns (front-end, transport, link, backend-channel socket)."""
    from models import spec
    from tb.linux_bridge import MmioTransport

    link = IovaLink()
    t = MmioTransport(link, 64 * 1024, mode="iova", miss_timeout_s=miss_timeout_s)
    fe = FrontEnd(features=1 << 32 | 1 << spec.VIRTIO_F_ACCESS_PLATFORM, iommu=True)
    fe.be.device = t
    t.backend = fe.be
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 8 << 20)
    fe.send(Request.SET_MEM_TABLE, struct.pack("<II", 1, 0)
            + struct.pack("<QQQQ", 0, 8 << 20, UVA, 0), fds=[fd], flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    os.close(fd)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fe.send(Request.SET_BACKEND_REQ_FD, fds=[theirs.fileno()], flags=FLAG_NEED_REPLY)
    theirs.close()
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    assert fe.be.backend_channel is not None
    return fe, t, link, ours


def _update(fe: FrontEnd, iova: int, size: int, gpa: int, perm: int) -> None:
    msg = IotlbMsg(iova, size, UVA + gpa, perm, IotlbType.UPDATE)
    fe.send(Request.IOTLB_MSG, msg.pack(), flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)


def test_iommu_mode_offers_access_platform_reply_ack_and_backend_req():
    from models import spec

    fe = FrontEnd(features=1 << 32, iommu=True)
    assert fe.u64(Request.GET_FEATURES) >> spec.VIRTIO_F_ACCESS_PLATFORM & 1
    pf = fe.u64(Request.GET_PROTOCOL_FEATURES)
    # QEMU refuses iommu_platform=on without both (vhost-user.rst).
    assert pf >> ProtocolFeature.REPLY_ACK & 1 and pf >> ProtocolFeature.BACKEND_REQ & 1
    assert ProtocolFeature.BACKEND_REQ == 5 and Request.SET_BACKEND_REQ_FD == 21
    plain = FrontEnd(features=1 << 32)
    assert not plain.u64(Request.GET_FEATURES) >> spec.VIRTIO_F_ACCESS_PLATFORM & 1
    assert not plain.u64(Request.GET_PROTOCOL_FEATURES) >> ProtocolFeature.BACKEND_REQ & 1


def test_update_inserts_aligned_pieces_translated_through_the_memory_table():
    from models import spec

    fe, t, link, _ = _iova_setup()
    # SET_MEM_TABLE dropped every translation: invalidate all, then the barrier.
    assert link.hv.commands() == [(spec.IOTLB_CMD_INVALIDATE_ALL, 0, 0, 0), ("sync",)]
    link.hv.clear()
    r, w = spec.IOTLB_ATTR_READ, spec.IOTLB_ATTR_WRITE
    _update(fe, 0xFFFF_0000, 0x1000, 0x30_0000, 1)  # read-only page
    _update(fe, 0x1_0000_3000, 0x3000, 0x50_3000, 3)  # 12 KiB: 4 KiB + 8 KiB pieces
    _update(fe, 0x20_0000, 0x20_0000, 0x60_0000, 2)  # 2 MiB, write-only, one piece
    assert link.hv.commands() == [
        (1, 0xFFFF_0000, 0x30_0000, 12 | r),
        (1, 0x1_0000_3000, 0x50_3000, 12 | r | w),
        (1, 0x1_0000_4000, 0x50_4000, 13 | r | w),
        (1, 0x20_0000, 0x60_0000, 21 | w),
    ]
    assert t.iomap.translate(0x1_0000_4ff0, 0x20) == [(0x50_4ff0, 0x20)]
    assert t.iotlb.updates == 3 and t.iotlb.inserts == 4
    # No miss was pending: nothing is resolved.
    assert not any(c[0] == "resolve" for c in link.hv.commands())


def test_invalidate_removes_syncs_then_acks():
    """QEMU's INVALIDATE: invalidate commands over the range (split like updates), then
    HV_SYNC until it reads 1, and only then the REPLY_ACK."""
    import select as sel

    from models import spec

    fe, t, link, _ = _iova_setup()
    _update(fe, 0x40_0000, 0x4000, 0x10_0000, 3)
    link.hv.clear()
    acked_before_sync: list[bool] = []
    link.hv.on_sync = lambda: acked_before_sync.append(
        bool(sel.select([fe.sock], [], [], 0)[0]))
    msg = IotlbMsg(0x40_1000, 0x3000, 0, 0, IotlbType.INVALIDATE)
    fe.send(Request.IOTLB_MSG, msg.pack(), flags=FLAG_NEED_REPLY)
    fe.step()
    assert acked_before_sync == [False]  # the barrier completed before the ack went out
    assert fe.reply()[2] == struct.pack("<Q", 0)
    assert link.hv.commands() == [(2, 0x40_1000, 0x10_0000, 12), (2, 0x40_2000, 0x10_0000, 13),
                                  ("sync",)]
    assert t.iomap.lookup(0x40_0000) is not None and t.iomap.lookup(0x40_1000) is None
    assert t.iotlb.invalidations == 1
    # A whole address space at once: one invalidate-all.
    link.hv.clear()
    fe.send(Request.IOTLB_MSG, IotlbMsg(0, 2**64 - 1, 0, 0, IotlbType.INVALIDATE).pack(),
            flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    assert link.hv.commands()[-2:] == [(spec.IOTLB_CMD_INVALIDATE_ALL, 0x40_2000, 0x10_0000, 13),
                                       ("sync",)]
    assert len(t.iomap) == 0


def _backend_message(sock: socket.socket) -> tuple[int, int, IotlbMsg]:
    sock.settimeout(2)
    req, flags, size = HEADER.unpack(sock.recv(HEADER.size))
    return req, flags, IotlbMsg.unpack(sock.recv(size))


def test_device_miss_goes_to_qemu_without_need_reply_and_its_update_resolves_it():
    from models import spec

    fe, t, link, chan = _iova_setup()
    link.hv.clear()
    link.hv.raise_miss(0x7_1234, write=True)
    link.cycle = 100
    asyncio.run(t.poll_miss())
    req, flags, msg = _backend_message(chan)
    assert req == 1 and flags == VHOST_USER_VERSION  # BACKEND_IOTLB_MSG, no NEED_REPLY
    assert (msg.iova, msg.perm, msg.type) == (0x7_1234, 2, IotlbType.MISS)
    assert t.waiting_for_qemu and t.busy()
    asyncio.run(t.poll_miss())  # still pending: nothing more is sent, nothing resolved
    chan.setblocking(False)
    with pytest.raises(BlockingIOError):
        chan.recv(1)
    link.cycle = 130
    _update(fe, 0x7_1000, 0x1000, 0x20_0000, 3)
    assert link.hv.commands() == [(1, 0x7_1000, 0x20_0000, 12 | spec.IOTLB_ATTR_READ
                                   | spec.IOTLB_ATTR_WRITE), ("resolve", 1)]
    assert t.miss is None and not link.hv_irq
    (m,) = t.iotlb.misses
    assert (m.source, m.start_cycle, m.end_cycle, m.write) == ("qemu", 100, 130, True)


def test_miss_on_an_evicted_entry_is_answered_from_the_bridges_copy():
    fe, t, link, chan = _iova_setup()
    _update(fe, 0x20_0000, 0x20_0000, 0x60_0000, 1)  # 2 MiB read-only
    link.hv.clear()
    link.hv.raise_miss(0x2F_F008, write=False)  # the device evicted it
    asyncio.run(t.poll_miss())
    assert link.hv.commands() == [(1, 0x20_0000, 0x60_0000, 21 | 1 << 8), ("resolve", 1)]
    assert t.iotlb.misses[-1].source == "bridge"
    chan.setblocking(False)
    with pytest.raises(BlockingIOError):
        chan.recv(1)  # QEMU was not asked


def test_unanswered_miss_is_failed_after_the_timeout():
    _fe, t, link, chan = _iova_setup(miss_timeout_s=0.0)
    link.hv.clear()
    link.hv.raise_miss(0xDEAD_0000, write=False)
    asyncio.run(t.poll_miss())
    assert _backend_message(chan)[2].perm == 1
    asyncio.run(t.poll_miss())  # the timeout (0 s) has passed: MISS_RESOLVE = 2
    assert link.hv.commands() == [("resolve", 2)]
    assert t.iotlb.misses[-1].source == "failed" and t.miss is None


def test_iova_map_and_aligned_pieces():
    from tb.linux_bridge import IovaMap, Untranslated, aligned_pieces

    m = IovaMap()
    m.insert(0x1000, 0x4000, 0x10_0000, 3)
    m.insert(0x3000, 0x1000, 0x80_0000, 1)  # replaces the middle of the first
    assert m.translate(0x2ff0, 0x20) == [(0x10_1ff0, 0x10), (0x80_0000, 0x10)]
    assert m.lookup(0x4000).gpa == 0x10_3000
    assert m.remove(0x0, 0x2000) == 0x1000
    with pytest.raises(Untranslated):
        m.translate(0x1ff0, 0x20)
    assert aligned_pieces(0x1000, 0x7000) == [(0x1000, None, 12), (0x2000, None, 13),
                                              (0x4000, None, 14)]
    # The physical address's alignment limits a piece too; 1 GiB at most.
    assert aligned_pieces(0x20_0000, 0x20_0000, 0x1000) == [
        (0x20_0000 + k * 0x1000, 0x1000 + k * 0x1000, 12) for k in range(512)]
    assert aligned_pieces(0, 1 << 31, 0) == [(0, 0, 30), (1 << 30, 1 << 30, 30)]
    assert aligned_pieces(0x1800, 0x100) == [(0x1000, None, 12)]  # widened to its page


def test_request_log_waits_for_translations_in_iova_mode():
    """The bridge reads rings and buffers through QEMU's translations: an entry whose pages
    are not translated yet is decoded once they are."""
    from models import spec
    from models.memory import GuestMemory
    from tb.linux_bridge import GuestRam, IovaMap, IovaView, RequestLog

    ram = GuestRam()
    ram.table = GuestMemory(1 << 20)  # type: ignore[assignment]
    iomap = IovaMap()
    log = RequestLog(ram, 64 * 1024)
    log.mem = IovaView(ram, iomap)
    log.start(4, 0xA000_1000, 0xA000_2000, 0xA000_3000)  # IOVAs
    iomap.insert(0xA000_3000, 0x1000, 0x3000, 2)  # QEMU pushes the used ring only
    log.kicked = True
    assert log.outstanding() and log.take_avail(5) == 0
    iomap.insert(0xA000_1000, 0x2000, 0x1000, 1)  # desc and avail (the device's misses)
    ram.write(0x2000, struct.pack("<HHH", 0, 1, 0))
    ram.write(0x1000, struct.pack("<QIHH", 0xB000_0000, 16, 1, 1)
              + struct.pack("<QIHH", 0xB000_0010, 512, 1, 2)
              + struct.pack("<QIHH", 0xB000_0210, 1, 2, 0))
    ram.write(0x8000, struct.pack("<IIQ", spec.VIRTIO_BLK_T_OUT, 0, 3) + b"\xab" * 512)
    assert log.take_avail(7) == 0 and "0xb0000000" in log.deferred  # the buffer is not yet
    iomap.insert(0xB000_0000, 0x1000, 0x8000, 3)
    assert log.take_avail(9) == 1
    (req,) = log.pending
    assert (req.kind, req.sector, req.data_len, req.kick_cycle) == ("write", 3, 512, 5)
    assert bytes(log.shadow[1536:2048]) == b"\xab" * 512


def test_transport_in_iova_mode_on_the_reference_model():
    """IOVA mode end to end without QEMU: rings and buffers at IOVAs, the used ring's
    translation pushed at start, the rest answered as the model misses (the updates are already
    in the socket when the kick comes: the untimed model's miss is served inside the
    QueueNotify write), then the completion unmapped by an invalidation."""
    from models import spec
    from tb.linux_bridge import MmioTransport, ModelLink

    disk = 64 * 1024
    link = ModelLink(disk, data_width=64)
    t = MmioTransport(link, disk, mode="iova")
    ident = asyncio.run(t.identify())
    assert ident.features >> spec.VIRTIO_F_ACCESS_PLATFORM & 1
    fe = FrontEnd(features=ident.features, iommu=True)
    fe.be.device = t
    t.backend = fe.be
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 1 << 20)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fe.send(Request.SET_FEATURES, struct.pack("<Q", ident.features))
    fe.send(Request.SET_MEM_TABLE, struct.pack("<II", 1, 0)
            + struct.pack("<QQQQ", 0, 1 << 20, UVA, 0), fds=[fd])
    fe.send(Request.SET_BACKEND_REQ_FD, fds=[theirs.fileno()])
    theirs.close()
    ring_iova, n = 0xFFFF_0000, 8  # desc, avail (+0x800), used (+0xC00): one page at GPA 0x10000
    kick, call = _start_ring(fe, n, ring_iova, ring_iova + 0x800, ring_iova + 0xC00)
    for _ in range(9):
        fe.step()
    regs = link.dev
    assert (regs.queue_desc, regs.queue_driver) == (ring_iova, ring_iova + 0x800)  # IOVAs
    # A write of 512 bytes at sector 2: header, data and status at IOVA 0x5000_0000 (GPA 0x20000).
    mem = os.fdopen(os.dup(fd), "r+b", buffering=0)
    buf = 0x5000_0000
    data = _lay_write(mem, 0x10000, 0x10800, buf)
    # QEMU's answers to the misses to come (the ring page, then the buffer page).
    for iova, gpa, perm in ((ring_iova, 0x10000, 3), (buf, 0x20000, 3)):
        fe.send(Request.IOTLB_MSG, IotlbMsg(iova, 0x1000, UVA + gpa, perm,
                                            IotlbType.UPDATE).pack(), flags=FLAG_NEED_REPLY)
    os.eventfd_write(kick, 1)
    asyncio.run(fe.be.kicked(fe.be.vrings[0]))
    misses = [_backend_message(ours)[2] for _ in range(2)]
    ours.setblocking(False)
    with pytest.raises(BlockingIOError):
        ours.recv(1)  # no third miss
    assert [(m.iova & ~0xFFF, m.type) for m in misses] == [(ring_iova, IotlbType.MISS),
                                                           (buf, IotlbType.MISS)]
    assert [fe.reply()[2] for _ in range(2)] == [struct.pack("<Q", 0)] * 2  # both acked
    _check_write_served(t, ident, mem, 0x10C00, call, data)
    assert [m.source for m in t.iotlb.misses] == ["qemu", "qemu"]
    # The guest unmaps the buffer: the device forgets it, a later access would miss again.
    fe.send(Request.IOTLB_MSG, IotlbMsg(buf, 0x1000, 0, 0, IotlbType.INVALIDATE).pack(),
            flags=FLAG_NEED_REPLY)
    fe.step()
    assert fe.reply()[2] == struct.pack("<Q", 0)
    assert regs.hv.read(spec.HV_STAT_IOTLB_INVALIDATED) == 1 and t.iomap.lookup(buf) is None
    mem.close()
    for f in (fd, kick, call):
        os.close(f)
    ours.close()
