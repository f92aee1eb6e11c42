"""One request/response pair in flight: the :class:`Exchange`. Sans-IO, fail-open.

Data flow: request -> planner -> transport -> stream observer -> usage record -> sinks.

The shells (``transport/``, ``proxy/``) only move bytes; they call into an exchange at
each step (request built, headers received, chunk seen, body ended or closed, transport
failed). The exchange feeds the response observer, calls the stages back (planner
feedback, miss diagnosis), builds the :class:`~cachewatch.UsageRecord` and hands it to
the sinks (and, when on, the shadow estimate and the traffic-shape recorder, whose hooks
mirror the diagnosis's: begin, started, finish). Every method is fail-open: a fault is counted and logged by the engine's
:class:`~cachewatch.engine._faults.FaultRecorder` and the exchange degrades to "observe
less", never to "change the traffic".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from ..accounting._pricing import PriceTable
from ..accounting._records import (
    Breakpoints,
    Cost,
    Outcome,
    ParsedResponse,
    RequestInfo,
    TokenUsage,
    UsageRecord,
    new_breakpoints,
    new_usage_record,
)
from ..diagnosis._stage import DiagnosisRequest, DiagnosisStage
from ..observing._observer import ResponseObserver
from ..planning._hygiene import UsageChunkFilter
from ..planning._plan import Plan, PlannerProtocol
from ..simulation._shadow import ShadowTicket
from ..simulation._shape import _Pending as ShapePending
from ..simulation._stage import RecordingStage, ShadowStage
from ._endpoints import LabelCap

__all__ = ["Exchange", "ExchangeHost", "release_plan"]

#: What an exchange without a body observer learned from the body: nothing.
_NOTHING_PARSED = ParsedResponse()


#: Exchanges whose response began and that are not finished yet (a set: adding and
#: discarding hold the GIL only). At interpreter exit, the ones still open (a stream still
#: referenced, being read by a daemon thread) are closed as ``aborted``
#: (``transport._streams``): their records would be lost with the process otherwise.
OPEN: set[Exchange] = set()


class ExchangeHost(Protocol):
    """What an exchange needs from its engine (:class:`~cachewatch.engine._engine.Engine` is one)."""

    planner: PlannerProtocol | None
    diagnosis: DiagnosisStage | None
    shadow: ShadowStage | None
    recording: RecordingStage | None
    prices: PriceTable
    model_cap: LabelCap
    clock: Callable[[], float]
    max_json_bytes: int
    max_event_bytes: int
    max_decoded_bytes: int
    #: Index in the sink list of the OTel span sink (its state is the span), if any.
    span_sink: int | None

    def fault(self, stage: str, exc: BaseException | str) -> None: ...

    def observation_truncated(self, reason: str) -> None: ...

    def start_sinks(self, info: RequestInfo) -> list[object | None]: ...

    def finish_sinks(self, states: list[object | None], record: UsageRecord) -> None: ...


def release_plan(host: ExchangeHost, plan: Plan | None, usage: TokenUsage | None = None) -> None:
    """Tell the planner a planned exchange is over (its claims end); a fault is counted, never raised.

    Only plans holding in-flight claims (a ``ticket``) need it. A second call for the same
    plan is a no-op (the planner ignores it).
    """
    planner = host.planner
    if plan is None or plan.ticket is None or planner is None:
        return
    try:
        planner.finished(plan, usage)
    except Exception as exc:
        host.fault("planner_feedback", exc)


class Exchange:
    """One request/response pair, from the moment it is sent to the end of its body."""

    __slots__ = (
        "_at_end",
        "_done",
        "_lock",
        "_unstarted",
        "body_override",
        "diag",
        "engine",
        "filter",
        "first_chunk_at",
        "header_update",
        "info",
        "marked",
        "observer",
        "plan",
        "shadow",
        "shadowed",
        "shape",
        "sink_states",
        "started_at",
        "status_code",
        "stream",
    )

    def __init__(self, engine: ExchangeHost, info: RequestInfo, plan: Plan | None) -> None:
        self.engine = engine
        self.info = info
        self.plan = plan
        self.observer: ResponseObserver | None = None
        #: Hides the usage-only chunk when cachewatch added ``include_usage`` itself.
        self.filter: UsageChunkFilter | None = None
        self.status_code: int | None = None
        self.stream = False
        self.started_at = 0.0
        self.first_chunk_at: float | None = None
        self.sink_states: list[object | None] = []
        self._done = False
        self._lock = threading.Lock()
        #: A stream whose first body chunk has not come: what it wrote is not readable yet.
        self._unstarted = False
        #: DashScope creates a stream's cache entries after the model has responded
        #: (research B.2), not when the first event goes out as Anthropic does (A.3): there
        #: the response "begins", for what reads its writes, when its body ends.
        self._at_end = False
        #: The miss diagnosis of this request (None: not diagnosed).
        self.diag: DiagnosisRequest | None = None
        #: A body and headers to send instead of the planned body (the diagnosis's
        #: cache-diagnostics beta); None: the plan's body, or the original bytes.
        self.body_override: bytes | None = None
        self.header_update: dict[str, str] | None = None
        #: Whether the request carried cache markers; None: not needed (one price for every mode).
        self.marked: bool | None = None
        #: ``breakpoints="shadow"``: the record gets an estimate (the request's own, or its
        #: real usage when ``shadow`` is None), and the shadow's state for this request.
        self.shadowed = False
        self.shadow: ShadowTicket | None = None
        #: The recorder's state for this request (``record=FILE``), None: not recorded.
        self.shape: ShapePending | None = None

    @property
    def done(self) -> bool:
        """The exchange was finished (its record went to the sinks, or was given up)."""
        return self._done

    @property
    def new_body(self) -> bytes | None:
        """The planned request body, or None to send the original bytes."""
        if self.body_override is not None:
            return self.body_override
        return self.plan.body if self.plan is not None else None

    @property
    def new_headers(self) -> dict[str, str] | None:
        """Headers to set on the rebuilt request (only together with :attr:`new_body`), or None."""
        return self.header_update

    def drop_plan(self) -> None:
        """The planned body could not be applied: the original request goes out."""
        release_plan(self.engine, self.plan)
        self.plan = None
        self.body_override = None
        self.header_update = None

    def sent(self) -> None:
        """The request is about to go to the inner transport."""
        engine = self.engine
        self.sink_states = engine.start_sinks(self.info)
        self.started_at = engine.clock()

    def span(self) -> Any:
        """The OTel span of this exchange (to make it current around the inner call), if any."""
        index = self.engine.span_sink
        states = self.sink_states
        if index is None or index >= len(states):
            return None
        return states[index]

    def response(self, status_code: int, headers: Mapping[str, str]) -> None:
        """Headers arrived: prepare the body observer.

        ``headers`` needs only ``content-type`` and ``content-encoding`` (lower-case keys).
        """
        engine = self.engine
        self.status_code = status_code
        OPEN.add(self)
        plan = self.plan
        content_type = headers.get("content-type")
        self.stream = content_type is not None and "event-stream" in content_type.lower()
        if self.stream and status_code < 400:
            # A stream's headers can come long before its first event (a relay flushes
            # them at once; a long prefill): the provider's entry exists from that event on.
            self._unstarted = True
            self._at_end = self.info.provider == "dashscope" or (
                plan is not None and plan.provider == "dashscope"
            )
        else:
            self._began(status_code)
        try:
            if self.stream and plan is not None and plan.added_include_usage:
                self.filter = UsageChunkFilter(headers.get("content-encoding"))
            self.observer = ResponseObserver(
                self.info.api,
                content_type=content_type,
                content_encoding=headers.get("content-encoding"),
                max_json_bytes=engine.max_json_bytes,
                max_event_bytes=engine.max_event_bytes,
                max_decoded_bytes=engine.max_decoded_bytes,
                stream_requested=self.info.stream,
            )
        except Exception as exc:
            engine.fault("observe", exc)
            self.observer = None

    def _began(self, status_code: int) -> None:
        """The response began: what this request wrote is readable from now on."""
        engine = self.engine
        plan = self.plan
        if plan is not None and plan.ticket is not None and engine.planner is not None:
            try:
                engine.planner.started(plan, status_code)
            except Exception as exc:
                engine.fault("planner_feedback", exc)
        if self.diag is not None and engine.diagnosis is not None:
            engine.diagnosis.started(self.diag)  # this request's writes are readable now
        if self.shadow is not None and engine.shadow is not None:
            engine.shadow.started(self.shadow, status_code)  # so are auto's, in the simulation
        if self.shape is not None and engine.recording is not None:
            engine.recording.started(self.shape)

    def feed(self, chunk: bytes) -> None:
        """One body chunk, exactly as the caller receives it."""
        if self.first_chunk_at is None:
            self.first_chunk_at = self.engine.clock()
            if self._unstarted and not self._at_end:
                self._unstarted = False
                self._began(self.status_code or 200)
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
        Nor did one that stops at the provider's error event (the anthropic and openai
        SDKs raise on it and close the body): that is the error's outcome.
        """
        self._finish(Outcome.ABORTED, None)

    def transport_error(self, exc: BaseException) -> None:
        """The inner transport raised (before or during the body); it is re-raised unchanged."""
        self._finish(Outcome.TRANSPORT_ERROR, type(exc).__name__)

    def _finish(self, outcome: Outcome | None, error_type: str | None) -> None:
        if self._done:  # the usual second call (the body ended, then it was closed)
            return
        with self._lock:
            if self._done:
                return
            self._done = True
        OPEN.discard(self)
        engine = self.engine
        if self._unstarted and self._at_end:
            # A DashScope stream's writes are readable now that it has ended (or was left:
            # the model may still have completed it).
            self._unstarted = False
            try:
                self._began(self.status_code or 200)
            except Exception as exc:
                engine.fault("record", exc)
        try:
            now = engine.clock()
            parsed = _NOTHING_PARSED
            truncated: str | None = None
            cut = False
            observer = self.observer
            if observer is not None:
                try:
                    parsed = observer.result()
                except Exception as exc:
                    engine.fault("parse", exc)
                truncated = observer.truncated
                if truncated is not None:
                    engine.observation_truncated(truncated)
            if outcome is None or (
                outcome is Outcome.ABORTED
                and (parsed.complete or parsed.error_type is not None or (self.status_code or 0) >= 400)
            ):
                # (An error response closed unread is its status's outcome: the SDKs close
                # a streamed request's 429 or 5xx unread before they retry it.)
                # A body closed after its terminal event, or after the provider's error
                # event (both SDKs raise on it and close the body: the provider ended the
                # stream, the caller did not abandon it), ended as its status says.
                outcome = Outcome.from_status(self.status_code or 0)
                if outcome is Outcome.OK and parsed.error_type:
                    # An error event inside a 200 stream (e.g. overloaded_error).
                    outcome = Outcome.SERVER_ERROR
                elif (
                    outcome is Outcome.OK
                    and self.stream
                    and not parsed.complete
                    and not parsed.finish_reasons
                    and not parsed.unparsed
                    and truncated is None
                    and (parsed.usage is not None or parsed.response_id is not None)
                ):
                    # The provider's stream began and its body ended before the stream did:
                    # no terminal event, no finish reason. What it billed is not all known
                    # (message_start's output count is a placeholder), so this is no
                    # complete response: the server's side cut it.
                    outcome = Outcome.SERVER_ERROR
                    cut = True
                    if error_type is None:
                        error_type = "incomplete_stream"
            info = self.info
            if info.request_model is None and parsed.response_model:
                info = replace(info, model=engine.model_cap(parsed.response_model))
            verdict = None
            diag = self.diag
            if diag is not None and engine.diagnosis is not None:
                self.diag = None
                verdict = engine.diagnosis.finish(diag, parsed, outcome)
            cost: Cost | None = None
            cache_mode: str | None = None
            usage = parsed.usage
            if usage is not None:
                cache_type = parsed.cache_type
                implicit = cache_type == "implicit" or (cache_type is None and self.marked is False)
                if self.marked is not None and (usage.cache_read or usage.cache_write):
                    cache_mode = "implicit" if implicit else "explicit"
                try:
                    cost = engine.prices.cost(
                        info.request_model or parsed.response_model, usage, implicit=implicit
                    )
                except Exception as exc:
                    engine.fault("pricing", exc)
            advice = self.plan.advice if self.plan is not None else None
            shadow = None
            if self.shadowed and engine.shadow is not None:
                ticket, self.shadow = self.shadow, None
                if advice is None and ticket is not None:
                    advice = ticket.plan.advice  # the shadow planner's prompt advice
                shadow = engine.shadow.finish(
                    ticket, usage, self.status_code or 0, info.request_model or parsed.response_model, cost
                )
            if self.shape is not None and engine.recording is not None:
                shape, self.shape = self.shape, None
                engine.recording.finish(shape, usage, self.status_code)
            ttft = None
            if self.stream and self.first_chunk_at is not None:
                ttft = self.first_chunk_at - self.started_at
            plan = self.plan
            record = new_usage_record(
                info,  # request
                outcome,
                self.status_code,
                self.stream,
                usage,
                parsed.response_model,
                parsed.response_id,
                parsed.finish_reasons,
                error_type or parsed.error_type,
                max(0.0, now - self.started_at),  # duration
                ttft,  # time_to_first_token
                cost,
                _breakpoints(plan) if plan is not None else None,
                verdict,  # miss
                parsed.provider_miss_reason or None,
                parsed.provider_missed_tokens if parsed.provider_miss_reason else None,
                advice,
                cache_mode,
                # Not a zero: the provider did not say (an OpenAI-compatible stream without
                # stream_options.include_usage...). Counted in cachewatch_usage_unreported_total.
                # A redirect (3xx) is no response of the model's: nothing was to report. A
                # stream the caller left before any usage came was billed all the same.
                not (
                    usage is None
                    and (
                        cut
                        or (outcome is Outcome.OK and (self.status_code or 200) < 300)
                        or (outcome is Outcome.ABORTED and 200 <= (self.status_code or 0) < 300)
                    )
                ),
                parsed.unparsed,
                truncated,  # observation_truncated
                shadow,
            )
            if plan is not None:
                release_plan(engine, plan, usage)
                # Usage calibrates the estimator; the request's shape teaches the policy
                # even where the endpoint reports no usage (a 2xx without it).
                if engine.planner is not None and (usage is not None or 200 <= (self.status_code or 0) < 300):
                    try:
                        engine.planner.observe(plan, usage)
                    except Exception as exc:
                        engine.fault("planner_feedback", exc)
        except Exception as exc:
            engine.fault("record", exc)
            # The planner's claims must end with the exchange, record or not (a second
            # ``finished`` after the one above is a no-op); so must the shadow planner's.
            release_plan(engine, self.plan)
            if self.diag is not None and engine.diagnosis is not None:
                # Not left in flight, where it would stand for a write that may be read.
                diag, self.diag = self.diag, None
                engine.diagnosis.discard(diag)
            if self.shadow is not None and engine.shadow is not None:
                ticket, self.shadow = self.shadow, None
                engine.shadow.finish(ticket, None, 0, None, None)
            self.shape = None
            # Every sink is still finished, once (the span ends, the request is counted),
            # with what is known without the body: the outcome and the timing.
            try:
                status = self.status_code
                final = outcome or Outcome.from_status(status or 0)
                record = UsageRecord(
                    self.info,
                    final,
                    status,
                    self.stream,
                    error_type=error_type,
                    duration=max(0.0, engine.clock() - self.started_at),
                    usage_reported=final is not Outcome.OK,
                )
            except Exception as exc:
                engine.fault("record", exc)
                return
        engine.finish_sinks(self.sink_states, record)


def _breakpoints(plan: Plan) -> Breakpoints:
    """The plan's decisions as the record carries them."""
    return new_breakpoints(plan.profile, tuple([(p.location, p.action) for p in plan.placements]))
