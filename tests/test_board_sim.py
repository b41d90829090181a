"""The board top in co-simulation: the UART host link end to end (``tb/test_board.py``).

Each case builds ``board_top`` for its configuration under ``build/sim/board_<tag>/`` and runs
the demo workload through ``sw.link.UartLink`` over the simulated UART pins. ``make board-sim``
runs the long form (``VHB_BOARD_LONG=1``): the full demo workload in both modes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parent.parent


def run_board(params: dict, name: str) -> None:
    from rtl.board.build import SIM_TOP, generate_sim_verilog
    from tb.runner import compile_top, run

    top = {k: params[k] for k in ("data_width", "mem_bytes", "clks_per_bit") if k in params}
    top.setdefault("clks_per_bit", 4)
    tag = "_".join(f"{k}{v}" for k, v in sorted(top.items()))
    # 100 MHz simulated clock; a short frame timeout keeps a lost byte cheap
    build_dir = compile_top(ROOT / "build" / "sim" / f"board_{tag}", SIM_TOP,
                            lambda v: generate_sim_verilog(v, clk_hz=100_000_000,
                                                           frame_timeout=100_000, **top))
    tests, failed, xml = run("tb.test_board", top=SIM_TOP, build_dir=build_dir,
                             params={**params, **top}, results_name=name)
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
