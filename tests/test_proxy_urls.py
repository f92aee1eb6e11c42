"""The proxy's remembered URLs stay small whatever paths clients send (SPEC 10: memory stays flat).

The app and the upstream transport each remember the URLs of recent request targets
(up to 1,024, for the latency bar). A client sending long unique paths, each just under
the 64 KiB head limit, must not make them hold hundreds of megabytes: the memory still
traced after serving many such requests stays under a fixed bound.
"""

from __future__ import annotations

import contextlib
import socket
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from cachewatch.proxy import create_proxy_app, upstream_transport

REQUESTS = 600
PATH_BYTES = 60_000
#: 600 remembered 60 KB targets hold over 70 MB. yarl keeps its last 128 built URLs on
#: its own (about 8 MB of these): a fixed amount, whatever the number of requests.
BOUND = 24 * 1024 * 1024


def long_path(i: int) -> bytes:
    return b"/v1/%d/" % i + b"x" * PATH_BYTES


def scope_for(raw_path: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": raw_path.decode("ascii"),
        "raw_path": raw_path,
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8787")],
    }


async def traced_growth(serve: Any) -> int:
    """Bytes still allocated after ``serve(i)`` ran for every i (the first call warms up)."""
    await serve(-1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(REQUESTS):
            await serve(i)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def test_the_app_does_not_remember_long_targets() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{}", headers={"content-type": "application/json"})

    app = create_proxy_app(
        "http://upstream.test/apps/anthropic",
        transport=httpx.MockTransport(answer),
        registry=CollectorRegistry(),
        breakpoints="off",
    )
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def serve(i: int) -> None:
        await app(scope_for(long_path(i)), receive, send)

    growth = await traced_growth(serve)
    assert statuses == [200] * (REQUESTS + 1)
    assert growth < BOUND, f"{growth} bytes kept after {REQUESTS} requests with long unique paths"


async def test_the_upstream_transport_does_not_remember_long_targets() -> None:
    with refused_port() as port:
        transport = upstream_transport()

        async def serve(i: int) -> None:
            target = b"/apps/anthropic" + long_path(i)
            request = httpx.Request(
                "GET", f"http://127.0.0.1:{port}/apps/anthropic/v1", extensions={"target": target}
            )
            with pytest.raises(httpx.ConnectError):  # nothing listens: the URL was built all the same
                await transport.handle_async_request(request)

        try:
            growth = await traced_growth(serve)
        finally:
            await transport.aclose()
    assert growth < BOUND, f"{growth} bytes kept after {REQUESTS} requests with long unique targets"


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port with nothing listening on it (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# -- the target and Host checks, as functions (the proxy tests drive them over sockets) ------


@pytest.mark.parametrize(
    "target",
    [b"/v1/mess ages", b"/v1/messages\x01", b"/v1/\x7f", b"/v1/caf\xc3\xa9", b"/v1/messages#frag", b"/v1/\t"],
)
def test_bytes_no_request_target_may_hold_are_refused(target: bytes) -> None:
    from cachewatch.proxy._target import bad_target_bytes

    assert bad_target_bytes(target)


def test_an_ordinary_target_passes() -> None:
    from cachewatch.proxy._target import bad_target_bytes

    assert not bad_target_bytes(b"/v1/messages?beta=true&x=%20%C3%A9")


def test_hosts_the_proxy_answers_to() -> None:
    from cachewatch.proxy._target import host_allowed

    extra = frozenset({"gateway.internal", "proxy.example:8443"})
    assert host_allowed(b"127.0.0.1:8787", frozenset())
    assert host_allowed(b"localhost", frozenset())
    assert host_allowed(b"[::1]:8787", frozenset())
    assert host_allowed(b"gateway.internal", extra)
    assert host_allowed(b"GATEWAY.internal:9999", extra)  # a name allowed, on any port
    assert host_allowed(b"proxy.example:8443", extra)  # a host:port allowed as such
    assert not host_allowed(b"proxy.example:80", extra)
    assert not host_allowed(b"evil.example", extra)
    assert not host_allowed(b"gateway.internal.evil.example", extra)
