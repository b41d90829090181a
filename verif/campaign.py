"""Campaigns: many independent shards of simulation work, run as Dask tasks (docs/campaigns.md).

A campaign (``make soak``, the ``make bench`` sweep, and later ``make mutants``) is a list of
:class:`Shard` s, each a configuration and a seed range, and a function that runs one shard and
returns its result as a JSON object. :func:`run_campaign` runs the shards that the
:class:`Store` does not hold yet:

* in this process, one after the other (``jobs=1`` and no scheduler: the reference path);
* on a ``distributed.LocalCluster`` of ``jobs`` single-threaded worker processes on this
  machine; or
* on an existing Dask cluster (``scheduler="tcp://host:port"``) whose workers have the
  repository installed (``make venv``): the shard function is sent by reference (module and
  name), so it must be importable there.

Every result is written to the store by this process, atomically (a temporary file renamed
over ``<root>/<name>.json``), under its shard's key. The key is a digest of the campaign name,
the configuration and the seed range, so:

* a shard that runs twice (its worker was lost after it started and the scheduler ran it
  again, or two campaigns submitted it) is one key, one file and one result: it counts once;
* a campaign that stopped (interrupted, a worker or the client died) resumes where it stopped:
  the shards already in the store are read back, not run;
* a stored result is used only by a shard of the same key (a changed configuration or seed
  range runs again).

:class:`Outcome` lists the results in the order of the shards given, whatever the order they
completed in, so totals and reports made from it are those of a run in one process.

Progress is a ``tqdm`` bar weighted by :attr:`Shard.weight` (cases, rows), shown only on a
terminal.

The simulator is chosen by environment variables (``SIM``); :func:`run_campaign` sends the
client's values of ``env`` with each task and sets them in the worker around the shard, so
that a remote worker simulates with what the client asked for (unset on the client: unset on
the worker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# what selects the simulator (mk/sim.mk exports it from SIM), passed from the client to every task
ENV_KEYS = ("VHB_SIM",)

# Dask's own housekeeping, slowed down for a campaign. A shard's worker thread only waits on
# its simulator, but by default every worker samples its threads for the profiler every 10 ms,
# checks its event loop every 20 ms and its memory every 100 ms: on two cores, where both run
# simulators, that took 6.5 % of a core (the scheduler, two nannies and two workers of a
# LocalCluster, measured over 100 s of `make soak SOAK_JOBS=2`); with these, 1.4 %. Applied to
# the cluster that connect() starts; `dask worker` processes take them from the environment
# (docs/campaigns.md: DASK_DISTRIBUTED__...).
QUIET = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.gil.enabled": False,
}


@dataclass(frozen=True, eq=False)
class Shard:
    """One unit of work: ``config`` (a JSON object) over seeds ``seed .. seed + count - 1``.

    ``label`` names its store file (``<label>-<digest>.json``; the seed by default);
    ``weight`` is its share of the progress bar (``count`` by default)."""

    campaign: str
    config: Mapping[str, Any]
    seed: int
    count: int = 1
    label: str | None = None
    weight: int | None = None

    def spec(self) -> dict:
        return {"campaign": self.campaign, "config": self.config,
                "seeds": [self.seed, self.count]}

    @property
    def digest(self) -> str:
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        """The Dask key and the store's key: campaign, configuration and seed range."""
        return f"{self.campaign}-{self.seed}-{self.digest}"

    @property
    def name(self) -> str:
        return f"{self.label if self.label is not None else self.seed}-{self.digest[:10]}"

    @property
    def size(self) -> int:
        return self.count if self.weight is None else self.weight


@dataclass
class Record:
    """A stored result and how it was obtained (``meta``: worker, host, pid, seconds)."""

    result: dict
    meta: dict


class Store:
    """Results on disk, one JSON file per shard key under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, shard: Shard) -> Path:
        return self.root / f"{shard.name}.json"

    def get(self, shard: Shard) -> Record | None:
        path = self.path(shard)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if data.get("key") != shard.key or data.get("spec") != json.loads(
                json.dumps(shard.spec())):
            return None
        return Record(data["result"], data.get("meta", {}))

    def put(self, shard: Shard, result: dict, meta: dict | None = None) -> None:
        """Atomically: a reader sees the old file or the whole new one, never a part."""
        text = json.dumps({"key": shard.key, "spec": shard.spec(), "result": result,
                           "meta": meta or {}})
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{shard.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(shard))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class Outcome:
    """Every shard's result in the order of the shards given (not of completion)."""

    shards: list[Shard]
    records: list[Record]
    ran: list[Shard] = field(default_factory=list)  # run now (the others came from the store)
    wall: float = 0.0  # seconds spent running the shards run now
    where: str = "this process"

    @property
    def results(self) -> list[dict]:
        return [r.result for r in self.records]

    @property
    def resumed(self) -> int:
        return len(self.shards) - len(self.ran)


def execute(fn: Callable[[Shard], dict], shard: Shard,
            env: Mapping[str, str | None]) -> tuple[dict, dict]:
    """Run one shard where this is called (a Dask worker or this process), with the client's
    simulator variables ``env`` set. Returns (result, meta)."""
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    t0 = time.monotonic()
    try:
        result = fn(shard)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        from distributed import get_worker
        worker = get_worker().address
    except (ImportError, ValueError):
        worker = "local"
    return result, {"worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
                    "seconds": round(time.monotonic() - t0, 3)}


