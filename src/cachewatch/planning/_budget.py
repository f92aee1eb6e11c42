"""The budget of 1h bets: a 1h write is placed only when what 1h writes saved can pay for it.

Data flow: policy (a 1h bet placed, a late read of one found) -> **budget** <- planner
``observe`` (what each request billed).

A 1h write costs its tokens 1.0x more than no write (0.75x more than the 5m write the
request would make anyway); it pays when a late return, 5-60 minutes after the prefix's
last use, reads it: 0.9x its tokens saved (1.15x where the request would have written
it at 5m again). The learner's estimate that a family's late returns go on is a
stationary model: traffic that stops (a tenant who does not come back, a job that
ends, the last hour of any trace) turns every bet placed near its end into a loss,
whatever the evidence before it. So bets are paid from a budget: what the process's
1h writes saved, minus what they cost (charged when placed), plus ``share`` of
everything the process was billed. A bet is placed only when the budget covers its
premium (estimated on the whole prefix, at least what is charged).

Bound: on any traffic, 1h bets cost at most ``share`` of the bill more than placing
none. A process bets once it has been billed 1/``share`` prompts' worth (200 at 0.5%),
and bets that pay fund the next ones.

The budget is the process's own (a fleet sharing its learned state in Redis gives each
process one); its table of the bets placed is bounded (the oldest are forgotten: a
late read of a forgotten bet is not credited, which only delays the next bet).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from ._learning import TTL_1H, TTL_5M

__all__ = ["OneHourBudget"]

#: The bets remembered (prefix key -> last sighting).
MAX_BETS: Final = 4096


class OneHourBudget:
    """The balance of a process's 1h bets, in tokens' worth of input. Thread-safe."""

    def __init__(self, share: float = 0.005, max_bets: int = MAX_BETS) -> None:
        self.share = share
        self.max_bets = max_bets
        #: Saved minus spent by 1h writes, plus ``share`` of the bill.
        self.balance = 0.0
        self._bets: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def has_bets(self) -> bool:
        """Whether any bet is remembered (else a sighting has nothing to credit)."""
        return bool(self._bets)

    def affords(self, cost: float) -> bool:
        """Whether a bet whose premium is at most ``cost`` may be placed."""
        return self.balance >= cost

    def placed(self, keys: Iterable[int], cost: float, now: float) -> None:
        """A request writes these prefixes at 1h; the premium is ``cost``."""
        with self._lock:
            self.balance -= cost
            bets = self._bets
            for key in keys:
                if key in bets:
                    bets.move_to_end(key)
                bets[key] = now
                if len(bets) > self.max_bets:
                    bets.popitem(last=False)

    def sighted(self, found: Iterable[tuple[int, bool, float, float]], now: float) -> None:
        """A request sights these prefixes: ``(key, believed cached, saving per token, tokens)``.

        A bet's prefix found cached 5-60 minutes after its last sighting was kept by its
        1h TTL alone: its read saved ``saving`` (0.9, or 1.15 against a 5m write the
        request would have made) of its tokens past the deepest prefix the request would
        have read anyway (one cached that is no such bet: a live 5m entry, a caller's 1h
        one). One request's reads are nested prefixes: only its largest saving is credited.
        """
        bets = self._bets
        if not bets:
            return
        with self._lock:
            served = 0.0  # the deepest prefix cached without a bet's help
            kept: list[tuple[float, float]] = []  # (saving, tokens) of the bets that kept theirs
            for key, cached, saving, tokens in found:
                last = bets.get(key)
                if last is not None:
                    bets[key] = now
                    if cached and TTL_5M < now - last <= TTL_1H:
                        kept.append((saving, tokens))
                        continue
                if cached and tokens > served:
                    served = tokens
            best = 0.0
            for saving, tokens in kept:
                if saving * (tokens - served) > best:
                    best = saving * (tokens - served)
            self.balance += best

    def billed(self, units: float) -> None:
        """A request was billed ``units`` (input tokens at their prices: 1, 1.25, 2, 0.1)."""
        self.balance += self.share * units
