"""Claude Code (``@anthropic-ai/claude-code``, print mode) through ``cachewatch proxy``, offline.

The emulator (behind a ledger) and the proxy run in uvicorn threads; ``claude -p`` runs
twice with ``ANTHROPIC_BASE_URL`` pointing at the proxy, a throwaway ``HOME`` and working
directory, and Claude Code's non-essential traffic (telemetry, error reports, update
checks) switched off, so nothing leaves the machine. Claude Code marks its own
``cache_control`` breakpoints: the second run must read the ~30k-token prefix (system
prompt and tool definitions) the first one wrote, and the proxy's counters must equal
what the emulator billed and what Claude Code itself reported.

Pinned in ``tests/node/package.json`` at 2.1.112, the last release that is plain
JavaScript on Node >= 18 (later ones ship a 200+ MB native binary and need Node 22);
``scripts/test.sh`` installs it with ``npm install``. When Node or the package is
missing this test fails (it does not skip) and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from _frameworks import Ledger, emulated, outcomes, proxied, tokens, total

CLI = Path(__file__).parent / "node" / "node_modules" / "@anthropic-ai" / "claude-code" / "cli.js"
API_KEY = "sk-ant-claude-code-SECRET-1357"
MODEL = "claude-sonnet-4-6"


@pytest.fixture
def served() -> Iterator[tuple[Ledger, CollectorRegistry, str]]:
    registry = CollectorRegistry()
    with emulated() as (ledger, upstream), proxied(upstream, registry) as proxy:
        yield ledger, registry, proxy


def claude(proxy: str, home: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not CLI.is_file():
        pytest.fail(
            "node or tests/node/node_modules/@anthropic-ai/claude-code is missing: run scripts/test.sh "
            "(it installs nodejs and runs `npm install` in tests/node)",
            pytrace=False,
        )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": proxy,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    result = subprocess.run(
        [node, str(CLI), "-p", "Say hello.", "--output-format", "json", "--model", MODEL],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["type"] == "result"
    assert out["is_error"] is False, out
    return out


def test_claude_code_print_mode_through_the_proxy(
    served: tuple[Ledger, CollectorRegistry, str], tmp_path: Path
) -> None:
    ledger, registry, proxy = served
    first, second = claude(proxy, tmp_path), claude(proxy, tmp_path)
    assert first["result"]

    bills = ledger.taken()
    assert bills, "Claude Code sent nothing"
    assert all(b.completed and b.path == "/v1/messages" for b in bills)
    assert tokens(registry) == total(bills)
    assert outcomes(registry) == {"ok": len(bills)}

    # Claude Code's own account of the main model's usage, run by run.
    written = first["usage"]["cache_creation_input_tokens"]
    assert written > 10_000  # its system prompt and tool definitions
    assert first["usage"]["cache_read_input_tokens"] == 0
    assert second["usage"]["cache_read_input_tokens"] == written
    assert second["usage"]["cache_creation_input_tokens"] == 0
    reported = {"cache_read": 0, "cache_write_5m": 0, "output": 0}
    for run in (first, second):
        for usage in run["modelUsage"].values():
            reported["cache_read"] += usage["cacheReadInputTokens"]
            reported["cache_write_5m"] += usage["cacheCreationInputTokens"]
            reported["output"] += usage["outputTokens"]
    assert reported == {k: tokens(registry)[k] for k in reported}

    assert API_KEY not in generate_latest(registry).decode()


def test_claude_code_is_pinned() -> None:
    node_dir = CLI.parents[2].parent
    package = json.loads((node_dir / "package.json").read_text())
    version = package["dependencies"]["@anthropic-ai/claude-code"]
    assert version[0].isdigit(), f"pin an exact version, not {version!r}"
    lock = json.loads((node_dir / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@anthropic-ai/claude-code"]["version"] == version
