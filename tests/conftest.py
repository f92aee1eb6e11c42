"""Shared fixtures: a fresh Prometheus registry, an in-memory span exporter, captured log events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry


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


@pytest.fixture
def telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log = structlog.testing.CapturingLogger()
    logger = structlog.wrap_logger(log, processors=[])
    return Telemetry(CollectorRegistry(), exporter, provider, log, logger)
