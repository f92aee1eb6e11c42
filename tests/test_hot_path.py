"""The per-request fast paths give exactly what the straightforward code gives.

Each fast path (observe-only overhead work) is checked against its reference: the
model sniffer against the full regex, the skipped SSE chunks against byte-by-byte
decoding, the positional record factories against the dataclass constructors, the
cached Prometheus series against ``labels()``, the in-place response stream swap
against a pre-read response.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import httpx2
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.accounting._records import (
    Breakpoints,
    Cost,
    MissVerdict,
    Outcome,
    ParsedResponse,
    RequestInfo,
    TokenUsage,
    UsageRecord,
    new_cost,
    new_token_usage,
    new_usage_record,
)
from cachewatch.engine._endpoints import _MODEL_RE, _unescape, sniff_model
from cachewatch.observing._observer import ResponseObserver
from cachewatch.observing._sse import SSEDecoder
from cachewatch.planning._learning import Advice
from cachewatch.sinks.logs import log_fields
from cachewatch.sinks.otel import span_attributes
from cachewatch.sinks.prometheus import _adder, metrics_for
from cachewatch.transport._transport import (
    _BODY_HEADERS,
    _ENGINE_HEADERS,
    _body_headers,
    _engine_headers,
    _has_host,
    _outgoing,
)

# -- model sniffing --------------------------------------------------------------------


def _reference_model(body: bytes) -> str | None:
    match = _MODEL_RE.search(body)
    return _unescape(match.group(1)) if match is not None else None


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"claude-sonnet-4-6","max_tokens":5}',
        b'{"max_tokens": 5, "model" :\t"qwen3-max"}',
        b'{"model": "a\\"quoted\\" name"}',
        b'{"model": "caf\\u00e9"}',
        b'{"model": ""}',
        b'{"model": 5}',
        b'{"model": "' + b"x" * 200 + b'"}',
        b'{"model": "' + b"x" * 201 + b'"}',
        b'{"model": "unterminated',
        b'{"messages": []}',
    ],
)
def test_single_model_key_is_sniffed_as_the_full_regex_does(body: bytes) -> None:
    assert sniff_model(body) == _reference_model(body)


def test_several_model_keys_still_fall_back_to_a_parse() -> None:
    body = json.dumps({"tools": [{"input_schema": {"model": "tool-x"}}], "model": "claude-x"}).encode()
    assert sniff_model(body) == "claude-x"


# -- SSE chunks skipped without decoding ---------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


START = _event(
    "message_start",
    {"type": "message_start", "message": {"id": "m1", "model": "claude-x", "usage": {"input_tokens": 7}}},
)
DELTA = _event("content_block_delta", {"type": "content_block_delta", "delta": {"text": "hi "}})
PING = b": keep-alive\n\nevent: ping\ndata: {}\n\n"
END = _event(
    "message_delta",
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
) + _event("message_stop", {"type": "message_stop"})


def _observe(chunks: list[bytes]) -> ParsedResponse:
    observer = ResponseObserver("messages", content_type="text/event-stream", content_encoding=None)
    for chunk in chunks:
        observer.feed(chunk)
    return observer.result()


@pytest.mark.parametrize(
    "chunks",
    [
        [START, DELTA, DELTA, PING, DELTA, END],
        # A needle-free chunk that completes an event begun earlier must not be skipped.
        [START, END[:-2], b"\n\n"],
        [START, END[: END.index(b"data:")], END[END.index(b"data:") :]],
        # CR line ends and a held-back CR before a skippable-looking chunk.
        [START.replace(b"\n", b"\r\n"), DELTA, END.replace(b"\n", b"\r")],
        [START[:-1] + b"\r", b"\n" + DELTA, END],
    ],
)
def test_skipped_chunks_change_nothing(chunks: list[bytes]) -> None:
    body = b"".join(chunks)
    reference = _observe([body[i : i + 1] for i in range(len(body))])
    assert _observe(chunks) == reference
    assert reference.usage == TokenUsage(input=7, output=3)
    assert reference.complete


def test_decoder_is_idle_only_between_events() -> None:
    decoder = SSEDecoder()
    assert decoder.idle
    decoder.feed(b"event: x\n")
    assert not decoder.idle
    decoder.feed(b"data: 1\n\n")
    assert decoder.idle
    decoder.feed(b"data: 2")
    assert not decoder.idle


# -- records ---------------------------------------------------------------------------------


INFO = RequestInfo("anthropic", "messages", "claude-x", "default", "claude-x", "api.anthropic.com", 443)


def test_factories_build_the_same_frozen_values() -> None:
    usage = new_token_usage(1, 2, 3, 4, 5, None)
    assert usage == TokenUsage(1, 2, 3, 4, 5)
    assert hash(usage) == hash(TokenUsage(1, 2, 3, 4, 5))
    cost = new_cost(1.0, 0.5, 0.25, "USD")
    assert cost == Cost(1.0, 0.5, 0.25, "USD")
    args: dict[str, Any] = {
        "request": INFO,
        "outcome": Outcome.OK,
        "status_code": 200,
        "stream": True,
        "usage": usage,
        "response_model": "claude-x",
        "response_id": "m1",
        "finish_reasons": ("end_turn",),
        "error_type": None,
        "duration": 0.5,
        "time_to_first_token": 0.1,
        "cost": cost,
        "breakpoints": Breakpoints("anthropic", (("system", "inserted"), ("messages", "kept"))),
        "miss": MissVerdict("ttl_expired", position=3, block="messages.1.content.0"),
        "provider_miss_reason": "system_changed",
        "provider_missed_tokens": 1_200,
        "advice": None,
        "cache_mode": "explicit",
        "usage_reported": True,
        "unparsed": False,
        "observation_truncated": "sse_event",
        "shadow": None,
    }
    assert new_usage_record(*args.values()) == UsageRecord(**args)
    with pytest.raises(AttributeError):
        usage.input = 9  # type: ignore[misc]


def test_the_planners_factories_follow_the_field_order() -> None:
    # The planner calls them positionally: every field given, in declaration order.
    from dataclasses import fields

    from cachewatch.planning._plan import Placement, Plan, new_placement, new_plan

    for cls, make in ((Plan, new_plan), (Placement, new_placement)):
        values = [f"v{i}" for i in range(len(fields(cls)))]  # distinct: a swap shows
        built = make(*values)
        assert type(built) is cls
        assert [getattr(built, f.name) for f in fields(cls)] == values
        with pytest.raises(AttributeError):  # still frozen
            setattr(built, fields(cls)[0].name, "x")


def test_slot_factories_build_what_the_constructor_builds_on_every_path() -> None:
    # A frozen class is built through a same-layout builder whose __class__ becomes the
    # class; a mutable one directly; a class whose layout no builder can share (a slotted
    # base, a __weakref__ slot) through its slot setters. Each gives the constructor's object.
    from dataclasses import dataclass, fields

    from cachewatch.accounting._records import slot_factory

    @dataclass(frozen=True, slots=True)
    class Frozen:
        a: int
        b: str | None
        c: tuple[int, ...]

    @dataclass(slots=True)
    class Mutable:
        a: int
        b: str | None
        c: tuple[int, ...]

    @dataclass(frozen=True, slots=True, weakref_slot=True)
    class WithWeakref:
        a: int
        b: str | None
        c: tuple[int, ...]

    @dataclass(frozen=True, slots=True)
    class Base:
        a: int

    @dataclass(frozen=True, slots=True)
    class Derived(Base):
        b: str | None
        c: tuple[int, ...]

    for cls in (Frozen, Mutable, WithWeakref, Derived):
        make = slot_factory(cls)
        built = make(1, None, (2, 3))
        assert type(built) is cls
        assert built == cls(1, None, (2, 3))  # type: ignore[call-arg]
        assert [getattr(built, f.name) for f in fields(cls)] == [1, None, (2, 3)]
        if cls is Mutable:
            built.a = 5
            assert built.a == 5
        else:
            assert hash(built) == hash(cls(1, None, (2, 3)))  # type: ignore[call-arg]
            with pytest.raises(AttributeError):  # still frozen
                built.a = 5  # type: ignore[misc]


def test_slot_replace_is_dataclasses_replace_and_defaults_may_be_left_out() -> None:
    # The diagnosis store's entries are built and refreshed through these.
    from dataclasses import replace

    from cachewatch.diagnosis._store import Entry, new_entry, replace_entry

    given = {
        "written_at": 1.0,
        "refreshed_at": 2.0,
        "ttl": 300.0,
        "model": "m",
        "tokens": 7,
        "position": 3,
        "readable_at": 1.5,
    }
    built = new_entry(**given, cached=False, written_tokens=4)
    assert type(built) is Entry
    assert built == Entry(**given, cached=False, written_tokens=4)  # type: ignore[arg-type]
    assert new_entry(*given.values()) == Entry(**given)  # type: ignore[arg-type]
    for changes in (
        {},
        {"read": True, "refreshed_at": 9.0},
        {"hashes": b"ab", "tools": b"c", "wasted": True},
    ):
        assert replace_entry(built, **changes) == replace(built, **changes)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        replace_entry(built, no_such_field=1)
    with pytest.raises(AttributeError):  # still frozen
        replace_entry(built, read=True).read = False  # type: ignore[misc]


def test_new_layout_is_the_constructors_layout() -> None:
    # Every field set (an unset slot would raise here), each at the dataclass default,
    # and no list or dict shared between two layouts.
    from dataclasses import fields

    from cachewatch.planning._layout import Layout, new_layout

    built, other = new_layout("messages"), new_layout("messages")
    assert built == Layout("messages")
    for f in fields(Layout):
        value = getattr(built, f.name)
        if isinstance(value, (list, dict)):
            assert value is not getattr(other, f.name)


def test_placement_paths_and_tokens_are_position_path_and_tok() -> None:
    # placement() inlines both for message positions (string content and content lists).
    from cachewatch.planning._layout import CUM, position_path
    from cachewatch.planning._rewrite import placement, tok
    from cachewatch.planning._tokens import TokenEstimator
    from cachewatch.planning._walk import walk

    body = {
        "model": "claude-sonnet-4-5",
        "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
        "system": [{"type": "text", "text": "s" * 300}],
        "messages": [
            {"role": "user", "content": "hello " * 50},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": [{"type": "text", "text": "c"}]},
        ],
    }
    counter = TokenEstimator().prefix(model="claude-sonnet-4-5", provider="anthropic")
    layout = walk("messages", body, counter)
    assert layout is not None
    for i, pos in enumerate(layout.positions):
        for ratio in (1.0, 0.83, 1.37):
            made = placement(pos, i, "inserted", "5m", "tail", ratio)
            assert (made.location, made.index, made.position) == (pos[0], pos[1], i)
            assert made.path == position_path(pos)
            assert made.prefix_tokens == tok(pos[CUM], ratio)


def test_parsed_response_is_immutable() -> None:
    parsed = ParsedResponse(response_id="x")
    with pytest.raises(AttributeError):
        parsed.response_id = "y"  # type: ignore[misc]
    assert parsed._replace(unparsed=True).unparsed


def test_outcome_label_is_its_value() -> None:
    for outcome in Outcome:
        assert outcome.label == outcome.value
        assert type(outcome.label) is str


@pytest.mark.parametrize("value", [0.0, 1e-7, 0.0001234, 0.1234564, 12.3456789, 1e-9 * 12345, 0.0000125])
def test_log_rounding_matches_round(value: float) -> None:
    record = new_usage_record(
        INFO,
        Outcome.OK,
        200,
        True,
        None,
        None,
        None,
        (),
        None,
        value,
        value,
        new_cost(value, value, value, "USD"),
        None,
        None,
        None,
        None,
        None,
        None,
        True,
        False,
        None,
        None,
    )
    fields = log_fields(record)
    # Equal to round(), but for half-way cases where it may be one unit of the last digit off.
    for key, digits in (("duration_s", 6), ("time_to_first_token_s", 6), ("cost", 9), ("cache_savings", 9)):
        assert math.isclose(fields[key], round(value, digits), rel_tol=0, abs_tol=1.01 * 10**-digits)
    assert fields["duration_s"] == round(value, 6) or value == 0.0000125
    assert fields["outcome"] == "ok"


# -- prometheus -------------------------------------------------------------------------------


def test_cached_series_are_the_labelled_children() -> None:
    metrics = metrics_for(CollectorRegistry())
    series = metrics.series("anthropic", "messages", "claude-x", "default")
    assert metrics.series("anthropic", "messages", "claude-x", "default") is series
    series.request("ok")(1)
    series.request("ok")(1)
    for add, amount in zip(series.token_children(), (1, 2, 3, 4, 5), strict=True):
        add(amount)
    labels = ("anthropic", "messages", "claude-x", "default")
    assert metrics.requests.labels(*labels, "ok")._value.get() == 2
    assert [metrics.tokens.labels(*labels, t)._value.get() for t in ("input", "output")] == [1, 5]


def test_adder_falls_back_to_the_public_inc() -> None:
    class Child:
        total = 0.0

        def inc(self, amount: float) -> None:
            self.total += amount

    child = Child()
    _adder(child)(2.5)
    assert math.isclose(child.total, 2.5)


# -- span attributes ------------------------------------------------------------------------


def _reference_span_stage_attributes(record: UsageRecord) -> dict[str, Any]:
    """The stage attributes as ``span_attributes`` first built them: from ``record.extra``."""
    attrs: dict[str, Any] = {}
    for key, value in record.extra.items():
        if isinstance(value, (str, bool, int, float)):
            attrs[f"cachewatch.{key}"] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            attrs[f"cachewatch.{key}"] = list(value)
    return attrs


_INFO = RequestInfo("anthropic", "messages", "m", "default", "m", "api.anthropic.com", 443)
_DECISIONS = (
    ("system", "inserted"),
    ("messages", "skipped_below_minimum"),
    ("messages", "inserted"),
    ("tools", "kept"),
)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"breakpoints": Breakpoints("anthropic", _DECISIONS)},
        {"breakpoints": Breakpoints("", _DECISIONS[:1])},
        {"breakpoints": Breakpoints("anthropic", ())},
        {"breakpoints": Breakpoints("anthropic", _DECISIONS), "unparsed": True},
        {"breakpoints": Breakpoints("relay", _DECISIONS), "usage_reported": False, "cache_mode": "implicit"},
        {"observation_truncated": "json_body"},
        {"provider_miss_reason": "model_changed", "provider_missed_tokens": 40},
        {"miss": MissVerdict("prefix_changed_system", 0, "system.0", "text", 1200, 0, None, "ttl_expired")},
        {
            "breakpoints": Breakpoints("anthropic", _DECISIONS),
            "advice": Advice("system.0:first_line", "text", 900),
        },
    ],
)
def test_span_stage_attributes_are_those_of_extra(fields: dict[str, Any]) -> None:
    record = UsageRecord(_INFO, Outcome.OK, 200, usage=TokenUsage(1, 2, 3, 0, 4), **fields)
    attrs = span_attributes(record)
    stage = {k: v for k, v in attrs.items() if k.startswith("cachewatch.") and k not in _FIXED_SPAN_KEYS}
    reference = _reference_span_stage_attributes(record)
    assert stage == reference
    assert list(stage) == list(reference)  # same order


_FIXED_SPAN_KEYS = {
    "cachewatch.outcome",
    "cachewatch.usage.uncached_input_tokens",
    "cachewatch.usage.cache_creation.ephemeral_5m.input_tokens",
    "cachewatch.usage.cache_creation.ephemeral_1h.input_tokens",
}


# -- request headers ------------------------------------------------------------------------


@pytest.mark.parametrize("family", [httpx, httpx2])
@pytest.mark.parametrize(
    "raw",
    [
        [(b"X-Api-Key", b"sk-1"), (b"Content-Type", b"application/json")],
        [(b"authorization", b"Bearer abc"), (b"AUTHORIZATION", b"Bearer def")],
        [(b"anthropic-beta", b"a"), (b"x-stainless-os", b"Linux"), (b"Anthropic-Beta", b"b,c")],
        [(b"api-key", b"k"), (b"Content-Encoding", b"gzip"), (b"x-api-key", b"")],
        [(b"x-api-key", "s\u00e9".encode()), (b"authorization", b"Bearer x")],
        [(b"x-api-key", "s\u00e9".encode("latin-1"))],
        [],
    ],
)
def test_engine_headers_read_as_headers_get_does(family: Any, raw: list[tuple[bytes, bytes]]) -> None:
    headers = family.Headers(raw)
    found = _engine_headers(headers)
    for name in _ENGINE_HEADERS.values():
        assert found.get(name) == headers.get(name), name
        assert (name in found) == (name in headers), name


class _RawOnly:
    """Headers that offer only ``raw`` (no httpx field list): read the generic way."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw


