"""The sans-IO core shared by every transport shell: one Engine per transport, one Exchange per request.

Data flow: request -> planner -> transport -> stream observer -> usage record -> sinks.

The shells (``_transport.py``, ``_streams.py``) only move bytes; they call into an
:class:`Exchange` at each step (request built, headers received, chunk seen, body
ended or closed, transport failed). Every Exchange method is fail-open: a fault is
counted and logged by the :class:`~cachewatch._faults.FaultRecorder` and the exchange
degrades to "observe less", never to "change the traffic".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ._endpoints import (
    LabelCap,
    WorkspaceResolver,
    classify_api,
    credential_from_headers,
    provider_for_host,
    sniff_model,
)
from ._faults import FaultRecorder
from ._models import Cost, Outcome, ParsedResponse, RequestInfo, UsageRecord
from ._pricing import PriceTable
from .sinks import Sink
from .sinks.logs import StructlogSink
from .sinks.otel import OTelMetricsSink, OTelSpanSink
from .sinks.prometheus import PrometheusSink, metrics_for

__all__ = ["Engine", "Exchange"]

_BREAKPOINT_MODES = ("auto", "off")

#: Request headers whose presence means the body is not plain JSON we may rewrite.
_NO_REWRITE_HEADERS = ("content-encoding",)


class Engine:
    """Configuration and shared state of one transport (or of one ``wrap()`` call).

    Args:
        breakpoints: ``"auto"`` inserts ``cache_control`` breakpoints; ``"off"`` only
            observes and sends every request body byte-identical.
        registry: ``prometheus_client.CollectorRegistry`` (default: the global one).
        tracer_provider: OTel tracer provider (default: the global one).
        meter_provider: OTel meter provider; GenAI client metrics are emitted only when given.
        logger: a structlog-style logger (default: ``structlog.get_logger("cachewatch")``, lazily).
        prices: price table for cost and savings (see the money docs).
        providers: extra ``host`` / ``host:port`` -> provider label entries.
        workspaces: API key (or ``sha256:<hex>`` fingerprint) -> workspace label.
        max_models: distinct ``model`` label values per process before ``other``.
        clock: monotonic clock in seconds (default ``time.perf_counter``).
        sinks: extra sinks that receive every record.
    """

    def __init__(
        self,
        *,
        breakpoints: str = "auto",
        registry: Any | None = None,
        tracer_provider: Any | None = None,
        meter_provider: Any | None = None,
        logger: Any | None = None,
        prices: Any | None = None,
        providers: Mapping[str, str] | None = None,
        workspaces: Mapping[str, str] | None = None,
        max_models: int = 50,
        max_workspaces: int = 100,
        max_json_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.perf_counter,
        sinks: list[Sink] | None = None,
        planner: Any | None = None,
        **planner_options: Any,
    ) -> None:
        if breakpoints not in _BREAKPOINT_MODES:
            raise ValueError(f"breakpoints must be one of {_BREAKPOINT_MODES}, not {breakpoints!r}")
        self.breakpoints = breakpoints
        self.metrics = metrics_for(registry)
        self.fault = FaultRecorder(self.metrics.internal_errors)
        self.providers = dict(providers or {})
        self.workspaces = WorkspaceResolver(workspaces)
        self.model_cap = LabelCap(max_models)
        self.workspace_cap = LabelCap(max_workspaces)
        self.max_json_bytes = max_json_bytes
        self.clock = clock
        self.prices = _price_table(prices)
        self.sinks: list[Sink] = [PrometheusSink(self.metrics), OTelSpanSink(tracer_provider)]
        if meter_provider is not None:
            self.sinks.append(OTelMetricsSink(meter_provider))
        self.sinks.append(StructlogSink(logger))
        self.sinks.extend(sinks or ())
        self.planner = planner
        if self.planner is None and breakpoints == "auto":
            self.planner = _default_planner(planner_options, self.fault)

    # -- request side -----------------------------------------------------------------

    def begin(
        self,
        *,
        method: str,
        host: str,
        port: int | None,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> Exchange | None:
        """Start observing a request, or return None to let it pass through untouched."""
        try:
            if method != "POST":
                return None
            api = classify_api(path)
            if api is None:
                return None
            plan = None
            if self.planner is not None and body and not any(h in headers for h in _NO_REWRITE_HEADERS):
                try:
                    plan = self.planner.plan(api=api, host=host, path=path, body=body)
                except Exception as exc:
                    self.fault("plan", exc)
                    plan = None
            request_model = getattr(plan, "model", None) if plan is not None else None
            if request_model is None and body:
                request_model = sniff_model(body)
            provider = provider_for_host(host, port, self.providers)
            key = credential_from_headers(headers) if self.workspaces.has_mapping else None
            workspace = self.workspace_cap(self.workspaces.resolve(host, key))
            info = RequestInfo(
                provider=provider,
                api=api,
                model=self.model_cap(request_model) if request_model else "unknown",
                workspace=workspace,
                request_model=request_model,
                server_address=host,
                server_port=port,
                stream=body is not None and _asks_stream(body),
            )
            return Exchange(self, info, plan)
        except Exception as exc:
            self.fault("begin", exc)
            return None

    def record_breakpoints(self, info: RequestInfo, plan: Any) -> dict[str, object]:
        """Count the plan's decisions and return the span/log attributes describing them."""
        placements = getattr(plan, "placements", ()) or ()
        counts: dict[str, int] = {}
        for p in placements:
            self.metrics.breakpoints.labels(info.provider, p.location, p.action).inc()
            counts[p.action] = counts.get(p.action, 0) + 1
        extra: dict[str, object] = {f"breakpoints.{action}": n for action, n in sorted(counts.items())}
        profile = getattr(plan, "profile", None)
        if profile:
            extra["breakpoints.profile"] = profile
        return extra

    # -- sinks ------------------------------------------------------------------------

    def start_sinks(self, info: RequestInfo) -> list[object | None]:
        states: list[object | None] = []
        for sink in self.sinks:
            try:
                states.append(sink.start(info))
            except Exception as exc:
                self.fault(f"sink_{sink.name}", exc)
                states.append(None)
        return states

    def finish_sinks(self, states: list[object | None], record: UsageRecord) -> None:
        for sink, state in zip(self.sinks, states, strict=False):
            try:
                sink.finish(state, record)
            except Exception as exc:
                self.fault(f"sink_{sink.name}", exc)


