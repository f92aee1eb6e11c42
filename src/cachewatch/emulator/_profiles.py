"""The emulator's endpoint profiles: :mod:`cachewatch.simulation._profiles`, re-exported.

Plain data read by the cache model; they live in the core package with it (see
``_cache``).
"""

from __future__ import annotations

from ..simulation._profiles import (
    ANTHROPIC,
    ANTHROPIC_MIN_TOKENS,
    DASHSCOPE,
    DASHSCOPE_IMPLICIT_MODELS,
    DEFAULT_MIN_TOKENS,
    OPENAI,
    PROFILES,
    Profile,
    ProfileName,
    select_profile,
)

__all__ = [
    "ANTHROPIC",
    "ANTHROPIC_MIN_TOKENS",
    "DASHSCOPE",
    "DASHSCOPE_IMPLICIT_MODELS",
    "DEFAULT_MIN_TOKENS",
    "OPENAI",
    "PROFILES",
    "Profile",
    "ProfileName",
    "select_profile",
]
