"""cocotb test: an unmodified Linux guest under QEMU drives the RTL (``make linux``).

The orchestrator ``tools/linux/run.py`` builds the guest and passes the run's configuration in
its parameters; this module only ties the bench to :func:`tb.linux_bridge.run_guest`.
"""

from __future__ import annotations

import logging

import cocotb

from .linux_bridge import LinuxBench, run_guest
from .runner import params


@cocotb.test()
async def test_linux_guest(dut):
    cfg = params()
    log = logging.getLogger("cocotb.linux")
    bench = LinuxBench(dut, cfg["data_width"], cfg.get("axi_model", "fast"))
    await bench.reset()
    result = await run_guest(bench, cfg, log)
    failed = [f"{name}: {detail}" for name, ok, detail in result["checks"] if not ok]
    assert not failed, "failed checks:\n  " + "\n  ".join(failed)
