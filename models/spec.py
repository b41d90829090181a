"""Specification constants shared by the reference model, the driver model and the RTL.

Everything here is taken from a specification, not from the implementation:

* virtio 1.x, section 4.2.2 (virtio-mmio version 2 register layout), 2.7 (split virtqueues),
  5.2 (block device), 6 (reserved feature bits);
* Xen's ``include/public/grant_table.h`` (``grant_entry_v1``, ``GTF_*``);
* Linux ``drivers/xen/grant-dma-ops.c`` (a grant DMA address is ``1 << 63 | ref << 12 | offset``);
* this project's privileged register map and fault codes (``docs/architecture.md``).

The RTL imports these numbers so that both sides agree on the contract; the reference model
never imports anything from ``rtl/``.
"""

from __future__ import annotations

# --- Handles (Linux grant DMA addresses) -----------------------------------------------------
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HANDLE_BIT = 1 << 63
GRANT_REF_MASK = (1 << 51) - 1  # bits 62:12
ADDR_MASK = (1 << 64) - 1


def make_handle(grant_ref: int, offset: int = 0) -> int:
    """The grant DMA address of byte ``offset`` of the page granted as ``grant_ref``."""
    if not 0 <= grant_ref <= GRANT_REF_MASK:
        raise ValueError(f"grant_ref must be in [0, 2**51), not {grant_ref!r}")
    if not 0 <= offset < PAGE_SIZE:
        raise ValueError(f"offset must be in [0, {PAGE_SIZE}), not {offset!r}")
    return HANDLE_BIT | grant_ref << PAGE_SHIFT | offset


def split_handle(handle: int) -> tuple[int, int]:
    """``(grant_ref, offset)`` of a handle (bit 63 is not checked here)."""
    return (handle >> PAGE_SHIFT) & GRANT_REF_MASK, handle & (PAGE_SIZE - 1)


# --- Xen grant_entry_v1 ------------------------------------------------------------------------
GTF_TYPE_MASK = 0x3
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_readonly = 1 << 2
GRANT_ENTRY_BYTES = 8  # u16 flags, u16 domid, u32 frame

# --- Privileged (hypervisor) register port: offsets (the map is models.regmap.HV) -------------
HV_VERSION = 0x000
HV_CTRL = 0x004
HV_DOMID = 0x008
HV_ENTRIES = 0x00C
HV_FAULT_STATUS = 0x010
HV_FAULT_CAUSE = 0x014
HV_FAULT_ADDR_LO = 0x018
HV_FAULT_ADDR_HI = 0x01C
HV_FAULT_COUNT = 0x020
HV_SYNC = 0x024  # write: start a barrier; read: 1 once it is complete
HV_GRANT_BASE = 0x1000
# Statistics, an extension after the fixed map (read-only, cleared by rst only).
HV_STAT_XLATE = 0x040  # table lookups (page pieces translated in handle mode)
HV_STAT_REQUESTS = 0x044  # used elements published
# IOVA mode's IOTLB (docs/iotlb.md).
HV_IOTLB_IOVA_LO = 0x080
HV_IOTLB_IOVA_HI = 0x084
HV_IOTLB_PA_LO = 0x088
HV_IOTLB_PA_HI = 0x08C
HV_IOTLB_ATTR = 0x090
HV_IOTLB_CMD = 0x094
HV_IOTLB_MISS = 0x098
HV_MISS_IOVA_LO = 0x0A0
HV_MISS_IOVA_HI = 0x0A4
HV_MISS_RESOLVE = 0x0A8
HV_STAT_IOTLB_HITS = 0x0B0
HV_STAT_IOTLB_MISSES = 0x0B4
HV_STAT_IOTLB_INVALIDATED = 0x0B8
HV_IOTLB_ENTRIES = 0x0BC

IOTLB_ATTR_SIZE_MASK = 0x3F  # log2 of the mapping's size, 12 to 30
IOTLB_ATTR_READ = 1 << 8  # the device may read memory through the mapping
IOTLB_ATTR_WRITE = 1 << 9  # ... and write it
IOTLB_MIN_SIZE = 12
IOTLB_MAX_SIZE = 30
IOTLB_CMD_INSERT = 1
IOTLB_CMD_INVALIDATE = 2
IOTLB_CMD_INVALIDATE_ALL = 3
IOTLB_MISS_PENDING = 1 << 0
IOTLB_MISS_READ = 1 << 1
IOTLB_MISS_WRITE = 1 << 2
MISS_RESOLVE_RETRY = 1
MISS_RESOLVE_FAIL = 2
IOTLB_WAYS = 2  # ways per set (docs/iotlb.md)
DEFAULT_IOTLB_ENTRIES = 64

