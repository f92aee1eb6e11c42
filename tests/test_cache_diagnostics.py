"""Anthropic cache diagnostics, case by case, through the real anthropic SDK and ``wrap()``.

The documented shape (anthropic-sdk-python ``types/beta/beta_diagnostics.py``, the
cache-diagnostics page at platform.claude.com, relay captures): the request opts in with
``"diagnostics": {"previous_message_id": <id or null>}``; the Message (or, streamed, the
``message_start`` message) carries ``diagnostics``, which is

* ``null``: nothing diverged, or nothing to compare;
* ``{"cache_miss_reason": null}``: the comparison was still pending;
* ``{"cache_miss_reason": {"type": T, "cache_missed_input_tokens": N}}`` with T one of
  ``model_changed``, ``system_changed``, ``tools_changed``, ``messages_changed``;
* ``{"cache_miss_reason": {"type": T}}`` with T ``previous_message_not_found`` or
  ``unavailable`` (no token count).

The first four become ``miss_reason="provider_reported"`` with the type as its detail; the
last two say nothing about this request's cache, so cachewatch's own verdict stands.
"""

from __future__ import annotations

import itertools
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.accounting._records import UsageRecord

MODEL = "claude-sonnet-4-6"
INFORMATIVE = ("model_changed", "system_changed", "tools_changed", "messages_changed")
UNINFORMATIVE = ("previous_message_not_found", "unavailable")


class Capture:
    name = "capture"

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def start(self, info: Any) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        self.records.append(record)


def _message(n: int, diagnostics: Any) -> dict[str, Any]:
    return {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1_500,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
        },
        "diagnostics": diagnostics,
    }


def _sse(message: dict[str, Any]) -> bytes:
    start = {**message, "content": [], "stop_reason": None}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        # No diagnostics on message_delta (research Q2): the message_start copy is the one.
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return b"".join(b"event: " + n.encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n" for n, d in events)


def _run(second: Any, *, stream: bool) -> tuple[list[dict[str, Any]], list[UsageRecord]]:
    """Two turns of one conversation; the second response carries ``diagnostics=second``."""
    sent: list[dict[str, Any]] = []
    ids = itertools.count(1)

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = orjson.loads(request.read())
        sent.append({"body": body, "beta": request.headers.get("anthropic-beta")})
        n = next(ids)
        message = _message(n, None if n == 1 else second)
        if body.get("stream"):
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=_sse(message))
        return httpx2.Response(200, json=message)

    capture = Capture()
    client = cachewatch.wrap(
        anthropic.Anthropic(
            api_key="k",
            base_url="https://api.anthropic.com",
            http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
            max_retries=0,
        ),
        cache_diagnostics=True,
        breakpoints="off",
        sinks=[capture],
        registry=CollectorRegistry(),
    )
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    for turn in range(2):
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=8, system="be brief", messages=messages) as s:
                s.get_final_message()
        else:
            client.messages.create(model=MODEL, max_tokens=8, system="be brief", messages=messages)
        messages = [
            *messages,
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"more {turn}"},
        ]
    return sent, capture.records


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_the_first_turn_opts_in_with_null_and_the_next_names_the_previous_message(stream: bool) -> None:
    """Nothing is stored for a request that omits ``diagnostics``: turn 1 sends ``null``."""
    sent, _ = _run(None, stream=stream)
    assert [s["body"]["diagnostics"] for s in sent] == [
        {"previous_message_id": None},
        {"previous_message_id": "msg_1"},
    ]
    assert all("cache-diagnosis-2026-04-07" in (s["beta"] or "") for s in sent)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("reason", INFORMATIVE)
def test_a_structural_reason_is_reported_with_its_missed_tokens(reason: str, stream: bool) -> None:
    diagnostics = {"cache_miss_reason": {"type": reason, "cache_missed_input_tokens": 1_200}}
    _, records = _run(diagnostics, stream=stream)
    extra = records[-1].extra
    assert extra["miss_reason"] == "provider_reported"
    assert extra["miss_detail"] == reason
    assert extra["provider_miss_reason"] == reason
    assert extra["provider_missed_input_tokens"] == 1_200
    assert "provider_miss_reason" not in records[0].extra


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("reason", UNINFORMATIVE)
def test_a_reason_about_the_comparison_itself_leaves_the_local_verdict(reason: str, stream: bool) -> None:
    _, records = _run({"cache_miss_reason": {"type": reason}}, stream=stream)
    extra = records[-1].extra
    assert extra["provider_miss_reason"] == reason  # passed through on the span and log event
    assert "provider_missed_input_tokens" not in extra
    assert extra.get("miss_reason") != "provider_reported"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    "diagnostics", [None, {"cache_miss_reason": None}], ids=["no-divergence", "comparison-pending"]
)
def test_no_reason_while_pending_or_without_divergence(diagnostics: Any, stream: bool) -> None:
    _, records = _run(diagnostics, stream=stream)
    extra = records[-1].extra
    assert "provider_miss_reason" not in extra
    assert extra.get("miss_reason") != "provider_reported"
    assert records[-1].outcome.label == "ok"
