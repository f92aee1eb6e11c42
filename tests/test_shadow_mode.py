"""``breakpoints="shadow"`` and ``record=FILE`` through the real transports, against the emulator.

Shadow mode sends exactly what ``"off"`` sends (every request byte compared, through the
real anthropic SDK and through httpx/httpx2 clients, sync and async) and estimates what
``"auto"`` would have been billed: ``record.shadow``, ``cachewatch_shadow_tokens_total``,
``cachewatch_shadow_cost_total``, ``cachewatch.shadow.*`` span attributes and log fields.
A fault in the estimate is counted and changes nothing on the wire. The traffic-shape
recorder writes no text and no key, and ``cachewatch replay`` reads what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from _helpers import COMBOS, fam
from cachewatch.accounting._records import RequestInfo, UsageRecord
from cachewatch.emulator import ManualClock, create_app, run_in_thread
from cachewatch.simulation import _shadow
from cachewatch.simulation._replay import replay
from cachewatch.simulation._shape import read_shapes

MODEL = "claude-sonnet-4-6"
SECRET = "Quetzal-4417-private"
KEY = "sk-ant-shadow-test-key-0123456789"
_WORDS = ["refund", "invoice", "policy", "order", "the", "a", "cache", "region"]
TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")


def words(seed: str, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n))


SYSTEM = f"You are the assistant of {SECRET}. " + words("system", 3_000)


class Records:
    """A custom sink: keeps every record."""

    name = "records"

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        self.records.append(record)


class Forward:
    """An inner transport that records every request's bytes, then sends it for real."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str, tuple[tuple[bytes, bytes], ...], bytes]] = []

    def _keep(self, request: Any) -> None:
        self.seen.append(
            (request.method, str(request.url), tuple(request.headers.raw), bytes(request.content))
        )

    def handle_request(self, request: Any) -> Any:
        self._keep(request)
        return self.inner.handle_request(request)

    async def handle_async_request(self, request: Any) -> Any:
        self._keep(request)
        return await self.inner.handle_async_request(request)

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()

    async def __aenter__(self) -> Forward:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.aclose()


@pytest.fixture
def emulator() -> Iterator[tuple[str, ManualClock]]:
    clock = ManualClock(start=1_000_000.0)
    with run_in_thread(create_app(clock=clock)) as url:
        yield url, clock


def _chat(client: Any, clock: ManualClock, turns: int = 5) -> None:
    messages: list[dict[str, Any]] = []
    for t in range(turns):
        messages.append({"role": "user", "content": f"{SECRET} question {t}: " + words(f"q{t}", 60)})
        reply = client.messages.create(model=MODEL, max_tokens=32, system=SYSTEM, messages=messages)
        messages.append({"role": "assistant", "content": reply.content[0].text})
        clock.advance(20)


def _sdk_run(url: str, clock: ManualClock, mode: str, **options: Any) -> tuple[Forward, Records]:
    forward, records = Forward(httpx2.HTTPTransport()), Records()
    sdk = anthropic.Anthropic(
        api_key=KEY, base_url=url, max_retries=0, http_client=httpx2.Client(transport=forward)
    )
    client = cachewatch.wrap(
        sdk,
        breakpoints=mode,
        registry=options.pop("registry", CollectorRegistry()),
        sinks=[records],
        wall_clock=clock,
        **options,
    )
    _chat(client, clock)
    client.close()
    return forward, records


