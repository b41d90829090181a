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


@cocotb.test()
async def test_memory_model_speed(dut):
    """The bridge's bus traffic without QEMU: this project's driver writes and reads 4 KiB
    requests through the bench, with ``m_axi`` served by the model the bench's parameters name
    (``{"axi_model": ..., "requests": ...}``);
    logs simulated cycles per wall second and per CPU second (``docs/linux.md`` compares the
    models by these figures)."""
    import time

    from models import spec
    from models.memory import GuestMemory
    from sw.alloc import PageAllocator
    from sw.dma import IdentityDma
    from sw.driver import VirtioBlkDriver

    cfg = params()
    model, requests = cfg.get("axi_model", "fast"), cfg.get("requests", 40)
    bench = LinuxBench(dut, 128, model)
    await bench.reset()
    bench.ram.table = GuestMemory(8 << 20)  # a flat memory table in place of QEMU's
    await bench.hv.write32(spec.HV_CTRL, 0)  # GPA mode, as the bridge runs
    driver = VirtioBlkDriver(bench, IdentityDma(), PageAllocator(bench.ram, seed=0), seed=None,
                             irq_timeout=200_000)
    await driver.init(16)
    data = bytes(range(256)) * 16
    c0, t0, p0 = bench.cycle, time.monotonic(), time.process_time()
    for k in range(requests // 2):
        await driver.write(8 * k, data)
        assert await driver.read(8 * k, 8) == data
    cycles, wall, cpu = bench.cycle - c0, time.monotonic() - t0, time.process_time() - p0
    moved = requests // 2 * len(data)
    assert bench.target.bytes_written >= moved and bench.target.bytes_read >= moved
    assert not bench.target.refused
    logging.getLogger("cocotb.linux").warning(
        "m_axi model %s: %d requests of 4 KiB, %d cycles in %.1f s (%.1f s of CPU): %.0f cycles "
        "per wall second, %.0f per CPU second", model, requests, cycles, wall, cpu,
        cycles / wall, cycles / cpu)
