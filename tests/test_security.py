"""Canary tests (SPEC section 10): no key, token, prompt or completion text in any sink.

Distinctive canaries are planted in the API key, the bearer token, the prompt and the
completion (JSON, SSE and an error body that echoes the prompt). After each exchange,
everything cachewatch exported is collected: the Prometheus exposition, every span
(name, attributes, events, links, status) in an in-memory exporter, every structlog
event, and every stdlib ``logging`` record of the ``cachewatch`` loggers at DEBUG. No
canary (nor the shared ``CANARY`` stem, which catches truncated copies) may appear,
including when faults are injected with exception messages that quote the canaries.
"""

from __future__ import annotations

import hashlib
import logging
from types import ModuleType
from typing import Any

import orjson
import pytest
import structlog
from prometheus_client import generate_latest

import cachewatch.observing._observer
from _helpers import (
    COMBOS,
    JSON_HEADERS,
    OPENAI_URL,
    SSE_HEADERS,
    CallSpec,
    Recorder,
    Telemetry,
    fam,
    label_values,
    make_telemetry,
    metric_samples,
    response,
    send,
    split,
    sse,
    wrapped,
)

API_KEY = "sk-ant-CANARYKEY-123"
BEARER = "CANARYBEARER-456"
PROMPT = "CANARYPROMPT-789"
COMPLETION = "CANARYCOMPLETION-000"
CANARIES = (API_KEY, BEARER, PROMPT, COMPLETION, "CANARY", "sk-ant-")

HEADERS = {
    "x-api-key": API_KEY,
    "authorization": f"Bearer {BEARER}",
    "anthropic-version": "2023-06-01",
}


def _anthropic_request(stream: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": f"System prompt with {PROMPT} inside.",
        "messages": [{"role": "user", "content": f"Please repeat {PROMPT} back to me."}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _chat_request() -> bytes:
    return orjson.dumps(
        {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"Please repeat {PROMPT} back to me."}]}
    )


USAGE = {
    "input_tokens": 10,
    "cache_read_input_tokens": 20,
    "cache_creation_input_tokens": 0,
    "output_tokens": 5,
}

JSON_BODY = orjson.dumps(
    {
        "id": "msg_01SAFEID",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": f"Sure: {COMPLETION} (you said {PROMPT})"}],
        "stop_reason": "end_turn",
        "usage": USAGE,
    }
)

SSE_BODY = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01SAFEID",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "usage": USAGE,
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": f"Sure: {COMPLETION}"},
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" {PROMPT}"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}},
    ),
    ("message_stop", {"type": "message_stop"}),
)

