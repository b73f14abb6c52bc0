// Fuzz target "image": module images as a client sends them to ferryd — the
// host backend parses them (ParseImage: fatbin containers with LZ4 and zstd
// entries, ELF cubins, PTX text), the CUDA backend checks their bounds before
// NVIDIA's driver reads them (CheckImageBounds), both classify them.
//
// Checks: nothing crashes, reads outside the input (it lies in a heap block
// of exactly its size, so ASan sees an over-read) or trips UBSan; the
// functions keep their contracts:
// ParseImage accepts only what ClassifyImage recognises, and every parsed
// global's initial bytes fit its size (the host backend copies them into an
// allocation of that size). An ELF symbol's name may be empty (string
// offset 0); that is not malformed, so names are not checked.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "common/image/module_image.h"

namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz_image: broken invariant: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry::image;
  const std::span<const uint8_t> bytes(data, size);
  ImageKind kind = ImageKind::kPtx;
  const bool classified = ClassifyImage(bytes, &kind).ok();
  (void)CheckImageBounds(bytes);
  // ResolveImage trusts fatbin and ELF headers (the client's own memory);
  // text it measures up to a NUL, which this copy supplies.
  uint32_t magic = 0;
  if (size >= 4) std::memcpy(&magic, data, 4);
  const bool binary = magic == 0xBA55ED50 || magic == 0x466243B1 || magic == 0x464c457f;
  if (!binary) {
    std::vector<uint8_t> text(data, data + size);
    text.push_back(0);
    std::span<const uint8_t> resolved;
    if (ResolveImage(text.data(), &resolved).ok()) {
      Require(resolved.data() == text.data() && resolved.size() <= text.size(),
              "ResolveImage measured text past its NUL");
    }
  }
  ImageLayout layout;
  if (ParseImage(bytes, &layout).ok()) {
    Require(classified, "ParseImage accepted bytes that ClassifyImage refused");
    for (const GlobalLayout& global : layout.globals) {
      Require(global.initial.empty() || global.initial.size() <= global.size,
              "a global's initial bytes exceed its size");
    }
  }
  return 0;
}
