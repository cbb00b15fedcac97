#!/usr/bin/env bash
# The encoder table: compress bench on all-MiniLM-L6-v2 and its variants (speed, memory, size, embedding
# quality on WikiText-2 valid), then a check that every output loads with stock libraries, then the table.
#   benchmarks/encoders/run.sh                 # the real table (about an hour on a quiet 2-core machine)
#   TINY=1 benchmarks/encoders/run.sh          # the same steps in minutes, numbers meaningless
# Environment: PY (python with compress installed), WIKI (wiki.valid.tokens), OUT (results directory).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
WIKI=${WIKI:-../shared/data/wikitext-2/wiki.valid.tokens}
OUT=${OUT:-benchmarks/encoders/results}
SUITE=benchmarks/encoders/suite.yaml
if [ "${TINY:-0}" = 1 ]; then SUITE=benchmarks/encoders/suite-tiny.yaml; fi
[ -f "$WIKI" ] || { echo "WikiText-2 valid not found at $WIKI; set WIKI=/path/to/wiki.valid.tokens" >&2; exit 2; }
mkdir -p "$OUT"
# --work-dir keeps every variant's saved directory, so the load check reads exactly what was measured.
"$PY" -m compress bench --suite "$SUITE" ${REPEATS:+--repeats "$REPEATS"} --eval-text "$WIKI" --work-dir "$OUT/variants" -o "$OUT/bench" --force
"$PY" benchmarks/encoders/check_loading.py "$OUT/bench/bench.json" --text "$WIKI" -o "$OUT/loading.json"
"$PY" benchmarks/encoders/table.py "$OUT" | tee "$OUT/table.md"
