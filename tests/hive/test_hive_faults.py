"""Process ownership faults against real hive and worker processes (issue 11).

A killed hive takes its workers along, a starting hive stops the survivors it can prove are
its own and nothing else, a killed worker is reaped, a frozen one is listed `unresponsive`,
the worker's key is in neither its environment nor its argv, and spawns that cannot start a
process, or go past the cap, are clean errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import BIN, start_worker
from support.hive_process import HiveProcess, start_hive, start_hive_with_settings

from rbee.control.hive.worker_records import WorkerRecord

KEY = "hive-fault-key-7"


def wait_for(predicate, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(0.05)


def gone(proc: psutil.Process) -> bool:
    """Exited: no process, another process on that pid, or a zombie waiting for init."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def spawn(hive: HiveProcess, model: Path, **body: object) -> httpx.Response:
    with hive.client() as client:
        return client.post("/v1/workers/spawn", json={"model_ref": f"file:{model}", **body})


def listed(hive: HiveProcess) -> list[dict]:
    with hive.client() as client:
        return client.get("/v1/workers/list").json()["workers"]


def records(hive: HiveProcess) -> list[Path]:
    return sorted((hive.state_dir / "workers").glob("*.json"))


@pytest.fixture
def hives() -> Iterator[list[HiveProcess]]:
    """Hives a test starts; stopped (and their workers with them) whatever the test did."""
    started: list[HiveProcess] = []
    yield started
    for hive in started:
        hive.stop()


