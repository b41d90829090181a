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

from models import spec, virtio

from .interfaces import CAP_BYTES, DmaPortSignature, EngineStatus, QueueSignature, local_bits
from .layouts import BlkHeader, Descriptor
from .params import check_queue_num_max, one_hot

__all__ = ["RingEngine"]


def work_reg(*args, src_loc_at=0, **kwargs) -> Signal:
    """A register that every request writes before it reads it, so it needs no reset: no
    domain reset, which leaves each flip-flop's synchronous reset free for synthesis to clear it
    with (a multiplexer input that is 0 then costs no LUT). The device reset (``dev_reset``)
    never reset these registers either."""
    return Signal(*args, reset_less=True, src_loc_at=src_loc_at + 1, **kwargs)


def gated_copy(m, value, select, name):
    """A register of ``value`` that its flip-flops' reset clears unless ``select`` (area and
    Fmax: an operand multiplexer becomes an OR of such copies, one LUT a bit)."""
    copy = Signal(len(value), reset_less=True, name=name)
    with m.If(select):
        m.d.sync += copy.eq(value)
    with m.Else():
        m.d.sync += copy.eq(0)
    return copy


def queue_size_check(m, n, qbits):
    """``(qnum, qmask, num_ok)``, registered (one cycle after QueueNum ``n``): the low
    ``qbits`` bits of ``n``, the mask ``n - 1`` and "``n`` is a power of two that fits". N is
    fine when exactly one of bits [0, log2 qmax] is set and none above; its mask N - 1 is then
    every bit below that one (Fmax: no wide compare or decrement)."""
    qnum = work_reg(qbits)
    qmask = work_reg(16)
    num_ok = work_reg()
    low = n[:qbits]
    single = Signal()  # one bit of low is set
    m.d.comb += single.eq(sum(low[i] for i in range(qbits)) == 1)
    m.d.sync += [num_ok.eq(single & (n[qbits:] == 0)), qnum.eq(low),
                 qmask.eq(Cat(*[low[i + 1:].any() for i in range(min(16, qbits))]))]
    return qnum, qmask, num_ok


XS_DESC, XS_AVAIL, XS_USED, XS_PF, XS_ZERO = range(5)  # X operands
Y_NONE, Y_CAP, Y_REG, Y_STAT = range(4)  # Y operands


class AddressAdder:
    """The ring engine's address register ``va = X + Y`` (area and Fmax, issue 5: every 64-bit
    address comes from one adder, and each operand from flip-flops through one LUT, since the
    adder feeds the grant table's address).

    ``operand(xsel, ysel)`` in a cycle chooses the operands of the next cycle; in that cycle
    ``va_next`` is X + Y (combinational: the DMA engine's early lookup address) and ``load()``
    makes ``va`` take it at the cycle's end. X (``x_bases``: QueueDesc, QueueDriver, QueueDevice,
    the prefetched descriptor's address; or ``XS_ZERO``) has a copy per base that its
    flip-flops' reset clears unless it is the next cycle's X, so that X is a 4-input OR (a 4:1
    multiplexer with a zero took three LUTs, and two levels); after a state that does not call
    ``operand``, X is 0 (no cycle that uses X follows such a state). A copy lags its queue
    register by a cycle, which no driver sees: a notify reaches QCHECK at least two cycles after
    the last register write, and QCHECK checks the value that the next cycle's X copies. Y is
    the descriptor index just read (``cap_head``, times 16; ``Y_CAP``), ``y_reg`` (``Y_REG``:
    the first value of ``y_cases`` whose flag is set in the ``operand`` cycle, else
    ``y_default``), the prefetched descriptor's last byte (``Y_STAT``) or 0, each cleared like
    X's copies unless chosen, so that Y is one LUT a bit too.
    """

    def __init__(self, m, x_bases, cap_head, pf_last, y_cases, y_default):
        self._m = m
        va = work_reg(64)
        x_next = {sel: Signal(name=f"x_next{sel}") for sel in (XS_DESC, XS_AVAIL, XS_USED,
                                                                XS_PF)}
        x_copies = [gated_copy(m, x_bases[sel], x_next[sel], f"x_base{sel}") for sel in x_next]
        y_next = {sel: Signal(name=f"y_next{sel}") for sel in (Y_CAP, Y_REG, Y_STAT)}
        ys_cap = Signal()
        m.d.sync += ys_cap.eq(y_next[Y_CAP])
        y_last = gated_copy(m, pf_last, y_next[Y_STAT], "y_last")
        va_load = Signal()
        y_reg = work_reg(32)
        with m.If(~y_next[Y_REG]):
            m.d.sync += y_reg.eq(0)
        for flag, value in y_cases:
            with m.Elif(flag):
                m.d.sync += y_reg.eq(value)
        with m.Else():
            m.d.sync += y_reg.eq(y_default)
        x = Signal(64)
        y = Signal(32)
        m.d.comb += [
            x.eq(x_copies[0] | x_copies[1] | x_copies[2] | x_copies[3]),
            y.eq(Mux(ys_cap, cap_head << 4, 0) | y_reg | y_last),
        ]
        va_next = Signal(64)
        m.d.comb += va_next.eq(x + y)
        with m.If(va_load):
            m.d.sync += va.eq(va_next)
        self.va, self.va_next, self.x_next, self.y_next = va, va_next, x_next, y_next
        self._va_load = va_load

    def operand(self, xsel, ysel):
        """In the next cycle, va loads X + Y with these operands. Every state says which
        operands the next cycle needs (whatever state that is), from its own identity and
        registers: the selects clear the operand copies that are not chosen (Y_CAP's is a
        flip-flop), and they depend on ``done`` in one place only."""
        self._m.d.comb += [flag.eq(sel == xsel) for sel, flag in self.x_next.items()]
        self._m.d.comb += [flag.eq(sel == ysel) for sel, flag in self.y_next.items()]

    def load(self):
        """This state loads va with its operands."""
        self._m.d.comb += self._va_load.eq(1)


