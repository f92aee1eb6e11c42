"""Optional features and the extras that install them.

The core install carries only what the transport needs. Every other feature checks for
its packages with :func:`require` before importing them, so a missing one gives one
clear error that names the extra to install, instead of a bare ``ModuleNotFoundError``
from deep inside.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """A feature's optional packages are not installed."""

    def __init__(self, feature: str, extra: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = missing
        packages = ", ".join(missing)
        super().__init__(
            f"{feature} needs the optional package{'s' if len(missing) > 1 else ''} {packages}: "
            f"pip install 'cachewatch[{extra}]'"
        )


def require(feature: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` unless every module in ``modules`` can be imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(feature, extra, missing)
