"""The transports under httpx and httpx2, sync and async: accounting, streaming, telemetry, pass-through."""

from __future__ import annotations

import gzip
import importlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import cachewatch

FAMILIES = ["httpx", "httpx2"]
MODES = [(f, s) for f in FAMILIES for s in ("sync", "async")]

ANTHROPIC_JSON = (
    b'{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-6",'
    b'"content":[{"type":"text","text":"Hello there"}],"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":12,"cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,'
    b'"cache_creation":{"ephemeral_5m_input_tokens":500,"ephemeral_1h_input_tokens":1500},"output_tokens":9}}'
)
DASHSCOPE_SSE = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_ds","type":"message","role":"assistant",'
    b'"model":"qwen3.6-plus","content":[],"usage":{"input_tokens":8834,"output_tokens":0}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"input_tokens":18,"cache_read_input_tokens":8831,"cache_creation_input_tokens":0,'
    b'"cache_creation":{"ephemeral_5m_input_tokens":0},"output_tokens":7}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
REQUEST = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
#: The label set of REQUEST's series.
LABELS = {"provider": "anthropic", "api": "messages", "model": "claude-sonnet-4-6", "workspace": "default"}


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Harness:
    """Builds a client of one family/mode around a MockTransport, and performs calls."""

    def __init__(self, family: str, mode: str) -> None:
        self.mod: Any = importlib.import_module(family)
        self.sync = mode == "sync"
        self.received: list[Any] = []

    def body(self, parts: list[bytes]) -> Any:
        if self.sync:

            def gen() -> Iterator[bytes]:
                yield from parts

            return gen()

        async def agen() -> AsyncIterator[bytes]:
            for p in parts:
                yield p

        return agen()

    def transport(self, respond: Any, **kwargs: Any) -> Any:
        def handler(request: Any) -> Any:
            request.read()
            self.received.append(request)
            status, headers, parts = respond(request)
            return self.mod.Response(status, headers=headers, content=self.body(parts))

        inner = self.mod.MockTransport(handler)
        cls = cachewatch.CacheWatchTransport if self.sync else cachewatch.AsyncCacheWatchTransport
        return cls(inner, **kwargs)

    def client(self, transport: Any) -> Any:
        cls = self.mod.Client if self.sync else self.mod.AsyncClient
        return cls(transport=transport, base_url="https://api.anthropic.com")

    async def post(self, client: Any, path: str = "/v1/messages", **kw: Any) -> Any:
        if self.sync:
            return client.post(path, **kw)
        return await client.post(path, **kw)

    async def stream_chunks(
        self, client: Any, path: str = "/v1/messages", limit: int | None = None, **kw: Any
    ):
        got: list[bytes] = []
        if self.sync:
            with client.stream("POST", path, **kw) as r:
                for c in r.iter_raw():
                    got.append(c)
                    if limit is not None and len(got) >= limit:
                        break
            return got
        async with client.stream("POST", path, **kw) as r:
            async for c in r.aiter_raw():
                got.append(c)
                if limit is not None and len(got) >= limit:
                    break
        return got


@pytest.fixture(params=MODES, ids=["-".join(m) for m in MODES])
def harness(request: pytest.FixtureRequest) -> Harness:
    return Harness(*request.param)


async def test_json_partition_labels_span_and_log(harness: Harness, telemetry: Any) -> None:
    t = harness.transport(
        lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]),
        breakpoints="off",
        **telemetry.kwargs,
    )
    client = harness.client(t)
    r = await harness.post(client, json=REQUEST)
    assert r.content == ANTHROPIC_JSON
    labels = LABELS
    assert telemetry.tokens(**labels) == {
        "input": 12,
        "cache_read": 3000,
        "cache_write_5m": 500,
        "cache_write_1h": 1500,
        "output": 9,
    }
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1
    (span,) = telemetry.spans()
    assert span.name == "chat claude-sonnet-4-6"
    a = span.attributes
    assert a["gen_ai.usage.input_tokens"] == 12 + 3000 + 2000
    assert a["gen_ai.usage.cache_read.input_tokens"] == 3000
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 2000
    assert a["gen_ai.usage.output_tokens"] == 9
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.response.id"] == "msg_01"
    assert list(a["gen_ai.response.finish_reasons"]) == ["end_turn"]
    assert a["server.address"] == "api.anthropic.com"
    assert a["server.port"] == 443
    (event,) = telemetry.events()
    assert event["event"] == "cachewatch.request"
    assert event["tokens"]["cache_write_1h"] == 1500
    assert event["outcome"] == "ok"


