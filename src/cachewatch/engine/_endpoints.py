"""Request classification: which API, which provider, which workspace, which model label.

Pure functions over a request's URL parts and headers; no httpx. An API is recognised
by its path whatever the host (SPEC section 3). Provider labels come from a bounded
host map that users can extend; model and workspace labels are capped so that label
cardinality stays bounded whatever traffic passes through.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping

__all__ = [
    "DEFAULT_PROVIDERS",
    "LabelCap",
    "classify_api",
    "credential_from_headers",
    "dashscope_workspace_from_host",
    "key_fingerprint",
    "provider_for_host",
    "sniff_model",
    "WorkspaceResolver",
]

_GENERATION_SUFFIXES = (
    "/services/aigc/text-generation/generation",
    "/services/aigc/multimodal-generation/generation",
)


def classify_api(path: str) -> str | None:
    """The ``api`` label for a request path, or None when cachewatch does not know it."""
    p = path.rstrip("/")
    if p.endswith("/v1/messages"):
        return "messages"
    if p.endswith("/chat/completions"):
        return "chat_completions"
    if p.endswith("/responses"):
        return "responses"
    if p.endswith(_GENERATION_SUFFIXES):
        return "dashscope_generation"
    return None


#: Host suffix -> provider label. Checked as exact host or ``.suffix``.
DEFAULT_PROVIDERS: Mapping[str, str] = {
    "api.anthropic.com": "anthropic",
    "dashscope.aliyuncs.com": "dashscope",
    "dashscope-intl.aliyuncs.com": "dashscope",
    "maas.aliyuncs.com": "dashscope",
    "api.openai.com": "openai",
    "openai.azure.com": "azure_openai",
    "api.deepseek.com": "deepseek",
    "openrouter.ai": "openrouter",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "api.together.xyz": "together",
    "api.cerebras.ai": "cerebras",
    "api.moonshot.ai": "moonshot",
    "api.moonshot.cn": "moonshot",
    "api.minimax.io": "minimax",
    "api.z.ai": "zai",
    "generativelanguage.googleapis.com": "google",
}


def provider_for_host(host: str, port: int | None, extra: Mapping[str, str] | None = None) -> str:
    """Map a host (optionally ``host:port``) to a bounded provider label, ``other`` if unknown.

    ``extra`` entries (from configuration) win over the defaults and may name a
    ``host:port`` exactly, which is how a local emulator or relay gets a label.
    """
    host = host.lower()
    if extra:
        if port is not None and f"{host}:{port}" in extra:
            return extra[f"{host}:{port}"]
        hit = _suffix_lookup(host, extra)
        if hit is not None:
            return hit
    return _suffix_lookup(host, DEFAULT_PROVIDERS) or "other"


def _suffix_lookup(host: str, table: Mapping[str, str]) -> str | None:
    if host in table:
        return table[host]
    # Walk the parent domains: a.b.example.com -> b.example.com -> example.com
    idx = host.find(".")
    while idx != -1:
        parent = host[idx + 1 :]
        if parent in table:
            return table[parent]
        idx = host.find(".", idx + 1)
    return None


_DASHSCOPE_WORKSPACE = re.compile(r"^([a-z0-9][a-z0-9-]{2,62})\.[a-z0-9-]+\.maas\.aliyuncs\.com$")
_NOT_WORKSPACES = frozenset({"token-plan", "coding", "coding-intl"})


def dashscope_workspace_from_host(host: str) -> str | None:
    """The workspace id in a ``{WorkspaceId}.{region}.maas.aliyuncs.com`` host, if any."""
    m = _DASHSCOPE_WORKSPACE.match(host.lower())
    if m is None or m.group(1) in _NOT_WORKSPACES:
        return None
    return m.group(1)


def key_fingerprint(key: str) -> str:
    """``sha256:<hex>`` of a credential, so that configuration files need not hold raw keys."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class WorkspaceResolver:
    """Maps a request's credential (or DashScope workspace host) to a workspace label.

    ``mapping`` keys are raw API keys or ``sha256:<hex>`` fingerprints of them; values
    are the names users want on dashboards. The label is never derived from the key
    itself: an unmapped key gives ``default``.
    """

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self._by_fp: dict[str, str] = {}
        for key, name in (mapping or {}).items():
            fp = key if key.startswith("sha256:") else key_fingerprint(key)
            self._by_fp[fp] = name
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def has_mapping(self) -> bool:
        return bool(self._by_fp)

    def resolve(self, host: str, api_key: str | None) -> str:
        if api_key and self._by_fp:
            hit = self._cache.get(api_key)
            if hit is None:
                hit = self._by_fp.get(key_fingerprint(api_key), "")
                with self._lock:
                    if len(self._cache) < 1024:
                        self._cache[api_key] = hit
            if hit:
                return hit
        return dashscope_workspace_from_host(host) or "default"


def credential_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries (``x-api-key``, ``api-key`` or a Bearer token)."""
    key = headers.get("x-api-key") or headers.get("api-key")
    if key:
        return key
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


class LabelCap:
    """Admits at most ``limit`` distinct label values per process; the rest become ``other``.

    Thread-safe; the admitted set only grows, so a value keeps its label for the life
    of the process.
    """

    def __init__(self, limit: int = 50, overflow: str = "other") -> None:
        self.limit = limit
        self.overflow = overflow
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "unknown"
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return self.overflow
            # Label values must stay short and printable.
            if len(value) > 128 or not value.isprintable():
                return self.overflow
            self._seen.add(value)
            return value


_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,200})"')
#: The same match for a value without escapes: a character class, several times faster.
_PLAIN_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def sniff_model(body: bytes) -> str | None:
    """The request's top-level ``model`` without parsing the whole body when possible.

    A single ``"model": "..."`` string in the body is the answer. When several appear
    (e.g. a tool input that has a ``model`` field), fall back to a real parse.
    """
    first = body.find(b'"model"')
    if first == -1:
        return None
    if body.find(b'"model"', first + 7) == -1:
        # The usual case: one occurrence, so the only possible match starts there.
        match = _PLAIN_MODEL_RE.match(body, first)
        if match is not None:
            return match.group(1).decode("utf-8", "replace")
        match = _MODEL_RE.match(body, first)
        return _unescape(match.group(1)) if match is not None else None
    matches = _MODEL_RE.findall(body)
    if not matches:
        return None
    if len(matches) == 1:
        return _unescape(matches[0])
    import orjson

    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else None


def _unescape(raw: bytes) -> str | None:
    if raw.find(b"\\") == -1:
        return raw.decode("utf-8", "replace")
    import orjson

    try:
        value = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None
