// A tiny PTX library image for tests that load libraries or modules without
// nvcc: one kernel k(u64, u32) and one 8-byte global `counter`. The host
// backend parses it like any PTX image; its kernel has no host implementation.
//
// Thread-safety: constants and a pure function.
#pragma once

#include <cstdint>
#include <vector>

namespace ferry::test {

inline constexpr char kTinyLibraryPtx[] = R"ptx(
.version 8.0
.target sm_90
.address_size 64
.visible .global .align 4 .b8 counter[8];
.visible .entry k(.param .u64 k_p, .param .u32 k_n)
{
  ret;
}
)ptx";

// The image bytes, with the terminating NUL (as a program passes PTX text).
inline std::vector<uint8_t> TinyLibraryImage() {
  return std::vector<uint8_t>(kTinyLibraryPtx, kTinyLibraryPtx + sizeof(kTinyLibraryPtx));
}

}  // namespace ferry::test
