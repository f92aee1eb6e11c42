"""What the planner learns from the provider's answers: real minimums, reliability, volatile blocks."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from _cache_sim import Provider
from cachewatch.accounting._records import TokenUsage
from cachewatch.emulator import ManualClock
from cachewatch.planning._learning_memory import MemoryLearner
from cachewatch.planning._planner import Plan, Planner

WHERE = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}
SONNET = "claude-sonnet-4-6"  # documented minimum 1,024


def words(seed: str, n: int) -> str:
    return " ".join(f"{seed}{i % 97}" for i in range(n))


def body(system: Any, question: str, model: str = SONNET) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "max_tokens": 8,
            "system": system,
            "messages": [{"role": "user", "content": question}],
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def serve(planner: Planner, raw: bytes, usage: TokenUsage) -> Plan:
    plan = planner.plan(body=raw, **WHERE)
    planner.started(plan)
    planner.finished(plan, usage)
    planner.observe(plan, usage)
    return plan


def actions(plan: Plan, reason: str) -> list[str]:
    return [p.action for p in plan.placements if p.reason == reason]


def test_a_marked_prefix_neither_written_nor_read_raises_the_models_minimum() -> None:
    # The documents say 1,024 for this model; this provider caches nothing under 2,048.
    clock = Clock()
    planner = Planner(clock=clock, probe_every=10)
    system = words("policy", 1_300)  # about 1,500 tokens: above 1,024, below 2,048
    first = serve(planner, body(system, "q0"), TokenUsage(input=1_520))  # marked, no read, no write
    assert actions(first, "static") == ["inserted"]
    learned = []
    for n in range(1, 9):
        clock.now += 30
        learned.append(serve(planner, body(system, f"q{n}"), TokenUsage(input=1_520)))
    assert all(actions(p, "static") == ["skipped_below_minimum"] for p in learned)
    # A larger prefix is above the learned minimum: marked again.
    big = planner.plan(body=body(words("policy", 2_400), "q"), **WHERE)
    assert actions(big, "static") == ["inserted"]


def test_a_probe_under_the_learned_minimum_that_is_cached_lowers_it_again() -> None:
    clock = Clock()
    planner = Planner(clock=clock, probe_every=4)
    system = words("policy", 1_300)
    serve(planner, body(system, "q0"), TokenUsage(input=1_520))  # learns 2,048
    seen = []
    for n in range(1, 9):
        clock.now += 30
        plan = planner.plan(body=body(system, f"q{n}"), **WHERE)
        probe = plan.ticket is not None and plan.ticket.probe
        # The provider changed: it now caches from 1,024 (whatever is marked is written).
        usage = TokenUsage(input=20, cache_write_5m=1_500) if plan.inserted else TokenUsage(input=1_520)
        planner.started(plan)
        planner.finished(plan, usage)
        planner.observe(plan, usage)
        seen.append((probe, actions(plan, "static")))
    probes = [i for i, (probe, _) in enumerate(seen) if probe]
    assert probes, seen
    after = seen[probes[0] + 1 :]
    assert after
    assert all(a != ["skipped_below_minimum"] for _, a in after), seen


def test_a_probe_whose_deeper_marker_is_cached_keeps_the_learned_minimum() -> None:
    # The provider caches nothing under 2,048 tokens. A conversation grows past it: its
    # tail is written and read, while the system prompt (about 1,360 tokens) is not.
    # A probe marks the system prompt again; what the provider caches is the tail, above
    # the learned minimum: no evidence that the minimum came down.
    clock = Clock()
    planner = Planner(clock=clock, probe_every=4)
    system = words("policy", 700)
    cache: set[int] = set()

    def provider(plan: Plan) -> TokenUsage:
        total = plan.estimated_tokens or 0
        deep = max(
            (p.prefix_tokens for p in plan.placements if p.action == "inserted" and p.prefix_tokens >= 2_048),
            default=0,
        )
        read = max((c for c in cache if c <= deep), default=0)
        if not deep:
            return TokenUsage(input=total)
        cache.add(deep)
        return TokenUsage(input=total - deep, cache_read=read, cache_write_5m=deep - read)

    def send(raw: bytes) -> Plan:
        plan = planner.plan(body=raw, **WHERE)
        usage = provider(plan)
        planner.started(plan)
        planner.finished(plan, usage)
        planner.observe(plan, usage)
        return plan

    assert actions(send(body(system, "q")), "static") == ["inserted"]  # not cached: learns 2,048
    messages: list[dict[str, str]] = []
    seen = []
    for n in range(12):
        clock.now += 30
        messages.append({"role": "user", "content": words(f"u{n}", 400)})
        plan = send(orjson.dumps({"model": SONNET, "max_tokens": 8, "system": system, "messages": messages}))
        messages.append({"role": "assistant", "content": words(f"a{n}", 200)})
        seen.append((plan.ticket is not None and plan.ticket.probe, actions(plan, "static")))
    probes = [i for i, (probe, _) in enumerate(seen) if probe]
    assert probes, seen
    assert all(seen[i][1] == ["inserted"] for i in probes), seen
    assert all(a == ["skipped_below_minimum"] for probe, a in seen if not probe), seen


def test_a_probe_that_reads_a_prefix_under_the_learned_minimum_lowers_it() -> None:
    # The provider caches from 1,024 tokens, but the learned minimum is 4,096 (raised by a
    # request that came back with neither a read nor a write). Conversations of two turns
    # share a system prompt of about 1,200 tokens; each first turn marks its tail (above
    # 4,096), a probe marks the system prompt too. Once a probe wrote the system prompt,
    # every first turn reads it (the tail's lookback finds it) and writes its tail: what
    # was read lies under the learned minimum, what was written above it. The read proves
    # the minimum came down; the deeper write must not hide it.
    clock = ManualClock(1_000.0)
    provider = Provider(clock)
    planner = Planner(clock=clock, probe_every=4)
    model_key = f"anthropic\x00{SONNET}"
    planner.learner.raise_minimum(model_key, 3_000)
    assert planner.learner.learned_minimum(model_key) == 4_096
    system = words("policy", 600)
    conversations: dict[int, list[dict[str, str]]] = {}
    order = [(0, 0)] + [step for k in range(1, 14) for step in ((k, 0), (k - 1, 1))]
    seen = []
    for k, turn in order:
        clock.advance(20)
        messages = conversations.setdefault(k, [])
        messages.append({"role": "user", "content": words(f"u{k}x{turn}y", 1_500)})
        raw = {"model": SONNET, "max_tokens": 8, "system": system, "messages": messages}
        plan = planner.plan(body=orjson.dumps(raw), **WHERE)
        usage = provider.send(orjson.loads(plan.body) if plan.body else raw)
        planner.started(plan)
        planner.finished(plan, usage)
        planner.observe(plan, usage)
        messages.append({"role": "assistant", "content": words(f"a{k}x{turn}y", 30)})
        probe = plan.ticket is not None and plan.ticket.probe
        seen.append((probe, actions(plan, "static"), usage.cache_read))
    probes = [i for i, (probe, _, _) in enumerate(seen) if probe]
    # A probe read the system prompt (under the learned minimum) ...
    assert any(0 < seen[i][2] < 4_096 for i in probes), seen
    # ... so the learned minimum was forgotten and the system prompt is marked for good.
    assert planner.learner.learned_minimum(model_key) == 0, seen
    assert all(static == ["inserted"] for _, static, _ in seen[-6:]), seen


def test_a_provider_that_never_serves_its_writes_stops_getting_them() -> None:
    # Every request marks a shared system prompt believed cached, and the provider never
    # reads it (a relay that drops markers, an evicting cache): reliability falls, and new
    # prefixes of that family are no longer written.
    clock = Clock()
    planner = Planner(clock=clock)
    system = words("rules", 2_500)
    wrote = []
    for n in range(16):
        clock.now += 20
        plan = serve(planner, body(system, f"question {n} " * 40), TokenUsage(input=20, cache_write_5m=2_900))
        wrote.append(bool(plan.inserted))
    assert wrote[0]
    assert not any(wrote[-4:]), wrote


def test_a_changing_first_system_block_is_reported_with_the_tokens_it_costs() -> None:
    clock = Clock()
    planner = Planner(clock=clock)
    stable = words("handbook", 3_000)
    plans = []
    for n in range(5):
        clock.now += 20
        system = [
            {"type": "text", "text": f"Current time: {clock.now}. Request {n}."},
            {"type": "text", "text": stable},
        ]
        plans.append(serve(planner, body(system, f"q{n}"), TokenUsage(input=3_500)))
    advice = plans[-1].advice
    assert advice is not None
    assert advice.block == "system.0"
    assert advice.kind == "text"
    assert 5_000 < advice.tokens < 12_000  # the stable block (about 8,000 tokens)
    assert plans[0].advice is None  # one request says nothing about what changes


def test_a_changing_first_line_of_one_system_string_is_reported() -> None:
    clock = Clock()
    planner = Planner(clock=clock)
    stable = words("handbook", 3_000)
    plans = []
    for n in range(5):
        clock.now += 20
        plans.append(serve(planner, body(f"Now: {clock.now}\n" + stable, f"q{n}"), TokenUsage(input=3_500)))
    advice = plans[-1].advice
    assert advice is not None
    assert advice.block == "system:first_line"
    assert 5_000 < advice.tokens < 12_000


def test_a_changing_tool_is_reported_with_the_tools_after_it_not_the_system_prompt() -> None:
    # Tools come before the system prompt in every cached prefix: moved last among the
    # tools, a tool that changes on every request frees the tools after it, never the
    # system prompt, which still follows it.
    clock = Clock()
    planner = Planner(clock=clock)
    system = words("handbook", 3_000)  # about 8,000 tokens

    def tool(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "description": description, "input_schema": {"type": "object"}}

    plans = []
    for n in range(5):
        clock.now += 20
        raw = orjson.loads(body(system, f"q{n}"))
        raw["tools"] = [
            tool("search", words("search", 300)),
            tool("clock", f"Returns the time. Now: {clock.now}."),
            tool("fetch", words("fetch", 800)),  # about 2,000 tokens
        ]
        plans.append(serve(planner, orjson.dumps(raw), TokenUsage(input=11_000)))
    advice = plans[-1].advice
    assert advice is not None
    assert advice.block == "tools.1"
    assert 1_000 < advice.tokens < 4_000  # the fetch tool; the system prompt stays after the clock


def test_tools_that_come_in_another_order_each_time_are_advised_one_order_not_a_tool_moved_last() -> None:
    # A registry iterated as a set: every tool position changes, so moving the first of
    # them last would free nothing. In one order, the tools and the system prompt after
    # them are all cacheable.
    clock = Clock()
    planner = Planner(clock=clock)
    system = words("handbook", 3_000)  # about 8,000 tokens
    tools = [
        {"name": f"t{i}", "description": words(f"tool{i}", 300), "input_schema": {"type": "object"}}
        for i in range(5)
    ]
    rng = random.Random(7)
    plans = []
    for n in range(8):
        clock.now += 20
        raw = orjson.loads(body(system, f"q{n}"))
        rng.shuffle(tools)
        raw["tools"] = list(tools)
        plans.append(serve(planner, orjson.dumps(raw), TokenUsage(input=11_000)))
    advice = plans[-1].advice
    assert advice is not None
    assert (advice.block, advice.kind) == ("tools:order", "tool")
    assert 9_000 < advice.tokens < 13_000  # the five tools and the system prompt

    # The same planner, tools that only grow by one at the end: no order advice.
    clock.now += 3_600
    for n in range(6):
        clock.now += 20
        raw = orjson.loads(body(system, f"g{n}"))
        raw["tools"] = [
            *tools,
            {"name": f"new{n}", "description": f"tool {n}", "input_schema": {"type": "object"}},
        ]
        plan = serve(planner, orjson.dumps(raw), TokenUsage(input=11_000))
        assert plan.advice is None or plan.advice.block != "tools:order"


def test_a_fleet_whose_processes_each_list_the_tools_their_own_way_is_advised_one_order() -> None:
    # Each process keeps one order (a set iterated in a process of its own hash seed); the
    # provider, and the learner they share, see the order change from one request to the next.
    clock = Clock()
    learner = MemoryLearner()
    planners = [Planner(clock=clock, learner=learner) for _ in range(2)]
    system = words("handbook", 3_000)
    tools = [
        {"name": f"t{i}", "description": words(f"tool{i}", 300), "input_schema": {"type": "object"}}
        for i in range(4)
    ]
    orders = [tools, [tools[2], tools[0], tools[3], tools[1]]]
    plan = None
    for n in range(8):
        clock.now += 20
        raw = orjson.loads(body(system, f"q{n}"))
        raw["tools"] = orders[n % 2]
        plan = serve(planners[n % 2], orjson.dumps(raw), TokenUsage(input=11_000))
    assert plan is not None
    assert plan.advice is not None
    assert plan.advice.block == "tools:order"


def test_a_stable_prompt_gets_no_advice() -> None:
    clock = Clock()
    planner = Planner(clock=clock)
    stable = words("handbook", 3_000)
    for n in range(5):
        clock.now += 20
        plan = serve(planner, body(stable, f"q{n}"), TokenUsage(input=3_500))
    assert plan.advice is None


def test_a_read_expected_of_a_prefix_under_the_minimum_is_no_evidence() -> None:
    # A system prompt of ~870 tokens: under Sonnet's 1,024 minimum, within ``min_margin``
    # of it, so it is marked; once written it is believed cached, and the provider (which
    # caches nothing under the minimum) never reads it: a new conversation's first turn
    # reads nothing and writes its whole prompt (its tail's entry). That says nothing of
    # the provider's reliability, nor of the tail that request wrote.
    clock = Clock()
    planner = Planner(clock=clock)
    system = words("policy", 450)
    for c in range(6):
        history: list[dict[str, Any]] = []
        read = 0  # the previous turn's prompt, cached by its tail's marker
        for turn in range(3):
            clock.now += 20
            question = words(f"doc{c}-{turn}", 200 if turn else 2_000)
            messages = [*history, {"role": "user", "content": question}]
            raw = orjson.dumps({"model": SONNET, "max_tokens": 8, "system": system, "messages": messages})
            plan = planner.plan(body=raw, **WHERE)
            assert plan.ticket is not None
            assert actions(plan, "static") == ["inserted"]
            if turn:  # the previous turn's tail, written then, is believed cached
                assert plan.ticket.expected_read_raw >= read - 1, (c, turn)
            total = round(plan.ticket.total_raw)
            usage = TokenUsage(cache_read=read, cache_write_5m=total - read)
            planner.started(plan)
            planner.finished(plan, usage)
            planner.observe(plan, usage)
            read = total
            history = [*messages, {"role": "assistant", "content": "ok"}]
        assert planner.learner.reliability(plan.ticket.family) == 1.0, c


def _by_model(turn: int) -> dict[str, Any]:
    return {"model": (SONNET, "claude-opus-4-1")[turn % 2]}  # both cache from 1,024 tokens


def _by_thinking(turn: int) -> dict[str, Any]:
    thinking = {"type": "enabled", "budget_tokens": 2_048} if turn % 2 else {"type": "disabled"}
    return {"model": SONNET, "max_tokens": 4_096, "thinking": thinking}


@pytest.mark.parametrize("lane", [_by_model, _by_thinking], ids=["model", "thinking"])
def test_a_tail_read_by_the_next_request_in_its_lane_keeps_being_written(
    lane: Callable[[int], dict[str, Any]],
) -> None:
    # A router sends each request of a conversation to one of two models; caches are per
    # model, so the tail a request writes is read by the next request to that model, two
    # turns later, through the lookback. Sighting only the previous turn's tail (written in
    # the other model's cache) the learner once concluded that tails are never reused, and
    # stopped writing them from the seventh turn on. Extended thinking turned on and off
    # from turn to turn (or tool_choice changed) is the same: the setting keys the
    # messages' cache. A change looked like an edit of the history; two in a row made the
    # conversation unsettled, and its tails stopped being written.
    clock = Clock()
    planner = Planner(clock=clock)
    system = words("lanes", 1_500)
    messages: list[dict[str, Any]] = []
    plans: list[Plan] = []
    for turn in range(12):
        messages.append({"role": "user", "content": words(f"q{turn}-", 60)})
        raw = orjson.dumps({"max_tokens": 8, **lane(turn), "system": system, "messages": messages})
        plan = planner.plan(body=raw, **WHERE)
        planner.started(plan)
        planner.finished(plan)
        plans.append(plan)
        messages.append({"role": "assistant", "content": words(f"a{turn}-", 60)})
        clock.now += 30
    assert all(actions(p, "tail") == ["inserted"] for p in plans)
    for turn, p in enumerate(plans[2:], start=2):
        # The tail of the last request in this lane (turn - 2) is sighted and marked to be
        # read, besides the previous turn's (the other lane's, new to this one's cache).
        positions = sorted(x.position for x in p.placements if x.reason == "previous_turn")
        assert positions == [2 * turn - 3, 2 * turn - 1], turn
        assert actions(p, "previous_turn") == ["inserted", "inserted"]


def _chats_and_pastes(
    first_turn: Callable[[int, str], Any], paste: Callable[[int], Any]
) -> tuple[list[Plan], list[Plan]]:
    """Ten rounds of a three-turn chat then a one-shot paste, 30 s apart, under one system
    prompt: the chats' first turns (``first_turn(k, question)`` is their content) and the
    pastes (``paste(k)``), as planned."""
    clock = Clock()
    planner = Planner(clock=clock)
    system = words("assistant", 1_500)

    def send(messages: list[dict[str, Any]]) -> Plan:
        raw = orjson.dumps({"model": SONNET, "max_tokens": 8, "system": system, "messages": messages})
        plan = planner.plan(body=raw, **WHERE)
        planner.started(plan)
        planner.finished(plan)
        clock.now += 30
        return plan

    chats: list[Plan] = []
    pastes: list[Plan] = []
    for k in range(10):
        messages: list[dict[str, Any]] = []
        for t in range(3):
            question = words(f"c{k}-{t}-", 60)
            messages.append({"role": "user", "content": first_turn(k, question) if t == 0 else question})
            plan = send(messages)
            if t == 0:
                chats.append(plan)
            messages.append({"role": "assistant", "content": words(f"r{k}-{t}-", 60)})
        pastes.append(send([{"role": "user", "content": paste(k)}]))
    return chats, pastes


@pytest.mark.parametrize("attached", [False, True], ids=["pasted", "attached"])
def test_pasted_documents_never_continued_are_not_written_while_short_chats_first_tails_are(
    attached: bool,
) -> None:
    # A chat product: short-question chats that go on, and sessions that paste a long
    # document, ask for a summary once and leave. Counted per opportunity, half the first
    # turns went on, so every 12k-token document was written at 1.25x and never read. A
    # tail's statistics are kept per size class of its write: the documents' class learns
    # that they are not continued, the chats' that they are. A document attached as a
    # block of its own before the question is a document candidate; it is written with the
    # tail, so it counts in the tail's size all the same.
    def paste(k: int) -> Any:
        document = words(f"doc{k}-", 5_000)
        if attached:
            return [{"type": "text", "text": document}, {"type": "text", "text": "Summarise this."}]
        return "Summarise this:\n" + document

    chats, pastes = _chats_and_pastes(lambda k, question: question, paste)
    assert pastes[0].ticket is not None
    assert pastes[0].ticket.total_raw > 8_192
    assert all(actions(p, "tail") == ["inserted"] for p in chats)
    assert [actions(p, "tail") for p in pastes[-5:]] == [["skipped_not_reused"]] * 5


def test_a_tail_after_a_block_the_caller_marked_is_sized_from_that_marker() -> None:
    # Chats whose first turn attaches a file the caller marks itself (as the provider's
    # docs advise) and go on; and one-shot pastes of a long document, never continued. The
    # caller's marker writes the file whatever the planner does, so the chats' tails add
    # only their questions. Sized with the file, they landed in the pastes' class, whose
    # count they made "usually continued": every pasted document was written for nothing.
    def first_turn(k: int, question: str) -> Any:
        attached = {"type": "text", "text": words(f"file{k}-", 5_000), "cache_control": {"type": "ephemeral"}}
        return [attached, {"type": "text", "text": question}]

    chats, pastes = _chats_and_pastes(first_turn, lambda k: "Summarise this:\n" + words(f"doc{k}-", 5_000))
    assert all(actions(p, "tail") == ["inserted"] for p in chats)
    assert [actions(p, "tail") for p in pastes[-5:]] == [["skipped_not_reused"]] * 5


def _tokenizer_trace(bill_ratio: float, requests: int = 4) -> list[Plan]:
    """DashScope's OpenAI-compatible mode (minimum 1,024): a system prompt the cheap
    estimate puts at ~1,100 tokens and a local tokenizer at ~730, under a provider that
    bills ``bill_ratio`` times what the tokenizer counts; requests 10 s apart."""
    from cachewatch.planning._tokens import TokenEstimator

    def tokenizer(text: str) -> int:
        return len(text) // 6

    where = {
        "api": "chat_completions",
        "host": "dashscope.aliyuncs.com",
        "path": "/compatible-mode/v1/chat/completions",
    }
    clock = Clock()
    planner = Planner(clock=clock, estimator=TokenEstimator(tokenizers={"qwen": tokenizer}))
    system = "abcd " * 880
    cached = int(bill_ratio * tokenizer(system)) + 8
    written = False
    plans = []
    for i in range(requests):
        question = f"question {i}"
        body = orjson.dumps(
            {
                "model": "qwen3.6-plus",
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            }
        )
        plan = planner.plan(body=body, **where)
        # The bill: a marked system prompt over the minimum is written once, then read.
        total = cached + int(bill_ratio * tokenizer(question))
        if "inserted" not in actions(plan, "static") or cached < 1_024:
            usage = TokenUsage(input=total)
        elif written:
            usage = TokenUsage(input=total - cached, cache_read=cached)
        else:
            written = True
            usage = TokenUsage(input=total - cached, cache_write_5m=cached)
        planner.started(plan)
        planner.finished(plan, usage)
        planner.observe(plan, usage)
        plans.append(plan)
        clock.now += 10.0
    return plans


def test_a_tokenizer_that_undercounts_what_the_provider_bills_is_corrected_by_the_bills() -> None:
    # The provider bills 1.6x what the local tokenizer counts (~1,170 tokens): worth
    # marking. Before any bill the tokenizer does not veto the estimate; after, its
    # count is scaled by what the bills say. The bills, not the tokenizer, are the truth.
    plans = _tokenizer_trace(1.6)
    assert [actions(p, "static") for p in plans] == [["inserted"]] * 4


def test_a_tokenizer_that_agrees_with_the_bills_keeps_a_short_prefix_unmarked() -> None:
    # The bills agree with the tokenizer (~730 tokens, under 1,024): the first request
    # marks on the estimate (no write: nothing lost), the next ones do not.
    plans = _tokenizer_trace(1.0)
    assert actions(plans[0], "static") == ["inserted"]
    assert [actions(p, "static") for p in plans[1:]] == [["skipped_below_minimum"]] * 3
