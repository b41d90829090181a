"""``make demo``: export the Verilog, run the default workload on the RTL under cocotb and
Icarus (or Verilator: ``VHB_SIM=verilator``, ``make demo SIM=verilator``), compare it with the
reference model, and print a summary.

    python -m tb.demo [--mode handle|gpa|both] [--data-width 64] [--requests 64] [--waves]

Exit status 0 when the RTL matched the reference everywhere, 1 on a mismatch, 2 on a usage
or set-up error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from .runner import ROOT, DeviceConfig, check_simulator, run, simulator

SIZES = (512, 4096, 65536)
LOG_DIR = ROOT / "build" / "demo"  # the simulator's own output, one log per mode


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def run_mode(cfg: DeviceConfig, handle_mode: bool, requests: int, seed: int,
             waves: bool, sim: str | None = None) -> dict:
    sim = sim or simulator()
    mode = "handle" if handle_mode else "gpa"
    suffix = "" if sim == "icarus" else f"_{sim}"
    log = LOG_DIR / f"demo_{mode}_w{cfg.data_width}{suffix}.log"
    out = log.with_suffix(".json")  # the bench's summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    failed = {"matches_reference": False, "mode": mode, "log": str(log),
              "mismatch": "the bench did not finish"}
    params = {"handle_mode": handle_mode, "requests": requests, "seed": seed,
              "summary": str(out)}
    try:
        _tests, _failed, xml = run("tb.demo_bench", cfg, testcase="test_demo", params=params,
                                   waves=waves, log=log, results_name=f"demo_{mode}", sim=sim)
    except RuntimeError as exc:
        return failed | {"mismatch": str(exc)}
    if not out.exists():
        return failed
    summary = json.loads(out.read_text()) | {"log": str(log), "wave_file": None, "sim": sim}
    if waves:  # Icarus writes <build dir>/<top>.fst, Verilator <run dir>/dump.vcd; keep one
        fst = (xml.parent / "dump.vcd" if sim == "verilator"  # file per mode
               else xml.parent.parent.parent / "virtio_blk_handle.fst")
        kept = LOG_DIR.parent / f"demo_{mode}_w{cfg.data_width}{suffix}{fst.suffix}"
        shutil.copyfile(fst, kept)
        summary["wave_file"] = str(kept.resolve())
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("handle", "gpa", "both"), default="both",
                    help="addressing mode of the device (default: both, handle first)")
    ap.add_argument("--data-width", type=int, choices=(32, 64, 128), default=64)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--waves", action="store_true", help="also write an FST waveform")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error("--requests must be at least 1")
    try:
        check_simulator()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = DeviceConfig(data_width=args.data_width)
    modes = {"handle": [True], "gpa": [False], "both": [True, False]}[args.mode]
    summaries = [run_mode(cfg, m, args.requests, args.seed, args.waves) for m in modes]

    print(f"\nvirtio_blk_handle: data width {cfg.data_width}, {cfg.entries} grant entries, "
          f"QueueNumMax {cfg.queue_num_max}, RAM disk {cfg.disk_bytes // 1024} KiB "
          f"(clock cycles of the DUT; simulator {simulator()})")
    ok = True
    for s in summaries:
        ok &= s["matches_reference"]
        print(f"\n[{s['mode']} mode]")
        if "requests" in s:
            st = s["statuses"]
            print(f"  requests          {s['requests']} (ok {st['ok']}, ioerr {st['ioerr']}, "
                  f"unsupp {st['unsupp']}) in {s['workload_cycles']} cycles "
                  f"(the driver's register and grant traffic included)")
            print(f"  bytes moved       {s['bytes_moved']}")
        if "bus_transactions" in s:
            print(f"  bus transactions  {s['bus_transactions']}")
            print(f"  translations      {s['translations']} (reference "
                  f"{s['reference_translations']})")
            print(f"  faults            {s['faults']}")
        lat = s.get("latency_cycles")
        if lat:
            print("  one request, QueueNotify to irq (cycles):")
            for size in SIZES:
                print(f"    {_size(size):>7}  read {lat[f'read_{size}']:6d}   "
                      f"write {lat[f'write_{size}']:6d}")
        if "wall_s" in s:
            print(f"  simulation speed  {s['total_cycles'] / s['wall_s']:,.0f} cycles/s "
                  f"({s['total_cycles']} cycles in {s['wall_s']:.1f} s of wall time)")
        print(f"  matches reference: {'yes' if s['matches_reference'] else 'no'}")
        if not s["matches_reference"]:
            print(f"    {s.get('mismatch')}\n    simulator log: {s['log']}")
        if s.get("wave_file"):
            print(f"  waveform: {s['wave_file']}")
    if len(summaries) == 2 and all("latency_cycles" in s for s in summaries):
        h, g = summaries[0]["latency_cycles"], summaries[1]["latency_cycles"]
        print("\nhandle/GPA cycle ratio, one request:")
        for size in SIZES:
            print(f"  {_size(size):>7}  read {h[f'read_{size}'] / g[f'read_{size}']:.3f}   "
                  f"write {h[f'write_{size}'] / g[f'write_{size}']:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
