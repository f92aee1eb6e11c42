"""Savings of ``breakpoints="auto"`` against fixed marker strategies, on emulator workloads.

SPEC section 11: on every emulator workload, the net savings of ``auto`` are at least
those of the best fixed strategy chosen in hindsight; on 200 one-shot (no-reuse)
prompts, ``auto`` costs no more than 1 % above no caching.

    .venv/bin/python benchmarks/savings.py [--only NAME ...] [--trace]

Every (workload, strategy) pair runs against a **fresh emulator** with its own
:class:`~cachewatch.emulator.ManualClock`, which the workload advances realistically
(seconds between chat turns, minutes between document questions, a few gaps past the
5-minute TTL). Requests go through the real anthropic SDK wrapped by
:func:`cachewatch.wrap`, so they cross the real transport:

* the fixed strategies are request transforms applied here, sent with
  ``breakpoints="off"`` (cachewatch adds nothing):

  - ``none``: no marker;
  - ``system``: a marker on the last system block (a string system becomes one block);
  - ``sys+last``: also one on the last block of the last message;
  - ``top-level``: ``cache_control: {"type": "ephemeral"}`` at the top level (Anthropic
    automatic mode; n/a on the DashScope profile);
  - ``litellm``: LiteLLM-style injection points, system + the last *user* message
    (``role: user, index: -1``). LiteLLM works on OpenAI-format messages, where tool
    results are ``role: tool``, so a user message holding only ``tool_result`` blocks
    is not a user turn here;

* ``auto`` is the transport with ``breakpoints="auto"`` and no caller marker; one
  wrapped client (one learning :class:`~cachewatch.planning._planner.Planner`) per run.

``run_workload(workload, "shadow")`` (not part of the table; ``benchmarks/shadow_accuracy.py``
uses it) sends the requests unchanged with ``breakpoints="shadow"``: its ``bill`` is what
was billed without markers, and ``Result.shadow`` what the shadow estimate says ``auto``
would have been billed.

Cost is in token units from the usage the emulator billed:
``input x 1 + 5m writes x 1.25 + 1h writes x 2 + reads x 0.1``. The output is a
table (workload x strategy, in thousands of units), the hindsight-best fixed strategy
per workload, ``auto``'s ratio to it (bar: <= 1.01x) and, for traffic that is never
reused, the check against ``none`` (bar: <= 1.01x). Where ``auto`` loses, the requests where it paid more are
listed with the markers it placed. The exit code is always 0: this is a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anthropic
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.cli._demo import _WORDS as _DEMO_WORDS
from cachewatch.emulator import ManualClock, create_app, run_in_thread

__all__ = [
    "FIXED",
    "PRICES",
    "STRATEGIES",
    "WORKLOADS",
    "Bill",
    "Result",
    "Workload",
    "main",
    "run_workload",
]

#: Token-unit multipliers: uncached input, 5-minute write, 1-hour write, read.
PRICES = {"input": 1.0, "w5m": 1.25, "w1h": 2.0, "read": 0.1}

FIXED = ("none", "system", "sys+last", "top-level", "litellm")
#: SPEC 11: auto costs at most this times the hindsight-best fixed strategy.
BAR = 1.01
STRATEGIES = (*FIXED, "auto")

SONNET = "claude-sonnet-4-6"  # minimum 1,024
HAIKU = "claude-haiku-4-5"  # minimum 4,096
QWEN = "qwen3.6-plus"  # DashScope, minimum 1,024, 5m only

_EPHEMERAL = {"type": "ephemeral"}
_MARKABLE = frozenset({"text", "image", "document", "tool_use", "tool_result", "search_result"})

# The demo's vocabulary plus common fillers, so prompts tokenise like prose.
_WORDS = [
    *_DEMO_WORDS,
    *[
        "the",
        "a",
        "of",
        "to",
        "and",
        "in",
        "is",
        "for",
        "on",
        "with",
        "that",
        "by",
        "this",
        "be",
        "are",
        "from",
        "as",
        "at",
        "or",
        "an",
        "it",
        "not",
    ],
]


def text(seed: str, tokens: int) -> str:
    """Deterministic filler of about ``tokens`` emulator tokens."""
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < tokens:
        word = rng.choice(_WORDS)
        if len(out) % 17 == 16:
            word += "."
            n += 1
        out.append(word)
        n += (len(word.rstrip(".")) + 3) // 4
    return " ".join(out)


# -- accounting ---------------------------------------------------------------------------


@dataclass
class Bill:
    """Tokens billed by the emulator over one run, and what they cost in units."""

    requests: int = 0
    input: int = 0
    read: int = 0
    w5m: int = 0
    w1h: int = 0

    def add(self, other: Bill) -> None:
        self.requests += other.requests
        self.input += other.input
        self.read += other.read
        self.w5m += other.w5m
        self.w1h += other.w1h

    @property
    def prompt(self) -> int:
        return self.input + self.read + self.w5m + self.w1h

    @property
    def cost(self) -> float:
        return (
            self.input * PRICES["input"]
            + self.w5m * PRICES["w5m"]
            + self.w1h * PRICES["w1h"]
            + self.read * PRICES["read"]
        )


def _bill_of(usage: Any) -> Bill:
    creation = getattr(usage, "cache_creation", None)
    written = usage.cache_creation_input_tokens or 0
    w1h = (getattr(creation, "ephemeral_1h_input_tokens", 0) or 0) if creation is not None else 0
    return Bill(
        requests=1,
        input=usage.input_tokens or 0,
        read=usage.cache_read_input_tokens or 0,
        w5m=written - w1h,
        w1h=w1h,
    )


@dataclass
class Step:
    """One request of a run: what it billed and (for ``auto``) the markers cachewatch placed."""

    index: int
    bill: Bill
    markers: tuple[str, ...] = ()


@dataclass
class Result:
    workload: str
    strategy: str
    bill: Bill
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    #: ``auto`` only: the planner's decisions and advice over the run (see :class:`_Recorder`).
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    advice: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    #: ``shadow`` runs: what the shadow estimate says ``auto`` would have been billed.
    shadow: Bill | None = None


class _ShadowBills:
    """A sink that adds up the shadow estimates of a ``shadow`` run."""

    name = "shadow_bills"

    def __init__(self) -> None:
        self.bill = Bill()
        self._lock = threading.Lock()

    def start(self, info: Any) -> None:
        return None

    def finish(self, state: object | None, record: Any) -> None:
        estimate = record.shadow
        if estimate is None:
            return
        u = estimate.usage
        with self._lock:
            self.bill.add(Bill(1, u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h))


# -- fixed strategies ---------------------------------------------------------------------


def _markable(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") not in _MARKABLE:
        return False
    if block.get("type") == "text":
        t = block.get("text")
        return isinstance(t, str) and bool(t.strip())
    return True


def _mark_content(owner: dict[str, Any], key: str) -> bool:
    """Mark the last markable block of ``owner[key]`` (a string becomes a one-block list)."""
    content = owner.get(key)
    if isinstance(content, str):
        if not content.strip():
            return False
        owner[key] = [{"type": "text", "text": content, "cache_control": dict(_EPHEMERAL)}]
        return True
    if isinstance(content, list):
        for block in reversed(content):
            if _markable(block):
                block["cache_control"] = dict(_EPHEMERAL)
                return True
    return False


def _is_user_turn(message: dict[str, Any]) -> bool:
    """A user message a person wrote (not one that only carries tool results)."""
    if message.get("role") != "user":
        return False
    content = message.get("content")
    if isinstance(content, str):
        return True
    return any(isinstance(b, dict) and b.get("type") != "tool_result" for b in content or ())


def apply_strategy(strategy: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request of a fixed strategy: a deep copy of ``kwargs`` with its markers."""
    out = copy.deepcopy(kwargs)
    if strategy in ("none", "auto", "shadow"):
        return out
    if strategy == "top-level":
        out["cache_control"] = dict(_EPHEMERAL)
        return out
    if out.get("system") is not None:
        _mark_content(out, "system")
    messages = out["messages"]
    if strategy == "sys+last" and messages:
        _mark_content(messages[-1], "content")
    elif strategy == "litellm":
        for message in reversed(messages):
            if _is_user_turn(message):
                _mark_content(message, "content")
                break
    elif strategy != "system":
        raise ValueError(f"unknown strategy {strategy!r}")
    return out


