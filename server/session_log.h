// The operator's lines about sessions (README.md "Logs"): one when a session
// starts serving and one when it has ended and freed everything. They say
// who (peer address, client pid, host and program, the token's name and id
// when ferryd checks tokens), what (the devices: whole GPUs, or slices of a
// pool), and at the end how long it lasted, the bytes each way on its
// connection, its peak device memory, the module image bytes it uploaded and
// why it ended. Text lines carry
// these as key=value after the sentence; with --log-format json they are
// members of the line's object (common/log.h), e.g.
//   {"time":...,"msg":"session 7 closed; all its resources are freed",
//    "event":"session_end","session":7,"peer":"127.0.0.1:40112",
//    "client_pid":4242,"client_host":"ws1","client_program":"train",
//    "token_name":"alice","token_id":"...",
//    "pool":"dev","devices":"gpu0:slice1/4","duration_ms":12500,
//    "bytes_from_client":1048576,"bytes_to_client":2048,
//    "peak_bytes_allocated":268435456,"module_image_bytes_received":0,
//    "reason":"the client closed the connection"}
//
// Thread-safety: free functions; any thread.
#pragma once

#include <string>

#include "server/session.h"
#include "server/session_shares.h"
#include "server/session_worker.h"

namespace ferry::server {

// Logged by Session::Run once the handshake is answered.
void LogSessionStarted(const SessionInfo& info, const SessionGrant& grant);
// Logged by the session's owner once Run has returned (every resource freed)
// and its slices are back in the pool; nothing for a session that never
// started (refused at its handshake).
void LogSessionEnded(const SessionInfo& info, const SessionGrant& grant);

// The same for a session that ran in a worker process, once the worker has
// exited (`how_it_died`: "" for a clean exit, else e.g. "killed by signal 11
// (Segmentation fault)"). Its figures are the worker's final report; a
// worker that sent none (it died, or ferryd stopped — `ferryd_stopping` —
// and closed the link first) gets a line with the figures last known and
// that reason.
void LogWorkerSessionEnded(const SessionWorker& worker, const std::string& how_it_died,
                           bool ferryd_stopping);

// "gpu0,gpu1" for whole GPUs, "gpu0:slice2/4" for slices (1-based, as
// ferryctl status shows them).
std::string DescribeDevices(const SessionGrant& grant);

}  // namespace ferry::server
