"""``start_metrics_server()``: serve ``/metrics`` for Prometheus to scrape.

Binds 127.0.0.1 by default. When ``PROMETHEUS_MULTIPROC_DIR`` is set and no registry
is given, it serves the aggregate of every worker process (prometheus_client's
MultiProcessCollector), so several workers show up as one set of series.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

__all__ = ["exposition_registry", "start_metrics_server"]


def exposition_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry to expose: ``registry``, or the multiprocess aggregate, or the global one."""
    if registry is not None:
        return registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        aggregate = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregate)  # type: ignore[no-untyped-call]
        return aggregate
    return REGISTRY


def start_metrics_server(
    port: int = 9464, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, Any]:
    """Serve ``http://{addr}:{port}/metrics`` in a daemon thread.

    Returns prometheus_client's ``(server, thread)`` pair; call ``server.shutdown()`` to stop.
    Port 0 picks a free port (``server.server_port`` tells which).
    """
    return start_http_server(port, addr=addr, registry=exposition_registry(registry))
