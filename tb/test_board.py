"""The board top end to end: the host transport drives its UART pins, the demo runs.

cocotbext-uart's source and sink stand for the FTDI chip. The host side is the real one:
``sw.link.UartLink`` frames every register and memory access, and ``sw.board.run_demo`` runs
the guest driver and hypervisor model over it, comparing every batch with the reference
model. The driver is ``async`` but treats guest memory as synchronous, so it runs in a cocotb
bridge thread (``cocotb.task.bridge``) with its own asyncio loop; each byte-pipe operation goes back
to the simulator through ``cocotb.task.resume`` and blocks the thread until the bytes have been
sent or received, which is what a blocking serial port does on the host.

Beyond what ``python -m sw.board`` checks on hardware, the bench records the device's ``m_axi``
transactions inside the board top and compares them with the reference, transaction by
transaction (``tb/scoreboard.py``).

Parameters (:func:`tb.runner.params`): the board top's (``data_width``, ``mem_bytes``,
``clks_per_bit``) and the demo's (``mode``, ``requests``, ``sizes``, ``seed``, ...). One mode
per simulator process: the board starts from its configuration state.
"""

from __future__ import annotations

import asyncio
import logging
import time

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.uart import UartSink, UartSource

from sw.board import DemoConfig, DemoResult, run_demo
from sw.link import UartLink

from .monitor import BusRecord
from .runner import params
from .scoreboard import compare_bytes, compare_transactions

CLOCK_NS = 10


