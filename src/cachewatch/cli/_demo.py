"""``cachewatch demo``: the main job, end to end, with no key, no network and no configuration.

It starts two emulators in-process (an Anthropic-style host and a DashScope-style host),
serves ``/metrics``, and runs a realistic workload through the **real** anthropic and
openai SDKs wrapped by :func:`cachewatch.wrap`:

- a multi-turn support chat with a long system prompt (Anthropic Messages, JSON);
- an agent tool loop with large tool results (Anthropic Messages, streaming);
- questions over one shared document (DashScope Anthropic-compatible endpoint, streaming);
- a multi-turn chat on DashScope's OpenAI-compatible mode (openai SDK, streaming);
- one-shot questions under a system prompt whose first line is the current time (Anthropic
  Messages, JSON): the anti-pattern the prompt advice points at (``system:first_line``).

The workload runs twice, with caching off and with ``breakpoints="auto"``, under two API
keys mapped to the workspaces ``caching-off`` and ``caching-auto`` (the emulator keeps
a separate cache per key), and prints what each run billed and what caching saved. The
run without caching uses ``breakpoints="shadow"``: its requests go out exactly as with
``"off"``, and cachewatch estimates what ``auto`` would have cost on them, which the
second run then shows for real.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..accounting._records import RequestInfo, UsageRecord

__all__ = ["DemoResult", "Totals", "run_demo"]

PHASES = ("off", "auto")
#: The ``breakpoints`` mode of each phase: the run without caching is shadowed.
MODES = {"off": "shadow", "auto": "auto"}
WORKSPACES = {f"demo-key-caching-{phase}": f"caching-{phase}" for phase in PHASES}

_WORDS = [
    "policy",
    "account",
    "invoice",
    "refund",
    "shipment",
    "warranty",
    "customer",
    "order",
    "billing",
    "region",
    "latency",
    "cache",
    "prompt",
    "schedule",
    "escalation",
    "priority",
    "ticket",
    "support",
    "agent",
    "context",
    "document",
    "section",
    "clause",
    "contract",
    "renewal",
    "discount",
    "quota",
    "limit",
    "tier",
    "usage",
    "report",
    "dashboard",
    "metric",
    "alert",
    "incident",
]


def _text(seed: str, words: int) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(words):
        out.append(rng.choice(_WORDS))
        if i % 17 == 16:
            out[-1] += "."
    return " ".join(out)


@dataclass
class Totals:
    """Token and money totals of a set of requests."""

    requests: int = 0
    errors: int = 0
    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    cost: float = 0.0
    savings: float = 0.0
    write_premium: float = 0.0
    #: Diagnosed cache-miss reasons and how often each occurred.
    misses: dict[str, int] = field(default_factory=dict)
    #: The planner's prompt advice: (block, kind) -> the most tokens it said moving would free.
    advice: dict[tuple[str, str], int] = field(default_factory=dict)
    #: ``breakpoints="shadow"``: what the same requests would have cost with ``auto``.
    shadow_cost: float = 0.0
    #: Requests that carried a shadow estimate.
    shadowed: int = 0

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        if record.miss is not None:
            reason = record.miss.reason
            self.misses[reason] = self.misses.get(reason, 0) + 1
        if record.advice is not None:
            key = (record.advice.block, record.advice.kind)
            self.advice[key] = max(self.advice.get(key, 0), record.advice.tokens)
        if record.outcome.value != "ok":
            self.errors += 1
        usage = record.usage
        if usage is not None:
            self.input += usage.input
            self.cache_read += usage.cache_read
            self.cache_write += usage.cache_write
            self.output += usage.output
        if record.cost is not None:
            self.cost += record.cost.total
            self.savings += record.cost.savings
            self.write_premium += record.cost.write_premium
        shadow = record.shadow
        if shadow is not None:
            self.shadowed += 1
            if shadow.cost is not None:
                self.shadow_cost += shadow.cost.total

    @property
    def prompt(self) -> int:
        return self.input + self.cache_read + self.cache_write

    @property
    def hit_ratio(self) -> float:
        return self.cache_read / self.prompt if self.prompt else 0.0


class _Collector:
    """A sink that adds every record to the totals of its (phase, workload)."""

    name = "demo"

    def __init__(self, totals: Totals, tick: Callable[[], None]) -> None:
        self.totals = totals
        self.tick = tick
        self.lock = threading.Lock()

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        with self.lock:
            self.totals.add(record)
        self.tick()


@dataclass
class DemoResult:
    """Totals per phase and per (phase, workload), plus where things ran."""

    phases: dict[str, Totals] = field(default_factory=dict)
    workloads: dict[tuple[str, str], Totals] = field(default_factory=dict)
    metrics_url: str = ""
    seconds: float = 0.0


WORKLOADS = ("support chat", "agent tool loop", "document Q&A", "DashScope chat", "timestamped prompt")
#: Requests per workload per phase.
WORKLOAD_REQUESTS = {
    "support chat": 8,
    "agent tool loop": 10,
    "document Q&A": 8,
    "DashScope chat": 8,
    "timestamped prompt": 5,
}


def _support_chat(client: Any, run: str) -> None:
    system = "You are the support assistant of Example Corp. " + _text("support-system", 2600)
    messages: list[dict[str, Any]] = []
    for turn in range(WORKLOAD_REQUESTS["support chat"]):
        if turn == 6:
            # An operator edits the system prompt mid-conversation: the cache misses, and
            # cachewatch says why (prefix_changed_system).
            system += " Holiday hours apply this week."
        messages.append(
            {"role": "user", "content": f"[{run}] Question {turn}: " + _text(f"{run}-q{turn}", 60)}
        )
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=256, system=system, messages=messages
        )
        messages.append({"role": "assistant", "content": reply.content[0].text})


_TOOLS = [
    {
        "name": name,
        "description": f"{name}: " + _text(f"tool-{name}", 350),
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
    for name in ("search_orders", "lookup_customer", "open_ticket")
]


def _agent_loop(client: Any, run: str) -> None:
    system = "You are an operations agent. " + _text("agent-system", 900)
    messages: list[dict[str, Any]] = []
    for task in range(WORKLOAD_REQUESTS["agent tool loop"] // 2):
        messages.append(
            {"role": "user", "content": f"[{run}] Task {task}: please use the tool search_orders."}
        )
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=256, system=system, tools=_TOOLS, messages=messages
        ) as stream:
            message = stream.get_final_message()
        messages.append(
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}
        )
        tool_uses = [b for b in message.content if b.type == "tool_use"]
        results = [
            {"type": "tool_result", "tool_use_id": b.id, "content": _text(f"{run}-result-{task}", 700)}
            for b in tool_uses
        ] or [{"type": "text", "text": "continue"}]
        messages.append({"role": "user", "content": results})
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=256, system=system, tools=_TOOLS, messages=messages
        ) as stream:
            message = stream.get_final_message()
        messages.append(
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}
        )


def _document_qa(client: Any, run: str) -> None:
    document = "Master services agreement. " + _text("shared-document", 4200)
    for q in range(WORKLOAD_REQUESTS["document Q&A"]):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": document},
                    {"type": "text", "text": f"[{run}] Question {q}: " + _text(f"{run}-doc-q{q}", 40)},
                ],
            }
        ]
        with client.messages.stream(model="qwen3.6-plus", max_tokens=256, messages=messages) as stream:
            stream.get_final_message()


def _dashscope_chat(client: Any, run: str) -> None:
    system = "You are a bilingual travel assistant. " + _text("dashscope-system", 1800)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in range(WORKLOAD_REQUESTS["DashScope chat"]):
        messages.append({"role": "user", "content": f"[{run}] Turn {turn}: " + _text(f"{run}-ds{turn}", 50)})
        stream = client.chat.completions.create(
            model="qwen-plus", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        messages.append({"role": "assistant", "content": text})


def _timestamped_prompt(client: Any, run: str) -> None:
    # The current time on the first line of the system prompt: nothing after it can be read
    # from the cache. From the third request on, cachewatch says which block changes and
    # how many tokens moving it after the stable part would make cacheable.
    handbook = "You answer questions about the staff handbook. " + _text("handbook", 1500)
    for q in range(WORKLOAD_REQUESTS["timestamped prompt"]):
        now = f"Current time: 2026-05-04 09:{q:02d}:{len(run):02d} UTC ({run})."
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=128,
            system=now + "\n" + handbook,
            messages=[{"role": "user", "content": f"[{run}] Question {q}: " + _text(f"{run}-hb{q}", 30)}],
        )


_RUNNERS: dict[str, Callable[[Any, str], None]] = {
    "support chat": _support_chat,
    "agent tool loop": _agent_loop,
    "document Q&A": _document_qa,
    "DashScope chat": _dashscope_chat,
    "timestamped prompt": _timestamped_prompt,
}


@contextlib.contextmanager
def _emulators() -> Iterator[tuple[str, str]]:
    from ..emulator import create_app, run_in_thread

    with (
        run_in_thread(create_app(profile="anthropic")) as anthropic_url,
        run_in_thread(create_app(profile="dashscope")) as dashscope_url,
    ):
        yield anthropic_url, dashscope_url


def _clients(
    phase: str,
    anthropic_url: str,
    dashscope_url: str,
    registry: Any,
    sinks: dict[str, Any],
    breakpoints: str | None = None,
) -> dict[str, Any]:
    import anthropic
    import openai

    import cachewatch

    key = f"demo-key-caching-{phase}"
    providers = {_hostport(anthropic_url): "anthropic", _hostport(dashscope_url): "dashscope"}
    common = {
        "breakpoints": breakpoints or MODES.get(phase, phase),
        "registry": registry,
        "providers": providers,
        "workspaces": WORKSPACES,
    }
    return {
        "support chat": cachewatch.wrap(
            anthropic.Anthropic(api_key=key, base_url=anthropic_url, max_retries=0),
            sinks=[sinks["support chat"]],
            **common,
        ),
        "agent tool loop": cachewatch.wrap(
            anthropic.Anthropic(api_key=key, base_url=anthropic_url, max_retries=0),
            sinks=[sinks["agent tool loop"]],
            **common,
        ),
        "document Q&A": cachewatch.wrap(
            anthropic.Anthropic(api_key=key, base_url=dashscope_url + "/apps/anthropic", max_retries=0),
            sinks=[sinks["document Q&A"]],
            **common,
        ),
        "DashScope chat": cachewatch.wrap(
            openai.OpenAI(api_key=key, base_url=dashscope_url + "/compatible-mode/v1", max_retries=0),
            sinks=[sinks["DashScope chat"]],
            **common,
        ),
        "timestamped prompt": cachewatch.wrap(
            anthropic.Anthropic(api_key=key, base_url=anthropic_url, max_retries=0),
            sinks=[sinks["timestamped prompt"]],
            **common,
        ),
    }


def _hostport(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


def run_demo(
    *,
    registry: Any,
    tick: Callable[[], None] = lambda: None,
    on_phase: Callable[[str], None] = lambda phase: None,
    then: Callable[[DemoResult, Callable[[str], None]], None] | None = None,
) -> DemoResult:
    """Run both phases; then, while the emulators are still up, call ``then(result, one_round)``.

    ``one_round(phase)`` runs the whole workload once more on that phase's clients
    (``demo --serve`` calls it in a loop).
    """
    result = DemoResult()
    started = time.perf_counter()
    with _emulators() as (anthropic_url, dashscope_url):
        clients_by_phase: dict[str, dict[str, Any]] = {}
        for phase in PHASES:
            on_phase(phase)
            result.phases[phase] = Totals()
            sinks = {}
            for name in WORKLOADS:
                totals = result.workloads[(phase, name)] = Totals()
                sinks[name] = _PhaseCollector(totals, result.phases[phase], tick)
            clients = clients_by_phase[phase] = _clients(phase, anthropic_url, dashscope_url, registry, sinks)
            for name in WORKLOADS:
                _RUNNERS[name](clients[name], "run-0")
        result.seconds = time.perf_counter() - started
        if then is not None:
            rounds = iter(range(1, 1 << 30))

            def one_round(phase: str) -> None:
                run = f"run-{next(rounds)}"
                for name in WORKLOADS:
                    _RUNNERS[name](clients_by_phase[phase][name], run)

            then(result, one_round)
    return result


class _PhaseCollector(_Collector):
    def __init__(self, totals: Totals, phase_totals: Totals, tick: Callable[[], None]) -> None:
        super().__init__(totals, tick)
        self.phase_totals = phase_totals

    def finish(self, state: object | None, record: UsageRecord) -> None:
        with self.lock:
            self.totals.add(record)
            self.phase_totals.add(record)
        self.tick()
