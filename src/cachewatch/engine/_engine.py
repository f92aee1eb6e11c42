"""The sans-IO core shared by every transport shell: one :class:`Engine` per transport.

Data flow: request -> planner -> transport -> stream observer -> usage record -> sinks.

The engine holds the configuration and the stages (the planner, the miss diagnosis, the
shadow estimate, the traffic-shape recording, the sinks). :meth:`Engine.begin` classifies
a request (API, provider, workspace, model), asks the planner for a body, registers the
request with the diagnosis (and the shadow and the recorder, when on) and returns the
:class:`~cachewatch.engine._exchange.Exchange` that follows it to the end of its body.
Construction and ``begin`` are fail-open: a fault is counted and the request passes
through untouched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import xxhash
from prometheus_client import CollectorRegistry

from ..accounting._pricing import PriceTable
from ..accounting._records import RequestInfo, UsageRecord
from ..diagnosis._stage import DiagnosisStage
from ..diagnosis._store import FingerprintStore
from ..observing._observer import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_EVENT_BYTES
from ..planning._plan import Plan, PlannerProtocol
from ..planning._planner import Planner
from ..simulation._stage import RecordingStage, ShadowStage
from ..sinks import Sink
from ..sinks.logs import LogSink
from ..sinks.otel import OTelMetricsSink, OTelSpanSink
from ..sinks.prometheus import PrometheusSink, metrics_for
from ._endpoints import (
    LabelCap,
    WorkspaceResolver,
    classify_api,
    credential_from_headers,
    provider_for_host,
    sniff_model,
)
from ._exchange import Exchange, release_plan
from ._faults import FaultRecorder

__all__ = ["Engine", "Exchange"]

_log = logging.getLogger("cachewatch")

_BREAKPOINT_MODES = ("auto", "off", "shadow")

#: ``start`` methods of the bundled sinks that return None and do nothing else.
_STATELESS_STARTS = (PrometheusSink.start, LogSink.start, OTelMetricsSink.start)

#: The request header whose presence means the body is not plain JSON we may rewrite.
_NO_REWRITE_HEADER = "content-encoding"


class Engine:
    """Configuration and shared state of one transport (or of one ``wrap()`` call).

    Args:
        breakpoints: ``"auto"`` inserts ``cache_control`` breakpoints; ``"off"`` only
            observes and sends every request body byte-identical; ``"shadow"`` sends every
            body byte-identical too, and estimates what ``"auto"`` would have been billed
            (``cachewatch_shadow_*`` metrics, ``record.shadow``; see ``simulation/_shadow``).
        registry: ``prometheus_client.CollectorRegistry`` (default: the global one).
        tracer_provider: OTel tracer provider (default: the global one).
        meter_provider: OTel meter provider; GenAI client metrics are emitted only when given.
        otel_token_counters: with a ``meter_provider``, also add the draft GenAI token counters
            (``gen_ai.client.inference.usage.*``; see ``sinks.otel``).
        logger: where the per-request event goes (default: the stdlib logger ``cachewatch``, or structlog once the application configured it; see ``sinks.logs``).
        prices: price table for cost and savings (see the money docs).
        providers: extra ``host`` / ``host:port`` -> provider label entries.
        workspaces: API key (or ``sha256:<hex>`` fingerprint) -> workspace label.
        max_models: distinct ``model`` label values before ``other``, per Prometheus registry
            (shared by every engine that exports to it: the global one, per process).
        max_json_bytes / max_event_bytes / max_decoded_bytes: observation caps (a JSON
            body; one SSE line or event; the content-decoded bytes of one body). Past a
            cap the response is no longer observed (its bytes still pass unchanged): counted
            in ``cachewatch_observation_truncated_total{reason}`` and logged once per reason.
        clock: monotonic clock in seconds (default ``time.perf_counter``).
        sinks: extra sinks that receive every record.
        planner: the breakpoint planner (any :class:`~cachewatch.planning._plan.PlannerProtocol`;
            default with ``breakpoints="auto"``: a :class:`~cachewatch.planning._planner.Planner`
            built from ``planner_options``). With ``breakpoints="shadow"`` a
            :class:`~cachewatch.planning._planner.Planner` given is the shadow's own (it plans
            what auto would do; the real requests are never planned).
        diagnosis: diagnose cache misses and count wasted writes (``diagnosis/``; default True).
        store: the :class:`~cachewatch.FingerprintStore` of the diagnosis (default:
            in memory; ``cachewatch.diagnosis._store_redis.RedisStore`` shares it across processes,
            and with it the planner's learned state unless ``learner`` is given).
        wall_clock: wall clock in seconds for cache TTLs (default ``time.time``; shared by
            every process of a shared store).
        cache_diagnostics: opt in to Anthropic's cache-diagnostics beta on the Anthropic
            first-party profile: threads ``diagnostics.previous_message_id`` per conversation
            and adds the ``anthropic-beta`` header; the provider's reason becomes ``provider_reported``.
        record: append the traffic shape of every request (structure, block digests and token
            counts, timings; no text, no key) to this file (a path, an open text stream or a
            :class:`~cachewatch.simulation._shape.ShapeRecorder`), for ``cachewatch replay``.
            The shape is the request as the caller made it, before any planned marker.
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
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        clock: Callable[[], float] = time.perf_counter,
        sinks: list[Sink] | None = None,
        planner: PlannerProtocol | None = None,
        diagnosis: bool = True,
        store: FingerprintStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        cache_diagnostics: bool = False,
        otel_token_counters: bool = False,
        record: Any | None = None,
        **planner_options: Any,
    ) -> None:
        if breakpoints not in _BREAKPOINT_MODES:
            raise ValueError(f"breakpoints must be one of {_BREAKPOINT_MODES}, not {breakpoints!r}")
        _check_option_names(planner_options)
        self.breakpoints = breakpoints
        #: The options of the ``wrap()`` that built this engine (a second ``wrap()`` of the
        #: same client with other options is refused: ``transport._wrap``).
        self.wrap_options: dict[str, Any] | None = None
        # Construction never breaks the application's start-up: a broken collaborator
        # (a registry that refuses the collectors, a tracer or meter provider that
        # raises) is counted under stage "config", logged once, and done without.
        registry_fault: Exception | None = None
        try:
            self.metrics = metrics_for(registry)
        except Exception as exc:
            registry_fault = exc  # counted below, on a private registry nobody scrapes
            self.metrics = metrics_for(CollectorRegistry())
        self.fault = FaultRecorder(self.metrics.internal_errors)
        if registry_fault is not None:
            self.fault("config", registry_fault)
        self.providers = dict(providers or {})
        #: (host, port) -> (provider label, workspace label when no key mapping applies).
        self._hosts: dict[tuple[str, int | None], tuple[str, str]] = {}
        #: Label inputs -> the RequestInfo they give. A frozen value, so one instance is
        #: shared by every request with the same labels (capped like every label cache).
        self._infos: dict[tuple[str, int | None, str, str | None, str, bool], RequestInfo] = {}
        self.workspaces = WorkspaceResolver(workspaces)
        # Shared by every engine exporting to the same registry (SPEC 5: per process).
        caps = self.metrics.label_caps
        self.model_cap: LabelCap = caps.setdefault(("model", max_models), LabelCap(max_models))
        self.workspace_cap: LabelCap = caps.setdefault(
            ("workspace", max_workspaces), LabelCap(max_workspaces)
        )
        self.max_json_bytes = max_json_bytes
        self.max_event_bytes = max_event_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self._truncations_logged: set[str] = set()
        self.clock = clock
        self.prices = _price_table(prices)
        self.sinks: list[Sink] = [PrometheusSink(self.metrics)]
        try:
            self.sinks.append(OTelSpanSink(tracer_provider))
        except Exception as exc:
            self.fault("config", exc)  # no spans
        if meter_provider is not None:
            try:
                self.sinks.append(
                    OTelMetricsSink(
                        meter_provider, token_counters=otel_token_counters, model_cap=self.model_cap
                    )
                )
            except Exception as exc:
                self.fault("config", exc)  # no OTel metrics
        self.sinks.append(LogSink(logger))
        self.sinks.extend(sinks or ())
        #: Index of the OTel span sink, whose per-request state is the span (see ``Exchange.span``).
        self.span_sink: int | None = next(
            (i for i, sink in enumerate(self.sinks) if isinstance(sink, OTelSpanSink)), None
        )
        #: The sinks whose ``start`` does something, with their index (the bundled
        #: Prometheus, log and OTel metrics sinks only act at ``finish``: their state is None).
        self._starting = tuple(
            (i, sink) for i, sink in enumerate(self.sinks) if type(sink).start not in _STATELESS_STARTS
        )
        _warn_unused_planner_options(breakpoints, planner_options)
        # Shadow mode never plans the real request: a planner given is the shadow's own.
        self.planner: PlannerProtocol | None = planner if breakpoints != "shadow" else None
        if self.planner is None and breakpoints == "auto":
            self.planner = _default_planner({"clock": wall_clock, **planner_options}, self.fault, store)
        self.wall_clock = wall_clock
        self.shadow: ShadowStage | None = None
        if breakpoints == "shadow":
            # Its own planner, learning from what auto would have got; a bad planner option
            # is the caller's error (as with auto), anything else is counted and done without.
            try:
                self.shadow = ShadowStage(
                    fault=self.fault,
                    prices=self.prices,
                    wall_clock=wall_clock,
                    planner=planner if isinstance(planner, Planner) else None,
                    planner_options=dict(planner_options),
                )
            except (TypeError, ValueError):
                raise  # the caller's planner option
            except Exception as exc:
                self.fault("config", exc)  # no shadow estimate
        shared = self.planner if isinstance(self.planner, Planner) else None
        if shared is None and self.shadow is not None:
            shared = self.shadow.shadow.planner  # the same profiles and calibrated estimator
        self.recording: RecordingStage | None = None
        if record is not None:
            # A file that cannot be opened is the caller's error, reported at once.
            self.recording = RecordingStage(
                record,
                fault=self.fault,
                wall_clock=wall_clock,
                registry=shared.registry if shared is not None else None,
            )
        self.diagnosis: DiagnosisStage | None = None
        if diagnosis:
            try:
                self.diagnosis = DiagnosisStage(
                    store,
                    on_wasted=self.metrics.count_wasted_write_tokens,
                    fault=self.fault,
                    profiles=shared.registry if shared is not None else None,
                    estimator=shared.estimator if shared is not None else None,
                    wall_clock=wall_clock,
                    cache_diagnostics=cache_diagnostics,
                )
            except Exception as exc:
                self.fault("config", exc)  # no miss diagnosis
            else:
                self.metrics.before_collect.add(self.diagnosis)

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
        plan: Plan | None = None
        try:
            if method != "POST":
                return None
            api = classify_api(path)
            if api is None:
                return None
            credential = credential_from_headers(headers)
            if self.planner is not None and body and _NO_REWRITE_HEADER not in headers:
                try:
                    plan = self.planner.plan(
                        api=api, host=host, path=path, body=body, scope=_credential_scope(credential)
                    )
                except Exception as exc:
                    self.fault("plan", exc)
                    plan = None
                else:
                    if plan.fault is not None:
                        # The planner contains its own faults (and sends the body unchanged).
                        self.fault("plan", plan.fault)
            request_model = plan.model if plan is not None else None
            if request_model is None and body:
                request_model = sniff_model(body)
            if plan is not None and plan.stream is not None:
                stream = plan.stream  # the planner parsed the body: its top-level key
            else:
                stream = body is not None and _asks_stream(body)
            if not stream and api == "dashscope_generation":
                # The dashscope SDK asks for a stream with this header alone, never in the body.
                stream = (headers.get("x-dashscope-sse") or "").strip().lower() == "enable"
            info = self._request_info(host, port, api, request_model, stream, credential)
            exchange = Exchange(self, info, plan)
            if body and (self.shadow is not None or self.recording is not None):
                self._begin_stages(exchange, host, path, headers, body, credential)
            if body and self.prices.prices_implicit_apart(request_model):
                # DashScope: explicit and implicit cache are exclusive per request and priced
                # apart; a response that does not name its cache_type is priced by the markers.
                exchange.marked = _carries_markers(plan, body)
            if self.diagnosis is not None and body:
                diag = exchange.diag = self.diagnosis.begin(info, plan, host, path, headers, body)
                if diag is not None and diag.body is not None:
                    # Anthropic's cache-diagnostics beta: the body and header that opt in.
                    exchange.body_override = diag.body
                    exchange.header_update = diag.headers
            return exchange
        except Exception as exc:
            self.fault("begin", exc)
            release_plan(self, plan)  # the original request goes out
            return None

    def _begin_stages(
        self,
        exchange: Exchange,
        host: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        credential: str | None,
    ) -> None:
        """Register the request with the shadow estimate and the recorder (each fail-open)."""
        scope = _credential_scope(credential)
        api = exchange.info.api
        rewritable = _NO_REWRITE_HEADER not in headers
        if self.shadow is not None:
            exchange.shadowed = True
            if rewritable:  # auto would leave an encoded body alone: its real usage stands
                exchange.shadow = self.shadow.begin(api=api, host=host, path=path, body=body, scope=scope)
        if self.recording is not None and rewritable:
            exchange.shape = self.recording.begin(exchange.info, host=host, path=path, body=body, scope=scope)

    def _request_info(
        self,
        host: str,
        port: int | None,
        api: str,
        request_model: str | None,
        stream: bool,
        credential: str | None,
    ) -> RequestInfo:
        """The labels of a request; cached, since a few label tuples carry all the traffic.

        Caching is exact: every label cap only ever admits more values, so a value's
        label never changes once given.
        """
        labels = self._hosts.get((host, port))
        if labels is None:
            labels = (
                provider_for_host(host, port, self.providers),
                self.workspace_cap(self.workspaces.resolve(host, None)),
            )
            if len(self._hosts) < 4096:
                self._hosts[(host, port)] = labels
        provider, workspace = labels
        if self.workspaces.has_mapping and credential:
            workspace = self.workspace_cap(self.workspaces.resolve(host, credential))
        cache_key = (host, port, api, request_model, workspace, stream)
        info = self._infos.get(cache_key)
        if info is None:
            info = RequestInfo(
                provider=provider,
                api=api,
                model=self.model_cap(request_model) if request_model else "unknown",
                workspace=workspace,
                request_model=request_model,
                server_address=host,
                server_port=port,
                stream=stream,
            )
            if len(self._infos) < 4096:
                self._infos[cache_key] = info
        return info

    def observation_truncated(self, reason: str) -> None:
        """A response was no longer observed past a cap: count it, and log each reason once."""
        try:
            self.metrics.child(self.metrics.observation_truncated, (reason,)).inc()
            if reason not in self._truncations_logged:
                self._truncations_logged.add(reason)
                _log.warning(
                    "cachewatch stopped observing a response at its %s cap; every byte was relayed "
                    "unchanged, and its usage may be incomplete (counted in "
                    "cachewatch_observation_truncated_total).",
                    reason,
                )
        except Exception as exc:
            self.fault("observe", exc)

    # -- sinks ------------------------------------------------------------------------

    def start_sinks(self, info: RequestInfo) -> list[object | None]:
        states: list[object | None] = [None] * len(self.sinks)
        for i, sink in self._starting:
            try:
                states[i] = sink.start(info)
            except Exception as exc:
                self.fault(f"sink_{sink.name}", exc)
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


