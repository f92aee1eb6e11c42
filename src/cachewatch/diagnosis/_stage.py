"""The miss diagnosis as one stage of the engine: begin, started, finish. Fail-open.

Place in the flow: request -> planner -> **diagnosis.begin** -> transport ->
**diagnosis.started** (response headers) -> stream observer -> **diagnosis.finish**
(the billed usage) -> usage record -> sinks.

The engine calls three hooks per request and knows nothing else of the diagnosis:

* :meth:`DiagnosisStage.begin` registers a request that carries (or gets) cache markers
  with the :class:`~cachewatch.diagnosis.Diagnoser`, reusing the planner's layout when
  there is one. With ``cache_diagnostics=True`` on Anthropic's first-party profile it
  also opts the request into Anthropic's cache-diagnostics beta: the body gets
  ``diagnostics.previous_message_id`` (threaded per conversation) and the
  ``anthropic-beta`` header; the returned :class:`DiagnosisRequest` carries that body
  and header for the shell to send;
* :meth:`DiagnosisStage.started`: the response began, its writes are readable from now;
* :meth:`DiagnosisStage.finish`: the verdict for the record (None: no miss, or not known).

Every fault is counted (``stage="diagnosis"``) and the request goes on undiagnosed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..accounting._records import MissVerdict, Outcome, ParsedResponse, RequestInfo
from ..planning._layout import Layout
from ..planning._plan import Plan
from ..planning._profiles import ProfileRegistry
from ..planning._tokens import TokenEstimator
from ._diagnoser import Diagnoser, RequestState
from ._fingerprints import Fingerprints, conversation_key, fingerprints_of
from ._store import FingerprintStore

__all__ = ["CACHE_DIAGNOSIS_BETA", "DiagnosisRequest", "DiagnosisStage"]

#: The Anthropic cache-diagnostics beta header (platform.claude.com cache-diagnostics page;
#: later revisions make it optional, and still accept it).
CACHE_DIAGNOSIS_BETA = "cache-diagnosis-2026-04-07"

_PROFILES: ProfileRegistry | None = None


def _shared_profiles() -> ProfileRegistry:
    """The shipped profiles, built once per process, for engines without a planner."""
    global _PROFILES
    if _PROFILES is None:
        _PROFILES = ProfileRegistry()
    return _PROFILES


#: What threading a request through the cache-diagnostics beta changed: its conversation
#: key, the body to send and the headers to set with it.
_Threaded = tuple[bytes, bytes | None, dict[str, str] | None]


class DiagnosisRequest:
    """One request between :meth:`DiagnosisStage.begin` and :meth:`DiagnosisStage.finish`."""

    __slots__ = ("body", "conversation", "headers", "state")

    def __init__(self, state: RequestState) -> None:
        self.state = state
        #: Conversation key of a request threaded through the cache-diagnostics beta.
        self.conversation: bytes | None = None
        #: The body to send instead of the planned one (cache-diagnostics beta), and the
        #: headers to set with it; None: nothing to change.
        self.body: bytes | None = None
        self.headers: dict[str, str] | None = None


class DiagnosisStage:
    """The engine's view of the miss diagnosis.

    Args:
        store: the :class:`~cachewatch.FingerprintStore` (default: in memory).
        on_wasted: called as ``on_wasted(provider, model, workspace, tokens)`` per write
            that expired unread.
        fault: records a fault survived (``fault(stage, exc)``).
        profiles: endpoint profiles (the planner's, so both agree; default: the shipped ones).
        estimator: the planner's token estimator (default: the diagnoser's own).
        wall_clock: wall clock in seconds (cache TTLs; shared by the processes of a shared store).
        cache_diagnostics: opt Anthropic first-party requests into the cache-diagnostics beta.
    """

    def __init__(
        self,
        store: FingerprintStore | None,
        *,
        on_wasted: Callable[[str, str, str, int], None] | None,
        fault: Callable[[str, BaseException | str], None],
        profiles: ProfileRegistry | None = None,
        estimator: TokenEstimator | None = None,
        wall_clock: Callable[[], float],
        cache_diagnostics: bool = False,
    ) -> None:
        self.diagnoser = Diagnoser(store, on_wasted=on_wasted, estimator=estimator)
        self.fault = fault
        self.profiles = profiles
        self.wall_clock = wall_clock
        self.cache_diagnostics = cache_diagnostics

    def sweep_due(self) -> None:
        """Count the writes that expired unread by now, if a sweep is due (the metrics'
        collection calls it, so a client that went quiet still reports its last writes'
        waste). Never raises."""
        if not self.diagnoser.wrote:
            return
        try:
            self.diagnoser.sweep_if_due(self.wall_clock())
        except Exception as exc:
            self.fault("diagnosis", exc)

    def begin(
        self,
        info: RequestInfo,
        plan: Plan | None,
        host: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> DiagnosisRequest | None:
        """Register a request about to be sent; None when it is not diagnosed.

        Only requests that carry markers can read (or write) an explicit cache entry, so
        requests without any are not tracked at all. Cheap: nothing is parsed unless the
        cache-diagnostics beta is on.
        """
        if not (
            self.cache_diagnostics
            or (plan is not None and plan.body is not None)
            or body.find(b"cache_control") != -1
        ):
            if self.diagnoser.wrote:
                # Writes made earlier still expire unread while no request is diagnosed.
                try:
                    self.diagnoser.sweep_if_due(self.wall_clock())
                except Exception as exc:
                    self.fault("diagnosis", exc)
            return None
        try:
            profile = (self.profiles or _shared_profiles()).match(host, path)
            has_markers: bool | None = None
            marked: _Marked | None = None
            if plan is not None and plan.error is None:
                marked = _marked(plan)
                has_markers = marked[0]
            outgoing: bytes | Mapping[str, Any] = (
                plan.body if plan is not None and plan.body is not None else body
            )
            model = info.request_model
            threaded: _Threaded | None = None
            if self.cache_diagnostics and info.api == "messages" and profile.name == "anthropic":
                threaded, outgoing = self._thread(headers, outgoing)
            source = None
            if plan is not None and plan.layout is not None and marked is not None and has_markers:
                # The planner's layout is the request as sent: nothing is parsed or hashed again.
                source = _fingerprint_source(plan.layout, marked, model)
            request = DiagnosisRequest(
                self.diagnoser.before(
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
            )
        except Exception as exc:
            self.fault("diagnosis", exc)
            return None
        if threaded is not None:
            request.conversation, request.body, request.headers = threaded
        return request

    def started(self, request: DiagnosisRequest) -> None:
        """The response began: this request's writes are readable from now."""
        try:
            self.diagnoser.started(request.state, self.wall_clock())
        except Exception as exc:
            self.fault("diagnosis", exc)

    def discard(self, request: DiagnosisRequest) -> None:
        """The exchange ended without a verdict to give (a fault): forget the request."""
        try:
            self.diagnoser.discard(request.state)
        except Exception as exc:
            self.fault("diagnosis", exc)

    def finish(
        self, request: DiagnosisRequest, parsed: ParsedResponse, outcome: Outcome
    ) -> MissVerdict | None:
        """The response ended: the verdict on the billed usage (None: no miss, or not diagnosable)."""
        diagnoser = self.diagnoser
        try:
            if parsed.usage is None or outcome is not Outcome.OK:
                diagnoser.discard(request.state)
                return None
            verdict = diagnoser.after(
                request.state, parsed.usage, self.wall_clock(), parsed.provider_miss_reason
            )
            if request.conversation is not None and parsed.response_id:
                diagnoser.remember_message(request.conversation, parsed.response_id)
            return verdict
        except Exception as exc:
            self.fault("diagnosis", exc)
            return None

    def _thread(
        self, headers: Mapping[str, str], body: bytes | Mapping[str, Any]
    ) -> tuple[_Threaded | None, bytes | Mapping[str, Any]]:
        """Anthropic cache-diagnostics beta: thread ``previous_message_id``.

        Returns the request's changes (None: none) and the body for the diagnoser (parsed
        here anyway, so it is not parsed again).
        """
        obj = orjson.loads(body) if isinstance(body, bytes) else body
        if not isinstance(obj, dict) or "diagnostics" in obj:
            return None, body
        conversation = conversation_key("messages", obj)
        if conversation is None:
            return None, body
        # The first turn opts in with ``null``: the API stores nothing for a request without
        # the object, so the next turn's comparison would find no previous message.
        previous = self.diagnoser.previous_message(conversation)
        new_body = _with_diagnostics(body, previous) if isinstance(body, bytes) else None
        if new_body is None:
            return (conversation, None, None), obj
        beta = headers.get("anthropic-beta") or ""
        if CACHE_DIAGNOSIS_BETA not in beta:
            beta = f"{beta},{CACHE_DIAGNOSIS_BETA}" if beta.strip() else CACHE_DIAGNOSIS_BETA
        return (conversation, new_body, {"anthropic-beta": beta}), obj


