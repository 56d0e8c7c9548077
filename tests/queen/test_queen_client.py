"""QueenClient (dataplane/protocol/queen_client.py) against a real queen, a real local hive
and the workers the queen starts on a tiny model: every answer read as the protocol's
models, the errors as RemoteError."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.queen_cluster import QueenCluster, queen_cluster
from support.queen_process import Queen, start_queen

from rbee.dataplane.protocol.client import RemoteError
from rbee.dataplane.protocol.events import Done, Routed, Started, Token
from rbee.dataplane.protocol.queen_client import QueenClient
from rbee.dataplane.protocol.wire import VERSION


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[QueenCluster]:
    with queen_cluster(tmp_path_factory.mktemp("queen-client"), {"tiny": tiny_model}) as c:
        yield c


@pytest.fixture(scope="module")
def queen(cluster: QueenCluster) -> Iterator[Queen]:
    q = start_queen(cluster.inventory.path, cluster.home)
    yield q
    q.stop()


def test_health_cluster_and_a_stream_read_as_the_protocols_models(queen: Queen) -> None:
    async def scenario() -> None:
        async with QueenClient(queen.url) as client:
            assert (await client.health()).version == VERSION
            events = [
                e
                async for e in client.stream(
                    "tiny", "Once upon a time", max_tokens=4, request_id="req-client-1"
                )
            ]
            kinds = [e.type for e in events]
            assert "routed" in kinds, (events, queen.log())  # once seen as one error event
            assert kinds.index("routed") < kinds.index("started")
            routed = next(e for e in events if isinstance(e, Routed))
            assert routed.node == "local"
            started = next(e for e in events if isinstance(e, Started))
            assert started.request_id == "req-client-1"
            assert len([e for e in events if isinstance(e, Token)]) == 4
            assert isinstance(events[-1], Done)

            report = await client.cluster()
            [node] = report.nodes
            assert (node.name, node.state, node.routed) == ("local", "up", 1)
            assert node.version == VERSION and node.checked_at is not None
            [worker] = report.workers
            assert worker.worker_id == routed.worker_id and worker.in_flight == 0
            assert report.queued == {}

    asyncio.run(scenario())


def test_refusals_are_remote_errors_with_the_queens_words(queen: Queen) -> None:
    async def scenario() -> None:
        async with QueenClient(queen.url) as client:
            with pytest.raises(RemoteError) as unknown:
                async for _ in client.stream("no-such-model", "hi"):
                    pass
            assert (unknown.value.status, unknown.value.code) == (404, "MODEL_NOT_FOUND")
            assert 'unknown model "no-such-model" (known: tiny)' in unknown.value.message
            with pytest.raises(RemoteError) as gone:
                await client.cancel("req-never-sent")
            assert (gone.value.status, gone.value.code) == (404, "NOT_FOUND")

    asyncio.run(scenario())
