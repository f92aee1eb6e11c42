"""Cache-miss diagnosis: every reason from a constructed scenario against the emulator, plus wasted writes.

Each scenario goes through the real transport (``CacheWatchTransport`` over HTTP) to the
emulator served by uvicorn, with one :class:`ManualClock` shared by the emulator (cache
TTLs) and the engine (``wall_clock``), so TTLs expire on demand.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import Counter

import cachewatch
from cachewatch.accounting._records import TokenUsage, UsageRecord
from cachewatch.diagnosis import MISS_REASONS, Diagnoser, MemoryStore, fingerprint
from cachewatch.emulator import ManualClock, create_app, run_in_thread
from cachewatch.sinks.prometheus import WASTED_WRITE_TOKENS, metrics_for

MODEL = "claude-sonnet-4-6"


def words(seed: str, n: int) -> str:
    return " ".join(f"{seed}{i}x" for i in range(n))


SYSTEM = words("sys", 1500)  # ~3,000 emulator tokens: above every minimum


class Capture:
    name = "capture"

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def start(self, info: Any) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        self.records.append(record)


class Rig:
    """One emulator + one wrapped client sharing a manual clock."""

    def __init__(self, telemetry: Any, url: str, clock: ManualClock, app: Any, **options: Any) -> None:
        self.capture = Capture()
        self.telemetry = telemetry
        self.clock = clock
        self.app = app
        host = url.split("://", 1)[1]
        metrics = metrics_for(telemetry.registry)
        if metrics.wasted_write_tokens is None:  # until the catalogue defines it
            metrics.wasted_write_tokens = Counter(
                WASTED_WRITE_TOKENS.removesuffix("_total"),
                "Cache-write tokens never read within their TTL.",
                ("provider", "model", "workspace"),
                registry=telemetry.registry,
            )
        # The diagnosis is under test, not the placement policy: every candidate that
        # reaches the minimum is marked (a fixed policy), so each case gets its markers.
        options.setdefault("learning", False)
        self.transport = cachewatch.CacheWatchTransport(
            wall_clock=clock,
            sinks=[self.capture],
            providers={host: "anthropic"},
            **telemetry.kwargs,
            **options,
        )
        self.client = httpx.Client(base_url=url, transport=self.transport, headers={"x-api-key": "k"})

    def send(self, body: dict[str, Any]) -> UsageRecord:
        response = self.client.post("/v1/messages", json=body)
        assert response.status_code == 200, response.text
        rid = response.json()["id"]
        return next(r for r in self.capture.records if r.response_id == rid)

    def misses(self, reason: str, model: str = MODEL) -> float:
        return self.telemetry.value(
            "cachewatch_cache_misses_total", provider="anthropic", model=model, reason=reason
        )

    def wasted(self, model: str = MODEL) -> float:
        return self.telemetry.value(
            WASTED_WRITE_TOKENS, provider="anthropic", model=model, workspace="default"
        )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(10_000.0)


@pytest.fixture
def rig(telemetry: Any, clock: ManualClock) -> Iterator[Rig]:
    app = create_app(clock=clock, profile="anthropic")
    with run_in_thread(app) as url:
        r = Rig(telemetry, url, clock, app)
        yield r
        r.client.close()


def chat(system: str = SYSTEM, *turns: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for n, text in enumerate(turns):
        messages.append({"role": "user" if n % 2 == 0 else "assistant", "content": text})
    return {"model": model, "max_tokens": 32, "system": system, "messages": messages, **extra}


def reason(record: UsageRecord) -> object:
    return record.extra.get("miss_reason")


def assert_no_content(record: UsageRecord, *texts: str) -> None:
    blob = orjson.dumps(dict(record.extra.items()), default=str)
    for text in texts:
        assert text[:40].encode() not in blob


# -- one test per reason --------------------------------------------------------------------


def test_ttl_expired_and_the_unread_write_is_wasted(rig: Rig) -> None:
    body = chat(SYSTEM, words("q", 80))
    first = rig.send(body)
    assert first.usage is not None
    assert first.usage.cache_write > 0
    assert reason(first) is None  # cold: nothing could have been read
    rig.clock.advance(301)
    second = rig.send(body)
    assert second.usage is not None
    assert second.usage.cache_read == 0
    assert reason(second) == "ttl_expired"
    assert rig.misses("ttl_expired") == 1
    # The first write was never read within its 5 minutes: all of it is waste.
    assert rig.wasted() == first.usage.cache_write
    assert_no_content(second, SYSTEM)


def test_an_unread_write_is_counted_when_only_unmarked_requests_follow(rig: Rig) -> None:
    # A planner that learnt not to write (or a caller that marks one request in many) sends
    # no diagnosed request afterwards: the write that expired unread is still counted.
    marked = chat(SYSTEM, words("q", 80))
    marked["system"] = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    first = rig.send(marked)
    assert first.usage is not None
    assert first.usage.cache_write > 0
    for n in range(3):
        rig.clock.advance(200)
        plain = rig.send(chat(words(f"other{n}", 40), words("q", 20)))  # under the minimum: unmarked
        assert plain.usage is not None
        assert plain.usage.cache_write == 0
        assert not plain.extra.get("breakpoints.inserted")
    assert rig.wasted() == first.usage.cache_write


def test_read_writes_are_not_wasted(rig: Rig) -> None:
    question = words("q", 80)
    first = rig.send(chat(SYSTEM, question))
    assert first.usage is not None
    second = rig.send(chat(SYSTEM, question, "An answer.", words("q2", 40)))  # the next turn
    assert second.usage is not None
    assert second.usage.cache_read == first.usage.cache_write
    assert reason(second) is None
    rig.clock.advance(4_000)
    rig.transport.engine.diagnosis.diagnoser.sweep(rig.clock())  # type: ignore[union-attr]
    # The first write was read; only the second's (its new turn, never read) is waste.
    assert rig.wasted() == second.usage.cache_write


def test_mixed_ttl_writes_are_wasted_per_ttl_as_billed(telemetry: Any, clock: ManualClock) -> None:
    """A 1h write read later and a 5m write that expired unread: the waste is the billed 5m part.

    The billing splits the write by TTL (1h tokens, then 5m tokens); the share of each
    marker must follow it, not a token estimate that spreads the write over both.
    """
    app = create_app(clock=clock, profile="anthropic")
    with run_in_thread(app) as url:
        rig = Rig(telemetry, url, clock, app, breakpoints="off")
        tool = {
            "name": "lookup",
            "description": words("tool", 600),
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
        system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
        body = chat(system, "hello there", tools=[tool])
        first = rig.send(body)
        assert first.usage is not None
        assert first.usage.cache_write_1h > 0
        assert first.usage.cache_write_5m > 0
        clock.advance(360)  # the 5m system entry expired unread; the 1h tools entry is live
        second = rig.send(body)
        assert second.usage is not None
        assert second.usage.cache_read == first.usage.cache_write_1h
        assert second.usage.cache_write_5m == first.usage.cache_write_5m
        clock.advance(400)
        rig.transport.engine.diagnosis.diagnoser.sweep(clock())  # type: ignore[union-attr]
        # Both 5m writes expired unread; the 1h write was read.
        assert rig.wasted() == first.usage.cache_write_5m + second.usage.cache_write_5m
        rig.client.close()


def test_changed_system_prompt(rig: Rig) -> None:
    question = words("q", 80)
    rig.send(chat(SYSTEM, question))
    record = rig.send(chat(words("other-system", 1500), question))
    assert reason(record) == "prefix_changed_system"
    assert record.extra["miss_changed_block"] == "system.0"
    assert record.extra["miss_changed_kind"] == "text"
    assert rig.misses("prefix_changed_system") == 1
    assert_no_content(record, SYSTEM, question)


def _tools(changed: bool = False) -> list[dict[str, Any]]:
    return [
        {
            "name": f"tool_{n}",
            "description": words(f"d{n}{'changed' if changed and n == 1 else ''}", 300),
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
        for n in range(3)
    ]


def test_changed_tool(rig: Rig) -> None:
    question = words("q", 80)
    rig.send(chat(SYSTEM, question, tools=_tools()))
    record = rig.send(chat(SYSTEM, question, tools=_tools(changed=True)))
    assert reason(record) == "prefix_changed_tools"
    assert record.extra["miss_changed_block"] == "tools.1"
    assert record.extra["miss_changed_position"] == 1
    assert rig.misses("prefix_changed_tools") == 1


def test_edited_earlier_message(rig: Rig) -> None:
    turns = [words("u0-", 60), "answer zero", words("u1-", 60), "answer one", words("u2-", 60)]
    rig.send(chat(SYSTEM, *turns[:1]))
    rig.send(chat(SYSTEM, *turns[:3]))
    rig.send(chat(SYSTEM, *turns[:5]))
    edited = list(turns)
    edited[2] = words("edited-", 60)
    record = rig.send(chat(SYSTEM, *edited))
    assert record.usage is not None
    assert record.usage.cache_read > 0
    assert reason(record) == "prefix_changed_messages"
    assert record.extra["miss_changed_block"] == "messages.2.0"
    assert record.extra["miss_changed_kind"] == "text"
    assert_no_content(record, edited[2], SYSTEM)


def test_model_switch(rig: Rig) -> None:
    question = words("q", 80)
    rig.send(chat(SYSTEM, question))
    record = rig.send(chat(SYSTEM, question, model="claude-sonnet-4-5"))
    assert reason(record) == "model_changed"
    assert rig.misses("model_changed", model="claude-sonnet-4-5") == 1


def test_below_minimum(telemetry: Any, clock: ManualClock) -> None:
    app = create_app(clock=clock, profile="anthropic")
    with run_in_thread(app) as url:
        rig = Rig(telemetry, url, clock, app, breakpoints="off")
        body = {
            "model": MODEL,
            "max_tokens": 32,
            "system": [{"type": "text", "text": words("s", 100), "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hello"}],
        }
        first = rig.send(body)
        assert first.usage is not None
        assert first.usage.cache_write == 0 == first.usage.cache_read
        assert reason(first) is None
        second = rig.send(body)
        assert reason(second) == "below_minimum"
        assert str(second.extra["miss_detail"]).endswith("<1024")
        assert rig.misses("below_minimum") == 1


def test_fan_out_before_the_first_write_completed(telemetry: Any, clock: ManualClock) -> None:
    held = threading.Event()
    release = threading.Event()
    calls = itertools.count()

    async def hold_first() -> None:
        if next(calls) == 0:
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.005)

    app = create_app(clock=clock, profile="anthropic", before_response=hold_first)
    with run_in_thread(app) as url:
        # The caller's own markers: the auto planner would not write twice (see below).
        rig = Rig(telemetry, url, clock, app, breakpoints="off")
        body = chat(
            [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}], words("q", 80)
        )
        first: list[UsageRecord] = []
        thread = threading.Thread(target=lambda: first.append(rig.send(body)))
        thread.start()
        try:
            assert held.wait(10)
            clock.advance(0.5)
            second = rig.send(body)  # sent while the first response has not started
        finally:
            release.set()
            thread.join(10)
        assert second.usage is not None
        assert second.usage.cache_read == 0
        assert second.usage.cache_write > 0
        assert reason(second) == "write_in_flight"
        assert reason(first[0]) is None
        assert rig.misses("write_in_flight") == 1


def test_a_write_read_while_its_writer_still_streams_is_not_wasted(rig: Rig) -> None:
    """B is sent once A's stream has started, reads A's write and ends before A does."""
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    body = chat(system, words("q", 80))
    with rig.client.stream("POST", "/v1/messages", json={**body, "stream": True}) as streamed:
        chunks = streamed.iter_bytes()
        assert next(chunks)  # A's response has started: its write is readable
        rig.clock.advance(1)
        reader = rig.send(body)
        assert reader.usage is not None
        assert reader.usage.cache_read > 0
        assert reason(reader) is None
        for _ in chunks:
            pass
    (writer,) = [r for r in rig.capture.records if r.stream]
    assert writer.usage is not None
    assert writer.usage.cache_write > 0
    rig.clock.advance(400)
    rig.transport.engine.diagnosis.diagnoser.sweep(rig.clock())  # type: ignore[union-attr]
    assert rig.wasted() == 0


def test_auto_does_not_write_what_an_in_flight_sibling_is_writing(telemetry: Any, clock: ManualClock) -> None:
    held = threading.Event()
    release = threading.Event()
    calls = itertools.count()

    async def hold_first() -> None:
        if next(calls) == 0:
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.005)

    app = create_app(clock=clock, profile="anthropic", before_response=hold_first)
    with run_in_thread(app) as url:
        rig = Rig(telemetry, url, clock, app, learning=True)
        first: list[UsageRecord] = []
        thread = threading.Thread(target=lambda: first.append(rig.send(chat(SYSTEM, words("q", 80)))))
        thread.start()
        try:
            assert held.wait(10)
            # A sibling (same system prompt, another question) while the first response
            # has not started: it could not read the write, so it sends no marker.
            second = rig.send(chat(SYSTEM, words("other", 80)))
        finally:
            release.set()
            thread.join(10)
        assert first[0].usage is not None
        assert first[0].usage.cache_write > 0
        assert second.usage is not None
        assert second.usage.cache_write == 0 == second.usage.cache_read
        assert second.extra["breakpoints.skipped_in_flight"] == 1  # the system prompt
        assert second.extra["breakpoints.skipped_not_reused"] == 1  # a first turn's tail
        assert reason(second) is None
        # Once the first response has started, the next sibling reads the system prompt.
        third = rig.send(chat(SYSTEM, words("third", 80)))
        assert third.usage is not None
        # (the system prompt, not the first question's tail)
        assert 0 < third.usage.cache_read < first[0].usage.cache_write


def test_conversation_that_outgrew_the_lookback(telemetry: Any, clock: ManualClock) -> None:
    app = create_app(clock=clock, profile="anthropic")
    with run_in_thread(app) as url:
        rig = Rig(telemetry, url, clock, app, breakpoints="off")
        question = words("q", 600)
        marked = {"type": "text", "text": question, "cache_control": {"type": "ephemeral"}}
        first = rig.send(
            {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": [marked]}]}
        )
        assert first.usage is not None
        assert first.usage.cache_write > 0
        blocks: list[dict[str, Any]] = [{"type": "text", "text": f"result {n}"} for n in range(25)]
        blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
        second = rig.send(
            {
                "model": MODEL,
                "max_tokens": 32,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": question}]},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": blocks},
                ],
            }
        )
        assert second.usage is not None
        assert second.usage.cache_read == 0
        assert reason(second) == "lookback_exceeded"
        assert second.extra["miss_block"] == "messages.0.0"
        assert rig.misses("lookback_exceeded") == 1


def test_evicted(rig: Rig) -> None:
    body = chat(SYSTEM, words("q", 80))
    rig.send(body)
    rig.app.reset()  # the provider dropped the entry before its TTL
    record = rig.send(body)
    assert reason(record) == "evicted"
    assert rig.misses("evicted") == 1


def test_growing_conversation_has_no_misses(rig: Rig) -> None:
    turns: list[str] = []
    for n in range(6):
        turns.append(words(f"u{n}-", 50))
        record = rig.send(chat(SYSTEM, *turns))
        assert reason(record) is None, record.extra
        turns.append(f"answer {n}")
    assert all(rig.misses(r) == 0 for r in MISS_REASONS)


def test_a_new_conversation_on_the_same_system_prompt_is_not_a_miss(rig: Rig) -> None:
    """Only the shared system prefix can be read by another conversation: nothing was missed."""
    for conversation in ("a", "b", "c"):
        turns: list[str] = []
        for n in range(3):
            turns.append(words(f"{conversation}{n}-", 50))
            record = rig.send(chat(SYSTEM, *turns))
            assert reason(record) is None, (conversation, n, record.extra)
            turns.append(f"answer {n}")
    assert all(rig.misses(r) == 0 for r in MISS_REASONS)


def test_diagnosis_off_and_faults_fail_open(telemetry: Any, clock: ManualClock) -> None:
    app = create_app(clock=clock, profile="anthropic")
    with run_in_thread(app) as url:
        off = Rig(telemetry, url, clock, app, diagnosis=False)
        assert off.transport.engine.diagnosis is None
        off.send(chat(SYSTEM, "x"))

        class Broken(MemoryStore):
            def get_many(self, keys: Any) -> Any:
                raise RuntimeError("store down")

        broken = Rig(telemetry, url, clock, app, store=Broken())
        record = broken.send(chat(SYSTEM, "y"))
        assert record.outcome.value == "ok"
        assert "miss_reason" not in record.extra
        assert telemetry.value("cachewatch_internal_errors_total", stage="diagnosis") == 1


# -- the Anthropic cache-diagnostics beta ---------------------------------------------------


def test_cache_diagnostics_beta_threads_previous_message_and_passes_the_reason(
    telemetry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[httpx.Request] = []
    ids = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        n = next(ids)
        body: dict[str, Any] = {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 5,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        }
        if n == 2:
            body["diagnostics"] = {
                "cache_miss_reason": {"type": "system_changed", "cache_missed_input_tokens": 1200}
            }
        return httpx.Response(200, json=body)

    capture = Capture()
    transport = cachewatch.CacheWatchTransport(
        httpx.MockTransport(handler),
        cache_diagnostics=True,
        sinks=[capture],
        breakpoints="off",
        **telemetry.kwargs,
    )
    client = httpx.Client(transport=transport)
    request = {
        "model": MODEL,
        "max_tokens": 8,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
    }
    url = "https://api.anthropic.com/v1/messages"
    client.post(url, json=request, headers={"anthropic-beta": "other-beta-2025-01-01"})
    # Nothing to thread yet: the first turn opts in with null (else the API stores nothing).
    assert orjson.loads(seen[0].content)["diagnostics"] == {"previous_message_id": None}
    follow = {
        **request,
        "messages": [
            *request["messages"],
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "more"},
        ],
    }
    client.post(url, json=follow, headers={"anthropic-beta": "other-beta-2025-01-01"})
    sent = orjson.loads(seen[1].content)
    assert sent["diagnostics"] == {"previous_message_id": "msg_1"}
    assert {k: v for k, v in sent.items() if k != "diagnostics"} == follow
    assert seen[1].headers["anthropic-beta"] == "other-beta-2025-01-01,cache-diagnosis-2026-04-07"
    record = capture.records[-1]
    assert record.extra["miss_reason"] == "provider_reported"
    assert record.extra["miss_detail"] == "system_changed"
    assert (
        telemetry.value(
            "cachewatch_cache_misses_total", provider="anthropic", model=MODEL, reason="provider_reported"
        )
        == 1
    )


# -- sans-IO units ---------------------------------------------------------------------------


def test_fingerprints_hold_no_content_and_ignore_markers() -> None:
    secret = "the secret prompt text " * 20
    plain = {"model": MODEL, "system": secret, "messages": [{"role": "user", "content": secret}]}
    marked = {
        "model": MODEL,
        "system": [{"type": "text", "text": secret, "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": secret, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
                ],
            }
        ],
    }
    a = fingerprint("messages", plain)
    b = fingerprint("messages", marked)
    assert a is not None
    assert b is not None
    assert a.hashes == b.hashes  # a string is a one-text-block list; markers are not content
    assert b.markers == ((0, "5m"), (1, "1h"))
    assert secret[:20] not in repr(b)
    chat_fp = fingerprint(
        "chat_completions",
        {
            "model": "qwen-plus",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        },
    )
    assert chat_fp is not None
    assert chat_fp.locations == ("system", "messages")


def test_marker_words_in_text_and_nested_markers_do_not_change_hashes() -> None:
    # A text that mentions "cache_control" takes the re-serialising path; its hash must
    # still equal the unmarked block's, and a marker nested in tool_result content too.
    text = 'set "cache_control": {"type": "ephemeral"} on the block ' * 10
    result = [{"type": "text", "text": text}]
    plain = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": result}]},
        ],
    }
    marked = orjson.loads(orjson.dumps(plain))
    marked["messages"][0]["content"] = [
        {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}
    ]
    marked["messages"][2]["content"][0]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    a = fingerprint("messages", plain)
    b = fingerprint("messages", marked)
    assert a is not None
    assert b is not None
    assert a.hashes == b.hashes
    assert b.markers == ((0, "5m"), (2, "1h"))
    assert b.keys(len(b.hashes)) == [b.key(i) for i in range(len(b.hashes))]
    other = fingerprint("messages", {**plain, "model": "claude-haiku-4-5"})
    assert other is not None
    assert other.hashes == a.hashes
    assert other.key(0) != a.key(0)


def test_auto_hands_the_planners_layout_to_the_diagnosis(rig: Rig) -> None:
    diagnoser = rig.transport.engine.diagnosis.diagnoser  # type: ignore[union-attr]
    assert diagnoser is not None
    states: list[Any] = []
    before = diagnoser.before
    fingerprints = diagnoser.fingerprints

    def spy(api: str, body: Any, *args: Any, **kwargs: Any) -> Any:
        state = before(api, body, *args, **kwargs)
        states.append(state)
        return state

    computed: list[Any] = []

    def spy_fp(state: Any) -> Any:
        assert state.body is None  # the body is never parsed again: the layout is reused
        fp = fingerprints(state)
        computed.append(fp)
        return fp

    diagnoser.before = spy  # type: ignore[method-assign]
    diagnoser.fingerprints = spy_fp  # type: ignore[method-assign]
    record = rig.send(chat(SYSTEM, "first question"))
    assert record.usage is not None
    assert record.usage.cache_write > 0  # auto marked and wrote
    assert len(states) == 1
    assert computed
    fp = computed[0]
    assert fp is not None
    # The planner's system marker and the top-level automatic one (on the last block).
    assert fp.markers == ((0, "5m"), (1, "5m"))
    # The same prefixes as a fresh walk of the body as sent.
    sent = orjson.loads(orjson.dumps(chat(SYSTEM, "first question")))
    sent["system"] = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    sent["cache_control"] = {"type": "ephemeral"}
    fresh = fingerprint("messages", sent)
    assert fresh is not None
    assert fresh.hashes == fp.hashes
    assert fresh.markers == fp.markers


def test_store_is_bounded_and_claims_once() -> None:
    store = MemoryStore(max_entries=10)
    wasted: list[int] = []
    diag = Diagnoser(store, on_wasted=lambda p, m, w, t: wasted.append(t))
    body = orjson.dumps(chat(SYSTEM, "q", cache_control={"type": "ephemeral"}))
    state = diag.before("messages", body, MODEL, 0.0)
    diag.after(state, TokenUsage(cache_write_5m=3000), 0.0)
    assert diag.sweep(100.0) == 0
    assert diag.sweep(400.0) == 3000
    assert wasted == [3000]
    assert diag.sweep(500.0) == 0  # once only
    for n in range(50):
        s = diag.before(
            "messages",
            orjson.dumps(chat(words(str(n), 10), "q", cache_control={"type": "ephemeral"})),
            MODEL,
            600.0,
        )
        diag.after(s, TokenUsage(cache_write_5m=10), 600.0)
    assert len(store) <= 10


def test_changed_chat_completions_tools_are_named() -> None:
    # Chat-completions tools are not positions (no marker goes on them) but are part of
    # every prefix: a change shows as prefix_changed_tools, not as a changed system prompt.
    diag = Diagnoser()
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]

    def body(tool: str) -> bytes:
        return orjson.dumps(
            {
                "model": "qwen-plus",
                "tools": [{"type": "function", "function": {"name": tool, "parameters": {}}}],
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
            }
        )

    first = diag.before("chat_completions", body("search"), "qwen-plus", 0.0)
    diag.after(first, TokenUsage(input=5, cache_write_5m=2_000), 1.0)
    second = diag.before("chat_completions", body("lookup"), "qwen-plus", 10.0)
    verdict = diag.after(second, TokenUsage(input=5, cache_write_5m=2_000), 11.0)
    assert verdict is not None
    assert verdict.reason == "prefix_changed_tools"
    third = diag.before("chat_completions", body("lookup"), "qwen-plus", 20.0)
    assert diag.after(third, TokenUsage(input=5, cache_read=2_000), 21.0) is None


def _claude_code_request() -> dict[str, Any]:
    """The shape Claude Code 2.1.x sends (research F): three system blocks with its own
    markers on the last two, 22 tools, adaptive thinking, context management, the last user
    block marked, then a role "system" reminder after that marker (uncached)."""
    tools = [
        {"name": f"tool{i}", "description": "d " * 50, "input_schema": {"type": "object"}} for i in range(22)
    ]
    return {
        "model": MODEL,
        "max_tokens": 32,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
        "system": [
            {"type": "text", "text": "x-billing-header: cc_version=2.1.1"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": words("instructions", 2_000), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": words("task", 60)}]},
            {"role": "assistant", "content": [{"type": "text", "text": words("reply", 40)}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": words("follow", 60), "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "system", "content": [{"type": "text", "text": words("reminder", 400)}]},
        ],
    }


@pytest.mark.parametrize("tail_tokens", [380, 2_000, 4_000])
def test_uncached_text_after_the_last_marker_is_not_a_miss(tail_tokens: int) -> None:
    # The second request reads everything up to the caller's last marker; the uncached
    # reminder after it must not throw the estimate of the cached part off (it did, by
    # hundreds of tokens, and the diagnosis said "evicted").
    diag = Diagnoser()
    body = orjson.dumps(_claude_code_request())
    first = diag.before("messages", body, MODEL, 0.0)
    assert diag.after(first, TokenUsage(input=tail_tokens, cache_write_5m=6_000), 1.0) is None
    second = diag.before("messages", body, MODEL, 10.0)
    assert diag.after(second, TokenUsage(input=tail_tokens, cache_read=6_000), 11.0) is None


def test_claude_code_shapes_through_the_emulator(telemetry: Any, clock: ManualClock) -> None:
    # The emulator accepts role "system" messages, adaptive thinking and context management,
    # and caches up to the caller's last marker; the planner adds nothing past its 3 markers
    # that a 5th would break, and the replay is a read without a miss.
    app = create_app(clock=clock, profile="anthropic")
    with run_in_thread(app) as url:
        rig = Rig(telemetry, url, clock, app, learning=True)
        first = rig.send(_claude_code_request())
        second = rig.send(_claude_code_request())
    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.cache_write > 0
    assert second.usage.cache_read == first.usage.cache_write + first.usage.cache_read
    assert second.usage.input > 0  # the reminder after the last marker
    assert reason(second) is None
    assert first.extra.get("breakpoints.kept") == 3
    assert first.extra.get("breakpoints.inserted", 0) <= 1


def test_a_write_that_expires_unread_is_counted_when_metrics_are_collected() -> None:
    # The waste was counted only at a later request through the same client: one that went
    # quiet after its last writes never reported them. A scrape counts them now.
    import httpx
    from prometheus_client import CollectorRegistry

    import cachewatch

    now = [1_000_000.0]

    def handler(request: httpx.Request) -> httpx.Response:
        write = 5_000 if b"cache_control" in request.content else 0
        usage = {"input_tokens": 10, "cache_creation_input_tokens": write, "cache_read_input_tokens": 0}
        return httpx.Response(200, json={"id": "m", "model": MODEL, "usage": {**usage, "output_tokens": 2}})

    registry = CollectorRegistry()
    client = cachewatch.wrap(
        httpx.Client(transport=httpx.MockTransport(handler)),
        registry=registry,
        breakpoints="off",
        wall_clock=lambda: now[0],
    )
    system = [{"type": "text", "text": words("s", 3_000), "cache_control": {"type": "ephemeral"}}]
    client.post(
        "https://api.anthropic.com/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 5,
            "system": system,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    labels = {"provider": "anthropic", "model": MODEL, "workspace": "default"}
    assert (registry.get_sample_value("cachewatch_cache_wasted_write_tokens_total", labels) or 0) == 0
    now[0] += 600  # ten minutes without a request: the 5m write expired unread
    assert registry.get_sample_value("cachewatch_cache_wasted_write_tokens_total", labels) == 5_000
