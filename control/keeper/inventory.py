"""The keeper's inventory (DESIGN §4 "inventory.toml"): the nodes and how to reach each one,
and the models the cluster serves by name.

`find_inventory` picks the file, `load_inventory` reads and validates it into frozen `Node`s
(node.py) and `ModelSpec`s (served_models.py). Every problem in a file is reported at once, one
per line, each naming the file, the line, the node or model and the key. No message ever
contains an API key.
"""

from __future__ import annotations

import getpass
import os
import re
import sysconfig
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rbee.control.hive.settings import DEFAULT_STATE_DIR
from rbee.dataplane.protocol.backends import Backend
from rbee.dataplane.protocol.chat_templates import CHAT_TEMPLATE_NAMES, ChatTemplateName
from rbee.dataplane.protocol.hive_api import DEFAULT_WORKER_SLOTS, MAX_WORKER_SLOTS, WorkerSlots
from rbee.dataplane.protocol.hosts import is_loopback_host
from rbee.dataplane.protocol.model_refs import ACCEPTED_FORMS, InvalidModelRef, parse_model_ref

from .inventory_errors import InventoryError, UnknownModel, UnknownNode
from .node import Node
from .served_models import (
    DEFAULT_WORKERS_PER_NODE,
    MAX_WORKERS_PER_NODE,
    MODEL_NAME,
    MODEL_NAME_RULE,
    ModelSpec,
)
from .toml_lines import TomlLines, quoted, shown
from .worker_registry import rbee_home

INVENTORY_ENV = "RBEE_INVENTORY"
USER_INVENTORY = "~/.config/rbee/inventory.toml"
BUNDLED_INVENTORY = "default_inventory.toml"  # package data of rbee.control.keeper
DEFAULT_RBEE_PATH = "~/.local/share/rbee/venv/bin"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

# Node names end up in file names, log lines and messages: an allow-list, like model refs.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_NODE_NAME_RULE = 'use 1–63 letters, digits, "_", "." or "-", starting with a letter or digit'
# Patterns are Rust regexes (pydantic-core), unanchored unless written with ^…$. A leading "-"
# is refused so that no value can ever be read as a command-line option.
_HOST = r"^[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]{0,252}$"
_USER = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_PATH = r"^[^\x00-\x1f\x7f]+$"

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
    "ref": 'a model reference such as "pkg:gemma3-270m"',
    "nodes": "a non-empty list of node names",
    "slots": f"an integer 1–{MAX_WORKER_SLOTS}",
    "max_workers_per_node": f"an integer 1–{MAX_WORKERS_PER_NODE}",
    "chat_template": "one of " + ", ".join(f'"{name}"' for name in CHAT_TEMPLATE_NAMES),
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
    state_dir: str | None = Field(None, pattern=_PATH)  # None: the default, below
    idle_timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)  # else [defaults]


class _ModelTable(_Table):
    """`[models.NAME]` as written; `ref` is required, checked with its grammar in `_model_spec`."""

    ref: str | None = None
    nodes: list[str] | None = Field(None, min_length=1)  # None: every node
    slots: WorkerSlots = DEFAULT_WORKER_SLOTS
    max_workers_per_node: int = Field(DEFAULT_WORKERS_PER_NODE, ge=1, le=MAX_WORKERS_PER_NODE)
    chat_template: ChatTemplateName | None = None


@dataclass(frozen=True)
class Inventory:
    """A validated inventory file, its nodes and its models, in file order."""

    path: Path
    nodes: dict[str, Node]
    models: dict[str, ModelSpec]
    idle_timeout_s: float  # [defaults]: each node's unless it sets its own

    def get(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise UnknownNode(name, list(self.nodes), self.path) from None

    def model(self, requested: str) -> ModelSpec:
        """What a client sent as "model": an inventory model's name, else a model reference.

        A reference that an inventory model serves (the same file, whatever its checksum
        fragment) gets that model's spec, the first in file order, so its limits apply; any
        other gets the defaults on every node.
        """
        if requested in self.models:
            return self.models[requested]
        try:
            ref = parse_model_ref(requested)
        except InvalidModelRef as e:
            raise UnknownModel(requested, list(self.models), e.reason) from None
        for spec in self.models.values():
            if spec.ref == ref.ref:
                return spec
        return ModelSpec(
            name=ref.spelled,
            ref=ref.ref,
            nodes=tuple(self.nodes),
            slots=DEFAULT_WORKER_SLOTS,
            max_workers_per_node=DEFAULT_WORKERS_PER_NODE,
            sha256=ref.sha256,
        )


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
    for key in data.keys() - {"defaults", "nodes", "models"}:
        problems.add(
            problems.lines.key((), key),
            f"unknown top-level key {quoted(key)} (known: defaults, nodes, models)",
        )
    defaults = _Defaults()
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        problems.add(
            problems.lines.key((), "defaults"),
            f'"defaults" must be a table, got {shown(raw_defaults)}',
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
            f'"nodes" must be a table of [nodes.NAME] tables, got {shown(raw_nodes)}',
        )
        raw_nodes = {}
    for name, table in raw_nodes.items():
        node = _resolve(path, name, table, defaults, problems)
        if node is not None:
            nodes[name] = node

    models: dict[str, ModelSpec] = {}
    raw_models = data.get("models", {})
    if not isinstance(raw_models, dict):
        problems.add(
            problems.lines.key((), "models"),
            f'"models" must be a table of [models.NAME] tables, got {shown(raw_models)}',
        )
        raw_models = {}
    for name, table in raw_models.items():
        # Checked against every node the file names, so that a node's own mistake is not
        # reported again as each model's unknown node.
        spec = _model_spec(name, table, list(raw_nodes), problems)
        if spec is not None:
            _check_shared_template(spec, models.values(), problems)
            models[name] = spec
    return Inventory(path=path, nodes=nodes, models=models, idle_timeout_s=defaults.idle_timeout_s)


def _resolve(
    path: Path, name: str, table: Any, defaults: _Defaults, problems: _Problems
) -> Node | None:
    """One node's values with its defaults applied, or None after reporting its problems."""
    lines = problems.lines
    where = ("nodes", name)
    prefix = f"node {quoted(name)}: "
    before = len(problems.found)
    if not _NODE_NAME.fullmatch(name):
        problems.add(lines.table(where), f"{prefix}invalid node name: {_NODE_NAME_RULE}")
    if not isinstance(table, dict):
        problems.add(lines.table(where), f"{prefix}must be a table, got {shown(table)}")
        return None
    # Checked on the raw table so that they are reported along with any type errors.
    ssh = table.get("ssh", True)
    if ssh is False:
        for key in _SSH_ONLY:
            if key in table:
                problems.add(
                    lines.key(where, key),
                    f"{prefix}{quoted(key)} applies to SSH nodes only (this node has ssh = false)",
                )
    elif ssh is True and "host" not in table:
        problems.add(lines.table(where), f'{prefix}"host" is required for an SSH node')
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
            f"{prefix}listen = {quoted(raw.listen)} is reachable from the network, "
            f'so the node needs an API key: set "api_key_env" or "api_key_file"',
        )
    user = raw.user or _current_user()
    if raw.ssh and not user:
        problems.add(
            lines.table(where),
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
        # A local hive's state lives with the keeper's ($RBEE_HOME), so that RBEE_HOME moves
        # it too; a remote node's in the hive's own default there.
        state_dir=node_path(
            raw.state_dir or (DEFAULT_STATE_DIR if raw.ssh else str(rbee_home() / "hive"))
        ),
        idle_timeout_s=raw.idle_timeout_s or defaults.idle_timeout_s,
        set_keys=frozenset(table),
    )


