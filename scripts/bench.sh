#!/usr/bin/env bash
# Builds and runs ferry-bench (bench/): ferry's figures beside the machine's
# raw TCP and memcpy limits, measured in one run. Not part of the tests.
#
#   scripts/bench.sh [ferry-bench arguments, e.g. --reps 5 --json out.json]
#
# Environment: BUILD_DIR (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build "$build" --target ferry-bench
exec "$build/bin/ferry-bench" "$@"
