"""Structured output: the grammar an answer must follow, and the tool call read back from it.

`response_format` (`json_object`, `json_schema`) and `tools` with a forced `tool_choice`
become a llama.cpp grammar (GBNF, through llama-cpp-python's JSON-schema converter) that the
engine enforces token by token (`grammar_sampler.py`). A schema keyword the converter would
silently drop is refused with a 400 naming it: a client that asked for a constraint must not
get an answer that breaks it. docs/structured-output.md says what is supported and why.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from rbee.dataplane.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    OpenAIRequest,
    Tool,
)
from rbee.dataplane.protocol.wire import ApiError, ErrorCode

# Keywords the converter turns into grammar, and annotations that constrain nothing.
# `format` is an annotation in JSON Schema (validators do not assert it by default); the
# converter enforces date, time, date-time and uuid and leaves the others free.
_ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minLength", "maxLength",
}  # fmt: skip
_ANNOTATIONS = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "strict",
}  # fmt: skip
# The converter writes "up to n" as n nested groups, and llama.cpp's grammar parser recurses
# into each: 1000 parses, 1500 is refused, 30000 overflows the worker's stack (measured).
MAX_NESTING = 1000
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
# A pattern's {n,m} repeats are written out in full by the converter: a bound like the
# counts' (`a{100000000}` was a 12 GB grammar, built on the event loop).
_PATTERN_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
MAX_GRAMMAR_CHARS = 1_000_000
# llama.cpp's grammar sampler refuses every token whose text starts with a NUL byte: a
# format that needs one can never be produced. Looked for in the JSON text of a value,
# where a NUL character is escaped as \u0000 and a pattern writes \x00 or \u0000.
_NUL = ("\\x00", "\\u0000")
_TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


@dataclass(frozen=True)
class Constraint:
    """What a request's answer must be: text of `grammar`; with `tool_call`, a call
    `{"name": …, "arguments": {…}}` of one of the request's tools."""

    grammar: str
    tool_call: bool = False


def constraint_for(body: OpenAIRequest) -> Constraint | None:
    """The grammar a request asks for, or None for free text; ApiError (400) names the
    field of a request that cannot be honoured."""
    tool = _tool_constraint(body) if isinstance(body, ChatCompletionRequest) else None
    fmt = body.response_format
    if tool is not None:
        if isinstance(fmt, JsonObjectFormat | JsonSchemaFormat):
            raise _invalid(
                "response_format",
                "a forced tool call is already JSON; send response_format with tools only "
                'when tool_choice is "none"',
            )
        return tool
    if isinstance(fmt, JsonObjectFormat):
        return Constraint(JSON_GBNF)
    if isinstance(fmt, JsonSchemaFormat):
        field = "response_format.json_schema.schema"
        return Constraint(schema_grammar(fmt.json_schema.json_schema, field))
    return None


def schema_grammar(schema: dict[str, Any], field: str) -> str:
    """The GBNF grammar of a JSON schema; ApiError naming `field` when it cannot be."""
    try:
        _check_schema(schema, field)
        grammar: str = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise _invalid(field, "the schema is nested too deeply") from None
    except ApiError:
        raise
    except Exception as exc:  # the converter asserts and raises on what it cannot handle
        raise _invalid(field, f"the schema cannot become a grammar: {exc}") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise _invalid(field, "the schema's grammar is too large; lower its counts")
    if _nesting(grammar) > MAX_NESTING:
        raise _invalid(
            field,
            f"the schema needs a grammar nested deeper than {MAX_NESTING} levels (a pattern "
            f"repeating more than {MAX_NESTING} times?); lower its counts",
        )
    return grammar


def _nesting(grammar: str) -> int:
    """How deep the grammar's groups nest, string literals and character classes aside."""
    bare = _GBNF_LITERALS.sub("", grammar)
    depth = deepest = 0
    for paren in _PARENS.findall(bare):
        depth += 1 if paren == "(" else -1
        deepest = max(deepest, depth)
    return deepest


def _tool_constraint(body: ChatCompletionRequest) -> Constraint | None:
    for old, new in (("functions", "tools"), ("function_call", "tool_choice")):
        if getattr(body, old) is not None:
            raise _invalid(old, f"deprecated by OpenAI and not supported; send {new} instead")
    choice = body.tool_choice
    if choice is not None and not body.tools and choice != "none":
        raise _invalid("tool_choice", "there are no tools to choose from; send tools too")
    if not body.tools or choice == "none":
        return None
    if choice is None or choice == "auto":
        return None  # the model chooses: auto_tools
    tools = body.tools
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in body.tools if t.function.name == choice.function.name]
        if not tools:
            names = ", ".join(t.function.name for t in body.tools)
            raise _invalid(
                "tool_choice.function.name",
                f"no tool is named {choice.function.name!r}; the tools are: {names}",
            )
    return Constraint(schema_grammar(_calls_schema(tools), "tools"), tool_call=True)


