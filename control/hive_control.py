"""Starting and stopping a node's hive over its runner (`rbee ssh-up` / `rbee ssh-down`)."""

from __future__ import annotations

import asyncio
import re

import httpx

from rbee.dataplane.protocol import VERSION

from .console import ActionableError
from .hive_client import HiveClient
from .install_plan import Installer, RunnerTransport, Say
from .inventory import Node
from .node_access import SSHNodeAccess
from .runner import Runner

PROBE_TIMEOUT_S = 30.0
HIVE_UP_TIMEOUT_S = 30.0
HIVE_DOWN_TIMEOUT_S = 60.0  # the hive stops its workers first (graceful, then signals)
_VERSION = re.compile(r"version\s+(\S+)")



def _install_hint(node: Node) -> str:
    return (f"install it with `rbee deploy {node.name}` or the ansible playbook "
            f"(ansible-playbook -i ansible/inventory_toml.py ansible/site.yml --limit {node.name})")


async def _hive_bin(node: Node, runner: Runner) -> str:
    return f"{await runner.expand_user(node.rbee_path)}/rbee-hive"


async def _state_dir(node: Node, runner: Runner) -> str:
    return await runner.expand_user(node.state_dir)


async def probed_version(node: Node, runner: Runner) -> str | None:
    """`rbee-hive --version` on the node (one command); None when rbee is not installed."""
    result = await runner.run([await _hive_bin(node, runner), "--version"],
                              timeout_s=PROBE_TIMEOUT_S)
    match = _VERSION.search(result.stdout)
    return match.group(1) if result.exit_status == 0 and match else None


def _not_installed(node: Node, hive_bin: str) -> ActionableError:
    return ActionableError(f"rbee is not installed on {node.name}",
                           f"({hive_bin} --version failed)",
                           suggestion=_install_hint(node))


def _check_version(node: Node, version: str) -> None:
    if version != VERSION:
        raise ActionableError(
            f"Version mismatch: rbee={VERSION}, rbee-hive={version}. Please upgrade.",
            suggestion=f"upgrade {node.name}: `rbee deploy {node.name}`")


async def _running_pid(node: Node, runner: Runner) -> int | None:
    pid_file = f"{await _state_dir(node, runner)}/hive.pid"
    result = await runner.run(["cat", pid_file], timeout_s=PROBE_TIMEOUT_S)
    text = result.stdout.strip()
    if result.exit_status != 0 or not text.isdigit():
        return None
    alive = await runner.run(["kill", "-0", text], timeout_s=PROBE_TIMEOUT_S)
    return int(text) if alive.exit_status == 0 else None


async def _answers(access: SSHNodeAccess) -> dict[str, str] | None:
    try:
        async with HiveClient(await access.hive_url(), access.hive_key, timeout_s=3) as hive:
            return await hive.health()
    except (httpx.HTTPError, OSError):
        return None


async def hive_up(node: Node, runner: Runner, say: Say, *,
                  installer: Installer | None = None) -> str:
    """Leaves the node's hive running at our version; returns the line to print.

    With an installer, a node without rbee or with another version gets rbee installed first
    (and a hive of the old version restarted); without one, that is an error with the install
    hint. A current node costs one version probe either way."""
    access = SSHNodeAccess(node, runner)
    say(f"{node.name}: connecting to {runner.label}")
    version = await probed_version(node, runner)
    if version != VERSION and installer is not None:
        found = f"rbee {version} is installed" if version else "rbee is not installed"
        say(f"{node.name}: {found}; installing rbee {VERSION}")
        await installer.install(node, RunnerTransport(runner), say)
        if await _running_pid(node, runner) is not None:
            say(f"{node.name}: restarting rbee-hive on the new version")
            say(await hive_down(node, runner, say))
    elif version is None:
        raise _not_installed(node, await _hive_bin(node, runner))
    else:
        _check_version(node, version)
    if await _running_pid(node, runner) is not None and (health := await _answers(access)):
        _check_version(node, health["version"])
        return f"{node.name}: rbee-hive {health['version']} already running"
    state_dir = await _state_dir(node, runner)
    argv = [await _hive_bin(node, runner), "daemon", "--addr", f"{node.listen}:{node.hive_port}",
            "--state-dir", state_dir]
    key = node.api_key()
    if key:
        # The key travels by SFTP into a 0600 file: sshd drops client environment variables,
        # and argv is visible to every user of the node.
        await runner.write_file(f"{state_dir}/hive.key", key.encode(), mode=0o600)
        argv += ["--api-key-file", f"{state_dir}/hive.key"]
    say(f"{node.name}: starting rbee-hive")
    await runner.run(["mkdir", "-p", state_dir], timeout_s=PROBE_TIMEOUT_S, check=True)
    pid = await runner.start_detached(argv, log_path=f"{state_dir}/hive.log", append=True)
    deadline = asyncio.get_running_loop().time() + HIVE_UP_TIMEOUT_S
    while (health := await _answers(access)) is None:
        alive = await runner.run(["kill", "-0", str(pid)], timeout_s=PROBE_TIMEOUT_S)
        if alive.exit_status != 0 or asyncio.get_running_loop().time() > deadline:
            tail = await runner.run(["tail", "-n", "15", f"{state_dir}/hive.log"],
                                    timeout_s=PROBE_TIMEOUT_S)
            raise ActionableError(f"rbee-hive did not start on {node.name}", tail.stdout.rstrip(),
                                  suggestion=f"see {state_dir}/hive.log on {node.name}")
        await asyncio.sleep(0.2)
    _check_version(node, health["version"])
    return f"{node.name}: rbee-hive {health['version']} up (pid {pid}, {node.listen}:{node.hive_port})"


async def hive_down(node: Node, runner: Runner, say: Say) -> str:
    """Stops the node's hive (SIGTERM: it stops its workers), SIGKILL past the bound."""
    say(f"{node.name}: connecting to {runner.label}")
    pid = await _running_pid(node, runner)
    if pid is None:
        return f"{node.name}: rbee-hive is not running"
    await runner.run(["kill", "-TERM", str(pid)], timeout_s=PROBE_TIMEOUT_S)
    deadline = asyncio.get_running_loop().time() + HIVE_DOWN_TIMEOUT_S
    while (await runner.run(["kill", "-0", str(pid)], timeout_s=PROBE_TIMEOUT_S)).exit_status == 0:
        if asyncio.get_running_loop().time() > deadline:
            await runner.run(["kill", "-KILL", str(pid)], timeout_s=PROBE_TIMEOUT_S)
            return f"{node.name}: rbee-hive (pid {pid}) did not stop in time: killed"
        await asyncio.sleep(0.2)
    return f"{node.name}: rbee-hive stopped (pid {pid})"

