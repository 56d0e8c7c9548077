"""install_plan: the steps `rbee deploy` and `rbee ssh-up` share, run here on the local runner
(a real one: subprocesses), so the failure and progress wording is checked without a node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rbee.control.keeper.install_plan import (
    Command,
    RunnerTransport,
    Upload,
    execute,
    install_steps,
    llama_build_env,
)
from rbee.control.keeper.inventory import load_inventory
from rbee.control.keeper.local_runner import LocalRunner
from rbee.control.keeper.node import Node
from rbee.control.keeper.words import ActionableError


def _node(tmp_path: Path, extra: str = "") -> Node:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f'[nodes.box]\nhost = "box.home.arpa"\nuser = "vince"\n{extra}')
    return load_inventory(inventory).get("box")


def _execute(node: Node, steps: list, heartbeat_s: float = 30.0) -> list[str]:
    said: list[str] = []

    async def run() -> None:
        async with LocalRunner() as runner:
            await execute(
                node, steps, RunnerTransport(runner), said.append, heartbeat_s=heartbeat_s
            )

    asyncio.run(run())
    return said


def test_a_long_step_says_it_is_still_at_work(tmp_path: Path) -> None:
    said = _execute(
        _node(tmp_path), [Command("waiting (a while)", ("sleep", "0.5"), 5)], heartbeat_s=0.15
    )
    assert said[0] == "box: [1/1] waiting (a while)"
    assert said[1].startswith("box: [1/1] still waiting (")
    assert len([line for line in said if "still waiting" in line]) >= 2
    assert said[-1].startswith("box: installed in ")


def test_a_failing_step_shows_its_command_and_stderr_tail(tmp_path: Path) -> None:
    script = "echo out; for i in $(seq 1 30); do echo line$i >&2; done; exit 3"
    with pytest.raises(ActionableError) as failed:
        _execute(
            _node(tmp_path),
            [
                Command("first", ("true",), 5),
                Command("failing", ("sh", "-c", script), 5, hint="do X"),
            ],
        )
    error = failed.value
    assert error.message == "installing rbee on box failed at step 2/2: failing"
    assert error.details[0].endswith("on local exited with status 3:")
    assert error.details[1:] == tuple(f"line{i}" for i in range(16, 31))
    assert error.suggestion == "do X"


def test_a_wrong_version_after_install_fails_the_check(tmp_path: Path) -> None:
    with pytest.raises(ActionableError) as failed:
        _execute(
            _node(tmp_path),
            [
                Command(
                    "checking the version",
                    ("echo", "rbee-hive, version 0.0.9"),
                    5,
                    expect="version 0.1.0",
                )
            ],
        )
    assert "exited with status 0:" in failed.value.details[0]
    assert failed.value.details[1] == "rbee-hive, version 0.0.9"
    assert "rbee ssh-up box" in (failed.value.suggestion or "")


def test_the_plan_resolves_paths_and_keeps_the_key_out_of_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "box-key-0123456789"
    monkeypatch.setenv("RBEE_BOX_KEY", key)
    node = _node(tmp_path, 'api_key_env = "RBEE_BOX_KEY"\n')
    wheel = tmp_path / "rbee-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    steps = install_steps(node, wheel, "/home/vince", bundled_model=True, machine="x86_64")
    venv = "/home/vince/.local/share/rbee/venv"
    commands = [step for step in steps if isinstance(step, Command)]
    assert commands[1].argv == ("python3", "-m", "venv", venv)
    pip_deps = commands[2].argv
    assert pip_deps[0] == "env"
    assert [f"{k}={v}" for k, v in llama_build_env().items()] == list(pip_deps[1:4])
    assert pip_deps[-1] == f"{venv}/wheels/rbee-0.1.0-py3-none-any.whl[model]"
    assert commands[-1].argv == (f"{venv}/bin/rbee-hive", "--version")
    [key_file] = [s for s in steps if isinstance(s, Upload) and s.mode == 0o600]
    assert key_file.remote == "/home/vince/.rbee/hive/hive.key" and key_file.data == key.encode()
    shown = repr(steps) + " ".join(step.what for step in steps)
    assert key not in shown


@pytest.mark.parametrize("machine", ["arm64", "aarch64"])
def test_the_x86_build_flags_stay_off_other_cpus(tmp_path: Path, machine: str) -> None:
    # Clang for Apple Silicon rejects -mno-amx-*: a Mac node must build llama.cpp without them.
    wheel = tmp_path / "rbee-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    steps = install_steps(
        _node(tmp_path), wheel, "/home/vince", bundled_model=False, machine=machine
    )
    pip_deps = [step for step in steps if isinstance(step, Command)][2].argv
    assert pip_deps[0] == "env" and not any("=" in arg for arg in pip_deps)
