#!/usr/bin/env bash
# Wheels the GPU device machine lacks (it reaches no package index): orjson, for Python 3.12 on
# x86-64 Linux, into .whl/ (ignored by git). bench/gpu_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "orjson>=3.9"
ls -l .whl
