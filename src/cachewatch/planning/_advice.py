"""Prompt advice: where a block that changes on every request cuts the cacheable prefix short.

Data flow: planner -> learner (which static blocks keep changing, ``_learning``) ->
**advice** -> :attr:`Plan.advice <cachewatch.planning._plan.Plan.advice>` -> the
``cachewatch_volatile_prefix_tokens_total`` metric and the record.

Only positions, block kinds and token counts: never content. When only the first line
of the volatile block changes, the advice names ``:first_line`` and counts the rest of
the block as movable too.
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
    stable: tuple[int | None, bool] | None,
    counter: PrefixCounter,
    profile: Profile,
    model: str | None,
) -> Advice | None:
    """Where a volatile block cuts the static prefix short, and what moving it would win.

    ``stable`` is the learner's answer for the static blocks: the first volatile position
    (None: none) and whether only its first line changes. What moving it wins: the static
    blocks after it, or for a tool the tools after it (moved last among the tools; the
    system prompt comes after every tool).
    """
    blocks = layout.block_digests
    if not blocks or stable is None:
        return None
    volatile, rest_stable = stable
    if volatile is None:
        return None
    positions = layout.positions
    ratio = counter.ratio
    last = len(blocks) - 1
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
    return Advice(block, layout.kind(volatile), tokens)


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
