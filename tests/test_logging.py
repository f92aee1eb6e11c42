"""The per-request event: silent by default, stdlib logging when configured, structlog when chosen.

The subprocess tests run a real application: the real anthropic SDK, wrapped with no
options, against the emulator served in the same process, and look at what reached
stdout and stderr.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.sinks import logs as logs_module

SECRET_PROMPT = "the-secret-prompt-text-1234"
API_KEY = "sk-ant-secret-key-5678"

APP = textwrap.dedent(
    f"""
    import anthropic, cachewatch
    from cachewatch.emulator import create_app, run_in_thread
    {{setup}}
    with run_in_thread(create_app(profile="anthropic")) as url:
        client = cachewatch.wrap(anthropic.Anthropic(api_key={API_KEY!r}, base_url=url, max_retries=0))
        for _ in range(2):
            client.messages.create(
                model={{model}}, max_tokens=16,
                system={SECRET_PROMPT!r} * 300,
                messages=[{{"role": "user", "content": "hello"}}],
            )
    """
)


def run_app(setup: str = "", model: str = "claude-sonnet-4-6") -> subprocess.CompletedProcess[str]:
    code = APP.replace("{setup}", setup).replace("{model}", repr(model))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_wrapped_client_prints_nothing_by_default() -> None:
    result = run_app()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_the_warnings_print_nothing_by_default_either() -> None:
    """An unpriced model is warned about on the ``cachewatch`` logger: silent until configured."""
    result = run_app(model="mystery-model-3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""
    configured = run_app(
        "import logging\nlogging.basicConfig(level=logging.WARNING)\n", model="mystery-model-3"
    )
    assert configured.stdout == ""
    assert "no price for model 'mystery-model-3'" in configured.stderr


def test_stdlib_logging_shows_one_event_per_request_without_secrets() -> None:
    setup = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format='%(name)s %(message)s')\n"
        "logging.getLogger('cachewatch').setLevel(logging.INFO)\n"
    )
    result = run_app(setup)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("cachewatch cachewatch.request")]
    assert len(lines) == 2, result.stderr
    assert "api=messages model=claude-sonnet-4-6" in lines[0]
    assert "cache_write_5m:" in lines[0]
    assert "cache_read:" in lines[1]
    assert SECRET_PROMPT not in result.stderr
    assert API_KEY not in result.stderr


def test_structlog_is_used_once_the_application_configured_it() -> None:
    setup = (
        "import structlog, sys\n"
        "structlog.configure(processors=[structlog.processors.JSONRenderer()],\n"
        "                    logger_factory=structlog.PrintLoggerFactory(sys.stderr))\n"
    )
    result = run_app(setup)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    events = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["cachewatch.request", "cachewatch.request"]
    assert events[1]["tokens"]["cache_read"] > 0
    assert SECRET_PROMPT not in result.stderr


def _transport(**options: Any) -> cachewatch.CacheWatchTransport:
    body = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-x",
        "content": [],
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    return cachewatch.CacheWatchTransport(
        httpx.MockTransport(handler), breakpoints="off", registry=CollectorRegistry(), **options
    )


def _post(transport: cachewatch.CacheWatchTransport) -> None:
    with httpx.Client(transport=transport, base_url="https://api.anthropic.com") as client:
        client.post("/v1/messages", content=b'{"model":"claude-x","messages":[]}')


def test_a_silent_logger_does_not_build_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real = logs_module.log_fields
    monkeypatch.setattr(logs_module, "log_fields", lambda record: built.append(record) or real(record))
    logging.getLogger("cachewatch").setLevel(logging.WARNING)
    try:
        _post(_transport())
    finally:
        logging.getLogger("cachewatch").setLevel(logging.NOTSET)
    assert built == []


def test_an_explicit_stdlib_logger_gets_the_fields_on_the_record(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("myapp.llm")
    with caplog.at_level(logging.INFO, logger="myapp.llm"):
        _post(_transport(logger=logger))
    records = [r for r in caplog.records if r.name == "myapp.llm"]
    assert len(records) == 1
    fields = records[0].cachewatch  # type: ignore[attr-defined]
    assert fields["tokens"] == {
        "input": 3,
        "cache_read": 0,
        "cache_write_5m": 0,
        "cache_write_1h": 0,
        "output": 1,
    }
    assert records[0].getMessage().startswith("cachewatch.request provider=anthropic api=messages")


def test_an_explicit_structlog_style_logger_gets_keyword_fields() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    class Logger:
        def info(self, event: str, **fields: Any) -> None:
            calls.append((event, fields))

    _post(_transport(logger=Logger()))
    assert len(calls) == 1
    assert calls[0][0] == "cachewatch.request"
    assert calls[0][1]["outcome"] == "ok"


def test_planner_options_that_change_nothing_are_said_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # include_usage with breakpoints="off" (or "shadow") cannot touch the body: said once
    # per process on the cachewatch logger, not ignored silently.
    from cachewatch.engine import _engine

    monkeypatch.setattr(_engine, "_WARNED_OPTIONS", set())
    with caplog.at_level(logging.WARNING, logger="cachewatch"):
        for _ in range(3):
            cachewatch.wrap(
                httpx.Client(), breakpoints="off", include_usage=True, registry=CollectorRegistry()
            )
        cachewatch.wrap(
            httpx.Client(), breakpoints="shadow", include_usage=True, registry=CollectorRegistry()
        )
        cachewatch.wrap(httpx.Client(), breakpoints="auto", include_usage=True, registry=CollectorRegistry())
        cachewatch.wrap(httpx.Client(), breakpoints="shadow", static_ttl="1h", registry=CollectorRegistry())
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert said == [
        "cachewatch: include_usage has no effect with breakpoints='off' (request bodies go out "
        "byte-identical); use breakpoints='auto' for it",
        "cachewatch: include_usage has no effect with breakpoints='shadow' (request bodies go out "
        "byte-identical); use breakpoints='auto' for it",
    ]