def capture_register(m, dma):
    """The capture register: what the last read to the scratch brought (a descriptor, the
    request header, avail.idx or a ring entry), a byte each ``dma.cap_we`` lane writes at the
    end of its cycle. No reset (``work_reg``): every request writes it before it reads it."""
    cap = work_reg(8 * CAP_BYTES)
    for k in range(CAP_BYTES):
        with m.If(dma.cap_we[k]):
            m.d.sync += cap.word_select(k, 8).eq(dma.cap_wdata.word_select(k, 8))
    return cap


class CachedDesc(data.Struct):
    """What pass 2 needs of a non-empty descriptor (virtio 1.x section 2.7.5); ``last`` is
    ``len - 1``, the offset of its last byte (the status byte, for the chain's last one)."""

    addr: 64
    len: 32
    last: 32


def descriptor_cache(m, qmax):
    """The descriptor cache (block RAM, ``qmax`` entries of :class:`CachedDesc`) and its
    prefetch register pf. Pass 1 writes a chain's non-empty descriptors through ``cache_wr``
    (empty ones move no byte); pass 2 reads entry ``rd_idx`` in a cycle with ``pf_load``, one
    command ahead: ``cache_rd.data`` holds it from the next cycle until the next read (pf's
    address is the block RAM's output itself, which only the X operand's copy takes into a
    register), and ``pf_len``, ``pf_idx`` (the entry) and ``pf_next`` (plus one) from the cycle
    after. Returns ``(cache_wr, cache_rd, pf_len, pf_idx, pf_next, rd_idx, pf_load)``."""
    qbits = ceil_log2(qmax + 1)
    m.submodules.cache = cache = memory.Memory(shape=CachedDesc, depth=qmax, init=[])
    cache_wr = cache.write_port()
    cache_rd = cache.read_port()
    pf_len = work_reg(32)
    pf_idx = work_reg(qbits)  # the entry pf holds
    pf_next = work_reg(qbits)  # ... plus one
    rd_idx = Signal(qbits)  # the entry read this cycle (set by the state)
    pf_load = Signal()  # ... into pf (the block RAM answers in the next cycle)
    pf_load_d = Signal()
    rd_idx_d = work_reg(qbits)
    m.d.comb += [cache_rd.addr.eq(rd_idx), cache_rd.en.eq(pf_load)]
    m.d.sync += [pf_load_d.eq(pf_load), rd_idx_d.eq(rd_idx)]
    with m.If(pf_load_d):
        m.d.sync += [pf_len.eq(cache_rd.data.len),
                     pf_idx.eq(rd_idx_d),
                     pf_next.eq(rd_idx_d + 1)]
    return cache_wr, cache_rd, pf_len, pf_idx, pf_next, rd_idx, pf_load


