"""vhost-user back-end: the protocol side of a vhost-user-blk device served by QEMU 7.2.

QEMU (the *front-end*) owns the virtio-pci device the guest sees; a back-end process gets the
guest's memory (file descriptors passed with ``SCM_RIGHTS`` and mmapped here), the rings'
addresses and one eventfd per direction per queue (kick: guest to device, call: device to
guest). The specification is QEMU's ``docs/interop/vhost-user.rst``; this module implements
what QEMU 7.2 sends for ``vhost-user-blk-pci`` (see ``../shared/notes/vhost-user-guest.md``).

The module knows nothing about what serves the queue: a :class:`VhostUserDevice` does (the
cocotb bridge in ``tb/linux_bridge.py`` programs the RTL through its virtio-mmio port). I/O is
never blocking when the caller asks first whether the socket is readable
(:meth:`VhostUserBackend.fileno` for ``select``): a simulation can poll the socket between
clock cycles, and QEMU, which waits synchronously for every reply, is answered at the next
poll.

Not offered: dirty logging, in-flight tracking, memory hot-plug slots, ``STATUS``.

IOMMU mode (``iommu=True``, ``../shared/notes/vhost-user-iotlb.md``): the back-end offers
``VIRTIO_F_ACCESS_PLATFORM`` and the protocol features ``REPLY_ACK`` and ``BACKEND_REQ`` (QEMU
refuses ``iommu_platform=on`` without both), takes the back-end channel (``SET_BACKEND_REQ_FD``)
and hands every ``IOTLB_MSG`` (update, invalidate) to :meth:`VhostUserDevice.iotlb_message`. QEMU
sends those with ``NEED_REPLY`` and blocks until the acknowledgement, which :meth:`handle` sends
only once the hook has returned: an invalidation is complete in the device before QEMU hears of
it. A device miss goes to QEMU as a back-end ``IOTLB_MSG`` of type miss, without ``NEED_REPLY``
(:meth:`VhostUserBackend.send_iotlb_miss`): QEMU answers with an update on the main socket, so
the caller must keep serving that socket instead of waiting.
"""

from __future__ import annotations

import array
import contextlib
import enum
import logging
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("vhost_user")

VHOST_USER_VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
HEADER = struct.Struct("<III")  # request, flags, size
MAX_FDS = 8  # VHOST_MEMORY_BASELINE_NREGIONS
MAX_PAYLOAD = 4096  # the largest payload QEMU sends (a config space of 256 bytes, 8 regions)

VHOST_USER_F_PROTOCOL_FEATURES = 30  # a vhost-user feature bit in the virtio feature word
VHOST_F_LOG_ALL = 26
VRING_FD_INVALID = 1 << 8  # in SET_VRING_KICK/CALL/ERR: no fd attached (polling)
VRING_INDEX_MASK = 0xFF


class Request(enum.IntEnum):
    """Front-end to back-end message types (``VhostUserRequest``)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    SET_SLAVE_REQ_FD = 21  # the name before QEMU 8.1 (an alias)
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class BackendRequest(enum.IntEnum):
    """Back-end to front-end messages on the back-end channel (``VhostUserBackendRequest``,
    ``VhostUserSlaveRequest`` before QEMU 8.1)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3


SlaveRequest = BackendRequest


class ProtocolFeature(enum.IntEnum):
    """``VHOST_USER_PROTOCOL_F_*`` bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    SLAVE_REQ = 5  # the name before QEMU 8.1 (an alias)
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


class IotlbType(enum.IntEnum):
    """``struct vhost_iotlb_msg`` types (``linux/vhost_types.h``)."""

    MISS = 1
    UPDATE = 2
    INVALIDATE = 3
    ACCESS_FAIL = 4


# ``perm`` of ``struct vhost_iotlb_msg`` (VHOST_ACCESS_*): what the device may do through it.
VHOST_ACCESS_RO = 1  # the device may read memory
VHOST_ACCESS_WO = 2  # the device may write memory
VHOST_ACCESS_RW = 3
VIRTIO_F_ACCESS_PLATFORM = 33  # virtio 1.x section 6: addresses go through the platform IOMMU


class VhostUserError(RuntimeError):
    """The front-end sent something this back-end does not implement or cannot honour."""


def _name(code: int) -> str:
    try:
        return Request(code).name
    except ValueError:
        return "unknown"


# --- message payloads -----------------------------------------------------------------------------

U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log (user addresses)
MEM_HEADER = struct.Struct("<II")  # nregions, padding
MEM_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags
IOTLB = struct.Struct("<QQQBB6x")  # iova, size, uaddr, perm, type (32 bytes with padding)


@dataclass
class Message:
    """One message as received: header fields, raw payload and the fds that came with it."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return _name(self.request)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def u64(self) -> int:
        return U64.unpack_from(self.payload)[0]

    def take_fd(self) -> int | None:
        """The first fd of the message (ownership passes to the caller), None if there is none."""
        return self.fds.pop(0) if self.fds else None

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


