#!/usr/bin/env bash
# Stock PyTorch and CuPy, unmodified, through ferry's libcuda.so.1 against a
# `ferryd --backend host` on this machine (no GPU needed): the probes of
# test/frameworks/ (device queries, allocation, copies small and 16 MiB, D2D,
# pinned non_blocking copies on a side stream, events, the caching
# allocator's stats and empty_cache, a CUDA graph of copies and a memset,
# streams from several threads, torch and CuPy sharing memory by DLPack,
# nvidia-ml-py and torch.cuda.utilization()/memory_usage() through ferry's NVML
# stand-in (SKIP where nvidia-ml-py cannot be installed),
# and a kernel op that must fail cleanly, the host backend having no twins
# for the frameworks' kernels). One line per probe:
#
#   PASS|FAIL|SKIP <framework>.<probe> <seconds>s <detail>
#
# then a summary; exit status 1 on any FAIL (a probe process that dies or
# times out counts as a FAIL), 2 on bad usage or a setup failure.
#
#   torch    torch (PyPI's default build: CUDA 13 runtime) in the venv
#   cupy13   cupy-cuda13x in the same venv (CUDA 13 runtime)
#   cupy12   cupy-cuda12x + nvidia-cuda-runtime-cu12 in a second venv
#            (the CUDA 12 runtime asks the driver for other entry point
#            versions and export tables); cupy-cuda12x and cupy-cuda13x
#            cannot share one (both are the `cupy` package)
#
# Each framework runs over loopback TCP and over a unix: socket (shared
# memory), then torch once more over TCP for the module cache figure.
#
# NOT run by .ci/run: the first run downloads about 3 GB of wheels from PyPI
# and installs them (about 4 minutes here from a local wheel folder, plus the
# download on a fresh machine); later runs reuse the venvs and take about a
# minute (torch's import dominates).
#
#   scripts/test-frameworks.sh [--only torch,cupy13,cupy12] [--transports tcp,unix]
#
# Environment:
#   FRAMEWORKS_VENV        the venv (default build/frameworks-venv); the CUDA 12
#                          one is "$FRAMEWORKS_VENV-cu12". Delete them to reinstall.
#   FRAMEWORKS_FIND_LINKS  a folder of wheels pip looks in first (--find-links);
#                          what it lacks still comes from PyPI
#   PIP_CACHE_DIR          pip's own cache, as usual
#   BUILD_DIR              ferry's build (default build); built here if needed
#   PYTHON                 the interpreter the venvs are made from (default python3)
#   PROBE_TIMEOUT          seconds per probe process (default 300)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
usage="usage: scripts/test-frameworks.sh [--only torch,cupy13,cupy12] [--transports tcp,unix]"
only="torch,cupy13,cupy12"
transports="tcp,unix"
while (($#)); do
  case "$1" in
    --only) only=${2:?$usage}; shift 2 ;;
    --transports) transports=${2:?$usage}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
venv=${FRAMEWORKS_VENV:-build/frameworks-venv}
venv12="$venv-cu12"
build=${BUILD_DIR:-build}
python=${PYTHON:-python3}
probe_timeout=${PROBE_TIMEOUT:-300}
pip_args=(--disable-pip-version-check -q)
[ -n "${FRAMEWORKS_FIND_LINKS:-}" ] && pip_args+=(--find-links "$FRAMEWORKS_FIND_LINKS")
wants() { [[ ",$only," == *",$1,"* ]]; }

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}'; }

