"""Response bytes -> what the provider billed: content decoding, SSE, usage parsing.

Linear in the bytes seen; the observer never changes a byte the caller receives.

Internal: nothing here is public API.
"""

__all__: list[str] = []
