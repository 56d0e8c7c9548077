"""Run commands on a node: one interface, two implementations (DESIGN §4 "Reaching a node", §5).

- `LocalRunner` runs on this machine with subprocesses (inventory nodes with `ssh = false`).
- `SSHRunner` runs on a remote node over one asyncssh connection, reused for every call.

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
- Host keys are always verified against a known_hosts file; asyncssh refuses unknown and
  changed keys, and so do we (`SSHConnectError` says what to do about it).

Exit statuses follow `subprocess`: a process killed by signal N reports -N on both runners, and a
command that is not found reports 127 on both (the local runner maps FileNotFoundError to it).
The login shell on SSH nodes must be POSIX-like (sh, bash, dash, zsh, ksh): that is the shell
that un-quotes `run`'s arguments. `run_shell` scripts always run under `sh -c`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import posixpath
import secrets
import shlex
import signal
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import asyncssh

# OpenSSH's default `MaxStartups 10:30:100` starts dropping connections past 10 simultaneous
# unauthenticated connections, so no more than this many handshakes run at once to one host:port
# from this process, however many runners are connecting.
MAX_HANDSHAKES_PER_HOST = 8
# OpenSSH's default `MaxSessions 10` refuses an 11th concurrent session channel (exec, sftp) on
# one connection; port forwards do not count. Calls on one runner beyond this wait their turn.
MAX_SESSIONS_PER_CONNECTION = 8
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Notices a dead node on long-lived connections (dashboard, log following, port forwards).
DEFAULT_KEEPALIVE_INTERVAL_S = 15.0
DEFAULT_KEEPALIVE_COUNT_MAX = 3
# Pre-authentication resets (an sshd shedding load under MaxStartups) are retried this often.
_HANDSHAKE_RETRIES = 2
_CLOSE_TIMEOUT_S = 2.0


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


ConnectErrorKind = Literal[
    "host_key", "auth", "refused", "timeout", "unreachable", "lost", "config"
]


class SSHConnectError(RunnerError):
    """Could not reach a node over SSH (or lost the connection). `kind` says why; the message
    names host:port and what to do."""

    def __init__(self, kind: ConnectErrorKind, host: str, port: int, message: str) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        super().__init__(message)

    @property
    def worth_retrying(self) -> bool:
        """The node may answer a moment later (EC1's attempts): its sshd refused or was silent,
        or the network failed. A refused host key or login will not change by retrying."""
        return self.kind in ("refused", "timeout", "unreachable")


# --------------------------------------------------------------------------------------------
# Helpers shared by both runners


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


# --------------------------------------------------------------------------------------------
# Local runner


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


class LocalRunner(Runner):
    """Runs on this machine: subprocesses without a shell, plain files, no tunnels."""

    label = "local"

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        input: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        argv = list(argv)
        if not argv:
            raise ValueError("empty argv")
        return await self._exec(argv, shlex.join(argv), timeout_s, input, check)

    async def run_shell(
        self,
        script: str,
        *,
        timeout_s: float,
        input: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        return await self._exec(["/bin/sh", "-c", script], script, timeout_s, input, check)

    async def _exec(
        self,
        argv: list[str],
        shown: str,
        timeout_s: float,
        input: str | None,
        check: bool,
    ) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group, so a timeout can kill the command and its children
                # (`sh -c` scripts) together; detached starts use setsid and are not affected.
                start_new_session=True,
            )
        except FileNotFoundError:
            # Same answer as a shell over SSH gives, so callers check one thing.
            result = CommandResult(127, "", f"{argv[0]}: command not found\n")
        except PermissionError:
            result = CommandResult(126, "", f"{argv[0]}: permission denied\n")
        else:
            data = input.encode() if input is not None else None
            try:
                out, err = await asyncio.wait_for(proc.communicate(data), timeout_s)
            except (TimeoutError, asyncio.CancelledError) as e:
                _kill_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 2)
                except TimeoutError:
                    _kill_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
                # A process that left the group (setsid) may still hold our pipes open; close
                # our ends now rather than in a finalizer after the event loop is gone.
                transport = getattr(proc, "_transport", None)
                if transport is not None:
                    transport.close()
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise CommandTimeout(self.label, shown, timeout_s) from None
            result = CommandResult(
                proc.returncode if proc.returncode is not None else -1,
                out.decode("utf-8", errors="replace"),
                err.decode("utf-8", errors="replace"),
            )
        if check and not result.ok:
            raise CommandError(self.label, shown, result)
        return result

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o600, timeout_s: float = 30.0
    ) -> None:
        # Same steps as over SFTP: a fresh temporary file created with 0600 (O_EXCL, so never a
        # pre-existing file with looser bits), written, given its final mode, renamed into place.
        target = os.path.expanduser(path)
        await asyncio.wait_for(asyncio.to_thread(_write_local, target, data, mode), timeout_s)

    async def expand_user(self, path: str) -> str:
        return os.path.expanduser(path) if path == "~" or path.startswith("~/") else path

    async def forward_local_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        # The node is this machine: its addresses are reachable as they are.
        return remote_host, remote_port

    async def close(self) -> None:
        return None


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _write_local(target: str, data: bytes, mode: int) -> None:
    parent = os.path.dirname(target) or "."
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.rbee-tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)  # explicit: the umask must not change the result
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# SSH runner

# Per event loop (asyncio primitives belong to one loop; tests run many), per host:port.
_handshake_slots: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def _handshake_slot(host: str, port: int) -> asyncio.Semaphore:
    per_loop = _handshake_slots.setdefault(asyncio.get_running_loop(), {})
    key = (host.lower(), port)
    if key not in per_loop:
        per_loop[key] = asyncio.Semaphore(MAX_HANDSHAKES_PER_HOST)
    return per_loop[key]


class SSHRunner(Runner):
    """Runs on a remote node over one asyncssh connection, opened on first use (or by
    `async with`) and reused for every call, port forwards included.

    Options are explicit, so the connection does not depend on who runs the keeper:
    `known_hosts` is always a file and always verified (default `~/.ssh/known_hosts`);
    `identity_file` if given (otherwise asyncssh's default keys and ssh-agent, like `ssh`);
    `use_ssh_config` loads `~/.ssh/config` as a fallback for options not given here (HostName,
    User, Port, IdentityFile… for a `host` that is an alias), else no config file at all.
    """

    def __init__(
        self,
        host: str,
        *,
        port: int | None = None,
        username: str | None = None,
        identity_file: str | None = None,
        known_hosts: str = "~/.ssh/known_hosts",
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        use_ssh_config: bool = True,
        keepalive_interval_s: float = DEFAULT_KEEPALIVE_INTERVAL_S,
    ) -> None:
        if not host:
            raise ValueError("host is required")
        self.host = host
        # None leaves the port to ~/.ssh/config (when used), else 22; messages say 22 then.
        self._port_option = port
        self.port = port if port is not None else 22
        self.username = username
        self.identity_file = os.path.expanduser(identity_file) if identity_file else None
        self.known_hosts = os.path.expanduser(known_hosts)
        self.connect_timeout_s = connect_timeout_s
        self.use_ssh_config = use_ssh_config
        self.keepalive_interval_s = keepalive_interval_s
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._forward_lock = asyncio.Lock()
        self._sessions = asyncio.Semaphore(MAX_SESSIONS_PER_CONNECTION)
        self._forwards: dict[tuple[str, int], asyncssh.SSHListener] = {}
        self._home: str | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def label(self) -> str:
        where = f"{self.host}:{self.port}"
        return f"{self.username}@{where}" if self.username else where

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection now (otherwise the first call does). Raises SSHConnectError."""
        await self._connection()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connect_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            if self._conn is not None:
                # The old connection died (node rebooted, network dropped): its forwards died
                # with it. Callers ask for forwards again and get fresh ones.
                self._drop_forwards()
                self._conn = None
            self._conn = await self._open()
            if self._port_option is None:
                # The port came from ~/.ssh/config (or is 22): name the real one in messages.
                peer = self._conn.get_extra_info("peername")
                if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
                    self.port = peer[1]
            return self._conn

    async def _open(self) -> asyncssh.SSHClientConnection:
        self._check_files()
        options: dict[str, object] = {
            "known_hosts": self.known_hosts,  # a path: never None, which would disable checks
            "connect_timeout": self.connect_timeout_s,
            "keepalive_interval": self.keepalive_interval_s,
            "keepalive_count_max": DEFAULT_KEEPALIVE_COUNT_MAX,
            # `()` = asyncssh's default: ~/.ssh/config if readable; `[]` = no config file.
            "config": () if self.use_ssh_config else [],
        }
        # Given only when set, so that ~/.ssh/config can supply them for a host alias.
        if self._port_option is not None:
            options["port"] = self._port_option
        if self.username:
            options["username"] = self.username
        if self.identity_file:
            options["client_keys"] = [self.identity_file]
        attempt = 0
        while True:
            try:
                async with _handshake_slot(self.host, self.port):
                    return await asyncssh.connect(self.host, **options)
            except asyncssh.HostKeyNotVerifiable:
                raise self._host_key_error() from None
            except asyncssh.PermissionDenied as e:
                raise self._auth_error(str(e.reason)) from None
            except asyncssh.KeyImportError as e:
                raise SSHConnectError(
                    "auth",
                    self.host,
                    self.port,
                    f"Cannot use identity_file {self.identity_file} for {self.label}: {e}. "
                    "If the key has a passphrase, add it to ssh-agent and leave identity_file "
                    "out of the inventory.",
                ) from None
            except (ConnectionResetError, asyncssh.ConnectionLost) as e:
                # An sshd under load (MaxStartups) drops handshakes early; a retry usually works.
                if attempt < _HANDSHAKE_RETRIES:
                    attempt += 1
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                raise SSHConnectError(
                    "lost",
                    self.host,
                    self.port,
                    f"SSH connection to {self.host}:{self.port} was closed during the "
                    f"handshake ({_reason(e)}). Is sshd overloaded (MaxStartups) or is "
                    "something other than sshd on that port?",
                ) from None
            except asyncssh.DisconnectError as e:
                raise SSHConnectError(
                    "lost",
                    self.host,
                    self.port,
                    f"SSH server at {self.host}:{self.port} disconnected: {_reason(e)}",
                ) from None
            except ConnectionRefusedError:
                raise SSHConnectError(
                    "refused",
                    self.host,
                    self.port,
                    f"Connection refused by {self.host}:{self.port}: is sshd running on the node "
                    "and is the port in the inventory right?",
                ) from None
            except TimeoutError:
                raise SSHConnectError(
                    "timeout",
                    self.host,
                    self.port,
                    f"Timed out after {self.connect_timeout_s:g} s connecting to "
                    f"{self.host}:{self.port}: is the node up and reachable from here?",
                ) from None
            except socket.gaierror as e:
                raise SSHConnectError(
                    "unreachable",
                    self.host,
                    self.port,
                    f"Cannot resolve host {self.host!r} (for {self.host}:{self.port}): "
                    f"{e.strerror or e}",
                ) from None
            except OSError as e:
                raise SSHConnectError(
                    "unreachable",
                    self.host,
                    self.port,
                    f"Cannot reach {self.host}:{self.port}: {e.strerror or e}",
                ) from None

    def _check_files(self) -> None:
        # Checked up front: asyncssh would raise a bare FileNotFoundError (an OSError, easily
        # mistaken for a network problem).
        if not os.path.isfile(self.known_hosts):
            raise SSHConnectError(
                "host_key",
                self.host,
                self.port,
                f"Host key verification failed for {self.host}:{self.port}: known_hosts file "
                f"{self.known_hosts} does not exist. Connect once with "
                f"`{self._ssh_hint()}` to check and accept the node's key.",
            )
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise SSHConnectError(
                "config",
                self.host,
                self.port,
                f"identity_file {self.identity_file} for {self.host}:{self.port} does not exist",
            )

    def _ssh_hint(self) -> str:
        return ssh_hint(self.host, self.port, self.username, self.identity_file, self.known_hosts)

    def _host_key_error(self) -> SSHConnectError:
        return host_key_error(self.host, self.port, self.known_hosts, self._ssh_hint())

    def _auth_error(self, reason: str) -> SSHConnectError:
        who = self.username or "the default user"
        keys = (
            f"identity_file {self.identity_file}"
            if self.identity_file
            else "the default keys (~/.ssh/id_*) and ssh-agent"
        )
        return SSHConnectError(
            "auth",
            self.host,
            self.port,
            f"Authentication failed for {self.label}: the node did not accept {keys} for "
            f"{who} ({reason}). Check the node's user and identity_file in the inventory and "
            f"that the public key is in that user's ~/.ssh/authorized_keys on the node.",
        )

    def _lost(self, e: BaseException) -> SSHConnectError:
        return SSHConnectError(
            "lost",
            self.host,
            self.port,
            f"Lost the SSH connection to {self.host}:{self.port}: {_reason(e)}",
        )

    # -- commands ------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        input: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        if not argv:
            raise ValueError("empty argv")
        # sshd hands the command line to the login shell, which un-quotes it back into argv.
        return await self._exec(shlex.join(argv), timeout_s, input, check)

    async def run_shell(
        self,
        script: str,
        *,
        timeout_s: float,
        input: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        # Under `sh -c`, so scripts mean the same whatever the user's login shell is.
        return await self._exec(f"sh -c {shlex.quote(script)}", timeout_s, input, check)

    async def _exec(
        self, command: str, timeout_s: float, input: str | None, check: bool
    ) -> CommandResult:
        # The login shell first reports its pid on stderr, then execs the command in place, so
        # the pid is the command's (and, sshd having called setsid, its process group's). A
        # timeout can then stop it: OpenSSH ignores the "signal" channel request for root
        # logins ("session signalling requires privilege separation"), so `kill` it is.
        marker = f"rbee-pid-{secrets.token_hex(4)}:"
        wrapped = f"printf '%s%s\\n' {marker} \"$$\" >&2; exec {command}"
        pid: int | None = None

        async def communicate(proc: asyncssh.SSHClientProcess[str]) -> tuple[str, str]:
            nonlocal pid
            if input:
                proc.stdin.write(input)
            # EOF even without input: a command that reads stdin must not wait forever.
            proc.stdin.write_eof()
            before = []  # whatever the login shell's rc files printed to stderr
            while True:
                line = await proc.stderr.readline()
                if not line:
                    break
                if line.startswith(marker):
                    reported = line[len(marker) :].strip()
                    pid = int(reported) if reported.isdigit() else None
                    break
                before.append(line)
            # Returns once sshd has sent the exit status and both streams' EOF: a background
            # process still holding stdout makes that never, hence the timeout around it.
            out, err = await proc.communicate()
            return str(out or ""), "".join(before) + str(err or "")

        async with self._sessions:
            proc = await self._open_process(wrapped)
            try:
                out, err = await asyncio.wait_for(communicate(proc), timeout_s)
            except TimeoutError:
                proc.close()
                timed_out = True
            except asyncio.CancelledError:
                proc.close()
                if pid is not None:
                    # Cannot await here (we are being cancelled): stop it in the background,
                    # holding a reference so the task is not garbage-collected midway.
                    task = asyncio.get_running_loop().create_task(self._kill_remote(pid))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                raise
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError) as e:
                raise self._lost(e) from None
            else:
                timed_out = False
        if timed_out:
            # Outside the session slot: with every slot held by hung commands it would wait.
            if pid is not None:
                await self._kill_remote(pid)
            raise CommandTimeout(self.label, command, timeout_s)
        status = proc.returncode
        if status is None:
            # Channel closed without an exit status: sshd went away mid-command.
            raise self._lost(ConnectionError("channel closed without an exit status"))
        result = CommandResult(status, out, err)
        if check and not result.ok:
            raise CommandError(self.label, command, result)
        return result

    async def _kill_remote(self, pid: int) -> None:
        """SIGTERM a timed-out command's process group (its own pid if the shell cannot do
        groups). Best effort: a node that is gone or busy is left alone."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        # `kill -- -PID` is bash/zsh/ksh syntax (the login shell runs this); dash rejects it
        # and falls back to the pid alone.
        cmd = f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null"
        with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
            await asyncio.wait_for(conn.run(cmd, stdin=asyncssh.DEVNULL), 5)

    async def _open_process(self, command: str) -> asyncssh.SSHClientProcess[str]:
        # Opening the channel is safe to retry once on a fresh connection: nothing ran yet.
        for attempt in (0, 1):
            conn = await self._connection()
            try:
                return await conn.create_process(command, encoding="utf-8", errors="replace")
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError) as e:
                conn.abort()
                if attempt:
                    raise self._lost(e) from None
            except asyncssh.ChannelOpenError as e:
                raise RunnerError(
                    f"{self.label}: the node refused to start a command: {e.reason}"
                ) from None
        raise AssertionError("unreachable")

    # -- files ---------------------------------------------------------------------------

    async def expand_user(self, path: str) -> str:
        """Resolve a leading `~/` on the node (arguments are quoted, so no shell does it)."""
        if not (path == "~" or path.startswith("~/")):
            return path
        if self._home is None:
            res = await self.run_shell('printf %s "$HOME"', timeout_s=15, check=True)
            self._home = res.stdout.strip() or "/"
        return self._home if path == "~" else posixpath.join(self._home, path[2:])

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o600, timeout_s: float = 30.0
    ) -> None:
        """Write `data` to `path` on the node over SFTP, for secrets as well: a new temporary
        file is created with 0600 (exclusive create, so no looser pre-existing file is reused),
        written, set to `mode`, and renamed over `path`. Missing parents are created 0700."""
        target = await self.expand_user(path)
        try:
            await asyncio.wait_for(self._sftp_write(target, data, mode), timeout_s)
        except TimeoutError:
            raise CommandTimeout(self.label, f"sftp write {target}", timeout_s) from None

    async def _sftp_write(self, target: str, data: bytes, mode: int) -> None:
        conn = await self._connection()
        async with self._sessions:
            try:
                async with conn.start_sftp_client() as sftp:
                    parent = posixpath.dirname(target)
                    if parent:
                        await sftp.makedirs(
                            parent, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True
                        )
                    name = f".{posixpath.basename(target)}.rbee-tmp-{secrets.token_hex(6)}"
                    tmp = posixpath.join(parent, name)
                    try:
                        async with sftp.open(
                            tmp, "xb", attrs=asyncssh.SFTPAttrs(permissions=0o600)
                        ) as f:
                            await f.write(data)
                            await f.chmod(mode)  # explicit: the node's umask must not matter
                        try:
                            await sftp.posix_rename(tmp, target)  # atomic replace (OpenSSH)
                        except asyncssh.SFTPOpUnsupported:
                            # Plain SFTP rename fails if the target exists.
                            if await sftp.exists(target):
                                await sftp.remove(target)
                            await sftp.rename(tmp, target)
                    except BaseException:
                        with contextlib.suppress(OSError, asyncssh.Error):
                            await sftp.remove(tmp)
                        raise
            except asyncssh.SFTPError as e:
                raise RunnerError(f"{self.label}: cannot write {target}: {e.reason}") from None
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError) as e:
                raise self._lost(e) from None
            except asyncssh.ChannelOpenError as e:
                raise RunnerError(f"{self.label}: the node refused SFTP: {e.reason}") from None

    # -- port forwards -------------------------------------------------------------------

    async def forward_local_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """Listen on 127.0.0.1:<free port> here; connections go through this SSH connection to
        remote_host:remote_port as seen from the node (its loopback, usually). One forward per
        target, reused. Returns the local (host, port) to connect to."""
        async with self._forward_lock:
            conn = await self._connection()
            key = (remote_host, remote_port)
            listener = self._forwards.get(key)
            if listener is None:
                try:
                    listener = await conn.forward_local_port(
                        "127.0.0.1", 0, remote_host, remote_port
                    )
                except (asyncssh.ConnectionLost, asyncssh.DisconnectError) as e:
                    raise self._lost(e) from None
                self._forwards[key] = listener
            return "127.0.0.1", listener.get_port()

    def _drop_forwards(self) -> None:
        for listener in self._forwards.values():
            listener.close()
        self._forwards.clear()

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        self._drop_forwards()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), _CLOSE_TIMEOUT_S)
            except TimeoutError:
                conn.abort()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e or type(e).__name__)


def ssh_hint(
    host: str, port: int, username: str | None, identity_file: str | None, known_hosts: str
) -> str:
    """The OpenSSH command a person runs to check and accept a node's host key."""
    parts = ["ssh"]
    if identity_file:
        parts += ["-i", identity_file]
    if port != 22:
        parts += ["-p", str(port)]
    if known_hosts != os.path.expanduser("~/.ssh/known_hosts"):
        parts += ["-o", f"UserKnownHostsFile={known_hosts}"]
    parts.append(f"{username}@{host}" if username else host)
    return shlex.join(parts)


def host_key_error(host: str, port: int, known_hosts: str, hint: str) -> SSHConnectError:
    """A refused host key, told apart as "never seen" or "changed": the advice differs (accept
    vs. remove the old key). Shared by the asyncssh runner and `rbee deploy` (paramiko)."""
    known = False
    try:
        keys = asyncssh.read_known_hosts(known_hosts).match(host, "", port if port != 22 else None)
        known = bool(keys[0] or keys[1])
    except (OSError, ValueError, asyncssh.Error):
        known = True  # unsure: give the full advice
    where = f"{host}:{port}"
    if not known:
        return SSHConnectError(
            "host_key",
            host,
            port,
            f"Host key verification failed for {where}: the key is unknown (no entry in "
            f"{known_hosts}). Connect once with `{hint}` to check and accept it.",
        )
    entry = f"[{host}]:{port}" if port != 22 else host
    return SSHConnectError(
        "host_key",
        host,
        port,
        f"Host key verification failed for {where}: the key is unknown or has changed. "
        "If the node was reinstalled, remove its old key with "
        f"`ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(known_hosts)}` and "
        f"connect once with ssh (`{hint}`) to accept the new one.",
    )


def make_runner(
    *,
    ssh: bool,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    identity_file: str | None = None,
    known_hosts: str = "~/.ssh/known_hosts",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    use_ssh_config: bool = True,
) -> LocalRunner | SSHRunner:
    """The runner for an inventory node: local when `ssh = false`, SSH otherwise."""
    if not ssh:
        return LocalRunner()
    if not host:
        raise ValueError("an SSH node needs a host")
    return SSHRunner(
        host,
        port=port,
        username=username,
        identity_file=identity_file,
        known_hosts=known_hosts,
        connect_timeout_s=connect_timeout_s,
        use_ssh_config=use_ssh_config,
    )


__all__ = [
    "CommandError",
    "CommandResult",
    "CommandTimeout",
    "LocalRunner",
    "Runner",
    "RunnerError",
    "SSHConnectError",
    "SSHRunner",
    "detached_script",
    "host_key_error",
    "make_runner",
    "quote_path",
    "ssh_hint",
]
