"""The runner (rbee.control.keeper.runner) against a real OpenSSH server on loopback and locally.

The fake node is this machine reached through its own sshd (tests/support/sshd.py), so a test
can check on the "node" side with plain os/ps calls. No mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from support.sshd import FakeNode, _keygen, start_sshd

import rbee.control.keeper.runner as runner_module
from rbee.control.keeper.runner import (
    CommandError,
    CommandTimeout,
    LocalRunner,
    Runner,
    SSHConnectError,
    SSHRunner,
    detached_script,
    make_runner,
)

T = TypeVar("T")

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


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


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


def _pid_state(pid: int) -> str | None:
    """ps's STAT for pid, or None when it is gone. A zombie (Z…) counts as dead: a killed
    process can stay one for a couple of seconds here before it is reaped."""
    out = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    state = out.stdout.strip()
    return state or None


def _alive(pid: int) -> bool:
    state = _pid_state(pid)
    return state is not None and not state.startswith("Z")


def _pids_with_arg(arg: str) -> list[int]:
    out = subprocess.run(
        ["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=False
    )
    pids = []
    for line in out.stdout.splitlines():
        pid, stat, args = line.strip().split(None, 2)
        if arg in args.split() and not stat.startswith("Z"):
            pids.append(int(pid))
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    while _pids_with_arg(duration) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_with_arg(duration) == [], "the timed-out command is still running"


def test_unredirected_background_job_times_out(node: FakeNode, tmp_path: Path) -> None:
    """The pitfall from issue 4: under bash, `cd X && setsid nohup … &` backgrounds a subshell
    that holds the channel's stdout, so the call would never return; the timeout ends it.
    (dash, Debian's sh, happens to exec the last command of that subshell and returns.)"""
    script = f"cd {tmp_path} && setsid nohup sleep 2.5 >log 2>&1 </dev/null & echo $!"

    async def go() -> None:
        async with SSHRunner(**node.runner_kwargs()) as r:
            with pytest.raises(CommandTimeout):
                await r.run(["bash", "-c", script], timeout_s=1)
            # The form start_detached builds returns at once under bash too.
            fixed = detached_script(["sleep", "2.5"], log_path="log", cwd=str(tmp_path))
            res = await r.run(["bash", "-c", fixed], timeout_s=5, check=True)
            assert res.stdout.strip().isdigit()

    arun(go())


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
# Port forwarding


def test_forward_local_port_reaches_node_loopback(node: FakeNode, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello through the tunnel")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)

        async def go() -> None:
            async with SSHRunner(**node.runner_kwargs()) as r:
                host, lport = await r.forward_local_port("127.0.0.1", port)
                assert host == "127.0.0.1" and lport != port
                async with httpx.AsyncClient(base_url=f"http://{host}:{lport}") as client:
                    # Several requests at once, each its own channel in the one connection.
                    resps = await asyncio.gather(*(client.get("/hello.txt") for _ in range(5)))
                assert [x.text for x in resps] == ["hello through the tunnel"] * 5
                assert await r.forward_local_port("127.0.0.1", port) == (host, lport)  # reused
            # Closing the runner closes the forward.
            with pytest.raises(OSError):
                socket.create_connection((host, lport), timeout=1).close()

            async with LocalRunner() as local:
                assert await local.forward_local_port("127.0.0.1", port) == ("127.0.0.1", port)

        arun(go())
    finally:
        server.terminate()
        server.wait(timeout=5)


# --------------------------------------------------------------------------------------------
# Refusals: host keys, client keys, unreachable nodes


def test_changed_host_key_is_refused(tmp_path: Path) -> None:
    n = start_sshd(tmp_path, "reinstalled")
    try:
        kwargs = n.runner_kwargs()

        async def connect() -> str:
            async with SSHRunner(**kwargs) as r:
                return (await r.run(["echo", "ok"], timeout_s=10)).stdout

        assert arun(connect()) == "ok\n"
        n.rotate_host_key()
        with pytest.raises(SSHConnectError) as err:
            arun(connect())
        e = err.value
        assert (e.kind, e.host, e.port) == ("host_key", "127.0.0.1", n.port)
        msg = str(e)
        assert msg.startswith(f"Host key verification failed for 127.0.0.1:{n.port}: ")
        assert "unknown or has changed" in msg
        assert f"ssh-keygen -R '[127.0.0.1]:{n.port}' -f {n.known_hosts}" in msg
        # Doing what the message says (accepting the new key) fixes it.
        n.trust_current_host_key()
        assert arun(connect()) == "ok\n"
    finally:
        n.stop()


def test_unknown_host_is_refused(node: FakeNode, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    kwargs = {**node.runner_kwargs(), "known_hosts": str(empty)}
    with pytest.raises(SSHConnectError) as err:
        arun(SSHRunner(**kwargs).connect())
    assert err.value.kind == "host_key"
    assert str(err.value).startswith(f"Host key verification failed for 127.0.0.1:{node.port}")
    assert "unknown" in str(err.value)

    kwargs["known_hosts"] = str(tmp_path / "missing")
    with pytest.raises(SSHConnectError, match="does not exist") as err:
        arun(SSHRunner(**kwargs).connect())
    assert err.value.kind == "host_key"


def test_wrong_client_key_is_refused(node: FakeNode, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    _keygen(other, "not-authorized")
    kwargs = {**node.runner_kwargs(), "identity_file": str(other)}
    with pytest.raises(SSHConnectError) as err:
        arun(SSHRunner(**kwargs).connect())
    e = err.value
    assert e.kind == "auth"
    assert str(e).startswith(f"Authentication failed for {node.user}@127.0.0.1:{node.port}: ")
    assert str(other) in str(e)


def test_refused_and_silent_ports(node: FakeNode) -> None:
    closed = _free_port()
    with pytest.raises(SSHConnectError, match=f"Connection refused by 127.0.0.1:{closed}") as err:
        arun(SSHRunner(**{**node.runner_kwargs(), "port": closed}).connect())
    assert err.value.kind == "refused"

    # Accepts TCP but never speaks SSH: the connect timeout ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        kwargs = {**node.runner_kwargs(), "port": port, "connect_timeout_s": 0.5}
        t0 = time.monotonic()
        with pytest.raises(SSHConnectError, match=f"Timed out .* 127.0.0.1:{port}") as err:
            arun(SSHRunner(**kwargs).connect())
        assert err.value.kind == "timeout"
        assert time.monotonic() - t0 < 5


def test_ssh_config_is_honoured_unless_disabled(
    node: FakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host alias from ~/.ssh/config (HostName, Port, User, IdentityFile) works; with
    use_ssh_config=False the file is not read at all."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        f"Host fakenode\n  HostName 127.0.0.1\n  Port {node.port}\n  User {node.user}\n"
        f"  IdentityFile {node.client_key}\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))

    async def go() -> str:
        async with SSHRunner("fakenode", known_hosts=str(node.known_hosts)) as r:
            assert r.label == f"fakenode:{node.port}"
            return (await r.run(["echo", "via config"], timeout_s=10)).stdout

    assert arun(go()) == "via config\n"
    r = SSHRunner("fakenode", known_hosts=str(node.known_hosts), use_ssh_config=False)
    with pytest.raises(SSHConnectError, match="Cannot resolve host 'fakenode'") as err:
        arun(r.connect())
    assert err.value.kind == "unreachable"


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
        assert _alive(pid), f"detached process {pid} died with its session"
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"60"]
        assert os.getsid(pid) == pid  # its own session: no hangup from the SSH session
        assert log.read_text() == f"{workdir}\nstarted\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)


def test_literal_detached_pattern(node: FakeNode, tmp_path: Path) -> None:
    """The exact form from issue 4, written by hand, returns promptly over SSH."""
    log = tmp_path / "log"

    async def go() -> int:
        async with SSHRunner(**node.runner_kwargs()) as r:
            res = await r.run_shell(
                f"setsid nohup sleep 60 >{log} 2>&1 </dev/null & echo $!", timeout_s=5, check=True
            )
            return int(res.stdout)

    pid = arun(go())
    try:
        assert _alive(pid)
    finally:
        os.kill(pid, 15)


# --------------------------------------------------------------------------------------------
# Concurrency


def test_many_concurrent_connections_to_one_stock_sshd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 runners connecting at once to an sshd with the stock MaxStartups (10:30:100): the
    per-host handshake cap alone (no retries) keeps every one of them from being dropped.
    Without it, about a third of 40 such connections were dropped here."""
    monkeypatch.setattr(runner_module, "_HANDSHAKE_RETRIES", 0)
    n = start_sshd(tmp_path, "stock", max_startups=None)
    try:

        async def one(i: int) -> str:
            async with SSHRunner(**n.runner_kwargs()) as r:
                return (await r.run(["echo", str(i)], timeout_s=30)).stdout

        async def go() -> list[str]:
            return await asyncio.gather(*(one(i) for i in range(20)))

        assert arun(go()) == [f"{i}\n" for i in range(20)]
    finally:
        n.stop()


def test_many_concurrent_commands_on_one_connection(node: FakeNode) -> None:
    """20 commands at once on one runner: more than sshd's MaxSessions (10) per connection."""

    async def go() -> list[str]:
        async with SSHRunner(**node.runner_kwargs()) as r:
            results = await asyncio.gather(
                *(r.run(["echo", str(i)], timeout_s=30) for i in range(20))
            )
            return [x.stdout for x in results]

    assert arun(go()) == [f"{i}\n" for i in range(20)]


def test_make_runner_and_protocol(node: FakeNode) -> None:
    local = make_runner(ssh=False)
    assert isinstance(local, LocalRunner) and isinstance(local, Runner)
    remote = make_runner(ssh=True, host="127.0.0.1", port=node.port, username=node.user)
    assert isinstance(remote, SSHRunner) and isinstance(remote, Runner)
    assert remote.label == f"{node.user}@127.0.0.1:{node.port}"
    with pytest.raises(ValueError):
        make_runner(ssh=True)
