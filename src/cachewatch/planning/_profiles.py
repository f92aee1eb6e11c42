"""Endpoint capability profiles: what each provider endpoint does with cache markers.

Data flow: request (host, path) -> :meth:`ProfileRegistry.match` -> :class:`Profile`
-> planner. Profiles are plain frozen data; the planner reads them and nothing else
knows provider rules. Users override a shipped profile or add their own endpoints::

    registry = ProfileRegistry()
    registry.override("relay", reserved_slots=2)
    registry.register(
        replace(registry.get("anthropic"), name="my_gateway"),
        hosts=("llm.internal.example",),
        path_suffixes=("/v1/messages",),
    )

Shipped profiles (research sections A.1-A.6, B.1-B.5, C.1, E):

=====================  ====================  =====  =========  =====  =====  =========  ==========
profile                marker format         max    overflow   TTLs   ttl    top-level  min tokens
=====================  ====================  =====  =========  =====  =====  =========  ==========
``anthropic``          anthropic block       4      error      5m 1h  yes    yes        A.5 table
``dashscope``          anthropic block       4      last_wins  5m     no     no         1,024
``dashscope_openai``   openai content part   4      last_wins  5m     no     no         1,024
``dashscope_native``   dashscope native      4      last_wins  5m     no     no         1,024
``relay``              anthropic block       4 - 1  error      5m     no     no         A.5, 1,024
``openai``             none (automatic)      -      -          -      -      -          -
``deepseek``           none (automatic)      -      -          -      -      -          -
``unknown``            none (untouched)      -      -          -      -      -          -
=====================  ====================  =====  =========  =====  =====  =========  ==========

All have a lookback of 20 positions. Only ``anthropic`` marks tool definitions; the
``relay`` keeps one slot free for the relay's own marker. On ``dashscope_openai`` and
``dashscope_native`` a request without markers uses DashScope's implicit cache
(``implicit_cache``).

Matching, first rule wins (user rules before the shipped ones):

1. DashScope paths on any host: ``/apps/anthropic`` -> ``dashscope``; ``/compatible-mode/``
   ending in ``/chat/completions`` -> ``dashscope_openai``; ``/services/aigc/...generation``
   -> ``dashscope_native``. Any other ``/v1/messages`` on a DashScope host
   (``dashscope.aliyuncs.com``, ``dashscope-intl.aliyuncs.com``, ``*.dashscope.aliyuncs.com``,
   ``*.maas.aliyuncs.com``) -> ``dashscope``. So a proxy or the emulator on loopback
   serving DashScope-style paths gets the DashScope rules.
2. ``api.anthropic.com`` ``/v1/messages`` -> ``anthropic``.
3. Loopback (``localhost``, ``127.0.0.1``, ``::1``) ``/v1/messages`` -> ``anthropic``: the
   project's emulator serves the Anthropic profile there, and a local relay in front of
   Anthropic behaves the same. Register a rule to treat your local relay otherwise.
4. ``api.openai.com`` -> ``openai``; ``api.deepseek.com`` -> ``deepseek``: automatic
   prefix caching, no markers, the planner leaves the body alone.
5. Any other host with a ``/v1/messages`` path -> ``relay``: conservative (minimum
   1,024 unless the model is known, no ``ttl`` field, no top-level automatic mode,
   no markers on tool definitions, one slot reserved for the relay's own marker).
6. Everything else -> ``unknown``: no markers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "ANTHROPIC_MIN_TOKENS",
    "DASHSCOPE_EXPLICIT_MODELS",
    "DEFAULT_MIN_TOKENS",
    "DEFAULT_PROFILES",
    "EndpointRule",
    "MarkerFormat",
    "Overflow",
    "Profile",
    "ProfileRegistry",
    "min_tokens_lookup",
]

MarkerFormat = Literal["anthropic", "openai_content_part", "dashscope_native", "none"]
Overflow = Literal["error", "last_wins"]

#: Minimum cacheable prompt when neither the model nor the profile says otherwise (research A.5).
DEFAULT_MIN_TOKENS = 1_024

#: Minimum cacheable prompt per Claude model family (research A.5, checked against the
#: 2026-12 updates in F; the emulator's table is the same data). Keys match a model id
#: at a ``-``/``@``/``:``/``.``/end boundary (after an optional vendor prefix such as
#: ``anthropic/`` or ``us.anthropic.``); the longest matching key wins, so
#: ``claude-opus-4-5-20251101`` is 4,096 while ``claude-opus-4-20250514`` is 1,024.
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

#: The models with DashScope's explicit cache (research B.2, a snapshot of the Model Studio
#: docs: "changes often"; plus the newer ids secondary sources name). On the OpenAI-compatible
#: and native endpoints a marker turns the request's implicit cache off, so a model without
#: the explicit cache gets none (``Profile.explicit_models``; override it to change the list).
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
#: A dated snapshot or a ``-latest`` alias: not the model the list names.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4}|latest)$")

_BOUNDARY = frozenset("-@:.")
_DOTTED_VERSION = re.compile(r"(?<=\d)\.(?=\d)")


def min_tokens_lookup(table: Mapping[str, int], model: str) -> int | None:
    """The longest ``table`` key that names ``model``'s family, or None.

    A key matches when it starts the model id (or starts right after a ``/`` or ``.``
    vendor prefix) and is followed by the end of the id or a ``-``/``@``/``:``/``.``.
    Dotted versions (``anthropic/claude-opus-4.5``, as OpenRouter and LiteLLM spell
    them) are read as their dashed form (``claude-opus-4-5``).
    """
    m = _DOTTED_VERSION.sub("-", model.lower())
    best_len = -1
    best: int | None = None
    for key, value in table.items():
        k = key.lower()
        start = m.find(k)
        while start != -1:
            end = start + len(k)
            before_ok = start == 0 or m[start - 1] in "/."
            after_ok = end == len(m) or m[end] in _BOUNDARY
            if before_ok and after_ok:
                if len(k) > best_len:
                    best_len, best = len(k), value
                break
            start = m.find(k, start + 1)
    return best


@dataclass(frozen=True, slots=True)
class Profile:
    """What one endpoint does with prompt-cache markers. Plain data; see the module table.

    Args:
        name: profile name (also the ``cachewatch.breakpoints.profile`` attribute).
        marker_format: where markers go: ``anthropic`` (``cache_control`` on tools, system
            blocks and message content blocks), ``openai_content_part`` (on a content part
            of an OpenAI-style message), ``dashscope_native`` (on a ``{"text": ...}`` part
            of ``input.messages[].content``), ``none``.
        supports_markers: False for automatic-caching endpoints (OpenAI, DeepSeek) and
            unknown ones: the planner never changes the body there.
        max_breakpoints: markers honoured per request, the top-level automatic one included.
        overflow: ``error`` (more markers is HTTP 400, Anthropic) or ``last_wins`` (only
            the last ``max_breakpoints`` take effect, DashScope).
        ttls: TTLs the endpoint honours; ``1h`` markers are only emitted when listed here
            and ``emit_ttl`` is set.
        emit_ttl: whether a ``ttl`` field may be written at all (DashScope and unknown
            relays: no).
        top_level_automatic: whether a top-level ``cache_control`` places an automatic
            breakpoint on the last cacheable block (Anthropic first-party only).
        lookback: positions a breakpoint checks backwards for earlier entries, itself included.
        reserved_slots: slots left free for a relay that adds its own markers.
        markers_on_tools: whether tool definitions accept a marker.
        min_tokens: minimum cacheable prefix per model family (see :func:`min_tokens_lookup`).
        default_min_tokens: minimum for a model not in ``min_tokens``.
        provider: the provider this profile speaks for (calibration key).
        implicit_cache: a request without any marker uses the endpoint's implicit cache
            (DashScope's OpenAI-compatible and native endpoints): there a marker is not
            free even where the provider caches nothing, since it gives up that cache.
        explicit_models: the models that have the explicit cache (``None``: every model).
            A name matches one that starts it at a ``-``/``.`` boundary (``qwen-plus`` names
            ``qwen-plus-character``), never a dated snapshot or ``-latest`` alias. A request
            to another model is left unmarked.
    """

    name: str
    marker_format: MarkerFormat = "anthropic"
    supports_markers: bool = True
    max_breakpoints: int = 4
    overflow: Overflow = "error"
    ttls: tuple[str, ...] = ("5m",)
    emit_ttl: bool = False
    top_level_automatic: bool = False
    lookback: int = 20
    reserved_slots: int = 0
    markers_on_tools: bool = False
    min_tokens: Mapping[str, int] = field(default_factory=dict)
    default_min_tokens: int = DEFAULT_MIN_TOKENS
    provider: str = "other"
    implicit_cache: bool = False
    explicit_models: tuple[str, ...] | None = None

    def explicit_for(self, model: str | None) -> bool:
        """Whether ``model`` has the explicit cache here (see ``explicit_models``)."""
        names = self.explicit_models
        if names is None:
            return True
        if not model:
            return False
        m = model.lower()
        if _SNAPSHOT.search(m) is not None:
            return False
        return any(m == n or (m.startswith(n) and m[len(n)] in "-.") for n in names)

    @property
    def honours_1h(self) -> bool:
        """Whether this profile may emit ``"ttl": "1h"``."""
        return self.emit_ttl and "1h" in self.ttls

    @property
    def slots(self) -> int:
        """Markers cachewatch may count on per request (before the caller's own)."""
        return max(0, self.max_breakpoints - self.reserved_slots)

    def min_tokens_for(self, model: str | None) -> int:
        """The minimum cacheable prefix for ``model`` (``default_min_tokens`` if unknown)."""
        if model:
            found = min_tokens_lookup(self.min_tokens, model)
            if found is not None:
                return found
        return self.default_min_tokens


ANTHROPIC = Profile(
    name="anthropic",
    ttls=("5m", "1h"),
    emit_ttl=True,
    top_level_automatic=True,
    markers_on_tools=True,
    min_tokens=ANTHROPIC_MIN_TOKENS,
    provider="anthropic",
)
DASHSCOPE = Profile(name="dashscope", overflow="last_wins", provider="dashscope")
DASHSCOPE_OPENAI = Profile(
    name="dashscope_openai",
    marker_format="openai_content_part",
    overflow="last_wins",
    provider="dashscope",
    implicit_cache=True,
    explicit_models=DASHSCOPE_EXPLICIT_MODELS,
)
DASHSCOPE_NATIVE = Profile(
    name="dashscope_native",
    marker_format="dashscope_native",
    overflow="last_wins",
    provider="dashscope",
    implicit_cache=True,
    explicit_models=DASHSCOPE_EXPLICIT_MODELS,
)
RELAY = Profile(name="relay", reserved_slots=1, min_tokens=ANTHROPIC_MIN_TOKENS, provider="other")
OPENAI = Profile(name="openai", marker_format="none", supports_markers=False, provider="openai")
DEEPSEEK = Profile(name="deepseek", marker_format="none", supports_markers=False, provider="deepseek")
UNKNOWN = Profile(name="unknown", marker_format="none", supports_markers=False, provider="other")

#: The shipped profiles by name.
DEFAULT_PROFILES: Mapping[str, Profile] = {
    p.name: p
    for p in (ANTHROPIC, DASHSCOPE, DASHSCOPE_OPENAI, DASHSCOPE_NATIVE, RELAY, OPENAI, DEEPSEEK, UNKNOWN)
}

_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_DASHSCOPE_HOSTS = ("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com", "*.dashscope.aliyuncs.com")
_DASHSCOPE_ALL_HOSTS = (*_DASHSCOPE_HOSTS, "*.maas.aliyuncs.com")
_GENERATION = ("/services/aigc/text-generation/generation", "/services/aigc/multimodal-generation/generation")


@dataclass(frozen=True, slots=True)
class EndpointRule:
    """Sends requests to a profile by host and path; every given condition must hold.

    Args:
        profile: the profile name.
        hosts: host patterns: an exact host (``api.anthropic.com``) or ``*.suffix``
            (matches any subdomain, not the bare suffix). Empty: any host.
        path_contains: substrings, one of which the path must contain. Empty: no condition.
        path_suffixes: suffixes, one of which the path (trailing ``/`` stripped) must end
            with. Empty: no condition.
    """

    profile: str
    hosts: tuple[str, ...] = ()
    path_contains: tuple[str, ...] = ()
    path_suffixes: tuple[str, ...] = ()

    def matches(self, host: str, path: str) -> bool:
        if self.hosts and not any(_host_matches(pattern, host) for pattern in self.hosts):
            return False
        if self.path_contains and not any(s in path for s in self.path_contains):
            return False
        return not self.path_suffixes or path.rstrip("/").endswith(self.path_suffixes)


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


DEFAULT_RULES: tuple[EndpointRule, ...] = (
    EndpointRule("dashscope", path_contains=("/apps/anthropic",), path_suffixes=("/v1/messages",)),
    EndpointRule(
        "dashscope_openai", path_contains=("/compatible-mode/",), path_suffixes=("/chat/completions",)
    ),
    EndpointRule("dashscope_native", path_suffixes=_GENERATION),
    EndpointRule("dashscope", hosts=_DASHSCOPE_ALL_HOSTS, path_suffixes=("/v1/messages",)),
    EndpointRule("unknown", hosts=_DASHSCOPE_ALL_HOSTS),
    EndpointRule("anthropic", hosts=("api.anthropic.com",), path_suffixes=("/v1/messages",)),
    EndpointRule("anthropic", hosts=_LOOPBACK, path_suffixes=("/v1/messages",)),
    EndpointRule("openai", hosts=("api.openai.com",)),
    EndpointRule("deepseek", hosts=("api.deepseek.com",)),
    EndpointRule("relay", path_suffixes=("/v1/messages",)),
)


class ProfileRegistry:
    """Profiles by name plus the rules that pick one for a request. Thread-safe.

    Args:
        profiles: extra or replacement profiles (merged over :data:`DEFAULT_PROFILES`).
        rules: extra rules, checked before the shipped ones (first match wins).

    Example::

        registry = ProfileRegistry()
        registry.override("relay", reserved_slots=2)
        registry.match("api.anthropic.com", "/v1/messages").name  # "anthropic"
    """

    def __init__(
        self,
        profiles: Iterable[Profile] | None = None,
        rules: Iterable[EndpointRule] | None = None,
    ) -> None:
        self._profiles: dict[str, Profile] = dict(DEFAULT_PROFILES)
        for profile in profiles or ():
            self._profiles[profile.name] = profile
        self._user_rules: list[EndpointRule] = list(rules or ())
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Profile] = {}

    def get(self, name: str) -> Profile:
        """The profile called ``name`` (KeyError if none)."""
        return self._profiles[name]

    @property
    def profiles(self) -> Mapping[str, Profile]:
        return dict(self._profiles)

    def register(
        self,
        profile: Profile,
        *,
        hosts: Iterable[str] = (),
        path_contains: Iterable[str] = (),
        path_suffixes: Iterable[str] = (),
    ) -> None:
        """Add (or replace) a profile; with any condition given, also route matching requests to it.

        User rules are checked before the shipped ones, most recently registered first.
        """
        with self._lock:
            self._profiles[profile.name] = profile
            hosts_t, contains_t, suffixes_t = (
                tuple(h.lower() for h in hosts),
                tuple(path_contains),
                tuple(path_suffixes),
            )
            if hosts_t or contains_t or suffixes_t:
                self._user_rules.insert(0, EndpointRule(profile.name, hosts_t, contains_t, suffixes_t))
            self._cache.clear()

    def override(self, name: str, **changes: Any) -> Profile:
        """Replace fields of the profile ``name`` (e.g. ``min_tokens``, ``reserved_slots``); returns it."""
        with self._lock:
            updated = replace(self._profiles[name], **changes)
            self._profiles[name] = updated
            self._cache.clear()
            return updated

    def match(self, host: str, path: str) -> Profile:
        """The profile for a request to ``host`` (optionally ``host:port``) and ``path``."""
        key = (host, path)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        h = _bare_host(host)
        profile = self._profiles["unknown"]
        for rule in (*self._user_rules, *DEFAULT_RULES):
            if rule.matches(h, path):
                profile = self._profiles.get(rule.profile, profile)
                break
        with self._lock:
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = profile
        return profile


def _bare_host(host: str) -> str:
    h = host.lower().strip()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end != -1 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")
