"""`rbee workers env ID`: what an OpenAI client needs to reach a worker this keeper started,
used as a person would (eval'd in a shell, the `openai` SDK reading the environment), against
real hives and workers: a local node, and a node behind sshd that listens on its loopback."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import openai

from conftest import BIN, free_port
from support.operators import Operator, make_keeper, node_table
from support.sshd import start_sshd

# What a script run after `eval "$(rbee workers env ID)"` sees, through the unchanged SDK.
CLIENT = """
import openai
client = openai.OpenAI(max_retries=0)
print(client.models.list().data[0].id)
print(client.completions.create(model=client.models.list().data[0].id, prompt="Once",
      max_tokens=2).model)
"""


def exports(stdout: str) -> dict[str, str]:
    """The `export NAME=VALUE` lines, as a shell reads them (comments skipped)."""
    lines = [line for line in stdout.splitlines() if not line.startswith("#")]
    assert all(line.startswith("export ") for line in lines), stdout
    return dict(shlex.split(line)[1].split("=", 1) for line in lines)


def test_eval_the_lines_and_an_openai_client_reaches_the_worker(
    tmp_path: Path, tiny_model: Path
) -> None:
    keeper = make_keeper(tmp_path, tiny_model)
    ref = f"file:{tiny_model}"
    try:
        assert keeper.infer("hello", "--max-tokens", "2").returncode == 0
        [worker] = keeper.registered()
        worker_id = worker["worker_id"]
        assert worker["model_ref"] == ref

        def rbee(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "rbee"), *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=keeper.env(),
            )

        listed = json.loads(rbee("workers", "list", "-o", "json").stdout)
        assert [(w["worker_id"], w["model_ref"]) for w in listed] == [(worker_id, ref)]

        env = rbee("workers", "env", worker_id)
        assert env.returncode == 0 and env.stderr == "", env.stderr
        assert env.stdout.startswith(f"# {worker_id} on local serves {ref}")
        values = exports(env.stdout)
        assert values["OPENAI_BASE_URL"] == worker["url"] + "/v1"
        assert values["OPENAI_API_KEY"] == worker["api_key"]
        script = f'eval "$({BIN / "rbee"} workers env {worker_id})" && {BIN / "python"} -c "$0"'
        client = subprocess.run(
            ["bash", "-c", script, CLIENT],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in keeper.env().items() if not k.startswith("OPENAI_")},
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.split() == [ref, ref]

        unknown = rbee("workers", "env", "worker-nope")
        assert unknown.returncode == 1 and unknown.stdout == ""
        assert "worker-nope is not in this keeper's registry" in unknown.stderr

        # Gone behind the keeper's back (an idle timeout, say): said, and forgotten.
        httpx.post(
            f"{keeper.hive_url}/v1/workers/{worker_id}/shutdown",
            headers=keeper.hive_headers(),
            timeout=60,
        ).raise_for_status()
        gone = rbee("workers", "env", worker_id)
        assert gone.returncode == 1 and gone.stdout == ""
        assert f"{worker_id} no longer runs on local" in gone.stderr
        assert "Traceback" not in gone.stderr
        assert keeper.registered() == []
    finally:
        keeper.stop_hive()


def test_a_worker_on_a_loopback_only_node_needs_a_forward_and_says_which(
    tmp_path: Path, tiny_model: Path
) -> None:
    node = start_sshd(tmp_path / "sshd", "far")
    operator = Operator(tmp_path, node_table("far", node, tmp_path / "far-hive"))
    forward: subprocess.Popen[bytes] | None = None
    try:
        assert operator.rbee("ssh-up", "far").returncode == 0
        ref = f"file:{tiny_model}"
        infer = operator.rbee("infer", "--node", "far", "--model", ref, "--max-tokens", "2", "hi")
        assert infer.returncode == 0, infer.stderr
        [worker] = Operator.registered_in(operator.home)

        env = operator.rbee("workers", "env", worker["worker_id"])
        assert env.returncode == 0, env.stderr
        port = int(worker["url"].rsplit(":", 1)[1])
        values = exports(env.stdout)
        assert values["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
        assert values["OPENAI_API_KEY"] == worker["api_key"]
        assert f"{worker['worker_id']} listens on far's loopback only" in env.stderr
        assert "rbee queen start" in env.stderr and "the queen's key" in env.stderr
        assert all(len(line) <= 80 for line in env.stderr.splitlines() if "ssh -N" not in line)
        [command] = re.findall(r"^  (ssh -N .*)$", env.stderr, re.MULTILINE)

        # The command as printed, but for the port here (this machine is the node too, where
        # the worker holds that port) and never prompting.
        argv = shlex.split(command)
        here = free_port()
        argv[argv.index("-L") + 1] = argv[argv.index("-L") + 1].replace(f"{port}:", f"{here}:", 1)
        argv[1:1] = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
        forward = subprocess.Popen(argv, stderr=subprocess.PIPE)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{here}/v1", api_key=values["OPENAI_API_KEY"], max_retries=6
        )
        answer = client.completions.create(model=ref, prompt="Once", max_tokens=2)
        assert answer.model == ref and answer.usage.completion_tokens == 2
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(10)
        operator.rbee("ssh-down", "far")
        node.stop()