def _series(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _sum(registry: CollectorRegistry, name: str, **match: str) -> float:
    """``name`` summed over every series whose labels include ``match``."""
    return sum(
        s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
    )


# -- the wire ------------------------------------------------------------------------------


def test_shadow_sends_through_the_anthropic_sdk_exactly_what_off_sends() -> None:
    sent = {}
    estimates = {}
    for mode in ("off", "shadow", "auto"):
        clock = ManualClock(start=1_000_000.0)
        with run_in_thread(create_app(clock=clock)) as url:
            forward, records = _sdk_run(url, clock, mode)
        # The base URL's port differs from run to run: compare paths and everything else.
        sent[mode] = [(m, u.split("/", 3)[3], h, b) for m, u, h, b in forward.seen]
        estimates[mode] = records.records
    assert len(sent["off"]) == 5
    for off, shadow in zip(sent["off"], sent["shadow"], strict=True):
        assert shadow[3] == off[3]  # the body, byte for byte
        headers = {(k, v) for k, v in shadow[2] if k.lower() != b"host"}
        assert headers == {(k, v) for k, v in off[2] if k.lower() != b"host"}
        assert shadow[:2] == off[:2]
    assert any(a[3] != o[3] for a, o in zip(sent["auto"], sent["off"], strict=True))  # auto does change it
    assert all(r.shadow is None for r in estimates["off"] + estimates["auto"])
    shadow_records = estimates["shadow"]
    assert all(r.shadow is not None and r.shadow.simulated for r in shadow_records)
    # The estimate keeps what was billed in total and says the later turns would read.
    for r in shadow_records:
        assert r.usage is not None
        assert r.shadow is not None
        assert r.shadow.usage.prompt_total == r.usage.prompt_total
        assert r.shadow.usage.output == r.usage.output
        assert r.usage.cache_read == 0  # off: nothing marked, nothing read
    assert all(r.shadow.usage.cache_read > 3_000 for r in shadow_records[1:] if r.shadow)


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_shadow_is_byte_identical_to_off_on_both_client_families(
    family: str, mode: str, emulator: tuple[str, ManualClock]
) -> None:
    url, clock = emulator
    module = fam(family)
    bodies = [
        orjson.dumps(
            {
                "model": MODEL,
                "max_tokens": 16,
                "system": SYSTEM,
                "stream": t % 2 == 1,
                "messages": [{"role": "user", "content": f"q{t} " + words(f"f{t}", 40)}],
            }
        )
        for t in range(3)
    ]
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}

    def run(breakpoints: str) -> tuple[list[Any], Records, CollectorRegistry]:
        records, registry = Records(), CollectorRegistry()
        options = {"breakpoints": breakpoints, "registry": registry, "sinks": [records], "wall_clock": clock}
        if mode == "sync":
            forward = Forward(module.HTTPTransport())
            with module.Client(transport=cachewatch.CacheWatchTransport(forward, **options)) as client:
                for body in bodies:
                    client.post(f"{url}/v1/messages", content=body, headers=headers).read()
        else:
            forward = Forward(module.AsyncHTTPTransport())

            async def go() -> None:
                transport = cachewatch.AsyncCacheWatchTransport(forward, **options)
                async with module.AsyncClient(transport=transport) as client:
                    for body in bodies:
                        response = await client.post(f"{url}/v1/messages", content=body, headers=headers)
                        await response.aread()

            asyncio.run(go())
        return forward.seen, records, registry

    off, _, _ = run("off")
    shadow, records, registry = run("shadow")
    assert shadow == off
    assert [r.outcome.label for r in records.records] == ["ok"] * 3
    assert all(r.shadow is not None for r in records.records)
    real = sum(_sum(registry, "cachewatch_tokens_total", type=t) for t in TYPES[:4])
    estimated = sum(_sum(registry, "cachewatch_shadow_tokens_total", type=t) for t in TYPES[:4])
    assert real == estimated > 3 * 3_000


# -- telemetry ----------------------------------------------------------------------------