def _model_spec(
    name: str, table: Any, node_names: list[str], problems: _Problems
) -> ModelSpec | None:
    """One `[models.NAME]` with its defaults applied, or None after reporting its problems."""
    lines = problems.lines
    where = ("models", name)
    prefix = f"model {quoted(name)}: "
    before = len(problems.found)
    if not MODEL_NAME.fullmatch(name):
        problems.add(lines.table(where), f"{prefix}invalid model name: {MODEL_NAME_RULE}")
    if not isinstance(table, dict):
        problems.add(lines.table(where), f"{prefix}must be a table, got {shown(table)}")
        return None
    if "ref" not in table:
        problems.add(
            lines.table(where),
            f'{prefix}"ref" is required (a model reference such as "pkg:gemma3-270m")',
        )
    try:
        raw = _ModelTable.model_validate(table)
    except ValidationError as e:
        problems.add_validation(e, where, prefix, _ModelTable)
        return None
    ref, sha256 = "", None
    if raw.ref is not None:
        try:
            parsed = parse_model_ref(raw.ref)
            ref, sha256 = parsed.ref, parsed.sha256
        except InvalidModelRef as e:
            problems.add(
                lines.key(where, "ref"),
                f'{prefix}"ref" is not a model reference: {e.reason}; accepted forms: '
                + ", ".join(ACCEPTED_FORMS),
            )
    known = ", ".join(node_names) or "none"
    for node in raw.nodes or ():
        if node not in node_names:
            problems.add(
                lines.key(where, "nodes"),
                f'{prefix}unknown node {quoted(node)} in "nodes" (known: {known})',
            )
    if len(problems.found) > before:
        return None
    allowed = node_names if raw.nodes is None else [n for n in node_names if n in raw.nodes]
    return ModelSpec(
        name=name,
        ref=ref,
        nodes=tuple(allowed),
        slots=raw.slots,
        max_workers_per_node=raw.max_workers_per_node,
        sha256=sha256,
        chat_template=raw.chat_template,
    )


def _check_shared_template(
    spec: ModelSpec, earlier: Iterable[ModelSpec], problems: _Problems
) -> None:
    """Models of one file share its workers (the queen routes by reference), so they must
    agree on the chat template those workers were started with."""
    ref = parse_model_ref(spec.ref).ref
    for other in earlier:
        if parse_model_ref(other.ref).ref == ref and other.chat_template != spec.chat_template:
            where = ("models", spec.name)
            line = problems.lines.key(where, "chat_template") or problems.lines.table(where)
            problems.add(
                line,
                f"model {quoted(spec.name)}: serves the same file as model "
                f"{quoted(other.name)} with another chat_template "
                f"({spec.chat_template or 'none'} and {other.chat_template or 'none'}): "
                "workers of one file serve both, so give them the same one",
            )
            return


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
        self.lines = TomlLines(text)
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
                self.add(line, f"{prefix}unknown key {quoted(key)} (known: {known})")
            else:
                # A secret key's value may be a key pasted in the wrong place.
                got = (
                    " (value not shown)"
                    if key in _SECRET_KEYS
                    else (f", got {shown(detail['input'])}")
                )
                if len(detail["loc"]) > 1:  # one item of an array
                    got += " in the array"
                self.add(line, f"{prefix}{quoted(key)} must be {_EXPECTED[key]}{got}")

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
