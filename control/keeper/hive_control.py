"""Starting and stopping a node's hive through its runner: `rbee ssh-up` / `rbee ssh-down`,
and the local hive that `rbee infer` starts by itself. One starter serves both."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from rbee.control.hive.settings import API_KEY_ENV as HIVE_KEY_ENV
from rbee.control.hive.settings import KEY_FILE
from rbee.dataplane.plumbing.pidfile import NOT_RUNNING_EXIT
from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.hive_api import HiveHealth
from rbee.dataplane.protocol.wire import VERSION, ErrorCode

from .hive_shell import pid_script, stop_script
from .install_plan import Installer, RunnerTransport, Say
from .node import Node
from .node_access import NodeAccess
from .runner import CommandResult, Runner
from .words import ActionableError, auth_failed, restart_hint, version_mismatch

PROBE_TIMEOUT_S = 30.0
# From start to answering. A hive starts in 1-2 s of CPU; 60 fake nodes starting on 2 shared
# cores took 26 s (docs/fleet.md), real nodes start theirs in parallel: twice that, headroom.
HIVE_UP_TIMEOUT_S = 60.0
HIVE_DOWN_TIMEOUT_S = 60.0  # the hive stops its workers first (graceful, then signals)
ANSWER_TIMEOUT_S = 3.0  # a hive that is up answers /v1/health at once
# While a hive starts: how often the keeper looks whether it died (an SSH exec each time;
# its /v1/health is asked every 0.2 s, through the kept forward).
ALIVE_CHECK_S = 1.0
# The steps every node goes through: a live display shows them, a log leaves them out
# (fleet_progress.py); the rest (installing, restarting) a log shows too.
ASKING_HIVE = "asking its hive"
STARTING_HIVE = "starting rbee-hive"
STOPPING_HIVE = "stopping rbee-hive"
ROUTINE_STEPS = (ASKING_HIVE, STARTING_HIVE, STOPPING_HIVE)
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
        raise version_mismatch(node, version)


def _checked(
    node: Node, state_dir: str, command: str, result: CommandResult, ok: tuple[int, ...]
) -> CommandResult:
    """The result of `rbee-hive COMMAND` on the node; ActionableError unless its exit status
    is in `ok`."""
    if result.exit_status in ok:
        return result
    if "No such command" in result.stderr:
        raise ActionableError(
            f"rbee-hive on {node.name} is older than this rbee (it has no `{command}`)",
            suggestion=_install_hint(node),
        )
    raise ActionableError(
        f"rbee-hive {command} failed on {node.name}",
        (result.stderr or result.stdout).strip()[-500:],
        suggestion=f"see {state_dir}/hive.log on {node.name}",
    )


async def running_hive_pid(node: Node, runner: Runner) -> int | None:
    """The pid of the node's hive, proven by its pid file's lock and start time (one shell
    command, hive_shell.py); None when none runs."""
    state_dir = await _state_dir(node, runner)
    script = pid_script(await _hive_bin(node, runner), state_dir)
    result = _checked(
        node,
        state_dir,
        "pid",
        await runner.run_shell(script, timeout_s=PROBE_TIMEOUT_S),
        (0, NOT_RUNNING_EXIT),
    )
    return int(result.stdout.split()[-1]) if result.exit_status == 0 else None


async def _answers(access: NodeAccess) -> HiveHealth | None:
    """The hive's health; None when nothing (or something else) answers at once."""
    try:
        async with access.hive(timeout_s=ANSWER_TIMEOUT_S) as hive:
            return await hive.health()
    except (httpx.HTTPError, OSError, RemoteError):
        return None


async def _check_key(access: NodeAccess) -> None:
    """A running hive answers its health to anyone; it must take our key too, or `ssh-up`
    would call it up while every command after it is refused (EC9's message instead)."""
    try:
        async with access.hive(timeout_s=ANSWER_TIMEOUT_S) as hive:
            await hive.workers()
    except RemoteError as exc:
        if exc.code == ErrorCode.INVALID_API_KEY:
            raise auth_failed(access.node) from None
    except (httpx.HTTPError, OSError):
        pass  # it answered a moment ago: a command after this says what is wrong


