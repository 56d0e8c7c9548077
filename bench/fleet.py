"""`rbee` over a fleet of N fake nodes (issue 15): each a real sshd on loopback with its own
state dir (the same user), its hive reached through SSH forwards as a remote node's is.

    python bench/fleet.py 10 [--wedged K] [--refusing K] [--hung K] [--dashboard-s S]

Runs, timing each (wall, and the `rbee` process's own CPU): `rbee ssh-up` over the N nodes,
`rbee ssh-up` again (the re-run: every hive already up), then wedges K hives (SIGSTOP), and
with the K refusing nodes (a port nobody listens on) and K hung ones (a port that accepts and
never speaks SSH) in the inventory too: `rbee nodes`, one dashboard probe round (the Keeper's
`probe`, as the dashboard calls it, every node at once), `rbee tui` left idle for S seconds
in a pseudo-terminal (its CPU, measured with psutil), then `rbee ssh-down` over the N nodes.
Prints the table, the idle hives' RSS, and PASS/FAIL for the issue's bounds. Everything it
starts it stops, Ctrl+C included (the hives by their pid files, proven as rbee-hive does).
docs/fleet.md says what the numbers mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.sshd import FakeNode, start_sshd  # noqa: E402

from rbee.control.hive.settings import HiveSettings  # noqa: E402
from rbee.control.keeper.inventory import load_inventory  # noqa: E402
from rbee.control.keeper.keeper import Keeper  # noqa: E402
from rbee.control.keeper.ssh_connect import DEFAULT_CONNECT_TIMEOUT_S  # noqa: E402
from rbee.dataplane.plumbing.pidfile import stop  # noqa: E402

BIN = Path(sys.executable).parent  # rbee, rbee-hive: this installation's
# The bounds on this machine (2 shared cores).
NODES_SLACK_S = 2.0  # `rbee nodes` with wedged and dead nodes: the connect timeout plus this
RERUN_LIMIT_S = 3.0  # `rbee ssh-up` over nodes whose hives all run
DASHBOARD_IDLE_LIMIT = 0.05  # of a core
COMMAND_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Timed:
    step: str
    wall_s: float
    cpu_s: float | None  # the keeper's own CPU (user + system), children included
    nodes: int
    rc: int | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_table(name: str, fake: FakeNode | None, port: int, state_dir: Path) -> str:
    """A `[nodes.NAME]` table; `fake` None: a node at 127.0.0.1:`port` (refusing or hung)."""
    if fake is not None:
        entry = fake.inventory_entry()
    else:
        known_hosts = state_dir.parent / "known_hosts"  # empty: never reached anyway
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        known_hosts.touch()
        entry = {"host": "127.0.0.1", "port": port, "known_hosts": str(known_hosts)}
    lines = [f"[nodes.{name}]"]
    lines += [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in entry.items()]
    lines += [
        f'rbee_path = "{BIN}"',
        f'state_dir = "{state_dir}"',
        f"hive_port = {free_port()}",
        "use_ssh_config = false",
    ]
    return "\n".join(lines) + "\n"


class Fleet:
    """The fake nodes, the dead ones, the inventory; `close` stops everything started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "rbee-home"
        self.inventory = root / "inventory.toml"
        self.nodes: dict[str, FakeNode] = {}
        self.states: dict[str, Path] = {}
        self.dead: list[str] = []
        self._listeners: list[socket.socket] = []
        self._tui: subprocess.Popen[bytes] | None = None

    def build(self, n: int, refusing: int, hung: int) -> None:
        """N sshd nodes, and the dead ones, in the inventory."""
        root = self.root
        tables = []
        for i in range(n):
            name = f"n{i:02d}"
            self.nodes[name] = start_sshd(root / "sshd", name)
            self.states[name] = root / "hives" / name
            tables.append(node_table(name, self.nodes[name], 0, self.states[name]))
        for i in range(refusing):
            name = f"refusing{i}"
            tables.append(node_table(name, None, free_port(), root / "hives" / name))
            self.dead.append(name)
        for i in range(hung):
            # Accepts (the kernel's backlog) and never sends an SSH banner.
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            self._listeners.append(listener)
            name = f"hung{i}"
            port = listener.getsockname()[1]
            tables.append(node_table(name, None, port, root / "hives" / name))
            self.dead.append(name)
        self.inventory.write_text("".join(tables))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
        return {**env, "RBEE_HOME": str(self.home), "RBEE_INVENTORY": str(self.inventory)}

    def rbee(self, step: str, *args: str, nodes: int) -> Timed:
        """`rbee ARGS…`, its wall time and CPU (wait4's rusage: it and its children)."""
        cpu_before = _children_cpu()
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(BIN / "rbee"), *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            print(f"{step}: no answer in {COMMAND_TIMEOUT_S:g} s: killed", file=sys.stderr)
            return Timed(step, time.monotonic() - started, None, nodes)
        wall = time.monotonic() - started
        # communicate() reaped it; the CPU comes from the rusage of reaped children.
        cpu = _children_cpu() - cpu_before
        text = (out + err).decode(errors="replace").rstrip().splitlines()
        tail = text[-1] if text else ""
        print(f"  {step}: {wall:.1f} s, exit {proc.returncode}: {tail[:100]}", file=sys.stderr)
        return Timed(step, wall, cpu, nodes, proc.returncode)

    def hive_pids(self) -> dict[str, int]:
        """The hives running now, proven by their pid files."""
        pids = {}
        for name, state in self.states.items():
            with contextlib.suppress(Exception):
                holder = HiveSettings(state_dir=state).pid_file.check()
                if holder.process is not None:
                    pids[name] = holder.process.pid
        return pids

    def hives_rss_mb(self) -> float:
        total = 0
        for pid in self.hive_pids().values():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for p in [process, *process.children(recursive=True)]:
                    total += p.memory_info().rss
        return total / 1e6

    def wedge(self, k: int) -> list[str]:
        wedged = sorted(self.hive_pids().items())[:k]
        for _name, pid in wedged:
            os.kill(pid, signal.SIGSTOP)
        return [name for name, _pid in wedged]

    def dashboard_cpu(self, seconds: float, warmup_s: float = 5.0) -> float | None:
        """`rbee tui` in a pseudo-terminal (120x40), idle: its CPU over `seconds`, as a
        fraction of one core, after `warmup_s` of start-up."""
        main, secondary = pty.openpty()
        import fcntl
        import struct
        import termios

        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._tui = subprocess.Popen(
            [str(BIN / "rbee"), "tui"],
            env={**self.env(), "TERM": "xterm-256color"},
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            start_new_session=True,
        )
        os.close(secondary)
        drain = threading.Thread(target=_drain, args=(main,), daemon=True)
        drain.start()
        try:
            time.sleep(warmup_s)
            if self._tui.poll() is not None:
                print(f"  rbee tui exited ({self._tui.returncode})", file=sys.stderr)
                return None
            process = psutil.Process(self._tui.pid)
            before = process.cpu_times()
            time.sleep(seconds)
            after = process.cpu_times()
            used = (after.user - before.user) + (after.system - before.system)
            return used / seconds
        finally:
            self._stop_tui()
            os.close(main)

    def _stop_tui(self) -> None:
        tui, self._tui = self._tui, None
        if tui is None or tui.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tui.pid, signal.SIGTERM)
        try:
            tui.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(tui.pid, signal.SIGKILL)
            tui.wait()

    def close(self) -> None:
        """Stops what the bench started: the dashboard, every hive its pid file proves (a
        wedged one is resumed by the stop), the sshds, the hung listeners."""
        self._stop_tui()
        for _name, state in self.states.items():
            with contextlib.suppress(Exception):
                holder = HiveSettings(state_dir=state).pid_file.check()
                if holder.process is not None:
                    stop(holder.process, 10.0)
        for fake in self.nodes.values():
            fake.stop()
        for listener in self._listeners:
            listener.close()


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