@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_sse_chunks_pass_through_and_merge_by_overwrite(
    harness: Harness, telemetry: Any, size: int
) -> None:
    parts = chunks_of(DASHSCOPE_SSE, size)
    t = harness.transport(
        lambda r: (200, {"content-type": "text/event-stream"}, parts), breakpoints="off", **telemetry.kwargs
    )
    client = harness.client(t)
    got = await harness.stream_chunks(client, json={**REQUEST, "model": "qwen3.6-plus", "stream": True})
    assert got == parts  # chunk for chunk, byte for byte
    labels = {"provider": "anthropic", "api": "messages", "model": "qwen3.6-plus", "workspace": "default"}
    tokens = telemetry.tokens(**labels)
    assert tokens == {"input": 18, "cache_read": 8831, "cache_write_5m": 0, "cache_write_1h": 0, "output": 7}
    assert (
        telemetry.value(
            "cachewatch_time_to_first_token_seconds_count",
            provider="anthropic",
            api="messages",
            model="qwen3.6-plus",
        )
        == 1
    )
    (span,) = telemetry.spans()
    assert span.attributes["gen_ai.usage.input_tokens"] == 18 + 8831
    assert span.attributes["gen_ai.request.stream"] is True


async def test_span_ends_when_body_ends_not_at_headers(harness: Harness, telemetry: Any) -> None:
    parts = chunks_of(DASHSCOPE_SSE, 50)
    t = harness.transport(lambda r: (200, {"content-type": "text/event-stream"}, parts), **telemetry.kwargs)
    client = harness.client(t)
    if harness.sync:
        with client.stream("POST", "/v1/messages", json=REQUEST) as r:
            assert telemetry.spans() == []
            it = r.iter_raw()
            first = next(it)
            assert first == parts[0]
            assert telemetry.spans() == []
            rest = list(it)
        assert [first, *rest] == parts
    else:
        async with client.stream("POST", "/v1/messages", json=REQUEST) as r:
            assert telemetry.spans() == []
            it = r.aiter_raw()
            first = await it.__anext__()
            assert telemetry.spans() == []
            rest = [c async for c in it]
        assert [first, *rest] == parts
    assert len(telemetry.spans()) == 1


async def test_abandoned_stream_is_aborted_with_usage_so_far(harness: Harness, telemetry: Any) -> None:
    head, tail = DASHSCOPE_SSE.split(b"event: content_block_start", 1)
    parts = [head, b"event: content_block_start" + tail]
    t = harness.transport(lambda r: (200, {"content-type": "text/event-stream"}, parts), **telemetry.kwargs)
    client = harness.client(t)
    got = await harness.stream_chunks(client, json=REQUEST, limit=1)
    assert got == parts[:1]
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="aborted", **labels) == 1
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 0
    # message_start reported the full prompt as uncached input: that is all we saw.
    assert telemetry.tokens(**labels)["input"] == 8834
    (span,) = telemetry.spans()
    assert span.attributes["cachewatch.outcome"] == "aborted"


