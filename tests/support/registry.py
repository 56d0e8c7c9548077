"""Workers put in a keeper's registry by hand, as `rbee infer` or a spawn would leave them."""

from __future__ import annotations

import time

from rbee.control.keeper.worker_registry import RegisteredWorker, WorkerRegistry


def register_worker(
    registry: WorkerRegistry,
    worker_id: str,
    model_ref: str,
    url: str,
    *,
    api_key: str = "k",
    node: str = "local",
) -> None:
    """An idle worker the registry holds, never health-checked."""
    registry.record(
        RegisteredWorker(
            worker_id=worker_id,
            node=node,
            model_ref=model_ref,
            url=url,
            api_key=api_key,
            backend="cpu",
            device=0,
            state="idle",
            created_at=time.time(),
            last_health_check=None,
        )
    )
