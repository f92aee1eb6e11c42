"""A fleet of processes behind one application: per-process learning against the shared state.

    .venv/bin/python benchmarks/fleet.py [--workers 3] [--rounds 40] [--redis-url URL]

N worker processes (subprocesses of this script), each a real ``anthropic.Anthropic``
client wrapped by ``cachewatch.wrap(client, store=RedisStore(url=...))``, send the
traffic of one application to the same emulator (a real HTTP server, in this process)
with the same API key, so they share the provider's cache as the processes of one
deployment do. The same traffic runs twice:

* ``local``: ``RedisStore(url=..., learning=False)``: the miss diagnosis is shared, but
  every process learns alone (its own :class:`~cachewatch.planning._learning_memory.MemoryLearner`);
* ``shared``: ``RedisStore(url=...)``: the planner's learned state is in Redis too
  (:class:`~cachewatch.planning._learning_redis.RedisLearner`).

The traffic, interleaved over the workers round by round (every worker sends its share
of a round at the same time as the others):

* ``faq``: a long shared system prompt and a new question each time. The system prompt
  changes a few times during the run (a deploy), and every version first arrives as a
  burst: one request per worker at once. The emulator holds the burst's responses until
  all of them have arrived (:class:`Gate`), so the processes plan the cold prefix
  concurrently, deterministically;
* ``per-user``: a short instruction block, then a profile different for every request
  (above the minimum), then a question: never reused;
* ``chat``: conversations under a long system prompt whose turns land on a different
  worker each time (a load balancer without session affinity).

It prints, for both modes, the cost in token units (input 1, 5m write 1.25, 1h write 2,
read 0.1, from the usage the emulator billed), the cache-write tokens, the wasted-write
tokens (``cachewatch_cache_wasted_write_tokens_total``: writes never read within their
TTL, counted by the workers' own diagnosis once the workers' wall clock is moved an hour
on), the time spent in learned-state calls per request (median, µs; in ``shared`` these
are Redis round trips), the learned state's round trips per request (mean: its ``EVALSHA``
messages, counted on the wire by the worker's Redis connections), a bare Redis ``PING``
from the same worker right after each
request (median, µs: the yardstick for a round trip in the same conditions) and the
request latency as the client saw it (median).

``tests/test_fleet.py`` drives the same harness (:class:`Fleet`, :class:`Workloads`,
:func:`serve_emulator`) with its own assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "API_KEY",
    "Fleet",
    "Gate",
    "Recorder",
    "Result",
    "Workloads",
    "main",
    "redis_server",
    "run_mode",
    "serve_emulator",
    "strip_markers",
]

API_KEY = "sk-fleet-shared"
FAQ_MODEL = "claude-sonnet-4-5"  # minimum 1,024
CHAT_MODEL = "claude-sonnet-4-6"  # minimum 1,024
#: Token-unit multipliers: uncached input, 5-minute write, 1-hour write, read.
UNITS = {"input": 1.0, "w5m": 1.25, "w1h": 2.0, "read": 0.1}
#: Learned-state methods that never leave the process (a local copy answers them).
_LOCAL_CALLS = frozenset({"learned_minimum", "volatile_candidates"})

# fmt: off
_VOCABULARY = (
    "the", "a", "of", "to", "and", "in", "is", "for", "on", "with", "that", "by", "this", "be",
    "are", "from", "as", "at", "or", "an", "it", "not", "account", "billing", "invoice", "order",
    "refund", "shipping", "warehouse", "customer", "policy", "request", "support", "ticket",
    "priority", "escalation", "contract", "renewal", "discount", "region", "currency", "tax",
    "product", "catalogue", "inventory", "supplier", "delivery", "return", "exchange", "warranty",
    "repair", "subscription", "plan", "upgrade", "downgrade", "payment", "method", "card",
    "transfer", "statement", "balance",
)
# fmt: on


def text(seed: str, tokens: int) -> str:
    """Deterministic prose of about ``tokens`` emulator tokens (a word: ceil(len/4))."""
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < tokens:
        word = rng.choice(_VOCABULARY)
        if len(out) % 13 == 12:
            word += "."
            n += 1
        out.append(word)
        n += (len(word.rstrip(".")) + 3) // 4
    return " ".join(out)


def _block(body: str) -> dict[str, Any]:
    return {"type": "text", "text": body}


# -- traffic ----------------------------------------------------------------------------------


@dataclass
class Conversation:
    """A chat whose turns the caller sends one at a time, each with the previous reply."""

    system: str
    first: str
    seed: str
    turn: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def next_body(self) -> dict[str, Any]:
        question = self.first if self.turn == 0 else text(f"{self.seed}:{self.turn}", 60)
        messages = [*self.history, {"role": "user", "content": [_block(question)]}]
        return {
            "model": CHAT_MODEL,
            "max_tokens": 32,
            "system": [_block(self.system)],
            "messages": messages,
        }

    def answered(self, body: Mapping[str, Any], reply: str) -> None:
        self.history = [*body["messages"], {"role": "assistant", "content": [_block(reply)]}]
        self.turn += 1


class Workloads:
    """The request bodies of the fleet's traffic (deterministic for a seed)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        faq_tokens: int = 3_000,
        profile_tokens: int = 1_500,
        chat_system_tokens: int = 2_000,
    ) -> None:
        self.seed = seed
        self.faq_tokens = faq_tokens
        self.profile_tokens = profile_tokens
        self.instructions = text(f"{seed}:instructions", 120)
        self.chat_system = text(f"{seed}:chat-system", chat_system_tokens)
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        return self._n

    def faq_system(self, version: int) -> str:
        return text(f"{self.seed}:faq:{version}", self.faq_tokens)

    def faq(self, version: int = 0) -> dict[str, Any]:
        """The shared system prompt (of a version) and a new question."""
        question = text(f"{self.seed}:question:{self._next()}", 50)
        return {
            "model": FAQ_MODEL,
            "max_tokens": 32,
            "system": [_block(self.faq_system(version))],
            "messages": [{"role": "user", "content": [_block(question)]}],
        }

    def per_user(self) -> dict[str, Any]:
        """Instructions, a profile of one user seen once, and a question."""
        n = self._next()
        return {
            "model": FAQ_MODEL,
            "max_tokens": 32,
            "system": [
                _block(self.instructions),
                _block(text(f"{self.seed}:profile:{n}", self.profile_tokens)),
            ],
            "messages": [{"role": "user", "content": [_block(text(f"{self.seed}:ask:{n}", 40))]}],
        }

    def conversation(self) -> Conversation:
        n = self._next()
        return Conversation(self.chat_system, text(f"{self.seed}:chat:{n}", 80), f"{self.seed}:chat:{n}")