def test_shadow_metrics_spans_and_log_fields(telemetry: Any, emulator: tuple[str, ManualClock]) -> None:
    url, clock = emulator
    _, records = _sdk_run(url, clock, "shadow", **telemetry.kwargs)
    reg = telemetry.registry
    labels = {"provider": "other", "model": MODEL, "workspace": "default"}
    real_cost = _series(reg, "cachewatch_cost_total", currency="USD", **labels)
    shadow_cost = _series(reg, "cachewatch_shadow_cost_total", currency="USD", **labels)
    assert 0 < shadow_cost < 0.5 * real_cost  # a long stable system prompt: auto saves most of it
    expected = sum(r.shadow.cost.total for r in records.records if r.shadow and r.shadow.cost)
    assert shadow_cost == pytest.approx(expected)
    shadow_tokens = {
        t: _series(reg, "cachewatch_shadow_tokens_total", api="messages", type=t, **labels) for t in TYPES
    }
    real_tokens = {
        t: _series(reg, "cachewatch_tokens_total", api="messages", type=t, **labels) for t in TYPES
    }
    assert sum(shadow_tokens[t] for t in TYPES[:4]) == sum(real_tokens[t] for t in TYPES[:4])
    assert shadow_tokens["output"] == real_tokens["output"]
    assert shadow_tokens["cache_read"] > 0 == real_tokens["cache_read"]

    spans = telemetry.spans()
    assert len(spans) == 5
    for span, record in zip(spans, records.records, strict=True):
        attrs = dict(span.attributes)
        assert record.shadow is not None
        assert record.shadow.cost is not None
        assert attrs["cachewatch.shadow.simulated"] is True
        assert attrs["cachewatch.shadow.cost"] == pytest.approx(record.shadow.cost.total, abs=1e-9)
        assert attrs["cachewatch.shadow.currency"] == "USD"
        assert attrs["cachewatch.shadow.usage.cache_read.input_tokens"] == record.shadow.usage.cache_read
    events = telemetry.events()
    assert len(events) == 5
    assert events[-1]["shadow.usage.cache_read.input_tokens"] == records.records[-1].shadow.usage.cache_read  # type: ignore[union-attr]
    text = repr([dict(s.attributes) for s in spans]) + repr(events)
    assert SECRET not in text
    assert KEY not in text


def test_off_and_auto_export_no_shadow_series(emulator: tuple[str, ManualClock]) -> None:
    url, clock = emulator
    for mode in ("off", "auto"):
        registry = CollectorRegistry()
        _sdk_run(url, clock, mode, registry=registry)
        names = {
            m.name for m in registry.collect() for s in m.samples if s.name.startswith("cachewatch_shadow")
        }
        assert names == set(), mode


def test_traffic_auto_would_leave_alone_keeps_its_real_usage(emulator: tuple[str, ManualClock]) -> None:
    url, clock = emulator
    records, registry = Records(), CollectorRegistry()
    import openai

    client = cachewatch.wrap(
        openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0),
        breakpoints="shadow",
        registry=registry,
        sinks=[records],
        wall_clock=clock,
    )
    for t in range(3):
        client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"q{t}"}],
        )
    assert len(records.records) == 3
    for record in records.records:
        assert record.shadow is not None
        assert not record.shadow.simulated
        assert record.shadow.usage == record.usage  # OpenAI caches by itself: auto adds nothing
        assert record.shadow.cost == record.cost


# -- fail open ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["begin", "started", "finish"])
def test_a_fault_in_the_shadow_is_counted_and_changes_nothing(
    where: str, monkeypatch: pytest.MonkeyPatch, emulator: tuple[str, ManualClock]
) -> None:
    url, clock = emulator
    off, _ = _sdk_run(url, clock, "off")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"shadow {where} exploded")

    monkeypatch.setattr(_shadow.Shadow, where, boom)
    registry = CollectorRegistry()
    clock.advance(3_600)  # the emulator's cache from the first run has expired
    shadow, records = _sdk_run(url, clock, "shadow", registry=registry)
    assert [b for *_, b in shadow.seen] == [b for *_, b in off.seen]
    assert _series(registry, "cachewatch_internal_errors_total", stage="shadow") == 5
    assert [r.outcome.label for r in records.records] == ["ok"] * 5
    for record in records.records:
        # The projected saving is never inflated by a fault: the real usage stands in.
        assert record.shadow is not None
        if where in ("begin", "finish"):
            assert not record.shadow.simulated
            assert record.shadow.usage == record.usage


