"""Prometheus sink: the fixed ``cachewatch_*`` counters and histograms of SPEC section 5.

Collectors are built from the metric catalogue once per registry (registering a name
twice raises in prometheus_client), and only Counter and Histogram are used so that
``PROMETHEUS_MULTIPROC_DIR`` multiprocess mode works. Label children are cached per
label tuple to keep the per-request cost to a few dict look-ups.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from .._catalogue import CATALOGUE, MetricSpec
from .._diagnosis import MISS_REASONS
from .._models import TOKEN_TYPES, RequestInfo, UsageRecord

__all__ = ["WASTED_WRITE_TOKENS", "PrometheusMetrics", "PrometheusSink", "metrics_for"]

#: Write tokens never read within their TTL; counted only once the catalogue defines it.
WASTED_WRITE_TOKENS = "cachewatch_cache_wasted_write_tokens_total"
_MISS_REASONS = frozenset(MISS_REASONS)


class PrometheusMetrics:
    """The collectors of the catalogue, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.collectors: dict[str, Any] = {}
        for spec in CATALOGUE:
            self.collectors[spec.name] = _build(spec, registry)
        self.requests: Counter = self.collectors["cachewatch_requests_total"]
        self.tokens: Counter = self.collectors["cachewatch_tokens_total"]
        self.duration: Histogram = self.collectors["cachewatch_request_duration_seconds"]
        self.ttft: Histogram = self.collectors["cachewatch_time_to_first_token_seconds"]
        self.breakpoints: Counter = self.collectors["cachewatch_breakpoints_total"]
        self.cost: Counter = self.collectors["cachewatch_cost_total"]
        self.savings: Counter = self.collectors["cachewatch_cache_savings_total"]
        self.write_premium: Counter = self.collectors["cachewatch_cache_write_premium_total"]
        self.misses: Counter = self.collectors["cachewatch_cache_misses_total"]
        self.internal_errors: Counter = self.collectors["cachewatch_internal_errors_total"]
        #: None until the catalogue has the metric (then wasted writes are not exported).
        self.wasted_write_tokens: Counter | None = self.collectors.get(WASTED_WRITE_TOKENS)
        self._token_children: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def child(self, collector: Any, labels: tuple[str, ...]) -> Any:
        """``collector.labels(*labels)``, cached: labels() costs a lock and a dict build per call."""
        key = (collector, labels)
        found = self._children.get(key)
        if found is None:
            found = collector.labels(*labels)
            with self._lock:
                self._children[key] = found
        return found

    def count_wasted_write_tokens(self, provider: str, model: str, workspace: str, tokens: int) -> None:
        """Add write tokens that expired unread (the diagnoser's ``on_wasted`` callback)."""
        collector = self.wasted_write_tokens
        if collector is not None and tokens > 0:
            self.child(collector, (provider, model, workspace)).inc(tokens)

    def token_children(self, provider: str, api: str, model: str, workspace: str) -> tuple[Any, ...]:
        """The five ``cachewatch_tokens_total`` children of one label tuple, in TOKEN_TYPES order."""
        key = (provider, api, model, workspace)
        children = self._token_children.get(key)
        if children is None:
            children = tuple(self.tokens.labels(provider, api, model, workspace, t) for t in TOKEN_TYPES)
            with self._lock:
                self._token_children[key] = children
        return children


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    if spec.kind == "counter":
        return Counter(spec.base_name, spec.help, spec.labels, registry=registry)
    if spec.kind == "histogram":
        return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)
    raise ValueError(f"unsupported metric kind {spec.kind!r}")


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, PrometheusMetrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


def metrics_for(registry: CollectorRegistry | None = None) -> PrometheusMetrics:
    """The (shared) collectors on ``registry``, created on first use; default: the global registry."""
    registry = REGISTRY if registry is None else registry
    with _BY_REGISTRY_LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = PrometheusMetrics(registry)
            _BY_REGISTRY[registry] = metrics
        return metrics


class PrometheusSink:
    """Counts requests, tokens by type, duration and time to first token."""

    name = "prometheus"

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        m = self.metrics
        info = record.request
        m.child(m.requests, (info.provider, info.api, info.model, info.workspace, record.outcome.value)).inc()
        usage = record.usage
        if usage is not None:
            children = m.token_children(info.provider, info.api, info.model, info.workspace)
            for child, value in zip(
                children,
                (usage.input, usage.cache_read, usage.cache_write_5m, usage.cache_write_1h, usage.output),
                strict=True,
            ):
                if value:  # the series already exists (created at 0 by token_children)
                    child.inc(value)
            if usage.cache_write and m.wasted_write_tokens is not None:
                # Wasted tokens are counted when a write expires unread, minutes later; the
                # series exists from the first write on, so "none wasted yet" reads as 0.
                m.child(m.wasted_write_tokens, (info.provider, info.model, info.workspace))
        short = (info.provider, info.api, info.model)
        m.child(m.duration, short).observe(record.duration)
        if record.time_to_first_token is not None:
            m.child(m.ttft, short).observe(record.time_to_first_token)
        cost = record.cost
        if cost is not None:
            labels = (info.provider, info.model, info.workspace, cost.currency)
            # child() creates each series at 0 first, so zero amounts need no inc().
            for collector, amount in (
                (m.cost, cost.total),
                (m.savings, cost.savings),
                (m.write_premium, cost.write_premium),
            ):
                child = m.child(collector, labels)
                if amount:
                    child.inc(amount)
        reason = record.extra.get("miss_reason")
        if reason is not None and reason in _MISS_REASONS:
            m.child(m.misses, (info.provider, info.model, str(reason))).inc()
