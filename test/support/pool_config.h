// Pool configs (ferryd --config TOML) for tests: the day/night example that
// the pool tests share, built from a few knobs, and a file writer.
//
// Thread-safety: free functions.
#pragma once

#include <string>

namespace ferry::test {

// Pool "dev" (4 slices per GPU) by day, 08:00-20:00, and "train" (1 slice)
// by night, 20:00-08:00, Asia/Shanghai, on `gpus`.
struct DayNightConfig {
  std::string server_keys;   // extra [server] lines, each ending in "\n"
  std::string gpu_memory;    // non-empty: a [[gpu]] table for GPU 0 with this memory
  std::string gpus = "[0]";  // the schedules' `gpus` value
  std::string night_policy;  // lines appended to the night [[schedule]] (on_rebind, grace)
};

// The TOML text; `default_pool = "dev"`.
std::string DayNightToml(const DayNightConfig& config);

// Writes `text` to `path`, replacing what was there; false if it cannot.
bool WriteTextFile(const std::string& path, const std::string& text);

// The 1-based line of `text` on which `needle` first starts; 0 if absent.
int LineOf(const std::string& text, const std::string& needle);

}  // namespace ferry::test
