#!/usr/bin/env python3
"""Ansible dynamic inventory from the keeper's inventory.toml: one list of nodes for both.

    ansible-playbook -i ansible/inventory_toml.py ansible/site.yml [--limit NODE]

The file is the one `rbee` uses (--inventory is not available here: $RBEE_INVENTORY, else
~/.config/rbee/inventory.toml, else the bundled example), read by rbee's own loader, so its
checks and defaults apply unchanged. Runs with the python that has rbee installed (an activated
venv, or the checkout's .venv, found next to this folder).

Each node maps to: ansible_host/port/user, ansible_ssh_private_key_file (identity_file), host
keys checked against its known_hosts (StrictHostKeyChecking=yes), no ssh connection sharing
(ControlMaster=no: ansible's default ControlPersist=60s leaves background ssh processes
behind), ~/.ssh/config read only when use_ssh_config is true; `ssh = false` nodes are local
connections. rbee_path, state_dir and the node's API key (for the 0600 key file) become
rbee_path, rbee_state_dir and rbee_api_key.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import sysconfig
from pathlib import Path
from typing import Any

try:
    from rbee.control.keeper.install_plan import BUNDLED_MODEL_EXTRA, llama_build_env
    from rbee.control.keeper.inventory import find_inventory, load_inventory
    from rbee.control.keeper.inventory_errors import InventoryError
    from rbee.control.keeper.node import Node
    from rbee.dataplane.protocol.wire import VERSION
except ImportError:
    checkout_python = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    if checkout_python.is_file() and Path(sys.executable) != checkout_python:
        os.execv(checkout_python, [str(checkout_python), __file__, *sys.argv[1:]])
    sys.exit(
        f"{__file__}: rbee is not importable by {sys.executable}; activate the venv "
        "where rbee is installed (`make install` makes .venv)"
    )


def host_vars(node: Node) -> dict[str, Any]:
    found: dict[str, Any] = {"rbee_path": node.rbee_path, "rbee_state_dir": node.state_dir}
    key = node.api_key()
    if key:
        found["rbee_api_key"] = key
    if node.is_local:
        # The keeper's own install (its default rbee_path) is never replaced by a wheel.
        found.update(
            ansible_connection="local",
            ansible_python_interpreter=sys.executable,
            rbee_is_keeper_install=node.rbee_path == sysconfig.get_path("scripts"),
        )
        return found
    common = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={node.known_hosts}"]
    if node.identity_file:
        common += ["-o", "IdentitiesOnly=yes"]
        found["ansible_ssh_private_key_file"] = str(node.identity_file)
    if not node.use_ssh_config:
        common = ["-F", "/dev/null", *common]
    found.update(
        ansible_connection="ssh",
        ansible_host=node.host,
        ansible_port=node.port,
        ansible_user=node.user,
        ansible_ssh_common_args=shlex.join(common),
        ansible_ssh_args="-C -o ControlMaster=no",
        ansible_ssh_timeout=max(1, round(node.connect_timeout_s)),
        # The python3 the install uses (first on the login PATH), not ansible's discovery,
        # which can pick a broken interpreter such as a pyenv shim of a missing version.
        ansible_python_interpreter="python3",
        # One ssh connection per task (the module goes through stdin), not three.
        ansible_pipelining=True,
    )
    return found


def main() -> None:
    try:
        inventory = load_inventory(find_inventory(None))
        hosts = {name: host_vars(node) for name, node in inventory.nodes.items()}
    except InventoryError as exc:
        sys.exit(str(exc))
    if len(sys.argv) == 3 and sys.argv[1] == "--host":
        print(json.dumps(hosts.get(sys.argv[2], {})))
        return
    if sys.argv[1:] != ["--list"]:
        sys.exit(f"usage: {sys.argv[0]} --list | --host NODE")
    print(
        json.dumps(
            {
                "all": {
                    "children": ["rbee_nodes"],
                    "vars": {
                        "rbee_version": VERSION,
                        "rbee_llama_build_env": llama_build_env(),
                        "rbee_bundled_model_extra": BUNDLED_MODEL_EXTRA,
                    },
                },
                "rbee_nodes": {"hosts": list(hosts)},
                "_meta": {"hostvars": hosts},
            }
        )
    )


if __name__ == "__main__":
    main()
