"""Serving the proxy: uvicorn's settings, and the app factory of ``--workers`` processes.

``cachewatch proxy`` runs uvicorn with :func:`server_options`; with ``--workers N`` each
process builds its app with :func:`app_from_environment` from the configuration the
CLI put in :data:`CONFIG_ENV`.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from ._app import ProxyApp
from ._config import app_from_config
from ._protocol import TargetCheckingHttpToolsProtocol
from ._settings import ClientLimits

__all__ = ["CONFIG_ENV", "app_from_environment", "server_options"]

#: The environment variable carrying the proxy's configuration to ``--workers`` processes.
CONFIG_ENV = "CACHEWATCH_PROXY_CONFIG"

#: uvicorn's keep-alive timeout when it is turned off (0): a year.
_FOREVER = 365 * 24 * 3600


def server_options(limits: ClientLimits | None = None, *, importable: bool = False) -> dict[str, Any]:
    """uvicorn settings for serving the proxy (``cachewatch proxy`` uses these).

    httptools (C) parses requests, through :class:`TargetCheckingHttpToolsProtocol`
    (the raw request target, and ``limits``); uvloop runs the event loop where it is
    installed. The upstream's own Date and Server headers are relayed, so uvicorn adds
    none; no access log (it would hold paths and client addresses for every call).

    ``importable``: name the protocol by import string (for ``--workers``, whose
    processes get ``limits`` from :data:`CONFIG_ENV` instead).
    """
    limits = limits or ClientLimits()
    protocol: Any
    if importable:
        protocol = f"{TargetCheckingHttpToolsProtocol.__module__}:TargetCheckingHttpToolsProtocol"
    elif limits == TargetCheckingHttpToolsProtocol.client_limits:
        protocol = TargetCheckingHttpToolsProtocol
    else:
        protocol = type(
            "TargetCheckingHttpToolsProtocol", (TargetCheckingHttpToolsProtocol,), {"client_limits": limits}
        )
    return {
        "http": protocol,
        "loop": "auto",
        "ws": "none",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "access_log": False,
        "log_level": "warning",
        "timeout_keep_alive": limits.keep_alive_timeout or _FOREVER,
    }


def app_from_environment() -> ProxyApp:
    """App factory of each ``--workers`` process: the configuration comes from :data:`CONFIG_ENV`.

    Also sets this process's :class:`ClientLimits` on :class:`TargetCheckingHttpToolsProtocol`.
    """
    config = orjson.loads(os.environ[CONFIG_ENV])
    TargetCheckingHttpToolsProtocol.client_limits = ClientLimits(**config.get("limits", {}))
    return app_from_config(config)
