"""The inventory's errors: a missing or invalid file, an unknown node or model, a node's
unusable key.

Apart from the loader (inventory.py) because `Node` (node.py) raises them too when it reads
its key, and the loader builds `Node`s.
"""

from __future__ import annotations

from pathlib import Path

from rbee.dataplane.protocol.model_refs import ACCEPTED_FORMS

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


class UnknownModel(InventoryError):
    """A "model" that is neither an inventory model's name nor a valid model reference.

    The message leaves out the inventory's path: the queen sends it to its clients.
    """

    def __init__(self, name: str, known: list[str], reason: str) -> None:
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "none"
        # Said in the grammar's words when the client evidently meant a reference ("pkg:…").
        tail = (
            f"as a model reference: {reason}; accepted forms"
            if ":" in name
            else "a model reference works too"
        )
        super().__init__(
            f"unknown model {quoted(name)} (known: {listed}); {tail}: " + ", ".join(ACCEPTED_FORMS)
        )
