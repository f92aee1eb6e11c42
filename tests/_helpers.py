"""Helpers shared by the fail-open, security, concurrency, cardinality and multiprocess tests.

Everything here is plain functions and classes (no fixtures: ``conftest.py`` is owned
elsewhere). The central pieces:

* :class:`Recorder`: a MockTransport handler that records the exact request bytes it
  receives (method, URL, raw headers, body) and answers with a fresh response built by
  a *responder* for the request's family (httpx or httpx2).
* :func:`chunked`: a response body stream yielding given chunks (optionally raising a
  given exception object part-way), usable by sync and async clients of either family.
* :func:`send`: one call through a client of a family/mode, returning everything the
  caller could observe (status, raw headers, raw chunks or decoded content, exception).
* :class:`Telemetry`: a fresh Prometheus registry, in-memory span exporter and
  capturing structlog logger, with read-back helpers.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import cachewatch

FAMILIES = ("httpx", "httpx2")
MODES = ("sync", "async")
TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")

#: The four (family, mode) combinations, for ``pytest.mark.parametrize(("family", "mode"), COMBOS)``.
COMBOS = [pytest.param(f, m, id=f"{f}-{m}") for f in FAMILIES for m in MODES]

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"


def fam(name: str) -> ModuleType:
    """The ``httpx`` or ``httpx2`` module."""
    return importlib.import_module(name)


# -- response bodies ------------------------------------------------------------------------


@functools.cache
def _chunk_stream_class(family: ModuleType) -> type:
    class ChunkStream(family.SyncByteStream, family.AsyncByteStream):  # type: ignore[name-defined,misc]
        """Yields ``chunks`` one by one; raises ``error`` (the very object) after ``raise_after`` chunks."""

        def __init__(
            self,
            chunks: Sequence[bytes],
            error: BaseException | None = None,
            raise_after: int | None = None,
            yield_control: bool = False,
        ) -> None:
            self.chunks = list(chunks)
            self.error = error
            self.raise_after = len(self.chunks) if raise_after is None else raise_after
            self.yield_control = yield_control
            self.closed = 0

        def __iter__(self) -> Iterator[bytes]:
            for i, chunk in enumerate(self.chunks):
                if self.error is not None and i == self.raise_after:
                    raise self.error
                yield chunk
            if self.error is not None and self.raise_after >= len(self.chunks):
                raise self.error

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i, chunk in enumerate(self.chunks):
                if self.error is not None and i == self.raise_after:
                    raise self.error
                if self.yield_control:
                    await asyncio.sleep(0)
                yield chunk
            if self.error is not None and self.raise_after >= len(self.chunks):
                raise self.error

        def close(self) -> None:
            self.closed += 1

        async def aclose(self) -> None:
            self.closed += 1

    return ChunkStream


def chunked(
    family: ModuleType,
    chunks: Sequence[bytes],
    *,
    error: BaseException | None = None,
    raise_after: int | None = None,
    yield_control: bool = False,
) -> Any:
    """A body stream of ``family`` yielding ``chunks`` exactly (sync and async)."""
    return _chunk_stream_class(family)(chunks, error, raise_after, yield_control)


def response(
    family: ModuleType,
    status: int,
    chunks: Sequence[bytes] | bytes,
    headers: Sequence[tuple[str, str]] | None = None,
    **stream_options: Any,
) -> Any:
    """A ``family.Response`` whose body arrives as ``chunks`` (a bytes value is one chunk)."""
    if isinstance(chunks, bytes):
        chunks = [chunks]
    return family.Response(
        status, headers=list(headers or ()), stream=chunked(family, chunks, **stream_options)
    )


JSON_HEADERS = (("content-type", "application/json"),)
SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"),)


def sse(*events: tuple[str, Any]) -> bytes:
    """Serialise ``(event, data)`` pairs as Server-Sent Events (dict data becomes JSON)."""
    out = []
    for event, data in events:
        payload = data if isinstance(data, str) else orjson.dumps(data).decode()
        out.append(f"event: {event}\ndata: {payload}\n\n")
    return "".join(out).encode()


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` in chunks of ``size`` bytes."""
    return [data[i : i + size] for i in range(0, len(data), size)]


