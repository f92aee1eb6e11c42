# ruff: noqa: E402 (the extra check must run before the imports it guards)
"""An offline emulator of LLM provider endpoints with real prompt-caching semantics.

``cachewatch.emulator`` serves the Anthropic Messages, OpenAI-compatible Chat
Completions, OpenAI Responses and DashScope native generation APIs (JSON and SSE)
from an ASGI app.
It caches the way the providers do (research A, B, C): a cumulative prefix hash per
breakpoint, a 20-position lookback, per-model minimums, 5m/1h TTLs refreshed on a
hit, entries readable only once the writing response has started, the 4-marker
limit (400 on Anthropic, last 4 win on DashScope), 400s for a malformed marker
(a type other than ``ephemeral``, a TTL other than ``5m``/``1h``) and for markers on thinking or
empty blocks or deferred tools, and DashScope's streaming usage quirk. The reply is short,
deterministic text, or a tool call (see ``_completion`` for the rule).

It is the default upstream of ``cachewatch demo`` and of the tests, and works on
its own::

    from cachewatch.emulator import create_app, run_in_thread

    with run_in_thread(create_app()) as base_url:
        client = anthropic.Anthropic(api_key="test", base_url=base_url)
        ...

or from a shell, through :func:`serve` (``cachewatch emulator --port 8790``).

Token counts are local and deterministic (:func:`count_text_tokens`): a word costs
``ceil(len/4)`` tokens, each CJK character or punctuation mark 1, an image 1,600.
"""

from __future__ import annotations

from .._extras import require

require("the cachewatch emulator", "emulator", "starlette", "uvicorn")

from ._app import DEFAULT_PORT, Emulator, EmulatorConfig, ProfileChoice, create_app, run_in_thread, serve
from ._cache import CacheStore, CacheUsage
from ._clock import Clock, ManualClock
from ._completion import TRIGGER_PHRASE
from ._profiles import ANTHROPIC_MIN_TOKENS, DEFAULT_MIN_TOKENS, PROFILES, Profile, select_profile
from ._tokens import IMAGE_TOKENS, block_tokens, count_text_tokens

__all__ = [
    # the app and its configuration
    "Emulator",
    "EmulatorConfig",
    "ProfileChoice",
    "create_app",
    # serving
    "DEFAULT_PORT",
    "run_in_thread",
    "serve",
    # time
    "Clock",
    "ManualClock",
    # cache model and provider data
    "ANTHROPIC_MIN_TOKENS",
    "CacheStore",
    "CacheUsage",
    "DEFAULT_MIN_TOKENS",
    "PROFILES",
    "Profile",
    "TRIGGER_PHRASE",
    "select_profile",
    # token counting
    "IMAGE_TOKENS",
    "block_tokens",
    "count_text_tokens",
]
