"""The inventory's errors: a missing or invalid file, an unknown node, a node's unusable key.

Apart from the loader (inventory.py) because `Node` (node.py) raises them too when it reads
its key, and the loader builds `Node`s.
"""

from __future__ import annotations

from pathlib import Path

from .toml_lines import quoted


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
        super().__init__(f"{path}: unknown node {quoted(name)} (known: {listed})")
