"""The device's internal interfaces, each declared once and joined with ``wiring.connect`` in
``rtl/top.py`` (which block has which: docs/architecture.md, "Where things are"). Members are
named from the side that starts the exchange (``Out``: it drives).
"""

from __future__ import annotations

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["CAP_BYTES", "MAX_POSTED_WRITES", "DiskSignature", "DmaCommand", "DmaPortSignature",
           "DmaStatus", "EngineStatus", "IotlbCmdSignature", "IotlbCtrlSignature",
           "LookupSignature", "PreLookup", "QueueSignature", "StatusSignature", "TableSignature",
           "local_bits"]

CAP_BYTES = 16  # the ring engine's capture register (a descriptor, the request header)
MAX_POSTED_WRITES = 8  # write bursts whose response may be outstanding at once


def local_bits(disk_bytes: int) -> int:
    """Width of a command's length and local position: a command moves at most the whole disk
    (a data piece is at most the request's data, which fits the disk) or 20 scratch bytes."""
    return max(6, ceil_log2(disk_bytes + 1))


def DmaCommand(len_bits: int) -> data.StructLayout:
    """A DMA command: move ``len`` bytes at virtual address ``vaddr`` to (``write`` 0) or from
    the RAM disk (``disk``) or the ring engine's scratch at byte ``dpos``; ``cont``: ``vaddr`` is
    where the last command ended; ``drain``: wait for every posted write's response instead;
    ``zero``: write ``len`` zero bytes to the RAM disk at ``dpos`` (both multiples of 512), no
    bus access (DISCARD and WRITE_ZEROES); ``tbl`` (a read with ``disk``): the bytes go to the
    ring engine's indirect table buffer at ``dpos`` instead of the RAM disk."""
    return data.StructLayout({"write": 1, "drain": 1, "cont": 1, "vaddr": 64, "len": len_bits,
                              "disk": 1, "dpos": len_bits, "zero": 1, "tbl": 1})


# The address of the command the ring engine may hand over in the next cycle, for the DMA
# engine's one-cycle-early table lookup (``cont``: it continues where the last command ended).
PreLookup = data.StructLayout({"vaddr": 64, "cont": 1})


def DmaPortSignature(len_bits: int, word_bits: int, data_width: int) -> wiring.Signature:
    """Ring engine -> DMA engine: the command stream, its early address, its end (``done``,
    ``fault``, ``failed``), the capture register's byte writes, the indirect table buffer's
    writes (``tbl_*``, as a RAM disk's ``wr_*``: :func:`DiskSignature`) and the scratch write
    source (see :class:`~rtl.dma.DmaEngine` for the timing)."""
    lanes = data_width // 8
    return wiring.Signature({
        "pre": Out(PreLookup),
        "cmd": Out(stream.Signature(DmaCommand(len_bits))),
        "done": In(1), "fault": In(4), "failed": In(1), "r_last_beat": In(1), "busy": In(1),
        "cap_we": In(CAP_BYTES), "cap_wdata": In(8 * CAP_BYTES),
        "tbl_word": In(word_bits), "tbl_data": In(data_width),
        "tbl_en_lo": In(lanes), "tbl_en_hi": In(lanes),
        "payload": Out(64), "serial": Out(1),
    })


def LookupSignature(ref_bits: int, set_bits: int = 0) -> wiring.Signature:
    """DMA engine -> translation unit: the table read address ``ref`` (every cycle), ``keep``
    with the request fields, and the registered answer (see
    :class:`~rtl.translate.TranslationUnit`). With an IOTLB (``set_bits``, its set index
    width): the large set read with ``ref`` (page-number bits ``18 + set_bits - 1 : 18``),
    ``lset_fast`` when ``lset_sel`` (the ring engine's address), else ``lset``; the small set
    is ``ref``'s low bits, ``sset_fast`` (the ring engine's) when ``lset_sel``;
    ``vaddr``, the whole address with ``keep``; ``used``, the DMA engine uses the answer
    (statistics); ``cancel``, the access is abandoned (a driver reset); ``miss``, the
    answer is a miss the hypervisor has not resolved; the frame is then 52 bits wide. The
    whole address comes in two forms: ``cvaddr`` when ``fast`` (the ring engine's command
    address, late in the cycle: it gets a single gate to the IOTLB's key register), else
    ``vaddr`` (the DMA engine's own registers)."""
    members = {
        "ref": Out(ref_bits), "keep": Out(1), "high": Out(1), "handle": Out(1), "write": Out(1),
        "new": In(1), "fault": In(4), "ok": In(1), "frame": In(52 if set_bits else 32),
        "mode": In(1), "stale": In(1),
    }
    if set_bits:
        members.update({"lset": Out(set_bits), "lset_fast": Out(set_bits), "lset_sel": Out(1),
                        "sset_fast": Out(set_bits),
                        "vaddr": Out(64), "cvaddr": Out(64),
                        "fast": Out(1), "used": Out(1),
                        "cancel": Out(1), "miss": In(1)})
    return wiring.Signature(members)


