#!/usr/bin/env bash
# Runs ferry on this machine: installs what it needs, builds, starts ferryd
# (the CUDA backend when an NVIDIA driver is present, otherwise the host
# backend) and runs a demo CUDA program through ferry's libcuda.so.1.
#
#   scripts/run.sh [--demo-only]
#
# Environment: FERRY_LISTEN (default 127.0.0.1:7070), BUILD_DIR (default build).
# On a terminal, ferryd keeps serving after the demo until Ctrl-C; with
# --demo-only, or without a terminal, it stops after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${BUILD_DIR:-build}
listen=${FERRY_LISTEN:-127.0.0.1:7070}
keep_serving=0
[ -t 0 ] && [ -t 1 ] && keep_serving=1
[ "${1:-}" = "--demo-only" ] && keep_serving=0

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$build" -j"$(nproc)" --target ferryd ferryctl ferry_client vector_add vector_add_host

ready=$(mktemp -u /tmp/ferryd-ready.XXXXXX)
log=$(mktemp /tmp/ferryd-log.XXXXXX)
"$build/bin/ferryd" --listen "$listen" --backend auto \
  --host-kernels "$build/lib/host-kernels/libvector_add_host.so" --ready-file "$ready" 2> "$log" &
ferryd_pid=$!
trap 'kill "$ferryd_pid" 2>/dev/null; wait "$ferryd_pid" 2>/dev/null; rm -f "$ready"' EXIT
for _ in $(seq 100); do
  [ -s "$ready" ] && break
  kill -0 "$ferryd_pid" 2>/dev/null || { cat "$log" >&2; echo "run.sh: ferryd did not start" >&2; exit 1; }
  sleep 0.1
done
[ -s "$ready" ] || { cat "$log" >&2; echo "run.sh: ferryd did not become ready" >&2; exit 1; }
server=$(cat "$ready")
cat "$log"

echo
echo "== demo: an unmodified driver-API program through ferry's libcuda.so.1 =="
LD_LIBRARY_PATH="$root/$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" FERRY_SERVER="$server" \
  "$build/bin/vector_add" "$build/test/demo/vector_add_kernel.fatbin"
echo
"$build/bin/ferryctl" status --server "$server"

cat <<EOF2

== point your own CUDA program at ferry ==
  export LD_LIBRARY_PATH=$root/$build/lib:\$LD_LIBRARY_PATH   # ferry's libcuda.so.1 first
  export FERRY_SERVER=$server                                 # the ferryd to use
  ./your_cuda_program
  $build/bin/ferryctl status --server $server                 # sessions on the server
EOF2

if [ "$keep_serving" = 1 ]; then
  echo
  echo "ferryd is serving at $server (log: $log); press Ctrl-C to stop."
  tail -n 0 -f "$log" &
  wait "$ferryd_pid"
fi
