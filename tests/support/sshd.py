"""Real OpenSSH servers on loopback ports, one per fake node (DESIGN §6).

`start_sshd(tmp_dir, name)` starts `/usr/sbin/sshd` on a free 127.0.0.1 port with its own
generated host key, a generated client key pair, an authorized_keys file and a known_hosts file
that trusts the host key. Everything lives under `tmp_dir/name`; nothing touches ~/.ssh.
The login user is the current user (root in CI), or with `login_user=True` a new user with an
empty home made with useradd (needs root), removed again by `remove()`.

Facts this file is built on (measured on the project's machine, see issue 4):
- sshd run as root needs its privilege-separation directory `/run/sshd` (0755, root-owned).
- Keys under /tmp (pytest's tmp dirs) fail sshd's ownership/permission checks: `StrictModes no`.
- authorized_keys is read with the login user's privileges, so it is 0644.
- sshd must be started by absolute path (it re-executes itself for every connection) and with
  `-e`, because there is no syslog here; `-D` keeps it in the foreground as our child.
- The default `MaxStartups 10:30:100` starts dropping connections past ~10 simultaneous
  handshakes; the fake nodes raise it unless a test asks for the default (the keeper's own
  per-host cap is what must keep real nodes happy).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

SSHD = "/usr/sbin/sshd"
# Raised so that tests that open many connections at once are not throttled by sshd.
DEFAULT_MAX_STARTUPS = "100:30:200"
INSTALL_HINT = "run `bash scripts/install-test-deps.sh` (what `make test` does) to install it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> str:
    """Generate an ed25519 key pair without passphrase at `path`; returns the public key line."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class FakeNode:
    """One real sshd on 127.0.0.1:port, standing in for a remote node."""

    name: str
    dir: Path
    port: int
    user: str
    host_key: Path
    client_key: Path  # private key the client authenticates with (identity_file)
    known_hosts: Path  # trusts this node's host key at [127.0.0.1]:port
    authorized_keys: Path
    config: Path
    log_path: Path
    max_startups: str | None = DEFAULT_MAX_STARTUPS
    host: str = "127.0.0.1"
    # sshd's SetEnv: variables every session on this node gets (e.g. pip's wheel directory).
    session_env: dict[str, str] = field(default_factory=dict)
    # The useradd-made login user and its world-readable authorized_keys folder, if any.
    created_user: bool = False
    public_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Start sshd (if not running) and wait until it answers with its SSH banner."""
        if self.alive:
            return
        self._write_config()
        # Privilege separation directory; sshd refuses to start without it when run as root.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        with open(self.log_path, "ab") as log:  # sshd keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own process group: a Ctrl+C on the test run must not reach it first, and
                # stop() can signal just this listener.
                start_new_session=True,
            )
        self._wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop the listening sshd. Sessions already open run on in their own sshd children
        until their client disconnects, as on a real machine."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def remove(self) -> None:
        """Stop sshd, and remove a login user made for this node, its processes and home."""
        self.stop()
        if self.created_user:
            listed = subprocess.run(
                ["ps", "-u", self.user, "-o", "pid="], capture_output=True, text=True
            )
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["userdel", "--remove", "--force", self.user], capture_output=True)
            self.created_user = False
        if self.public_dir is not None:
            shutil.rmtree(self.public_dir, ignore_errors=True)
            self.public_dir = None

    @property
    def home(self) -> Path:
        return Path(os.path.expanduser(f"~{self.user}"))

    def restart(self) -> None:
        self.stop()
        self.start()

    def rotate_host_key(self) -> str:
        """Give the node a new host key (as a reinstall would) and restart sshd on the same
        port. known_hosts is left alone, so clients that verify must now refuse the node.
        Returns the new public host key line."""
        self.stop()
        pub = _keygen(self.host_key, f"{self.name}-host")
        self.start()
        return pub

    def trust_current_host_key(self) -> None:
        """Rewrite known_hosts to trust the current host key (what a user does after
        `ssh-keygen -R` and accepting the new key)."""
        self.known_hosts.write_text(self.known_hosts_line() + "\n")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def host_public_key(self) -> str:
        return self.host_key.with_name(self.host_key.name + ".pub").read_text().strip()

    def known_hosts_line(self) -> str:
        keytype, blob = self.host_public_key.split()[:2]
        return f"[{self.host}]:{self.port} {keytype} {blob}"

    def log(self) -> str:
        """sshd's own log (useful in assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for rbee.control.keeper.ssh_runner.SSHRunner that reach this node."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "identity_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "use_ssh_config": False,
        }

    def inventory_entry(self) -> dict[str, object]:
        """This node's keys for an inventory.toml `[nodes.NAME]` table (DESIGN §4)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
        }

    def ssh_argv(self) -> list[str]:
        """An OpenSSH client command line for this node (no ~/.ssh/config, strict host keys,
        never prompts); append the remote command."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-p",
            str(self.port),
            f"{self.user}@{self.host}",
        ]

    # -- internals -------------------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # No PAM stack to consult in a container, and key auth does not need it.
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            # Built into sshd, so it works whatever the distribution calls sftp-server.
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
        ]
        if self.max_startups:
            lines.append(f"MaxStartups {self.max_startups}")
        # The login shell may run `pyenv rehash` (this machine's ~/.bashrc does), which waits
        # 60 s for a lock that a session killed mid-rehash (a node "switched off" by a test)
        # leaves behind: every later SSH command of the suite would then take a minute.
        session_env = {"PYENV_REHASH_TIMEOUT": "0", **self.session_env}
        lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()))
        self.config.write_text("\n".join(lines) + "\n")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd for fake node {self.name!r} exited with {self.proc.returncode}:\n"
                    + self.log()
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"sshd for fake node {self.name!r} did not answer:\n" + self.log())


