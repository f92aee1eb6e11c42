"""The public surface is exactly what __all__ says, and every name in it is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx
import pytest

import cachewatch

EXPECTED = {
    "AsyncCacheWatchTransport",
    "CacheWatchTransport",
    "wrap",
    "instrument_dashscope",
    "instrument_langchain",
    "start_metrics_server",
    "FingerprintStore",
    "MemoryStore",
    "Price",
    "PriceTable",
    "Profile",
    "ProfileRegistry",
    "RedisStore",
    "Cost",
    "Outcome",
    "Sink",
    "TokenUsage",
    "UsageRecord",
    "__version__",
}


def test_exported_names() -> None:
    assert set(cachewatch.__all__) == EXPECTED
    public = {name for name in dir(cachewatch) if not name.startswith("_")}
    # The stage subpackages are importable but not part of the curated surface.
    modules = {
        "accounting", "cli", "dashboards", "diagnosis", "emulator", "engine",
        "integrations", "observing", "planning", "proxy", "simulation", "sinks", "transport",
    }  # fmt: skip
    assert public - modules <= EXPECTED


def test_public_objects_have_docstrings() -> None:
    for name in EXPECTED - {"__version__"}:
        assert getattr(cachewatch, name).__doc__, name


def test_works_with_only_httpx_installed() -> None:
    """httpx2 is optional: with it unimportable, the transport still serves httpx clients."""
    code = """
import sys
sys.modules["httpx2"] = None  # make `import httpx2` fail
import httpx, cachewatch
from prometheus_client import CollectorRegistry
def handler(request):
    return httpx.Response(200, json={"id": "m", "type": "message", "model": "claude-sonnet-4-6",
        "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}})
reg = CollectorRegistry()
client = httpx.Client(transport=cachewatch.CacheWatchTransport(httpx.MockTransport(handler), registry=reg))
client.post("https://api.anthropic.com/v1/messages", json={"model": "claude-sonnet-4-6", "messages": []})
print(reg.get_sample_value("cachewatch_tokens_total", {"provider": "anthropic", "api": "messages",
    "model": "claude-sonnet-4-6", "workspace": "default", "type": "input"}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3.0"


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"static_ttl": "1H"}, ValueError, "static_ttl must be '5m' or '1h'"),
        ({"breakpoints": "shadow", "static_ttl": "60m"}, ValueError, "static_ttl must be '5m' or '1h'"),
        ({"automatic": "sometimes"}, ValueError, "automatic must be"),
        ({"bogus_option": 1}, TypeError, "unknown option 'bogus_option' for cachewatch.wrap()"),
    ],
)
def test_a_bad_option_is_refused_naming_it(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    # A misspelt TTL silently wrote 5m entries instead of the 1h ones asked for.
    with pytest.raises(error, match=re.escape(words)):
        cachewatch.wrap(httpx.Client(), **options)
