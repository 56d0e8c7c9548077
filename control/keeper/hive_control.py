"""Starting and stopping a node's hive over its runner (`rbee ssh-up` / `rbee ssh-down`)."""

from __future__ import annotations

import asyncio
import re

import httpx

from rbee.control.hive.pidfile import NOT_RUNNING_EXIT
from rbee.control.hive.settings import KEY_FILE
from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.hive_api import HiveHealth
from rbee.dataplane.protocol.hive_client import HiveClient
from rbee.dataplane.protocol.wire import VERSION

from .console import ActionableError
from .install_plan import Installer, RunnerTransport, Say
from .node import Node
from .node_access import SSHNodeAccess
from .runner import CommandResult, Runner

PROBE_TIMEOUT_S = 30.0
HIVE_UP_TIMEOUT_S = 30.0
HIVE_DOWN_TIMEOUT_S = 60.0  # the hive stops its workers first (graceful, then signals)
ANSWER_TIMEOUT_S = 3.0  # a hive that is up answers /v1/health at once
_VERSION = re.compile(r"version\s+(\S+)")


def _install_hint(node: Node) -> str:
    return (
        f"install it with `rbee deploy {node.name}` or the ansible playbook "
        f"(ansible-playbook -i ansible/inventory_toml.py ansible/site.yml --limit {node.name})"
    )


async def _hive_bin(node: Node, runner: Runner) -> str:
    return f"{await runner.expand_user(node.rbee_path)}/rbee-hive"


async def _state_dir(node: Node, runner: Runner) -> str:
    return await runner.expand_user(node.state_dir)


async def probed_version(node: Node, runner: Runner) -> str | None:
    """`rbee-hive --version` on the node (one command); None when rbee is not installed."""
    result = await runner.run(
        [await _hive_bin(node, runner), "--version"], timeout_s=PROBE_TIMEOUT_S
    )
    match = _VERSION.search(result.stdout)
    return match.group(1) if result.exit_status == 0 and match else None


def _not_installed(node: Node, hive_bin: str) -> ActionableError:
    return ActionableError(
        f"rbee is not installed on {node.name}",
        f"({hive_bin} --version failed)",
        suggestion=_install_hint(node),
    )


def _check_version(node: Node, version: str) -> None:
    if version != VERSION:
        raise ActionableError(
            f"Version mismatch: rbee={VERSION}, rbee-hive={version}. Please upgrade.",
            suggestion=f"upgrade {node.name}: `rbee deploy {node.name}`",
        )


async def _on_node(
    node: Node, runner: Runner, *command: str, timeout_s: float, ok: tuple[int, ...] = (0,)
) -> CommandResult:
    """`rbee-hive COMMAND… --state-dir DIR` on the node: the proof of which process is its
    hive runs there (control/hive/pidfile.py), never a bare pid from here. ActionableError
    unless its exit status is in `ok`."""
    state_dir = await _state_dir(node, runner)
    result = await runner.run(
        [await _hive_bin(node, runner), *command, "--state-dir", state_dir], timeout_s=timeout_s
    )
    if result.exit_status in ok:
        return result
    if "No such command" in result.stderr:
        raise ActionableError(
            f"rbee-hive on {node.name} is older than this rbee (it has no `{command[0]}`)",
            suggestion=_install_hint(node),
        )
    raise ActionableError(
        f"rbee-hive {command[0]} failed on {node.name}",
        (result.stderr or result.stdout).strip()[-500:],
        suggestion=f"see {state_dir}/hive.log on {node.name}",
    )


async def running_hive_pid(node: Node, runner: Runner) -> int | None:
    """The pid of the node's hive, proven by its pid file's lock; None when none runs."""
    result = await _on_node(
        node, runner, "pid", timeout_s=PROBE_TIMEOUT_S, ok=(0, NOT_RUNNING_EXIT)
    )
    return int(result.stdout.split()[-1]) if result.exit_status == 0 else None


