"""Fail-open (SPEC section 10): whatever goes wrong, the caller's traffic is byte-identical.

Every case runs the same call twice over the same recording inner transport: once
through a bare client and once through cachewatch. It then checks that:
* the inner transport received exactly the same request bytes (method, URL, raw headers, body);
* the caller saw exactly the same status, raw headers, raw chunks (``iter_raw``),
  decoded content and exception;
* cachewatch still counted the request (or, for unknown endpoints, counted nothing)
  and recorded each fault it survived in ``cachewatch_internal_errors_total{stage}``.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

import cachewatch.observing._observer
from _helpers import (
    ANTHROPIC_JSON_USAGE,
    ANTHROPIC_SSE_USAGE,
    COMBOS,
    JSON_HEADERS,
    OPENAI_URL,
    SSE_HEADERS,
    CallSpec,
    Recorder,
    Seen,
    Telemetry,
    anthropic_json,
    anthropic_request,
    anthropic_sse,
    fam,
    make_telemetry,
    response,
    send,
    split,
    sse,
    wrapped,
)
from cachewatch.accounting._records import TokenUsage
from cachewatch.planning._plan import Plan

READS = ("raw", "content")

#: Large enough that a planner would want to place a breakpoint if it were allowed to.
LONG_SYSTEM = "You are a meticulous assistant. " * 400


def run_pair(
    family: str,
    mode: str,
    spec: CallSpec,
    responder: Callable[[ModuleType, Any], Any],
    telemetry: Telemetry | None = None,
    **options: Any,
) -> tuple[list[Seen], list[Seen], Telemetry]:
    """The call bare and through cachewatch (once per read style); asserts identical traffic."""
    tel = telemetry or make_telemetry()
    base_rec = Recorder(fam(family), responder)
    base = [send(family, mode, base_rec.transport(), spec, read) for read in READS]
    kwargs = {**tel.kwargs, **options}
    cw_rec = Recorder(fam(family), responder)
    transport = wrapped(mode, cw_rec.transport(), **kwargs)
    got = [send(family, mode, transport, spec, read) for read in READS]

    assert len(base_rec.requests) == len(READS)
    assert cw_rec.requests == base_rec.requests, "request bytes changed"
    for b, g in zip(base, got, strict=True):
        assert g.comparable() == b.comparable(), "caller-visible response changed"
    return base, got, tel


def json_responder(body: bytes = b"", status: int = 200, headers=JSON_HEADERS, chunk: int = 23):
    body = body or anthropic_json()

    def respond(family: ModuleType, request: Any) -> Any:
        return response(family, status, split(body, chunk), headers)

    return respond


def sse_responder(body: bytes = b"", status: int = 200, chunk: int = 31):
    body = body or anthropic_sse()

    def respond(family: ModuleType, request: Any) -> Any:
        return response(family, status, split(body, chunk), SSE_HEADERS)

    return respond


# -- request side: inputs the planner must not touch --------------------------------------

STREAMED_PARTS = [
    b'{"model": "claude-sonnet-4-5", "max_tokens": 64, ',
    b'"system": ' + orjson.dumps(LONG_SYSTEM) + b", ",
    b'"messages": [{"role": "user", "content": "hi"}]}',
]

REQUEST_CASES = {
    "invalid_json": CallSpec(
        content=b'{"model": "claude-sonnet-4-5", "system": ' + orjson.dumps(LONG_SYSTEM) + b', "messages": ['
    ),
    "non_json": CallSpec(
        headers={"x-api-key": "sk-test", "content-type": "text/plain"},
        content=b"model=claude-sonnet-4-5&prompt=" + LONG_SYSTEM.encode(),
    ),
    "streamed_body": CallSpec(parts=STREAMED_PARTS),
}


@pytest.mark.parametrize("breakpoints", ["off", "auto"])
@pytest.mark.parametrize("case", sorted(REQUEST_CASES))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_untouchable_request_bodies_go_out_byte_identical(family, mode, case, breakpoints):
    spec = REQUEST_CASES[case]
    _, got, tel = run_pair(family, mode, spec, json_responder(), breakpoints=breakpoints)
    # The exchange is still observed: both calls counted, with usage from the response.
    assert tel.requests(api="messages", outcome="ok") == 2
    assert tel.tokens(api="messages") == {k: 2 * v for k, v in ANTHROPIC_JSON_USAGE.items()}
    assert len(tel.spans()) == 2
    assert got[1].content == anthropic_json()


@pytest.mark.parametrize("breakpoints", ["off", "auto"])
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "https://api.anthropic.com/v1/embeddings"),
        ("POST", "https://api.openai.com/v1/audio/speech"),
        ("GET", "https://api.anthropic.com/v1/messages"),
        ("PUT", "https://api.anthropic.com/v1/messages"),
    ],
    ids=["embeddings", "speech", "get_messages", "put_messages"],
)
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_unknown_endpoint_passes_through_untouched_and_uncounted(family, mode, method, url, breakpoints):
    body = orjson.dumps({"model": "claude-sonnet-4-5", "system": LONG_SYSTEM, "input": "x"})
    spec = CallSpec(url=url, method=method, content=body)
    _, _, tel = run_pair(family, mode, spec, json_responder(), breakpoints=breakpoints)
    for name in (
        "cachewatch_requests_total",
        "cachewatch_tokens_total",
        "cachewatch_request_duration_seconds_count",
        "cachewatch_internal_errors_total",
    ):
        assert tel.value(name) == 0, name
    assert tel.spans() == []
    assert tel.events() == []


# -- response side: odd bodies --------------------------------------------------------------

CORRUPT_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03this is not a deflate stream at all"

RESPONSE_CASES: dict[str, tuple[str, Callable[..., Any], dict[str, float]]] = {
    # name: (url, responder, {outcome: expected count over the two calls})
    "garbage_bytes": (
        "messages",
        json_responder(b"\x00\xff\xfe\x89PNG\r\n\x1a\nnot json \xc3\x28 at all" * 3),
        {"ok": 2},
    ),
    "garbage_untyped": (
        "messages",
        json_responder(b"<html><body>502 Bad Gateway</body></html>", status=200, headers=()),
        {"ok": 2},
    ),
    "truncated_json": ("messages", json_responder(anthropic_json()[:57]), {"ok": 2}),
    # A stream cut before its terminal event and any finish reason: the server's side ended
    # it (``incomplete_stream``); a JSON body cut short is unparsed, its status's outcome.
    "truncated_sse": ("messages", sse_responder(anthropic_sse()[:301]), {"server_error": 2}),
    "corrupt_gzip": (
        "messages",
        json_responder(CORRUPT_GZIP, headers=(*JSON_HEADERS, ("content-encoding", "gzip")), chunk=9),
        {},
    ),
    "anthropic_error_400": (
        "messages",
        json_responder(
            b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}',
            status=400,
        ),
        {"client_error": 2},
    ),
    "anthropic_error_529": (
        "messages",
        json_responder(
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', status=529
        ),
        {"server_error": 2},
    ),
    "openai_error_400": (
        "chat",
        json_responder(
            b'{"error":{"message":"Invalid model","type":"invalid_request_error","param":"model","code":null}}',
            status=400,
        ),
        {"client_error": 2},
    ),
    "openai_error_500": (
        "chat",
        json_responder(b'{"error":{"message":"The server had an error","type":"server_error"}}', status=500),
        {"server_error": 2},
    ),
    "sse_error_event_in_200": (
        "messages",
        sse_responder(
            sse(
                ("ping", {"type": "ping"}),
                ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            )
        ),
        {"server_error": 2},
    ),
    "unknown_sse_events": (
        "messages",
        sse_responder(
            anthropic_sse(
                extra=[
                    ("mystery_event", {"type": "mystery_event", "payload": {"usage": "not-a-dict"}}),
                    ("comment_like", "this data line is not JSON"),
                    ("message_annotation", {"type": "message_annotation", "usage": None}),
                ]
            )
            + b": keep-alive comment\n\nretry: 1000\n\n"
        ),
        {"ok": 2},
    ),
}


@pytest.mark.parametrize("case", sorted(RESPONSE_CASES))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_odd_response_bodies_reach_the_caller_unchanged(family, mode, case):
    api, responder, outcomes = RESPONSE_CASES[case]
    if api == "chat":
        spec = CallSpec(
            url=OPENAI_URL,
            headers={"authorization": "Bearer sk-test"},
            content=b'{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}',
        )
    else:
        spec = CallSpec(content=anthropic_request())
    _, got, tel = run_pair(family, mode, spec, responder, breakpoints="off")
    # Both calls are counted, whatever the body.
    assert tel.requests() == 2
    for outcome, n in outcomes.items():
        assert tel.requests(outcome=outcome) == n, outcome
    assert len(tel.spans()) == 2
    assert len(tel.events()) == 2
    if case == "corrupt_gzip":
        # The caller's own decoding error is untouched: same class, same message.
        assert type(got[1].error).__name__ == "DecodingError"
        assert got[0].raw_chunks == split(CORRUPT_GZIP, 9)
    if case == "unknown_sse_events":
        assert tel.tokens() == {k: 2 * v for k, v in ANTHROPIC_SSE_USAGE.items()}


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_valid_gzip_body_is_passed_compressed_and_still_counted(family, mode):
    body = gzip.compress(anthropic_json())
    responder = json_responder(body, headers=(*JSON_HEADERS, ("content-encoding", "gzip")), chunk=7)
    _, got, tel = run_pair(family, mode, CallSpec(content=anthropic_request()), responder, breakpoints="off")
    assert got[0].raw_chunks == split(body, 7)  # raw chunks stay compressed, exactly as sent
    assert got[1].content == anthropic_json()  # decoded by the client, as usual
    assert tel.tokens() == {k: 2 * v for k, v in ANTHROPIC_JSON_USAGE.items()}


# -- transport errors -------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_sse_stream_raising_midway_propagates_the_same_exception(family, mode):
    module = fam(family)
    error = module.ReadError("connection reset by peer")
    body = anthropic_sse()
    chunks = split(body, 40)

    def respond(f: ModuleType, request: Any) -> Any:
        return response(f, 200, chunks, SSE_HEADERS, error=error, raise_after=4)

    base, got, tel = run_pair(family, mode, CallSpec(content=anthropic_request(stream=True)), respond)
    for seen in (*base, *got):
        assert seen.error is error
    assert got[0].raw_chunks == chunks[:4]
    assert tel.requests(outcome="transport_error") == 2
    assert tel.requests() == 2
    spans = tel.spans()
    assert len(spans) == 2
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "ReadError"
    assert [e["outcome"] for e in tel.events()] == ["transport_error", "transport_error"]


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_inner_transport_error_is_reraised_unchanged(family, mode):
    module = fam(family)
    error = module.ConnectError("[Errno 111] Connection refused")

    def respond(f: ModuleType, request: Any) -> Any:
        raise error

    base, got, tel = run_pair(family, mode, CallSpec(content=anthropic_request()), respond)
    for seen in (*base, *got):
        assert seen.error is error
        assert seen.status is None
    assert tel.requests(outcome="transport_error") == 2
    assert tel.requests() == 2
    assert tel.faults() == 0
    assert [s.attributes["error.type"] for s in tel.spans()] == ["ConnectError", "ConnectError"]


# -- faults inside cachewatch ---------------------------------------------------------------


class _RaisingTracer:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer exploded")

    start_as_current_span = start_span


class RaisingTracerProvider(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _RaisingTracer()


class _RaisingHistogram:
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("histogram exploded")

    add = record


class _Meter:
    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        return _RaisingHistogram()

    create_counter = create_up_down_counter = create_gauge = create_histogram


class RaisingMeterProvider:
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return _Meter()


class RaisingLogger:
    def __getattr__(self, name: str) -> Any:
        def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"logger.{name} exploded")

        return boom


SINK_FAULTS = {
    "tracer": ("sink_otel", lambda: {"tracer_provider": RaisingTracerProvider()}),
    "meter": ("sink_otel_metrics", lambda: {"meter_provider": RaisingMeterProvider()}),
    "logger": ("sink_log", lambda: {"logger": RaisingLogger()}),
}


@pytest.mark.parametrize("body", ["json", "sse"])
@pytest.mark.parametrize("sink", sorted(SINK_FAULTS))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_raising_sink_leaves_traffic_identical_and_is_counted(family, mode, sink, body, caplog):
    stage, overrides = SINK_FAULTS[sink]
    tel = make_telemetry()
    responder = json_responder() if body == "json" else sse_responder()
    spec = CallSpec(content=anthropic_request(stream=body == "sse"))
    _, got, tel = run_pair(family, mode, spec, responder, telemetry=tel, breakpoints="off", **overrides())
    assert got[1].content == (anthropic_json() if body == "json" else anthropic_sse())
    assert tel.faults(stage) >= 1
    assert tel.faults() == tel.faults(stage)
    # The other sinks still saw both requests.
    expected_usage = ANTHROPIC_JSON_USAGE if body == "json" else ANTHROPIC_SSE_USAGE
    assert tel.requests(outcome="ok") == 2
    assert tel.tokens() == {k: 2 * v for k, v in expected_usage.items()}
    if sink != "tracer":
        assert len(tel.spans()) == 2
    if sink != "logger":
        assert len(tel.events()) == 2
    # Logged once per (stage, exception type), not once per request.
    fault_logs = [r for r in caplog.records if r.name == "cachewatch" and stage in r.getMessage()]
    assert len(fault_logs) == 1


OBSERVER_FAULTS = {"feed": "observe", "__init__": "observe", "result": "parse"}


@pytest.mark.parametrize("body", ["json", "sse"])
@pytest.mark.parametrize("method", sorted(OBSERVER_FAULTS))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_raising_response_observer_leaves_traffic_identical(family, mode, method, body, monkeypatch):
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("observer exploded")

    monkeypatch.setattr(cachewatch.observing._observer.ResponseObserver, method, boom)
    responder = json_responder() if body == "json" else sse_responder()
    spec = CallSpec(content=anthropic_request(stream=body == "sse"))
    _, got, tel = run_pair(family, mode, spec, responder, breakpoints="off")
    assert got[1].content == (anthropic_json() if body == "json" else anthropic_sse())
    assert tel.faults(OBSERVER_FAULTS[method]) >= 1
    assert tel.requests(outcome="ok") == 2
    assert len(tel.spans()) == 2
    assert len(tel.events()) == 2


class _FakePlanner:
    """A planner that honours the engine's contract (``PlannerProtocol``) and does nothing."""

    def plan(self, *, api: str, host: str, path: str, body: bytes, scope: str = "") -> Plan:
        return Plan(body=None)

    def started(self, plan: Plan, status_code: int = 200) -> None:
        pass

    def finished(self, plan: Plan, usage: TokenUsage | None = None) -> None:
        pass

    def observe(self, plan: Plan, usage: TokenUsage | None) -> None:
        pass


