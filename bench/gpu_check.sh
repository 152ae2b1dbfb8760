#!/usr/bin/env bash
# The device checks, as one script for a session that is lent a GPU machine (see bench/RESULTS.md):
# the CUDA tests, then the benchmarks on cuda, most wanted figure first, each step under its own
# timeout so that one slow step cannot eat the rest. Logs go to $OUT (or bench/out).
#
# The device machine reaches no package index, and its image lacks orjson. Before the call, here:
#     bash bench/device_wheels.sh          # fills .whl/ (ignored by git)
# then call the device tool's run with carry [".whl"] and the command `bash bench/gpu_check.sh`
# (timeout_s 600). The package is used from src/ (PYTHONPATH), not pip-installed: an install would
# want huggingface_hub>=2 from the network; the image's 1.x is enough for everything run here.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}; mkdir -p "$out"
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
python3 -c "import spectrum_stream, orjson, threadpoolctl, transformers" || exit 1

step() {  # step SECONDS LOGNAME COMMAND...: run it, log to $out/LOGNAME, never longer than SECONDS
  local secs=$1 log=$2; shift 2
  echo "== $log ($(date +%T), at most ${secs}s): $*"
  timeout "$secs" "$@" 2>&1 | tee "$out/$log"
  echo "== $log: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# about 7 minutes in all, so that a 10-minute call has room; bench_110b prints each row when done
step 90 test_cuda.log python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
step 200 110b_cuda.md python3 bench/bench_110b.py --devices "$device" --methods gram,exact --layers 1
step 80 kernels_cuda.md python3 bench/bench_kernels.py --device "$device" \
  --shapes 2816x1024,1024x8192,8192x8192,8192x49152 --repeat 2
step 60 scan_cuda.md python3 bench/bench_scan.py --device "$device" \
  --methods exact,exact+no-prefetch,gram,gram+no-prefetch
