"""The board top in co-simulation: the UART host link end to end (``tb/test_board.py``).

Each case builds ``board_top`` for its configuration under ``build/sim/board_<tag>/`` and runs
the demo workload through ``sw.link.UartLink`` over the simulated UART pins. ``make board-sim``
runs the long form (``VHB_BOARD_LONG=1``): the full demo workload in both modes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parent.parent


def _digest() -> str:
    h = hashlib.sha256()
    for path in [*sorted((ROOT / "rtl").rglob("*.py")), ROOT / "models" / "spec.py"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_board(params: dict, name: str) -> None:
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    from rtl.board.build import SIM_TOP, generate_sim_verilog
    from tb.runner import bench_env, check_simulator

    check_simulator()
    top = {k: params[k] for k in ("data_width", "mem_bytes", "clks_per_bit") if k in params}
    top.setdefault("clks_per_bit", 4)
    tag = "_".join(f"{k}{v}" for k, v in sorted(top.items()))
    build_dir = ROOT / "build" / "sim" / f"board_{tag}"
    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner("icarus")
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        verilog = build_dir / f"{SIM_TOP}.v"
        stamp = build_dir / "rtl.digest"
        fresh = not (verilog.exists() and stamp.exists() and stamp.read_text() == _digest())
        if fresh:
            # 100 MHz simulated clock; a short frame timeout keeps a lost byte cheap
            generate_sim_verilog(verilog, clk_hz=100_000_000, frame_timeout=100_000, **top)
        runner.build(sources=[verilog], hdl_toplevel=SIM_TOP, build_dir=build_dir,
                     timescale=("1ns", "1ps"), always=fresh)
        stamp.write_text(_digest())
    test_dir = build_dir / "runs" / name
    test_dir.mkdir(parents=True, exist_ok=True)
    xml = test_dir / "results.xml"
    xml.unlink(missing_ok=True)
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore::DeprecationWarning",
           **bench_env({**params, **top})}
    with contextlib.suppress(SystemExit):
        runner.test(test_module="tb.test_board", hdl_toplevel=SIM_TOP,
                    hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=test_dir,
                    extra_env=env, results_xml=str(xml))
    assert xml.exists(), f"the board simulation ended without results ({build_dir})"
    tests, failed = get_results(xml)
    assert tests == 1 and failed == 0, f"board simulation {name} failed: log above, {xml}"


# About two minutes each on Icarus (the UART moves ~10 KB at 25 Mbaud simulated, 4 cycles a
# bit; Icarus manages a few thousand cycles a second of this design while bytes move).
SHORT = {"requests": 4, "batch": 4, "sizes": [], "queue_size": 16, "max_sectors": 4}
# make board-sim: the demo's shape (about an hour per mode; guest memory is compared through
# the back door, the RAM disk is read back through the driver)
LONG = {"requests": 32, "batch": 8, "sizes": [512, 4096, 16384], "queue_size": 64,
        "max_sectors": 8, "readback_disk": True}


# make test runs the short form in handle mode (the link and the board top are the same in both
# modes; tests/test_sim.py covers GPA mode); make board-sim runs the long form in both.
MODES = ["handle", "gpa"] if os.environ.get("VHB_BOARD_LONG") == "1" else ["handle"]


@pytest.mark.parametrize("mode", MODES)
def test_board_link(mode):
    """A demo over the UART link, checked against the reference."""
    long = os.environ.get("VHB_BOARD_LONG") == "1"
    run_board({**(LONG if long else SHORT), "mode": mode,
               "progress": os.environ.get("VHB_BOARD_PROGRESS") == "1"},
              f"demo_{mode}{'_long' if long else ''}")
