"""What the keeper needs from a node (DESIGN §4 "Reaching a node", §5): the `Runner` contract,
its results and errors, and the shell-script helpers both implementations share.

Two implementations: `LocalRunner` (local_runner.py) runs on this machine with subprocesses
(inventory nodes with `ssh = false`); `SSHRunner` (ssh_runner.py) runs on a remote node over one
asyncssh connection, reused for every call.

Rules both follow, so callers never think about quoting or secrets:
- `run(argv)` takes an argument vector, never a shell string. Locally it is exec'd as is; over
  SSH each argument goes through `shlex.quote`, so `; rm -rf /`, `$(id)`, quotes and newlines
  arrive as one verbatim argument. The few places that need shell syntax (redirects, `&`) use
  `run_shell(script)` and build `script` from `shlex.quote`d parts only (`quote_path` helps with
  `~/`). `start_detached` builds the one detached-start form that does not hang.
- Secrets (API keys) travel only through `write_file` (SFTP into a file created 0600: never in
  argv, which `ps` shows, nor the environment, which sshd drops unless `AcceptEnv` allows it) or
  through a command's stdin (`input=`).
- Every command has a timeout: asyncssh waits for the channel to close, and a background process
  that keeps stdout open (e.g. bash running `cd X && setsid nohup … &`) keeps it open forever.
  On expiry the command's process group gets SIGTERM, locally and on the node.

Exit statuses follow `subprocess`: a process killed by signal N reports -N on both runners, and a
command that is not found reports 127 on both (the local runner maps FileNotFoundError to it).
The login shell on SSH nodes must be POSIX-like (sh, bash, dash, zsh, ksh): that is the shell
that un-quotes `run`'s arguments. `run_shell` scripts always run under `sh -c`.
"""

from __future__ import annotations

import abc
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self


@dataclass(frozen=True)
class CommandResult:
    exit_status: int  # 0 success; -N killed by signal N; 127 command not found
    stdout: str  # decoded UTF-8; undecodable bytes replaced, never an exception
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class RunnerError(Exception):
    """Base class: a command could not be run or did not end as asked."""


class CommandError(RunnerError):
    """`check=True` and the command exited non-zero."""

    def __init__(self, where: str, command: str, result: CommandResult) -> None:
        self.where = where
        self.command = command
        self.result = result
        detail = (result.stderr.strip() or result.stdout.strip())[-500:]
        msg = f"{where}: `{_short(command)}` exited with status {result.exit_status}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class CommandTimeout(RunnerError, TimeoutError):
    """The command did not finish within its timeout; it was sent SIGTERM and abandoned."""

    def __init__(self, where: str, command: str, timeout_s: float) -> None:
        self.where = where
        self.command = command
        self.timeout_s = timeout_s
        super().__init__(f"{where}: `{_short(command)}` did not finish within {timeout_s:g} s")


def quote_path(path: str) -> str:
    """Quote a path for a `run_shell` script, keeping a leading `~/` meaning the home directory
    (`shlex.quote` alone would make `~` literal): `~/a b` -> `"$HOME"/'a b'`."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def detached_script(
    argv: Sequence[str], *, log_path: str, cwd: str | None = None, append: bool = False
) -> str:
    """The shell script that starts `argv` detached from the calling session and prints its pid.

    The exact form matters: the background job must be a single simple command with stdin,
    stdout and stderr all redirected, or whatever shell/subshell holds the SSH channel's stdout
    keeps it open and the call never returns (`cd X && setsid nohup … &` backgrounds a whole
    subshell that way). `cd` is therefore its own statement. `setsid` (util-linux; absent on
    macOS, where `nohup` alone is enough without a terminal) puts the process in its own session
    so no hangup or group signal for the SSH session reaches it. In a non-interactive shell the
    job is not a group leader, so setsid and nohup exec in place and `$!` is the process's pid.
    """
    if not argv:
        raise ValueError("empty argv")
    redirect = ">>" if append else ">"
    lines = []
    if cwd is not None:
        lines.append(f"cd {quote_path(cwd)} || exit 1")
    lines.append("S=; command -v setsid >/dev/null 2>&1 && S=setsid")
    lines.append(
        f"$S nohup {shlex.join(argv)} {redirect}{quote_path(log_path)} 2>&1 </dev/null & echo $!"
    )
    return "\n".join(lines) + "\n"


def _parse_pid(where: str, script: str, result: CommandResult) -> int:
    out = result.stdout.strip().splitlines()
    if result.exit_status != 0 or not out or not out[-1].isdigit():
        raise CommandError(where, script, result)
    return int(out[-1])


def _short(command: str, limit: int = 200) -> str:
    one_line = " ".join(command.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


class Runner(abc.ABC):
    """What the keeper needs from a node, whether it is this machine or one over SSH."""

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """Where commands run, for messages: `local` or `user@host:port`."""

    @abc.abstractmethod
    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        input: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Runs argv (each element quoted: it never meets a shell as syntax)."""

    @abc.abstractmethod
    async def run_shell(
        self, script: str, *, timeout_s: float, input: str | None = None, check: bool = False
    ) -> CommandResult:
        """Runs a script under `sh -c`; callers build it from quoted parts only."""

    @abc.abstractmethod
    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o600, timeout_s: float = 30.0
    ) -> None:
        """Creates `path` with `mode` from the first byte (keys: never argv, never env)."""

    @abc.abstractmethod
    async def expand_user(self, path: str) -> str: ...

    @abc.abstractmethod
    async def forward_local_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """A local (host, port) that reaches remote_host:remote_port as the node sees it."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def start_detached(
        self,
        argv: Sequence[str],
        *,
        log_path: str,
        cwd: str | None = None,
        append: bool = False,
        timeout_s: float = 15.0,
    ) -> int:
        """Starts argv detached from the session (it outlives the connection); its pid."""
        script = detached_script(argv, log_path=log_path, cwd=cwd, append=append)
        return _parse_pid(self.label, script, await self.run_shell(script, timeout_s=timeout_s))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
