"""What a diagnosed request leaves in the fingerprint store for the requests after it.

Data flow: diagnoser (``_diagnoser``, after the verdict) -> **entries** -> the store
(``_store``, or ``_store_redis`` across a fleet) -> later requests' lookups.

The entries it read are refreshed; each of its breakpoints gets an entry (its write
tokens shared among the breakpoints past the read, a fan-out's second write of the
same prefix added to the first); its deepest entry is kept again under the
request's model-free anchors, with the first :data:`ANCHOR_HASH` bytes of each
position's digest, so a later request can find the first position that changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..accounting._records import TokenUsage
from ._fingerprints import Fingerprints
from ._store import (
    TTL_SECONDS,
    Entry,
    FingerprintStore,
    anchor_entry,
    new_entry,
    refreshed_entry,
    replace_entry,
)

if TYPE_CHECKING:
    from ._diagnoser import RequestState

__all__ = ["ANCHOR_HASH", "store_entries"]

#: Bytes of each position's digest an anchor entry keeps.
ANCHOR_HASH = 4


def store_entries(
    store: FingerprintStore,
    max_anchor_positions: int,
    state: RequestState,
    fp: Fingerprints,
    usage: TokenUsage,
    n: int,
    keys: list[bytes],
    found: list[Entry | None],
    cands: list[tuple[int, str, Entry | None]],
    read_pos: int,
    tokens: list[float],
    anchor_keys: list[bytes],
) -> None:
    sent = state.sent_at
    readable = state.response_at if state.response_at is not None else sent
    items: dict[bytes, Entry] = {}
    # Entries this request read: refreshed (the TTL restarts at this request's start, and
    # they count as read). Each is built once, below: where the entry is also one of this
    # request's breakpoints, its marker's refresh is folded into the same new entry. The
    # entry as found holds its key's place in ``items`` (the order the store receives).
    reads: dict[bytes, Entry] = {}
    provider, model_label, workspace = state.labels
    for i, st, e in cands:
        if st != "live" or i > read_pos:
            continue
        key = keys[i]
        if e is not None:
            items[key] = reads[key] = e
        elif key not in items and not _live(found[i], sent):
            # Read from the write of a request still in flight (its response had started):
            # that write is not in the store yet. A read entry stands for it, so the writer,
            # when it ends, knows its write was read (``_merge_write``) and is no waste.
            items[key] = new_entry(
                written_at=sent, refreshed_at=sent, ttl=TTL_SECONDS["5m"], model=fp.model,
                tokens=int(tokens[i]), position=i, readable_at=sent, cached=True, written_tokens=0,
                read=True, provider=provider, model_label=model_label, workspace=workspace,
            )  # fmt: skip
    # This request's own breakpoints; its write tokens are attributed to the ones past the read.
    markers = [(m, ttl) for m, ttl in fp.markers if m < n]
    read_tokens = float(usage.cache_read)
    fresh = [(m, ttl) for m, ttl in markers if m > read_pos and tokens[m] > read_tokens]
    shares: dict[int, int] = {}
    write = usage.cache_write
    if fresh and write > 0:
        incs: list[float] = []
        prev = read_tokens
        for m, _ in fresh:
            incs.append(max(tokens[m] - prev, 1.0))
            prev = max(prev, tokens[m])
        # The billing splits the write by TTL (research A.6: 1h writes B - A, 5m writes
        # C - B, and every 1h marker comes first): when the fresh markers carry both TTLs
        # and both parts were billed, each part goes to its own markers, and the estimate
        # only divides a part among markers of the same TTL.
        groups: list[tuple[int, list[int]]] = [(write, list(range(len(fresh))))]
        long_ = [k for k, (_, ttl_name) in enumerate(fresh) if ttl_name == "1h"]
        if 0 < len(long_) < len(fresh) and usage.cache_write_1h > 0 and usage.cache_write_5m > 0:
            short = [k for k in range(len(fresh)) if k not in long_]
            groups = [(usage.cache_write_1h, long_), (usage.cache_write_5m, short)]
        for part, members in groups:
            scale = part / sum(incs[k] for k in members)
            given = 0
            for j, k in enumerate(members):
                share = part - given if j == len(members) - 1 else int(incs[k] * scale)
                shares[fresh[k][0]] = share
                given += share
    max_ttl = state.max_ttl
    deepest: Entry | None = None
    for m, ttl_name in markers:
        ttl = TTL_SECONDS[ttl_name]
        if max_ttl < ttl:
            ttl = max_ttl
        key = keys[m]
        existing = None
        if reads:
            read_entry = reads.pop(key, None)
            if read_entry is not None:
                refreshed_at = read_entry.refreshed_at
                if refreshed_at < sent:
                    refreshed_at = sent
                if (
                    read_entry.cached
                    and refreshed_at + read_entry.ttl > sent
                    and not (m in shares or (write == 0 and m > read_pos and tokens[m] > read_tokens))
                ):
                    # Read, and live: one refresh of both (as refreshing it twice would give).
                    entry = refreshed_entry(
                        read_entry, refreshed_at, read_entry.ttl if read_entry.ttl >= ttl else ttl, True
                    )
                    items[key] = deepest = entry
                    continue
                existing = refreshed_entry(read_entry, refreshed_at, read_entry.ttl, True)
        if existing is None:
            existing = items.get(key) or found[m]
        live = existing is not None and existing.cached and existing.expires_at > sent
        if m in shares or (write == 0 and m > read_pos and tokens[m] > read_tokens):
            share = shares.get(m, 0)
            cached = share > 0
            entry = new_entry(
                written_at=sent, refreshed_at=sent, ttl=ttl, model=fp.model, tokens=int(tokens[m]),
                position=m, readable_at=readable, cached=cached, written_tokens=share,
                provider=provider, model_label=model_label, workspace=workspace,
            )  # fmt: skip
            if existing is not None and live and cached and existing.pending_waste:
                # A fan-out wrote the same prefix again: both writes are waste unless read.
                entry = replace_entry(
                    entry,
                    written_at=min(existing.written_at, sent),
                    readable_at=min(existing.readable_at, readable),
                    written_tokens=existing.written_tokens + share,
                )
            elif (
                existing is not None
                and live
                and cached
                and existing.read
                and existing.written_tokens == 0
                and existing.refreshed_at >= readable
            ):
                # Read by a request sent once this response had started, which ended first:
                # this write is what it read (and that read restarted the TTL).
                entry = replace_entry(entry, refreshed_at=max(existing.refreshed_at, sent), read=True)
            elif existing is not None and live and not cached:
                entry = existing
        elif existing is not None and live:
            entry = refreshed_entry(
                existing,
                max(existing.refreshed_at, sent),
                max(existing.ttl, ttl),
                existing.read,
            )
        else:
            entry = new_entry(
                written_at=sent, refreshed_at=sent, ttl=ttl, model=fp.model, tokens=int(tokens[m]),
                position=m, readable_at=readable, cached=True, written_tokens=0,
                provider=provider, model_label=model_label, workspace=workspace,
            )  # fmt: skip
        items[key] = entry
        deepest = entry
    for key, read_entry in reads.items():  # read, and not one of this request's breakpoints
        refreshed_at = read_entry.refreshed_at
        items[key] = refreshed_entry(
            read_entry, refreshed_at if refreshed_at > sent else sent, read_entry.ttl, True
        )
    if deepest is not None and anchor_keys:
        limit = min(deepest.position + 1, max_anchor_positions)
        anchor = anchor_entry(
            deepest,
            b"".join([h[:ANCHOR_HASH] for h in fp.hashes[:limit]]),
            fp.tools[:ANCHOR_HASH] if fp.tools is not None else b"",
        )
        for key in anchor_keys:
            items[key] = anchor
    if items:
        store.put_many(list(items.items()))


def _live(entry: Entry | None, now: float) -> bool:
    return entry is not None and entry.cached and entry.expires_at > now