def IotlbCmdSignature() -> wiring.Signature:
    """Privileged registers -> IOTLB: the staged mapping (IOTLB_IOVA, IOTLB_PA, IOTLB_ATTR's
    size and permissions) and ``cmd``, IOTLB_CMD's value (1 to 3) in the cycle it is written
    (0 otherwise); back: ``busy``, a command runs; ``invalidated``, STAT_IOTLB_INVALIDATED."""
    return wiring.Signature({
        "stage_iova": Out(64), "stage_pa": Out(64), "stage_size": Out(6),
        "stage_r": Out(1), "stage_w": Out(1), "cmd": Out(2),
        "busy": In(1), "invalidated": In(32),
    })


def IotlbCtrlSignature() -> wiring.Signature:
    """Privileged registers -> translation unit, IOVA mode: the commands, ``iova_mode`` (HV_CTRL
    is 2), ``resolve`` (MISS_RESOLVE's value, 1 or 2, in the cycle it is written); back: the
    pending miss (``miss``, ``miss_write``, ``miss_iova``) and the statistics."""
    return wiring.Signature({
        "cmd": Out(IotlbCmdSignature()), "iova_mode": Out(1), "resolve": Out(2),
        "miss": In(1), "miss_write": In(1), "miss_iova": In(64),
        "hits": In(32), "misses": In(32),
    })


def disk_word_bits(disk_bytes: int, data_width: int) -> int:
    return max(1, ceil_log2(disk_bytes // (data_width // 8)))


def DiskSignature(word_bits: int, data_width: int) -> wiring.Signature:
    """DMA engine -> RAM disk: words ``rd_word`` and ``rd_word + 1`` read (two cycles), lanes
    written into words ``wr_word`` and ``wr_word + 1`` (see :class:`~rtl.ramdisk.RamDisk`)."""
    lanes = data_width // 8
    return wiring.Signature({
        "rd_word": Out(word_bits), "rd_lo": In(data_width), "rd_hi": In(data_width),
        "wr_word": Out(word_bits), "wr_data": Out(data_width),
        "wr_en_lo": Out(lanes), "wr_en_hi": Out(lanes),
    })


def TableSignature(ref_bits: int) -> wiring.Signature:
    """Privileged registers -> translation unit: the configuration and the grant table access
    (byte write enables; ``rdata`` one cycle after ``addr``)."""
    return wiring.Signature({
        "handle_mode": Out(1), "domid": Out(16), "cfg_changed": Out(1),
        "addr": Out(ref_bits), "wdata": Out(64), "wen": Out(8), "rdata": In(64),
    })


def QueueSignature() -> wiring.Signature:
    """virtio-mmio registers -> ring engine: queue 0's registers (``avail`` is QueueDriver,
    ``used`` QueueDevice), the notify and reset pulses (``reset_next``: ``dev_reset`` pulses
    in the next cycle), the negotiated INDIRECT_DESC and EVENT_IDX, and the engine's events
    back."""
    return wiring.Signature({
        "num": Out(32), "ready": Out(1), "desc": Out(64), "avail": Out(64), "used": Out(64),
        "notify": Out(1), "dev_reset": Out(1), "reset_next": Out(1),
        "used_irq": In(1), "fault": In(1), "idle": In(1),
        "indirect": Out(1), "event_idx": Out(1),
    })


EngineStatus = wiring.Signature({"fault": Out(1), "fault_cause": Out(4), "completed": Out(1)})


def DmaStatus() -> wiring.Signature:
    return wiring.Signature({"fault_addr": Out(64), "xlate": Out(1),
                             "inflight": Out(range(MAX_POSTED_WRITES + 3)),
                             "burst_done": Out(1)})


def StatusSignature() -> wiring.Signature:
    """What the privileged registers read (their ``In`` side): the ring engine's and the DMA
    engine's status."""
    return wiring.Signature({"engine": Out(EngineStatus), "dma": Out(DmaStatus())})
