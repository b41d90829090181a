"""Ring engine: split virtqueue processing and the virtio-blk request function.

Implements ``docs/architecture.md`` ("Ring engine") step by step: queue check, poll of the avail
ring, chain walk (pass 1, into a descriptor cache), then header, data, status, used element and
used index (pass 2), one part of the FSM per step (``poll``, ``chain_walker``, ``header_reader``,
``request_decoder``, ``data_mover``, ``zeroer``, ``completion_writer``, and ``halt`` after a
fault). Issue 17's features (docs/architecture.md "Features a build offers") sit in those parts:
the walker reads an indirect table whole, as one DMA read, into the table buffer (TABLE,
TABLE_ISSUE, TBL_WAIT), then takes its entries out of the buffer into the capture register
(TBL_LOAD) and through the same DESC_CHECK/DESC_NEXT as the ring's, and marks a chain over the
limits; the decoder routes a DISCARD/WRITE_ZEROES segment into the
capture register like OUT data, and ``zeroer`` checks it and hands the DMA engine a zero command;
``poll`` writes avail_event before going idle and ``completion_writer`` reads used_event once a
round (EVENT_IDX). A feature the build leaves out elaborates to nothing. Every
memory access is a command to the :class:`~rtl.dma.DmaEngine`, so every access is translated. A
fault stops the engine until the driver resets the device.

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

import functools
import operator
from contextlib import contextmanager

from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from models import spec, virtio
from models.features import Features

from .interfaces import (
    CAP_BYTES,
    DmaPortSignature,
    EngineStatus,
    QueueSignature,
    disk_word_bits,
    local_bits,
)
from .layouts import BlkHeader, Descriptor, DwzSegment
from .params import check_data_width, check_queue_num_max, one_hot
from .ramdisk import RamDisk

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
# The early address's registered bits: every page-number bit a lookup's set or grant index
# takes (IOVA bits 12 to 21, and 30 up to 30 + 9 for the largest IOTLB's large set).
EARLY_BITS = 40
Y_NONE, Y_CAP, Y_REG, Y_STAT = range(4)  # Y operands


class AddressAdder:
    """The ring engine's address register ``va = X + Y`` (area and Fmax, issue 5: every 64-bit
    address comes from one adder, and each operand from flip-flops through one LUT, since the
    adder feeds the grant table's address).

    ``operand(xsel, ysel)`` in a cycle chooses the operands of the next cycle; in that cycle
    ``va_next`` is X + Y (combinational) and ``load()`` makes ``va`` take it at the cycle's end;
    ``va_early`` is the same address from flip-flops (the DMA engine's early lookup address,
    below). X (``x_bases``: QueueDesc, QueueDriver, QueueDevice,
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

    def __init__(self, m, x_bases, cap_head, pf_last, y_cases, y_default, pf_end,
                 early_sums, early_va):
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
        # Fmax (issue 16): the early address, va_next's low EARLY_BITS a cycle ahead, in
        # flip-flops: the DMA engine's early lookup reads them, not the top of this adder, into
        # the IOTLB's and the grant table's block RAM. No adder precedes them either: each
        # X + y_reg value a lookup needs (``early_sums``: X -> [(flag or None for
        # ``y_default``, value)], as y_reg would choose) is summed into a register of its own
        # every cycle, from registers that change long before it is needed (the queue's
        # addresses, the ring offsets), and the early address picks it. X alone (Y_NONE) is
        # its base. The prefetched descriptor's address comes out of the descriptor cache's
        # block RAM late in the cycle, so it is never summed: XS_PF goes with Y_NONE or Y_STAT
        # only (``operand`` checks it), and the cache holds each descriptor's last byte's
        # address (``pf_end``) beside its address. Y_CAP (a descriptor's index, read from the
        # bus in the cycle it is chosen) has no early address: the ring engine looks such an
        # address up from ``va`` a cycle later (``early_va``, DESC_ISSUE).
        # Area (issue 16): every value is narrower than ``split`` bits, so a sum's bits above
        # ``split`` are its base's, plus the carry out of the bits below. Those bits are
        # summed once per base (``early_inc``: base + 1), not once per value; each sum keeps
        # its low bits and its carry, and the carry chooses between base + 1 and the base
        # (``early_high``, lagging by a cycle as the sums do).
        split = max(len(Value.cast(value)) for cases in early_sums.values()
                    for _, value in cases)
        terms = []
        for sel, cases in early_sums.items():
            base = x_bases[sel][:EARLY_BITS]
            if not cases:
                terms.append(Mux(x_next[sel], base, 0))
                continue
            high_q = work_reg(EARLY_BITS - split, name=f"early_high{sel}")
            inc = work_reg(EARLY_BITS - split, name=f"early_inc{sel}")
            m.d.sync += [high_q.eq(base[split:]), inc.eq(base[split:] + 1)]
            with_y, carry, summing = base[:split], Const(0, 1), Const(0, 1)
            for k, (flag, value) in enumerate(reversed(cases)):
                summed = work_reg(split + 1, name=f"early_lo{sel}_{len(cases) - 1 - k}")
                m.d.sync += summed.eq(base[:split] + value)
                if flag is None:
                    with_y, carry, summing = summed[:split], summed[split], Const(1, 1)
                else:
                    with_y = Mux(flag, summed[:split], with_y)
                    carry = Mux(flag, summed[split], carry)
                    summing = summing | flag
            low = Mux(y_next[Y_REG], with_y, base[:split])
            high = Mux(y_next[Y_REG] & summing, Mux(carry, inc, high_q), base[split:])
            terms.append(Mux(x_next[sel], Cat(low, high), 0))
        # After a state that sets ``early_va`` (a state's own choice, from its identity) the
        # next command's address is va's next value: the early address takes it. The
        # prefetched descriptor's address (or last byte) comes last, through one choice (Fmax:
        # the cache's block RAM answers late in the cycle).
        early = work_reg(EARLY_BITS, name="va_early")
        from_va = Signal()  # the early address is va's
        m.d.sync += from_va.eq(early_va)
        va_d = Mux(va_load, va_next, va)
        pf_pick = Signal()
        m.d.comb += pf_pick.eq(x_next[XS_PF] & ~early_va)
        m.d.sync += early.eq(Mux(pf_pick, Mux(y_next[Y_STAT], pf_end, x_bases[XS_PF][:EARLY_BITS]),
                                 Mux(early_va, va_d[:EARLY_BITS],
                                     functools.reduce(operator.or_, terms))))
        va_early = Cat(early, Mux(from_va, va[EARLY_BITS:], va_next[EARLY_BITS:]))
        self.va, self.va_next, self.x_next, self.y_next = va, va_next, x_next, y_next
        self.va_early = va_early
        self._va_load = va_load

    def operand(self, xsel, ysel):
        """In the next cycle, va loads X + Y with these operands. Every state says which
        operands the next cycle needs (whatever state that is), from its own identity and
        registers: the selects clear the operand copies that are not chosen (Y_CAP's is a
        flip-flop), and they depend on ``done`` in one place only. ``ysel`` is a Y operand or
        ``(condition, y_if_true, y_if_false)``; the prefetched descriptor's address (XS_PF)
        goes with Y_NONE or Y_STAT, and Y_STAT with it only (the early address's rule)."""
        choices = set(ysel[1:]) if isinstance(ysel, tuple) else {ysel}
        if not (choices <= {Y_NONE, Y_STAT} if xsel == XS_PF else Y_STAT not in choices):
            raise ValueError(f"operand X {xsel} with Y {sorted(choices)}: XS_PF goes with "
                             f"Y_NONE or Y_STAT, and Y_STAT with XS_PF only")
        if isinstance(ysel, tuple):
            ysel = Mux(*ysel)
        self._m.d.comb += [flag.eq(sel == xsel) for sel, flag in self.x_next.items()]
        self._m.d.comb += [flag.eq(sel == ysel) for sel, flag in self.y_next.items()]

    def load(self):
        """This state loads va with its operands."""
        self._m.d.comb += self._va_load.eq(1)


def capture_register(m, dma, tbl_we, tbl_wdata):
    """The capture register: what the last read to the scratch brought (a descriptor, the
    request header, avail.idx or a ring entry), a byte each ``dma.cap_we`` lane writes at the
    end of its cycle, or an indirect table entry out of the table buffer (``tbl_we``, never
    with a DMA read). No reset (``work_reg``): every request writes it before it reads it."""
    cap = work_reg(8 * CAP_BYTES)
    for k in range(CAP_BYTES):
        with m.If(dma.cap_we[k]):
            m.d.sync += cap.word_select(k, 8).eq(dma.cap_wdata.word_select(k, 8))
        with m.Elif(tbl_we[k]):
            m.d.sync += cap.word_select(k, 8).eq(tbl_wdata.word_select(k, 8))
    return cap


TBL_DPOS = 16  # the table read's first byte in the table buffer (entry i at 16 (i + 1))


def table_buffer_bytes(qmax: int, data_width: int) -> int:
    """The indirect table buffer's size: the longest table (``16 * qmax`` bytes) after
    ``TBL_DPOS``, in whole pairs of words (:class:`~rtl.ramdisk.RamDisk`)."""
    pair = 2 * data_width // 8
    return -(-(TBL_DPOS + spec.DESC_BYTES * qmax) // pair) * pair


def table_buffer(m, dma, qmax, data_width):
    """The indirect table buffer (issue 17): a :class:`~rtl.ramdisk.RamDisk` without an image,
    which a table read (a DMA read with ``tbl``, at ``TBL_DPOS``) fills through the DMA
    engine's ``tbl_*`` writes, so that a table is one burst read instead of one read per
    entry. Entry ``i`` is the 16 bytes at ``TBL_DPOS + 16 i``: ``16 / W`` whole words
    (W = data_width / 8 bytes), one read of words ``k`` and ``k + 1`` for W >= 8, two for W = 4
    (``halves``). Returns ``(entry, half, tbl_wdata, halves)``: a state sets ``entry`` and
    ``half`` in a cycle, and two cycles later ``tbl_wdata`` holds that half of the entry at
    its place in the capture register (both halves' places for W = 4)."""
    W = data_width // 8
    lw = exact_log2(W)
    tbytes = table_buffer_bytes(qmax, data_width)
    m.submodules.tbl = tbl = RamDisk(tbytes, data_width, image=False)
    tb = tbl.word_bits
    port = tbl.port
    m.d.comb += [port.wr_word.eq(dma.tbl_word[:tb]), port.wr_data.eq(dma.tbl_data),
                 port.wr_en_lo.eq(dma.tbl_en_lo), port.wr_en_hi.eq(dma.tbl_en_hi)]
    entry = Signal(ceil_log2(qmax + 1))  # (indexes >= qmax: a read no one takes)
    half = Signal()
    m.d.comb += port.rd_word.eq(((entry + TBL_DPOS // spec.DESC_BYTES) << (4 - lw))
                                | (half << 1 if W == 4 else 0))
    halves = 2 if W == 4 else 1
    data_bits = 8 * CAP_BYTES // halves
    pair = Cat(port.rd_lo, port.rd_hi)[:data_bits]
    tbl_wdata = Cat(*[pair] * halves)
    return entry, half, tbl_wdata, halves


class CachedDesc(data.Struct):
    """What pass 2 needs of a non-empty descriptor (virtio 1.x section 2.7.5); ``last`` is
    ``len - 1``, the offset of its last byte (the status byte, for the chain's last one)."""

    addr: 64
    len: 32
    last: 32
    end: EARLY_BITS  # (addr + last), the last byte's address, low bits (the early address)


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


# The head read puts the ring entry where a descriptor's ``next`` is, so that a descriptor
# address is always formed from the same bits; the poll puts avail.idx there too (avail.flags
# where a descriptor's flags are), so that the index a fault reports is one of two registers'
# bits, not three.
HEAD_POS = virtio.DESC.offsets["next"]
POLL_POS = HEAD_POS - virtio.AVAIL_HEADER.offsets["idx"]
assert virtio.DESC.offsets["flags"] == POLL_POS

# The commands with fixed fields. A state that comes before one that issues sets the fields in
# every cycle, so that a transition on the DMA engine's ``done`` loads none.
POLL = {"length": 4, "dpos": POLL_POS}  # avail.flags and avail.idx
HEAD_READ = {"length": 2, "dpos": HEAD_POS}  # the ring entry
DESC_READ = {"length": 16}
STATUS_WRITE = {"write": 1, "length": 1}
DRAIN = {"drain": 1}
USED_WRITE = {"write": 1, "length": 8}
UIDX_WRITE = {"write": 1, "length": 2}
AEVT_WRITE = {"write": 1, "length": 2}  # avail_event (EVENT_IDX)
UEVT_READ = {"length": 2, "dpos": HEAD_POS}  # used_event, where the ring entry goes


class _Shared:
    """What the parts of the ring engine's FSM share: the registers that more than one part
    reads or writes (attributes named as their signals, set by :meth:`RingEngine.elaborate`)
    and the FSM's vocabulary (``state``, ``go``, ``issue``, ``wait``, ``command``, ``fetch``,
    ``fault``). Every part adds its states to the one FSM of ``m``."""

    def __init__(self, m):
        self.m = m

    def go(self, name):
        self.m.next = name

    def goto(self, name):
        return lambda: self.go(name)

    def fault(self, cause):
        """An engine-detected fault reporting the index in ``idx``. XIDX moves it into y_reg,
        XFAULT into va, the DMA engine, idle, copies va into its address register in the
        next cycle (EFAULT), and its fault address output shows it in the fault pulse's
        cycle (FAULT)."""
        self.m.d.sync += self.f_cause.eq(cause)
        self.go("XIDX")

    @contextmanager
    def state(self, name):
        """A state of the FSM; in every state a device reset, once the DMA engine is idle,
        returns to IDLE."""
        m = self.m
        with m.State(name):
            yield
            with m.If(self.abort_done):  # (abort clears then: abort_next)
                self.operand(XS_AVAIL, Y_NONE)  # IDLE's
                self.go("IDLE")

    def command(self, *, write=0, length=0, disk=0, dpos=0, drain=0, data_piece=False, tbl=0):
        """From the next cycle on, the command fields are these."""
        self.m.d.comb += [self.c_set.eq(1), self.c_data.eq(data_piece)]
        self.m.d.sync += [self.c_write.eq(write), self.c_drain.eq(drain), self.c_zero.eq(0),
                          self.c_len[:5].eq(length), self.c_disk.eq(disk),
                          self.c_dpos[:5].eq(dpos), self.c_tbl.eq(tbl)]

    def issue(self, wait_state):
        """Hand the state's command to the DMA engine (idle in every state that does)."""
        self.m.d.comb += self.dma.cmd.valid.eq(~self.abort)
        self.go(wait_state)

    def wait(self, name, then, before=None):
        """Wait for the command's end; a DMA fault becomes the engine's fault."""
        m, dma = self.m, self.dma
        with self.state(name):
            if before is not None:
                before()
            with m.If(dma.done):
                with m.If(dma.failed):
                    # the DMA engine holds the fault address for the FAULT cycle
                    m.d.sync += self.f_cause.eq(dma.fault)
                    self.go("FAULT")
                with m.Else():
                    then()

    def fetch(self, index):
        """Read cache entry ``index`` into pf (there two cycles later)."""
        self.m.d.comb += [self.rd_idx.eq(index), self.pf_load.eq(1)]

    def at_least(self, index, bound):
        """``index >= bound`` for a 16-bit index and a bound of qbits bits: the compare on
        the low bits only, the high bits by an OR."""
        return (index[self.qbits:] != 0) | (index[:self.qbits] >= bound)

    def in_range(self, total, rest, sector):
        """Whether a request's data, D = ``total`` - ``rest`` bytes (Wr - 1 for an IN, R - 16
        for an OUT), is whole sectors from ``sector`` on within the disk: D is a multiple of
        512 exactly when total mod 512 = rest, and then D / 512 = total >> 9; it is in range
        when sector + D / 512 <= the disk's sectors."""
        cs, dsec = self.cs, total[9:]
        fits = sector[:cs] + dsec[:cs]  # (an expression: a comb signal here would be gated
        # by the state that calls this)
        return ((total[:9] == rest) & (dsec[cs:] == 0) & (sector[cs:] == 0)
                & (fits <= self.cap_sectors))


def poll(m, e):
    """Steps 1 and 2 (IDLE, QCHECK, QNUM, QFAULT, POLL_WAIT, POLL_CHECK, POLL_ACT): wait in IDLE
    for a notify (``kick``), check the queue registers (a bad one: QNUM, QFAULT, then EFAULT),
    read avail.flags and avail.idx into cap, register what the index says (``avail_idx``,
    ``no_irq``, ``idx``) and act on it: nothing pending, IDLE; more than the queue holds, a
    fault; else the head's read, issued. Latency: QCHECK issues the poll in the cycle after
    IDLE; POLL_CHECK and POLL_ACT take 2 cycles after the poll's end."""
    cap_idx = e.cap_head  # avail.idx after a poll
    cap_flags = e.desc_f.flags.as_value()  # avail.flags after a poll
    with e.state("IDLE"):  # va: the poll's address (avail.flags and avail.idx)
        m.d.comb += e.q.idle.eq(~e.abort)
        e.operand(XS_AVAIL, Y_NONE)
        e.load()
        e.command(**POLL)
        with m.If(e.kick & ~e.abort):
            m.d.sync += e.kick.eq(0)
            e.go("QCHECK")
    with e.state("QCHECK"):
        queue_ok = (e.num_ok & (e.q.desc[:4] == 0) & ~e.q.avail[0]
                    & (e.q.used[:2] == 0))
        with m.If(queue_ok):
            e.issue("POLL_WAIT")
        with m.Else():
            # QFAULT loads the first offending value: QueueNum, Desc, Driver, Device
            m.d.sync += e.f_cause.eq(spec.FAULT_BAD_RING)
            with m.If(~e.num_ok):
                e.go("QNUM")
            with m.Else():
                e.go("QFAULT")
        with m.If(e.q.desc[:4] != 0):
            e.operand(XS_DESC, Y_NONE)
        with m.Elif(e.q.avail[0]):
            e.operand(XS_AVAIL, Y_NONE)
        with m.Else():
            e.operand(XS_USED, Y_NONE)
    with e.state("QNUM"):  # y_reg = QueueNum
        m.d.comb += e.y_is_num.eq(1)
        e.operand(XS_ZERO, Y_REG)
        e.go("QFAULT")
    with e.state("QFAULT"):
        e.load()
        e.go("EFAULT")
    e.wait("POLL_WAIT", e.goto("POLL_CHECK"),
           before=lambda: e.operand(XS_AVAIL, Y_REG))  # POLL_CHECK's: the head

    poll_bad = work_reg()
    poll_none = work_reg()
    # Values only some states use are computed outside the FSM: a comb assignment inside
    # a state would AND every bit with the state.
    pending = Signal(16)
    m.d.comb += pending.eq(cap_idx - e.last_avail)
    aevt_need = work_reg()  # nothing pending, and avail_event is not last_avail yet
    with e.state("POLL_CHECK"):
        e.load()
        e.command(**HEAD_READ)
        m.d.sync += [e.avail_idx.eq(cap_idx), e.no_irq.eq(cap_flags[0]), e.idx.eq(cap_idx),
                     poll_bad.eq((pending[e.qbits:] != 0) | (pending[:e.qbits] > e.qnum)),
                     poll_none.eq(pending == 0),
                     aevt_need.eq(e.evt & (pending == 0) & (e.aevt_pub != e.last_avail))]
        e.go("POLL_ACT")

    with e.state("POLL_ACT"):
        with m.If(aevt_need):
            m.d.comb += e.y_is_aevt.eq(1)
            e.operand(XS_USED, Y_REG)  # AEVT's: avail_event
        with m.Else():
            e.operand(XS_AVAIL, Y_NONE)  # IDLE's
        with m.If(poll_bad):
            e.fault(spec.FAULT_BAD_RING)  # idx: avail.idx
        with m.Elif(poll_none):
            with m.If(aevt_need):
                e.command(**AEVT_WRITE)
                e.go("AEVT")
            with m.Else():
                e.go("IDLE")
        with m.Else():
            e.issue("HEAD_WAIT")

    # EVENT_IDX, step 2: publish avail_event = last_avail, drain, then a new round (the poll
    # after the write sees an entry added without a notify). 1 cycle per write or drain besides
    # the DMA engine's, and 2 more.
    with e.state("AEVT"):  # va: avail_event's address
        m.d.comb += e.y_is_aevt.eq(1)
        e.operand(XS_USED, Y_REG)
        e.load()
        e.go("AEVT_ISSUE")
    with e.state("AEVT_ISSUE"):
        e.issue("AEVT_WAIT")
    e.wait("AEVT_WAIT", e.goto("AEVT_DRAIN"), before=lambda: e.command(**DRAIN))
    with e.state("AEVT_DRAIN"):
        e.issue("AEVT_DRAIN_WAIT")
    e.wait("AEVT_DRAIN_WAIT", e.goto("AEVT_DONE"),
           before=lambda: e.operand(XS_AVAIL, Y_NONE))  # AEVT_DONE's: the poll
    with e.state("AEVT_DONE"):
        e.load()
        e.command(**POLL)
        m.d.sync += e.aevt_pub.eq(e.last_avail)
        e.go("QCHECK")


def chain_walker(m, e):
    """Steps 3.1 to 3.3 (HEAD, HEAD_WAIT, DESC_FIRST, DESC_START, DESC_WAIT, DESC_CHECK,
    DESC_NEXT): read the head (``head``, ``idx``; ``last_avail`` counts it), then walk the chain
    (pass 1): each descriptor is read into cap, checked, summed (``acc``, ``r_bytes``,
    ``n_readable``, ``last_idx``) and, if not empty, written to the descriptor cache. At the
    chain's end the request's framing is checked and the header's first piece issued (``got``,
    ``take``, ``hdr_last``, ``piece_ends``; to HDR_WAIT). A fault reports ``idx`` through XIDX
    and XFAULT (:meth:`_Shared.fault`), which are here too. Latency: 2 cycles from the head's
    end to the first descriptor's read, 2 cycles per descriptor after its read."""
    def keep_header():
        e.fetch(0)
        e.operand(XS_PF, Y_NONE)

    def tbl_read(half):
        m.d.comb += [e.tbl_entry.eq(0), e.tbl_half.eq(half)]

    def tbl_load(half):
        m.d.comb += e.tbl_we.eq(((1 << (CAP_BYTES // e.tbl_halves)) - 1)
                                << (half * CAP_BYTES // e.tbl_halves))

    walked = work_reg(e.qbits + 1)  # descriptors of the chain read so far (not indirect ones)
    count = work_reg(e.qbits)  # ... of which non-empty (cached)
    seen_write = work_reg()
    have_w = work_reg()  # a non-empty device-writable descriptor was seen (Wr >= 1)
    r_lt16 = work_reg()  # R < 16
    with e.state("HEAD"):
        e.issue("HEAD_WAIT")
    e.wait("HEAD_WAIT", e.goto("DESC_FIRST"),
           before=lambda: e.operand(XS_DESC, Y_CAP))  # DESC_FIRST's

    # DESC_FIRST forms the first descriptor's address and registers the head's check,
    # DESC_START acts on it.
    head_bad = work_reg()
    with e.state("DESC_FIRST"):
        e.load()
        m.d.comb += e.early_va.eq(1)
        e.command(**DESC_READ)
        m.d.sync += [
            e.head.eq(e.cap_head), e.idx.eq(e.cap_head),
            head_bad.eq(e.at_least(e.cap_head, e.qnum)),
            e.last_avail.eq(e.last_avail + 1),
            walked.eq(0), count.eq(0), seen_write.eq(0),
            e.acc.eq(0), r_lt16.eq(1), e.cont_next.eq(0), have_w.eq(0), e.over.eq(0),
        ]
        e.go("DESC_START")

    def issue_desc():
        """Issue the descriptor read whose address va took in the cycle before (from the
        index just read): now, or (``hold_index``) a cycle later from DESC_ISSUE, after this
        cycle's lookup of ``va`` itself (the early address after DESC_FIRST and DESC_CHECK,
        ``early_va``)."""
        if e.hold_index:
            e.go("DESC_ISSUE")
        else:
            e.issue("DESC_WAIT")

    with e.state("DESC_START"):
        e.operand(XS_PF, Y_NONE)  # DESC_WAIT's: the header's address
        with m.If(head_bad):
            e.fault(spec.FAULT_BAD_CHAIN)  # idx: the head
        with m.Else():
            issue_desc()
    if e.hold_index:
        with e.state("DESC_ISSUE"):
            e.operand(XS_PF, Y_NONE)  # DESC_WAIT's: the header's address
            e.issue("DESC_WAIT")

    # The first cached descriptor is kept in pf for the header (it was cached at least
    # one descriptor read ago: a request needs two non-empty descriptors), and va holds
    # its address, should this descriptor end the chain.
    def before_desc():
        e.fetch(0)
        e.load()
        m.d.comb += e.early_va.eq(1)
        # (a descriptor read is done with its last beat, unless it fails: then the engine
        # halts and the operands do not matter)
        with m.If(e.dma.r_last_beat):
            e.operand(XS_DESC, Y_CAP)  # DESC_CHECK's: the next descriptor
        with m.Else():
            e.operand(XS_PF, Y_NONE)
    e.wait("DESC_WAIT", e.goto("DESC_CHECK"), before=before_desc)

    # A descriptor takes two cycles: DESC_CHECK computes its checks and sums into
    # registers (and caches it: after a failed check nothing reads the cache) and forms
    # the next descriptor's address, DESC_NEXT acts on them.
    bad = work_reg()
    has_next = work_reg()
    go_table = work_reg()  # a good indirect descriptor: the walk goes on in its table
    next_bad = work_reg()  # the next index is outside the queue ...
    chain_full = work_reg()  # ... or the next descriptor would be number N + 1
    hdr_len = work_reg(5)  # the first header piece
    hdr_ends = work_reg()  # ... ends its descriptor
    # The cache's address and data do not depend on the state (only its enable does):
    # no gate in front of each data bit.
    last = Signal(32)  # len - 1, the offset of the descriptor's last byte
    lo_last = Signal(33)  # addr[31:0] + last: bit 32 is the carry into addr[63:32]
    # The last byte's address, addr + len - 1, as one carry chain (Fmax: it goes to the
    # cache's block RAM): addr + len + (2^EARLY_BITS - 1), its three operands added as carry
    # and sum first, ~(addr ^ len) + ((addr | len) << 1), modulo 2^EARLY_BITS.
    end = Signal(EARLY_BITS)
    a_lo = e.desc_f.addr[:EARLY_BITS]
    m.d.comb += end.eq(~(a_lo ^ e.desc_f.len) + ((a_lo | e.desc_f.len) << 1))
    m.d.comb += [
        e.cache_wr.addr.eq(count),
        e.cache_wr.data.addr.eq(e.desc_f.addr), e.cache_wr.data.len.eq(e.desc_f.len),
        e.cache_wr.data.last.eq(last),
        e.cache_wr.data.end.eq(end),
    ]
    new_acc = Signal(33)
    m.d.comb += [last.eq(e.desc_f.len - 1), lo_last.eq(e.desc_f.addr[:32] + last),
                 new_acc.eq(e.acc + e.desc_f.len)]
    feats = e.features
    d_len = e.desc_f.len
    # indirect (built, flagged) and the checks of its table: negotiated, not in a table, no
    # NEXT, a length that is a non-zero multiple of 16 of at most 16 N bytes
    is_ind = Signal()
    ind_bad = Signal()
    t_bits = e.qbits
    m.d.comb += is_ind.eq(e.desc_f.flags.indirect if feats.indirect else 0)
    if feats.indirect:
        m.d.comb += ind_bad.eq(~e.q.indirect | e.in_tbl | e.desc_f.flags.next
                               | (d_len[:4] != 0) | (d_len[4:] == 0)
                               | (d_len[4 + t_bits:] != 0) | (d_len[4:4 + t_bits] > e.qnum))
    # the limits (SEG_MAX: more than seg_max + 2 descriptors; SIZE_MAX: one longer than size_max)
    over_now = Signal()
    seg_limit = feats.seg_limit(e.qmax)
    m.d.comb += over_now.eq(
        ((walked > seg_limit + 1) if seg_limit else 0)
        | ((d_len > feats.size_max) if feats.size_max else 0))
    with e.state("DESC_CHECK"):
        d_write = e.desc_f.flags.write
        nonempty = d_len != 0
        # addr + len > 2^64: a non-empty descriptor whose last byte is past 2^64 - 1,
        # with the carry chain that forms the cached ``last`` (no zero test of a sum)
        wraps = (e.desc_f.addr[32:] == 0xFFFF_FFFF) & nonempty & lo_last[32]
        m.d.comb += e.cache_wr.en.eq(nonempty & ~is_ind)  # (address and data: above, always)
        m.d.comb += e.early_va.eq(1)
        with m.If(e.desc_f.flags.next | e.in_tbl):
            e.load()  # the next descriptor (in a table: the header's first piece)
        if feats.indirect:
            m.d.comb += e.tbl_entry.eq(e.desc_f.next)  # (half 0)
        short = (e.pf_len[5:] == 0) & (e.pf_len[:5] < 16)
        m.d.sync += [
            bad.eq(Mux(is_ind, ind_bad | wraps,
                       (e.desc_f.flags.indirect if not feats.indirect else 0)
                       | (~d_write & seen_write) | wraps | new_acc[32])),
            has_next.eq(e.desc_f.flags.next),
            next_bad.eq(e.at_least(e.desc_f.next, Mux(e.in_tbl, e.tbl_n, e.qnum))),
            chain_full.eq(walked + 1 == e.qnum),
            hdr_len.eq(Mux(short, e.pf_len[:5], 16)),
            hdr_ends.eq((e.pf_len[5:] == 0) & (e.pf_len[:5] <= 16)),
            go_table.eq(is_ind),
        ]
        with m.If(is_ind):
            # the table: T = len / 16 entries at addr (the checks above fault otherwise)
            m.d.sync += [e.in_tbl.eq(1), e.tbl_base.eq(e.desc_f.addr),
                         e.tbl_n.eq(d_len[4:4 + t_bits])]
        with m.Else():
            m.d.sync += [walked.eq(walked + 1), e.acc.eq(new_acc),
                         seen_write.eq(seen_write | d_write), e.over.eq(e.over | over_now)]
        # DESC_NEXT's command: the next descriptor, or the header's first piece
        e.command(length=Mux(e.desc_f.flags.next, 16, Mux(short, e.pf_len[:5], 16)))
        with m.If(d_write & ~seen_write & ~is_ind):
            m.d.sync += [e.r_bytes.eq(e.acc), r_lt16.eq(e.acc[4:] == 0)]  # R < 16
        with m.If(nonempty & ~is_ind):
            m.d.sync += [count.eq(count + 1), e.last_idx.eq(count)]
            with m.If(d_write & ~have_w):
                m.d.sync += [e.n_readable.eq(count), have_w.eq(1)]
        e.go("DESC_NEXT")

    with e.state("DESC_NEXT"):
        with m.If(go_table):
            e.operand(XS_DESC, Y_NONE)  # TABLE's: the table's first entry
        with m.Else():
            e.operand(XS_PF, Y_NONE)  # DESC_WAIT's or HDR_WAIT's
        with m.If(~has_next & ~go_table):
            m.d.sync += e.in_tbl.eq(0)  # the walk ends (a fault ends it too: a reset clears)
        with m.If(bad):
            e.fault(spec.FAULT_BAD_CHAIN)  # idx: this descriptor
        with m.Elif(go_table):
            m.d.sync += e.idx.eq(0)
            if feats.indirect:
                e.go("TABLE")
        with m.Elif(has_next):  # NEXT
            m.d.sync += e.idx.eq(e.desc_f.next)
            # the next one is outside the queue, or would be number N + 1
            with m.If(next_bad | chain_full):
                e.fault(spec.FAULT_BAD_CHAIN)  # idx: the next one
            if feats.indirect:
                with m.Elif(e.in_tbl):
                    keep_header()  # (TBL_LOAD's operands)
                    if e.tbl_halves == 2:
                        m.d.comb += [e.tbl_entry.eq(e.desc_f.next), e.tbl_half.eq(1)]
                    e.go("TBL_LOAD")
            with m.Else():
                issue_desc()
        # step 3.3: request framing (R >= 16 and Wr >= 1, a non-empty writable one)
        with m.Elif(r_lt16 | ~have_w):
            m.d.sync += e.idx.eq(e.head)
            e.fault(spec.FAULT_BAD_REQUEST)  # idx: the head
        with m.Else():
            # step 3.4: the header's first piece, from cached descriptor 0
            m.d.sync += [e.got.eq(hdr_len), e.take.eq(hdr_len), e.hdr_last.eq(hdr_len == 16),
                         e.piece_ends.eq(hdr_ends)]
            with m.If(hdr_ends):
                e.fetch(e.pf_next)  # (pf holds cached descriptor 0)
            e.issue("HDR_WAIT")
    # An indirect table: TABLE forms its address, TABLE_ISSUE issues its read, all of it, into
    # the table buffer (one command: bursts instead of a read per entry). Its entries then go
    # through DESC_CHECK and DESC_NEXT as the ring's do, each read out of the buffer into cap
    # (TBL_LOAD; W = 4: two halves, TBL_LOAD2): 5 cycles from the read's end to the first
    # entry's DESC_CHECK (6 for W = 4), 3 between entries (4). While the walk is in a table,
    # DESC_CHECK always loads va with the header's address (pf: cached descriptor 0), which
    # the states before it keep in the X operand; DESC_CHECK reads the next entry (and
    # DESC_NEXT its second half), ahead of its checks.
    if feats.indirect:
        with e.state("TABLE"):
            e.load()
            e.command(length=Cat(Const(0, 4), e.tbl_n[0]), disk=1, dpos=TBL_DPOS, tbl=1)
            m.d.comb += e.c_tcmd.eq(1)
            e.go("TABLE_ISSUE")
        with e.state("TABLE_ISSUE"):
            keep_header()
            e.issue("TBL_WAIT")

        def before_tbl():
            keep_header()
            e.load()
        e.wait("TBL_WAIT", e.goto("TBL_R0"), before=before_tbl)
        with e.state("TBL_R0"):  # the last beat's write reaches the buffer
            keep_header()
            e.load()
            e.go("TBL_R1")
        with e.state("TBL_R1"):
            keep_header()
            e.load()
            tbl_read(0)
            e.go("TBL_R2")
        with e.state("TBL_R2"):
            keep_header()
            e.load()
            if e.tbl_halves == 2:
                tbl_read(1)
            e.go("TBL_LOAD")
        with e.state("TBL_LOAD"):
            keep_header()
            e.load()
            tbl_load(0)
            e.go("TBL_LOAD2" if e.tbl_halves == 2 else "DESC_CHECK")
        if e.tbl_halves == 2:
            with e.state("TBL_LOAD2"):
                keep_header()
                e.load()
                tbl_load(1)
                e.go("DESC_CHECK")
    with e.state("XIDX"):  # y_reg = idx, the fault's index
        m.d.comb += e.y_is_idx.eq(1)
        e.operand(XS_ZERO, Y_REG)
        e.go("XFAULT")
    with e.state("XFAULT"):  # va = idx; f_cause set
        e.load()
        e.go("EFAULT")


def header_reader(m, e):
    """Step 3.4 (HDR_WAIT, HDR_PIECE): read the rest of the 16-byte request header into cap, a
    piece per cached descriptor it spans (pf holds the next one); the last piece leaves what
    remains of its descriptor for the data (``cont_next``, ``split_rem``, ``split_big``).
    Latency: 1 cycle (HDR_PIECE) between a piece's end and the next one's issue; DECODE
    follows the last piece's end."""
    hlen = work_reg(5)  # the next header piece
    # Wr = acc - R, settled long before DECODE.
    m.d.sync += e.wr_bytes.eq(e.acc - e.r_bytes)

    def after_hdr_piece():
        with m.If(e.hdr_last):
            e.go("DECODE")
        with m.Else():
            e.go("HDR_PIECE")

    # The next piece's address and length, if there is one (pf is the next descriptor
    # then, from the third cycle of the wait on; the wait lasts at least that long).
    hlen_next = Signal(5)
    hlen_ends_next = Signal()
    need = Signal(5)
    m.d.comb += need.eq(spec.BLK_HEADER_BYTES - e.got)
    short_h = (e.pf_len[5:] == 0) & (e.pf_len[:5] < need)
    m.d.comb += [hlen_next.eq(Mux(short_h, e.pf_len[:5], need)),
                 hlen_ends_next.eq((e.pf_len[5:] == 0) & (e.pf_len[:5] <= need))]
    hlen_ends = work_reg()  # the next header piece ends its descriptor

    def before_hdr():
        e.load()
        e.operand(XS_PF, Y_NONE)
        e.command(length=hlen_next, dpos=e.got)  # HDR_PIECE's
        # what the last piece leaves of its descriptor (pf, unless the piece ends it)
        with m.If(e.hdr_last):
            m.d.sync += [e.cont_next.eq(~e.piece_ends),
                         e.split_rem.eq(e.pf_len[:e.lbits + 1] - e.take),
                         e.split_big.eq(e.pf_len[e.lbits + 1:] != 0)]
        m.d.sync += [hlen.eq(hlen_next), hlen_ends.eq(hlen_ends_next)]
    e.wait("HDR_WAIT", after_hdr_piece, before=before_hdr)

    with e.state("HDR_PIECE"):  # pf: the next cached descriptor, never empty
        e.operand(XS_PF, Y_NONE)  # HDR_WAIT's
        m.d.sync += [e.take.eq(hlen), e.got.eq(e.got + hlen),
                     e.hdr_last.eq(e.got + hlen == spec.BLK_HEADER_BYTES),
                     e.piece_ends.eq(hlen_ends)]
        with m.If(hlen_ends):
            e.fetch(e.pf_next)
        e.issue("HDR_WAIT")


def request_decoder(m, e):
    """Step 3.5, the decision (DECODE, DISPATCH): DECODE registers what the header says (the
    request type, whether its sectors are in range and whole), DISPATCH acts on it: the status
    byte (``blk_status``) and the used element's ``used_len`` as they stand unless the data
    fails, what moves where (``remaining``, ``dpos``, ``to_disk``, ``dir_write``), and the
    cached descriptor it needs first (``need_idx``: the first device-writable one for IN and
    GET_ID, the one after the header for OUT, else the last one, the status byte's; ``after``:
    1 the data, 0 the status byte). Latency: 2 cycles, then ROUTE."""
    t_in = work_reg()
    t_out = work_reg()
    t_flush = work_reg()
    t_get_id = work_reg()
    ok_in = work_reg()
    ok_out = work_reg()
    sector_base = work_reg(e.lbits)
    id_len = work_reg(5)  # GET_ID: min(20, Wr - 1)
    no_in_data = work_reg()  # Wr = 1: only the status byte is writable
    no_out_data = work_reg()  # R = 16: only the header is readable
    t_dwz = work_reg()  # DISCARD or WRITE_ZEROES (offered)
    dwz_one = work_reg()  # ... with exactly one segment: R = 32
    feats = e.features
    with e.state("DECODE"):
        req_type = e.hdr.type
        sector = e.hdr.sector
        m.d.sync += [
            t_dwz.eq(((req_type == spec.VIRTIO_BLK_T_DISCARD) if feats.discard else 0)
                     | ((req_type == spec.VIRTIO_BLK_T_WRITE_ZEROES)
                        if feats.write_zeroes else 0)),
            e.t_discard.eq(req_type == spec.VIRTIO_BLK_T_DISCARD),
            dwz_one.eq(e.r_bytes == spec.BLK_HEADER_BYTES + spec.DWZ_SEGMENT_BYTES),
            t_in.eq(req_type == spec.VIRTIO_BLK_T_IN),
            t_out.eq(req_type == spec.VIRTIO_BLK_T_OUT),
            t_flush.eq(req_type == spec.VIRTIO_BLK_T_FLUSH),
            t_get_id.eq(req_type == spec.VIRTIO_BLK_T_GET_ID),
            ok_in.eq(e.in_range(e.wr_bytes, 1, sector)),
            ok_out.eq(e.in_range(e.r_bytes, spec.BLK_HEADER_BYTES, sector)),
            sector_base.eq(sector[:e.cs] << 9),
            no_in_data.eq(e.wr_bytes == 1),
            no_out_data.eq(e.r_bytes == spec.BLK_HEADER_BYTES),
            id_len.eq(Mux((e.wr_bytes[5:] != 0)
                          | (e.wr_bytes[:5] > spec.VIRTIO_BLK_ID_BYTES),
                          spec.VIRTIO_BLK_ID_BYTES, e.wr_bytes[:5] - 1)),
        ]
        e.go("DISPATCH")

    e.need_idx = work_reg(e.qbits)
    e.after = work_reg()  # then: 0 = the status, 1 = the data
    with e.state("DISPATCH"):
        m.d.sync += [e.blk_status.eq(spec.VIRTIO_BLK_S_OK), e.used_len.eq(1),
                     e.dpos.eq(sector_base), e.to_disk.eq(1), e.dir_write.eq(1)]
        ok = ~e.over  # a request over the limits: IOERR, nothing moved
        move_in = t_in & ok_in & ~no_in_data & ok  # (flags registered in DECODE: no wide
        move_out = t_out & ok_out & ~no_out_data & ok  # compare before the operand select)
        move_id = t_get_id & ~no_in_data & ok
        move_seg = t_dwz & dwz_one & ok  # the segment, into cap (then SEG_CHECK)
        m.d.sync += e.seg_phase.eq(move_seg)
        with m.If(t_in & ok_in & ok):
            m.d.sync += e.used_len.eq(e.wr_bytes)
        with m.If(t_get_id & ok):
            m.d.sync += e.used_len.eq(id_len + 1)
        with m.If(~t_in & ~t_out & ~t_flush & ~t_get_id & ~t_dwz):
            m.d.sync += e.blk_status.eq(spec.VIRTIO_BLK_S_UNSUPP)
        with m.If((t_in & ~ok_in) | (t_out & ~ok_out) | (t_dwz & ~dwz_one) | e.over):
            m.d.sync += e.blk_status.eq(spec.VIRTIO_BLK_S_IOERR)
        with m.If(~move_out & ~move_seg):
            m.d.sync += e.cont_next.eq(0)  # only OUT data or a segment follows the header
        with m.If(move_in):
            m.d.sync += [e.remaining.eq(e.wr_bytes[9:] << 9), e.need_idx.eq(e.n_readable),
                         e.after.eq(1)]
        with m.Elif(move_id):
            m.d.sync += [e.remaining.eq(id_len), e.need_idx.eq(e.n_readable), e.dpos.eq(0),
                         e.to_disk.eq(0), e.after.eq(1)]
        with m.Elif(move_out):
            # the data starts in the header's last descriptor (cont_next) or in the
            # next one, which the header's last piece fetched into pf
            m.d.sync += [e.remaining.eq(e.r_bytes[9:] << 9), e.dir_write.eq(0), e.after.eq(1),
                         e.need_idx.eq(e.pf_idx)]
        with m.Elif(move_seg):  # as OUT's data, but 16 bytes into cap
            m.d.sync += [e.remaining.eq(spec.DWZ_SEGMENT_BYTES), e.dir_write.eq(0),
                         e.to_disk.eq(0), e.dpos.eq(0), e.after.eq(1), e.need_idx.eq(e.pf_idx)]
        with m.Else():
            m.d.sync += [e.need_idx.eq(e.last_idx), e.after.eq(0)]
        with m.If(move_in | move_id | move_out | move_seg):
            e.operand(XS_PF, Y_NONE)  # ROUTE's: a data piece's address
        with m.Else():
            e.operand(XS_PF, Y_STAT)  # ... or the status byte's
        e.go("ROUTE")


def data_mover(m, e):
    """Step 3.5, the data (ROUTE, FETCH, ROUTE_FETCHED, DATA_PIECE, DATA_WAIT): move the data in
    pieces, one per descriptor (the first may continue in the header's last one): ROUTE sets up
    the first piece's command, or the status byte's, and goes on if pf holds ``need_idx`` (or
    the data continues in the header's last descriptor), else fetches it first (FETCH,
    ROUTE_FETCHED: 2 more cycles); DATA_PIECE issues a piece and
    DATA_WAIT waits for it while it sets up the next command. ``plen_next`` is the next piece's
    length (its bits 5 and up reach the command after the FSM). Latency: 1 cycle (DATA_PIECE)
    between pieces; STATUS follows the last piece's end."""
    last_piece = work_reg()  # the piece in flight is the last data piece
    plen_last = work_reg()  # the next data piece is the last one (its length: c_len)
    # The next data piece: what is left of its descriptor, at most the remaining data.
    e.plen_next = Signal(e.lbits)
    p_short = Signal()
    # what is left of the descriptor: its low bits, and whether more than they say
    avail_len = Mux(e.cont_next, e.split_rem, e.pf_len[:e.lbits + 1])
    big = Mux(e.cont_next, e.split_big, e.pf_len[e.lbits + 1:] != 0)
    m.d.comb += [
        p_short.eq(~big & ~avail_len[e.lbits] & (avail_len[:e.lbits] < e.remaining)),
        e.plen_next.eq(Mux(p_short, avail_len[:e.lbits], e.remaining)),
    ]

    def next_piece_len():
        m.d.sync += plen_last.eq(~p_short)

    def data_command():
        e.command(write=e.dir_write, length=e.plen_next[:5], disk=e.to_disk, dpos=e.dpos[:5],
                  data_piece=True)

    def to_data_piece():
        e.go("DATA_PIECE")

    with e.state("ROUTE"):
        next_piece_len()
        e.load()
        e.operand(XS_PF, (e.after, Y_NONE, Y_STAT))  # ROUTE_FETCHED's
        with m.If(e.after):
            data_command()
        with m.Else():
            e.command(**STATUS_WRITE)
        with m.If(e.after & e.cont_next):
            to_data_piece()  # OUT, continuing where the header ended
        with m.Elif(e.pf_idx == e.need_idx):
            with m.If(e.after):
                to_data_piece()
            with m.Else():
                e.go("STATUS")
        with m.Else():
            e.fetch(e.need_idx)
            e.go("FETCH")
    with e.state("FETCH"):
        e.operand(XS_PF, (e.after, Y_NONE, Y_STAT))  # ROUTE_FETCHED's
        e.go("ROUTE_FETCHED")
    with e.state("ROUTE_FETCHED"):  # pf = need_idx now
        next_piece_len()
        e.load()
        with m.If(e.after):
            data_command()
        with m.Else():
            e.command(**STATUS_WRITE)
        with m.If(e.after):
            to_data_piece()
        with m.Else():
            e.go("STATUS")

    # DATA_PIECE issues the piece whose length the state before put in the command (the
    # piece's length; the status byte's command never reaches DATA_PIECE)
    with e.state("DATA_PIECE"):  # c_len: this piece (> 0); pf: its descriptor
        m.d.sync += [last_piece.eq(plen_last), e.cont_next.eq(0),
                     e.remaining.eq(e.remaining - e.c_len), e.dpos.eq(e.dpos + e.c_len)]
        # the next piece's descriptor, or the status byte's (the last one), whose
        # address DATA_WAIT loads
        e.operand(XS_PF, (plen_last, Y_STAT, Y_NONE))  # DATA_WAIT's
        with m.If(plen_last):
            e.fetch(e.last_idx)
        with m.Else():
            e.fetch(e.pf_next)
        e.issue("DATA_WAIT")

    def after_data_piece():
        with m.If(last_piece & e.seg_phase):
            e.go("SEG_CHECK")
        with m.Elif(last_piece):
            e.go("STATUS")
        with m.Else():
            to_data_piece()

    def before_data():
        m.d.comb += e.dma.serial.eq(~e.to_disk)
        e.load()
        e.operand(XS_PF, (last_piece, Y_STAT, Y_NONE))
        next_piece_len()
        with m.If(last_piece):
            e.command(**STATUS_WRITE)
        with m.Else():
            data_command()
    e.wait("DATA_WAIT", after_data_piece, before=before_data)


def zeroer(m, e):
    """Step 3.5 for DISCARD and WRITE_ZEROES, after the segment's read (SEG_CHECK, SEG_ACT,
    ZERO_ISSUE, ZERO_WAIT): SEG_CHECK registers the checks of the segment in cap, SEG_ACT sets
    the status or hands a zero command to the DMA engine, which zeroes two disk words a cycle.
    va holds the status byte's address throughout (DATA_WAIT loaded it), and the command the
    status write (except while the zero command runs). Latency: 2 cycles, then STATUS, or the
    zeroing and 2 more."""
    seg = DwzSegment(e.cap)
    cs = e.cs
    io_bad = work_reg()
    unsupp = work_reg()
    z_pos = work_reg(e.lbits)
    z_len = work_reg(e.lbits)
    num, sector, flags = seg.num_sectors, seg.sector, seg.flags
    with e.state("SEG_CHECK"):
        m.d.comb += e.early_va.eq(1)
        fits = sector[:cs] + num[:cs]
        m.d.sync += [
            # more sectors than the disk (max_*_sectors), or past its end
            io_bad.eq((num[cs:] != 0) | (sector[cs:] != 0) | (num[:cs] > e.cap_sectors)
                      | (fits > e.cap_sectors)),
            unsupp.eq((flags[1:] != 0) | (e.t_discard & flags[0])),
            z_pos.eq(sector[:cs] << 9), z_len.eq(num[:cs] << 9),
        ]
        e.go("SEG_ACT")
    with e.state("SEG_ACT"):
        m.d.comb += e.early_va.eq(1)
        with m.If(io_bad):
            m.d.sync += e.blk_status.eq(spec.VIRTIO_BLK_S_IOERR)
            e.go("STATUS")
        with m.Elif(unsupp):
            m.d.sync += e.blk_status.eq(spec.VIRTIO_BLK_S_UNSUPP)
            e.go("STATUS")
        with m.Else():
            m.d.sync += [e.c_write.eq(0), e.c_drain.eq(0), e.c_disk.eq(1), e.c_zero.eq(1),
                         e.c_tbl.eq(0), e.c_len.eq(z_len), e.c_dpos.eq(z_pos)]
            e.go("ZERO_ISSUE")
    with e.state("ZERO_ISSUE"):
        m.d.comb += e.early_va.eq(1)
        e.issue("ZERO_WAIT")

    def before_zero():
        m.d.comb += e.early_va.eq(1)
        e.command(**STATUS_WRITE)
    e.wait("ZERO_WAIT", e.goto("STATUS"), before=before_zero)


def completion_writer(m, e):
    """Steps 3.6 to 3.9 (STATUS to DRAIN_USED_WAIT): write the status byte, drain the posted
    writes (no used element for data that did not arrive), write the used element and the used
    index, drain again (the interrupt follows the used index), then pulse ``completed`` and the
    used-buffer interrupt (unless ``no_irq``) and go on with the next entry (HEAD) or the poll
    (QCHECK). The payload of these writes is selected after the FSM. Latency: 1 cycle per
    write or drain besides the DMA engine's."""
    def issue_then(name, then, command, ring=None):
        """``name`` issues the command set up before it; ``name``_WAIT waits for its end and
        sets up ``command``, a write at QueueDevice + y_reg in the phase ``ring`` if given."""
        with e.state(name):
            if ring is not None:
                m.d.comb += ring.eq(1)
                e.operand(XS_USED, Y_REG)  # the wait's: the used element or the used index
            e.issue(name + "_WAIT")

        def before():
            if ring is not None:
                m.d.comb += ring.eq(1)
                e.load()
                e.operand(XS_USED, Y_REG)
            e.command(**command)
        e.wait(name + "_WAIT", e.goto(then), before=before)

    issue_then("STATUS", "DRAIN_DATA", DRAIN)
    # no used element for data that did not arrive
    issue_then("DRAIN_DATA", "USED", USED_WRITE, e.ring_used)
    issue_then("USED", "USED_IDX", UIDX_WRITE, e.ring_uidx)
    e.next_used = Signal(16)
    m.d.comb += e.next_used.eq(e.used_idx + 1)
    issue_then("USED_IDX", "DRAIN_USED", DRAIN)

    # registered: last_avail and avail_idx are settled long before DRAIN_USED_WAIT
    round_done = work_reg()
    m.d.sync += round_done.eq(e.last_avail == e.avail_idx)
    with e.state("DRAIN_USED"):  # the interrupt follows the used index
        # DRAIN_USED_WAIT loads the next round's poll address, or the next entry's head
        # (or used_event's, EVENT_IDX). used_idx moves on now: should the drain fail, the
        # engine halts until a reset.
        m.d.sync += e.used_idx.eq(e.next_used)
        with m.If(round_done & e.evt):
            m.d.comb += e.y_is_uevt.eq(1)
        e.operand(XS_AVAIL, (round_done & ~e.evt, Y_NONE, Y_REG))
        e.issue("DRAIN_USED_WAIT")

    def after_used():
        # registered: the pulses come a cycle after the drain's end
        m.d.sync += [e.status.completed.eq(1),
                     # VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX, UEVT decides once a round
                     e.q.used_irq.eq(~e.no_irq & ~e.evt)]
        with m.If(round_done & e.evt):
            e.go("UEVT")
        with m.Elif(round_done):
            e.go("QCHECK")
        with m.Else():
            e.go("HEAD")
    def before_drain_used():
        e.load()
        with m.If(round_done & e.evt):
            m.d.comb += e.y_is_uevt.eq(1)
        e.operand(XS_AVAIL, (round_done & ~e.evt, Y_NONE, Y_REG))
        with m.If(round_done & e.evt):
            e.command(**UEVT_READ)
        with m.Elif(round_done):
            e.command(**POLL)
        with m.Else():
            e.command(**HEAD_READ)
    e.wait("DRAIN_USED_WAIT", after_used, before=before_drain_used)

    # EVENT_IDX, step 4: read used_event (into cap where a ring entry goes), interrupt if the
    # used index passed it since the last decision (vring_need_event), then the next round.
    # 3 cycles besides the read's.
    with e.state("UEVT"):  # va: used_event's address
        e.issue("UEVT_WAIT")
    e.wait("UEVT_WAIT", e.goto("UEVT_CHECK"),
           before=lambda: e.operand(XS_AVAIL, Y_NONE))  # UEVT_CHECK's: the poll
    need_event = work_reg()
    used_event = e.cap_head
    with e.state("UEVT_CHECK"):
        e.load()
        e.operand(XS_AVAIL, Y_NONE)  # UEVT_ACT's: the poll's, looked up before QCHECK issues
        e.command(**POLL)
        m.d.sync += need_event.eq((e.used_idx - used_event - 1)[:16]
                                  < (e.used_idx - e.signalled)[:16])
        e.go("UEVT_ACT")
    with e.state("UEVT_ACT"):
        m.d.sync += [e.q.used_irq.eq(need_event), e.signalled.eq(e.used_idx)]
        e.go("QCHECK")


def halt(m, e):
    """The end of every fault (EFAULT, FAULT, HALT): the DMA engine copies va, the engine fault's
    address (EFAULT), the fault pulse (FAULT), then nothing until a device reset. 2 cycles."""
    with e.state("EFAULT"):  # va holds the engine fault's address; the DMA engine copies it
        e.go("FAULT")
    with e.state("FAULT"):
        m.d.comb += [e.q.fault.eq(1), e.status.fault.eq(1)]
        e.go("HALT")
    with e.state("HALT"):
        pass


class RingEngine(wiring.Component):
    """Split-virtqueue engine for one virtio-blk request queue.

    Parameters
    ----------
    queue_num_max : int
        Largest queue size; also the depth of the descriptor cache.
    disk_bytes : int
        RAM disk size in bytes.
    lookups : bool
        The DMA engine looks each command's first page up in the cycle before the command's
        issue (``dma.pre``), from flip-flops: the early address, summed a cycle ahead of
        ``va`` (:class:`AddressAdder`). A descriptor read's index arrives from the bus in the
        cycle its operands are chosen, too late for that sum, so the engine waits one cycle
        before it issues that read (DESC_ISSUE), and its lookup reads ``va`` (``early_va``).
        False for the GPA-only device, which makes no lookup and issues without the wait.

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
        A device reset is in progress, or written in this cycle (``queue.dev_reset``): the
        DMA engine ends its command at a burst boundary. A register.
    """

    def __init__(self, *, queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES,
                 data_width: int = spec.DEFAULT_DATA_WIDTH, features: Features | None = None,
                 lookups: bool = True):
        self._features = Features.none() if features is None else features
        self._lookups = lookups
        self._queue_num_max = check_queue_num_max(queue_num_max)
        self._disk_bytes = disk_bytes
        self._data_width = check_data_width(data_width)
        self._len_bits = local_bits(disk_bytes)
        if self._features.indirect and (table_buffer_bytes(queue_num_max, data_width)
                                        > min(disk_bytes, 1 << self._len_bits)):
            raise ValueError(f"Indirect tables of up to {queue_num_max} descriptors need a "
                             f"disk of at least {table_buffer_bytes(queue_num_max, data_width)}"
                             f" bytes, not {disk_bytes!r}")
        super().__init__({
            "queue": In(QueueSignature()),
            "dma": Out(DmaPortSignature(self._len_bits,
                                        disk_word_bits(disk_bytes, data_width), data_width)),
            "status": Out(EngineStatus),
            "abort": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        e = _Shared(m)
        e.q, e.dma, e.status = self.queue, self.dma, self.status
        e.hold_index = self._lookups
        c = e.dma.cmd.payload
        qmax = self._queue_num_max
        e.qmax, e.features = qmax, self._features
        e.qbits = ceil_log2(qmax + 1)  # an index up to qmax, or a count of descriptors
        e.lbits = self._len_bits
        e.cap_sectors = self._disk_bytes // spec.SECTOR_SIZE
        e.cs = ceil_log2(e.cap_sectors + 1)

        e.tbl_we = Signal(CAP_BYTES)  # the capture register takes a table entry's bytes
        e.tbl_halves = 1
        if self._features.indirect:
            e.tbl_entry, e.tbl_half, tbl_wdata, e.tbl_halves = table_buffer(
                m, e.dma, qmax, self._data_width)
        else:
            tbl_wdata = Const(0, 8 * CAP_BYTES)
        cap = e.cap = capture_register(m, e.dma, e.tbl_we, tbl_wdata)
        e.desc_f = Descriptor(cap)
        e.hdr = BlkHeader(cap)
        e.cap_head = e.desc_f.next  # the ring entry after the head's read (HEAD_POS)

        (e.cache_wr, cache_rd, e.pf_len, e.pf_idx, e.pf_next, e.rd_idx,
         e.pf_load) = descriptor_cache(m, qmax)

        e.kick = Signal()
        e.abort = Signal()
        e.abort_done = Signal()  # the reset's abort ends: every state returns to IDLE
        e.last_avail = Signal(16)  # consumed entries (incremented once the head is read)
        e.used_idx = Signal(16)
        e.avail_idx = work_reg(16)
        e.no_irq = work_reg()  # VIRTQ_AVAIL_F_NO_INTERRUPT of the last poll
        e.head = work_reg(16)
        e.idx = work_reg(16)  # the descriptor being walked; also the index a chain fault reports
        # pass 1
        e.last_idx = work_reg(e.qbits)  # the last cached descriptor of the chain
        # how many of the cached ones are device-readable: their count when the first non-empty
        # device-writable one comes (a chain whose readable descriptors do not all come first
        # faults)
        e.n_readable = work_reg(e.qbits)
        e.acc = work_reg(33)  # sum of the lengths so far (bit 32: over 2^32 - 1)
        e.r_bytes = work_reg(32)  # R: the sum when the first device-writable descriptor came
        e.wr_bytes = work_reg(33)  # Wr = acc - R, after the walk
        # pass 2
        e.got = work_reg(5)  # header bytes read (or being read)
        e.take = work_reg(e.lbits)  # bytes of the piece in flight
        e.piece_ends = work_reg()  # ... it ends its descriptor
        e.hdr_last = work_reg()  # ... it ends the header
        # what the header left of its last descriptor: its low bits, and whether more than
        # they say (it is then more than any data piece)
        e.split_rem = work_reg(e.lbits + 1)
        e.split_big = work_reg()
        e.cont_next = Signal()  # the next data piece continues in that descriptor
        e.remaining = work_reg(e.lbits)  # data bytes not yet handed to the DMA engine
        e.dpos = work_reg(e.lbits)  # where the next data piece starts on the disk (or serial)
        e.to_disk = work_reg()
        e.dir_write = work_reg()
        e.blk_status = work_reg(8)
        e.used_len = work_reg(32)  # the used element's len: bytes written + 1 (the status byte)
        # issue 17's features
        e.evt = Signal()  # EVENT_IDX negotiated (a constant 0 unless offered)
        m.d.comb += e.evt.eq(e.q.event_idx if self._features.event_idx else 0)
        e.aevt_pub = Signal(16)  # the avail_event last written
        e.signalled = Signal(16)  # the used index at the last interrupt decision
        e.in_tbl = Signal()  # the walk is in an indirect table ...
        # The states after which the next command's address is va's next value (``early_va``:
        # the early address takes that, AddressAdder), whatever they decide: DESC_FIRST (the
        # first descriptor: DESC_START looks it up), DESC_WAIT (the header's first piece, which
        # DESC_NEXT may issue after DESC_CHECK), DESC_CHECK (the next descriptor, DESC_NEXT
        # looks it up; or nothing), SEG_*, ZERO_* (the status byte's address, which DATA_WAIT
        # loaded). Outside a table DESC_CHECK issues nothing in the next cycle, inside one its
        # last entry's DESC_NEXT issues the header at the address TBL_LOAD's operands give.
        # (The GPA-only device looks nothing up: a next descriptor's read, which DESC_NEXT
        # issues at once there, has the header's early address.)
        e.early_va = Signal()
        e.tbl_base = work_reg(64)  # ... at this address
        e.tbl_n = work_reg(e.qbits)  # ... of this many entries
        e.over = work_reg()  # the chain is over the limits (SEG_MAX, SIZE_MAX)
        e.t_discard = work_reg()
        e.seg_phase = work_reg()  # the data piece(s) in flight read a DISCARD/WRITE_ZEROES segment
        e.f_cause = Signal(4)
        m.d.comb += [
            self.status.fault_cause.eq(e.f_cause),
        ]

        n = e.q.num
        # The queue size as checked by QCHECK and its mask, computed every cycle (a notify
        # reaches QCHECK at least two cycles after the last register write).
        e.qnum, qmask, e.num_ok = queue_size_check(m, n, e.qbits)

        # ---- The address register and its adder (area and Fmax: AddressAdder) ---------------
        e.ring_used = Signal()  # the phase of the used element (else: an avail entry) ...
        e.ring_uidx = Signal()  # ... or of the used index
        e.y_is_idx = Signal()  # ... or of a fault reporting idx
        e.y_is_num = Signal()  # ... or QueueNum
        e.y_is_uevt = Signal()  # ... or used_event (4 + 2 N; EVENT_IDX)
        e.y_is_aevt = Signal()  # ... or avail_event (4 + 8 N)
        evt_off = {}
        for name, scale in (("uevt", 2), ("aevt", 8)):  # registered: QueueNum is settled
            evt_off[name] = work_reg(e.qbits + 4, name=f"{name}_off")
            m.d.sync += evt_off[name].eq((e.qnum * scale) + 4)
        # y_reg, set a cycle ahead by the phase: the offset of the next ring access (avail entry
        # i is at 4 + 2 * i, used element i at 4 + 8 * i, the used index at 2), or the index or
        # QueueNum a fault reports.
        # QueueDesc, or the indirect table the walk is in
        desc_base = Mux(e.in_tbl, e.tbl_base, e.q.desc) if self._features.indirect else e.q.desc
        used_off = Cat(Const(0b100, 3), e.used_idx & qmask)
        y_cases = [(e.ring_used, used_off), (e.ring_uidx, 2),
                   (e.y_is_idx, e.idx), (e.y_is_num, n)]
        if self._features.event_idx:
            y_cases += [(e.y_is_uevt, evt_off["uevt"]), (e.y_is_aevt, evt_off["aevt"])]
        # The poll's ring offset, 4 + 2 (last_avail mod the queue size), registered (Fmax: it
        # feeds the early sum). It lags last_avail and the queue size by a cycle, which no
        # poll sees: the next poll comes many cycles after DESC_FIRST counts a head, and a
        # queue's size is written long before a notify reaches QCHECK.
        ring_off = work_reg(18, name="ring_off")
        m.d.sync += ring_off.eq(((e.last_avail & qmask) + 2) << 1)
        # The ring accesses' early addresses (AddressAdder): avail entries (the head, y_reg's
        # default) and used_event from QueueDriver; used elements, the used index and
        # avail_event from QueueDevice. (A fault's index and QueueNum are never looked up.)
        # Each sum lags its operands by a cycle (ring_off's by two), long enough: last_avail
        # and used_idx move a request before the next access that uses them.
        early_sums = {XS_DESC: [], XS_AVAIL: [(None, ring_off)],
                      XS_USED: [(e.ring_used, used_off), (e.ring_uidx, 2)]}
        if self._features.event_idx:
            early_sums[XS_AVAIL].insert(0, (e.y_is_uevt, evt_off["uevt"]))
            early_sums[XS_USED].append((e.y_is_aevt, evt_off["aevt"]))
        adder = AddressAdder(
            m, {XS_DESC: desc_base, XS_AVAIL: e.q.avail, XS_USED: e.q.used,
                XS_PF: cache_rd.data.addr},
            e.cap_head, cache_rd.data.last, y_cases, ring_off, cache_rd.data.end,
            early_sums, e.early_va & ~e.abort)
        e.operand, e.load = adder.operand, adder.load
        # The address of the next command, looked up by the DMA engine in the translation unit
        # (``pre.vaddr``): every state before one that issues loads va, and the early address
        # is what it loads, except in the hold states, where it is va itself.
        m.d.comb += [c.vaddr.eq(adder.va), e.dma.pre.vaddr.eq(adder.va_early)]
        # A data piece that continues where the header ended: the DMA engine keeps its address
        # while idle and looks it up, from the cycle the header ends to the piece's issue.
        m.d.comb += [c.cont.eq(e.cont_next), e.dma.pre.cont.eq(e.cont_next)]

        # The command a state hands over comes from registers, set on the way into the state
        # (``go``): only ``dma.cmd.valid`` depends on the state's decisions (the DMA engine's
        # command registers follow the fields in every idle cycle).
        e.c_write, e.c_drain, e.c_disk, e.c_zero = Signal(), Signal(), Signal(), Signal()
        e.c_tbl = Signal()
        e.c_tcmd = Signal()  # a state sets the fields to the table read's
        # Length and local position: bits 0-4 hold every value but a data piece's, whose bits
        # 5 and up are set after the FSM (a data piece's, or 0 from the flip-flops' reset).
        e.c_len = work_reg(e.lbits)
        e.c_dpos = work_reg(e.lbits)
        e.c_set = Signal()  # a state sets the fields ...
        e.c_data = Signal()  # ... to a data piece's
        m.d.comb += [c.write.eq(e.c_write), c.drain.eq(e.c_drain), c.zero.eq(e.c_zero),
                     c.len.eq(e.c_len), c.disk.eq(e.c_disk), c.dpos.eq(e.c_dpos),
                     c.tbl.eq(e.c_tbl)]
        m.d.sync += [self.status.completed.eq(0), e.q.used_irq.eq(0)]  # pulses, set below
        with m.FSM() as fsm:
            for part in (poll, chain_walker, header_reader, request_decoder, data_mover,
                         zeroer, completion_writer, halt):
                part(m, e)  # each adds its states, in this order

        one_hot(fsm)
        # Fmax: while the engine aborts, X is IDLE's and Y is 0 (the state's own choice does
        # not matter: no command goes out), so that the selects do not wait for the DMA
        # engine's ``busy``.
        with m.If(e.abort):
            m.d.comb += [flag.eq(sel == XS_AVAIL) for sel, flag in adder.x_next.items()]
            m.d.comb += [flag.eq(0) for flag in adder.y_next.values()]
        # Area: a command's length and position above bit 4, a data piece's or 0, set here.
        with m.If(e.c_data):
            m.d.sync += [e.c_len[5:].eq(e.plen_next[5:]), e.c_dpos[5:].eq(e.dpos[5:])]
        with m.Elif(e.c_tcmd):  # the table read: 16 T bytes
            m.d.sync += [e.c_len[5:].eq(e.tbl_n[1:]), e.c_dpos[5:].eq(0)]
        with m.Elif(e.c_set):
            m.d.sync += [e.c_len[5:].eq(0), e.c_dpos[5:].eq(0)]
        # The payload: the used element (id, len), whose low 16 bits are the status byte or the
        # used index in the states that write those (their commands strobe only those bytes).
        # Area: not gated by the states, only the low 16 bits need a select.
        low16 = Mux(fsm.ongoing("USED") | fsm.ongoing("USED_WAIT"), e.head,
                    Mux(fsm.ongoing("USED_IDX") | fsm.ongoing("USED_IDX_WAIT"), e.next_used,
                        e.blk_status))
        if self._features.event_idx:  # avail_event
            low16 = Mux(fsm.ongoing("AEVT_ISSUE") | fsm.ongoing("AEVT_WAIT"), e.last_avail,
                        low16)
        m.d.comb += e.dma.payload.eq(Cat(low16, Const(0, 16), e.used_len))
        with m.If(e.q.notify):
            m.d.sync += e.kick.eq(1)
        with m.If(e.q.dev_reset):
            m.d.sync += [e.kick.eq(0), e.last_avail.eq(0), e.used_idx.eq(0),
                         e.cont_next.eq(0), e.aevt_pub.eq(0), e.signalled.eq(0), e.in_tbl.eq(0)]
        # A device reset sets abort; abort clears once the DMA engine is idle (every state
        # then returns to IDLE). The DMA engine's abort is also high in the reset write's own
        # cycle (no burst starts once it is accepted): a register of its own, so that the
        # burst's go waits for no OR (Fmax).
        abort_next = Signal()
        m.d.comb += [e.abort_done.eq(e.abort & ~e.dma.busy),
                     abort_next.eq(e.q.dev_reset | (e.abort & ~e.abort_done))]
        m.d.sync += [e.abort.eq(abort_next), self.abort.eq(abort_next | e.q.reset_next)]
        return m
