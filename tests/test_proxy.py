"""``cachewatch proxy`` in front of the emulator, both served for real by uvicorn (SPEC 2, 8, 10).

The proxy app (:func:`cachewatch.proxy.create_proxy_app`) and the emulator each run in
a uvicorn thread on an ephemeral 127.0.0.1 port; the proxy with the uvicorn settings of
``cachewatch proxy`` (:func:`cachewatch.proxy.server_options`: httptools, uvloop). The emulator sits behind
:class:`Upstream`, a small ASGI wrapper that records every request it receives (path,
raw headers) and whether each response ran to its end, so the tests can prove what did
and did not reach the upstream.

Covers: curl-style JSON and SSE calls (body shape, event sequence, ``/metrics`` on the
proxy port), a cache read on the second call with the caller's own ``cache_control``,
open-relay refusals (absolute-URI targets, foreign ``Host``, ``//host`` paths, under
httptools and under h11), the
request size limit (declared and chunked bodies), closing the upstream when the client
disconnects mid-stream (``outcome="aborted"``), credentials passed through and never
exported, and the default loopback bind of the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cachewatch.cli import _main as cli
from cachewatch.emulator import Emulator, create_app, run_in_thread
from cachewatch.proxy import create_proxy_app, server_options

MODEL = "claude-sonnet-4-6"
CC: dict[str, Any] = {"type": "ephemeral"}
SYSTEM_TOKENS = 3_000
#: 3,000 tokens by the emulator's count (a word of up to 4 characters is 1 token): above
#: every model's minimum cacheable length (1,024 / 2,048 / 4,096 for Haiku aside).
SYSTEM = " ".join(["word"] * SYSTEM_TOKENS)
SSE_SEQUENCE = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


# -- the upstream recorder ------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it, and how its response went."""

    method: str
    path: str
    raw_headers: list[tuple[str, str]]
    body_chunks: int = 0
    completed: bool = False  # the final ``more_body=False`` message was sent
    finished: bool = False  # the app returned (or raised)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.raw_headers if k == name]


@dataclass
class Upstream:
    """ASGI wrapper around the emulator that records what reaches it."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = Seen(
            scope["method"],
            scope["path"],
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        )
        with self.lock:
            self.seen.append(record)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("body"):
                    record.body_chunks += 1
                if not message.get("more_body", False):
                    record.completed = True
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            record.finished = True

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    def api_requests(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == "POST"]


# -- helpers ------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass (a bound, not a speed check)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``, in exposition ``text``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def messages_body(*, stream: bool = False, system: Any = None, prompt: str = "Say hello.") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}],
    }
    if system is not None:
        body["system"] = system
    if stream:
        body["stream"] = True
    return body


def cached_system() -> list[dict[str, Any]]:
    return [{"type": "text", "text": SYSTEM, "cache_control": CC}]


def headers_for(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}


def fresh_key() -> str:
    # The emulator keeps one cache per key: a fresh key gives every test a cold cache.
    return f"test-key-{uuid.uuid4().hex[:12]}"


def raw_exchange(base_url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` bytes as-is over a fresh socket; the response status and raw bytes."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), data
    return int(status_line.split()[1]), data


def sse_events(lines: Iterator[str]) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            events.append((name, orjson.loads(line.removeprefix("data:").strip())))
    return events


def collapse(names: list[str]) -> list[str]:
    """Consecutive repeats collapsed (``delta, delta, delta`` -> ``delta``)."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


# -- fixtures -----------------------------------------------------------------------------------