# -- one run ------------------------------------------------------------------------------


class _Silent:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    warning = error = debug = exception = info


class Gate:
    """``before_response`` hook: when armed for ``n``, holds requests until ``n`` have arrived.

    So a fan-out wave is entirely registered with the cache before any response starts
    (a write is readable only once its response has started).
    """

    def __init__(self) -> None:
        self.target = 0
        self.arrived = 0

    def arm(self, n: int) -> None:
        self.arrived = 0
        self.target = n

    def disarm(self) -> None:
        self.target = 0

    async def __call__(self) -> None:
        if self.target <= 0:
            return
        self.arrived += 1
        deadline = time.monotonic() + 10.0
        while self.arrived < self.target and time.monotonic() < deadline:
            await asyncio.sleep(0.002)


class _Recorder:
    """Delegates to the engine's own planner and remembers each plan's decisions."""

    def __init__(self, planner: Any) -> None:
        self._planner = planner
        self.decisions: dict[int, tuple[str, ...]] = {}
        #: What the policy did over the whole run: (action, reason) counts and the advice it gave.
        self.actions: Counter[tuple[str, str]] = Counter()
        self.advice: Counter[tuple[str, str, int]] = Counter()
        self._local = threading.local()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def plan(self, **kwargs: Any) -> Any:
        plan = self._planner.plan(**kwargs)
        with self._lock:
            for p in plan.placements:
                self.actions[(p.action, p.reason)] += 1
            if plan.advice is not None:
                self.advice[(plan.advice.block, plan.advice.kind, plan.advice.tokens)] += 1
        step = getattr(self._local, "step", None)
        if step is not None:
            marks = tuple(
                f"{p.reason}@{p.path}{'' if p.action == 'inserted' else ' ' + p.action}"
                f"{'' if p.ttl in (None, '5m') else ' ' + p.ttl}"
                for p in plan.placements
            )
            with self._lock:
                self.decisions[step] = marks
        return plan

    @contextmanager
    def step(self, index: int) -> Iterator[None]:
        self._local.step = index
        try:
            yield
        finally:
            self._local.step = None


