"""Prompt advice: where a block that changes on every request cuts the cacheable prefix short.

Data flow: planner -> learner (which static blocks keep changing, ``_learning``) ->
**advice** -> :attr:`Plan.advice <cachewatch.planning._plan.Plan.advice>` -> the
``cachewatch_volatile_prefix_tokens_total`` metric and the record.

Only positions, block kinds and token counts: never content. When only the first line
of the volatile block changes, the advice names ``:first_line`` and counts the rest of
the block as movable too. When the first volatile block is a tool and the learner saw
the blocks only reordered at their last change (the same tools in another order: from a
set, or from processes of a fleet that each list them their own way), the advice is
``tools:order`` (kind ``tool``): no tool moved last would help, one fixed order (sorted by
name) makes the tools and the stable system prompt after them cacheable.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import xxhash

from ._layout import CONT, CUM, KEY, Layout, Pos, position_path
from ._learning import Advice
from ._profiles import Profile
from ._tokens import PrefixCounter, TokenEstimator

if TYPE_CHECKING:
    from ._planner import Planner

__all__ = ["line_splits", "volatile_advice"]


def volatile_advice(
    planner: Planner,
    layout: Layout,
    stable: tuple[int | None, bool, bool] | None,
    counter: PrefixCounter,
    profile: Profile,
    model: str | None,
    family: int,
) -> Advice | None:
    """Where a volatile block cuts the static prefix short, and what moving it would win.

    ``stable`` is the learner's answer for the static blocks: the first volatile position
    (None: none), whether only its first line changes, and whether the last change only
    reordered the blocks. What moving it wins: the static blocks after it, or for a tool
    the tools after it (moved last among the tools; the system prompt comes after every
    tool). ``family`` is the prefix family.
    """
    blocks = layout.block_digests
    if not blocks or stable is None:
        return None
    volatile, rest_stable, reordered = stable
    if volatile is None:
        return None
    positions = layout.positions
    ratio = counter.ratio
    last = len(blocks) - 1
    if reordered and positions[volatile][0] == "tools":
        # The same tools in another order: every tool position changes, so none moved last
        # helps. In one order the tools are stable, and so is the system prompt after them
        # up to a block of its own that changed.
        # (A learner without ``volatile_candidates`` says nothing of the system blocks.)
        n = volatile + 1
        while n <= last and positions[n][0] == "tools":
            n += 1
        candidates = getattr(planner.learner, "volatile_candidates", None)
        changed: Collection[int] = candidates(family) if candidates is not None else range(n, last + 1)
        through = n - 1
        while through < last and through + 1 not in changed:
            through += 1
        ordered = int(positions[through][CUM] * ratio)
        if ordered < planner.min_tokens(profile, model):
            return None
        return Advice("tools:order", "tool", ordered)
    if positions[volatile][0] == "tools":
        # Tools precede the system prompt in every prefix: moved last among the tools, a
        # changing tool frees the tools after it; the system prompt still follows it.
        while last > volatile and positions[last][0] != "tools":
            last -= 1
    end = positions[last][CUM]
    before = positions[volatile - 1][CUM] if volatile > 0 else 0.0
    movable = end - positions[volatile][CUM]
    block = position_path(positions[volatile])
    if rest_stable:
        head = _first_line_raw(positions[volatile], planner.estimator, counter.family)
        movable += max(0.0, positions[volatile][CUM] - before - head)
        block += ":first_line"
    tokens = int(movable * ratio)
    if tokens < planner.min_tokens(profile, model):
        return None
    return Advice(block, "tool" if positions[volatile][0] == "tools" else layout.kind(volatile), tokens)


def _line_split(pos: Pos) -> tuple[bytes, bytes] | None:
    """Digests of a text block's first line and of the rest (None when it is not text)."""
    block = pos[CONT][pos[KEY]]
    if type(block) is list and len(block) == 1:
        block = block[0]
    text = block if type(block) is str else block.get("text") if type(block) is dict else None
    if type(text) is not str:
        return None
    head, newline, rest = text.partition("\n")
    if not newline or not rest.strip():
        return None  # one line: the block as a whole is what changes
    return (
        xxhash.xxh3_128_digest(head.encode("utf-8", "surrogatepass")),
        xxhash.xxh3_128_digest(rest.encode("utf-8", "surrogatepass")),
    )


def _first_line_raw(pos: Pos, estimator: TokenEstimator, family: str) -> float:
    block = pos[CONT][pos[KEY]]
    if type(block) is list and len(block) == 1:
        block = block[0]
    text = block if type(block) is str else block.get("text", "") if type(block) is dict else ""
    head = text.partition("\n")[0] if type(text) is str else ""
    return estimator.text(head, family=family)


def line_splits(layout: Layout, volatile: Collection[int]) -> dict[int, tuple[bytes, bytes]]:
    """Digests of the first line and of the rest of the static blocks at ``volatile`` positions."""
    lines: dict[int, tuple[bytes, bytes]] = {}
    for i in volatile:
        if i < len(layout.block_digests):
            split = _line_split(layout.positions[i])
            if split is not None:
                lines[i] = split
    return lines
