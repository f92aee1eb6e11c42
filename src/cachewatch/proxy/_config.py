"""The proxy's configuration as one JSON-able dict, and the app it describes.

The CLI turns its flags into :func:`proxy_config`; :func:`app_from_config` builds the
app in the CLI's process and, through :data:`~cachewatch.proxy._server.CONFIG_ENV`, in
each ``--workers`` process. With ``--redis URL`` every process's engine gets a
:class:`~cachewatch.RedisStore` on that Redis: the processes (and any other proxy or
wrapped client using it) share the planner's learned state and the miss diagnosis.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from ..simulation._shape import ShapeRecorder
from ._app import ProxyApp, create_proxy_app
from ._logging import log_json_lines
from ._settings import DEFAULT_MAX_BODY, DEFAULT_REDIS_TIMEOUT, ClientLimits, UpstreamTimeouts

__all__ = ["app_from_config", "proxy_config"]


def proxy_config(
    upstream: str,
    *,
    allowed_hosts: Iterable[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    breakpoints: str = "auto",
    provider: str | None = None,
    prices: str | None = None,
    timeouts: UpstreamTimeouts | None = None,
    limits: ClientLimits | None = None,
    max_event_bytes: int | None = None,
    max_decoded_bytes: int | None = None,
    include_usage: bool = False,
    record: str | None = None,
    redis: str | None = None,
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT,
) -> dict[str, Any]:
    """The proxy's settings as a JSON-able dict (what :func:`app_from_config` takes).

    ``max_event_bytes`` / ``max_decoded_bytes``: the observation caps (None: the engine's).
    ``record``: a file to append every request's traffic shape to (``cachewatch replay``);
    the dict then carries the salt of its digests, one for every ``--workers`` process, so
    that a key, a block or a prefix has one digest in the file whichever worker served it.
    ``redis``: a Redis URL; the planner's learned state and the miss diagnosis's
    fingerprints are kept there (:class:`~cachewatch.RedisStore`), shared by every process
    using it; each call to it times out after ``redis_timeout`` seconds (then the process
    goes on alone, the fault counted).
    """
    return {
        "max_event_bytes": max_event_bytes,
        "max_decoded_bytes": max_decoded_bytes,
        "upstream": upstream,
        "allowed_hosts": list(allowed_hosts),
        "max_body": max_body,
        "breakpoints": breakpoints,
        "provider": provider,
        "prices": prices,
        "timeouts": asdict(timeouts or UpstreamTimeouts()),
        "limits": asdict(limits or ClientLimits()),
        "include_usage": include_usage,
        "record": record,
        "record_salt": secrets.token_hex(16) if record else None,
        "redis": redis,
        "redis_timeout": redis_timeout,
    }


def app_from_config(config: Mapping[str, Any], *, logger: Any | None = None) -> ProxyApp:
    """The proxy app of a :func:`proxy_config` dict.

    Without a ``logger``, each request is one JSON line on stdout (:func:`log_json_lines`).
    """
    options: dict[str, Any] = {"breakpoints": config.get("breakpoints", "auto")}
    if logger is not None:
        options["logger"] = logger
    else:
        log_json_lines()
    if config.get("include_usage"):
        options["include_usage"] = True
    if config.get("record"):
        salt = config.get("record_salt")
        options["record"] = (
            ShapeRecorder(config["record"], salt=bytes.fromhex(salt)) if salt else config["record"]
        )
    upstream: str = config["upstream"]
    if config.get("provider"):
        options["providers"] = {urlsplit(upstream).hostname or "": config["provider"]}
    if config.get("prices"):
        options["prices"] = config["prices"]
    for cap in ("max_event_bytes", "max_decoded_bytes"):
        if config.get(cap):
            options[cap] = config[cap]
    if config.get("redis"):
        options["store"] = _redis_store(config["redis"], config.get("redis_timeout", DEFAULT_REDIS_TIMEOUT))
    return create_proxy_app(
        upstream,
        allowed_hosts=config.get("allowed_hosts", ()),
        max_body=config.get("max_body", DEFAULT_MAX_BODY),
        timeouts=UpstreamTimeouts(**config.get("timeouts", {})),
        **options,
    )


def _redis_store(url: str, timeout: float) -> Any:
    """The shared store and learned state (``--redis``); ``redis`` is the ``[redis]`` extra."""
    from .._extras import require

    require("cachewatch proxy --redis", "redis", "redis")
    from ..diagnosis._store_redis import RedisStore

    return RedisStore(url=url, timeout=timeout, learning_timeout=timeout)
