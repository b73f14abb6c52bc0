// Fatbin container walking and entry decompression (see fatbin.h).
//
// Thread-safety: pure functions on caller-owned bytes; safe from any thread.
#include "common/image/fatbin.h"

#include <lz4.h>
#include <zstd.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/image/bytes.h"
#include "common/image/elf.h"
#include "common/image/ptx.h"

namespace ferry::image::internal {
namespace {

constexpr uint16_t kEntryPtx = 1;
constexpr uint16_t kEntryElf = 2;
constexpr uint64_t kEntryHeaderMinSize = 64;
constexpr uint64_t kFlagLz4 = 0x2000;
constexpr uint64_t kFlagZstd = 0x8000;
// An LZ4 block cannot expand one input byte into more than 255 output bytes,
// which bounds what a (possibly corrupted) uncompressed size may claim.
constexpr uint64_t kLz4MaxRatio = 255;
// Both decompressors take int sizes; no real entry comes near this.
constexpr uint64_t kMaxEntryBytes = INT_MAX;

struct Entry {
  size_t index = 0;                // position in the container, for messages
  std::span<const uint8_t> whole;  // header and payload
  uint16_t kind = 0;
  uint64_t flags = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  std::span<const uint8_t> payload;
};

// Decompresses the zstd frame(s) of `in` into `*out`, which grows with what
// the frames really produce, up to `limit` bytes. Both sizes in the headers
// (the entry's and the frame's) are only claims: an 89-byte entry can claim
// 2 GiB, and allocating the claim up front would let any client make ferryd
// commit that much per module load (fuzz target "image" found it).
Status DecompressZstd(std::span<const uint8_t> in, uint64_t limit, std::vector<uint8_t>* out) {
  constexpr uint64_t kFirstBytes = 64 << 10;
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> context(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (context == nullptr) return Status::OutOfMemory("cannot create a zstd decompressor");
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  out->resize(std::min(limit, std::max<uint64_t>(kFirstBytes, 4 * in.size())));
  size_t produced = 0;
  for (;;) {
    ZSTD_outBuffer output{out->data(), out->size(), produced};
    const size_t rc = ZSTD_decompressStream(context.get(), &output, &input);
    if (ZSTD_isError(rc)) {
      return InvalidImage(std::string("zstd entry does not decompress: ") + ZSTD_getErrorName(rc));
    }
    produced = output.pos;
    if (rc == 0 && input.pos == input.size) break;  // every frame whole and flushed
    if (produced == out->size()) {
      if (out->size() == limit) return InvalidImage("zstd entry exceeds its uncompressed size");
      out->resize(std::min<uint64_t>(limit, 2 * out->size()));
    } else if (input.pos == input.size) {
      return InvalidImage("zstd entry is truncated");
    }
  }
  out->resize(produced);
  return Status::Ok();
}

// The entry's image bytes: the payload itself, or its decompression held in
// `*storage`.
Status EntryBytes(const Entry& e, std::vector<uint8_t>* storage, std::span<const uint8_t>* bytes) {
  const bool lz4 = (e.flags & kFlagLz4) != 0;
  const bool zstd = (e.flags & kFlagZstd) != 0;
  if (!lz4 && !zstd) {
    *bytes = e.payload;
    return Status::Ok();
  }
  if (lz4 && zstd) return InvalidImage("entry flags name two compressors");
  // Older fatbins leave the compressed size 0: the payload is all of it.
  const uint64_t in_size = e.compressed_size != 0 ? e.compressed_size : e.payload.size();
  const uint64_t out_size = e.uncompressed_size;
  if (in_size > e.payload.size()) {
    return InvalidImage("compressed size exceeds the entry payload");
  }
  if (out_size == 0 || out_size > kMaxEntryBytes || (lz4 && out_size > in_size * kLz4MaxRatio)) {
    return InvalidImage("implausible uncompressed size " + std::to_string(out_size));
  }
  const auto* in = reinterpret_cast<const char*>(e.payload.data());
  if (lz4) {
    storage->resize(out_size);
    const int n = LZ4_decompress_safe(in, reinterpret_cast<char*>(storage->data()),
                                      static_cast<int>(in_size), static_cast<int>(out_size));
    if (n < 0) return InvalidImage("LZ4 entry does not decompress");
    storage->resize(n);
  } else {
    // A frame may record its own size; disagreement with the entry means
    // corruption, refused before anything is decompressed.
    const unsigned long long frame_size = ZSTD_getFrameContentSize(in, in_size);
    if (frame_size == ZSTD_CONTENTSIZE_ERROR ||
        (frame_size != ZSTD_CONTENTSIZE_UNKNOWN && frame_size != out_size)) {
      return InvalidImage("zstd entry header disagrees with its frame");
    }
    FERRY_RETURN_IF_ERROR(DecompressZstd(e.payload.first(in_size), out_size, storage));
  }
  *bytes = *storage;
  return Status::Ok();
}

// Adds what `from` names that `into` does not have yet.
class LayoutMerger {
 public:
  explicit LayoutMerger(ImageLayout* into) : into_(into) {}

  void Add(ImageLayout&& from) {
    for (KernelLayout& k : from.kernels) {
      if (kernels_.insert(k.name).second) into_->kernels.push_back(std::move(k));
    }
    for (GlobalLayout& g : from.globals) {
      if (globals_.insert(g.name).second) into_->globals.push_back(std::move(g));
    }
  }

 private:
  ImageLayout* into_;
  std::unordered_set<std::string> kernels_;
  std::unordered_set<std::string> globals_;
};

Status ParseEntry(const Entry& e, LayoutMerger* merger) {
  std::vector<uint8_t> storage;
  std::span<const uint8_t> bytes;
  FERRY_RETURN_IF_ERROR(EntryBytes(e, &storage, &bytes));
  ImageLayout layout;
  if (e.kind == kEntryElf) {
    FERRY_RETURN_IF_ERROR(ParseCubin(bytes, &layout));
  } else {
    // PTX entries are NUL-terminated, sometimes padded with more NULs.
    std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    text = text.substr(0, text.find('\0'));
    FERRY_RETURN_IF_ERROR(ParsePtx(text, &layout));
  }
  merger->Add(std::move(layout));
  return Status::Ok();
}

}  // namespace

Status MeasureFatbin(std::span<const uint8_t, kFatbinHeaderSize> header, uint64_t* size) {
  if (LoadLe32(header.data()) != kFatbinMagic) {
    return InvalidImage("fatbin: bad magic");
  }
  const uint16_t header_size = LoadLe16(header.data() + 6);
  const uint64_t payload_size = LoadLe64(header.data() + 8);
  uint64_t total = 0;
  if (header_size < kFatbinHeaderSize || !CheckedAdd(header_size, payload_size, &total) ||
      total > kMaxImageBytes) {
    return InvalidImage("fatbin: implausible header");
  }
  *size = total;
  return Status::Ok();
}

namespace {

// The entries of the fatbin container `bytes`, checked to lie within it.
Status ReadEntries(std::span<const uint8_t> bytes, std::vector<Entry>* out) {
  if (bytes.size() < kFatbinHeaderSize) {
    return InvalidImage("fatbin: truncated header");
  }
  uint64_t end = 0;
  FERRY_RETURN_IF_ERROR(MeasureFatbin(bytes.first<kFatbinHeaderSize>(), &end));
  if (end > bytes.size()) return InvalidImage("fatbin: truncated");

  std::vector<Entry> entries;
  for (uint64_t at = LoadLe16(bytes.data() + 6); at < end;) {
    if (!InBounds(end, at, kEntryHeaderMinSize)) {
      return InvalidImage("fatbin: truncated entry header");
    }
    const uint8_t* h = bytes.data() + at;
    const uint64_t header_size = LoadLe32(h + 4);
    const uint64_t payload_size = LoadLe64(h + 8);
    uint64_t payload_at = 0;
    if (header_size < kEntryHeaderMinSize || !CheckedAdd(at, header_size, &payload_at) ||
        !InBounds(end, payload_at, payload_size)) {
      return InvalidImage("fatbin: entry " + std::to_string(entries.size()) +
                          " overruns the container");
    }
    entries.push_back(Entry{
        .index = entries.size(),
        .whole = bytes.subspan(at, header_size + payload_size),
        .kind = LoadLe16(h),
        .flags = LoadLe64(h + 40),
        .compressed_size = LoadLe32(h + 16),
        .uncompressed_size = LoadLe64(h + 56),
        .payload = bytes.subspan(payload_at, payload_size),
    });
    at = payload_at + payload_size;
  }
  *out = std::move(entries);
  return Status::Ok();
}

}  // namespace

Status ParseFatbin(std::span<const uint8_t> bytes, ImageLayout* out) {
  std::vector<Entry> entries;
  FERRY_RETURN_IF_ERROR(ReadEntries(bytes, &entries));
  // ELF layouts come from the compiler's own tables; PTX adds only what no
  // ELF entry had (kernels compiled for PTX JIT alone). Several ELF entries
  // (one per SM) name the same kernels; each is reported once.
  ImageLayout layout;
  LayoutMerger merger(&layout);
  for (const uint16_t kind : {kEntryElf, kEntryPtx}) {
    for (const Entry& e : entries) {
      if (e.kind != kind) continue;
      Status status = ParseEntry(e, &merger);
      if (!status.ok()) {
        return status.WithContext("fatbin entry " + std::to_string(e.index));
      }
    }
  }
  *out = std::move(layout);
  return Status::Ok();
}

Status AppendFatbinEntries(std::span<const uint8_t> bytes, std::vector<uint8_t>* payload) {
  std::vector<Entry> entries;
  FERRY_RETURN_IF_ERROR(ReadEntries(bytes, &entries));
  for (const Entry& e : entries) payload->insert(payload->end(), e.whole.begin(), e.whole.end());
  return Status::Ok();
}

void AppendFatbinEntry(bool elf, uint32_t sm, std::span<const uint8_t> bytes,
                       std::vector<uint8_t>* payload) {
  // Payloads are padded to 8 bytes (zeros: after PTX's NUL, after an ELF's
  // end), so every entry header stays aligned.
  const uint64_t padded = (bytes.size() + 7) & ~uint64_t{7};
  uint8_t header[kEntryHeaderMinSize] = {};
  StoreLe16(header, elf ? kEntryElf : kEntryPtx);
  StoreLe16(header + 2, 0x0101);  // entry format version
  StoreLe32(header + 4, kEntryHeaderMinSize);
  StoreLe64(header + 8, padded);
  StoreLe32(header + 28, sm);
  payload->insert(payload->end(), header, header + sizeof(header));
  payload->insert(payload->end(), bytes.begin(), bytes.end());
  payload->resize(payload->size() + (padded - bytes.size()), 0);
}

std::vector<uint8_t> WrapFatbin(std::span<const uint8_t> payload) {
  std::vector<uint8_t> fatbin(kFatbinHeaderSize);
  StoreLe32(fatbin.data(), kFatbinMagic);
  StoreLe16(fatbin.data() + 4, 1);  // container version
  StoreLe16(fatbin.data() + 6, kFatbinHeaderSize);
  StoreLe64(fatbin.data() + 8, payload.size());
  fatbin.insert(fatbin.end(), payload.begin(), payload.end());
  return fatbin;
}

}  // namespace ferry::image::internal
