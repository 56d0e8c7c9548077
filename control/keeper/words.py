"""What the keeper says when something goes wrong: every failure a person can act on, worded
once, with what to do. The CLI, the dashboard and the queen show these words; none of them
words an error of its own."""

from __future__ import annotations

import textwrap

from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.model_refs import InvalidModelRef, parse_model_ref
from rbee.dataplane.protocol.wire import VERSION, ErrorCode

from .node import Node

LOG_LINES_SHOWN = 5


class ActionableError(Exception):
    """A failure the person can act on: what went wrong, details, and what to do; `code`,
    the wire's error code when a hive or worker said it (the queen answers with it)."""

    def __init__(
        self,
        message: str,
        *details: str,
        suggestion: str | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.suggestion = suggestion
        self.code = code

    def in_words(self) -> str:
        """Message, details and suggestion as plain lines (for screens that are not stderr)."""
        lines = [self.message, *self.details]
        if self.suggestion:
            lines.append(f"Suggestion: {self.suggestion}")
        return "\n".join(lines)


def key_source(node: Node) -> str:
    return node.api_key_source or (
        "no key is configured for this node (api_key_env or api_key_file in the inventory)"
    )


def auth_failed(node: Node) -> ActionableError:
    """EC9: the hive or worker refused the node's key."""
    return ActionableError(
        "Authentication failed",
        f"Invalid API key for {node.hive_address}",
        suggestion=f"check the key configured for {node.name}: {key_source(node)}",
        code=ErrorCode.INVALID_API_KEY,
    )


def version_mismatch(node: Node, theirs: str) -> ActionableError:
    """EC8: both versions, and the command that upgrades."""
    return ActionableError(
        f"Version mismatch: rbee={VERSION}, rbee-hive={theirs}. Please upgrade.",
        suggestion=f"upgrade the node with `rbee deploy {node.name}` (or the ansible "
        f"playbook), then `rbee ssh-up {node.name}`",
    )


def not_answering(waited_s: float) -> str:
    return f"not answering ({waited_s:g} s)"


def restart_hint(node: Node) -> str:
    return (
        f"it may be stopped or overloaded: `rbee ssh-down {node.name}`, "
        f"then `rbee ssh-up {node.name}`"
    )


def hive_not_answering(node: Node, waited_s: float) -> ActionableError:
    return ActionableError(
        f"rbee-hive on {node.name} is {not_answering(waited_s)}", suggestion=restart_hint(node)
    )


def hive_unreachable(node: Node) -> ActionableError:
    return ActionableError(
        f"Cannot connect to the hive on {node.name}",
        suggestion=f"is the hive running? try `rbee ssh-up {node.name}`",
    )


def not_our_hive(node: Node) -> ActionableError:
    return ActionableError(
        f"Something other than rbee-hive answers at {node.hive_address}",
        suggestion=f"give node {node.name} another hive_port in {node.inventory_path}",
    )


def see_logs(node: Node) -> str:
    return f"see `rbee logs --node {node.name}`"


def lost_contact(node: Node, why: object) -> ActionableError:
    """A node that went away in the middle of a command."""
    return ActionableError(
        f"lost contact with {node.name}: {why}", suggestion=f"{see_logs(node)} and retry"
    )


def use_cpu(node: Node) -> str:
    return f'use --backend cpu, or backend = "cpu" for {node.name} in the inventory'


def damaged_model(node: Node) -> str:
    return f"the model may be damaged or unsupported; `rbee logs --node {node.name}`"


def remote_failure(node: Node, exc: RemoteError) -> ActionableError:
    """A hive's or worker's error answer, in the words a person acts on."""
    try:
        code: ErrorCode | None = ErrorCode(exc.code)
    except ValueError:  # a code of a newer peer
        code = None
    if code == ErrorCode.INSUFFICIENT_RAM:
        return ActionableError(
            f"Insufficient RAM on {node.name}",
            f"Required: {exc.details.get('required_mb')} MB",
            f"Available: {exc.details.get('available_mb')} MB",
            suggestion="Try a smaller quantized model (Q4 instead of Q8)",
            code=code,
        )
    if code == ErrorCode.INVALID_API_KEY:
        return auth_failed(node)
    if code == ErrorCode.BACKEND_UNAVAILABLE:
        return ActionableError(exc.message, suggestion=use_cpu(node), code=code)
    # A worker that died while starting comes with its log's last lines.
    return ActionableError(
        exc.message,
        *quoted_log(str(exc.details.get("log_tail", ""))),
        suggestion=see_logs(node),
        code=code,
    )


def checked_model_ref(ref: str) -> str:
    """The reference in its canonical form; ActionableError naming the mistake otherwise."""
    try:
        return parse_model_ref(ref.strip()).spelled
    except InvalidModelRef as exc:
        raise ActionableError(
            str(exc),
            suggestion="e.g. pkg:gemma3-270m, file:/abs/model.gguf, "
            "hf:ORG/REPO or https://…/model.gguf",
        ) from None


def quoted_log(tail: str, lines: int = LOG_LINES_SHOWN) -> list[str]:
    """A log's last lines, indented and wrapped to the terminal's 80 columns."""
    return [
        wrapped
        for line in tail.strip().splitlines()[-lines:]
        for wrapped in textwrap.wrap(
            line, 78, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
        )
        or ["  "]
    ]


# ----------------------------------------------------------------- the queen

START_QUEEN = "start one with `rbee queen start` (or `rbee queen`)"


def no_queen() -> ActionableError:
    return ActionableError("No queen is running", suggestion=START_QUEEN)


def queen_unreachable(url: str) -> ActionableError:
    """queen.json names a queen that does not take connections (it stopped unseen)."""
    return ActionableError(f"Cannot connect to the queen at {url}", suggestion=START_QUEEN)


def queen_not_answering(url: str, waited_s: float) -> ActionableError:
    return ActionableError(
        f"The queen at {url} is {not_answering(waited_s)}",
        suggestion="it may be overloaded or stopped (SIGSTOP); see its log",
    )


def queen_key_unreadable(why: str) -> ActionableError:
    return ActionableError(
        f"Cannot read the queen's key: {why}",
        suggestion="it is the file the queen was started with (--api-key-file)",
    )


def queen_failure(
    code: str, message: str, *, status: int | None = None, retry_after: str | None = None
) -> ActionableError:
    """The queen's error answer (`status`: its HTTP status, before a stream) or a stream's
    error event, in a person's words."""
    if code == ErrorCode.ALL_SLOTS_BUSY:
        wait = f"{retry_after} s" if retry_after else "a moment"
        return ActionableError(
            f"The queen is busy: {message}",
            suggestion=f"retry in {wait}, or give it more slots or workers ([models.*])",
            code=ErrorCode.ALL_SLOTS_BUSY,
        )
    if code == ErrorCode.MODEL_NOT_FOUND:  # a 404: unknown; else no node can serve it now
        return ActionableError(
            message,
            suggestion="give --model a name of [models.*] in the inventory, or a reference"
            if status == 404
            else "`rbee nodes` shows which nodes are up, and their workers",
            code=ErrorCode.MODEL_NOT_FOUND,
        )
    if code == ErrorCode.INVALID_API_KEY:
        return ActionableError(
            "The queen refused the key",
            suggestion="its key file changed since it started? restart the queen",
            code=ErrorCode.INVALID_API_KEY,
        )
    return ActionableError(message, suggestion="see the queen's log")
