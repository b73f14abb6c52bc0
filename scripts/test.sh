#!/usr/bin/env bash
# Runs ferry's whole test suite: installs what it needs, builds, runs ctest.
# Tests labelled "gpu" run only where an NVIDIA driver is present.
#
#   scripts/test.sh [extra ctest arguments]
#
# Environment: BUILD_DIR (default build), FERRY_SANITIZE=1 for an ASan/UBSan build.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=$(nproc)

scripts/install-deps.sh
sanitize=OFF
[ "${FERRY_SANITIZE:-0}" = 1 ] && sanitize=ON
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_SANITIZE="$sanitize"
cmake --build "$build" -j"$jobs"

label_args=()
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 ' && [ ! -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 ]; then
  echo "test.sh: no NVIDIA driver here; skipping tests labelled gpu"
  label_args=(-LE gpu)
fi
cd "$build"
ctest --output-on-failure -j"$jobs" --timeout 600 "${label_args[@]}" "$@"
