"""The chat templates workers have built in, by name, and how a worker says which one it uses.

A name is what `rbee-worker --chat-template`, a spawn's `chat_template` and an inventory's
`[models.NAME] chat_template` may give; the worker holds the templates themselves
(dataplane/worker/chat.py). Each side validates a name against this one list.
"""

from __future__ import annotations

from typing import Literal, get_args

# The formats of llama.cpp's built-in templates of the same names (llama-chat.cpp).
ChatTemplateName = Literal["chatml", "gemma", "llama3"]
CHAT_TEMPLATE_NAMES: tuple[str, ...] = get_args(ChatTemplateName)

# Where a worker's template came from: the model's GGUF, the fallback for a model without
# one (by its architecture), or an override (`--chat-template`).
ChatTemplateOrigin = Literal["model", "fallback", "override"]
MODEL_TEMPLATE = "model"


def template_in_use(name: str | None, origin: ChatTemplateOrigin) -> str:
    """What /health and /v1/models say: "model", "gemma (fallback)", "chatml (override)"."""
    return MODEL_TEMPLATE if origin == "model" or name is None else f"{name} ({origin})"


def serves_template(in_use: str | None, override: str | None) -> bool:
    """Whether a worker whose /health says `in_use` was started with `override` (None: none),
    so a client that asks for that override may use it."""
    if override is None:
        return in_use is None or not in_use.endswith(" (override)")
    return in_use == template_in_use(override, "override")