async def _start_hive(access: NodeAccess, say: Say) -> tuple[int, HiveHealth | None]:
    """Starts `rbee-hive daemon` through the node's runner, detached (it outlives this
    command), and waits until it answers: its pid, and its health (None: it died or did not
    answer within HIVE_UP_TIMEOUT_S)."""
    node, runner = access.node, access.runner
    state_dir = await _state_dir(node, runner)
    await runner.run(["mkdir", "-p", state_dir], timeout_s=PROBE_TIMEOUT_S, check=True)
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
    if access.hive_key:
        # The hive reads its key from a 0600 file: sshd drops client environment variables,
        # argv is visible to every user of the node, and a process's first environment stays
        # readable in /proc/PID/environ.
        if node.is_local and node.api_key_file:
            key_file = str(node.api_key_file)  # already the node's key, checked 0600
        else:
            key_file = f"{state_dir}/{KEY_FILE}"
            await runner.write_file(key_file, access.hive_key.encode(), mode=0o600)
        argv += ["--api-key-file", key_file]
    if node.is_local:
        # A local hive would inherit this command's environment: drop the variables that may
        # hold a key, any node's (`env -u`, in GNU and BSD env alike). sshd passes none.
        names = sorted(n for n in {HIVE_KEY_ENV, node.api_key_env, *access.key_variables} if n)
        argv = ["env", *(arg for name in names for arg in ("-u", name)), *argv]
    say(f"{node.name}: {STARTING_HIVE}")
    pid = await runner.start_detached(argv, log_path=f"{state_dir}/hive.log", append=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HIVE_UP_TIMEOUT_S
    looked = loop.time()
    while (health := await _answers(access)) is None:
        if loop.time() > deadline:
            return pid, None
        if loop.time() - looked >= ALIVE_CHECK_S:
            # The shell's own kill: a minimal image may have no kill binary.
            alive = await runner.run_shell(f"kill -0 {pid}", timeout_s=PROBE_TIMEOUT_S)
            if alive.exit_status != 0:
                return pid, None
            looked = loop.time()
        await asyncio.sleep(0.2)
    return pid, health


@dataclass(frozen=True)
class HiveUp:
    said: str  # the line to print
    started_pid: int | None  # the hive this call started; None when one already ran


async def hive_up(access: NodeAccess, say: Say, *, installer: Installer | None = None) -> HiveUp:
    """Leaves the node's hive running at our version; says whether it started it.

    With an installer, a node without rbee or with another version gets rbee installed first
    (and a hive of the old version restarted); without one, that is an error with the install
    hint. A node whose hive answers at our version costs only that question (no command runs
    there); any other costs a version probe first."""
    node, runner = access.node, access.runner
    say(f"{node.name}: {ASKING_HIVE}")
    loop = asyncio.get_running_loop()
    asked = loop.time()
    if (health := await _answers(access)) is not None and health.version == VERSION:
        await _check_key(access)
        return HiveUp(f"{node.name}: rbee-hive {health.version} already running", None)
    # It waited out the whole deadline: something accepted and said nothing (a wedged hive).
    # Asked again below only when it did not (refused: the hive may have been starting).
    silent = health is None and loop.time() - asked >= ANSWER_TIMEOUT_S
    version = await probed_version(node, runner)
    if version != VERSION and installer is not None:
        found = f"rbee {version} is installed" if version else "rbee is not installed"
        say(f"{node.name}: {found}; installing rbee {VERSION}")
        await installer.install(node, RunnerTransport(runner), say)
        if await running_hive_pid(node, runner) is not None:
            say(f"{node.name}: restarting rbee-hive on the new version")
            say((await hive_down(access, say)).said)
    elif version is None:
        raise _not_installed(node, await _hive_bin(node, runner))
    else:
        _check_version(node, version)
    if (running := await running_hive_pid(node, runner)) is not None:
        if not (health := health or (None if silent else await _answers(access))):
            raise ActionableError(
                f"rbee-hive on {node.name} (pid {running}) is not answering "
                f"({ANSWER_TIMEOUT_S:g} s)",
                suggestion=restart_hint(node),
            )
        _check_version(node, health.version)
        await _check_key(access)
        return HiveUp(f"{node.name}: rbee-hive {health.version} already running", None)
    pid, health = await _start_hive(access, say)
    if health is None:
        state_dir = await _state_dir(node, runner)
        tail = await runner.run(
            ["tail", "-n", "15", f"{state_dir}/hive.log"], timeout_s=PROBE_TIMEOUT_S
        )
        raise ActionableError(
            f"rbee-hive did not start on {node.name}",
            tail.stdout.rstrip(),
            suggestion=f"see {state_dir}/hive.log on {node.name}",
        )
    _check_version(node, health.version)
    where = f"{node.listen}:{node.hive_port}"
    return HiveUp(f"{node.name}: rbee-hive {health.version} up (pid {pid}, {where})", pid)


@dataclass(frozen=True)
class HiveDown:
    said: str  # the line to print
    down: bool  # no hive of ours runs there now (its workers are gone); False: another runs


async def hive_down(access: NodeAccess, say: Say, *, only_pid: int | None = None) -> HiveDown:
    """Stops the node's hive (SIGTERM: it stops its workers), SIGKILL past the bound; only a
    process proven to be this hive (on the node, by hive_shell.py's one shell command), and
    with `only_pid` only while it is that process (checked and signalled there, at once)."""
    node, runner = access.node, access.runner
    say(f"{node.name}: {STOPPING_HIVE}")
    state_dir = await _state_dir(node, runner)
    script = stop_script(await _hive_bin(node, runner), state_dir, HIVE_DOWN_TIMEOUT_S, only_pid)
    result = _checked(
        node,
        state_dir,
        "stop",
        await runner.run_shell(script, timeout_s=HIVE_DOWN_TIMEOUT_S + PROBE_TIMEOUT_S),
        (0, 127, NOT_RUNNING_EXIT),
    )
    if result.exit_status == 127:
        return HiveDown(f"{node.name}: rbee-hive is not running (rbee is not installed)", True)
    said = f"{node.name}: {result.stdout.strip()}"
    return HiveDown(said, result.exit_status == 0)


async def ensure_local_hive(access: NodeAccess, say: Say) -> None:
    """`rbee infer` on the local node starts its hive itself unless this installation's
    answers. A hive of another installation, or of a deleted one, is restarted from this one
    (stopped only as `rbee ssh-down` does). A hive that does not come up is left to the
    preflight that follows, which says what is wrong."""
    node = access.node
    hive_bin = Path(node.rbee_path).expanduser() / "rbee-hive"
    health = await _answers(access)
    found = health.executable if health is not None else None
    if health is not None and (found is None or _same_file(found, hive_bin)):
        return  # ours (or a hive that does not say: left as it is)
    if not hive_bin.is_file():
        raise ActionableError(
            f"rbee is not installed on {node.name}: there is no {hive_bin}",
            suggestion=f"set rbee_path for node {node.name} in {node.inventory_path} "
            "to the folder holding rbee-hive",
        )
    said = f"Started the hive on {node.name}."
    if found is not None and health is not None:
        await _stop_foreign_hive(access, found, health.pid)
        gone = "" if os.path.exists(found) else " (deleted)"
        said = f"Restarted the hive on {node.name}: it ran from {found}{gone}."
    await _start_hive(access, lambda _line: None)
    say(said)
    # As `ollama serve` does; said, since nothing else would tell the person it stays.
    say(f"It keeps running for the next answer: `rbee ssh-down {node.name}` stops it.")


async def _stop_foreign_hive(access: NodeAccess, found: str, answering_pid: int | None) -> None:
    """Stops the hive of another installation that answers on our port, if it is the one
    holding our state dir (proven on the node, as `rbee ssh-down` does): the hive that
    answered must be the one the pid file proves, or ours would be stopped instead."""
    node = access.node
    if await running_hive_pid(node, access.runner) != answering_pid:
        raise ActionableError(
            f"a hive from another installation answers on {node.hive_address}",
            f"it runs from {found}, with a state dir other than {node.state_dir}",
            suggestion=f"stop it, or give node {node.name} another hive_port in "
            f"{node.inventory_path}",
        )
    await hive_down(access, lambda _line: None)


def _same_file(path: str, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # deleted (or unreadable): not the same
        return False
