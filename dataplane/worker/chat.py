"""Chat messages into a prompt: the model's own template (GGUF metadata), else a built-in one.

As llama.cpp's server: the model's template wins; a model without one gets a fallback, and
`--chat-template NAME` overrides both. The built-ins are llama.cpp's formats of the same names
(llama-chat.cpp), written as Jinja so every template renders one way. The fallback is Gemma's
turn format for Gemma models (their vocabularies hold its markers as tokens) and ChatML for
every other architecture, llama.cpp's own default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rbee.dataplane.protocol.chat_templates import (
    CHAT_TEMPLATE_NAMES,
    ChatTemplateOrigin,
    template_in_use,
)
from rbee.dataplane.protocol.requests import ChatMessage
from rbee.dataplane.protocol.wire import ApiError, ErrorCode

from .structured import template_messages

if TYPE_CHECKING:
    from .service import Worker


class ChatTemplateError(ValueError):
    pass


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


_env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_env.globals["raise_exception"] = _raise
_env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)


@dataclass(frozen=True)
class BuiltinTemplate:
    source: str  # Jinja
    end_of_turn: str  # ends the answer: a stop string too, for vocabularies without the token


BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "chatml": BuiltinTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<|im_end|>",
    ),
    # Gemma has no system turn: system text opens the first user turn, as Gemma's own
    # template and llama.cpp do; the assistant's turns are the "model"'s.
    "gemma": BuiltinTemplate(
        "{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m.role == 'system' %}"
        "{% set ns.system = ns.system + ('\n\n' if ns.system else '') + m.content | trim %}"
        "{% else %}"
        "<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
        "{% if ns.system and m.role != 'assistant' %}{{ ns.system }}\n\n"
        "{% set ns.system = '' %}{% endif %}"
        "{{ m.content | trim }}<end_of_turn>\n"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        "<end_of_turn>",
    ),
    "llama3": BuiltinTemplate(
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
        "{{ m.content | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}",
        "<|eot_id|>",
    ),
}
assert tuple(BUILTIN_TEMPLATES) == CHAT_TEMPLATE_NAMES  # the protocol's list names these

# General.architecture values whose fallback is not ChatML.
FALLBACK_BY_ARCHITECTURE = {arch: "gemma" for arch in ("gemma", "gemma2", "gemma3", "gemma3n")}
DEFAULT_FALLBACK = "chatml"


@dataclass(frozen=True)
class ChatTemplate:
    """The template a worker renders chat requests with, and what it says about it."""

    source: str
    in_use: str  # "model", "gemma (fallback)", "chatml (override)"
    stops: tuple[str, ...]  # added to each chat request's stop strings


def choose_template(
    model_template: str | None, architecture: str, override: str | None
) -> ChatTemplate:
    """The override, else the model's own template, else the fallback for its architecture."""
    origin: ChatTemplateOrigin
    if override is not None:
        name, origin = override, "override"
    elif model_template:
        return ChatTemplate(model_template, template_in_use(None, "model"), ())
    else:
        name, origin = FALLBACK_BY_ARCHITECTURE.get(architecture, DEFAULT_FALLBACK), "fallback"
    builtin = BUILTIN_TEMPLATES[name]
    return ChatTemplate(builtin.source, template_in_use(name, origin), (builtin.end_of_turn,))


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt for `messages`, ending where the assistant's answer begins."""
    # Templates test `tools is defined` or `tools`: only a request with tools defines it.
    extra = {"tools": tools} if tools else {}
    try:
        compiled = _env.from_string(template)
        return compiled.render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from None


@dataclass(frozen=True)
class ChatPrompt:
    tokens: list[int]
    stops: tuple[str, ...]  # the template's end-of-turn marker, when it has one


def serving_template(worker: Worker) -> ChatTemplate:
    """The template the worker renders chats with; an ApiError while it does not serve."""
    worker.serving_engine()
    template = worker.chat_template
    assert template is not None  # chosen once the model loaded, before the worker serves
    return template


async def chat_prompt(
    worker: Worker,
    messages: Sequence[ChatMessage],
    *,
    tools: list[dict[str, Any]] | None = None,
) -> ChatPrompt:
    """The tokens of `messages` (and of `tools` the model may call, when the template has a
    format for them) rendered with the worker's template (POST /v1/chat/completions, and
    /v1/inference given `messages`); a template that refuses them is the client's 400."""
    engine = worker.serving_engine()
    template = serving_template(worker)
    rendered = template_messages(messages, template.source)
    bos, eos = engine.bos_text, engine.eos_text
    try:
        prompt = render_chat(template.source, rendered, bos_token=bos, eos_token=eos, tools=tools)
    except ChatTemplateError as exc:
        raise ApiError(
            ErrorCode.INVALID_REQUEST, f"messages: {exc}", details={"field": "messages"}
        ) from None
    # A template that writes the BOS token itself must not get a second one.
    add_special = not (bos and prompt.startswith(bos))
    tokens = await worker.prepare_prompt(prompt, add_special=add_special)
    return ChatPrompt(tokens, template.stops)
