"""rbee-hive's command line: refusals, the pid lock, one-shot subcommands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import BIN, free_port
from support.hive_process import start_hive
from test_hive_http_api import provision

from rbee.dataplane.plumbing import pidfile
from rbee.dataplane.plumbing.process_proof import alive


def run_hive(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RBEE_HIVE_API_KEY"}
    return subprocess.run(
        [str(BIN / "rbee-hive"), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_version() -> None:
    result = run_hive("--version")
    assert result.returncode == 0 and "0.1.0" in result.stdout


def test_second_hive_on_the_same_state_dir_refuses(tmp_path: Path) -> None:
    hive = start_hive(tmp_path / "state")
    try:
        result = run_hive(
            "daemon", "--addr", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "state")
        )
        assert result.returncode == 1
        assert f"another rbee-hive (pid {hive.proc.pid}) is running" in result.stderr
    finally:
        assert hive.stop() == 0
    # the lock goes with the process: a new hive starts
    again = start_hive(tmp_path / "state")
    assert again.stop() == 0


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret")
    key.chmod(0o644)
    result = run_hive(
        "daemon",
        "--addr",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "s"),
        "--api-key-file",
        str(key),
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr and "secret" not in result.stderr


def test_public_address_without_key_is_refused(tmp_path: Path) -> None:
    result = run_hive(
        "daemon", "--addr", f"0.0.0.0:{free_port()}", "--state-dir", str(tmp_path / "s")
    )
    assert result.returncode == 2 and "without an API key" in result.stderr


def test_bad_addr_is_a_clear_error(tmp_path: Path) -> None:
    result = run_hive("daemon", "--addr", "nonsense", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_status_and_models_list(tmp_path: Path, tiny_model: Path) -> None:
    hive = start_hive(tmp_path / "state", api_key="status-key-0123456789")
    try:
        addr = hive.url.removeprefix("http://")
        # the key is found in the state dir's key file
        status = run_hive("status", "--addr", addr, "--state-dir", str(tmp_path / "state"))
        assert status.returncode == 0 and "0 worker(s)" in status.stdout, status.stderr
        provision(hive, f"file:{tiny_model}")
        listed = run_hive("models", "list", "--state-dir", str(tmp_path / "state"))
        assert f"file:{tiny_model}" in listed.stdout
    finally:
        assert hive.stop() == 0
    down = run_hive("status", "--addr", addr)
    assert down.returncode == 1 and "no hive answers" in down.stderr


# Ignores SIGTERM, and holds 100 MB it wrote: a SIGKILLed process takes a moment to be gone.
_STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
held = b"x" * (100 << 20)
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_returns_once_the_killed_process_is_gone() -> None:
    # else a hive started right after `rbee-hive stop` finds the old one still running
    child = subprocess.Popen([sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        process = psutil.Process(child.pid)
        assert pidfile.stop(process, grace_s=0.2) is False  # it ignored SIGTERM: killed
        assert not alive(process)
    finally:
        child.kill()
        child.wait()