def _add_login_user(name: str) -> str:
    """A new user with an empty home (`useradd --create-home`); fails clearly without root."""
    if shutil.which("useradd") is None or os.geteuid() != 0:
        raise RuntimeError(
            "a fake node with its own login user needs root and useradd "
            "(CI runs the suite as root); run the tests as root"
        )
    user = f"rbee-{name}-{secrets.token_hex(3)}"[:32]
    # Password "*": no password login, but not "locked" ("!"), which sshd refuses without PAM.
    made = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", user],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise RuntimeError(f"useradd {user} failed: {made.stderr.strip()}")
    return user


def start_sshd(
    tmp_dir: Path | str,
    name: str,
    *,
    max_startups: str | None = DEFAULT_MAX_STARTUPS,
    login_user: bool = False,
    session_env: dict[str, str] | None = None,
) -> FakeNode:
    """Start a fake node `name`: a real sshd on a free 127.0.0.1 port, files in tmp_dir/name.

    `max_startups=None` keeps sshd's default (10:30:100), as a stock node has.
    `login_user=True` logs in as a new non-root user with an empty home; call `remove()`.
    `session_env` is set in every session (sshd's SetEnv).
    """
    if not os.access(SSHD, os.X_OK):
        raise RuntimeError(f"{SSHD} is missing: {INSTALL_HINT}")
    if shutil.which("ssh-keygen") is None:
        raise RuntimeError(f"ssh-keygen is missing: {INSTALL_HINT}")
    d = Path(tmp_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    host_key = d / "ssh_host_ed25519_key"
    client_key = d / "client_ed25519"
    _keygen(host_key, f"{name}-host")
    client_pub = _keygen(client_key, f"{name}-client")
    user = getpass.getuser()
    public_dir = None
    if login_user:
        user = _add_login_user(name)
        # sshd reads authorized_keys as the login user, who cannot enter pytest's 0700 dirs.
        public_dir = Path(tempfile.mkdtemp(prefix=f"rbee-sshd-{name}-"))
        public_dir.chmod(0o755)
    authorized_keys = (public_dir or d) / "authorized_keys"
    authorized_keys.write_text(client_pub + "\n")
    authorized_keys.chmod(0o644)  # read with the login user's privileges
    node = FakeNode(
        name=name,
        dir=d,
        port=0,
        user=user,
        host_key=host_key,
        client_key=client_key,
        known_hosts=d / "known_hosts",
        authorized_keys=authorized_keys,
        config=d / "sshd_config",
        log_path=d / "sshd.log",
        max_startups=max_startups,
        session_env=dict(session_env or {}),
        created_user=login_user,
        public_dir=public_dir,
    )
    # A free port can be taken between probing and sshd's bind; try a few.
    last_error: Exception | None = None
    for _ in range(5):
        node.port = _free_port()
        try:
            node.start()
        except RuntimeError as e:
            last_error = e
            continue
        node.trust_current_host_key()
        return node
    node.remove()
    raise RuntimeError(f"could not start sshd for fake node {name!r}: {last_error}")
