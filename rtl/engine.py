"""Ring engine: split virtqueue processing and the virtio-blk request function.

Implements ``docs/architecture.md`` ("Ring engine") step by step: queue check, poll of the avail
ring, chain walk (pass 1, into a descriptor cache), then header, data, status, used element and
used index (pass 2). Every memory access is a command to the :class:`~rtl.dma.DmaEngine`, so every
access is translated. A fault stops the engine until the driver resets the device.

Cycle by cycle (``docs/timing.md``): a state that issues a command does so in the cycle right
after the previous command's ``done``, or two cycles after it where the checks of what it
returned are registered first (a descriptor, the request header). Addresses come from registers
or from a carry chain cut at bit 20, so that the engine meets 100 MHz. Writes are posted and
drained twice per request, before the used element (so that a failed data or status write never
gets a used element) and after the used index (so that the interrupt follows the used index).
"""

from contextlib import contextmanager

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from models import spec

from .dma import SBUF_BYTES
from .params import check_queue_num_max

__all__ = ["RingEngine"]


class CachedDesc(data.Struct):
    """What pass 2 needs of a descriptor (virtio 1.x section 2.7.5)."""

    addr: 64
    len: 32
    write: 1


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
        super().__init__({
            # from the virtio-mmio register file
            "queue_num": In(32), "queue_ready": In(1),
            "queue_desc": In(64), "queue_avail": In(64), "queue_used": In(64),
            "notify": In(1), "dev_reset": In(1), "idle": Out(1), "abort": Out(1),
            # events
            "used_irq": Out(1), "completed": Out(1),
            "fault": Out(1), "fault_cause": Out(4), "fault_addr": Out(64),
            # DMA commands
            "cmd_valid": Out(1), "cmd_ready": In(1), "cmd_write": Out(1), "cmd_drain": Out(1),
            "cmd_vaddr": Out(64), "cmd_len": Out(32), "cmd_disk": Out(1), "cmd_dpos": Out(32),
            "dma_done": In(1), "dma_fault": In(4), "dma_fault_addr": In(64), "dma_busy": In(1),
            "sbuf": Out(8 * SBUF_BYTES), "sbuf_we": In(SBUF_BYTES),
            "sbuf_wdata": In(8 * SBUF_BYTES),
        })

    def elaborate(self, platform):
        m = Module()
        qmax = self._queue_num_max
        cap_sectors = self._disk_bytes // spec.SECTOR_SIZE

        # Pass 1 caches the chain's non-empty descriptors (empty ones move no byte); pass 2 reads
        # them back through the prefetch registers below.
        m.submodules.cache = cache = memory.Memory(shape=CachedDesc, depth=qmax, init=[])
        cache_wr = cache.write_port()
        cache_rd = cache.read_port(transparent_for=(cache_wr,))

        # Scratch buffer shared with the DMA engine.
        sbuf = Signal(8 * SBUF_BYTES)
        m.d.comb += self.sbuf.eq(sbuf)
        for k in range(SBUF_BYTES):
            with m.If(self.sbuf_we[k]):
                m.d.sync += sbuf[8 * k:8 * k + 8].eq(self.sbuf_wdata[8 * k:8 * k + 8])

        kick = Signal()
        abort = Signal()
        last_avail = Signal(16)
        used_idx = Signal(16)
        avail_idx = Signal(16)
        avail_flags = Signal(16)
        qmask = Signal(16)
        head = Signal(16)
        # pass 1
        idx = Signal(16)
        walked = Signal(range(qmax + 2))  # descriptors of the chain seen so far
        count = Signal(range(qmax + 2))  # ... of which non-empty (cached)
        n_readable = Signal(range(qmax + 2))  # ... of which device-readable
        seen_write = Signal()
        have_w0 = Signal()
        w0_addr = Signal(64)  # the first non-empty device-writable descriptor
        w0_len = Signal(32)
        total = Signal(34)
        r_bytes = Signal(33)
        w_bytes = Signal(33)
        status_addr = Signal(64)
        # pass 2: the next piece starts at p_vaddr, in cached descriptor k, with p_left bytes
        # left in that descriptor
        k = Signal(range(qmax + 1))
        p_vaddr = Signal(64)
        p_left = Signal(32)
        got = Signal(5)
        take = Signal(32)
        hdr_last = Signal()  # the header piece in flight ends the header
        reload = Signal()  # ... ends its descriptor
        remaining = Signal(32)  # data bytes not yet moved
        dpos = Signal(32)  # where the next data piece starts on the disk (or in sbuf)
        to_disk = Signal()
        dir_write = Signal()
        blk_status = Signal(8)
        written = Signal(32)
        f_cause = Signal(4)
        f_addr = Signal(64)
        # the ring address the next ring command uses, computed a cycle ahead (see ring_next)
        ring_addr = Signal(64)

        m.d.comb += [
            self.fault_cause.eq(f_cause),
            self.fault_addr.eq(f_addr),
            self.abort.eq(abort),
        ]

        # Prefetch: while a piece is in flight the next descriptor is read from the cache; its
        # address and length land in p_vaddr / p_left one cycle after the read (a state's own
        # assignment to them, made later in this function, wins).
        pf = Signal()
        pf_d = Signal()
        m.d.comb += cache_rd.addr.eq(k + 1)
        m.d.sync += pf_d.eq(pf)
        with m.If(pf_d):
            m.d.sync += [p_vaddr.eq(cache_rd.data.addr), p_left.eq(cache_rd.data.len)]

        n = self.queue_num
        # The queue size as checked by QCHECK (at most QueueNumMax): the comparisons of the
        # round use this narrow copy rather than the 32-bit register.
        qnum = Signal(range(qmax + 1))
        # QueueNum is a power of two in [1, QueueNumMax], computed a cycle ahead (a notify
        # reaches QCHECK at least two cycles after the last register write)
        num_ok = Signal()
        m.d.sync += num_ok.eq((n != 0) & ((n & (n - 1)) == 0) & (n <= qmax))
        desc_f = data.View(data.StructLayout({"addr": 64, "len": 32, "flags": 16, "next": 16}),
                           sbuf[:128])

        def desc_addr(index):
            """queue_desc + 16 * index, with the carry chain cut at bit 20 (index < 2^16)."""
            lo = Signal(21, name="desc_lo")
            m.d.comb += lo.eq(self.queue_desc[:20] + (index << 4)[:20])
            hi = self.queue_desc[20:]
            return Cat(lo[:20], Mux(lo[20], hi + 1, hi))

        # Ring addresses (avail ring entry, used element, used index, the avail header for the
        # poll) only depend on registers, so they are computed into ring_addr in the cycle
        # before the state that issues them.
        ring_base = Signal(64)
        ring_off = Signal(19)
        m.d.sync += ring_addr.eq(ring_base + ring_off)

        def ring_next(what, avail=None):
            if what == "poll":
                m.d.comb += [ring_base.eq(self.queue_avail), ring_off.eq(0)]
            elif what == "head":
                m.d.comb += [ring_base.eq(self.queue_avail),
                             ring_off.eq(4 + ((avail & qmask) << 1))]
            elif what == "used":
                m.d.comb += [ring_base.eq(self.queue_used),
                             ring_off.eq(4 + ((used_idx & qmask) << 3))]
            else:  # "uidx"
                m.d.comb += [ring_base.eq(self.queue_used), ring_off.eq(2)]

        def fault(cause, addr):
            m.d.sync += [f_cause.eq(cause), f_addr.eq(addr)]
            m.next = "FAULT"

        @contextmanager
        def state(name):
            with m.State(name):
                yield
                with m.If(abort & ~self.dma_busy):
                    m.d.sync += abort.eq(0)
                    m.next = "IDLE"

        # The command's address is one of four, chosen by the issuing state; the DMA engine
        # samples it only in the cycle it accepts a command.
        vsel = Signal(2)
        desc_idx = Signal(16)
        VADDR = {"ring": 0, "desc": 1, "piece": 2, "status": 3}
        m.d.comb += self.cmd_vaddr.eq(Mux(vsel[1], Mux(vsel[0], status_addr, p_vaddr),
                                          Mux(vsel[0], desc_addr(desc_idx), ring_addr)))

        def address(vaddr, index=None):
            """The address of the command a state issues, if it does: set for the whole state,
            outside its decisions, so that the table's read address (which the DMA engine
            takes from it) does not wait for them (issue 5, Fmax)."""
            m.d.comb += vsel.eq(VADDR[vaddr])
            if index is not None:
                m.d.comb += desc_idx.eq(index)

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
                        fault(self.dma_fault, self.dma_fault_addr)
                    with m.Else():
                        then()

        def goto(name):
            return lambda: setattr(m, "next", name)

        with m.FSM():
            with state("IDLE"):
                m.d.comb += self.idle.eq(~abort)
                ring_next("poll")
                with m.If(kick & ~abort):
                    m.d.sync += kick.eq(0)
                    m.next = "QCHECK"

            # ---- step 1 and 2: queue check and poll --------------------------------------------
            with state("QCHECK"):
                address("ring")
                m.d.sync += [qmask.eq(n - 1), qnum.eq(n)]
                with m.If(~num_ok):
                    fault(spec.FAULT_BAD_RING, n)
                with m.Elif(self.queue_desc[:4] != 0):
                    fault(spec.FAULT_BAD_RING, self.queue_desc)
                with m.Elif(self.queue_avail[0]):
                    fault(spec.FAULT_BAD_RING, self.queue_avail)
                with m.Elif(self.queue_used[:2] != 0):
                    fault(spec.FAULT_BAD_RING, self.queue_used)
                with m.Else():
                    issue("POLL_WAIT", length=4)
            wait("POLL_WAIT", goto("POLL_CHECK"), before=lambda: ring_next("head", last_avail))

            # POLL_CHECK registers what the avail index says, POLL_ACT acts on it (Fmax).
            poll_bad = Signal()
            poll_none = Signal()
            with state("POLL_CHECK"):
                ring_next("head", last_avail)
                pending = Signal(16)
                m.d.comb += pending.eq(sbuf[16:32] - last_avail)
                m.d.sync += [avail_flags.eq(sbuf[:16]), avail_idx.eq(sbuf[16:32]),
                             poll_bad.eq(pending > qnum), poll_none.eq(pending == 0)]
                m.next = "POLL_ACT"

            with state("POLL_ACT"):
                address("ring")
                with m.If(poll_bad):
                    fault(spec.FAULT_BAD_RING, avail_idx)
                with m.Elif(poll_none):
                    m.next = "IDLE"
                with m.Else():
                    issue("HEAD_WAIT", length=2)

            # ---- step 3.1 and 3.2: head, then walk and check the chain ------------------------
            with state("HEAD"):
                address("ring")
                issue("HEAD_WAIT", length=2)
            wait("HEAD_WAIT", goto("DESC_FIRST"))

            # DESC_FIRST registers the chain's head and its check, DESC_START acts on it (Fmax).
            head_bad = Signal()
            with state("DESC_FIRST"):
                first = sbuf[:16]
                m.d.sync += [
                    head.eq(first), idx.eq(first), walked.eq(0), count.eq(0), n_readable.eq(0),
                    seen_write.eq(0), have_w0.eq(0), total.eq(0), r_bytes.eq(0), w_bytes.eq(0),
                    head_bad.eq(first >= qnum),
                ]
                m.next = "DESC_START"

            with state("DESC_START"):
                address("desc", head)
                with m.If(head_bad):
                    fault(spec.FAULT_BAD_CHAIN, head)
                with m.Else():
                    issue("DESC_WAIT", length=16)

            def before_desc():
                # the first cached descriptor is ready for pass 2 (it was cached at least one
                # descriptor read ago: a request needs two non-empty descriptors)
                m.d.comb += cache_rd.addr.eq(0)
                m.d.sync += [k.eq(0), got.eq(0)]
                m.d.comb += pf.eq(1)
            wait("DESC_WAIT", goto("DESC_CHECK"), before=before_desc)

            # A descriptor takes two cycles: DESC_CHECK computes its checks and sums into
            # registers (and caches it: after a failed check nothing reads the cache), then
            # DESC_NEXT acts on them (issue 5, Fmax).
            bad = Signal()
            has_next = Signal()
            nxt = Signal(16)
            nxt_bad = Signal()
            with state("DESC_CHECK"):
                d_write = desc_f.flags[1]
                lo_end = Signal(33)
                new_total = Signal(34)
                new_side = Signal(33)
                m.d.comb += [
                    lo_end.eq(desc_f.addr[:32] + desc_f.len),
                    new_total.eq(total + desc_f.len),
                    new_side.eq(Mux(d_write, w_bytes, r_bytes) + desc_f.len),
                ]
                # addr + len > 2^64, with a 32-bit carry chain
                wraps = (desc_f.addr[32:] == 0xFFFF_FFFF) & lo_end[32] & (lo_end[:32] != 0)
                nonempty = desc_f.len != 0
                m.d.comb += [
                    cache_wr.addr.eq(count), cache_wr.en.eq(nonempty),
                    cache_wr.data.addr.eq(desc_f.addr), cache_wr.data.len.eq(desc_f.len),
                    cache_wr.data.write.eq(d_write),
                ]
                m.d.sync += [
                    bad.eq((desc_f.flags & spec.VIRTQ_DESC_F_INDIRECT).bool()
                           | (~d_write & seen_write) | wraps | new_total[32:].any()),
                    has_next.eq(desc_f.flags[0]), nxt.eq(desc_f.next),
                    nxt_bad.eq(desc_f.next >= qnum),
                    walked.eq(walked + 1), total.eq(new_total),
                    seen_write.eq(seen_write | d_write),
                ]
                with m.If(d_write):
                    m.d.sync += w_bytes.eq(new_side)
                with m.Else():
                    m.d.sync += r_bytes.eq(new_side)
                with m.If(nonempty):
                    m.d.sync += [count.eq(count + 1),
                                 status_addr.eq(desc_f.addr + desc_f.len - 1)]
                    with m.If(~d_write):
                        m.d.sync += n_readable.eq(n_readable + 1)
                    with m.If(d_write & ~have_w0):
                        m.d.sync += [have_w0.eq(1), w0_addr.eq(desc_f.addr),
                                     w0_len.eq(desc_f.len)]
                m.next = "DESC_NEXT"

            with state("DESC_NEXT"):
                address("desc", nxt)
                with m.If(bad):
                    fault(spec.FAULT_BAD_CHAIN, idx)
                with m.Elif(has_next):  # NEXT
                    with m.If(nxt_bad):
                        fault(spec.FAULT_BAD_CHAIN, nxt)
                    with m.Elif(walked == qnum):  # the next one would be number N + 1
                        fault(spec.FAULT_BAD_CHAIN, nxt)
                    with m.Else():
                        m.d.sync += idx.eq(nxt)
                        issue("DESC_WAIT", length=16)
                # step 3.3: request framing
                with m.Elif((r_bytes < spec.BLK_HEADER_BYTES) | (w_bytes == 0)):
                    fault(spec.FAULT_BAD_REQUEST, head)
                with m.Else():
                    m.next = "HDR_PIECE"

            # ---- step 3.4: header --------------------------------------------------------------
            with state("HDR_PIECE"):  # p_vaddr / p_left: cached descriptor k, never empty
                address("piece")
                need = Signal(5)
                m.d.comb += need.eq(spec.BLK_HEADER_BYTES - got)
                short = (p_left[5:] == 0) & (p_left[:5] < need)
                piece = Signal(5)
                m.d.comb += piece.eq(Mux(short, p_left[:5], need))
                m.d.sync += [take.eq(piece), hdr_last.eq(~short),
                             reload.eq(p_left == piece),
                             p_vaddr.eq(p_vaddr + piece), p_left.eq(p_left - piece)]
                issue("HDR_WAIT", length=piece, dpos=got)

            def before_hdr():
                with m.If(reload):
                    m.d.comb += pf.eq(1)

            def after_hdr_piece():
                m.d.sync += got.eq(got + take)
                with m.If(reload):
                    m.d.sync += k.eq(k + 1)
                with m.If(hdr_last):
                    m.next = "DECODE"
                with m.Else():
                    m.next = "HDR_PIECE"
            wait("HDR_WAIT", after_hdr_piece, before=before_hdr)

            # ---- step 3.5: decode and data -----------------------------------------------------
            # Data sizes of an IN and an OUT request, and the last first sector that leaves
            # room for them (negative: none), settled from pass 1's sums well before DECODE:
            # a request is in range when sector * 512 + size <= disk size.
            d_in = Signal(33)
            d_out = Signal(33)
            room_in = Signal(34)
            room_out = Signal(34)
            m.d.sync += [
                d_in.eq(w_bytes - 1), d_out.eq(r_bytes - spec.BLK_HEADER_BYTES),
                room_in.eq(Const(cap_sectors, 34) - (d_in >> 9)),
                room_out.eq(Const(cap_sectors, 34) - (d_out >> 9)),
            ]
            # DECODE registers what the header says; DISPATCH acts on it (issue 5, Fmax).
            t_in = Signal()
            t_out = Signal()
            t_flush = Signal()
            t_get_id = Signal()
            ok_in = Signal()
            ok_out = Signal()
            sector_base = Signal(32)
            with state("DECODE"):
                req_type = sbuf[:32]
                sector = sbuf[64:128]

                def in_range(d, room):
                    return ((d[:9] == 0) & ~room[-1] & (sector[32:] == 0)
                            & (sector[:32] <= room[:-1]))

                m.d.sync += [
                    t_in.eq(req_type == spec.VIRTIO_BLK_T_IN),
                    t_out.eq(req_type == spec.VIRTIO_BLK_T_OUT),
                    t_flush.eq(req_type == spec.VIRTIO_BLK_T_FLUSH),
                    t_get_id.eq(req_type == spec.VIRTIO_BLK_T_GET_ID),
                    ok_in.eq(in_range(d_in, room_in)), ok_out.eq(in_range(d_out, room_out)),
                    sector_base.eq(sector[:32] << 9),
                ]
                m.next = "DISPATCH"

            with state("DISPATCH"):

                def data_phase(nbytes, *, disk, write):
                    m.d.sync += [remaining.eq(nbytes), to_disk.eq(disk), dir_write.eq(write)]
                    if write:  # the data goes to the device-writable descriptors
                        m.d.sync += [k.eq(n_readable), p_vaddr.eq(w0_addr),
                                     p_left.eq(w0_len)]
                    # else: it continues after the header, where p_vaddr / p_left / k are
                    with m.If(nbytes == 0):
                        m.next = "STATUS"
                    with m.Else():
                        m.next = "DATA_PIECE"

                m.d.sync += [
                    blk_status.eq(spec.VIRTIO_BLK_S_OK), written.eq(0), dpos.eq(sector_base),
                ]
                with m.If(t_in):
                    with m.If(ok_in):
                        m.d.sync += written.eq(d_in)
                        data_phase(d_in, disk=1, write=1)
                    with m.Else():
                        m.d.sync += blk_status.eq(spec.VIRTIO_BLK_S_IOERR)
                        m.next = "STATUS"
                with m.Elif(t_out):
                    with m.If(ok_out):
                        data_phase(d_out, disk=1, write=0)
                    with m.Else():
                        m.d.sync += blk_status.eq(spec.VIRTIO_BLK_S_IOERR)
                        m.next = "STATUS"
                with m.Elif(t_flush):
                    m.next = "STATUS"
                with m.Elif(t_get_id):
                    n_id = Signal(33)
                    m.d.comb += n_id.eq(Mux(d_in < spec.VIRTIO_BLK_ID_BYTES, d_in,
                                            spec.VIRTIO_BLK_ID_BYTES))
                    m.d.sync += [
                        written.eq(n_id), dpos.eq(0),
                        sbuf[:8 * spec.VIRTIO_BLK_ID_BYTES].eq(
                            int.from_bytes(spec.DEVICE_SERIAL, "little")),
                    ]
                    data_phase(n_id, disk=0, write=1)
                with m.Else():
                    m.d.sync += blk_status.eq(spec.VIRTIO_BLK_S_UNSUPP)
                    m.next = "STATUS"

            with state("DATA_PIECE"):  # p_vaddr / p_left: cached descriptor k; remaining > 0
                address("piece")
                piece = Signal(32)
                m.d.comb += piece.eq(Mux(p_left < remaining, p_left, remaining))
                m.d.sync += take.eq(piece)
                issue("DATA_WAIT", write=dir_write, length=piece,
                      disk=to_disk, dpos=dpos)

            def after_data_piece():
                # a piece ends its descriptor or the data: the next one starts at descriptor k + 1
                m.d.sync += [remaining.eq(remaining - take), dpos.eq(dpos + take), k.eq(k + 1)]
                with m.If(remaining == take):
                    m.next = "STATUS"
                with m.Else():
                    m.next = "DATA_PIECE"
            def before_data():
                m.d.comb += pf.eq(1)
            wait("DATA_WAIT", after_data_piece, before=before_data)

            # ---- steps 3.6 to 3.9: status, used element, used index -------------------------
            with state("STATUS"):
                address("status")
                m.d.sync += sbuf[:8].eq(blk_status)
                issue("STATUS_WAIT", write=1, length=1)
            wait("STATUS_WAIT", goto("DRAIN_DATA"))
            with state("DRAIN_DATA"):  # no used element for data that did not arrive
                issue("DRAIN_DATA_WAIT", drain=1)
            wait("DRAIN_DATA_WAIT", goto("USED"), before=lambda: ring_next("used"))

            with state("USED"):
                address("ring")
                m.d.sync += sbuf[:64].eq(Cat(head, Const(0, 16), written + 1))
                issue("USED_WAIT", write=1, length=8)
            wait("USED_WAIT", goto("USED_IDX"), before=lambda: ring_next("uidx"))

            with state("USED_IDX"):
                address("ring")
                m.d.sync += sbuf[:16].eq(used_idx + 1)
                issue("USED_IDX_WAIT", write=1, length=2)
            wait("USED_IDX_WAIT", goto("DRAIN_USED"))
            with state("DRAIN_USED"):  # the interrupt follows the used index
                issue("DRAIN_USED_WAIT", drain=1)

            next_avail = Signal(16)
            m.d.comb += next_avail.eq(last_avail + 1)
            # registered: last_avail and avail_idx are settled long before DRAIN_USED_WAIT
            round_done = Signal()
            m.d.sync += round_done.eq(next_avail == avail_idx)

            def before_used():
                with m.If(round_done):
                    ring_next("poll")
                with m.Else():
                    ring_next("head", next_avail)

            def after_used():
                m.d.sync += [used_idx.eq(used_idx + 1), last_avail.eq(next_avail)]
                m.d.comb += [self.completed.eq(1),
                             self.used_irq.eq(~avail_flags[0])]  # VIRTQ_AVAIL_F_NO_INTERRUPT
                with m.If(round_done):
                    m.next = "QCHECK"
                with m.Else():
                    m.next = "HEAD"
            wait("DRAIN_USED_WAIT", after_used, before=before_used)

            with state("FAULT"):
                m.d.comb += self.fault.eq(1)
                m.next = "HALT"
            with state("HALT"):
                pass

        with m.If(self.notify):
            m.d.sync += kick.eq(1)
        with m.If(self.dev_reset):
            m.d.sync += [abort.eq(1), kick.eq(0), last_avail.eq(0), used_idx.eq(0)]
        return m
