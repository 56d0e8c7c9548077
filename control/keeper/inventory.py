"""The keeper's inventory (DESIGN §4 "inventory.toml"): the nodes and how to reach each one.

`find_inventory` picks the file, `load_inventory` reads and validates it into frozen `Node`s.
Every problem in a file is reported at once, one per line, each naming the file, the line, the
node and the key. No message ever contains an API key.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import stat
import sysconfig
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rbee.control.hive.settings import DEFAULT_STATE_DIR, KEY_FILE
from rbee.dataplane.protocol.hosts import is_loopback_host

INVENTORY_ENV = "RBEE_INVENTORY"
USER_INVENTORY = "~/.config/rbee/inventory.toml"
BUNDLED_INVENTORY = "default_inventory.toml"  # package data of rbee.control.keeper
DEFAULT_RBEE_PATH = "~/.local/share/rbee/venv/bin"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

Backend = Literal["cpu", "cuda", "metal"]

# Node names end up in file names, log lines and messages: an allow-list, like model refs.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_NODE_NAME_RULE = 'use 1–63 letters, digits, "_", "." or "-", starting with a letter or digit'
# Patterns are Rust regexes (pydantic-core), unanchored unless written with ^…$. A leading "-"
# is refused so that no value can ever be read as a command-line option.
_HOST = r"^[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]{0,252}$"
_USER = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_PATH = r"^[^\x00-\x1f\x7f]+$"
# A key goes into an Authorization header; an HTTP library's error about a bad header value
# would quote it, so a malformed key is refused here, without showing it.
_API_KEY = re.compile(r"[\x21-\x7e]+")

_EXPECTED = {
    "ssh": "true or false",
    "host": "a host name or IP address",
    "user": "a user name",
    "port": "an integer 1–65535",
    "identity_file": "a file path",
    "known_hosts": "a file path",
    "hive_port": "an integer 1–65535",
    "rbee_path": "a directory path",
    "backend": 'one of "cpu", "cuda", "metal"',
    "listen": "an IP address or host name",
    "api_key_env": "an environment variable name",
    "api_key_file": "a file path",
    "connect_timeout_s": "a number of seconds > 0",
    "use_ssh_config": "true or false",
    "state_dir": "a directory path",
    "idle_timeout_s": "a number of seconds > 0",
}
_SECRET_KEYS = frozenset({"api_key_env", "api_key_file"})
# Meaningless without SSH: accepting them on an `ssh = false` node would hide a mistake such as
# a remote node whose `ssh = false` line was copied from `local`.
_SSH_ONLY = (
    "host",
    "user",
    "port",
    "identity_file",
    "known_hosts",
    "connect_timeout_s",
    "use_ssh_config",
)
_WILDCARDS = frozenset({"0.0.0.0", "::"})


class InventoryError(ValueError):
    """A missing or invalid inventory, or a node's unusable key; one problem per line."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UnknownNode(InventoryError):
    """A node name the inventory does not define."""

    def __init__(self, name: str, known: list[str], path: Path) -> None:
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "none"
        super().__init__(f"{path}: unknown node {_quoted(name)} (known: {listed})")


class _Table(BaseModel):
    # strict: TOML values are typed, so `port = "22"` is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Defaults(_Table):
    hive_port: int = Field(8080, ge=1, le=65535)
    idle_timeout_s: float = Field(300.0, gt=0, allow_inf_nan=False)


class _NodeTable(_Table):
    """`[nodes.NAME]` as written; `None` means "not set", resolved in `_resolve`."""

    ssh: bool = True
    host: str | None = Field(None, pattern=_HOST)
    user: str | None = Field(None, pattern=_USER)
    port: int = Field(22, ge=1, le=65535)
    identity_file: str | None = Field(None, pattern=_PATH)
    known_hosts: str = Field(DEFAULT_KNOWN_HOSTS, pattern=_PATH)
    hive_port: int | None = Field(None, ge=1, le=65535)
    rbee_path: str | None = Field(None, pattern=_PATH)
    backend: Backend = "cpu"
    listen: str = Field("127.0.0.1", pattern=_HOST)
    api_key_env: str | None = Field(None, pattern=_ENV_NAME)
    api_key_file: str | None = Field(None, pattern=_PATH)
    connect_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    use_ssh_config: bool = True
    state_dir: str = Field(DEFAULT_STATE_DIR, pattern=_PATH)
    idle_timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)  # else [defaults]


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
    def hive_url(self) -> str:
        """The hive's URL for a direct node; a forwarded node's URL comes from its forward."""
        if not self.direct:
            # Its loopback URL would silently reach this machine's own hive instead.
            raise ValueError(
                f"node {_quoted(self.name)} listens on its loopback; reach it through SSH"
            )
        host = self.listen
        if host in _WILDCARDS:
            host = "127.0.0.1" if self.is_local else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.hive_port}"

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
                    f"node {_quoted(self.name)}: environment variable {self.api_key_env} is not "
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
                    f"node {_quoted(self.name)}: cannot create the local hive's "
                    f"key {path}: {e.strerror or type(e).__name__}"
                ) from None
        return self._read_key_file(path)

    def _read_key_file(self, path: Path) -> str:
        node = f"node {_quoted(self.name)}"
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
            raise InventoryError(f"node {_quoted(self.name)}: the API key in {source} {what}")
        return key


