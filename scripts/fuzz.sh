#!/usr/bin/env bash
# Fuzzes ferry: builds the libFuzzer targets of test/fuzz with clang, ASan
# and UBSan (every UBSan finding fatal) in their own build folder, then runs
# each for a bounded time, starting from its committed corpus
# (test/fuzz/corpus/<target>; new inputs go to the build folder, so the tree
# stays clean). Stops by itself; exits nonzero if any target found a crash,
# a leak, a sanitizer report, a timeout or an out-of-memory, and says where
# the reproducer is.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
#   FUZZ_BUILD_DIR  build folder (default build-fuzz)
#   FUZZ_TARGETS    targets to run (default: all four)
#
# Reproduce a finding: build-fuzz/bin/fuzz_<target> <reproducer>. Fixing one
# means a fix in the code, its reproducer committed to the target's corpus
# (the normal suite replays it: ctest -L fuzz) and a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=${FUZZ_BUILD_DIR:-build-fuzz}
read -r -a targets <<<"${FUZZ_TARGETS:-frame image session shm_ring}"

for tool in clang clang++; do
  command -v "$tool" >/dev/null || {
    echo "fuzz.sh: $tool is missing (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
done
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache
                                        -DCMAKE_C_COMPILER_LAUNCHER=ccache)

start=$(date +%s)
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" \
  -DFERRY_FUZZ=ON -DFERRY_SANITIZE=ON \
  -DCMAKE_C_FLAGS="-fno-sanitize-recover=all" -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=all" \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
built=$(date +%s)
echo "fuzz.sh: built ${targets[*]} in $((built - start)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for target in "${targets[@]}"; do
  work="$build/fuzz/$target"
  findings="$build/fuzz/findings/$target"
  mkdir -p "$work" "$findings"
  echo "fuzz.sh: $target for ${seconds} s"
  # -timeout: one input running this long is a hang (a finding);
  # -malloc_limit_mb: one allocation this large is a finding (what a
  # peer claims must not decide what ferryd allocates).
  if ! "$build/bin/fuzz_$target" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=512 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/" \
      "$work" "test/fuzz/corpus/$target" >"$build/fuzz/$target.log" 2>&1; then
    failed+=("$target")
    tail -n 60 "$build/fuzz/$target.log" >&2
    echo "fuzz.sh: $target FAILED; reproducer(s): $(ls "$findings" | tr '\n' ' ')" >&2
  else
    grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" \
      "$build/fuzz/$target.log" | tr '\n' ' '
    echo
  fi
done
echo "fuzz.sh: build $((built - start)) s, fuzzing $(($(date +%s) - built)) s"
if ((${#failed[@]})); then
  echo "fuzz.sh: findings in: ${failed[*]} (see $build/fuzz/findings/)" >&2
  exit 1
fi
