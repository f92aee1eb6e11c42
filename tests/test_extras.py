"""The core install: with every optional package blocked, the transport still works.

A child interpreter makes every package an extra brings (and the SDKs) unimportable, as
if not installed, then wraps an ``httpx.Client`` in ``auto`` mode and sends requests
through a MockTransport, plain and compressed. Every optional feature it touches must
fail with one clear error that names its extra.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Every top-level package an extra brings (pyproject.toml), plus the SDKs and the frameworks
#: ``cachewatch.integrations`` serves (it recognises their objects without importing them).
OPTIONAL = (
    "structlog",
    "rich",
    "starlette",
    "uvicorn",
    "httptools",
    "uvloop",
    "aiohttp",
    "httpx_aiohttp",
    "brotli",
    "zstandard",
    "yaml",
    "redis",
    "tiktoken",
    "dashscope",
    "httpx2",
    "anthropic",
    "openai",
    "langchain_core",
    "langchain_anthropic",
    "langchain_openai",
    "pydantic_ai",
    "litellm",
)

CHILD = textwrap.dedent(
    """
    import gzip, io, logging, sys, tempfile
    BLOCKED = set(sys.argv[1].split(","))
    for name in BLOCKED:  # as if not installed: import fails, find_spec() says None
        sys.modules[name] = None
    log = io.StringIO()
    logging.getLogger("cachewatch").addHandler(logging.StreamHandler(log))

    import httpx, orjson
    from prometheus_client import CollectorRegistry
    import cachewatch

    loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.partition(".")[0] in BLOCKED)
    assert not loaded, loaded

    usage = {"input_tokens": 5, "cache_read_input_tokens": 3000, "output_tokens": 7}
    body = orjson.dumps({"id": "m", "type": "message", "model": "claude-sonnet-4-6",
                         "content": [], "usage": usage})

    def handler(request):
        if request.url.path.endswith("/gz/v1/messages"):
            return httpx.Response(200, content=gzip.compress(body),
                                  headers={"content-type": "application/json", "content-encoding": "gzip"})
        if request.url.path.endswith("/br/v1/messages"):
            return httpx.Response(200, content=b"not really brotli",
                                  headers={"content-type": "application/json", "content-encoding": "br"})
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    registry = CollectorRegistry()
    client = cachewatch.wrap(httpx.Client(transport=httpx.MockTransport(handler)), registry=registry)
    request = {"model": "claude-sonnet-4-6", "max_tokens": 8, "system": "You are terse. " * 800,
               "messages": [{"role": "user", "content": "hi"}]}
    for prefix in ("", "/gz", "/br"):
        response = client.post(f"https://api.anthropic.com{prefix}/v1/messages", json=request)
        assert response.status_code == 200
    read = registry.get_sample_value("cachewatch_tokens_total", {
        "provider": "anthropic", "api": "messages", "model": "claude-sonnet-4-6",
        "workspace": "default", "type": "cache_read"})
    assert read == 6000, read
    inserted = registry.get_sample_value("cachewatch_breakpoints_total", {
        "provider": "anthropic", "location": "system", "action": "inserted"})
    assert inserted and inserted >= 1, inserted
    assert "pip install 'cachewatch[brotli]'" in log.getvalue(), log.getvalue()

    def error_of(call):
        try:
            call()
        except ImportError as exc:
            return str(exc)
        raise AssertionError("no error")

    def emulator():
        import cachewatch.emulator

    def proxy():
        import cachewatch.proxy

    assert "pip install 'cachewatch[emulator]'" in error_of(emulator)
    # The library's proxy too, naming what pip installs (httpx-aiohttp, not httpx_aiohttp).
    assert "httpx-aiohttp: pip install 'cachewatch[proxy]'" in error_of(proxy)
    assert "pip install 'cachewatch[redis]'" in error_of(lambda: cachewatch.RedisStore())
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write("models: {}")
    assert "package pyyaml: pip install 'cachewatch[yaml]'" in error_of(
        lambda: cachewatch.PriceTable.from_file(fh.name)
    )

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as exposition:
        exposition.write('cachewatch_requests_total{provider="anthropic",api="messages",model="m",'
                         'workspace="default",outcome="ok"} 1.0\\n')
    from cachewatch.cli import main
    for argv, extra in ((["proxy", "--upstream", "http://127.0.0.1:9"], "proxy"),
                        (["emulator"], "emulator"), (["demo"], "demo"),
                        (["report", "--url", exposition.name], "cli")):
        assert main(argv) == 2, argv
    print("ok")
    """
)


def test_the_transport_works_with_every_optional_package_blocked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(OPTIONAL)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    for extra in ("proxy", "emulator", "demo"):
        assert f"pip install 'cachewatch[{extra}]'" in result.stderr
    # One line per missing extra, the command named once: "cachewatch report needs ...".
    assert (
        "cachewatch report needs the optional package rich: pip install 'cachewatch[cli]' "
        "(or --format json, which needs no extra)\n"
    ) in result.stderr
