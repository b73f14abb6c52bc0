# rdma-core's RC SEND/RECV ping-pong between two processes over rxe0, with the
# IPv4-mapped GID (RoCE v2 over IPv4, what rdma_cm picks for 10.0.0.1). The
# two sides swap queue pair numbers over TCP port 18515 first.
ibv_rc_pingpong -d "$RXE_DEV" -g "$RXE_GID_IPV4" -p 18515 -n 500 -s 65536 -c >server.log 2>&1 &
server=$!
rxe_wait_for 30 "ibv_rc_pingpong's server on TCP 18515" rxe_tcp_listening 18515
ibv_rc_pingpong -d "$RXE_DEV" -g "$RXE_GID_IPV4" -p 18515 -n 500 -s 65536 -c "$RXE_IP"
wait "$server"
