"""Build the Verilog for one device configuration and run cocotb benches on it (Icarus).

Each configuration gets its own ``.v`` and its own build directory under ``build/sim/``; a
lock file makes parallel pytest workers share one build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from models import spec

ROOT = Path(__file__).resolve().parent.parent
TOP = "virtio_blk_handle"


@dataclass(frozen=True)
class DeviceConfig:
    data_width: int = spec.DEFAULT_DATA_WIDTH
    entries: int = spec.DEFAULT_ENTRIES
    queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX
    disk_bytes: int = spec.DEFAULT_DISK_BYTES

    @property
    def tag(self) -> str:
        return (f"w{self.data_width}_e{self.entries}_q{self.queue_num_max}"
                f"_d{self.disk_bytes}")

    def env(self) -> dict[str, str]:
        """The configuration as environment variables for the cocotb test process."""
        return {"VHB_CONFIG": json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> DeviceConfig:
        return cls(**json.loads(os.environ.get("VHB_CONFIG", "{}")))


def check_simulator() -> None:
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise RuntimeError("Icarus Verilog is not on PATH: install it with "
                           "'sudo apt-get install iverilog' (Debian/Ubuntu), then retry")


def _rtl_digest() -> str:
    h = hashlib.sha256()
    for path in [*sorted((ROOT / "rtl").glob("*.py")), ROOT / "models" / "spec.py"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build(config: DeviceConfig, *, waves: bool = False) -> Path:
    """Export the Verilog (if the RTL changed) and compile it with iverilog. Returns build dir."""
    check_simulator()
    from rtl.export import generate

    build_dir = ROOT / "build" / "sim" / (config.tag + ("_waves" if waves else ""))
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        verilog = build_dir / f"{TOP}.v"
        stamp = build_dir / "rtl.digest"
        digest = _rtl_digest()
        fresh = not (verilog.exists() and stamp.exists() and stamp.read_text() == digest)
        if fresh:
            generate(verilog, data_width=config.data_width, entries=config.entries,
                     queue_num_max=config.queue_num_max, disk_bytes=config.disk_bytes)
        runner = get_runner("icarus")
        runner.build(sources=[verilog], hdl_toplevel=TOP, build_dir=build_dir,
                     timescale=("1ns", "1ps"), waves=waves, always=fresh)
        stamp.write_text(digest)
    return build_dir


def run(test_module: str, config: DeviceConfig, *, testcase: str | None = None,
        extra_env: Mapping[str, str] | None = None, waves: bool = False,
        seed: int = 1, results_name: str | None = None) -> tuple[int, int, Path]:
    """Run the cocotb tests of ``test_module`` on ``config``. Returns (tests, failed, xml)."""
    build_dir = build(config, waves=waves)
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           # cocotbext-axi still calls task.kill(); the warning is theirs, not ours
           "PYTHONWARNINGS": "ignore::DeprecationWarning",
           **config.env(), **(extra_env or {})}
    name = results_name or f"{test_module.rsplit('.', 1)[-1]}_{testcase or 'all'}"
    test_dir = build_dir / "runs" / name
    test_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner("icarus")
    xml = test_dir / "results.xml"
    xml.unlink(missing_ok=True)
    # Under pytest the runner exits on a failed test; the results file tells more.
    with contextlib.suppress(SystemExit):
        runner.test(test_module=test_module, hdl_toplevel=TOP, hdl_toplevel_lang="verilog",
                    testcase=testcase, build_dir=build_dir, test_dir=test_dir, extra_env=env,
                    waves=waves, seed=seed, results_xml=str(xml))
    if not xml.exists():
        raise RuntimeError(f"the simulation of {test_module}.{testcase} ended without results "
                           f"(see the log above; build directory {build_dir})")
    tests, failed = get_results(xml)
    return tests, failed, xml
