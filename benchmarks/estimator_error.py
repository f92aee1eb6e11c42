"""Error of the local token estimator against the prompt totals providers billed.

Reads the recorded-exchange corpus (``tests/data/recorded-exchanges.jsonl.gz`` in the
repository, or ``$CACHEWATCH_CORPUS``), estimates each successful request's prompt
with :class:`cachewatch.planning._tokens.TokenEstimator` (uncalibrated: no ``observe`` feedback)
and prints the median and p90 absolute relative error per API and provider.

True prompt totals: Anthropic messages ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``; chat completions ``prompt_tokens``; responses
``input_tokens``.

    python benchmarks/estimator_error.py [--calibrated]

``--calibrated`` replays the corpus in order through ``observe`` (estimate first, then
feed back the truth), as the transport does, and reports that error instead.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cachewatch.engine._endpoints import provider_for_host
from cachewatch.planning._costs import model_family
from cachewatch.planning._tokens import TokenEstimator


def corpus_path() -> Path:
    override = os.environ.get("CACHEWATCH_CORPUS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "tests" / "data" / "recorded-exchanges.jsonl.gz"


def api_of(path: str) -> str | None:
    p = path.rstrip("/")
    if p.endswith("/v1/messages") or p.endswith("/messages"):
        return "messages"
    if p.endswith("/chat/completions"):
        return "chat_completions"
    if p.endswith("/responses"):
        return "responses"
    return None


def _usage_from_sse(text: str) -> dict[str, Any] | None:
    usage: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if not data or data == "[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "message_start":
            usage = dict((event.get("message") or {}).get("usage") or {})
        elif kind == "message_delta" and usage is not None:
            for key, value in (event.get("usage") or {}).items():
                if value is not None:
                    usage[key] = value
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = (event.get("response") or {}).get("usage") or usage
        elif isinstance(event.get("usage"), dict):
            usage = event["usage"]
    return usage


def true_prompt_tokens(api: str, exchange: dict[str, Any]) -> int | None:
    response = exchange["response"]
    if response.get("status") != 200:
        return None
    body = response.get("body") or ""
    content_type = (response.get("headers") or {}).get("content-type", "")
    usage: dict[str, Any] | None
    if "event-stream" in content_type:
        usage = _usage_from_sse(body)
    else:
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        if isinstance(obj, dict) and "data" in obj and not {"choices", "content", "type"} & obj.keys():
            obj = obj["data"]
        usage = obj.get("usage") if isinstance(obj, dict) else None
    if not usage:
        return None
    if api == "messages":
        total = sum(
            usage.get(k) or 0
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
    elif api == "chat_completions":
        total = usage.get("prompt_tokens") or 0
    else:
        total = usage.get("input_tokens") or 0
    return total or None


def samples() -> Iterator[tuple[str, str, str, dict[str, Any], int]]:
    """(api, provider, family, request body, true prompt tokens) for every usable exchange."""
    path = corpus_path()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            exchange = json.loads(line)
            api = api_of(exchange["path"])
            body = exchange["request"].get("body")
            if api is None or not isinstance(body, dict):
                continue
            truth = true_prompt_tokens(api, exchange)
            if truth is None:
                continue
            provider = provider_for_host(exchange["host"], None)
            model = body.get("model")
            yield api, provider, model_family(model if isinstance(model, str) else None), body, truth


def measure(calibrated: bool = False) -> dict[tuple[str, str], list[float]]:
    """Absolute relative errors grouped by (api, provider)."""
    est = TokenEstimator(use_qwen_tokenizer=False)
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for api, provider, family, body, truth in samples():
        raw = est.raw_request(api, body, family=family)
        guess = raw * est.ratio(provider, family) if calibrated else raw
        errors[(api, provider)].append(abs(guess - truth) / truth)
        if calibrated:
            est.observe(raw, truth, provider=provider, family=family)
    return errors


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main(argv: list[str]) -> int:
    calibrated = "--calibrated" in argv
    errors = measure(calibrated)
    every: list[float] = []
    by_api: dict[str, list[float]] = defaultdict(list)
    print(f"{'api':<18}{'provider':<14}{'n':>6}{'median':>9}{'p90':>9}")
    for (api, provider), errs in sorted(errors.items()):
        every.extend(errs)
        by_api[api].extend(errs)
        print(f"{api:<18}{provider:<14}{len(errs):>6}{statistics.median(errs):>9.1%}{p90(errs):>9.1%}")
    print()
    for api, errs in sorted(by_api.items()):
        print(f"{api:<18}{'(all)':<14}{len(errs):>6}{statistics.median(errs):>9.1%}{p90(errs):>9.1%}")
    print(f"{'(all)':<18}{'':<14}{len(every):>6}{statistics.median(every):>9.1%}{p90(every):>9.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
