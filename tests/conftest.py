"""Shared fixtures: a fresh Prometheus registry, an in-memory span exporter, captured log events,
a real redis-server, and the learned-state implementations the shared learning cases run against."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from _redis import redis_server
from cachewatch.planning._learning import LearningState
from cachewatch.planning._learning_memory import MemoryLearner


@dataclass
class Telemetry:
    """Everything a transport under test reports to, plus helpers to read it back."""

    registry: CollectorRegistry
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    log: structlog.testing.CapturingLogger
    logger: Any = field(default=None)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"registry": self.registry, "tracer_provider": self.tracer_provider, "logger": self.logger}

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def tokens(self, **labels: str) -> dict[str, float]:
        types = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
        return {t: self.value("cachewatch_tokens_total", type=t, **labels) for t in types}

    def events(self) -> list[dict[str, Any]]:
        return [dict(call.kwargs) for call in self.log.calls]

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture(autouse=True)
def _structlog_left_as_found() -> Iterator[None]:
    """A test that configures structlog (``structlog.testing.capture_logs`` does, and leaves
    it "configured") must not make the library's default sink use structlog in the tests
    that follow: the suite passes in any order."""
    configured = structlog.is_configured()
    yield
    if structlog.is_configured() and not configured:
        structlog.reset_defaults()


@pytest.fixture
def telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log = structlog.testing.CapturingLogger()
    logger = structlog.wrap_logger(log, processors=[])
    return Telemetry(CollectorRegistry(), exporter, provider, log, logger)


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A real ``redis-server`` on a free loopback port, shared by the session's tests."""
    with redis_server() as port:
        yield port


@pytest.fixture(params=["memory", "redis"])
def new_learner(request: pytest.FixtureRequest) -> Iterator[Callable[..., LearningState]]:
    """Makes learned states of one implementation: the shared cases run against both.

    ``memory``: :class:`MemoryLearner`; ``redis``: :class:`RedisLearner` on a real
    redis-server, each in its own key namespace, with a timeout generous enough for a
    loaded machine. A Redis learner that fell back to its local state fails the test.
    """
    if request.param == "memory":
        yield lambda **options: MemoryLearner(**options)
        return
    import redis

    from cachewatch.planning._learning_redis import RedisLearner

    port = request.getfixturevalue("redis_port")
    made: list[RedisLearner] = []
    faults: list[str] = []

    def make(**options: Any) -> LearningState:
        options.setdefault("key_prefix", f"test:{time.monotonic_ns()}:")
        learner = RedisLearner(
            redis.Redis(port=port),
            timeout=10.0,
            on_fault=lambda stage, exc: faults.append(f"{stage}: {exc!r}"),
            **options,
        )
        made.append(learner)
        return learner

    yield make
    for learner in made:
        learner.clear()
    assert faults == []
