"""DMA engine: virtual accesses in, translated AXI4 bursts out.

A command is "read (or write) ``len`` bytes at virtual address ``vaddr``", with the local end of
the transfer being the RAM disk (at byte ``dpos``) or the ring engine's scratch (at byte
``dpos``: the 16-byte capture register for reads, the payload or the device serial for writes),
or a *drain*: wait until every posted write has its response. The engine splits an access as
``docs/architecture.md`` ("Bus transactions") specifies: one translation per 4 KiB page, one INCR
burst per ``spec.burst_bytes(data_width)`` window. Its cycle-level behaviour is
``docs/timing.md``; in short:

* the ring engine presents the address of its next command one cycle before it hands the command
  over (``pre_*``); the translation unit reads the table then, and the engine *keeps* that
  lookup when it accepts the command, so that the registered verdict is there in the burst's
  address cycle, two cycles after the accept. The next page of a command is looked up in the
  cycle of the address handshake of the burst that ends the page;
* reads are one burst at a time; ``done`` pulses with the last beat;
* writes are *posted*: ``done`` pulses once the last beat has entered the write pipeline and the
  address has been accepted; responses are collected in the background and a drain command
  reports the first one that failed.

Bytes travel at any alignment at one bus beat per cycle. Within a command a bus byte and its
local byte are always the same distance apart, so the lane rotation between them, the lanes of
the first and last beat and the local word of each beat are fixed when the command is accepted:
no per-beat byte arithmetic. One rotator serves both directions: a read's beats and a write's
beats are never in flight together (reads wait for every posted write's response).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from models import spec

from .axi import BURST_INCR, RESP_OKAY, AXI4Signature
from .fifo import LutRamFIFO
from .interfaces import (
    CAP_BYTES,
    MAX_POSTED_WRITES,
    DiskSignature,
    DmaPortSignature,
    DmaStatus,
    LookupSignature,
    disk_word_bits,
    local_bits,
)
from .layouts import VirtualPage
from .params import check_data_width, check_disk_bytes, one_hot
from .translate import lookup_fields

__all__ = ["CAP_BYTES", "MAX_POSTED_WRITES", "DmaEngine", "local_bits"]

W_FIFO_DEPTH = 8  # beats in S1, S2 and the W FIFO (two cycles from in to out)


def _rotl_lanes(lanes: list, amount, n: int) -> list:
    """Rotate a list of ``n`` equal-width lane values left by ``amount`` lanes (lane ``l`` gets
    lane ``l - amount``), as ``log2(n)`` stages of 2:1 multiplexers."""
    for stage in range(exact_log2(n)):
        step = 1 << stage
        lanes = [Mux(amount[stage], lanes[(lane - step) % n], lanes[lane]) for lane in range(n)]
    return lanes


def lane_rotator(m, rdata, rot, s2_valid, s2_disk, s2_rot, s2_ge, s2_scratch, disk):
    """The one lane rotator (combinational): a read beat ``rdata`` (bus -> local lanes, left
    by ``rot``) or, when ``s2_valid``, the write beat in stage S2 (local -> bus, left by
    ``s2_rot`` = W - rot): the RAM disk's two words (lanes >= rot, ``s2_ge``, from the first)
    or the scratch source ``s2_scratch`` (0 for a disk beat: an OR, not a third multiplexer
    input). Reads and writes never have beats in flight together, so one serves both."""
    W = len(s2_ge)
    rot_in = Signal(8 * W)
    rot_amount = Signal(len(rot))
    lo_hi = Signal(8 * W)  # S2: local lanes >= rot from the first word, the others the next
    for lane in range(W):
        sl = slice(8 * lane, 8 * lane + 8)
        m.d.comb += lo_hi[sl].eq(Mux(s2_ge[lane], disk.rd_lo[sl], disk.rd_hi[sl]))
    m.d.comb += [
        rot_in.eq(Mux(s2_valid, Mux(s2_disk, lo_hi, 0) | s2_scratch, rdata)),
        rot_amount.eq(Mux(s2_valid, s2_rot, rot)),
    ]
    lanes = _rotl_lanes([rot_in[8 * x:8 * x + 8] for x in range(W)], rot_amount, W)
    rotated = Signal(8 * W)
    m.d.comb += rotated.eq(Cat(*lanes))
    return rotated


def burst_window(m, rem, nxt_lo, lb):
    """The geometry of the next burst (state ADDR, combinational), from the command state:
    ``rem`` bytes left from page offset ``nxt_lo``, in ``2 ** lb``-byte windows. The low 12
    bits of the physical address are those of the virtual address, so the geometry never waits
    for the table. One sum says it all: ``end``, where the rest of the command would end,
    counted from the start of the burst's window; ``reaches``, the burst runs to the window's
    end (or the command ends there); ``fits``, the rest fits in this window (the last burst);
    ``window_next``, the next window's index in the page."""
    end = Signal(max(len(rem), lb) + 2)
    m.d.comb += end.eq(rem + nxt_lo[:lb])
    reaches = Signal()
    fits = Signal()
    m.d.comb += [
        reaches.eq(end[lb:] != 0),
        fits.eq((end[lb + 1:] == 0) & ~(end[lb] & (end[:lb] != 0))),
    ]
    window_next = Signal(13 - lb)
    m.d.comb += window_next.eq(nxt_lo[lb:] + 1)
    return end, reaches, fits, window_next


def next_page_fields(vpn, high, ref_bits):
    """Fmax: ``lookup_fields(vpn + 1)``'s ``high`` and ``handle`` without the 52-bit carry
    chain (a path of its own), from page ``vpn`` and its ``high`` (combinational): bits
    ``ref_bits``..50 (the reference above the index) of the next page are zero when they are
    all zero and receive no carry, or all ones and receive one; bit 63 flips when the carry
    runs through them."""
    page = VirtualPage(vpn)
    carry_in = page.ref[:ref_bits].all()
    mid_all = page.ref[ref_bits:].all()
    return Mux(carry_in, ~mid_all, high), page.handle ^ (carry_in & mid_all)


def _combine(m, ge_rot, lo, hi):
    """Lanes >= rot (``ge_rot``) from ``lo``, the others from ``hi``: a beat's two local
    words as one (combinational)."""
    out = Signal(len(lo), name="combined")
    for lane in range(len(ge_rot)):
        sl = slice(8 * lane, 8 * lane + 8)
        m.d.comb += out[sl].eq(Mux(ge_rot[lane], lo[sl], hi[sl]))
    return out


