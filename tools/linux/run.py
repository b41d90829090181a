"""``make linux``: boot an unmodified Linux guest under QEMU against the RTL and check its disk.

    python -m tools.linux.run            # the RTL in cocotb + Icarus (data width 128, 2 MiB disk)
    python -m tools.linux.run --model    # the reference model instead: seconds, no simulator
    python -m tools.linux.run --mode iova   # behind QEMU's Intel IOMMU: the device translates
                                            # IOVAs through its IOTLB (4 MiB disk, ext2 on it)

Builds (and caches under ``build/linux/``) the kernel and the initramfs, runs
``tb/test_linux.py`` through ``tb/runner.py`` (the bridge starts QEMU itself), then prints the
summary: every check of the guest and of the host, and the figures (also written to
``build/linux/figures-<rtl|model>-<gpa|iova>.json``). Exit status 0 only if every check passed;
1 on a failed check or a timeout; 2 when something is missing to run at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from tools.linux.guest import (
    BUILD,
    GuestPlan,
    SetupError,
    check_tools,
    ensure_initramfs,
    ensure_kernel,
    qemu_command,
)

DATA_WIDTH = 128


def _fmt(v, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def print_summary(result: dict, mode: str, total_s: float) -> bool:
    f = result["figures"]
    checks = result["checks"]
    ok_all = all(ok for _, ok, _ in checks)
    dev = f.get("device") or {}
    from tb.runner import simulator

    sim = {"icarus": "Icarus", "verilator": "Verilator"}[simulator()]
    what = (f"RTL (cocotb + {sim}, data width {DATA_WIDTH})" if mode == "rtl"
            else "reference model (models/device.py, untimed)")
    tr = f.get("translation", "gpa")
    how = ("IOVA mode, behind QEMU's intel-iommu" if tr == "iova" else "GPA mode")
    print()
    print("=" * 100)
    print(f"Linux guest (QEMU vhost-user-blk) against the {what}, {how}")
    print(f"  device               vendor {dev.get('vendor', 0):#x}, features "
          f"{dev.get('features', 0):#x}, {dev.get('capacity', 0) * 512 // 1024} KiB RAM disk")
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(f["requests_by_type"].items()))
    print(f"  requests served      {f['requests']} ({by_type})")
    bins = ", ".join(f"<={_size(int(k))} x{v}" for k, v in
                     (f.get("request_size_bins") or {}).items())
    print(f"  data bytes           {_fmt(f['data_bytes'])} (reads and writes by size: {bins}; "
          f"largest {_size(f.get('largest_request', 0))})")
    if mode == "rtl":
        print(f"  bus bytes            read {_fmt(f['bus_bytes_read'])}, written "
              f"{_fmt(f['bus_bytes_written'])} (m_axi, rings included, read-back included)")
        lat = f.get("latency_cycles") or {}
        print(f"  simulated cycles     {_fmt(f['cycles'])} in all; {_fmt(f['busy_cycles'])} "
              f"with requests outstanding; read-back {_fmt(f['readback_cycles'])}")
        print(f"  cycles per request   {_fmt(f['cycles_per_request'])} (kick to used element: "
              f"min {_fmt(lat.get('min'))}, mean {_fmt(lat.get('mean'))}, "
              f"max {_fmt(lat.get('max'))})")
        sc = f.get("service_cycles") or {}
        picks = [f"{k.split()[0]} {_size(int(k.split()[1]))} {v['mean']:,.0f} (x{v['n']})"
                 for k, v in sc.items() if k.split()[1] in ("512", "4096", "65536")]
        print(f"  device cycles        per request, from the later of kick and previous "
              f"completion: {', '.join(picks) or 'n/a'}")
        print(f"  simulation speed     {_fmt(f['cycles_per_s'], ' cycles/s', 0)} while busy")
    _print_features(f)
    it = f.get("iotlb")
    if it:
        _print_iotlb(it, mode)
    print(f"  requests per second  {_fmt(f['requests_per_s'], '', 2)} of guest wall time "
          f"({_fmt(f['requests_per_busy_s'], '', 2)} while busy)")
    print(f"  wall time            boot to init {_fmt(f['boot_s'], ' s')}, guest checks "
          f"{_fmt(f['guest_s'], ' s')}, QEMU in all {_fmt(f['wall_s'], ' s')}, read-back "
          f"{_fmt(f['readback_wall_s'], ' s')}, total {_fmt(total_s, ' s')}")
    print("  checks")
    for name, ok, detail in checks:
        print(f"    {'PASS' if ok else 'FAIL'}  {name:28} {detail}")
    for line in result.get("dmesg", []):
        print(f"    dmesg: {line}")
    print(f"  result               {'PASS' if ok_all else 'FAIL'} "
          f"({sum(ok for _, ok, _ in checks)}/{len(checks)} checks passed)")
    print("=" * 100)
    return ok_all


def _names(bits: int) -> str:
    from models import spec

    return " ".join(spec.FEATURE_NAMES.get(b, str(b)) for b in range(64) if bits >> b & 1)


def _print_features(f: dict) -> None:
    """Issue 17's lines: features, queue and requests, notifications with and without
    EVENT_IDX."""
    neg = f.get("features_negotiated") or []
    print(f"  features offered     {f.get('features_offered', 0):#x}: "
          f"{_names(f.get('features_offered', 0))}")
    for i, bits in enumerate(neg):
        print(f"  negotiated (boot {i + 1})  {bits:#x}: {_names(bits)} (DriverFeatures read back "
              "from the device)")
    dwz = f.get("dwz") or {}
    ranges = "; ".join(f"{k} " + ", ".join(f"{n * 512 // 1024} KiB at sector {s}"
                                          for s, n, _ in v) for k, v in dwz.items() if v)
    print(f"  requests             {_fmt(f.get('indirect_requests'))} of {_fmt(f['requests'])} "
          f"through an indirect table, up to {_fmt(f.get('descriptors_max'))} descriptors; at "
          f"most {_fmt(f.get('max_in_flight'))} in flight; {ranges or 'no discard or zeroes'}")
    for i, w in enumerate(f.get("notify_windows") or []):
        if w is None:
            print(f"  notifications        boot {i + 1}: no window (marker requests missing)")
            continue
        guest = (f", guest saw {w['guest_interrupts']} interrupts ("
                 f"{w['guest_interrupts'] / max(w['done'], 1):.3f})"
                 if "guest_interrupts" in w else "")
        on = "on " if w["event_idx"] else "off"
        print(f"  notifications        boot {i + 1}, EVENT_IDX {on}: {w['done']} requests, "
              f"kicks {w['kicks']} ({w['kicks_per_request']:.3f} per "
              f"request), interrupts {w['calls']} ({w['interrupts_per_request']:.3f} per request)"
              f"{guest}; {w['cycle']:,} cycles, {w['time']:.1f} s")


def _print_iotlb(it: dict, mode: str) -> None:
    """The IOTLB lines of the summary (IOVA mode; GPA mode shows the counters at 0)."""
    print(f"  IOTLB                {_fmt(it.get('entries'))} entries; per request: hits "
          f"{_fmt(it.get('hits_per_request'), '', 2)}, misses "
          f"{_fmt(it.get('misses_per_request'), '', 2)}, entries invalidated "
          f"{_fmt(it.get('invalidated_per_request'), '', 2)} (device counters: "
          f"{_fmt(it.get('hits'))} / {_fmt(it.get('misses'))} / {_fmt(it.get('invalidated'))})")
    if not it.get("qemu_updates") and not it.get("misses_served"):
        return
    perms = ", ".join(f"{k} {v:,}" for k, v in (it.get("qemu_updates_by_perm") or {}).items())
    print(f"  hypervisor (bridge)  QEMU sent {_fmt(it['qemu_updates'])} updates ({perms}) and "
          f"{_fmt(it['qemu_invalidations'])} invalidations "
          f"({_fmt(it['qemu_invalidations_per_request'], '', 2)} per request); misses served "
          f"{_fmt(it['misses_served'])}: {_fmt(it['misses_answered_by_qemu'])} by QEMU, "
          f"{_fmt(it['misses_answered_by_bridge'])} from the bridge's copy, "
          f"{_fmt(it['misses_failed'])} failed")
    ms = it.get("qemu_miss_ms") or {}
    print(f"  miss latency         QEMU's answer {_fmt(ms.get('mean'), ' ms', 2)} mean, "
          f"{_fmt(ms.get('max'), ' ms', 1)} max (wall time; the clock stops meanwhile)")
    if mode == "rtl":
        print(f"  stalled on misses    {_fmt(it['stall_cycles'])} cycles, "
              f"{_fmt(it['stall_cycles_per_request'])} per request, "
              f"{_fmt(it.get('stall_cycles_per_miss'))} per miss (miss raised to "
              "MISS_RESOLVE written)")
        own = it.get("service_own_cycles") or {}
        stall = it.get("service_stall_cycles") or {}
        picks = [f"{k.split()[0]} {_size(int(k.split()[1]))} {v['mean']:,.0f} + "
                 f"{stall[k]['mean']:,.0f} stalled (x{v['n']})"
                 for k, v in own.items() if k.split()[1] in ("512", "4096", "65536")]
        print(f"  device's own cycles  {_fmt(it['device_cycles_per_request'])} per request "
              f"(busy cycles less stalls); by request: {', '.join(picks) or 'n/a'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="store_true",
                        help="serve the guest with the reference model instead of the RTL")
    parser.add_argument("--mode", choices=("gpa", "iova"), default="gpa",
                        help="gpa: the device sees guest physical addresses (default); iova: "
                        "the guest's IOMMU hands out IOVAs, the device translates them through "
                        "its IOTLB and the bridge plays the hypervisor")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds the guest may take from QEMU's start to power-off "
                        "(1800; the second boot has 600)")
    parser.add_argument("--miss-timeout", type=float, default=10.0,
                        help="seconds QEMU may take to answer an IOTLB miss before the bridge "
                        "fails it (IOVA mode)")
    parser.add_argument("--axi-model", choices=("fast", "cocotbext"), default="fast",
                        help="m_axi memory model: the benches' fast deterministic memory "
                        "(tb/detmem.py, default) or cocotbext-axi's AxiSlave (slower)")
    parser.add_argument("--single-boot", action="store_true",
                        help="skip the second boot (the notification workload without "
                        "EVENT_IDX)")
    parser.add_argument("--build-dir", type=Path, default=BUILD)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)9.0fms %(message)s")
    t0 = time.monotonic()
    mode = "model" if args.model else "rtl"
    plan = GuestPlan.for_mode(args.mode)
    deadline = args.deadline or 1800.0
    build: Path = args.build_dir
    build.mkdir(parents=True, exist_ok=True)
    try:
        check_tools()
        kernel = ensure_kernel(build)
        initramfs = ensure_initramfs(plan, kernel, build)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"kernel {kernel.version}, initramfs {initramfs.name} "
          f"({initramfs.stat().st_size // 1024} KiB)")
    run_dir = build / (f"run-{mode}" if args.mode == "gpa" else f"run-{mode}-{args.mode}")
    run_dir.mkdir(parents=True, exist_ok=True)
    expected = run_dir / "expected-disk.bin"
    expected.write_bytes(plan.expected_disk())
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    cfg = {
        "qemu": qemu_command(kernel, initramfs, "{socket}", args.mode,
                             queue_size=plan.queue_size),
        "console": str((run_dir / "console.log").resolve()),
        # The second boot: the notification workload alone, QEMU's event_idx=off.
        **({} if args.single_boot else {
            "qemu2": qemu_command(kernel, initramfs, "{socket}", args.mode,
                                  queue_size=plan.queue_size, event_idx=False,
                                  only_notify=True),
            "console2": str((run_dir / "console-noeventidx.log").resolve()),
            "checks2": plan.second_boot_checks}),
        "result": str(result_path.resolve()),
        "expected": str(expected.resolve()),
        "checks": plan.checks,
        "io": [[c.size, c.offset] for c in plan.io],
        "disk_bytes": plan.disk_bytes,
        "plan": {"mark_sectors": list(plan.mark_sectors), "discard": list(plan.discard),
                 "zeroout": list(plan.zeroout), "min_in_flight": plan.min_queue_depth,
                 "min_request": plan.max_sectors_kb * 1024},
        "deadline_s": deadline,
        "mode": mode,
        "linux_mode": args.mode,
        "miss_timeout_s": args.miss_timeout,
        "data_width": DATA_WIDTH,
        "axi_model": args.axi_model,
    }
    if args.model:
        from tb.linux_bridge import ModelLink, run_guest

        asyncio.run(run_guest(ModelLink(plan.disk_bytes, DATA_WIDTH), cfg,
                              logging.getLogger("linux")))
    else:
        from tb.runner import DeviceConfig, run

        config = DeviceConfig(data_width=DATA_WIDTH, disk_bytes=plan.disk_bytes)
        print(f"building the RTL ({config.tag}; the first export and compile of a "
              f"{plan.disk_bytes >> 20} MiB disk take a few minutes)", flush=True)
        try:
            run("tb.test_linux", config, testcase="test_linux_guest",
                results_name="linux" if args.mode == "gpa" else f"linux_{args.mode}",
                params=cfg)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
    if not result_path.exists():
        print(f"error: the run produced no result ({result_path}); see the log above and "
              f"{cfg['console']}", file=sys.stderr)
        return 1
    result = json.loads(result_path.read_text())
    total_s = time.monotonic() - t0
    ok = print_summary(result, mode, total_s)
    figures = build / f"figures-{mode}-{args.mode}.json"
    figures.write_text(json.dumps({
        "result": "PASS" if ok else "FAIL",
        "checks_passed": sum(bool(c[1]) for c in result["checks"]),
        "checks": len(result["checks"]), "total_s": total_s,
        **{k: v for k, v in result["figures"].items() if k != "messages"}}, indent=1))
    print(f"console log: {cfg['console']}\nresult: {result_path}\nfigures: {figures}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