class RaisingPlanner(_FakePlanner):
    def plan(self, *, api: str, host: str, path: str, body: bytes, scope: str = "") -> Plan:
        raise RuntimeError("planner exploded")

    def observe(self, plan: Plan, usage: TokenUsage | None) -> None:
        raise AssertionError("observe must not be called without a plan")


class BadBodyPlanner(_FakePlanner):
    """Returns a plan whose body cannot be sent: rebuilding the request fails."""

    def plan(self, *, api: str, host: str, path: str, body: bytes, scope: str = "") -> Plan:
        return Plan(body=object())  # type: ignore[arg-type]


class RaisingFeedbackPlanner(_FakePlanner):
    def observe(self, plan: Plan, usage: TokenUsage | None) -> None:
        raise RuntimeError("feedback exploded")


PLANNER_FAULTS = {
    "plan": RaisingPlanner,
    "request_rebuild": BadBodyPlanner,
    "planner_feedback": RaisingFeedbackPlanner,
}


@pytest.mark.parametrize("stage", sorted(PLANNER_FAULTS))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_raising_planner_leaves_traffic_identical(family, mode, stage):
    body = orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "system": LONG_SYSTEM,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    _, _, tel = run_pair(
        family,
        mode,
        CallSpec(content=body),
        json_responder(),
        breakpoints="auto",
        planner=PLANNER_FAULTS[stage](),
    )
    assert tel.faults(stage) >= 1
    assert tel.requests(outcome="ok") == 2
    assert tel.tokens() == {k: 2 * v for k, v in ANTHROPIC_JSON_USAGE.items()}


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_fault_is_logged_once_without_its_message(family, mode, monkeypatch, caplog):
    secret = "FAULT-MESSAGE-SHOULD-NOT-BE-LOGGED"

    def boom(self: Any, chunk: bytes) -> None:
        raise ValueError(secret)

    monkeypatch.setattr(cachewatch.observing._observer.ResponseObserver, "feed", boom)
    caplog.set_level(logging.DEBUG, logger="cachewatch")
    _, _, tel = run_pair(family, mode, CallSpec(content=anthropic_request()), json_responder())
    assert tel.faults("observe") == 2
    records = [r for r in caplog.records if r.name == "cachewatch" and "observe" in r.getMessage()]
    assert len(records) == 1
    assert secret not in caplog.text


