"""DESIGN §1's arrows, held: each room imports only the rooms it may.

`tui → control.keeper`; `control.* → dataplane.protocol` and the shared plumbing; the worker
never imports control code; control never imports the dashboard. Every module's imports are
read from its source (imports inside functions too, since a lazy import is still an arrow),
relative ones resolved to the package they name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"control": "rbee.control", "dataplane": "rbee.dataplane", "tui": "rbee.tui"}
PROTOCOL = "rbee.dataplane.protocol"
PLUMBING = "rbee.dataplane.plumbing"
KEEPER = "rbee.control.keeper"
HIVE = "rbee.control.hive"
# Each room and the rooms it may import, besides itself. A module belongs to the longest room
# its name starts with; the bare packages (`rbee.control`, `rbee.dataplane`) import nothing.
ALLOWED: dict[str, set[str]] = {
    PROTOCOL: set(),  # the contract: it imports no other part of rbee
    PLUMBING: {PROTOCOL},
    "rbee.dataplane.worker": {PROTOCOL, PLUMBING},
    HIVE: {PROTOCOL, PLUMBING},
    KEEPER: {HIVE, PROTOCOL, PLUMBING},  # the keeper starts hives: their settings
    "rbee.control.queen": {KEEPER, PROTOCOL, PLUMBING},
    "rbee.tui": {KEEPER, PROTOCOL},
    "rbee.control": set(),
    "rbee.dataplane": set(),
}
# Single modules a room (or one module) may import besides its allowed rooms, and why.
EXCEPTIONS: dict[str, set[str]] = {
    # The hive is the worker's parent: it starts the worker with the key variable the worker
    # reads and sizes its RAM preflight by the worker's default batch.
    HIVE: {"rbee.dataplane.worker.settings"},
    # The composition root: the whole `rbee` command, the keeper's CLI plus `rbee tui` and
    # `rbee queen`, so that neither the keeper nor the queen knows the other faces.
    "rbee.tui.command": {"rbee.control.queen.command"},
}


def room_of(module: str) -> str | None:
    rooms = [r for r in ALLOWED if module == r or module.startswith(r + ".")]
    return max(rooms, key=len) if rooms else None


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> set[str]:
    """The absolute names of what `source` (the text of `module`) imports."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                names.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.add(node.module)
    return names


def wrong_arrows(module: str, imported: set[str]) -> list[str]:
    own = room_of(module)
    assert own is not None, f"{module} is in no room of ALLOWED"
    allowed = ALLOWED[own] | {own}
    return sorted(
        name
        for name in imported
        if (room := room_of(name)) is not None
        and room not in allowed
        and name not in EXCEPTIONS.get(own, set()) | EXCEPTIONS.get(module, set())
    )


def sources() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_the_allowed_way(path: Path) -> None:
    module = module_name(path)
    imported = imported_modules(path.read_text(), module, is_package=path.name == "__init__.py")
    assert wrong_arrows(module, imported) == [], f"{module} imports against DESIGN §1's arrows"


@pytest.mark.parametrize(
    ("module", "source", "wrong"),
    [
        (
            "rbee.dataplane.worker.service",
            "from rbee.control.keeper.node import Node",
            ["rbee.control.keeper.node"],
        ),
        ("rbee.dataplane.worker.service", "def f():\n    import rbee.tui.app", ["rbee.tui.app"]),
        ("rbee.dataplane.protocol.wire", "from ..plumbing.http import bind", [PLUMBING + ".http"]),
        (
            "rbee.dataplane.plumbing.http",
            "from ..worker.settings import X",
            ["rbee.dataplane.worker.settings"],
        ),
        ("rbee.control.keeper.command", "from rbee.tui import command", ["rbee.tui"]),
        ("rbee.control.hive.pool", "from ...tui.app import RbeeApp", ["rbee.tui.app"]),
        ("rbee.control.hive.pool", "from ..keeper.node import Node", [KEEPER + ".node"]),
        (
            "rbee.control.hive.pool",
            "from rbee.dataplane.worker.service import W",
            ["rbee.dataplane.worker.service"],
        ),
        ("rbee.control.hive.preflight", "from rbee.dataplane.worker.settings import S", []),
        ("rbee.control.hive.pool", "from rbee.dataplane.protocol.states import S", []),
        (
            "rbee.control.keeper.infer",
            "from rbee.dataplane.worker.settings import S",
            ["rbee.dataplane.worker.settings"],
        ),
        ("rbee.control.keeper.hive_control", "from ..hive.pidfile import X", []),
        ("rbee.tui.app", "from rbee.control.keeper.probe import probe_node", []),
        (
            "rbee.tui.app",
            "from rbee.control.hive.settings import X",
            ["rbee.control.hive.settings"],
        ),
    ],
)
def test_the_rule_catches_a_wrong_arrow(module: str, source: str, wrong: list[str]) -> None:
    imported = imported_modules(source, module, is_package=False)
    assert wrong_arrows(module, imported) == wrong
