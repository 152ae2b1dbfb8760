#!/usr/bin/env bash
# The device checks, as one script for a session that is lent a GPU machine (see bench/RESULTS.md):
# the CUDA tests, then the kernel, real-layout and 110B-shape benchmarks on cuda. Writes logs to
# $OUT (or bench/out). Budget: about 10 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e '.[test]' 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
python3 bench/bench_kernels.py --device cuda \
  --shapes 8192x49152,49152x8192,8192x8192,1024x8192,2816x1024 --repeat 2 2>&1 | tee "$out/kernels_cuda.md"
python3 bench/bench_scan.py --device cuda --methods exact,gram,exact+no-prefetch 2>&1 | tee "$out/scan_cuda.md"
python3 bench/bench_110b.py --devices cuda --methods gram,exact --layers 1 2>&1 | tee "$out/110b_cuda.md"
