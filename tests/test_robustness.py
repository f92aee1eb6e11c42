"""Streams dropped without close, and construction with broken collaborators (SPEC 10).

- A response read partly and then dropped (never closed) is still finished when the
  stream object is collected: ``cachewatch_requests_total{outcome="aborted"}`` with the
  usage seen so far, and its span ends.
- Building a transport (directly or through ``wrap()``) never raises because of a broken
  tracer provider, meter provider or registry: the fault is counted and logged, and the
  transport works (bytes unchanged) with what still works.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

import cachewatch
from _helpers import (
    ANTHROPIC_URL,
    COMBOS,
    SSE_HEADERS,
    anthropic_json,
    anthropic_request,
    anthropic_sse,
    fam,
    make_telemetry,
    metric_sum,
    response,
    split,
    wrapped,
)

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll until ``predicate`` holds or ``timeout`` passes (a bound, not a speed check)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- dropped streams --------------------------------------------------------------------------


def _read_partly_then_drop(family: str, mode: str, transport: Any) -> bytes:
    """Read the first event of a stream, then forget the response without closing it."""
    module = fam(family)
    request_body = anthropic_request(stream=True)
    if mode == "sync":
        client = module.Client(transport=transport)
        r = client.send(
            client.build_request("POST", ANTHROPIC_URL, content=request_body, headers=HEADERS), stream=True
        )
        chunks = r.iter_raw()
        seen = b""
        while b"\n\n" not in seen:
            seen += next(chunks)
        del chunks, r  # no close(), no exhaustion
        return seen

    async def partly() -> bytes:
        client = module.AsyncClient(transport=transport)
        r = await client.send(
            client.build_request("POST", ANTHROPIC_URL, content=request_body, headers=HEADERS), stream=True
        )
        chunks = r.aiter_raw()
        seen = b""
        while b"\n\n" not in seen:
            seen += await chunks.__anext__()
        return seen  # r and chunks are dropped here, never closed

    return asyncio.run(partly())


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_a_stream_dropped_without_close_is_counted_as_aborted(family: str, mode: str) -> None:
    module = fam(family)
    telemetry = make_telemetry()
    chunks = split(anthropic_sse(), 64)
    transport = wrapped(
        mode,
        module.MockTransport(lambda request: response(module, 200, chunks, SSE_HEADERS)),
        breakpoints="off",
        **telemetry.kwargs,
    )
    seen = _read_partly_then_drop(family, mode, transport)
    assert b"message_start" in seen
    gc.collect()
    assert wait_for(lambda: telemetry.requests() == 1), "the dropped stream was never finished"
    assert telemetry.requests(outcome="aborted") == 1
    # The usage seen so far: message_start's.
    assert telemetry.tokens() == {
        "input": 7,
        "cache_read": 200,
        "cache_write_5m": 100,
        "cache_write_1h": 0,
        "output": 1,
    }
    (span,) = telemetry.spans()
    assert span.attributes["cachewatch.outcome"] == "aborted"
    assert telemetry.faults() == 0


# -- broken collaborators at construction --------------------------------------------------------


class BrokenTracerProvider:
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer provider is broken")


class BrokenMeterProvider:
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("meter provider is broken")


def taken_registry() -> CollectorRegistry:
    """A registry where one of cachewatch's names is already registered by someone else."""
    registry = CollectorRegistry()
    Counter("cachewatch_requests", "not cachewatch's", registry=registry)
    return registry


BROKEN: dict[str, Callable[[], dict[str, Any]]] = {
    "tracer_provider": lambda: {"tracer_provider": BrokenTracerProvider(), "registry": CollectorRegistry()},
    "meter_provider": lambda: {"meter_provider": BrokenMeterProvider(), "registry": CollectorRegistry()},
    "registry_taken": lambda: {"registry": taken_registry()},
    "registry_not_a_registry": lambda: {"registry": "not a registry"},
}


def _json_transport(module: Any) -> Any:
    return module.MockTransport(lambda request: response(module, 200, [anthropic_json()], SSE_HEADERS[:0]))


