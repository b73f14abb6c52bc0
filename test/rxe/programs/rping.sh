# librdmacm's rping: the connection manager resolves 10.0.0.1 to rxe0 and
# connects; the two sides then ping-pong 4 KiB by RDMA READ and WRITE fifty
# times, checking the data (-V).
rping -s -a "$RXE_IP" -p 7174 -C 50 -S 4096 -V >server.log 2>&1 &
server=$!
rxe_wait_for 30 "rping's server listening on rdma_cm port 7174" rxe_cm_listening 7174
rping -c -a "$RXE_IP" -p 7174 -C 50 -S 4096 -V
wait "$server"