async def test_a_stream_whose_body_ends_before_its_terminal_event_is_a_server_error(
    harness: Harness, telemetry: Any
) -> None:
    """The server ends the body after message_start and a delta: no message_delta, no
    message_stop. Not a complete response (the output count is message_start's
    placeholder): ``server_error``, ``incomplete_stream``, with the usage seen so far. The
    bytes reach the caller unchanged, read to the end."""
    cut = DASHSCOPE_SSE.split(b"event: content_block_stop", 1)[0]
    parts = chunks_of(cut, 50)
    t = harness.transport(lambda r: (200, {"content-type": "text/event-stream"}, parts), **telemetry.kwargs)
    assert await harness.stream_chunks(harness.client(t), json=REQUEST) == parts
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="server_error", **labels) == 1
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 0
    assert telemetry.tokens(**labels)["input"] == 8834
    (span,) = telemetry.spans()
    assert span.attributes["cachewatch.outcome"] == "server_error"
    assert span.attributes["error.type"] == "incomplete_stream"


async def test_close_after_terminal_event_is_ok(harness: Harness, telemetry: Any) -> None:
    """Closing right after message_stop, before the transport signals the end, is not an abort."""
    parts = [DASHSCOPE_SSE, b": trailing comment\n\n"]
    t = harness.transport(lambda r: (200, {"content-type": "text/event-stream"}, parts), **telemetry.kwargs)
    await harness.stream_chunks(harness.client(t), json=REQUEST, limit=1)
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1
    assert telemetry.value("cachewatch_requests_total", outcome="aborted", **labels) == 0


async def test_gzip_body_reaches_caller_unchanged_and_is_parsed(harness: Harness, telemetry: Any) -> None:
    compressed = gzip.compress(ANTHROPIC_JSON)
    parts = chunks_of(compressed, 3)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    t = harness.transport(lambda r: (200, headers, parts), **telemetry.kwargs)
    client = harness.client(t)
    assert await harness.stream_chunks(client, json=REQUEST) == parts
    r = await harness.post(client, json=REQUEST)
    assert r.content == ANTHROPIC_JSON
    assert (
        telemetry.tokens(
            provider="anthropic", api="messages", model="claude-sonnet-4-6", workspace="default"
        )["cache_read"]
        == 6000
    )


async def test_unrecognised_requests_pass_through_untouched(harness: Harness, telemetry: Any) -> None:
    t = harness.transport(
        lambda r: (200, {"content-type": "application/json"}, [b'{"ok":true}']), **telemetry.kwargs
    )
    client = harness.client(t)
    r = await harness.post(client, "/v1/embeddings", json={"model": "m", "input": "x"})
    assert r.content == b'{"ok":true}'
    if harness.sync:
        client.get("/v1/messages")
    else:
        await client.get("/v1/messages")
    assert telemetry.spans() == []
    assert "cachewatch_requests_total{" not in _exposition(telemetry)


async def test_inner_transport_exception_is_reraised_unchanged(harness: Harness, telemetry: Any) -> None:
    boom = harness.mod.ConnectError("refused")

    def respond(request: Any) -> Any:
        raise boom

    t = harness.transport(respond, **telemetry.kwargs)
    client = harness.client(t)
    with pytest.raises(harness.mod.ConnectError) as info:
        await harness.post(client, json=REQUEST)
    assert info.value is boom
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="transport_error", **labels) == 1
    (span,) = telemetry.spans()
    assert span.attributes["error.type"] == "ConnectError"


async def test_error_body_counts_client_error(harness: Harness, telemetry: Any) -> None:
    err = b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}'
    t = harness.transport(lambda r: (400, {"content-type": "application/json"}, [err]), **telemetry.kwargs)
    r = await harness.post(harness.client(t), json=REQUEST)
    assert r.status_code == 400
    assert r.content == err
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="client_error", **labels) == 1
    (span,) = telemetry.spans()
    assert span.attributes["error.type"] == "invalid_request_error"


async def test_nested_transports_do_not_double_count(harness: Harness, telemetry: Any) -> None:
    inner = harness.transport(
        lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]), **telemetry.kwargs
    )
    cls = type(inner)
    outer = cls(inner, **telemetry.kwargs)
    await harness.post(harness.client(outer), json=REQUEST)
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1
    assert len(telemetry.spans()) == 1


