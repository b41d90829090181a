"""Build the Verilog for one device configuration and run cocotb benches on it (Icarus).

Each configuration gets its own ``.v`` and its own build directory under ``build/sim/``; a
lock file makes parallel pytest workers share one build.

Parameters reach a simulator process one way: :func:`run` writes the device configuration and
the bench's parameters as JSON into ``VHB_BENCH``, and the bench reads them back with
:meth:`DeviceConfig.from_env` and :func:`params`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from models import spec

ROOT = Path(__file__).resolve().parent.parent
TOP = "virtio_blk_handle"
ENV = "VHB_BENCH"


@dataclass(frozen=True)
class DeviceConfig:
    data_width: int = spec.DEFAULT_DATA_WIDTH
    entries: int = spec.DEFAULT_ENTRIES
    queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX
    disk_bytes: int = spec.DEFAULT_DISK_BYTES
    iotlb_entries: int = spec.DEFAULT_IOTLB_ENTRIES
    translation: bool = True  # False: the GPA-only device (VirtioBlkHandle(translation=False))

    @property
    def tag(self) -> str:
        # (the default IOTLB adds nothing: the build directories of before it stay valid)
        iotlb = ("" if self.iotlb_entries == spec.DEFAULT_IOTLB_ENTRIES
                 else f"_t{self.iotlb_entries}")
        return (f"w{self.data_width}_e{self.entries}_q{self.queue_num_max}"
                f"_d{self.disk_bytes}{iotlb}{'' if self.translation else '_gpaonly'}")

    @classmethod
    def from_env(cls) -> DeviceConfig:
        """In the simulator process: the configuration :func:`run` was given."""
        return cls(**json.loads(os.environ.get(ENV, "{}")).get("config", {}))


def params() -> dict:
    """In the simulator process: the bench's parameters :func:`run` was given."""
    return json.loads(os.environ.get(ENV, "{}")).get("params", {})


def check_simulator() -> None:
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise RuntimeError("Icarus Verilog is not on PATH: install it with "
                           "'sudo apt-get install iverilog' (Debian/Ubuntu), then retry")


def _rtl_digest() -> str:
    """Of the RTL and of the models it reads (any of them may change the Verilog)."""
    h = hashlib.sha256()
    for path in [*sorted((ROOT / "rtl").rglob("*.py")), *sorted((ROOT / "models").glob("*.py"))]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _runner(quiet: bool):
    runner = get_runner("icarus")
    if quiet:  # its "Running command ..." lines too: the log files have the commands' output
        runner.log.propagate = False
        runner.log.handlers = [logging.NullHandler()]
    return runner


def compile_top(build_dir: Path, top: str, write_verilog: Callable[[Path], object], *,
                waves: bool = False, quiet: bool = False) -> Path:
    """Write ``<build_dir>/<top>.v`` with ``write_verilog`` (if the RTL changed) and compile it
    with iverilog (its output in ``build.log`` if ``quiet``). Returns ``build_dir``."""
    check_simulator()
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        verilog = build_dir / f"{top}.v"
        stamp = build_dir / "rtl.digest"
        digest = _rtl_digest()
        fresh = not (verilog.exists() and stamp.exists() and stamp.read_text() == digest)
        if fresh:
            write_verilog(verilog)
        _runner(quiet).build(sources=[verilog], hdl_toplevel=top, build_dir=build_dir,
                             timescale=("1ns", "1ps"), waves=waves, always=fresh,
                             log_file=build_dir / "build.log" if quiet else None)
        stamp.write_text(digest)
    return build_dir


def build(config: DeviceConfig, *, waves: bool = False, quiet: bool = False) -> Path:
    """The device in ``config``, exported and compiled in ``build/sim/<tag>``."""
    from rtl.export import generate

    return compile_top(
        ROOT / "build" / "sim" / (config.tag + ("_waves" if waves else "")), TOP,
        lambda v: generate(v, data_width=config.data_width, entries=config.entries,
                           queue_num_max=config.queue_num_max, disk_bytes=config.disk_bytes,
                           iotlb_entries=config.iotlb_entries,
                           translation=config.translation),
        waves=waves, quiet=quiet)


def run(test_module: str, config: DeviceConfig | None = None, *, testcase: str | None = None,
        params: Mapping | None = None, extra_env: Mapping[str, str] | None = None,
        waves: bool = False, seed: int = 1, results_name: str | None = None,
        log: Path | None = None, top: str = TOP,
        build_dir: Path | None = None) -> tuple[int, int, Path]:
    """Run the cocotb tests of ``test_module`` on the device in ``config`` (or on ``top``
    compiled in ``build_dir`` by :func:`compile_top`) with the bench's ``params``
    (``extra_env``: cocotb's own variables). The simulator's output goes to the file ``log``
    if given, else to the terminal. Returns (tests, failed, results xml)."""
    if build_dir is None:
        build_dir = build(config or DeviceConfig(), waves=waves, quiet=log is not None)
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           # cocotbext-axi still calls task.kill(); the warning is theirs, not ours
           "PYTHONWARNINGS": "ignore::DeprecationWarning",
           ENV: json.dumps({"config": asdict(config) if config else {},
                            "params": dict(params or {})}), **(extra_env or {})}
    name = results_name or f"{test_module.rsplit('.', 1)[-1]}_{testcase or 'all'}"
    test_dir = build_dir / "runs" / name
    test_dir.mkdir(parents=True, exist_ok=True)
    xml = test_dir / "results.xml"
    xml.unlink(missing_ok=True)
    # Under pytest the runner exits on a failed test; the results file tells more.
    with contextlib.suppress(SystemExit):
        _runner(log is not None).test(
            test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
            testcase=testcase, build_dir=build_dir, test_dir=test_dir, extra_env=env,
            waves=waves, seed=seed, results_xml=str(xml), log_file=log)
    if not xml.exists():
        raise RuntimeError(f"the simulation of {test_module}.{testcase} ended without results "
                           f"(see {log or 'the log above'}; build directory {build_dir})")
    tests, failed = get_results(xml)
    return tests, failed, xml
