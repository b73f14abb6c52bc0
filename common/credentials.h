// The token a client or ferryctl presents in its Hello (schema: Hello.token).
//
// Thread-safety: reads the environment and a file; no state.
#pragma once

#include <string>

#include "common/status.h"

namespace ferry {

// FERRY_TOKEN, else the first line of the file FERRY_TOKEN_FILE names
// (surrounding whitespace dropped); "" when neither is set. A file that
// cannot be read is InvalidArgument naming it.
Status TokenFromEnvironment(std::string* token);

}  // namespace ferry
