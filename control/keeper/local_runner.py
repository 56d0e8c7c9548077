"""`LocalRunner`: the `Runner` contract (runner.py) on this machine, for inventory nodes with
`ssh = false`: subprocesses without a shell, plain files, no tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
from collections.abc import Sequence

from .runner import CommandError, CommandResult, CommandTimeout, Runner


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
