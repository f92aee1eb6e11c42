"""Shared pieces of the framework integration tests (``test_integration_*.py``).

* :class:`Ledger`: an ASGI wrapper around the emulator that records, for every API
  request, the usage the emulator billed, read from the response bytes it sent (JSON or
  SSE; Anthropic, OpenAI-compatible and DashScope native), whether the response body
  was sent to its end, and which headers the request carried. It is the independent
  account every test compares cachewatch's metrics with.
* :func:`emulated`: the emulator behind a ledger, served by uvicorn in a thread.
* :func:`proxied`: ``cachewatch proxy``'s app in front of a base URL, in a thread, with
  its own Prometheus registry.
* :func:`tokens` / :func:`requests`: cachewatch's counters read back from a registry.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cachewatch.emulator import create_app, run_in_thread

TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
#: 3,000 tokens by the emulator's count: above every model's minimum cacheable length.
SYSTEM = " ".join(["word"] * 3_000)
#: Makes the emulated model call a tool (see ``cachewatch.emulator``).
TOOL_PROMPT = "Please use the tool to look up caching."


def _zero() -> dict[str, int]:
    return dict.fromkeys(TOKEN_TYPES, 0)


def _anthropic(usage: dict[str, Any], into: dict[str, int]) -> None:
    if "input_tokens" in usage:
        into["input"] = usage["input_tokens"]
    if "cache_read_input_tokens" in usage:
        into["cache_read"] = usage["cache_read_input_tokens"] or 0
    creation = usage.get("cache_creation")
    if isinstance(creation, dict):
        into["cache_write_5m"] = creation.get("ephemeral_5m_input_tokens") or 0
        into["cache_write_1h"] = creation.get("ephemeral_1h_input_tokens") or 0
    elif "cache_creation_input_tokens" in usage:
        into["cache_write_5m"] = usage["cache_creation_input_tokens"] or 0
    if "output_tokens" in usage:
        into["output"] = usage["output_tokens"]


def _openai_like(usage: dict[str, Any], total_key: str, output_key: str) -> dict[str, int]:
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_creation_input_tokens") or 0
    creation = details.get("cache_creation") or {}
    write_1h = creation.get("ephemeral_1h_input_tokens") or 0
    return {
        "input": usage[total_key] - cached - written,
        "cache_read": cached,
        "cache_write_5m": written - write_1h,
        "cache_write_1h": write_1h,
        "output": usage.get(output_key) or 0,
    }


def billed(path: str, body: bytes) -> dict[str, int]:
    """The token partition a response body (JSON or SSE) of the API at ``path`` reports."""
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        events = [orjson.loads(stripped)]
    else:
        events = []
        for line in body.splitlines():
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data.startswith(b"{"):
                    events.append(orjson.loads(data))
    out = _zero()
    if path.endswith("/messages"):
        for event in events:
            if event.get("type") == "message_start":
                _anthropic(event["message"].get("usage") or {}, out)
            elif event.get("type") in ("message_delta", "message") and event.get("usage"):
                _anthropic(event["usage"], out)
        return out
    usages = [e["usage"] for e in events if isinstance(e.get("usage"), dict)]
    if not usages:
        return out
    if path.endswith("/chat/completions"):
        return _openai_like(usages[-1], "prompt_tokens", "completion_tokens")
    return _openai_like(usages[-1], "input_tokens", "output_tokens")  # DashScope native (cumulative)


@dataclass
class Bill:
    """One API request the emulator answered."""

    path: str
    headers: frozenset[str]  # header names only (never values)
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    completed: bool = False  # the last body message was sent

    @property
    def usage(self) -> dict[str, int]:
        return billed(self.path, bytes(self.body)) if self.status == 200 else _zero()


@dataclass
class Ledger:
    """ASGI wrapper recording what the emulator billed for each API request."""

    app: ASGIApp
    bills: list[Bill] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        bill = Bill(scope["path"], frozenset(k.decode("latin-1").lower() for k, _ in scope["headers"]))
        with self.lock:
            self.bills.append(bill)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                bill.status = message["status"]
            elif message["type"] == "http.response.body":
                bill.body += message.get("body", b"")
                if not message.get("more_body", False):
                    bill.completed = True
            await send(message)

        await self.app(scope, receive, recording_send)

    def reset(self) -> None:
        """Forget the bills and the emulator's cache (a fresh start for the next test)."""
        self.taken()
        self.app.reset()  # type: ignore[attr-defined]

    def taken(self) -> list[Bill]:
        """The bills so far, and a fresh page for the next ones."""
        with self.lock:
            bills, self.bills = self.bills, []
        return bills


def total(bills: list[Bill]) -> dict[str, int]:
    """The billed tokens of ``bills``, by type."""
    out = _zero()
    for bill in bills:
        for kind, n in bill.usage.items():
            out[kind] += n
    return out


@contextlib.contextmanager
def emulated(**options: Any) -> Iterator[tuple[Ledger, str]]:
    """The emulator (``create_app(**options)``) behind a :class:`Ledger`; yields it and the base URL."""
    ledger = Ledger(create_app(**options))
    with run_in_thread(ledger) as url:
        yield ledger, url


@contextlib.contextmanager
def proxied(upstream: str, registry: CollectorRegistry, **options: Any) -> Iterator[str]:
    """``cachewatch proxy``'s app forwarding to ``upstream``, reporting to ``registry``; yields its URL."""
    from cachewatch.proxy import create_proxy_app

    # Served with lifespan: the app closes its upstream client on its own loop at shutdown.
    with run_in_thread(create_proxy_app(upstream, registry=registry, **options)) as url:
        yield url


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for m in registry.collect() for s in m.samples if s.name == name]


def tokens(registry: CollectorRegistry, **labels: str) -> dict[str, int]:
    """``cachewatch_tokens_total`` by type, summed over the samples whose labels include ``labels``."""
    out = _zero()
    for lab, value in _samples(registry, "cachewatch_tokens_total"):
        if all(lab.get(k) == v for k, v in labels.items()):
            out[lab["type"]] += int(value)
    return out


def requests(registry: CollectorRegistry, **labels: str) -> int:
    """``cachewatch_requests_total`` summed over the samples whose labels include ``labels``."""
    return int(
        sum(
            v
            for lab, v in _samples(registry, "cachewatch_requests_total")
            if all(lab.get(k) == w for k, w in labels.items())
        )
    )


def outcomes(registry: CollectorRegistry) -> dict[str, int]:
    """``cachewatch_requests_total`` by outcome."""
    out: dict[str, int] = {}
    for lab, value in _samples(registry, "cachewatch_requests_total"):
        out[lab["outcome"]] = out.get(lab["outcome"], 0) + int(value)
    return {k: v for k, v in out.items() if v}