@dataclass
class Proxy:
    url: str
    registry: CollectorRegistry
    log: structlog.testing.CapturingLogger

    def metrics(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200
        return response.text


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    return create_app(words_per_chunk=1)


@pytest.fixture(scope="module")
def upstream(emulator: Emulator) -> Iterator[tuple[Upstream, str]]:
    recorder = Upstream(emulator)
    with run_in_thread(recorder) as url:
        yield recorder, url


@pytest.fixture
def recorder(upstream: tuple[Upstream, str], emulator: Emulator) -> Upstream:
    emulator.reset()
    upstream[0].reset()
    return upstream[0]


@contextlib.contextmanager
def serve_in_thread(app: Any, **settings: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn (``server_options()`` updated by ``settings``) in a thread."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, **{**server_options(), **settings})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cachewatch-proxy", daemon=True)
    thread.start()
    assert wait_for(lambda: server.started or not thread.is_alive()), "the proxy did not start"
    assert server.started, "the proxy did not start"
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)


@contextlib.contextmanager
def start_proxy(
    upstream_url: str, *, server: dict[str, Any] | None = None, **options: Any
) -> Iterator[Proxy]:
    """Serve a fresh proxy to ``upstream_url`` (own registry, silent capturing logger).

    ``server``: uvicorn settings over :func:`server_options` (those of ``cachewatch proxy``).
    """
    registry = CollectorRegistry()
    log = structlog.testing.CapturingLogger()
    logger = structlog.wrap_logger(log, processors=[])
    app = create_proxy_app(upstream_url, registry=registry, logger=logger, **options)
    # Served with lifespan="on": the app closes its upstream client on its own loop at shutdown.
    with serve_in_thread(app, **(server or {})) as url:
        yield Proxy(url, registry, log)


@pytest.fixture
def proxy(upstream: tuple[Upstream, str], recorder: Upstream) -> Iterator[Proxy]:
    with start_proxy(upstream[1]) as served:
        yield served


@pytest.fixture(params=["httptools", "h11"])
def any_parser_proxy(
    request: pytest.FixtureRequest, upstream: tuple[Upstream, str], recorder: Upstream
) -> Iterator[Proxy]:
    """The proxy as ``cachewatch proxy`` serves it (httptools), and under uvicorn's h11."""
    server = {} if request.param == "httptools" else {"http": "h11", "loop": "asyncio"}
    with start_proxy(upstream[1], server=server) as served:
        yield served


# -- curl-style calls -------------------------------------------------------------------------


def test_json_call_like_curl(proxy: Proxy, upstream: tuple[Upstream, str], recorder: Upstream) -> None:
    key = fresh_key()
    body = messages_body()
    direct = httpx.post(f"{upstream[1]}/v1/messages", json=body, headers=headers_for(key), timeout=10)
    recorder.reset()
    through = httpx.post(f"{proxy.url}/v1/messages", json=body, headers=headers_for(key), timeout=10)

    assert through.status_code == 200, through.text
    assert through.headers["content-type"] == "application/json"
    assert through.headers["request-id"].startswith("req_")
    got, want = through.json(), direct.json()
    assert got.keys() == want.keys()
    assert got["type"] == "message"
    assert got["content"] == want["content"]  # same prompt, same deterministic reply
    assert got["usage"].keys() == want["usage"].keys()
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert got["usage"][name] == want["usage"][name], name
    assert got["usage"]["input_tokens"] > 0
    assert got["usage"]["output_tokens"] > 0
    assert len(through.content) == int(through.headers["content-length"])

    seen = recorder.api_requests()
    assert [(s.method, s.path) for s in seen] == [("POST", "/v1/messages")]
    text = proxy.metrics()
    assert metric(text, "cachewatch_requests_total", outcome="ok", api="messages", model=MODEL) == 1
    assert metric(text, "cachewatch_tokens_total", type="output") == got["usage"]["output_tokens"]
    assert metric(text, "cachewatch_time_to_first_token_seconds_count") == 0  # JSON: no TTFT


