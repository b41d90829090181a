"""Campaigns on Dask (issue 19, ``verif/campaign.py``, docs/campaigns.md).

The first tests check the campaign runner itself with a toy shard function (no simulator): the
store's keys, its atomic writes, resuming, and results in shard order whatever the completion
order, in process and on an in-process Dask cluster.

``test_soak_survives_a_lost_worker`` is the real thing: a ``dask scheduler`` and two
``dask worker`` processes on localhost (free ports), a small soak of RTL streams across them,
one worker killed (with its simulator) while a stream is in flight on it; the lost stream is
run again on the other worker, and every stream's figures (and so the totals) must equal those
of the same streams run in this process, one stream per key, nothing lost or counted twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from verif.campaign import Shard, Store, run_campaign

ROOT = Path(__file__).resolve().parent.parent


def toy(shard: Shard) -> dict:
    """A shard function: later seeds finish first on a cluster (completion order reversed)."""
    time.sleep(0.05 * (8 - shard.seed % 8))
    return {"seed": shard.seed, "sum": sum(range(shard.seed, shard.seed + shard.count)),
            "config": dict(shard.config)}


def _shards(n: int = 6) -> list[Shard]:
    return [Shard("toy", {"width": 64}, 10 * i, 10) for i in range(n)]


def test_shard_key_is_configuration_and_seed_range(tmp_path):
    a = Shard("toy", {"width": 64, "p": {"x": 1}}, 5, 10)
    assert a.key == Shard("toy", {"p": {"x": 1}, "width": 64}, 5, 10).key  # key order
    others = [Shard("toy", {"width": 32, "p": {"x": 1}}, 5, 10),
              Shard("toy", {"width": 64, "p": {"x": 2}}, 5, 10),
              Shard("toy", {"width": 64, "p": {"x": 1}}, 6, 10),
              Shard("toy", {"width": 64, "p": {"x": 1}}, 5, 11),
              Shard("mutants", {"width": 64, "p": {"x": 1}}, 5, 10)]
    assert len({a.key, *(s.key for s in others)}) == 6
    with pytest.raises(ValueError, match=r"^shards must have distinct keys"):
        run_campaign([a, Shard("toy", {"width": 64, "p": {"x": 1}}, 5, 10)], toy,
                     Store(tmp_path), progress=False)


def test_store_atomic_and_resume(tmp_path):
    store = Store(tmp_path)
    shards = _shards()
    first = run_campaign(shards[:3], toy, store, progress=False)
    assert [s.key for s in first.ran] == [s.key for s in shards[:3]]
    # one file per key, no temporary left, a file of another key is not read as this one's
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 3 and not list(tmp_path.glob(".*tmp"))
    assert store.get(Shard("toy", {"width": 32}, 0, 10)) is None
    # a shard stored twice (a retried task) is still one file and one result
    store.put(shards[0], toy(shards[0]), {"worker": "again"})
    assert len(list(tmp_path.glob("*.json"))) == 3
    # resume: only the missing shards run; the results are in shard order
    again = run_campaign(shards, toy, store, progress=False)
    assert [s.key for s in again.ran] == [s.key for s in shards[3:]]
    assert again.results == [toy(s) for s in shards]
    # a torn file (a writer killed mid-write cannot leave one: this checks the reader) runs again
    store.path(shards[1]).write_text('{"key": ')
    assert store.get(shards[1]) is None


def test_dask_results_in_shard_order(tmp_path):
    distributed = pytest.importorskip("distributed")
    shards = _shards(8)
    local = run_campaign(shards, toy, Store(tmp_path / "local"), progress=False)
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1,
                            dashboard_address=None) as client:
        dask = run_campaign(shards, toy, Store(tmp_path / "dask"), client=client,
                            progress=False)
    assert dask.results == local.results
    assert {r.meta["worker"] for r in dask.records} != {"local"}
    assert len(list((tmp_path / "dask").glob("*.json"))) == len(shards)


# -- the real thing: a soak on a scheduler and two workers, one of them killed ---------------------

PER_STREAM = 12  # cases per hostile stream (a race stream has 1 or 2)
STREAMS = 6  # the first width-64 streams from seed 1 (one Verilog build): hostile, races


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A dask process in a session of its own: killing its group kills its simulators too."""
    dask = Path(sys.executable).with_name("dask")
    with open(log, "w") as f:
        return subprocess.Popen([str(dask), *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _stored_by(path: Path, worker: str) -> bool:
    try:
        return json.loads(path.read_text())["meta"]["worker"] == worker
    except (OSError, ValueError, KeyError):
        return False


def _figures(result: dict) -> dict:
    """A stream's figures without its simulator's own time (which varies from run to run)."""
    return {k: v for k, v in result.items() if k != "wall"}


@pytest.mark.sim
def test_soak_survives_a_lost_worker(tmp_path):
    distributed = pytest.importorskip("distributed")
    from tb.soak import shard, soak, stream_for, totals

    streams = [st for st in (stream_for(s, PER_STREAM) for s in range(1, 200))
               if st.width == 64][:STREAMS]
    assert {"test_stream", "test_reset_race", "test_iova_race"} <= {st.test for st in streams}

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen] = {}
    client = None
    try:
        procs["scheduler"] = _start(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                     "--no-dashboard"], tmp_path / "scheduler.log")
        for name in ("w0", "w1"):
            procs[name] = _start(["worker", address, "--name", name, "--nthreads", "1",
                                  "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                                  "--local-directory", str(tmp_path / name)],
                                 tmp_path / f"{name}.log")
        # the reference: the same streams in this process (builds the Verilog for the workers)
        one = soak(streams, tmp_path / "one", jobs=1, progress=False)

        client = distributed.Client(address, timeout="60s")
        client.wait_for_workers(2, timeout=90)
        workers = {info["name"]: addr
                   for addr, info in client.scheduler_info()["workers"].items()}
        victim = workers["w1"]
        out = tmp_path / "dask"
        got: dict = {}

        def campaign():
            try:
                got["outcome"] = soak(streams, out, client=client, progress=False)
            except BaseException as exc:  # (reported by the main thread)
                got["error"] = exc

        runner = threading.Thread(target=campaign)
        runner.start()
        # wait until w1 has finished a stream (its result stored) and another is in flight on
        # it: assigned to it by the scheduler, its simulator writing the stream's log
        by_key = {shard(st).key: st for st in streams}
        lost = None
        deadline = time.monotonic() + 120
        while lost is None and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.2)
            if not any(_stored_by(path, victim) for path in out.glob("*.json")):
                continue
            for key in client.processing([victim]).get(victim, ()):
                log = out / "logs" / f"{by_key[key].seed}.log"
                if log.exists() and log.stat().st_size > 0:
                    lost = key
                    break
        assert lost is not None, "no stream was seen in flight on the worker to kill"
        assert not (out / f"{shard(by_key[lost]).name}.json").exists()
        _kill(procs["w1"])  # the worker and its simulator: a lost machine
        runner.join(timeout=240)
        assert not runner.is_alive(), "the campaign did not finish after losing a worker"
        if "error" in got:
            raise got["error"]
        res = got["outcome"]

        # nothing lost: every planned shard key has its result, one file per key
        keys = [shard(st).key for st in streams]
        assert [s.key for s in res.shards] == keys
        assert sorted(p.name for p in out.glob("*.json")) == \
            sorted(f"{shard(st).name}.json" for st in streams)
        assert not list(out.glob(".*.tmp"))
        # the stream in flight on the lost worker ran again, on the other one; what the lost
        # worker finished before is kept
        assert res.records[keys.index(lost)].meta["worker"] == workers["w0"]
        assert any(r.meta["worker"] == victim for r in res.records)
        # nothing counted twice: per stream, the cases planned and the figures of the run in
        # one process; so the totals are equal too
        for st, a, b in zip(streams, one.results, res.results, strict=True):
            assert b["cases"] == st.cases, f"seed {st.seed}: {b['cases']} cases, not {st.cases}"
            assert _figures(b) == _figures(a), f"seed {st.seed} differs from the one-process run"
        t_one, t_dask = totals(one.results), totals(res.results)
        assert t_dask["cases"] == sum(st.cases for st in streams)
        assert {k: v for k, v in t_dask.items() if k != "wall"} == \
            {k: v for k, v in t_one.items() if k != "wall"}
        assert t_dask["violations"] == t_dask["hangs"] == t_dask["mismatches"] == 0
        # resume: the same campaign again runs nothing and gives the same results
        again = soak(streams, out, client=client, progress=False)
        assert again.ran == [] and again.results == res.results
    finally:
        if client is not None:
            client.close()
        for proc in procs.values():
            _kill(proc)
        for name in ("scheduler", "w0", "w1"):
            log = tmp_path / f"{name}.log"
            if log.exists():
                sys.stdout.write(f"--- {name} log (tail) ---\n"
                                 + "".join(log.read_text().splitlines(True)[-15:]))
