// The host backend's JIT linker (cuLinkCreate ... cuLinkComplete on
// `ferryd --backend host`). There is no device code to compile, so linking
// here means what a program can observe of it:
//
//  * Inputs (cuLinkAddData) must each be an image the host backend loads: PTX
//    (CU_JIT_INPUT_PTX), an ELF cubin (CU_JIT_INPUT_CUBIN) or a fatbin
//    (CU_JIT_INPUT_FATBINARY), of the type given (else
//    CUDA_ERROR_INVALID_PTX for PTX, CUDA_ERROR_INVALID_IMAGE otherwise);
//    host objects, libraries and NVVM/LTO IR are CUDA_ERROR_NOT_SUPPORTED.
//    A refused input gets an error-log line naming it.
//  * cuLinkComplete resolves references by name across PTX inputs: every
//    `.extern .func` / `.extern .global` / `.extern .const` of one input
//    must be defined `.visible` (or `.weak`) by some input or named in the
//    global symbol table (CU_JIT_GLOBAL_SYMBOL_NAMES), and no name may
//    be defined `.visible` twice; otherwise the link fails with
//    CUDA_ERROR_UNKNOWN (what the driver reports for nvlink's errors) and an
//    error-log line per problem: "error   : Undefined reference to 'NAME' in
//    'INPUT'" or "error   : Multiple definition of 'NAME' in 'INPUT', first
//    defined in 'OTHER'". Cubin and fatbin inputs are taken as they are.
//  * The result is one fatbin holding every input as an entry, which the
//    host backend's LoadModule reads as the union of the inputs' kernels and
//    globals: each kernel runs as its host twin (ferry_host_kernel.h), which
//    implements the whole kernel, calls into other inputs included.
//  * Options: log buffers get the lines above (the info log, with
//    CU_JIT_LOG_VERBOSE, one line per input and one for the result), each
//    truncated to its size; the size options then hold the bytes written
//    (with the NUL), CU_JIT_WALL_TIME the milliseconds spent so far; outputs
//    replace the low 32 bits of their slot. Other options are accepted and
//    change nothing.
//
// Thread-safety: a HostLink is used by one session's executor at a time.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/image/module_image.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend::host_internal {

class HostLink final : public Link {
 public:
  HostLink(std::vector<JitOption> options, std::vector<JitSymbol> symbols);

  // GpuBackend::AddLinkInput and CompleteLink.
  Status AddInput(int type, std::span<const uint8_t> data, const std::string& name,
                  const std::vector<JitOption>& options, LinkReport* report);
  Status Complete(std::span<const uint8_t>* image, LinkReport* report);

 private:
  struct Input {
    std::string name;
    std::vector<uint8_t> bytes;
    image::LinkSymbols symbols;
  };
  // Fills `report` after a call that took `seconds`.
  void Report(double seconds, LinkReport* report);
  uint64_t OptionValue(int option, uint64_t otherwise) const;
  // Adds a line to a log ("error   : ..." / "info    : ..."); a log stops
  // growing at kMaxLogBytes (no program gets more of it back: the session
  // clamps log buffers to that size), so a client that adds refused inputs
  // in a loop cannot grow ferryd through its logs.
  static constexpr size_t kMaxLogBytes = 1 << 20;
  static void AppendToLog(std::string* log, std::string_view prefix, const std::string& line);
  void Error(const std::string& line) { AppendToLog(&error_log_, "error   : ", line); }
  void Info(const std::string& line);

  std::vector<JitOption> options_;  // as given; outputs are written into copies
  std::vector<JitSymbol> symbols_;  // the global symbol table
  std::string info_log_;
  std::string error_log_;
  double wall_ms_ = 0;
  std::vector<Input> inputs_;
  std::vector<uint8_t> image_;  // the result, once complete
};

}  // namespace ferry::backend::host_internal
