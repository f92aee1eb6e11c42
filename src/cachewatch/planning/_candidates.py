"""Candidate prefixes of a request: where a ``cache_control`` marker could pay off.

Data flow: layout (``_walk``) -> **candidates** -> placement policy (``_policy``).

Candidates (research A.1-A.6, B.2, E), each a prefix ending at one block:

* ``static``: the last eligible tools/system block (everything every conversation with
  these tools and this system prompt shares); and, when the family has a static block
  that keeps changing from one request to the next (``static_end``: a per-user profile, a
  timestamp or retrieved context in a later system block; or one of a few tenants'
  prompts, which do recur), also the last one before it, the part every request shares
  (kind ``stable``: its own statistics, reported as ``static``); and, while too few of the
  family's requests were seen to know whether any static block changes, the last one
  before the region's last block (kind ``hedge``, reported as ``static``: marked only
  where it is cached or the request writes past it anyway, so it costs no write, and the
  family's next request reads it if that last block is the one that changed);
* ``tail_first`` / ``tail``: the last eligible block of the last user message, on a first
  turn / a continued conversation (the next turn, or the next agent-loop step, reads it);
* ``previous_turn``: where the previous turn's tail was (turn N+1 re-marks the position
  turn N wrote, so the lookback still finds it); after a switch of model, ``_policy``
  adds where the conversation's last request to this model ended (from its record);
* ``document``: the latest large block before the tail (a document asked about again).
"""

from __future__ import annotations

from ._layout import CUM, MARK, OK, Layout, Pos

__all__ = ["document_candidate", "find_candidates", "last_eligible"]

_INPUT_ROLES = frozenset({"user", "tool", "function"})


def find_candidates(
    layout: Layout,
    ratio: float,
    lookback: int,
    document_tokens: int,
    top_ttl: str | None,
    static_end: int | None = None,
    hedge: bool = False,
) -> list[tuple[int, str]]:
    """The candidate prefixes of a request, as (position, kind), in prompt order.

    ``top_ttl``: the TTL of the caller's top-level ``cache_control`` (no ``tail`` then).
    ``static_end``: the first static position that keeps changing (None: none known); a
    static prefix also ends before it. ``hedge`` (no such position known, and too few
    requests of the family seen to know): a static prefix also ends before the static
    region's last block, the likeliest place of a block that changes.
    """
    positions = layout.positions
    roles = layout.roles
    fm = layout.first_message
    candidates: list[tuple[int, str]] = []
    kind = "stable"
    if static_end is None and hedge and fm >= 2:
        static_end, kind = fm - 1, "hedge"
    if static_end is not None and static_end < fm:
        stable = last_eligible(positions, 0, static_end)
        if stable is not None:
            candidates.append((stable, kind))
    static = last_eligible(positions, 0, fm)
    if static is not None and (not candidates or candidates[0][0] != static):
        candidates.append((static, "static"))
    elif static is not None:
        candidates[0] = (static, "static")  # one position is one prefix: the whole region's
    last_user = _last_input(roles, len(roles))
    tail = _tail_position(positions, layout.spans, last_user, fm) if last_user is not None else None
    if tail is not None and last_user is not None:
        prev_user = _previous_input(roles, last_user)
        if prev_user is not None:
            prev = _tail_position(positions, layout.spans, prev_user, fm)
            if prev is not None and prev != tail:
                candidates.append((prev, "previous_turn"))
        document = document_candidate(positions, fm, tail, ratio, lookback, document_tokens)
        # One position is one prefix: a document that is also the previous turn's tail is
        # that turn's write (sighting it twice would count it as its own recurrence).
        if document is not None and (not candidates or candidates[-1][0] != document):
            candidates.append((document, "document"))
        if top_ttl is None:
            candidates.append((tail, "tail_first" if layout.first_turn else "tail"))
    candidates.sort()
    return candidates


def document_candidate(
    positions: list[Pos],
    fm: int,
    tail: int,
    ratio: float,
    lookback: int,
    document_tokens: int,
) -> int | None:
    """The latest large eligible block in the lookback window before the tail."""
    lo = max(fm, tail - lookback)
    if lo >= tail:
        return None
    # The running totals never decrease, so no block of the window is larger than the
    # whole window: when that is under the bar, no block is a document (the common case,
    # a conversation of short turns, skips the scan).
    if (positions[tail - 1][CUM] - (positions[lo - 1][CUM] if lo > 0 else 0.0)) * ratio < document_tokens:
        return None
    for i in range(tail - 1, lo - 1, -1):
        pos = positions[i]
        if not pos[OK]:
            continue
        before = positions[i - 1][CUM] if i > 0 else 0.0
        if (pos[CUM] - before) * ratio >= document_tokens:
            return i
    return None


def _last_input(roles: list[str], before: int) -> int | None:
    """The last message before ``before`` sent by the caller's side (user or tool results)."""
    i = before - 1
    while i >= 0:  # (while loops here: a short backward scan costs less than its range object)
        if roles[i] in _INPUT_ROLES:
            return i
        i -= 1
    return None


def _previous_input(roles: list[str], last: int) -> int | None:
    """The last input message of the previous turn: before the assistant turn preceding ``last``."""
    i = last - 1
    while i >= 0:
        if roles[i] == "assistant":
            return _last_input(roles, i)
        i -= 1
    return None


def last_eligible(positions: list[Pos], lo: int, hi: int) -> int | None:
    i = hi - 1
    while i >= lo:
        pos = positions[i]
        if pos[OK] or pos[MARK] is not None:
            return i
        i -= 1
    return None


def _tail_position(positions: list[Pos], spans: dict[int, tuple[int, int]], msg: int, fm: int) -> int | None:
    """The last eligible position at or before the end of message ``msg`` (the tail rule)."""
    span = spans.get(msg)
    end = span[1] if span is not None else None
    if end is None:
        # The message has no positions: take the last position of the closest earlier message.
        end = fm
        for m in range(msg - 1, -1, -1):
            s = spans.get(m)
            if s is not None:
                end = s[1]
                break
    i = end - 1
    while i >= fm:
        pos = positions[i]
        if pos[OK] or pos[MARK] is not None:
            return i
        i -= 1
    return None
