"""The floor of observe-only overhead: what the least a Python transport wrapper can do costs.

    .venv/bin/python benchmarks/observe_floor.py [--rounds 15] [--batch 400]

SPEC section 11 asks observe-only cachewatch to add at most 25 µs per JSON request. To
show where the floor lies on this machine, this benchmark times hand-written reference
wrappers around the same ``httpx.MockTransport`` (the same request and response as
``overhead.py``), each doing strictly less than cachewatch, against the bare client:

- ``wrap``: a transport that wraps the response stream in a pass-through byte stream and
  closes it (the price of being in the path at all, and of finishing at the body's end);
- ``+parse``: also buffers the body and reads ``usage`` with one ``orjson.loads``;
- ``+prometheus``: also counts the request, five token types and the duration with
  prometheus_client (children cached, as its docs recommend for hot paths);
- ``cachewatch``: ``CacheWatchTransport(breakpoints="off")`` with every sink (the silent
  logger and no-op tracer of ``overhead.py``).

``+prometheus`` is a lower bound for any observe-only middleware exporting those metrics:
it classifies nothing, prices nothing, records no outcome, miss reason, log event or span,
and does not fail open.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # the observe-only benchmark's request, response and clients

TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")


class _Stream(httpx.SyncByteStream):
    """Pass-through byte stream: optionally buffers the body, calls ``done`` once at the end."""

    def __init__(self, inner: Any, done: Callable[[bytes], None] | None, buffer: bool) -> None:
        self._inner = inner
        self._done = done
        self._parts: list[bytes] | None = [] if buffer else None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        parts = self._parts
        for chunk in self._inner:
            if parts is not None:
                parts.append(chunk)
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._inner.close()
        finally:
            if self._done is not None:
                self._done(b"".join(self._parts) if self._parts is not None else b"")


class _Reference(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, level: str) -> None:
        self.inner = inner
        self.level = level
        registry = CollectorRegistry()
        requests = Counter("ref_requests", "requests", ("provider", "model"), registry=registry)
        tokens = Counter("ref_tokens", "tokens", ("provider", "model", "type"), registry=registry)
        duration = Histogram("ref_duration_seconds", "duration", ("provider", "model"), registry=registry)
        self._requests = requests.labels("anthropic", "claude-sonnet-4-6")
        self._tokens = [tokens.labels("anthropic", "claude-sonnet-4-6", t) for t in TOKEN_TYPES]
        self._duration = duration.labels("anthropic", "claude-sonnet-4-6")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = self.inner.handle_request(request)
        level = self.level
        done: Callable[[bytes], None] | None = None
        if level == "+parse":

            def done(body: bytes) -> None:
                obj = orjson.loads(body)
                _usage(obj.get("usage") if type(obj) is dict else None)

        elif level == "+prometheus":

            def done(body: bytes) -> None:
                obj = orjson.loads(body)
                counts = _usage(obj.get("usage") if type(obj) is dict else None)
                self._requests.inc()
                for child, n in zip(self._tokens, counts, strict=True):
                    if n:
                        child.inc(n)
                self._duration.observe(time.perf_counter() - started)

        response.stream = _Stream(response.stream, done, buffer=level != "wrap")
        return response


def _usage(usage: object) -> tuple[int, ...]:
    """The five token types of an Anthropic usage object (0 where absent)."""
    if type(usage) is not dict:
        return (0, 0, 0, 0, 0)
    write = usage.get("cache_creation_input_tokens") or 0
    return (usage.get("input_tokens") or 0, usage.get("cache_read_input_tokens") or 0, write, 0,
            usage.get("output_tokens") or 0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=400)
    args = parser.parse_args()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=iter((overhead.RESPONSE,))
        )

    inner = httpx.MockTransport(handler)
    base = "https://api.anthropic.com"
    bare, wrapped = overhead._clients("httpx", True, handler)
    clients: dict[str, httpx.Client] = {"bare": bare}
    for level in ("wrap", "+parse", "+prometheus"):
        clients[level] = httpx.Client(transport=_Reference(inner, level), base_url=base)
    clients["cachewatch"] = wrapped
    body = orjson.dumps(overhead.REQUEST)
    headers = {"content-type": "application/json"}

    def run(client: httpx.Client) -> float:
        t0 = time.perf_counter()
        for _ in range(args.batch):
            client.post("/v1/messages", content=body, headers=headers).read()
        return (time.perf_counter() - t0) / args.batch

    for client in clients.values():  # warm up
        run(client)
    times: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(args.rounds):
        for name, client in clients.items():  # interleaved
            times[name].append(run(client))
    medians = {name: statistics.median(v) for name, v in times.items()}
    bare_t = medians["bare"]
    print(
        f"httpx sync, observe-only JSON request ({args.rounds} interleaved rounds of {args.batch}, medians)"
    )
    print(f"{'wrapper':<14} {'per request':>12} {'ratio':>7} {'added':>10}")
    for name, t in medians.items():
        added = "" if name == "bare" else f"{(t - bare_t) * 1e6:>8.1f}µs"
        print(f"{name:<14} {t * 1e6:>10.1f}µs {t / bare_t:>6.2f}x {added:>10}")


if __name__ == "__main__":
    main()
