"""``python -m cachewatch.cli``: the ``cachewatch`` command."""

from . import main

raise SystemExit(main())
