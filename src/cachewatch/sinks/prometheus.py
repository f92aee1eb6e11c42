"""Prometheus sink: the fixed ``cachewatch_*`` counters and histograms of SPEC section 5.

Besides them, ``cachewatch_usage_unreported_total`` counts requests whose usage the
provider did not report (``record.usage_reported``: a response that ended ok without it,
a stream cut before it, or one the caller left before it), so that "the provider did not say" never reads as zero tokens, and
``cachewatch_volatile_prefix_tokens_total`` the tokens the planner's prefix advice says
a volatile block keeps from being cached. With ``breakpoints="shadow"``,
``cachewatch_shadow_tokens_total`` and ``cachewatch_shadow_cost_total`` count what the
same requests would have been billed with ``auto`` (``record.shadow``). Everything comes
from the record: breakpoint decisions, the miss verdict, the advice and the estimate included.

Collectors are built from the metric catalogue once per registry (registering a name
twice raises in prometheus_client), and only Counter and Histogram are used so that
``PROMETHEUS_MULTIPROC_DIR`` multiprocess mode works. Label children are cached: one
:class:`Series` per ``(provider, api, model, workspace)`` holds every child a request
with those labels touches, so a request costs one dict look-up plus the increments.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from ..accounting._records import TOKEN_TYPES, RequestInfo, ShadowEstimate, UsageRecord
from ..diagnosis import MISS_REASONS
from ._catalogue import CATALOGUE, MetricSpec

__all__ = [
    "WASTED_WRITE_TOKENS",
    "PrometheusMetrics",
    "PrometheusSink",
    "Series",
    "advice_block_label",
    "metrics_for",
]

#: Write tokens never read within their TTL; counted only once the catalogue defines it.
WASTED_WRITE_TOKENS = "cachewatch_cache_wasted_write_tokens_total"
_MISS_REASONS = frozenset(MISS_REASONS)
#: Positions of the tools and system regions whose advice gets a ``block`` label of its own.
_ADVICE_POSITIONS = 16


def advice_block_label(block: str) -> str:
    """The ``block`` label of an advice: its path for ``tools.N``/``system.N`` (N < 16) and
    ``system`` (``:first_line`` kept), ``tools:order``, else ``other``: a bounded set."""
    if block == "tools:order":
        return block
    path, _, suffix = block.partition(":")
    if suffix not in ("", "first_line"):
        return "other"
    if path == "system":
        return block
    region, _, index = path.partition(".")
    if region in ("tools", "system") and index.isdigit() and int(index) < _ADVICE_POSITIONS:
        return block
    return "other"


class _BeforeCollect:
    """A collector of no series, registered before the catalogue's: collecting a registry
    runs its collectors in order, so each ``sweep_due()`` counts what expired before the
    counters are read."""

    def __init__(self, hooks: weakref.WeakSet[Any]) -> None:
        self.hooks = hooks

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        for hook in list(self.hooks):
            with contextlib.suppress(Exception):  # sweep_due() never raises; this is belt and braces
                hook.sweep_due()
        return iter(())


class PrometheusMetrics:
    """The collectors of the catalogue, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        #: The label caps of every engine exporting here, by (label, limit): a label's
        #: distinct values are capped per registry (the global one: per process), not per
        #: ``wrap()`` (the engine keeps its caps here; ``engine._endpoints.LabelCap``).
        self.label_caps: dict[tuple[str, int], Any] = {}
        #: Objects whose ``sweep_due()`` runs when the registry is collected, before any
        #: cachewatch series is read (the miss diagnosis counts the writes that expired
        #: unread then, not only at a client's next request); held weakly.
        self.before_collect: weakref.WeakSet[Any] = weakref.WeakSet()
        sweeper = _BeforeCollect(self.before_collect)
        registry.register(sweeper)
        self.collectors: dict[str, Any] = {}
        try:
            for spec in CATALOGUE:
                self.collectors[spec.name] = _build(spec, registry)
        except Exception:
            # e.g. a name already taken on this registry: leave nothing half-registered.
            for collector in (sweeper, *self.collectors.values()):
                with contextlib.suppress(Exception):  # best effort
                    registry.unregister(collector)
            raise
        self.requests: Counter = self.collectors["cachewatch_requests_total"]
        self.tokens: Counter = self.collectors["cachewatch_tokens_total"]
        self.usage_unreported: Counter = self.collectors["cachewatch_usage_unreported_total"]
        self.duration: Histogram = self.collectors["cachewatch_request_duration_seconds"]
        self.ttft: Histogram = self.collectors["cachewatch_time_to_first_token_seconds"]
        self.breakpoints: Counter = self.collectors["cachewatch_breakpoints_total"]
        self.cost: Counter = self.collectors["cachewatch_cost_total"]
        self.savings: Counter = self.collectors["cachewatch_cache_savings_total"]
        self.write_premium: Counter = self.collectors["cachewatch_cache_write_premium_total"]
        self.misses: Counter = self.collectors["cachewatch_cache_misses_total"]
        self.internal_errors: Counter = self.collectors["cachewatch_internal_errors_total"]
        self.observation_truncated: Counter = self.collectors["cachewatch_observation_truncated_total"]
        self.volatile_prefix_tokens: Counter = self.collectors["cachewatch_volatile_prefix_tokens_total"]
        self.shadow_tokens: Counter = self.collectors["cachewatch_shadow_tokens_total"]
        self.shadow_cost: Counter = self.collectors["cachewatch_shadow_cost_total"]
        #: None until the catalogue has the metric (then wasted writes are not exported).
        self.wasted_write_tokens: Counter | None = self.collectors.get(WASTED_WRITE_TOKENS)
        self._series: dict[tuple[str, str, str, str], Series] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def series(self, provider: str, api: str, model: str, workspace: str) -> Series:
        """The cached children of one ``(provider, api, model, workspace)`` label tuple."""
        key = (provider, api, model, workspace)
        found = self._series.get(key)
        if found is None:
            with self._lock:
                found = self._series.setdefault(key, Series(self, key))
        return found

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


