"""Installing rbee on fake nodes (issue 6): ansible/, `rbee deploy` (fabric), `rbee ssh-up`.

Each fake node is a real sshd on loopback whose login user is a fresh non-root user with an
empty home. Their pip installs from one wheelhouse built per session (the rbee wheel, the
llama-cpp-python wheel already in pip's cache, every other dependency downloaded once), which
sshd's SetEnv points pip at: PIP_NO_INDEX + PIP_FIND_LINKS, a test-only setting, so the product
code always installs the way a real node does.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BIN, free_port
from support.operators import Operator
from support.sshd import FakeNode, start_sshd
from support.tinymodel import write_tiny_gguf

from rbee.control.keeper.wheel import build_wheel

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPT = ("--max-tokens", "6", "--temperature", "0", "Once upon a time")
_RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[Path]:
    """World-readable (the nodes' users read it; pytest's tmp dirs are 0700), removed after."""
    path = Path(tempfile.mkdtemp(prefix="rbee-provisioning-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def wheelhouse(shared_dir: Path) -> Path:
    """Every wheel an rbee install needs, so nodes install offline and nothing compiles."""
    wheels = shared_dir / "wheelhouse"
    rbee_wheel = build_wheel(wheels)
    cached = subprocess.run(
        [str(BIN / "pip"), "cache", "list", "llama_cpp_python", "--format=abspath"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert cached, (
        "no llama-cpp-python wheel in pip's cache; `make install` builds it once per machine"
    )
    shutil.copy(cached[-1], wheels)
    download = subprocess.run(
        [
            str(BIN / "pip"),
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--find-links",
            str(wheels),
            "--dest",
            str(wheels),
            str(rbee_wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert download.returncode == 0, download.stderr
    for wheel in wheels.iterdir():
        wheel.chmod(0o644)
    return wheels


@pytest.fixture(scope="session")
def shared_tiny_model(shared_dir: Path) -> Path:
    model = write_tiny_gguf(shared_dir / "tiny-q8.gguf", quant="q8_0", n_ctx_train=4096)
    model.chmod(0o644)
    return model


@pytest.fixture
def fresh_node(tmp_path: Path, wheelhouse: Path) -> Iterator[Callable[[str], FakeNode]]:
    """A node with a non-root login user, an empty home and no rbee."""
    started: list[FakeNode] = []

    def start(name: str) -> FakeNode:
        node = start_sshd(
            tmp_path / "sshd",
            name,
            login_user=True,
            session_env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)},
        )
        started.append(node)
        return node

    yield start
    for node in started:
        node.remove()


def inventory_table(name: str, node: FakeNode, extra: str = "") -> str:
    """The node with rbee_path and state_dir left at their defaults (under its home)."""
    entry = node.inventory_entry()
    lines = [
        f"[nodes.{name}]",
        *(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in entry.items()),
        f"hive_port = {free_port()}",
        "use_ssh_config = false",
    ]
    return "\n".join(lines) + "\n" + extra


def recap(output: str, node: str) -> dict[str, int]:
    for match in _RECAP.finditer(output):
        if match[1] == node:
            return {
                "ok": int(match[2]),
                "changed": int(match[3]),
                "unreachable": int(match[4]),
                "failed": int(match[5]),
            }
    raise AssertionError(f"no PLAY RECAP line for {node}:\n{output}")


def ansible_playbook(operator: Operator, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RBEE_", "ANSIBLE_"))}
    # The dynamic inventory runs with the python first on PATH: the venv's, as when activated.
    env.update(
        RBEE_HOME=str(operator.home),
        RBEE_INVENTORY=str(operator.inventory),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "ansible/inventory_toml.py",
            "ansible/site.yml",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def assert_serves(operator: Operator, name: str, model: Path, **env: str) -> None:
    answer = operator.rbee("infer", "--node", name, "--model", f"file:{model}", *PROMPT, **env)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()


def assert_installed(node: FakeNode) -> None:
    hive = node.home / ".local/share/rbee/venv/bin/rbee-hive"
    assert hive.is_file(), f"no {hive}"
    # Installed as the login user, not root.
    assert hive.stat().st_uid == pwd.getpwnam(node.user).pw_uid


def test_deploy_installs_and_ssh_up_serves(
    fresh_node, tmp_path: Path, shared_tiny_model: Path
) -> None:
    node = fresh_node("single")
    key = "deploy-test-key-0123456789"
    operator = Operator(
        tmp_path, inventory_table("single", node, 'api_key_env = "RBEE_SINGLE_KEY"\n')
    )
    try:
        deployed = operator.rbee(
            "deploy", "single", "--no-bundled-model", timeout=600, RBEE_SINGLE_KEY=key
        )
        assert deployed.returncode == 0, deployed.stderr
        for step in (
            "building the rbee wheel",
            "checking for Python",
            "creating the venv",
            "uploading rbee-0.1.0-py3-none-any.whl",
            "installing dependencies",
            "installing rbee 0.1.0",
            "writing the hive's API key file",
            "checking `rbee-hive --version` is 0.1.0",
        ):
            assert step in deployed.stderr, deployed.stderr
        assert "single: rbee installed in" in deployed.stderr
        assert key not in deployed.stderr + deployed.stdout
        assert_installed(node)
        key_file = node.home / ".rbee/hive/hive.key"
        assert key_file.read_text() == key and key_file.stat().st_mode & 0o777 == 0o600

        up = operator.rbee("ssh-up", "single", RBEE_SINGLE_KEY=key)
        assert up.returncode == 0, up.stderr
        assert "installing" not in up.stderr and "single: rbee-hive 0.1.0 up" in up.stderr
        assert_serves(operator, "single", shared_tiny_model, RBEE_SINGLE_KEY=key)
    finally:
        operator.rbee("ssh-down", "single", RBEE_SINGLE_KEY=key)


def test_ssh_up_installs_an_empty_node_once(
    fresh_node, tmp_path: Path, shared_tiny_model: Path
) -> None:
    node = fresh_node("fresh")
    operator = Operator(tmp_path, inventory_table("fresh", node))
    try:
        strict = operator.rbee("ssh-up", "fresh", "--no-install")
        assert strict.returncode == 1 and "rbee is not installed on fresh" in strict.stderr
        assert "rbee deploy fresh" in strict.stderr

        up = operator.rbee("ssh-up", "fresh", "--no-bundled-model", timeout=600)
        assert up.returncode == 0, up.stderr
        assert "fresh: rbee is not installed; installing rbee 0.1.0" in up.stderr
        assert "installing dependencies" in up.stderr and "fresh: rbee-hive 0.1.0 up" in up.stderr
        assert_installed(node)
        assert_serves(operator, "fresh", shared_tiny_model)

        down = operator.rbee("ssh-down", "fresh")
        assert down.returncode == 0, down.stderr
        again = operator.rbee("ssh-up", "fresh", "--no-bundled-model")
        assert again.returncode == 0, again.stderr
        assert "install" not in again.stderr and "building" not in again.stderr
        assert "fresh: rbee-hive 0.1.0 up" in again.stderr

        # An older rbee on the node while its hive runs: upgraded, and the hive restarted.
        # A hive that answers at our version is left as it is (docs/fleet.md): the running
        # one is this rbee's, so it is frozen (SIGSTOP) to stand for an older one, which
        # does not say our version; ssh-down's SIGCONT and SIGTERM stop it.
        hive = node.home / ".local/share/rbee/venv/bin/rbee-hive"
        hive.write_text("#!/bin/sh\necho 'rbee-hive, version 0.0.9'\n")
        running = int((node.home / ".rbee/hive/hive.pid").read_text().split()[0])
        os.kill(running, signal.SIGSTOP)
        upgraded = operator.rbee("ssh-up", "fresh", "--no-bundled-model", timeout=600)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "fresh: rbee 0.0.9 is installed; installing rbee 0.1.0" in upgraded.stderr
        assert "fresh: restarting rbee-hive on the new version" in upgraded.stderr
        assert "fresh: rbee-hive stopped (pid" in upgraded.stderr
        assert "fresh: rbee-hive 0.1.0 up" in upgraded.stderr
    finally:
        operator.rbee("ssh-down", "fresh")


def test_a_changed_or_unknown_host_key_stops_deploy_and_ansible(tmp_path: Path) -> None:
    node = start_sshd(tmp_path / "sshd", "rekeyed")
    operator = Operator(tmp_path, inventory_table("rekeyed", node))
    try:
        node.rotate_host_key()
        deployed = operator.rbee("deploy", "rekeyed")
        assert deployed.returncode == 1
        assert "Host key verification failed" in deployed.stderr
        assert "ssh-keygen -R" in deployed.stderr and "Traceback" not in deployed.stderr
        assert "building" not in deployed.stderr  # refused before any work

        played = ansible_playbook(operator, "--limit", "rekeyed")
        assert played.returncode != 0
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in played.stdout + played.stderr
        assert recap(played.stdout, "rekeyed")["unreachable"] == 1

        node.known_hosts.write_text("")
        unknown = operator.rbee("deploy", "rekeyed")
        assert unknown.returncode == 1 and "the key is unknown" in unknown.stderr
    finally:
        node.remove()


def test_ansible_installs_idempotently_then_ssh_up_serves(
    fresh_node, tmp_path: Path, shared_tiny_model: Path
) -> None:
    node = fresh_node("fleet")
    key = "ansible-test-key-0123456789"
    key_file = tmp_path / "fleet.key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    operator = Operator(tmp_path, inventory_table("fleet", node, f'api_key_file = "{key_file}"\n'))
    try:
        first = ansible_playbook(operator, "--limit", "fleet", "-e", "rbee_bundled_model=false")
        assert first.returncode == 0, first.stdout + first.stderr
        assert recap(first.stdout, "fleet")["changed"] > 0
        assert key not in first.stdout + first.stderr
        assert_installed(node)
        installed_key = node.home / ".rbee/hive/hive.key"
        assert installed_key.read_text() == key
        assert installed_key.stat().st_mode & 0o777 == 0o600

        # The wheel the first run built: the same bytes as a rebuild of the same sources (the
        # build is reproducible), and steady even if someone edits the checkout meanwhile.
        [built] = (operator.home / "dist").glob("rbee-*.whl")
        second = ansible_playbook(
            operator,
            "--limit",
            "fleet",
            "-e",
            "rbee_bundled_model=false",
            "-e",
            f"rbee_wheel={built}",
        )
        assert second.returncode == 0, second.stdout + second.stderr
        counts = recap(second.stdout, "fleet")
        assert counts["changed"] == 0 and counts["failed"] == 0, second.stdout
        # ControlMaster=no: no ssh multiplexer is left running after the play.
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "[mux]" not in ps

        up = operator.rbee("ssh-up", "fleet")
        assert up.returncode == 0, up.stderr
        assert "installing" not in up.stderr and "fleet: rbee-hive 0.1.0 up" in up.stderr
        assert_serves(operator, "fleet", shared_tiny_model)
    finally:
        operator.rbee("ssh-down", "fleet")


def test_a_failing_step_is_named_with_the_remote_stderr(tmp_path: Path) -> None:
    node = start_sshd(tmp_path / "sshd", "readonly")
    # /proc takes no new folders, even from root: the venv step fails on the node.
    operator = Operator(
        tmp_path, inventory_table("readonly", node, 'rbee_path = "/proc/rbee/venv/bin"\n')
    )
    try:
        deployed = operator.rbee("deploy", "readonly", "--no-bundled-model")
        # The role's Python check, fed an old Python's answer, with sudo not allowed.
        played = ansible_playbook(
            operator,
            "--limit",
            "readonly",
            "-e",
            "rbee_install_system_python=false",
            "-e",
            json.dumps({"rbee_python_check": "import sys; sys.exit('Python 3.9.2')"}),
        )
    finally:
        node.remove()
    assert played.returncode != 0, played.stdout
    assert (
        "rbee needs Python 3.11 or newer with its venv module on readonly (python3 says: "
        "Python 3.9.2)"
    ) in played.stdout, played.stdout
    assert recap(played.stdout, "readonly")["failed"] == 1
    assert deployed.returncode == 1
    assert (
        "Error: installing rbee on readonly failed at step 2/6: creating the venv /proc/rbee/venv"
    ) in deployed.stderr
    assert "`python3 -m venv /proc/rbee/venv` on" in deployed.stderr
    assert "Error: [Errno 2] No such file or directory: '/proc/rbee'" in deployed.stderr  # venv's
    assert "Suggestion: check that /proc/rbee is writable" in deployed.stderr
    assert "Traceback" not in deployed.stderr
