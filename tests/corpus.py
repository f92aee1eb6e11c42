"""Loads the recorded-exchange corpus kept in the repository (SPEC section 11).

The corpus is ``tests/data/recorded-exchanges.jsonl.gz`` (provenance and licences in
``tests/data/README.md``); ``CACHEWATCH_CORPUS`` overrides the path. A missing corpus is
a test *failure*, never a skip: the accounting bar depends on it.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

__all__ = ["EXPECTED_COUNT", "Exchange", "api_label", "corpus_path", "load_corpus"]

EXPECTED_COUNT = 1557

Exchange = dict[str, Any]


def corpus_path() -> Path:
    override = os.environ.get("CACHEWATCH_CORPUS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "data" / "recorded-exchanges.jsonl.gz"


@functools.lru_cache(maxsize=1)
def _load(path: str) -> tuple[Exchange, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def load_corpus() -> tuple[Exchange, ...]:
    """All exchanges; fails the calling test with a clear message when the file is missing."""
    path = corpus_path()
    if not path.is_file():
        pytest.fail(
            f"recorded-exchange corpus not found at {path}; it ships in tests/data/ "
            "(set CACHEWATCH_CORPUS to use another .jsonl.gz file)",
            pytrace=False,
        )
    return _load(str(path))


def api_label(path: str) -> str:
    """The SPEC section 3 api label of a request path."""
    path = path.rstrip("/")
    if path.endswith("/messages"):
        return "messages"
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/generation"):
        return "dashscope_generation"
    raise ValueError(f"unknown api path {path!r}")
