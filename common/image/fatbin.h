// Private to ferry_image: fatbin containers and the fatbin wrapper.
//
// Layout (little-endian):
//  * wrapper (`__fatBinC_Wrapper_t`): {i32 magic 0x466243B1, i32 version,
//    const void* data, void* filename_or_fatbins}; `data` is the fatbin.
//  * container header: {u32 magic 0xBA55ED50, u16 version, u16 header size,
//    u64 payload size}; the entries fill the payload.
//  * entry header: u16 kind (1 PTX, 2 ELF) at +0, u32 header size at +4,
//    u64 payload size at +8, u32 compressed size at +16, u32 SM at +28,
//    u64 flags at +40 (0x2000 LZ4 block, 0x8000 zstd frame), u64
//    uncompressed size at +56. A compressed payload may carry padding after
//    the compressed bytes, hence the separate compressed size.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/image/module_image.h"
#include "common/status.h"

namespace ferry::image::internal {

inline constexpr uint32_t kFatbinMagic = 0xBA55ED50;
inline constexpr uint32_t kFatbinWrapperMagic = 0x466243B1;
inline constexpr uint64_t kFatbinHeaderSize = 16;

// The size of the container whose 16-byte header is `header`.
Status MeasureFatbin(std::span<const uint8_t, kFatbinHeaderSize> header, uint64_t* size);

// Sets `*out` to the kernels and variables of every entry, each name once:
// ELF entries first (their layouts are the compiled truth), then what only
// PTX entries add. Fails, leaving `*out` untouched, if any entry is
// malformed or does not decompress.
Status ParseFatbin(std::span<const uint8_t> bytes, ImageLayout* out);

// Writing a container (FatbinBuilder): appends every entry of the fatbin
// `bytes` to `payload` as it is (compressed entries stay compressed); fails,
// appending nothing, on a malformed container.
Status AppendFatbinEntries(std::span<const uint8_t> bytes, std::vector<uint8_t>* payload);
// Appends one uncompressed entry: an ELF cubin (`elf`) or NUL-terminated PTX,
// for SM `sm` (e.g. 90).
void AppendFatbinEntry(bool elf, uint32_t sm, std::span<const uint8_t> bytes,
                       std::vector<uint8_t>* payload);
// The container header followed by `payload` (entries).
std::vector<uint8_t> WrapFatbin(std::span<const uint8_t> payload);

}  // namespace ferry::image::internal
