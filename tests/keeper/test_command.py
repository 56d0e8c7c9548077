"""`rbee` starts quickly (issue 15): importing the command and every `--help` load none of
the heavy libraries the commands run on; they load inside the commands that use them.
bench/startup.py measures the time; this holds the line without timing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rbee.dataplane.protocol.wire import VERSION

# Each costs 20–200 ms to import (bench/startup.py's baseline: 450+ ms in all).
HEAVY = (
    "asyncio",
    "asyncssh",
    "cryptography",
    "fabric",
    "gguf",
    "httpx",
    "huggingface_hub",
    "hypercorn",
    "llama_cpp",
    "numpy",
    "psutil",
    "pydantic",
    "rich",
    "starlette",
    "tenacity",
    "textual",
    "yaml",
)

# Renders `rbee --help` and every command's and group's `--help` in one fresh interpreter;
# prints each help text and the heavy modules loaded by then.
HELP_EVERY_COMMAND = """
import contextlib, io, json, sys
import click
from rbee.tui.command import main

def every_path(group, path):
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from every_path(command, [*path, name])
        else:
            yield [*path, name]

helps = {}
for path in every_path(main, []):
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        try:
            main([*path, "--help"], prog_name="rbee")
        except SystemExit as exit:
            assert exit.code == 0, (path, exit.code)
    helps[" ".join(path)] = shown.getvalue()
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"helps": helps, "loaded": loaded}))
"""


def python(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_importing_the_command_loads_no_heavy_module() -> None:
    loaded = python(
        "-c",
        "import json, sys; import rbee.tui.command; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))",
        *HEAVY,
    )
    assert json.loads(loaded) == []


def test_every_help_names_its_commands_and_loads_no_heavy_module() -> None:
    shown = json.loads(python("-c", HELP_EVERY_COMMAND, *HEAVY))
    helps: dict[str, str] = shown["helps"]
    assert shown["loaded"] == []
    top = helps[""]
    for name in ("infer", "ssh-up", "ssh-down", "deploy", "nodes", "workers", "models", "logs"):
        assert f"  {name} " in top  # the keeper's
    assert "  queen " in top and "  tui " in top  # the composition root's
    for path, text in helps.items():  # each group lists every command under it
        children = [p.rpartition(" ")[2] for p in helps if p and p.rpartition(" ")[0] == path]
        assert all(f"  {child} " in text for child in children), (path, children)
    # options whose defaults and bounds come from light modules: still shown
    assert "pkg:gemma3-270m" in helps["infer"] and "1<=x<=8192" in helps["infer"]
    assert "cpu|cuda|metal" in helps["infer"]
    assert "127.0.0.1:7833" in helps["queen"] and "[default: 2.0" in helps["tui"]


def test_version_is_the_wire_version() -> None:
    rbee = Path(sys.executable).parent / "rbee"
    done = subprocess.run([rbee, "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"rbee, version {VERSION}")