async def probe_round(fleet: Fleet) -> Timed:
    """One dashboard probe round: the Keeper's `probe` of every node at once, as the
    dashboard's workers call it; the wall time until the last answers."""
    os.environ["RBEE_HOME"] = str(fleet.home)
    keeper = Keeper(load_inventory(fleet.inventory))
    async with keeper:
        cpu_before = time.process_time()
        started = time.monotonic()
        await asyncio.gather(*(keeper.probe(node) for node in keeper.nodes))
        wall = time.monotonic() - started
        cpu = time.process_time() - cpu_before
    return Timed("dashboard probe round", wall, cpu, len(keeper.nodes))


@contextlib.contextmanager
def interrupt_as_exit() -> Iterator[None]:
    """SIGTERM as Ctrl+C: the cleanup runs either way."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(
    n: int,
    args: argparse.Namespace,
    rows: list[Timed],
    rss_mb: float | None,
    dashboard: float | None,
) -> bool:
    cores = psutil.cpu_count() or 1
    print(
        f"\nrbee fleet bench: {n} nodes ({args.wedged} wedged, {args.refusing} refusing, "
        f"{args.hung} hung), {cores} cores\n"
    )
    print("| step | nodes | wall | keeper CPU | CPU per node | exit |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cpu = "-" if row.cpu_s is None else f"{row.cpu_s:.2f} s"
        per = "-" if row.cpu_s is None else f"{1000 * row.cpu_s / max(1, row.nodes):.0f} ms"
        rc = "-" if row.rc is None else str(row.rc)
        print(f"| {row.step} | {row.nodes} | {row.wall_s:.2f} s | {cpu} | {per} | {rc} |")
    print()
    if rss_mb is not None:
        print(f"idle hives RSS: {rss_mb:.0f} MB ({rss_mb / max(1, n):.0f} MB per hive)")
    if dashboard is not None:
        print(f"dashboard idle CPU: {100 * dashboard:.1f} % of a core")
    print()
    by_step = {row.step: row for row in rows}
    checks: list[tuple[str, bool | None]] = []
    nodes = by_step.get("rbee nodes")
    limit = DEFAULT_CONNECT_TIMEOUT_S + NODES_SLACK_S
    checks.append(
        (f"rbee nodes within {limit:g} s", None if nodes is None else nodes.wall_s <= limit)
    )
    rerun = by_step.get("ssh-up again")
    checks.append(
        (
            f"re-run ssh-up under {RERUN_LIMIT_S:g} s",
            None if rerun is None else rerun.wall_s < RERUN_LIMIT_S and rerun.rc == 0,
        )
    )
    checks.append(
        (
            f"dashboard idle under {100 * DASHBOARD_IDLE_LIMIT:g} % of a core",
            None if dashboard is None else dashboard < DASHBOARD_IDLE_LIMIT,
        )
    )
    up = by_step.get("ssh-up")
    checks.append(("ssh-up brought every node up", None if up is None else up.rc == 0))
    down = by_step.get("ssh-down")
    checks.append(("ssh-down stopped every hive", None if down is None else down.rc == 0))
    ok = True
    for what, passed in checks:
        verdict = "skip" if passed is None else "PASS" if passed else "FAIL"
        ok = ok and passed is not False
        print(f"{verdict}  {what}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="fake nodes (each its own sshd and hive)")
    parser.add_argument("--wedged", type=int, default=0, help="hives stopped with SIGSTOP")
    parser.add_argument("--refusing", type=int, default=0, help="nodes refusing connections")
    parser.add_argument("--hung", type=int, default=0, help="nodes that accept and never speak")
    parser.add_argument(
        "--dashboard-s",
        type=float,
        default=20.0,
        help="how long to measure the idle dashboard's CPU (0: skip)",
    )
    args = parser.parse_args()
    if args.n < 1 or args.wedged > args.n or min(args.wedged, args.refusing, args.hung) < 0:
        parser.error("N must be at least 1, and 0 <= --wedged <= N")
    root = Path(tempfile.mkdtemp(prefix="rbee-fleet-"))
    fleet: Fleet | None = None
    rows: list[Timed] = []
    rss_mb = dashboard = None
    try:
        with interrupt_as_exit():
            print(f"starting {args.n} sshd nodes in {root}", file=sys.stderr)
            fleet = Fleet(root)
            fleet.build(args.n, args.refusing, args.hung)
            names = list(fleet.nodes)
            rows.append(fleet.rbee("ssh-up", "ssh-up", "--no-install", *names, nodes=args.n))
            rows.append(fleet.rbee("ssh-up again", "ssh-up", "--no-install", *names, nodes=args.n))
            time.sleep(2)  # the hives settle (their first health checks, log writes)
            rss_mb = fleet.hives_rss_mb()
            wedged = fleet.wedge(args.wedged)
            if wedged:
                print(f"  wedged (SIGSTOP): {', '.join(wedged)}", file=sys.stderr)
            everyone = args.n + len(fleet.dead)
            rows.append(fleet.rbee("rbee nodes", "nodes", nodes=everyone))
            rows.append(asyncio.run(probe_round(fleet)))
            if args.dashboard_s > 0:
                dashboard = fleet.dashboard_cpu(args.dashboard_s)
            rows.append(fleet.rbee("ssh-down", "ssh-down", *names, nodes=args.n))
            left = fleet.hive_pids()
            if left:
                print(f"  hives still running after ssh-down: {sorted(left)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the bench started", file=sys.stderr)
        return 130
    finally:
        if fleet is not None:
            fleet.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report(args.n, args, rows, rss_mb, dashboard) else 1


if __name__ == "__main__":
    sys.exit(main())