# Known usage: Anthropic JSON (input 11, cache_read 33, write 5m 12, write 1h 10, output 44).
ANTHROPIC_JSON_USAGE = {
    "input": 11,
    "cache_read": 33,
    "cache_write_5m": 12,
    "cache_write_1h": 10,
    "output": 44,
}


def anthropic_json(model: str = "claude-sonnet-4-5", text: str = "Hello there.") -> bytes:
    return orjson.dumps(
        {
            "id": "msg_01TESTJSON",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 11,
                "cache_creation_input_tokens": 22,
                "cache_read_input_tokens": 33,
                "cache_creation": {"ephemeral_5m_input_tokens": 12, "ephemeral_1h_input_tokens": 10},
                "output_tokens": 44,
            },
        }
    )


# Known usage: Anthropic SSE (input 7, cache_read 200, write 5m 100, write 1h 0, output 9).
ANTHROPIC_SSE_USAGE = {"input": 7, "cache_read": 200, "cache_write_5m": 100, "cache_write_1h": 0, "output": 9}


def anthropic_sse(
    model: str = "claude-sonnet-4-5", text: str = "Hello there.", extra: Sequence[tuple[str, Any]] = ()
) -> bytes:
    return sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01TESTSSE",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": 7,
                        "cache_creation_input_tokens": 100,
                        "cache_read_input_tokens": 200,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        *extra,
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


def anthropic_request(
    model: str = "claude-sonnet-4-5", prompt: str = "Say hello.", stream: bool = False
) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


# -- recording inner transport --------------------------------------------------------------


@dataclass(frozen=True)
class WireRequest:
    """The exact request an inner transport received."""

    method: str
    url: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


Responder = Callable[[ModuleType, Any], Any]


class Recorder:
    """MockTransport handler: records each request's bytes, answers with ``responder(family, request)``.

    ``responder`` may raise (e.g. a pre-built ``ConnectError`` object) to simulate a
    transport failure before any response.
    """

    def __init__(self, family: ModuleType, responder: Responder) -> None:
        self.family = family
        self.responder = responder
        self.requests: list[WireRequest] = []

    def __call__(self, request: Any) -> Any:
        self.requests.append(
            WireRequest(request.method, str(request.url), tuple(request.headers.raw), bytes(request.content))
        )
        return self.responder(self.family, request)

    def transport(self) -> Any:
        return self.family.MockTransport(self)


# -- one call from the caller's point of view -----------------------------------------------