def test_a_fault_the_shadow_planner_contains_is_counted_as_the_shadows(
    monkeypatch: pytest.MonkeyPatch, emulator: tuple[str, ManualClock]
) -> None:
    """The planner never raises (it returns ``Plan(fault=...)``): in shadow mode nobody else
    would count that fault, so the shadow does."""
    from cachewatch.planning._planner import Planner

    url, clock = emulator
    off, _ = _sdk_run(url, clock, "off")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the planner's layout exploded")

    monkeypatch.setattr(Planner, "_plan", boom)
    registry = CollectorRegistry()
    clock.advance(3_600)
    shadow, records = _sdk_run(url, clock, "shadow", registry=registry)
    assert [b for *_, b in shadow.seen] == [b for *_, b in off.seen]
    assert _series(registry, "cachewatch_internal_errors_total", stage="shadow") == 5
    for record in records.records:
        assert record.shadow is not None
        assert not record.shadow.simulated  # the real usage stands in
        assert record.shadow.usage == record.usage


def test_a_planner_given_in_shadow_mode_plans_only_the_shadow(emulator: tuple[str, ManualClock]) -> None:
    from cachewatch.planning._planner import Planner

    url, clock = emulator
    off, _ = _sdk_run(url, clock, "off")
    clock.advance(3_600)
    planner = Planner(clock=clock)
    shadow, records = _sdk_run(url, clock, "shadow", planner=planner)
    assert [b for *_, b in shadow.seen] == [b for *_, b in off.seen]
    assert all(r.shadow is not None and r.shadow.simulated for r in records.records)
    assert all(r.breakpoints is None for r in records.records)  # no real plan


def test_unknown_breakpoints_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="shadow"):
        cachewatch.CacheWatchTransport(breakpoints="pretend")


# -- recording ----------------------------------------------------------------------------


def test_a_transport_records_the_shape_without_text_or_key_and_replay_reads_it(
    tmp_path: Path, emulator: tuple[str, ManualClock]
) -> None:
    url, clock = emulator
    path = tmp_path / "traffic.jsonl"
    _sdk_run(url, clock, "off", record=str(path))
    raw = path.read_bytes()
    assert SECRET.encode() not in raw
    assert KEY.encode() not in raw
    assert b"refund" not in raw
    assert b"invoice" not in raw
    shapes = list(read_shapes(path))
    assert len(shapes) == 5
    assert [s.usage.prompt_total for s in shapes if s.usage] == sorted(s.prompt_tokens for s in shapes)
    result = replay(shapes)
    off, auto = result.strategies["off"], result.strategies["auto"]
    assert off.cache_read == 0
    assert auto.units < 0.5 * off.units
    assert result.misaligned == 0


def test_recording_to_a_stream_and_in_auto_mode_records_the_callers_request(
    emulator: tuple[str, ManualClock],
) -> None:
    url, clock = emulator
    stream = io.StringIO()
    _sdk_run(url, clock, "auto", record=stream)
    shapes = list(read_shapes(io.StringIO(stream.getvalue())))
    assert len(shapes) == 5
    # The caller placed no marker: auto's markers are not part of the recorded request.
    assert all(b.marker is None for s in shapes for b in s.blocks)
    assert sum(s.usage.cache_read for s in shapes if s.usage) > 0  # what was billed (with auto)


def test_a_recording_fault_is_counted_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: tuple[str, ManualClock]
) -> None:
    from cachewatch.simulation import _shape

    url, clock = emulator
    off, _ = _sdk_run(url, clock, "off")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(_shape.ShapeRecorder, "finish", boom)
    registry = CollectorRegistry()
    clock.advance(3_600)
    recorded, records = _sdk_run(url, clock, "off", registry=registry, record=str(tmp_path / "t.jsonl"))
    assert [b for *_, b in recorded.seen] == [b for *_, b in off.seen]
    assert _series(registry, "cachewatch_internal_errors_total", stage="recording") == 5
    assert len(records.records) == 5