@pytest.mark.parametrize("stage", ["begin", "record"])
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_a_fault_after_planning_releases_the_planners_claims(family, mode, stage, monkeypatch):
    # The plan claims its static prefix (siblings hold back while it writes); a fault
    # later in begin (the original request then goes out) or while building the record
    # must still end those claims, or siblings would skip their markers for minutes.
    import cachewatch.engine._engine as engine_module
    import cachewatch.engine._exchange as exchange_module
    from cachewatch.planning._planner import Planner

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected")

    if stage == "begin":
        monkeypatch.setattr(engine_module.Engine, "_request_info", boom)
    else:
        monkeypatch.setattr(exchange_module, "new_usage_record", boom)
    planner = Planner()
    body = orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "system": LONG_SYSTEM,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    tel = make_telemetry()
    cw_rec = Recorder(fam(family), json_responder())
    transport = wrapped(mode, cw_rec.transport(), breakpoints="auto", planner=planner, **tel.kwargs)
    send(family, mode, transport, CallSpec(content=body), "content")
    assert tel.faults(stage) == 1
    assert planner.learner.claims() == 0  # type: ignore[attr-defined]
    if stage == "begin":
        assert cw_rec.requests[0].body == body  # the original bytes went out


@pytest.mark.parametrize("body", ["json", "sse"])
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_a_record_that_cannot_be_built_still_finishes_every_sink(family, mode, body, monkeypatch):
    # Each sink's finish is called exactly once per started exchange: a fault while
    # building the record must not leave the span open, nor the request uncounted.
    import cachewatch.engine._exchange as exchange_module

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(exchange_module, "new_usage_record", boom)
    responder = json_responder() if body == "json" else sse_responder()
    _, _, tel = run_pair(family, mode, CallSpec(content=anthropic_request()), responder, breakpoints="off")
    assert tel.faults("record") == len(READS)
    assert len(tel.spans()) == len(READS)
    assert tel.requests() == len(READS)
    assert len(tel.events()) == len(READS)


def test_a_fault_before_the_verdict_does_not_leave_the_request_in_the_diagnosis(monkeypatch):
    # A request left in flight in the miss diagnosis stands for a write that may be read
    # (write_in_flight) until the 10,000 cap evicts it: a fault must not leave it there.
    import httpx
    from prometheus_client import CollectorRegistry

    import cachewatch
    from cachewatch.accounting._records import Outcome

    def respond(request):
        return httpx.Response(
            200,
            content=b'{"usage": {"input_tokens": 5, "output_tokens": 1}}',
            headers={"content-type": "application/json"},
        )

    transport = cachewatch.CacheWatchTransport(httpx.MockTransport(respond), registry=CollectorRegistry())
    client = httpx.Client(transport=transport, base_url="https://api.anthropic.com")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected")

    system = "You answer questions about the shop's return policy. " * 200  # marked: diagnosed
    body = orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 8,
            "system": system,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    monkeypatch.setattr(Outcome, "from_status", boom)
    client.post("/v1/messages", content=body)
    monkeypatch.undo()
    assert transport.engine.diagnosis is not None
    assert transport.engine.diagnosis.diagnoser._inflight == {}
