"""The vocabulary of a miss and what it is measured by: reasons, calibrated estimates, anchors.

Data flow: diagnoser (``_diagnoser``) -> **verdicts** -> :class:`MissVerdict
<cachewatch.accounting._records.MissVerdict>` on the usage record -> sinks.

* :data:`MISS_REASONS`: the closed set of ``reason`` label values;
* :func:`calibrated`: a request's per-position token estimates, rescaled to what the
  provider billed (every expected-token figure of a verdict is one of these);
* :func:`anchor_verdict`: what the previous request of the same conversation (its
  anchor entry) says about a miss: ``model_changed``, ``prefix_changed_*`` at the first
  changed position, or ``ttl_expired``.
"""

from __future__ import annotations

from ..accounting._records import MissVerdict, TokenUsage
from ._entries import ANCHOR_HASH
from ._fingerprints import Fingerprints
from ._store import Entry

__all__ = ["MISS_REASONS", "UNINFORMATIVE_PROVIDER", "anchor_verdict", "calibrated"]

#: The closed set of ``reason`` label values of ``cachewatch_cache_misses_total``.
MISS_REASONS = (
    "ttl_expired",
    "prefix_changed_tools",
    "prefix_changed_system",
    "prefix_changed_messages",
    "model_changed",
    "below_minimum",
    "write_in_flight",
    "lookback_exceeded",
    "evicted",
    "provider_reported",
)

#: Provider reasons that say nothing about the miss: the local verdict is used instead.
UNINFORMATIVE_PROVIDER = frozenset({"previous_message_not_found", "unavailable", "none", "no_miss"})


def calibrated(raw: tuple[float, ...], total_raw: float, usage: TokenUsage, last_marker: int) -> list[float]:
    """Per-position token estimates rescaled to what the provider billed.

    The billing says exactly how many tokens lie up to the last breakpoint: reads A plus
    writes C - A, the uncached rest coming after it. So the prefix through the last
    marker is scaled to ``cache_read + cache_write`` and what follows to the uncached
    input, instead of scaling the whole prompt by one ratio: uncached text after the last
    marker (a system reminder after the caller's marker) then no longer shifts the
    estimate of the cached part.
    """
    read = usage.cache_read
    write_5m = usage.cache_write_5m
    write_1h = usage.cache_write_1h
    prompt = usage.input + read + write_5m + write_1h  # usage.prompt_total
    if prompt <= 0 or total_raw <= 0:
        return list(raw)
    cached = read + (write_5m + write_1h)  # cache_read + usage.cache_write
    head = raw[last_marker] if 0 <= last_marker < len(raw) else 0.0
    if cached <= 0 or head <= 0 or head >= total_raw:
        ratio = _clamp(prompt / total_raw)
        return [t * ratio for t in raw]
    r1 = cached / head  # min(5.0, max(0.2, ...)), as the comparisons those make
    r1 = r1 if r1 > 0.2 else 0.2
    r1 = r1 if r1 < 5.0 else 5.0
    rest = prompt - cached if prompt - cached > 0 else 0  # max(0, prompt - cached)
    r2 = _clamp(rest / (total_raw - head)) if rest > 0 else 0.0
    base = head * r1
    if last_marker >= len(raw) - 1:  # every position is at or before the last marker
        return [t * r1 for t in raw]
    return [t * r1 if i <= last_marker else base + (t - head) * r2 for i, t in enumerate(raw)]


def _clamp(ratio: float) -> float:
    """``min(5.0, max(0.2, ratio))``, as the comparisons those make."""
    ratio = ratio if ratio > 0.2 else 0.2
    return ratio if ratio < 5.0 else 5.0


def anchor_verdict(
    fp: Fingerprints, anchor: Entry, n: int, tokens: list[float], read: int, sent: float
) -> MissVerdict | None:
    if anchor.model != fp.model:
        return MissVerdict("model_changed", expected_tokens=anchor.tokens, read_tokens=read)
    tools = fp.tools[:ANCHOR_HASH] if fp.tools is not None else b""
    if (
        anchor.tools != tools
        and (not fp.locations or fp.locations[0] != "tools")
        and anchor.expires_at > sent
    ):
        # Tool definitions that are not positions (chat completions) changed, or went away.
        return MissVerdict(
            "prefix_changed_tools", block="tools", kind="tool", expected_tokens=anchor.tokens,
            read_tokens=read,
        )  # fmt: skip
    h = anchor.hashes
    stored = len(h) // ANCHOR_HASH
    d: int | None = None
    for i in range(min(stored, n)):
        if h[i * ANCHOR_HASH : (i + 1) * ANCHOR_HASH] != fp.hashes[i][:ANCHOR_HASH]:
            d = i
            break
    if d is None:
        # Identical through what both hold: unchanged, a shorter request, or beyond the kept hashes.
        return None
    if d > anchor.position:
        return None
    location = fp.locations[d]
    if location == "messages" and (d == 0 or fp.locations[d - 1] != "messages"):
        # The very first message differs: another conversation on the same tools and
        # system prompt, whose own prefix was never written. Not a miss.
        return None
    if anchor.expires_at <= sent:
        return MissVerdict("ttl_expired", expected_tokens=anchor.tokens, read_tokens=read)
    return MissVerdict(
        f"prefix_changed_{location}",
        position=d,
        block=fp.path(d),
        kind=fp.kinds[d],
        expected_tokens=anchor.tokens,
        read_tokens=read,
    )
