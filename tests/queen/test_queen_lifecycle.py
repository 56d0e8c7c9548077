"""The queen's life as a person runs it: `rbee queen start` in the background, `status`,
a second queen refused, `stop`; the hives it starts at its start (an sshd node's that was
down) and, with --stop-hives, stops at its exit: only those it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from conftest import BIN, free_port
from support.hive_process import start_hive
from support.inventories import local_node, unreachable_node
from support.operators import node_table
from support.queen_process import sdk, start_queen
from support.sshd import start_sshd

from rbee.control.keeper.inventory import load_inventory
from rbee.control.keeper.queen_address import read_queen_address
from rbee.control.queen.hives import needed_nodes
from rbee.dataplane.plumbing.pidfile import NOT_RUNNING_EXIT
from rbee.dataplane.protocol.wire import VERSION


def rbee(inventory: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    return subprocess.run(
        [str(BIN / "rbee"), "--inventory", str(inventory), "queen", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**env, "RBEE_HOME": str(home)},
    )


def hive_pid(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rbee-hive"), "pid", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_start_status_a_second_queen_refused_stop(tmp_path: Path) -> None:
    """A dead node delays nothing: the queen answers at once and shows it down."""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(unreachable_node("dead", tmp_path / "known_hosts"))
    home = tmp_path / "home"
    none = rbee(inventory, home, "status")
    assert none.returncode == NOT_RUNNING_EXIT and "no queen runs" in none.stdout

    port = free_port()
    began = time.monotonic()
    started = rbee(inventory, home, "start", "--listen", f"127.0.0.1:{port}")
    assert started.returncode == 0, started.stderr
    assert time.monotonic() - began < 15
    url = f"http://127.0.0.1:{port}"
    assert f"running at {url}" in started.stdout and f"log: {home / 'queen.log'}" in started.stdout
    address = read_queen_address(home)
    assert address is not None and address.url == url

    deadline = time.monotonic() + 20
    while (report := json.loads(rbee(inventory, home, "status", "-o", "json").stdout)).get(
        "nodes"
    ) != {"dead": "unreachable"}:
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    assert report["running"] and report["url"] == url and report["nodes_up"] == 0
    assert report["workers"] == 0 and report["queued"] == 0 and report["problem"] is None
    pid = report["pid"]
    text = rbee(inventory, home, "status")
    assert text.returncode == 0 and f"rbee queen {VERSION} running (pid {pid}, up " in text.stdout
    assert "nodes:   0 of 1 up" in text.stdout

    again = rbee(inventory, home, "start", "--listen", f"127.0.0.1:{free_port()}")
    assert again.returncode == 1 and f"a queen already runs (pid {pid})" in again.stderr
    foreground = rbee(inventory, home, "--listen", f"127.0.0.1:{free_port()}")
    assert foreground.returncode == 1
    assert f"another rbee queen (pid {pid}) is running\nwith RBEE_HOME {home}" in foreground.stderr
    assert read_queen_address(home) == address  # the refused queen removed nothing

    stopped = rbee(inventory, home, "stop")
    assert stopped.returncode == 0 and f"rbee queen stopped (pid {pid})" in stopped.stdout
    assert rbee(inventory, home, "status").returncode == NOT_RUNNING_EXIT
    assert not (home / "queen.json").exists()
    twice = rbee(inventory, home, "stop")
    assert twice.returncode == 0 and "rbee queen is not running" in twice.stdout
    assert "could not start the hive on dead" in (home / "queen.log").read_text()


def test_a_killed_queen_names_nobody_and_a_failed_start_shows_its_log(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(unreachable_node("dead", tmp_path / "known_hosts"))
    home = tmp_path / "home"
    started = rbee(inventory, home, "start", "--listen", f"127.0.0.1:{free_port()}")
    assert started.returncode == 0, started.stderr
    pid = json.loads(rbee(inventory, home, "status", "-o", "json").stdout)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while read_queen_address(home) is not None:  # its queen.json stays, but names nobody
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (home / "queen.json").exists()
    gone = rbee(inventory, home, "status", "-o", "json")
    assert gone.returncode == NOT_RUNNING_EXIT and json.loads(gone.stdout) == {"running": False}

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = rbee(inventory, home, "start", "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert busy.returncode == 1
    assert "the queen exited with status 1" in busy.stderr
    assert "cannot listen on 127.0.0.1:" in busy.stderr  # the log's last lines
    assert not (home / "queen.json").exists()  # the next queen cleared the dead one's


def test_the_queen_starts_a_down_hive_and_stop_hives_stops_only_that_one(
    tmp_path: Path, tiny_model: Path
) -> None:
    sshd = start_sshd(tmp_path / "sshd", "alpha")
    local = start_hive(tmp_path / "local-hive")  # already running: not the queen's to stop
    alpha_state = tmp_path / "alpha-hive"
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        local_node("local", int(local.url.rsplit(":", 1)[1]), local.state_dir)
        + node_table("alpha", sshd, alpha_state)
        + f'\n[models.tiny]\nref = "file:{tiny_model}"\nnodes = ["alpha"]\n'
        + f'\n[models.tiny-here]\nref = "file:{tiny_model}"\nnodes = ["local"]\n'
    )
    assert hive_pid(alpha_state).returncode == NOT_RUNNING_EXIT
    home = tmp_path / "home"
    queen = start_queen(inventory, home, "--stop-hives")
    try:
        deadline = time.monotonic() + 30
        while {
            n["name"]: n["state"] for n in httpx.get(f"{queen.url}/v1/cluster").json()["nodes"]
        } != {"local": "up", "alpha": "up"}:
            assert time.monotonic() < deadline, queen.log()
            time.sleep(0.2)
        alpha_pid = int(hive_pid(alpha_state).stdout)
        # its probe may see the hive up before the start returns and is logged
        while f"node alpha: started its hive (pid {alpha_pid})" not in queen.log():
            assert time.monotonic() < deadline, queen.log()
            time.sleep(0.1)
        assert "node local: its hive was already running" in queen.log()
        answer = sdk(queen).completions.with_raw_response.create(
            model="tiny", prompt="Once upon a time", max_tokens=4
        )
        assert answer.headers["x-rbee-node"] == "alpha" and answer.parse().choices[0].text
    finally:
        queen.stop()
        sshd.stop()
    assert hive_pid(alpha_state).returncode == NOT_RUNNING_EXIT, queen.log()
    assert httpx.get(f"{local.url}/v1/health").status_code == 200  # left running
    local.stop()


def test_the_hives_it_needs_are_its_models_nodes_or_every_node(tmp_path: Path) -> None:
    nodes = "".join(unreachable_node(n, tmp_path / "known_hosts") for n in ("a", "b", "c"))
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(nodes)
    assert [n.name for n in needed_nodes(load_inventory(inventory))] == ["a", "b", "c"]
    inventory.write_text(
        nodes + '[models.one]\nref = "file:/m.gguf"\nnodes = ["c", "a"]\n'
        '[models.two]\nref = "file:/n.gguf"\nnodes = ["a"]\n'
    )
    assert [n.name for n in needed_nodes(load_inventory(inventory))] == ["a", "c"]


def test_an_option_before_a_command_is_refused_not_ignored(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(unreachable_node("dead", tmp_path / "known_hosts"))
    wrong = rbee(inventory, tmp_path / "home", "--listen", "127.0.0.1:1", "start")
    assert wrong.returncode == 2
    assert "--listen before `start` would be ignored:\ngive it after" in wrong.stderr
