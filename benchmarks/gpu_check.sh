#!/usr/bin/env bash
# Every GPU check in one run, under 8 minutes on one GPU: PASS/FAIL per check, then the timing
# table (see benchmarks/gpu_check.py for the list).
#   bash benchmarks/gpu_check.sh data.root=/path/to/mnist
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
