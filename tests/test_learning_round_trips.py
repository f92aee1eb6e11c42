"""What the shared learned state costs per request in Redis round trips, and that it stays so.

Every message cachewatch sends to a real redis-server is counted on the wire (a redis-py
connection class that counts ``send_packed_command``, the one call that puts a command or
a pipeline on the socket; each is one round trip). Requests go through the real anthropic
SDK, wrapped with ``cachewatch.wrap(client, store=RedisStore(...))``, to the emulator. Then:

* planning a request costs the learned state one round trip, JSON or streamed, and each
  request of this traffic at most three: the decision, the response's start (when it
  marked something), what it billed (when it expected a read), or, for a plan that leaves
  a claimed prefix unwritten, its release; a conversation's turn that read the cache
  exactly three. Before: five (sight, stability and conversation, then the same two). The
  miss diagnosis's fingerprints cost two (read, write);
* :meth:`RedisLearner.decide` gives exactly the answers, and leaves exactly the state, of
  the calls it stands for made one by one (:func:`ask_in_turn`, as the in-process
  :class:`MemoryLearner` answers them), replayed over random decisions;
* when another process changed which static blocks are volatile, a decision takes a
  second round trip and gives the same answer as a single process would;
* a Redis that is down answers every decision locally, the fault counted;
* a conversation whose requests go to two models is planned alike on both learners, and
  a request after a switch back to a model takes one more round trip, to sight where the
  last request to that model ended.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from functools import partial
from typing import Any

import anthropic
import orjson
import pytest
import redis

import cachewatch
from _redis import free_port
from cachewatch.diagnosis._store_redis import RedisStore
from cachewatch.emulator import create_app, run_in_thread
from cachewatch.planning._decision import Answers, ask_in_turn
from cachewatch.planning._learning import LearningState, Sighting
from cachewatch.planning._learning_memory import MemoryLearner
from cachewatch.planning._learning_redis import MAX_AGE, RedisLearner
from cachewatch.planning._planner import Planner

_KINDS = ("static", "tail_first", "tail", "document", "previous_turn")


class Wire:
    """Messages sent to Redis (round trips), by kind: ``learner`` / ``store`` / ``setup``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def sent(self, packed: Any) -> None:
        data = b"".join(packed) if isinstance(packed, list) else bytes(packed)
        if b"EVALSHA" in data:
            kind = "learner"
        elif b"CLIENT" in data or b"HELLO" in data or b"SCRIPT" in data:
            kind = "setup"  # a new connection's handshake, loading the script
        else:
            kind = "store"
        with self._lock:
            self.counts[kind] += 1

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


def _counting_client(port: int, wire: Wire, **kwargs: Any) -> redis.Redis:
    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            wire.sent(command)
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool(connection_class=Counting, port=port, **kwargs)
    return redis.Redis(connection_pool=pool)


def _text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        rng.choice(("billing", "refund", "order", "policy", "ticket", "the", "a")) for _ in range(words)
    )


@pytest.fixture
def wired(redis_port: int) -> Iterator[tuple[Any, Wire, RedisStore]]:
    wire = Wire()
    store = RedisStore(_counting_client(redis_port, wire), key_prefix=f"rt:{time.monotonic_ns()}:")
    with run_in_thread(create_app(profile="anthropic")) as url:
        client = cachewatch.wrap(
            anthropic.Anthropic(api_key="sk-round-trips", base_url=url, max_retries=0), store=store
        )
        yield client, wire, store
    store.clear()


def test_planning_costs_the_shared_learner_one_round_trip_and_a_request_at_most_three(
    wired: tuple[Any, Wire, RedisStore],
) -> None:
    client, wire, _ = wired
    planner = client._client._transport.engine.planner
    plan = planner.plan
    planning: list[Counter[str]] = []

    def counted_plan(**kwargs: Any) -> Any:
        wire.take()
        try:
            return plan(**kwargs)
        finally:
            planning.append(wire.take())

    planner.plan = counted_plan
    system = _text(1, 3_000)  # a long shared system prompt: written once, then read
    history: list[dict[str, Any]] = []
    per_request: list[tuple[str, Counter[str]]] = []
    for turn in range(8):
        messages = [*history, {"role": "user", "content": _text(100 + turn, 40)}]
        body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "system": system, "messages": messages}
        mode = "stream" if turn % 2 else "json"
        if mode == "stream":
            with client.messages.stream(**body) as stream:
                reply = stream.get_final_text()
        else:
            message = client.messages.create(**body)
            reply = "".join(b.text for b in message.content if b.type == "text")
        history = [*messages, {"role": "assistant", "content": reply or "ok"}]
        per_request.append((mode, planning[-1] + wire.take()))
    # A one-off system prompt (per user): claimed while planning, released unwritten.
    for n in range(3):
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=16,
            system=[{"type": "text", "text": _text(1_000 + n, 2_000)}],
            messages=[{"role": "user", "content": "hello"}],
        )
        per_request.append(("per-user", planning[-1] + wire.take()))

    assert len(planning) == len(per_request)
    # The first request also loads the script (and opens the connections).
    for decision in planning[1:]:
        assert decision == Counter(learner=1)  # sightings, stability, conversation, minimum
    for mode, counts in per_request[1:]:
        assert counts["setup"] == 0, (mode, counts)
        assert counts["learner"] <= 3, (mode, counts)
        assert counts["store"] <= 2, (mode, counts)  # the fingerprints: one read, one write
    learner = {mode: [c["learner"] for m, c in per_request[1:] if m == mode] for mode in ("json", "stream")}
    # A turn that read the cache: its decision, its response's start, what it billed.
    assert learner["json"] == [3] * 3
    assert learner["stream"] == [3] * 4