class Run:
    """What a workload sees: ``send`` a request, ``wait`` on the clock, ``fan_out`` a wave."""

    def __init__(self, client: Any, clock: ManualClock, strategy: str, gate: Gate, recorder: Any) -> None:
        self.client = client
        self.clock = clock
        self.strategy = strategy
        self.gate = gate
        self.recorder = recorder
        self.steps: list[Step] = []
        self._lock = threading.Lock()
        self._next = 0

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def send(self, *, stream: bool = False, api_key: str | None = None, **kwargs: Any) -> Any:
        """Send one Messages request (``kwargs`` without markers); returns the final Message.

        ``api_key`` sends it with another key than the client's (a tenant's own key).
        """
        kwargs.setdefault("max_tokens", 64)
        if api_key is not None:
            kwargs["extra_headers"] = {"x-api-key": api_key}
        request = apply_strategy(self.strategy, kwargs)
        with self._lock:
            index = self._next
            self._next += 1
        if self.recorder is not None:
            with self.recorder.step(index):
                message = self._call(request, stream)
            markers = self.recorder.decisions.get(index, ())
        else:
            message = self._call(request, stream)
            markers = ()
        with self._lock:
            self.steps.append(Step(index, _bill_of(message.usage), markers))
        return message

    def _call(self, request: dict[str, Any], stream: bool) -> Any:
        if stream:
            with self.client.messages.stream(**request) as s:
                return s.get_final_message()
        return self.client.messages.create(**request)

    def fan_out(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Send ``requests`` concurrently; none gets its response before all have arrived."""
        self.gate.arm(len(requests))
        try:
            with ThreadPoolExecutor(max_workers=len(requests)) as pool:
                return list(pool.map(lambda kw: self.send(**kw), requests))
        finally:
            self.gate.disarm()


@dataclass(frozen=True)
class Workload:
    name: str
    #: Emulator profile and base path: ``anthropic`` or ``dashscope``.
    profile: str
    run: Callable[..., None]
    params: dict[str, Any] = field(default_factory=dict)
    #: The SPEC bar against ``none`` (one-shot traffic): auto <= none x this.
    vs_none: float | None = None


def applicable(workload: Workload, strategy: str) -> bool:
    return not (strategy == "top-level" and workload.profile != "anthropic")


def run_workload(
    workload: Workload, strategy: str, *, auto_options: dict[str, Any] | None = None, **overrides: Any
) -> Result:
    """Run ``workload`` once under ``strategy`` on a fresh emulator and clock.

    ``auto_options`` are extra planner options for ``auto`` (what-if runs, e.g.
    ``{"continuation_threshold": 0.5}``); ``overrides`` override the workload's parameters.
    """
    clock = ManualClock(start=1_000_000.0)
    gate = Gate()
    app = create_app(profile=workload.profile, clock=clock, before_response=gate)
    started = time.perf_counter()
    shadow = _ShadowBills() if strategy == "shadow" else None
    with run_in_thread(app) as url:
        base = url + ("/apps/anthropic" if workload.profile == "dashscope" else "")
        sdk = anthropic.Anthropic(api_key=f"bench-{strategy}", base_url=base, max_retries=0, timeout=30.0)
        client = cachewatch.wrap(
            sdk,
            breakpoints=strategy if strategy in ("auto", "shadow") else "off",
            registry=CollectorRegistry(),
            logger=_Silent(),
            wall_clock=clock,
            sinks=[shadow] if shadow is not None else None,
            **((auto_options or {}) if strategy in ("auto", "shadow") else {}),
        )
        recorder = None
        engine = getattr(getattr(client._client, "_transport", None), "engine", None)
        if strategy == "auto" and engine is not None and engine.planner is not None:
            # Same planner, observed: its decisions go in the per-request trace.
            recorder = engine.planner = _Recorder(engine.planner)
        run = Run(client, clock, strategy, gate, recorder)
        workload.run(run, **{**workload.params, **overrides})
        with suppress(Exception):
            client.close()
    steps = sorted(run.steps, key=lambda s: s.index)
    bill = Bill()
    for step in steps:
        bill.add(step.bill)
    result = Result(workload.name, strategy, bill, steps, time.perf_counter() - started)
    if shadow is not None:
        result.shadow = shadow.bill
    if recorder is not None:
        result.actions, result.advice = recorder.actions, recorder.advice
    return result


# -- workloads ----------------------------------------------------------------------------


def _reply(message: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}


def chat(
    run: Run, *, turns: int = 14, system_tokens: int = 3_200, model: str = SONNET, seed: str = "chat"
) -> None:
    """A support chat with a long system prompt; 10-60 s between turns."""
    rng = random.Random(seed)
    system = "You are the support assistant of Example Corp. " + text(f"{seed}-system", system_tokens)
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        if turn:
            run.wait(rng.uniform(10, 60))
        messages.append(
            {"role": "user", "content": f"Question {turn}: " + text(f"{seed}-q{turn}", rng.randint(30, 160))}
        )
        reply = run.send(model=model, system=system, messages=messages)
        messages.append(_reply(reply))


_TOOL_NAMES = ("search_orders", "lookup_customer", "open_ticket")


def agent(run: Run, *, tasks: int = 8, result_tokens: int = 1_500, seed: str = "agent") -> None:
    """An agent tool loop (streamed): tools + system, then per task a tool call, a large
    tool result and an answer; 2-15 s between model calls, up to 90 s between tasks."""
    rng = random.Random(seed)
    tools = [
        {
            "name": name,
            "description": f"{name}: " + text(f"{seed}-tool-{name}", 400),
            "input_schema": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        }
        for name in _TOOL_NAMES
    ]
    system = "You are an operations agent. " + text(f"{seed}-system", 900)
    messages: list[dict[str, Any]] = []
    for task in range(tasks):
        if task:
            run.wait(rng.uniform(20, 90))
        tool = _TOOL_NAMES[task % len(_TOOL_NAMES)]
        messages.append(
            {
                "role": "user",
                "content": f"Task {task}: please use the tool {tool}. " + text(f"{seed}-t{task}", 40),
            }
        )
        message = run.send(model=SONNET, system=system, tools=tools, messages=messages, stream=True)
        messages.append(_reply(message))
        uses = [b for b in message.content if b.type == "tool_use"]
        results: list[dict[str, Any]] = [
            {
                "type": "tool_result",
                "tool_use_id": b.id,
                "content": text(f"{seed}-r{task}", rng.randint(result_tokens // 2, result_tokens * 3 // 2)),
            }
            for b in uses
        ] or [{"type": "text", "text": "continue"}]
        messages.append({"role": "user", "content": results})
        run.wait(rng.uniform(2, 15))
        message = run.send(model=SONNET, system=system, tools=tools, messages=messages, stream=True)
        messages.append(_reply(message))


def document_qa(
    run: Run,
    *,
    questions: int = 14,
    document_tokens: int = 5_000,
    long_gaps: tuple[int, ...] = (5, 10),
    seed: str = "doc",
) -> None:
    """Many one-off questions over one shared document (document block + question block in
    one user message); 1-4 min between questions, 6-9 min before questions ``long_gaps``."""
    rng = random.Random(seed)
    system = "Answer from the document only. Quote the clause you rely on."
    document = "Master services agreement. " + text(f"{seed}-document", document_tokens)
    for q in range(questions):
        if q:
            run.wait(rng.uniform(360, 540) if q in long_gaps else rng.uniform(60, 240))
        question = f"Question {q}: " + text(f"{seed}-q{q}", rng.randint(20, 80))
        messages = [
            {
                "role": "user",
                "content": [{"type": "text", "text": document}, {"type": "text", "text": question}],
            }
        ]
        run.send(model=SONNET, system=system, messages=messages)


def one_shot(run: Run, *, prompts: int = 200, seed: str = "oneshot") -> None:
    """Unrelated one-shot prompts: each its own short instruction and a 300-3,500 token
    body (most above the minimum); nothing is ever asked twice. 1-20 s apart."""
    rng = random.Random(seed)
    for i in range(prompts):
        if i:
            run.wait(rng.uniform(1, 20))
        system = f"Task {i}: " + text(f"{seed}-sys{i}", rng.randint(20, 300))
        body = text(f"{seed}-body{i}", rng.randint(300, 3_500))
        run.send(model=SONNET, system=system, messages=[{"role": "user", "content": body}])


def document_chat(
    run: Run, *, conversations: int = 4, turns: int = 6, document_tokens: int = 3_000, seed: str = "docchat"
) -> None:
    """Chats whose first message carries a document under a one-line system prompt (as in
    a chat UI where the user pastes a file); 10-60 s between turns, 0.5-2 min between
    conversations. Its first request looks exactly like a one-shot prompt."""
    rng = random.Random(seed)
    system = "You are a helpful assistant."
    for c in range(conversations):
        if c:
            run.wait(rng.uniform(30, 120))
        messages: list[dict[str, Any]] = []
        for t in range(turns):
            if t:
                run.wait(rng.uniform(10, 60))
            tokens = document_tokens if t == 0 else rng.randint(30, 160)
            messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", tokens)})
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages.append(_reply(reply))


def below_minimum(run: Run, *, conversations: int = 6, turns: int = 5, seed: str = "small") -> None:
    """Conversations whose prompts never reach the model's minimum: short chats on Sonnet
    (< 1,024 tokens) and longer ones on Haiku 4.5 (1,500-3,500 tokens, minimum 4,096)."""
    rng = random.Random(seed)
    for c in range(conversations):
        haiku = c % 3 == 2
        model = HAIKU if haiku else SONNET
        system = f"Assistant {c}. " + text(f"{seed}-sys{c}", 1_800 if haiku else 250)
        messages: list[dict[str, Any]] = []
        for t in range(turns):
            run.wait(rng.uniform(10, 60))
            messages.append({"role": "user", "content": text(f"{seed}-c{c}t{t}", rng.randint(20, 80))})
            reply = run.send(model=model, system=system, messages=messages)
            messages.append(_reply(reply))


def fan_out(
    run: Run, *, waves: int = 3, width: int = 8, system_tokens: int = 3_000, seed: str = "fanout"
) -> None:
    """Parallel fan-out on a cold cache: ``width`` concurrent requests sharing a long system
    prompt (distinct questions), all in flight before any response starts; later waves
    30-120 s apart."""
    rng = random.Random(seed)
    system = "You classify support tickets. " + text(f"{seed}-system", system_tokens)
    for wave in range(waves):
        if wave:
            run.wait(rng.uniform(30, 120))
        requests = [
            {
                "model": SONNET,
                "system": system,
                "messages": [
                    {
                        "role": "user",
                        "content": f"Ticket {wave}.{i}: " + text(f"{seed}-{wave}-{i}", rng.randint(40, 200)),
                    }
                ],
            }
            for i in range(width)
        ]
        run.fan_out(requests)


def dashscope_chat(run: Run, *, turns: int = 16, break_before: int = 8, seed: str = "dashscope") -> None:
    """DashScope (Anthropic-compatible endpoint, 5m TTL only): a chat with a long system
    prompt, 10-90 s between turns and a 7-minute break before turn ``break_before``."""
    rng = random.Random(seed)
    system = "You are a bilingual travel assistant. " + text(f"{seed}-system", 2_500)
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        if turn:
            run.wait(420 if turn == break_before else rng.uniform(10, 90))
        messages.append(
            {"role": "user", "content": f"Turn {turn}: " + text(f"{seed}-t{turn}", rng.randint(30, 200))}
        )
        reply = run.send(model=QWEN, system=system, messages=messages)
        messages.append(_reply(reply))


def per_user_system(
    run: Run, *, requests: int = 60, profile_tokens: int = 2_000, seed: str = "peruser"
) -> None:
    """One-shot requests whose system prompt carries a per-user profile (retrieved context,
    above the minimum, different for every request) under a short shared instruction;
    5-30 s apart. Nothing is ever read again: the bar is no caching."""
    rng = random.Random(seed)
    for i in range(requests):
        if i:
            run.wait(rng.uniform(5, 30))
        system = "You are a personal shopping assistant.\nUser profile:\n" + text(
            f"{seed}-profile{i}", rng.randint(profile_tokens // 2, profile_tokens * 3 // 2)
        )
        question = "Question: " + text(f"{seed}-q{i}", rng.randint(20, 80))
        run.send(model=SONNET, system=system, messages=[{"role": "user", "content": question}])


def timestamp_chat(
    run: Run,
    *,
    conversations: int = 4,
    turns: int = 8,
    system_tokens: int = 3_000,
    seed: str = "stamp",
    last_block: bool = False,
) -> None:
    """Multi-turn chats whose system prompt starts with the current time and a request id
    (different on every request) followed by thousands of stable tokens; 10-60 s between
    turns. Every prefix changes on every request: nothing can be read.

    ``last_block``: the time and request id in a system block of their own after the stable
    one instead (what cachewatch's prompt advice asks for). Every fixed strategy marks that
    last block, which changes on every request; the stable block before it can be read."""
    rng = random.Random(seed)
    stable = "You are the support assistant of Example Corp. " + text(f"{seed}-system", system_tokens)
    for c in range(conversations):
        if c:
            run.wait(rng.uniform(30, 120))
        messages: list[dict[str, Any]] = []
        for turn in range(turns):
            if turn:
                run.wait(rng.uniform(10, 60))
            stamp = f"Current time: {run.clock():.3f}. Request id: {rng.getrandbits(64):016x}."
            messages.append(
                {"role": "user", "content": f"Question {turn}: " + text(f"{seed}-{c}-{turn}", 60)}
            )
            system: str | list[dict[str, Any]] = (
                [{"type": "text", "text": stable}, {"type": "text", "text": stamp}]
                if last_block
                else stamp + "\n" + stable
            )
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages.append(_reply(reply))


def profile_after_instructions(
    run: Run, *, requests: int = 60, instruction_tokens: int = 2_500, seed: str = "profileafter"
) -> None:
    """One-shot requests whose system prompt is two blocks: shared instructions, then a
    per-user profile (different on every request, above the minimum); 5-30 s apart. Every
    fixed strategy marks the last system block, which never recurs; the instructions before
    it are read again by every request."""
    rng = random.Random(seed)
    instructions = "You are a personal shopping assistant. " + text(
        f"{seed}-instructions", instruction_tokens
    )
    for i in range(requests):
        if i:
            run.wait(rng.uniform(5, 30))
        profile = "User profile:\n" + text(f"{seed}-profile{i}", rng.randint(1_000, 3_000))
        system = [{"type": "text", "text": instructions}, {"type": "text", "text": profile}]
        question = "Question: " + text(f"{seed}-q{i}", rng.randint(20, 80))
        run.send(model=SONNET, system=system, messages=[{"role": "user", "content": question}])


def rag(
    run: Run,
    *,
    requests: int = 60,
    pool: int = 12,
    chunks: int = 3,
    chunk_tokens: int = 1_200,
    system_tokens: int = 2_500,
    seed: str = "rag",
) -> None:
    """Retrieval-augmented one-shot questions: a stable system prompt, then a user message of
    ``chunks`` retrieved chunks drawn from a pool in varying order, then the question;
    10-60 s apart. Only the system prompt is ever reused."""
    rng = random.Random(seed)
    system = "Answer from the retrieved passages only; cite them. " + text(f"{seed}-system", system_tokens)
    passages = [f"Passage {k}: " + text(f"{seed}-p{k}", chunk_tokens) for k in range(pool)]
    for i in range(requests):
        if i:
            run.wait(rng.uniform(10, 60))
        picked = rng.sample(range(pool), chunks)
        content = [{"type": "text", "text": passages[k]} for k in picked]
        content.append(
            {"type": "text", "text": f"Question {i}: " + text(f"{seed}-q{i}", rng.randint(20, 60))}
        )
        run.send(model=SONNET, system=system, messages=[{"role": "user", "content": content}])


def multi_tenant(
    run: Run, *, tenants: int = 5, turns: int = 6, system_tokens: int = 2_500, seed: str = "tenants"
) -> None:
    """A gateway in front of several tenants, each with its own API key, long system prompt
    and chats, interleaved at random; 2-20 s between requests."""
    rng = random.Random(seed)
    systems = [f"Tenant {k} assistant. " + text(f"{seed}-sys{k}", system_tokens) for k in range(tenants)]
    chats: list[tuple[int, list[dict[str, Any]], int]] = [
        (k, [], 0) for k in range(tenants) for _ in range(2)
    ]
    pending = list(range(len(chats)))
    first = True
    while pending:
        i = rng.choice(pending)
        tenant, messages, done = chats[i]
        if not first:
            run.wait(rng.uniform(2, 20))
        first = False
        messages.append({"role": "user", "content": text(f"{seed}-{i}-{done}", rng.randint(30, 150))})
        reply = run.send(
            model=SONNET, system=systems[tenant], messages=messages, api_key=f"tenant-{tenant}-key"
        )
        messages.append(_reply(reply))
        chats[i] = (tenant, messages, done + 1)
        if done + 1 >= turns:
            pending.remove(i)


def bursts(
    run: Run, *, waves: int = 4, width: int = 10, system_tokens: int = 2_500, seed: str = "burst"
) -> None:
    """Bursts of concurrent one-shot requests sharing a long system prompt, 6-12 minutes
    apart (past the 5-minute TTL: every burst starts cold)."""
    rng = random.Random(seed)
    system = "You extract fields from invoices. " + text(f"{seed}-system", system_tokens)
    for wave in range(waves):
        if wave:
            run.wait(rng.uniform(360, 720))
        requests = [
            {
                "model": SONNET,
                "system": system,
                "messages": [
                    {"role": "user", "content": f"Invoice {wave}.{i}: " + text(f"{seed}-{wave}-{i}", 300)}
                ],
            }
            for i in range(width)
        ]
        run.fan_out(requests)


def long_agent(run: Run, *, steps: int = 30, result_tokens: int = 600, seed: str = "longagent") -> None:
    """One long agent loop (streamed): 30 tool calls in a row, each with its result, so the
    conversation grows far past the 20-position lookback; 1-8 s between model calls."""
    rng = random.Random(seed)
    tools = [
        {
            "name": name,
            "description": f"{name}: " + text(f"{seed}-tool-{name}", 300),
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
        for name in _TOOL_NAMES
    ]
    system = "You are a research agent; use the tools until the task is done. " + text(f"{seed}-system", 800)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Research task: please use the tool search_orders. " + text(seed, 60)}
    ]
    for step in range(steps):
        if step:
            run.wait(rng.uniform(1, 8))
        message = run.send(model=SONNET, system=system, tools=tools, messages=messages, stream=True)
        messages.append(_reply(message))
        uses = [b for b in message.content if b.type == "tool_use"]
        results: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": b.id, "content": text(f"{seed}-r{step}", result_tokens)}
            for b in uses
        ] or [{"type": "text", "text": "Please use the tool search_orders again."}]
        messages.append({"role": "user", "content": results})


def batch(run: Run, *, items: int = 80, instruction_tokens: int = 3_000, seed: str = "batch") -> None:
    """A batch job: one long shared instruction, then 80 different items, 0.5-3 s apart."""
    rng = random.Random(seed)
    system = "Classify the item by the rubric below. " + text(f"{seed}-rubric", instruction_tokens)
    for i in range(items):
        if i:
            run.wait(rng.uniform(0.5, 3))
        item = f"Item {i}: " + text(f"{seed}-item{i}", rng.randint(50, 400))
        run.send(model=SONNET, system=system, messages=[{"role": "user", "content": item}])


def mixed(run: Run, *, sessions: int = 30, seed: str = "mixed") -> None:
    """A chat product's mixed traffic under one system prompt: 70% one-question sessions
    and 30% chats of 3-8 turns, interleaved; 3-40 s between requests."""
    rng = random.Random(seed)
    system = "You are the help-center assistant of Example Corp. " + text(f"{seed}-system", 2_000)
    live: list[tuple[list[dict[str, Any]], int]] = []
    started = 0
    first = True
    while started < sessions or live:
        if not first:
            run.wait(rng.uniform(3, 40))
        first = False
        if started < sessions and (not live or rng.random() < 0.5):
            turns = 1 if rng.random() < 0.7 else rng.randint(3, 8)
            live.append(([], turns))
            started += 1
            i = len(live) - 1
        else:
            i = rng.randrange(len(live))
        messages, turns = live[i]
        messages.append(
            {"role": "user", "content": text(f"{seed}-{started}-{len(messages)}", rng.randint(30, 200))}
        )
        reply = run.send(model=SONNET, system=system, messages=messages)
        messages.append(_reply(reply))
        if len(messages) // 2 >= turns:
            live.pop(i)


def prompt_edit(run: Run, *, turns: int = 12, edit_at: int = 5, seed: str = "edit") -> None:
    """A long support chat whose system prompt an operator edits once, mid-conversation (a
    deployment): one miss, then the edited prompt is as stable as the old one."""
    rng = random.Random(seed)
    system = "You are the support assistant of Example Corp. " + text(f"{seed}-system", 3_000)
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        if turn:
            run.wait(rng.uniform(10, 60))
        if turn == edit_at:
            system += " Holiday hours apply this week."
        messages.append({"role": "user", "content": f"Question {turn}: " + text(f"{seed}-q{turn}", 80)})
        reply = run.send(model=SONNET, system=system, messages=messages)
        messages.append(_reply(reply))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("chat (long system)", "anthropic", chat),
        Workload("agent tool loop", "anthropic", agent),
        Workload("document Q&A", "anthropic", document_qa),
        Workload("200 one-shot", "anthropic", one_shot, vs_none=1.01),
        Workload("document chat", "anthropic", document_chat),
        Workload("below minimum", "anthropic", below_minimum),
        Workload("fan-out (cold)", "anthropic", fan_out),
        Workload("DashScope chat", "dashscope", dashscope_chat),
        Workload("per-user system", "anthropic", per_user_system, vs_none=1.01),
        Workload("timestamp chat", "anthropic", timestamp_chat, vs_none=1.01),
        Workload("profile block last", "anthropic", profile_after_instructions),
        Workload(
            "timestamp block last", "anthropic", timestamp_chat, {"seed": "stamplast", "last_block": True}
        ),
        Workload("RAG chunks", "anthropic", rag),
        Workload("multi-tenant", "anthropic", multi_tenant),
        Workload("bursts", "anthropic", bursts),
        Workload("long agent loop", "anthropic", long_agent),
        Workload("batch job", "anthropic", batch),
        Workload("mixed chat product", "anthropic", mixed),
        Workload("prompt edit", "anthropic", prompt_edit),
    )
}


# -- report -------------------------------------------------------------------------------


def best_fixed(results: dict[str, Result]) -> str:
    fixed = [s for s in FIXED if s in results]
    return min(fixed, key=lambda s: (results[s].bill.cost, FIXED.index(s)))


def _k(units: float) -> str:
    return f"{units / 1000:,.1f}"


def report(all_results: dict[str, dict[str, Result]], trace: bool = False) -> bool:
    """Print the tables; returns whether every bar passed."""
    ok = True
    head = (
        f"{'workload':<20}"
        + "".join(f"{s:>11}" for s in STRATEGIES)
        + f"  {'best fixed':<11}{'auto/best':>10}  bar"
    )
    print("Net input cost, thousands of units (input 1, 5m write 1.25, 1h write 2, read 0.1)\n")
    print(head)
    print("-" * len(head))
    losses: list[tuple[str, str]] = []
    for name, results in all_results.items():
        best = best_fixed(results)
        ratio = results["auto"].bill.cost / results[best].bill.cost if results[best].bill.cost else 1.0
        workload = WORKLOADS.get(name)
        one_shot = workload is not None and workload.vs_none is not None and best == "none"
        # SPEC 11: auto <= 1.01 x the best fixed strategy on every workload, and on traffic
        # that is never reused <= 1.01 x no caching (checked below).
        bar = BAR
        passed = ratio <= bar + 1e-9
        ok &= passed
        if not passed:
            losses.append((name, best))
        cells = "".join(f"{_k(results[s].bill.cost) if s in results else 'n/a':>11}" for s in STRATEGIES)
        verdict = ("PASS" if passed else "FAIL") + (" (never reused)" if one_shot else "")
        print(f"{name:<20}{cells}  {best:<11}{ratio:>9.3f}x  {verdict}")
    print()

    for name, results in all_results.items():
        workload = WORKLOADS.get(name)
        if workload is None or workload.vs_none is None:
            continue
        ratio = results["auto"].bill.cost / results["none"].bill.cost
        passed = ratio <= workload.vs_none + 1e-9
        ok &= passed
        print(
            f"{name}: auto / none = {ratio:.4f}x (bar <= {workload.vs_none:.2f}x)  {'PASS' if passed else 'FAIL'}"
        )
    print()

    print("Billed tokens per run (requests, uncached input, read, 5m write, 1h write)\n")
    print(
        f"{'workload':<20}{'strategy':<11}{'req':>5}{'input':>10}{'read':>10}{'w5m':>10}{'w1h':>8}{'cost':>11}"
    )
    for name, results in all_results.items():
        totals = {r.bill.prompt for r in results.values()}
        for s in STRATEGIES:
            if s not in results:
                continue
            b = results[s].bill
            print(
                f"{name:<20}{s:<11}{b.requests:>5}{b.input:>10,}{b.read:>10,}{b.w5m:>10,}{b.w1h:>8,}{b.cost:>11,.0f}"
            )
        if len(totals) != 1:
            print(f"  !! prompt totals differ between strategies: {sorted(totals)}")
    print()

    print_learned(all_results)

    for name, best in losses if not trace else [(n, best_fixed(r)) for n, r in all_results.items()]:
        print_trace(all_results[name], best)
    return ok


def print_learned(all_results: dict[str, dict[str, Result]]) -> None:
    """What auto's policy did on each workload: markers by kind, what it declined, its advice."""
    print("What auto learned: markers placed per kind, and markers declined (with why)\n")
    print(f"{'workload':<20}{'placed':<44}{'declined':<44}advice")
    for name, results in all_results.items():
        auto = results.get("auto")
        if auto is None:
            continue
        placed = Counter({r: n for (a, r), n in auto.actions.items() if a in ("inserted", "kept")})
        declined: Counter[str] = Counter()
        for (action, _reason), n in auto.actions.items():
            if action.startswith("skipped_"):
                declined[action.removeprefix("skipped_")] += n
        advice = ""
        if auto.advice:
            by_block: Counter[tuple[str, str]] = Counter()
            most: dict[tuple[str, str], int] = {}
            for (block, kind, tokens), n in auto.advice.items():
                by_block[(block, kind)] += n
                most[(block, kind)] = max(most.get((block, kind), 0), tokens)
            (block, kind), n = by_block.most_common(1)[0]
            advice = f"{block} ({kind}) is volatile: up to {most[(block, kind)]:,} tokens cacheable if moved ({n} req.)"

        def cell(c: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in c.most_common(3)) or "-"

        print(f"{name:<20}{cell(placed):<44}{cell(declined):<44}{advice or '-'}")
    print()


def print_trace(results: dict[str, Result], best: str, limit: int = 40) -> None:
    """Per request: auto's cost vs ``best``'s, and the markers auto placed."""
    auto, winner = results["auto"], results[best]
    print(f"-- {auto.workload}: auto vs {best}, requests where the costs differ --")
    print(f"{'#':>4}{'auto':>9}{best:>11}{'  auto in/read/w5m/w1h':<30}  auto markers")
    shown = 0
    for a, w in zip(auto.steps, winner.steps, strict=False):
        if abs(a.bill.cost - w.bill.cost) < 0.01:
            continue
        shown += 1
        if shown > limit:
            print("   ...")
            break
        split = f"{a.bill.input}/{a.bill.read}/{a.bill.w5m}/{a.bill.w1h}"
        print(
            f"{a.index:>4}{a.bill.cost:>9,.0f}{w.bill.cost:>11,.0f}  {split:<28}  {', '.join(a.markers) or '-'}"
        )
    print()


def _option(text: str) -> tuple[str, Any]:
    name, _, raw = text.partition("=")
    value: Any = raw
    for convert in (int, float):
        try:
            value = convert(raw)
            break
        except ValueError:
            pass
    if raw in ("true", "false"):
        value = raw == "true"
    return name.strip(), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only workloads whose name contains this")
    parser.add_argument(
        "--trace", action="store_true", help="per-request trace of auto vs the best, for every workload"
    )
    parser.add_argument(
        "--auto-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Planner option for auto (what-if), e.g. continuation_threshold=0.5",
    )
    args = parser.parse_args(argv)
    auto_options = dict(_option(o) for o in args.auto_option)
    selected = [
        w for w in WORKLOADS.values() if not args.only or any(o.lower() in w.name.lower() for o in args.only)
    ]
    started = time.perf_counter()
    all_results: dict[str, dict[str, Result]] = {}
    for workload in selected:
        results: dict[str, Result] = {}
        for strategy in STRATEGIES:
            if applicable(workload, strategy):
                results[strategy] = run_workload(workload, strategy, auto_options=auto_options)
        all_results[workload.name] = results
        print(f"  ran {workload.name} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    print()
    ok = report(all_results, trace=args.trace)
    print(f"overall: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
