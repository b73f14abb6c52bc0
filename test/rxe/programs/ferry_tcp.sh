# ferry's own binaries in the VM: a host-backend ferryd listening on d0's
# address, and a driver-API program through ferry's libcuda.so.1 (found by
# LD_LIBRARY_PATH=/ferry/lib, as ferry-run would set it). Over TCP: the
# template for programs on the RDMA transport (FERRY_SERVER=rdma://...).
ferryd --backend host --listen "$RXE_IP:7000" --no-auth --no-tls \
  --ready-file ferryd.ready >ferryd.log 2>&1 &
rxe_wait_for 60 "ferryd's ready file" test -s ferryd.ready
FERRY_SERVER="$RXE_IP:7000" LD_LIBRARY_PATH=/ferry/lib e2e_device_query