@pytest.mark.parametrize("family", [httpx, httpx2])
@pytest.mark.parametrize(
    "raw",
    [
        [(b"Host", b"api.example"), (b"X-Api-Key", b"sk-1"), (b"Content-Type", b"application/json")],
        [(b"authorization", b"Bearer abc"), (b"AUTHORIZATION", b"Bearer def"), (b"HOST", b"h")],
        [(b"anthropic-beta", b"a"), (b"Content-Type", b"text/event-stream"), (b"Anthropic-Beta", b"b,c")],
        [(b"content-encoding", b"gzip"), (b"Content-Encoding", b"br")],
        [(b"x-api-key", "s\u00e9".encode()), (b"authorization", b"Bearer x")],
        [],
    ],
)
def test_header_reads_agree_with_and_without_the_field_list(
    family: Any, raw: list[tuple[bytes, bytes]]
) -> None:
    headers = family.Headers(raw)
    plain = _RawOnly(headers.raw)
    engine = _engine_headers(headers)
    if engine is not headers:
        assert engine == _engine_headers(plain)
    assert _body_headers(headers) == _body_headers(plain)
    assert set(_body_headers(headers)) <= set(_BODY_HEADERS.values())
    assert _has_host(headers) == _has_host(plain) == ("host" in headers)


