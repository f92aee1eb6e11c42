"""cachewatch: prompt-cache breakpoints and exact usage observability for LLM HTTP APIs.

It sits under the clients people already use (anthropic, openai, httpx, httpx2):

    client = cachewatch.wrap(anthropic.Anthropic())
    cachewatch.start_metrics_server(port=9464)

Data flow: request -> planner -> transport -> stream observer -> usage record -> sinks.
"""

from ._models import Outcome, TokenUsage, UsageRecord
from ._server import start_metrics_server
from ._transport import AsyncCacheWatchTransport, CacheWatchTransport
from ._version import __version__
from ._wrap import wrap
from .sinks import Sink

__all__ = [
    # transports
    "AsyncCacheWatchTransport",
    "CacheWatchTransport",
    "wrap",
    # exposition
    "start_metrics_server",
    # records and sinks
    "Outcome",
    "Sink",
    "TokenUsage",
    "UsageRecord",
    "__version__",
]
