// The host backend's JIT linker; host_link.h says what linking means here.
#include "server/backend/host/host_link.h"

#include <cuda.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <map>
#include <set>
#include <utility>

namespace ferry::backend::host_internal {
namespace {

// The name a log gives an input: the program's, or one like the driver's.
std::string InputName(const std::string& name, size_t index) {
  return name.empty() ? "input " + std::to_string(index) : name;
}

// Replaces the low 32 bits of an option slot (an output's width).
uint64_t WithLow32(uint64_t slot, uint32_t value) { return (slot & ~uint64_t{0xffffffff}) | value; }

// Bytes a log of `text` fills in a buffer of `capacity` bytes, NUL included.
uint32_t LogBytes(const std::string& text, uint64_t capacity) {
  return static_cast<uint32_t>(std::min<uint64_t>(text.size() + 1, capacity));
}

}  // namespace

HostLink::HostLink(std::vector<JitOption> options, std::vector<JitSymbol> symbols)
    : options_(std::move(options)), symbols_(std::move(symbols)) {}

uint64_t HostLink::OptionValue(int option, uint64_t otherwise) const {
  for (const JitOption& o : options_) {
    if (o.option == option) return o.value;
  }
  return otherwise;
}

void HostLink::AppendToLog(std::string* log, std::string_view prefix, const std::string& line) {
  if (log->size() >= kMaxLogBytes) return;
  log->append(prefix).append(line).append("\n");
  if (log->size() > kMaxLogBytes) log->resize(kMaxLogBytes);
}

void HostLink::Info(const std::string& line) {
  if (OptionValue(CU_JIT_LOG_VERBOSE, 0) != 0) AppendToLog(&info_log_, "info    : ", line);
}

Status HostLink::AddInput(int type, std::span<const uint8_t> data, const std::string& name,
                          const std::vector<JitOption>& options, LinkReport* report) {
  const auto start = std::chrono::steady_clock::now();
  const std::string shown = InputName(name, inputs_.size());
  Status added = [&]() -> Status {
    if (!image_.empty()) return Status::InvalidHandle("the link is complete");
    if (type != CU_JIT_INPUT_PTX && type != CU_JIT_INPUT_CUBIN && type != CU_JIT_INPUT_FATBINARY) {
      Error("'" + shown + "': the host backend links PTX, cubin and fatbin inputs only");
      return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED, "input type " + std::to_string(type) + " of '" +
                                                        shown +
                                                        "' cannot be linked on the host backend");
    }
    image::ImageKind kind;
    Status classified = image::ClassifyImage(data, &kind);
    const image::ImageKind expected = type == CU_JIT_INPUT_PTX     ? image::ImageKind::kPtx
                                      : type == CU_JIT_INPUT_CUBIN ? image::ImageKind::kCubin
                                                                   : image::ImageKind::kFatbin;
    image::ImageLayout layout;  // parsed only to refuse what LoadModule would
    if (classified.ok() && kind == expected) classified = image::ParseImage(data, &layout);
    if (!classified.ok() || kind != expected) {
      const std::string why = classified.ok() ? "not of the type given" : classified.message();
      Error("'" + shown + "': " + why);
      return Status::Cuda(
          type == CU_JIT_INPUT_PTX ? CUDA_ERROR_INVALID_PTX : CUDA_ERROR_INVALID_IMAGE,
          "link input '" + shown + "': " + why);
    }
    Input input{shown, std::vector<uint8_t>(data.begin(), data.end()), {}};
    FERRY_RETURN_IF_ERROR(image::ReadLinkSymbols(data, &input.symbols));
    Info("'" + shown + "': " + std::to_string(layout.kernels.size()) + " kernels");
    inputs_.push_back(std::move(input));
    return Status::Ok();
  }();
  report->input_options = options;
  Report(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), report);
  return added;
}

Status HostLink::Complete(std::span<const uint8_t>* image, LinkReport* report) {
  const auto start = std::chrono::steady_clock::now();
  Status linked = [&]() -> Status {
    if (!image_.empty()) {
      *image = image_;
      return Status::Ok();
    }
    if (inputs_.empty()) {
      Error("no inputs to link");
      return Status::InvalidArgument("cuLinkComplete: no inputs were added");
    }
    std::map<std::string, const Input*> defined;  // strong definitions
    std::set<std::string> weak;                   // and the global symbol table's names
    for (const JitSymbol& symbol : symbols_) weak.insert(symbol.name);
    bool failed = false;
    for (const Input& input : inputs_) {
      for (const std::string& name : input.symbols.defined) {
        auto [it, inserted] = defined.emplace(name, &input);
        if (!inserted && it->second != &input) {
          Error("Multiple definition of '" + name + "' in '" + input.name +
                "', first defined in '" + it->second->name + "'");
          failed = true;
        }
      }
      weak.insert(input.symbols.weak.begin(), input.symbols.weak.end());
    }
    std::string first_missing;
    for (const Input& input : inputs_) {
      for (const std::string& name : input.symbols.referenced) {
        if (defined.count(name) != 0 || weak.count(name) != 0) continue;
        Error("Undefined reference to '" + name + "' in '" + input.name + "'");
        if (first_missing.empty()) first_missing = name;
        failed = true;
      }
    }
    if (failed) {
      return Status::Cuda(CUDA_ERROR_UNKNOWN,
                          first_missing.empty()
                              ? "link failed: a name is defined twice (see the error log)"
                              : "link failed: undefined reference to '" + first_missing + "'");
    }
    image::FatbinBuilder builder;
    for (const Input& input : inputs_) FERRY_RETURN_IF_ERROR(builder.Add(input.bytes));
    image_ = builder.Finish();
    Info("linked " + std::to_string(inputs_.size()) + " inputs into a fatbin of " +
         std::to_string(image_.size()) + " bytes");
    *image = image_;
    return Status::Ok();
  }();
  Report(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), report);
  return linked;
}

void HostLink::Report(double seconds, LinkReport* report) {
  wall_ms_ += seconds * 1000.0;
  const uint64_t info_capacity = OptionValue(CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, 0);
  const uint64_t error_capacity = OptionValue(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, 0);
  // What fits the program's buffers with their NULs.
  report->info_log = info_log_.substr(0, info_capacity > 0 ? info_capacity - 1 : 0);
  report->error_log = error_log_.substr(0, error_capacity > 0 ? error_capacity - 1 : 0);
  report->options = options_;
  for (JitOption& o : report->options) {
    switch (o.option) {
      case CU_JIT_WALL_TIME:
        o.value = WithLow32(o.value, std::bit_cast<uint32_t>(static_cast<float>(wall_ms_)));
        break;
      case CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES:
        o.value = WithLow32(o.value, LogBytes(report->info_log, info_capacity));
        break;
      case CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES:
        o.value = WithLow32(o.value, LogBytes(report->error_log, error_capacity));
        break;
      default:
        break;
    }
  }
}

}  // namespace ferry::backend::host_internal
