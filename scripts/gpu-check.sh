#!/usr/bin/env bash
# The GPU check, run on a machine with a GPU from the repository root after
# scripts/gpu-bundle.sh packed device-bundle/ here. Starts `ferryd --backend
# cuda` on loopback TCP and on a unix: (shared memory) socket and runs,
# through ferry's libcuda.so.1 and natively where a comparison needs it:
#
#   e2e_* rt_*          every end-to-end and runtime program (through ferry)
#   cuda_backend_gpu_test  the CUDA backend's gtests on the real driver,
#                       the SM-partition test among them (no ferry client)
#   cublas_gemm         SGEMM/DGEMM vs a CPU reference (ferry, native)
#   bench               ferry-bench driver figures: sync RTT, launches/s, H2D/D2H
#                       pinned and pageable at 64 and 256 MiB (native, TCP, shm;
#                       RDMA where the machine has a device, else SKIP saying so)
#   graph_bench         a captured CUDA graph vs the same stream launches
#   torch               test/gpu/torch_check.py (TCP, shm, native): each
#                       sub-check its own row; transformer loss vs native
#   cupy                test/gpu/cupy_check.py when CuPy imports (TCP, native)
#   compute_shares      two half slices (a second ferryd, --config with
#                       slices_per_gpu = 2): a compute-bound kernel alone vs
#                       together, and the mechanism ferryctl reports
#   torch_idle_release  torch_check's transformer paused 4 s halfway on a pool
#                       with idle_release = 1s: its memory parked, the GPU given
#                       back and borrowed again; its loss must match native's
#   fault_isolation     one session's illegal-address kernel beside a second
#                       session's copy/kernel loop; ferryd must stay up
#
# Each part has its own timeout, and the whole run a budget (default 420 s):
# a part that would start with too little of it left is reported SKIP. Every
# row is PASS, FAIL or SKIP with its seconds and figures; timings are
# reported, never a verdict. Prints the report; with $OUT set, writes
# gpu-report.md (ready to copy into bench/results/), gpu-report.json and
# gpu-logs.txt there.
#
#   scripts/gpu-check.sh [--backend cuda|host] [--steps N] [--budget SECONDS]
#
# --backend host runs the same harness against the host backend on a machine
# without a GPU (the harness's own check): parts that need a real GPU, torch
# or CuPy are SKIP with the reason, the cuBLAS GEMM must fail with "no host
# implementation", and the bench figures come from the host backend.
# Environment: BUNDLE_DIR (default device-bundle), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
bundle=$(realpath "${BUNDLE_DIR:-device-bundle}")
backend=cuda
steps=300
budget=420
python=${PYTHON:-python3}
usage="usage: scripts/gpu-check.sh [--backend cuda|host] [--steps N] [--budget SECONDS]"
while (($#)); do
  case "$1" in
    --backend) backend=${2:?$usage}; shift 2 ;;
    --steps) steps=${2:?$usage}; shift 2 ;;
    --budget) budget=${2:?$usage}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
case "$backend" in cuda|host) ;; *) echo "$usage" >&2; exit 2 ;; esac
[ -x "$bundle/bin/ferryd" ] || { echo "gpu-check: no bundle at $bundle (run scripts/gpu-bundle.sh)" >&2; exit 2; }

started=$(date +%s)
work=$(mktemp -d /tmp/ferry-gpu-check.XXXXXX)
logs="$work/logs.txt"
: > "$logs"
results=()   # "name|status|seconds|detail"
figures=()   # "label|native|tcp|unix|note"
background=()  # pids this script started and must not leave behind
cleanup() {
  local pid
  for pid in "${background[@]}"; do
    kill "$pid" 2> /dev/null && wait "$pid" 2> /dev/null
  done
}
trap cleanup EXIT