# --- the venvs ------------------------------------------------------------------
# make_venv DIR IMPORTS PACKAGES...: creates DIR and installs PACKAGES unless
# it already imports every module of IMPORTS (a space-separated list).
make_venv() {
  local dir=$1 imports=$2
  shift 2
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import ${imports// /, }" 2> /dev/null; then
    return 0
  fi
  echo "test-frameworks: installing $* into $dir"
  "$python" -m venv "$dir" && "$dir/bin/pip" install "${pip_args[@]}" "$@"
}
install_started=$(date +%s.%N)
if wants torch || wants cupy13; then
  make_venv "$venv" "torch cupy" torch cupy-cuda13x ||
    { echo "test-frameworks: installing torch and cupy-cuda13x failed" >&2; exit 2; }
fi
# nvidia-ml-py (the torch probe "nvml" reads ferry's NVML stand-in through
# it): optional, so a machine that cannot reach PyPI still runs the rest and
# that probe says SKIP.
if wants torch && [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c "import pynvml" 2> /dev/null; then
  "$venv/bin/pip" install "${pip_args[@]}" nvidia-ml-py ||
    echo "test-frameworks: installing nvidia-ml-py failed; the nvml probe will SKIP" >&2
fi
if wants cupy12; then
  make_venv "$venv12" "cupy" cupy-cuda12x nvidia-cuda-runtime-cu12 ||
    { echo "test-frameworks: installing cupy-cuda12x failed" >&2; exit 2; }
fi
install_seconds=$(elapsed "$install_started")

# --- ferry ------------------------------------------------------------------------
if [ ! -x "$build/bin/ferryd" ] || [ ! -e "$build/lib/libcuda.so.1" ] || [ ! -x "$build/bin/ferryctl" ] ||
  [ ! -e "$build/lib/libnvidia-ml.so.1" ]; then
  [ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null ||
    { echo "test-frameworks: cmake failed" >&2; exit 2; }
fi
cmake --build "$build" --target ferryd ferryctl ferry_client ferry_nvml > /dev/null ||
  { echo "test-frameworks: building ferry failed" >&2; exit 2; }
libdir=$(realpath "$build/lib")

work=$(mktemp -d /tmp/ferry-frameworks.XXXXXX)
ferryd_pid=""
cleanup() {
  if [ -n "$ferryd_pid" ]; then kill "$ferryd_pid" 2> /dev/null && wait "$ferryd_pid" 2> /dev/null; fi
}
trap cleanup EXIT
sock="$work/ferry.sock"
"$build/bin/ferryd" --listen 127.0.0.1:0 --listen "unix:$sock" --backend host --host-memory 4GiB \
  --ready-file "$work/ready" 2> "$work/ferryd.log" &
ferryd_pid=$!
for _ in $(seq 100); do
  [ -s "$work/ready" ] && break
  kill -0 "$ferryd_pid" 2> /dev/null || break
  sleep 0.1
done
if [ ! -s "$work/ready" ]; then
  cat "$work/ferryd.log" >&2
  echo "test-frameworks: ferryd did not start" >&2
  exit 2
fi
tcp=$(cat "$work/ready")
echo "test-frameworks: ferryd --backend host (pid $ferryd_pid) at $tcp and unix:$sock; logs in $work"

# --- the probes ---------------------------------------------------------------------
passed=0 failed=0 skipped=0
failures=()
# run_probes LABEL SERVER PYTHON SCRIPT ARGS...: one probe process; its
# verdict lines are printed (with the transport), counted and checked for
# completeness.
run_probes() {
  local label=$1 server=$2 py=$3
  shift 3
  local out="$work/$label.out" started rc carrier=tcp
  # A TCP address means TCP (a loopback client would move to shared memory).
  [[ $server == unix:* ]] && carrier=auto
  started=$(date +%s.%N)
  env "LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "FERRY_SERVER=$server" \
    "FERRY_TRANSPORT=$carrier" "FERRY_LIBCUDA_DIR=$libdir" timeout --kill-after=10 "$probe_timeout" "$py" "$@" \
    > "$out" 2> "$work/$label.err"
  rc=$?
  local verdict name rest
  while read -r verdict name rest; do
    case "$verdict" in
      PASS) passed=$((passed + 1)) ;;
      FAIL) failed=$((failed + 1)); failures+=("$name[$label]") ;;
      SKIP) skipped=$((skipped + 1)) ;;
      *) continue ;;
    esac
    printf '%-4s %-40s %s\n' "$verdict" "$name[${label#*.}]" "$rest"
  done < "$out"
  grep '^FIGURE ' "$out" | sed "s/^FIGURE \([^ ]*\)/FIGURE \1[${label#*.}]/"
  if ! grep -q '^probes-done ' "$out"; then
    failed=$((failed + 1))
    failures+=("$label")
    printf '%-4s %-40s %s\n' FAIL "$label" "the probe process ended early (rc $rc): $(grep -v '^\s*$' "$work/$label.err" | tail -n 1 | cut -c1-160)"
  fi
  echo "     ($label: $(elapsed "$started") s, rc $rc)"
}

# The module image bytes a run uploaded come from ferryd's log, where it
# reports them when the session closes (ferryctl's view of a session is gone
# by then); ferryd may log that a moment after the process exits.
uploaded_bytes() {  # uploaded_bytes: bytes of module images the last session sent
  local opened closed
  for _ in $(seq 50); do
    opened=$(grep -c ' event=session_start ' "$work/ferryd.log")
    closed=$(grep -c ' event=session_end ' "$work/ferryd.log")
    ((closed >= opened)) && break
    sleep 0.1
  done
  sed -n 's/.* event=session_end .* module_image_bytes_received=\([0-9]*\) .*/\1/p' "$work/ferryd.log" |
    tail -n 1
}

run_started=$(date +%s.%N)
IFS=, read -r -a transport_list <<< "$transports"
for transport in "${transport_list[@]}"; do
  case "$transport" in
    tcp) server=$tcp ;;
    unix) server="unix:$sock" ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  if wants torch; then
    run_probes "torch.$transport" "$server" "$venv/bin/python" test/frameworks/torch_probe.py
    echo "FIGURE torch.module_image_bytes_uploaded[$transport] $(uploaded_bytes)"
  fi
  wants cupy13 && run_probes "cupy13.$transport" "$server" "$venv/bin/python" test/frameworks/cupy_probe.py cupy13
  wants cupy12 && run_probes "cupy12.$transport" "$server" "$venv12/bin/python" test/frameworks/cupy_probe.py cupy12
done
if wants torch; then
  # The same probes again: every module image is in ferryd's cache now.
  run_probes "torch.tcp-cached" "$tcp" "$venv/bin/python" test/frameworks/torch_probe.py
  echo "FIGURE torch.module_image_bytes_uploaded[tcp-cached] $(uploaded_bytes)"
fi

if ! kill -0 "$ferryd_pid" 2> /dev/null; then
  failed=$((failed + 1))
  failures+=("ferryd")
  echo "FAIL ferryd                                   ferryd is gone: $(tail -n 1 "$work/ferryd.log")"
fi
echo
echo "test-frameworks: $passed passed, $failed failed, $skipped skipped" \
  "(install ${install_seconds} s, probes $(elapsed "$run_started") s)"
versions=()
if wants torch || wants cupy13; then
  versions+=("torch $("$venv/bin/python" -c "import torch; print(torch.__version__)" 2> /dev/null)")
  versions+=("cupy-cuda13x $("$venv/bin/python" -c "import cupy; print(cupy.__version__)" 2> /dev/null)")
fi
wants cupy12 && versions+=("cupy-cuda12x $("$venv12/bin/python" -c "import cupy; print(cupy.__version__)" 2> /dev/null)")
echo "test-frameworks: $(IFS=';'; echo "${versions[*]}" | sed 's/;/, /g')"
if ((failed > 0)); then
  echo "test-frameworks: FAILED: ${failures[*]}"
  exit 1
fi
exit 0
