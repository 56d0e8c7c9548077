"""ansible/inventory_toml.py: the keeper's inventory.toml as Ansible sees it (through
`ansible-inventory`, so the JSON is checked by Ansible itself)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sysconfig
from pathlib import Path

from conftest import BIN

REPO = Path(__file__).resolve().parents[2]


def ansible_inventory(inventory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RBEE_", "ANSIBLE_"))}
    clean.update(RBEE_INVENTORY=str(inventory), PATH=f"{BIN}{os.pathsep}{clean['PATH']}", **env)
    return subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", "ansible/inventory_toml.py", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
    )


def test_nodes_map_to_ansible_variables(tmp_path: Path) -> None:
    key_file = tmp_path / "id_box"
    key_file.write_text("not a real key\n")
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f"""
[nodes.local]
ssh = false

[nodes.box]
host = "box.home.arpa"
port = 2222
user = "vince"
identity_file = "{key_file}"
known_hosts = "{tmp_path}/known hosts"
use_ssh_config = false
rbee_path = "~/rbee/venv/bin"
api_key_env = "RBEE_BOX_KEY"

[models.gemma]          # the queen's; Ansible has nothing to do with it
ref = "pkg:gemma3-270m"
nodes = ["box"]
slots = 4
""")
    result = ansible_inventory(inventory, RBEE_BOX_KEY="box-key-0123456789")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert sorted(listed["rbee_nodes"]["hosts"]) == ["box", "local"]
    assert "gemma" not in result.stdout
    box = listed["_meta"]["hostvars"]["box"]
    assert (box["ansible_host"], box["ansible_port"], box["ansible_user"]) == (
        "box.home.arpa",
        2222,
        "vince",
    )
    assert box["ansible_ssh_private_key_file"] == str(key_file)
    assert shlex.split(box["ansible_ssh_common_args"]) == [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={tmp_path}/known hosts",
        "-o",
        "IdentitiesOnly=yes",
    ]
    assert "ControlMaster=no" in box["ansible_ssh_args"]
    assert box["ansible_python_interpreter"] == "python3"
    assert (box["rbee_path"], box["rbee_state_dir"]) == ("~/rbee/venv/bin", "~/.rbee/hive")
    assert box["rbee_api_key"] == "box-key-0123456789"
    local = listed["_meta"]["hostvars"]["local"]
    assert local["ansible_connection"] == "local"
    assert local["rbee_is_keeper_install"] is True
    assert local["rbee_path"] == sysconfig.get_path("scripts")
    build_env = box["rbee_llama_build_env"]  # a group variable, resolved per host
    assert build_env["CMAKE_ARGS"] == "-DGGML_OPENMP=OFF" and "-mno-amx-tile" in build_env["CFLAGS"]


def test_an_inventory_mistake_is_reported_with_its_line(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[nodes.box]\nhost = "box"\nprot = 22\n')
    result = ansible_inventory(inventory)
    assert result.returncode != 0 or "box" not in result.stdout
    assert f'{inventory}:3: node "box": unknown key "prot"' in result.stderr


def test_a_models_mistake_is_reported_too(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[nodes.box]\nhost = "box"\n[models.gemma]\nref = "pkg:gemma3-270m"\nnodes = ["pi"]\n'
    )
    result = ansible_inventory(inventory)
    assert result.returncode != 0 or "box" not in result.stdout
    assert f'{inventory}:5: model "gemma": unknown node "pi" in "nodes"' in result.stderr