HV_CTRL_HANDLE_MODE = 1 << 0  # mode 1 (grant handles), kept for the foundation's callers
HV_CTRL_MODE_MASK = 0x3  # HV_CTRL bits 1:0; a write of 3 leaves the mode unchanged
MODE_GPA = 0
MODE_GRANT = 1
MODE_IOVA = 2
HV_VERSION_VALUE = 0x0001_0000  # major 1, minor 0

# Fault causes (HV_FAULT_CAUSE).  1-8 are the foundation's contract; 9 is documented in
# docs/architecture.md ("malformed virtio-blk request").
FAULT_NONE = 0
FAULT_NOT_HANDLE = 1
FAULT_REF_RANGE = 2
FAULT_NOT_PERMITTED = 3
FAULT_WRONG_DOMAIN = 4
FAULT_READONLY = 5
FAULT_BUS_ERROR = 6
FAULT_BAD_CHAIN = 7
FAULT_BAD_RING = 8
FAULT_BAD_REQUEST = 9
FAULT_IOTLB_FAILED = 10  # IOVA mode: the hypervisor failed the miss (MISS_RESOLVE = 2)
FAULT_IOTLB_NO_READ = 11  # IOVA mode: a device read through a mapping without R

FAULT_NAMES = {
    FAULT_NONE: "none",
    FAULT_NOT_HANDLE: "not a handle",
    FAULT_REF_RANGE: "grant reference outside the table",
    FAULT_NOT_PERMITTED: "entry not permit_access",
    FAULT_WRONG_DOMAIN: "wrong domain",
    FAULT_READONLY: "device write to a read-only grant",
    FAULT_BUS_ERROR: "bus error response",
    FAULT_BAD_CHAIN: "malformed descriptor chain",
    FAULT_BAD_RING: "malformed ring",
    FAULT_BAD_REQUEST: "malformed virtio-blk request",
    FAULT_IOTLB_FAILED: "IOTLB miss failed by the hypervisor",
    FAULT_IOTLB_NO_READ: "device read through a mapping without read permission",
}

# --- virtio-mmio version 2 (virtio 1.x section 4.2.2): offsets (the map is models.regmap.GUEST)
MMIO_MAGIC_VALUE = 0x000
MMIO_VERSION = 0x004
MMIO_DEVICE_ID = 0x008
MMIO_VENDOR_ID = 0x00C
MMIO_DEVICE_FEATURES = 0x010
MMIO_DEVICE_FEATURES_SEL = 0x014
MMIO_DRIVER_FEATURES = 0x020
MMIO_DRIVER_FEATURES_SEL = 0x024
MMIO_QUEUE_SEL = 0x030
MMIO_QUEUE_NUM_MAX = 0x034
MMIO_QUEUE_NUM = 0x038
MMIO_QUEUE_READY = 0x044
MMIO_QUEUE_NOTIFY = 0x050
MMIO_INTERRUPT_STATUS = 0x060
MMIO_INTERRUPT_ACK = 0x064
MMIO_STATUS = 0x070
MMIO_QUEUE_DESC_LOW = 0x080
MMIO_QUEUE_DESC_HIGH = 0x084
MMIO_QUEUE_DRIVER_LOW = 0x090
MMIO_QUEUE_DRIVER_HIGH = 0x094
MMIO_QUEUE_DEVICE_LOW = 0x0A0
MMIO_QUEUE_DEVICE_HIGH = 0x0A4
MMIO_CONFIG_GENERATION = 0x0FC
MMIO_CONFIG = 0x100

MAGIC_VALUE = 0x74726976  # "virt"
MMIO_VERSION_VALUE = 2
VIRTIO_ID_BLOCK = 2
VENDOR_ID = 0x4B4E4148  # "HANK": this project's vendor id

# Device status bits (virtio 1.x section 2.1)
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# InterruptStatus bits (section 4.2.2)
INT_USED_BUFFER = 1 << 0
INT_CONFIG_CHANGE = 1 << 1

# Feature bits (virtio 1.2 sections 5.2.3 and 6)
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33

FEATURE_NAMES = {
    VIRTIO_BLK_F_SIZE_MAX: "SIZE_MAX", VIRTIO_BLK_F_SEG_MAX: "SEG_MAX",
    VIRTIO_BLK_F_BLK_SIZE: "BLK_SIZE", VIRTIO_BLK_F_FLUSH: "FLUSH",
    VIRTIO_BLK_F_DISCARD: "DISCARD", VIRTIO_BLK_F_WRITE_ZEROES: "WRITE_ZEROES",
    VIRTIO_F_INDIRECT_DESC: "INDIRECT_DESC", VIRTIO_RING_F_EVENT_IDX: "EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1", VIRTIO_F_ACCESS_PLATFORM: "ACCESS_PLATFORM",
}