# ferryd must find the system's libcuda.so.1, never ferry's own: its library
# path holds only the bundled dependencies.
server_env=(env "LD_LIBRARY_PATH=$bundle/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
client_libs="$bundle/client:$bundle/deps:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
native_libs="$bundle/deps:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

record() {  # record NAME STATUS SECONDS DETAIL
  local detail=${4//|//}
  detail=${detail//[$'\t\r']/ }
  results+=("$1|$2|$3|$detail")
  printf '%-40s %-5s %7ss  %s\n' "$1" "$2" "$3" "$4"
}
figure() {  # figure LABEL NATIVE TCP UNIX NOTE (a missing value: "")
  figures+=("$1|$2|$3|$4|$5")
}

left() { echo $((budget - ($(date +%s) - started))); }
# have_time NAME...: true when the budget still holds a part; else records
# each NAME as SKIP.
have_time() {
  (($(left) >= 20)) && return 0
  local name
  for name in "$@"; do record "$name" SKIP 0 "time budget spent (${budget} s)"; done
  return 1
}
# gpu_part_ready NAME PROGRAM [WHY]: true when a part that needs the real
# driver can run; else records NAME as SKIP on the host backend (WHY) or as
# FAIL when PROGRAM is not in the bundle.
gpu_part_ready() {
  local name=$1 program=$2 why=${3:-"needs a GPU (the host backend has no kernels for it)"}
  if [ "$backend" != cuda ]; then record "$name" SKIP 0 "$why"; return 1; fi
  if [ ! -x "$program" ]; then record "$name" FAIL 0 "not in the bundle"; return 1; fi
}
# run_logged NAME LIMIT CMD...: runs CMD under a timeout (LIMIT, cut to what
# the budget has left), appends its output to the logs, leaves it in
# $work/NAME.out, sets $rc and $seconds.
run_logged() {
  local name=$1 limit=$2
  shift 2
  local cap=$(($(left) - 10))
  ((cap < limit)) && limit=$((cap > 5 ? cap : 5))
  local start
  start=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$work/$name.out" 2>&1
  rc=$?
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  { echo "==== $name (rc $rc, ${seconds}s, limit ${limit}s): $*"; cat "$work/$name.out"; } >> "$logs"
  if ((rc == 124 || rc == 137)); then echo "timed out after ${limit} s" >> "$work/$name.out"; fi
}
last_line() { grep -v '^\s*$' "$work/$1.out" | tail -n 1 | cut -c1-160; }
# value FILE KEY: the number after KEY on the first line that has it.
value() { awk -v k="$2" '{for (i = 1; i < NF; i++) if ($i == k) {print $(i + 1); exit}}' "$1" 2> /dev/null; }
have_python() { command -v "$python" > /dev/null 2>&1; }

# start_ferryd NAME READY_FILE ARGS...: starts a ferryd in the background, waits
# (10 s at most) for its ready file; sets $started_pid.
start_ferryd() {
  local name=$1 ready=$2
  shift 2
  "${server_env[@]}" "$bundle/bin/ferryd" --ready-file "$ready" "$@" 2> "$work/$name.log" &
  started_pid=$!
  background+=("$started_pid")
  for _ in $(seq 100); do
    [ -s "$ready" ] && return 0
    kill -0 "$started_pid" 2> /dev/null || break
    sleep 0.1
  done
  return 1
}

# --- the device -----------------------------------------------------------
device="(no GPU)"
driver="(none)"
gpu_count=0
if command -v nvidia-smi > /dev/null; then
  gpu_count=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
  device=$(timeout 20 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)
  driver=$(timeout 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
fi
commit=$(sed -n 's/^commit //p' "$bundle/MANIFEST")
echo "gpu-check: backend $backend; device $device; driver $driver; budget ${budget} s"
echo "gpu-check: bundle $(tr '\n' ';' < "$bundle/MANIFEST")"

# --- ferryd: loopback TCP and unix: shared memory ----------------------------
sock="$work/ferry.sock"
ferryd_args=(--listen 127.0.0.1:0 --listen "unix:$sock" --backend "$backend")
if [ "$backend" = host ]; then
  for plugin in "$bundle"/host-kernels/*.so; do ferryd_args+=(--host-kernels "$plugin"); done
  # Two devices, so that the peers program has a pair, as in ctest.
  ferryd_args+=(--host-memory 2GiB --host-devices 2)
fi
if ! start_ferryd ferryd "$work/ready" "${ferryd_args[@]}"; then
  cat "$work/ferryd.log" >&2
  echo "gpu-check: ferryd did not start" >&2
  exit 1
fi
ferryd_pid=$started_pid
server=$(cat "$work/ready")
# FERRY_TRANSPORT=tcp: the TCP runs stay on TCP (a client on ferryd's host
# would otherwise move to shared memory in the handshake; shm_env covers that).
client_env=(env "LD_LIBRARY_PATH=$client_libs" "FERRY_SERVER=$server" "FERRY_TRANSPORT=tcp"
  "FERRY_E2E_BACKEND=$backend")
shm_env=(env "LD_LIBRARY_PATH=$client_libs" "FERRY_SERVER=unix:$sock" "FERRY_E2E_BACKEND=$backend")
native_env=(env -u FERRY_SERVER "LD_LIBRARY_PATH=$native_libs")
ferryd_alive() {  # ferryd_alive ADDRESS PID
  kill -0 "$2" 2> /dev/null &&
    timeout 20 "${server_env[@]}" "$bundle/bin/ferryctl" status --server "$1" > /dev/null 2>&1
}
echo "gpu-check: ferryd at $server and unix:$sock"
echo

# --- end-to-end programs (through ferry, TCP) ---------------------------------
for program in "$bundle"/programs/*; do
  name=$(basename "$program")
  case "$name" in
    # Helpers of the ctest harness (they need its setup), not checks.
    e2e_hold_and_wait|e2e_unreachable|e2e_host_callback_hold|e2e_pool_client|e2e_tenant_reach) continue ;;
    lib*.so) continue ;;
  esac
  case "$name" in
    rt_runtime_two_runtimes*) args=("$bundle/programs/librt_two_runtimes_lib.so") ;;
    rt_runtime_cublas*) args=(64) ;;
    rt_runtime_link*)
      args=("$bundle/images/link_kernel.ptx" "$bundle/images/link_op.ptx"
        "$bundle/images/link_counter.ptx") ;;
    *) args=("$bundle/images") ;;
  esac
  if [ "$name" = e2e_peers ] && [ "$backend" = cuda ] && ((gpu_count < 2)); then
    record "$name" SKIP 0 "needs two GPUs, this machine has $gpu_count"
    continue
  fi
  have_time "$name" || continue
  run_logged "$name" 60 "${client_env[@]}" "$program" "${args[@]}"
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
if gpu_part_ready cuda_backend_gpu_test "$backend_test" "needs the real driver" &&
  have_time cuda_backend_gpu_test; then
  run_logged cuda_backend_gpu_test 120 env "LD_LIBRARY_PATH=$bundle/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "FERRY_TEST_IMAGE_DIR=$bundle/checks/backend-images" "$backend_test"
  out="$work/cuda_backend_gpu_test.out"
  summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out" | tr '\n' ' ')
  if [ "$rc" = 0 ] && ! grep -q '^\[  SKIPPED' "$out"; then
    record cuda_backend_gpu_test PASS "$seconds" "$summary"
  else
    record cuda_backend_gpu_test FAIL "$seconds" "rc $rc: $summary"
  fi
  # The SM-partition test's own figures (it prints them; it asserts no timing).
  partition=$(grep -E '^(SM partition|compute-bound kernel)' "$out" | tr '\n' ' ')
  if grep -q 'HalfSlicesRunOnDisjointSmPartitions' "$out"; then
    verdict=$(grep -E '^\[ *(OK|FAILED|SKIPPED) *\] CudaGpuTest.HalfSlicesRunOnDisjointSmPartitions' "$out" |
      head -n 1 | sed -E 's/^\[ *([A-Z]+) *\].*/\1/')
    case "$verdict" in OK) s=PASS ;; SKIPPED) s=SKIP ;; *) s=FAIL ;; esac
    skip_reason=$(grep -A3 'HalfSlicesRunOnDisjointSmPartitions' "$out" | grep -o 'no SM partitions.*' | head -n 1)
    record cuda_backend_gpu_test.sm_partition "$s" 0 "${partition:-$skip_reason}"
  fi
fi

# --- cuBLAS ---------------------------------------------------------------
gemm="$bundle/checks/gpu_cublas_gemm"
if [ ! -x "$gemm" ]; then
  record cublas_gemm FAIL 0 "not in the bundle"
elif [ "$backend" = host ]; then
  if have_time cublas_gemm_host; then
    run_logged cublas_gemm_host 60 "${client_env[@]}" "$gemm" 64
    if [ "$rc" != 0 ] && grep -q "no host implementation for kernel" "$work/cublas_gemm_host.out"; then
      record cublas_gemm_host PASS "$seconds" "GEMM refused: no host implementation (as expected)"
    else
      record cublas_gemm_host FAIL "$seconds" "rc $rc: $(last_line cublas_gemm_host)"
    fi
  fi
else
  for mode in ferry native; do
    have_time "cublas_gemm_$mode" || continue
    if [ "$mode" = ferry ]; then run_logged cublas_gemm_ferry 120 "${client_env[@]}" "$gemm"
    else run_logged cublas_gemm_native 120 "${native_env[@]}" "$gemm"; fi
    out="$work/cublas_gemm_$mode.out"
    if [ "$rc" = 0 ]; then record "cublas_gemm_$mode" PASS "$seconds" "$(grep -c PASS "$out") GEMMs match the CPU reference"
    else record "cublas_gemm_$mode" FAIL "$seconds" "rc $rc: $(last_line "cublas_gemm_$mode")"; fi
  done
  for gemm_line in $(grep -hoE '^[sd]gemm [0-9]+' "$work/cublas_gemm_ferry.out" 2> /dev/null | tr ' ' '_'); do
    k=${gemm_line/_/ }
    f=$(grep "^$k: " "$work/cublas_gemm_ferry.out" | awk '{print $4}')
    n=$(grep "^$k: " "$work/cublas_gemm_native.out" 2> /dev/null | awk '{print $4}')
    figure "cuBLAS $k, ms" "$n" "$f" "" ""
  done
fi

# --- driver figures: ferry-bench's client against a driver -------------------
# The same code takes the figures through ferry (TCP, shm) and through the
# system's driver (native), so the ratios compare like with like.
bench="$bundle/bin/ferry-bench"
bench_args=(--only "rtt,launch,copy" --copy-sizes "64MiB,256MiB" --fatbin "$bundle/checks/ferry_bench_kernels.fatbin")
if [ ! -x "$bench" ]; then
  record bench FAIL 0 "ferry-bench not in the bundle"
else
  for mode in native tcp unix; do
    if [ "$mode" = native ] && [ "$backend" != cuda ]; then
      record bench.native SKIP 0 "no GPU driver (host backend)"
      continue
    fi
    have_time "bench.$mode" || continue
    case "$mode" in
      native) run_logged "bench_$mode" 90 "${native_env[@]}" "$bench" --client native --libcuda libcuda.so.1 "${bench_args[@]}" ;;
      tcp) run_logged "bench_$mode" 90 "${client_env[@]}" "$bench" --client "$server" --libcuda "$bundle/client/libcuda.so.1" "${bench_args[@]}" ;;
      unix) run_logged "bench_$mode" 90 "${shm_env[@]}" "$bench" --client "unix:$sock" --libcuda "$bundle/client/libcuda.so.1" "${bench_args[@]}" ;;
    esac
    if [ "$rc" = 0 ]; then
      record "bench.$mode" PASS "$seconds" "RTT $(value "$work/bench_$mode.out" sync_rtt_us) us, $(value "$work/bench_$mode.out" launch_rate_kps) k launches/s"
    else
      record "bench.$mode" FAIL "$seconds" "rc $rc: $(last_line "bench_$mode")"
    fi
  done
  # RDMA (common/rdma/): recorded whether this machine has a device at all;
  # with one, the same figures through rdma:// to the loopback ferryd (a
  # loopback address may have no RDMA GID: the client then says why).
  if ! ls /sys/class/infiniband/* > /dev/null 2>&1; then
    record bench.rdma SKIP 0 "no RDMA device on this machine (/sys/class/infiniband is empty)"
  elif have_time bench.rdma; then
    run_logged bench_rdma 90 "${client_env[@]}" "$bench" --client "rdma://$server" --libcuda "$bundle/client/libcuda.so.1" "${bench_args[@]}"
    if [ "$rc" = 0 ]; then
      record bench.rdma PASS "$seconds" "devices: $(ls /sys/class/infiniband | tr '\n' ' ')RTT $(value "$work/bench_rdma.out" sync_rtt_us) us"
    else
      record bench.rdma FAIL "$seconds" "devices: $(ls /sys/class/infiniband | tr '\n' ' ')rc $rc: $(last_line bench_rdma)"
    fi
  fi
  bench_figure() {  # bench_figure LABEL KEY NOTE
    figure "$1" "$(value "$work/bench_native.out" "$2")" "$(value "$work/bench_tcp.out" "$2")" \
      "$(value "$work/bench_unix.out" "$2")" "$3"
  }
  bench_figure "sync call RTT (4 B cuMemcpyDtoH), us" sync_rtt_us ""
  bench_figure "pipelined launches, k/s" launch_rate_kps ""
  for size in 64MiB 256MiB; do
    for direction in h2d d2h; do
      for memory in pinned pageable; do
        bench_figure "$direction $memory $size, GB/s" "${direction}_${memory}_${size}_gbs" ""
      done
    done
  done
fi

# --- CUDA graph launch vs stream launches -----------------------------------
graph="$bundle/checks/gpu_graph_bench"
if gpu_part_ready graph_bench "$graph"; then
  for mode in native ferry; do
    have_time "graph_bench.$mode" || continue
    if [ "$mode" = ferry ]; then run_logged graph_ferry 60 "${client_env[@]}" "$graph"
    else run_logged graph_native 60 "${native_env[@]}" "$graph"; fi
    out="$work/graph_$mode.out"
    detail="stream $(value "$out" stream_us_per_step) us/step, graph $(value "$out" graph_us_per_step) us/step (20 kernels a step)"
    case "$rc" in
      0) record "graph_bench.$mode" PASS "$seconds" "$detail" ;;
      3) record "graph_bench.$mode" FAIL "$seconds" "stream launches ran; the graph did not: $(grep '^graph:' "$out" | head -n 1)" ;;
      *) record "graph_bench.$mode" FAIL "$seconds" "rc $rc: $(last_line "graph_$mode")" ;;
    esac
  done
  figure "20 kernels as stream launches, us/step" "$(value "$work/graph_native.out" stream_us_per_step)" \
    "$(value "$work/graph_ferry.out" stream_us_per_step)" "" ""
  figure "the same 20 kernels as one graph launch, us/step" "$(value "$work/graph_native.out" graph_us_per_step)" \
    "$(value "$work/graph_ferry.out" graph_us_per_step)" "" ""
fi

# --- PyTorch ----------------------------------------------------------------
# torch_rows MODE: one row per sub-check from torch_check's result line.
torch_rows() {
  grep '^result ' "$work/torch_$1.out" 2> /dev/null | tail -n 1 | cut -c8- | "$python" -c '
import json, sys
r = json.load(sys.stdin)
for name, verdict in r["checks"].items():
    print("%s|%s|%s" % (name, verdict, r.get("details", {}).get(name, "").replace("|", "/")))
' 2> /dev/null
}
# torch_value MODE PATH: a number from torch_check's result, e.g. transformer.loss_final.
torch_value() {
  grep '^result ' "$work/torch_$1.out" 2> /dev/null | tail -n 1 | cut -c8- | "$python" -c '
import json, sys
v = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    v = v[key]
print("%.6g" % v)
' "$2" 2> /dev/null
}
if ! have_python || ! "$python" -c "import torch" > /dev/null 2>&1; then
  record torch SKIP 0 "$python cannot import torch"
elif [ "$backend" != cuda ]; then
  record torch SKIP 0 "needs a GPU (the host backend runs no PyTorch kernels)"
else
  torch_args=(--steps "$steps" --transformer-steps "$steps" --graph-replays 20)
  for mode in tcp unix native; do
    have_time "torch.$mode" || continue
    case "$mode" in
      tcp) run_logged torch_tcp 150 "${client_env[@]}" "$python" "$bundle/checks/torch_check.py" "${torch_args[@]}" --expect-libcuda-dir "$bundle/client" ;;
      unix) run_logged torch_unix 150 "${shm_env[@]}" "$python" "$bundle/checks/torch_check.py" "${torch_args[@]}" --expect-libcuda-dir "$bundle/client" ;;
      native) run_logged torch_native 150 "${native_env[@]}" "$python" "$bundle/checks/torch_check.py" "${torch_args[@]}" ;;
    esac
    failed=$(grep '^result ' "$work/torch_$mode.out" | tail -n 1 | grep -o '"failures": \[[^]]*\]')
    if [ "$rc" = 0 ]; then record "torch.$mode" PASS "$seconds" "every sub-check passed"
    else record "torch.$mode" FAIL "$seconds" "rc $rc: ${failed:-$(last_line "torch_$mode")}"; fi
    while IFS='|' read -r sub verdict detail; do
      record "torch.$mode.$sub" "$verdict" 0 "$detail"
    done < <(torch_rows "$mode")
  done
  # The same seed and data: through ferry the transformer must reach the
  # native run's loss (summation order may differ a little, no more).
  native_loss=$(torch_value native transformer.loss_final)
  for mode in tcp unix; do
    ferry_loss=$(torch_value "$mode" transformer.loss_final)
    if [ -z "$native_loss" ] || [ -z "$ferry_loss" ]; then
      record "torch.$mode.loss_vs_native" SKIP 0 "a run gave no final loss (ferry: ${ferry_loss:-none}, native: ${native_loss:-none})"
      continue
    fi
    verdict=$(awk -v f="$ferry_loss" -v n="$native_loss" 'BEGIN {d = f - n; if (d < 0) d = -d
      m = f > n ? f : n; print (d <= 1e-3 + 0.02 * m) ? "PASS" : "FAIL"}')
    record "torch.$mode.loss_vs_native" "$verdict" 0 \
      "final transformer loss: ferry $ferry_loss, native $native_loss (tolerance 1e-3 + 2%)"
  done
  figure "PyTorch MLP training step, median ms" "$(torch_value native training.step_ms_median)" \
    "$(torch_value tcp training.step_ms_median)" "$(torch_value unix training.step_ms_median)" "target <= 1.3x TCP, <= 1.1x shm"
  figure "PyTorch transformer training step, median ms" "$(torch_value native transformer.step_ms_median)" \
    "$(torch_value tcp transformer.step_ms_median)" "$(torch_value unix transformer.step_ms_median)" "target <= 1.3x TCP, <= 1.1x shm"
  figure "PyTorch transformer final loss" "$native_loss" "$(torch_value tcp transformer.loss_final)" \
    "$(torch_value unix transformer.loss_final)" "same seed and data"
  figure "PyTorch inference, 1024 sequences, ms" "$(torch_value native inference.latency_ms)" \
    "$(torch_value tcp inference.latency_ms)" "$(torch_value unix inference.latency_ms)" ""
fi

# --- CuPy -------------------------------------------------------------------
if ! have_python; then
  record cupy SKIP 0 "no $python"
elif ! "$python" -c "import cupy" > "$work/cupy_import.out" 2>&1; then
  record cupy SKIP 0 "$python cannot import cupy: $(tail -n 1 "$work/cupy_import.out" | cut -c1-100)"
elif [ "$backend" != cuda ]; then
  record cupy SKIP 0 "needs a GPU"
else
  for mode in tcp native; do
    have_time "cupy.$mode" || continue
    if [ "$mode" = tcp ]; then run_logged cupy_tcp 90 "${client_env[@]}" "$python" "$bundle/checks/cupy_check.py"
    else run_logged cupy_native 90 "${native_env[@]}" "$python" "$bundle/checks/cupy_check.py"; fi
    out="$work/cupy_$mode.out"
    case "$rc" in
      0) record "cupy.$mode" PASS "$seconds" "$(grep -E '^(elementwise|reduction|matmul) ' "$out" | awk '{print $1}' | tr '\n' ' ')passed" ;;
      77) record "cupy.$mode" SKIP "$seconds" "$(last_line "cupy_$mode")" ;;
      *) record "cupy.$mode" FAIL "$seconds" "rc $rc: $(grep -E ' FAIL ' "$out" | tr '\n' ';' | cut -c1-160)" ;;
    esac
    while read -r sub verdict detail; do
      record "cupy.$mode.$sub" "$verdict" 0 "$detail"
    done < <(grep -E '^(elementwise|reduction|matmul) +(PASS|FAIL)' "$out")
  done
fi

# --- compute shares: two half slices of one GPU -------------------------------
share="$bundle/checks/gpu_compute_share"
if gpu_part_ready compute_shares "$share" &&
  have_time compute_shares; then
  cat > "$work/shares.toml" << 'EOF'
[server]
backend = "cuda"
default_pool = "half"
[[gpu]]
index = 0
[pool.half]
slices_per_gpu = 2
EOF
  iterations=$((1 << 22))
  if ! start_ferryd ferryd_shares "$work/ready_shares" --config "$work/shares.toml" --listen 127.0.0.1:0; then
    record compute_shares FAIL 0 "ferryd --config (slices_per_gpu = 2) did not start: $(tail -n 1 "$work/ferryd_shares.log")"
  else
    shares_pid=$started_pid
    shares_server=$(cat "$work/ready_shares")
    shares_env=(env "LD_LIBRARY_PATH=$client_libs" "FERRY_SERVER=$shares_server")
    run_logged share_whole_native 60 "${native_env[@]}" "$share" --iterations "$iterations"
    whole_ms=$(value "$work/share_whole_native.out" spin_ms)
    run_logged share_half_alone 60 "${shares_env[@]}" "$share" --iterations "$iterations"
    half_ms=$(value "$work/share_half_alone.out" spin_ms)
    # Two at once: both borrow their slice and warm up, then start together.
    go="$work/shares.go"
    shares_start=$(date +%s.%N)
    timeout --kill-after=5 60 "${shares_env[@]}" "$share" --iterations "$iterations" --go-file "$go" \
      > "$work/share_a.out" 2>&1 &
    pid_a=$!
    timeout --kill-after=5 60 "${shares_env[@]}" "$share" --iterations "$iterations" --go-file "$go" \
      > "$work/share_b.out" 2>&1 &
    pid_b=$!
    background+=("$pid_a" "$pid_b")
    for _ in $(seq 600); do
      grep -q READY "$work/share_a.out" && grep -q READY "$work/share_b.out" && break
      # Either half gone: its READY never comes.
      { kill -0 "$pid_a" 2> /dev/null && kill -0 "$pid_b" 2> /dev/null; } || break
      sleep 0.1
    done
    timeout 20 "${server_env[@]}" "$bundle/bin/ferryctl" status -o json --server "$shares_server" \
      > "$work/shares_status.json" 2>&1
    mechanisms=$(grep -oE '"mechanism": ?"[^"]*"' "$work/shares_status.json" | sed -E 's/.*: ?"(.*)"/\1/' | sort | uniq -c |
      awk '{c = $1; $1 = ""; printf "%s%dx%s", sep, c, $0; sep = ", "}')
    touch "$go"
    wait "$pid_a"; rc_a=$?
    wait "$pid_b"; rc_b=$?
    shares_seconds=$(awk -v a="$shares_start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    { for f in share_a share_b; do echo "==== $f"; cat "$work/$f.out"; done
      echo "==== ferryctl status -o json (both halves held)"; cat "$work/shares_status.json"; } >> "$logs"
    a_ms=$(value "$work/share_a.out" spin_ms)
    b_ms=$(value "$work/share_b.out" spin_ms)
    detail="mechanism: ${mechanisms:-none reported}; spin ms: whole GPU native ${whole_ms:--}, half alone ${half_ms:--}, halves together ${a_ms:--} and ${b_ms:--}"
    if [ -n "$half_ms" ] && [ -n "$a_ms" ] && [ -n "$b_ms" ] && [ "$rc_a" = 0 ] && [ "$rc_b" = 0 ] &&
      [ -n "$mechanisms" ]; then
      record compute_shares PASS "$shares_seconds" "$detail"
    else
      record compute_shares FAIL "$shares_seconds" "rc $rc_a/$rc_b; $detail; $(last_line share_a)"
    fi
    figure "compute-bound kernel, whole GPU (native) vs one half slice alone (ferry), ms" "$whole_ms" "$half_ms" "" "ferry column: half slice"
    figure "compute-bound kernel, two half slices at once (ferry), ms" "" "${a_ms:-} / ${b_ms:-}" "" "${mechanisms:-}"
    kill "$shares_pid" 2> /dev/null
    wait "$shares_pid" 2> /dev/null
    { echo "==== ferryd (slices) log"; cat "$work/ferryd_shares.log"; } >> "$logs"
  fi
fi

# --- idle release: a PyTorch training loop parked, its GPU given back ---------
# (issue 16) torch_check's transformer stops calling the GPU for 4 s halfway
# through, on a ferryd whose pool gives an idle session's slice back after
# 1 s: its memory is parked in host RAM and the GPU returned to the pool, then
# borrowed again and the memory brought back at the same addresses for the
# next step. The losses must end where the native run's do.
if [ "$backend" = cuda ] && have_python && "$python" -c "import torch" > /dev/null 2>&1 &&
  have_time torch_idle_release; then
  cat > "$work/release.toml" << 'EOF'
[server]
backend = "cuda"
default_pool = "dev"
[[gpu]]
index = 0
[pool.dev]
slices_per_gpu = 1
idle_release = "1s"
EOF
  if ! start_ferryd ferryd_release "$work/ready_release" --config "$work/release.toml" --listen 127.0.0.1:0; then
    record torch_idle_release FAIL 0 "ferryd --config (idle_release = 1s) did not start: $(tail -n 1 "$work/ferryd_release.log")"
  else
    release_pid=$started_pid
    release_env=(env "LD_LIBRARY_PATH=$client_libs" "FERRY_SERVER=$(cat "$work/ready_release")" FERRY_WAIT=1m)
    run_logged torch_release 150 "${release_env[@]}" "$python" "$bundle/checks/torch_check.py" \
      --only transformer --transformer-steps "$steps" --pause-at-step $((steps / 2)) --pause-seconds 4
    kill "$release_pid" 2> /dev/null
    wait "$release_pid" 2> /dev/null
    { echo "==== ferryd (idle release) log"; cat "$work/ferryd_release.log"; } >> "$logs"
    release_log="$work/ferryd_release.log"
    releases=$(grep -c "went back to the pool" "$release_log")
    reborrows=$(grep -c "borrowed its slice(s) of pool dev again" "$release_log")
    parked=$(grep -m 1 -oE "parked [0-9]+ MiB of device memory in host memory in [^ ]+" "$release_log")
    unparked=$(grep -m 1 -oE "brought back [0-9]+ MiB of parked memory; its call waited [^ ]+" "$release_log")
    release_loss=$(torch_value release transformer.loss_final)
    native_loss=$(torch_value native transformer.loss_final)
    loss_ok=$(awk -v f="${release_loss:-x}" -v n="${native_loss:-x}" 'BEGIN {
      if (f == "x") {print "no"; exit}
      if (n == "x") {print "unknown"; exit}
      d = f - n; if (d < 0) d = -d; m = f > n ? f : n; print (d <= 1e-3 + 0.02 * m) ? "yes" : "no"}')
    detail="releases $releases, borrowed again $reborrows; ${parked:-nothing parked}; ${unparked:-nothing brought back}; final loss ${release_loss:-none} (native ${native_loss:-not run})"
    if [ "$rc" = 0 ] && ((releases >= 1 && reborrows >= 1)) && [ "$loss_ok" != no ]; then
      record torch_idle_release PASS "$seconds" "$detail"
    else
      record torch_idle_release FAIL "$seconds" "rc $rc, loss matches: $loss_ok; $detail; $(last_line torch_release)"
    fi
    figure "PyTorch transformer: the step after a 4 s pause (memory parked, GPU given back), ms" "" \
      "$(torch_value release transformer.step_after_pause_ms)" "" \
      "median step $(torch_value release transformer.step_ms_median) ms"
  fi
fi

# --- a sticky fault in one session beside another session --------------------
# Last: on the CUDA backend every session lives in ferryd's one process, so a
# fault may take the others (or ferryd) down with it; the rows say what
# happened.
fault="$bundle/checks/gpu_fault_check"
if gpu_part_ready fault_isolation "$fault" &&
  have_time fault_isolation.faulting fault_isolation.other_session fault_isolation.ferryd_up \
  fault_isolation.new_session; then
  stop="$work/fault.stop"
  timeout --kill-after=5 60 "${client_env[@]}" "$fault" worker "$stop" > "$work/fault_worker.out" 2>&1 &
  worker_pid=$!
  background+=("$worker_pid")
  for _ in $(seq 300); do
    grep -q READY "$work/fault_worker.out" && break
    kill -0 "$worker_pid" 2> /dev/null || break
    sleep 0.1
  done
  run_logged fault_faulting 30 "${client_env[@]}" "$fault" fault
  case "$rc" in
    0) record fault_isolation.faulting PASS "$seconds" "$(grep -h '^FAULT\|later call' "$work/fault_faulting.out" | tr '\n' ' ')" ;;
    3) record fault_isolation.faulting PASS "$seconds" "an error, not ILLEGAL_ADDRESS: $(last_line fault_faulting)" ;;
    *) record fault_isolation.faulting FAIL "$seconds" "rc $rc: $(last_line fault_faulting)" ;;
  esac
  # The worker goes on a moment after the fault, so that damage a fault does
  # to the rest of ferryd's process shows in its later rounds.
  sleep 2
  touch "$stop"
  wait "$worker_pid"
  worker_rc=$?
  { echo "==== fault_worker (rc $worker_rc)"; cat "$work/fault_worker.out"; } >> "$logs"
  if [ "$worker_rc" = 0 ]; then record fault_isolation.other_session PASS 0 "$(tail -n 1 "$work/fault_worker.out")"
  else record fault_isolation.other_session FAIL 0 "rc $worker_rc: $(grep -v '^\s*$' "$work/fault_worker.out" | tail -n 1 | cut -c1-160)"; fi
  if ferryd_alive "$server" "$ferryd_pid"; then record fault_isolation.ferryd_up PASS 0 "ferryctl status answers"
  else record fault_isolation.ferryd_up FAIL 0 "ferryd is gone or does not answer: $(tail -n 1 "$work/ferryd.log")"; fi
  # A session that starts after the fault: one round (the stop file exists).
  run_logged fault_new_session 30 "${client_env[@]}" "$fault" worker "$stop"
  if [ "$rc" = 0 ]; then record fault_isolation.new_session PASS "$seconds" "$(last_line fault_new_session)"
  else record fault_isolation.new_session FAIL "$seconds" "rc $rc: $(last_line fault_new_session)"; fi
fi

# --- ferryd survived all of it ----------------------------------------------
if ferryd_alive "$server" "$ferryd_pid"; then
  record ferryd_alive PASS 0 "ferryctl status answered after every check"
else
  record ferryd_alive FAIL 0 "ferryd is gone or does not answer"
fi
kill "$ferryd_pid" 2> /dev/null
wait "$ferryd_pid" 2> /dev/null
{ echo "==== ferryd log"; cat "$work/ferryd.log"; } >> "$logs"
elapsed=$(($(date +%s) - started))

# --- the report --------------------------------------------------------------
pass=0; fail=0; skip=0
for r in "${results[@]}"; do
  case "$(echo "$r" | cut -d'|' -f2)" in PASS) ((pass++)) ;; FAIL) ((fail++)) ;; *) ((skip++)) ;; esac
done
ratio() {  # ratio A B: A/B with two decimals, or "-"
  echo "${1:-} ${2:-}" | awk 'NF == 2 && $1 + 0 > 0 && $2 + 0 > 0 {printf "%.2fx", $1 / $2; exit} {print "-"}'
}
date_utc=$(date -u +%Y-%m-%d)
report="$work/gpu-report.md"
{
  echo "# GPU check, $date_utc"
  echo
  echo "Written by scripts/gpu-check.sh (copy into bench/results/gpu-$date_utc.md as is)."
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- device: $device"
  echo "- driver: $driver"
  echo "- backend: $backend"
  echo "- commit: $commit"
  echo "- host: $(uname -n), $(nproc) CPUs"
  echo "- time: ${elapsed} s of a ${budget} s budget"
  echo "- result: $pass passed, $fail failed, $skip skipped"
  echo
  echo "## Checks"
  echo
  echo "| check | result | seconds | detail |"
  echo "| --- | --- | ---: | --- |"
  for r in "${results[@]}"; do
    IFS='|' read -r n s t d <<< "$r"
    echo "| $n | $s | $t | $d |"
  done
  echo
  echo "## Figures"
  echo
  echo "Same GPU, same run. Ratio: ferry / native (for times, above 1 is slower; for"
  echo "rates and bandwidths, below 1 is slower). Targets are reported, never failed."
  echo
  echo "| figure | native | ferry TCP | TCP / native | ferry shm | shm / native | note |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
  for f in "${figures[@]}"; do
    IFS='|' read -r label n t u note <<< "$f"
    echo "| $label | ${n:--} | ${t:--} | $(ratio "$t" "$n") | ${u:--} | $(ratio "$u" "$n") | $note |"
  done
} > "$report"
json_string() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
json_number() { [[ "${1:-}" =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]] && printf '%s' "$1" || printf null; }
{
  printf '{"date":%s,"backend":%s,"device":%s,"driver":%s,"commit":%s,"budget_s":%d,"elapsed_s":%d,' \
    "$(json_string "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" "$(json_string "$backend")" "$(json_string "$device")" \
    "$(json_string "$driver")" "$(json_string "$commit")" "$budget" "$elapsed"
  printf '"passed":%d,"failed":%d,"skipped":%d,"checks":[' "$pass" "$fail" "$skip"
  sep=""
  for r in "${results[@]}"; do
    IFS='|' read -r n s t d <<< "$r"
    printf '%s{"name":%s,"result":"%s","seconds":%s,"detail":%s}' "$sep" "$(json_string "$n")" "$s" \
      "$(json_number "$t")" "$(json_string "$d")"
    sep=","
  done
  printf '],"figures":['
  sep=""
  for f in "${figures[@]}"; do
    IFS='|' read -r label n t u note <<< "$f"
    printf '%s{"figure":%s,"native":%s,"tcp":%s,"unix":%s,"note":%s}' "$sep" "$(json_string "$label")" \
      "$(json_number "$n")" "$(json_number "$t")" "$(json_number "$u")" "$(json_string "$note")"
    sep=","
  done
  printf ']}\n'
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