def test_streaming_call_like_curl(proxy: Proxy, recorder: Upstream) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/messages",
        json=messages_body(stream=True),
        headers=headers_for(fresh_key()),
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())

    names = [name for name, _ in events]
    assert collapse(names) == SSE_SEQUENCE
    assert all(data["type"] == name for name, data in events)
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert len(deltas) >= 2  # one word per frame: several frames really arrive
    final_usage = events[-2][1]["usage"]
    assert final_usage["output_tokens"] > 0

    text = proxy.metrics()
    assert metric(text, "cachewatch_requests_total", outcome="ok", api="messages") == 1
    assert metric(text, "cachewatch_tokens_total", type="output") == final_usage["output_tokens"]
    assert metric(text, "cachewatch_tokens_total", type="input") == final_usage["input_tokens"]
    assert metric(text, "cachewatch_time_to_first_token_seconds_count", api="messages", model=MODEL) == 1
    assert metric(text, "cachewatch_request_duration_seconds_count", api="messages", model=MODEL) == 1
    assert len(recorder.api_requests()) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_second_call_reads_the_cache(proxy: Proxy, stream: bool) -> None:
    key = fresh_key()
    usages = []
    for _ in range(2):
        body = messages_body(system=cached_system())
        response = httpx.post(f"{proxy.url}/v1/messages", json=body, headers=headers_for(key), timeout=10)
        assert response.status_code == 200, response.text
        usages.append(response.json()["usage"])
    if stream:  # and a streamed third call reads it too
        with httpx.stream(
            "POST",
            f"{proxy.url}/v1/messages",
            json=messages_body(system=cached_system(), stream=True),
            headers=headers_for(key),
            timeout=10,
        ) as response:
            events = sse_events(response.iter_lines())
        usages.append(events[0][1]["message"]["usage"])

    first, *later = usages
    assert first["cache_creation_input_tokens"] >= SYSTEM_TOKENS
    assert first["cache_read_input_tokens"] == 0
    for usage in later:
        assert usage["cache_read_input_tokens"] >= SYSTEM_TOKENS
        assert usage["cache_creation_input_tokens"] == 0

    text = proxy.metrics()
    read = metric(text, "cachewatch_tokens_total", type="cache_read")
    assert read > 0
    assert read == sum(u["cache_read_input_tokens"] for u in later)
    assert (
        metric(text, "cachewatch_tokens_total", type="cache_write_5m") == first["cache_creation_input_tokens"]
    )
    assert metric(text, "cachewatch_cache_savings_total") > 0
    assert metric(text, "cachewatch_requests_total", outcome="ok") == len(usages)


# -- no open relay ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST http://example.invalid/v1/messages HTTP/1.1\r\nHost: example.invalid\r\n",
        b"POST http://example.invalid/v1/messages HTTP/1.1\r\nHost: {proxy}\r\n",
        b"POST https://example.invalid:443/v1/messages HTTP/1.1\r\nHost: {proxy}\r\n",
    ],
    ids=["foreign-host", "proxy-host", "https-target"],
)
def test_absolute_uri_target_is_refused(
    any_parser_proxy: Proxy, recorder: Upstream, request_bytes: bytes
) -> None:
    proxy = any_parser_proxy
    body = orjson.dumps(messages_body())
    head = request_bytes.replace(b"{proxy}", proxy.url.removeprefix("http://").encode())
    request = (
        head
        + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    status, raw = raw_exchange(proxy.url, request + body)
    assert 400 <= status < 500, raw
    assert recorder.api_requests() == []
    assert metric(proxy.metrics(), "cachewatch_requests_total") == 0


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:443", "127.0.0.1.nip.io", "localhost.evil.example:8787"]
)
def test_foreign_host_header_is_refused_with_421(proxy: Proxy, recorder: Upstream, host: str) -> None:
    headers = {**headers_for(fresh_key()), "host": host}
    response = httpx.post(f"{proxy.url}/v1/messages", json=messages_body(), headers=headers, timeout=10)
    assert response.status_code == 421, response.text
    assert recorder.api_requests() == []
    assert recorder.seen == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8787"])
