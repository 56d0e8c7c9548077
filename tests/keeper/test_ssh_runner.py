"""SSHRunner (rbee.control.keeper.ssh_runner) against a real OpenSSH server on loopback: what only
the SSH runner does (port forwards, remote kill of a hung channel, many connections and
sessions) and the refusals ssh_connect and ssh_errors turn into SSHConnectError.

The fake node is this machine reached through its own sshd (tests/support/sshd.py), so a test
can check on the "node" side with plain os/ps calls. No mocks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from support.runner_checks import alive, arun
from support.sshd import FakeNode, _keygen, start_sshd

import rbee.control.keeper.ssh_connect as ssh_connect
from rbee.control.keeper.runner import CommandTimeout, detached_script
from rbee.control.keeper.ssh_errors import SSHConnectError
from rbee.control.keeper.ssh_runner import SSHRunner


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeNode]:
    n = start_sshd(tmp_path_factory.mktemp("sshd"), "node1")
    yield n
    n.stop()


def test_a_host_is_required() -> None:
    with pytest.raises(ValueError):
        SSHRunner("")


# --------------------------------------------------------------------------------------------
# Commands


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
# Port forwarding


def test_forward_local_port_reaches_node_loopback(node: FakeNode, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello through the tunnel")
    port = free_port()
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
    closed = free_port()
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
        assert alive(pid)
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
    monkeypatch.setattr(ssh_connect, "_HANDSHAKE_RETRIES", 0)
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


def test_importing_the_ssh_runner_prints_nothing() -> None:
    """A `rbee` command's stderr is for the user: no library's import-time warnings (asyncssh
    under cryptography ≥ 51 warned about DSA on every command)."""
    imported = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import rbee.control.keeper.ssh_runner"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0
    assert imported.stderr == ""