def _price_table(prices: Any) -> PriceTable:
    if prices is None:
        return PriceTable()
    if isinstance(prices, PriceTable):
        return prices
    if isinstance(prices, (str, os.PathLike)):
        return PriceTable.from_file(os.fspath(prices))
    if isinstance(prices, Mapping):
        return PriceTable.from_mapping(prices)
    raise TypeError("prices must be a PriceTable, a mapping or the path of a TOML/YAML/JSON price file")


def _asks_stream(body: bytes) -> bool:
    i = body.find(b'"stream"')
    if i == -1:
        return False
    rest = body[i + 8 : i + 24].lstrip()
    return rest.startswith(b":") and rest[1:].lstrip().startswith(b"true")


def _default_planner(options: Mapping[str, Any], fault: FaultRecorder) -> Any | None:
    try:
        from ._planner import Planner
    except ImportError:  # pragma: no cover - planner module always ships
        return None
    try:
        return Planner(**options)
    except TypeError:
        raise
    except Exception as exc:  # pragma: no cover
        fault("config", exc)
        return None


class Exchange:
    """One request/response pair, from the moment it is sent to the end of its body."""

    __slots__ = (
        "_done",
        "_lock",
        "engine",
        "extra",
        "first_chunk_at",
        "info",
        "observer",
        "plan",
        "sink_states",
        "started_at",
        "status_code",
        "stream",
        "token",
    )

    def __init__(self, engine: Engine, info: RequestInfo, plan: Any) -> None:
        self.engine = engine
        self.info = info
        self.plan = plan
        self.extra: dict[str, object] = {}
        self.observer: Any = None
        self.status_code: int | None = None
        self.stream = False
        self.started_at = 0.0
        self.first_chunk_at: float | None = None
        self.sink_states: list[object | None] = []
        self.token: Any = None
        self._done = False
        self._lock = threading.Lock()

    @property
    def new_body(self) -> bytes | None:
        """The planned request body, or None to send the original bytes."""
        return getattr(self.plan, "body", None) if self.plan is not None else None

    def drop_plan(self) -> None:
        """The planned body could not be applied: the original request goes out."""
        self.plan = None

    def sent(self) -> None:
        """The request is about to go to the inner transport."""
        engine = self.engine
        if self.plan is not None:
            try:
                self.extra.update(engine.record_breakpoints(self.info, self.plan))
            except Exception as exc:
                engine.fault("breakpoint_metrics", exc)
        self.sink_states = engine.start_sinks(self.info)
        self.started_at = engine.clock()

    def span(self) -> Any:
        """The OTel span of this exchange (to make it current around the inner call), if any."""
        for sink, state in zip(self.engine.sinks, self.sink_states, strict=False):
            if sink.name == "otel":
                return state
        return None

    def response(self, status_code: int, headers: Mapping[str, str]) -> None:
        """Headers arrived: prepare the body observer."""
        self.status_code = status_code
        try:
            from ._observer import ResponseObserver

            content_type = headers.get("content-type")
            self.stream = content_type is not None and "event-stream" in content_type.lower()
            self.observer = ResponseObserver(
                self.info.api,
                content_type=content_type,
                content_encoding=headers.get("content-encoding"),
                max_json_bytes=self.engine.max_json_bytes,
            )
        except Exception as exc:
            self.engine.fault("observe", exc)
            self.observer = None

    def feed(self, chunk: bytes) -> None:
        """One body chunk, exactly as the caller receives it."""
        if self.first_chunk_at is None:
            self.first_chunk_at = self.engine.clock()
        observer = self.observer
        if observer is not None:
            try:
                observer.feed(chunk)
            except Exception as exc:
                self.engine.fault("observe", exc)
                self.observer = None

    def end(self) -> None:
        """The body was read to its end."""
        self._finish(None, None)

    def close(self) -> None:
        """The body was closed; if it had not ended, the caller abandoned it.

        A caller that stops reading right after the protocol's terminal event (the
        openai SDK stops at ``data: [DONE]``) did not abandon anything: that is ``ok``.
        """
        self._finish(Outcome.ABORTED, None)

    def transport_error(self, exc: BaseException) -> None:
        """The inner transport raised (before or during the body); it is re-raised unchanged."""
        self._finish(Outcome.TRANSPORT_ERROR, type(exc).__name__)

    def _finish(self, outcome: Outcome | None, error_type: str | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        engine = self.engine
        try:
            now = engine.clock()
            parsed: ParsedResponse = ParsedResponse()
            if self.observer is not None:
                try:
                    parsed = self.observer.result()
                except Exception as exc:
                    engine.fault("parse", exc)
            if outcome is None or (outcome is Outcome.ABORTED and parsed.complete):
                outcome = Outcome.from_status(self.status_code or 0)
                if outcome is Outcome.OK and parsed.error_type:
                    # An error event inside a 200 stream (e.g. overloaded_error).
                    outcome = Outcome.SERVER_ERROR
            info = self.info
            if info.request_model is None and parsed.response_model:
                info = replace(info, model=engine.model_cap(parsed.response_model))
            extra = self.extra
            if parsed.unparsed:
                extra["unparsed"] = True
            if parsed.provider_miss_reason:
                extra["provider_miss_reason"] = parsed.provider_miss_reason
            cost: Cost | None = None
            if parsed.usage is not None:
                try:
                    cost = engine.prices.cost(info.request_model or parsed.response_model, parsed.usage)
                except Exception as exc:
                    engine.fault("pricing", exc)
            ttft = None
            if self.stream and self.first_chunk_at is not None:
                ttft = self.first_chunk_at - self.started_at
            record = UsageRecord(
                request=info,
                outcome=outcome,
                status_code=self.status_code,
                stream=self.stream,
                usage=parsed.usage,
                response_model=parsed.response_model,
                response_id=parsed.response_id,
                finish_reasons=parsed.finish_reasons,
                error_type=error_type or parsed.error_type,
                duration=max(0.0, now - self.started_at),
                time_to_first_token=ttft,
                cost=cost,
                extra=extra,
            )
            if self.plan is not None and engine.planner is not None and parsed.usage is not None:
                try:
                    engine.planner.observe(self.plan, parsed.usage)
                except Exception as exc:
                    engine.fault("planner_feedback", exc)
        except Exception as exc:
            engine.fault("record", exc)
            return
        engine.finish_sinks(self.sink_states, record)
