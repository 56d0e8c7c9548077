"""A cluster for the queen's clients: a real local hive, an inventory naming models of the
tiny generated GGUFs (the queen starts their workers on demand), and an RBEE_HOME where a
queen started with `start_queen(cluster.inventory.path, cluster.home)` says where it is."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.hive_process import HiveProcess, start_hive
from support.inventories import local_node, write_inventory

from rbee.control.keeper.inventory import Inventory


@dataclass
class QueenCluster:
    inventory: Inventory
    home: Path
    hive: HiveProcess


@contextmanager
def queen_cluster(root: Path, models: dict[str, Path]) -> Iterator[QueenCluster]:
    """`models`: inventory name → GGUF file, one `[models.NAME]` each (1 slot, 1 worker)."""
    hive = start_hive(root / "hive", "--idle-timeout-s", "600")
    port = int(hive.url.rsplit(":", 1)[1])
    tables = "".join(f'[models.{name}]\nref = "file:{path}"\n' for name, path in models.items())
    try:
        inventory = write_inventory(
            root / "inventory.toml", local_node("local", port, hive.state_dir) + tables
        )
        yield QueenCluster(inventory, root / "home", hive)
    finally:
        hive.stop()