def auto_tools(body: ChatCompletionRequest, template: str) -> list[dict[str, Any]] | None:
    """The tools to render into the prompt when the model may choose between a call and
    text (tool_choice "auto", the default with tools); None when it may not. Only a template
    that references `tools` has a format for them; elsewhere auto is refused (a 400), since
    dropping the tools silently would answer a question the client did not ask."""
    if not body.tools or body.tool_choice not in (None, "auto"):
        return None
    if not _TEMPLATE_TOOLS.search(template):
        raise _invalid(
            "tool_choice",
            "this model's chat template has no format for tools, so the model cannot choose "
            'between a call and text ("auto", the default when tools are sent); send '
            'tool_choice "required" (a call of any tool), {"type": "function", "function": '
            '{"name": …}} (that tool) or "none" (text)',
        )
    return [tool.model_dump(exclude_none=True) for tool in body.tools]


def _calls_schema(tools: list[Tool]) -> dict[str, Any]:
    """One schema for a call of any of `tools`: `{"name": const, "arguments": parameters}`.
    Each tool's `$defs` move to the root under a prefix of its own, with its `$ref`s."""
    calls: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        params = copy.deepcopy(tool.function.parameters or {"type": "object", "properties": {}})
        field = f"tools[{i}].function.parameters"
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise _invalid(field, "a tool's parameters must be a JSON schema of an object")
        try:
            _check_schema(params, field)
        except RecursionError:
            raise _invalid(field, "the schema is nested too deeply") from None
        prefix = f"tool{i}-"
        for key in ("$defs", "definitions"):
            for name, sub in (params.pop(key, None) or {}).items():
                defs[prefix + name] = sub
        params = _rebase_refs(params, prefix)
        for name in list(defs):
            if name.startswith(prefix):
                defs[name] = _rebase_refs(defs[name], prefix)
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.function.name}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return schema | {"$defs": defs} if defs else schema


def _rebase_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_rebase_refs(x, prefix) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rebase_refs(v, prefix) for k, v in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str):
        for key in ("#/$defs/", "#/definitions/"):
            if ref.startswith(key):
                out["$ref"] = "#/$defs/" + prefix + ref[len(key) :]
    return out


def _check_schema(schema: Any, field: str) -> None:
    for path, node in _subschemas(schema, ""):
        where = f" at {path}" if path else ""
        if isinstance(node, bool):
            continue  # true/false schemas: anything / nothing (additionalProperties)
        if not isinstance(node, dict):
            raise _invalid(field, f"a schema must be an object{where}")
        unknown = sorted(set(node) - _ENFORCED - _ANNOTATIONS)
        if unknown:
            raise _invalid(
                field,
                f"{', '.join(unknown)}{where}: not supported in structured output (the "
                "grammar cannot enforce it); remove it or check the value yourself",
            )
        types = node.get("type")
        for t in types if isinstance(types, list) else [types]:
            if t is not None and t not in _TYPES:
                raise _invalid(field, f"type {t!r}{where} is not a JSON schema type")
        for key in _COUNTS:
            count = node.get(key)
            if count is not None and not (isinstance(count, int) and 0 <= count <= MAX_NESTING):
                raise _invalid(
                    field, f"{key} {count!r}{where}: rbee takes whole numbers up to {MAX_NESTING}"
                )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in _PATTERN_REPEAT.findall(pattern):
                if max(int(low), int(high or 0)) > MAX_NESTING:
                    raise _invalid(
                        field,
                        f"pattern {pattern!r}{where}: repeats up to {MAX_NESTING} times at most",
                    )
        for key in ("const", "enum", "pattern"):
            if key in node and any(nul in json.dumps(node[key]) for nul in _NUL):
                raise _invalid(
                    field, f"{key}{where}: a NUL character cannot be generated (llama.cpp)"
                )
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
            raise _invalid(field, f"$ref {ref!r}{where}: only local references (#/…) work")
        props = node.get("properties") or {}
        missing = [r for r in node.get("required", []) if r not in props]
        if missing:  # the grammar writes only the properties it knows
            raise _invalid(
                field, f"required names {', '.join(map(str, missing))}{where}, not in properties"
            )