class _Rebuilds:
    """What ``_outgoing`` reads of an exchange that planned a new body."""

    def __init__(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.new_body = body
        self.new_headers = headers
        self.engine = None


@pytest.mark.parametrize("family", [httpx, httpx2])
@pytest.mark.parametrize("new_headers", [None, {"anthropic-beta": "x"}])
def test_a_rebuilt_request_has_the_headers_of_a_copy_with_the_new_length(
    family: Any, new_headers: dict[str, str] | None
) -> None:
    client = family.Client(base_url="https://api.example")
    request = client.build_request(
        "POST", "/v1/messages", content=b'{"a":1}', headers={"X-Api-Key": "k", "Anthropic-Beta": "b"}
    )
    body = b'{"a":1,"cache_control":{"type":"ephemeral"}}'
    rebuilt = _outgoing(_Rebuilds(body, new_headers), request)  # type: ignore[arg-type]
    want = request.headers.copy()
    want["Content-Length"] = str(len(body))
    for name, value in (new_headers or {}).items():
        want[name] = value
    assert rebuilt.headers.raw == want.raw
    assert rebuilt.headers.encoding == want.encoding
    assert rebuilt.content == body
    assert rebuilt.method == request.method
    assert rebuilt.url == request.url
    assert rebuilt.extensions == request.extensions
    assert request.content == b'{"a":1}'  # the caller's request is left alone
    client.close()


# -- response wrapping ------------------------------------------------------------------------


RESPONSE = json.dumps(
    {"id": "m1", "type": "message", "model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 2}}
).encode()


@pytest.mark.parametrize("streamed", [True, False])
def test_streamed_and_pre_read_responses_are_both_counted(streamed: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        content: Any = iter((RESPONSE,)) if streamed else RESPONSE
        return httpx.Response(200, headers={"content-type": "application/json"}, content=content)

    registry = CollectorRegistry()
    transport = cachewatch.CacheWatchTransport(
        httpx.MockTransport(handler), breakpoints="off", registry=registry
    )
    with httpx.Client(transport=transport, base_url="https://api.anthropic.com") as client:
        for _ in range(2):
            response = client.post("/v1/messages", content=b'{"model":"claude-x"}')
            assert response.content == RESPONSE
    value = registry.get_sample_value(
        "cachewatch_tokens_total",
        {
            "provider": "anthropic",
            "api": "messages",
            "model": "claude-x",
            "workspace": "default",
            "type": "input",
        },
    )
    assert value == 6


@pytest.mark.parametrize("family_name", ["httpx", "httpx2"])
@pytest.mark.parametrize("with_host", [True, False])
def test_the_rebuilt_request_is_the_one_content_would_build(family_name: str, with_host: bool) -> None:
    # _outgoing gives the planned body as a stream when the Host header is there (the
    # content= path would only re-normalise every header): the same request either way.
    import importlib
    from types import SimpleNamespace

    from cachewatch.transport._transport import _outgoing

    family = importlib.import_module(family_name)
    headers = {"Content-Type": "application/json", "X-Custom": b"a\xe9", "Content-Length": "2"}
    if with_host:
        headers = {"Host": "api.example.com", **headers}
    request = family.Request(
        "post", "https://api.example.com/v1/messages", headers=headers, content=b"{}", extensions={"k": 1}
    )
    body = b'{"model":"m","messages":[]}'
    exchange: Any = SimpleNamespace(new_body=body, new_headers={"anthropic-beta": "x"})
    rebuilt = _outgoing(exchange, request)
    expected_headers = request.headers.copy()
    expected_headers["Content-Length"] = str(len(body))
    expected_headers["anthropic-beta"] = "x"
    expected = family.Request(
        request.method, request.url, headers=expected_headers, content=body, extensions=request.extensions
    )
    assert type(rebuilt) is type(expected)
    assert rebuilt.method == expected.method == "POST"
    assert rebuilt.url == expected.url
    assert rebuilt.headers.raw == expected.headers.raw
    assert rebuilt.headers.encoding == expected.headers.encoding
    assert rebuilt.content == expected.content == body
    assert type(rebuilt.stream) is type(expected.stream)
    assert list(rebuilt.stream) == list(expected.stream)
    assert rebuilt.extensions == expected.extensions
    assert rebuilt.extensions is not request.extensions
