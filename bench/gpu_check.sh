#!/usr/bin/env bash
# The device checks, as one script for a session that is lent a GPU machine (an H200 so far; see
# bench/RESULTS.md): the benchmarks on cuda, most wanted figure first, and the CUDA tests, each
# step under its own SIGKILL timeout so that one slow step cannot eat the rest. Logs go to $OUT
# (or bench/out); record the figures in bench/RESULTS.md as H200 figures.
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
  # SIGKILL, not SIGTERM: a process inside a long cuSOLVER call never sees SIGTERM. Every script
  # prints each row as it finishes ("# done: ..."), so a killed step still leaves its rows.
  local secs=$1 log=$2; shift 2
  echo "== $log ($(date +%T), at most ${secs}s): $*"
  timeout -s KILL "$secs" "$@" 2>&1 | tee "$out/$log"
  local rc=${PIPESTATUS[0]}
  echo "== $log: exit $rc$([ "$rc" = 137 ] && echo ' (killed at its limit)')"
}

started=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Under 8 minutes in all on one H200 (the steps' limits add up to 450 s), so a 10-minute call
# has room; the most wanted figures first: the 110B-shaped layer (gram, then exact with the
# default driver), then the kernels at 8192x8192 and 49152x8192, then the tests, then the scan.
step 170 110b_cuda.md python3 bench/bench_110b.py --devices "$device" --methods gram,exact --layers 1
step 140 kernels_cuda.md python3 bench/bench_kernels.py --device "$device" \
  --shapes 8192x8192,49152x8192,2816x1024 --repeat 1
step 95 test_cuda.log python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
step 45 scan_cuda.md python3 bench/bench_scan.py --device "$device" --layers 4 \
  --methods exact,gram,exact+no-prefetch
echo "== all steps: $((SECONDS - started)) s"