# -- the proxy ----------------------------------------------------------------------------


class BodyRecorder:
    """ASGI wrapper around the emulator: keeps every request body that reaches it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        self.bodies.append(body)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _proxy(upstream: str, *args: str) -> Iterator[str]:
    """``cachewatch proxy`` as a subprocess, on a free port; yields its base URL."""
    import subprocess
    import sys
    import time

    import httpx

    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cachewatch.cli",
            "proxy",
            "--upstream",
            upstream,
            "--listen",
            f"127.0.0.1:{port}",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                httpx.get(f"{url}/metrics", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the proxy did not come up"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        if process.stderr is not None:
            process.stderr.close()


def test_the_proxy_in_shadow_mode_forwards_what_off_forwards_and_records_the_shape(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    record = tmp_path / "proxy.jsonl"
    forwarded = {}
    metrics = ""
    for mode in ("off", "shadow"):
        clock = ManualClock(start=1_000_000.0)
        upstream = BodyRecorder(create_app(clock=clock))
        with run_in_thread(upstream) as emulator_url:
            extra = ("--record", str(record)) if mode == "shadow" else ()
            with _proxy(emulator_url, "--breakpoints", mode, *extra) as url:
                client = anthropic.Anthropic(api_key=KEY, base_url=url, max_retries=0)
                _chat(client, clock)
                if mode == "shadow":
                    metrics = httpx.get(f"{url}/metrics", timeout=10).text
        forwarded[mode] = upstream.bodies
    assert len(forwarded["off"]) == 5
    assert forwarded["shadow"] == forwarded["off"]

    samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
    shadow_cost = sum(s.value for s in samples if s.name == "cachewatch_shadow_cost_total")
    real_cost = sum(s.value for s in samples if s.name == "cachewatch_cost_total")
    reads = sum(
        s.value
        for s in samples
        if s.name == "cachewatch_shadow_tokens_total" and s.labels["type"] == "cache_read"
    )
    assert 0 < shadow_cost < real_cost
    assert reads > 3_000

    raw = record.read_bytes()
    assert SECRET.encode() not in raw
    assert KEY.encode() not in raw
    shapes = list(read_shapes(record))
    assert len(shapes) == 5
    assert {s.profile for s in shapes} == {"anthropic"}
    result = subprocess.run(
        [sys.executable, "-m", "cachewatch.cli", "replay", str(record), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {row["strategy"]: row for row in orjson.loads(result.stdout)["rows"]}
    assert rows["recorded"]["cache_read"] == 0
    assert rows["auto"]["units"] < 0.5 * rows["off"]["units"]


def test_the_shadow_mode_example_runs_and_report_and_replay_read_its_files(tmp_path: Path) -> None:
    """``examples/shadow_mode.py``, whose output the README shows."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "shadow_mode.py"
    subprocess.run(
        [sys.executable, str(example), str(tmp_path)], check=True, timeout=120, capture_output=True
    )
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachewatch.cli",
            "report",
            "--url",
            str(tmp_path / "metrics.txt"),
            "--format",
            "json",
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    summary = orjson.loads(report.stdout)
    assert set(summary["workspaces"]) == {"agents", "legal", "support"}
    for group in summary["workspaces"].values():
        shadow = group["shadow"]
        assert 0 < shadow["shadow_cost"]["USD"] < shadow["real_cost"]["USD"] == group["cost"]["USD"]
    replayed = subprocess.run(
        [sys.executable, "-m", "cachewatch.cli", "replay", str(tmp_path / "traffic.jsonl")],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert "best fixed strategy" in replayed.stdout
    assert b"sk-example" not in (tmp_path / "traffic.jsonl").read_bytes()
