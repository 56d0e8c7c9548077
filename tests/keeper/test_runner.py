"""The Runner contract (rbee.control.keeper.runner) on both runners: locally, and against a real
OpenSSH server on loopback. Each test runs once per runner kind.

The fake node is this machine reached through its own sshd (tests/support/sshd.py), so a test
can check on the "node" side with plain os/ps calls. No mocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import free_port
from support.inventories import local_node, write_inventory
from support.operators import node_table
from support.runner_checks import alive, arun, pids_with_arg
from support.sshd import FakeNode, start_sshd

from rbee.control.keeper.local_runner import LocalRunner
from rbee.control.keeper.node_access import runner_for
from rbee.control.keeper.runner import CommandError, CommandTimeout, Runner, detached_script
from rbee.control.keeper.ssh_runner import SSHRunner

# Print the arguments the process received, one JSON list: shows exactly what arrived.
ARGV_PRINTER = ["python3", "-c", "import sys,json;print(json.dumps(sys.argv[1:]))"]
HOSTILE_ARGS = [
    "; rm -rf /tmp/x",
    "$(id)",
    "`id`",
    "it's",
    'say "hi"',
    "two  spaces and a\ttab",
    "line1\nline2",
    "*",
    "~",
    "a|b&c>d<e",
    "$HOME ${PATH}",
    "",
    "-n",
    "\\back\\slash\\",
    "ünïcödé ✓",
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeNode]:
    n = start_sshd(tmp_path_factory.mktemp("sshd"), "node1")
    yield n
    n.stop()


@pytest.fixture(params=["local", "ssh"])
def make(request: pytest.FixtureRequest, node: FakeNode) -> Callable[[], Runner]:
    """A factory for a fresh runner of each kind (each test runs both)."""
    if request.param == "local":
        return LocalRunner
    return lambda: SSHRunner(**node.runner_kwargs())


# --------------------------------------------------------------------------------------------
# Commands


def test_run_results(make: Callable[[], Runner]) -> None:
    async def go() -> None:
        async with make() as r:
            res = await r.run(["echo", "hello"], timeout_s=10)
            assert (res.exit_status, res.stdout, res.stderr) == (0, "hello\n", "")
            res = await r.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
            assert (res.exit_status, res.stdout, res.stderr) == (3, "out\n", "err\n")
            assert not res.ok
            with pytest.raises(CommandError, match="exited with status 3: err"):
                await r.run(["sh", "-c", "echo err >&2; exit 3"], timeout_s=10, check=True)
            # Same answer for a missing program on both runners: callers check one thing.
            res = await r.run(["/nonexistent/rbee-hive", "--version"], timeout_s=10)
            assert res.exit_status == 127
            res = await r.run_shell("echo $((6*7)) >&2; echo done", timeout_s=10)
            assert (res.stdout, res.stderr) == ("done\n", "42\n")

    arun(go())


def test_arguments_arrive_verbatim(make: Callable[[], Runner]) -> None:
    async def go() -> list[str]:
        async with make() as r:
            res = await r.run([*ARGV_PRINTER, *HOSTILE_ARGS], timeout_s=10, check=True)
            received: list[str] = json.loads(res.stdout)
            return received

    assert arun(go()) == HOSTILE_ARGS


def test_stdin_input(make: Callable[[], Runner]) -> None:
    text = "first line\n$(id) `id` 'q' \"d\"\nünïcödé\nno newline at end"

    async def go() -> tuple[str, str]:
        async with make() as r:
            with_input = await r.run(["cat"], timeout_s=10, input=text)
            # Without input, stdin is at EOF at once: a command reading it does not hang.
            without = await r.run(["cat"], timeout_s=10)
            return with_input.stdout, without.stdout

    assert arun(go()) == (text, "")


def test_timeout_raises_and_stops_the_command(make: Callable[[], Runner]) -> None:
    # A unique duration finds exactly this command in ps.
    duration = f"{40 + secrets.randbelow(10**6) / 10**6:.6f}"

    async def go() -> None:
        async with make() as r:
            t0 = time.monotonic()
            with pytest.raises(CommandTimeout, match="did not finish within 0.5 s"):
                await r.run(["sleep", duration], timeout_s=0.5)
            assert time.monotonic() - t0 < 5
            # The runner (and its SSH connection) stays usable after a timeout.
            assert (await r.run(["echo", "still here"], timeout_s=10)).stdout == "still here\n"

    arun(go())
    deadline = time.monotonic() + 5
    while pids_with_arg(duration) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_with_arg(duration) == [], "the timed-out command is still running"


# --------------------------------------------------------------------------------------------
# Files


def test_write_file_creates_0600_with_exact_bytes(
    make: Callable[[], Runner], tmp_path: Path
) -> None:
    data = bytes(range(256)) + b"\nsk-secret-key\x00\xff"
    target = tmp_path / "new dir" / "keys" / "hive.key"
    existing = tmp_path / "loose.key"
    existing.write_bytes(b"old contents, much longer than the new ones")
    existing.chmod(0o644)

    async def go() -> None:
        async with make() as r:
            await r.write_file(str(target), data)
            # Replacing a world-readable file leaves a 0600 one, not the old mode.
            await r.write_file(str(existing), b"new")
            await r.write_file(str(tmp_path / "public.txt"), b"x", mode=0o644)

    arun(go())
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o7777 == 0o600
    assert target.parent.stat().st_mode & 0o777 == 0o700  # created parents are private too
    assert existing.read_bytes() == b"new"
    assert existing.stat().st_mode & 0o7777 == 0o600
    assert (tmp_path / "public.txt").stat().st_mode & 0o7777 == 0o644
    leftovers = [p.name for p in tmp_path.rglob("*") if "rbee-tmp" in p.name]
    assert leftovers == []


def test_expand_user(make: Callable[[], Runner]) -> None:
    async def go() -> list[str]:
        async with make() as r:
            return [await r.expand_user(p) for p in ("~", "~/.rbee/x", "/abs", "rel/~")]

    home = os.path.expanduser("~")
    assert arun(go()) == [home, f"{home}/.rbee/x", "/abs", "rel/~"]


# --------------------------------------------------------------------------------------------
# Detached start


def test_detached_start_survives_the_session(make: Callable[[], Runner], tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    log = tmp_path / "hive log.txt"
    script = detached_script(["sh", "-c", "pwd; echo started; exec sleep 60"], log_path=str(log))
    assert "nohup" in script and ">" in script and "</dev/null & echo $!" in script

    async def go() -> int:
        async with make() as r:
            t0 = time.monotonic()
            pid = await r.start_detached(
                ["sh", "-c", "pwd; echo started; exec sleep 60"],
                log_path=str(log),
                cwd=str(workdir),
                timeout_s=10,
            )
            assert time.monotonic() - t0 < 5  # returns promptly, does not wait for the job
        return pid

    pid = arun(go())  # the runner (and SSH connection) is closed on leaving `async with`
    try:
        time.sleep(0.3)
        assert alive(pid), f"detached process {pid} died with its session"
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"60"]
        assert os.getsid(pid) == pid  # its own session: no hangup from the SSH session
        assert log.read_text() == f"{workdir}\nstarted\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)


# --------------------------------------------------------------------------------------------
# Which runner a node gets


def test_runner_for_a_node_and_protocol(node: FakeNode, tmp_path: Path) -> None:
    inventory = write_inventory(
        tmp_path / "inventory.toml",
        local_node("here", free_port(), tmp_path / "here-state"),
        node_table("there", node, tmp_path / "there-state"),
    )
    local = runner_for(inventory.get("here"))
    assert isinstance(local, LocalRunner) and isinstance(local, Runner)
    remote = runner_for(inventory.get("there"))
    assert isinstance(remote, SSHRunner) and isinstance(remote, Runner)
    assert remote.label == f"{node.user}@127.0.0.1:{node.port}"

    async def go() -> str:
        async with remote as r:  # the inventory's user, port and keys reach the node
            return (await r.run(["echo", "reached"], timeout_s=10)).stdout

    assert arun(go()) == "reached\n"