async def test_wrap_twice_does_not_double_count(harness: Harness, telemetry: Any) -> None:
    def handler(request: Any) -> Any:
        return harness.mod.Response(200, headers={"content-type": "application/json"}, content=ANTHROPIC_JSON)

    cls = harness.mod.Client if harness.sync else harness.mod.AsyncClient
    client = cls(
        transport=harness.mod.MockTransport(handler), base_url="https://api.anthropic.com", timeout=7
    )
    wrapped = cachewatch.wrap(client, **telemetry.kwargs)
    assert wrapped is client
    assert cachewatch.wrap(client, **telemetry.kwargs) is client  # the same options: nothing to do
    assert cachewatch.wrap(client) is client
    with pytest.raises(ValueError, match="already wrapped by cachewatch"):
        cachewatch.wrap(client, **telemetry.kwargs, breakpoints="off")  # not silently ignored
    assert client.timeout.read == 7
    await harness.post(client, json=REQUEST)
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1


async def test_observe_only_sends_request_bytes_unchanged(harness: Harness, telemetry: Any) -> None:
    body = b'{"model": "claude-sonnet-4-6",  "system": "' + b"x" * 9000 + b'", "messages": []}'
    t = harness.transport(
        lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]),
        breakpoints="off",
        **telemetry.kwargs,
    )
    await harness.post(harness.client(t), content=body, headers={"content-type": "application/json"})
    (sent,) = harness.received
    assert sent.content == body
    assert sent.headers["content-length"] == str(len(body))


def test_default_inner_transport_follows_the_request_family(telemetry: Any) -> None:
    import httpx
    import httpx2

    t = cachewatch.CacheWatchTransport(**telemetry.kwargs)
    assert isinstance(
        t._inner_for(httpx.Request("POST", "https://x/v1/messages"), "HTTPTransport"), httpx.HTTPTransport
    )
    assert isinstance(
        t._inner_for(httpx2.Request("POST", "https://x/v1/messages"), "HTTPTransport"), httpx2.HTTPTransport
    )
    t.close()


async def test_otel_metrics_with_meter_provider(harness: Harness, telemetry: Any) -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    t = harness.transport(
        lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]),
        meter_provider=meter_provider,
        **telemetry.kwargs,
    )
    await harness.post(harness.client(t), json=REQUEST)
    data = reader.get_metrics_data()
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= set(metrics)
    points = {
        p.attributes["gen_ai.token.type"]: p for p in metrics["gen_ai.client.token.usage"].data.data_points
    }
    assert points["input"].sum == 5012
    assert points["output"].sum == 9
    assert list(points["input"].explicit_bounds)[:3] == [1, 4, 16]


def _exposition(telemetry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(telemetry.registry).decode()


def test_the_policy_learns_from_responses_without_usage() -> None:
    # An endpoint that reports no usage (a chat-completions stream without include_usage,
    # a relay that strips it) still teaches the policy: what recurs is learnt from the
    # requests themselves. Two unrelated one-shot prompts: the second tail is not written.
    import httpx
    import orjson
    from prometheus_client import CollectorRegistry

    from cachewatch.planning._planner import Planner

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "msg_1", "type": "message", "content": []})

    planner = Planner()
    registry = CollectorRegistry()
    transport = cachewatch.CacheWatchTransport(
        httpx.MockTransport(handler), planner=planner, registry=registry
    )
    with httpx.Client(transport=transport, base_url="https://api.anthropic.com") as client:
        for question in ("hello", "goodbye"):
            body = {
                "model": "claude-sonnet-4-5",
                "max_tokens": 8,
                "system": "policy clause " * 900,
                "messages": [{"role": "user", "content": question * 300}],
            }
            assert client.post("/v1/messages", content=orjson.dumps(body)).status_code == 200
    skipped = registry.get_sample_value(
        "cachewatch_breakpoints_total",
        {"provider": "anthropic", "location": "messages", "action": "skipped_not_reused"},
    )
    assert skipped == 1


