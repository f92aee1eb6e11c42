"""The shadow estimate and the traffic-shape recording as stages of the engine. Fail-open.

Place in the flow: request -> planner -> diagnosis -> **shadow.begin**, **recording.begin**
-> transport -> **started** (response headers) -> stream observer -> **finish** (the billed
usage) -> usage record -> sinks.

* :class:`ShadowStage` (``breakpoints="shadow"``): the request goes out as it came; the
  stage plans what ``auto`` would have placed and simulates the provider's cache for it
  (:class:`~cachewatch.simulation._shadow.Shadow`). At the end it gives the record a
  :class:`~cachewatch.accounting._records.ShadowEstimate`: what ``auto`` would have been
  billed, and its price. A request ``auto`` would have left alone, or whose estimate
  failed, keeps its real usage (``simulated=False``): the projected saving is never
  inflated by a fault.
* :class:`RecordingStage` (``record=FILE``): appends the request's traffic shape (its
  structure, block digests and token counts, timings; no text, no key) to a file
  (:class:`~cachewatch.simulation._shape.ShapeRecorder`) for ``cachewatch replay``.

Every fault is counted (``stage="shadow"`` / ``stage="recording"``) and the request goes on:
neither stage can change a byte of the traffic, since neither returns anything to send.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

from ..accounting._pricing import PriceTable
from ..accounting._records import Cost, RequestInfo, ShadowEstimate, TokenUsage
from ..planning._planner import Planner
from ..planning._profiles import ProfileRegistry
from ._shadow import Shadow, ShadowTicket
from ._shape import ShapeRecorder, _Pending

__all__ = ["RecordingStage", "ShadowStage"]

Fault = Callable[[str, BaseException | str], None]


class ShadowStage:
    """The engine's view of the shadow estimate.

    Args:
        fault: records a fault survived (``fault(stage, exc)``).
        prices: the engine's price table (the estimate is priced as explicit-cache usage).
        wall_clock: wall clock in seconds (cache TTLs).
        planner: the shadow's own planner (default: one built from ``planner_options``).
        planner_options: the options ``auto`` would plan with (``static_ttl``, ``threshold``...),
            for the shadow's own planner.
    """

    def __init__(
        self,
        *,
        fault: Fault,
        prices: PriceTable,
        wall_clock: Callable[[], float],
        planner: Planner | None = None,
        planner_options: dict[str, Any] | None = None,
    ) -> None:
        self.shadow = Shadow(planner, clock=wall_clock, **(planner_options or {}))
        self.fault = fault
        self.prices = prices

    def begin(self, *, api: str, host: str, path: str, body: bytes, scope: str) -> ShadowTicket | None:
        """Plan the request as ``auto`` would; None: nothing to simulate (its real usage stands)."""
        try:
            return self.shadow.begin(api=api, host=host, path=path, body=body, scope=scope)
        except Exception as exc:
            self.fault("shadow", exc)
            return None

    def started(self, ticket: ShadowTicket, status_code: int) -> None:
        """The real response started: what ``auto`` would have written is readable from now."""
        try:
            self.shadow.started(ticket, status_code)
        except Exception as exc:
            self.fault("shadow", exc)

    def finish(
        self,
        ticket: ShadowTicket | None,
        usage: TokenUsage | None,
        status_code: int,
        model: str | None,
        real_cost: Cost | None,
    ) -> ShadowEstimate | None:
        """The exchange ended with ``usage`` billed; what ``auto`` would have been billed.

        None when the provider reported no usage (the estimate is unknown, as the usage is).
        """
        outcome = None
        if ticket is not None:
            try:
                outcome = self.shadow.finish(ticket, usage, status_code)
            except Exception as exc:
                self.fault("shadow", exc)
        if usage is None:
            return None
        if outcome is None or not outcome.simulated:
            return ShadowEstimate(usage, real_cost, False)
        cost = None
        try:
            cost = self.prices.cost(model, outcome.usage, implicit=False)
        except Exception as exc:
            self.fault("pricing", exc)
        return ShadowEstimate(outcome.usage, cost, True)


class RecordingStage:
    """The engine's view of the traffic-shape recorder.

    Args:
        target: a path (appended to), an open text stream, or a :class:`ShapeRecorder`.
        fault: records a fault survived.
        wall_clock: wall clock in seconds (the recorded timings).
        registry: endpoint profiles (the planner's, when there is one).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[str] | ShapeRecorder,
        *,
        fault: Fault,
        wall_clock: Callable[[], float],
        registry: ProfileRegistry | None = None,
    ) -> None:
        self.recorder = (
            target
            if isinstance(target, ShapeRecorder)
            else ShapeRecorder(target, clock=wall_clock, registry=registry)
        )
        self.fault = fault

    def begin(self, info: RequestInfo, *, host: str, path: str, body: bytes, scope: str) -> _Pending | None:
        """Take the shape of the request as the caller made it; None: nothing to record."""
        try:
            return self.recorder.begin(
                api=info.api,
                host=host,
                path=path,
                body=body,
                scope=scope,
                provider=info.provider,
                workspace=info.workspace,
                stream=info.stream,
            )
        except Exception as exc:
            self.fault("recording", exc)
            return None

    def started(self, pending: _Pending) -> None:
        try:
            self.recorder.started(pending)
        except Exception as exc:
            self.fault("recording", exc)

    def finish(self, pending: _Pending, usage: TokenUsage | None, status_code: int | None) -> None:
        try:
            self.recorder.finish(pending, usage, status_code)
        except Exception as exc:
            self.fault("recording", exc)
