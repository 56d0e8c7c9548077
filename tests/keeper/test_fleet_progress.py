"""What ssh-up / ssh-down / deploy print over many nodes: the summary, a failure in short."""

from __future__ import annotations

import io
import textwrap

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


def test_a_failure_in_full_at_80_columns() -> None:
    error = ActionableError("n1: msg", "a\nb", suggestion="do this " * 20)
    lines = failure_lines("n1", error)
    assert lines[:3] == ["n1: Error: msg", "  a", "  b"]
    assert lines[3].startswith("  Suggestion: do this") and lines[4].startswith("    ")
    assert max(map(len, lines)) <= 80