async def test_dashscope_native_stream_asked_by_header_is_a_streaming_request(
    harness: Harness, telemetry: Any
) -> None:
    # The dashscope SDK asks for a stream with the X-DashScope-SSE header alone: its body
    # has no "stream" field (research B.4, SPEC section 3).
    frame = (
        b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"choices":[{"finish_reason":"stop",'
        b'"message":{"role":"assistant","content":"x"}}]},"usage":{"input_tokens":10,"output_tokens":2,'
        b'"prompt_tokens_details":{"cached_tokens":6}},"request_id":"r1"}\n\n'
    )
    t = harness.transport(lambda r: (200, {"content-type": "text/event-stream"}, [frame]), **telemetry.kwargs)
    client = harness.client(t)
    body = {
        "model": "qwen-plus",
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "parameters": {},
    }
    path = "/api/v1/services/aigc/text-generation/generation"
    await harness.stream_chunks(client, path, json=body, headers={"X-DashScope-SSE": "enable"})
    await harness.post(client, path, json=body)  # no header: not a stream
    streamed, plain = telemetry.spans()
    assert streamed.attributes["gen_ai.usage.cache_read.input_tokens"] == 6
    assert streamed.attributes["gen_ai.request.stream"] is True
    assert "gen_ai.request.stream" not in plain.attributes


async def test_a_body_the_inner_transport_already_read_reaches_the_caller(
    harness: Harness, telemetry: Any
) -> None:
    """An inner transport may read the body before handing the response back (a retry or
    logging transport does): its stream is spent, and the caller must still get the bytes."""
    parts = chunks_of(ANTHROPIC_JSON, 50)
    mock = harness.transport(lambda r: (200, {"content-type": "application/json"}, parts))._inner

    class Reading:
        def handle_request(self, request: Any) -> Any:
            response = mock.handle_request(request)
            response.read()
            return response

        async def handle_async_request(self, request: Any) -> Any:
            response = await mock.handle_async_request(request)
            await response.aread()
            return response

    cls = cachewatch.CacheWatchTransport if harness.sync else cachewatch.AsyncCacheWatchTransport
    client = harness.client(cls(Reading(), breakpoints="off", **telemetry.kwargs))
    r = await harness.post(client, json=REQUEST)
    assert r.content == ANTHROPIC_JSON
    assert b"".join(await harness.stream_chunks(client, json=REQUEST)) == ANTHROPIC_JSON
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 2
    assert telemetry.tokens(**labels)["cache_read"] == 6000
    # Compressed: what was read is decoded, and goes on without its Content-Encoding.
    gz = chunks_of(gzip.compress(ANTHROPIC_JSON), 50)
    mock = harness.transport(
        lambda r: (200, {"content-type": "application/json", "content-encoding": "gzip"}, gz)
    )._inner
    client = harness.client(cls(Reading(), breakpoints="off", **telemetry.kwargs))
    r = await harness.post(client, json=REQUEST)
    assert r.content == ANTHROPIC_JSON
    assert "content-encoding" not in r.headers
    assert telemetry.tokens(**labels)["cache_read"] == 9000  # observed once more


@pytest.mark.parametrize("family", FAMILIES)
def test_threads_first_using_a_default_transport_share_one(
    family: str, telemetry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads sending at once through a new transport get one default inner transport:
    another made alongside would be lost to ``close()``, its connections with it."""
    import threading
    import time

    mod: Any = importlib.import_module(family)
    made: list[Any] = []

    class Slow:
        def __init__(self) -> None:
            time.sleep(0.05)  # a real HTTPTransport sets up its SSL context here
            made.append(self)
            self.closed = False

        def handle_request(self, request: Any) -> Any:
            return mod.Response(200, json={})

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(mod, "HTTPTransport", Slow)
    t = cachewatch.CacheWatchTransport(breakpoints="off", **telemetry.kwargs)
    request = mod.Request("POST", "https://api.anthropic.com/v1/messages", json=REQUEST)
    threads = [threading.Thread(target=t.handle_request, args=(request,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    t.close()
    assert len(made) == 1
    assert made[0].closed


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [1_000, 2_000_000])
async def test_a_large_body_is_planned_off_the_event_loop(family: str, size: int, monkeypatch: Any) -> None:
    """A body over 256 KiB is planned in a worker thread: planning is linear in the body,
    and on the loop it held up every other request and stream of that loop (a proxy's
    clients) for seconds. The request and its accounting are the same either way."""
    import threading

    from cachewatch.engine._engine import Engine

    threads: list[int] = []
    begin = Engine.begin

    def recording_begin(self: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return begin(self, **kwargs)

    monkeypatch.setattr(Engine, "begin", recording_begin)
    harness = Harness(family, "async")
    t = harness.transport(lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]))
    client = harness.client(t)
    words = " ".join(["word"] * (size // 5))
    request = {**REQUEST, "system": words, "messages": [{"role": "user", "content": "hi"}]}
    response = await harness.post(client, json=request)
    assert response.content == ANTHROPIC_JSON
    assert len(threads) == 1
    assert (threads[0] != threading.get_ident()) == (size > 256 * 1024)
    (sent,) = harness.received
    assert (b'"cache_control"' in sent.content) == (size > 256 * 1024)  # over the minimum: planned


@pytest.mark.parametrize("family", FAMILIES)
async def test_a_large_request_is_fingerprinted_off_the_event_loop_too(family: str, monkeypatch: Any) -> None:
    """The miss diagnosis of a request with thousands of blocks fingerprints it when it
    begins (in the worker thread that plans it), not when its response ends (on the
    caller's loop: about a second for 400,000 messages)."""
    import threading

    from cachewatch.diagnosis import _stage

    threads: list[int] = []
    fingerprints_of = _stage.fingerprints_of

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return fingerprints_of(*args, **kwargs)

    monkeypatch.setattr(_stage, "fingerprints_of", recording)
    harness = Harness(family, "async")
    t = harness.transport(lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]))
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 10}
        for i in range(5_001)
    ]
    response = await harness.post(harness.client(t), json={**REQUEST, "messages": messages})
    assert response.content == ANTHROPIC_JSON
    assert threads
    assert threading.get_ident() not in threads