def test_metrics_are_not_served_to_a_foreign_host(proxy: Proxy, host: str) -> None:
    # A page on a name that re-resolves to 127.0.0.1 (DNS rebinding) must not read the
    # proxy's metrics (workspace and model names, costs) any more than use its upstream.
    response = httpx.get(f"{proxy.url}/metrics", headers={"host": host}, timeout=10)
    assert response.status_code == 421, response.text
    assert "# HELP" not in response.text


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_double_slash_path_is_refused(any_parser_proxy: Proxy, recorder: Upstream, method: str) -> None:
    proxy = any_parser_proxy
    host = proxy.url.removeprefix("http://").encode()
    request = (
        b"%s //evil.example/x HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        % (
            method.encode(),
            host,
        )
    )
    status, raw = raw_exchange(proxy.url, request)
    assert 400 <= status < 500, raw
    assert recorder.seen == []


# -- request size limit -------------------------------------------------------------------------


@pytest.fixture
def small_proxy(upstream: tuple[Upstream, str], recorder: Upstream) -> Iterator[Proxy]:
    with start_proxy(upstream[1], max_body=1_024) as served:
        yield served


def test_body_over_the_limit_is_413_with_content_length(small_proxy: Proxy, recorder: Upstream) -> None:
    body = orjson.dumps(messages_body(prompt=" ".join(["big"] * 1_500)))
    assert len(body) > 4_000
    response = httpx.post(
        f"{small_proxy.url}/v1/messages", content=body, headers=headers_for(fresh_key()), timeout=10
    )
    assert response.status_code == 413, response.text
    assert recorder.seen == []


def test_body_over_the_limit_is_413_when_chunked(small_proxy: Proxy, recorder: Upstream) -> None:
    body = orjson.dumps(messages_body(prompt=" ".join(["big"] * 1_500)))

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 256):
            yield body[i : i + 256]

    request = httpx.Request(
        "POST", f"{small_proxy.url}/v1/messages", content=pieces(), headers=headers_for(fresh_key())
    )
    assert request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in request.headers
    with httpx.Client(timeout=10) as client:
        response = client.send(request)
    assert response.status_code == 413, response.text
    assert recorder.seen == []


def test_body_under_the_limit_passes(small_proxy: Proxy, recorder: Upstream) -> None:
    body = orjson.dumps(messages_body())
    assert len(body) < 1_024
    response = httpx.post(
        f"{small_proxy.url}/v1/messages", content=body, headers=headers_for(fresh_key()), timeout=10
    )
    assert response.status_code == 200, response.text
    assert len(recorder.api_requests()) == 1


# -- client disconnect closes the upstream ------------------------------------------------------


def test_client_disconnect_mid_stream_closes_the_upstream() -> None:
    slow = Upstream(create_app(chunk_delay=0.25, words_per_chunk=1))
    with run_in_thread(slow) as upstream_url, start_proxy(upstream_url) as proxy:
        body = messages_body(stream=True)
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST", f"{proxy.url}/v1/messages", json=body, headers=headers_for(fresh_key())
            ) as r,
        ):
            assert r.status_code == 200
            first = next(r.iter_raw())
            assert first.startswith(b"event: message_start")
        # Leaving the blocks closes the half-read response and its connection.

        def aborted() -> float:
            return metric(proxy.metrics(), "cachewatch_requests_total", outcome="aborted")

        assert wait_for(lambda: aborted() >= 1), proxy.metrics()
        assert aborted() == 1
        assert metric(proxy.metrics(), "cachewatch_requests_total", outcome="ok") == 0
        # The emulator's response never ran to its end: the proxy closed the upstream stream.
        (seen,) = slow.api_requests()
        assert wait_for(lambda: seen.finished), "the emulator is still streaming"
        assert not seen.completed


# -- the upstream hop --------------------------------------------------------------------------


