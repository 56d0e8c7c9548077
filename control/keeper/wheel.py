"""Building the rbee wheel that `rbee deploy`, `rbee ssh-up` and ansible/ install on nodes.

`python -m rbee.control.keeper.wheel [OUT_DIR]` builds it and prints its path (the ansible play
calls this). The build needs the rbee source tree: the checkout this package runs from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .words import ActionableError

WHEEL_BUILD_TIMEOUT_S = 300.0
# A fixed timestamp for every file in the wheel: the same sources then give the same bytes, so
# ansible's copy task sees an unchanged file and a second run changes nothing.
_REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold


def source_root() -> Path:
    """The checkout holding pyproject.toml (rbee.control maps to its control/ folder; this file
    is control/keeper/wheel.py)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "rbee"' not in pyproject.read_text():
        raise ActionableError(
            "cannot build the rbee wheel: this rbee is not running from its source checkout",
            f"(no rbee pyproject.toml in {root})",
            suggestion="run `rbee deploy` / `rbee ssh-up` from a clone of the rbee repository "
            "(`make install`), which builds the wheel it installs on nodes",
        )
    return root


def build_wheel(out_dir: Path) -> Path:
    """`python -m build --wheel` of the checkout into out_dir; the wheel's path."""
    root = source_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rbee-*.whl"):
        old.unlink()  # exactly one wheel in out_dir afterwards
    env = dict(os.environ, SOURCE_DATE_EPOCH=_REPRODUCIBLE_EPOCH)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(out_dir), str(root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=WHEEL_BUILD_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ActionableError(
            f"building the rbee wheel took over {WHEEL_BUILD_TIMEOUT_S:g} s",
            suggestion=f"try `python -m build --wheel {root}` by hand",
        ) from None
    wheels = sorted(out_dir.glob("rbee-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-15:]
        raise ActionableError(
            "building the rbee wheel failed",
            *tail,
            suggestion=f"try `python -m build --wheel {root}` by hand",
        )
    return wheels[0]


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (name-version-python-abi-platform.whl)."""
    return wheel.name.split("-")[1]


def main() -> None:
    out_dir = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else (Path(os.environ.get("RBEE_HOME", "~/.rbee")).expanduser() / "dist")
    )
    try:
        print(build_wheel(out_dir))
    except ActionableError as exc:
        print(f"Error: {exc.message}", *exc.details, sep="\n", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
