"""cachewatch: prompt-cache breakpoints and exact usage observability for LLM HTTP APIs.

It sits under the clients people already use (anthropic, openai, httpx, httpx2):

    client = cachewatch.wrap(anthropic.Anthropic())
    cachewatch.start_metrics_server(port=9464)

Data flow: request -> planner -> transport -> stream observer -> usage record -> sinks.
"""

import logging as _logging

from ._version import __version__
from .accounting._pricing import Price, PriceTable
from .accounting._records import Cost, Outcome, TokenUsage, UsageRecord
from .diagnosis import FingerprintStore, MemoryStore
from .diagnosis._store_redis import RedisStore
from .integrations import instrument_dashscope, instrument_langchain
from .planning._profiles import Profile, ProfileRegistry
from .sinks import Sink
from .sinks._server import start_metrics_server
from .transport._transport import AsyncCacheWatchTransport, CacheWatchTransport
from .transport._wrap import wrap

# A library's logger stays silent until the application configures logging: without a
# handler of its own, the warnings (an unpriced model, a survived fault) would reach
# stderr through logging.lastResort in an application that configured nothing.
_logging.getLogger("cachewatch").addHandler(_logging.NullHandler())

__all__ = [
    # transports
    "AsyncCacheWatchTransport",
    "CacheWatchTransport",
    "wrap",
    # frameworks that hide or share their HTTP client
    "instrument_dashscope",
    "instrument_langchain",
    # exposition
    "start_metrics_server",
    # configuration: endpoint profiles, prices, the shared fingerprint store
    "FingerprintStore",
    "MemoryStore",
    "Price",
    "PriceTable",
    "Profile",
    "ProfileRegistry",
    "RedisStore",
    # records and sinks
    "Cost",
    "Outcome",
    "Sink",
    "TokenUsage",
    "UsageRecord",
    "__version__",
]
