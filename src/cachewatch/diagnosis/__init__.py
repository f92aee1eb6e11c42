"""Why a cache missed: prefix fingerprints, the fingerprint stores and the diagnoser.

``_fingerprints`` reads a request's prefixes off the planner's layout, ``_store`` keeps
what is known of each cached prefix (``_store_redis`` shares it across a fleet),
``_diagnoser`` turns the billed usage into a verdict from :data:`MISS_REASONS`
(``_verdicts``: the reasons, calibrated estimates, the anchor verdict) and ``_entries``
writes what the request leaves for later ones. ``_stage`` is the engine's stage.
"""

from ..accounting._records import MissVerdict
from ._diagnoser import Diagnoser, RequestState
from ._fingerprints import Fingerprints, conversation_key, fingerprint, fingerprints_of
from ._store import TTL_SECONDS, Entry, FingerprintStore, MemoryStore
from ._verdicts import MISS_REASONS

__all__ = [
    "MISS_REASONS",
    "TTL_SECONDS",
    "Diagnoser",
    "Entry",
    "FingerprintStore",
    "Fingerprints",
    "MemoryStore",
    "MissVerdict",
    "RequestState",
    "conversation_key",
    "fingerprint",
    "fingerprints_of",
]