async def test_an_error_response_closed_unread_is_its_statuss_outcome(
    harness: Harness, telemetry: Any
) -> None:
    """The SDKs close a streamed request's 429 or 5xx unread before they retry it: that
    attempt is the error its status says, not ``aborted``."""
    error = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    t = harness.transport(lambda r: (529, {"content-type": "application/json"}, [error]), **telemetry.kwargs)
    client = harness.client(t)
    if harness.sync:
        with client.stream("POST", "/v1/messages", json={**REQUEST, "stream": True}) as r:
            assert r.status_code == 529
    else:
        async with client.stream("POST", "/v1/messages", json={**REQUEST, "stream": True}) as r:
            assert r.status_code == 529
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="server_error", **labels) == 1
    assert telemetry.value("cachewatch_requests_total", outcome="aborted", **labels) == 0


async def test_a_followed_redirect_keeps_its_request_and_the_redirect_is_no_missing_usage(
    harness: Harness, telemetry: Any
) -> None:
    """A relay's 307: the redirect is no model response without usage, and the request the
    client sends again (its body an unread in-memory stream) keeps its model and planning."""

    def respond(request: Any) -> tuple[int, dict[str, str], list[bytes]]:
        if request.url.path.startswith("/old/"):
            return 307, {"location": "/new/v1/messages", "content-length": "0"}, [b""]
        return 200, {"content-type": "application/json"}, [ANTHROPIC_JSON]

    t = harness.transport(respond, **telemetry.kwargs)
    cls = harness.mod.Client if harness.sync else harness.mod.AsyncClient
    client = cls(transport=t, base_url="https://api.anthropic.com", follow_redirects=True)
    r = await harness.post(client, "/old/v1/messages", json=REQUEST)
    assert r.status_code == 200
    labels = LABELS
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 2
    assert telemetry.value("cachewatch_usage_unreported_total", **labels) == 0
    assert [s.name for s in telemetry.spans()] == ["chat claude-sonnet-4-6"] * 2


