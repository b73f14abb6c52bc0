# ferry over real verbs: a host-backend ferryd listening on rdma://10.0.0.1,
# and programs through ferry's libcuda.so.1 whose streams move to RDMA in
# the handshake (common/rdma/). Passes only when each program passes, says
# it runs over rdma, and ferryd's session lines say so too; then a client
# killed mid-session is freed by ferryd, and a ferryd that dies is a lost
# device (CUDA_ERROR_DEVICE_UNAVAILABLE) to its client.
ferryd --backend host --host-kernels /ferry/lib/libe2e_host_kernels.so \
  --host-kernels /ferry/lib/libe2e_runtime_host_kernels.so \
  --listen "rdma://$RXE_IP:7001" --no-auth --no-tls --ready-file ferryd.ready \
  >ferryd.log 2>&1 &
ferryd_pid=$!
rxe_wait_for 60 "ferryd's ready file" test -s ferryd.ready
grep -q "RDMA: offered" ferryd.log
export FERRY_SERVER="rdma://$RXE_IP:7001" LD_LIBRARY_PATH=/ferry/lib

# Driver API: allocations and copies of every size (ring chunks, inline and
# staged sends).
e2e_memory >memory.out 2>memory.err
grep -q "all checks passed" memory.out
grep -q "over rdma rxe0" memory.err
# Kernels, streams, events.
e2e_launch /ferry/data >launch.out 2>launch.err
grep -q "all checks passed" launch.out
e2e_streams_events /ferry/data >streams.out 2>streams.err
grep -q "all checks passed" streams.out
# The CUDA runtime (cudart, static) on the same stub.
rt_runtime_memory_static >runtime.out 2>runtime.err
grep -q "over rdma rxe0" runtime.err
test "$(grep -c 'started .*transport="rdma rxe0' ferryd.log)" -eq 4

# FERRY_TRANSPORT=tcp keeps a plain address on TCP.
FERRY_SERVER="$RXE_IP:7001" FERRY_TRANSPORT=tcp e2e_device_query >tcp.out 2>tcp.err
! grep -q "over rdma" tcp.err

# A client killed while it holds its session: ferryd frees it.
freed_before=$(grep -c "all its resources are freed" ferryd.log || true)
e2e_hold_and_wait /ferry/data >hold.out 2>hold.err &
holder=$!
rxe_wait_for 60 "the holder's READY" grep -q READY hold.out
kill -9 "$holder"
wait "$holder" || true
rxe_wait_for 60 "ferryd to free the killed client's session" \
  sh -c "test \$(grep -c 'all its resources are freed' ferryd.log) -gt $freed_before"

# ferryd killed under a waiting client: the client's call fails as a lost
# device, with a log line, instead of hanging.
e2e_hold_and_wait /ferry/data >hold2.out 2>hold2.err &
holder=$!
rxe_wait_for 60 "the second holder's READY" grep -q READY hold2.out
kill -9 "$ferryd_pid"
wait "$ferryd_pid" || true
rxe_wait_for 60 "the client to notice" sh -c "! kill -0 $holder 2>/dev/null"
if wait "$holder"; then echo "the client did not fail when ferryd died" >&2; exit 1; fi
grep -q "CUDA_ERROR_DEVICE_UNAVAILABLE" hold2.err
echo "ferry over rdma: all programs passed"
