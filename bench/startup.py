"""How fast the `rbee` command starts: `rbee --help`, and importing the module the console
script runs (rbee.tui.command, the composition root), against issue 15's targets. Heavy
libraries (asyncssh, httpx, pydantic, textual …) load inside the commands that use them.

Prints the median (min–max) wall time and the median CPU time of `rbee --help`, of `python -c
"import rbee.tui.command"` and of the bare interpreter over --runs runs each; the import's own
time as `python -X importtime` counts it (the interpreter's start-up left out, the profiler's
overhead in); and the five largest cumulative imports of its median run.

    .venv/bin/python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = "rbee.tui.command"  # pyproject.toml's `rbee` console script
HELP_TARGET_MS = 150.0
IMPORT_TARGET_MS = 100.0


def run_ms(argv: list[str]) -> tuple[float, float]:
    """The wall time and the CPU time (user + system) of running `argv`, in ms. On a shared
    machine the CPU time says what the command costs when the wall time is others' load."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall * 1000, cpu * 1000


def import_times() -> dict[str, float]:
    """The cumulative import time in ms (`-X importtime`) of ROOT and of each module it
    imported (the interpreter's own start-up left out)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {ROOT}"],
        check=True,
        capture_output=True,
        text=True,
    )
    subtree: dict[str, float] = {}  # since the last top-level import: ROOT's, once it ends
    for line in done.stderr.splitlines()[1:]:  # after the header
        _, cumulative, name = line.split("|")
        ms = int(cumulative) / 1000
        if not name.startswith("  "):  # a top-level import; children are listed before it
            if name.strip() == ROOT:
                return {**subtree, ROOT: ms}
            subtree = {}
        else:
            subtree.setdefault(name.strip(), ms)
    raise SystemExit(f"python -X importtime did not report {ROOT}")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms ({min(values):.0f}–{max(values):.0f})"


def row(label: str, wall: list[float], cpu: list[float] | None = None) -> None:
    cpu_shown = f"CPU {statistics.median(cpu):.0f} ms" if cpu else ""
    print(f"  {label:<44} {spread(wall):<20} {cpu_shown}")


def verdict(value: float, target: float) -> str:
    return f"{'PASS' if value < target else 'MISS'} (target < {target:.0f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    rbee = str(Path(sys.executable).parent / "rbee")
    commands = {
        "rbee --help": [rbee, "--help"],
        f"python -c 'import {ROOT}'": [sys.executable, "-c", f"import {ROOT}"],
        "python -c pass (the interpreter alone)": [sys.executable, "-c", "pass"],
    }
    run_ms([rbee, "--help"])  # warm the file cache and the .pyc files
    timings = {}
    for label, argv in commands.items():
        walls, cpus = zip(*(run_ms(argv) for _ in range(runs)), strict=True)
        timings[label] = (list(walls), list(cpus))
    profiles = [import_times() for _ in range(runs)]
    own = [profile[ROOT] for profile in profiles]
    typical = sorted(profiles, key=lambda profile: profile[ROOT])[len(profiles) // 2]

    print(f"{runs} runs each: wall time median (min–max), CPU time (user + system) median")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for label, (walls, cpus) in timings.items():
        row(label, walls, cpus)
    row(f"import {ROOT} (-X importtime)", own)
    help_wall = statistics.median(timings["rbee --help"][0])
    print(f"rbee --help: {verdict(help_wall, HELP_TARGET_MS)}")
    print(f"import {ROOT}: {verdict(statistics.median(own), IMPORT_TARGET_MS)}")
    largest = sorted(((ms, name) for name, ms in typical.items() if name != ROOT), reverse=True)
    print(f"largest cumulative imports under {ROOT} (its median run):")
    for ms, name in largest[:5]:
        print(f"  {ms:6.1f} ms  {name}")


if __name__ == "__main__":
    main()
