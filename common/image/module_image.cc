// Module images: measuring what the caller hands over, classifying it, and
// dispatching to the fatbin, cubin and PTX parsers (fatbin.h, elf.h, ptx.h).
//
// Thread-safety: pure functions; safe from any thread.
#include "common/image/module_image.h"

#include <cstring>
#include <string>
#include <string_view>

#include "common/image/bytes.h"
#include "common/image/elf.h"
#include "common/image/fatbin.h"
#include "common/image/ptx.h"

namespace ferry::image {
namespace {

using internal::InvalidImage;
using internal::IsPtxTextByte;
using internal::kFatbinHeaderSize;
using internal::kFatbinMagic;
using internal::kFatbinWrapperMagic;
using internal::LoadLe32;

static_assert(sizeof(void*) == 8, "the fatbin wrapper layout assumes LP64");

// Compares the little-endian `magic` with memory at `p` one byte at a time,
// stopping at the first difference. None of the magics has a zero byte, so
// on a short NUL-terminated PTX string this never reads past the NUL.
bool StartsWithMagic(const uint8_t* p, uint32_t magic) {
  for (int i = 0; i < 4; ++i) {
    if (p[i] != static_cast<uint8_t>(magic >> (8 * i))) return false;
  }
  return true;
}

constexpr uint32_t kElfMagicLe = 0x464c457f;  // "\x7fELF"

}  // namespace

Status ResolveImage(const void* image, std::span<const uint8_t>* out) {
  if (image == nullptr || out == nullptr) {
    return Status::InvalidArgument("ResolveImage: null image");
  }
  const auto* p = static_cast<const uint8_t*>(image);

  if (StartsWithMagic(p, kFatbinWrapperMagic)) {
    // {int magic, int version, const void* data, void* filename_or_fatbins}.
    // Version 2 (-rdc) also lists prelinked fatbins; the module is `data`.
    const uint32_t version = LoadLe32(p + 4);
    const void* data = nullptr;
    std::memcpy(&data, p + 8, sizeof(data));
    if (version != 1 && version != 2) {
      return InvalidImage("fatbin wrapper: unknown version " + std::to_string(version));
    }
    if (data == nullptr) return InvalidImage("fatbin wrapper: null fatbin");
    p = static_cast<const uint8_t*>(data);
    if (!StartsWithMagic(p, kFatbinMagic)) {
      return InvalidImage("fatbin wrapper does not point at a fatbin");
    }
  }

  uint64_t size = 0;
  if (StartsWithMagic(p, kFatbinMagic)) {
    FERRY_RETURN_IF_ERROR(internal::MeasureFatbin(
        std::span<const uint8_t, kFatbinHeaderSize>(p, kFatbinHeaderSize), &size));
  } else if (StartsWithMagic(p, kElfMagicLe)) {
    FERRY_RETURN_IF_ERROR(internal::MeasureElf(p, &size));
  } else {
    // PTX: measure up to the NUL, giving up at the first byte that is not
    // text so that garbage is rejected without a long walk through memory.
    while (p[size] != 0) {
      if (!IsPtxTextByte(p[size])) {
        return InvalidImage("not a fatbin, cubin or PTX image");
      }
      if (++size >= internal::kMaxImageBytes) {
        return InvalidImage("PTX text too large");
      }
    }
    const std::string_view text(reinterpret_cast<const char*>(p), size);
    if (!internal::LooksLikePtx(text)) {
      return InvalidImage("text is not PTX (no .version or .target)");
    }
    ++size;  // the driver reads the NUL too
  }
  *out = std::span<const uint8_t>(p, size);
  return Status::Ok();
}

Status CheckImageBounds(std::span<const uint8_t> bytes) {
  if (bytes.size() < 4) return Status::Ok();
  const uint32_t magic = LoadLe32(bytes.data());
  uint64_t size = 0;
  if (magic == kFatbinWrapperMagic) {
    return InvalidImage("a fatbin wrapper (it points into the client's memory); send the fatbin");
  } else if (magic == kFatbinMagic) {
    if (bytes.size() < kFatbinHeaderSize) return InvalidImage("fatbin: truncated header");
    FERRY_RETURN_IF_ERROR(internal::MeasureFatbin(
        std::span<const uint8_t, kFatbinHeaderSize>(bytes.data(), kFatbinHeaderSize), &size));
  } else if (magic == kElfMagicLe) {
    FERRY_RETURN_IF_ERROR(internal::MeasureElfIn(bytes, &size));
  } else {
    return Status::Ok();
  }
  if (size > bytes.size()) {
    return InvalidImage("fatbin: header claims " + std::to_string(size) +
                        " bytes but the image has " + std::to_string(bytes.size()));
  }
  return Status::Ok();
}

Status ClassifyImage(std::span<const uint8_t> bytes, ImageKind* kind) {
  if (kind == nullptr) return Status::InvalidArgument("ClassifyImage: null");
  if (bytes.size() >= 4) {
    const uint32_t magic = LoadLe32(bytes.data());
    if (magic == kFatbinMagic) {
      *kind = ImageKind::kFatbin;
      return Status::Ok();
    }
    if (magic == kElfMagicLe) {
      *kind = ImageKind::kCubin;
      return Status::Ok();
    }
    if (magic == kFatbinWrapperMagic) {
      // The wrapper holds pointers into its own process, not image bytes.
      return InvalidImage("a fatbin wrapper, not an image: resolve it first");
    }
  }
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  text = text.substr(0, text.find('\0'));
  if (!internal::LooksLikePtx(text)) {
    return InvalidImage("not a fatbin, cubin or PTX image");
  }
  *kind = ImageKind::kPtx;
  return Status::Ok();
}

Status ParseImage(std::span<const uint8_t> bytes, ImageLayout* out) {
  if (out == nullptr) return Status::InvalidArgument("ParseImage: null out");
  ImageKind kind;
  FERRY_RETURN_IF_ERROR(ClassifyImage(bytes, &kind));
  switch (kind) {
    case ImageKind::kFatbin:
      return internal::ParseFatbin(bytes, out);
    case ImageKind::kCubin:
      return internal::ParseCubin(bytes, out);
    case ImageKind::kPtx: {
      std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      return internal::ParsePtx(text.substr(0, text.find('\0')), out);
    }
  }
  return InvalidImage("unknown image kind");
}

Status ReadLinkSymbols(std::span<const uint8_t> image, LinkSymbols* out) {
  ImageKind kind;
  FERRY_RETURN_IF_ERROR(ClassifyImage(image, &kind));
  if (kind == ImageKind::kPtx) {
    std::string_view text(reinterpret_cast<const char*>(image.data()), image.size());
    internal::ScanPtxLinkSymbols(text.substr(0, text.find('\0')), out);
  }
  // A fatbin's and a cubin's symbols are not read (see LinkSymbols).
  return Status::Ok();
}

Status FatbinBuilder::Add(std::span<const uint8_t> image) {
  ImageKind kind;
  FERRY_RETURN_IF_ERROR(ClassifyImage(image, &kind));
  constexpr uint32_t kSm = 90;  // the host backend's devices are sm_90
  switch (kind) {
    case ImageKind::kFatbin:
      return internal::AppendFatbinEntries(image, &payload_);
    case ImageKind::kCubin:
      internal::AppendFatbinEntry(/*elf=*/true, kSm, image, &payload_);
      return Status::Ok();
    case ImageKind::kPtx: {
      std::vector<uint8_t> text(image.begin(), image.end());
      if (text.empty() || text.back() != 0) text.push_back(0);
      internal::AppendFatbinEntry(/*elf=*/false, kSm, text, &payload_);
      return Status::Ok();
    }
  }
  return InvalidImage("unknown image kind");
}

std::vector<uint8_t> FatbinBuilder::Finish() const { return internal::WrapFatbin(payload_); }

}  // namespace ferry::image
