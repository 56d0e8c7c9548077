"""The compute backends a worker runs on, as the inventory, the hive's spawn request and the
command lines name them. Pydantic-free, so that a command's options can list them without
loading the wire's models."""

from __future__ import annotations

from typing import Literal

Backend = Literal["cpu", "cuda", "metal"]