def scratch_source(m, word, word_inc, ge_rot, payload, serial):
    """The scratch write source of the beat at local word ``word``: the payload, or the device
    serial when ``serial``, as the RAM disk gives words ``word`` and ``word + 1``, combined
    like disk words (lanes >= rot from the first). Combinational, like the disk's registered
    read data two cycles later. Scratch positions start at 0, so word -1 (all ones) never has
    a strobed lane."""
    W = len(ge_rot)
    serial_bytes = spec.DEVICE_SERIAL.ljust(32, b"\0")
    n_sw = 32 // W
    sw_bits = exact_log2(n_sw)

    def serial_word(index):
        ser = Signal(8 * W, name="serial_word")
        with m.Switch(index[:sw_bits]):
            for i in range(n_sw):
                with m.Case(i):
                    m.d.comb += ser.eq(int.from_bytes(serial_bytes[i * W:(i + 1) * W],
                                                      "little"))
        return ser

    scratch_comb = Signal(8 * W)
    # (word_inc's low bits are word's plus one, also where it wraps: the disk's word count
    # is a multiple of n_sw; said directly, each serial bit is a function of three bits)
    serial_comb = _combine(m, ge_rot, serial_word(word),
                           serial_word((word[:sw_bits] + 1)[:sw_bits])
                           if sw_bits else serial_word(word))
    if W >= 8:
        # the payload (at most 8 bytes) is local word 0 whole: the lanes of the words
        # around it are never strobed, so it needs no word select and no combining
        m.d.comb += scratch_comb.eq(Mux(serial, serial_comb, payload))
    else:
        pay_lo = Mux(word[0], payload[32:], payload[:32])
        pay_hi = Mux(word_inc[0], payload[32:], payload[:32])
        m.d.comb += scratch_comb.eq(Mux(serial, serial_comb, _combine(m, ge_rot, pay_lo, pay_hi)))
    return scratch_comb


def posted_responses(m, axi, burst_addr, push):
    """Posted write responses: every accepted write address (``push``, its handshake cycle) is
    remembered until its response, so that a failed write can be reported with its address
    when the ring engine drains. Returns ``(level, werr, werr_addr, werr_clear, posted,
    bq_full)``: ``level``, the responses outstanding; ``werr`` (a response failed) and
    ``werr_addr`` (the first failed one's address, cleared in the cycle after ``werr_clear``)
    one cycle after the response; ``posted`` (a response is outstanding) and ``bq_full`` (all
    ``MAX_POSTED_WRITES`` are) one cycle after the address or response handshake, as registers
    so that a burst's decision to go waits for no compare.

    The addresses are a log in block RAM, in order: each cycle writes ``burst_addr`` into the
    slot after the last address (a free slot: the log has one more than it ever holds), and a
    handshake keeps it by moving the write pointer. Fmax (issue 16): the handshake, late in its
    cycle, reaches only the pointer and the level, flip-flops the placer keeps beside the DMA
    engine; the block RAM's write enable is constant. A response reads the oldest address,
    written two cycles before it at least (as with the ``SyncFIFOBuffered`` this replaces: a
    response comes two or more cycles after its address handshake)."""
    slots = 1 << (MAX_POSTED_WRITES).bit_length()  # more than MAX_POSTED_WRITES
    m.submodules.bq = log = memory.Memory(shape=unsigned(64), depth=slots, init=[],
                                          attrs={"ram_style": "block"})
    wr = log.write_port()
    rd = log.read_port()
    w_ptr = Signal(range(slots), name="bq_w_ptr")
    r_ptr = Signal(range(slots), name="bq_r_ptr")
    level = Signal(range(MAX_POSTED_WRITES + 1), name="bq_level")
    pop = Signal()
    m.d.comb += [
        axi.bready.eq(1), pop.eq(axi.bvalid & (level != 0)),
        wr.addr.eq(w_ptr), wr.data.eq(burst_addr), wr.en.eq(1),
        rd.addr.eq(r_ptr + pop),
    ]
    with m.If(push):
        m.d.sync += w_ptr.eq(w_ptr + 1)
    with m.If(pop):
        m.d.sync += r_ptr.eq(r_ptr + 1)
    werr = Signal()
    werr_addr = Signal(64, reset_less=True)  # (as b_addr)
    werr_clear = Signal()  # a burst fails (see fault_addr)
    werr_first = axi.bvalid & (axi.bresp != RESP_OKAY) & ~werr  # the first failed response
    with m.If(werr_first):
        m.d.sync += werr.eq(1)
    with m.If(werr_clear):
        m.d.sync += werr_addr.eq(0)
    with m.Elif(werr_first):
        m.d.sync += werr_addr.eq(rd.data)
    posted = Signal()
    bq_full = Signal()
    bq_next = Signal(range(MAX_POSTED_WRITES + 2))
    m.d.comb += bq_next.eq(level + push - pop)
    m.d.sync += [level.eq(bq_next), posted.eq(bq_next != 0),
                 bq_full.eq(bq_next == MAX_POSTED_WRITES)]
    return level, werr, werr_addr, werr_clear, posted, bq_full


# The fault address register a command's end selects (see DmaEngine._ending)
FA_IDLE, FA_BURST, FA_WRITE = 0, 1, 2


