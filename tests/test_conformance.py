"""Real clients against the emulator, in the request and response shapes they send today (issue 16).

Each test drives a real client package (LiteLLM, the dashscope SDK, the openai SDK)
through ``cachewatch.wrap`` or ``cachewatch proxy`` against the emulator served by
uvicorn, and checks what cachewatch recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# LiteLLM fetches its model price map from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.llms.custom_httpx.http_handler import HTTPHandler

import cachewatch
from _helpers import Telemetry, make_telemetry
from cachewatch.emulator import Emulator, ManualClock, create_app, run_in_thread

#: LiteLLM's own pydantic models and imports warn; the suite turns warnings into errors.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:pydantic.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CC: dict[str, Any] = {"type": "ephemeral"}
#: 1,200 tokens by the emulator's count: above the 1,024-token minimum of the models used.
SYSTEM = " ".join(["ab"] * 1_200)


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    return create_app(clock=ManualClock())


@pytest.fixture(scope="module")
def base_url(emulator: Emulator) -> Iterator[str]:
    with run_in_thread(emulator) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_cache(emulator: Emulator) -> None:
    emulator.reset()


@pytest.fixture
def telemetry() -> Telemetry:
    return make_telemetry()


# -- LiteLLM's sync Anthropic stream ends at message_delta ----------------------------------


def test_litellm_sync_stream_is_ok_although_message_stop_is_never_read(
    base_url: str, telemetry: Telemetry
) -> None:
    """LiteLLM stops at the final ``message_delta`` and closes the body: the stream is complete."""
    handler = HTTPHandler()
    cachewatch.wrap(handler.client, breakpoints="off", **telemetry.kwargs)
    stream = litellm.completion(
        model="anthropic/claude-sonnet-4-6",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi there"}],
        stream=True,
        api_base=base_url,
        api_key="test",
        client=handler,
        max_tokens=32,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    handler.close()
    assert text
    assert telemetry.requests(api="messages", outcome="ok") == 1
    assert telemetry.requests(outcome="aborted") == 0
    tokens = telemetry.tokens(api="messages")
    assert tokens["input"] == 1_200 + 3  # the system prompt, then "hi" (1) and "there" (2)
    assert tokens["output"] > 0
    (span,) = telemetry.spans()
    assert span.attributes["cachewatch.outcome"] == "ok"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
