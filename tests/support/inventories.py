"""Inventory files for the cluster-layer and dashboard tests: a local node on a test hive,
an SSH node on a loopback sshd (test_hive_control.node_table), an unreachable node."""

from __future__ import annotations

from pathlib import Path

from conftest import BIN

from rbee.control.keeper.inventory import Inventory, load_inventory

CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1, so connecting is refused at once


def local_node(name: str, hive_port: int, state_dir: Path, *, extra: str = "") -> str:
    return (
        f'[nodes.{name}]\nssh = false\nhive_port = {hive_port}\nrbee_path = "{BIN}"\n'
        f'state_dir = "{state_dir}"\n{extra}\n'
    )


def unreachable_node(name: str, known_hosts: Path) -> str:
    """An SSH node whose sshd refuses connections (the message names host and port only)."""
    known_hosts.touch()
    return (
        f'[nodes.{name}]\nhost = "127.0.0.1"\nport = {CLOSED_PORT}\n'
        f'known_hosts = "{known_hosts}"\nuse_ssh_config = false\n\n'
    )


def write_inventory(path: Path, *tables: str) -> Inventory:
    path.write_text("".join(tables))
    return load_inventory(path)
