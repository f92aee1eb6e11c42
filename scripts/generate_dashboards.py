#!/usr/bin/env python3
"""Regenerate dashboards/ (Grafana dashboards, alert rules, provisioning) from the metric catalogue.

    python scripts/generate_dashboards.py [--out DIR]

Same as ``python -m cachewatch.dashboards --out dashboards`` run from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from cachewatch.dashboards import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:] or ["--out", str(ROOT / "dashboards")]
    sys.exit(main(args))
