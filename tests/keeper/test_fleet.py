"""`rbee nodes`, `workers`, `models`, `logs` against a real local hive and workers, and
`rbee nodes` over fake nodes behind real sshd, some of them wedged or dead."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil

from conftest import BIN
from support.operators import Keeper, Operator, make_keeper, node_table
from support.sshd import start_sshd

from rbee.control.keeper.fleet import NODES_ANSWER_S


def rbee(keeper: Keeper, *args: str, columns: int = 250) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rbee"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=keeper.env(COLUMNS=str(columns)),
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
        [header, row] = listed.stdout.splitlines()
        assert header.split()[:4] == ["worker", "node", "model", "state"]
        assert row.split()[:5] == [
            worker["worker_id"],
            "local",
            f"file:{tiny_model}",
            "idle",
            worker["url"],
        ]
        # At 80 columns the model's long path goes under the row; nothing is cut.
        narrow = rbee(keeper, "workers", "list", columns=80).stdout.splitlines()
        assert narrow[1].split()[:4] == [worker["worker_id"], "local", "idle", worker["url"]]
        assert narrow[2] == f"  model: file:{tiny_model}"
        assert all(len(line) <= 80 for line in narrow[:2]) and "…" not in "".join(narrow)

        health = rbee(keeper, "workers", "health", "--node", "local")
        assert f"✓ {worker['worker_id']} - idle (ready: true)" in health.stdout

        nodes = rbee(keeper, "nodes")
        assert nodes.stdout.splitlines()[1].split()[:6] == [
            "local",
            "local",
            "up",
            "0.1.0",
            "1",
            "1",
        ]
        assert nodes.stdout.splitlines()[1].endswith(" GB")  # the node's free RAM
        assert nodes.stdout.splitlines()[-1] == "1 node: 1 up"

        models = rbee(keeper, "models", "list", "--node", "local")
        assert f"file:{tiny_model}" in models.stdout
        [model] = json.loads(rbee(keeper, "models", "list", "-o", "json").stdout)
        assert model == {
            "node": "local",
            "model_ref": f"file:{tiny_model}",
            "provider": "file",
            "size_bytes": tiny_model.stat().st_size,
            "sha256": model["sha256"],
            "downloaded_at": model["downloaded_at"],
            "path": str(tiny_model),
        }
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


NODE_KEYS = {
    "node",
    "host",
    "hive",
    "version",
    "workers",
    "models",
    "ram_available_mb",
    "problem",
    "suggestion",
}
CONNECT_TIMEOUT_S = 3
# The deadline counts the command's start-up: past it come only closing its connections
# and leaving, on a shared 2-core machine.
CLOSE_S = 1.0


def test_wedged_and_dead_nodes_cost_one_deadline_and_say_what_to_do(tmp_path: Path) -> None:
    """Four nodes behind real sshd: alpha up; beta's hive SIGSTOPped (its port still takes
    connections); gamma's sshd stopped (refused); delta's sshd SIGSTOPped (the handshake
    hangs). `rbee nodes` ends within the longest connect timeout + 2 s (5 s at least), on a
    terminal (a live table), in a pipe at 80 columns (rows in inventory order, nothing over
    80 columns, problems whole under their row) and as JSON."""
    names = ("alpha", "beta", "gamma", "delta")
    nodes = {name: start_sshd(tmp_path / "sshd", name) for name in names}
    operator = Operator(
        tmp_path,
        "".join(
            node_table(n, nodes[n], tmp_path / f"{n}-hive")
            + f"connect_timeout_s = {CONNECT_TIMEOUT_S}\n"
            for n in names
        ),
    )
    wedged: psutil.Process | None = None
    hung_sshd = nodes["delta"].proc
    assert hung_sshd is not None
    try:
        up = operator.rbee("ssh-up", "alpha", "beta")
        assert up.returncode == 0, up.stderr
        wedged = psutil.Process(int((tmp_path / "beta-hive/hive.pid").read_text().split()[0]))
        wedged.suspend()
        nodes["gamma"].stop()
        hung_sshd.send_signal(signal.SIGSTOP)

        started = time.monotonic()
        on_terminal = operator.on_terminal("nodes", columns=80)
        terminal_output = on_terminal.wait()
        took = time.monotonic() - started
        piped = operator.popen("nodes", COLUMNS="80")
        as_json = operator.popen("nodes", "-o", "json")
        outputs = [p.communicate(timeout=60) for p in (piped, as_json)]
    finally:
        if wedged is not None:
            wedged.resume()  # psutil checks the pid was not reused
        hung_sshd.send_signal(signal.SIGCONT)
        operator.rbee("ssh-down", "alpha", "beta")
        for node in nodes.values():
            node.stop()

    assert took < max(5.0, CONNECT_TIMEOUT_S + NODES_ANSWER_S) + CLOSE_S
    (table, table_err), (listed, listed_err) = outputs
    assert piped.returncode == 0 and as_json.returncode == 0, table_err + listed_err
    assert "Traceback" not in table_err + listed_err

    statuses = {s["node"]: s for s in json.loads(listed)}
    assert list(statuses) == list(names)
    assert all(set(s) == NODE_KEYS for s in statuses.values())
    assert statuses["alpha"]["hive"] == "up" and statuses["alpha"]["workers"] == []
    assert isinstance(statuses["alpha"]["ram_available_mb"], int)
    assert statuses["beta"]["hive"] == "not answering" and statuses["beta"]["workers"] is None
    assert re.fullmatch(r"not answering \(\d(\.\d)? s\)", statuses["beta"]["problem"])
    assert "`rbee ssh-down beta`" in statuses["beta"]["suggestion"]
    assert statuses["gamma"]["hive"] == statuses["delta"]["hive"] == "unreachable"
    assert "Connection refused" in statuses["gamma"]["problem"]
    # Its connect timeout, or, when the command's start-up ate into the deadline, the deadline.
    assert re.match(
        rf"(Timed out after {CONNECT_TIMEOUT_S} s connecting|SSH: no answer within \d)",
        statuses["delta"]["problem"],
    )

    lines = table.splitlines()
    assert "\x1b" not in table and all(len(line) <= 80 for line in lines), table
    assert lines[0] == "node   host       hive              version  workers  models  free RAM"
    assert lines[-1] == "4 nodes: 1 up, 2 unreachable, 1 not answering"
    rows = [line for line in lines[:-1] if not line.startswith(" ")]
    assert [row.split()[0] for row in rows[1:]] == list(names)  # inventory order
    assert rows[2].split()[2:4] == ["not", "answering"]
    # Each node's problem and suggestion, whole, on the lines under its row.
    for name in ("beta", "gamma", "delta"):
        start = lines.index(next(r for r in rows if r.startswith(name + " ")))
        under = []
        for line in lines[start + 1 :]:
            if not line.startswith("  "):
                break
            under.append(line.strip())
        said = " ".join(under)
        expected = f"{statuses[name]['problem']} Suggestion: {statuses[name]['suggestion']}"
        assert waits_hidden(said) == waits_hidden(expected)

    # The terminal saw the rows before the slowest arrived, then the whole table.
    assert "checking…" in terminal_output
    assert "not answering (" in terminal_output and "rbee ssh-down beta" in terminal_output


def waits_hidden(text: str) -> str:
    """`text` without its waits: two runs of `rbee nodes` wait as long as their start-ups
    left them (`not answering (3.2 s)`, `SSH: no answer within 2.5 s`)."""
    return re.sub(r"\d+(\.\d)? s\b", "N s", text)
