"""Endpoint capability profiles: how each provider treats cache markers.

A :class:`Profile` is plain data read by the cache model (``_cache``) and the
emulator's wire modules. Three ship:

* ``anthropic``: the Claude API. At most 4 markers (the top-level automatic one
  included), extra ones, markers on thinking or empty text blocks and a ``1h``
  marker after a ``5m`` one are HTTP 400; TTLs ``5m`` and ``1h``; per-model
  minimum from :data:`ANTHROPIC_MIN_TOKENS` (research A.3, A.5).
* ``dashscope``: Alibaba Model Studio (Anthropic-compatible, OpenAI-compatible and
  native endpoints). More than 4 markers: only the last 4 take effect; every
  marker is 5 minutes (a ``ttl`` is ignored); minimum 1,024; invalid markers are
  ignored rather than rejected; the Anthropic-format stream reports the cache
  split only in ``message_delta`` (research B.2, B.5). A request *without* markers
  to a model of :data:`DASHSCOPE_IMPLICIT_MODELS` on the OpenAI-compatible or native
  API uses the implicit cache instead (research B.1, B.6): the prefix through each
  of its positions is cached from 256 tokens, later requests read the longest cached
  prefix they share (the docs: "ABCD" cached, "ABE" may hit "AB"), and a hit
  is reported as ``cached_tokens`` alone, with no write. The real implicit cache is
  best effort; here it always hits, so tests are deterministic. On those two APIs only
  the models of :data:`DASHSCOPE_EXPLICIT_MODELS` have the explicit cache: another
  model's markers do nothing, and still turn the request's implicit cache off.
* ``openai``: plain OpenAI automatic prefix caching. Markers are ignored; every
  request implicitly writes its whole prompt and reads the longest earlier prompt
  it extends, from 1,024 tokens (research C.1). Writes are free and unreported,
  except for GPT-5.6 and later, which bill them and report ``cache_write_tokens``
  (research C.1, F). Explicit ``prompt_cache_breakpoint`` markers are not modelled.

:func:`select_profile` picks one from the request path and host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ANTHROPIC",
    "ANTHROPIC_MIN_TOKENS",
    "DASHSCOPE",
    "DASHSCOPE_EXPLICIT_MODELS",
    "DASHSCOPE_IMPLICIT_MODELS",
    "DEFAULT_MIN_TOKENS",
    "OPENAI",
    "PROFILES",
    "Profile",
    "ProfileName",
    "select_profile",
]

ProfileName = Literal["anthropic", "dashscope", "openai"]

#: Model families with DashScope's implicit cache (research B.6, prefix at a ``-``/``.``
#: boundary); snapshots (``…-2025-01-25``) and ``-latest`` aliases are excluded.
DASHSCOPE_IMPLICIT_MODELS: tuple[str, ...] = (
    "qwen-max",
    "qwen-plus",
    "qwen-flash",
    "qwen-turbo",
    "qwen3-max",
    "qwen3.5-plus",
    "qwen3.5-flash",
    "qwen3.6-plus",
    "qwen3.7-max",
    "qwen3.7-plus",
    "qwen3-coder",
    "qwen-vl",
    "qwen3-vl",
    "deepseek-v3",
    "kimi",
    "glm",
    "minimax",
)
#: Models with DashScope's explicit cache (research B.2, and the newer ids it names). The
#: planner's list is the same data (tests/test_profiles.py checks they agree).
DASHSCOPE_EXPLICIT_MODELS: tuple[str, ...] = (
    "qwen3-max",
    "qwen3.5-plus",
    "qwen-plus",
    "qwen3.5-flash",
    "qwen-flash",
    "qwen3-coder-plus",
    "qwen3-coder-flash",
    "qwen3-vl-plus",
    "deepseek-v3.2",
    "kimi-k2.5",
    "qwen3.6-plus",
    "qwen3.7-max",
    "qwen3.7-plus",
)
_GPT_VERSION = re.compile(r"(?:^|/)gpt-(\d+)(?:\.(\d+))?(?:$|[-@:])")
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4}|latest)$")

#: Minimum cacheable prompt for a model not in any table (research A.5 suggestion).
DEFAULT_MIN_TOKENS = 1_024

#: Minimum cacheable prompt per Claude model family (research A.5, mid/late-2026 revisions,
#: checked against the 2026-12 updates in F). The planner's table is the same data
#: (tests/test_profiles.py checks they agree).
#: Keys match a model id at a ``-``/``@``/``:``/end boundary; the longest key wins,
#: so ``claude-opus-4-5-20251101`` is 4,096 while ``claude-opus-4-20250514`` is 1,024.
ANTHROPIC_MIN_TOKENS: Mapping[str, int] = {
    "claude-fable-5": 512,
    "claude-mythos-5": 512,
    "claude-fable-5-1": 512,
    "claude-mythos-5-1": 512,
    "claude-opus-5": 512,
    "claude-opus-5-5": 512,
    "claude-sonnet-5-5": 512,
    "claude-opus-4-8": 1_024,
    "claude-sonnet-5": 1_024,
    "claude-sonnet-4-6": 1_024,
    "claude-sonnet-4-5": 1_024,
    "claude-opus-4-1": 1_024,
    "claude-opus-4": 1_024,
    "claude-sonnet-4": 1_024,
    "claude-3-7-sonnet": 1_024,
    "claude-3-5-sonnet": 1_024,
    "claude-3-opus": 1_024,
    "claude-mythos-preview": 2_048,
    "claude-opus-4-7": 2_048,
    "claude-3-5-haiku": 2_048,
    "claude-3-haiku": 2_048,
    "claude-opus-4-6": 4_096,
    "claude-opus-4-5": 4_096,
    "claude-haiku-4-5": 4_096,
}


@dataclass(frozen=True, slots=True)
class Profile:
    """What one provider endpoint does with cache markers."""

    name: ProfileName
    #: Markers honoured per request (the top-level automatic one included).
    max_breakpoints: int = 4
    #: ``"error"``: more markers than allowed is a 400. ``"keep_last"``: only the last ones count.
    extra_breakpoints: Literal["error", "keep_last"] = "error"
    #: Whether ``ttl: "1h"`` is honoured; otherwise every entry lives 5 minutes.
    supports_1h: bool = True
    #: Whether invalid markers (thinking, empty text, TTL order) are HTTP 400 rather than ignored.
    strict: bool = True
    #: Whether a top-level ``cache_control`` places an automatic breakpoint.
    top_level: bool = True
    #: Positions checked per breakpoint, the breakpoint itself included.
    lookback: int = 20
    #: No markers: every request caches its whole prompt (OpenAI automatic prefix caching).
    implicit: bool = False
    #: Anthropic-format streams report the full prompt in ``message_start`` and the split in
    #: ``message_delta`` only (DashScope ``/apps/anthropic``, research B.5).
    split_only_in_message_delta: bool = False
    #: Minimum per model (longest boundary-matched key wins), then ``default_min_tokens``.
    min_tokens: Mapping[str, int] = field(default_factory=dict)
    default_min_tokens: int = DEFAULT_MIN_TOKENS
    #: Models whose unmarked requests use an implicit cache (DashScope, research B.6).
    implicit_models: tuple[str, ...] = ()
    #: Minimum cacheable prompt of that implicit cache (research B.1: 256).
    implicit_min_tokens: int = 256
    #: Models with the explicit cache on the OpenAI-compatible and native APIs (DashScope,
    #: research B.2; empty: every model). Another model's markers do nothing there, and
    #: still turn that request's implicit cache off (research B.1).
    explicit_models: tuple[str, ...] = ()
    #: First GPT version (major, minor) whose implicit writes are billed and reported.
    writes_billed_from: tuple[int, int] | None = None

    def bills_writes(self, model: str) -> bool:
        """Whether this implicit cache bills (and reports) the writes of ``model``."""
        if self.writes_billed_from is None:
            return False
        found = _GPT_VERSION.search(model.lower())
        if found is None:
            return False
        return (int(found.group(1)), int(found.group(2) or 0)) >= self.writes_billed_from

    def implicit_cache_for(self, model: str) -> bool:
        """Whether an unmarked request to ``model`` uses the implicit cache."""
        lowered = model.lower()
        if not self.implicit_models or _SNAPSHOT.search(lowered):
            return False
        return any(
            lowered == key or lowered.startswith((f"{key}-", f"{key}.")) for key in self.implicit_models
        )

    def explicit_cache_for(self, model: str) -> bool:
        """Whether a marked request to ``model`` uses the explicit cache (see ``explicit_models``)."""
        if not self.explicit_models:
            return True
        lowered = model.lower()
        if _SNAPSHOT.search(lowered):
            return False
        return any(
            lowered == key or lowered.startswith((f"{key}-", f"{key}.")) for key in self.explicit_models
        )

    def min_tokens_for(self, model: str, overrides: Mapping[str, int] | None = None) -> int:
        """The minimum cacheable prefix for ``model`` (user ``overrides`` first)."""
        for table in (overrides or {}), self.min_tokens:
            found = _lookup(table, model)
            if found is not None:
                return found
        return self.default_min_tokens


def _lookup(table: Mapping[str, int], model: str) -> int | None:
    best: tuple[int, int] | None = None
    lowered = model.lower()
    for key, value in table.items():
        if re.search(rf"(?:^|[./]){re.escape(key.lower())}(?:$|[-@:])", lowered) and (
            best is None or len(key) > best[0]
        ):
            best = (len(key), value)
    return None if best is None else best[1]


ANTHROPIC = Profile(name="anthropic", min_tokens=ANTHROPIC_MIN_TOKENS)
DASHSCOPE = Profile(
    name="dashscope",
    extra_breakpoints="keep_last",
    supports_1h=False,
    strict=False,
    split_only_in_message_delta=True,
    implicit_models=DASHSCOPE_IMPLICIT_MODELS,
    explicit_models=DASHSCOPE_EXPLICIT_MODELS,
)
OPENAI = Profile(
    name="openai", strict=False, top_level=False, implicit=True, lookback=1_000_000, writes_billed_from=(5, 6)
)

PROFILES: Mapping[str, Profile] = {p.name: p for p in (ANTHROPIC, DASHSCOPE, OPENAI)}

_DASHSCOPE_PATHS = ("/apps/anthropic", "/compatible-mode", "/api/v1/services", "/api/v2/apps")
_DASHSCOPE_HOSTS = ("dashscope", "maas.aliyuncs.com")


def select_profile(path: str, host: str = "") -> Profile:
    """The profile for a request, from its path and ``Host`` header.

    * a DashScope path (``/apps/anthropic``, ``/compatible-mode``, ``/api/v1/services``)
      or host (``*dashscope*``, ``*.maas.aliyuncs.com``): ``dashscope``;
    * otherwise ``/chat/completions`` or ``/responses``: ``openai``;
    * otherwise (``/v1/messages`` and the rest): ``anthropic``.
    """
    lowered_host = host.lower()
    if any(p in path for p in _DASHSCOPE_PATHS) or any(h in lowered_host for h in _DASHSCOPE_HOSTS):
        return DASHSCOPE
    if path.rstrip("/").endswith(("/chat/completions", "/responses")):
        return OPENAI
    return ANTHROPIC