class RingEngine(wiring.Component):
    """Split-virtqueue engine for one virtio-blk request queue.

    Parameters
    ----------
    queue_num_max : int
        Largest queue size; also the depth of the descriptor cache.
    disk_bytes : int
        RAM disk size in bytes.

    Members
    -------
    queue : In(:func:`~rtl.interfaces.QueueSignature`)
        The virtio-mmio registers of queue 0; ``idle`` back: no request in progress.
    dma : Out(:func:`~rtl.interfaces.DmaPortSignature`)
        Commands to the :class:`~rtl.dma.DmaEngine`.
    status : Out(:data:`~rtl.interfaces.EngineStatus`)
        A fault (pulse) and its cause, a completed request (pulse), for the privileged
        registers.
    abort : Out
        A device reset is in progress: the DMA engine ends its command at a burst boundary.
    """

    def __init__(self, *, queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES):
        self._queue_num_max = check_queue_num_max(queue_num_max)
        self._disk_bytes = disk_bytes
        self._len_bits = local_bits(disk_bytes)
        super().__init__({
            "queue": In(QueueSignature()),
            "dma": Out(DmaPortSignature(self._len_bits)),
            "status": Out(EngineStatus),
            "abort": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        q, dma = self.queue, self.dma
        c = dma.cmd.payload
        qmax = self._queue_num_max
        qbits = ceil_log2(qmax + 1)  # an index up to qmax, or a count of descriptors
        lbits = self._len_bits
        cap_sectors = self._disk_bytes // spec.SECTOR_SIZE
        cs = ceil_log2(cap_sectors + 1)

        cap = capture_register(m, dma)
        desc_f = Descriptor(cap)
        hdr = BlkHeader(cap)
        # The head read puts the ring entry where a descriptor's ``next`` is, so that a
        # descriptor address is always formed from the same bits; the poll puts avail.idx
        # there too (avail.flags where a descriptor's flags are), so that the index a fault
        # reports is one of two registers' bits, not three.
        HEAD_POS = virtio.DESC.offsets["next"]
        POLL_POS = HEAD_POS - virtio.AVAIL_HEADER.offsets["idx"]
        assert virtio.DESC.offsets["flags"] == POLL_POS
        cap_head = desc_f.next
        cap_idx = cap_head  # avail.idx after a poll
        cap_flags = desc_f.flags.as_value()  # avail.flags after a poll

        cache_wr, cache_rd, pf_len, pf_idx, pf_next, rd_idx, pf_load = descriptor_cache(m, qmax)

        kick = Signal()
        abort = Signal()
        last_avail = Signal(16)  # consumed entries (incremented once the head is read)
        used_idx = Signal(16)
        avail_idx = work_reg(16)
        no_irq = work_reg()  # VIRTQ_AVAIL_F_NO_INTERRUPT of the last poll
        head = work_reg(16)
        idx = work_reg(16)  # the descriptor being walked; also the index a chain fault reports
        # pass 1
        walked = work_reg(qbits + 1)  # descriptors of the chain read so far
        count = work_reg(qbits)  # ... of which non-empty (cached)
        last_idx = work_reg(qbits)  # the last cached one (count - 1)
        # ... of which device-readable: the count when the first non-empty device-writable one
        # comes (a chain whose readable descriptors do not all come first faults)
        n_readable = work_reg(qbits)
        seen_write = work_reg()
        have_w = work_reg()  # a non-empty device-writable descriptor was seen (Wr >= 1)
        acc = work_reg(33)  # sum of the lengths so far (bit 32: over 2^32 - 1)
        r_bytes = work_reg(32)  # R: the sum when the first device-writable descriptor came
        r_lt16 = work_reg()  # R < 16
        wr_bytes = work_reg(33)  # Wr = acc - R, after the walk
        # pass 2
        got = work_reg(5)  # header bytes read (or being read)
        take = work_reg(lbits)  # bytes of the piece in flight
        hlen = work_reg(5)  # the next header piece
        piece_ends = work_reg()  # ... it ends its descriptor
        hdr_last = work_reg()  # ... it ends the header
        last_piece = work_reg()  # ... it is the last data piece
        # what the header left of its last descriptor: its low bits, and whether more than
        # they say (it is then more than any data piece)
        split_rem = work_reg(lbits + 1)
        split_big = work_reg()
        cont_next = Signal()  # the next data piece continues in that descriptor
        remaining = work_reg(lbits)  # data bytes not yet handed to the DMA engine
        plen_last = work_reg()  # the next data piece is the last one (its length: c_len)
        dpos = work_reg(lbits)  # where the next data piece starts on the disk (or in the serial)
        to_disk = work_reg()
        dir_write = work_reg()
        blk_status = work_reg(8)
        used_len = work_reg(32)  # the used element's len: bytes written + 1 (the status byte)
        f_cause = Signal(4)
        m.d.comb += [
            self.status.fault_cause.eq(f_cause),
            self.abort.eq(abort),
        ]

        n = q.num
        # The queue size as checked by QCHECK and its mask, computed every cycle (a notify
        # reaches QCHECK at least two cycles after the last register write).
        qnum, qmask, num_ok = queue_size_check(m, n, qbits)

        # ---- The address register and its adder (area and Fmax: AddressAdder) ---------------
        ring_used = Signal()  # the phase of the used element (else: an avail entry) ...
        ring_uidx = Signal()  # ... or of the used index
        y_is_idx = Signal()  # ... or of a fault reporting idx
        y_is_num = Signal()  # ... or QueueNum
        # y_reg, set a cycle ahead by the phase: the offset of the next ring access (avail entry
        # i is at 4 + 2 * i, used element i at 4 + 8 * i, the used index at 2), or the index or
        # QueueNum a fault reports.
        adder = AddressAdder(
            m, {XS_DESC: q.desc, XS_AVAIL: q.avail, XS_USED: q.used, XS_PF: cache_rd.data.addr},
            cap_head, cache_rd.data.last,
            [(ring_used, Cat(Const(0b100, 3), used_idx & qmask)), (ring_uidx, 2), (y_is_idx, idx),
             (y_is_num, n)], ((last_avail & qmask) + 2) << 1)
        operand, load = adder.operand, adder.load
        # The address of the next command, looked up by the DMA engine in the translation unit:
        # every state before one that issues loads va, except DESC_CHECK at a chain's end,
        # which keeps the header's address that DESC_WAIT loaded (pre_hold: use cmd_vaddr).
        keep_va = Signal()
        m.d.comb += [c.vaddr.eq(adder.va), dma.pre.vaddr.eq(adder.va_next),
                     dma.pre.hold.eq(keep_va)]

        def go(name):
            m.next = name

        def fault(cause):
            """An engine-detected fault reporting the index in ``idx``. XIDX moves it into y_reg,
            XFAULT into va, the DMA engine, idle, copies va into its address register in the
            next cycle (EFAULT), and its fault address output shows it in the fault pulse's
            cycle (FAULT)."""
            m.d.sync += f_cause.eq(cause)
            go("XIDX")

        @contextmanager
        def state(name):
            with m.State(name):
                yield
                with m.If(abort & ~dma.busy):
                    m.d.sync += abort.eq(0)
                    operand(XS_AVAIL, Y_NONE)  # IDLE's
                    go("IDLE")

        # A data piece that continues where the header ended: the DMA engine keeps its address
        # while idle and looks it up, from the cycle the header ends to the piece's issue.
        m.d.comb += [c.cont.eq(cont_next), dma.pre.cont.eq(cont_next)]

        # The command a state hands over comes from registers, set on the way into the state
        # (``go``): only ``cmd_valid`` depends on the state's decisions (the DMA engine's
        # command registers follow the fields in every idle cycle).
        c_write, c_drain, c_disk = Signal(), Signal(), Signal()
        # Length and local position: bits 0-4 hold every value but a data piece's, whose bits
        # 5 and up are set after the FSM (a data piece's, or 0 from the flip-flops' reset).
        c_len = work_reg(lbits)
        c_dpos = work_reg(lbits)
        c_set = Signal()  # a state sets the fields ...
        c_data = Signal()  # ... to a data piece's
        m.d.comb += [c.write.eq(c_write), c.drain.eq(c_drain),
                     c.len.eq(c_len), c.disk.eq(c_disk), c.dpos.eq(c_dpos)]

        def command(*, write=0, length=0, disk=0, dpos=0, drain=0, data_piece=False):
            """From the next cycle on, the command fields are these."""
            m.d.comb += [c_set.eq(1), c_data.eq(data_piece)]
            m.d.sync += [c_write.eq(write), c_drain.eq(drain), c_len[:5].eq(length),
                         c_disk.eq(disk), c_dpos[:5].eq(dpos)]

        # The commands with fixed fields. A state that comes before one that issues sets the
        # fields in every cycle, so that a transition on the DMA engine's ``done`` loads none.
        POLL = {"length": 4, "dpos": POLL_POS}  # avail.flags and avail.idx
        HEAD_READ = {"length": 2, "dpos": HEAD_POS}  # the ring entry
        DESC_READ = {"length": 16}
        STATUS_WRITE = {"write": 1, "length": 1}
        DRAIN = {"drain": 1}
        USED_WRITE = {"write": 1, "length": 8}
        UIDX_WRITE = {"write": 1, "length": 2}

        def issue(wait_state):
            """Hand the state's command to the DMA engine (idle in every state that does)."""
            m.d.comb += dma.cmd.valid.eq(~abort)
            go(wait_state)

        def wait(name, then, before=None):
            """Wait for the command's end; a DMA fault becomes the engine's fault."""
            with state(name):
                if before is not None:
                    before()
                with m.If(dma.done):
                    with m.If(dma.failed):
                        # the DMA engine holds the fault address for the FAULT cycle
                        m.d.sync += f_cause.eq(dma.fault)
                        go("FAULT")
                    with m.Else():
                        then()

        def goto(name):
            return lambda: go(name)

        def fetch(index):
            """Read cache entry ``index`` into pf (there two cycles later)."""
            m.d.comb += [rd_idx.eq(index), pf_load.eq(1)]

        def at_least(index, bound):
            """``index >= bound`` for a 16-bit index and a bound of qbits bits: the compare on
            the low bits only, the high bits by an OR."""
            return (index[qbits:] != 0) | (index[:qbits] >= bound)

        # Data sizes of an IN and an OUT request, in sectors, and whether they are whole
        # sectors: D = Wr - 1 (IN) is a multiple of 512 exactly when Wr mod 512 = 1, and then
        # D / 512 = Wr >> 9; likewise D = R - 16 (OUT). A request is in range when
        # sector + D / 512 <= the disk's sectors.
        def in_range(total, rest, sector):
            dsec = total[9:]
            fits = sector[:cs] + dsec[:cs]  # (an expression: a comb signal here would be gated
            # by the state that calls this)
            return ((total[:9] == rest) & (dsec[cs:] == 0) & (sector[cs:] == 0)
                    & (fits <= cap_sectors))

        m.d.sync += [self.status.completed.eq(0), q.used_irq.eq(0)]  # pulses, set below
        with m.FSM() as fsm:
            with state("IDLE"):  # va: the poll's address (avail.flags and avail.idx)
                m.d.comb += q.idle.eq(~abort)
                operand(XS_AVAIL, Y_NONE)
                load()
                command(**POLL)
                with m.If(kick & ~abort):
                    m.d.sync += kick.eq(0)
                    go("QCHECK")

            # ---- step 1 and 2: queue check and poll --------------------------------------------
            with state("QCHECK"):
                queue_ok = (num_ok & (q.desc[:4] == 0) & ~q.avail[0]
                            & (q.used[:2] == 0))
                with m.If(queue_ok):
                    issue("POLL_WAIT")
                with m.Else():
                    # QFAULT loads the first offending value: QueueNum, Desc, Driver, Device
                    m.d.sync += f_cause.eq(spec.FAULT_BAD_RING)
                    with m.If(~num_ok):
                        go("QNUM")
                    with m.Else():
                        go("QFAULT")
                with m.If(q.desc[:4] != 0):
                    operand(XS_DESC, Y_NONE)
                with m.Elif(q.avail[0]):
                    operand(XS_AVAIL, Y_NONE)
                with m.Else():
                    operand(XS_USED, Y_NONE)
            with state("QNUM"):  # y_reg = QueueNum
                m.d.comb += y_is_num.eq(1)
                operand(XS_ZERO, Y_REG)
                go("QFAULT")
            with state("QFAULT"):
                load()
                go("EFAULT")
            wait("POLL_WAIT", goto("POLL_CHECK"),
                 before=lambda: operand(XS_AVAIL, Y_REG))  # POLL_CHECK's: the head

            # POLL_CHECK registers what the avail index says, POLL_ACT acts on it.
            poll_bad = work_reg()
            poll_none = work_reg()
            # Values only some states use are computed outside the FSM: a comb assignment inside
            # a state would AND every bit with the state.
            pending = Signal(16)
            m.d.comb += pending.eq(cap_idx - last_avail)
            with state("POLL_CHECK"):
                load()
                command(**HEAD_READ)
                m.d.sync += [avail_idx.eq(cap_idx), no_irq.eq(cap_flags[0]), idx.eq(cap_idx),
                             poll_bad.eq((pending[qbits:] != 0) | (pending[:qbits] > qnum)),
                             poll_none.eq(pending == 0)]
                go("POLL_ACT")

            with state("POLL_ACT"):
                operand(XS_AVAIL, Y_NONE)  # IDLE's
                with m.If(poll_bad):
                    fault(spec.FAULT_BAD_RING)  # idx: avail.idx
                with m.Elif(poll_none):
                    go("IDLE")
                with m.Else():
                    issue("HEAD_WAIT")

            # ---- step 3.1 and 3.2: head, then walk and check the chain ------------------------
            with state("HEAD"):
                issue("HEAD_WAIT")
            wait("HEAD_WAIT", goto("DESC_FIRST"),
                 before=lambda: operand(XS_DESC, Y_CAP))  # DESC_FIRST's

            # DESC_FIRST forms the first descriptor's address and registers the head's check,
            # DESC_START acts on it.
            head_bad = work_reg()
            with state("DESC_FIRST"):
                load()
                command(**DESC_READ)
                m.d.sync += [
                    head.eq(cap_head), idx.eq(cap_head), head_bad.eq(at_least(cap_head, qnum)),
                    last_avail.eq(last_avail + 1),
                    walked.eq(0), count.eq(0), seen_write.eq(0),
                    acc.eq(0), r_lt16.eq(1), cont_next.eq(0), have_w.eq(0),
                ]
                go("DESC_START")

            with state("DESC_START"):
                operand(XS_PF, Y_NONE)  # DESC_WAIT's: the header's address
                with m.If(head_bad):
                    fault(spec.FAULT_BAD_CHAIN)  # idx: the head
                with m.Else():
                    issue("DESC_WAIT")

            # The first cached descriptor is kept in pf for the header (it was cached at least
            # one descriptor read ago: a request needs two non-empty descriptors), and va holds
            # its address, should this descriptor end the chain.
            def before_desc():
                fetch(0)
                load()
                # (a descriptor read is done with its last beat, unless it fails: then the engine
                # halts and the operands do not matter)
                with m.If(dma.r_last_beat):
                    operand(XS_DESC, Y_CAP)  # DESC_CHECK's: the next descriptor
                with m.Else():
                    operand(XS_PF, Y_NONE)
            wait("DESC_WAIT", goto("DESC_CHECK"), before=before_desc)

            # A descriptor takes two cycles: DESC_CHECK computes its checks and sums into
            # registers (and caches it: after a failed check nothing reads the cache) and forms
            # the next descriptor's address, DESC_NEXT acts on them.
            bad = work_reg()
            has_next = work_reg()
            next_bad = work_reg()  # the next index is outside the queue ...
            chain_full = work_reg()  # ... or the next descriptor would be number N + 1
            hdr_len = work_reg(5)  # the first header piece
            hdr_ends = work_reg()  # ... ends its descriptor
            # The cache's address and data do not depend on the state (only its enable does):
            # no gate in front of each data bit.
            last = Signal(32)  # len - 1, the offset of the descriptor's last byte
            lo_last = Signal(33)  # addr[31:0] + last: bit 32 is the carry into addr[63:32]
            m.d.comb += [
                cache_wr.addr.eq(count),
                cache_wr.data.addr.eq(desc_f.addr), cache_wr.data.len.eq(desc_f.len),
                cache_wr.data.last.eq(last),
            ]
            new_acc = Signal(33)
            m.d.comb += [last.eq(desc_f.len - 1), lo_last.eq(desc_f.addr[:32] + last),
                         new_acc.eq(acc + desc_f.len)]
            with state("DESC_CHECK"):
                d_write = desc_f.flags.write
                nonempty = desc_f.len != 0
                # addr + len > 2^64: a non-empty descriptor whose last byte is past 2^64 - 1,
                # with the carry chain that forms the cached ``last`` (no zero test of a sum)
                wraps = (desc_f.addr[32:] == 0xFFFF_FFFF) & nonempty & lo_last[32]
                m.d.comb += cache_wr.en.eq(nonempty)  # (address and data: above, always)
                with m.If(desc_f.flags.next):
                    load()  # the next descriptor
                with m.Else():
                    m.d.comb += keep_va.eq(1)  # the header's first piece
                short = (pf_len[5:] == 0) & (pf_len[:5] < 16)
                m.d.sync += [
                    bad.eq(desc_f.flags.indirect
                           | (~d_write & seen_write) | wraps | new_acc[32]),
                    has_next.eq(desc_f.flags.next), next_bad.eq(at_least(desc_f.next, qnum)),
                    walked.eq(walked + 1), chain_full.eq(walked + 1 == qnum), acc.eq(new_acc),
                    seen_write.eq(seen_write | d_write),
                    hdr_len.eq(Mux(short, pf_len[:5], 16)),
                    hdr_ends.eq((pf_len[5:] == 0) & (pf_len[:5] <= 16)),
                ]
                # DESC_NEXT's command: the next descriptor, or the header's first piece
                command(length=Mux(desc_f.flags.next, 16, Mux(short, pf_len[:5], 16)))
                with m.If(d_write & ~seen_write):
                    m.d.sync += [r_bytes.eq(acc), r_lt16.eq(acc[4:] == 0)]  # R < 16
                with m.If(nonempty):
                    m.d.sync += [count.eq(count + 1), last_idx.eq(count)]
                    with m.If(d_write & ~have_w):
                        m.d.sync += [n_readable.eq(count), have_w.eq(1)]
                go("DESC_NEXT")

            with state("DESC_NEXT"):
                operand(XS_PF, Y_NONE)  # DESC_WAIT's or HDR_WAIT's
                with m.If(bad):
                    fault(spec.FAULT_BAD_CHAIN)  # idx: this descriptor
                with m.Elif(has_next):  # NEXT
                    m.d.sync += idx.eq(desc_f.next)
                    # the next one is outside the queue, or would be number N + 1
                    with m.If(next_bad | chain_full):
                        fault(spec.FAULT_BAD_CHAIN)  # idx: the next one
                    with m.Else():
                        issue("DESC_WAIT")
                # step 3.3: request framing (R >= 16 and Wr >= 1, a non-empty writable one)
                with m.Elif(r_lt16 | ~have_w):
                    m.d.sync += idx.eq(head)
                    fault(spec.FAULT_BAD_REQUEST)  # idx: the head
                with m.Else():
                    # step 3.4: the header's first piece, from cached descriptor 0
                    m.d.sync += [got.eq(hdr_len), take.eq(hdr_len), hdr_last.eq(hdr_len == 16),
                                 piece_ends.eq(hdr_ends)]
                    with m.If(hdr_ends):
                        fetch(pf_next)  # (pf holds cached descriptor 0)
                    issue("HDR_WAIT")
            with state("XIDX"):  # y_reg = idx, the fault's index
                m.d.comb += y_is_idx.eq(1)
                operand(XS_ZERO, Y_REG)
                go("XFAULT")
            with state("XFAULT"):  # va = idx; f_cause set
                load()
                go("EFAULT")

            # ---- step 3.4: header --------------------------------------------------------------
            # Wr = acc - R, settled long before DECODE.
            m.d.sync += wr_bytes.eq(acc - r_bytes)

            def after_hdr_piece():
                with m.If(hdr_last):
                    go("DECODE")
                with m.Else():
                    go("HDR_PIECE")

            # The next piece's address and length, if there is one (pf is the next descriptor
            # then, from the third cycle of the wait on; the wait lasts at least that long).
            hlen_next = Signal(5)
            hlen_ends_next = Signal()
            need = Signal(5)
            m.d.comb += need.eq(spec.BLK_HEADER_BYTES - got)
            short_h = (pf_len[5:] == 0) & (pf_len[:5] < need)
            m.d.comb += [hlen_next.eq(Mux(short_h, pf_len[:5], need)),
                         hlen_ends_next.eq((pf_len[5:] == 0) & (pf_len[:5] <= need))]
            hlen_ends = work_reg()  # the next header piece ends its descriptor

            def before_hdr():
                load()
                operand(XS_PF, Y_NONE)
                command(length=hlen_next, dpos=got)  # HDR_PIECE's
                # what the last piece leaves of its descriptor (pf, unless the piece ends it)
                with m.If(hdr_last):
                    m.d.sync += [cont_next.eq(~piece_ends), split_rem.eq(pf_len[:lbits + 1] - take),
                                 split_big.eq(pf_len[lbits + 1:] != 0)]
                m.d.sync += [hlen.eq(hlen_next), hlen_ends.eq(hlen_ends_next)]
            wait("HDR_WAIT", after_hdr_piece, before=before_hdr)

            with state("HDR_PIECE"):  # pf: the next cached descriptor, never empty
                operand(XS_PF, Y_NONE)  # HDR_WAIT's
                m.d.sync += [take.eq(hlen), got.eq(got + hlen),
                             hdr_last.eq(got + hlen == spec.BLK_HEADER_BYTES),
                             piece_ends.eq(hlen_ends)]
                with m.If(hlen_ends):
                    fetch(pf_next)
                issue("HDR_WAIT")

            # ---- step 3.5: decode and data -----------------------------------------------------
            # DECODE registers what the header says; DISPATCH acts on it.
            t_in = work_reg()
            t_out = work_reg()
            t_flush = work_reg()
            t_get_id = work_reg()
            ok_in = work_reg()
            ok_out = work_reg()
            sector_base = work_reg(lbits)
            id_len = work_reg(5)  # GET_ID: min(20, Wr - 1)
            no_in_data = work_reg()  # Wr = 1: only the status byte is writable
            no_out_data = work_reg()  # R = 16: only the header is readable
            with state("DECODE"):
                req_type = hdr.type
                sector = hdr.sector
                m.d.sync += [
                    t_in.eq(req_type == spec.VIRTIO_BLK_T_IN),
                    t_out.eq(req_type == spec.VIRTIO_BLK_T_OUT),
                    t_flush.eq(req_type == spec.VIRTIO_BLK_T_FLUSH),
                    t_get_id.eq(req_type == spec.VIRTIO_BLK_T_GET_ID),
                    ok_in.eq(in_range(wr_bytes, 1, sector)),
                    ok_out.eq(in_range(r_bytes, spec.BLK_HEADER_BYTES, sector)),
                    sector_base.eq(sector[:cs] << 9),
                    no_in_data.eq(wr_bytes == 1),
                    no_out_data.eq(r_bytes == spec.BLK_HEADER_BYTES),
                    id_len.eq(Mux((wr_bytes[5:] != 0)
                                  | (wr_bytes[:5] > spec.VIRTIO_BLK_ID_BYTES),
                                  spec.VIRTIO_BLK_ID_BYTES, wr_bytes[:5] - 1)),
                ]
                go("DISPATCH")

            # DISPATCH decides what moves and which cached descriptor that needs first: the
            # first device-writable one (IN, GET_ID), the one after the header (OUT), or the
            # last one (the status byte). Where pf does not hold it, FETCH waits for it.
            need_idx = work_reg(qbits)
            after = work_reg()  # then: 0 = the status, 1 = the data
            with state("DISPATCH"):
                m.d.sync += [blk_status.eq(spec.VIRTIO_BLK_S_OK), used_len.eq(1),
                             dpos.eq(sector_base), to_disk.eq(1), dir_write.eq(1)]
                move_in = t_in & ok_in & ~no_in_data  # (flags registered in DECODE: no wide
                move_out = t_out & ok_out & ~no_out_data  # compare before the operand select)
                move_id = t_get_id & ~no_in_data
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
                    m.d.sync += [need_idx.eq(last_idx), after.eq(0)]
                with m.If(move_in | move_id | move_out):
                    operand(XS_PF, Y_NONE)  # ROUTE's: a data piece's address
                with m.Else():
                    operand(XS_PF, Y_STAT)  # ... or the status byte's
                go("ROUTE")

            # The next data piece: what is left of its descriptor, at most the remaining data.
            plen_next = Signal(lbits)
            p_short = Signal()
            # what is left of the descriptor: its low bits, and whether more than they say
            avail_len = Mux(cont_next, split_rem, pf_len[:lbits + 1])
            big = Mux(cont_next, split_big, pf_len[lbits + 1:] != 0)
            m.d.comb += [
                p_short.eq(~big & ~avail_len[lbits] & (avail_len[:lbits] < remaining)),
                plen_next.eq(Mux(p_short, avail_len[:lbits], remaining)),
            ]

            def next_piece_len():
                m.d.sync += plen_last.eq(~p_short)

            def data_command():
                command(write=dir_write, length=plen_next[:5], disk=to_disk, dpos=dpos[:5],
                        data_piece=True)

            def to_data_piece():
                go("DATA_PIECE")

            # ROUTE: pf holds the descriptor needed (or the data continues in the header's
            # last descriptor): va loads the piece's or the status byte's address, and on;
            # else fetch it first.
            with state("ROUTE"):
                next_piece_len()
                load()
                operand(XS_PF, Mux(after, Y_NONE, Y_STAT))  # ROUTE_FETCHED's
                with m.If(after):
                    data_command()
                with m.Else():
                    command(**STATUS_WRITE)
                with m.If(after & cont_next):
                    to_data_piece()  # OUT, continuing where the header ended
                with m.Elif(pf_idx == need_idx):
                    with m.If(after):
                        to_data_piece()
                    with m.Else():
                        go("STATUS")
                with m.Else():
                    fetch(need_idx)
                    go("FETCH")
            with state("FETCH"):
                operand(XS_PF, Mux(after, Y_NONE, Y_STAT))  # ROUTE_FETCHED's
                go("ROUTE_FETCHED")
            with state("ROUTE_FETCHED"):  # pf = need_idx now
                next_piece_len()
                load()
                with m.If(after):
                    data_command()
                with m.Else():
                    command(**STATUS_WRITE)
                with m.If(after):
                    to_data_piece()
                with m.Else():
                    go("STATUS")

            # DATA_PIECE issues the piece whose length the state before put in the command (the
            # piece's length; the status byte's command never reaches DATA_PIECE)
            with state("DATA_PIECE"):  # c_len: this piece (> 0); pf: its descriptor
                m.d.sync += [last_piece.eq(plen_last), cont_next.eq(0),
                             remaining.eq(remaining - c_len), dpos.eq(dpos + c_len)]
                # the next piece's descriptor, or the status byte's (the last one), whose
                # address DATA_WAIT loads
                operand(XS_PF, Mux(plen_last, Y_STAT, Y_NONE))  # DATA_WAIT's
                with m.If(plen_last):
                    fetch(last_idx)
                with m.Else():
                    fetch(pf_next)
                issue("DATA_WAIT")

            def after_data_piece():
                with m.If(last_piece):
                    go("STATUS")
                with m.Else():
                    to_data_piece()

            def before_data():
                m.d.comb += dma.serial.eq(~to_disk)
                load()
                operand(XS_PF, Mux(last_piece, Y_STAT, Y_NONE))
                next_piece_len()
                with m.If(last_piece):
                    command(**STATUS_WRITE)
                with m.Else():
                    data_command()
            wait("DATA_WAIT", after_data_piece, before=before_data)

            # ---- steps 3.6 to 3.9: status, used element, used index -------------------------
            # The payload of a write from the scratch (held until the command is done): see
            # below the FSM.
            with state("STATUS"):
                issue("STATUS_WAIT")
            def before_status_wait():
                command(**DRAIN)
            wait("STATUS_WAIT", goto("DRAIN_DATA"), before=before_status_wait)
            with state("DRAIN_DATA"):  # no used element for data that did not arrive
                m.d.comb += ring_used.eq(1)
                operand(XS_USED, Y_REG)  # DRAIN_DATA_WAIT's: the used element
                issue("DRAIN_DATA_WAIT")

            def before_drain_data():
                m.d.comb += ring_used.eq(1)
                load()
                operand(XS_USED, Y_REG)
                command(**USED_WRITE)
            wait("DRAIN_DATA_WAIT", goto("USED"), before=before_drain_data)

            with state("USED"):
                m.d.comb += ring_uidx.eq(1)
                operand(XS_USED, Y_REG)  # USED_WAIT's: the used index
                issue("USED_WAIT")

            def before_used_wait():
                m.d.comb += ring_uidx.eq(1)
                load()
                operand(XS_USED, Y_REG)
                command(**UIDX_WRITE)
            wait("USED_WAIT", goto("USED_IDX"), before=before_used_wait)

            next_used = Signal(16)
            m.d.comb += next_used.eq(used_idx + 1)
            with state("USED_IDX"):
                issue("USED_IDX_WAIT")
            def before_uidx_wait():
                command(**DRAIN)
            wait("USED_IDX_WAIT", goto("DRAIN_USED"), before=before_uidx_wait)

            # registered: last_avail and avail_idx are settled long before DRAIN_USED_WAIT
            round_done = work_reg()
            m.d.sync += round_done.eq(last_avail == avail_idx)
            with state("DRAIN_USED"):  # the interrupt follows the used index
                # DRAIN_USED_WAIT loads the next round's poll address, or the next entry's head.
                # used_idx moves on now: should the drain fail, the engine halts until a reset.
                m.d.sync += used_idx.eq(next_used)
                # DRAIN_USED_WAIT's: the next round's poll, or the next entry's head
                operand(XS_AVAIL, Mux(round_done, Y_NONE, Y_REG))
                issue("DRAIN_USED_WAIT")

            def after_used():
                # registered: the pulses come a cycle after the drain's end
                m.d.sync += [self.status.completed.eq(1),
                             q.used_irq.eq(~no_irq)]  # VIRTQ_AVAIL_F_NO_INTERRUPT
                with m.If(round_done):
                    go("QCHECK")
                with m.Else():
                    go("HEAD")
            def before_drain_used():
                load()
                operand(XS_AVAIL, Mux(round_done, Y_NONE, Y_REG))
                with m.If(round_done):
                    command(**POLL)
                with m.Else():
                    command(**HEAD_READ)
            wait("DRAIN_USED_WAIT", after_used, before=before_drain_used)

            with state("EFAULT"):  # va holds the engine fault's address; the DMA engine copies it
                go("FAULT")
            with state("FAULT"):
                m.d.comb += [q.fault.eq(1), self.status.fault.eq(1)]
                go("HALT")
            with state("HALT"):
                pass

        one_hot(fsm)
        # While the engine aborts, X is IDLE's and Y is 0 (the state's own choice does not
        # matter: no command goes out), so that the selects do not wait for the DMA engine's
        # ``busy``.
        with m.If(abort):
            m.d.comb += [flag.eq(sel == XS_AVAIL) for sel, flag in adder.x_next.items()]
            m.d.comb += [flag.eq(0) for flag in adder.y_next.values()]
        with m.If(c_data):
            m.d.sync += [c_len[5:].eq(plen_next[5:]), c_dpos[5:].eq(dpos[5:])]
        with m.Elif(c_set):
            m.d.sync += [c_len[5:].eq(0), c_dpos[5:].eq(0)]
        # The payload: the used element (id, len), whose low 16 bits are the status byte or the
        # used index in the states that write those (their commands strobe only those bytes).
        # Not gated by the states: only the low 16 bits need a select.
        low16 = Mux(fsm.ongoing("USED") | fsm.ongoing("USED_WAIT"), head,
                    Mux(fsm.ongoing("USED_IDX") | fsm.ongoing("USED_IDX_WAIT"), next_used,
                        blk_status))
        m.d.comb += dma.payload.eq(Cat(low16, Const(0, 16), used_len))
        with m.If(q.notify):
            m.d.sync += kick.eq(1)
        with m.If(q.dev_reset):
            m.d.sync += [abort.eq(1), kick.eq(0), last_avail.eq(0), used_idx.eq(0),
                         cont_next.eq(0)]
        return m
