// Loopback TCP endpoints for tests: a listening socket on an ephemeral port,
// and a port on which nothing listens.
//
// Thread-safety: free functions.
#pragma once

#include <memory>

#include "common/status.h"
#include "common/transport.h"

namespace ferry::test {

// A socket listening on 127.0.0.1 at an ephemeral port, stored in `*port`;
// -1 on failure. The caller owns (and closes) the descriptor.
int ListenOnLoopback(int* port);

// A connected TCP pair over 127.0.0.1 (ferry's socket options on the
// client's side), as ferryd's listener and ConnectTcp would make it:
// `server` is the accepted end.
Status MakeLoopbackTcpPair(std::unique_ptr<Transport>* server, std::unique_ptr<Transport>* client);

// A port on 127.0.0.1 where nothing listens (bound, then closed); -1 if none
// could be found.
int ClosedLoopbackPort();

}  // namespace ferry::test
