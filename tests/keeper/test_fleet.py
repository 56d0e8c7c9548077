"""`rbee nodes`, `workers`, `models`, `logs` against a real local hive and workers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import BIN
from support.operators import Keeper, make_keeper


def rbee(keeper: Keeper, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rbee"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=keeper.env(COLUMNS="250"),
    )


def test_fleet_commands_on_the_local_node(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    try:
        assert rbee(keeper, "workers", "list").stdout.strip() == "No workers registered"
        down = rbee(keeper, "nodes")
        assert down.returncode == 0 and " down " in down.stdout
        assert "the hive does not answer" in down.stdout

        assert keeper.infer("hello", "--max-tokens", "2").returncode == 0
        [worker] = keeper.registered()
        listed = rbee(keeper, "workers", "list")
        assert worker["worker_id"] in listed.stdout and "idle" in listed.stdout

        health = rbee(keeper, "workers", "health", "--node", "local")
        assert f"✓ {worker['worker_id']} - idle (ready: true)" in health.stdout

        nodes = rbee(keeper, "nodes")
        assert "local" in nodes.stdout and " up " in nodes.stdout and "0.1.0" in nodes.stdout
        assert " GB " in nodes.stdout  # the node's free RAM

        models = rbee(keeper, "models", "list", "--node", "local")
        assert f"file:{tiny_model}" in models.stdout
        other = tmp_path / "other.gguf"
        other.write_bytes(tiny_model.read_bytes())
        download = rbee(keeper, "models", "download", "--node", "local", f"file:{other}")
        assert download.returncode == 0 and f"file:{other} is on local" in download.stderr

        logs = rbee(keeper, "logs", "--node", "local")
        assert "listening on" in logs.stdout and worker["worker_id"] in logs.stdout

        follower = subprocess.Popen(
            [str(BIN / "rbee"), "logs", "--node", "local", "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=keeper.env(),
        )
        assert "listening on" in follower.stdout.readline() + follower.stdout.readline()
        time.sleep(0.3)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130

        stop = rbee(keeper, "workers", "shutdown", "--id", worker["worker_id"])
        assert stop.returncode == 0 and "stopped" in stop.stderr
        assert keeper.registered() == []
        assert rbee(keeper, "workers", "health").stdout.strip() == "No workers on local"
    finally:
        keeper.stop_hive()


def test_fleet_commands_say_what_is_wrong(tmp_path: Path, tiny_model: Path) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    no_hive = rbee(keeper, "models", "list")
    assert no_hive.returncode == 1
    assert "Cannot connect to the hive on local" in no_hive.stderr
    assert "rbee ssh-up local" in no_hive.stderr
    unknown = rbee(keeper, "workers", "shutdown", "--id", "worker-nope")
    assert unknown.returncode == 2 and "not in this keeper's registry" in unknown.stderr
    # An empty --node is no node: the same answer, not an AttributeError on the unknown worker.
    no_node = rbee(keeper, "workers", "shutdown", "--id", "worker-nope", "--node", "")
    assert no_node.returncode == 2 and "not in this keeper's registry" in no_node.stderr
    bad_ref = rbee(keeper, "models", "download", "hf:../x")
    assert bad_ref.returncode == 2
    for result in (no_hive, unknown, no_node, bad_ref):
        assert "Traceback" not in result.stderr
