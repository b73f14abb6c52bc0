#!/usr/bin/env bash
# bench/cluster_start.sh: session start (cuInit to a first context) with a plain
# pool, with a cluster (claims in etcd), and through a redirect (entry server
# full). Starts its own etcd (/usr/bin/etcd) and ferryds on loopback ports
# 23981-23991 and stops them by PID. A timing, never a test; results in
# bench/results/cluster-*.md.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
B=$BUILD/bin
D=$(mktemp -d /tmp/cb.XXXX)
cat > $D/pool.toml <<'T'
[server]
backend = "host"
default_pool = "dev"
[pool.dev]
slices_per_gpu = 4
[[gpu]]
index = 0
memory = "1GiB"
T
etcd --data-dir $D/etcd --listen-client-urls http://127.0.0.1:23990 --advertise-client-urls http://127.0.0.1:23990 --listen-peer-urls http://127.0.0.1:23991 > $D/etcd.log 2>&1 &
EPID=$!
sleep 1.5
echo "== plain pool"; $B/ferry-bench --reps 15 --only rtt --transports tcp --ferryd-arg --config --ferryd-arg $D/pool.toml 2>&1 | grep -iE "start|rtt" | head -4
echo "== cluster (claims in etcd)"; $B/ferry-bench --reps 15 --only rtt --transports tcp --ferryd-arg --config --ferryd-arg $D/pool.toml --ferryd-arg --etcd --ferryd-arg http://127.0.0.1:23990 --ferryd-arg --name --ferryd-arg benchx 2>&1 | grep -iE "start|rtt" | head -4
# redirect: a (full) -> b
$B/ferryd --config $D/pool.toml --listen 127.0.0.1:23981 --etcd http://127.0.0.1:23990 --name a > $D/a.log 2>&1 & APID=$!
$B/ferryd --config $D/pool.toml --listen 127.0.0.1:23982 --etcd http://127.0.0.1:23990 --name b > $D/b.log 2>&1 & BPID=$!
sleep 1.5
P=$BUILD/test/e2e/e2e_pool_client
for i in 1 2 3 4; do LD_LIBRARY_PATH=$BUILD/lib FERRY_SERVER=127.0.0.1:23981 timeout 120 $P hold $D/rel > $D/h$i.out 2>&1 & done
for i in $(seq 1 100); do [ "$(grep -l READY $D/h*.out 2>/dev/null | wc -l)" = 4 ] && break; sleep 0.1; done
echo "== redirected a -> b (a full)"; $B/ferry-bench --client 127.0.0.1:23981 --reps 15 --only rtt 2>&1 | grep -iE "start|rtt" | head -4
echo "== b directly"; $B/ferry-bench --client 127.0.0.1:23982 --reps 15 --only rtt 2>&1 | grep -iE "start|rtt" | head -4
touch $D/rel; sleep 1
kill $APID $BPID; wait $APID $BPID 2>/dev/null
kill $EPID; wait $EPID 2>/dev/null
rm -rf $D
