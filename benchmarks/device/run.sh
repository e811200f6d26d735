#!/usr/bin/env bash
# The GPU machine's one call (issue #19): install ctmarl and the wheels in .whl/ into /tmp/site,
# then run benchmarks/device/gpu_check.py. Everything lands in $OUT: report.md, results.json,
# records.tar.gz, and log.txt (this script's whole output).
#
#   device run:  command "bash benchmarks/device/run.sh", carry [".whl"], timeout_s 600
#   here:        bash benchmarks/device/fetch_wheels.sh   (first, once)
#                OUT=/tmp/gpu_check bash benchmarks/device/run.sh --device cpu --quick   (dry run)
#
# Arguments go to gpu_check.py (default --device cuda; e.g. --only smoke resume, --budget 300).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_check_out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
    echo "== $(date -u +%FT%TZ) $(uname -m) $(python3 --version 2>&1)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 || true
    started=$(date +%s)
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no wheels in .whl/: run benchmarks/device/fetch_wheels.sh here and carry .whl" | tee "$OUT/report.md"
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
        && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
               --upgrade --target "$SITE" . \
        || { echo "install failed (see log.txt)" | tee "$OUT/report.md"; exit 2; }
    echo "== installed in $(( $(date +%s) - started )) s"
    python3 benchmarks/device/gpu_check.py --device cuda --out "$OUT" "$@"
    status=$?
    echo "== gpu_check exit status $status after $(( $(date +%s) - started )) s"
    exit $status
} 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