def test_workers_die_within_2_s_of_a_kill_9_of_their_hive(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    hive = start_hive(tmp_path / "hive", api_key=KEY)
    hives.append(hive)
    workers = [spawn(hive, tiny_model).json() for _ in range(2)]
    procs = [psutil.Process(w["pid"]) for w in listed(hive)]
    assert len(procs) == 2
    # each worker is on record, with what proves it is that worker, and without its key
    texts = [path.read_text() for path in records(hive)]
    assert len(texts) == 2
    assert {json.loads(t)["pid"] for t in texts} == {p.pid for p in procs}
    assert not any(w["api_key"] in t for w in workers for t in texts)

    killed_at = time.monotonic()
    hive.proc.send_signal(signal.SIGKILL)
    wait_for(lambda: all(gone(p) for p in procs), 2.0, "workers gone after the hive's kill -9")
    print(f"workers gone {time.monotonic() - killed_at:.2f} s after kill -9 of the hive")

    # the next hive finds the records, proves them stale and touches nothing
    again = start_hive(tmp_path / "hive", api_key=KEY)
    hives.append(again)
    assert listed(again) == [] and records(again) == []
    assert again.log().count("is stale") == 2


def test_the_next_hive_stops_a_proven_survivor_and_nothing_else(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    state_dir = tmp_path / "hive"
    # A worker no hive watches any more (as one stuck in the kernel through its hive's death).
    survivor = start_worker(
        tiny_model, tmp_path, args=("--worker-id", "worker-5a5a5a5a"), wait_ready=False
    )
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        worker = psutil.Process(survivor.proc.pid)
        sleep = psutil.Process(decoy.pid)
        workers_dir = state_dir / "workers"
        WorkerRecord(
            "worker-5a5a5a5a",
            worker.pid,
            worker.create_time(),
            tuple(worker.cmdline()),
            f"file:{tiny_model}",
            survivor.url,
        ).write(workers_dir / "worker-5a5a5a5a.json")
        # The same worker's record, its pid since reused by `sleep`.
        WorkerRecord(
            "worker-0b0b0b0b",
            sleep.pid,
            sleep.create_time(),
            tuple(worker.cmdline()),
            f"file:{tiny_model}",
        ).write(workers_dir / "worker-0b0b0b0b.json")
        # The right command line but another start time: a reused pid, not proof.
        WorkerRecord(
            "worker-0c0c0c0c",
            sleep.pid,
            sleep.create_time() - 100,
            tuple(sleep.cmdline()),
            f"file:{tiny_model}",
        ).write(workers_dir / "worker-0c0c0c0c.json")

        hive = start_hive(state_dir)
        hives.append(hive)
        assert survivor.proc.wait(5) == -signal.SIGKILL
        assert sleep.is_running() and sleep.status() != psutil.STATUS_ZOMBIE
        log = hive.log()
        assert (
            f"worker worker-5a5a5a5a (pid {worker.pid}, file:{tiny_model}) outlived a "
            "previous hive: stopping it, not adopting it"
        ) in log
        assert f"worker pid {worker.pid} stopped" in log
        assert f"worker-0b0b0b0b.json is stale (pid {sleep.pid} is gone or is another " in log
        assert "worker-0c0c0c0c.json is stale" in log
        assert records(hive) == [] and listed(hive) == []
    finally:
        survivor.stop()
        decoy.kill()
        decoy.wait()


def test_a_worker_that_re_execs_is_recorded_as_it_runs_and_proven(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    # As a macOS framework Python's venv re-execs .../Python.app/Contents/MacOS/Python: the
    # process runs another command line than the one the hive started.
    launcher = tmp_path / "launcher"
    launcher.write_text(f'#!/bin/sh\nexec "{BIN / "python"}" -m rbee.dataplane.worker "$@"\n')
    launcher.chmod(0o755)
    hive = start_hive_with_settings(tmp_path / "hive", worker_command=[str(launcher)])
    hives.append(hive)
    assert spawn(hive, tiny_model).status_code == 200
    [path] = records(hive)
    record = WorkerRecord.load(path)
    running = psutil.Process(listed(hive)[0]["pid"])
    assert record.argv == tuple(running.cmdline()) and record.argv[0] != str(launcher)
    assert record.process() == running  # the next hive would prove it, not call it stale


def test_a_frozen_worker_is_unresponsive_at_once_then_killed_and_reaped(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    # Short bounds so three missed checks take seconds; the defaults are 30 s and 5 s.
    hive = start_hive_with_settings(tmp_path / "hive", health_interval_s=0.5, health_timeout_s=1.0)
    hives.append(hive)
    worker_id = spawn(hive, tiny_model).json()["worker_id"]
    wait_for(lambda: listed(hive)[0]["state"] == "idle", 30, "worker idle")
    proc = psutil.Process(listed(hive)[0]["pid"])

    proc.suspend()  # SIGSTOP
    wait_for(lambda: listed(hive)[0]["state"] == "unresponsive", 5, "listed unresponsive")
    proc.resume()
    assert f"worker {worker_id} missed a health check (1/3): unresponsive" in hive.log()
    wait_for(lambda: listed(hive)[0]["state"] == "idle", 5, "idle again once it answers")

    proc.suspend()
    wait_for(lambda: listed(hive) == [], 15, "frozen worker removed")
    assert "it missed 3 health checks" in hive.log()
    assert hive.log().count("WORKER_CRASHED") == 1
    # killed and reaped by the hive: no <defunct> child left behind, and no record
    wait_for(lambda: not proc.is_running(), 5, "the killed worker reaped")
    assert hive.worker_pids() == [] and records(hive) == []


def test_a_frozen_worker_shut_down_gets_sigterm_at_once_not_after_the_graceful_period(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    hive = start_hive_with_settings(
        tmp_path / "hive", graceful_stop_s=30.0, terminate_stop_s=1.0, health_interval_s=600.0
    )
    hives.append(hive)
    worker_id = spawn(hive, tiny_model).json()["worker_id"]
    wait_for(lambda: listed(hive)[0]["state"] == "idle", 30, "worker idle")
    proc = psutil.Process(listed(hive)[0]["pid"])
    proc.suspend()  # SIGSTOP: it takes no shutdown request (which times out in 5 s)
    started = time.monotonic()
    with hive.client() as client:
        r = client.post(f"/v1/workers/{worker_id}/shutdown")
    took = time.monotonic() - started
    assert r.status_code == 200 and r.json()["state"] == "stopped", r.text
    print(f"a frozen worker stopped in {took:.1f} s")
    assert took < 15  # the request's 5 s and terminate_stop_s, not graceful_stop_s's 30
    assert f"worker {worker_id}: shutdown request failed" in hive.log()
    assert gone(proc) and listed(hive) == [] and records(hive) == []


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_the_worker_key_is_in_neither_its_environ_nor_its_argv(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    hive = start_hive(tmp_path / "hive", api_key=KEY)
    hives.append(hive)
    worker = spawn(hive, tiny_model).json()
    pid = listed(hive)[0]["pid"]
    key = worker["api_key"].encode()
    assert key not in Path(f"/proc/{pid}/environ").read_bytes()
    assert key not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"RBEE_WORKER_API_KEY" not in Path(f"/proc/{pid}/environ").read_bytes()
    # and the worker did get it (on stdin)
    assert httpx.get(f"{worker['url']}/v1/ready").status_code == 401
    ready = httpx.get(
        f"{worker['url']}/v1/ready", headers={"Authorization": f"Bearer {worker['api_key']}"}
    )
    assert ready.status_code == 200


def test_a_spawn_past_max_workers_is_refused(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess]
) -> None:
    hive = start_hive(tmp_path / "hive", "--max-workers", "1")
    hives.append(hive)
    assert spawn(hive, tiny_model).status_code == 200
    r = spawn(hive, tiny_model)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert "already runs 1 workers, its cap (--max-workers 1)" in error["message"]
    assert "shut one down" in error["message"]
    assert error["details"] == {"max_workers": 1, "workers": 1}
    assert len(listed(hive)) == 1 and len(records(hive)) == 1
    assert hive.stop() == 0
    assert records(hive) == []  # a worker stopped with its hive takes its record along


@pytest.mark.parametrize("case", ["missing", "not executable"])
def test_a_spawn_that_cannot_start_a_process_is_a_clean_error(
    tmp_path: Path, tiny_model: Path, hives: list[HiveProcess], case: str
) -> None:
    python = tmp_path / "deleted-venv" / "bin" / "python"  # as after the checkout was removed
    if case == "not executable":
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\n")
    hive = start_hive_with_settings(
        tmp_path / "hive", worker_command=[str(python), "-m", "rbee.dataplane.worker"]
    )
    hives.append(hive)
    r = spawn(hive, tiny_model)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "WORKER_CRASHED"
    assert error["message"].startswith("cannot start a worker process (")
    assert str(python) in error["message"] and "restart the hive" in error["message"]
    assert listed(hive) == [] and records(hive) == []
    started = time.monotonic()
    assert hive.stop() == 0
    assert time.monotonic() - started < 5  # no ghost to wait 10 s for
    assert "SIGKILL" not in hive.log() and "Traceback" not in hive.log()


def test_a_worker_refuses_a_hive_pid_that_is_not_its_parent() -> None:
    r = subprocess.run(
        [str(BIN / "rbee-worker"), "--hive-pid", "1", "--model", "file:/x.gguf"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert (
        f"--hive-pid: process 1 is not this worker's parent (its parent is {os.getpid()}): "
        "the hive that started it is gone"
    ) in r.stderr


# The watchdog alone (macOS has no prctl): the child watches its parent, whose pid it prints.
_ORPHAN = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", '''
import os, sys, time
sys.platform = "darwin"
from rbee.dataplane.worker.parent_watch import die_with_parent
die_with_parent(os.getppid())
print(os.getpid(), flush=True)
time.sleep(60)
'''], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
child.wait()
"""


def test_without_prctl_the_watchdog_ends_an_orphan() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    try:
        wait_for(lambda: gone(child), 2.0, "orphan gone")
    finally:
        if not gone(child):
            child.kill()
