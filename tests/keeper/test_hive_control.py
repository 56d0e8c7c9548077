"""`rbee ssh-up` / `rbee ssh-down` / `rbee infer --node` against real sshd fake nodes.

The fake nodes are this machine behind their own sshd; their hives and workers bind the
node's loopback, so the keeper reaches them only through SSH port forwards.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import BIN
from support.inventories import unreachable_node
from support.operators import Operator, node_table
from support.sshd import FakeNode, start_sshd

from rbee.control.hive.settings import KEY_FILE
from rbee.control.keeper.hive_control import ANSWER_TIMEOUT_S
from rbee.control.keeper.probe import NODE_PROBE_TIMEOUT_S
from rbee.dataplane.plumbing.pidfile import PidRecord


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[Operator, dict[str, FakeNode], dict[str, Path]]]:
    nodes = {name: start_sshd(tmp_path / "sshd", name) for name in ("alpha", "beta")}
    states = {name: tmp_path / f"{name}-hive" for name in nodes}
    operator = Operator(tmp_path, "".join(node_table(n, nodes[n], states[n]) for n in nodes))
    yield operator, nodes, states
    operator.rbee("ssh-down", "alpha", "beta")
    for node in nodes.values():
        node.stop()


def test_up_infer_down_through_ssh_tunnels(two_nodes, tiny_model: Path) -> None:
    operator, _nodes, states = two_nodes
    up = operator.rbee("ssh-up", "alpha", "beta")
    assert up.returncode == 0, up.stderr
    for name in ("alpha", "beta"):
        assert f"{name}: rbee-hive 0.1.0 up (pid" in up.stderr
        assert _recorded_pid(states[name]) > 0

    again = operator.rbee("ssh-up", "alpha")
    assert again.returncode == 0 and "alpha: rbee-hive 0.1.0 already running" in again.stderr

    answer = operator.rbee(
        "infer",
        "--node",
        "alpha",
        "--model",
        f"file:{tiny_model}",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "Once upon a time",
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() and "Model ready!" in answer.stderr
    warm = operator.rbee(
        "infer",
        "--node",
        "alpha",
        "--model",
        f"file:{tiny_model}",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "Once upon a time",
    )
    assert warm.returncode == 0 and warm.stdout == answer.stdout
    assert "Model ready!" not in warm.stderr  # the warm path, through a fresh tunnel

    pids = {name: _recorded_pid(states[name]) for name in states}
    down = operator.rbee("ssh-down", "alpha", "beta")
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert f"{name}: rbee-hive stopped (pid {pid})" in down.stderr
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert "is not running" in operator.rbee("ssh-down", "alpha").stderr


def test_remote_infer_without_a_hive_says_to_ssh_up(two_nodes, tiny_model: Path) -> None:
    operator, _nodes, _states = two_nodes
    result = operator.rbee("infer", "--node", "beta", "--model", f"file:{tiny_model}", "hi")
    assert result.returncode == 1
    assert "after 3 attempts" in result.stderr and "rbee ssh-up beta" in result.stderr


def test_changed_host_key_is_refused(two_nodes) -> None:
    operator, nodes, _states = two_nodes
    nodes["alpha"].rotate_host_key()
    result = operator.rbee("ssh-up", "alpha")
    assert result.returncode == 1
    assert "Host key verification failed" in result.stderr
    assert "ssh-keygen -R" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_running_hive_that_refuses_our_key_is_not_called_up(tmp_path: Path) -> None:
    """Its health needs no key, so it answered; ssh-up asks with the key too (EC9)."""
    node = start_sshd(tmp_path / "sshd", "keyed")
    table = node_table("keyed", node, tmp_path / "state") + 'api_key_env = "KEYED_KEY"\n'
    operator = Operator(tmp_path, table)
    try:
        up = operator.rbee("ssh-up", "keyed", KEYED_KEY="the-first-key")
        assert up.returncode == 0, up.stderr
        again = operator.rbee("ssh-up", "keyed", KEYED_KEY="another-key")
        assert again.returncode == 1, again.stderr
        assert "Authentication failed" in again.stderr
        assert "KEYED_KEY" in again.stderr  # where the key comes from
        assert "already running" not in again.stderr and "Traceback" not in again.stderr
        assert "the-first-key" not in again.stderr and "another-key" not in again.stderr
    finally:
        operator.rbee("ssh-down", "keyed")
        node.stop()


def test_node_without_rbee_gets_the_install_hint(tmp_path: Path) -> None:
    node = start_sshd(tmp_path / "sshd", "bare")
    try:
        operator = Operator(
            tmp_path,
            node_table("bare", node, tmp_path / "state", rbee_path=tmp_path / "not-installed"),
        )
        result = operator.rbee("ssh-up", "bare", "--no-install")
    finally:
        node.stop()
    assert result.returncode == 1
    assert "Error: rbee is not installed on bare" in result.stderr
    assert "rbee deploy bare" in result.stderr and "ansible" in result.stderr


def test_metacharacters_in_paths_never_reach_a_shell(tmp_path: Path) -> None:
    node = start_sshd(tmp_path / "sshd", "quoted")
    marker = tmp_path / "pwned"
    try:
        operator = Operator(
            tmp_path,
            node_table(
                "quoted", node, tmp_path / "state", rbee_path=Path(f"/nonexistent; touch {marker}")
            ),
        )
        result = operator.rbee("ssh-up", "quoted", "--no-install")
    finally:
        node.stop()
    assert result.returncode == 1 and "rbee is not installed on quoted" in result.stderr
    assert not marker.exists()


def _recorded_pid(state_dir: Path) -> int:
    """The pid in the hive's pid file (its first line; the second is its start time)."""
    return int((state_dir / "hive.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return stat != "Z"


def test_ec8_version_mismatch_names_both_versions(tmp_path: Path) -> None:
    old_install = tmp_path / "old-rbee"
    old_install.mkdir()
    (old_install / "rbee-hive").write_text("#!/bin/sh\necho 'rbee-hive, version 0.2.0'\n")
    (old_install / "rbee-hive").chmod(0o755)
    node = start_sshd(tmp_path / "sshd", "old")
    try:
        operator = Operator(
            tmp_path, node_table("old", node, tmp_path / "state", rbee_path=old_install)
        )
        result = operator.rbee("ssh-up", "old", "--no-install")
    finally:
        node.stop()
    assert result.returncode == 1
    assert "Error: Version mismatch: rbee=0.1.0, rbee-hive=0.2.0. Please upgrade." in result.stderr
    assert "rbee deploy old" in result.stderr


def test_a_node_listening_on_every_address_is_reached_directly(
    tmp_path: Path, tiny_model: Path
) -> None:
    """listen = 0.0.0.0: no tunnels; the key travels by SFTP into a 0600 file, never argv."""
    node = start_sshd(tmp_path / "sshd", "direct")
    state = tmp_path / "direct-hive"
    operator = Operator(
        tmp_path,
        node_table("direct", node, state) + 'listen = "0.0.0.0"\napi_key_env = "RBEE_DIRECT_KEY"\n',
    )
    key = "direct-node-key-0123456789"
    try:
        up = operator.rbee("ssh-up", "direct", RBEE_DIRECT_KEY=key)
        assert up.returncode == 0, up.stderr
        key_file = state / KEY_FILE
        assert key_file.read_text() == key and key_file.stat().st_mode & 0o777 == 0o600
        pid = _recorded_pid(state)
        assert key not in Path(f"/proc/{pid}/cmdline").read_text()
        answer = operator.rbee(
            "infer",
            "--node",
            "direct",
            "--model",
            f"file:{tiny_model}",
            "--max-tokens",
            "5",
            "hi",
            RBEE_DIRECT_KEY=key,
        )
        assert answer.returncode == 0, answer.stderr
        [worker] = Operator.registered_in(operator.home)
        assert worker["url"].startswith("http://0.0.0.0:")  # bound everywhere, reached directly
        assert operator.rbee("ssh-down", "direct", RBEE_DIRECT_KEY=key).returncode == 0
    finally:
        operator.rbee("ssh-down", "direct", RBEE_DIRECT_KEY=key)
        node.stop()


def test_ssh_down_leaves_the_process_a_stale_pid_file_names_alone(tmp_path: Path) -> None:
    """After a crash or a reboot hive.pid names whatever process got that pid next (here a
    `sleep`, recorded with its real start time): no hive holds the file's lock, so nothing
    is signalled."""
    node = start_sshd(tmp_path / "sshd", "stale")
    state = tmp_path / "stale-hive"
    state.mkdir()
    decoy = subprocess.Popen(["sleep", "120"])
    try:
        (state / "hive.pid").write_text(PidRecord.of(psutil.Process(decoy.pid)).render())
        operator = Operator(tmp_path, node_table("stale", node, state))
        down = operator.rbee("ssh-down", "stale")
        assert down.returncode == 0, down.stderr
        assert (
            f"stale: rbee-hive is not running (stale hive.pid names pid {decoy.pid}: left alone)"
        ) in down.stderr
        time.sleep(0.5)
        assert decoy.poll() is None  # alive: never signalled
    finally:
        decoy.kill()
        decoy.wait()
        node.stop()


def test_a_wedged_hive_costs_a_deadline_not_a_hang(tmp_path: Path) -> None:
    """A hive stopped with SIGSTOP while sshd still works: `rbee nodes` and `rbee ssh-up`
    return within their deadlines and say so; `rbee ssh-down` still stops it."""
    node = start_sshd(tmp_path / "sshd", "wedged")
    state = tmp_path / "wedged-hive"
    operator = Operator(tmp_path, node_table("wedged", node, state))
    hive: psutil.Process | None = None
    try:
        assert operator.rbee("ssh-up", "wedged").returncode == 0
        pid = _recorded_pid(state)
        hive = psutil.Process(pid)
        hive.suspend()  # SIGSTOP

        started = time.monotonic()
        nodes = operator.rbee("nodes", timeout=60, COLUMNS="200")  # the table on one line
        took = time.monotonic() - started
        assert nodes.returncode == 0, nodes.stderr
        assert "not answering" in nodes.stdout and f"({NODE_PROBE_TIMEOUT_S:g} s)" in nodes.stdout
        assert took < NODE_PROBE_TIMEOUT_S + 10  # its deadline, plus starting the command

        started = time.monotonic()
        up = operator.rbee("ssh-up", "wedged", timeout=60)
        took = time.monotonic() - started
        assert up.returncode == 1
        assert f"wedged (pid {pid}) is not answering ({ANSWER_TIMEOUT_S:g} s)" in up.stderr
        assert "rbee ssh-down wedged" in up.stderr and "Traceback" not in up.stderr
        assert took < ANSWER_TIMEOUT_S + 10

        down = operator.rbee("ssh-down", "wedged", timeout=60)
        assert f"wedged: rbee-hive stopped (pid {pid})" in down.stderr, down.stderr
        assert not _alive(pid)
    finally:
        if hive is not None:
            with contextlib.suppress(psutil.Error):
                hive.resume()  # psutil checks the pid was not reused
        operator.rbee("ssh-down", "wedged")
        node.stop()


def test_many_nodes_end_in_one_summary_and_a_rerun_runs_nothing_there(tmp_path: Path) -> None:
    """Piped: a line per node (a failure in full, on one line), then the summary naming the
    failed node and why, exit 1. Re-running over running hives asks their /v1/health only:
    with rbee-hive gone from rbee_path, the re-run still finds them up."""
    installed = tmp_path / "rbee-bin"
    installed.mkdir()
    (installed / "rbee-hive").symlink_to(BIN / "rbee-hive")
    nodes = {name: start_sshd(tmp_path / "sshd", name) for name in ("n1", "n2")}
    states = {name: tmp_path / f"{name}-hive" for name in nodes}
    operator = Operator(
        tmp_path,
        "".join(node_table(n, nodes[n], states[n], rbee_path=installed) for n in nodes)
        + unreachable_node("gone", tmp_path / "known_hosts"),
    )
    try:
        up = operator.rbee("ssh-up", "--no-install", "n1", "n2", "gone")
        assert up.returncode == 1, up.stderr
        lines = up.stderr.strip().splitlines()
        assert lines[-1] == "2 up, 1 failed: gone (refused)", up.stderr
        # A line per node as it ends; a failure in full: its message, then indented the
        # details and what to do.
        assert len(lines) == 6, up.stderr
        assert (
            sum(line.startswith(("n1: rbee-hive 0.1.0 up (pid", "n2: rbee-hive")) for line in lines)
            == 2
        )
        gone = lines.index("gone: Error: Cannot connect to 127.0.0.1:1 after 3 attempts")
        assert lines[gone + 1 : gone + 3] == [
            "  SSH: the connection was refused",
            "  Suggestion: Check if sshd is running on gone (port 1)",
        ], up.stderr
        assert max(map(len, lines)) <= 80

        (installed / "rbee-hive").unlink()  # a version probe would now fail
        again = operator.rbee("ssh-up", "--no-install", "n1", "n2")
        assert again.returncode == 0, again.stderr
        assert "n1: rbee-hive 0.1.0 already running" in again.stderr
        assert again.stderr.strip().splitlines()[-1] == "2 up"

        pids = {name: _recorded_pid(states[name]) for name in states}
        down = operator.rbee("ssh-down", "n1", "n2")  # no rbee-hive needed on Linux either
        assert down.returncode == 0, down.stderr
        assert f"n2: rbee-hive stopped (pid {pids['n2']})" in down.stderr
        assert down.stderr.strip().splitlines()[-1] == "2 stopped"
        assert not any(_alive(pid) for pid in pids.values())
    finally:
        (installed / "rbee-hive").unlink(missing_ok=True)
        (installed / "rbee-hive").symlink_to(BIN / "rbee-hive")
        operator.rbee("ssh-down", "n1", "n2")
        for node in nodes.values():
            node.stop()
