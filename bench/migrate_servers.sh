#!/usr/bin/env bash
# bench/migrate_servers.sh: `ferryctl migrate SESSION --to SERVER:GPU` (a
# session moved between two ferryds, server/README.md "Migration") against
# the session's device memory, on the host backend: a `pool_client hold` (e2e
# program; a call every 20 ms) holds SIZE of device memory and is moved from
# one ferryd to the other and back, REPS moves in all. Prints, per move, how
# long the source took to hand the session over (marker to ticket: quiesce,
# describe, send the bytes, the target's checks) and how long after ferryctl's
# request the client was at the target (the program's pause, at most, plus
# up to 100 ms for an idle client to see the notice). Starts its own two
# ferryds on loopback ports 23996/23997 (stopped by PID); FERRYD_ARGS adds
# ferryd flags (e.g. --sessions-in-process). A timing, never a test; results
# in bench/results/migrate-servers-*.md.
#
#   bench/migrate_servers.sh [SIZES_MIB] [REPS]   (default "16 256 1024" 4)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
B=$BUILD/bin
SIZES=${1:-16 256 1024}
REPS=${2:-4}
ADDRESSES=(127.0.0.1:23996 127.0.0.1:23997)
D=$(mktemp -d /tmp/migrate-servers.XXXX)
trap 'rm -rf "$D"' EXIT
printf '[server]\nbackend = "host"\ndefault_pool = "p"\n[[gpu]]\nindex = 0\nmemory = "2GiB"\n[pool.p]\nslices_per_gpu = 1\n' > "$D/c.toml"
servers=()
for i in 0 1; do
  # shellcheck disable=SC2086
  "$B/ferryd" --config "$D/c.toml" --listen "${ADDRESSES[$i]}" ${FERRYD_ARGS:-} > "$D/ferryd$i.log" 2>&1 &
  servers+=($!)
  for _ in $(seq 100); do
    "$B/ferryctl" --server "${ADDRESSES[$i]}" status > /dev/null 2>&1 && break
    sleep 0.05  # pacing a bounded wait for ferryd's listener
  done
done
for mib in $SIZES; do
  FERRY_WAIT=30s FERRY_SERVER=${ADDRESSES[0]} LD_LIBRARY_PATH=$BUILD/lib "$BUILD/test/e2e/e2e_pool_client" hold \
    "$D/release.$mib" $((mib << 20)) > "$D/hold.$mib" 2>&1 &
  holder=$!
  for _ in $(seq 200); do grep -q READY "$D/hold.$mib" && break; sleep 0.05; done
  from=0
  handed="" there=""
  for _ in $(seq "$REPS"); do
    id=$("$B/ferryctl" --server "${ADDRESSES[$from]}" status -o json | grep -oE '"id": ?[0-9]+' | head -1 | grep -oE '[0-9]+$')
    to=$((1 - from))
    if ! out=$("$B/ferryctl" --server "${ADDRESSES[$from]}" migrate "$id" --to "${ADDRESSES[$to]}:0" 2>&1); then
      echo "  $mib MiB, ${ADDRESSES[$from]} -> ${ADDRESSES[$to]} refused: $out"
      handed="$handed -" there="$there -"
      continue
    fi
    handed="$handed $(echo "$out" | grep -oE 'handed over in [0-9.]+' | grep -oE '[0-9.]+$')"
    there="$there $(echo "$out" | grep -oE 'there [0-9.]+ ms after' | grep -oE '[0-9.]+')"
    from=$to
  done
  touch "$D/release.$mib"
  wait $holder || echo "the holder of $mib MiB failed: $(tail -3 "$D/hold.$mib")"
  printf '%6s MiB: handed over ms%s | client at the target ms%s\n' "$mib" "$handed" "$there"
done
kill "${servers[@]}"
wait "${servers[@]}" 2> /dev/null
