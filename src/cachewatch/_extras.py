"""Optional features and the extras that install them.

The core install carries only what the transport needs. Every other feature checks for
its packages with :func:`require` before importing them, so a missing one gives one
clear error that names the extra to install, instead of a bare ``ModuleNotFoundError``
from deep inside.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "require"]


#: Import names whose distribution (what ``pip install`` takes) is named otherwise.
_DISTRIBUTIONS = {"yaml": "pyyaml", "httpx_aiohttp": "httpx-aiohttp"}


class MissingExtraError(ImportError):
    """A feature's optional packages are not installed."""

    def __init__(self, feature: str, extra: str, missing: list[str], alternative: str | None = None) -> None:
        self.extra = extra
        self.missing = missing
        packages = ", ".join(_DISTRIBUTIONS.get(name, name) for name in missing)
        super().__init__(
            f"{feature} needs the optional package{'s' if len(missing) > 1 else ''} {packages}: "
            f"pip install 'cachewatch[{extra}]'" + (f" (or {alternative})" if alternative else "")
        )


def require(feature: str, extra: str, *modules: str, alternative: str | None = None) -> None:
    """Raise :class:`MissingExtraError` unless every module in ``modules`` can be imported.

    ``modules`` are import names; the error names their distributions (``pyyaml`` for
    ``yaml``), and ``alternative``, when given, what works without the extra.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(feature, extra, missing, alternative)
