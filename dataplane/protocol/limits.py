"""Bounds of the wire's requests that command lines state in their options. Pydantic-free, so
that `rbee --help` can show them without loading the request models (requests.py)."""

from __future__ import annotations

MAX_TOKENS_LIMIT = 8192  # DESIGN §4: max_tokens 1–8192
