"""``python -m cachewatch``: the ``cachewatch`` command."""

from .cli import main

raise SystemExit(main())