async def test_a_stream_field_in_a_tool_input_is_not_the_requests(harness: Harness, telemetry: Any) -> None:
    history = {
        **REQUEST,
        "messages": [
            {"role": "user", "content": "run it"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"stream": True}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
        ],
    }
    t = harness.transport(
        lambda r: (200, {"content-type": "application/json"}, [ANTHROPIC_JSON]), **telemetry.kwargs
    )
    await harness.post(harness.client(t), json=history)
    (span,) = telemetry.spans()
    assert not span.attributes.get("gen_ai.request.stream")


def test_a_sync_caller_interrupted_while_waiting_is_aborted(telemetry: Any) -> None:
    """Ctrl-C (any BaseException that is no Exception) while waiting for the headers: the
    caller gave up, as a cancelled task does in async code; not a transport error."""

    def interrupted(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    client = httpx.Client(
        transport=cachewatch.CacheWatchTransport(httpx.MockTransport(interrupted), **telemetry.kwargs)
    )
    with pytest.raises(KeyboardInterrupt):
        client.post("https://api.anthropic.com/v1/messages", json=REQUEST)
    assert telemetry.value("cachewatch_requests_total", outcome="aborted", provider="anthropic",
                           api="messages", model="claude-sonnet-4-6", workspace="default") == 1  # fmt: skip
    assert telemetry.value("cachewatch_requests_total", outcome="transport_error", provider="anthropic",
                           api="messages", model="claude-sonnet-4-6", workspace="default") == 0  # fmt: skip


@pytest.mark.parametrize(
    ("host", "path", "while_streaming"),
    [
        ("api.anthropic.com", "/v1/messages", "inserted"),
        ("dashscope-intl.aliyuncs.com", "/apps/anthropic/v1/messages", "skipped_in_flight"),
    ],
    ids=["anthropic", "dashscope"],
)
def test_a_streams_writes_are_readable_from_its_first_event_on_anthropic_and_its_end_on_dashscope(
    host: str, path: str, while_streaming: str
) -> None:
    """Anthropic: "after the first response begins" (research A.3); DashScope: the cache is
    created after the model has responded (B.2). A sibling planned while the first stream
    is still going reads the system prompt on Anthropic, and is held off writing it again
    on DashScope (it is nobody's to read yet)."""
    records: list[Any] = []

    class Capture:
        name = "capture"

        def start(self, info: Any) -> None:
            return None

        def finish(self, state: Any, record: Any) -> None:
            records.append(record)

    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-6",'
        b'"usage":{"input_tokens":10,"cache_creation_input_tokens":3000,"cache_read_input_tokens":0,'
        b'"output_tokens":1}}}\n\n'
    )
    end = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":5}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter([start, end]))

    client = httpx.Client(
        transport=cachewatch.CacheWatchTransport(
            httpx.MockTransport(handler), registry=CollectorRegistry(), sinks=[Capture()]
        )
    )
    system = "You are the support assistant of Example Corp. " + "Policy text. " * 700

    def body(question: str) -> dict[str, Any]:
        return {
            "model": "claude-sonnet-4-6",
            "max_tokens": 8,
            "stream": True,
            "system": system,
            "messages": [{"role": "user", "content": question}],
        }

    with client.stream("POST", f"https://{host}{path}", json=body("first question")) as first:
        chunks = first.iter_raw()
        next(chunks)  # the first event is out; the stream goes on
        with client.stream("POST", f"https://{host}{path}", json=body("second question")) as second:
            for _ in second.iter_raw():
                pass
        for _ in chunks:
            pass
    sibling = records[0]  # the second request ends first
    assert ("system", while_streaming) in sibling.breakpoints.decisions