# The features the foundation offered (what a driver that asks for nothing new negotiates).
BASE_FEATURES = 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_F_VERSION_1

# virtio_blk_config (section 5.2.4), offsets from MMIO_CONFIG. A field whose feature is not
# offered reads 0.
BLK_CONFIG_CAPACITY = 0x00  # le64, in 512-byte sectors
BLK_CONFIG_SIZE_MAX = 0x08  # le32 (SIZE_MAX): the largest descriptor, in bytes
BLK_CONFIG_SEG_MAX = 0x0C  # le32 (SEG_MAX): the most data descriptors in a request
BLK_CONFIG_BLK_SIZE = 0x14  # le32 (BLK_SIZE)
BLK_CONFIG_MAX_DISCARD_SECTORS = 0x24  # le32 (DISCARD)
BLK_CONFIG_MAX_DISCARD_SEG = 0x28  # le32 (DISCARD)
BLK_CONFIG_DISCARD_SECTOR_ALIGNMENT = 0x2C  # le32 (DISCARD)
BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS = 0x30  # le32 (WRITE_ZEROES)
BLK_CONFIG_MAX_WRITE_ZEROES_SEG = 0x34  # le32 (WRITE_ZEROES)
BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP = 0x38  # u8 (WRITE_ZEROES)
BLK_CONFIG_BYTES = 0x3C  # the fields above; the rest of the space reads 0

# --- Split virtqueue (section 2.7) -------------------------------------------------------------
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
DESC_BYTES = 16
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4

# --- virtio-blk (section 5.2.6) ------------------------------------------------------------------
SECTOR_SIZE = 512
BLK_HEADER_BYTES = 16  # le32 type, le32 reserved, le64 sector
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
DWZ_SEGMENT_BYTES = 16  # struct virtio_blk_discard_write_zeroes: le64 sector, le32 num, le32 flags
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_ID_BYTES = 20
DEVICE_SERIAL = b"vhblk-handle-0001".ljust(VIRTIO_BLK_ID_BYTES, b"\0")

# --- Defaults of the device parameters -----------------------------------------------------------
DEFAULT_ENTRIES = 1024
DEFAULT_QUEUE_NUM_MAX = 256
DEFAULT_DISK_BYTES = 64 * 1024
DEFAULT_DATA_WIDTH = 64
DEFAULT_SIZE_MAX = 64 * 1024  # SIZE_MAX's value
DEFAULT_SEG_MAX_CAP = 128  # SEG_MAX's value: min(this, queue_num_max - 2), at least 1
DISCARD_SECTOR_ALIGNMENT = 8  # sectors (4 KiB); a hint to the driver, not enforced
DWZ_MAX_SEG = 1  # max_discard_seg and max_write_zeroes_seg


def default_seg_max(queue_num_max: int) -> int:
    """SEG_MAX's default: a request's data descriptors plus its header and status descriptors
    fit in the queue (a chain longer than QueueNum is a fault), at most 128 (512 KiB of 4 KiB
    pages)."""
    return max(1, min(DEFAULT_SEG_MAX_CAP, queue_num_max - 2))


def dwz_max_sectors(disk_bytes: int) -> int:
    """max_discard_sectors and max_write_zeroes_sectors: the whole disk in one request."""
    return min(disk_bytes // SECTOR_SIZE, 0xFFFF_FFFF)


def burst_bytes(data_width: int) -> int:
    """Largest aligned window one AXI burst covers: 256 beats, but never past a 4 KiB page.

    Every DMA access is cut at each address that is a multiple of this value; each piece is
    one INCR burst (docs/architecture.md, "Bus transactions").
    """
    if data_width not in (32, 64, 128):
        raise ValueError(f"data_width must be 32, 64 or 128, not {data_width!r}")
    return min(PAGE_SIZE, 256 * data_width // 8)


def ramdisk_init(size: int) -> bytes:
    """Initial RAM disk contents: a fixed pattern, so reads are meaningful before any write.

    Byte ``i`` is ``(i * 7 + (i >> 9) * 13 + 0x5A) & 0xFF``: it differs between neighbouring
    bytes and between sectors, so a transfer to the wrong place or the wrong sector shows.
    """
    return bytes(((i * 7 + (i >> 9) * 13 + 0x5A) & 0xFF) for i in range(size))
