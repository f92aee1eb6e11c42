"""The sans-IO core shared by every transport shell: one Engine per transport, one Exchange per request.

Data flow: request -> planner -> transport -> stream observer -> usage record -> sinks.

The shells (``_transport.py``, ``_streams.py``) only move bytes; they call into an
:class:`Exchange` at each step (request built, headers received, chunk seen, body
ended or closed, transport failed). Every Exchange method is fail-open: a fault is
counted and logged by the :class:`~cachewatch.engine._faults.FaultRecorder` and the exchange
degrades to "observe less", never to "change the traffic".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import xxhash
from prometheus_client import CollectorRegistry

from ..accounting._pricing import PriceTable
from ..accounting._records import Cost, Outcome, ParsedResponse, RequestInfo, UsageRecord, new_usage_record
from ..diagnosis import Diagnoser, Fingerprints, conversation_key, fingerprints_of
from ..observing._observer import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_EVENT_BYTES, ResponseObserver
from ..planning._hygiene import UsageChunkFilter
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
from ._faults import FaultRecorder

__all__ = ["Engine", "Exchange"]

_log = logging.getLogger("cachewatch")

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
        otel_token_counters: with a ``meter_provider``, also add the draft GenAI token counters
            (``gen_ai.client.inference.usage.*``; see ``sinks.otel``).
        logger: where the per-request event goes (default: the stdlib logger ``cachewatch``, or structlog once the application configured it; see ``sinks.logs``).
        prices: price table for cost and savings (see the money docs).
        providers: extra ``host`` / ``host:port`` -> provider label entries.
        workspaces: API key (or ``sha256:<hex>`` fingerprint) -> workspace label.
        max_models: distinct ``model`` label values per process before ``other``.
        max_json_bytes / max_event_bytes / max_decoded_bytes: observation caps (a JSON
            body; one SSE line or event; the content-decoded bytes of one body). Past a
            cap the response is no longer observed (its bytes still pass unchanged): counted
            in ``cachewatch_observation_truncated_total{reason}`` and logged once per reason.
        clock: monotonic clock in seconds (default ``time.perf_counter``).
        sinks: extra sinks that receive every record.
        diagnosis: diagnose cache misses and count wasted writes (``_diagnosis``; default True).
        store: the :class:`~cachewatch.FingerprintStore` of the diagnosis (default:
            in memory; ``cachewatch.diagnosis._store_redis.RedisStore`` shares it across processes,
            and with it the planner's learned state unless ``learner`` is given).
        wall_clock: wall clock in seconds for cache TTLs (default ``time.time``; shared by
            every process of a shared store).
        cache_diagnostics: opt in to Anthropic's cache-diagnostics beta on the Anthropic
            first-party profile: threads ``diagnostics.previous_message_id`` per conversation
            and adds the ``anthropic-beta`` header; the provider's reason becomes ``provider_reported``.
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
        planner: Any | None = None,
        diagnosis: bool = True,
        store: Any | None = None,
        wall_clock: Callable[[], float] = time.time,
        cache_diagnostics: bool = False,
        otel_token_counters: bool = False,
        **planner_options: Any,
    ) -> None:
        if breakpoints not in _BREAKPOINT_MODES:
            raise ValueError(f"breakpoints must be one of {_BREAKPOINT_MODES}, not {breakpoints!r}")
        self.breakpoints = breakpoints
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
        self.model_cap = LabelCap(max_models)
        self.workspace_cap = LabelCap(max_workspaces)
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
                self.sinks.append(OTelMetricsSink(meter_provider, token_counters=otel_token_counters))
            except Exception as exc:
                self.fault("config", exc)  # no OTel metrics
        self.sinks.append(LogSink(logger))
        self.sinks.extend(sinks or ())
        self.planner = planner
        if self.planner is None and breakpoints == "auto":
            self.planner = _default_planner({"clock": wall_clock, **planner_options}, self.fault, store)
        # -- cache-miss diagnosis (begin) --
        self.wall_clock = wall_clock
        self.cache_diagnostics = cache_diagnostics
        self.diagnoser: Diagnoser | None = None
        if diagnosis:
            try:
                self.diagnoser = Diagnoser(
                    store,
                    on_wasted=self.metrics.count_wasted_write_tokens,
                    estimator=getattr(self.planner, "estimator", None),
                )
            except Exception as exc:
                self.fault("config", exc)  # no miss diagnosis
        # -- cache-miss diagnosis (end) --

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
        plan = None
        try:
            if method != "POST":
                return None
            api = classify_api(path)
            if api is None:
                return None
            plan = None
            if self.planner is not None and body and not any(h in headers for h in _NO_REWRITE_HEADERS):
                try:
                    plan = self.planner.plan(
                        api=api, host=host, path=path, body=body, scope=_credential_scope(headers)
                    )
                except Exception as exc:
                    self.fault("plan", exc)
                    plan = None
                else:
                    error = getattr(plan, "error", None)
                    if isinstance(error, str) and error.startswith("internal_error"):
                        # The planner contains its own faults (and sends the body unchanged).
                        self.fault("plan", error.partition(":")[2] or "Exception")
            request_model = getattr(plan, "model", None) if plan is not None else None
            if request_model is None and body:
                request_model = sniff_model(body)
            info = self._request_info(
                host, port, api, request_model, body is not None and _asks_stream(body), headers
            )
            exchange = Exchange(self, info, plan)
            if body and self.prices.prices_implicit_apart(request_model):
                # DashScope: explicit and implicit cache are exclusive per request and priced
                # apart; a response that does not name its cache_type is priced by the markers.
                exchange.marked = _carries_markers(plan, body)
            if (
                self.diagnoser is not None
                and body
                and (
                    self.cache_diagnostics
                    or (plan is not None and exchange.new_body is not None)
                    or body.find(b"cache_control") != -1
                )
            ):
                # cache-miss diagnosis: only requests that carry markers can read (or write) an
                # explicit cache entry, so requests without any are not tracked at all.
                self._diagnosis_begin(exchange, host, path, headers, body)
            return exchange
        except Exception as exc:
            self.fault("begin", exc)
            self.planner_feedback(plan, "finished")  # the original request goes out
            return None

    def planner_feedback(self, plan: Any, event: str, *args: object) -> None:
        """Tell the planner a planned request's response ``started`` or ``finished``.

        Only plans holding in-flight claims (a ``ticket``) need it; planners without the
        hooks are skipped; a fault is counted, never raised.
        """
        if getattr(plan, "ticket", None) is None:
            return
        hook = getattr(self.planner, event, None)
        if hook is None:
            return
        try:
            hook(plan, *args)
        except Exception as exc:
            self.fault("planner_feedback", exc)

    def _request_info(
        self,
        host: str,
        port: int | None,
        api: str,
        request_model: str | None,
        stream: bool,
        headers: Mapping[str, str],
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
        if self.workspaces.has_mapping:
            key = credential_from_headers(headers)
            if key:
                workspace = self.workspace_cap(self.workspaces.resolve(host, key))
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

    # -- cache-miss diagnosis (begin) ---------------------------------------------------

    def _diagnosis_begin(
        self, exchange: Exchange, host: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Register the request with the diagnoser (cheap: nothing is parsed unless opted in)."""
        diagnoser = self.diagnoser
        if diagnoser is None:
            return
        try:
            info = exchange.info
            plan = exchange.plan
            registry = getattr(self.planner, "registry", None) or _shared_profiles()
            profile = registry.match(host, path)
            has_markers: bool | None = None
            if plan is not None and getattr(plan, "error", "x") is None:
                has_markers = any(p.action in ("kept", "inserted") for p in plan.placements)
            out_body = getattr(plan, "body", None) if plan is not None else None
            outgoing: Any = out_body if out_body is not None else body
            model = info.request_model
            if self.cache_diagnostics and info.api == "messages" and profile.name == "anthropic":
                outgoing = self._cache_diagnostics(exchange, headers, outgoing, diagnoser)
            layout = getattr(plan, "layout", None) if plan is not None else None
            source = None
            if layout is not None and has_markers:
                # The planner's layout is the request as sent: nothing is parsed or hashed again.
                source = _fingerprint_source(plan, layout, model)
            exchange.diag = diagnoser.before(
                info.api,
                outgoing,
                model,
                self.wall_clock(),
                labels=(info.provider, info.model, info.workspace),
                min_tokens=lambda: profile.min_tokens_for(model),
                has_markers=has_markers,
                max_ttl=3_600.0 if "1h" in profile.ttls else 300.0,
                fingerprints=source,
            )
        except Exception as exc:
            self.fault("diagnosis", exc)
            exchange.diag = None

    def _cache_diagnostics(
        self, exchange: Exchange, headers: Mapping[str, str], body: bytes, diagnoser: Diagnoser
    ) -> Any:
        """Anthropic cache-diagnostics beta: thread ``previous_message_id``; returns the parsed body."""
        import orjson

        obj = orjson.loads(body)
        if not isinstance(obj, dict) or "diagnostics" in obj:
            return body
        conversation = conversation_key("messages", obj)
        if conversation is None:
            return body
        exchange.conversation = conversation
        # The first turn opts in with ``null``: the API stores nothing for a request without
        # the object, so the next turn's comparison would find no previous message.
        previous = diagnoser.previous_message(conversation)
        new_body = _with_diagnostics(body, previous)
        if new_body is None:
            return obj
        beta = headers.get("anthropic-beta") or ""
        if CACHE_DIAGNOSIS_BETA not in beta:
            beta = f"{beta},{CACHE_DIAGNOSIS_BETA}" if beta.strip() else CACHE_DIAGNOSIS_BETA
        exchange.body_override = new_body
        exchange.header_update = {"anthropic-beta": beta}
        return obj

    # -- cache-miss diagnosis (end) -----------------------------------------------------

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


