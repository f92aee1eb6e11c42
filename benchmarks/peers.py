"""Per-request cost of cachewatch's defaults next to the tools people would pick instead.

One command, from the repository root (it builds ``.venv-bench`` on its first run)::

    python3 benchmarks/peers.py [--rounds 15] [--batch 150] [--only bare,cachewatch,...]

Every variant drives the real anthropic and openai SDKs against an in-process mock: an
``httpx2.MockTransport`` handler behind the SDK client that streams back a realistic body
(usage: 12 uncached input, 5,000 cache read, 3,000 cache write, 40 output tokens). Four
cases: Anthropic Messages JSON, Anthropic SSE (40 events), OpenAI chat JSON, OpenAI chat
SSE (40 chunks with ``include_usage``). The figure is the added µs per request over the
bare SDK, and the ratio, each the median over rounds of the per-round difference.

Method. Most peers patch SDK classes globally (wrapt on ``Messages.create``) and cannot
be removed cleanly, so two clients in one process cannot be one bare and one
instrumented. Each variant therefore lives in its own worker process, set up once the
way its documentation says; the bare SDK is a worker too. The workers run in lockstep:
in each round, for each case, every worker in a freshly shuffled order runs one batch of
requests while the others wait on a pipe, so only one process runs at a time and slow
drifts of the machine hit all variants alike. A second bare worker ("bare, 2nd
process") measures what process placement alone adds, i.e. the noise floor of the
method: read any figure within it as zero.

Telemetry setup, the same for every OTel-based variant: a global SDK TracerProvider with
a SimpleSpanProcessor into an InMemorySpanExporter, a global MeterProvider with an
InMemoryMetricReader and a global LoggerProvider into an in-memory log exporter; the
exporters are emptied between batches, outside the timing. Tools that bring their own
pipeline use it with the same in-memory exporter (logfire: ``additional_span_processors``
and ``additional_readers``; Langfuse: ``span_exporter`` under its own batching
processor). Each tool runs with its defaults otherwise: OpenLLMetry, OpenLIT, logfire
and Langfuse put the prompt and completion text on their spans by default (OpenLIT also
emits it as log events); the SDK's spans, openai-v2 and cachewatch do not.

anthropic >= 1.0 emits its own OTel spans whenever a TracerProvider is registered, so
every Anthropic client here has ``open_telemetry=False`` except the SDK-spans variant and
each row shows one tool's own cost; the row "default options, no provider" shows what
the SDK's tracing costs when it is on but nothing is registered (what most users run as
"bare"). cachewatch runs as ``cachewatch.wrap(client)`` with no options: the global
Prometheus registry, auto breakpoints, the default log sink (the worker's stdout goes
to /dev/null), and spans only in the variant with the registered provider.

The token check sends one request per case after the timing and reads what the tool
recorded: span attributes (or cachewatch's Prometheus counters where it has no span),
shown as uncached input / cache read / cache write / output. An input figure of 12 (the
uncached part) or 8,012 (the total, as the GenAI conventions define it) is right when
reads and writes are also there.

Peers not installable next to anthropic >= 1.0 / openai >= 3.0: OpenLIT 1.45 declares
anthropic < 1.0 and openai < 3.0, so it is installed with ``--no-deps``
(requirements-peers-nodeps.txt) and measured off-label; it works with these SDKs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-bench"
REQS = ROOT / "benchmarks" / "requirements-peers.txt"
REQS_NODEPS = ROOT / "benchmarks" / "requirements-peers-nodeps.txt"

CASES = ("anthropic-json", "anthropic-sse", "openai-json", "openai-sse")
CASE_TITLES = {
    "anthropic-json": "Anthropic JSON",
    "anthropic-sse": "Anthropic SSE (40 ev.)",
    "openai-json": "OpenAI chat JSON",
    "openai-sse": "OpenAI chat SSE (40 ch.)",
}
ANTHROPIC = ("anthropic-json", "anthropic-sse")
OPENAI = ("openai-json", "openai-sse")

#: The split every mock response reports; the token check compares against it.
UNCACHED, CACHE_READ, CACHE_WRITE, OUTPUT = 12, 5000, 3000, 40

# -- the mock upstream ------------------------------------------------------------------

ANTHROPIC_MODEL = "claude-sonnet-4-6"
OPENAI_MODEL = "gpt-5.6"
SYSTEM = (
    "You are the support assistant of a hardware shop. Answer briefly, cite the manual "
    "section you rely on, and ask for the order number before discussing a refund. "
) * 24
TURNS = [
    {"role": "user", "content": "My router drops the connection every evening around nine."},
    {"role": "assistant", "content": "Which model is it, and is the firmware up to date?"},
    {"role": "user", "content": "It is the AX3000, firmware 2.1.4. What should I try first?"},
]
WORDS = ["Try ", "moving ", "the ", "router ", "away ", "from ", "the ", "microwave, "]


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


def _anthropic_usage(output: int) -> dict[str, Any]:
    return {
        "input_tokens": UNCACHED,
        "cache_creation_input_tokens": CACHE_WRITE,
        "cache_read_input_tokens": CACHE_READ,
        "cache_creation": {"ephemeral_5m_input_tokens": CACHE_WRITE, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def anthropic_json() -> bytes:
    text = "".join(WORDS[i % len(WORDS)] for i in range(OUTPUT))
    body = {
        "id": "msg_01Bench",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(OUTPUT),
    }
    return json.dumps(body).encode()


def anthropic_sse() -> list[bytes]:
    """40 events: start, block start, 35 deltas, block stop, message_delta, stop."""
    message = {
        "id": "msg_01Bench",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(1),
    }
    events = [_sse("message_start", {"type": "message_start", "message": message})]
    events.append(
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
    )
    for i in range(35):
        delta = {"type": "text_delta", "text": WORDS[i % len(WORDS)]}
        events.append(
            _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    final_usage = {
        k: v for k, v in _anthropic_usage(OUTPUT).items() if k not in ("cache_creation", "service_tier")
    }
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": final_usage,
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


def _openai_usage() -> dict[str, Any]:
    prompt = UNCACHED + CACHE_READ + CACHE_WRITE
    return {
        "prompt_tokens": prompt,
        "completion_tokens": OUTPUT,
        "total_tokens": prompt + OUTPUT,
        "prompt_tokens_details": {
            "cached_tokens": CACHE_READ,
            "cache_write_tokens": CACHE_WRITE,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def openai_json() -> bytes:
    text = "".join(WORDS[i % len(WORDS)] for i in range(OUTPUT))
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1767225600,
        "model": OPENAI_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _openai_usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
    return json.dumps(body).encode()


def openai_sse() -> list[bytes]:
    """40 chunks (role, 37 deltas, finish, usage) and ``[DONE]``."""
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": OPENAI_MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(None, {**base, "choices": [choice], "usage": None})

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    out += [chunk({"content": WORDS[i % len(WORDS)]}) for i in range(37)]
    out.append(chunk({}, "stop"))
    out.append(_sse(None, {**base, "choices": [], "usage": _openai_usage()}))
    out.append(b"data: [DONE]\n\n")
    return out


def _handler(httpx2: Any) -> Callable[[Any], Any]:
    bodies = {
        ("anthropic", False): [anthropic_json()],
        ("anthropic", True): anthropic_sse(),
        ("openai", False): [openai_json()],
        ("openai", True): openai_sse(),
    }

    def handle(request: Any) -> Any:
        family = "anthropic" if request.url.path.endswith("/messages") else "openai"
        stream = b'"stream":true' in request.content.replace(b" ", b"")
        chunks = bodies[family, stream]
        headers = {
            "content-type": "text/event-stream" if stream else "application/json",
            "request-id": "req_bench",
            "x-request-id": "req_bench",
        }
        # A streamed body, as a network transport gives: the SDKs then read it the way
        # they read real traffic.
        return httpx2.Response(200, headers=headers, content=iter(chunks))

    return handle


# -- the clients and one request per case ------------------------------------------------


def make_clients(anthropic_otel: Any = False) -> dict[str, Any]:
    import anthropic
    import httpx2
    import openai

    handler = _handler(httpx2)
    a = anthropic.Anthropic(
        api_key="sk-ant-bench",
        max_retries=0,
        open_telemetry=anthropic_otel,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    o = openai.OpenAI(
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    return {"anthropic": a, "openai": o}


def request_fns(clients: dict[str, Any]) -> dict[str, Callable[[], None]]:
    a, o = clients["anthropic"], clients["openai"]
    messages = [dict(t) for t in TURNS]
    oa_messages = [{"role": "system", "content": SYSTEM}, *messages]

    def anthropic_json_call() -> None:
        a.messages.create(model=ANTHROPIC_MODEL, max_tokens=512, system=SYSTEM, messages=messages)

    def anthropic_sse_call() -> None:
        stream = a.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=512, system=SYSTEM, messages=messages, stream=True
        )
        for _ in stream:
            pass

    def openai_json_call() -> None:
        o.chat.completions.create(model=OPENAI_MODEL, messages=oa_messages)

    def openai_sse_call() -> None:
        stream = o.chat.completions.create(
            model=OPENAI_MODEL, messages=oa_messages, stream=True, stream_options={"include_usage": True}
        )
        for _ in stream:
            pass

    return {
        "anthropic-json": anthropic_json_call,
        "anthropic-sse": anthropic_sse_call,
        "openai-json": openai_json_call,
        "openai-sse": openai_sse_call,
    }


# -- telemetry pipelines -------------------------------------------------------------------


class Otel:
    """Global SDK providers with in-memory exporters, as every OTel-based variant gets."""

    def __init__(self, span_processor: bool = True) -> None:
        from opentelemetry import _logs, metrics, trace
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.logs = InMemoryLogRecordExporter()
        self.tracer_provider = TracerProvider()
        if span_processor:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)
        _logs.set_logger_provider(self.logger_provider)

    def clear(self) -> None:
        self.spans.clear()
        self.logs.clear()

    def flush(self) -> None:
        self.tracer_provider.force_flush()

    def finished(self) -> list[dict[str, Any]]:
        return [dict(s.attributes or {}) for s in self.spans.get_finished_spans()]

    def token_metric_types(self) -> list[str]:
        """The token kinds the tool's OTel metrics carry (``gen_ai.token.type`` or similar)."""
        data = self.reader.get_metrics_data()
        kinds: set[str] = set()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for point in getattr(m.data, "data_points", ()):
                        kind = (point.attributes or {}).get("gen_ai.token.type")
                        if kind is not None:
                            kinds.add(str(kind))
        return sorted(kinds)