def _adder(child: Any) -> Callable[[float], None]:
    """``child.inc`` for a labelled Counter child and an amount known to be non-negative.

    prometheus_client's ``Counter.inc`` re-checks on every call that the child is labelled
    and the amount non-negative, then adds to the child's value object (a lock-guarded
    float, or the mmap-backed value in multiprocess mode). Both checks hold by
    construction here, so the value's own ``inc`` is used when the client has one.
    """
    inc = getattr(getattr(child, "_value", None), "inc", None)
    return inc if callable(inc) else child.inc  # type: ignore[no-any-return]


class Series:
    """Every child one ``(provider, api, model, workspace)`` label tuple uses, created on first use.

    A series appears in the exposition only once something was recorded on it (as with
    ``labels()`` per request): tokens at the first usage, money at the first priced
    request, time to first token at the first stream.
    """

    __slots__ = (
        "_metrics",
        "breakpoints",
        "duration",
        "labels",
        "money",
        "requests",
        "shadow_money",
        "shadow_tokens",
        "tokens",
        "ttft",
        "unreported",
        "wasted",
    )

    def __init__(self, metrics: PrometheusMetrics, labels: tuple[str, str, str, str]) -> None:
        provider, api, model, _ = labels
        self._metrics = metrics
        self.labels = labels
        #: outcome label -> adder of its ``cachewatch_requests_total`` child.
        self.requests: dict[str, Callable[[float], None]] = {}
        #: Adders of the five ``cachewatch_tokens_total`` children in TOKEN_TYPES order,
        #: once usage was seen (token counts are never negative).
        self.tokens: tuple[Callable[[float], None], ...] | None = None
        self.duration: Any = metrics.duration.labels(provider, api, model)
        #: Requests ok without usage; created at 0 with the series, so "none" reads 0, not absent.
        self.unreported = _adder(metrics.usage_unreported.labels(*labels))
        self.ttft: Any = None
        #: currency -> adders of its (cost, savings, write premium) children.
        self.money: dict[str, tuple[Callable[[float], None], ...]] = {}
        #: The wasted-write series exists (it is created at the first cache write).
        self.wasted = False
        #: ``breakpoints="shadow"``: adders of the five shadow token children (TOKEN_TYPES
        #: order) and, per currency, of the shadow cost child; created at the first estimate.
        self.shadow_tokens: tuple[Callable[[float], None], ...] | None = None
        self.shadow_money: dict[str, Callable[[float], None]] = {}
        #: (location, action) -> adder of its ``cachewatch_breakpoints_total`` child.
        self.breakpoints: dict[tuple[str, str], Callable[[float], None]] = {}

    def request(self, outcome: str) -> Callable[[float], None]:
        add = self.requests.get(outcome)
        if add is None:
            add = self.requests[outcome] = _adder(self._metrics.requests.labels(*self.labels, outcome))
        return add

    def breakpoint(self, decision: tuple[str, str]) -> Callable[[float], None]:
        """The adder of ``cachewatch_breakpoints_total{provider, location, action}``."""
        add = self.breakpoints.get(decision)
        if add is None:
            m = self._metrics
            add = self.breakpoints[decision] = _adder(m.child(m.breakpoints, (self.labels[0], *decision)))
        return add

    def token_children(self) -> tuple[Callable[[float], None], ...]:
        """Created together, at 0, so that every type reads 0 rather than absent."""
        adders = self.tokens
        if adders is None:
            tokens = self._metrics.tokens
            adders = self.tokens = tuple(_adder(tokens.labels(*self.labels, t)) for t in TOKEN_TYPES)
        return adders

    def ttft_child(self) -> Any:
        child = self.ttft
        if child is None:
            provider, api, model, _ = self.labels
            child = self.ttft = self._metrics.ttft.labels(provider, api, model)
        return child

    def money_children(self, currency: str) -> tuple[Callable[[float], None], ...]:
        """Created together, at 0; the caller checks the sign (prices can be misconfigured)."""
        adders = self.money.get(currency)
        if adders is None:
            m = self._metrics
            provider, _, model, workspace = self.labels
            labels = (provider, model, workspace, currency)
            adders = self.money[currency] = tuple(
                _adder(m.child(collector, labels)) for collector in (m.cost, m.savings, m.write_premium)
            )
        return adders

    def shadow_token_children(self) -> tuple[Callable[[float], None], ...]:
        """Created together, at 0, as the real token children are."""
        adders = self.shadow_tokens
        if adders is None:
            tokens = self._metrics.shadow_tokens
            adders = self.shadow_tokens = tuple(_adder(tokens.labels(*self.labels, t)) for t in TOKEN_TYPES)
        return adders

    def shadow_cost_child(self, currency: str) -> Callable[[float], None]:
        add = self.shadow_money.get(currency)
        if add is None:
            m = self._metrics
            provider, _, model, workspace = self.labels
            add = self.shadow_money[currency] = _adder(
                m.child(m.shadow_cost, (provider, model, workspace, currency))
            )
        return add

    def touch_wasted(self) -> None:
        """Create the wasted-write series at 0 (wasted tokens are counted minutes later)."""
        m = self._metrics
        if not self.wasted and m.wasted_write_tokens is not None:
            provider, _, model, workspace = self.labels
            m.child(m.wasted_write_tokens, (provider, model, workspace))
            self.wasted = True


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
        series = m.series(info.provider, info.api, info.model, info.workspace)
        series.request(record.outcome.label)(1)
        usage = record.usage
        if usage is None:
            if not record.usage_reported:  # ended ok, cut or left before its usage came
                series.unreported(1)
        else:
            for add, value in zip(
                series.token_children(),
                (usage.input, usage.cache_read, usage.cache_write_5m, usage.cache_write_1h, usage.output),
                strict=True,
            ):
                if value:  # the series already exists (created at 0 by token_children)
                    add(value)
            if usage.cache_write_5m or usage.cache_write_1h:
                # Wasted tokens are counted when a write expires unread, minutes later; the
                # series exists from the first write on, so "none wasted yet" reads as 0.
                series.touch_wasted()
        series.duration.observe(record.duration)
        if record.time_to_first_token is not None:
            series.ttft_child().observe(record.time_to_first_token)
        cost = record.cost
        if cost is not None:
            # The children are created at 0 first, so zero amounts need no increment.
            for add, amount in zip(
                series.money_children(cost.currency),
                (cost.total, cost.savings, cost.write_premium),
                strict=True,
            ):
                if amount:
                    if amount < 0:  # as Counter.inc: a fault, counted for this sink
                        raise ValueError("Counters can only be incremented by non-negative amounts.")
                    add(amount)
        breakpoints = record.breakpoints
        if breakpoints is not None and breakpoints.decisions:
            decisions = breakpoints.decisions
            adders = series.breakpoints
            if len(decisions) == 1:
                (adders.get(decisions[0]) or series.breakpoint(decisions[0]))(1)
            else:
                # One increment per distinct (location, action): several skipped candidates
                # of one kind are one addition, as they are one label set.
                counts: dict[tuple[str, str], int] = {}
                for decision in decisions:
                    counts[decision] = counts.get(decision, 0) + 1
                for decision, n in counts.items():
                    (adders.get(decision) or series.breakpoint(decision))(n)
        miss = record.miss
        if miss is not None and miss.reason in _MISS_REASONS:
            m.child(m.misses, (info.provider, info.model, miss.reason)).inc()
        advice = record.advice
        if advice is not None and advice.tokens > 0:
            labels = (info.provider, info.model, info.workspace, advice_block_label(advice.block))
            m.child(m.volatile_prefix_tokens, labels).inc(advice.tokens)
        shadow = record.shadow
        if shadow is not None:
            _count_shadow(series, shadow)


def _count_shadow(series: Series, shadow: ShadowEstimate) -> None:
    """The shadow estimate's tokens and money (``breakpoints="shadow"``)."""
    u = shadow.usage
    for add, value in zip(
        series.shadow_token_children(),
        (u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h, u.output),
        strict=True,
    ):
        if value:
            add(value)
    cost = shadow.cost
    if cost is not None:
        add_cost = series.shadow_cost_child(cost.currency)
        if cost.total:
            if cost.total < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
            add_cost(cost.total)
