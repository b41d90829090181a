"""Ring engine: split virtqueue processing and the virtio-blk request function.

Implements ``docs/architecture.md`` ("Ring engine") step by step: queue check, poll of the avail
ring, chain walk (pass 1, into a descriptor cache), then header, data, status, used element and
used index (pass 2). Every memory access is a command to the :class:`~rtl.dma.DmaEngine`, so every
access is translated. A fault stops the engine until the driver resets the device.

Area and timing (issue 5) shape the datapath:

* every 64-bit address the engine produces -- ring and descriptor addresses, the pass-2 pieces,
  the status byte, and the values the fault registers report -- comes from one register ``va``
  fed by one adder, ``va = X + Y``, where ``X`` is a queue base or the prefetched descriptor
  address and ``Y`` a 32-bit offset;
* ``va`` is loaded in the cycle before the command that uses it is handed over, and its next
  value is what the DMA engine looks up in the translation unit in that cycle (``pre_*``), so
  translation costs no cycle;
* the descriptor cache (block RAM) is read into a prefetch register one command ahead; the
  common request layouts always find the descriptor they need there, the others wait two
  cycles for it (``docs/timing.md``);
* checks of what a read returned are registered before the engine acts on them.

Writes are posted and drained twice per request, before the used element (so that a failed data
or status write never gets a used element) and after the used index (so that the interrupt
follows the used index).
"""

from contextlib import contextmanager

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from models import spec

from .dma import CAP_BYTES, local_bits
from .params import check_queue_num_max

__all__ = ["RingEngine"]


class CachedDesc(data.Struct):
    """What pass 2 needs of a non-empty descriptor (virtio 1.x section 2.7.5)."""

    addr: 64
    len: 32


