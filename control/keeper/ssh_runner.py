"""`SSHRunner`: the `Runner` contract (runner.py) on a remote node over one asyncssh connection,
opened by ssh_connect.py and reused for every call: commands (stopped on the node when they time
out or are cancelled), files over SFTP, and local port forwards. What goes wrong reaching the
node comes out as `SSHConnectError` (ssh_errors.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import shlex
from collections.abc import Sequence
from typing import Self

import asyncssh

from .runner import CommandError, CommandResult, CommandTimeout, Runner, RunnerError
from .ssh_connect import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_KEEPALIVE_INTERVAL_S, open_connection
from .ssh_errors import lost_connection, ssh_label

# OpenSSH's default `MaxSessions 10` refuses an 11th concurrent session channel (exec, sftp) on
# one connection; port forwards do not count. Calls on one runner beyond this wait their turn.
MAX_SESSIONS_PER_CONNECTION = 8
_CLOSE_TIMEOUT_S = 2.0


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
        return ssh_label(self.host, self.port, self.username)

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (a call would use it without a handshake)."""
        return self._conn is not None and not self._conn.is_closed()

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
            self._conn = await open_connection(
                self.host,
                port=self._port_option,
                shown_port=self.port,
                username=self.username,
                identity_file=self.identity_file,
                known_hosts=self.known_hosts,
                connect_timeout_s=self.connect_timeout_s,
                use_ssh_config=self.use_ssh_config,
                keepalive_interval_s=self.keepalive_interval_s,
            )
            if self._port_option is None:
                # The port came from ~/.ssh/config (or is 22): name the real one in messages.
                peer = self._conn.get_extra_info("peername")
                if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
                    self.port = peer[1]
            return self._conn

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
                raise lost_connection(self.host, self.port, e) from None
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
            raise lost_connection(
                self.host, self.port, ConnectionError("channel closed without an exit status")
            )
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
                    raise lost_connection(self.host, self.port, e) from None
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
                raise lost_connection(self.host, self.port, e) from None
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
                    raise lost_connection(self.host, self.port, e) from None
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
