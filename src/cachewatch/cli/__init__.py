"""The ``cachewatch`` command line: demo, proxy, emulator, report, dashboards."""

from ._main import main

__all__ = ["main"]
