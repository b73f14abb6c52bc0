#include "test/support/pool_config.h"

#include <algorithm>
#include <fstream>

namespace ferry::test {

std::string DayNightToml(const DayNightConfig& config) {
  std::string text = "[server]\n" + config.server_keys + "default_pool = \"dev\"\n";
  if (!config.gpu_memory.empty()) {
    text += "[[gpu]]\nindex = 0\nmemory = \"" + config.gpu_memory + "\"\n";
  }
  text +=
      "[pool.dev]\nslices_per_gpu = 4\n"
      "[pool.train]\nslices_per_gpu = 1\n";
  text += "[[schedule]]\npool = \"dev\"\ngpus = " + config.gpus +
          "\nfrom = 08:00:00\nto = 20:00:00\ntimezone = \"Asia/Shanghai\"\n";
  text += "[[schedule]]\npool = \"train\"\ngpus = " + config.gpus +
          "\nfrom = 20:00:00\nto = 08:00:00\ntimezone = \"Asia/Shanghai\"\n";
  return text + config.night_policy;
}

bool WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  return static_cast<bool>(out);
}

int LineOf(const std::string& text, const std::string& needle) {
  const size_t at = text.find(needle);
  if (at == std::string::npos) return 0;
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + at, '\n'));
}

}  // namespace ferry::test