def strip_markers(value: Any) -> Any:
    """``value`` without any ``cache_control`` key (what cachewatch may add), recursively."""
    if isinstance(value, dict):
        return {k: strip_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_markers(v) for v in value]
    return value


# -- the emulator, recorded and gated ---------------------------------------------------------


class Recorder:
    """ASGI middleware: the raw request body and a digest of the response bytes, per request.

    Requests are named by their ``x-fleet-id`` header (set by the workers).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: dict[str, bytes] = {}
        self.responses: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        rid = dict(scope.get("headers") or ()).get(b"x-fleet-id", b"").decode()
        body = bytearray()
        digest = hashlib.sha256()

        async def recv() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def emit(message: Any) -> None:
            if message.get("type") == "http.response.body":
                digest.update(message.get("body", b""))
            await send(message)

        await self.app(scope, recv, emit)
        if rid:
            self.requests[rid] = bytes(body)
            self.responses[rid] = digest.hexdigest()


class Gate:
    """The emulator's ``before_response`` hook: holds a burst until all of it has arrived.

    ``arm(n)``: the next ``n`` requests each wait (at most ``timeout`` seconds) until all
    ``n`` are registered with the emulator's cache, so every one of them was planned
    before any response started. Unarmed, it does nothing.
    """

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._expect = 0
        self._arrived = 0
        #: Bursts that timed out before all their requests arrived.
        self.timeouts = 0

    def arm(self, n: int) -> None:
        with self._lock:
            self._expect, self._arrived = n, 0

    def disarm(self) -> None:
        with self._lock:
            self._expect = self._arrived = 0

    async def __call__(self) -> None:
        with self._lock:
            if self._arrived >= self._expect:
                return
            self._arrived += 1
        deadline = time.monotonic() + self.timeout
        while True:
            with self._lock:
                if self._arrived >= self._expect:
                    return
            if time.monotonic() > deadline:
                self.timeouts += 1
                return
            await asyncio.sleep(0.002)


@contextlib.contextmanager
def serve_emulator() -> Iterator[tuple[str, Recorder, Gate]]:
    """A fresh Anthropic emulator on a free port: (base URL, its recorder, its gate)."""
    from cachewatch.emulator import create_app, run_in_thread

    gate = Gate()
    recorder = Recorder(create_app(profile="anthropic", before_response=gate))
    with run_in_thread(recorder) as url:
        yield url, recorder, gate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` on a free loopback port, nothing saved to disk; yields its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not on PATH (Debian: apt-get install redis-server), or pass --redis-url"
        )
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


# -- the fleet --------------------------------------------------------------------------------


@dataclass
class Result:
    """One request as a worker saw it."""

    id: str
    worker: int
    workload: str
    body: dict[str, Any]
    status: int = 0
    error: str | None = None
    text: str = ""
    sha: str = ""
    input: int = 0
    read: int = 0
    w5m: int = 0
    w1h: int = 0
    learner_us: float = 0.0
    learner_calls: int = 0
    learner_round_trips: int = 0
    latency_us: float = 0.0
    ping_us: float = 0.0

    @property
    def written(self) -> int:
        return self.w5m + self.w1h

    @property
    def units(self) -> float:
        return (
            self.input * UNITS["input"]
            + self.w5m * UNITS["w5m"]
            + self.w1h * UNITS["w1h"]
            + self.read * UNITS["read"]
        )


class Fleet:
    """N worker processes, driven round by round over pipes (one JSON object a line).

    Args:
        n: worker processes.
        emulator_url: the upstream every worker's client talks to.
        redis_url: the Redis of every worker's ``RedisStore``.
        shared: share the planner's learned state (``RedisStore(learning=True)``).
        key_prefix: the ``RedisStore`` namespace (one per run).
        learning_timeout: the ``RedisStore``'s ``learning_timeout`` (and ``timeout``).
        log_dir: where each worker's stderr goes (``worker-<i>.log``).
        timeout: the longest wait for any one answer of a worker (seconds).
    """

    def __init__(
        self,
        n: int,
        emulator_url: str,
        redis_url: str,
        *,
        shared: bool,
        key_prefix: str,
        learning_timeout: float = 0.05,
        log_dir: Path,
        timeout: float = 120.0,
    ) -> None:
        self.n = n
        self.timeout = timeout
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[str]] = []
        self._lines: list[queue.Queue[str | None]] = []
        self._logs: list[TextIO] = []
        self._seq = 0
        self._pending: list[list[Result]] = []
        for i in range(n):
            log = (log_dir / f"worker-{i}.log").open("w")
            self._logs.append(log)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "worker",
                    emulator_url,
                    redis_url,
                    "shared" if shared else "local",
                    key_prefix,
                    repr(learning_timeout),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
            )
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            self._procs.append(proc)
            self._lines.append(lines)
        for i in range(n):
            self._answer(i)  # {"ready": true}

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, i: int, command: Mapping[str, Any]) -> None:
        stdin = self._procs[i].stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    def _answer(self, i: int) -> Any:
        try:
            line = self._lines[i].get(timeout=self.timeout)
        except queue.Empty:
            raise RuntimeError(f"worker {i} did not answer within {self.timeout} s{self._tail(i)}") from None
        if line is None:
            raise RuntimeError(f"worker {i} exited{self._tail(i)}")
        return json.loads(line)

    def _tail(self, i: int) -> str:
        self._logs[i].flush()
        with contextlib.suppress(OSError):
            return ":\n" + (self.log_dir / f"worker-{i}.log").read_text()[-3000:]
        return ""

    # -- traffic -------------------------------------------------------------------------

    def dispatch(self, share: Mapping[int, Sequence[tuple[str, dict[str, Any]]]]) -> None:
        """Start a round: each worker ``i`` sends its ``(workload, body)`` requests in order.

        All workers start at once; :meth:`collect` waits for the round's answers.
        """
        if self._pending:
            raise RuntimeError("collect() the previous round first")
        for i, requests in share.items():
            batch: list[Result] = []
            for workload, body in requests:
                self._seq += 1
                batch.append(Result(f"r{self._seq}", i, workload, body))
            self._pending.append(batch)
            self._send(i, {"op": "send", "requests": [{"id": r.id, "body": r.body} for r in batch]})

    def collect(self) -> list[Result]:
        """The answers of the round :meth:`dispatch` started, in dispatch order."""
        out: list[Result] = []
        for batch in self._pending:
            answers = {a["id"]: a for a in self._answer(batch[0].worker)["results"]}
            for r in batch:
                a = answers[r.id]
                for name in ("status", "error", "text", "sha", "input", "read", "w5m", "w1h"):
                    setattr(r, name, a.get(name, getattr(r, name)))
                r.learner_us = a.get("learner_us", 0.0)
                r.learner_calls = a.get("learner_calls", 0)
                r.learner_round_trips = a.get("learner_round_trips", 0)
                r.latency_us = a.get("latency_us", 0.0)
                r.ping_us = a.get("ping_us", 0.0)
                out.append(r)
        self._pending = []
        return out

    def round(self, share: Mapping[int, Sequence[tuple[str, dict[str, Any]]]]) -> list[Result]:
        self.dispatch(share)
        return self.collect()

    def metrics(self) -> list[dict[str, Any]]:
        """Each worker's Prometheus counters (summed over labels but the named ones)."""
        for i in range(self.n):
            self._send(i, {"op": "metrics"})
        return [self._answer(i) for i in range(self.n)]

    def shift_clock(self, seconds: float) -> None:
        """Move every worker's wall clock (the planner's and the diagnosis's) on."""
        for i in range(self.n):
            self._send(i, {"op": "clock", "offset": seconds})
        for i in range(self.n):
            self._answer(i)

    def close(self) -> None:
        for i, proc in enumerate(self._procs):
            with contextlib.suppress(OSError, ValueError):
                self._send(i, {"op": "exit"})
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in self._logs:
            log.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


