"""The typed record fields reach every sink alike: custom sinks, Prometheus, OTel spans, logs.

Through the real anthropic SDK wrapped by :func:`cachewatch.wrap`, against the emulator:
a system prompt whose first line is the current time, followed by a long stable part.
From the third request on the planner says which block changes and what moving it would
make cacheable (``Plan.advice``); the record carries it as ``record.advice``, and each
bundled sink renders the same value.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import cachewatch
from _helpers import make_telemetry
from cachewatch.accounting._records import Breakpoints, RequestInfo, UsageRecord
from cachewatch.emulator import create_app, run_in_thread
from cachewatch.sinks.prometheus import advice_block_label

_WORDS = ["handbook", "leave", "policy", "expense", "travel", "laptop", "badge", "holiday", "payroll"]


def words(seed: str, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n))


class Records:
    """A custom sink: keeps every record it is given."""

    name = "records"

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_in_thread(create_app()) as url:
        yield url


HANDBOOK = "You answer questions about the staff handbook. " + words("handbook", 2_500)


def _timestamped(base_url: str, key: str, n: int) -> tuple[Records, Any]:
    sink = Records()
    telemetry = make_telemetry()
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0),
        sinks=[sink],
        workspaces={key: "handbook"},
        **telemetry.kwargs,
    )
    for q in range(n):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=32,
            system=f"Current time: 2026-05-04 09:{q:02d} UTC.\n" + HANDBOOK,
            messages=[{"role": "user", "content": f"Question {q}: " + words(f"q{q}", 30)}],
        )
    return sink, telemetry


def test_the_prefix_advice_reaches_every_sink_through_a_real_client(base_url: str) -> None:
    sink, telemetry = _timestamped(base_url, "advice-key", 5)
    records = sink.records
    assert len(records) == 5
    assert records[0].advice is None  # one request says nothing about what changes
    advised = [r for r in records if r.advice is not None]
    assert len(advised) >= 2, [r.advice for r in records]
    last = records[-1].advice
    assert last is not None
    assert last.block == "system:first_line"
    assert last.kind == "text"
    # The stable part: about 2,500 words of the handbook (the emulator billed the whole prompt).
    prompt = records[-1].usage.prompt_total if records[-1].usage else 0
    assert 0.5 * prompt < last.tokens < prompt

    # The span and the log event carry the same advice, under the documented names.
    spans = telemetry.spans()
    events = telemetry.events()
    assert len(spans) == len(events) == 5
    for record, span, event in zip(records, spans, events, strict=True):
        advice = record.advice
        if advice is None:
            assert "cachewatch.prefix_advice.block" not in span.attributes
            assert "prefix_advice.block" not in event
            continue
        assert span.attributes["cachewatch.prefix_advice.block"] == advice.block
        assert span.attributes["cachewatch.prefix_advice.kind"] == advice.kind
        assert span.attributes["cachewatch.prefix_advice.tokens"] == advice.tokens
        assert event["prefix_advice.block"] == advice.block
        assert event["prefix_advice.kind"] == advice.kind
        assert event["prefix_advice.tokens"] == advice.tokens

    # Prometheus: the tokens that would have been cacheable, by a bounded block label.
    counted = telemetry.value(
        "cachewatch_volatile_prefix_tokens_total",
        provider=records[-1].request.provider,  # the emulator's loopback host: "other"
        model="claude-sonnet-4-6",
        workspace="handbook",
        block="system:first_line",
    )
    assert counted == sum(r.advice.tokens for r in advised if r.advice is not None)


def test_a_stable_prompt_gets_no_advice_anywhere(base_url: str) -> None:
    sink = Records()
    telemetry = make_telemetry()
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key="stable-key", base_url=base_url, max_retries=0),
        sinks=[sink],
        **telemetry.kwargs,
    )
    for q in range(5):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=32,
            system=HANDBOOK,
            messages=[{"role": "user", "content": f"Question {q}: " + words(f"s{q}", 30)}],
        )
    assert [r.advice for r in sink.records] == [None] * 5
    assert telemetry.value("cachewatch_volatile_prefix_tokens_total") == 0


def test_breakpoint_decisions_reach_custom_sinks_as_prometheus_counts_them(base_url: str) -> None:
    sink, telemetry = _timestamped(base_url, "breakpoints-key", 3)
    decisions: dict[tuple[str, str], int] = {}
    for record in sink.records:
        assert isinstance(record.breakpoints, Breakpoints)
        assert record.breakpoints.profile == "anthropic"
        for pair in record.breakpoints.decisions:
            decisions[pair] = decisions.get(pair, 0) + 1
    assert decisions  # the planner decided something for a 2,500-word prompt
    for (location, action), n in decisions.items():
        counted = telemetry.value(
            "cachewatch_breakpoints_total",
            provider=sink.records[0].request.provider,
            location=location,
            action=action,
        )
        assert counted == n, (location, action)
    # The span and log attributes are the record's counts per action.
    for record, span, event in zip(sink.records, telemetry.spans(), telemetry.events(), strict=True):
        assert record.breakpoints is not None
        for action, n in record.breakpoints.counts().items():
            assert span.attributes[f"cachewatch.breakpoints.{action}"] == n
            assert event[f"breakpoints.{action}"] == n
        assert event["breakpoints.profile"] == "anthropic"


def test_observe_only_records_carry_no_planner_fields(base_url: str) -> None:
    sink = Records()
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key="off-key", base_url=base_url, max_retries=0),
        sinks=[sink],
        breakpoints="off",
        **make_telemetry().kwargs,
    )
    client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=32,
        system=HANDBOOK,
        messages=[{"role": "user", "content": "hello"}],
    )
    (record,) = sink.records
    assert record.breakpoints is None
    assert record.advice is None
    assert record.miss is None
    assert record.usage_reported
    assert not record.unparsed
    assert record.extra == {}


@pytest.mark.parametrize(
    ("block", "label"),
    [
        ("system", "system"),
        ("system:first_line", "system:first_line"),
        ("system.0", "system.0"),
        ("system.15:first_line", "system.15:first_line"),
        ("tools.3", "tools.3"),
        ("tools:order", "tools:order"),
        ("system:order", "other"),
        ("tools.16", "other"),
        ("system.99", "other"),
        ("messages.0.content.0", "other"),
        ("system.0:something", "other"),
        ("tools.x", "other"),
    ],
)
def test_the_advice_block_label_is_a_bounded_set(block: str, label: str) -> None:
    assert advice_block_label(block) == label