class _Shared:
    """What the parts of :class:`DmaEngine` share: its sizes, its ports' short names and the
    registers and signals that more than one part reads or drives (attributes named as their
    signals). Each part adds its datapath when called and returns a function that adds its
    states to the one FSM."""

    def __init__(self, dma):
        W = self.W = dma._data_width // 8
        lw = self.lw = exact_log2(W)
        self.lb = exact_log2(spec.burst_bytes(dma._data_width))
        R = self.R = dma._ref_bits
        LS = self.LS = dma._set_bits
        wb = self.wb = dma._word_bits
        self.last_word = dma._disk_words - 1
        self.ones = (1 << W) - 1
        self.axi, self.ring, self.lk, self.disk = dma.m_axi, dma.ring, dma.lookup, dma.disk
        self.cmd = dma.ring.cmd
        self.c = self.cmd.payload

        # The command, set in IDLE
        self.write = Signal()
        self.to_disk = Signal()
        self.to_tbl = Signal()  # ... the ring engine's indirect table buffer instead (a read)
        self.empty = Signal()  # the command has no byte
        # The command moves on to its next burst in ADDR: nxt_* is where the next burst starts,
        # cur_* where the current one did (its address, its fault address, its page).
        self.nxt_lo = Signal(12)  # virtual address: page offset ...
        self.nxt_hi = Signal(52)  # ... and page number (bits 63:12)
        self.cur_lo = Signal(12)
        self.cur_hi = Signal(52)
        self.rem = Signal(dma._len_bits)  # bytes of the command not yet in a burst
        self.rot = Signal(lw)  # local lane = bus lane + rot (mod W), fixed for the command
        self.ge_rot = Signal(W)  # local lanes >= rot: they belong to the beat's first local word
        self.first_mask = Signal(W)  # bus lanes of the command's first beat
        self.last_mask = Signal(W)  # ... and of its last beat
        self.first_local = Signal(W)  # the same, as local lanes (reads)
        self.last_local = Signal(W)
        self.first_beat = Signal()  # the command's first beat has not yet gone
        self.word = Signal(wb)  # local word of the next beat's lanes >= rot; the others: word + 1
        self.word_inc = Signal(wb)
        self.zword = Signal(wb)  # the next words a zero command clears
        self.z_last = Signal()  # ... and this is its last cycle (rem is 2 W)
        # Current burst, set up in ADDR
        self.b_final = Signal()  # the burst ends the command
        self.b_cross = Signal()  # ... or ends on a page boundary (the next burst needs a lookup)
        self.b_next = Signal()  # ... the latter but not the former: its handshake looks it up
        self.arlen = Signal(8)
        # physical address of the burst in flight (bus error reports); area: no domain reset,
        # so that the flip-flops' reset is free to clear it (see DmaEngine._ending)
        self.b_addr = Signal(64, reset_less=True)
        self.b_err = Signal()
        self.next_high = Signal()  # the next page's lookup fields
        self.nxt_high = Signal()  # lookup_fields(nxt_hi)'s, set with nxt_hi (no OR tree of its own)
        self.next_handle = Signal()
        self.cur_high = Signal()  # lookup_fields(cur_hi)'s, copied with cur_hi
        # The DMA engine's own lookups (the next page, a stale page again, a continue command)
        # read the table at int_ref, set a cycle ahead
        self.int_ref = Signal(R + LS)
        self.keep_next = Signal()  # keep the next page's lookup (made in an address handshake)
        self.waiting = Signal()  # a kept lookup has not answered yet
        self.fresh = Signal()  # the answer is a lookup made for this burst (statistics)
        # The state, as flags for the datapath
        self.in_idle = Signal()
        self.in_xlate = Signal()
        self.in_xkeep = Signal()
        self.in_raddr = Signal()
        self.in_waddr = Signal()
        self.in_zero = Signal()
        self.in_drain = Signal()
        self.a_phase = Signal()  # the burst's address is (or may be) valid: ISSUE, RADDR, WADDR
        self.aw_sent = Signal()
        self.a_hs = Signal()
        # Beats
        self.w_active = Signal()  # beats of the current write burst still to issue
        self.w_start = Signal()  # the burst's address cycle lets its beats start
        self.w_cnt = Signal(8)  # beats left to issue - 1
        self.w_one = Signal()  # ... is 0: the next beat is the burst's last
        self.w_last_issue = Signal()
        self.occ = Signal(range(W_FIFO_DEPTH + 1))  # beats in S1, S2 and the W FIFO
        # The RAM disk's write port; area: registers with no domain reset (they follow the beat
        # in every cycle, and the flip-flops' reset is then free to clear the enables)
        self.d_word = Signal(wb, reset_less=True)
        self.d_data = Signal(8 * W, reset_less=True)
        self.d_en_lo = Signal(W, reset_less=True)
        self.d_en_hi = Signal(W, reset_less=True)

    def key(self, vpn):
        """What the table read needs of page ``vpn``: the grant reference bits and, with an
        IOTLB, the large set's index (page-number bits 18 and up)."""
        R, LS = self.R, self.LS
        return Cat(vpn[:R], vpn[18:18 + LS]) if LS else vpn[:R]


