// ELF cubin measuring and parsing (see elf.h for the format facts).
//
// Thread-safety: pure functions on caller-owned bytes; safe from any thread.
#include "common/image/elf.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/image/bytes.h"

namespace ferry::image::internal {
namespace {

constexpr uint8_t kElfMagic[4] = {0x7f, 'E', 'L', 'F'};
constexpr uint8_t kElfClass64 = 2;
constexpr uint8_t kElfDataLittle = 1;

constexpr uint64_t kEhdrSize = 64;
constexpr uint64_t kShdrSize = 64;
constexpr uint64_t kPhdrSize = 56;
constexpr uint64_t kSymSize = 24;

constexpr uint32_t kShtSymtab = 2;
constexpr uint32_t kShtNobits = 8;
constexpr uint32_t kShnLoreserve = 0xff00;
constexpr uint32_t kShnXindex = 0xffff;

constexpr uint8_t kSttObject = 1;
constexpr uint8_t kSttFunc = 2;
constexpr uint8_t kSttCudaObject = 13;  // device variables in -rdc cubins
constexpr uint8_t kStoCudaEntry = 0x10;

// .nv.info attribute formats.
constexpr uint8_t kEifmtNval = 1;
constexpr uint8_t kEifmtBval = 2;
constexpr uint8_t kEifmtHval = 3;
constexpr uint8_t kEifmtSval = 4;

// .nv.info attributes ferry reads.
// SVAL {u32 symbol, u16 offset in bank 0, u16 parameter bytes}.
constexpr uint8_t kEiattrParamCbank = 0x0a;
// SVAL {u32 index, u16 ordinal, u16 offset, u32 packed}, size = bits 18..31.
constexpr uint8_t kEiattrKparamInfo = 0x17;
// HVAL: parameter bytes.
constexpr uint8_t kEiattrCbankParamSize = 0x19;
// SVAL {u32 index, u16 ordinal, u16 offset, u16 size, u16 flags}; sm_100
// cubins set flag bits (0x0500 for a pointer), sm_90 ones leave them 0.
constexpr uint8_t kEiattrKparamInfoV2 = 0x45;

constexpr std::string_view kNvInfoPrefix = ".nv.info.";

struct ElfHeader {
  uint64_t phoff = 0;
  uint64_t shoff = 0;
  uint64_t phnum = 0;
  uint64_t shnum = 0;     // after extended numbering
  uint64_t shstrndx = 0;  // after extended numbering
};

struct Section {
  uint32_t name = 0;
  uint32_t type = 0;
  uint64_t addr = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  uint32_t link = 0;
  uint64_t entsize = 0;

