// Module images: what the CUDA runtime and driver-API programs hand to
// cuModuleLoadData / cuLibraryLoadData, and what ferry needs to know of them.
//
//  * The client must find how many bytes an image spans (the API gives only a
//    pointer): ResolveImage follows a fatbin wrapper (magic 0x466243B1) to its
//    fatbin, and measures a fatbin (0xBA55ED50), an ELF cubin (program-header
//    table possibly after the section headers) or NUL-terminated PTX text.
//  * The host backend must know each kernel's parameter layout and each
//    global's size: ParseImage reads fatbin containers (LZ4 and zstd
//    compressed entries included), cubin `.nv.info.<kernel>` EIATTR_KPARAM_INFO
//    tables, `.nv.global` / `.nv.constant*` symbols, and PTX `.entry`
//    signatures and `.global` / `.const` declarations.
//
// Everything here is pure computation on bytes; thread-safe. Bad input yields
// a Status (never a crash, never a read outside the given span).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace ferry::image {

enum class ImageKind { kFatbin, kCubin, kPtx };

struct ParamLayout {
  uint32_t offset = 0;  // byte offset in the packed parameter buffer
  uint32_t size = 0;    // bytes
};
struct KernelLayout {
  std::string name;                 // mangled
  std::vector<ParamLayout> params;  // in parameter order
};
struct GlobalLayout {
  std::string name;
  uint64_t size = 0;
  std::vector<uint8_t> initial;  // initial bytes when the image holds them (else empty = zeros)
};
struct ImageLayout {
  std::vector<KernelLayout> kernels;
  std::vector<GlobalLayout> globals;
};

// Finds the bytes of the image that starts at `image` in the caller's memory.
// Follows a fatbin wrapper to its fatbin. `*out` views caller memory (no copy).
// The caller vouches that `image` points at readable memory holding one of the
// supported forms; within that, lengths are taken from the headers.
Status ResolveImage(const void* image, std::span<const uint8_t>* out);

// For a server that hands received bytes to NVIDIA's driver, which finds an
// image's length from the image's own headers: checks that a fatbin's or an
// ELF cubin's headers place the whole image inside `bytes` (reading nothing
// outside it). A fatbin wrapper is refused (it points into its own
// process). Other bytes pass: PTX text, or what the driver will refuse.
Status CheckImageBounds(std::span<const uint8_t> bytes);

// Classifies bytes already known to span one whole image.
Status ClassifyImage(std::span<const uint8_t> bytes, ImageKind* kind);

// Parses an image (fatbin, cubin or PTX) into kernel parameter layouts and
// globals. For a fatbin, every entry is read (ELF entries preferred over PTX
// for the same kernel); kernels are reported once each.
Status ParseImage(std::span<const uint8_t> bytes, ImageLayout* out);

// --- linking (the host backend's linker) ------------------------------------

// What an image offers other images at link time and what it needs from
// them, by name. Read from PTX images only; a fatbin or an ELF cubin adds
// nothing (it is taken as it is).
struct LinkSymbols {
  std::vector<std::string> defined;     // .visible functions and variables
  std::vector<std::string> weak;        // .weak / .common ones
  std::vector<std::string> referenced;  // .extern ones, to be defined elsewhere
};
Status ReadLinkSymbols(std::span<const uint8_t> image, LinkSymbols* out);

// Builds one fatbin container out of several images: a PTX text or an ELF
// cubin becomes an uncompressed entry, a fatbin's entries are copied as they
// are. ParseImage reads the result as the union of the inputs.
class FatbinBuilder {
 public:
  // Adds `image` (one whole image); fails, adding nothing, on bytes that are
  // no image. PTX without its NUL gets one.
  Status Add(std::span<const uint8_t> image);
  std::vector<uint8_t> Finish() const;

 private:
  std::vector<uint8_t> payload_;
};

}  // namespace ferry::image