def _credential_scope(key: str | None) -> str:
    """A digest of the request's API key: caches (and what is learnt of them) are per key.

    The planner never sees the key itself; the digest is not reversible and never leaves
    the process (it is not a label).
    """
    if not key:
        return ""
    return xxhash.xxh3_64_hexdigest(key.encode("utf-8", "surrogatepass"))


#: (mode, option names) already warned about: once per process, not per ``wrap()``.
_WARNED_OPTIONS: set[tuple[str, tuple[str, ...]]] = set()


def _check_option_names(planner_options: Mapping[str, Any]) -> None:
    """A misspelt option is the caller's error, named as theirs (not ``Planner.__init__``'s)."""
    import inspect

    planner = set(inspect.signature(Planner.__init__).parameters) - {"self", "registry", "estimator"}
    unknown = sorted(set(planner_options) - planner)
    if unknown:
        engine = set(inspect.signature(Engine.__init__).parameters) - {"self", "planner_options"}
        raise TypeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
            f"cachewatch.wrap() and the transports; the options are: {', '.join(sorted(engine | planner))}"
        )


def _warn_unused_planner_options(breakpoints: str, options: Mapping[str, Any]) -> None:
    """Planner options that change nothing in this mode are said once, not ignored silently.

    With ``"off"`` no request is planned; with ``"shadow"`` the real requests are not
    either (the options shape the shadow's estimate), so ``include_usage`` adds nothing to
    them. Bodies go out byte-identical in both.
    """
    if breakpoints == "off":
        unused = tuple(sorted(options))
    elif breakpoints == "shadow" and options.get("include_usage"):
        unused = ("include_usage",)
    else:
        return
    if not unused or (breakpoints, unused) in _WARNED_OPTIONS:
        return
    _WARNED_OPTIONS.add((breakpoints, unused))
    _log.warning(
        "cachewatch: %s has no effect with breakpoints=%r (request bodies go out byte-identical); "
        "use breakpoints='auto' for it",
        ", ".join(unused),
        breakpoints,
    )