def exchange_until_closed(base_url: str, request: bytes) -> bytes:
    """Send ``request`` bytes as-is (ending with ``Connection: close``); every byte of the answer."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while piece := sock.recv(65536):
            data += piece
    return data


def test_upstream_gets_the_client_headers_and_no_others(proxy: Proxy, recorder: Upstream) -> None:
    # No User-Agent, Accept, Accept-Encoding or Content-Type from the client: the upstream
    # client must not add its own. Expect is answered by the proxy and not forwarded.
    body = orjson.dumps(messages_body())
    host = proxy.url.removeprefix("http://").encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\nanthropic-version: 2023-06-01\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (host, fresh_key().encode(), len(body))
    )
    answer = exchange_until_closed(proxy.url, request + body)
    final = answer.split(b"HTTP/1.1 100 Continue\r\n\r\n")[-1]
    assert final.startswith(b"HTTP/1.1 200 "), answer[:300]
    (seen,) = recorder.api_requests()
    assert sorted(name for name, _ in seen.raw_headers) == [
        "anthropic-version",
        "content-length",
        "host",
        "x-api-key",
    ]
    assert seen.header("content-length") == [str(len(body))]


class SetsCookie:
    """ASGI wrapper adding ``Set-Cookie`` to every response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"set-cookie", b"sid=one-client")]}
            await send(message)

        await self.app(scope, receive, with_cookie)


def test_upstream_cookies_are_not_kept_between_clients() -> None:
    cookie_setter = Upstream(SetsCookie(create_app()))
    with run_in_thread(cookie_setter) as upstream_url:
        # A host name, not an IP address: cookie jars refuse cookies from IP addresses.
        upstream_by_name = upstream_url.replace("127.0.0.1", "localhost")
        with start_proxy(upstream_by_name) as proxy:
            responses = [
                httpx.post(
                    f"{proxy.url}/v1/messages",
                    json=messages_body(),
                    headers=headers_for(fresh_key()),
                    timeout=10,
                )
                for _ in range(2)
            ]
        for response in responses:
            assert response.status_code == 200, response.text
            assert response.headers["set-cookie"] == "sid=one-client"  # relayed to its client...
    seen = cookie_setter.api_requests()
    assert len(seen) == 2
    assert [s.header("cookie") for s in seen] == [[], []]  # ...and never sent for another


def test_unreachable_upstream_is_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens once this socket is closed
    with start_proxy(f"http://127.0.0.1:{closed_port}") as proxy:
        response = httpx.post(
            f"{proxy.url}/v1/messages", json=messages_body(), headers=headers_for(fresh_key()), timeout=10
        )
        assert response.status_code == 502, response.text
        assert response.json()["error"]["message"] == "upstream unreachable"
        text = proxy.metrics()
        assert metric(text, "cachewatch_requests_total", outcome="transport_error") == 1


def test_silent_upstream_times_out_with_504() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:  # accept connections, read nothing, answer nothing
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with start_proxy(url, timeout=0.5) as proxy:
            response = httpx.post(
                f"{proxy.url}/v1/messages", json=messages_body(), headers=headers_for(fresh_key()), timeout=10
            )
            assert response.status_code == 504, response.text
            assert response.json()["error"]["message"] == "upstream timed out"
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(timeout=5)


# -- credentials --------------------------------------------------------------------------------

