"""What ssh-up / ssh-down / deploy print over many nodes: the summary, a failure in short."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import re
import struct
import termios
import textwrap
import threading
from pathlib import Path

from rbee.control.keeper.console import Console
from rbee.control.keeper.events import Step
from rbee.control.keeper.fleet_progress import (
    SUMMARY_WIDTH,
    FleetProgress,
    failure_lines,
    short_reason,
)
from rbee.control.keeper.runner import CommandTimeout
from rbee.control.keeper.ssh_errors import SSHConnectError
from rbee.control.keeper.words import ActionableError


def _as_keeper_says(name: str, cause: Exception) -> ActionableError:
    """As Keeper._over_runner raises a runner's failure: the node's name, the cause kept."""
    try:
        raise ActionableError(f"{name}: {cause}") from cause
    except ActionableError as exc:
        return exc


def test_short_reasons_come_from_the_cause_or_the_words() -> None:
    refused = SSHConnectError("refused", "10.0.0.5", 22, "Connection refused by 10.0.0.5:22")
    assert short_reason(_as_keeper_says("n55", refused)) == "refused"
    timeout = SSHConnectError("timeout", "10.0.0.8", 22, "Timed out after 10 s")
    assert short_reason(_as_keeper_says("n58", timeout)) == "timed out"
    slow = CommandTimeout("n3", "rbee-hive --version", 30)
    assert short_reason(_as_keeper_says("n3", slow)) == "timed out"
    wedged = ActionableError("rbee-hive on n4 (pid 12) is not answering (3 s)", suggestion="x")
    assert short_reason(wedged) == "not answering"
    odd = ActionableError("something nobody foresaw happened on the node, at length")
    assert len(short_reason(odd)) <= 28 and short_reason(odd).endswith("…")


def test_piped_a_line_per_node_then_the_summary() -> None:
    err = io.StringIO()
    console = Console(out=io.StringIO(), err=err)
    names = [f"n{i:02d}" for i in range(60)]
    with FleetProgress(console, names, "up") as progress:
        progress.listener("n00").heard(Step("n00: Attempt 1: Connecting to … (timeout 10s)"))
        progress.listener("n00").heard(Step("n00: asking its hive"))  # every node's: not said
        progress.listener("n01").heard(Step("n01: rbee 0.0.9 is installed; installing rbee"))
        for name in names[:58]:
            progress.succeeded(name, f"{name}: rbee-hive 0.1.0 up (pid 1, 127.0.0.1:9200)")
        refused = SSHConnectError("refused", "127.0.0.1", 2255, "Connection refused by it")
        progress.failed("n58", _as_keeper_says("n58", refused))
        progress.failed(
            "n59",
            ActionableError("rbee-hive did not start on n59", "line 1\nline 2", suggestion="see"),
        )
    lines = err.getvalue().splitlines()
    assert lines[0] == "n01: rbee 0.0.9 is installed; installing rbee"
    assert lines[59:-1] == [
        "n58: Error: Connection refused by it",
        "n59: Error: rbee-hive did not start on n59",
        "  line 1",
        "  line 2",
        "  Suggestion: see",
    ]
    assert lines[-1] == "58 up, 2 failed: n58 (refused), n59 (did not start)"
    assert progress.any_failed


def test_the_summary_names_failed_nodes_in_about_two_lines() -> None:
    console = Console(out=io.StringIO(), err=io.StringIO())
    names = [f"node-{i:03d}" for i in range(100)]
    progress = FleetProgress(console, names, "stopped")
    for name in names:
        progress.failed(name, ActionableError(f"rbee-hive on {name} is not answering (3 s)"))
    summary = progress.summary()
    assert summary.startswith("0 stopped, 100 failed: node-000 (not answering), ")
    assert summary.endswith(" more") and len(summary) <= SUMMARY_WIDTH
    err = io.StringIO()
    with FleetProgress(Console(out=io.StringIO(), err=err), names, "stopped") as progress:
        for name in names:
            progress.failed(name, ActionableError(f"rbee-hive on {name} is not answering"))
    assert err.getvalue().splitlines()[-2:] == textwrap.wrap(summary, 80, subsequent_indent="  ")


def test_a_failure_in_full() -> None:
    error = ActionableError("n1: msg", "a\nb", suggestion="do this")
    assert failure_lines("n1", error) == ["n1: Error: msg", "  a", "  b", "  Suggestion: do this"]


def test_on_a_terminal_the_rows_live_and_the_failures_stay(tmp_path: Path) -> None:
    """In a real pseudo-terminal of 80x24: sixty nodes do not fit, so once done only the two
    failures stay (a line or two each, within 80 columns), then the summary."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    screen = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(main, 65536):
                screen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    err = os.fdopen(secondary, "w", encoding="utf-8")
    names = [f"n{i:02d}" for i in range(60)]
    with FleetProgress(Console(out=io.StringIO(), err=err), names, "up") as progress:
        progress.listener("n00").heard(Step("n00: asking its hive"))
        for name in names[:58]:
            progress.succeeded(name, f"{name}: rbee-hive 0.1.0 up (pid 1, 127.0.0.1:9200)")
        refused = SSHConnectError("refused", "127.0.0.1", 2255, "Connection refused by it")
        progress.failed("n58", _as_keeper_says("n58", refused))
        long_words = "the hive's log says " + "a great deal " * 20
        progress.failed("n59", ActionableError(long_words, suggestion="see " * 40))
    err.close()
    reader.join(timeout=5)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode()).replace("\r", "")
    final = text[text.rindex("✗ n58: Connection refused") :].splitlines()
    assert final[0] == "✗ n58: Connection refused by it"
    assert final[1].startswith("✗ n59: the hive's log says a great deal") and final[1].endswith("…")
    assert final[2].startswith("  Suggestion: see see") and final[2].endswith("…")
    assert final[3] == "58 up, 2 failed: n58 (refused), n59 (the hive's log says a great…)"
    assert max(len(line) for line in final) <= 80
    assert "rbee-hive 0.1.0 up" not in "\n".join(final)  # sixty lines would not fit 24
