// Loopback TCP endpoints for tests: a listening socket on an ephemeral port,
// and a port on which nothing listens.
//
// Thread-safety: free functions.
#pragma once

namespace ferry::test {

// A socket listening on 127.0.0.1 at an ephemeral port, stored in `*port`;
// -1 on failure. The caller owns (and closes) the descriptor.
int ListenOnLoopback(int* port);

// A port on 127.0.0.1 where nothing listens (bound, then closed); -1 if none
// could be found.
int ClosedLoopbackPort();

}  // namespace ferry::test
