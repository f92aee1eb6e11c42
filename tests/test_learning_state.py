"""The learned state's behaviour, the same cases against MemoryLearner and RedisLearner.

Every ``new_learner`` test runs twice (conftest): on the in-process :class:`MemoryLearner`
and on :class:`RedisLearner` against a real redis-server. A replay of random call sequences
then checks that both give exactly the same answers (the same floats) call for call, and
the Redis-only cases check what a shared state adds: bounded keys, no content, one claim
across instances, and failing open when Redis is down or silent.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from _redis import free_port, redis_server
from cachewatch.accounting._records import TokenUsage
from cachewatch.emulator import ManualClock
from cachewatch.planning._decision import ask
from cachewatch.planning._learning import CLAIM_TIMEOUT, TTL_1H, TTL_5M, LearningState, Sight, Sighting
from cachewatch.planning._learning_memory import MemoryLearner
from cachewatch.planning._learning_redis import MAX_AGE, RedisLearner
from cachewatch.planning._planner import Planner

Make = Callable[..., LearningState]
FAMILY = 7
#: The planner's write threshold for a 5-minute marker: 0.25 premium / 1.15 saving, where
#: writing a prefix whenever it is not cached starts to beat never writing it.
THRESHOLD = 0.25 / 1.15


def static(key: int) -> list[Sighting]:
    return [Sighting(key, "static", True)]


def test_blocks_that_only_change_places_are_reported_as_reordered(new_learner: Make) -> None:
    # Tools listed from a set, or by processes of a fleet that each have their own order:
    # the blocks that changed are the ones that were there. A block of new content at the
    # same time is a change, not a reorder; so is a block added.
    learner = new_learner()
    a, b, c, system = b"a" * 16, b"b" * 16, b"c" * 16, b"s" * 16
    assert learner.stability(FAMILY, [a, b, c, system], {})[2] is False
    assert learner.stability(FAMILY, [b, a, c, system], {})[2] is True
    assert learner.stability(FAMILY, [b, a, c, system], {})[2] is True  # no change: as before
    assert learner.stability(FAMILY, [c, b, a, system], {})[2] is True
    assert learner.stability(FAMILY, [a, c, b, b"t" * 16], {})[2] is False
    assert learner.stability(FAMILY, [a, b, c, b"t" * 16], {})[2] is True
    assert learner.stability(FAMILY, [a, b, c, b"t" * 16, b"u" * 16], {})[2] is False


def test_a_new_prefix_is_worth_one_write_and_a_family_that_never_reuses_stops(new_learner: Make) -> None:
    learner = new_learner()
    first = learner.sight(FAMILY, static(1), 100.0, 1)[0]
    assert (first.run, first.known, first.cached, first.writing) == (1, False, False, False)
    assert first.p == pytest.approx(1 / 3)  # Beta(1, 2): the first opportunity is written
    second = learner.sight(FAMILY, static(2), 101.0, 2)[0]
    assert second.p == pytest.approx(1 / 6)  # one opportunity, not reused: below 0.217
    assert second.p < THRESHOLD


def test_first_tails_are_judged_by_what_the_tails_under_their_static_prefix_did(new_learner: Make) -> None:
    # One process, one family, two features: a chat under system prompt 1 whose first turns
    # go on, and a one-shot job under system prompt 2 whose first turns never do. The
    # family's count mixes them; once their TTLs ran out, the tails under each prompt say
    # which one a new first tail belongs to. Counted only then, not when a tail comes back
    # (at first only the ones that do would count).
    learner = new_learner()
    now, ticket, tail = 1_000.0, 0, 100
    for _ in range(8):
        for system, continued in ((1, True), (2, False)):
            ticket += 1
            tail += 1
            learner.sight(
                FAMILY, [Sighting(system, "static", True), Sighting(tail, "tail_first")], now, ticket
            )
            learner.release([system], ticket)
            learner.started([(system, 300.0), (tail, 0.0)], ticket, now + 1)
            if continued:  # the next turn sights the first turn's tail as its previous turn
                ticket += 1
                learner.sight(
                    FAMILY,
                    [Sighting(system, "static", True), Sighting(tail, "previous_turn")],
                    now + 30,
                    ticket,
                )
                learner.started([(system, 300.0), (tail, 0.0)], ticket, now + 31)
            now += 60
    now += 400
    chat, job = (
        learner.sight(
            FAMILY, [Sighting(system, "static", True), Sighting(950 + system, "tail_first")], now, 95 + system
        )[1].p
        for system in (1, 2)
    )
    assert job < THRESHOLD < chat


def test_a_failed_first_tail_counts_for_its_static_prefix_no_more_than_for_its_family(
    new_learner: Make,
) -> None:
    # A request that fails (a 529 nobody retries) takes its opportunity back from the
    # family's counts; its tail never comes back, but that says nothing of whether the
    # prompt's conversations go on, so it must not count for the static prefix either.
    def first_tail_p(learner: LearningState, failures: int) -> float:
        now, ticket = 1_000.0, 0
        for i in range(4):
            ticket += 1
            learner.sight(FAMILY, [Sighting(1, "static", True), Sighting(100 + i, "tail_first")], now, ticket)
            learner.started([(1, 300.0), (100 + i, 0.0)], ticket, now + 1)
            ticket += 1
            learner.sight(
                FAMILY, [Sighting(1, "static", True), Sighting(100 + i, "previous_turn")], now + 30, ticket
            )
            learner.started([(1, 300.0), (100 + i, 0.0)], ticket, now + 31)
            for j in range(failures):
                ticket += 1
                learner.sight(
                    FAMILY,
                    [Sighting(1, "static", True), Sighting(200 + 10 * i + j, "tail_first")],
                    now + 40,
                    ticket,
                )
                learner.void([1, 200 + 10 * i + j], ticket)
            now += 60
        return learner.sight(
            FAMILY, [Sighting(1, "static", True), Sighting(999, "tail_first")], now + 400, 99
        )[1].p

    # (Not equal: taking an opportunity back does not undo the forgetting it applied.)
    assert first_tail_p(new_learner(), 0) > first_tail_p(new_learner(), 2) > 0.9


def seen(learner: LearningState, family: int, key: int, now: float, ticket: int) -> Any:
    """A request that sights a static prefix, marks nothing, and whose response begins."""
    sight = learner.sight(family, static(key), now, ticket)[0]
    learner.release([key], ticket)
    learner.started([(key, 0.0)], ticket, now + 0.5)
    return sight


def test_a_prefix_seen_again_within_its_ttl_is_credited_and_its_run_grows(new_learner: Make) -> None:
    learner = new_learner()
    seen(learner, FAMILY, 1, 100.0, 1)
    again = seen(learner, FAMILY, 1, 200.0, 2)
    assert (again.run, again.known) == (2, True)
    third = seen(learner, FAMILY, 1, 450.0, 3)
    assert third.run == 3
    # The run-1 opportunity recurred: a new prefix of this family is now worth writing.
    fresh = seen(learner, FAMILY, 9, 460.0, 4)
    assert fresh.p > 1 / 3
    # Past the 5-minute TTL the run starts again, and the prefix counts as "late".
    late = learner.sight(FAMILY, static(1), 450.0 + 301.0, 5)[0]
    assert (late.run, late.late) == (1, True)
    assert late.p_late > 0.0


def test_a_sighting_before_the_last_sighters_response_begins_is_no_recurrence(new_learner: Make) -> None:
    learner = new_learner()
    first = learner.sight(FAMILY, static(1), 100.0, 1)[0]
    learner.release([1], 1)  # it does not write the prefix, and its response has not begun
    sibling = learner.sight(FAMILY, static(1), 100.5, 2)[0]
    # Not written by anyone (so not "writing"), and not a recurrence of the first sighting:
    # whatever the first request wrote, this one could not have read it.
    assert (sibling.run, sibling.writing) == (1, False)
    assert first.p == pytest.approx(1 / 3)
    assert sibling.p == pytest.approx(1 / 6)  # the first's opportunity is open, not credited
    learner.release([1], 2)
    learner.started([(1, 0.0)], 1, 101.0)
    learner.started([(1, 0.0)], 2, 101.0)
    after = learner.sight(FAMILY, static(1), 102.0, 3)[0]
    assert after.run == 2  # once the responses began, a sighting is a recurrence again
    assert not after.writing


def test_a_tail_sighted_again_before_the_last_sighters_response_begins_is_no_recurrence(
    new_learner: Make,
) -> None:
    # The same request sent several times at once (self-consistency samples, alternative
    # drafts): whatever one copy writes, the others could not read it. Its tail is not a
    # shared prefix (nobody claims it), but the copies are one sighting all the same.
    learner = new_learner()
    first = learner.sight(FAMILY, [Sighting(5, "tail_first")], 100.0, 1)[0]
    sibling = learner.sight(FAMILY, [Sighting(5, "tail_first")], 100.5, 2)[0]
    assert first.p == pytest.approx(1 / 3)
    assert sibling.run == 1
    assert sibling.p == pytest.approx(1 / 6)  # the first's opportunity is open, not credited
    learner.started([(5, 0.0)], 1, 101.0)
    learner.started([(5, 0.0)], 2, 101.0)
    after = learner.sight(FAMILY, [Sighting(5, "tail_first")], 102.0, 3)[0]
    assert after.run == 2  # once the responses began, a sighting is a recurrence again


def test_a_continued_conversation_starts_from_the_tail_prior(new_learner: Make) -> None:
    learner = new_learner()
    tail = learner.sight(FAMILY, [Sighting(5, "tail")], 100.0, 1)[0]
    assert tail.p == pytest.approx(2 / 3)  # Beta(2, 1): a continued conversation usually goes on


def test_a_new_family_starts_from_the_reuse_other_families_showed(new_learner: Make) -> None:
    learner = new_learner()
    for n in range(4):
        seen(learner, 1, 10, 100.0 + n, n + 1)
    other = learner.sight(2, static(20), 110.0, 9)[0]
    assert other.p > 1 / 3


def test_a_new_family_starts_from_what_other_families_settled_opportunities_showed(new_learner: Make) -> None:
    # A gateway whose tenants (families) each send prompts that never come back. While
    # their opportunities are open (within the TTL) they are no evidence for a new tenant,
    # which starts from the prior and writes; once they settled unreused, a new tenant
    # starts from them and does not write. A family with opportunities of its own keeps
    # the rule it had (its own evidence over the prior).
    learner = new_learner()
    for tenant in range(1, 4):
        seen(learner, tenant, 100 + tenant, 100.0 + tenant, tenant)
    assert learner.sight(4, static(104), 110.0, 4)[0].p == pytest.approx(1 / 3)
    later = 110.0 + TTL_5M + 1.0
    fresh = learner.sight(5, static(105), later, 5)[0]
    # Four settled, none reused: the posterior's mean plus one standard deviation.
    n = 1 + (1 + 0.85 + 0.85**2 + 0.85**3)
    mean = (1 / 3) / n
    assert fresh.p == pytest.approx(mean + math.sqrt(mean * (1 - mean) / (n + 1)))
    assert fresh.p < THRESHOLD
    assert learner.sight(1, static(111), later + 1.0, 6)[0].p == pytest.approx(1 / 6)
    # Opportunities that settled reused raise it: prefixes that came back within the TTL.
    for tenant in range(11, 14):
        seen(learner, tenant, 200 + tenant, later + 10.0, 100 + tenant)
        seen(learner, tenant, 200 + tenant, later + 20.0, 200 + tenant)
    assert learner.sight(20, static(220), later + 30.0, 300)[0].p > 1 / 3


def test_a_shared_prefix_is_claimed_until_its_response_starts(new_learner: Make) -> None:
    learner = new_learner()
    writer = learner.sight(FAMILY, static(1), 100.0, 1)[0]
    assert not writer.writing
    assert learner.claims() == 1  # type: ignore[attr-defined]
    sibling = learner.sight(FAMILY, static(1), 100.5, 2)[0]
    assert sibling.writing
    assert not sibling.cached
    assert learner.claims() == 1  # type: ignore[attr-defined]  # the sibling did not claim
    # The same request sighting again does not see its own claim.
    assert not learner.sight(FAMILY, static(1), 100.6, 1)[0].writing
    learner.started([(1, 300.0)], 1, 101.0)
    assert learner.claims() == 0  # type: ignore[attr-defined]
    after = learner.sight(FAMILY, static(1), 102.0, 3)[0]
    assert after.cached
    assert not after.writing
    # The provider did not keep it after all.
    learner.not_cached([1])
    assert not learner.sight(FAMILY, static(1), 103.0, 4)[0].cached


def test_a_released_claim_frees_the_prefix(new_learner: Make) -> None:
    learner = new_learner()
    learner.sight(FAMILY, static(1), 100.0, 1)
    learner.release([1], 1)
    assert learner.claims() == 0  # type: ignore[attr-defined]
    assert not learner.sight(FAMILY, static(1), 100.5, 2)[0].writing


def test_a_claim_expires_by_itself(new_learner: Make) -> None:
    # A process that died mid-request never releases: its claim stops counting.
    learner = new_learner()
    learner.sight(FAMILY, static(1), 100.0, 1)
    assert learner.sight(FAMILY, static(1), 100.0 + CLAIM_TIMEOUT - 1, 2)[0].writing
    assert not learner.sight(FAMILY, static(1), 100.0 + CLAIM_TIMEOUT + 1, 3)[0].writing


def test_a_failed_request_is_taken_back_and_its_retry_is_not_a_reuse(new_learner: Make) -> None:
    learner = new_learner()
    learner.sight(FAMILY, static(1), 100.0, 1)
    learner.void([1], 1)
    assert learner.claims() == 0  # type: ignore[attr-defined]
    retry = learner.sight(FAMILY, static(1), 101.0, 2)[0]
    assert retry.run == 1  # the same sighting again, not a second one
    # The voided opportunity was taken back: the family has one, not two.
    assert retry.p == pytest.approx(1 / 3)
    assert learner.sight(FAMILY, static(2), 102.0, 3)[0].p == pytest.approx(1 / 6)
    # Only the request that made the sighting can void it.
    learner.void([2], 99)
    assert learner.sight(FAMILY, static(3), 103.0, 4)[0].p < 0.25


def test_a_failed_request_releases_a_claim_it_made_while_another_sighting_was_open(
    new_learner: Make,
) -> None:
    # Request 1 sighted the shared prefix and does not write it (its claim becomes a
    # sighting); request 2, planned before 1's response began, claims it and then fails.
    learner = new_learner()
    learner.sight(FAMILY, static(1), 100.0, 1)
    learner.release([1], 1)
    assert not learner.sight(FAMILY, static(1), 100.5, 2)[0].writing
    assert learner.claims() == 1  # type: ignore[attr-defined]
    learner.void([1], 2)  # a 429: nothing was written, its claim ends with it
    assert learner.claims() == 0  # type: ignore[attr-defined]
    # Its retry (and every other request) may write the prefix, not 120 s later.
    assert not learner.sight(FAMILY, static(1), 101.0, 3)[0].writing


def test_a_failed_requests_opportunity_is_taken_back_from_the_pool_too(new_learner: Make) -> None:
    # The pool is the families' counts summed: a failed request's opportunity, taken back
    # from its family's, leaves the pool too, or every 429 and its retry count twice there
    # and lower the prior of every new family.
    learner = new_learner()
    f = 0.85
    learner.sight(FAMILY, static(1), 100.0, 1)
    learner.started([(1, 300.0)], 1, 101.0)
    learner.sight(FAMILY, static(1), 110.0, 2)  # came back: static run 1 is (1 recurred, 1 seen)
    learner.sight(FAMILY, static(5), 120.0, 3)  # (f, f + 1)
    learner.void([5], 3)  # (f, f): taken back
    recurred, seen = f, f
    pooled = (recurred + 1 / 3) / (seen + 1)
    assert learner.recurrence(FAMILY + 1, "static", 1, 121.0) == pytest.approx(pooled)  # type: ignore[attr-defined]


def test_reads_that_do_not_happen_lower_the_familys_reliability(new_learner: Make) -> None:
    learner = new_learner()
    before = learner.sight(FAMILY, static(1), 100.0, 1)[0]
    assert before.reliability == 1.0
    for _ in range(5):
        learner.feedback(FAMILY, 1, 0)
    after = learner.sight(FAMILY, static(2), 101.0, 2)[0]
    assert after.reliability < 0.3
    assert after.p == pytest.approx(after.reliability / 6)
    learner.feedback(FAMILY, 0, 0)  # nothing expected: nothing learnt
    assert learner.sight(FAMILY, static(3), 102.0, 3)[0].reliability == pytest.approx(after.reliability)


def test_learned_minimums_move_through_the_tiers_and_are_forgotten(new_learner: Make) -> None:
    learner = new_learner()
    assert learner.learned_minimum("anthropic\x00m") == 0
    learner.raise_minimum("anthropic\x00m", 1_500.0)
    assert learner.learned_minimum("anthropic\x00m") == 2_048
    learner.raise_minimum("anthropic\x00m", 900.0)  # never lowered by a smaller prefix
    assert learner.learned_minimum("anthropic\x00m") == 2_048
    learner.raise_minimum("anthropic\x00m", 3_000.0)
    assert learner.learned_minimum("anthropic\x00m") == 4_096
    assert learner.learned_minimum("anthropic\x00other") == 0
    learner.lower_minimum("anthropic\x00m")
    assert learner.learned_minimum("anthropic\x00m") == 0


def test_a_block_that_changes_every_time_is_found_and_a_first_line_told_apart(new_learner: Make) -> None:
    learner = new_learner()
    stable = b"s" * 16
    assert learner.stability(FAMILY, [b"a" * 16, stable], {}) == (None, False, False)
    assert learner.stability(FAMILY, [b"b" * 16, stable], {}) == (None, False, False)
    assert learner.volatile_candidates(FAMILY) == {0}  # type: ignore[attr-defined]
    # Seen changing in 3 observations of 4 (forgotten): volatile.
    assert learner.stability(FAMILY, [b"c" * 16, stable], {0: (b"head1", b"rest")}) == (None, False, False)
    # Its first line keeps changing, the rest of the block does not.
    assert learner.stability(FAMILY, [b"d" * 16, stable], {0: (b"head2", b"rest")}) == (0, True, False)
    assert learner.stability(FAMILY, [b"e" * 16, stable], {0: (b"head3", b"other")}) == (0, False, False)
    # Another family knows nothing of it.
    assert learner.stability(FAMILY + 1, [b"a" * 16, stable], {}) == (None, False, False)
    # The prompt settles: the block is stable again after a few requests.
    settled = [learner.stability(FAMILY, [b"f" * 16, stable], {})[0] for _ in range(8)]
    assert settled[0] == 0
    assert settled[-1] is None


def test_a_conversation_is_linked_to_its_previous_request(new_learner: Make) -> None:
    learner = new_learner()
    assert learner.conversation(42, 1, None, False, 100.0)[0] is None
    assert learner.conversation(42, 1, b"reply", True, 110.0)[0][:3] == (1, None, False)
    assert learner.conversation(42, 1, b"reply", True, 120.0)[0][:3] == (1, b"reply", True)
    # No static prefix is recorded as -1.
    assert learner.conversation(43, None, None, False, 120.0)[0] is None
    assert learner.conversation(43, 5, None, False, 121.0)[0][:3] == (-1, None, False)
    # An hour later it is no longer the same conversation (but steadiness carries on).
    assert learner.conversation(42, 1, b"reply", True, 120.0 + TTL_1H + 1)[0] is None


def test_what_a_request_sent_unmarked_is_held_by_the_implicit_cache_for_5_minutes(new_learner: Make) -> None:
    learner = new_learner()
    assert not learner.sight(FAMILY, static(1), 100.0, 1)[0].implicit
    # Its response begins: an implicit cache (DashScope's) holds what it sent unmarked.
    learner.started([(1, 0.0)], 1, 100.5, [1, 99])  # 99: never sighted, nothing to hold
    assert learner.sight(FAMILY, static(1), 200.0, 2)[0].implicit
    assert not learner.sight(FAMILY, static(99), 200.0, 2)[0].implicit
    learner.started([], 2, 200.5)  # sent marked: the implicit cache holds nothing more
    assert learner.sight(FAMILY, static(1), 400.4, 3)[0].implicit
    assert not learner.sight(FAMILY, static(1), 400.6, 4)[0].implicit  # 5 minutes after 100.5
    assert not learner.sight(FAMILY, static(1), 400.6, 4)[0].cached  # the explicit cache: apart


def test_the_implicit_caches_hit_rate_is_learnt_from_the_bills_per_model(new_learner: Make) -> None:
    learner = new_learner()
    assert learner.implicit_hit_rate("p\x00m") == 1.0  # until a bill says otherwise
    learner.implicit_read("p\x00m", False)
    learner.implicit_read("p\x00m", False)
    # (0 + 1) / (1.85 + 1): two misses, forgotten at 0.85.
    assert learner.implicit_hit_rate("p\x00m") == pytest.approx(1.0 / 2.85)
    learner.implicit_read("p\x00m", True)
    assert learner.implicit_hit_rate("p\x00m") == pytest.approx(2.0 / (1.85 * 0.85 + 2.0))
    assert learner.implicit_hit_rate("p\x00other") == 1.0


def test_what_was_not_seen_for_max_age_is_forgotten(new_learner: Make) -> None:
    learner = new_learner(max_age=MAX_AGE)
    learner.sight(FAMILY, static(1), 100.0, 1)
    learner.conversation(42, 1, None, False, 100.0)
    assert learner.sight(FAMILY, static(1), 100.0 + MAX_AGE - 1, 2)[0].known
    later = 100.0 + 2 * MAX_AGE
    assert not learner.sight(FAMILY, static(1), later, 3)[0].known
    assert learner.conversation(42, 1, None, False, later)[0] is None
    assert learner.conversation(42, 1, None, False, later + 1)[0][:3] == (1, None, False)


# -- both implementations give the same answers, call for call ---------------------------


def _replay(learner: LearningState, seed: int, steps: int) -> list[Any]:
    """A random but reproducible sequence of planner calls; returns every answer."""
    rng = random.Random(seed)
    kinds = ("static", "tail_first", "tail", "document", "previous_turn")
    # A request's sightings: static prefixes first (a stable part, the whole region), then
    # the rest, first tails of every size class among them, so that first tails are sighted
    # under static prefixes, come back before or after their TTL or never, and are settled.
    # (A hedge is sighted where a stable part would be, with statistics of its own.)
    first = ("stable", "static", "hedge")
    rest = (*kinds, "tail_first:1", "tail_first:3", "tail:2")
    now = 1_000.0
    ticket = 0
    open_tickets: list[tuple[int, list[int]]] = []
    out: list[Any] = []
    for _ in range(steps):
        now += rng.choice(
            (0.0, 0.5, 3.0, 40.0, 200.0, 299.0, 300.0, 301.0, 900.0, 3_000.0, 3_600.0, 3_700.0, 8_000.0)
        )
        op = rng.random()
        # Mostly three families; now and then a new one, whose prior comes from what every
        # family's settled opportunities showed.
        family = rng.randint(1, 3) if rng.random() < 0.8 else rng.randint(4, 60)
        if op < 0.45:
            ticket += 1
            n = rng.randint(1, 4)
            keys = rng.sample(range(1, 25), n)
            sightings = [
                Sighting(k, rng.choice(first if i < 2 and rng.random() < 0.5 else rest), rng.random() < 0.5)
                for i, k in enumerate(keys)
            ]
            out.append(learner.sight(family, sightings, now, ticket))
            if rng.random() < 0.5:
                # The plan does not write some of what it claimed: they become sightings
                # (the planner's release, at once; concurrent requests then find them).
                learner.release(keys[: rng.randint(1, len(keys))], ticket)
            if rng.random() < 0.1:
                # A second sight by the same request (a previous model's tail, as a previous turn).
                extra = rng.choice([k for k in range(1, 25) if k not in keys])
                out.append(learner.sight(family, [Sighting(extra, "previous_turn")], now, ticket))
                keys = [*keys, extra]
            open_tickets.append((ticket, keys))
        elif op < 0.60 and open_tickets:
            t, keys = open_tickets.pop(rng.randrange(len(open_tickets)))
            # A TTL of 0: sighted, not marked (its claim released, its sighting ends).
            marked = [(k, rng.choice((300.0, 3_600.0, 0.0))) for k in keys if rng.random() < 0.8]
            if rng.random() < 0.3:
                # Sent unmarked to an implicit cache: it holds them (a key or two never sighted).
                learner.started(marked, t, now, [*keys, rng.randint(25, 30)])
            else:
                learner.started(marked, t, now)
            out.append(("started", t))
        elif op < 0.66 and open_tickets:
            t, keys = open_tickets.pop()  # the latest request failed (its retry may follow)
            learner.void(keys, t)
        elif op < 0.70 and open_tickets:
            t, keys = open_tickets[rng.randrange(len(open_tickets))]
            learner.release(keys[: rng.randint(1, len(keys))], t)
        elif op < 0.74:
            learner.not_cached(rng.sample(range(1, 25), 2))
        elif op < 0.80:
            expected = rng.randint(0, 3)
            learner.feedback(family, expected, rng.randint(0, expected))
        elif op < 0.84:
            key = f"p\x00m{rng.randint(1, 2)}"
            if rng.random() < 0.3:  # a bill that expected an implicit read
                learner.implicit_read(key, rng.random() < 0.5)
                out.append(learner.implicit_hit_rate(key))
            choice = rng.random()
            if choice < 0.4:
                learner.raise_minimum(key, rng.uniform(300, 9_000))
            elif choice < 0.6:
                learner.lower_minimum(key)
            out.append(learner.learned_minimum(key))
        elif op < 0.93:
            blocks = [bytes([rng.randint(0, 2)]) * 16 for _ in range(rng.randint(1, 4))]
            lines = {i: (bytes([rng.randint(0, 3)]), bytes([rng.randint(0, 1)])) for i in range(len(blocks))}
            out.append(learner.volatile_candidates(family))  # type: ignore[attr-defined]
            out.append(learner.stability(family, blocks, lines if rng.random() < 0.5 else {}))
        else:
            # A few requests of one conversation, minutes apart, each to one of a few models.
            conversation = rng.randint(1, 4)
            for _ in range(rng.randint(1, 6)):
                now += rng.choice((0.0, 3.0, 40.0, 200.0))
                reply = rng.choice((None, b"r1", b"r2"))
                # Model tags are 64-bit digests (0: no model).
                model = rng.choice((0, 7, 8, 9, 10, 2**64 - 3))
                out.append(
                    learner.conversation(
                        conversation,
                        rng.choice((None, 1, 2)),
                        reply,
                        rng.random() < 0.5,
                        now,
                        model,
                        rng.choice((-1, 3, 4, 2**20)),
                        rng.choice((1, 2, 3)),
                        rng.choice(("", "", "tail:2", "tail:3")),
                    )
                )
        if rng.random() < 0.05:
            out.append(("claims", learner.claims()))  # type: ignore[attr-defined]
    for family in (1, 2, 3, 999):
        out += [learner.recurrence(family, k, run, now) for k in (*first, *rest) for run in (1, 2, 3)]  # type: ignore[attr-defined]
        out.append(learner.reliability(family))  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_redis_and_memory_give_the_same_answers_to_the_same_calls(redis_port: int, seed: int) -> None:
    memory = MemoryLearner(max_age=MAX_AGE)
    shared = RedisLearner(
        redis.Redis(port=redis_port), key_prefix=f"replay:{seed}:{time.monotonic_ns()}:", timeout=10.0
    )
    try:
        expected = _replay(memory, seed, 400)
        got = _replay(shared, seed, 400)
        assert shared.faults == 0
        for n, (a, b) in enumerate(zip(expected, got, strict=True)):
            assert a == b, f"call {n}: {a!r} != {b!r}"  # exact: the same floats
    finally:
        shared.clear()


def _first_tails_at_once(learner: LearningState) -> list[Sight]:
    # Two first turns under static prefix 1 sighted at one clock reading (two requests, or a
    # clock that ticks coarsely): tail 9 goes on, tail 10 does not. Their TTLs end at once,
    # and the order they are counted in sets the prefix's (forgotten) count.
    for ticket, tail in ((1, 9), (2, 10)):
        learner.sight(FAMILY, [Sighting(1, "static", True), Sighting(tail, "tail_first")], 1_000.0, ticket)
        learner.started([(1, 300.0), (tail, 0.0)], ticket, 1_000.0)
    learner.sight(FAMILY, [Sighting(1, "static", True), Sighting(9, "previous_turn")], 1_100.0, 3)
    learner.started([(1, 300.0), (9, 0.0)], 3, 1_100.0)
    return learner.sight(FAMILY, [Sighting(1, "static", True), Sighting(11, "tail_first")], 1_400.0, 4)


def test_first_tails_whose_ttls_end_at_once_are_settled_alike_in_memory_and_redis(redis_port: int) -> None:
    # The memory heap ordered such tails by their key as a number, Redis' sorted set by
    # their key as text ("10" < "9"): one counted (went on, did not), the other (did not,
    # went on), and the next first tail under that prefix got another estimate.
    shared = RedisLearner(
        redis.Redis(port=redis_port), key_prefix=f"ties:{time.monotonic_ns()}:", timeout=10.0
    )
    try:
        expected = _first_tails_at_once(MemoryLearner(max_age=MAX_AGE))
        got = _first_tails_at_once(shared)
        assert shared.faults == 0
        assert got == expected
    finally:
        shared.clear()


# -- what only a shared state does --------------------------------------------------------


@pytest.fixture
def shared(redis_port: int) -> Iterator[Callable[..., RedisLearner]]:
    prefix = f"shared:{time.monotonic_ns()}:"
    made: list[RedisLearner] = []

    def make(**options: Any) -> RedisLearner:
        learner = RedisLearner(redis.Redis(port=redis_port), key_prefix=prefix, timeout=10.0, **options)
        made.append(learner)
        return learner

    yield make
    made[0].clear()
    assert all(learner.faults == 0 for learner in made)


def test_two_instances_claim_a_prefix_once_whatever_their_ticket_numbers(
    shared: Callable[..., RedisLearner],
) -> None:
    # Two processes number their requests from 1: the same ticket number is not the same request.
    a, b = shared(), shared()
    assert not a.sight(FAMILY, static(1), 100.0, 1)[0].writing
    assert b.sight(FAMILY, static(1), 100.1, 1)[0].writing
    b.started([(1, 300.0)], 1, 100.2)  # b did not claim it: a's claim stays
    assert a.claims() == 1
    a.started([(1, 300.0)], 1, 100.3)
    assert b.sight(FAMILY, static(1), 100.4, 2)[0].cached


def test_what_one_instance_sent_unmarked_another_finds_in_the_implicit_cache(
    shared: Callable[..., RedisLearner],
) -> None:
    # The processes behind one key share the provider's implicit cache: and what it holds.
    a, b = shared(), shared()
    a.sight(FAMILY, static(5), 100.0, 1)
    assert not b.sight(FAMILY, static(5), 100.1, 1)[0].implicit
    a.started([(5, 0.0)], 1, 100.2, [5])
    assert b.sight(FAMILY, static(5), 100.3, 2)[0].implicit
    assert not b.sight(FAMILY, static(5), 400.3, 3)[0].implicit


def test_the_implicit_caches_hit_rate_one_instance_learnt_reaches_another(
    shared: Callable[..., RedisLearner],
) -> None:
    a, b = shared(), shared()
    assert b.implicit_hit_rate("p\x00m") == 1.0
    a.implicit_read("p\x00m", False)
    a.implicit_read("p\x00m", False)
    # b's next decision brings the counts (with the learned minimum: no extra round trip).
    ask(
        b,
        FAMILY,
        static(1),
        lambda: 100.0,
        1,
        model_key="p\x00m",
        blocks=(),
        lines_for=lambda _: {},
        conversation=None,
    )
    assert b.implicit_hit_rate("p\x00m") == pytest.approx(1.0 / 2.85)


def test_a_process_expects_the_implicit_read_of_what_another_process_sent_unmarked(
    shared: Callable[..., RedisLearner],
) -> None:
    # Two processes behind one DashScope key (OpenAI-compatible mode: unmarked requests fill
    # an implicit cache, which the key's processes share) and no session affinity: each
    # conversation's first turn goes to one process, its second to the other. A process
    # that sends the second turn unmarked expects the implicit cache to serve the first
    # turn's prefix (its bill then measures the cache's hit rate): what the other process
    # sent, which only a shared learner knows of.
    clock = ManualClock(1_000.0)
    a, b = Planner(clock=clock, learner=shared()), Planner(clock=clock, learner=shared())
    where = {
        "api": "chat_completions",
        "host": "dashscope.aliyuncs.com",
        "path": "/compatible-mode/v1/chat/completions",
    }
    expected: list[float] = []
    for n in range(6):
        system = {"role": "system", "content": " ".join(f"app{n}w{i}" for i in range(3_000))}
        first = {"role": "user", "content": f"question {n}"}
        turns = ([system, first], [system, first, {"role": "assistant", "content": "an answer"}, first])
        for planner, messages in zip((a, b), turns, strict=True):
            plan = planner.plan(
                body=json.dumps({"model": "qwen3.6-plus", "messages": messages}).encode(), **where
            )
            marked = any(p.action == "inserted" for p in plan.placements)
            if marked:
                usage = TokenUsage(input=200, cache_write_5m=4_000)
            elif plan.ticket is not None and plan.ticket.implicit_read_raw > 0:
                usage = TokenUsage(input=200, cache_read=4_000)  # the implicit cache served it
            else:
                usage = TokenUsage(input=4_200)
            planner.started(plan)
            planner.finished(plan, usage)
            planner.observe(plan, usage)
            if planner is b and not marked:
                assert plan.ticket is not None
                expected.append(plan.ticket.implicit_read_raw)
            clock.advance(20.0)
    assert len(expected) >= 3, expected  # b sends most second turns unmarked
    assert all(raw > 0 for raw in expected), expected


def test_of_many_threads_sighting_a_cold_prefix_at_once_exactly_one_claims_it(
    shared: Callable[..., RedisLearner],
) -> None:
    learners = [shared() for _ in range(8)]
    barrier = threading.Barrier(len(learners))
    writers: list[bool] = []
    lock = threading.Lock()

    def plan(learner: RedisLearner) -> None:
        barrier.wait(30)
        sight = learner.sight(FAMILY, static(77), 100.0, 1)[0]
        with lock:
            writers.append(not sight.writing and not sight.cached)

    threads = [threading.Thread(target=plan, args=(learner,)) for learner in learners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(writers) == [False] * 7 + [True]


def test_a_learned_minimum_reaches_other_instances_with_their_next_sight(
    shared: Callable[..., RedisLearner],
) -> None:
    a, b = shared(), shared()
    assert b.learned_minimum("m") == 0  # read once, then held locally
    a.raise_minimum("m", 1_500.0)
    b.sight(FAMILY, static(1), 100.0, 1)  # the minimums' version rides on the sight
    assert b.learned_minimum("m") == 2_048


def test_the_shared_state_is_bounded_and_holds_no_content(shared: Callable[..., RedisLearner]) -> None:
    learner = shared(max_families=3)
    client = learner.client
    for family in range(10):
        learner.sight(
            family, [Sighting(1000 + family, "static", True), Sighting(2000 + family, "tail")], 100.0, family
        )
        learner.stability(family, [b"\x01" * 16], {})
        learner.feedback(family, 1, 1)
    learner.conversation(5, 1000, b"\x02" * 16, True, 100.0)
    names = sorted(n.decode() for n in client.scan_iter(match=learner.prefix + "*"))
    families = [n for n in names if n.startswith(learner.prefix + "f:")]
    assert families == [learner.prefix + f"f:{n}" for n in (7, 8, 9)]  # the 3 most recent
    assert client.zcard(learner.prefix + "fams") == 3
    for name in names:
        kind = name[len(learner.prefix) :].partition(":")[0]
        # Every key is a digest or a fixed name.
        assert name[len(learner.prefix) :].replace(":", "").isalnum(), name
        if kind in ("p", "c"):  # the ledger and conversations expire after max_age (plus a margin)
            assert 0 < client.ttl(name) <= MAX_AGE + 60
        if kind == "f":
            assert client.ttl(name) > 0


def test_families_counted_only_by_conversations_are_capped_too(shared: Callable[..., RedisLearner]) -> None:
    # The planner counts a conversation's changes for its scope's family, which no sight
    # touches (a gateway's tenants): those family hashes are capped by max_families as well.
    learner = shared(max_families=3)
    client = learner.client
    for scope in range(10):
        for n in range(3):  # continued requests: the scope family's "goes on" counts
            learner.conversation(500 + scope, 1, None, True, 100.0 + n, 0, -1, 9_000 + scope)
    families = sorted(n.decode() for n in client.scan_iter(match=learner.prefix + "f:*"))
    assert len(families) <= 3, families
    assert client.zcard(learner.prefix + "fams") <= 3


def test_a_claim_whose_end_was_answered_locally_ends_in_redis_once_it_answers(
    shared: Callable[..., RedisLearner],
) -> None:
    # Process a claims a shared prefix in Redis; the call that says its response started
    # fails (a 50 ms timeout): the claim must not hold the whole fleet off the prefix for
    # CLAIM_TIMEOUT. It ends in Redis with a's next call that reaches it.
    a, b = shared(retry_after=0.0), shared()
    assert not a.sight(FAMILY, static(1), 100.0, 1)[0].writing
    real = a._script
    calls = []

    def lost(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise redis.TimeoutError("Timeout reading from socket")
        return real(*args, **kwargs)

    a._script = lost  # type: ignore[method-assign]
    a.started([(1, 300.0)], 1, 101.0)  # answered locally: the fault is counted
    assert a.faults == 1
    a.faults = 0  # (the fixture fails a test whose learners faulted)
    a.sight(FAMILY, static(2), 102.0, 2)  # a reaches Redis again
    assert a.claims() == 1  # prefix 2's claim only
    later = b.sight(FAMILY, static(1), 103.0, 1)[0]
    assert not later.writing
    assert later.cached  # what a wrote is readable: its response started at 101


def _learner_on(
    port: int, *, timeout: float = 0.05, retry_after: float = 60.0
) -> tuple[RedisLearner, list[str]]:
    faults: list[str] = []
    learner = RedisLearner(
        redis.Redis(port=port),
        key_prefix="down:",
        timeout=timeout,
        retry_after=retry_after,
        on_fault=lambda stage, exc: faults.append(f"{stage}:{type(exc).__name__}"),
    )
    return learner, faults


def _exercise(learner: LearningState) -> list[Any]:
    out: list[Any] = [learner.sight(FAMILY, static(1), 100.0, 1), learner.sight(FAMILY, static(1), 100.5, 2)]
    learner.started([(1, 300.0)], 1, 101.0)
    learner.release([1], 2)
    learner.void([1], 2)
    learner.not_cached([3])
    learner.feedback(FAMILY, 1, 0)
    learner.raise_minimum("m", 1_500.0)
    out += [
        learner.sight(FAMILY, static(1), 102.0, 3),
        learner.learned_minimum("m"),
        learner.stability(FAMILY, [b"a"], {}),
        learner.conversation(4, 1, None, False, 103.0),
    ]
    return out


def test_with_redis_down_every_call_is_answered_locally_and_the_fault_counted() -> None:
    learner, faults = _learner_on(free_port())  # nothing listens there
    got = _exercise(learner)
    assert got == _exercise(MemoryLearner(max_age=MAX_AGE))  # the local state, the same answers
    # One fault, then Redis is left alone for retry_after: no call waits on it meanwhile.
    assert faults == ["learner:ConnectionError"]
    assert learner.faults == 1


def test_a_redis_that_stops_answering_times_out_and_is_used_again_once_it_answers() -> None:
    with redis_server() as port:
        learner, faults = _learner_on(port, retry_after=0.0)
        learner.sight(FAMILY, static(1), 100.0, 1)  # in Redis
        admin = redis.Redis(port=port, socket_timeout=30.0)
        admin.execute_command("CLIENT", "PAUSE", 3_000, "ALL")  # a hung Redis, for 3 s
        paused = learner.sight(FAMILY, static(1), 101.0, 2)[0]
        assert not paused.known  # answered by the local state
        assert faults == ["learner:TimeoutError"]
        assert admin.ping()  # returns once the pause is over
        back = learner.sight(FAMILY, static(1), 102.0, 3)[0]
        assert back.known  # from Redis again
        assert faults == ["learner:TimeoutError"]


def test_a_fault_callback_that_raises_does_not_reach_the_planner() -> None:
    def broken(stage: str, exc: BaseException) -> None:
        raise RuntimeError("callback")

    learner = RedisLearner(redis.Redis(port=free_port()), key_prefix="x:", timeout=0.05, on_fault=broken)
    assert learner.sight(FAMILY, static(1), 100.0, 1)[0].run == 1


# -- what each policy rule learns from (each case failed before its fix) ------------------------


def test_a_family_that_never_reuses_stops_whatever_the_other_families_reuse(new_learner: Make) -> None:
    # A busy family whose every new prefix comes back raises the kind's pooled rate to ~1;
    # a prior borrowed from it at weight 3 held a never-reusing family over the threshold
    # (11 static, 34 tail writes in 120 opportunities). At weight 1 its own evidence decides:
    # even at a borrowed mean of 1, 1 / (1 + 0.85^0 + ... + 0.85^(k-1)) is under the 0.217
    # break-even from the sixth opportunity on, so at most 5 writes.
    for kind in ("static", "tail"):
        learner = new_learner()
        now, ticket, written = 100.0, 1, 0
        for i in range(120):
            for j in range(10):
                for _ in range(2):
                    learner.sight(1, [Sighting(10_000 + i * 100 + j, kind)], now, ticket)
                    learner.release([10_000 + i * 100 + j], ticket)
                    ticket += 1
                    now += 0.1
            sight = learner.sight(2, [Sighting(900_000 + i, kind)], now, ticket)[0]
            learner.release([900_000 + i], ticket)
            ticket += 1
            written += sight.p >= THRESHOLD
        assert written <= 5, kind


def test_a_conversation_steady_once_that_then_changes_on_every_request_is_unstable_again(
    new_learner: Make,
) -> None:
    learner = new_learner()
    learner.conversation(42, 1, None, False, 100.0)
    learner.conversation(42, 1, b"r", True, 110.0)  # kept its prefix: a steady step
    assert learner.conversation(42, 2, b"r", False, 120.0)[0][:3] == (1, b"r", True)  # a one-time edit
    # From then on its static prefix changes on every request: no longer steady.
    assert learner.conversation(42, 3, b"r", False, 130.0)[0][:3] == (2, b"r", False)
    assert learner.conversation(42, 4, b"r", False, 140.0)[0][:3] == (3, b"r", False)


def test_a_switch_of_model_is_no_evidence_about_a_conversation(new_learner: Make) -> None:
    learner = new_learner()
    learner.conversation(42, 1, None, False, 100.0, 7)
    # The next turn goes to another model: its static prefix and previous turn are new
    # to that model's cache, which says nothing of the prompt.
    assert learner.conversation(42, 2, b"r", False, 110.0, 8)[0] is None
    assert learner.conversation(42, 2, b"r", True, 120.0, 8)[0][:3] == (2, b"r", False)


def test_a_conversation_remembers_where_each_models_last_request_ended(new_learner: Make) -> None:
    learner = new_learner()
    assert learner.conversation(42, 1, None, False, 100.0, 7, 3) == (None, -1)
    # The next request goes to model 8: model 7's tail is that of the previous request.
    assert learner.conversation(42, 1, b"r", False, 110.0, 8, 5) == (None, -1)
    # Back to model 7 after a switch: where its last request ended (position 3).
    assert learner.conversation(42, 1, b"r", False, 120.0, 7, 7) == (None, 3)
    # Staying on model 7: its previous turn is the previous request's tail, nothing earlier.
    before, earlier = learner.conversation(42, 1, b"r", True, 130.0, 7, 9)
    assert (before[:3] if before else None, earlier) == ((1, b"r", False), -1)
    assert learner.conversation(42, 1, b"r", True, 140.0, 8, 11) == (None, 5)
    # A request without a tail (-1) leaves none to find.
    learner.conversation(42, 1, b"r", True, 150.0, 9, -1)
    assert learner.conversation(42, 1, b"r", True, 160.0, 7, 13) == (None, 9)
    assert learner.conversation(42, 1, b"r", True, 170.0, 9, 15) == (None, -1)
    # The record keeps the tails of CONVERSATION_MODELS models: the least recent drops out.
    for n, model in enumerate((10, 11, 12)):
        learner.conversation(42, 1, b"r", True, 180.0 + n, model, 17 + n)
    assert learner.conversation(42, 1, b"r", True, 190.0, 7, 21) == (None, -1)  # 7 dropped out
    assert learner.conversation(42, 1, b"r", True, 191.0, 11, 23) == (None, 18)
    # An hour after its last request to a model, its tail is no longer looked for.
    assert learner.conversation(42, 1, b"r", True, 182.0 + TTL_1H, 12, 25) == (None, 19)
    assert learner.conversation(42, 1, b"r", True, 183.0 + TTL_1H, 10, 27) == (None, -1)


def test_a_conversation_back_to_a_static_prefix_it_had_switches_lanes(new_learner: Make) -> None:
    learner = new_learner()
    assert learner.conversation(42, 1, None, False, 100.0, 7, 3) == (None, -1)
    # A static prefix not seen before is a change of the conversation's prompt.
    before, earlier = learner.conversation(42, 2, b"r", False, 110.0, 7, 5)
    assert (before[:3] if before else None, earlier) == ((1, None, False), -1)
    # Back to the static prefix it had (a supervisor and a worker taking turns over one
    # history): no evidence either way, and that prefix's last tail is looked for.
    assert learner.conversation(42, 1, b"r", False, 120.0, 7, 7) == (None, 3)
    assert learner.conversation(42, 2, b"r", False, 130.0, 7, 9) == (None, 5)
    assert learner.conversation(42, 1, b"r", False, 140.0, 7, 11) == (None, 7)
    # Staying in a lane: its previous turn is the previous request's tail.
    before, earlier = learner.conversation(42, 1, b"r", True, 150.0, 7, 13)
    assert (before[:3] if before else None, earlier) == ((1, b"r", False), -1)
    # A new static prefix (a timestamp) is a change again, whatever the lanes before.
    before, earlier = learner.conversation(42, 3, b"r", True, 160.0, 7, 15)
    assert (before[:3] if before else None, earlier) == ((1, b"r", True), -1)
    # Another model: the tail of its last request, as before.
    assert learner.conversation(42, 3, b"r", True, 170.0, 8, 17) == (None, -1)
    assert learner.conversation(42, 3, b"r", True, 180.0, 7, 19) == (None, 15)


def test_a_conversation_taking_turns_between_lanes_is_judged_per_lane(new_learner: Make) -> None:
    # A plan mode and an act mode (two tool sets) take turns over one history, every ten
    # seconds. Each conversation's first switch is to a static prefix not seen before: its
    # first request's prompt changed. Every later request is back to a lane it had, whose
    # last request's prefix held: what an unsettled request left for another lane is judged
    # by its lane's next request, and the conversation goes on whatever its lane.
    learner = new_learner()
    now = 100.0
    for c in range(1, 6):
        for i in range(8):
            learner.conversation(c, 1 + i % 2, None if i == 0 else b"r", True, now, tail=i, family=FAMILY)
            now += 10.0
    learner.conversation(9, 1, None, True, now, tail=0, family=FAMILY)
    before, earlier = learner.conversation(9, 2, b"r", True, now + 10.0, tail=1, family=FAMILY)
    assert before is not None
    assert earlier == -1
    unsettled, goes_on = before[3], before[4]
    # Five "changed" judgements (a first request, then a new static prefix) against thirty
    # "held" ones; every continued request followed within seconds but each conversation's
    # last (counted pessimistically).
    assert unsettled < 0.3
    assert goes_on > 0.7
    assert goes_on * (1.0 - unsettled) > 0.28 * 2
    # Back to a lane more than 5 minutes after its last request says nothing of it.
    learner = new_learner()
    learner.conversation(1, 1, None, True, 100.0, tail=0, family=FAMILY)
    learner.conversation(1, 2, b"r", True, 110.0, tail=1, family=FAMILY)
    learner.conversation(1, 1, b"r", True, 120.0, tail=2, family=FAMILY)
    learner.conversation(2, 1, None, True, 130.0, tail=0, family=FAMILY)
    first = learner.conversation(2, 2, b"r", True, 140.0, tail=1, family=FAMILY)[0]
    learner.conversation(1, 2, b"r", True, 120.0 + 301.0, tail=3, family=FAMILY)
    learner.conversation(3, 1, None, True, 500.0, tail=0, family=FAMILY)
    later = learner.conversation(3, 2, b"r", True, 510.0, tail=1, family=FAMILY)[0]
    assert first is not None
    assert later is not None
    assert later[3] >= first[3]


def test_a_conversation_is_told_by_its_whole_static_region(new_learner: Make) -> None:
    # With a static block that keeps changing, the planner sights two static prefixes: the
    # part before that block (kind "stable") and the whole static region. Where the first
    # ends moves with the traffic (a tool list reordered at random); the conversation's
    # static prefix is the whole region's, so the conversation stays steady while it holds.
    learner = new_learner()

    def request(stable: int, at: float, reply: bytes | None) -> Any:
        sightings = [
            Sighting(stable, "stable", True),
            Sighting(99, "static", True),
            Sighting(500, "tail", False),
        ]
        return ask(
            learner,
            FAMILY,
            sightings,
            lambda: at,
            int(at),
            model_key=None,
            blocks=[],
            lines_for=lambda volatile: {},
            conversation=(7, reply, 0, 2, FAMILY, ""),
        )[2]

    assert request(11, 100.0, None) is None
    before = request(12, 110.0, b"r")
    assert before is not None
    assert before[0] == 99


def test_the_late_statistic_is_settled_by_the_next_idle_gap_not_by_uses_within_minutes(
    new_learner: Make,
) -> None:
    learner = new_learner()
    key = [Sighting(5, "static", True)]

    def use(at: float, ticket: int) -> float:
        return float(seen(learner, FAMILY, 5, at, ticket).p_late)

    use(100.0, 1)
    first = use(100.0 + 420, 2)  # back after 7 minutes: late, the prior (1/3 at most)
    assert 0.0 < first <= 1 / 3
    # Uses within minutes of that return say nothing of the next idle gap: the open
    # opportunity stays unsettled (at most the prior of mean 1/3, weight 3, over it).
    assert use(530.0, 3) <= 0.25
    assert use(540.0, 4) <= 0.25
    # Back again 7 minutes later: that gap ended within the hour (the estimate is the
    # posterior's lower bound).
    assert use(540.0 + 420, 5) > 0.25
    assert learner.sight(FAMILY, key, 960.0 + TTL_1H + 60, 6)[0].p_late < 0.53


def test_a_prefix_cached_at_1h_is_reported_so(new_learner: Make) -> None:
    learner = new_learner()
    key = [Sighting(5, "static", True)]
    learner.sight(FAMILY, key, 100.0, 1)
    learner.started([(5, TTL_1H)], 1, 101.0)
    sight = learner.sight(FAMILY, key, 1_000.0, 2)[0]
    assert (sight.cached, sight.cached_1h) == (True, True)


def test_a_prefix_written_at_5m_after_its_1h_entry_expired_is_cached_at_5m(new_learner: Make) -> None:
    # The entry's TTL is that of the write that made it: one written 1h long ago says
    # nothing of the 5m entry written since (believed 1h, it would be marked 1h, and its
    # next return after 5 minutes expected to read what expired).
    learner = new_learner()
    key = [Sighting(5, "static", True)]
    learner.sight(FAMILY, key, 100.0, 1)
    learner.started([(5, TTL_1H)], 1, 101.0)
    later = 101.0 + TTL_1H + 60  # the 1h entry expired
    assert not learner.sight(FAMILY, key, later, 2)[0].cached
    learner.started([(5, TTL_5M)], 2, later + 1)
    sight = learner.sight(FAMILY, key, later + 60, 3)[0]
    assert (sight.cached, sight.cached_1h) == (True, False)
    sight = learner.sight(FAMILY, key, later + 60 + 2 * TTL_5M, 4)[0]
    assert (sight.cached, sight.late, sight.run) == (False, True, 1)  # back after its 5m entry expired


@pytest.mark.parametrize(("kind", "bound"), [("static", 10), ("tail", 12)])
def test_after_reused_traffic_turns_unreused_writes_stop_within_the_documented_bound(
    new_learner: Make, kind: str, bound: int
) -> None:
    # README "Regret bound": (S f^k + m) / (S + 1) < 0.217 with S = 1 / (1 - f), f = 0.85,
    # m the prior mean (1/3 static, 2/3 a continued tail): k = 10 and 12.
    learner = new_learner()
    now, ticket = 100.0, 1
    for i in range(60):  # steady: every new prefix comes back once
        for _ in range(2):
            learner.sight(FAMILY, [Sighting(i, kind)], now, ticket)
            learner.release([i], ticket)
            learner.started([(i, 0.0)], ticket, now + 0.5)  # its response begins
            ticket += 1
            now += 1.0
    written = 0
    for i in range(40):  # then none ever does
        sight = learner.sight(FAMILY, [Sighting(1_000 + i, kind)], now, ticket)[0]
        learner.release([1_000 + i], ticket)
        learner.started([(1_000 + i, 0.0)], ticket, now + 0.5)
        ticket += 1
        now += 1.0
        written += sight.p >= THRESHOLD
    assert written <= bound
    assert written >= bound - 1  # the bound is tight, not loose


def test_an_unsettled_conversation_is_judged_by_whether_its_next_request_changes_again(
    new_learner: Make,
) -> None:
    learner = new_learner()
    # A prefix that changes on every request (a timestamp at the top): unsettled from its
    # second request on, and each next request changes again.
    learner.conversation(1, 10, None, False, 100.0, family=FAMILY)
    # A first request counts as a change (as it does for the planner): the second request
    # is its judgement, held. Pool (1 + 0.8) / 2 = 0.9, family (1 + 0.9) / 2 = 0.95.
    first = learner.conversation(1, 11, b"r", False, 110.0, family=FAMILY)[0]
    assert first is not None
    assert first[3] == pytest.approx(0.95)
    before = learner.conversation(1, 12, b"r", False, 120.0, family=FAMILY)[0]
    assert before is not None
    assert before[3] > first[3]
    # Conversations of another family that changed once at their second request and then
    # held still: each is judged once, not held, and that family's estimate falls.
    estimates = []
    for c in range(2, 6):
        learner.conversation(c, 20, None, False, 200.0 + c, family=FAMILY + 1)
        learner.conversation(c, 21, b"r", True, 210.0 + c, family=FAMILY + 1)  # a tool was added
        got = learner.conversation(c, 21, b"r", True, 220.0 + c, family=FAMILY + 1)[0]
        assert got is not None
        estimates.append(got[3])
    # Each such conversation gives two judgements: its second request changed after the
    # first (held), its third did not (not held): the estimate falls towards 1/2, where a
    # tail whose own estimate is above twice the threshold is written.
    assert estimates == sorted(estimates, reverse=True)
    assert estimates[-1] < 0.55
    # The first family keeps its own evidence (two judgements, both held), over a pool
    # that the other family has pulled down.
    again = learner.conversation(1, 13, b"r", False, 130.0, family=FAMILY)[0]
    assert again is not None
    assert again[3] > 0.75 > estimates[-1] + 0.2


def test_an_edited_history_is_judged_apart_from_a_changed_static_prefix(new_learner: Make) -> None:
    learner = new_learner()
    # Chats whose second request kept the prefix of their first: judgements of a static
    # change (a first request counts as one; its next request can only change the static
    # prefix, the first message keys the conversation), all held.
    for c in range(1, 5):
        learner.conversation(c, 10, None, True, 100.0 + c, family=FAMILY)
        learner.conversation(c, 10, b"r", True, 110.0 + c, family=FAMILY)
    # A loop that truncates old tool results at every step: its history changes at two
    # requests in a row. The static judgements say nothing of it: the prior (0.8) holds.
    learner.conversation(9, 10, None, True, 200.0, family=FAMILY)
    learner.conversation(9, 10, b"r", True, 210.0, family=FAMILY)
    learner.conversation(9, 10, b"r", False, 220.0, family=FAMILY)
    edited = learner.conversation(9, 10, b"r", False, 230.0, family=FAMILY)[0]
    assert edited is not None
    assert edited[3] == pytest.approx(0.8)
    # A static change after those holds is judged by them.
    changed = learner.conversation(9, 11, b"r", True, 240.0, family=FAMILY)[0]
    assert changed is not None
    assert changed[3] < 0.2
    # And the edit judged at that request (the history changed again? no: the static
    # prefix did) counts for edits: their estimate moves off the prior.
    learner.conversation(9, 11, b"r", False, 250.0, family=FAMILY)
    again = learner.conversation(9, 11, b"r", False, 260.0, family=FAMILY)[0]
    assert again is not None
    assert again[3] != pytest.approx(0.8)


def test_an_edited_history_is_judged_apart_for_the_size_class_of_what_the_request_adds(
    new_learner: Make,
) -> None:
    learner = new_learner()

    # An agent that drops each huge tool result (class "tail:3") from its history at the
    # step after it: after a step that added one, the history changes again; after a step
    # that added a small one (no class), it holds. Every step's history changed (the step
    # before dropped a huge result) or not, as the results come.
    def step(n: int, now: float, history_known: bool, added: str) -> Any:
        return learner.conversation(1, 10, b"r", history_known, now, family=FAMILY, tail_class=added)[0]

    learner.conversation(1, 10, None, True, 100.0, family=FAMILY)
    results = ["tail:3", "tail:3", "", "tail:3", "tail:3", "", "", "tail:3", "tail:3", "tail:3", ""] * 2
    now, dropped = 110.0, False
    estimates: dict[str, list[float]] = {"tail:3": [], "": []}
    for n, added in enumerate(results):
        before = step(n, now, not dropped, added)
        if before is not None and dropped and not before[2]:  # unsettled: the planner's question
            estimates[added].append(before[3])
        dropped = added == "tail:3"  # the next step drops it
        now += 10.0
    # A huge result is dropped at the next step: unsettled stays high for that class, and
    # low for small ones (together they averaged to about a half).
    assert estimates["tail:3"][-1] > 0.8
    assert estimates[""][-1] < 0.3


def test_whether_a_continued_conversation_goes_on_is_learnt_per_family(new_learner: Make) -> None:
    learner = new_learner()
    # Chats of one family go on every ten seconds, six requests each.
    now = 100.0
    estimates = []
    for c in range(1, 5):
        for i in range(6):
            got = learner.conversation(c, 10, None if i == 0 else b"r", True, now, family=FAMILY)[0]
            now += 10.0
            if got is not None:
                estimates.append(got[4])
    # Read before the request's own opportunity counts: each conversation's second request
    # is no evidence yet, each later one credits the one before it.
    assert estimates[0] == pytest.approx(2.0 / 3.0)
    assert estimates[-1] > 0.85
    # Another family's conversations stop after their second request: pessimistic, each
    # continued request weighs as one not followed until its next request comes.
    stopped = []
    for c in range(11, 17):
        learner.conversation(c, 10, None, True, now, family=FAMILY + 1)
        got = learner.conversation(c, 10, b"r", True, now + 5.0, family=FAMILY + 1)[0]
        assert got is not None
        stopped.append(got[4])
        now += 600.0
    assert stopped == sorted(stopped, reverse=True)
    assert stopped[-1] < 0.28
    # The first family keeps its own evidence, over a pool the other has pulled down.
    learner.conversation(21, 10, None, True, now, family=FAMILY)
    kept = learner.conversation(21, 10, b"r", True, now + 10.0, family=FAMILY)[0]
    assert kept is not None
    assert kept[4] > 0.6 > stopped[-1] + 0.35
