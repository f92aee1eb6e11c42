"""The Anthropic TypeScript SDK (``@anthropic-ai/sdk`` under Node) through ``cachewatch proxy``.

The emulator and the proxy run in uvicorn threads; ``node tests/node/messages.mjs``
runs with ``ANTHROPIC_BASE_URL`` pointing at the proxy. It calls ``messages.create``
twice and ``messages.stream`` twice with a long system prompt carrying
``cache_control`` and prints one JSON line of usage per call. The second call of each
pair must read the cache, and the proxy's ``/metrics`` must show exactly what the SDK
saw.

``scripts/test.sh`` installs Node and runs ``npm install`` in ``tests/node``; when either
is missing this test fails (it does not skip) and says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from cachewatch.emulator import create_app, run_in_thread
from cachewatch.proxy import create_proxy_app

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "messages.mjs"
SDK = NODE_DIR / "node_modules" / "@anthropic-ai" / "sdk"
SYSTEM_TOKENS = 3_000  # what messages.mjs sends (CACHEWATCH_SYSTEM_WORDS)
API_KEY = "sk-ant-node-SECRET-2468"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class LoopCapture:
    """Remembers the proxy's event loop so its upstream client can be closed there.

    (``run_in_thread`` serves with ``lifespan="off"``, so the proxy's own shutdown never runs.)
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def close_upstream_client(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.app.state.transport.aclose(), self.loop).result(10)


@pytest.fixture
def proxy_url() -> Iterator[str]:
    with run_in_thread(create_app()) as upstream:
        registry = CollectorRegistry()
        logger = structlog.wrap_logger(structlog.testing.CapturingLogger(), processors=[])
        proxy = LoopCapture(create_proxy_app(upstream, registry=registry, logger=logger))
        with run_in_thread(proxy) as url:
            try:
                yield url
            finally:
                proxy.close_upstream_client()


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/test.sh (it installs nodejs and npm)", pytrace=False)
    if not (SDK / "package.json").is_file():
        pytest.fail(
            f"{SDK.relative_to(NODE_DIR.parent.parent)} is missing: run scripts/test.sh "
            "(it runs `npm install` in tests/node)",
            pytrace=False,
        )
    return node


def test_typescript_sdk_through_the_proxy(proxy_url: str) -> None:
    node = require_node()
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": proxy_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CACHEWATCH_SYSTEM_WORDS": str(SYSTEM_TOKENS),
    }
    env.pop("ANTHROPIC_AUTH_TOKEN", None)
    result = subprocess.run(
        [node, str(SCRIPT)], env=env, cwd=NODE_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    calls = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(c["call"], c["n"]) for c in calls] == [
        ("create", 1),
        ("create", 2),
        ("stream", 1),
        ("stream", 2),
    ]

    for kind in ("create", "stream"):
        first, second = (c["usage"] for c in calls if c["call"] == kind)
        assert first["cache_creation_input_tokens"] >= SYSTEM_TOKENS, (kind, first)
        assert first["cache_read_input_tokens"] == 0, (kind, first)
        assert second["cache_read_input_tokens"] >= SYSTEM_TOKENS, (kind, second)
        assert second["cache_creation_input_tokens"] == 0, (kind, second)
    for call in calls:
        assert call["text"], call
        assert call["usage"]["output_tokens"] > 0, call
    assert all(c["events"] >= 5 for c in calls if c["call"] == "stream")  # message_start ... message_stop

    text = httpx.get(f"{proxy_url}/metrics", timeout=10).text
    usages = [c["usage"] for c in calls]
    assert metric(text, "cachewatch_requests_total", outcome="ok", api="messages") == 4
    assert metric(text, "cachewatch_requests_total") == 4
    assert metric(text, "cachewatch_tokens_total", type="cache_read") == sum(
        u["cache_read_input_tokens"] for u in usages
    )
    assert metric(text, "cachewatch_tokens_total", type="cache_write_5m") == sum(
        u["cache_creation_input_tokens"] for u in usages
    )
    assert metric(text, "cachewatch_tokens_total", type="output") == sum(u["output_tokens"] for u in usages)
    assert metric(text, "cachewatch_tokens_total", type="input") == sum(u["input_tokens"] for u in usages)
    assert metric(text, "cachewatch_time_to_first_token_seconds_count") == 2  # the two streams
    assert metric(text, "cachewatch_cache_savings_total") > 0
    assert API_KEY not in text
    assert "SECRET" not in text


def test_node_project_is_pinned() -> None:
    package = json.loads((NODE_DIR / "package.json").read_text())
    assert package["private"] is True
    version = package["dependencies"]["@anthropic-ai/sdk"]
    assert version[0].isdigit(), f"pin an exact version, not {version!r}"
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@anthropic-ai/sdk"]["version"] == version