@dataclass(frozen=True)
class IotlbMsg:
    """``struct vhost_iotlb_msg``: an IOMMU mapping update or invalidation (or a miss report)."""

    iova: int
    size: int
    uaddr: int
    perm: int  # VHOST_ACCESS_RO 1, WO 2, RW 3
    type: int

    @classmethod
    def unpack(cls, payload: bytes) -> IotlbMsg:
        if len(payload) < IOTLB.size:
            raise VhostUserError(f"IOTLB_MSG payload is {len(payload)} bytes, "
                                 f"expected {IOTLB.size}")
        return cls(*IOTLB.unpack_from(payload))

    def pack(self) -> bytes:
        return IOTLB.pack(self.iova, self.size, self.uaddr, self.perm, self.type)


# --- guest memory ---------------------------------------------------------------------------------

@dataclass
class MemoryRegion:
    """One region of the memory table, mmapped from the fd QEMU passed.

    ``gpa``: guest physical address of its first byte; ``uva``: the same byte's address in
    QEMU's address space (what SET_VRING_ADDR uses); ``mm``/``base``: where it is here.
    """

    gpa: int
    size: int
    uva: int
    mmap_offset: int
    mm: mmap.mmap
    base: int

    def has_gpa(self, gpa: int, length: int) -> bool:
        return self.gpa <= gpa and gpa + length <= self.gpa + self.size

    def has_uva(self, uva: int, length: int) -> bool:
        return self.uva <= uva and uva + length <= self.uva + self.size


