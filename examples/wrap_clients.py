"""Wrap each client family and print what cachewatch recorded.

    .venv/bin/python examples/wrap_clients.py

Runs against the embedded emulator (no key, no network). The emulator listens on a
loopback port, so a ``providers`` entry gives it a real provider label.
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import structlog
from prometheus_client import CollectorRegistry, generate_latest

import cachewatch
from cachewatch.emulator import create_app, run_in_thread

SYSTEM = "You are a meticulous support agent. " + "Always cite the policy section you rely on. " * 300

registry = CollectorRegistry()
logger = structlog.get_logger("cachewatch")

with run_in_thread(create_app()) as base_url:
    hostport = base_url.split("://", 1)[1]
    options = {"registry": registry, "providers": {hostport: "anthropic"}, "logger": logger}

    # 1. The anthropic SDK (httpx2 underneath): wrap the client.
    claude = cachewatch.wrap(anthropic.Anthropic(api_key="demo", base_url=base_url), **options)
    for question in ("Where is my parcel?", "Can I change the address?"):
        claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=200,
            system=SYSTEM,
            messages=[{"role": "user", "content": question}],
        )

    # 2. The openai SDK against DashScope's OpenAI-compatible mode, streaming.
    qwen = cachewatch.wrap(
        openai.OpenAI(api_key="demo", base_url=base_url + "/compatible-mode/v1"),
        **{**options, "providers": {hostport: "dashscope"}},
    )
    for _ in range(2):
        stream = qwen.chat.completions.create(
            model="qwen-plus",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for _chunk in stream:
            pass

    # 3. A plain httpx client, at the transport level.
    http = httpx.Client(transport=cachewatch.CacheWatchTransport(**options), base_url=base_url)
    http.post(
        "/v1/messages",
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "ping"}],
        },
    )

print()
for line in generate_latest(registry).decode().splitlines():
    if line.startswith(("cachewatch_tokens_total", "cachewatch_requests_total", "cachewatch_cost_total")):
        print(line)