ANTHROPIC_ERROR_BODY = orjson.dumps(
    {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": f"prompt is too long: '{PROMPT}...' ({API_KEY})",
        },
    }
)
OPENAI_ERROR_BODY = orjson.dumps(
    {
        "error": {
            "message": f"Content policy: '{PROMPT}' / {COMPLETION}",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "content_filter",
        }
    }
)
#: The bare-string shape (Ollama, vLLM, many relays): the string is a free-text message.
STRING_ERROR_BODY = orjson.dumps(
    {"error": f"Invalid request: the prompt '{PROMPT}' exceeds the context window"}
)
SSE_ERROR_BODY = sse(
    ("message_start", {"type": "message_start", "message": {"id": "msg_01SAFEID", "usage": USAGE}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": COMPLETION}}),
    (
        "error",
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": f"Overloaded while echoing {PROMPT}"},
        },
    ),
)

#: name: (url, request body, status, headers, response body)
SCENARIOS: dict[str, tuple[str, bytes, int, Any, bytes]] = {
    "json": ("https://api.anthropic.com/v1/messages", _anthropic_request(), 200, JSON_HEADERS, JSON_BODY),
    "sse": ("https://api.anthropic.com/v1/messages", _anthropic_request(True), 200, SSE_HEADERS, SSE_BODY),
    "anthropic_error": (
        "https://api.anthropic.com/v1/messages",
        _anthropic_request(),
        400,
        JSON_HEADERS,
        ANTHROPIC_ERROR_BODY,
    ),
    "openai_error": (OPENAI_URL, _chat_request(), 400, JSON_HEADERS, OPENAI_ERROR_BODY),
    "string_error": (OPENAI_URL, _chat_request(), 400, JSON_HEADERS, STRING_ERROR_BODY),
    "sse_error_event": (
        "https://api.anthropic.com/v1/messages",
        _anthropic_request(True),
        200,
        SSE_HEADERS,
        SSE_ERROR_BODY,
    ),
}


def _responder(status: int, headers: Any, body: bytes):
    def respond(family: ModuleType, request: Any) -> Any:
        return response(family, status, split(body, 13), headers)

    return respond


def everything_exported(tel: Telemetry, caplog: pytest.LogCaptureFixture, captured: list[Any]) -> str:
    """All text cachewatch exported through every sink, in one string."""
    parts = [generate_latest(tel.registry).decode()]
    for span in tel.exporter.get_finished_spans():
        parts.append(span.name)
        parts.append(repr(dict(span.attributes or {})))
        for event in span.events:
            parts.append(event.name)
            parts.append(repr(dict(event.attributes or {})))
        parts.extend(repr(dict(link.attributes or {})) for link in span.links)
        parts.append(repr(span.status.description))
        parts.append(span.to_json())
    parts.append(repr(tel.log.calls))
    parts.append(repr(captured))
    for record in caplog.records:
        if record.name == "cachewatch" or record.name.startswith("cachewatch."):
            parts.append(record.getMessage())
            parts.append(repr(record.args))
            parts.append(record.exc_text or "")
            parts.append(repr(record.__dict__))
    return "\n".join(parts)


def assert_no_canary(text: str) -> None:
    lowered = text.lower()
    for canary in CANARIES:
        assert canary.lower() not in lowered, f"{canary!r} leaked into telemetry"


def _run(
    family: str, mode: str, scenario: str, caplog: pytest.LogCaptureFixture, **options: Any
) -> tuple[Telemetry, str]:
    url, body, status, headers, response_body = SCENARIOS[scenario]
    tel = make_telemetry()
    caplog.set_level(logging.DEBUG, logger="cachewatch")
    rec = Recorder(fam(family), _responder(status, headers, response_body))
    transport = wrapped(mode, rec.transport(), **{**tel.kwargs, **options})
    spec = CallSpec(url=url, headers=dict(HEADERS), content=body)
    with structlog.testing.capture_logs() as captured:
        seen = [send(family, mode, transport, spec, read) for read in ("raw", "content")]
    # The caller still gets the canaries: nothing was redacted from the traffic itself.
    assert seen[1].content == response_body
    assert b"".join(seen[0].raw_chunks) == response_body
    assert all(r.body == body for r in rec.requests)
    assert all(dict(r.headers)[b"x-api-key"] == API_KEY.encode() for r in rec.requests)
    return tel, everything_exported(tel, caplog, captured)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_no_canary_in_any_sink(family, mode, scenario, caplog):
    tel, text = _run(family, mode, scenario, caplog)
    # The exchange was observed (so the sinks had the chance to leak).
    assert tel.requests() == 2
    assert len(tel.spans()) == 2
    assert len(tel.events()) == 2
    assert "cachewatch_requests_total" in text
    assert_no_canary(text)


def _feed_quoting_the_body(self: Any, chunk: bytes) -> None:
    raise ValueError(chunk.decode("utf-8", "replace"))


def _result_quoting(self: Any) -> Any:
    raise RuntimeError(JSON_BODY.decode() + SSE_BODY.decode())


class _QuotingPlanner:
    def plan(self, *, body: bytes, **kwargs: Any) -> Any:
        raise ValueError(body.decode())

    def observe(self, plan: Any, usage: Any) -> None:  # pragma: no cover - never reached
        pass


class _QuotingLogger:
    def info(self, event: str, **fields: Any) -> None:
        raise RuntimeError(f"cannot log {fields!r} with key {API_KEY}")


FAULTS = {
    "observer_feed": lambda mp: mp.setattr(
        cachewatch.observing._observer.ResponseObserver, "feed", _feed_quoting_the_body
    ),
    "observer_result": lambda mp: mp.setattr(
        cachewatch.observing._observer.ResponseObserver, "result", _result_quoting
    ),
    "planner": lambda mp: {"planner": _QuotingPlanner(), "breakpoints": "auto"},
    "logger": lambda mp: {"logger": _QuotingLogger()},
}


@pytest.mark.parametrize("scenario", ["json", "sse", "anthropic_error"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_no_canary_when_faults_quote_request_data(family, mode, fault, scenario, caplog, monkeypatch):
    options = FAULTS[fault](monkeypatch) or {}
    tel, text = _run(family, mode, scenario, caplog, **options)
    assert tel.faults() >= 1  # the fault really happened
    assert any(r.name == "cachewatch" for r in caplog.records)  # and was logged
    assert tel.requests() == 2
    assert_no_canary(text)


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_no_canary_in_transport_errors(family, mode, caplog):
    module = fam(family)
    connect = module.ConnectError(f"refused for {API_KEY} / Bearer {BEARER} / {PROMPT}")
    read = module.ReadError(f"reset while reading {COMPLETION}")
    tel = make_telemetry()
    caplog.set_level(logging.DEBUG, logger="cachewatch")

    calls = iter(range(100))

    def respond(f: ModuleType, request: Any) -> Any:
        if next(calls) % 2 == 0:
            raise connect
        return response(f, 200, split(SSE_BODY, 50), SSE_HEADERS, error=read, raise_after=2)

    transport = wrapped(mode, Recorder(module, respond).transport(), **tel.kwargs)
    spec = CallSpec(headers=dict(HEADERS), content=_anthropic_request(True))
    with structlog.testing.capture_logs() as captured:
        seen = [send(family, mode, transport, spec, "raw") for _ in range(2)]
    assert seen[0].error is connect
    assert seen[1].error is read
    assert tel.requests(outcome="transport_error") == 2
    assert_no_canary(everything_exported(tel, caplog, captured))


# -- workspace labels ---------------------------------------------------------------------------


def _workspaces_seen(family: str, mode: str, url: str, headers: dict[str, str], **options: Any) -> set[str]:
    tel = make_telemetry()
    rec = Recorder(fam(family), _responder(200, JSON_HEADERS, JSON_BODY))
    transport = wrapped(mode, rec.transport(), **{**tel.kwargs, **options})
    send(family, mode, transport, CallSpec(url=url, headers=headers, content=_anthropic_request()), "content")
    assert tel.requests() == 1
    labels = label_values(tel.registry, "cachewatch_requests_total", "workspace")
    labels |= label_values(tel.registry, "cachewatch_tokens_total", "workspace")
    for span in tel.spans():
        labels.add(span.attributes["cachewatch.workspace"])
    labels |= {e["workspace"] for e in tel.events()}
    for label in labels:
        for secret in (API_KEY, BEARER):
            assert label != secret
            assert not secret.startswith(label), (label, secret)
            assert not secret.endswith(label), (label, secret)
            assert label not in secret, (label, secret)
            assert secret not in label, (label, secret)
    assert_no_canary(generate_latest(tel.registry).decode())
    return labels


def _fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


ANTHROPIC = "https://api.anthropic.com/v1/messages"
KEY_ONLY = {"x-api-key": API_KEY}
BEARER_ONLY = {"authorization": f"Bearer {BEARER}"}


@pytest.mark.parametrize(
    ("url", "headers", "mapping", "expected"),
    [
        (ANTHROPIC, KEY_ONLY, None, "default"),
        (ANTHROPIC, KEY_ONLY, {"sk-ant-OTHERKEY": "team-z"}, "default"),
        (ANTHROPIC, KEY_ONLY, {API_KEY: "team-a"}, "team-a"),
        (ANTHROPIC, KEY_ONLY, {_fingerprint(API_KEY): "team-a"}, "team-a"),
        (ANTHROPIC, BEARER_ONLY, None, "default"),
        (ANTHROPIC, BEARER_ONLY, {BEARER: "team-b"}, "team-b"),
        (ANTHROPIC, HEADERS, {API_KEY: "team-a", BEARER: "team-b"}, "team-a"),
        (
            "https://llm-ws7a1b2c3d.ap-southeast-1.maas.aliyuncs.com/apps/anthropic/v1/messages",
            KEY_ONLY,
            None,
            "llm-ws7a1b2c3d",
        ),
        (
            "https://llm-ws7a1b2c3d.ap-southeast-1.maas.aliyuncs.com/apps/anthropic/v1/messages",
            KEY_ONLY,
            {API_KEY: "team-a"},
            "team-a",
        ),
    ],
    ids=[
        "unmapped",
        "other-key-mapped",
        "mapped",
        "mapped-by-fingerprint",
        "bearer-unmapped",
        "bearer-mapped",
        "both-headers",
        "dashscope-workspace-host",
        "mapping-wins-over-host",
    ],
)
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_workspace_label_is_never_derived_from_the_key(family, mode, url, headers, mapping, expected):
    options = {"workspaces": mapping} if mapping is not None else {}
    assert _workspaces_seen(family, mode, url, dict(headers), **options) == {expected}


def test_many_unmapped_keys_share_the_default_workspace():
    tel = make_telemetry()
    rec = Recorder(fam("httpx"), _responder(200, JSON_HEADERS, JSON_BODY))
    transport = wrapped("sync", rec.transport(), workspaces={API_KEY: "team-a"}, **tel.kwargs)
    for i in range(300):
        headers = {"x-api-key": f"sk-ant-CANARYKEY-{i:04d}"}
        send("httpx", "sync", transport, CallSpec(headers=headers, content=_anthropic_request()), "content")
    send("httpx", "sync", transport, CallSpec(headers=KEY_ONLY, content=_anthropic_request()), "content")
    samples = metric_samples(tel.registry, "cachewatch_requests_total")
    by_workspace = {lab["workspace"]: v for lab, v in samples}
    assert by_workspace == {"default": 300.0, "team-a": 1.0}
    assert_no_canary(generate_latest(tel.registry).decode())
