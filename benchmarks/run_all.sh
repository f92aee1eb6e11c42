#!/usr/bin/env bash
# Every benchmark, one after the other (not part of the test suite's pass/fail):
#   benchmarks/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== in-process overhead vs bare MockTransport =="; $PY benchmarks/overhead.py
echo; echo "== observe-only floor: minimal reference wrappers =="; $PY benchmarks/observe_floor.py
echo; echo "== auto through the transport; time to first byte with a silent upstream =="; $PY benchmarks/auto_overhead.py
echo; echo "== breakpoint planning cost vs orjson round trip =="; $PY benchmarks/planner_bench.py
echo; echo "== proxy added latency on loopback =="; $PY benchmarks/proxy_latency.py -n 1500
echo; echo "== proxy soak: RSS and open fds under mixed good and hostile load =="; $PY benchmarks/proxy_soak.py --seconds 60
echo; echo "== one huge request and the rest of the event loop =="; $PY benchmarks/loop_stall.py
echo; echo "== savings of auto against fixed strategies =="; $PY benchmarks/savings.py
echo; echo "== savings on traffic shapes the policy was not tuned on =="; $PY benchmarks/savings_unseen.py
echo; echo "== quick probes of everyday shapes (content next to a prefix, tool and prompt variants) =="; $PY benchmarks/savings_probes.py
echo; echo "== the regret bound on generated traffic =="; $PY benchmarks/regret.py
echo; echo "== token estimator error on the recorded corpus =="; $PY benchmarks/estimator_error.py
echo; echo "== a fleet of processes: per-process learning vs the shared state in Redis =="; $PY benchmarks/fleet.py
echo; echo "== shadow mode: its estimate of auto against auto's real cost =="; $PY benchmarks/shadow_accuracy.py
echo; echo "== shadow mode and record=FILE: added time per request vs off =="; $PY benchmarks/shadow_overhead.py