# -- cache-miss diagnosis (begin) -------------------------------------------------------

#: The Anthropic cache-diagnostics beta header (platform.claude.com cache-diagnostics page;
#: later revisions make it optional, and still accept it).
CACHE_DIAGNOSIS_BETA = "cache-diagnosis-2026-04-07"

_PROFILES: Any = None


def _shared_profiles() -> Any:
    global _PROFILES
    if _PROFILES is None:
        from ..planning._profiles import ProfileRegistry

        _PROFILES = ProfileRegistry()
    return _PROFILES


def _fingerprint_source(plan: Any, layout: Any, model: str | None) -> Callable[[], Fingerprints]:
    """Computes the fingerprints of a planned request from its layout, when asked."""
    inserted = [
        (p.position, p.ttl or "5m") for p in plan.placements if p.action == "inserted" and p.position >= 0
    ]
    top = next(
        (p.ttl for p in plan.placements if p.location == "top_level" and p.action in ("inserted", "kept")),
        None,
    )
    return lambda: fingerprints_of(layout, model or "", inserted, top)


def _with_diagnostics(body: bytes, message_id: str | None) -> bytes | None:
    """``body`` with ``"diagnostics":{"previous_message_id":...}`` as its first key (bytes-level)."""
    import orjson

    stripped = body.lstrip()
    if not stripped.startswith(b"{") or stripped[1:].lstrip().startswith(b"}"):
        return None
    field = orjson.dumps({"previous_message_id": message_id})
    return b'{"diagnostics":' + field + b"," + stripped[1:]