#: What a plan marks: (any marker kept or inserted, the inserted ``(position, ttl)``, the
#: TTL of the top-level marker kept or inserted, or None).
_Marked = tuple[bool, list[tuple[int, str]], str | None]


def _marked(plan: Plan) -> _Marked:
    """The plan's markers, in one pass over its placements."""
    any_marker = False
    inserted: list[tuple[int, str]] = []
    top: str | None = None
    found_top = False
    for p in plan.placements:
        action = p.action
        if action == "inserted":
            any_marker = True
            if p.position >= 0:
                inserted.append((p.position, p.ttl or "5m"))
        elif action != "kept":
            continue
        any_marker = True
        if not found_top and p.location == "top_level":
            top = p.ttl
            found_top = True
    return any_marker, inserted, top


#: A layout with more positions than this has its fingerprints computed when the request
#: begins rather than when its response ends: the async transport plans such a body in a
#: worker thread (``transport._transport``), while the end of the response runs on the
#: caller's event loop (400,000 positions: about a second).
_EAGER_POSITIONS = 4_096


def _fingerprint_source(layout: Layout, marked: _Marked, model: str | None) -> Callable[[], Fingerprints]:
    """Computes the fingerprints of a planned request from its layout, when asked (a large
    one at once)."""
    _, inserted, top = marked
    if len(layout.positions) > _EAGER_POSITIONS:
        computed = fingerprints_of(layout, model or "", inserted, top)
        return lambda: computed
    return lambda: fingerprints_of(layout, model or "", inserted, top)


def _with_diagnostics(body: bytes, message_id: str | None) -> bytes | None:
    """``body`` with ``"diagnostics":{"previous_message_id":...}`` as its first key (bytes-level)."""
    stripped = body.lstrip()
    if not stripped.startswith(b"{") or stripped[1:].lstrip().startswith(b"}"):
        return None
    field = orjson.dumps({"previous_message_id": message_id})
    return b'{"diagnostics":' + field + b"," + stripped[1:]
