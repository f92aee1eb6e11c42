"""OpenTelemetry sink: one GenAI CLIENT span per request, and optional GenAI client metrics.

The span is started when the request goes out and ended when the response **body**
ends or is closed, not when the headers arrive: usage only exists at the end of the
body (the last SSE event), and a span that ended at the headers could not carry it.
This is the choice semantic-conventions PR #70 asks instrumentations to document.

Attribute names are string literals (the ``_incubating`` constants are private and
deprecated). ``gen_ai.usage.input_tokens`` includes cache reads and writes, as the
GenAI conventions require.

With ``token_counters=True`` (``otel_token_counters=True`` on ``wrap()`` and the
transports) the metrics sink also adds the draft GenAI token counters, unit ``{token}``:
``gen_ai.client.inference.usage.input_tokens`` (the whole prompt, cache included),
``.output_tokens``, ``.cache_read.input_tokens``, ``.cache_write.input_tokens`` and
``.reasoning.output_tokens`` (when reported); the cache and reasoning counters are subsets
of the input and output ones. Their attributes are those of the draft, with
``gen_ai.token.modality = "unknown"`` (usage is not broken down by modality). The names
come from ``docs/gen-ai/gen-ai-token-metrics.md`` in open-telemetry/semantic-conventions-genai
(PR #374), still "Development" status and not merged: they may change, which is why they
are opt-in and the ``gen_ai.client.token.usage`` histogram stays.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._version import __version__
from ..accounting._records import Outcome, RequestInfo, UsageRecord
from ..engine._endpoints import LabelCap
from ..planning._plan import ACTIONS
from ._catalogue import DURATION_BUCKETS

__all__ = ["TOKEN_BUCKETS", "TOKEN_COUNTERS", "OTelMetricsSink", "OTelSpanSink"]

#: OTel GenAI semconv boundaries for gen_ai.client.token.usage.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip

#: The draft GenAI token counters (semantic-conventions-genai PR #374) and what each counts.
TOKEN_COUNTERS = (
    ("gen_ai.client.inference.usage.input_tokens", "Input (prompt) tokens, cached tokens included."),
    ("gen_ai.client.inference.usage.output_tokens", "Output (completion) tokens, reasoning included."),
    ("gen_ai.client.inference.usage.cache_read.input_tokens", "Input tokens served from a provider cache."),
    ("gen_ai.client.inference.usage.cache_write.input_tokens", "Input tokens written to a provider cache."),
    ("gen_ai.client.inference.usage.reasoning.output_tokens", "Output tokens spent on reasoning."),
)

_PROVIDER_NAMES = {
    "azure_openai": "azure.ai.openai",
    "mistral": "mistral_ai",
    "google": "gcp.gemini",
    "moonshot": "moonshot_ai",
    "zai": "z_ai",
}


def semconv_provider(provider: str) -> str:
    """``gen_ai.provider.name`` for a cachewatch provider label."""
    return _PROVIDER_NAMES.get(provider, provider)


class OTelSpanSink:
    """Opens a span per request and finishes it with usage, response and cachewatch attributes."""

    name = "otel"

    def __init__(self, tracer_provider: Any | None = None) -> None:
        self.tracer = trace.get_tracer("cachewatch", __version__, tracer_provider=tracer_provider)
        #: No provider given and none set globally yet: the tracer is OTel's proxy, which
        #: delegates to a no-op tracer until the application sets a global provider.
        self._proxy = isinstance(self.tracer, trace.ProxyTracer)

    def start(self, info: RequestInfo) -> Any:
        if self._proxy and isinstance(getattr(self.tracer, "_tracer", None), trace.NoOpTracer):
            # The proxy's current delegate (what its own start_span calls) is the no-op
            # tracer: the span would be a no-op, so none is started (and none is made
            # current around the inner call). Checked per request: a provider set later
            # is picked up at once.
            return None
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": info.operation,
            "gen_ai.provider.name": semconv_provider(info.provider),
            "server.address": info.server_address,
            "cachewatch.api": info.api,
            "cachewatch.workspace": info.workspace,
        }
        if info.request_model:
            attributes["gen_ai.request.model"] = info.request_model
        if info.server_port is not None:
            attributes["server.port"] = info.server_port
        if info.stream:
            attributes["gen_ai.request.stream"] = True
        name = f"{info.operation} {info.request_model}" if info.request_model else info.operation
        return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def finish(self, state: object | None, record: UsageRecord) -> None:
        span: Any = state
        if span is None:
            return
        try:
            if span.is_recording():
                span.set_attributes(span_attributes(record))
                if record.outcome in (Outcome.SERVER_ERROR, Outcome.TRANSPORT_ERROR, Outcome.CLIENT_ERROR):
                    span.set_status(Status(StatusCode.ERROR))
        finally:
            span.end()


def span_attributes(record: UsageRecord) -> dict[str, Any]:
    """The end-of-body span attributes of a record (no text, no credentials)."""
    attrs: dict[str, Any] = {"cachewatch.outcome": record.outcome.label}
    if record.status_code is not None:
        attrs["http.response.status_code"] = record.status_code
    if record.response_model:
        attrs["gen_ai.response.model"] = record.response_model
    if record.response_id:
        attrs["gen_ai.response.id"] = record.response_id
    if record.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = list(record.finish_reasons)
    if record.error_type:
        attrs["error.type"] = record.error_type
    elif record.outcome in (Outcome.SERVER_ERROR, Outcome.CLIENT_ERROR) and record.status_code:
        attrs["error.type"] = str(record.status_code)
    if record.time_to_first_token is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = record.time_to_first_token
    usage = record.usage
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_total
        attrs["gen_ai.usage.output_tokens"] = usage.output
        attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
        attrs["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write
        attrs["cachewatch.usage.uncached_input_tokens"] = usage.input
        attrs["cachewatch.usage.cache_creation.ephemeral_5m.input_tokens"] = usage.cache_write_5m
        attrs["cachewatch.usage.cache_creation.ephemeral_1h.input_tokens"] = usage.cache_write_1h
        if usage.reasoning is not None:
            attrs["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
    cost = record.cost
    if cost is not None:
        attrs["cachewatch.cost"] = cost.total
        attrs["cachewatch.cache_savings"] = cost.savings
        attrs["cachewatch.cache_write_premium"] = cost.write_premium
        attrs["cachewatch.currency"] = cost.currency
    _stage_attributes(record, attrs)
    return attrs


def _stage_attributes(record: UsageRecord, attrs: dict[str, Any]) -> None:
    """:attr:`UsageRecord.extra` as ``cachewatch.*`` attributes, in its order, without building it.

    The common records (breakpoints, nothing else) take one pass over the decisions; any
    other stage field goes through ``extra`` itself, so that both always agree.
    """
    bp = record.breakpoints
    if (
        record.observation_truncated is None
        and not record.unparsed
        and record.usage_reported
        and not record.provider_miss_reason
        and record.miss is None
        and record.cache_mode is None
        and record.advice is None
        and record.shadow is None
        and (bp is None or type(bp.profile) is str)
    ):
        if bp is not None:
            counts: dict[str, int] = {}
            for _, action in bp.decisions:
                counts[action] = counts.get(action, 0) + 1
            for action in sorted(counts):
                attrs[_BREAKPOINT_KEYS.get(action) or f"cachewatch.breakpoints.{action}"] = counts[action]
            if bp.profile:
                attrs["cachewatch.breakpoints.profile"] = bp.profile
        return
    for key, value in record.extra.items():  # the stage fields, flat (see UsageRecord.extra)
        if isinstance(value, (str, bool, int, float)):
            attrs[f"cachewatch.{key}"] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            attrs[f"cachewatch.{key}"] = list(value)


#: ``cachewatch.breakpoints.<action>`` of every action the planner takes.
_BREAKPOINT_KEYS = {action: f"cachewatch.breakpoints.{action}" for action in ACTIONS}


class OTelMetricsSink:
    """GenAI client metrics through a user-supplied ``meter_provider``, with semconv buckets.

    Attributes that come from the response are capped like Prometheus labels, so that an
    upstream cannot create a data point per distinct value: ``gen_ai.response.model``
    through ``model_cap`` (the engine's: the ``model`` label's cap, ``other`` past it) and
    ``error.type`` at ``max_error_types`` distinct values (``_OTHER`` past it, semconv's
    fallback value).
    """

    name = "otel_metrics"

    def __init__(
        self,
        meter_provider: Any,
        *,
        token_counters: bool = False,
        model_cap: LabelCap | None = None,
        max_error_types: int = 50,
    ) -> None:
        self._models = model_cap if model_cap is not None else LabelCap()
        self._errors = LabelCap(max_error_types, overflow="_OTHER")
        meter = meter_provider.get_meter("cachewatch", __version__)
        #: The draft token counters in TOKEN_COUNTERS order, when asked for.
        self.token_counters: tuple[Any, ...] | None = None
        if token_counters:
            self.token_counters = tuple(
                meter.create_counter(name, unit="{token}", description=text) for name, text in TOKEN_COUNTERS
            )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.ttfc = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        info = record.request
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": info.operation,
            "gen_ai.provider.name": semconv_provider(info.provider),
            "server.address": info.server_address,
        }
        if info.request_model:
            attrs["gen_ai.request.model"] = info.model
        if info.server_port is not None:
            attrs["server.port"] = info.server_port
        if record.response_model:
            attrs["gen_ai.response.model"] = self._models(record.response_model)
        if record.error_type:
            attrs["error.type"] = self._errors(record.error_type)
        self.duration.record(record.duration, attrs)
        if record.time_to_first_token is not None:
            self.ttfc.record(record.time_to_first_token, attrs)
        usage = record.usage
        if usage is not None:
            self.token_usage.record(usage.prompt_total, {**attrs, "gen_ai.token.type": "input"})
            self.token_usage.record(usage.output, {**attrs, "gen_ai.token.type": "output"})
            counters = self.token_counters
            if counters is not None:
                counted = {k: v for k, v in attrs.items() if k != "error.type"}
                counted["gen_ai.token.modality"] = "unknown"
                values = (
                    usage.prompt_total,
                    usage.output,
                    usage.cache_read,
                    usage.cache_write,
                    usage.reasoning,
                )
                for counter, value in zip(counters, values, strict=True):
                    if value is not None:
                        counter.add(value, counted)
