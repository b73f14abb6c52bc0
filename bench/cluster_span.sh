#!/usr/bin/env bash
# bench/cluster_span.sh: cuMemcpyPeer between the two devices of one program
# (FERRY_GPUS=2), when a cluster split the borrow across two servers (the
# bytes pass through the client) and when one server has both GPUs (the
# server copies). Starts its own etcd (/usr/bin/etcd) and ferryds on
# loopback ports 23971-23983 and stops them by PID. A timing, never a test;
# results in bench/results/cluster-span-*.md.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build}
B=$BUILD/bin
SIZES=${SIZES:-1MiB,16MiB,64MiB}
D=$(mktemp -d /tmp/cs.XXXX)
pool() {  # pool(gpus)
  printf '[server]\nbackend = "host"\ndefault_pool = "dev"\n[pool.dev]\nslices_per_gpu = 1\n'
  for i in $(seq 0 $(($1 - 1))); do printf '[[gpu]]\nindex = %d\nmemory = "1GiB"\n' "$i"; done
}
pool 1 > $D/one.toml
pool 2 > $D/two.toml
etcd --data-dir $D/etcd --listen-client-urls http://127.0.0.1:23980 --advertise-client-urls http://127.0.0.1:23980 --listen-peer-urls http://127.0.0.1:23981 > $D/etcd.log 2>&1 &
EPID=$!
sleep 1.5
$B/ferryd --config $D/one.toml --listen 127.0.0.1:23971 --etcd http://127.0.0.1:23980 --name a > $D/a.log 2>&1 & APID=$!
$B/ferryd --config $D/one.toml --listen 127.0.0.1:23972 --etcd http://127.0.0.1:23980 --name b > $D/b.log 2>&1 & BPID=$!
$B/ferryd --config $D/two.toml --listen 127.0.0.1:23973 > $D/c.log 2>&1 & CPID=$!
sleep 1.5
for run in 1 2 3; do
  echo "== run $run: two servers (split through a)"
  FERRY_GPUS=2 LD_LIBRARY_PATH=$BUILD/lib $B/ferry-bench --client 127.0.0.1:23971 --only peer --copy-sizes $SIZES 2>&1 | grep peer_
  echo "== run $run: one server with both GPUs"
  FERRY_GPUS=2 LD_LIBRARY_PATH=$BUILD/lib $B/ferry-bench --client 127.0.0.1:23973 --only peer --copy-sizes $SIZES 2>&1 | grep peer_
done
kill $APID $BPID $CPID; wait $APID $BPID $CPID 2>/dev/null
kill $EPID; wait $EPID 2>/dev/null
rm -rf $D
