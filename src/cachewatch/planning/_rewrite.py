"""Applying the plan to the body: markers inserted, ``include_usage`` added, placements recorded.

Data flow: placement policy (``_policy``) -> **rewrite** (in the parsed body) -> the
planner serialises it once.

A string that must carry a marker becomes a one-block list (the minimal conversion,
in the profile's marker format); a block gets its ``cache_control``. Each decision
becomes a :class:`~cachewatch.planning._plan.Placement` (positions and estimated
tokens, never content).
"""

from __future__ import annotations

from typing import Any

from ._layout import CONT, CUM, KEY, OK, Pos, position_path
from ._plan import Placement, new_placement
from ._profiles import Profile

__all__ = ["add_include_usage", "insert_marker", "last_is_cacheable", "placement", "tok"]


def tok(raw: float, ratio: float) -> int:
    return int(raw * ratio + 0.5)


def placement(pos: Pos, index: int, action: str, ttl: str | None, reason: str, ratio: float) -> Placement:
    location = pos[0]
    at = pos[1]
    if location == "messages":  # position_path and tok, inline for the commonest location
        msg = at[0]
        path = f"messages.{msg}.content" if isinstance(pos[CONT], dict) else f"messages.{msg}.content.{at[1]}"
    else:
        path = position_path(pos)
    return new_placement(location, action, ttl, at, path, index, int(pos[CUM] * ratio + 0.5), reason)


def insert_marker(pos: Pos, ttl: str, profile: Profile) -> None:
    marker: dict[str, str] = {"type": "ephemeral"}
    if ttl == "1h" and profile.honours_1h:
        marker["ttl"] = "1h"
    target = pos[CONT][pos[KEY]]
    if isinstance(target, str):
        # Minimal conversion: a one-block list where the marker must go.
        if profile.marker_format == "dashscope_native":
            pos[CONT][pos[KEY]] = [{"text": target, "cache_control": marker}]
        else:
            pos[CONT][pos[KEY]] = [{"type": "text", "text": target, "cache_control": marker}]
    else:
        target["cache_control"] = marker


def last_is_cacheable(positions: list[Pos]) -> bool:
    return bool(positions) and positions[-1][OK]


def add_include_usage(obj: dict[str, Any]) -> bool:
    if obj.get("stream") is not True:
        return False
    options = obj.get("stream_options")
    if options is None:
        obj["stream_options"] = {"include_usage": True}
        return True
    if isinstance(options, dict) and "include_usage" not in options:
        options["include_usage"] = True
        return True
    return False