def _lines_for(blocks: list[bytes]) -> Any:
    def lines_for(positions: Collection[int]) -> dict[int, tuple[bytes, bytes]]:
        return {i: (blocks[i][:1] + bytes([i]), blocks[i][1:2]) for i in positions if i < len(blocks)}

    return lines_for


def _replay_decisions(learner: LearningState, seed: int, steps: int, *, decide: bool) -> list[Any]:
    """Random planning decisions between the calls that follow them; every answer."""
    rng = random.Random(seed)
    now = [1_000.0]

    def clock() -> float:
        now[0] += 0.25
        return now[0]

    out: list[Any] = []
    open_tickets: list[tuple[int, list[int]]] = []
    for ticket in range(1, steps + 1):
        now[0] += rng.choice((0.0, 3.0, 40.0, 299.0, 301.0, 900.0, 3_700.0))
        family = rng.randint(1, 3)
        keys = rng.sample(range(1, 30), rng.randint(1, 4))
        sightings = [Sighting(k, rng.choice(_KINDS), rng.random() < 0.5) for k in keys]
        blocks = [bytes([rng.randint(0, 2), rng.randint(0, 3)]) * 8 for _ in range(rng.randint(0, 3))]
        conversation = (
            (
                rng.randint(1, 5),
                rng.choice((None, b"r1", b"r2")),
                rng.choice((0, 7, 8, 9, 10, 2**64 - 3)),
                rng.choice((-1, 3, 4)),
                rng.choice((1, 2)),
                rng.choice(("", "", "tail:2")),
            )
            if rng.random() < 0.7
            else None
        )
        model_key = f"p\x00m{rng.randint(1, 2)}"
        if decide:
            assert isinstance(learner, RedisLearner)
            answers: Answers = learner.decide(
                family,
                sightings,
                clock,
                ticket,
                model_key=model_key,
                blocks=blocks,
                lines_for=_lines_for(blocks),
                conversation=conversation,
            )
        else:
            answers = ask_in_turn(
                learner,
                family,
                sightings,
                clock,
                ticket,
                blocks=blocks,
                lines_for=_lines_for(blocks),
                conversation=conversation,
            )
        out.append(answers)
        out.append(learner.learned_minimum(model_key))
        open_tickets.append((ticket, keys))
        op = rng.random()
        if op < 0.4:
            t, ks = open_tickets.pop(rng.randrange(len(open_tickets)))
            learner.started([(k, rng.choice((300.0, 3_600.0))) for k in ks if rng.random() < 0.6], t, now[0])
        elif op < 0.5:
            t, ks = open_tickets.pop()
            learner.void(ks, t)
        elif op < 0.6:
            t, ks = open_tickets[rng.randrange(len(open_tickets))]
            learner.release(ks[:1], t)
        elif op < 0.7:
            learner.not_cached(rng.sample(range(1, 30), 2))
        elif op < 0.85:
            expected = rng.randint(0, 2)
            learner.feedback(family, expected, rng.randint(0, expected))
        elif op < 0.92:
            learner.raise_minimum(model_key, rng.uniform(300, 9_000))
        else:
            learner.lower_minimum(model_key)
    for family in (1, 2, 3):
        out += [learner.recurrence(family, k, run, now[0]) for k in _KINDS for run in (1, 2, 3)]  # type: ignore[attr-defined]
        out.append(learner.reliability(family))  # type: ignore[attr-defined]
    out.append(learner.claims())  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_a_decision_in_one_round_trip_answers_as_the_calls_one_by_one(redis_port: int, seed: int) -> None:
    wire = Wire()
    shared = RedisLearner(
        _counting_client(redis_port, wire), key_prefix=f"decide:{seed}:{time.monotonic_ns()}:", timeout=10.0
    )
    try:
        expected = _replay_decisions(MemoryLearner(max_age=MAX_AGE), seed, 150, decide=False)
        got = _replay_decisions(shared, seed, 150, decide=True)
        assert shared.faults == 0
        for n, (a, b) in enumerate(zip(expected, got, strict=True)):
            assert a == b, f"answer {n}: {a!r} != {b!r}"  # exact: the same floats
    finally:
        shared.clear()


