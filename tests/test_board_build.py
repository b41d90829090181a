"""The board build's plumbing without running the FPGA toolchain: the ULX3S design elaborates
with its pins, the GPA-only device elaborates without a grant table, the report's parsers read
the tools' outputs, the report's feature forms leave out the features they name and its
Markdown shows their cost, and the Verilog instantiation template compiles against the
device."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from amaranth.back import rtlil

from models import spec
from rtl.board.report import (
    FEATURE_FORMS,
    Config,
    _blocks,
    cell_counts,
    critical_path_summary,
    main,
    write_markdown,
)
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


ALL_ON = (spec.BASE_FEATURES | 1 << spec.VIRTIO_F_INDIRECT_DESC
          | 1 << spec.VIRTIO_RING_F_EVENT_IDX | 1 << spec.VIRTIO_BLK_F_SEG_MAX
          | 1 << spec.VIRTIO_BLK_F_SIZE_MAX | 1 << spec.VIRTIO_BLK_F_BLK_SIZE
          | 1 << spec.VIRTIO_BLK_F_DISCARD | 1 << spec.VIRTIO_BLK_F_WRITE_ZEROES)
LEFT_OUT = {  # the feature bits (GPA mode) each feature form does not offer
    "no-indirect": 1 << spec.VIRTIO_F_INDIRECT_DESC,
    "no-event-idx": 1 << spec.VIRTIO_RING_F_EVENT_IDX,
    "no-limits": 1 << spec.VIRTIO_BLK_F_SEG_MAX | 1 << spec.VIRTIO_BLK_F_SIZE_MAX,
    "no-dwz": 1 << spec.VIRTIO_BLK_F_DISCARD | 1 << spec.VIRTIO_BLK_F_WRITE_ZEROES,
    "none": ALL_ON & ~spec.BASE_FEATURES,
}


@pytest.mark.parametrize("form", ["handle", "grant", "gpa", *LEFT_OUT])
def test_report_forms_offer_what_they_name(form):
    """Each form's device offers every feature but the ones its name leaves out (the bits the
    built device's Features object offers, with the IOTLB of the form)."""
    cfg = Config(64, 1024, form)
    dev = cfg.device()
    assert dev.features.offered(spec.DEFAULT_QUEUE_NUM_MAX) == ALL_ON & ~LEFT_OUT.get(form, 0)
    assert cfg.feature_set == (form if form in LEFT_OUT else "all")
    assert dev.iotlb_entries == (0 if form in ("grant", "gpa") else spec.DEFAULT_IOTLB_ENTRIES)
    assert dev.translation == (form != "gpa")
    assert set(FEATURE_FORMS) == set(LEFT_OUT)


def _row(form, seed, lut4, ff, dp16kd, fmax):
    cfg = Config(64, 1024, form)
    return {"entries": 1024, "data_width": 64, "form": form, "features": cfg.feature_set,
            "seed": seed, "lut4": lut4, "ff": ff, "dp16kd": dp16kd, "fmax_mhz": fmax,
            "lut4_no_disk": lut4 - 100, "lut4_blocks": {"engine": 10},
            "critical_path": {"from": "a", "to": "b", "blocks": ["engine"], "logic_levels": 3,
                              "logic_ns": 4.0, "routing_ns": 5.0, "total_ns": 9.0}}


def test_report_markdown_shows_each_feature_cost(tmp_path):
    rows = [_row("handle", s, 5000, 4000, 60, f) for s, f in
            zip(range(1, 6), (90.0, 80.0, 100.0, 85.0, 95.0), strict=True)]
    rows += [_row("no-indirect", 1, 4700, 3800, 60, 99.0),
             _row("no-indirect", 2, 4700, 3800, 60, 97.0),
             _row("none", 1, 4000, 3500, 58, 101.0)]
    md = tmp_path / "report.md"
    write_markdown(rows, md)
    text = md.read_text()
    # handle minus the form; medians 90.0 (five seeds) and 98.0 (two)
    assert "| 64 | 1024 | no-indirect | +300 | +200 | +0 | 90.0 (n=5) / 98.0 (n=2) | " \
           "99.0, 97.0 |" in text
    assert "| 64 | 1024 | none | +1000 | +500 | +2 | 90.0 (n=5) / 101.0 (n=1) | 101.0 |" in text
    assert "| 64 | 1024 | handle | 5000 | 4900 | 4000 | 60 |" in text
    assert "64-bit, 1024 entries, handle, seed 5 (95.0 MHz)" in text  # every seed's path


def test_report_rejects_unknown_form(capsys):
    assert main(["--forms", "handle,no-such", "--out", "/nonexistent/never"]) == 2
    assert "unknown form 'no-such'" in capsys.readouterr().err


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


def test_relax_collisions_within_one_subtree():
    """make board relaxes the device's memories only (rtl/synth.py ``within``)."""
    import re

    from amaranth import Elaboratable, Signal
    from amaranth import Module as Mod
    from amaranth.lib import memory

    from rtl.synth import relax_collisions

    class Two(Elaboratable):
        def elaborate(self, platform):
            m = Mod()
            for name in ("device", "mem"):
                inner = Mod()
                inner.submodules.ram = ram = memory.Memory(shape=8, depth=16, init=[])
                rd, wr = ram.read_port(), ram.write_port()
                addr = Signal(4, name=f"{name}_addr")
                out = Signal(8, name=f"{name}_out")
                inner.d.comb += [rd.addr.eq(addr), wr.addr.eq(addr), wr.en.eq(1),
                                 wr.data.eq(addr), out.eq(rd.data)]
                m.submodules[name] = inner
            return m

    il = rtlil.convert(Two(), name="t", ports=[])

    def relaxed(text):
        return {mo.group(1) for mo in re.finditer(r"^module (\S+)\n(.*?)^end\n", text,
                                                   re.S | re.M)
                if re.search(r"COLLISION_X_MASK \d+'1+\n", mo.group(2))}

    assert relaxed(il) == set()
    assert relaxed(relax_collisions(il)) == {r"\t.device", r"\t.mem"}
    assert relaxed(relax_collisions(il, within=r"\t.device")) == {r"\t.device"}