def _carries_markers(plan: Plan | None, body: bytes) -> bool:
    """Whether the request goes out with ``cache_control`` markers (the caller's or the planner's)."""
    if plan is not None and plan.error is None:
        return any(p.action in ("kept", "inserted") for p in plan.placements)
    return _has_key(body, b'"cache_control"')


def _has_key(body: bytes, quoted: bytes, limit: int = 64) -> bool:
    """Whether the JSON ``body`` has the object key ``quoted`` (with its quotes) anywhere.

    Without parsing: an occurrence counts when its opening quote is not escaped (an even
    run of backslashes before it) and a colon follows, so prompt text that merely names
    the key (``\"cache_control\": ...`` inside a string) does not. At most ``limit``
    occurrences are looked at (bounded time on any body).
    """
    i = body.find(quoted)
    for _ in range(limit):
        if i == -1:
            return False
        slashes = 0
        while i - slashes > 0 and body[i - slashes - 1] == 0x5C:  # backslash
            slashes += 1
        end = i + len(quoted)
        if slashes % 2 == 0 and body[end : end + 16].lstrip().startswith(b":"):
            return True
        i = body.find(quoted, end)
    return False


def _asks_stream(body: bytes) -> bool:
    """Whether the request's top-level ``stream`` is true, without parsing the body when
    ``"stream"`` appears once; a second one (a tool input with a ``stream`` field in the
    history) is settled by a real parse, as ``sniff_model`` settles ``model``."""
    i = body.find(b'"stream"')
    if i == -1:
        return False
    if body.find(b'"stream"', i + 8) == -1:
        rest = body[i + 8 : i + 24].lstrip()
        return rest.startswith(b":") and rest[1:].lstrip().startswith(b"true")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and obj.get("stream") is True


def _default_planner(
    options: Mapping[str, Any], fault: FaultRecorder, store: FingerprintStore | None = None
) -> Planner | None:
    make_learner = getattr(store, "learner", None)
    if make_learner is not None and "learner" not in options:
        # A shared store (RedisStore) also shares what the planner learns; its faults are counted.
        try:
            options = {**options, "learner": make_learner(fault=fault)}
        except Exception as exc:
            fault("config", exc)  # the planner learns in memory
    try:
        return Planner(**options)
    except (TypeError, ValueError):
        raise  # the caller's option, named in the error
    except Exception as exc:  # pragma: no cover
        fault("config", exc)
        return None