def test_volatile_blocks_changed_by_another_process_cost_a_second_round_trip_not_a_different_answer(
    redis_port: int,
) -> None:
    prefix = f"stale:{time.monotonic_ns()}:"
    wire = Wire()
    a = RedisLearner(_counting_client(redis_port, wire), key_prefix=prefix, timeout=10.0)
    b = RedisLearner(redis.Redis(port=redis_port), key_prefix=prefix, timeout=10.0)
    memory = MemoryLearner(max_age=MAX_AGE)
    stable = b"s" * 16
    try:
        for n, head in enumerate((b"a", b"b", b"c")):  # process b sees block 0 change every time
            for learner in (b, memory):
                learner.stability(5, [head * 16, stable], {0: (head, b"rest")} if n else {})
        blocks = [b"d" * 16, stable]
        asked: list[list[int]] = []

        def lines_for(positions: Collection[int]) -> dict[int, tuple[bytes, bytes]]:
            asked.append(sorted(positions))
            return {i: (b"d", b"rest") for i in positions if i == 0}

        wire.take()
        got = a.decide(5, [Sighting(1, "static", True)], lambda: 100.0, 1, blocks=blocks, lines_for=lines_for)
        want = ask_in_turn(
            memory,
            5,
            [Sighting(1, "static", True)],
            lambda: 100.0,
            1,
            blocks=blocks,
            lines_for=lines_for,
            conversation=None,
        )
        assert got == want
        assert got[1] == (0, True, False)  # block 0 is volatile, only its first line changes
        assert asked == [[], [0], [0]]  # a knew of no volatile block; then of block 0 (and memory)
        assert wire.take()["learner"] == 2
        assert a.volatile_candidates(5) == {0}
        # Now a knows: one round trip again.
        a.decide(5, [Sighting(1, "static", True)], lambda: 101.0, 2, blocks=blocks, lines_for=lines_for)
        assert wire.take()["learner"] == 1
    finally:
        a.clear()


def test_with_redis_down_a_decision_is_answered_locally_and_the_fault_counted() -> None:
    faults: list[str] = []
    learner = RedisLearner(
        redis.Redis(port=free_port()),
        key_prefix="down:",
        timeout=0.05,
        retry_after=60.0,
        on_fault=lambda stage, exc: faults.append(f"{stage}:{type(exc).__name__}"),
    )
    memory = MemoryLearner(max_age=MAX_AGE)
    blocks = [b"a" * 16, b"b" * 16]
    for ticket in (1, 2):
        kwargs: dict[str, Any] = {
            "blocks": blocks,
            "lines_for": _lines_for(blocks),
            "conversation": (9, None, 0, 2, 1, ""),
        }
        sightings = [Sighting(1, "static", True), Sighting(2, "tail")]
        clock = partial(float, 100.0 + ticket)
        got = learner.decide(7, sightings, clock, ticket, model_key="m", **kwargs)
        assert got == ask_in_turn(memory, 7, sightings, clock, ticket, **kwargs)
        learner.started([(1, 300.0)], ticket, 100.5 + ticket)
        memory.started([(1, 300.0)], ticket, 100.5 + ticket)
        learner.feedback(7, 1, 0)
        memory.feedback(7, 1, 0)
    assert faults == ["learner:ConnectionError"]  # one fault, then Redis is left alone


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_router_conversation_is_planned_alike_on_both_learners_and_a_switch_costs_one_more_trip(
    redis_port: int,
) -> None:
    # Each request of a conversation goes to one of two models. After a switch of model
    # the conversation's record says where the last request to this model ended, and the
    # planner sights that prefix: a second round trip, only then.
    wire = Wire()
    shared = RedisLearner(
        _counting_client(redis_port, wire), key_prefix=f"router:{time.monotonic_ns()}:", timeout=10.0
    )
    where = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}
    models = ["claude-sonnet-4-5", "claude-opus-4-1"]
    draws = random.Random("router")
    route = [draws.choice(models) for _ in range(12)]
    try:
        planned: dict[str, list[Any]] = {}
        trips: list[int] = []
        for name, learner in (("memory", MemoryLearner(max_age=MAX_AGE)), ("redis", shared)):
            clock = _Clock()
            planner = Planner(learner=learner, clock=clock)
            history: list[dict[str, Any]] = []
            planned[name] = []
            for turn, model in enumerate(route):
                history.append({"role": "user", "content": _text(200 + turn, 60)})
                body = {"model": model, "max_tokens": 8, "system": _text(2, 1_500), "messages": history}
                wire.take()
                plan = planner.plan(body=orjson.dumps(body), **where)
                if name == "redis":
                    trips.append(wire.take()["learner"])
                planner.started(plan)
                planner.finished(plan)
                planned[name].append([(p.reason, p.action, p.position, p.ttl) for p in plan.placements])
                history.append({"role": "assistant", "content": _text(300 + turn, 60)})
                clock.now += 30.0
        assert planned["redis"] == planned["memory"]
        assert shared.faults == 0
        # A request after a switch back to a model seen before: one more round trip.
        back = [n > 0 and route[n] != route[n - 1] and route[n] in route[:n] for n in range(len(route))]
        assert any(back)
        assert trips[1:] == [2 if b else 1 for b in back[1:]]
        # ... where the tail of the last request to that model was sighted, and marked.
        for n in range(len(route)):
            if back[n]:
                assert [a for r, a, _, _ in planned["redis"][n] if r == "previous_turn"] == ["inserted"] * 2
    finally:
        shared.clear()