@dataclass
class CallSpec:
    """A request as the caller makes it. ``parts`` (instead of ``content``) sends a streamed body."""

    url: str = ANTHROPIC_URL
    method: str = "POST"
    headers: dict[str, str] = field(
        default_factory=lambda: {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    )
    content: bytes | None = None
    parts: Sequence[bytes] | None = None

    def content_for(self, mode: str) -> Any:
        if self.parts is None:
            return self.content
        parts = list(self.parts)
        if mode == "sync":

            def gen() -> Iterator[bytes]:
                yield from parts

            return gen()

        async def agen() -> AsyncIterator[bytes]:
            for p in parts:
                yield p

        return agen()


@dataclass
class Seen:
    """Everything the caller observed from one call."""

    status: int | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    raw_chunks: list[bytes] = field(default_factory=list)
    content: bytes | None = None
    error: BaseException | None = None

    def comparable(self) -> tuple[Any, ...]:
        """Equal for two calls the caller cannot tell apart (exceptions by type and message)."""
        err = None if self.error is None else (type(self.error), str(self.error))
        return (self.status, self.headers, self.raw_chunks, self.content, err)


def send(family_name: str, mode: str, transport: Any, spec: CallSpec, read: str = "raw") -> Seen:
    """Make one call through a ``family`` client in ``mode``; ``read`` is ``raw`` (iter_raw chunks) or ``content``."""
    if mode == "sync":
        return _send_sync(fam(family_name), transport, spec, read)
    return asyncio.run(_send_async(fam(family_name), transport, spec, read))


def _send_sync(family: ModuleType, transport: Any, spec: CallSpec, read: str) -> Seen:
    seen = Seen()
    with family.Client(transport=transport) as client:
        try:
            if read == "raw":
                with client.stream(
                    spec.method, spec.url, headers=spec.headers, content=spec.content_for("sync")
                ) as r:
                    seen.status, seen.headers = r.status_code, tuple(r.headers.raw)
                    for chunk in r.iter_raw():
                        seen.raw_chunks.append(chunk)
            else:
                r = client.request(
                    spec.method, spec.url, headers=spec.headers, content=spec.content_for("sync")
                )
                seen.status, seen.headers = r.status_code, tuple(r.headers.raw)
                seen.content = r.content
        except Exception as exc:
            seen.error = exc
    return seen


async def _send_async(family: ModuleType, transport: Any, spec: CallSpec, read: str) -> Seen:
    seen = Seen()
    async with family.AsyncClient(transport=transport) as client:
        try:
            if read == "raw":
                async with client.stream(
                    spec.method, spec.url, headers=spec.headers, content=spec.content_for("async")
                ) as r:
                    seen.status, seen.headers = r.status_code, tuple(r.headers.raw)
                    async for chunk in r.aiter_raw():
                        seen.raw_chunks.append(chunk)
            else:
                r = await client.request(
                    spec.method, spec.url, headers=spec.headers, content=spec.content_for("async")
                )
                seen.status, seen.headers = r.status_code, tuple(r.headers.raw)
                seen.content = r.content
        except Exception as exc:
            seen.error = exc
    return seen


def wrapped(mode: str, inner: Any, **options: Any) -> Any:
    """``CacheWatchTransport`` (sync) or ``AsyncCacheWatchTransport`` (async) around ``inner``."""
    cls = cachewatch.CacheWatchTransport if mode == "sync" else cachewatch.AsyncCacheWatchTransport
    return cls(inner, **options)


# -- telemetry ------------------------------------------------------------------------------


@dataclass
class Telemetry:
    """A fresh registry, span exporter and capturing structlog logger for one test."""

    registry: CollectorRegistry
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    log: structlog.testing.CapturingLogger
    logger: Any

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"registry": self.registry, "tracer_provider": self.tracer_provider, "logger": self.logger}

    def value(self, name: str, **labels: str) -> float:
        """Sum of every sample ``name`` whose labels include ``labels`` (0 when none)."""
        return metric_sum(self.registry, name, **labels)

    def requests(self, **labels: str) -> float:
        return self.value("cachewatch_requests_total", **labels)

    def tokens(self, **labels: str) -> dict[str, float]:
        return {t: self.value("cachewatch_tokens_total", type=t, **labels) for t in TOKEN_TYPES}

    def faults(self, stage: str | None = None) -> float:
        if stage is None:
            return self.value("cachewatch_internal_errors_total")
        return self.value("cachewatch_internal_errors_total", stage=stage)

    def events(self) -> list[dict[str, Any]]:
        return [dict(call.kwargs) for call in self.log.calls]

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


def make_telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log = structlog.testing.CapturingLogger()
    logger = structlog.wrap_logger(log, processors=[])
    return Telemetry(CollectorRegistry(), exporter, provider, log, logger)


def metric_samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (e.g. ``cachewatch_requests_total``) as (labels, value)."""
    return [
        (dict(s.labels), s.value) for metric in registry.collect() for s in metric.samples if s.name == name
    ]


def metric_sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in metric_samples(registry, name) if all(lab.get(k) == w for k, w in labels.items())
    )


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    return {lab[label] for lab, _ in metric_samples(registry, name) if label in lab}