def _subschemas(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, node
    if not isinstance(node, dict):
        return
    dot = f"{path}." if path else ""
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield from _subschemas(sub, f"{dot}{key}.{name}")
    for key in _SCHEMA_LISTS:
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _subschemas(sub, f"{dot}{key}[{i}]")
    for key in ("items", "additionalProperties"):
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _subschemas(sub, f"{dot}{key}[{i}]")
        elif isinstance(value, dict):
            yield from _subschemas(value, f"{dot}{key}")


def template_messages(messages: Sequence[ChatMessage], template: str) -> list[dict[str, Any]]:
    """The chat as the template reads it. A template that knows tool calls gets them as
    Hugging Face templates expect (arguments as an object); for one that does not, an
    assistant's calls become its text, the JSON this worker made the model write."""
    knows_calls = "tool_calls" in template
    out: list[dict[str, Any]] = []
    for m in messages:
        # "developer" is OpenAI's newer name for "system"; templates know only the older one.
        role = "system" if m.role == "developer" else m.role
        message: dict[str, Any] = {"role": role, "content": m.text()}
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = [
                {"name": c.function.name, "arguments": _arguments(c.function.arguments)}
                for c in m.tool_calls
            ]
            if knows_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": call}
                    for c, call in zip(m.tool_calls, calls, strict=True)
                ]
            else:
                text = "\n".join(json.dumps(call, ensure_ascii=False) for call in calls)
                message["content"] = f"{message['content']}\n{text}".strip()
        out.append(message)
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past Python's stack
        return text  # not JSON: the template gets it as it came


class CallReader(Protocol):
    """Reads tool calls out of an answer as it streams: `feed` returns the text that is
    content for sure, `finish` the rest of the content and the calls."""

    def feed(self, text: str) -> str: ...

    def finish(self) -> tuple[str, list[dict[str, Any]]]: ...


class ForcedCall:
    """An answer made under a tool-call grammar: all of it is one call. An answer cut short
    (max_tokens, a stop string) is no call: its text comes back as content."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, text: str) -> str:
        self._parts.append(text)
        return ""

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        text = "".join(self._parts)
        call = _call_of(_json(text))
        return ("", [call]) if call else (text, [])


class TemplateCalls:
    """An answer to tool_choice "auto": text, or calls in the format tool-aware templates
    teach: Hermes' `<tool_call>{"name", "arguments"}</tool_call>` (Qwen and many others),
    Mistral's `[TOOL_CALLS][…]`, or Llama 3's answer that is one JSON call. Content streams
    until a call may begin; from there the rest is held and read at the end."""

    def __init__(self, names: list[str], *, parallel: bool) -> None:
        self._names = set(names)
        self._parallel = parallel
        self._text = ""
        self._sent = 0  # how much of _text went out as content
        self._holding = False

    def feed(self, text: str) -> str:
        self._text += text
        if self._holding:
            return ""
        start = self._text[self._sent :]
        if self._sent == 0:  # nothing sent yet: an answer that is JSON may be a call
            head = start.lstrip()
            if not head:
                return ""
            if head[0] in "{[":
                self._holding = True
                return ""
        at = start.find(_HERMES_OPEN)
        if at >= 0:
            self._holding = True
            self._sent += at
            return start[:at]
        keep = next(
            (n for n in range(len(_HERMES_OPEN) - 1, 0, -1) if start.endswith(_HERMES_OPEN[:n])), 0
        )
        self._sent += len(start) - keep
        return start[: len(start) - keep]

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        rest = self._text[self._sent :]
        content, calls = rest, []
        blocks = list(_HERMES_CALL.finditer(rest))
        if blocks:
            calls = [_call_of(_json(m.group(1)), self._names) for m in blocks]
            content = _HERMES_CALL.sub("", rest)
        else:
            found = _json(rest.strip().removeprefix("[TOOL_CALLS]").strip())
            calls = [
                _call_of(c, self._names) for c in (found if isinstance(found, list) else [found])
            ]
            content = ""
        if not calls or None in calls:
            return rest, []  # not (all) calls of these tools: the text as it came
        return content.strip(), [c for c in calls if c][: None if self._parallel else 1]


_GBNF_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')
_PARENS = re.compile(r"[()]")
_HERMES_OPEN = "<tool_call>"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_TEMPLATE_TOOLS = re.compile(r"\{[{%][^}]*\btools\b")  # a Jinja tag that reads `tools`


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _call_of(call: Any, names: set[str] | None = None) -> dict[str, Any] | None:
    """The OpenAI `tool_calls` entry for `{"name", "arguments"}` (Llama 3 says
    "parameters"), or None when it is not a call of one of `names`."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters"))
    if arguments is None or (names is not None and call["name"] not in names):
        return None
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST, f"{field}: {message}", details={"field": field})
