"""ApiClient (rbee.dataplane.protocol.client): what every hive, worker and queen client
shares."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from rbee.dataplane.protocol.client import ApiClient, tls_context


def test_clients_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live view makes a client per node and per worker every refresh: building a TLS
    context (the CA bundle read) each time was most of an idle queen's CPU."""
    built: list[ssl.SSLContext] = []
    create = httpx.create_ssl_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        context = create()
        built.append(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    tls_context.cache_clear()

    async def many() -> None:
        for _ in range(20):
            async with ApiClient("http://127.0.0.1:1"):
                pass

    asyncio.run(many())
    assert len(built) == 1
    assert tls_context().verify_mode is ssl.CERT_REQUIRED  # still verifying for https
