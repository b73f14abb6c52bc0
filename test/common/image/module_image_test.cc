// Tests for common/image/module_image.h against images that nvcc builds from
// kernels.cu at build time (fatbin raw / zstd / LZ4 / multi-SM / PTX-only,
// cubin, -rdc cubin, PTX), plus hand-written PTX and damaged inputs.
#include "common/image/module_image.h"

#include <cuda.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::image {
namespace {

// Host mirrors of kernels.cu's by-value types. The C ABI fixes their layout
// and the device follows it; the parameter tables below follow from these.
struct Padded {
  char c;
  double d;
  int i;
};
static_assert(sizeof(Padded) == 24 && alignof(Padded) == 8);
static_assert(offsetof(Padded, d) == 8 && offsetof(Padded, i) == 16);
struct Float3 {
  float x, y, z;
};
static_assert(sizeof(Float3) == 12 && alignof(Float3) == 4);
struct Huge {
  char bytes[17000];
};
static_assert(sizeof(Huge) == 17000 && alignof(Huge) == 1);

using Params = std::vector<std::pair<uint32_t, uint32_t>>;  // {offset, size}

// Each parameter sits at the next multiple of its alignment.
const std::map<std::string, Params>& ExpectedKernels() {
  static const auto* const kKernels = new std::map<std::string, Params>{
      // const float*, const float*, float*, int
      {"_Z4vaddPKfS0_Pfi", {{0, 8}, {8, 8}, {16, 8}, {24, 4}}},
      // char, Padded (24 bytes, align 8), int*
      {"_Z8by_valuec6PaddedPi", {{0, 1}, {8, 24}, {32, 8}}},
      // char, short, int, long long, float, double, const int*,
      // Float3 (12, align 4), char, double*, short, unsigned long long
      {"_Z4manycsixfdPKi6Float3cPdsy",
       {{0, 1},
        {2, 2},
        {4, 4},
        {8, 8},
        {16, 4},
        {24, 8},
        {32, 8},
        {40, 12},
        {52, 1},
        {56, 8},
        {64, 2},
        {72, 8}}},
      // scale<float, 4>(float*, float), scale<double, 2>(double*, double)
      {"_Z5scaleIfLi4EEvPT_S0_", {{0, 8}, {8, 4}}},
      {"_Z5scaleIdLi2EEvPT_S0_", {{0, 8}, {8, 8}}},
      // extern "C": unsigned char, void*, uint16_t
      {"plain_c", {{0, 1}, {8, 8}, {16, 2}}},
      // char, Huge (17000, align 1), int, short, double*
      {"_Z9big_paramc4HugeisPd", {{0, 1}, {1, 17000}, {17004, 4}, {17008, 2}, {17016, 8}}},
      {"_Z9no_paramsv", {}},
  };
  return *kKernels;
}

template <typename T>
std::vector<uint8_t> BytesOf(std::initializer_list<T> values, size_t size) {
  std::vector<uint8_t> bytes(size, 0);
  size_t at = 0;
  for (const T& v : values) {
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    at += sizeof(T);
  }
  return bytes;
}

struct ExpectedGlobal {
  uint64_t size;
  std::vector<uint8_t> initial;  // empty: zero-filled
  bool operator==(const ExpectedGlobal&) const = default;
};

std::ostream& operator<<(std::ostream& os, const ExpectedGlobal& g) {
  os << "{size " << g.size << ", " << g.initial.size() << " initial bytes:";
  for (uint8_t b : g.initial) os << ' ' << int{b};
  return os << '}';
}

const std::map<std::string, ExpectedGlobal>& ExpectedGlobals() {
  static const auto* const kGlobals = new std::map<std::string, ExpectedGlobal>{
      {"ferry_coeffs", {32, BytesOf<float>({1, 2, 3, 4, 5, 6, 7, 8}, 32)}},
      {"ferry_const_scalar", {4, BytesOf<int32_t>({42}, 4)}},
      {"ferry_counter", {4, BytesOf<int32_t>({7}, 4)}},
      {"ferry_table", {128, BytesOf<double>({0.5, 1.5}, 128)}},
      {"ferry_zeroed", {100, {}}},
  };
  return *kGlobals;
}

std::map<std::string, Params> KernelMap(const ImageLayout& layout) {
  std::map<std::string, Params> map;
  for (const KernelLayout& k : layout.kernels) {
    Params& params = map[k.name];
    for (const ParamLayout& p : k.params) params.emplace_back(p.offset, p.size);
  }
  return map;
}

std::map<std::string, ExpectedGlobal> GlobalMap(const ImageLayout& layout) {
  std::map<std::string, ExpectedGlobal> map;
  for (const GlobalLayout& g : layout.globals) {
    map[g.name] = ExpectedGlobal{g.size, g.initial};
  }
  return map;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Form {
  const char* name;
  const char* path;
  ImageKind kind;
};

const Form kForms[] = {
    {"Fatbin", FERRY_TEST_IMAGE_FATBIN, ImageKind::kFatbin},
    {"FatbinZstd", FERRY_TEST_IMAGE_FATBIN_ZSTD, ImageKind::kFatbin},
    {"FatbinLz4", FERRY_TEST_IMAGE_FATBIN_LZ4, ImageKind::kFatbin},
    {"FatbinMultiSm", FERRY_TEST_IMAGE_FATBIN_MULTI, ImageKind::kFatbin},
    {"FatbinPtxOnly", FERRY_TEST_IMAGE_FATBIN_PTX, ImageKind::kFatbin},
    {"FatbinPtxOnlyLz4", FERRY_TEST_IMAGE_FATBIN_PTX_LZ4, ImageKind::kFatbin},
    {"Cubin", FERRY_TEST_IMAGE_CUBIN, ImageKind::kCubin},
    {"CubinRdc", FERRY_TEST_IMAGE_CUBIN_RDC, ImageKind::kCubin},
    {"Ptx", FERRY_TEST_IMAGE_PTX, ImageKind::kPtx},
};

class FormTest : public testing::TestWithParam<Form> {
 protected:
  void SetUp() override {
    file_ = ReadFile(GetParam().path);
    ASSERT_FALSE(file_.empty()) << "cannot read " << GetParam().path;
  }
  ImageLayout Parse(std::span<const uint8_t> bytes) {
    ImageLayout layout;
    const Status status = ParseImage(bytes, &layout);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return layout;
  }
  std::vector<uint8_t> file_;
};

TEST_P(FormTest, ClassifiesItsKind) {
  ImageKind kind;
  ASSERT_TRUE(ClassifyImage(file_, &kind).ok());
  EXPECT_EQ(kind, GetParam().kind);
}

TEST_P(FormTest, KernelParameterLayouts) {
  const ImageLayout layout = Parse(file_);
  EXPECT_EQ(KernelMap(layout), ExpectedKernels());
  EXPECT_EQ(layout.kernels.size(), ExpectedKernels().size()) << "a kernel was reported twice";
}

TEST_P(FormTest, GlobalSizesAndInitialBytes) {
  const ImageLayout layout = Parse(file_);
  EXPECT_EQ(GlobalMap(layout), ExpectedGlobals());
  EXPECT_EQ(layout.globals.size(), ExpectedGlobals().size()) << "a global was reported twice";
}

TEST_P(FormTest, ResolveMeasuresExactly) {
  // Trailing bytes the image does not own: the measurement must stop short.
  std::vector<uint8_t> memory = file_;
  size_t expected = file_.size();
  if (GetParam().kind == ImageKind::kPtx) {
    memory.push_back('\0');
    ++expected;  // the NUL belongs to the image
  }
  memory.insert(memory.end(), 256, 0xA5);
  std::span<const uint8_t> image;
  const Status status = ResolveImage(memory.data(), &image);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(image.data(), memory.data());
  EXPECT_EQ(image.size(), expected);
}

// Damaged copies, each in a buffer of exactly its own size so that ASan
// flags any read past the end: parsing must fail or succeed, never crash.
TEST_P(FormTest, SurvivesTruncationAndBitFlips) {
  const bool self_sized = GetParam().kind != ImageKind::kPtx;
  std::set<size_t> lengths;
  for (size_t n = 0; n < 128 && n < file_.size(); ++n) lengths.insert(n);
  for (size_t n = 0; n < 64 && n < file_.size(); ++n) {
    lengths.insert(file_.size() - 1 - n);
  }
  for (size_t i = 0; i < 600; ++i) lengths.insert(file_.size() * i / 600);
  for (size_t n : lengths) {
    const std::vector<uint8_t> cut(file_.begin(), file_.begin() + n);
    ImageLayout layout;
    const Status status = ParseImage(cut, &layout);
    if (self_sized) {
      // Fatbins and cubins state their own length: any cut is detected.
      EXPECT_FALSE(status.ok()) << "truncated to " << n;
    }
  }

  std::mt19937 rng(12345);
  std::uniform_int_distribution<size_t> anywhere(0, file_.size() - 1);
  // Headers and tables sit near the start and the end; code in between.
  std::uniform_int_distribution<size_t> near_ends(0, std::min<size_t>(file_.size(), 4096) - 1);
  std::uniform_int_distribution<int> bit(0, 7);
  std::uniform_int_distribution<int> flips(1, 4);
  for (int round = 0; round < 1500; ++round) {
    std::vector<uint8_t> damaged = file_;
    for (int f = flips(rng); f > 0; --f) {
      size_t at = anywhere(rng);
      if (round % 2 == 0) {
        at = near_ends(rng);
        if (round % 4 == 0) at = file_.size() - 1 - at;
      }
      damaged[at] ^= static_cast<uint8_t>(1u << bit(rng));
    }
    ImageLayout layout;
    const Status status = ParseImage(damaged, &layout);
    if (!status.ok()) {
      EXPECT_EQ(status.cuda_result(), CUDA_ERROR_INVALID_IMAGE) << status.ToString();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllForms, FormTest, testing::ValuesIn(kForms),
                         [](const testing::TestParamInfo<Form>& info) {
                           return std::string(info.param.name);
                         });

// Entry flags read directly, so the compression tests below are known to
// exercise what they claim to.
std::vector<uint64_t> EntryFlags(const std::vector<uint8_t>& fatbin) {
  std::vector<uint64_t> flags;
  uint64_t payload = 0;
  std::memcpy(&payload, fatbin.data() + 8, 8);
  for (size_t at = 16; at < 16 + payload;) {
    uint32_t header = 0;
    uint64_t size = 0;
    uint64_t f = 0;
    std::memcpy(&header, fatbin.data() + at + 4, 4);
    std::memcpy(&size, fatbin.data() + at + 8, 8);
    std::memcpy(&f, fatbin.data() + at + 40, 8);
    flags.push_back(f);
    at += header + size;
  }
  return flags;
}

constexpr uint64_t kLz4 = 0x2000;
constexpr uint64_t kZstd = 0x8000;

TEST(ModuleImageTest, TestImagesUseTheExpectedCompression) {
  const auto raw = EntryFlags(ReadFile(FERRY_TEST_IMAGE_FATBIN));
  ASSERT_EQ(raw.size(), 2u);  // ELF, then PTX
  EXPECT_EQ(raw[0] & (kLz4 | kZstd), 0u);
  EXPECT_EQ(raw[1] & (kLz4 | kZstd), kZstd);
  for (uint64_t f : EntryFlags(ReadFile(FERRY_TEST_IMAGE_FATBIN_ZSTD))) {
    EXPECT_EQ(f & (kLz4 | kZstd), kZstd);
  }
  for (uint64_t f : EntryFlags(ReadFile(FERRY_TEST_IMAGE_FATBIN_LZ4))) {
    EXPECT_EQ(f & (kLz4 | kZstd), kLz4);
  }
  EXPECT_EQ(EntryFlags(ReadFile(FERRY_TEST_IMAGE_FATBIN_MULTI)).size(), 3u);
}

TEST(ModuleImageTest, CompressedFormsMatchUncompressed) {
  auto layout_of = [](const char* path) {
    ImageLayout layout;
    EXPECT_TRUE(ParseImage(ReadFile(path), &layout).ok()) << path;
    return std::make_pair(KernelMap(layout), GlobalMap(layout));
  };
  const auto raw = layout_of(FERRY_TEST_IMAGE_FATBIN);
  EXPECT_EQ(layout_of(FERRY_TEST_IMAGE_FATBIN_ZSTD), raw);
  EXPECT_EQ(layout_of(FERRY_TEST_IMAGE_FATBIN_LZ4), raw);
  EXPECT_EQ(layout_of(FERRY_TEST_IMAGE_FATBIN_MULTI), raw);
  EXPECT_EQ(layout_of(FERRY_TEST_IMAGE_FATBIN_PTX), raw);
  EXPECT_EQ(layout_of(FERRY_TEST_IMAGE_FATBIN_PTX_LZ4), raw);
}

// The runtime's `__fatBinC_Wrapper_t`.
struct Wrapper {
  int magic;
  int version;
  const void* data;
  void* filename_or_fatbins;
};

TEST(ModuleImageTest, ResolveFollowsTheWrapper) {
  const std::vector<uint8_t> fatbin = ReadFile(FERRY_TEST_IMAGE_FATBIN_ZSTD);
  ASSERT_FALSE(fatbin.empty());
  for (int version : {1, 2}) {
    const Wrapper wrapper{0x466243B1, version, fatbin.data(), nullptr};
    std::span<const uint8_t> image;
    const Status status = ResolveImage(&wrapper, &image);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_EQ(image.data(), fatbin.data());
    EXPECT_EQ(image.size(), fatbin.size());
  }
}

TEST(ModuleImageTest, ResolveRejectsBadWrappers) {
  const std::vector<uint8_t> cubin = ReadFile(FERRY_TEST_IMAGE_CUBIN);
  std::span<const uint8_t> image;
  const Wrapper to_cubin{0x466243B1, 1, cubin.data(), nullptr};
  EXPECT_EQ(ResolveImage(&to_cubin, &image).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  const Wrapper to_null{0x466243B1, 1, nullptr, nullptr};
  EXPECT_EQ(ResolveImage(&to_null, &image).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
}

TEST(ModuleImageTest, RejectsWhatIsNotAnImage) {
  std::span<const uint8_t> image;
  const uint8_t binary[] = {0x01, 0x02, 0x03, 0x00};
  EXPECT_EQ(ResolveImage(binary, &image).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  const char prose[] = "hello, world\n";
  EXPECT_EQ(ResolveImage(prose, &image).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  const char empty[] = "";
  EXPECT_EQ(ResolveImage(empty, &image).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  EXPECT_EQ(ResolveImage(nullptr, &image).code(), StatusCode::kInvalidArgument);

  ImageLayout layout;
  EXPECT_EQ(ParseImage(std::span(binary), &layout).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  EXPECT_EQ(ParseImage({}, &layout).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  // A wrapper is pointers, not image bytes.
  const Wrapper wrapper{0x466243B1, 1, binary, nullptr};
  ImageKind kind;
  EXPECT_FALSE(
      ClassifyImage({reinterpret_cast<const uint8_t*>(&wrapper), sizeof(wrapper)}, &kind).ok());
}

TEST(ModuleImageTest, ShortPtxStringsAreMeasured) {
  const char ptx[] = ".version 9.0\n.target sm_90\n";
  std::span<const uint8_t> image;
  ASSERT_TRUE(ResolveImage(ptx, &image).ok());
  EXPECT_EQ(image.size(), sizeof(ptx));
}

// A corrupted uncompressed size is refused before anything is allocated for
// it (zstd: the frame disagrees; LZ4: beyond what LZ4 can expand to).
TEST(ModuleImageTest, ImplausibleUncompressedSizesAreRejected) {
  for (const char* path : {FERRY_TEST_IMAGE_FATBIN_ZSTD, FERRY_TEST_IMAGE_FATBIN_LZ4}) {
    std::vector<uint8_t> fatbin = ReadFile(path);
    ASSERT_GT(fatbin.size(), 16u + 64u);
    const uint64_t huge = uint64_t{1} << 40;
    std::memcpy(fatbin.data() + 16 + 56, &huge, 8);  // first entry
    ImageLayout layout;
    EXPECT_EQ(ParseImage(fatbin, &layout).cuda_result(), CUDA_ERROR_INVALID_IMAGE) << path;
  }
}

// A one-entry fatbin whose zstd entry claims `claimed` uncompressed bytes
// but holds `frame`.
std::vector<uint8_t> ZstdFatbin(const std::vector<uint8_t>& frame, uint64_t claimed) {
  std::vector<uint8_t> entry(64, 0);
  auto put = [](std::vector<uint8_t>& v, size_t at, uint64_t value, size_t bytes) {
    std::memcpy(v.data() + at, &value, bytes);
  };
  std::vector<uint8_t> payload = frame;
  payload.resize((frame.size() + 7) / 8 * 8, 0);
  put(entry, 0, 2, 2);  // ELF
  put(entry, 4, 64, 4);
  put(entry, 8, payload.size(), 8);
  put(entry, 16, frame.size(), 4);
  put(entry, 28, 90, 4);
  put(entry, 40, kZstd, 8);
  put(entry, 56, claimed, 8);
  std::vector<uint8_t> fatbin(16, 0);
  put(fatbin, 0, 0xBA55ED50, 4);
  put(fatbin, 4, 1, 2);
  put(fatbin, 6, 16, 2);
  put(fatbin, 8, entry.size() + payload.size(), 8);
  fatbin.insert(fatbin.end(), entry.begin(), entry.end());
  fatbin.insert(fatbin.end(), payload.begin(), payload.end());
  return fatbin;
}

// Sizes in an entry's and a frame's headers are claims: a tiny entry that
// claims 2 GiB (the fuzz target "image" found one of 89 bytes) is refused
// without memory for the claim ever being committed; what is allocated
// follows what the frame really produces.
TEST(ModuleImageTest, ZstdEntryClaimingMoreThanItHoldsAllocatesNoSuchAmount) {
  const uint64_t claim = 0x7FFFFFFF;  // the largest accepted
  // No content size in the frame header, one empty raw block.
  const std::vector<uint8_t> unsized = {0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00, 0x01, 0x00, 0x00};
  // A single-segment frame whose header agrees with the claim, same block.
  const std::vector<uint8_t> sized = {0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0xff,
                                      0xff, 0xff, 0x7f, 0x01, 0x00, 0x00};
  for (const auto& frame : {unsized, sized}) {
    rusage before{};
    ASSERT_EQ(getrusage(RUSAGE_SELF, &before), 0);
    ImageLayout layout;
    EXPECT_EQ(ParseImage(ZstdFatbin(frame, claim), &layout).cuda_result(),
              CUDA_ERROR_INVALID_IMAGE);
    rusage after{};
    ASSERT_EQ(getrusage(RUSAGE_SELF, &after), 0);
    // ru_maxrss is the peak, in KiB: committing the claim would raise it by 2 GiB.
    EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 256 << 10);
  }
}

std::string_view AsText(const std::vector<uint8_t>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

ImageLayout ParsePtxText(std::string_view text) {
  ImageLayout layout;
  const Status status =
      ParseImage({reinterpret_cast<const uint8_t*>(text.data()), text.size()}, &layout);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return layout;
}

// Constructs nvcc does not emit for kernels.cu but PTX allows.
TEST(ModuleImageTest, HandWrittenPtx) {
  const ImageLayout layout = ParsePtxText(R"ptx(
// .entry in a comment { is not a kernel
.version 8.0
.target sm_80
.address_size 64
.file 1 "/src//odd {name}.cu"
/* .global .u32 commented_out; */
.extern .global .align 4 .u32 elsewhere;
.global .align 4 .f32 one = 0f3F800000;
.const .align 8 .f64 two_and_a_half = 2.5;
.global .v2 .u32 pair = {1, 2};
.global .s32 unsized[] = {-1, 2, 3};
.global .u32 a, b[2] = {5, 6};
.global .align 8 .u64 address = generic(one);
.global .texref tex;
.global .attribute(.managed) .align 4 .b8 managed[6];
.func (.param .b32 r) f(.param .b64 .ptr .global .align 8 p)
{
  .global .u32 not_module_scope;
  ld.global.u32 r, [p];
  ret;
}
.visible .entry k(
  .param .u8 k_c,
  .param .u64 .ptr .global .align 16 k_p,
  .param .align 16 .b8 k_s[32],
  .param .f16 k_h,
  .param .b8 k_arr[3]
)
.maxntid 128, 1, 1
{
  ret;
}
.entry empty()
{
}
)ptx");
  EXPECT_EQ(KernelMap(layout), (std::map<std::string, Params>{
                                   {"k", {{0, 1}, {8, 8}, {16, 32}, {48, 2}, {50, 3}}},
                                   {"empty", {}},
                               }));
  EXPECT_EQ(GlobalMap(layout), (std::map<std::string, ExpectedGlobal>{
                                   {"one", {4, BytesOf<float>({1.0f}, 4)}},
                                   {"two_and_a_half", {8, BytesOf<double>({2.5}, 8)}},
                                   {"pair", {8, BytesOf<uint32_t>({1, 2}, 8)}},
                                   {"unsized", {12, BytesOf<int32_t>({-1, 2, 3}, 12)}},
                                   {"a", {4, {}}},
                                   {"b", {8, BytesOf<uint32_t>({5, 6}, 8)}},
                                   {"address", {8, {}}},  // an address: the loader fills it in
                                   {"managed", {6, {}}},
                               }));
}

TEST(ModuleImageTest, MalformedPtxIsAnError) {
  for (std::string_view text : {
           ".version 8.0\n.entry k(.param .u32",                // unterminated
           ".version 8.0\n.entry k(.param x)",                  // no type
           ".version 8.0\n.entry k(.param .u32 a,)",            // empty parameter
           ".version 8.0\n.global .u32 x[4",                    // unterminated bound
           ".version 8.0\n.entry k(.param .align 3 .b8 x[2])",  // alignment
       }) {
    ImageLayout layout;
    EXPECT_EQ(ParseImage({reinterpret_cast<const uint8_t*>(text.data()), text.size()}, &layout)
                  .cuda_result(),
              CUDA_ERROR_INVALID_IMAGE)
        << text;
  }
}

TEST(ModuleImageTest, PtxFileAndFatbinPtxAgree) {
  // The PTX inside a fatbin is stripped of comments and indentation; both
  // spellings must give the same answer.
  const auto file = ReadFile(FERRY_TEST_IMAGE_PTX);
  const ImageLayout from_file = ParsePtxText(AsText(file));
  ImageLayout from_fatbin;
  ASSERT_TRUE(ParseImage(ReadFile(FERRY_TEST_IMAGE_FATBIN_PTX), &from_fatbin).ok());
  EXPECT_EQ(KernelMap(from_file), KernelMap(from_fatbin));
  EXPECT_EQ(GlobalMap(from_file), GlobalMap(from_fatbin));
}

// --- linking -------------------------------------------------------------

TEST(ModuleImageTest, LinkSymbolsOfPtx) {
  const std::string_view text = R"ptx(
.version 9.0
.target sm_90
.address_size 64
// .extern .func commented(.param .b32 x);
.extern .func (.param .b32 func_retval0) op
(
  .param .b32 op_param_0
)
;
.extern .global .align 4 .u32 counter;
.extern .shared .align 16 .b8 dynamic_smem[];
.visible .global .align 4 .u32 total = 7;
.weak .func helper(.param .b64 .ptr .global .align 8 p) { ret; }
.func local_only() { ret; }
.visible .func (.param .b32 r) exported(.param .b32 x)
{
  .reg .b32 %r<2>;
  call.uni (r), op, (x);
  ret;
}
.visible .entry kernel(.param .u64 out)
{
  ret;
}
)ptx";
  LinkSymbols symbols;
  ASSERT_TRUE(
      ReadLinkSymbols({reinterpret_cast<const uint8_t*>(text.data()), text.size()}, &symbols).ok());
  EXPECT_EQ(symbols.referenced, (std::vector<std::string>{"op", "counter"}));
  EXPECT_EQ(symbols.defined, (std::vector<std::string>{"total", "exported", "kernel"}));
  EXPECT_EQ(symbols.weak, (std::vector<std::string>{"helper"}));
}

TEST(ModuleImageTest, LinkSymbolsOfBinariesAreEmpty) {
  for (const char* path : {FERRY_TEST_IMAGE_CUBIN_RDC, FERRY_TEST_IMAGE_FATBIN}) {
    LinkSymbols symbols;
    ASSERT_TRUE(ReadLinkSymbols(ReadFile(path), &symbols).ok()) << path;
    EXPECT_TRUE(symbols.defined.empty() && symbols.referenced.empty()) << path;
  }
  LinkSymbols symbols;
  const std::vector<uint8_t> junk = {'n', 'o', 'p', 'e'};
  EXPECT_EQ(ReadLinkSymbols(junk, &symbols).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
}

TEST(ModuleImageTest, FatbinBuilderHoldsTheUnionOfItsInputs) {
  const std::string_view extra = R"ptx(
.version 9.0
.target sm_90
.address_size 64
.visible .global .align 4 .u32 extra_global = 3;
.visible .entry extra_kernel(.param .u32 n)
{
  ret;
}
)ptx";  // no NUL: the builder adds it
  FatbinBuilder builder;
  ASSERT_TRUE(builder.Add(ReadFile(FERRY_TEST_IMAGE_FATBIN_ZSTD)).ok());
  ASSERT_TRUE(builder.Add(ReadFile(FERRY_TEST_IMAGE_CUBIN)).ok());
  ASSERT_TRUE(builder.Add({reinterpret_cast<const uint8_t*>(extra.data()), extra.size()}).ok());
  const std::vector<uint8_t> junk = {'n', 'o', 'p', 'e'};
  EXPECT_EQ(builder.Add(junk).cuda_result(), CUDA_ERROR_INVALID_IMAGE);
  const std::vector<uint8_t> linked = builder.Finish();

  ImageKind kind;
  ASSERT_TRUE(ClassifyImage(linked, &kind).ok());
  EXPECT_EQ(kind, ImageKind::kFatbin);
  // Its length is found from its header alone, as the client finds it.
  std::span<const uint8_t> resolved;
  ASSERT_TRUE(ResolveImage(linked.data(), &resolved).ok());
  EXPECT_EQ(resolved.size(), linked.size());
  ImageLayout layout;
  ASSERT_TRUE(ParseImage(linked, &layout).ok());
  std::map<std::string, Params> expected = ExpectedKernels();
  expected["extra_kernel"] = {{0, 4}};
  EXPECT_EQ(KernelMap(layout), expected);
  EXPECT_EQ(GlobalMap(layout).count("extra_global"), 1u);
}

}  // namespace
}  // namespace ferry::image