# -- a worker process ---------------------------------------------------------------------------


class _Timed:
    """A learned state whose calls are timed and counted (the request's share of them)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0
        self.calls = 0

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name in _LOCAL_CALLS:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed


def _counters(registry: Any) -> dict[str, Any]:
    """Sums of the worker's cachewatch counters, keyed as the fleet report needs them."""
    out: dict[str, Any] = {"tokens": {}, "internal_errors": {}, "wasted_write_tokens": 0.0, "cost": 0.0}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "cachewatch_tokens_total":
                out["tokens"][s.labels["type"]] = out["tokens"].get(s.labels["type"], 0.0) + s.value
            elif s.name == "cachewatch_internal_errors_total":
                stage = s.labels["stage"]
                out["internal_errors"][stage] = out["internal_errors"].get(stage, 0.0) + s.value
            elif s.name == "cachewatch_cache_wasted_write_tokens_total":
                out["wasted_write_tokens"] += s.value
            elif s.name == "cachewatch_cost_total":
                out["cost"] += s.value
    return out


class _Wire:
    """Counts the learned state's messages to Redis (each an ``EVALSHA``: one round trip)."""

    def __init__(self) -> None:
        self.learner = 0


def _counted_client(redis_url: str, wire: _Wire) -> Any:
    """A client whose connections (and those of the pools made from it) count ``EVALSHA``s."""
    import redis

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = b"".join(command) if isinstance(command, list) else bytes(command)
            if b"EVALSHA" in data:
                wire.learner += 1
            super().send_packed_command(command, check_health)

    if not redis_url.startswith("redis://"):
        return redis.Redis.from_url(redis_url)  # a unix socket or TLS: not counted
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=Counting))


