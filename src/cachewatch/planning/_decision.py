"""One planning decision's questions to the learned state, asked together.

Place in the flow: planner -> **ask** -> learner -> planner (which then places markers).

To plan a request the planner asks the learner three things: what it knows of each
candidate prefix (:meth:`~cachewatch.planning._learning.LearningState.sight`, which also
counts them), where the static region keeps changing (``stability``), and what the
conversation's previous request looked like (``conversation``; after a switch of model,
also where its last request to this model ended, which the planner then sights). :func:`ask` puts the
three to a learner that can answer them at once (``decide``: the
:class:`~cachewatch.planning._learning_redis.RedisLearner` does it in one round trip to
Redis) and otherwise calls them in turn (:func:`ask_in_turn`, the reference semantics:
``decide`` must give the same answers and leave the same state).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from ._learning import LearningState, Sight, Sighting

__all__ = ["Answers", "ConversationQuery", "LinesFor", "ask", "ask_in_turn"]

#: A conversation to look up and record: (its key, the first reply's anchor or None, the
#: model's tag, the position of the request's tail or -1, the family its changes are
#: counted for: the scope's, whatever its structure, which changes with the prompt, and
#: the size class of the request's tail or "": ``_learning.history_change``).
ConversationQuery = tuple[int, bytes | None, int, int, int, str]
#: The first-line and rest digests of the static blocks at some positions (the planner's).
LinesFor = Callable[[Collection[int]], dict[int, tuple[bytes, bytes]]]
#: (sights, (first volatile position, rest stable) or None, the conversation's previous
#: request or None, the tail position of its last request to this model after a switch of
#: model or -1; see :meth:`~cachewatch.planning._learning.LearningState.conversation`).
Answers = tuple[
    list[Sight],
    tuple[int | None, bool, bool] | None,
    tuple[int, bytes | None, bool, float, float] | None,
    int,
]


def ask(
    learner: LearningState,
    family: int,
    sightings: Sequence[Sighting],
    clock: Callable[[], float],
    ticket: int,
    *,
    model_key: str | None,
    blocks: Sequence[bytes],
    lines_for: LinesFor,
    conversation: ConversationQuery | None,
) -> Answers:
    """Sight ``sightings``; record ``blocks`` (if any) and ``conversation`` (if given).

    ``model_key``: a learner that answers at once may fetch the learned minimum with the
    rest (:meth:`~LearningState.learned_minimum` is then answered locally).
    """
    decide: Any = getattr(learner, "decide", None)
    if decide is not None:
        answers: Answers = decide(
            family,
            sightings,
            clock,
            ticket,
            model_key=model_key,
            blocks=blocks,
            lines_for=lines_for,
            conversation=conversation,
        )
        return answers
    return ask_in_turn(
        learner,
        family,
        sightings,
        clock,
        ticket,
        blocks=blocks,
        lines_for=lines_for,
        conversation=conversation,
    )


def ask_in_turn(
    learner: LearningState,
    family: int,
    sightings: Sequence[Sighting],
    clock: Callable[[], float],
    ticket: int,
    *,
    blocks: Sequence[bytes],
    lines_for: LinesFor,
    conversation: ConversationQuery | None,
) -> Answers:
    """:func:`ask`, one learner call after the other (what ``decide`` must be equivalent to)."""
    sights = learner.sight(family, sightings, clock(), ticket)
    stable: tuple[int | None, bool, bool] | None = None
    if blocks:
        candidates = getattr(learner, "volatile_candidates", None)
        lines = lines_for(candidates(family) if candidates is not None else ())
        stable = learner.stability(family, blocks, lines)
    before: tuple[int, bytes | None, bool, float, float] | None = None
    earlier = -1
    if conversation is not None:
        static_key, history_known = conversation_context(sightings, sights)
        key, reply, model, tail, changes, tail_class = conversation
        before, earlier = learner.conversation(
            key, static_key, reply, history_known, clock(), model, tail, changes, tail_class
        )
    return sights, stable, before, earlier


def conversation_context(sightings: Sequence[Sighting], sights: Sequence[Sight]) -> tuple[int | None, bool]:
    """(the static region's prefix key or None, every previous turn was known before).

    Only the whole static region's candidate is of kind ``static``: the part before a block
    that keeps changing (kind ``stable``) ends where the traffic has it, and says nothing
    of whether the conversation's prompt changed.
    """
    static_key: int | None = None
    history_known = True
    for sighting, sight in zip(sightings, sights, strict=True):
        if sighting.kind == "static":
            static_key = sight.key
        elif sighting.kind == "previous_turn" and not sight.known:
            history_known = False
    return static_key, history_known
