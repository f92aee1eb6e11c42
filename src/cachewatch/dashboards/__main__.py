"""``python -m cachewatch.dashboards --out DIR``: regenerate the dashboards and alert rules."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