def worker_main(argv: Sequence[str]) -> None:
    """One process of the fleet: ``worker <emulator url> <redis url> <shared|local> <prefix> <timeout>``."""
    # The protocol owns the real stdout; anything else printed goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    emulator_url, redis_url, mode, prefix, learning_timeout = argv
    import anthropic
    import redis
    from prometheus_client import CollectorRegistry

    import cachewatch
    from cachewatch.diagnosis._store_redis import RedisStore

    offset = [0.0]

    def wall_clock() -> float:
        return time.time() + offset[0]

    registry = CollectorRegistry()
    wire = _Wire()
    store = RedisStore(
        _counted_client(redis_url, wire),
        key_prefix=prefix,
        learning=mode == "shared",
        learning_timeout=float(learning_timeout),
        timeout=float(learning_timeout),
    )
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key=API_KEY, base_url=emulator_url, max_retries=0),
        store=store,
        registry=registry,
        wall_clock=wall_clock,
    )
    ping = redis.Redis.from_url(redis_url, socket_timeout=1.0)
    transport: Any = client._client._transport
    engine = transport.engine
    planner = engine.planner
    timed = _Timed(planner.learner)
    planner.learner = timed

    def reply(obj: Any) -> None:
        proto.write(json.dumps(obj) + "\n")

    reply({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "exit":
            break
        if op == "clock":
            offset[0] = float(command["offset"])
            reply({"ok": True})
        elif op == "metrics":
            found = _counters(registry)
            inner = timed._inner
            found["learner_faults"] = getattr(inner, "faults", 0)
            found["learner"] = type(inner).__name__
            reply(found)
        elif op == "send":
            results = []
            for request in command["requests"]:
                timed.reset()
                wire.learner = 0
                out: dict[str, Any] = {"id": request["id"]}
                t0 = time.perf_counter()
                try:
                    raw = client.messages.with_raw_response.create(
                        **request["body"], extra_headers={"x-fleet-id": request["id"]}
                    )
                    content = raw.http_response.content
                    message = raw.parse()
                    usage = message.usage
                    creation = getattr(usage, "cache_creation", None)
                    written = usage.cache_creation_input_tokens or 0
                    w1h = (getattr(creation, "ephemeral_1h_input_tokens", 0) or 0) if creation else 0
                    out.update(
                        status=raw.http_response.status_code,
                        sha=hashlib.sha256(content).hexdigest(),
                        text="".join(b.text for b in message.content if b.type == "text"),
                        input=usage.input_tokens or 0,
                        read=usage.cache_read_input_tokens or 0,
                        w5m=written - w1h,
                        w1h=w1h,
                    )
                except Exception as exc:  # reported, not raised: the parent asserts on it
                    out["error"] = f"{type(exc).__name__}: {exc}"[:500]
                out["latency_us"] = (time.perf_counter() - t0) * 1e6
                out["learner_us"] = timed.seconds * 1e6
                out["learner_calls"] = timed.calls
                out["learner_round_trips"] = wire.learner
                # One bare round trip to the same Redis, in the same conditions: the yardstick.
                t0 = time.perf_counter()
                with contextlib.suppress(Exception):
                    ping.ping()
                out["ping_us"] = (time.perf_counter() - t0) * 1e6
                results.append(out)
            reply({"results": results})
    proto.close()


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Run:
    """What one mode's run billed and measured."""

    mode: str
    results: list[Result]
    metrics: list[dict[str, Any]]
    wasted: float
    seconds: float

    def total(self, workload: str | None = None) -> dict[str, float]:
        picked = [r for r in self.results if workload is None or r.workload == workload]
        return {
            "requests": len(picked),
            "units": sum(r.units for r in picked),
            "written": sum(r.written for r in picked),
            "read": sum(r.read for r in picked),
            "writers": sum(1 for r in picked if r.written),
        }


def run_mode(
    shared: bool,
    *,
    workers: int,
    rounds: int,
    redis_url: str,
    versions: int = 3,
    conversations: int = 6,
    seed: int = 0,
    learning_timeout: float = 0.05,
) -> Run:
    """The fleet traffic once, in one mode, against a fresh emulator and Redis namespace."""
    load = Workloads(seed)
    chats = [load.conversation() for _ in range(conversations)]
    burst_every = max(1, rounds // versions)
    prefix = f"cachewatch-fleet-bench:{'shared' if shared else 'local'}:{time.time_ns()}:"
    results: list[Result] = []
    with serve_emulator() as (url, _, gate), tempfile.TemporaryDirectory() as logs:
        fleet = Fleet(
            workers,
            url,
            redis_url,
            shared=shared,
            key_prefix=prefix,
            learning_timeout=learning_timeout,
            log_dir=Path(logs),
        )
        with fleet:
            t0 = time.perf_counter()
            version = -1
            for r in range(rounds):
                if r % burst_every == 0 and version + 1 < versions:
                    version += 1
                    gate.arm(workers)  # a new system prompt arrives everywhere at once
                    results += fleet.round({i: [("faq", load.faq(version))] for i in range(workers)})
                    gate.disarm()
                share: dict[int, list[tuple[str, dict[str, Any]]]] = {i: [] for i in range(workers)}
                for i in range(workers):
                    share[i].append(("faq", load.faq(version)))
                    share[i].append(("per-user", load.per_user()))
                # Conversation c's next turn goes to worker (c + r) % workers: no affinity.
                asked: list[tuple[Conversation, dict[str, Any], int]] = []
                for c, chat in enumerate(chats):
                    worker = (c + r) % workers
                    body = chat.next_body()
                    share[worker].append(("chat", body))
                    asked.append((chat, body, worker))
                got = fleet.round(share)
                by_body = {id(res.body): res for res in got}
                for chat, body, _ in asked:
                    chat.answered(body, by_body[id(body)].text)
                results += got
            seconds = time.perf_counter() - t0
            metrics = fleet.metrics()
            # Every write has expired an hour later: one request on worker 0 sweeps them all
            # out of the shared fingerprint store into its wasted-write counter.
            fleet.shift_clock(3_700.0)
            fleet.round(
                {0: [("sweep", {"model": FAQ_MODEL, "max_tokens": 8, "messages": [_sweep_message()]})]}
            )
            swept = fleet.metrics()
    wasted = sum(m["wasted_write_tokens"] for m in swept)
    failed = [r for r in results if r.error or r.status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0].error}")
    return Run("shared" if shared else "local", results, metrics, wasted, seconds)


def _sweep_message() -> dict[str, Any]:
    # A caller's marker (below the minimum: nothing is cached), so the diagnosis sees it.
    return {"role": "user", "content": [{**_block("ping"), "cache_control": {"type": "ephemeral"}}]}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(runs: Sequence[Run], workers: int) -> str:
    lines = [
        f"{workers} worker processes, {runs[0].total()['requests']:.0f} requests per mode "
        "(faq bursts and questions, per-user profiles, chats without affinity)",
        "",
        f"{'mode':<8}{'workload':<10}{'requests':>9}{'cost (units)':>14}{'written':>10}{'writers':>9}{'read':>11}",
    ]
    for run in runs:
        for workload in ("faq", "per-user", "chat", None):
            t = run.total(workload)
            lines.append(
                f"{run.mode:<8}{workload or 'all':<10}{t['requests']:>9.0f}{t['units']:>14,.0f}"
                f"{t['written']:>10,.0f}{t['writers']:>9.0f}{t['read']:>11,.0f}"
            )
    lines += [
        "",
        f"{'mode':<8}{'cost (units)':>14}{'cost ($)':>10}{'wasted-write tokens':>21}"
        f"{'learner µs/req':>16}{'calls/req':>11}{'RTT/req':>9}{'PING µs':>9}{'latency µs':>12}{'faults':>8}",
    ]
    for run in runs:
        t = run.total()
        dollars = sum(m["cost"] for m in run.metrics)
        faults = sum(m["learner_faults"] for m in run.metrics)
        lines.append(
            f"{run.mode:<8}{t['units']:>14,.0f}{dollars:>10.4f}{run.wasted:>21,.0f}"
            f"{_median([r.learner_us for r in run.results]):>16.0f}"
            f"{statistics.mean(r.learner_calls for r in run.results):>11.1f}"
            f"{statistics.mean(r.learner_round_trips for r in run.results):>9.2f}"
            f"{_median([r.ping_us for r in run.results]):>9.0f}"
            f"{_median([r.latency_us for r in run.results]):>12.0f}{faults:>8.0f}"
        )
    if len(runs) == 2:
        local, shared = runs
        added = _median([r.learner_us for r in shared.results]) - _median(
            [r.learner_us for r in local.results]
        )
        lines += [
            "",
            f"shared / local cost: {shared.total()['units'] / local.total()['units']:.3f}; "
            f"wasted-write tokens: {local.wasted:,.0f} -> {shared.wasted:,.0f}; "
            f"Redis adds {added:.0f} µs per request (median learned-state time, shared - local)",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        worker_main(args[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-timeout", type=float, default=0.05)
    parser.add_argument("--redis-url", help="use this Redis (default: start a redis-server)")
    opts = parser.parse_args(args)

    def run_both(url: str) -> list[Run]:
        return [
            run_mode(
                shared,
                workers=opts.workers,
                rounds=opts.rounds,
                redis_url=url,
                conversations=opts.conversations,
                seed=opts.seed,
                learning_timeout=opts.learning_timeout,
            )
            for shared in (False, True)
        ]

    runner: Callable[[], contextlib.AbstractContextManager[str]] = (
        (lambda: contextlib.nullcontext(opts.redis_url)) if opts.redis_url else redis_server
    )
    with runner() as url:
        runs = run_both(url)
    print(report(runs, opts.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
