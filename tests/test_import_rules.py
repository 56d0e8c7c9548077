"""DESIGN §1's arrows, held: `tui → control → dataplane`, never back.

Every module's imports are read from its source (imports inside functions too, since a lazy
import is still an arrow), relative ones resolved to the package they name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"control": "rbee.control", "dataplane": "rbee.dataplane", "tui": "rbee.tui"}
# Which of rbee's packages each may import, besides itself.
ALLOWED = {
    "rbee.dataplane": set(),
    "rbee.control": {"rbee.dataplane"},
    "rbee.tui": {"rbee.control", "rbee.dataplane"},
}


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
    own = next(p for p in ALLOWED if module == p or module.startswith(p + "."))
    return sorted(
        name
        for name in imported
        for other in ALLOWED
        if other != own
        and (name == other or name.startswith(other + "."))
        and other not in ALLOWED[own]
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
            "rbee.dataplane.worker",
            "from rbee.control.inventory import Node",
            ["rbee.control.inventory"],
        ),
        ("rbee.dataplane.worker", "def f():\n    import rbee.tui.app", ["rbee.tui.app"]),
        ("rbee.control.cli", "from rbee.tui import command", ["rbee.tui"]),
        ("rbee.control.hive.pool", "from ...tui.app import RbeeApp", ["rbee.tui.app"]),
        ("rbee.control.hive.pool", "from ..inventory import Node", []),
        ("rbee.tui.app", "from rbee.control.cluster import probe_node", []),
    ],
)
def test_the_rule_catches_a_wrong_arrow(module: str, source: str, wrong: list[str]) -> None:
    imported = imported_modules(source, module, is_package=False)
    assert wrong_arrows(module, imported) == wrong
