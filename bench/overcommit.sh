#!/usr/bin/env bash
# bench/overcommit.sh: two tenants that each need 40 MiB of one 64 MiB GPU
# (host backend), alternating work and idle time (ferry-tenant-rounds), run
#   sequential   one slice per GPU, no overcommit: the second waits in the
#                queue (FERRY_WAIT) until the first ends;
#   overcommit   two slices of 1.5 x 32 MiB, park_after 0s: both run, each
#                one's memory parked while it is idle and the other works;
#   idle-release one slice per GPU, idle_release 100ms: the idle one gives
#                the whole GPU back and borrows it again for its next round.
# Prints each mode's wall time for both tenants and the throughput against
# sequential. Starts its own ferryd on loopback port 23991 (stopped by PID).
# A timing, never a test; results in bench/results/overcommit-*.md.
#
#   bench/overcommit.sh [ROUNDS BUSY_MS IDLE_MS]   (default 20 50 200)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
B=$BUILD/bin
ROUNDS=${1:-20}
BUSY=${2:-50}
IDLE=${3:-200}
BYTES=$((40 << 20))
ADDRESS=127.0.0.1:23991
D=$(mktemp -d /tmp/overcommit.XXXX)
trap 'rm -rf "$D"' EXIT

config() {  # config(pool lines)
  printf '[server]\nbackend = "host"\ndefault_pool = "p"\n[[gpu]]\nindex = 0\nmemory = "64MiB"\n'
  printf '[pool.p]\n%b' "$1"
}

run() {  # run(name, pool lines) -> prints "name seconds"
  config "$2" > "$D/$1.toml"
  "$B/ferryd" --config "$D/$1.toml" --listen "$ADDRESS" > "$D/$1.log" 2>&1 &
  local server=$!
  for _ in $(seq 100); do
    "$B/ferryctl" --server "$ADDRESS" status > /dev/null 2>&1 && break
    sleep 0.05  # pacing a bounded wait for ferryd's listener
  done
  local start end
  start=$(date +%s.%N)
  FERRY_SERVER=$ADDRESS FERRY_WAIT=10m LD_LIBRARY_PATH=$BUILD/lib \
    "$B/ferry-tenant-rounds" $BYTES "$ROUNDS" "$BUSY" "$IDLE" > "$D/$1.a" 2>&1 &
  local a=$!
  # The second starts once the first is in its first idle time: an
  # allocation finds room only by parking an idle tenant (a working one is
  # never parked), as on a GPU whose tenants come and go.
  sleep "$(echo "($BUSY + $IDLE / 2) / 1000" | bc -l)"
  FERRY_SERVER=$ADDRESS FERRY_WAIT=10m LD_LIBRARY_PATH=$BUILD/lib \
    "$B/ferry-tenant-rounds" $BYTES "$ROUNDS" "$BUSY" "$IDLE" > "$D/$1.b" 2>&1 &
  local b=$!
  local ok=0
  wait $a || ok=1
  wait $b || ok=1
  end=$(date +%s.%N)
  kill $server
  wait $server 2> /dev/null
  if [ $ok -ne 0 ]; then
    echo "$1: a tenant failed:"; grep -h -E "^(rounds|FAILED)" "$D/$1.a" "$D/$1.b"
    grep -E " [WE] " "$D/$1.log" | tail -5
    return 1
  fi
  local parks releases
  parks=$(grep -c "parked .* of device memory" "$D/$1.log")
  releases=$(grep -c "went back to the pool" "$D/$1.log")
  printf '%-13s %8.2f s   (tenants: %s / %s; parks %s, idle releases %s)\n' "$1" \
    "$(echo "$end - $start" | bc)" "$(awk '/^rounds/ {print $6 " s"}' "$D/$1.a")" \
    "$(awk '/^rounds/ {print $6 " s"}' "$D/$1.b")" "$parks" "$releases"
}

echo "two tenants x $ROUNDS rounds of ${BUSY} ms work + ${IDLE} ms idle, 40 MiB each, one 64 MiB GPU"
run sequential 'slices_per_gpu = 1\n' || exit 1
run overcommit 'slices_per_gpu = 2\nmemory_overcommit = 1.5\npark_after = "0s"\n' || exit 1
run idle-release 'slices_per_gpu = 1\nidle_release = "100ms"\n' || exit 1