@dataclass(frozen=True)
class Inventory:
    """A validated inventory file and its nodes, in file order."""

    path: Path
    nodes: dict[str, Node]
    idle_timeout_s: float  # [defaults]: each node's unless it sets its own

    def get(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise UnknownNode(name, list(self.nodes), self.path) from None


def find_inventory(explicit: str | Path | None) -> Path:
    """`--inventory`, else `$RBEE_INVENTORY`, else the user's file, else the bundled example.

    A file named explicitly (option or variable) must exist: falling back to another inventory
    would run commands against nodes the operator did not mean.
    """
    if explicit is not None:
        return _existing(Path(explicit).expanduser(), "--inventory")
    from_env = os.environ.get(INVENTORY_ENV)
    if from_env:
        return _existing(Path(from_env).expanduser(), f"${INVENTORY_ENV}")
    user = Path(USER_INVENTORY).expanduser()
    if user.exists():
        return _existing(user, USER_INVENTORY)
    # A regular (non-zip) package: the resource is a real file.
    bundled = Path(str(files("rbee.control.keeper").joinpath(BUNDLED_INVENTORY)))
    return _existing(bundled, "the bundled example; is rbee installed completely?")


def _existing(path: Path, source: str) -> Path:
    if not path.exists():
        raise InventoryError(f"{path}: no such inventory file (from {source})")
    if not path.is_file():
        raise InventoryError(f"{path}: the inventory is not a file (from {source})")
    return path


def load_inventory(path: Path) -> Inventory:
    """Read and validate an inventory file; raises `InventoryError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise InventoryError(f"{path}: cannot read the inventory: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InventoryError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(path, e) from None
    problems = _Problems(path, text)
    inventory = _build(path, data, problems)
    problems.raise_if_any()
    return inventory


def _toml_error(path: Path, error: tomllib.TOMLDecodeError) -> InventoryError:
    message = str(error)
    # tomllib puts the position in the message before Python 3.14 added attributes.
    where = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if where:
        message = message[: where.start()]
        return InventoryError(f"{path}:{where[1]}: not valid TOML: {message} (column {where[2]})")
    return InventoryError(f"{path}: not valid TOML: {message}")


def _build(path: Path, data: dict[str, Any], problems: _Problems) -> Inventory:
    for key in data.keys() - {"defaults", "nodes"}:
        problems.add(
            problems.lines.key((), key),
            f"unknown top-level key {_quoted(key)} (known: defaults, nodes)",
        )
    defaults = _Defaults()
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        problems.add(
            problems.lines.key((), "defaults"),
            f'"defaults" must be a table, got {_shown(raw_defaults)}',
        )
    else:
        try:
            defaults = _Defaults.model_validate(raw_defaults)
        except ValidationError as e:
            problems.add_validation(e, ("defaults",), "[defaults]: ", _Defaults)

    nodes: dict[str, Node] = {}
    raw_nodes = data.get("nodes", {})
    if not isinstance(raw_nodes, dict):
        problems.add(
            problems.lines.key((), "nodes"),
            f'"nodes" must be a table of [nodes.NAME] tables, got {_shown(raw_nodes)}',
        )
        raw_nodes = {}
    for name, table in raw_nodes.items():
        node = _resolve(path, name, table, defaults, problems)
        if node is not None:
            nodes[name] = node
    return Inventory(path=path, nodes=nodes, idle_timeout_s=defaults.idle_timeout_s)


def _resolve(
    path: Path, name: str, table: Any, defaults: _Defaults, problems: _Problems
) -> Node | None:
    """One node's values with its defaults applied, or None after reporting its problems."""
    lines = problems.lines
    where = ("nodes", name)
    prefix = f"node {_quoted(name)}: "
    before = len(problems.found)
    if not _NODE_NAME.fullmatch(name):
        problems.add(lines.node(name), f"{prefix}invalid node name: {_NODE_NAME_RULE}")
    if not isinstance(table, dict):
        problems.add(lines.node(name), f"{prefix}must be a table, got {_shown(table)}")
        return None
    # Checked on the raw table so that they are reported along with any type errors.
    ssh = table.get("ssh", True)
    if ssh is False:
        for key in _SSH_ONLY:
            if key in table:
                problems.add(
                    lines.key(where, key),
                    f"{prefix}{_quoted(key)} applies to SSH nodes only (this node has ssh = false)",
                )
    elif ssh is True and "host" not in table:
        problems.add(lines.node(name), f'{prefix}"host" is required for an SSH node')
    if "api_key_env" in table and "api_key_file" in table:
        problems.add(
            lines.key(where, "api_key_file"),
            f'{prefix}set "api_key_env" or "api_key_file", not both',
        )
    try:
        raw = _NodeTable.model_validate(table)
    except ValidationError as e:
        problems.add_validation(e, where, prefix, _NodeTable)
        return None
    if not is_loopback_host(raw.listen) and not (raw.api_key_env or raw.api_key_file):
        # DESIGN §5: a hive on a reachable address refuses to start without a key.
        problems.add(
            lines.key(where, "listen"),
            f"{prefix}listen = {_quoted(raw.listen)} is reachable from the network, "
            f'so the node needs an API key: set "api_key_env" or "api_key_file"',
        )
    user = raw.user or _current_user()
    if raw.ssh and not user:
        problems.add(
            lines.node(name),
            f'{prefix}"user" is not set and the current user is unknown here; set it',
        )
    if len(problems.found) > before:
        return None

    def node_path(value: str) -> str:
        # The node's own shell expands `~` on an SSH node; a local node has no shell.
        return value if raw.ssh else os.path.expanduser(value)

    return Node(
        name=name,
        inventory_path=path,
        ssh=raw.ssh,
        host=raw.host or "127.0.0.1",
        user=user,
        port=raw.port,
        identity_file=_local_path(raw.identity_file),
        known_hosts=Path(raw.known_hosts).expanduser(),
        hive_port=raw.hive_port or defaults.hive_port,
        rbee_path=node_path(
            raw.rbee_path or (DEFAULT_RBEE_PATH if raw.ssh else sysconfig.get_path("scripts"))
        ),
        backend=raw.backend,
        listen=raw.listen,
        api_key_env=raw.api_key_env,
        api_key_file=_local_path(raw.api_key_file),
        connect_timeout_s=raw.connect_timeout_s,
        use_ssh_config=raw.use_ssh_config,
        state_dir=node_path(raw.state_dir),
        idle_timeout_s=raw.idle_timeout_s or defaults.idle_timeout_s,
        set_keys=frozenset(table),
    )


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry, as in some containers
        return ""


def _local_path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value is not None else None


class _Problems:
    """The problems found in one file, each with its line when the text shows it."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = _Lines(text)
        self.found: list[tuple[int | None, str]] = []

    def add(self, line: int | None, message: str) -> None:
        self.found.append((line, message))

    def add_validation(
        self, error: ValidationError, table: tuple[str, ...], prefix: str, model: type[_Table]
    ) -> None:
        seen: set[str] = set()
        for detail in error.errors():
            key = str(detail["loc"][0])
            if key in seen:
                continue
            seen.add(key)
            line = self.lines.key(table, key)
            if detail["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields)
                self.add(line, f"{prefix}unknown key {_quoted(key)} (known: {known})")
            else:
                # A secret key's value may be a key pasted in the wrong place.
                got = (
                    " (value not shown)"
                    if key in _SECRET_KEYS
                    else (f", got {_shown(detail['input'])}")
                )
                self.add(line, f"{prefix}{_quoted(key)} must be {_EXPECTED[key]}{got}")

    def raise_if_any(self) -> None:
        if self.found:
            # File order reads best; problems without a line go first (whole-file ones).
            ordered = sorted(self.found, key=lambda p: p[0] or 0)
            raise InventoryError(
                *(
                    f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}"
                    for line, message in ordered
                )
            )


# A TOML key: "quoted", 'literal' or bare.
_KEY_PART = r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+'
_HEADER = re.compile(rf"\s*\[\[?\s*((?:{_KEY_PART})(?:\s*\.\s*(?:{_KEY_PART}))*)\s*\]")
_KEY_LINE = re.compile(rf"\s*({_KEY_PART})\s*[.=]")


class _Lines:
    """Line numbers of tables and keys, found by scanning the text: tomllib keeps no positions.

    Best effort (a line inside a multi-line string can look like a key); a problem whose line
    is not found is reported without one.
    """

    def __init__(self, text: str) -> None:
        self._tables: dict[tuple[str, ...], int] = {}
        self._keys: dict[tuple[tuple[str, ...], str], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if header := _HEADER.match(line):
                table = tuple(_unquote(p) for p in re.findall(_KEY_PART, header[1]))
                # `[a.b]` also defines `a` when no `[a]` comes first.
                for end in range(1, len(table) + 1):
                    self._tables.setdefault(table[:end], number)
            elif key := _KEY_LINE.match(line):
                self._keys.setdefault((table, _unquote(key[1])), number)

    def node(self, name: str) -> int | None:
        return self.table(("nodes", name))

    def table(self, table: tuple[str, ...]) -> int | None:
        """`[a.b]`, or `b = {…}` under `[a]`."""
        if not table:
            return None
        return self._tables.get(table) or self._keys.get((table[:-1], table[-1]))

    def key(self, table: tuple[str, ...], key: str) -> int | None:
        """The key's line, else its table's: a missing or nested key is reported there."""
        return self.table((*table, key)) or self.table(table)


def _unquote(part: str) -> str:
    if part.startswith('"'):
        try:
            return str(json.loads(part))
        except ValueError:
            return part[1:-1]
    if part.startswith("'"):
        return part[1:-1]
    return part


def _quoted(text: str) -> str:
    """Double-quoted with escapes, so control characters in a name never reach a terminal."""
    shown = text if len(text) <= 80 else text[:80] + "…"
    return json.dumps(shown, ensure_ascii=False)


def _shown(value: Any) -> str:
    """A value as TOML spells it, for "got …"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)
