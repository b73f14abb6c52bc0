// JSON text for what ferry writes: ferryctl's `-o json` output and ferryd's
// `--log-format json` log lines. Writing only; nothing here parses.
//
// Thread-safety: free functions without state.
#pragma once

#include <string>
#include <string_view>

namespace ferry {

// `text` as a JSON string literal, quotes included. Control characters are
// escaped; other bytes pass through unchanged (ferry's text is UTF-8).
std::string JsonString(std::string_view text);

}  // namespace ferry
