"""``make verilog``: the exported Verilog has the documented top module and ports, and the
simulators and linters users take it to accept it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from rtl.export import TOP_NAME, generate, main

PORTS = (
    ["clk", "rst", "irq"]
    + [f"s_axil__{s}" for s in ("awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb",
                                "wvalid", "wready", "bresp", "bvalid", "bready", "araddr",
                                "arprot", "arvalid", "arready", "rdata", "rresp", "rvalid",
                                "rready")]
    + [f"s_hv__{s}" for s in ("awaddr", "wstrb", "awprot", "arprot", "rdata")]
    + [f"m_axi__{s}" for s in ("awid", "awaddr", "awlen", "awsize", "awburst", "awlock",
                               "awcache", "awprot", "awvalid", "awready", "wdata", "wstrb",
                               "wlast", "wvalid", "wready", "bid", "bresp", "bvalid", "bready",
                               "arid", "araddr", "arlen", "arsize", "arburst", "arlock",
                               "arcache", "arprot", "arvalid", "arready", "rid", "rdata",
                               "rresp", "rlast", "rvalid", "rready")]
)


@pytest.fixture(scope="module")
def verilog(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("v") / f"{TOP_NAME}.v")


def test_top_module_and_ports(verilog):
    text = verilog.read_text()
    header = re.search(rf"^module {TOP_NAME}\((.*?)\);", text, re.S | re.M)
    assert header, f"no module {TOP_NAME}"
    ports = {p.strip() for p in header.group(1).split(",")}
    assert set(PORTS) <= ports, f"missing ports: {sorted(set(PORTS) - ports)}"
    assert re.search(r"output \[63:0\] m_axi__araddr;", text)
    assert re.search(r"output \[63:0\] m_axi__wdata;", text)


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
def test_iverilog_accepts(verilog, tmp_path):
    subprocess.run(["iverilog", "-g2012", "-o", str(tmp_path / "a.vvp"), str(verilog)],
                   check=True, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")
def test_verilator_lint_accepts(verilog):
    r = subprocess.run(["verilator", "--lint-only", "-Wall", str(verilog)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("width", [32, 128])
def test_other_widths(width, tmp_path):
    out = generate(tmp_path / "v.v", data_width=width, entries=256)
    assert f"output [{width - 1}:0] m_axi__wdata;" in out.read_text()


def test_cli_rejects_bad_parameters(capsys, tmp_path):
    assert main(["-o", str(tmp_path / "x.v"), "--entries", "0"]) == 2
    assert "error:" in capsys.readouterr().err