# -- cache-miss diagnosis (end) ---------------------------------------------------------


#: What an exchange without a body observer learned from the body: nothing.
_NOTHING_PARSED = ParsedResponse()


def _credential_scope(headers: Mapping[str, str]) -> str:
    """A digest of the request's API key: caches (and what is learnt of them) are per key.

    The planner never sees the key itself; the digest is not reversible and never leaves
    the process (it is not a label).
    """
    key = credential_from_headers(headers)
    if not key:
        return ""
    return xxhash.xxh3_64_hexdigest(key.encode("utf-8", "surrogatepass"))


def _carries_markers(plan: Any, body: bytes) -> bool:
    """Whether the request goes out with ``cache_control`` markers (the caller's or the planner's)."""
    if plan is not None and getattr(plan, "error", "x") is None:
        return any(p.action in ("kept", "inserted") for p in plan.placements)
    return body.find(b"cache_control") != -1


def _asks_stream(body: bytes) -> bool:
    i = body.find(b'"stream"')
    if i == -1:
        return False
    rest = body[i + 8 : i + 24].lstrip()
    return rest.startswith(b":") and rest[1:].lstrip().startswith(b"true")


def _default_planner(options: Mapping[str, Any], fault: FaultRecorder, store: Any = None) -> Any | None:
    try:
        from ..planning._planner import Planner
    except ImportError:  # pragma: no cover - planner module always ships
        return None
    make_learner = getattr(store, "learner", None)
    if make_learner is not None and "learner" not in options:
        # A shared store (RedisStore) also shares what the planner learns; its faults are counted.
        try:
            options = {**options, "learner": make_learner(fault=fault)}
        except Exception as exc:
            fault("config", exc)  # the planner learns in memory
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
        "body_override",
        "conversation",
        "diag",
        "engine",
        "extra",
        "filter",
        "first_chunk_at",
        "header_update",
        "info",
        "marked",
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
        #: Hides the usage-only chunk when cachewatch added ``include_usage`` itself.
        self.filter: UsageChunkFilter | None = None
        self.status_code: int | None = None
        self.stream = False
        self.started_at = 0.0
        self.first_chunk_at: float | None = None
        self.sink_states: list[object | None] = []
        self.token: Any = None
        self._done = False
        self._lock = threading.Lock()
        # cache-miss diagnosis: its per-request state, and the cache-diagnostics request changes
        self.diag: Any = None
        self.conversation: bytes | None = None
        self.body_override: bytes | None = None
        self.header_update: dict[str, str] | None = None
        #: Whether the request carried cache markers; None: not needed (one price for every mode).
        self.marked: bool | None = None

    @property
    def done(self) -> bool:
        """The exchange was finished (its record went to the sinks, or was given up)."""
        return self._done

    @property
    def new_body(self) -> bytes | None:
        """The planned request body, or None to send the original bytes."""
        if self.body_override is not None:
            return self.body_override
        return getattr(self.plan, "body", None) if self.plan is not None else None

    @property
    def new_headers(self) -> dict[str, str] | None:
        """Headers to set on the rebuilt request (only together with :attr:`new_body`), or None."""
        return self.header_update

    def drop_plan(self) -> None:
        """The planned body could not be applied: the original request goes out."""
        self._planner_feedback("finished")
        self.plan = None
        self.body_override = None
        self.header_update = None

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
        """Headers arrived: prepare the body observer.

        ``headers`` needs only ``content-type`` and ``content-encoding`` (lower-case keys).
        """
        self.status_code = status_code
        if self.plan is not None:
            self._planner_feedback("started", status_code)
        if self.diag is not None:  # cache-miss diagnosis: this request's writes are readable now
            try:
                self.engine.diagnoser.started(self.diag, self.engine.wall_clock())  # type: ignore[union-attr]
            except Exception as exc:
                self.engine.fault("diagnosis", exc)
        try:
            content_type = headers.get("content-type")
            self.stream = content_type is not None and "event-stream" in content_type.lower()
            if self.stream and getattr(self.plan, "added_include_usage", False):
                self.filter = UsageChunkFilter(headers.get("content-encoding"))
            self.observer = ResponseObserver(
                self.info.api,
                content_type=content_type,
                content_encoding=headers.get("content-encoding"),
                max_json_bytes=self.engine.max_json_bytes,
                max_event_bytes=self.engine.max_event_bytes,
                max_decoded_bytes=self.engine.max_decoded_bytes,
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

    def _planner_feedback(self, event: str, *args: object) -> None:
        """:meth:`Engine.planner_feedback` for this exchange's plan."""
        self.engine.planner_feedback(self.plan, event, *args)

    def _finish(self, outcome: Outcome | None, error_type: str | None) -> None:
        if self._done:  # the usual second call (the body ended, then it was closed)
            return
        with self._lock:
            if self._done:
                return
            self._done = True
        engine = self.engine
        try:
            now = engine.clock()
            parsed = _NOTHING_PARSED
            observer = self.observer
            if observer is not None:
                try:
                    parsed = observer.result()
                except Exception as exc:
                    engine.fault("parse", exc)
                if observer.truncated is not None:
                    engine.observation_truncated(observer.truncated)
                    self.extra["observation_truncated"] = observer.truncated
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
            if parsed.usage is None and outcome is Outcome.OK:
                # Not a zero: the provider did not say (an OpenAI-compatible stream without
                # stream_options.include_usage...). Counted in cachewatch_usage_unreported_total.
                extra["usage_reported"] = False
            if parsed.provider_miss_reason:
                extra["provider_miss_reason"] = parsed.provider_miss_reason
                if parsed.provider_missed_tokens is not None:
                    extra["provider_missed_input_tokens"] = parsed.provider_missed_tokens
            if self.diag is not None:  # cache-miss diagnosis
                self._diagnose(parsed, outcome)
            cost: Cost | None = None
            usage = parsed.usage
            if usage is not None:
                cache_type = parsed.cache_type
                implicit = cache_type == "implicit" or (cache_type is None and self.marked is False)
                if self.marked is not None and (usage.cache_read or usage.cache_write):
                    extra["cache_mode"] = "implicit" if implicit else "explicit"
                try:
                    cost = engine.prices.cost(
                        info.request_model or parsed.response_model, usage, implicit=implicit
                    )
                except Exception as exc:
                    engine.fault("pricing", exc)
            ttft = None
            if self.stream and self.first_chunk_at is not None:
                ttft = self.first_chunk_at - self.started_at
            record = new_usage_record(
                info,  # request
                outcome,
                self.status_code,
                self.stream,
                parsed.usage,
                parsed.response_model,
                parsed.response_id,
                parsed.finish_reasons,
                error_type or parsed.error_type,
                max(0.0, now - self.started_at),  # duration
                ttft,  # time_to_first_token
                cost,
                extra,
            )
            if self.plan is not None:
                self._planner_feedback("finished", parsed.usage)
                # Usage calibrates the estimator; the request's shape teaches the policy
                # even where the endpoint reports no usage (a 2xx without it).
                if engine.planner is not None and (
                    parsed.usage is not None or 200 <= (self.status_code or 0) < 300
                ):
                    try:
                        engine.planner.observe(self.plan, parsed.usage)
                    except Exception as exc:
                        engine.fault("planner_feedback", exc)
        except Exception as exc:
            engine.fault("record", exc)
            # The planner's claims must end with the exchange, record or not (a second
            # ``finished`` after the one above is a no-op).
            self._planner_feedback("finished")
            return
        engine.finish_sinks(self.sink_states, record)

    # -- cache-miss diagnosis (begin) ---------------------------------------------------

    def _diagnose(self, parsed: ParsedResponse, outcome: Outcome) -> None:
        """Run the diagnoser on the billed usage; the verdict goes into ``extra`` (fail-open)."""
        engine = self.engine
        diagnoser = engine.diagnoser
        state, self.diag = self.diag, None
        if diagnoser is None:
            return
        try:
            if parsed.usage is None or outcome is not Outcome.OK:
                diagnoser.discard(state)
                return
            verdict = diagnoser.after(state, parsed.usage, engine.wall_clock(), parsed.provider_miss_reason)
            if verdict is not None:
                self.extra.update(verdict.as_extra())
            if self.conversation is not None and parsed.response_id:
                diagnoser.remember_message(self.conversation, parsed.response_id)
        except Exception as exc:
            engine.fault("diagnosis", exc)

    # -- cache-miss diagnosis (end) -----------------------------------------------------
