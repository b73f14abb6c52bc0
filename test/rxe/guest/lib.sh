# Helpers for the programs run in the Soft-RoCE test VM (busybox sh).
# /init sources this file, and every program script runs with it sourced
# (sh -e: a failing command fails the program). All waits are bounded.
#
# Set by /init for the programs:
#   RXE_DEV             the rxe device, rxe0 (on the dummy netdev d0)
#   RXE_IP              d0's IPv4 address, 10.0.0.1
#   RXE_GID_IPV4        GID index of ::ffff:10.0.0.1 (RoCE v2 over IPv4)
#   RXE_GID_LINK_LOCAL  GID index of d0's fe80:: address

# rxe_wait_for SECONDS WHAT COMMAND...: runs COMMAND until it succeeds,
# at most SECONDS long; says WHAT it waited for when time runs out.
rxe_wait_for() {
  _rxe_deadline=$(($(date +%s) + $1))
  _rxe_what=$2
  shift 2
  until "$@"; do
    if [ "$(date +%s)" -ge "$_rxe_deadline" ]; then
      echo "rxe: gave up waiting for $_rxe_what" >&2
      return 1
    fi
    sleep 0.1
  done
}

# rxe_tcp_listening PORT: true once a TCP socket (IPv4 or IPv6) listens on PORT.
rxe_tcp_listening() {
  _rxe_hex=$(printf ':%04X ' "$1")
  # /proc/net/tcp*: "sl local_address rem_address st ..."; st 0A is LISTEN.
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    awk -v port="$_rxe_hex" 'index($2 " ", port) && $4 == "0A" { found = 1 } END { exit !found }'
}

# rxe_cm_listening PORT: true once an rdma_cm id listens on PORT.
rxe_cm_listening() {
  rdma resource show cm_id 2>/dev/null | grep 'state LISTEN' | grep -q ":$1 "
}

# rxe_gid_index GID [DEV]: prints the index of GID (as sysfs writes it,
# e.g. 0000:0000:0000:0000:0000:ffff:0a00:0001) in port 1's GID table.
rxe_gid_index() {
  _rxe_file=$(grep -lx "$1" /sys/class/infiniband/"${2:-rxe0}"/ports/1/gids/* 2>/dev/null | head -n1)
  [ -n "$_rxe_file" ] && echo "${_rxe_file##*/}"
}

# rxe_link_local_gid_index [DEV]: prints the index of the first fe80:: GID.
rxe_link_local_gid_index() {
  _rxe_file=$(grep -l '^fe80:' /sys/class/infiniband/"${1:-rxe0}"/ports/1/gids/* 2>/dev/null | head -n1)
  [ -n "$_rxe_file" ] && echo "${_rxe_file##*/}"
}