class CocotbPipe:
    """``sw.link.BytePipe`` on the simulated UART pins, for use from a bridge thread."""

    def __init__(self, source: UartSource, sink: UartSink, baud: int) -> None:
        self.source = source
        self.sink = sink
        self.baud = baud

    # blocking side (the bridge thread)
    def write(self, data: bytes) -> None:
        resume(self._write)(bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        return resume(self._read)(n, timeout)

    # simulator side
    async def _write(self, data: bytes) -> None:
        await self.source.write(data)

    async def _read(self, n: int, timeout: float) -> bytes:
        # timeout is in seconds of board time; add the bridge's own latency
        deadline = get_sim_time(unit="ns") + timeout * 1e9 + 2000 * CLOCK_NS
        while self.sink.count() < n:
            left = deadline - get_sim_time(unit="ns")
            if left <= 0:
                raise TimeoutError(f"{self.sink.count()} of {n} byte(s) from the board")
            # sleep until the missing bytes could have arrived, or the first of them does
            step = max((n - self.sink.count()) * 10 * 1e9 / self.baud, CLOCK_NS)
            self.sink.sync.clear()
            await First(self.sink.sync.wait(), Timer(int(min(step, left)), unit="ns"))
        return bytes(self.sink.read_nowait(n))


class QuietMonitor:
    """The ``m_axi`` recorder of ``tb/monitor.py`` (same :class:`BusRecord` results), but
    sampling clock edges only while a transaction is open or a valid is high: most of a board
    run is UART traffic with the device idle, and a Python callback every cycle would
    dominate the simulation time."""

    SIGNALS = ("awvalid", "awready", "awaddr", "awlen", "wvalid", "wready", "wdata", "wstrb",
               "wlast", "bvalid", "bready", "arvalid", "arready", "araddr", "arlen", "rvalid",
               "rready", "rlast")

    def __init__(self, dut, data_width: int) -> None:
        self.dut = dut
        self.lanes = data_width // 8
        self.records: list[BusRecord] = []
        self.h = {name: getattr(dut, f"m_axi__{name}") for name in self.SIGNALS}

    def start(self) -> None:
        cocotb.start_soon(self._run())

    def _v(self, name: str) -> int:
        v = self.h[name].value
        return int(v) if v.is_resolvable else 0

    async def _run(self) -> None:
        open_w: list[BusRecord] = []
        open_r: list[BusRecord] = []
        wait_b: list[BusRecord] = []
        pending_w: list[tuple[int, int, int]] = []
        h = self.h
        while True:
            if not (open_w or open_r or wait_b or pending_w or self._v("awvalid")
                    or self._v("arvalid") or self._v("wvalid")):
                await First(RisingEdge(h["awvalid"]), RisingEdge(h["arvalid"]),
                            RisingEdge(h["wvalid"]))
            await RisingEdge(self.dut.clk)
            cycle = int(get_sim_time(unit="ns")) // CLOCK_NS
            v = self._v
            if v("arvalid") and v("arready"):
                rec = BusRecord("R", v("araddr"), v("arlen") + 1, cycle)
                self.records.append(rec)
                open_r.append(rec)
            if v("awvalid") and v("awready"):
                rec = BusRecord("W", v("awaddr"), v("awlen") + 1, cycle)
                self.records.append(rec)
                open_w.append(rec)
            if v("wvalid") and v("wready"):
                pending_w.append((v("wdata"), v("wstrb"), v("wlast")))
            while pending_w and open_w:
                wdata, wstrb, wlast = pending_w.pop(0)
                rec = open_w[0]
                base = (rec.addr // self.lanes + rec.beats_seen) * self.lanes
                rec.strobes += [(base + lane, wdata >> (8 * lane) & 0xFF)
                                for lane in range(self.lanes) if wstrb >> lane & 1]
                rec.beats_seen += 1
                if wlast:
                    rec.first, rec.data = rec.write_range()
                    wait_b.append(open_w.pop(0))
            if v("bvalid") and v("bready") and wait_b:
                wait_b.pop(0)
            if v("rvalid") and v("rready") and open_r:
                rec = open_r[0]
                rec.beats_seen += 1
                if v("rlast"):
                    open_r.pop(0)


@cocotb.test()
async def test_board_demo(dut):
    """The demo workload over the UART link."""
    p = params()
    clks_per_bit = p.get("clks_per_bit", 4)
    baud = round(1e9 / (CLOCK_NS * clks_per_bit))
    # the clock in the GPI layer: no Python callback per cycle
    Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()
    dut.uart_rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    for name in ("uart_rx", "uart_tx"):
        logging.getLogger(f"cocotb.{dut._name}.{name}").setLevel(logging.WARNING)
    source = UartSource(dut.uart_rx, baud=baud)
    sink = UartSink(dut.uart_tx, baud=baud)
    monitor = QuietMonitor(dut, data_width=p.get("data_width", 64))
    monitor.start()
    pipe = CocotbPipe(source, sink, baud)
    log = logging.getLogger("cocotb.board")
    messages: list[str] = []

    def run(cfg: DemoConfig) -> DemoResult:
        # in the bridge thread: no cocotb logging here, the simulator is not running
        link = UartLink(pipe)
        return asyncio.run(run_demo(link, cfg, log=progress))

    def progress(msg: str) -> None:
        messages.append(msg)
        if p.get("progress"):
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    mode = p.get("mode", "handle")
    cfg = DemoConfig(handle_mode=mode == "handle", seed=p.get("seed", 1),
                     requests=p.get("requests", 8), batch=p.get("batch", 4),
                     sizes=tuple(p.get("sizes", [512, 4096])),
                     queue_size=p.get("queue_size", 16), max_sectors=p.get("max_sectors", 4),
                     # a freshly configured board: memory is zero, the disk as initialised
                     restore_disk=False, clear_memory=False,
                     readback_disk=p.get("readback_disk", False),
                     compare_memory=p.get("compare_memory", False))
    result = await bridge(run)(cfg)
    for msg in messages:
        log.info("%s", msg)
    compare_transactions(result.ref.transactions, monitor.records, p.get("data_width", 64))
    if not cfg.compare_memory:
        # all of guest memory through the back door (over the link it is 655k UART bits)
        ram = dut.mem.ram
        lanes = p.get("data_width", 64) // 8
        actual = b"".join(int(ram[i].value).to_bytes(lanes, "little")
                          for i in range(len(result.ref.mem) // lanes))
        compare_bytes("guest memory (block RAM)", result.ref.mem.snapshot(), actual)
    log.info("%s mode: %d bus transactions match the reference; %s", mode,
             len(result.ref.transactions), result.summary)
