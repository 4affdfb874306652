#!/usr/bin/env bash
# Every test that needs CUDA (pytest marker `gpu`) in one pytest run on the device machine, spread over
# $WORKERS processes with pytest-xdist (Triton's compiles, on the CPU, are most of the time; the workers share
# GPU 0). The 2-GPU tests (tests/train/test_gpu_ddp.py) skip where fewer than two GPUs are visible.
#   bash benchmarks/gpu_tests.sh [pytest paths / args]   # default: tests
# Environment: OUT (out/gpu_tests: log.txt, junit.xml), WORKERS (8), LIMIT_S (500, pytest's wall limit).
# Extra pytest args go after the paths, e.g. `bash benchmarks/gpu_tests.sh tests -x`.
set -uo pipefail
OUT=${OUT:-out/gpu_tests}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
[ $# -gt 0 ] || set -- tests
# -v: one line per test as it ends, so a run cut by the limit still names every failure so far
timeout "${LIMIT_S:-500}" python3 -m pytest -m gpu -n "${WORKERS:-8}" -v -p no:cacheprovider -p no:benchmark \
  -rfE --tb=short --durations=8 --junitxml "$OUT/junit.xml" "$@" > "$OUT/log.txt" 2>&1
rc=$?
grep -E " (FAILED|ERROR) |^(FAILED|ERROR)|^E  |passed|failed" "$OUT/log.txt" | cut -c1-300 | tail -40
echo "$(grep -c " PASSED " "$OUT/log.txt") passed, $(grep -c " FAILED " "$OUT/log.txt") failed so far"
echo "pytest exit $rc"
exit $rc