class MemoryTable:
    """Guest physical memory as described by SET_MEM_TABLE.

    Satisfies :class:`sw.transport.GuestMemory` (``size``, ``read``, ``write`` by physical
    address), so the project's own driver model can use it too. An access must lie inside one
    region; anything else raises ``ValueError`` (the AXI target turns that into SLVERR).
    """

    def __init__(self, regions: list[MemoryRegion]) -> None:
        self.regions = sorted(regions, key=lambda r: r.gpa)
        self.size = max((r.gpa + r.size for r in self.regions), default=0)

    @classmethod
    def from_message(cls, msg: Message) -> MemoryTable:
        """Map every region of a SET_MEM_TABLE message (the message's fds are consumed)."""
        if len(msg.payload) < MEM_HEADER.size:
            raise VhostUserError("SET_MEM_TABLE payload too short")
        nregions, _ = MEM_HEADER.unpack_from(msg.payload)
        if nregions > MAX_FDS or len(msg.payload) < MEM_HEADER.size + nregions * MEM_REGION.size:
            raise VhostUserError(f"SET_MEM_TABLE with {nregions} regions and "
                                 f"{len(msg.payload)} payload bytes")
        if len(msg.fds) != nregions:
            msg.close_fds()
            raise VhostUserError(f"SET_MEM_TABLE has {nregions} regions but "
                                 f"{len(msg.fds)} file descriptors")
        regions = []
        try:
            for i in range(nregions):
                gpa, size, uva, offset = MEM_REGION.unpack_from(
                    msg.payload, MEM_HEADER.size + i * MEM_REGION.size)
                fd = msg.fds[i]
                # Map from the start of the file so the offset needs no alignment of its own.
                mm = mmap.mmap(fd, offset + size, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
                regions.append(MemoryRegion(gpa, size, uva, offset, mm, offset))
        except (OSError, ValueError) as exc:
            for r in regions:
                r.mm.close()
            raise VhostUserError(f"cannot map the memory table: {exc}") from exc
        finally:
            msg.close_fds()  # the mappings keep the memory alive
        return cls(regions)

    def close(self) -> None:
        for r in self.regions:
            r.mm.close()
        self.regions = []

    def describe(self) -> str:
        return ", ".join(f"gpa {r.gpa:#x}+{r.size:#x} (uva {r.uva:#x})" for r in self.regions)

    def _region_gpa(self, gpa: int, length: int) -> MemoryRegion:
        for r in self.regions:
            if r.has_gpa(gpa, length):
                return r
        raise ValueError(f"{length} byte(s) at guest physical {gpa:#x} are not inside one "
                         f"region of the memory table ({self.describe()})")

    def uva_to_gpa(self, uva: int, length: int = 1) -> int:
        """Translate a front-end virtual address (SET_VRING_ADDR) to a guest physical one."""
        for r in self.regions:
            if r.has_uva(uva, length):
                return r.gpa + (uva - r.uva)
        raise VhostUserError(f"front-end address {uva:#x} (+{length}) is not inside one region "
                             f"of the memory table ({self.describe()})")

    def contains(self, gpa: int, length: int) -> bool:
        return any(r.has_gpa(gpa, length) for r in self.regions)

    def read(self, addr: int, length: int) -> bytes:
        r = self._region_gpa(addr, length)
        off = r.base + addr - r.gpa
        return r.mm[off:off + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        r = self._region_gpa(addr, len(data))
        off = r.base + addr - r.gpa
        r.mm[off:off + len(data)] = bytes(data)


# --- queue state ----------------------------------------------------------------------------------

@dataclass
class Vring:
    """What the front-end told us about one virtqueue.

    Addresses are front-end virtual addresses (or IOVAs once ACCESS_PLATFORM is negotiated,
    vhost-user.rst "IOMMU support"); the device converts them.
    """

    index: int
    num: int = 0
    base: int = 0  # SET_VRING_BASE: the next avail index to process
    desc: int | None = None
    avail: int | None = None
    used: int | None = None
    addr_flags: int = 0
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    started: bool = False  # the device was told to start it (and not to stop since)
    kick_pending: bool = False  # a kick arrived while the ring was not running
    call_pending: bool = False  # a completion to signal before a call fd existed

    @property
    def ready(self) -> bool:
        """Everything needed to run it: size, addresses and a kick fd (vhost-user.rst: a ring
        starts on its kick fd)."""
        return bool(self.num) and self.desc is not None and self.kick_fd is not None

    def close(self) -> None:
        for name in ("kick_fd", "call_fd", "err_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


class VhostUserDevice(Protocol):
    """What serves the queues. Every hook may take simulated time (hence ``async``)."""

    async def get_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the device configuration space from ``offset``."""
        ...

    async def set_features(self, features: int) -> None:
        """The virtio features the driver accepted (vhost-user bits already removed)."""
        ...

    async def set_mem_table(self, table: MemoryTable) -> None:
        """A new memory table; the previous one is closed after this returns."""
        ...

    async def start_ring(self, vring: Vring) -> None:
        """Bring the queue up (size, addresses); kicks follow through :meth:`kick`."""
        ...

    async def kick(self, vring: Vring) -> None:
        """The driver made buffers available."""
        ...

    async def stop_ring(self, vring: Vring) -> int:
        """Stop the queue and return the index of the next avail entry it would process."""
        ...

    async def iotlb_message(self, msg: IotlbMsg) -> None:
        """An IOTLB update or invalidation (IOMMU mode only)."""
        ...


# --- the back-end ---------------------------------------------------------------------------------

def _set_fd(v: Vring, name: str, fd: int | None) -> None:
    """Store ``fd`` as the ring's ``name`` file descriptor, closing the one it replaces."""
    if getattr(v, name) is not None:
        os.close(getattr(v, name))
    setattr(v, name, fd)


class VhostUserBackend:
    """The back-end end of one vhost-user connection.

    Parameters
    ----------
    sock : the connected Unix stream socket (QEMU's chardev connects to our listening one)
    device : what serves the queues
    features : virtio device features to offer; ``VHOST_USER_F_PROTOCOL_FEATURES`` is added
    num_queues : reply to GET_QUEUE_NUM
    iommu : IOMMU mode: offer ``VIRTIO_F_ACCESS_PLATFORM`` and the back-end channel
        (``BACKEND_REQ``) on which IOTLB misses are reported
    """

    def __init__(self, sock: socket.socket, device: VhostUserDevice, *, features: int,
                 num_queues: int = 1, iommu: bool = False) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self.sock.settimeout(10.0)  # the rest of a message whose first byte has arrived
        self.device = device
        self.features = features | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        self.protocol_features = (1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK
                                  | 1 << ProtocolFeature.CONFIG)
        self.iommu = iommu
        if iommu:
            self.features |= 1 << VIRTIO_F_ACCESS_PLATFORM
            self.protocol_features |= 1 << ProtocolFeature.BACKEND_REQ
        self.num_queues = num_queues
        self.acked_features = 0
        self.acked_protocol_features = 0
        self.owner = False
        self.mem: MemoryTable | None = None
        self.vrings = [Vring(i) for i in range(num_queues)]
        self.backend_channel: socket.socket | None = None  # SET_BACKEND_REQ_FD
        self.misses_sent = 0
        self.closed = False
        self.counts: dict[str, int] = {}  # messages received, by name

    # -- I/O ---------------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise VhostUserError(f"connection closed inside a message ({len(buf)} of {n} "
                                     "payload bytes)")
            buf += chunk
        return bytes(buf)

    def receive(self) -> Message | None:
        """Read one message (call when the socket is readable). None: the front-end hung up."""
        fds = array.array("i")
        data, ancdata, msg_flags, _ = self.sock.recvmsg(
            HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        if msg_flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise VhostUserError("more file descriptors than a message may carry")
        if len(data) < HEADER.size:
            data += self._recv_exact(HEADER.size - len(data))
        request, flags, size = HEADER.unpack(data)
        if flags & FLAG_VERSION_MASK != VHOST_USER_VERSION:
            raise VhostUserError(f"message {request} with protocol version "
                                 f"{flags & FLAG_VERSION_MASK}, expected {VHOST_USER_VERSION}")
        if size > MAX_PAYLOAD:
            raise VhostUserError(f"message {_name(request)} ({request}) announces a {size}-byte "
                                 "payload")
        payload = self._recv_exact(size) if size else b""
        msg = Message(request, flags, payload, list(fds))
        self.counts[msg.name] = self.counts.get(msg.name, 0) + 1
        return msg

    def _send(self, request: int, payload: bytes) -> None:
        self.sock.sendall(HEADER.pack(request, VHOST_USER_VERSION | FLAG_REPLY, len(payload))
                          + payload)

    def _reply_u64(self, msg: Message, value: int) -> None:
        self._send(msg.request, U64.pack(value))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for v in self.vrings:
            v.close()
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.sock.close()
        # The memory table stays mapped: the bridge may still read the guest's memory.

    # -- dispatch ----------------------------------------------------------------------------------
    def _vring(self, index: int) -> Vring:
        if not 0 <= index < self.num_queues:
            raise VhostUserError(f"queue index {index} outside the {self.num_queues} queue(s)")
        return self.vrings[index]

    async def handle(self, msg: Message) -> None:
        """Act on one message and send its reply (its own, or the REPLY_ACK one)."""
        log.debug("%s flags=%#x %d bytes, %d fd(s)", msg.name, msg.flags, len(msg.payload),
                  len(msg.fds))
        handler = getattr(self, f"_on_{msg.name.lower()}", None)
        try:
            if handler is None:
                raise VhostUserError(
                    f"vhost-user message {msg.name} ({msg.request}) is not implemented by this "
                    f"back-end (protocol features {self.acked_protocol_features:#x} were "
                    "negotiated; see sw/vhost_user.py)")
            replied = await handler(msg)
        except Exception:
            msg.close_fds()
            if msg.need_reply and msg.request not in _HAS_REPLY:
                self._reply_u64(msg, 1)  # tell QEMU it failed before we give up
            raise
        msg.close_fds()
        # vhost-user.rst "REPLY_ACK": a message that has no reply of its own gets a u64 status.
        if msg.need_reply and not replied:
            self._reply_u64(msg, 0)

    # Each handler returns True when it has sent the message's own reply.
    async def _on_get_features(self, msg: Message) -> bool:
        self._reply_u64(msg, self.features)
        return True

    @staticmethod
    def _offered(msg: Message, what: str, offered: int) -> int:
        """The u64 ``msg`` carries, which must have no bit outside ``offered``."""
        value = msg.u64()
        if value & ~offered:
            raise VhostUserError(f"{what} {value:#x} has bits {value & ~offered:#x} that were "
                                 f"not offered ({offered:#x})")
        return value

    async def _on_set_features(self, msg: Message) -> bool:
        features = self.acked_features = self._offered(msg, "SET_FEATURES", self.features)
        await self.device.set_features(
            features & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES | 1 << VHOST_F_LOG_ALL))
        return False

    async def _on_get_protocol_features(self, msg: Message) -> bool:
        self._reply_u64(msg, self.protocol_features)
        return True

    async def _on_set_protocol_features(self, msg: Message) -> bool:
        self.acked_protocol_features = self._offered(msg, "SET_PROTOCOL_FEATURES",
                                                     self.protocol_features)
        return False

    async def _on_set_owner(self, msg: Message) -> bool:
        self.owner = True
        return False

    async def _on_get_queue_num(self, msg: Message) -> bool:
        self._reply_u64(msg, self.num_queues)
        return True

    async def _on_get_config(self, msg: Message) -> bool:
        if len(msg.payload) < CONFIG_HEADER.size:
            raise VhostUserError("GET_CONFIG payload too short")
        offset, size, flags = CONFIG_HEADER.unpack_from(msg.payload)
        data = await self.device.get_config(offset, size)
        if len(data) != size:
            raise VhostUserError(f"the device returned {len(data)} config bytes, not {size}")
        self._send(msg.request, CONFIG_HEADER.pack(offset, size, flags) + data)
        return True

    async def _on_set_mem_table(self, msg: Message) -> bool:
        table = MemoryTable.from_message(msg)
        log.info("memory table: %s", table.describe())
        old, self.mem = self.mem, table
        await self.device.set_mem_table(table)
        if old is not None:
            old.close()
        return False

    async def _on_set_vring_num(self, msg: Message) -> bool:
        index, num = VRING_STATE.unpack_from(msg.payload)
        self._vring(index).num = num
        return False

    async def _on_set_vring_base(self, msg: Message) -> bool:
        index, num = VRING_STATE.unpack_from(msg.payload)
        self._vring(index).base = num
        return False

    async def _on_set_vring_addr(self, msg: Message) -> bool:
        index, flags, desc, used, avail, _log = VRING_ADDR.unpack_from(msg.payload)
        v = self._vring(index)
        v.addr_flags, v.desc, v.used, v.avail = flags, desc, used, avail
        return False

    def _vring_fd(self, msg: Message) -> tuple[Vring, int | None]:
        value = msg.u64()
        v = self._vring(value & VRING_INDEX_MASK)
        if value & VRING_FD_INVALID:
            return v, None
        fd = msg.take_fd()
        if fd is None:
            raise VhostUserError(f"{msg.name} for queue {v.index} without a file descriptor")
        return v, fd

    async def _on_set_vring_kick(self, msg: Message) -> bool:
        v, fd = self._vring_fd(msg)
        if fd is None:
            raise VhostUserError("SET_VRING_KICK without an fd (a polling back-end) is not "
                                 "supported: the bridge turns kicks into QueueNotify writes")
        os.set_blocking(fd, False)
        _set_fd(v, "kick_fd", fd)
        await self._maybe_start(v)
        return False

    async def _on_set_vring_call(self, msg: Message) -> bool:
        v, fd = self._vring_fd(msg)
        _set_fd(v, "call_fd", fd)
        if fd is not None and v.call_pending:
            self.call(v)
        return False

    async def _on_set_vring_err(self, msg: Message) -> bool:
        v, fd = self._vring_fd(msg)
        _set_fd(v, "err_fd", fd)
        return False

    async def _on_set_vring_enable(self, msg: Message) -> bool:
        index, num = VRING_STATE.unpack_from(msg.payload)
        v = self._vring(index)
        v.enabled = bool(num)
        await self._maybe_start(v)
        return False

    async def _on_get_vring_base(self, msg: Message) -> bool:
        index, _ = VRING_STATE.unpack_from(msg.payload)
        v = self._vring(index)
        # vhost-user.rst: GET_VRING_BASE stops the ring; the reply is the next avail index.
        base = await self.device.stop_ring(v) if v.started else v.base
        v.started = False
        v.enabled = False
        v.kick_pending = False
        if v.kick_fd is not None:
            os.close(v.kick_fd)
            v.kick_fd = None
        v.base = base
        self._send(msg.request, VRING_STATE.pack(index, base))
        return True

    async def _on_set_backend_req_fd(self, msg: Message) -> bool:
        fd = msg.take_fd()
        if fd is None:
            raise VhostUserError("SET_BACKEND_REQ_FD without a file descriptor")
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.backend_channel = socket.socket(fileno=fd)
        return False

    async def _on_iotlb_msg(self, msg: Message) -> bool:
        # The REPLY_ACK status goes out (in handle) only after the device has acted on it: an
        # invalidation is complete, HV_SYNC included, before QEMU is told so.
        await self.device.iotlb_message(IotlbMsg.unpack(msg.payload))
        return False

    # -- rings -------------------------------------------------------------------------------------
    async def _maybe_start(self, v: Vring) -> None:
        if v.ready and not v.started and self.mem is not None:
            v.started = True
            await self.device.start_ring(v)
        if v.kick_pending and v.started and v.enabled:
            v.kick_pending = False
            await self.device.kick(v)

    def kick_fds(self) -> Iterator[tuple[int, Vring]]:
        """(fd, ring) for every kick eventfd, to wait on with ``select``."""
        for v in self.vrings:
            if v.kick_fd is not None:
                yield v.kick_fd, v

    async def kicked(self, v: Vring) -> None:
        """The ring's kick fd is readable: consume it and pass the kick on (or keep it until
        the ring runs: the first kick can arrive before SET_VRING_ENABLE)."""
        if v.kick_fd is None:
            return
        try:
            os.eventfd_read(v.kick_fd)
        except BlockingIOError:
            return
        if v.started and v.enabled:
            await self.device.kick(v)
        else:
            v.kick_pending = True

    def call(self, v: Vring) -> None:
        """Signal used buffers to the driver (the call eventfd; remembered until one exists)."""
        if v.call_fd is None:
            v.call_pending = True
            return
        v.call_pending = False
        os.eventfd_write(v.call_fd, 1)

    def send_iotlb_miss(self, iova: int, perm: int) -> None:
        """Report an IOTLB miss on the back-end channel (IOMMU mode): ``perm`` is what the
        device needs (``VHOST_ACCESS_RO`` to read, ``VHOST_ACCESS_WO`` to write). Sent without
        ``NEED_REPLY`` (as DPDK does): QEMU answers with an ``IOTLB_MSG`` update on the main
        socket and waits for its acknowledgement there, so the caller must keep serving the
        main socket and never wait for the answer here. QEMU sends nothing for an IOVA the
        guest has not mapped: the caller times the miss out."""
        if self.backend_channel is None:
            raise VhostUserError("an IOTLB miss needs the back-end channel "
                                 "(SET_BACKEND_REQ_FD)")
        payload = IotlbMsg(iova, 0, 0, perm, IotlbType.MISS).pack()
        self.backend_channel.sendall(HEADER.pack(BackendRequest.IOTLB_MSG, VHOST_USER_VERSION,
                                                 len(payload)) + payload)
        self.misses_sent += 1


_HAS_REPLY = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                        Request.GET_QUEUE_NUM, Request.GET_CONFIG, Request.GET_VRING_BASE})


def listen(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` (replacing a stale one) for QEMU's chardev."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.setblocking(False)
    return srv