class Variant:
    """A worker's clients, and how to read back what it recorded."""

    def __init__(
        self,
        clients: dict[str, Any],
        cases: tuple[str, ...],
        otel: Otel | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.calls = request_fns(clients)
        self.cases = cases
        self.otel = otel
        self._flush = flush

    def clear(self) -> None:
        if self.otel is not None:
            self.otel.clear()

    def flush(self) -> None:
        if self._flush is not None:
            self._flush()
        if self.otel is not None:
            self.otel.flush()

    def metric_types(self) -> list[str]:
        """The token kinds that the tool's metrics tell apart."""
        return self.otel.token_metric_types() if self.otel is not None else []

    def recorded(self, call: Callable[[], None]) -> dict[str, Any]:
        """Token attributes of the spans that one request made."""
        self.flush()
        self.clear()
        call()
        self.flush()
        spans = self.otel.finished() if self.otel else []
        best: dict[str, Any] = {}
        for attrs in spans:
            tokens = {
                k: v
                for k, v in attrs.items()
                if ("token" in k and isinstance(v, (int, float)) and "max_tokens" not in k)
                or ("usage" in k and isinstance(v, str) and v.startswith("{"))
            }
            if len(tokens) > len(best):
                best = tokens
        return best


def _cachewatch_counters() -> dict[str, float]:
    from prometheus_client import REGISTRY

    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == "cachewatch_tokens_total":
                out[s.labels["type"]] = out.get(s.labels["type"], 0.0) + s.value
    return out


class CachewatchSpans(Variant):
    """cachewatch's metrics are Prometheus counters (its OTel metrics are opt-in)."""

    def metric_types(self) -> list[str]:
        order = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
        seen = _cachewatch_counters()
        return ["Prometheus: " + ", ".join(k for k in order if k in seen)]


class CachewatchCounters(CachewatchSpans):
    """cachewatch without a TracerProvider: read the split from its Prometheus counters."""

    def recorded(self, call: Callable[[], None]) -> dict[str, Any]:
        before = _cachewatch_counters()
        call()
        after = _cachewatch_counters()
        delta = {k: int(after[k] - before.get(k, 0.0)) for k in after}
        return {
            "cachewatch_tokens_total.input": delta.get("input", 0),
            "cachewatch_tokens_total.cache_read": delta.get("cache_read", 0),
            "cachewatch_tokens_total.cache_write": delta.get("cache_write_5m", 0)
            + delta.get("cache_write_1h", 0),
            "cachewatch_tokens_total.output": delta.get("output", 0),
        }


def _bare() -> Variant:
    return Variant(make_clients(), CASES)


def _sdk_default() -> Variant:
    return Variant(make_clients(anthropic_otel=None), ANTHROPIC)


def _sdk_otel() -> Variant:
    otel = Otel()
    return Variant(make_clients({"tracer_provider": otel.tracer_provider}), ANTHROPIC, otel)


def _cachewatch() -> Variant:
    import cachewatch

    clients = {k: cachewatch.wrap(c) for k, c in make_clients().items()}
    return CachewatchCounters(clients, CASES)


def _cachewatch_spans() -> Variant:
    import cachewatch

    otel = Otel()
    clients = {k: cachewatch.wrap(c) for k, c in make_clients().items()}
    return CachewatchSpans(clients, CASES, otel)


def _openllmetry() -> Variant:
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    otel = Otel()
    AnthropicInstrumentor().instrument()
    OpenAIInstrumentor().instrument()
    return Variant(make_clients(), CASES, otel)


def _openlit() -> Variant:
    import openlit

    otel = Otel()
    # OpenLIT downloads its price list at init unless given one: a local file with the
    # two models, so that its cost path runs as it would in production.
    prices = {
        "chat": {
            ANTHROPIC_MODEL: {
                "promptPrice": 0.003,
                "completionPrice": 0.015,
                "cacheReadPrice": 0.0003,
                "cacheCreationPrice": 0.00375,
            },
            OPENAI_MODEL: {"promptPrice": 0.00125, "completionPrice": 0.01, "cacheReadPrice": 0.000125},
        }
    }
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(prices, f)
    openlit.init(pricing_json=path)
    return Variant(make_clients(), CASES, otel)


class LogfireOtel(Otel):
    """logfire brings its own providers: the same in-memory exporter and reader plug in."""

    def __init__(self) -> None:  # no global providers: logfire.configure sets its own
        import logfire
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        logfire.configure(
            send_to_logfire=False,
            console=False,
            additional_span_processors=[SimpleSpanProcessor(self.spans)],
            metrics=logfire.MetricsOptions(additional_readers=[self.reader]),
        )
        self._flush = logfire.force_flush

    def clear(self) -> None:
        self.spans.clear()

    def flush(self) -> None:
        self._flush()


def _logfire() -> Variant:
    import logfire

    otel = LogfireOtel()
    logfire.instrument_anthropic()
    logfire.instrument_openai()
    return Variant(make_clients(), CASES, otel)


def _langfuse() -> Variant:
    otel = Otel(span_processor=False)
    from langfuse import Langfuse

    # Langfuse's own batching processor on the shared provider, exporting in memory
    # instead of to its server (unreachable here).
    lf = Langfuse(
        public_key="pk-lf-bench",
        secret_key="sk-lf-bench",
        base_url="http://127.0.0.1:9",
        tracer_provider=otel.tracer_provider,
        span_exporter=otel.spans,
    )
    import langfuse.openai  # noqa: F401  (patches the openai SDK on import)

    return Variant(make_clients(), OPENAI, otel, flush=lf.flush)


def _openai_v2() -> Variant:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    otel = Otel()
    OpenAIInstrumentor().instrument()
    return Variant(make_clients(), OPENAI, otel)


#: name -> (label, setup run inside the worker)
VARIANTS: dict[str, tuple[str, Callable[[], Variant]]] = {
    "bare": ("bare SDK (baseline)", _bare),
    "bare2": ("bare SDK, 2nd process (noise floor)", _bare),
    "sdk-default": ("anthropic SDK, default options, no provider", _sdk_default),
    "sdk-otel": ("anthropic SDK's own OTel spans", _sdk_otel),
    "cachewatch": ("cachewatch, defaults (no TracerProvider)", _cachewatch),
    "cachewatch-spans": ("cachewatch, defaults + TracerProvider", _cachewatch_spans),
    "openllmetry": ("OpenLLMetry 0.62.4", _openllmetry),
    "openlit": ("OpenLIT 1.45.0 (--no-deps)", _openlit),
    "logfire": ("logfire 5.4.0", _logfire),
    "langfuse": ("Langfuse 5.0.4 (openai wrapper)", _langfuse),
    "openai-v2": ("OTel openai-v2 2.4b0", _openai_v2),
}


# -- worker -------------------------------------------------------------------------------


def worker(name: str, out_fd: int) -> None:
    """Set the variant up, then serve ``run``/``tokens`` commands from stdin until EOF."""
    out = os.fdopen(out_fd, "w", buffering=1)
    variant = VARIANTS[name][1]()
    out.write(json.dumps({"cases": list(variant.cases)}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            call = variant.calls[cmd["case"]]
            n = int(cmd["n"])
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            dt = time.perf_counter() - t0
            variant.clear()
            out.write(json.dumps({"us": dt / n * 1e6}) + "\n")
        elif cmd["op"] == "tokens":
            rec = variant.recorded(variant.calls[cmd["case"]])
            metrics = variant.metric_types()
            out.write(json.dumps({"tokens": rec, "metric_types": metrics}) + "\n")


class Worker:
    """One variant's process: commands go in on its stdin, replies come back on a pipe
    of their own (its stdout is cachewatch's default log sink, sent to /dev/null)."""

    def __init__(self, name: str, stderr_dir: Path) -> None:
        self.name = name
        r, w = os.pipe()
        self.stderr_path = stderr_dir / f"{name}.stderr"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--fd", str(w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(w,),
                text=True,
                env=env,
                cwd=ROOT,
            )
        os.close(w)
        self.results = os.fdopen(r)
        self.cases: tuple[str, ...] = ()

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        line = self.results.readline()
        if not line:
            tail = self.stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {self.name} died:\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def start(self) -> None:
        self.cases = tuple(self._reply()["cases"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- coordinator --------------------------------------------------------------------------


def _split(tokens: dict[str, Any]) -> str:
    """``input/read/write/output`` as the tool recorded them, and what is right or wrong."""

    direct = {k.lower(): v for k, v in tokens.items() if not isinstance(v, str)}
    # Some tools keep the provider's usage object as one JSON string (Langfuse's
    # usage_details, logfire's gen_ai.usage.raw): a fallback when no attribute says it.
    nested: dict[str, Any] = {}
    for key, value in tokens.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                _flatten(key.lower(), json.loads(value), nested)

    def pick(last: tuple[str, ...], anywhere: tuple[str, ...] = (), cache: bool = False) -> int | None:
        for source in (direct, nested):
            for key, value in source.items():
                tail = key.rsplit(".", 1)[-1]
                if not isinstance(value, (int, float)) or "ephemeral" in key:
                    continue
                if cache != ("cache" in key.replace("cachewatch", "")):
                    continue
                if tail in last or any(a in key for a in anywhere):
                    return int(value)
        return None

    read = pick((), ("cache_read", "cached"), cache=True)
    write = pick((), ("cache_creation", "cache_write"), cache=True)
    out = pick(("output_tokens", "completion_tokens", "output"))
    inp = pick(("input_tokens", "prompt_tokens", "input"))

    def show(v: int | None) -> str:
        return "-" if v is None else f"{v:,}"

    text = "/".join(show(v) for v in (inp, read, write, out))
    missing = [n for n, v in (("input", inp), ("read", read), ("write", write), ("output", out)) if v is None]
    wrong = [
        n
        for n, v, ok in (
            ("input", inp, (UNCACHED, UNCACHED + CACHE_READ + CACHE_WRITE)),
            ("read", read, (CACHE_READ,)),
            ("write", write, (CACHE_WRITE,)),
            ("output", out, (OUTPUT,)),
        )
        if v is not None and v not in ok
    ]
    if not missing and not wrong:
        return f"{text} right"
    notes = [f"{n} wrong" for n in wrong] + [f"no {n}" for n in missing]
    return f"{text} ({', '.join(notes)})"


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{str(k).lower()}", v, into)
    else:
        into[prefix] = value


def _ensure_venv(argv: list[str]) -> None:
    """Re-run this script inside ``.venv-bench``, building it first if needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    stamp = VENV / ".peers-stamp"
    want = hashlib.sha256(REQS.read_bytes() + REQS_NODEPS.read_bytes()).hexdigest()
    if not (py.exists() and stamp.exists() and stamp.read_text() == want):
        print(f"building {VENV.name} (once) ...", file=sys.stderr)
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-e", f"{ROOT}[demo]", "-r", str(REQS)], check=True)
        subprocess.run([*pip, "--no-deps", "-r", str(REQS_NODEPS)], check=True)
        stamp.write_text(want)
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *argv])


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=150, help="requests per batch (JSON; SSE uses the same)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--only", default="", help="comma-separated variant names (bare is always run)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the raw per-round figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.fd)
        return
    _ensure_venv(argv)

    names = list(VARIANTS)
    if args.only:
        keep = {"bare", *args.only.split(",")}
        unknown = keep - set(VARIANTS)
        if unknown:
            p.error(f"unknown variants: {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
        names = [n for n in names if n in keep]
    rng = random.Random(args.seed)
    logs = Path(tempfile.mkdtemp(prefix="peers-bench-"))

    import importlib.metadata as md

    versions = ", ".join(
        f"{d} {md.version(d)}" for d in ("anthropic", "openai", "httpx2", "opentelemetry-sdk")
    )
    print(f"{versions}; {args.rounds} rounds x {args.batch} requests; worker logs in {logs}", file=sys.stderr)

    workers: dict[str, Worker] = {}
    try:
        for n in names:  # one at a time: imports and setup do not overlap the others
            w = Worker(n, logs)
            w.start()
            workers[n] = w
        for case in CASES:
            for w in workers.values():
                if case in w.cases:
                    w.ask(op="run", case=case, n=args.warmup)
        per_round: dict[tuple[str, str], list[float]] = {}
        t_start = time.monotonic()
        for r in range(args.rounds):
            for case in CASES:
                order = [w for w in workers.values() if case in w.cases]
                rng.shuffle(order)
                for w in order:
                    us = w.ask(op="run", case=case, n=args.batch)["us"]
                    per_round.setdefault((w.name, case), []).append(us)
            print(f"  round {r + 1}/{args.rounds} ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)
        tokens: dict[tuple[str, str], dict[str, Any]] = {}
        for w in workers.values():
            for case in w.cases:
                tokens[w.name, case] = w.ask(op="tokens", case=case)
    finally:
        for w in workers.values():
            w.close()

    _print_tables(names, per_round, tokens)
    if args.json:
        raw = {f"{n}|{c}": v for (n, c), v in per_round.items()}
        args.json.write_text(
            json.dumps(
                {"per_round_us": raw, "tokens": {f"{n}|{c}": v for (n, c), v in tokens.items()}}, indent=1
            )
        )


def _print_tables(
    names: list[str],
    per_round: dict[tuple[str, str], list[float]],
    tokens: dict[tuple[str, str], dict[str, Any]],
) -> None:
    print("\nAdded µs per request over the bare SDK (median of per-round differences), and the ratio:\n")
    print("| variant | " + " | ".join(CASE_TITLES[c] for c in CASES) + " |")
    print("|---|" + "---|" * len(CASES))
    base = {c: per_round[("bare", c)] for c in CASES}
    cells = ["bare SDK: µs per request"] + [f"{statistics.median(base[c]):,.0f}" for c in CASES]
    print("| " + " | ".join(cells) + " |")
    for n in names:
        if n == "bare":
            continue
        row = [VARIANTS[n][0]]
        for c in CASES:
            v = per_round.get((n, c))
            if v is None:
                row.append("")
                continue
            diff = statistics.median(x - b for x, b in zip(v, base[c], strict=True))
            ratio = statistics.median(x / b for x, b in zip(v, base[c], strict=True))
            row.append(f"{diff:+,.0f} (x{ratio:.2f})")
        print("| " + " | ".join(row) + " |")

    print(
        f"\nRecorded tokens, uncached input / cache read / cache write / output "
        f"(truth {UNCACHED}/{CACHE_READ:,}/{CACHE_WRITE:,}/{OUTPUT}, or input {UNCACHED + CACHE_READ + CACHE_WRITE:,} as the total):\n"
    )
    print(
        "| variant | " + " | ".join(CASE_TITLES[c] for c in CASES) + " | token kinds its metrics tell apart |"
    )
    print("|---|" + "---|" * (len(CASES) + 1))
    for n in names:
        if n in ("bare", "bare2", "sdk-default"):  # nothing recorded by design
            continue
        row = [VARIANTS[n][0]]
        kinds: set[str] = set()
        for c in CASES:
            t = tokens.get((n, c))
            if t is None:
                row.append("")
                continue
            kinds.update(t["metric_types"])
            row.append(_split(t["tokens"]))
        row.append(", ".join(sorted(kinds)) or "-")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
