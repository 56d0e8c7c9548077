"""One node of the keeper's inventory (DESIGN §4 "inventory.toml"), every value resolved, and
its API key: read from the variable or file the inventory names, or made for the local hive.

No message ever contains an API key.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from rbee.control.hive.settings import KEY_FILE
from rbee.dataplane.protocol.backends import Backend
from rbee.dataplane.protocol.hosts import is_loopback_host

from .inventory_errors import InventoryError
from .toml_lines import quoted

# A key goes into an Authorization header; an HTTP library's error about a bad header value
# would quote it, so a malformed key is refused here, without showing it.
_API_KEY = re.compile(r"[\x21-\x7e]+")
_WILDCARDS = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True)
class Node:
    """One node, every value resolved.

    Paths on the operator's machine (`identity_file`, `known_hosts`, `api_key_file`) are
    expanded `Path`s. Paths on the node (`rbee_path`, `state_dir`) are strings kept as written,
    `~` included, for the node's shell to expand: quote them as `"$HOME"/` + `shlex.quote(rest)`,
    since a quoted `~` is not expanded. On a local node (no SSH) they are expanded here.
    """

    name: str
    inventory_path: Path  # the file the node comes from, named in messages
    ssh: bool
    host: str
    user: str
    port: int
    identity_file: Path | None
    known_hosts: Path
    hive_port: int
    rbee_path: str  # on the node: the directory holding rbee-hive
    backend: Backend
    listen: str  # on the node: where its hive and workers bind
    api_key_env: str | None
    api_key_file: Path | None
    connect_timeout_s: float
    use_ssh_config: bool
    state_dir: str  # on the node: the hive's --state-dir
    idle_timeout_s: float  # the hive's --idle-timeout-s: the node's, else [defaults]
    # The keys the file sets. With use_ssh_config, the SSH client should pass user, port and
    # identity_file only when set here, so that ~/.ssh/config supplies the others.
    set_keys: frozenset[str]

    @property
    def is_local(self) -> bool:
        return not self.ssh

    @property
    def passed_ssh_keys(self) -> frozenset[str]:
        """Which of user and port the SSH client passes: with ~/.ssh/config honoured, only what
        the inventory sets, so the config's User and Port still apply to the rest."""
        return self.set_keys if self.use_ssh_config else frozenset(("user", "port"))

    @property
    def direct(self) -> bool:
        """Reached over the network (or on this machine), not through an SSH port forward."""
        return self.is_local or not is_loopback_host(self.listen)

    @property
    def hive_address(self) -> str:
        """HOST:PORT of the hive as the person knows it, for messages."""
        if self.direct:
            return self.hive_url.removeprefix("http://")
        return f"{self.host}:{self.hive_port}"

    @property
    def hive_url(self) -> str:
        """The hive's URL for a direct node; a forwarded node's URL comes from its forward."""
        if not self.direct:
            # Its loopback URL would silently reach this machine's own hive instead.
            raise ValueError(
                f"node {quoted(self.name)} listens on its loopback; reach it through SSH"
            )
        host = self.listen
        if host in _WILDCARDS:
            host = "127.0.0.1" if self.is_local else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.hive_port}"

    def forward_command(self, host: str, port: int) -> str:
        """An OpenSSH command a person runs to reach HOST:PORT on this node at the same port
        here, over the SSH the keeper uses (the keeper's own forwards end with its command)."""
        target = f"[{host}]" if ":" in host else host
        argv = ["ssh", "-N", "-L", f"{port}:{target}:{port}"]
        passed = self.passed_ssh_keys
        if "port" in passed and self.port != 22:
            argv += ["-p", str(self.port)]
        if self.identity_file:
            argv += ["-i", str(self.identity_file)]
        if "known_hosts" in self.set_keys:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        argv.append(f"{self.user}@{self.host}" if "user" in passed else self.host)
        return shlex.join(argv)

    @property
    def api_key_source(self) -> str | None:
        """Where the node's key is configured, for messages such as a rejected key."""
        if self.api_key_env:
            return f"${self.api_key_env} (api_key_env in {self.inventory_path})"
        if self.api_key_file:
            return f"{self.api_key_file} (api_key_file in {self.inventory_path})"
        if self.is_local:
            return f"{self.local_key_file} (made by rbee for the local hive)"
        return None

    @property
    def local_key_file(self) -> Path:
        """The local hive's own key when the inventory configures none."""
        return Path(self.state_dir).expanduser() / KEY_FILE

    def api_key(self) -> str | None:
        """The node's API key, or None when none is configured."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "").strip()
            if not value:
                raise InventoryError(
                    f"node {quoted(self.name)}: environment variable {self.api_key_env} is not "
                    f"set or empty (api_key_env in {self.inventory_path})"
                )
            return self._checked_key(value, f"${self.api_key_env}")
        if self.api_key_file:
            return self._checked_key(self._read_key_file(self.api_key_file), str(self.api_key_file))
        if self.is_local:
            return self._checked_key(self._local_key(), str(self.local_key_file))
        return None

    def _local_key(self) -> str:
        """A local hive has a key even when the inventory gives none: other users of this
        machine reach 127.0.0.1 too. Made once, at first use, into a 0600 file in the hive's
        state dir; the keeper starts the hive with that file (`--api-key-file`)."""
        path = self.local_key_file
        if not path.exists():
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                draft = path.with_name(f".{path.name}.{os.getpid()}")
                fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(32))
                try:
                    os.link(draft, path)  # whole or not at all, and never over another's key
                except FileExistsError:
                    pass
                finally:
                    os.unlink(draft)
            except OSError as e:
                raise InventoryError(
                    f"node {quoted(self.name)}: cannot create the local hive's "
                    f"key {path}: {e.strerror or type(e).__name__}"
                ) from None
        return self._read_key_file(path)

    def _read_key_file(self, path: Path) -> str:
        node = f"node {quoted(self.name)}"
        try:
            with open(path, "rb") as f:
                # fstat on the open file: the mode checked is the mode of what is read.
                mode = os.fstat(f.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise InventoryError(f"{node}: API key file {path} is not a regular file")
                if mode & 0o077:
                    raise InventoryError(
                        f"{node}: API key file {path} has mode {stat.S_IMODE(mode):04o}; it "
                        f"must be private to its owner: chmod 600 {path}"
                    )
                data = f.read()
        except OSError as e:
            raise InventoryError(
                f"{node}: cannot read API key file {path}: {e.strerror or type(e).__name__}"
            ) from None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InventoryError(f"{node}: API key file {path} is not text") from None

    def _checked_key(self, key: str, source: str) -> str:
        if not _API_KEY.fullmatch(key):
            what = "is empty" if not key else "contains spaces or non-ASCII characters"
            raise InventoryError(f"node {quoted(self.name)}: the API key in {source} {what}")
        return key
