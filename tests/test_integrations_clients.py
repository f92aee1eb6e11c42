"""The own-client machinery behind ``cachewatch.integrations``, on plain httpx/httpx2 clients.

``own_client(old, engine)`` must keep everything the old client did (base URL, headers,
auth, timeout, event hooks, its transport and its mounted proxy routes) while sending
through cachewatch, and must leave the old client's pool open unless told it owns it.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from _frameworks import outcomes
from _helpers import COMBOS, fam
from cachewatch.engine._engine import Engine
from cachewatch.integrations._clients import AlreadyInstrumentedError, own_client

BODY = {
    "id": "m",
    "type": "message",
    "model": "claude-sonnet-4-6",
    "content": [],
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


class Recording:
    """A MockTransport that records (url, headers) and whether it was closed."""

    def __init__(self, family: Any, name: str) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.name = name
        self.closed = False

        def handler(request: Any) -> Any:
            self.seen.append((str(request.url), request.headers))
            return family.Response(200, json=BODY, headers={"x-route": name})

        self.mock = family.MockTransport(handler)
        self.mock.close = self._close  # type: ignore[method-assign]
        self.mock.aclose = self._aclose  # type: ignore[method-assign]

    def _close(self) -> None:
        self.closed = True

    async def _aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("family_name", "mode"), COMBOS)
async def test_own_client_keeps_settings_routes_and_pool(family_name: str, mode: str) -> None:
    family = fam(family_name)
    direct, proxied = Recording(family, "direct"), Recording(family, "proxy")
    hooked: list[str] = []

    def hook(request: Any) -> None:
        hooked.append(request.url.path)

    async def ahook(request: Any) -> None:
        hook(request)

    cls = family.Client if mode == "sync" else family.AsyncClient
    old = cls(
        base_url="https://api.anthropic.com",
        headers={"x-app": "demo"},
        auth=("user", "secret"),
        timeout=123.0,
        event_hooks={"request": [hook if mode == "sync" else ahook]},
        transport=direct.mock,
        mounts={"https://proxied.example": proxied.mock},
    )
    registry = CollectorRegistry()
    new = own_client(old, Engine(registry=registry), owner_closes=False)
    assert new is not old
    assert new.timeout == old.timeout
    assert new.base_url == old.base_url

    async def send(client: Any, url: str) -> Any:
        if mode == "sync":
            return client.post(url, json={"model": "claude-sonnet-4-6", "messages": []})
        return await client.post(url, json={"model": "claude-sonnet-4-6", "messages": []})

    first = await send(new, "/v1/messages")
    second = await send(new, "https://proxied.example/v1/messages")
    assert first.headers["x-route"] == "direct"
    assert second.headers["x-route"] == "proxy"
    url, headers = direct.seen[0]
    assert url == "https://api.anthropic.com/v1/messages"
    assert headers["x-app"] == "demo"
    assert headers["authorization"].startswith("Basic ")
    assert hooked == ["/v1/messages", "/v1/messages"]
    assert outcomes(registry) == {"ok": 2}

    await send(old, "/v1/messages")  # the old client is not instrumented
    assert outcomes(registry) == {"ok": 2}

    if mode == "sync":
        new.close()
    else:
        await new.aclose()
    assert not direct.closed  # lent, not given
    assert not proxied.closed
    with pytest.raises(AlreadyInstrumentedError):
        own_client(new, Engine(registry=CollectorRegistry()))


@pytest.mark.parametrize(("family_name", "mode"), COMBOS)
async def test_an_owner_client_is_closed_with_its_replacement(family_name: str, mode: str) -> None:
    family = fam(family_name)
    direct = Recording(family, "direct")
    old = (family.Client if mode == "sync" else family.AsyncClient)(transport=direct.mock)
    new = own_client(old, Engine(registry=CollectorRegistry()), owner_closes=True)
    if mode == "sync":
        new.close()
    else:
        await new.aclose()
    assert old.is_closed
    assert direct.closed
