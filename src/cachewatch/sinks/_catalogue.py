"""The metric catalogue: every Prometheus metric cachewatch exports, in one place.

The Prometheus sink builds its collectors from this table, and the dashboard and
alert generators read the same table, so a renamed metric breaks a test instead of
silently emptying a panel. Names and label sets are fixed by SPEC section 5 (and
``cachewatch_observation_truncated_total`` by SPEC section 10's observation caps).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CATALOGUE",
    "DURATION_BUCKETS",
    "PROMETHEUS_DURATION_BUCKETS",
    "MetricSpec",
    "metric",
]

#: OTel GenAI semconv boundaries for operation duration / time to first chunk (seconds).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
#: The Prometheus histograms' boundaries: the semconv ones, doubled on up to about 11
#: minutes. A reasoning model's answer or a long stream takes minutes, and past the last
#: boundary every quantile reads as that boundary (81.92 s).
PROMETHEUS_DURATION_BUCKETS = (*DURATION_BUCKETS, 163.84, 327.68, 655.36)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric.

    ``name`` is the full exposition name; for counters it ends in ``_total`` (the
    Python client adds the suffix itself, so :attr:`base_name` strips it).
    """

    name: str
    kind: str  # "counter" | "histogram"
    labels: tuple[str, ...]
    help: str
    unit: str = ""
    buckets: tuple[float, ...] = ()

    @property
    def base_name(self) -> str:
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec(
        "cachewatch_requests_total",
        "counter",
        ("provider", "api", "model", "workspace", "outcome"),
        "LLM API requests observed, by how they ended.",
    ),
    MetricSpec(
        "cachewatch_tokens_total",
        "counter",
        ("provider", "api", "model", "workspace", "type"),
        "Billed tokens by partition type: input (uncached), cache_read, cache_write_5m, cache_write_1h, output.",
    ),
    MetricSpec(
        "cachewatch_usage_unreported_total",
        "counter",
        ("provider", "api", "model", "workspace"),
        "Requests that ended ok without the provider reporting usage (an OpenAI-compatible stream "
        "without stream_options.include_usage...): their tokens are unknown, not zero.",
    ),
    MetricSpec(
        "cachewatch_request_duration_seconds",
        "histogram",
        ("provider", "api", "model"),
        "Seconds from sending the request to the end of the response body.",
        unit="seconds",
        buckets=PROMETHEUS_DURATION_BUCKETS,
    ),
    MetricSpec(
        "cachewatch_time_to_first_token_seconds",
        "histogram",
        ("provider", "api", "model"),
        "Seconds from sending a streamed request to its first body chunk.",
        unit="seconds",
        buckets=PROMETHEUS_DURATION_BUCKETS,
    ),
    MetricSpec(
        "cachewatch_breakpoints_total",
        "counter",
        ("provider", "location", "action"),
        "cache_control breakpoint decisions by location and action.",
    ),
    MetricSpec(
        "cachewatch_cost_total",
        "counter",
        ("provider", "model", "workspace", "currency"),
        "Money billed for requests whose model has a known price.",
    ),
    MetricSpec(
        "cachewatch_cache_savings_total",
        "counter",
        ("provider", "model", "workspace", "currency"),
        "Money the cache-read discount saved against paying the base input price.",
    ),
    MetricSpec(
        "cachewatch_cache_write_premium_total",
        "counter",
        ("provider", "model", "workspace", "currency"),
        "Extra money paid for cache writes above the base input price.",
    ),
    MetricSpec(
        "cachewatch_shadow_cost_total",
        "counter",
        ("provider", "model", "workspace", "currency"),
        'breakpoints="shadow": what the same requests would have cost with breakpoints="auto" '
        "(the shadow estimate: the provider's cache simulated for auto's markers, calibrated with the "
        "billed prompt totals), beside the real cachewatch_cost_total.",
    ),
    MetricSpec(
        "cachewatch_shadow_tokens_total",
        "counter",
        ("provider", "api", "model", "workspace", "type"),
        'breakpoints="shadow": the tokens the same requests would have been billed with '
        'breakpoints="auto", by the type values of cachewatch_tokens_total.',
    ),
    MetricSpec(
        "cachewatch_cache_misses_total",
        "counter",
        ("provider", "model", "reason"),
        "Requests that read less from the cache than their prefix allowed, by diagnosed reason.",
    ),
    MetricSpec(
        "cachewatch_cache_wasted_write_tokens_total",
        "counter",
        ("provider", "model", "workspace"),
        "Cache-write tokens never read within their TTL (writes that expired unread).",
    ),
    MetricSpec(
        "cachewatch_volatile_prefix_tokens_total",
        "counter",
        ("provider", "model", "workspace", "block"),
        "Prompt tokens that would have been cacheable had a block that changes on every request "
        "come after the stable part of the prompt (the planner's advice; position, never content). "
        "block: its path (tools.N, system.N or system, :first_line when only its first line "
        "changes) for the first 16 tools/system positions, else other.",
    ),
    MetricSpec(
        "cachewatch_internal_errors_total",
        "counter",
        ("stage",),
        "Faults inside cachewatch that it survived; the caller's traffic was left untouched.",
    ),
    MetricSpec(
        "cachewatch_observation_truncated_total",
        "counter",
        ("reason",),
        "Responses cachewatch stopped observing at a size cap (json_body, sse_line, sse_event, "
        "decoded_bytes); every byte was still relayed unchanged, the usage may be incomplete.",
    ),
)

_BY_NAME = {spec.name: spec for spec in CATALOGUE}


def metric(name: str) -> MetricSpec:
    """Look a metric up by its exposition name (raises KeyError for unknown names)."""
    return _BY_NAME[name]