@pytest.mark.parametrize("broken", sorted(BROKEN))
@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_a_broken_collaborator_never_breaks_construction(
    family: str, mode: str, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = fam(family)
    options = BROKEN[broken]()
    transport = wrapped(mode, _json_transport(module), breakpoints="off", **options)  # does not raise
    client_cls = module.Client if mode == "sync" else module.AsyncClient
    wrapped_client = cachewatch.wrap(client_cls(transport=_json_transport(module)), **options)  # nor this
    for candidate in (transport, wrapped_client):
        if mode == "sync":
            with module.Client(transport=candidate) if candidate is transport else candidate as client:
                r = client.post(ANTHROPIC_URL, content=anthropic_request(), headers=HEADERS)
        else:

            async def call(candidate: Any = candidate) -> Any:
                client = module.AsyncClient(transport=candidate) if candidate is transport else candidate
                async with client:
                    return await client.post(ANTHROPIC_URL, content=anthropic_request(), headers=HEADERS)

            r = asyncio.run(call())
        assert r.status_code == 200
        assert r.content == anthropic_json()  # traffic unchanged
    engine = transport.engine
    errors = metric_sum(engine.metrics.registry, "cachewatch_internal_errors_total", stage="config")
    ok = metric_sum(engine.metrics.registry, "cachewatch_requests_total", outcome="ok")
    if broken.startswith("registry"):
        # Counted on a private registry (the given one refused the collectors).
        assert engine.metrics.registry is not options["registry"]
        assert (errors, ok) == (1, 1)
    else:
        # The metrics still count on the registry given (shared by both engines).
        assert engine.metrics.registry is options["registry"]
        assert (errors, ok) == (2, 2)
    assert "stage 'config'" in caplog.text


def test_a_taken_registry_leaves_the_foreign_metric_alone() -> None:
    registry = taken_registry()
    cachewatch.CacheWatchTransport(httpx.MockTransport(lambda r: httpx.Response(200)), registry=registry)
    names = {m.name for m in registry.collect()}
    assert names == {"cachewatch_requests"}  # nothing half-registered next to it


def test_streams_dropped_just_before_the_process_exits_are_still_recorded(tmp_path: Any) -> None:
    # The finisher is a daemon thread: at exit it would die with records still queued.
    # Three dropped streams, a sink that takes 0.3 s a record, and an exit right after.
    out = tmp_path / "records.txt"
    script = textwrap.dedent(
        f"""
        import gc, time
        import httpx
        import cachewatch

        class Slow:
            name = "slow"
            def start(self, info):
                return None
            def finish(self, state, record):
                time.sleep(0.3)
                with open({str(out)!r}, "a") as f:
                    f.write(record.outcome.label + "\\n")

        body = (
            b'event: message_start\\ndata: {{"type":"message_start","message":{{"id":"m","model":"x",'
            b'"usage":{{"input_tokens":5,"output_tokens":1}}}}}}\\n\\n'
            + b"event: ping\\ndata: {{}}\\n\\n" * 50
        )
        chunks = [body[i : i + 64] for i in range(0, len(body), 64)]
        transport = httpx.MockTransport(
            lambda request: httpx.Response(200, headers={{"content-type": "text/event-stream"}}, stream=httpx.ByteStream(b"".join(chunks)))
        )
        client = cachewatch.wrap(httpx.Client(transport=transport), breakpoints="off", sinks=[Slow()])
        for _ in range(3):
            r = client.send(client.build_request("POST", "https://api.anthropic.com/v1/messages", json={{"model": "x"}}), stream=True)
            next(r.iter_raw())
            del r
        gc.collect()
        # And one still referenced when the interpreter exits (a module global): it is never
        # collected before the process ends, so only the exit itself can record it.
        KEPT = client.send(client.build_request("POST", "https://api.anthropic.com/v1/messages", json={{"model": "x"}}), stream=True)
        next(KEPT.iter_raw())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["aborted"] * 4