class DmaEngine(wiring.Component):
    """Translated DMA between guest memory (``m_axi``) and the RAM disk or scratch.

    Parameters
    ----------
    data_width : int
        ``m_axi`` data width: 32, 64 or 128.
    disk_bytes : int
        RAM disk size (a multiple of ``2 * data_width / 8``).
    ref_bits : int
        Width of a grant table index.
    set_bits : int
        Width of an IOTLB set index (0: no IOTLB, no IOVA mode).
    lookups : bool
        A burst waits for its lookup's answer (the translation unit's three cycles). False
        for the GPA-only device (:class:`~rtl.translate.PassThroughUnit`, whose answers are
        constants): no burst waits, which makes it the fastest GPA device this engine allows,
        the honest baseline of the cost of translation (docs/timing.md).

    Members
    -------
    ring : In(:func:`~rtl.interfaces.DmaPortSignature`)
        From the ring engine. ``pre``: the address of the command it may hand over in the next
        cycle (``pre.cont``: it continues where the last command ended), looked up when the
        engine is idle or ending a command
        cleanly. A command that ends with a fault or an abort in ISSUE or WADDR, on a burst
        that ends its page, reads the table at its own next page in that last cycle instead:
        no command may be taken in the cycle after such an end (the ring engine halts after a
        fault, and a reset's abort holds ``cmd.valid`` low; ``formal/dma.py`` assumes it).
        ``cmd``: a command is taken in a cycle with ``valid`` and ``ready``; its ``vaddr`` must
        be the ``pre.vaddr`` of the cycle before (or ``cont`` and ``pre.cont`` both set).
        A ``zero`` command (DISCARD, WRITE_ZEROES) writes zeros to the RAM disk, two words a
        cycle (ZERO), with no bus access and no lookup; it runs to its end even if a reset
        aborts (at most ``disk_bytes / (2 * data_width / 8)`` cycles), so that the disk is
        zeroed whole or not at all.
        ``done`` pulses for one cycle when the command ends (see the module docstring);
        ``fault`` is then 0 or the fault cause, and ``failed`` is ``fault != 0``.
        ``r_last_beat``: the last beat of a read burst arrives (the ``done`` of a one-burst
        read, unless it fails), one gate from the bus. ``busy``: a command or a posted write is
        in progress. ``cap_we``, ``cap_wdata``: byte writes into the ring engine's capture
        register (reads to the scratch). ``tbl_*``: a read with ``tbl`` (and ``disk``) writes
        its bytes, as it would the RAM disk's and in the same cycles, into the ring engine's
        indirect table buffer instead. ``payload``, ``serial``: the source of a write from
        the scratch: the device serial (``spec.DEVICE_SERIAL``, zero-padded) when ``serial``,
        else ``payload`` (at most 8 bytes), sampled until the command's ``done``.
    lookup : Out(:func:`~rtl.interfaces.LookupSignature`)
        The translation unit (:class:`~rtl.translate.TranslationUnit`).
    disk : Out(:func:`~rtl.interfaces.DiskSignature`)
        The RAM disk (:class:`~rtl.ramdisk.RamDisk`).
    status : Out(:func:`~rtl.interfaces.DmaStatus`)
        ``fault_addr``: in the cycle after a ``done`` with a fault, the virtual address where
        the access stopped (translation faults) or the physical address (bus errors; for a
        drain, the first failed write); otherwise, while idle, ``cmd.payload.vaddr`` of the
        cycle before, which the ring engine uses to report its own faults' values. ``xlate``
        pulses once per table lookup used in handle mode (statistics). ``inflight``,
        ``burst_done``: bus transactions issued (or being issued) and not completed; one of
        them completes this cycle. Completions come in issue order.
    abort : In
        Device reset: end the command at the next burst boundary (no further burst starts).
    """

    def __init__(self, *, data_width: int = spec.DEFAULT_DATA_WIDTH,
                 disk_bytes: int = spec.DEFAULT_DISK_BYTES, ref_bits: int = 10,
                 set_bits: int = 0, id_width: int = 4, lookups: bool = True):
        self._data_width = check_data_width(data_width)
        check_disk_bytes(disk_bytes, data_width)
        lanes = data_width // 8
        self._disk_words = disk_bytes // lanes
        self._word_bits = disk_word_bits(disk_bytes, data_width)
        self._ref_bits = ref_bits
        self._set_bits = set_bits
        self._lookups = lookups
        self._len_bits = local_bits(disk_bytes)
        super().__init__({
            "abort": In(1),
            "ring": In(DmaPortSignature(self._len_bits, self._word_bits, data_width)),
            "lookup": Out(LookupSignature(ref_bits, set_bits)),
            "disk": Out(DiskSignature(self._word_bits, data_width)),
            "status": Out(DmaStatus()),
            "m_axi": Out(AXI4Signature(addr_width=64, data_width=data_width,
                                       id_width=id_width)),
        })

    @property
    def len_bits(self) -> int:
        return self._len_bits

    def elaborate(self, platform):
        """The parts, in the order of a command: translation requests, command acceptance
        (IDLE), the burst splitter (ADDR), the burst issue (ISSUE, XLATE, XKEEP, RADDR), the
        write pipeline (WADDR), the read path (RDATA), the zero command (ZERO), responses and
        the drain (DRAIN), the ending (``finish``, the fault address). Each adds its datapath,
        then the FSM gets the states of each, in the order of the tuple below (the state
        encoding). Where a register is assigned both in a datapath and in a state, the state
        wins (it comes later); the zero command comes after the read path, whose disk write
        registers it overrides."""
        m = Module()
        e = _Shared(self)
        self._lookup_requests(m, e)
        accept = self._command_acceptance(m, e)
        split = self._burst_splitter(m, e)
        issue = self._burst_issue(m, e)
        write = self._write_pipeline(m, e)
        read = self._read_path(m, e)
        zero = self._zero_command(m, e)
        drain = self._responses(m, e)
        self._ending(m, e)
        with m.FSM() as fsm:
            for states in (accept, split, issue, read, write, zero, drain):
                states()
        one_hot(fsm)
        return m

    def _lookup_requests(self, m, e):
        """Translation requests (no state of their own). The table is read every cycle: at the
        next page's reference in the address cycle of a burst that ends a page (its verdict
        three cycles later), at the current one in XLATE, else at the ring engine's next
        command (``pre``, one cycle before the accept). Only the state steers the read
        address; ``keep`` says which lookup counts: the command's in its accept cycle, XKEEP's,
        the next page's (``keep_next``, the cycle after its address handshake). ``waiting``:
        a lookup was kept in the last cycle, its verdict is not yet registered (never for the
        GPA-only device, whose answers are constants)."""
        R, LS, lk, ring, c = e.R, e.LS, e.lk, e.ring, e.c
        in_idle, write = e.in_idle, e.write
        cur_lo, cur_hi, nxt_lo, nxt_hi = e.cur_lo, e.cur_hi, e.nxt_lo, e.nxt_hi
        key, int_ref, in_xkeep = e.key, e.int_ref, e.in_xkeep
        # A continue command (pre_cont) must follow a read, whose address handshakes are over
        # when it ends: ``cur`` then holds where it ended.
        cur_handle = VirtualPage(cur_hi).handle
        _, _, nxt_handle = lookup_fields(nxt_hi, R)
        pre_ref = key(ring.pre.vaddr[12:])
        _, e.cmd_high, cmd_handle = lookup_fields(c.vaddr[12:], R)
        # Fmax: the table's address is a 2:1 choice between two registers: int_ref, set a cycle
        # ahead, and the ring engine's next address (its early address, rtl/engine.py), chosen
        # by three flip-flops; the IOTLB makes the choice last, after its own (``lset_sel``,
        # ``sset_fast``). int_ref is read in XLATE, for a continue command (``pre.cont``), and
        # from the address cycles of a burst that ends a page but not the command (``b_next``)
        # until that burst is over: its handshake's lookup is kept (``keep_next``), and no
        # command ends in between but by a fault or an abort, after which none is taken in the
        # next cycle. ``finish`` clears ``b_next``: the ring engine's address is read whenever
        # the engine is idle, or ending a command cleanly, without ``pre.cont``.
        use_int = Signal()
        m.d.comb += use_int.eq(e.b_next | e.in_xlate | ring.pre.cont)
        table_key = Mux(use_int, int_ref, pre_ref)
        m.d.comb += lk.ref.eq(table_key[:R])
        if LS:  # the large set (page bits 18 and up), presented apart: a single gate to the
            # IOTLB's second read port
            m.d.comb += [
                lk.lset.eq(int_ref[R:]), lk.lset_sel.eq(~use_int),
                lk.lset_fast.eq(ring.pre.vaddr[30:30 + LS]),
                lk.sset_fast.eq(ring.pre.vaddr[12:12 + LS]),
            ]
        # (a drain and a zero command make no bus access: no lookup is kept for them, so that
        # a zero command's address, which is not an access, raises no IOTLB miss)
        m.d.comb += lk.keep.eq((in_idle & e.cmd.valid & ~c.drain & ~c.zero) | in_xkeep
                               | e.keep_next)
        if self._lookups:
            m.d.sync += e.waiting.eq(lk.keep)
        # (else the GPA-only device: its answers are constants, "GPA mode, no fault", so no
        # burst waits for one)
        m.d.comb += lk.write.eq(Mux(in_idle, c.write, write))
        with m.If(in_idle):
            m.d.comb += [lk.high.eq(Mux(c.cont, e.nxt_high, e.cmd_high)),
                         lk.handle.eq(Mux(c.cont, nxt_handle, cmd_handle))]
        with m.Elif(in_xkeep):
            m.d.comb += [lk.high.eq(e.cur_high), lk.handle.eq(cur_handle)]
        with m.Else():
            m.d.comb += [lk.high.eq(e.next_high), lk.handle.eq(e.next_handle)]
        with m.If(lk.keep):
            m.d.sync += e.fresh.eq(1)
        if LS:  # the IOTLB compares the whole page number and reports a miss's whole address:
            # the command's (late, from the ring engine: apart), else ours (registers)
            m.d.comb += [
                lk.fast.eq(in_idle & ~c.cont), lk.cvaddr.eq(c.vaddr),
                lk.vaddr.eq(Mux(in_xkeep, Cat(cur_lo, cur_hi), Cat(nxt_lo, nxt_hi))),
                lk.used.eq(self.status.xlate), lk.cancel.eq(self.abort),
            ]

    def _command_acceptance(self, m, e):
        """Command acceptance (IDLE, ``cmd.ready`` high): a command is taken in a cycle ``a``
        with ``cmd.valid``; ADDR (a transfer), ZERO or DRAIN follows in ``a + 1``. The
        per-command registers follow the inputs in every idle cycle (they are unused while
        idle), so that ``cmd.valid`` only steers the state: direction and local end, bytes
        left, the page (kept for a ``cont`` command), and the local side's constants (the lane
        rotation, the first and last beat's lanes, the first beat's local word)."""
        W, lw, wb, c, cmd = e.W, e.lw, e.wb, e.c, e.cmd
        nxt_lo, word = e.nxt_lo, e.word
        m.d.comb += e.word_inc.eq(Mux(word == e.last_word, 0, word + 1))
        # Area: what single states use is computed outside the FSM (a comb assignment inside a
        # state would AND each bit with the state). IDLE's:
        lo = Mux(c.cont, nxt_lo, c.vaddr[:12])
        diff = Signal(self._len_bits + 1)
        end_lane = Signal(lw)
        m.d.comb += [diff.eq(c.dpos - lo[:lw]),
                     end_lane.eq(lo[:lw] + c.len[:lw])]
        fm = Signal(W)
        lm = Signal(W)
        for lane in range(W):
            m.d.comb += [fm[lane].eq(lane >= lo[:lw]),
                         lm[lane].eq((end_lane == 0) | (lane < end_lane))]

        def states():
            with m.State("IDLE"):
                m.d.comb += [cmd.ready.eq(1), e.in_idle.eq(1)]
                m.d.sync += [
                    e.write.eq(c.write), e.to_disk.eq(c.disk), e.to_tbl.eq(c.tbl),
                    e.rem.eq(c.len), e.empty.eq(c.len == 0),
                    e.rot.eq(diff[:lw]), e.first_beat.eq(1),
                    # a local start before the first lane's word: the word before local word 0
                    word.eq(Mux(diff[-1] & c.disk, e.last_word, diff[lw:lw + wb])),
                ]
                with m.If(~c.cont):
                    m.d.sync += [nxt_lo.eq(c.vaddr[:12]), e.nxt_hi.eq(c.vaddr[12:]),
                                 e.nxt_high.eq(e.cmd_high)]
                m.d.sync += e.int_ref.eq(e.key(e.nxt_hi))  # a continue command's page
                for lane in range(W):
                    m.d.sync += e.ge_rot[lane].eq(lane >= diff[:lw])
                m.d.sync += [e.first_mask.eq(fm), e.last_mask.eq(lm)]
                # (fa_idle is set here: every command's end sets it, and after a failed one
                # the ring engine halts until a reset, which sets it)
                m.d.sync += [e.zword.eq(c.dpos[lw:lw + wb]), e.z_last.eq(c.len[lw + 1:] == 1)]
                with m.If(cmd.valid):
                    with m.If(c.drain):
                        m.next = "DRAIN"
                    with m.Elif(c.zero):
                        m.next = "ZERO"
                    with m.Else():
                        m.next = "ADDR"
        return states

    def _burst_splitter(self, m, e):
        """The burst splitter (ADDR, one cycle per burst: after the accept, or after the
        previous burst's last read beat or last write beat into the pipeline): the next
        burst's geometry (:func:`burst_window`: one INCR burst per window, never across a page),
        its beat count, whether it ends the command (``b_final``) or its page (``b_cross``:
        the command's page moves on one cycle later, ``inc_hi``, and the next page's lookup is
        made in this burst's address handshake). An aborted or empty command ends here."""
        lw, lb, R, rem, nxt_lo, nxt_hi = e.lw, e.lb, e.R, e.rem, e.nxt_lo, e.nxt_hi
        int_ref, key, arlen, w_cnt, next_high = e.int_ref, e.key, e.arlen, e.w_cnt, e.next_high
        nxt_hi_inc = Signal(52)
        m.d.comb += nxt_hi_inc.eq(nxt_hi + 1)
        inc_high, inc_handle = next_page_fields(nxt_hi, e.nxt_high, R)

        end, reaches, fits, window_next = burst_window(m, rem, nxt_lo, lb)
        inc_hi = Signal()  # the burst set up in the last cycle ends its page
        m.d.sync += inc_hi.eq(0)
        with m.If(inc_hi):
            m.d.sync += [nxt_hi.eq(nxt_hi_inc), e.nxt_high.eq(e.next_high)]
        # Area: ADDR's (outside the FSM, see IDLE's)
        first_m1 = Signal(lw + 1)  # the first byte's lane, minus one
        first_room = Signal(lw + 1)
        m.d.comb += [first_m1.eq(nxt_lo[:lw] - 1), first_room.eq(e.W - nxt_lo[:lw])]

        def states():
            with m.State("ADDR"):
                m.d.comb += e.ring.busy.eq(1)
                beats_m1 = Mux(fits, (rem[:lb + 1] + first_m1.as_signed()) >> lw,
                               ~nxt_lo[lw:lb])
                # one beat: the rest fits in the first beat, or the window has one word left
                # (in parallel with the rest: no wait for beats_m1)
                m.d.sync += e.w_one.eq(Mux(fits, (rem[lw + 1:] == 0)
                                           & (rem[:lw + 1] <= first_room),
                                           nxt_lo[lw:lb].all()))
                # the burst ends on a page boundary: the command moves to the next page (one
                # cycle later, inc_hi), whose lookup the burst's address handshake starts
                cross = reaches & nxt_lo[lb:12].all()
                m.d.sync += [
                    # the masks as local lanes, for read beats (at least two cycles away)
                    e.first_local.eq(Cat(*_rotl_lanes(list(e.first_mask), e.rot, e.W))),
                    e.last_local.eq(Cat(*_rotl_lanes(list(e.last_mask), e.rot, e.W))),
                    e.cur_lo.eq(nxt_lo), e.cur_hi.eq(nxt_hi), e.cur_high.eq(e.nxt_high),
                    nxt_lo.eq(Mux(reaches, Cat(Const(0, lb), window_next),
                                  Cat(end[:lb], nxt_lo[lb:]))),
                    rem.eq(Cat(end[:lb], end[lb:] - 1)),  # end - B (the last burst: unused)
                    e.b_final.eq(fits), e.b_cross.eq(cross), e.b_next.eq(cross & ~fits),
                    e.b_err.eq(0), inc_hi.eq(cross),
                    arlen.eq(beats_m1), w_cnt.eq(beats_m1),
                    int_ref.eq(key(nxt_hi_inc)), next_high.eq(inc_high),
                    e.next_handle.eq(inc_handle),
                ]
                with m.If(self.abort | e.empty):  # (an empty command moves nothing)
                    e.finish()
                with m.Else():
                    m.next = "ISSUE"
        return states

    def _burst_issue(self, m, e):
        """The burst issue (ISSUE, then RADDR or WADDR until the address handshake ``h``).
        ISSUE, from the cycle after ADDR, waits while the burst's page verdict is not yet
        registered (``waiting``; with an IOTLB, while it misses); then the address goes out
        in that cycle if the verdict allows it and the order rule does (a read waits for every
        posted write's response, a write for a free response slot), and is held until the
        handshake. A failed check ends the command in ISSUE, with no valid raised; a stale
        verdict (the table changed) is looked up again (XLATE reads the table, XKEEP keeps the
        lookup, ISSUE waits for its verdict). RADDR holds ``arvalid``; a read's handshake
        moves to RDATA. The burst's address is ``burst_addr``, kept in ``b_addr`` for a fault
        report."""
        lw, lk, axi, write = e.lw, e.lk, e.axi, e.write
        waiting, int_ref, key, cur_hi, nxt_hi = e.waiting, e.int_ref, e.key, e.cur_hi, e.nxt_hi
        in_raddr, in_waddr, aw_sent = e.in_raddr, e.in_waddr, e.aw_sent
        in_issue = Signal()
        burst_addr = e.burst_addr = Signal(64)
        # (with a failed check, the virtual address: no valid goes out with it, and b_addr
        # keeps it as the fault's address)
        m.d.comb += burst_addr.eq(Cat(e.cur_lo, Mux(lk.mode & lk.ok, lk.frame, cur_hi)))
        m.d.comb += [
            axi.awid.eq(0), axi.arid.eq(0),
            axi.awburst.eq(BURST_INCR), axi.arburst.eq(BURST_INCR),
            axi.awsize.eq(lw), axi.arsize.eq(lw),
            axi.awcache.eq(0b0011), axi.arcache.eq(0b0011),
            axi.awprot.eq(0b010), axi.arprot.eq(0b010),
            axi.awlock.eq(0), axi.arlock.eq(0),
            axi.awaddr.eq(burst_addr), axi.araddr.eq(burst_addr),
            axi.awlen.eq(e.arlen), axi.arlen.eq(e.arlen),
        ]
        go = Signal()  # ISSUE: the burst may go out
        avalid = Signal()
        a_hs = e.a_hs
        m.d.comb += [
            e.a_phase.eq(in_issue | in_raddr | (in_waddr & ~aw_sent)),
            avalid.eq((in_issue & go) | in_raddr | (in_waddr & ~aw_sent)),
            axi.arvalid.eq(avalid & ~write), axi.awvalid.eq(avalid & write),
            a_hs.eq(avalid & Mux(write, axi.awready, axi.arready)),
            e.w_start.eq(in_issue & go & write),
        ]
        m.d.sync += e.keep_next.eq(a_hs & e.b_next)
        with m.If(e.a_phase):  # (the value of the handshake's cycle stays)
            m.d.sync += e.b_addr.eq(burst_addr)
        with m.Elif(e.in_drain):
            m.d.sync += e.b_addr.eq(0)  # a drain's fault reports werr_addr

        def states():
            finish = e.finish
            with m.State("ISSUE"):
                m.d.comb += [e.ring.busy.eq(1), in_issue.eq(1)]
                order_ok = Mux(write, ~e.bq_full, ~e.posted)
                m.d.comb += go.eq(~self.abort & ~waiting & ~lk.stale & lk.ok
                                  & order_ok)
                with m.If(~waiting):
                    m.d.sync += e.fresh.eq(0)
                    m.d.comb += self.status.xlate.eq(e.fresh & lk.mode & ~lk.stale)
                with m.If(self.abort & ~waiting):
                    finish()
                with m.Elif(waiting):
                    pass
                if e.LS:
                    with m.Elif(lk.miss):
                        pass  # an IOTLB miss: wait until the hypervisor resolves it
                with m.Elif(lk.stale):
                    m.d.sync += int_ref.eq(key(cur_hi))
                    m.next = "XLATE"  # never issue a burst with a translation that is stale
                with m.Elif(~lk.ok):
                    finish(lk.fault, FA_BURST)  # no address goes out
                    m.d.comb += e.ring.failed.eq(1)
                with m.Elif(~order_ok):
                    pass  # wait for a response slot, or for the posted writes (reads)
                with m.Elif(write):
                    m.d.sync += aw_sent.eq(axi.awready)
                    with m.If(axi.awready & e.w_last_issue):
                        e.burst_handed_over()
                    with m.Else():
                        m.next = "WADDR"
                with m.Else():
                    with m.If(axi.arready):
                        m.next = "RDATA"
                    with m.Else():
                        m.next = "RADDR"

            with m.State("XLATE"):  # a lookup again: the table changed since the last one
                m.d.comb += [e.ring.busy.eq(1), e.in_xlate.eq(1)]
                m.d.sync += int_ref.eq(key(nxt_hi))  # (the next page's, as ADDR set it)
                with m.If(self.abort):
                    finish()
                with m.Else():
                    m.next = "XKEEP"
            with m.State("XKEEP"):
                m.d.comb += [e.ring.busy.eq(1), e.in_xkeep.eq(1), lk.keep.eq(1)]
                m.next = "ISSUE"

            with m.State("RADDR"):  # arvalid held until the handshake
                m.d.comb += [e.ring.busy.eq(1), in_raddr.eq(1)]
                with m.If(axi.arready):
                    m.next = "RDATA"
        return states

    def _write_pipeline(self, m, e):
        """The write pipeline: a burst's beats issue (S0: the beat's local read) from its
        address cycle on, one a cycle while there is room, side by side with the address
        (WADDR: the burst is handed over once the address and the last beat are); S1 waits for
        the RAM disk's two-cycle read, S2 rotates the beat into bus lanes (the one
        :func:`lane_rotator`, ``rotated``, shared with reads) and pushes it into the W FIFO
        (``rtl/fifo.py``): a beat issued at ``h + j`` leaves on the W channel at ``h + 4 + j``
        (with no back-pressure)."""
        W, lw, axi, disk, ones = e.W, e.lw, e.axi, e.disk, e.ones
        word, word_inc, ge_rot, to_disk = e.word, e.word_inc, e.ge_rot, e.to_disk
        first_beat, w_active, w_cnt, w_one = e.first_beat, e.w_active, e.w_cnt, e.w_one
        w_last_issue, occ = e.w_last_issue, e.occ
        m.submodules.wfifo = wfifo = LutRamFIFO(width=8 * W + W + 1, depth=W_FIFO_DEPTH)
        s1_valid, s2_valid = Signal(name="s1_valid"), Signal(name="s2_valid")
        s1_disk, s2_disk = Signal(name="s1_disk"), Signal(name="s2_disk")
        s1_strb, s2_strb = Signal(W, name="s1_strb"), Signal(W, name="s2_strb")
        s1_last, s2_last = Signal(name="s1_last"), Signal(name="s2_last")
        # rotation amount towards the bus lanes
        s1_rot, s2_rot = Signal(lw, name="s1_rot"), Signal(lw, name="s2_rot")
        s1_ge, s2_ge = Signal(W, name="s1_ge"), Signal(W, name="s2_ge")
        # scratch source, combined
        s1_scratch, s2_scratch = Signal(8 * W, name="s1_scratch"), Signal(8 * W, name="s2_scratch")
        rotated = e.rotated = lane_rotator(m, axi.rdata, e.rot, s2_valid, s2_disk, s2_rot,
                                           s2_ge, s2_scratch, disk)
        m.d.comb += [
            wfifo.w_en.eq(s2_valid),
            wfifo.w_data.eq(Cat(rotated, s2_strb, s2_last)),
            axi.wvalid.eq(wfifo.r_rdy),
            axi.wdata.eq(wfifo.r_data[:8 * W]),
            axi.wstrb.eq(wfifo.r_data[8 * W:9 * W]),
            axi.wlast.eq(wfifo.r_data[9 * W]),
            wfifo.r_en.eq(axi.wready),
        ]
        scratch_comb = scratch_source(m, word, word_inc, ge_rot, e.ring.payload, e.ring.serial)

        w_go = Signal()
        w_issue = Signal()
        # Fmax: whether one more beat may issue next cycle is a register (the beats in S1, S2
        # and the W FIFO, counted), so that issuing a beat waits for no arithmetic.
        w_room = Signal(init=1)
        occ_next = Signal(range(W_FIFO_DEPTH + 2))
        m.d.comb += occ_next.eq(occ + w_issue - (axi.wvalid & axi.wready))
        m.d.sync += [occ.eq(occ_next), w_room.eq(occ_next < W_FIFO_DEPTH)]
        m.d.comb += [
            w_go.eq(w_active | e.w_start),
            w_issue.eq(w_go & w_room),
            w_last_issue.eq(w_issue & w_one),
            disk.rd_word.eq(word),
        ]

        def beat_mask(last_of_burst):
            return (Mux(first_beat, e.first_mask, ones)
                    & Mux(last_of_burst & e.b_final, e.last_mask, ones))

        with m.If(w_go):
            m.d.sync += w_active.eq(~w_last_issue)
        # Area: S1 takes the beat whether or not it issues (only the valid bit says): no wide
        # enable
        m.d.sync += [
            s1_valid.eq(w_issue),
            s1_disk.eq(to_disk), s1_strb.eq(beat_mask(w_one)), s1_last.eq(w_one),
            s1_rot.eq(-e.rot), s1_ge.eq(ge_rot),
        ]
        # Area: the scratch source, cleared by the flip-flops' reset for a disk beat (no LUT)
        with m.If(to_disk):
            m.d.sync += s1_scratch.eq(0)
        with m.Else():
            m.d.sync += s1_scratch.eq(scratch_comb)
        with m.If(w_issue):
            m.d.sync += [word.eq(word_inc), first_beat.eq(0), w_cnt.eq(w_cnt - 1),
                         w_one.eq(w_cnt == 1)]
        m.d.sync += [s2_valid.eq(s1_valid), s2_disk.eq(s1_disk), s2_strb.eq(s1_strb),
                     s2_last.eq(s1_last), s2_rot.eq(s1_rot), s2_ge.eq(s1_ge),
                     s2_scratch.eq(s1_scratch)]

        def states():
            with m.State("WADDR"):
                # The address and the beats of a burst go out side by side; the burst is
                # handed over once both are (its response is collected in the background).
                m.d.comb += [e.ring.busy.eq(1), e.in_waddr.eq(1)]
                with m.If(axi.awready):
                    m.d.sync += e.aw_sent.eq(1)
                with m.If((e.aw_sent | axi.awready) & (w_last_issue | ~w_active)):
                    e.burst_handed_over()
        return states

    def _read_path(self, m, e):
        """The read path (RDATA, ``rready`` high): each beat, rotated into local lanes, goes
        to local word ``word`` (lanes >= rot) and ``word + 1``: to the capture register at
        once (``cap_we``, the ring engine reads it in the next cycle), to the RAM disk or the
        ring engine's table buffer one cycle later, from registers (area and Fmax: the disk's
        block RAMs are spread over the die; the disk is never read and written by commands in
        flight together). The burst ends with its last beat (``rlast``); from a beat with a
        bus error on, no beat is written, and the command ends with the burst's last beat,
        with FAULT_BUS_ERROR."""
        W, ones, axi, ring, disk = e.W, e.ones, e.axi, e.ring, e.disk
        word, word_inc, ge_rot, rotated = e.word, e.word_inc, e.ge_rot, e.rotated
        to_disk, to_tbl = e.to_disk, e.to_tbl
        r_take = Signal()  # a good beat arrives (this cycle)
        r_last = Signal()  # ... the command's last
        d_word, d_data, d_en_lo, d_en_hi = e.d_word, e.d_data, e.d_en_lo, e.d_en_hi
        local_mask = Signal(W)  # the read beat's local lanes that carry command bytes
        m.d.comb += local_mask.eq(Mux(e.first_beat, e.first_local, ones)
                                  & Mux(r_last, e.last_local, ones))
        en_lo = Signal(W)
        en_hi = Signal(W)
        m.d.comb += [en_lo.eq(local_mask & ge_rot), en_hi.eq(local_mask & ~ge_rot)]
        # The indirect table buffer takes the same word and data with enables of its own.
        t_en_lo = Signal(W, reset_less=True)
        t_en_hi = Signal(W, reset_less=True)
        m.d.comb += [disk.wr_word.eq(d_word), disk.wr_data.eq(d_data),
                     disk.wr_en_lo.eq(d_en_lo), disk.wr_en_hi.eq(d_en_hi),
                     ring.tbl_word.eq(d_word), ring.tbl_data.eq(d_data),
                     ring.tbl_en_lo.eq(t_en_lo), ring.tbl_en_hi.eq(t_en_hi)]
        m.d.sync += [d_word.eq(word), d_data.eq(rotated),
                     d_en_lo.eq(Mux(r_take & to_disk & ~to_tbl, en_lo, 0)),
                     d_en_hi.eq(Mux(r_take & to_disk & ~to_tbl, en_hi, 0)),
                     t_en_lo.eq(Mux(r_take & to_tbl, en_lo, 0)),
                     t_en_hi.eq(Mux(r_take & to_tbl, en_hi, 0))]
        cap_words = CAP_BYTES // W
        cw = exact_log2(cap_words)
        m.d.comb += ring.cap_wdata.eq(Cat(*[rotated] * cap_words))
        with m.If(r_take & ~to_disk):
            for k in range(CAP_BYTES):
                w_k, lane = divmod(k, W)
                lo_here = (word[:cw] == w_k) if cw else Const(1)
                hi_here = (word_inc[:cw] == w_k) if cw else Const(1)
                m.d.comb += ring.cap_we[k].eq(Mux(ge_rot[lane], en_lo[lane] & lo_here,
                                                  en_hi[lane] & hi_here))

        def states():
            with m.State("RDATA"):
                m.d.comb += [ring.busy.eq(1), axi.rready.eq(1)]
                with m.If(axi.rvalid):
                    ok = axi.rresp == RESP_OKAY
                    m.d.comb += [r_take.eq(ok & ~e.b_err), r_last.eq(axi.rlast & e.b_final)]
                    m.d.sync += [word.eq(word_inc), e.first_beat.eq(0)]
                    with m.If(~ok):
                        m.d.sync += e.b_err.eq(1)
                    with m.If(axi.rlast):
                        with m.If(~ok | e.b_err):
                            e.finish(spec.FAULT_BUS_ERROR, FA_BURST)
                        with m.Else():
                            e.burst_handed_over()
        return states

    def _zero_command(self, m, e):
        """The zero command (ZERO, from ``a + 1``): two whole disk words of zeros a cycle
        through the read path's disk write registers (which it overrides), no bus access and
        no lookup; done in its last cycle, ``a + len / (2 W)`` (``a + 1`` when ``len`` is 0).
        A reset lets it finish, so that the disk is zeroed whole or not at all."""
        lw, rem, empty, zword = e.lw, e.rem, e.empty, e.zword
        with m.If(e.in_zero):
            m.d.sync += [e.d_word.eq(zword), e.d_data.eq(0), e.d_en_lo.eq(e.ones),
                         e.d_en_hi.eq(e.ones)]

        def states():
            with m.State("ZERO"):
                # rem and dpos are multiples of 512, so of 2 W; a reset lets it finish (no bus
                # access, at most disk_bytes / 2 W cycles), so the disk is zeroed whole or not
                m.d.comb += [e.ring.busy.eq(1), e.in_zero.eq(~empty)]
                # Fmax: whether rem is 2 W is a register (rem's bits above lw are one less
                # each cycle), not a compare in front of ``done``
                m.d.sync += [zword.eq(zword + 2), rem.eq(rem - 2 * e.W),
                             e.z_last.eq(rem[lw + 1:] == 2)]
                with m.If(empty | e.z_last):
                    e.finish()
        return states

    def _responses(self, m, e):
        """Write responses and the drain (DRAIN): :func:`posted_responses` remembers each
        accepted write address until its response; a drain is done in ``max(a + 1, b + 1)``,
        ``b`` the last outstanding response's cycle, with FAULT_BUS_ERROR if one failed since
        the last drain or reset (the first one's address in ``werr_addr``). Also ``busy`` and
        the status counters."""
        axi, ring = e.axi, e.ring
        bq_level, werr, e.werr_addr, e.werr_clear, posted, e.bq_full = posted_responses(
            m, axi, e.burst_addr, e.a_hs & e.write)
        e.posted = posted
        with m.If(self.abort & ~posted):
            m.d.sync += werr.eq(0)  # a reset forgets the responses of the old requests
        pipe_busy = Signal()
        rd_inflight = Signal()
        m.d.comb += [
            pipe_busy.eq(posted | e.w_active | (e.occ != 0)),
            ring.busy.eq(pipe_busy),
            self.status.inflight.eq(bq_level + rd_inflight + axi.awvalid),
            self.status.burst_done.eq(axi.bvalid | (axi.rvalid & axi.rready & axi.rlast)),
            ring.r_last_beat.eq(axi.rvalid & axi.rready & axi.rlast),
            rd_inflight.eq(axi.arvalid | axi.rready),
        ]

        def states():
            with m.State("DRAIN"):
                m.d.comb += [ring.busy.eq(1), e.in_drain.eq(1)]
                with m.If(~pipe_busy):
                    m.d.sync += werr.eq(0)
                    with m.If(werr):
                        e.finish(spec.FAULT_BUS_ERROR, FA_WRITE)
                    with m.Else():
                        e.finish()
        return states

    def _ending(self, m, e):
        """A command's end (``finish``: ``done`` this cycle, ``fault`` its cause; back to
        IDLE) and the fault address. Area: which register holds the address (FA_*) is set
        when a command ends: a burst that failed its translation or got an error keeps its
        address in b_addr (virtual, physical), a failed posted write in werr_addr; while
        idle, nxt follows cmd_vaddr, for the ring engine's own faults. For a command's fault
        the other of b_addr and werr_addr is 0 (cleared by the flip-flops' reset: b_addr
        while draining, werr_addr as a burst fails, after which the ring engine halts and
        drains no more), so the address is one 2:1 choice, not two."""
        ring, b_final = e.ring, e.b_final
        fa_idle = Signal(init=1)
        m.d.comb += self.status.fault_addr.eq(Mux(fa_idle, Cat(e.nxt_lo, e.nxt_hi),
                                                  e.b_addr | e.werr_addr))
        with m.If(self.abort):
            m.d.sync += fa_idle.eq(1)

        def finish(cause=0, src=FA_IDLE):
            """The command ends this cycle (with fault ``cause``, its address in ``src``)."""
            m.d.comb += [ring.done.eq(1), ring.fault.eq(cause), ring.failed.eq(cause != 0)]
            m.d.sync += [fa_idle.eq(src == FA_IDLE), e.b_next.eq(0)]
            if src == FA_BURST:
                m.d.comb += e.werr_clear.eq(1)
            m.next = "IDLE"

        def burst_handed_over():
            """The burst is over (a read's last beat, a write's address and last beat): the
            command ends if it was the last or a reset aborts, else ADDR splits off the next."""
            with m.If(b_final | self.abort):
                finish()
            with m.Else():
                m.next = "ADDR"

        e.finish, e.burst_handed_over = finish, burst_handed_over