  bool HasFileData() const { return type != kShtNobits && size != 0; }
};

Section DecodeSection(const uint8_t* p) {
  Section s;
  s.name = LoadLe32(p);
  s.type = LoadLe32(p + 4);
  s.addr = LoadLe64(p + 16);
  s.offset = LoadLe64(p + 24);
  s.size = LoadLe64(p + 32);
  s.link = LoadLe32(p + 40);
  s.entsize = LoadLe64(p + 56);
  return s;
}

// Decodes and checks the 64-byte ELF header. Section count and string-table
// index are provisional until ResolveExtendedNumbering.
Status DecodeHeader(const ByteReader& r, ElfHeader* h) {
  if (!r.Has(0, kEhdrSize)) return InvalidImage("ELF: truncated header");
  const uint8_t* p = r.data();
  if (std::memcmp(p, kElfMagic, sizeof(kElfMagic)) != 0) {
    return InvalidImage("ELF: bad magic");
  }
  if (p[4] != kElfClass64) return InvalidImage("ELF: not ELF64");
  if (p[5] != kElfDataLittle) return InvalidImage("ELF: not little-endian");
  h->phoff = LoadLe64(p + 32);
  h->shoff = LoadLe64(p + 40);
  const uint16_t phentsize = LoadLe16(p + 54);
  h->phnum = LoadLe16(p + 56);
  const uint16_t shentsize = LoadLe16(p + 58);
  h->shnum = LoadLe16(p + 60);
  h->shstrndx = LoadLe16(p + 62);
  if (h->phnum != 0 && phentsize != kPhdrSize) {
    return InvalidImage("ELF: unexpected program header size");
  }
  if (h->shoff != 0 && shentsize != kShdrSize) {
    return InvalidImage("ELF: unexpected section header size");
  }
  if (h->shoff == 0) h->shnum = 0;
  return Status::Ok();
}

// ELF moves the section count and the string-table index into section 0
// when they do not fit in 16 bits; `r` must hold section 0.
Status ResolveExtendedNumbering(const ByteReader& r, ElfHeader* h) {
  if (h->shoff == 0) return Status::Ok();
  if (h->shnum != 0 && h->shstrndx != kShnXindex) return Status::Ok();
  if (!r.Has(h->shoff, kShdrSize)) {
    return InvalidImage("ELF: section header table outside the image");
  }
  const Section zero = DecodeSection(r.data() + h->shoff);
  if (h->shnum == 0) h->shnum = zero.size;
  if (h->shstrndx == kShnXindex) h->shstrndx = zero.link;
  return Status::Ok();
}

// One past the last byte of the section-header table.
Status SectionTableEnd(const ElfHeader& h, uint64_t* end) {
  uint64_t bytes = 0;
  if (!CheckedMul(h.shnum, kShdrSize, &bytes) || !CheckedAdd(h.shoff, bytes, end) ||
      *end > kMaxImageBytes) {
    return InvalidImage("ELF: section header table too large");
  }
  return Status::Ok();
}

// The image's extent from its headers; `r` must hold the section table.
Status Extent(const ByteReader& r, const ElfHeader& h, uint64_t* extent) {
  uint64_t end = kEhdrSize;
  uint64_t table_end = 0;
  FERRY_RETURN_IF_ERROR(SectionTableEnd(h, &table_end));
  if (!r.Has(0, table_end)) {
    return InvalidImage("ELF: section header table outside the image");
  }
  end = std::max(end, table_end);
  if (h.phnum != 0) {
    uint64_t ph_end = 0;
    if (!CheckedAdd(h.phoff, h.phnum * kPhdrSize, &ph_end)) {
      return InvalidImage("ELF: program header table out of range");
    }
    end = std::max(end, ph_end);
  }
  for (uint64_t i = 0; i < h.shnum; ++i) {
    const Section s = DecodeSection(r.data() + h.shoff + i * kShdrSize);
    if (!s.HasFileData()) continue;
    uint64_t data_end = 0;
    if (!CheckedAdd(s.offset, s.size, &data_end)) {
      return InvalidImage("ELF: section data out of range");
    }
    end = std::max(end, data_end);
  }
  if (end > kMaxImageBytes) return InvalidImage("ELF: image too large");
  *extent = end;
  return Status::Ok();
}

// Reads `.nv.info.<kernel>` into the kernel's parameter list.
Status ParseKernelInfo(std::span<const uint8_t> info, KernelLayout* kernel) {
  struct Entry {
    uint32_t ordinal;
    uint32_t offset;
    uint32_t size;
  };
  std::vector<Entry> entries;
  uint64_t declared_total = 0;  // 0: the image did not say
  const ByteReader r(info);
  uint64_t at = 0;
  while (at < r.size()) {
    if (!r.Has(at, 4)) return InvalidImage("truncated .nv.info attribute");
    const uint8_t format = info[at];
    const uint8_t attribute = info[at + 1];
    const uint16_t value = LoadLe16(info.data() + at + 2);
    switch (format) {
      case kEifmtNval:
      case kEifmtBval:
        at += 4;
        break;
      case kEifmtHval:
        if (attribute == kEiattrCbankParamSize) declared_total = value;
        at += 4;
        break;
      case kEifmtSval: {
        std::span<const uint8_t> payload;
        if (!r.Slice(at + 4, value, &payload)) {
          return InvalidImage(".nv.info attribute overruns its section");
        }
        const uint8_t* p = payload.data();
        if (attribute == kEiattrKparamInfo || attribute == kEiattrKparamInfoV2) {
          if (payload.size() < 12) return InvalidImage("short KPARAM_INFO");
          const uint32_t word = LoadLe32(p + 8);
          entries.push_back(Entry{
              .ordinal = LoadLe16(p + 4),
              .offset = LoadLe16(p + 6),
              .size = attribute == kEiattrKparamInfo ? (word >> 18) & 0x3fff : word & 0xffff,
          });
        } else if (attribute == kEiattrParamCbank && payload.size() >= 8) {
          declared_total = LoadLe16(p + 6);
        }
        at += 4 + payload.size();
        break;
      }
      default:
        return InvalidImage("unknown .nv.info attribute format " + std::to_string(format));
    }
  }

  // nvcc lists parameters last to first; every parameter appears, used or
  // not, so the ordinals must be exactly 0..n-1.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.ordinal < b.ordinal; });
  kernel->params.clear();
  kernel->params.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (e.ordinal != i) {
      return InvalidImage("KPARAM_INFO ordinals are not 0..n-1");
    }
    if (declared_total != 0 && uint64_t{e.offset} + e.size > declared_total) {
      return InvalidImage("parameter extends past the parameter buffer");
    }
    kernel->params.push_back(ParamLayout{.offset = e.offset, .size = e.size});
  }
  return Status::Ok();
}

// Sections that hold device variables visible to cuModuleGetGlobal:
// `.nv.global`, `.nv.global.init` and `.nv.constant<bank>` (bank 0's
// per-kernel `.nv.constant0.<kernel>` holds parameters, not variables).
bool IsVariableSection(std::string_view name) {
  if (name == ".nv.global" || name == ".nv.global.init") return true;
  constexpr std::string_view kConstant = ".nv.constant";
  if (!name.starts_with(kConstant)) return false;
  const std::string_view bank = name.substr(kConstant.size());
  return !bank.empty() &&
         std::all_of(bank.begin(), bank.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

bool HasElfMagic(std::span<const uint8_t> bytes) {
  return bytes.size() >= sizeof(kElfMagic) &&
         std::memcmp(bytes.data(), kElfMagic, sizeof(kElfMagic)) == 0;
}

Status MeasureElf(const uint8_t* base, uint64_t* size) {
  // Only the caller knows how much memory is readable; the headers say how
  // much to read, in three steps, each bounded by what the previous one said.
  ElfHeader h;
  FERRY_RETURN_IF_ERROR(DecodeHeader(ByteReader({base, kEhdrSize}), &h));
  if (h.shoff != 0) {
    if (h.shoff > kMaxImageBytes - kShdrSize) {
      return InvalidImage("ELF: section header table out of range");
    }
    FERRY_RETURN_IF_ERROR(ResolveExtendedNumbering(ByteReader({base, h.shoff + kShdrSize}), &h));
  }
  uint64_t table_end = 0;
  FERRY_RETURN_IF_ERROR(SectionTableEnd(h, &table_end));
  return Extent(ByteReader({base, std::max(table_end, kEhdrSize)}), h, size);
}

Status MeasureElfIn(std::span<const uint8_t> bytes, uint64_t* size) {
  const ByteReader r(bytes);
  ElfHeader h;
  FERRY_RETURN_IF_ERROR(DecodeHeader(r, &h));
  FERRY_RETURN_IF_ERROR(ResolveExtendedNumbering(r, &h));
  uint64_t extent = 0;
  FERRY_RETURN_IF_ERROR(Extent(r, h, &extent));
  if (extent > bytes.size()) {
    return InvalidImage("ELF: headers place " + std::to_string(extent) +
                        " bytes but the image has " + std::to_string(bytes.size()));
  }
  *size = extent;
  return Status::Ok();
}

Status ParseCubin(std::span<const uint8_t> bytes, ImageLayout* out) {
  const ByteReader r(bytes);
  ElfHeader h;
  FERRY_RETURN_IF_ERROR(DecodeHeader(r, &h));
  FERRY_RETURN_IF_ERROR(ResolveExtendedNumbering(r, &h));
  uint64_t extent = 0;
  FERRY_RETURN_IF_ERROR(Extent(r, h, &extent));
  // Every section's data then lies inside `bytes`.
  if (extent > bytes.size()) return InvalidImage("ELF: truncated image");

  ImageLayout layout;
  if (h.shnum == 0) {
    *out = std::move(layout);
    return Status::Ok();
  }
  std::vector<Section> sections;
  sections.reserve(h.shnum);
  for (uint64_t i = 0; i < h.shnum; ++i) {
    sections.push_back(DecodeSection(bytes.data() + h.shoff + i * kShdrSize));
  }
  auto data_of = [&](const Section& s) {
    return s.HasFileData() ? bytes.subspan(s.offset, s.size) : std::span<const uint8_t>();
  };

  if (h.shstrndx >= sections.size()) {
    return InvalidImage("ELF: bad section name table index");
  }
  const ByteReader section_names(data_of(sections[h.shstrndx]));
  std::vector<std::string_view> names(sections.size());
  std::unordered_map<std::string_view, size_t> nv_info;  // kernel -> section
  const Section* symtab = nullptr;
  for (size_t i = 0; i < sections.size(); ++i) {
    if (!section_names.CString(sections[i].name, &names[i])) {
      return InvalidImage("ELF: section name out of range");
    }
    if (names[i].starts_with(kNvInfoPrefix)) {
      nv_info.emplace(names[i].substr(kNvInfoPrefix.size()), i);
    }
    if (sections[i].type == kShtSymtab && symtab == nullptr) {
      symtab = &sections[i];
    }
  }
  if (symtab == nullptr) {  // nothing is named, so nothing can be looked up
    *out = std::move(layout);
    return Status::Ok();
  }
  if (symtab->entsize != kSymSize) {
    return InvalidImage("ELF: unexpected symbol size");
  }
  if (symtab->link >= sections.size()) {
    return InvalidImage("ELF: bad symbol string table index");
  }
  const std::span<const uint8_t> symbols = data_of(*symtab);
  const ByteReader symbol_names(data_of(sections[symtab->link]));

  std::unordered_set<std::string_view> seen;
  for (uint64_t k = 1; k < symbols.size() / kSymSize; ++k) {
    const uint8_t* p = symbols.data() + k * kSymSize;
    const uint8_t type = p[4] & 0xf;
    const uint8_t other = p[5];
    const uint16_t shndx = LoadLe16(p + 6);
    const uint64_t value = LoadLe64(p + 8);
    const uint64_t size = LoadLe64(p + 16);
    const bool is_kernel = type == kSttFunc && (other & kStoCudaEntry) != 0;
    const bool is_object = type == kSttObject || type == kSttCudaObject;
    // Undefined symbols (extern variables of -rdc cubins, the driver's
    // reserved-shared-memory symbols) and special indices define nothing here.
    if ((!is_kernel && !is_object) || shndx == 0 || shndx >= kShnLoreserve) {
      continue;
    }
    if (shndx >= sections.size()) {
      return InvalidImage("ELF: symbol in a nonexistent section");
    }
    std::string_view name;
    if (!symbol_names.CString(LoadLe32(p), &name)) {
      return InvalidImage("ELF: symbol name out of range");
    }
    if (is_kernel) {
      if (!seen.insert(name).second) continue;
      KernelLayout kernel;
      kernel.name = std::string(name);
      if (auto it = nv_info.find(name); it != nv_info.end()) {
        Status status = ParseKernelInfo(data_of(sections[it->second]), &kernel);
        if (!status.ok()) return status.WithContext(kernel.name);
      }
      layout.kernels.push_back(std::move(kernel));
      continue;
    }
    const Section& home = sections[shndx];
    const std::string_view home_name = names[shndx];
    if (!IsVariableSection(home_name) || !seen.insert(name).second) continue;
    // In cubins sh_addr is 0 and st_value is the offset in the section; the
    // subtraction keeps this right should a linker ever assign addresses.
    if (value < home.addr || !InBounds(home.size, value - home.addr, size)) {
      return InvalidImage("ELF: variable " + std::string(name) + " lies outside its section");
    }
    GlobalLayout global;
    global.name = std::string(name);
    global.size = size;
    // `.nv.global` is zero-filled at load even where its type is not NOBITS.
    if (home.HasFileData() && home_name != ".nv.global") {
      const auto init = data_of(home).subspan(value - home.addr, size);
      global.initial.assign(init.begin(), init.end());
    }
    layout.globals.push_back(std::move(global));
  }
  *out = std::move(layout);
  return Status::Ok();
}

}  // namespace ferry::image::internal