def connect(scheduler: str | None, jobs: int):
    """A ``distributed.Client``: to ``scheduler``, or to a new ``LocalCluster`` of ``jobs``
    single-threaded worker processes (closed with the client), with :data:`QUIET`."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s")
    # read while the cluster is made (each nanny keeps a copy for the workers it starts), so
    # it need not stay set in this process
    with dask.config.set(QUIET):
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    client = Client(cluster)
    client._campaign_cluster = cluster  # closed by close()
    return client


def close(client) -> None:
    """Close the client and, if :func:`connect` made it, its LocalCluster, with the simulators
    its workers started (a worker stopped in the middle of a shard would leave its simulator
    running on its own)."""
    cluster = getattr(client, "_campaign_cluster", None)
    if cluster is None:
        client.close()
        return
    import psutil

    children = []
    for worker in list(cluster.workers.values()):
        pid = getattr(worker, "pid", None)  # (a Nanny: its worker process)
        with contextlib.suppress(psutil.Error):
            children += psutil.Process(pid).children(recursive=True) if pid else []
    client.close()
    cluster.close()
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def run_campaign(shards: Sequence[Shard], fn: Callable[[Shard], dict], store: Store, *,
                 scheduler: str | None = None, jobs: int = 1, client=None,
                 desc: str = "campaign", unit: str = "case", progress: bool | None = None,
                 postfix: Callable[[list[dict]], dict] | None = None,
                 on_result: Callable[[Shard, dict], object] | None = None,
                 env: Sequence[str] = ENV_KEYS) -> Outcome:
    """Run the shards the store lacks, write each result to the store as it arrives, and
    return every shard's result in the order of ``shards``.

    Where: ``client`` (a ``distributed.Client`` to use, left open), else ``scheduler`` (the
    address of a running Dask scheduler), else ``jobs`` > 1 (a LocalCluster of ``jobs``
    workers for this call), else in this process. ``fn`` must be a module-level function
    (workers import it). ``progress``: None shows the bar on a terminal only. ``postfix`` is
    shown beside the bar, from the results so far; ``on_result(shard, result)`` is called in
    this process as each shard run now completes (after it is stored). A shard that raises
    stops the campaign (the results stored so far stay)."""
    keys = [s.key for s in shards]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"shards must have distinct keys, not {dup[:3]!r}")
    from tqdm import tqdm

    records: dict[str, Record] = {}
    for s in shards:
        rec = store.get(s)
        if rec is not None:
            records[s.key] = rec
    todo = [s for s in shards if s.key not in records]
    env_now = {k: os.environ.get(k) for k in env}
    outcome = Outcome(list(shards), [], ran=todo)
    bar = tqdm(total=sum(s.size for s in shards),
               initial=sum(s.size for s in shards if s.key in records), unit=unit,
               desc=desc, smoothing=0, file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)

    def record(s: Shard, result: dict, meta: dict) -> None:
        store.put(s, result, meta)
        records[s.key] = Record(result, meta)
        if on_result is not None:
            on_result(s, result)
        bar.update(s.size)
        if postfix is not None:
            bar.set_postfix(postfix([r.result for r in records.values()]), refresh=False)

    t0 = time.monotonic()
    try:
        if todo and client is None and not scheduler and jobs <= 1:
            for s in todo:
                record(s, *execute(fn, s, env_now))
        elif todo:
            own = client is None
            c = connect(scheduler, jobs) if own else client
            try:
                outcome.where = (f"Dask cluster {c.scheduler.address}, "
                                 f"{sum(c.nthreads().values())} worker threads")
                _on_dask(c, todo, fn, env_now, record)
            finally:
                if own:
                    close(c)
    finally:
        outcome.wall = time.monotonic() - t0
        bar.close()
    outcome.records = [records[s.key] for s in shards]
    return outcome


def _on_dask(client, todo: list[Shard], fn, env: dict, record) -> None:
    """Submit ``todo``, heaviest first, in a window a few times the cluster's threads deep (a
    campaign of millions of shards is not one graph); record each result as it completes."""
    from distributed import as_completed

    depth = max(4, 2 * sum(client.nthreads().values()) + 2)
    by_key = {s.key: s for s in todo}
    # the heaviest first, so that no worker is left with a long shard at the end
    pending = iter(sorted(todo, key=lambda s: -s.size))

    def submit(s: Shard):
        # the key is the shard's: the scheduler runs one task per key, and a retried task
        # (its worker lost) is the same key
        return client.submit(execute, fn, s, env, key=s.key, pure=False)

    first = [submit(s) for _, s in zip(range(depth), pending, strict=False)]
    ac = as_completed(first)
    try:
        for fut in ac:
            s = by_key[fut.key]
            result, meta = fut.result()
            fut.release()
            record(s, result, meta)
            nxt = next(pending, None)
            if nxt is not None:
                ac.add(submit(nxt))
    except BaseException:
        client.cancel(list(ac.futures))
        raise


def add_where_options(ap, *, jobs: int, what: str) -> None:
    """A campaign program's ``--jobs`` and ``--scheduler`` (:func:`run_campaign`'s ``jobs``
    and ``scheduler``) on the ``argparse`` parser ``ap``; ``what``: what the workers run."""
    ap.add_argument("--jobs", type=int, default=jobs,
                    help="workers of the local Dask cluster (1: in this process)")
    ap.add_argument("--scheduler", default=None,
                    help=f"address of a running Dask scheduler (tcp://host:port): run the {what}")


def unwind_on_sigterm() -> None:
    """When stopped (kill, a CI timeout), unwind like Ctrl-C, so that a local cluster's
    workers and their simulators are ended too (:func:`close`)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
