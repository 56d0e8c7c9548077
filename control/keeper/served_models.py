"""The models the cluster serves by name (DESIGN §4 "Queen"): what a client may send as "model".

An inventory's `[models.NAME]` tables become `ModelSpec`s (validated by inventory.py, like its
nodes); a model reference sent as it is gets an ad-hoc spec with the defaults
(`Inventory.model`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rbee.dataplane.protocol.model_refs import spelled_ref

MAX_WORKERS_PER_NODE = 16
DEFAULT_WORKERS_PER_NODE = 1

# Clients send a name in JSON bodies and URLs: an allow-list. ":" lets a name read like a tag
# ("gemma:270m").
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MODEL_NAME_RULE = 'use 1–128 letters, digits, "_", ".", ":" or "-", starting with a letter or digit'


@dataclass(frozen=True)
class ModelSpec:
    """A model the cluster serves, and where and how many of its workers may run."""

    name: str  # what clients send; an ad-hoc spec's is its reference
    ref: str  # canonical (`ModelRef.ref`): how hives and workers name its model
    nodes: tuple[str, ...]  # the nodes it may run on, in inventory order
    slots: int  # per worker: the requests one worker serves at once
    max_workers_per_node: int
    chat_template: str | None = None  # a built-in template its workers use instead of the model's
    sha256: str | None = None  # the file's expected checksum, when the reference gave one

    @property
    def spelled(self) -> str:
        """The reference with its checksum: what a hive's spawn takes (it checks it)."""
        return spelled_ref(self.ref, self.sha256)
