// Starting ferryd (or any program that writes --ready-file) as a child
// process for a test, and the environment that points a client program at it.
//
// Thread-safety: free functions; the returned ChildProcess belongs to the
// caller's thread (see child_process.h).
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "test/support/child_process.h"

namespace ferry::test {

// Starts `ferryd` (an absolute path) with `args` plus `--ready-file
// DIR/ready`, its output in DIR/ferryd.out and .err, and waits up to
// `timeout` for the ready file's first line, which it stores in `*address`
// ("127.0.0.1:PORT"). On failure (it cannot start, exits first, or is not
// ready in time) returns nullopt with the reason and ferryd's output in
// `*error`; a ferryd that was started is killed. `env` adds to (or
// overrides) ferryd's environment (e.g. FERRY_SERVER for a chained ferryd).
std::optional<ChildProcess> StartFerryd(const std::string& ferryd,
                                        const std::vector<std::string>& args,
                                        const std::string& dir, std::chrono::milliseconds timeout,
                                        std::string* address, std::string* error,
                                        const std::map<std::string, std::string>& env = {});

// Stops a ferryd started by StartFerryd: SIGTERM, then waits up to `timeout`
// for exit status 0. Returns "" when it stopped cleanly, else what failed,
// naming it `name` ("NAME died earlier", "... did not exit 0 ...") with its
// output; an absent ferryd is "".
std::string StopFerryd(const std::string& name, std::optional<ChildProcess>& ferryd,
                       std::chrono::milliseconds timeout);

// The environment that makes a program load ferry's libcuda.so.1 from
// `client_library_path` (before the harness's LD_LIBRARY_PATH) and connect
// to `server_address`; `extra` adds or overrides entries.
std::map<std::string, std::string> ClientEnv(const std::string& client_library_path,
                                             const std::string& server_address,
                                             const std::map<std::string, std::string>& extra = {});

// The session worker processes of the ferryd with process id `ferryd` (its
// children that serve a session, server/session_worker.h; not the spare), as
// they are now.
std::vector<int> SessionWorkerPids(int ferryd);

// A fresh folder under the test temporary directory named `prefix` + a
// unique suffix; "" if it cannot be made.
std::string MakeTempDir(const std::string& prefix);

}  // namespace ferry::test