async def _answers(access: SSHNodeAccess) -> HiveHealth | None:
    try:
        async with HiveClient(
            await access.hive_url(), access.hive_key, timeout_s=ANSWER_TIMEOUT_S, node=access.name
        ) as hive:
            return await hive.health()
    except (httpx.HTTPError, OSError, RemoteError):
        return None


async def hive_up(
    node: Node, runner: Runner, say: Say, *, installer: Installer | None = None
) -> str:
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
        if await running_hive_pid(node, runner) is not None:
            say(f"{node.name}: restarting rbee-hive on the new version")
            say(await hive_down(node, runner, say))
    elif version is None:
        raise _not_installed(node, await _hive_bin(node, runner))
    else:
        _check_version(node, version)
    if (running := await running_hive_pid(node, runner)) is not None:
        if not (health := await _answers(access)):
            raise ActionableError(
                f"rbee-hive on {node.name} (pid {running}) is not answering "
                f"({ANSWER_TIMEOUT_S:g} s)",
                suggestion=f"restart it: `rbee ssh-down {node.name}`, then "
                f"`rbee ssh-up {node.name}`",
            )
        _check_version(node, health.version)
        return f"{node.name}: rbee-hive {health.version} already running"
    state_dir = await _state_dir(node, runner)
    argv = [
        await _hive_bin(node, runner),
        "daemon",
        "--addr",
        f"{node.listen}:{node.hive_port}",
        "--state-dir",
        state_dir,
        "--idle-timeout-s",
        f"{node.idle_timeout_s:g}",
    ]
    key = node.api_key()
    if key:
        # The key travels by SFTP into a 0600 file: sshd drops client environment variables,
        # and argv is visible to every user of the node.
        key_file = f"{state_dir}/{KEY_FILE}"
        await runner.write_file(key_file, key.encode(), mode=0o600)
        argv += ["--api-key-file", key_file]
    say(f"{node.name}: starting rbee-hive")
    await runner.run(["mkdir", "-p", state_dir], timeout_s=PROBE_TIMEOUT_S, check=True)
    pid = await runner.start_detached(argv, log_path=f"{state_dir}/hive.log", append=True)
    deadline = asyncio.get_running_loop().time() + HIVE_UP_TIMEOUT_S
    while (health := await _answers(access)) is None:
        alive = await runner.run(["kill", "-0", str(pid)], timeout_s=PROBE_TIMEOUT_S)
        if alive.exit_status != 0 or asyncio.get_running_loop().time() > deadline:
            tail = await runner.run(
                ["tail", "-n", "15", f"{state_dir}/hive.log"], timeout_s=PROBE_TIMEOUT_S
            )
            raise ActionableError(
                f"rbee-hive did not start on {node.name}",
                tail.stdout.rstrip(),
                suggestion=f"see {state_dir}/hive.log on {node.name}",
            )
        await asyncio.sleep(0.2)
    _check_version(node, health.version)
    where = f"{node.listen}:{node.hive_port}"
    return f"{node.name}: rbee-hive {health.version} up (pid {pid}, {where})"


async def hive_down(node: Node, runner: Runner, say: Say) -> str:
    """Stops the node's hive (SIGTERM: it stops its workers), SIGKILL past the bound; only a
    process proven to be this hive (`rbee-hive stop` on the node)."""
    say(f"{node.name}: connecting to {runner.label}")
    result = await _on_node(
        node,
        runner,
        "stop",
        "--timeout-s",
        f"{HIVE_DOWN_TIMEOUT_S:g}",
        timeout_s=HIVE_DOWN_TIMEOUT_S + PROBE_TIMEOUT_S,
        ok=(0, 127),
    )
    if result.exit_status == 127:
        return f"{node.name}: rbee-hive is not running (rbee is not installed)"
    return f"{node.name}: {result.stdout.strip()}"