API_KEY = "sk-ant-api03-SECRETKEY-5f1e2d"
BEARER = "SECRETBEARER-9a8b7c"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_credentials_pass_through_and_are_never_exported(
    proxy: Proxy,
    upstream: tuple[Upstream, str],
    recorder: Upstream,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    headers = {
        "x-api-key": API_KEY,
        "authorization": f"Bearer {BEARER}",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
    }
    caplog.set_level(logging.DEBUG)
    body = messages_body(system=cached_system(), stream=stream)
    response = httpx.post(f"{proxy.url}/v1/messages", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text

    (seen,) = recorder.api_requests()
    assert seen.header("x-api-key") == [API_KEY]
    assert seen.header("authorization") == [f"Bearer {BEARER}"]
    assert seen.header("anthropic-version") == ["2023-06-01"]
    assert seen.header("anthropic-beta") == ["prompt-caching-2024-07-31"]
    # The upstream sees its own Host (the proxy sets it), not the proxy's address.
    assert seen.header("host") == [upstream[1].removeprefix("http://")]

    text = proxy.metrics()
    assert metric(text, "cachewatch_requests_total", outcome="ok") == 1
    events = [dict(call.kwargs) for call in proxy.log.calls]
    assert len(events) == 1
    exported = [text, repr(events), repr(proxy.log.calls), caplog.text]
    exported += [str(r.args) for r in caplog.records]
    for sink in exported:
        for secret in (API_KEY, BEARER, "SECRETKEY", "SECRETBEARER", "sk-ant-api03"):
            assert secret not in sink
    assert {s.labels.get("workspace") for f in text_string_to_metric_families(text) for s in f.samples} <= {
        None,
        "default",
    }


# -- CLI defaults -------------------------------------------------------------------------------


def test_proxy_binds_loopback_by_default() -> None:
    args = cli._parser().parse_args(["proxy", "--upstream", "https://api.anthropic.com"])
    assert args.listen == ("127.0.0.1", 8787)
    assert args.breakpoints == "auto"
    assert args.max_body > 0


def test_cli_limit_and_timeout_defaults_are_the_proxy_defaults() -> None:
    from dataclasses import asdict

    from cachewatch.proxy import ClientLimits, UpstreamTimeouts

    args = cli._parser().parse_args(["proxy", "--upstream", "https://api.anthropic.com"])
    assert (
        asdict(UpstreamTimeouts())
        == cli.UPSTREAM_DEFAULTS
        == {
            "connect": args.upstream_connect_timeout,
            "headers": args.upstream_headers_timeout,
            "idle": args.upstream_idle_timeout,
        }
    )
    assert (
        asdict(ClientLimits())
        == cli.CLIENT_DEFAULTS
        == {
            "head_timeout": args.client_head_timeout,
            "body_timeout": args.client_body_timeout,
            "request_timeout": args.client_request_timeout,
            "keep_alive_timeout": args.keep_alive_timeout,
            "send_timeout": args.client_send_timeout,
            "max_head_bytes": args.max_head_bytes,
            "max_headers": args.max_headers,
        }
    )
    assert args.workers == 1
    assert server_options()["timeout_keep_alive"] == ClientLimits().keep_alive_timeout


# -- a body the usage-chunk filter cannot decode --------------------------------------------------


async def test_a_compressed_stream_that_does_not_decode_is_cut_without_a_traceback() -> None:
    # With include_usage the proxy decodes a compressed stream for the client (to hide the
    # usage chunk). A body that does not decode must end like any upstream failing
    # mid-stream: the client connection is closed (visibly incomplete), the exchange is
    # counted, and nothing escapes the app (uvicorn would print "Exception in ASGI application").
    import gzip

    event = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"qwen-plus",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )
    good = gzip.compress(event * 50)
    corrupt = good[:20] + b"\xff" * 50 + good[70:]

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(corrupt))

    registry = CollectorRegistry()
    app = create_proxy_app(
        "http://upstream.test/compatible-mode/v1",
        transport=httpx.MockTransport(answer),
        registry=registry,
        include_usage=True,
        logger=structlog.get_logger("test"),
    )
    body = orjson.dumps(
        {"model": "qwen-plus", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    aborted: list[bool] = []
    sent: list[Message] = []
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/chat/completions",
        "raw_path": b"/chat/completions",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8787"), (b"content-type", b"application/json")],
        "cachewatch.abort": lambda: aborted.append(True),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert aborted == [True]  # the client connection is closed, never a clean end
    assert not any(m.get("more_body") is False for m in sent[1:])
    exposition = registry.get_sample_value(
        "cachewatch_requests_total",
        {
            "provider": "other",
            "api": "chat_completions",
            "model": "qwen-plus",
            "workspace": "default",
            "outcome": "transport_error",
        },
    )
    assert exposition == 1
