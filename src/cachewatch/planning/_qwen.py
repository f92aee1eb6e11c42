"""The optional real tokenizer: the Qwen BPE table, read through ``tiktoken``, or nothing.

Data flow: :meth:`~cachewatch.planning._tokens.TokenEstimator.tokenizer` (only near a
threshold) -> **the Qwen tokenizer** -> a precise token count.

The table ``qwen.tiktoken`` ships inside the ``dashscope`` package and is found without
importing ``dashscope``; both it and ``tiktoken`` are optional and never downloaded.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["load_qwen_tokenizer"]

#: The pre-tokenisation pattern of the Qwen BPE (as published with the tokenizer).
_QWEN_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_qwen_lock = threading.Lock()
_qwen_cache: list[Callable[[str], int] | None] = []


def _find_qwen_table() -> Path | None:
    try:
        spec = importlib.util.find_spec("dashscope")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for rel in ("resources/qwen.tiktoken", "tokenizers/qwen.tiktoken"):
            candidate = Path(root) / rel
            if candidate.is_file():
                return candidate
    return None


def load_qwen_tokenizer() -> Callable[[str], int] | None:
    """A ``text -> token count`` function for Qwen models, or None.

    Needs ``tiktoken`` and the ``qwen.tiktoken`` table that ships inside the
    ``dashscope`` package (found without importing ``dashscope``). Nothing is
    downloaded. The result is cached for the life of the process.
    """
    with _qwen_lock:
        if _qwen_cache:
            return _qwen_cache[0]
        counter: Callable[[str], int] | None = None
        try:
            if importlib.util.find_spec("tiktoken") is not None:
                table = _find_qwen_table()
                if table is not None:
                    counter = _build_qwen(table)
        except Exception:  # an unusable optional extra must never break planning
            counter = None
        _qwen_cache.append(counter)
        return counter


def _build_qwen(table: Path) -> Callable[[str], int]:
    import base64

    import tiktoken

    ranks: dict[bytes, int] = {}
    for line in table.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    specials = {"<|endoftext|>": len(ranks), "<|im_start|>": len(ranks) + 1, "<|im_end|>": len(ranks) + 2}
    enc: Any = tiktoken.Encoding(
        "cachewatch-qwen", pat_str=_QWEN_PAT, mergeable_ranks=ranks, special_tokens=specials
    )

    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return count