class RingEngine(wiring.Component):
    """Split-virtqueue engine for one virtio-blk request queue.

    Parameters
    ----------
    queue_num_max : int
        Largest queue size; also the depth of the descriptor cache.
    disk_bytes : int
        RAM disk size in bytes.
    """

    def __init__(self, *, queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES):
        self._queue_num_max = check_queue_num_max(queue_num_max)
        self._disk_bytes = disk_bytes
        self._len_bits = local_bits(disk_bytes)
        super().__init__({
            # from the virtio-mmio register file
            "queue_num": In(32), "queue_ready": In(1),
            "queue_desc": In(64), "queue_avail": In(64), "queue_used": In(64),
            "notify": In(1), "dev_reset": In(1), "idle": Out(1), "abort": Out(1),
            # events
            "used_irq": Out(1), "completed": Out(1),
            "fault": Out(1), "fault_cause": Out(4), "fault_addr": Out(64),
            # DMA commands
            "pre_vaddr": Out(64), "pre_cont": Out(1),
            "cmd_valid": Out(1), "cmd_ready": In(1), "cmd_write": Out(1), "cmd_drain": Out(1),
            "cmd_cont": Out(1), "cmd_vaddr": Out(64), "cmd_len": Out(self._len_bits),
            "cmd_disk": Out(1), "cmd_dpos": Out(self._len_bits),
            "dma_done": In(1), "dma_fault": In(4), "dma_fault_addr": In(64), "dma_busy": In(1),
            "cap_we": In(CAP_BYTES), "cap_wdata": In(8 * CAP_BYTES),
            "payload": Out(64), "serial": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        qmax = self._queue_num_max
        qbits = ceil_log2(qmax + 1)  # an index up to qmax, or a count of descriptors
        lbits = self._len_bits
        cap_sectors = self._disk_bytes // spec.SECTOR_SIZE
        cs = ceil_log2(cap_sectors + 1)

        # The capture register: what the last read to the scratch brought.
        cap = Signal(8 * CAP_BYTES)
        for k in range(CAP_BYTES):
            with m.If(self.cap_we[k]):
                m.d.sync += cap[8 * k:8 * k + 8].eq(self.cap_wdata[8 * k:8 * k + 8])
        desc_f = data.View(data.StructLayout({"addr": 64, "len": 32, "flags": 16, "next": 16}),
                           cap)
        cap_idx = cap[16:32]  # avail.idx after a poll
        cap_head = cap[:16]  # the ring entry after a head read

        # Pass 1 caches the chain's non-empty descriptors (empty ones move no byte); pass 2
        # reads them into the prefetch register pf, one command ahead.
        m.submodules.cache = cache = memory.Memory(shape=CachedDesc, depth=qmax, init=[])
        cache_wr = cache.write_port()
        cache_rd = cache.read_port()
        pf_addr = Signal(64)
        pf_len = Signal(32)
        pf_idx = Signal(qbits)  # the entry pf holds
        rd_idx = Signal(qbits)  # the entry read this cycle (set by the state)
        pf_load = Signal()  # ... into pf (the block RAM answers in the next cycle)
        pf_load_d = Signal()
        rd_idx_d = Signal(qbits)
        m.d.comb += cache_rd.addr.eq(rd_idx)
        m.d.sync += [pf_load_d.eq(pf_load), rd_idx_d.eq(rd_idx)]
        with m.If(pf_load_d):
            m.d.sync += [pf_addr.eq(cache_rd.data.addr), pf_len.eq(cache_rd.data.len),
                         pf_idx.eq(rd_idx_d)]

        kick = Signal()
        abort = Signal()
        last_avail = Signal(16)  # consumed entries (incremented once the head is read)
        used_idx = Signal(16)
        avail_idx = Signal(16)
        no_irq = Signal()  # VIRTQ_AVAIL_F_NO_INTERRUPT of the last poll
        head = Signal(16)
        idx = Signal(16)  # the descriptor being walked; also the index a chain fault reports
        # pass 1
        walked = Signal(qbits + 1)  # descriptors of the chain read so far
        count = Signal(qbits)  # ... of which non-empty (cached)
        n_readable = Signal(qbits)  # ... of which device-readable
        seen_write = Signal()
        acc = Signal(33)  # sum of the lengths so far (bit 32: over 2^32 - 1)
        r_bytes = Signal(32)  # R: the sum when the first device-writable descriptor came
        r_lt16 = Signal()  # R < 16
        wr_bytes = Signal(33)  # Wr = acc - R, after the walk
        # pass 2
        got = Signal(5)  # header bytes read
        take = Signal(lbits)  # bytes of the piece in flight
        piece_ends = Signal()  # ... it ends its descriptor
        hdr_last = Signal()  # ... it ends the header
        last_piece = Signal()  # ... it is the last data piece
        split_rem = Signal(32)  # what the header left of its last descriptor
        cont_next = Signal()  # the next data piece continues in that descriptor
        remaining = Signal(lbits)  # data bytes not yet moved
        dpos = Signal(lbits)  # where the next data piece starts on the disk (or in the serial)
        to_disk = Signal()
        dir_write = Signal()
        blk_status = Signal(8)
        used_len = Signal(32)  # the used element's len: bytes written + 1 (the status byte)
        f_cause = Signal(4)
        f_addr = Signal(64)
        m.d.comb += [
            self.fault_cause.eq(f_cause),
            self.fault_addr.eq(f_addr),
            self.abort.eq(abort),
        ]

        n = self.queue_num
        # The queue size as checked by QCHECK and its mask, computed every cycle (a notify
        # reaches QCHECK at least two cycles after the last register write).
        qnum = Signal(qbits)
        qmask = Signal(16)
        num_ok = Signal()
        m.d.sync += [num_ok.eq((n != 0) & ((n & (n - 1)) == 0) & (n <= qmax)),
                     qnum.eq(n[:qbits]), qmask.eq(n[:16] - 1)]

        # ---- The address register and its adder ---------------------------------------------
        va = Signal(64)
        x_desc, x_avail, x_used, x_pf = (Signal(name=f"x_{s}") for s in
                                          ("desc", "avail", "used", "pf"))
        y_ring_a, y_ring_u, y_two, y_desc, y_stat, y_num, y_idx = (
            Signal(name=f"y_{s}") for s in ("ring_a", "ring_u", "two", "desc", "stat", "num",
                                             "idx"))
        va_load = Signal()
        desc_idx = Signal(16)  # the index a descriptor address is formed from
        ring_a_slot = Signal(16)  # (index & mask) + 2: avail entry i is at 4 + 2 * i
        m.d.comb += ring_a_slot.eq((last_avail & qmask) + 2)
        x = Signal(64)
        y = Signal(32)
        m.d.comb += [
            x.eq(Mux(x_desc, self.queue_desc, 0) | Mux(x_avail, self.queue_avail, 0)
                 | Mux(x_used, self.queue_used, 0) | Mux(x_pf, pf_addr, 0)),
            y.eq(Mux(y_ring_a, ring_a_slot << 1, 0)
                 | Mux(y_ring_u, Cat(Const(0b100, 3), used_idx & qmask), 0)
                 | Mux(y_two, 2, 0)
                 | Mux(y_desc, desc_idx << 4, 0)
                 | Mux(y_stat, pf_len - 1, 0)
                 | Mux(y_num, n, 0)
                 | Mux(y_idx, idx, 0)),
        ]
        va_next = Signal(64)
        m.d.comb += va_next.eq(x + y)
        with m.If(va_load):
            m.d.sync += va.eq(va_next)
        m.d.comb += [
            self.cmd_vaddr.eq(va),
            # only the reference bits of this are used, looked up in the translation unit
            self.pre_vaddr.eq(Mux(va_load, va_next, va)),
        ]

        def load(xs=None, *ys):
            """This state loads va = X + Y."""
            m.d.comb += va_load.eq(1)
            if xs is not None:
                m.d.comb += xs.eq(1)
            for ys_ in ys:
                m.d.comb += ys_.eq(1)

        def fault(cause, *, value=None):
            """An engine-detected fault; ``value`` loads va with the fault address."""
            m.d.sync += f_cause.eq(cause)
            if value is not None:
                value()
            m.next = "EFAULT"

        @contextmanager
        def state(name):
            with m.State(name):
                yield
                with m.If(abort & ~self.dma_busy):
                    m.d.sync += abort.eq(0)
                    m.next = "IDLE"

        # A data piece that continues where the header ended: the DMA engine keeps its address
        # while idle and looks it up, from the cycle the header ends to the piece's issue.
        m.d.comb += [self.cmd_cont.eq(cont_next), self.pre_cont.eq(cont_next)]

        def issue(wait_state, *, write=0, length=0, disk=0, dpos=0, drain=0):
            """Hand a command to the DMA engine (idle in every state that calls this)."""
            m.d.comb += [
                self.cmd_valid.eq(~abort), self.cmd_write.eq(write), self.cmd_drain.eq(drain),
                self.cmd_len.eq(length), self.cmd_disk.eq(disk), self.cmd_dpos.eq(dpos),
            ]
            m.next = wait_state

        def wait(name, then, before=None):
            """Wait for the command's end; a DMA fault becomes the engine's fault."""
            with state(name):
                if before is not None:
                    before()
                with m.If(self.dma_done):
                    with m.If(self.dma_fault != 0):
                        m.d.sync += [f_cause.eq(self.dma_fault), f_addr.eq(self.dma_fault_addr)]
                        m.next = "FAULT"
                    with m.Else():
                        then()

        def goto(name):
            return lambda: setattr(m, "next", name)

        def fetch(index):
            """Read cache entry ``index`` into pf (there two cycles later)."""
            m.d.comb += [rd_idx.eq(index), pf_load.eq(1)]

        # Data sizes of an IN and an OUT request, in sectors, and whether they are whole
        # sectors: D = Wr - 1 (IN) is a multiple of 512 exactly when Wr mod 512 = 1, and then
        # D / 512 = Wr >> 9; likewise D = R - 16 (OUT). A request is in range when
        # sector + D / 512 <= the disk's sectors.
        def in_range(total, rest, sector):
            dsec = total[9:]
            fits = Signal(cs + 2, name="sum_sectors")
            m.d.comb += fits.eq(sector[:cs] + dsec[:cs])
            return ((total[:9] == rest) & (dsec[cs:] == 0) & (sector[cs:] == 0)
                    & (fits <= cap_sectors))

        with m.FSM():
            with state("IDLE"):
                m.d.comb += self.idle.eq(~abort)
                load(x_avail)  # the poll reads avail.flags and avail.idx
                with m.If(kick & ~abort):
                    m.d.sync += kick.eq(0)
                    m.next = "QCHECK"

            # ---- step 1 and 2: queue check and poll --------------------------------------------
            with state("QCHECK"):
                with m.If(~num_ok):
                    fault(spec.FAULT_BAD_RING, value=lambda: load(None, y_num))
                with m.Elif(self.queue_desc[:4] != 0):
                    fault(spec.FAULT_BAD_RING, value=lambda: load(x_desc))
                with m.Elif(self.queue_avail[0]):
                    fault(spec.FAULT_BAD_RING, value=lambda: load(x_avail))
                with m.Elif(self.queue_used[:2] != 0):
                    fault(spec.FAULT_BAD_RING, value=lambda: load(x_used))
                with m.Else():
                    load(x_avail, y_ring_a)  # the head of the next entry, for POLL_ACT
                    issue("POLL_WAIT", length=4)
            wait("POLL_WAIT", goto("POLL_CHECK"))

            # POLL_CHECK registers what the avail index says, POLL_ACT acts on it.
            poll_bad = Signal()
            poll_none = Signal()
            with state("POLL_CHECK"):
                pending = Signal(16)
                m.d.comb += pending.eq(cap_idx - last_avail)
                m.d.sync += [avail_idx.eq(cap_idx), no_irq.eq(cap[0]), idx.eq(cap_idx),
                             poll_bad.eq(pending > qnum), poll_none.eq(pending == 0)]
                m.next = "POLL_ACT"

            with state("POLL_ACT"):
                with m.If(poll_bad):
                    fault(spec.FAULT_BAD_RING, value=lambda: load(None, y_idx))
                with m.Elif(poll_none):
                    m.next = "IDLE"
                with m.Else():
                    issue("HEAD_WAIT", length=2)

            # ---- step 3.1 and 3.2: head, then walk and check the chain ------------------------
            with state("HEAD"):
                issue("HEAD_WAIT", length=2)
            wait("HEAD_WAIT", goto("DESC_FIRST"))

            # DESC_FIRST forms the first descriptor's address and registers the head's check,
            # DESC_START acts on it.
            head_bad = Signal()
            with state("DESC_FIRST"):
                m.d.comb += desc_idx.eq(cap_head)
                load(x_desc, y_desc)
                m.d.sync += [
                    head.eq(cap_head), idx.eq(cap_head), head_bad.eq(cap_head >= qnum),
                    last_avail.eq(last_avail + 1),
                    walked.eq(0), count.eq(0), n_readable.eq(0), seen_write.eq(0),
                    acc.eq(0), r_lt16.eq(1), cont_next.eq(0),
                ]
                m.next = "DESC_START"

            with state("DESC_START"):
                with m.If(head_bad):
                    fault(spec.FAULT_BAD_CHAIN, value=lambda: load(None, y_idx))
                with m.Else():
                    issue("DESC_WAIT", length=16)

            # the first cached descriptor is kept in pf for the header (it was cached at least
            # one descriptor read ago: a request needs two non-empty descriptors)
            wait("DESC_WAIT", goto("DESC_CHECK"), before=lambda: fetch(0))

            # A descriptor takes two cycles: DESC_CHECK computes its checks and sums into
            # registers (and caches it: after a failed check nothing reads the cache) and forms
            # the next address, DESC_NEXT acts on them.
            bad = Signal()
            has_next = Signal()
            next_bad = Signal()
            hdr_len = Signal(5)  # the first header piece
            with state("DESC_CHECK"):
                d_write = desc_f.flags[1]
                nonempty = desc_f.len != 0
                lo_end = Signal(33)
                new_acc = Signal(33)
                m.d.comb += [lo_end.eq(desc_f.addr[:32] + desc_f.len),
                             new_acc.eq(acc + desc_f.len)]
                # addr + len > 2^64, with a 32-bit carry chain
                wraps = (desc_f.addr[32:] == 0xFFFF_FFFF) & lo_end[32] & (lo_end[:32] != 0)
                m.d.comb += [
                    cache_wr.addr.eq(count), cache_wr.en.eq(nonempty),
                    cache_wr.data.addr.eq(desc_f.addr), cache_wr.data.len.eq(desc_f.len),
                    desc_idx.eq(desc_f.next),
                ]
                # the next descriptor, or the header's first piece
                with m.If(desc_f.flags[0]):
                    load(x_desc, y_desc)
                with m.Else():
                    load(x_pf)
                short = (pf_len[5:] == 0) & (pf_len[:5] < 16)
                m.d.sync += [
                    bad.eq((desc_f.flags & spec.VIRTQ_DESC_F_INDIRECT).bool()
                           | (~d_write & seen_write) | wraps | new_acc[32]),
                    has_next.eq(desc_f.flags[0]), next_bad.eq(desc_f.next >= qnum),
                    walked.eq(walked + 1), acc.eq(new_acc),
                    seen_write.eq(seen_write | d_write),
                    hdr_len.eq(Mux(short, pf_len[:5], 16)),
                ]
                with m.If(d_write & ~seen_write):
                    m.d.sync += [r_bytes.eq(acc), r_lt16.eq(acc < spec.BLK_HEADER_BYTES)]
                with m.If(nonempty):
                    m.d.sync += count.eq(count + 1)
                    with m.If(~d_write):
                        m.d.sync += n_readable.eq(n_readable + 1)
                m.next = "DESC_NEXT"

            with state("DESC_NEXT"):
                with m.If(bad):
                    fault(spec.FAULT_BAD_CHAIN, value=lambda: load(None, y_idx))
                with m.Elif(has_next):  # NEXT
                    m.d.sync += idx.eq(desc_f.next)
                    # the next one is outside the queue, or would be number N + 1
                    with m.If(next_bad | (walked == qnum)):
                        m.next = "CHAIN_FAULT"
                    with m.Else():
                        issue("DESC_WAIT", length=16)
                # step 3.3: request framing (R >= 16 and Wr >= 1: a writable byte was seen,
                # and count > n_readable)
                with m.Elif(r_lt16 | (count == n_readable)):
                    m.d.sync += idx.eq(head)
                    m.d.sync += f_cause.eq(spec.FAULT_BAD_REQUEST)
                    m.next = "IDX_FAULT"
                with m.Else():
                    # step 3.4: the header's first piece, from cached descriptor 0
                    m.d.sync += [got.eq(0), take.eq(hdr_len), hdr_last.eq(hdr_len == 16),
                                 piece_ends.eq(pf_len == hdr_len)]
                    with m.If(pf_len == hdr_len):
                        fetch(1)
                    issue("HDR_WAIT", length=hdr_len)
            with state("CHAIN_FAULT"):  # idx is the offending index now
                fault(spec.FAULT_BAD_CHAIN, value=lambda: load(None, y_idx))
            with state("IDX_FAULT"):  # idx is the offending index, f_cause set
                load(None, y_idx)
                m.next = "EFAULT"

            # ---- step 3.4: header --------------------------------------------------------------
            # Wr = acc - R, settled long before DECODE.
            m.d.sync += wr_bytes.eq(acc - r_bytes)

            def after_hdr_piece():
                m.d.sync += got.eq(got + take)
                with m.If(hdr_last):
                    m.d.sync += [cont_next.eq(~piece_ends), split_rem.eq(pf_len - take)]
                    m.next = "DECODE"
                with m.Else():
                    m.next = "HDR_PIECE"
            # the next piece's address, if there is one (pf is the next descriptor then)
            wait("HDR_WAIT", after_hdr_piece, before=lambda: load(x_pf))

            with state("HDR_PIECE"):  # pf: the next cached descriptor, never empty
                need = Signal(5)
                m.d.comb += need.eq(spec.BLK_HEADER_BYTES - got)
                short = (pf_len[5:] == 0) & (pf_len[:5] < need)
                piece = Signal(5)
                m.d.comb += piece.eq(Mux(short, pf_len[:5], need))
                m.d.sync += [take.eq(piece), hdr_last.eq(~short),
                             piece_ends.eq(pf_len == piece)]
                with m.If(pf_len == piece):
                    fetch(pf_idx + 1)
                issue("HDR_WAIT", length=piece, dpos=got)

            # ---- step 3.5: decode and data -----------------------------------------------------
            # DECODE registers what the header says; DISPATCH acts on it.
            t_in = Signal()
            t_out = Signal()
            t_flush = Signal()
            t_get_id = Signal()
            ok_in = Signal()
            ok_out = Signal()
            sector_base = Signal(lbits)
            id_len = Signal(5)  # GET_ID: min(20, Wr - 1)
            with state("DECODE"):
                req_type = cap[:32]
                sector = cap[64:128]
                m.d.sync += [
                    t_in.eq(req_type == spec.VIRTIO_BLK_T_IN),
                    t_out.eq(req_type == spec.VIRTIO_BLK_T_OUT),
                    t_flush.eq(req_type == spec.VIRTIO_BLK_T_FLUSH),
                    t_get_id.eq(req_type == spec.VIRTIO_BLK_T_GET_ID),
                    ok_in.eq(in_range(wr_bytes, 1, sector)),
                    ok_out.eq(in_range(r_bytes, spec.BLK_HEADER_BYTES, sector)),
                    sector_base.eq(sector[:cs] << 9),
                    id_len.eq(Mux(wr_bytes > spec.VIRTIO_BLK_ID_BYTES,
                                  spec.VIRTIO_BLK_ID_BYTES, wr_bytes[:5] - 1)),
                ]
                m.next = "DISPATCH"

            # DISPATCH decides what moves and which cached descriptor that needs first: the
            # first device-writable one (IN, GET_ID), the one after the header (OUT), or the
            # last one (the status byte). Where pf does not hold it, FETCH waits for it.
            need_idx = Signal(qbits)
            after = Signal()  # then: 0 = the status, 1 = the data
            with state("DISPATCH"):
                m.d.sync += [blk_status.eq(spec.VIRTIO_BLK_S_OK), used_len.eq(1),
                             dpos.eq(sector_base), to_disk.eq(1), dir_write.eq(1)]
                move_in = t_in & ok_in & (wr_bytes != 1)
                move_out = t_out & ok_out & (r_bytes != spec.BLK_HEADER_BYTES)
                move_id = t_get_id & (wr_bytes != 1)
                with m.If(t_in & ok_in):
                    m.d.sync += used_len.eq(wr_bytes)
                with m.If(t_get_id):
                    m.d.sync += used_len.eq(id_len + 1)
                with m.If((t_in & ~ok_in) | (t_out & ~ok_out)):
                    m.d.sync += blk_status.eq(spec.VIRTIO_BLK_S_IOERR)
                with m.If(~t_in & ~t_out & ~t_flush & ~t_get_id):
                    m.d.sync += blk_status.eq(spec.VIRTIO_BLK_S_UNSUPP)
                with m.If(~move_out):
                    m.d.sync += cont_next.eq(0)  # only OUT data follows the header
                with m.If(move_in):
                    m.d.sync += [remaining.eq(wr_bytes[9:] << 9), need_idx.eq(n_readable),
                                 after.eq(1)]
                with m.Elif(move_id):
                    m.d.sync += [remaining.eq(id_len), need_idx.eq(n_readable), dpos.eq(0),
                                 to_disk.eq(0), after.eq(1)]
                with m.Elif(move_out):
                    # the data starts in the header's last descriptor (cont_next) or in the
                    # next one, which the header's last piece fetched into pf
                    m.d.sync += [remaining.eq(r_bytes[9:] << 9), dir_write.eq(0), after.eq(1),
                                 need_idx.eq(pf_idx)]
                with m.Else():
                    m.d.sync += [need_idx.eq(count - 1), after.eq(0)]
                m.next = "ROUTE"

            # ROUTE: pf holds the descriptor needed (or the data continues in the header's
            # last descriptor): load va and go; else fetch it first.
            with state("ROUTE"):
                with m.If(after & cont_next):
                    # OUT, continuing where the header ended: the DMA engine's own address
                    m.next = "DATA_PIECE"
                with m.Elif(pf_idx == need_idx):
                    with m.If(after):
                        load(x_pf)
                        m.next = "DATA_PIECE"
                    with m.Else():
                        load(x_pf, y_stat)
                        m.next = "STATUS"
                with m.Else():
                    fetch(need_idx)
                    m.next = "FETCH"
            with state("FETCH"):
                m.next = "ROUTE_FETCHED"
            with state("ROUTE_FETCHED"):  # pf = need_idx now
                with m.If(after):
                    load(x_pf)
                    m.next = "DATA_PIECE"
                with m.Else():
                    load(x_pf, y_stat)
                    m.next = "STATUS"

            with state("DATA_PIECE"):  # pf: the piece's descriptor (or split_rem); remaining > 0
                avail_len = Mux(cont_next, split_rem, pf_len)
                piece = Signal(lbits)
                short = (avail_len[lbits:] == 0) & (avail_len[:lbits] < remaining)
                m.d.comb += piece.eq(Mux(short, avail_len[:lbits], remaining))
                m.d.sync += [take.eq(piece), last_piece.eq(~short), cont_next.eq(0)]
                # the next piece's descriptor, or the status byte's (the last one)
                with m.If(short):
                    fetch(pf_idx + 1)
                with m.Else():
                    fetch(count - 1)
                issue("DATA_WAIT", write=dir_write, length=piece, disk=to_disk, dpos=dpos)

            def after_data_piece():
                m.d.sync += [remaining.eq(remaining - take), dpos.eq(dpos + take)]
                with m.If(last_piece):
                    m.next = "STATUS"
                with m.Else():
                    m.next = "DATA_PIECE"

            def before_data():
                m.d.comb += self.serial.eq(~to_disk)
                with m.If(last_piece):
                    load(x_pf, y_stat)
                with m.Else():
                    load(x_pf)
            wait("DATA_WAIT", after_data_piece, before=before_data)

            # ---- steps 3.6 to 3.9: status, used element, used index -------------------------
            # The payload of a write from the scratch is held until the command is done.
            def payload(value):
                return lambda: m.d.comb.__iadd__(self.payload.eq(value))

            with state("STATUS"):
                payload(blk_status)()
                issue("STATUS_WAIT", write=1, length=1)
            wait("STATUS_WAIT", goto("DRAIN_DATA"), before=payload(blk_status))
            with state("DRAIN_DATA"):  # no used element for data that did not arrive
                issue("DRAIN_DATA_WAIT", drain=1)
            wait("DRAIN_DATA_WAIT", goto("USED"), before=lambda: load(x_used, y_ring_u))

            used_elem = Cat(head, Const(0, 16), used_len)
            with state("USED"):
                payload(used_elem)()
                issue("USED_WAIT", write=1, length=8)

            def before_used_wait():
                payload(used_elem)()
                load(x_used, y_two)
            wait("USED_WAIT", goto("USED_IDX"), before=before_used_wait)

            next_used = Signal(16)
            m.d.comb += next_used.eq(used_idx + 1)
            with state("USED_IDX"):
                payload(next_used)()
                issue("USED_IDX_WAIT", write=1, length=2)
            wait("USED_IDX_WAIT", goto("DRAIN_USED"), before=payload(next_used))
            with state("DRAIN_USED"):  # the interrupt follows the used index
                issue("DRAIN_USED_WAIT", drain=1)

            # registered: last_avail and avail_idx are settled long before DRAIN_USED_WAIT
            round_done = Signal()
            m.d.sync += round_done.eq(last_avail == avail_idx)

            def before_used():
                with m.If(round_done):
                    load(x_avail)  # the next round's poll
                with m.Else():
                    load(x_avail, y_ring_a)  # the next entry's head

            def after_used():
                m.d.sync += used_idx.eq(next_used)
                m.d.comb += [self.completed.eq(1),
                             self.used_irq.eq(~no_irq)]  # VIRTQ_AVAIL_F_NO_INTERRUPT
                with m.If(round_done):
                    m.next = "QCHECK"
                with m.Else():
                    m.next = "HEAD"
            wait("DRAIN_USED_WAIT", after_used, before=before_used)

            with state("EFAULT"):  # va holds the engine fault's address now
                m.d.sync += f_addr.eq(va)
                m.next = "FAULT"
            with state("FAULT"):
                m.d.comb += self.fault.eq(1)
                m.next = "HALT"
            with state("HALT"):
                pass

        with m.If(self.notify):
            m.d.sync += kick.eq(1)
        with m.If(self.dev_reset):
            m.d.sync += [abort.eq(1), kick.eq(0), last_avail.eq(0), used_idx.eq(0),
                         cont_next.eq(0)]
        return m
