#!/usr/bin/env bash
# The GPU check, run on a machine with a GPU from the repository
# root after scripts/gpu-bundle.sh packed device-bundle/ here: starts
# `ferryd --backend cuda` on loopback and runs, through ferry's libcuda.so.1,
# every end-to-end program, the cuBLAS GEMMs and stock PyTorch; the cuBLAS and
# PyTorch checks also run natively for time ratios. Prints a summary table;
# when $OUT is set, writes gpu-report.md, gpu-report.json and gpu-logs.txt
# there.
#
#   scripts/gpu-check.sh [--backend cuda|host] [--steps N]
#
# --backend host runs the same harness against the host backend on a machine
# without a GPU (the harness's own check): programs that need a real GPU are
# reported SKIP, and the cuBLAS GEMM must fail with "no host implementation".
# Environment: BUNDLE_DIR (default device-bundle), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bundle=$(realpath "${BUNDLE_DIR:-device-bundle}")
backend=cuda
steps=300
python=${PYTHON:-python3}
while (($#)); do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: scripts/gpu-check.sh [--backend cuda|host] [--steps N]" >&2; exit 2 ;;
  esac
done
[ -x "$bundle/bin/ferryd" ] || { echo "gpu-check: no bundle at $bundle (run scripts/gpu-bundle.sh)" >&2; exit 2; }

work=$(mktemp -d /tmp/ferry-gpu-check.XXXXXX)
logs="$work/logs.txt"
: > "$logs"
results=()   # "name|status|seconds|detail"
ferryd_pid=""
cleanup() {
  [ -n "$ferryd_pid" ] && kill "$ferryd_pid" 2>/dev/null && wait "$ferryd_pid" 2>/dev/null
}
trap cleanup EXIT

# ferryd must find the system's libcuda.so.1, never ferry's own: its library
# path holds only the bundled dependencies.
server_env=(env "LD_LIBRARY_PATH=$bundle/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
client_libs="$bundle/client:$bundle/deps:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
native_libs="$bundle/deps:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

record() {  # record NAME STATUS SECONDS DETAIL
  results+=("$1|$2|$3|$4")
  printf '%-34s %-5s %7ss  %s\n' "$1" "$2" "$3" "$4"
}

# run_logged NAME TIMEOUT CMD...: runs CMD, appends its output to the logs,
# leaves it in $work/NAME.out, sets $rc and $seconds.
run_logged() {
  local name=$1 limit=$2
  shift 2
  local start=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$work/$name.out" 2>&1
  rc=$?
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
  { echo "==== $name (rc $rc, ${seconds}s): $*"; cat "$work/$name.out"; } >> "$logs"
}

last_line() { grep -v '^\s*$' "$work/$1.out" | tail -n 1 | cut -c1-120; }

# --- the device -----------------------------------------------------------
device="(no GPU)"
driver="(none)"
if command -v nvidia-smi > /dev/null; then
  device=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
fi
echo "gpu-check: backend $backend; device $device; driver $driver"
echo "gpu-check: bundle $(tr '\n' ';' < "$bundle/MANIFEST")"

# --- ferryd ---------------------------------------------------------------
ready="$work/ready"
ferryd_args=(--listen 127.0.0.1:0 --backend "$backend" --ready-file "$ready")
if [ "$backend" = host ]; then
  for plugin in "$bundle"/host-kernels/*.so; do ferryd_args+=(--host-kernels "$plugin"); done
fi
"${server_env[@]}" "$bundle/bin/ferryd" "${ferryd_args[@]}" 2> "$work/ferryd.log" &
ferryd_pid=$!
for _ in $(seq 200); do
  [ -s "$ready" ] && break
  kill -0 "$ferryd_pid" 2> /dev/null || break
  sleep 0.1
done
if [ ! -s "$ready" ]; then
  cat "$work/ferryd.log" >&2
  echo "gpu-check: ferryd did not start" >&2
  exit 1
fi
server=$(cat "$ready")
client_env=(env "LD_LIBRARY_PATH=$client_libs" "FERRY_SERVER=$server" "FERRY_E2E_BACKEND=$backend")
native_env=(env -u FERRY_SERVER "LD_LIBRARY_PATH=$native_libs")
echo "gpu-check: ferryd at $server"
echo

# --- end-to-end programs --------------------------------------------------
for program in "$bundle"/programs/*; do
  name=$(basename "$program")
  case "$name" in
    # Helpers of the ctest harness (they need its setup), not checks.
    e2e_hold_and_wait|e2e_unreachable|e2e_host_callback_hold|e2e_pool_client) continue ;;
  esac
  case "$name" in
    lib*.so) continue ;;
    rt_runtime_two_runtimes*) args=("$bundle/programs/librt_two_runtimes_lib.so") ;;
    rt_runtime_cublas*) args=(64) ;;
    *) args=("$bundle/images") ;;
  esac
  run_logged "$name" 300 "${client_env[@]}" "$program" "${args[@]}"
  if [ "$backend" = host ] && [[ "$name" == rt_runtime_cublas* ]]; then
    # The host backend has no cuBLAS kernels: the GEMM must fail, clearly.
    if [ "$rc" = 1 ] && grep -q "no host implementation for kernel" "$work/$name.out"; then
      record "$name" PASS "$seconds" "GEMM refused: no host implementation (as expected)"
    else
      record "$name" FAIL "$seconds" "rc $rc: $(last_line "$name")"
    fi
  elif [ "$rc" = 0 ]; then record "$name" PASS "$seconds" "$(last_line "$name")"
  else record "$name" FAIL "$seconds" "rc $rc: $(last_line "$name")"; fi
done

# --- the CUDA backend's own tests on the real driver (no ferry client) -------
backend_test="$bundle/checks/cuda_backend_gpu_test"
if [ "$backend" != cuda ]; then
  record cuda_backend_gpu_test SKIP 0 "needs the real driver"
elif [ -x "$backend_test" ]; then
  run_logged cuda_backend_gpu_test 600 env "LD_LIBRARY_PATH=$bundle/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "FERRY_TEST_IMAGE_DIR=$bundle/checks/backend-images" "$backend_test"
  summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$work/cuda_backend_gpu_test.out" | tr '\n' ' ')
  if [ "$rc" = 0 ] && ! grep -q '^\[  SKIPPED' "$work/cuda_backend_gpu_test.out"; then
    record cuda_backend_gpu_test PASS "$seconds" "$summary"
  else
    record cuda_backend_gpu_test FAIL "$seconds" "rc $rc: $summary"
  fi
else
  record cuda_backend_gpu_test FAIL 0 "not in the bundle"
fi

# --- cuBLAS ---------------------------------------------------------------
gemm="$bundle/checks/gpu_cublas_gemm"
declare -A figures=()
if [ ! -x "$gemm" ]; then
  record cublas_gemm FAIL 0 "not in the bundle"
elif [ "$backend" = host ]; then
  run_logged cublas_gemm_host 300 "${client_env[@]}" "$gemm" 64
  if [ "$rc" != 0 ] && grep -q "no host implementation for kernel" "$work/cublas_gemm_host.out"; then
    record cublas_gemm_host PASS "$seconds" "GEMM refused: no host implementation (as expected)"
  else
    record cublas_gemm_host FAIL "$seconds" "rc $rc: $(last_line cublas_gemm_host)"
  fi
else
  for mode in ferry native; do
    if [ "$mode" = ferry ]; then run_logged cublas_gemm_ferry 600 "${client_env[@]}" "$gemm"
    else run_logged cublas_gemm_native 600 "${native_env[@]}" "$gemm"; fi
    out="$work/cublas_gemm_$mode.out"
    if [ "$rc" = 0 ]; then record "cublas_gemm_$mode" PASS "$seconds" "$(grep -c PASS "$out") GEMMs match the CPU reference"
    else record "cublas_gemm_$mode" FAIL "$seconds" "rc $rc: $(last_line "cublas_gemm_$mode")"; fi
    while read -r kind size _ ms _; do
      figures["${kind}_${size%:}_$mode"]=$ms
    done < <(grep -E '^[sd]gemm [0-9]+: ' "$out" | awk '{print $1, $2, $3, $4}')
  done
fi

# --- PyTorch --------------------------------------------------------------
if ! "$python" -c "import torch" 2> /dev/null; then
  record torch SKIP 0 "$python has no torch"
else
  run_logged torch_ferry 600 "${client_env[@]}" "$python" "$bundle/checks/torch_check.py" \
    --steps "$steps" --expect-libcuda-dir "$bundle/client"
  if [ "$rc" = 0 ]; then record torch_ferry PASS "$seconds" "$(grep '^training' "$work/torch_ferry.out" | cut -c30-)"
  else record torch_ferry FAIL "$seconds" "rc $rc: $(last_line torch_ferry)"; fi
  if [ "$backend" = cuda ]; then
    run_logged torch_native 600 "${native_env[@]}" "$python" "$bundle/checks/torch_check.py" --steps "$steps"
    if [ "$rc" = 0 ]; then record torch_native PASS "$seconds" "$(grep '^training' "$work/torch_native.out" | cut -c30-)"
    else record torch_native FAIL "$seconds" "rc $rc: $(last_line torch_native)"; fi
  fi
fi

# --- ferryd survived all of it ----------------------------------------------
if kill -0 "$ferryd_pid" 2> /dev/null && "${server_env[@]}" "$bundle/bin/ferryctl" status --server "$server" > "$work/ferryctl.out" 2>&1; then
  record ferryd_alive PASS 0 "ferryctl status answered after every check"
else
  record ferryd_alive FAIL 0 "ferryd is gone or does not answer"
fi
kill "$ferryd_pid" 2> /dev/null
wait "$ferryd_pid" 2> /dev/null
ferryd_pid=""
{ echo "==== ferryd log"; cat "$work/ferryd.log"; } >> "$logs"

# --- summary ---------------------------------------------------------------
pass=0; fail=0; skip=0
for r in "${results[@]}"; do
  case "$(echo "$r" | cut -d'|' -f2)" in PASS) ((pass++)) ;; FAIL) ((fail++)) ;; *) ((skip++)) ;; esac
done
ratio() {  # ratio A B: A/B with two decimals, or "-"
  [ -n "${1:-}" ] && [ -n "${2:-}" ] && echo "$1 $2" | awk '$2 > 0 {printf "%.2f", $1 / $2; exit} {print "-"}' || echo "-"
}
torch_json() {  # torch_json MODE KEY: a training figure from torch_check's result line
  grep '^result ' "$work/torch_$1.out" 2> /dev/null | cut -c8- |
    "$python" -c "import json,sys; print(json.load(sys.stdin)['training']['$2'])" 2> /dev/null
}
step_ferry=$(torch_json ferry step_ms_median)
step_native=$(torch_json native step_ms_median)
commit=$(sed -n 's/^commit //p' "$bundle/MANIFEST")

report="$work/gpu-report.md"
{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- device: $device"
  echo "- driver: $driver"
  echo "- backend: $backend"
  echo "- commit: $commit"
  echo "- result: $pass passed, $fail failed, $skip skipped"
  echo
  echo "| check | result | seconds | detail |"
  echo "| --- | --- | ---: | --- |"
  for r in "${results[@]}"; do
    IFS='|' read -r n s t d <<< "$r"
    echo "| $n | $s | $t | ${d//|//} |"
  done
  echo
  echo "## Figures"
  echo
  echo "| figure | through ferry | native | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| PyTorch MLP training step, median ms | ${step_ferry:--} | ${step_native:--} | $(ratio "$step_ferry" "$step_native") |"
  for key in $(printf '%s\n' "${!figures[@]}" | sed -n 's/_ferry$//p' | sort -t_ -k2 -n); do
    echo "| $key ms | ${figures[${key}_ferry]} | ${figures[${key}_native]:--} | $(ratio "${figures[${key}_ferry]}" "${figures[${key}_native]:-}") |"
  done
} > "$report"
{
  printf '{"backend":"%s","device":"%s","driver":"%s","commit":"%s","passed":%d,"failed":%d,"skipped":%d,"checks":[' \
    "$backend" "$device" "$driver" "$commit" "$pass" "$fail" "$skip"
  sep=""
  for r in "${results[@]}"; do
    IFS='|' read -r n s t d <<< "$r"
    d=${d//\\/\\\\}; d=${d//\"/\\\"}
    printf '%s{"name":"%s","result":"%s","seconds":%s,"detail":"%s"}' "$sep" "$n" "$s" "$t" "$d"
    sep=","
  done
  printf '],"torch_step_ms":{"ferry":%s,"native":%s}}\n' "${step_ferry:-null}" "${step_native:-null}"
} > "$work/gpu-report.json"

echo
cat "$report"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$report" "$work/gpu-report.json" "$OUT/"
  cp "$logs" "$OUT/gpu-logs.txt"
  echo "gpu-check: report written to $OUT"
fi
[ "$fail" = 0 ]
