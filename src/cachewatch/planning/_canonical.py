"""Canonical records and digests of prompt blocks: what makes two prefixes the same.

Data flow: layout walk (``_walk_*``) -> **canonical records** -> the cumulative digest of
each position (:attr:`~cachewatch.planning._layout.Layout.digests`).

The cumulative digest is XXH3-128 over a canonical record of every position so far.
The canonical record ignores ``cache_control`` and treats a plain string and a
one-text-block list as the same block (the providers render them the same way), so
inserting or moving a marker never changes a digest, and the digest of a prefix is
the same in every request that shares it. Records are length-prefixed, so different
block boundaries never collide. Anything else that invalidates a prefix is folded
in where it applies: chat-completions tools before the first position, Anthropic
``tool_choice``/``thinking`` before the first message (they invalidate the messages
cache only), message boundaries and roles, OpenAI ``tool_calls``, ``name`` and
``tool_call_id``. Digests are model-free; consumers bind them to a model and scope.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import xxhash

__all__ = [
    "ROLE_RECORDS",
    "SEED",
    "TEXT_RECORD",
    "block_digest",
    "json_digest",
    "new_hasher",
    "role_record",
    "tagged",
    "text_digest",
]

#: Version of the canonical records: a change of format changes every digest.
SEED: Final = b"cachewatch-layout-3"
_CC: Final = b'"cache_control"'

new_hasher = xxhash.xxh3_128
text_digest = xxhash.xxh3_128_digest
#: Seeds of the per-record digests, so records of different types never collide.
TEXT_RECORD: Final = 1
_JSON: Final = 2
_OTHER: Final = 3
_TAGS: Final = {b"m": 4, b"c": 5, b"T": 6, b"k": 7}


def _strip(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` without ``cache_control`` (also one level down in ``content`` lists)."""
    out = {k: v for k, v in block.items() if k != "cache_control"}
    content = out.get("content")
    if type(content) is list:
        out["content"] = [
            {k: v for k, v in c.items() if k != "cache_control"} if type(c) is dict else c for c in content
        ]
    return out


def block_digest(block: Any) -> bytes:
    """The digest of one block's canonical form: markers ignored, a string is a text block."""
    if type(block) is str:
        return text_digest(block.encode("utf-8", "surrogatepass"), TEXT_RECORD)
    if type(block) is dict:
        text = block.get("text")
        if type(text) is str:
            n = len(block)
            if "cache_control" in block:
                n -= 1
            if n == 1 or (n == 2 and block.get("type") == "text"):
                return text_digest(text.encode("utf-8", "surrogatepass"), TEXT_RECORD)
        return json_digest(block, orjson.dumps(block))
    return text_digest(orjson.dumps(block), _OTHER)


def json_digest(block: dict[str, Any], raw: bytes) -> bytes:
    """The digest of a block that is not a plain text block, from its JSON ``raw``.

    The canonical record is the JSON of :func:`_strip` of the block, which is ``raw``
    itself when there is nothing to strip: checked on the dict (two key lookups for most
    blocks) rather than by searching ``raw``.
    """
    if _has_markers(block):
        raw = orjson.dumps(_strip(block))
    return text_digest(raw, _JSON)


def _has_markers(block: dict[str, Any]) -> bool:
    """Whether :func:`_strip` would remove anything from ``block``."""
    if "cache_control" in block:
        return True
    content = block.get("content")
    if type(content) is list:
        for c in content:
            if type(c) is dict and "cache_control" in c:
                return True
    return False


def tagged(tag: bytes, value: bytes) -> bytes:
    """A 16-byte chain record for something that is not a block (a role, a header)."""
    return text_digest(value, _TAGS[tag])


#: Chain records of the common roles, computed once.
ROLE_RECORDS: dict[str, bytes] = {}


def role_record(role: str) -> bytes:
    found = ROLE_RECORDS.get(role)
    if found is None:
        found = tagged(b"m", role.encode("utf-8", "surrogatepass"))
        if len(ROLE_RECORDS) < 64:
            ROLE_RECORDS[role] = found
    return found
