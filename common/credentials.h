// The token a client or ferryctl presents in its Hello (schema: Hello.token),
// and where it may be sent.
//
// Thread-safety: reads the environment and a file; no state.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace ferry {

// FERRY_TOKEN, else the first line of the file FERRY_TOKEN_FILE names
// (surrounding whitespace dropped); "" when neither is set. A file that
// cannot be read is InvalidArgument naming it.
Status TokenFromEnvironment(std::string* token);

// FERRY_ALLOW_PLAIN_TOKEN=1: the user accepts sending a token over plain TCP
// to another host (a network they trust).
bool PlainTokenAllowedByEnvironment();

// Refuses (PermissionDenied, before anything is connected) to send a
// non-empty `token` where anyone on the network path could read it: over
// TCP without TLS to an address that is neither unix: nor loopback
// (IsLoopbackAddress), unless `allow_plain`. `opt_in` names the caller's
// ways out in the message (e.g. "set FERRY_TLS_CA ...").
Status CheckTokenIsProtected(std::string_view address, std::string_view token, bool tls,
                             bool allow_plain, std::string_view opt_in);

}  // namespace ferry
