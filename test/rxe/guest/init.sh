#!/bin/sh
# /init of the Soft-RoCE test VM, built by test/rxe/run_in_rxe_vm.sh.
#
# Sets up rxe0 (Soft-RoCE on the dummy netdev d0, 10.0.0.1/24), then runs the
# programs named in /ferry/rxe/programs.list one after another, each as
# `sh -e` with lib.sh sourced, stdin /dev/null, in a directory of its own
# (/tmp/NAME), at most RXE_PROGRAM_TIMEOUT seconds; whatever a program leaves
# running is killed before the next one, and when it failed, the *.log files
# of its directory (its background servers' output) are printed.
# Results go to the console (ttyS0, with the kernel's messages) and, alone on
# their lines, to ttyS1, which the host reads:
#   FERRY-RXE READY ...             rxe0 is up (and the GID indexes)
#   FERRY-RXE PASS <name>           the program exited 0
#   FERRY-RXE FAIL <name> (...)     it did not (or setup failed: name "setup")
#   FERRY-RXE DONE                  last line before power-off
export PATH=/ferry/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/null >/dev/console 2>&1
. /ferry/rxe/lib.sh
. /ferry/rxe/config

marker() {
  echo "FERRY-RXE $*"
  echo "FERRY-RXE $*" >/dev/ttyS1
}
finish() {
  marker DONE
  poweroff -f
}
setup_failed() {
  marker "FAIL setup ($*)"
  finish
}

for module in $(cat /ferry/rxe/modules.load); do
  insmod "/ferry/rxe/modules/$module.ko" || setup_failed "insmod $module"
done
ip link set lo up || setup_failed "lo up"
ip link add d0 type dummy || setup_failed "ip link add d0 type dummy"
ip addr add 10.0.0.1/24 dev d0 || setup_failed "ip addr add 10.0.0.1/24 dev d0"
ip link set d0 up || setup_failed "d0 up"
rdma link add rxe0 type rxe netdev d0 || setup_failed "rdma link add rxe0"

# ib_core fills the GID table from d0's addresses on a work queue.
export RXE_DEV=rxe0 RXE_IP=10.0.0.1
rxe_wait_for 30 "GID ::ffff:10.0.0.1 on rxe0" \
  rxe_gid_index 0000:0000:0000:0000:0000:ffff:0a00:0001 >/dev/null ||
  setup_failed "no GID ::ffff:10.0.0.1"
RXE_GID_IPV4=$(rxe_gid_index 0000:0000:0000:0000:0000:ffff:0a00:0001)
RXE_GID_LINK_LOCAL=$(rxe_link_local_gid_index || echo none)
export RXE_GID_IPV4 RXE_GID_LINK_LOCAL
echo "--- rdma link; ip addr show d0; ibv_devinfo -v -d rxe0"
rdma link show
ip addr show d0
ibv_devinfo -v -d rxe0
marker "READY kernel $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime) s" \
  "gid_ipv4 $RXE_GID_IPV4 gid_link_local $RXE_GID_LINK_LOCAL"

for name in $(cat /ferry/rxe/programs.list); do
  echo "--- program $name (up to $RXE_PROGRAM_TIMEOUT s)"
  start=$(cut -d' ' -f1 /proc/uptime)
  mkdir "/tmp/$name"
  (cd "/tmp/$name" && timeout -s KILL "$RXE_PROGRAM_TIMEOUT" \
    sh -ec '. /ferry/rxe/lib.sh; . "$1"' "$name" "/ferry/rxe/programs/$name.sh")
  status=$?
  # Servers a program started in the background, and anything hung.
  kill -KILL -1 2>/dev/null
  if [ "$status" -ne 0 ]; then
    for log in "/tmp/$name"/*.log; do
      [ -f "$log" ] && echo "--- $log" && cat "$log"
    done
  fi
  seconds=$(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$status" -eq 0 ]; then
    marker "PASS $name ($seconds s)"
  elif [ "$status" -eq 137 ]; then
    marker "FAIL $name (killed after $RXE_PROGRAM_TIMEOUT s)"
  else
    marker "FAIL $name (exit $status after $seconds s)"
  fi
done
finish
