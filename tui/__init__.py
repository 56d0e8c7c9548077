"""rbee's Textual dashboard (`rbee tui`). It reaches the cluster only through rbee.control."""

from __future__ import annotations

from rbee.control.inventory import Inventory
from rbee.control.worker_registry import WorkerRegistry

from .app import RbeeApp
from .config import TuiConfig


def run_dashboard(inventory: Inventory, config: TuiConfig) -> None:
    """The thin entry of `rbee tui`: the app on this terminal until the person quits."""
    registry = WorkerRegistry()
    try:
        RbeeApp(inventory, registry, config).run()
    finally:
        registry.close()
