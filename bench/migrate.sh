#!/usr/bin/env bash
# bench/migrate.sh: the pause of `ferryctl migrate` (a session moved between
# two GPUs of one ferryd) against the session's device memory, on the host
# backend: a `pool_client hold` (e2e program; a call every 20 ms) holds SIZE
# of device memory and is moved back and forth REPS times; prints what
# ferryctl reports as the pause of its calls. Starts its own ferryd on
# loopback port 23995 (stopped by PID). A timing, never a test; results in
# bench/results/migrate-*.md.
#
#   bench/migrate.sh [SIZES_MIB] [REPS]   (default "16 256 1024" 5)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
B=$BUILD/bin
SIZES=${1:-16 256 1024}
REPS=${2:-5}
ADDRESS=127.0.0.1:23995
D=$(mktemp -d /tmp/migrate.XXXX)
trap 'rm -rf "$D"' EXIT
printf '[server]\nbackend = "host"\ndefault_pool = "p"\n[[gpu]]\nindex = 0\nmemory = "2GiB"\n[[gpu]]\nindex = 1\nmemory = "2GiB"\n[pool.p]\nslices_per_gpu = 1\n' > "$D/c.toml"
"$B/ferryd" --config "$D/c.toml" --listen "$ADDRESS" > "$D/ferryd.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  "$B/ferryctl" --server "$ADDRESS" status > /dev/null 2>&1 && break
  sleep 0.05  # pacing a bounded wait for ferryd's listener
done
for mib in $SIZES; do
  FERRY_SERVER=$ADDRESS LD_LIBRARY_PATH=$BUILD/lib "$BUILD/test/e2e/e2e_pool_client" hold \
    "$D/release.$mib" $((mib << 20)) > "$D/hold.$mib" 2>&1 &
  holder=$!
  for _ in $(seq 200); do grep -q READY "$D/hold.$mib" && break; sleep 0.05; done
  id=$("$B/ferryctl" --server "$ADDRESS" status -o json | grep -oE '"id": ?[0-9]+' | head -1 | grep -oE '[0-9]+$')
  pauses=""
  gpu=1
  for _ in $(seq "$REPS"); do
    out=$("$B/ferryctl" --server "$ADDRESS" migrate "$id" --to $gpu 2>&1)
    pauses="$pauses $(echo "$out" | grep -oE 'paused [0-9.]+' | grep -oE '[0-9.]+$')"
    gpu=$((1 - gpu))
  done
  touch "$D/release.$mib"
  wait $holder
  printf '%6s MiB: pause ms%s\n' "$mib" "$pauses"
done
kill $server
wait $server 2> /dev/null
