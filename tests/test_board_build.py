"""The board build's plumbing without running the FPGA toolchain: the ULX3S design elaborates
with its pins, the GPA-only device elaborates without a grant table, the report's parsers read
the tools' outputs, and the Verilog instantiation template compiles against the device."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from amaranth.back import rtlil

from rtl.board.report import _blocks, cell_counts, critical_path_summary
from rtl.board.top import BoardTop
from rtl.export import main as export_main
from rtl.top import VirtioBlkHandle


def test_ulx3s_design_has_its_pins():
    ulx3s = pytest.importorskip("amaranth_boards.ulx3s")
    from rtl.board.build import ULX3SBoard

    plan = ulx3s.ULX3S_85F_Platform().prepare(ULX3SBoard(BoardTop()), name="ulx3s")
    lpf = plan.files["ulx3s.lpf"].decode() if isinstance(plan.files["ulx3s.lpf"], bytes) \
        else plan.files["ulx3s.lpf"]
    for pin in ("G2", "M1", "L4", "B2"):  # clk25, FTDI rx and tx, LED 0
        assert f'SITE "{pin}"' in lpf


def test_gpa_only_device_has_no_grant_table():
    text = rtlil.convert(VirtioBlkHandle(entries=256, translation=False),
                         name="virtio_blk_handle")
    xlate = text[text.index("module \\virtio_blk_handle.xlate"):]
    xlate = xlate[:xlate.index("\nend\n")]
    assert "memory" not in xlate and "$mem" not in xlate


def test_board_top_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"^Guest memory size must be a power of two"):
        BoardTop(mem_bytes=3000)
    with pytest.raises(ValueError, match=r"^Clocks per bit must be an integer of at least 4"):
        BoardTop(clks_per_bit=2)


STAT = """
=== virtio_blk_handle ===
    12 wires
     9 cells
     1   $scopeinfo
     5   LUT4
     2   CCU2C
     1   DP16KD
=== virtio_blk_handle.disk ===
     7   LUT4
=== virtio_blk_handle.xlate$12 ===
     3   LUT4
     1   CCU2C
=== design hierarchy ===
    15   LUT4
     3   CCU2C
"""


def test_report_parsers():
    counts = cell_counts(STAT)
    assert counts["virtio_blk_handle"] == {"LUT4": 5, "CCU2C": 2, "DP16KD": 1}
    assert counts["design hierarchy"] == {"LUT4": 15, "CCU2C": 3}
    assert _blocks(STAT) == {"(top glue)": 9, "disk": 7, "xlate": 5}
    path = {"path": [
        {"type": "clk-to-q", "delay": 5.8, "from": {"cell": "xlate$283.table.1"},
         "to": {"cell": "xlate$283.table.1"}},
        {"type": "routing", "delay": 1.5, "from": {"cell": "xlate$283.table.1"},
         "to": {"cell": "hv.r_LUT4"}},
        {"type": "logic", "delay": 0.4, "from": {"cell": "hv.r_LUT4"},
         "to": {"cell": "dma.x_LUT4"}},
        {"type": "setup", "delay": 0.1, "from": {"cell": "dma.x_LUT4"},
         "to": {"cell": "engine.q_FF"}},
    ]}
    s = critical_path_summary(path)
    assert s["blocks"] == ["xlate", "hv", "dma", "engine"]
    assert s["logic_levels"] == 1 and s["total_ns"] == 7.8


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
def test_instantiation_template_compiles(tmp_path):
    v = tmp_path / "dev.v"
    t = tmp_path / "inst.v"
    assert export_main(["-o", str(v), "--entries", "256", "--template", str(t)]) == 0
    text = t.read_text()
    assert ".m_axi__araddr" in text and "wire   [63:0] m_axi_araddr;" in text
    wrapper = tmp_path / "wrapper.v"
    wrapper.write_text("module wrapper;\n" + text + "endmodule\n")
    res = subprocess.run(["iverilog", "-g2005", "-o", str(tmp_path / "a.out"), "-s", "wrapper",
                          str(wrapper), str(v)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr.lower() or "port" not in res.stderr.lower(), res.stderr
