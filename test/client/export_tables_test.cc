// cuGetExportTable of the built library, before cuInit and with no server:
// the tables the CUDA runtime asks for, their sizes and the slots that must
// work before a context exists; the integrity challenge's answers.
#include <gtest/gtest.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "client/md2.h"
#include "driver_library.h"

namespace ferry::test {
namespace {

using Table = const void* const*;
using GetExportTable = CUresult (*)(const void**, const CUuuid*);

CUuuid Id(std::array<uint8_t, 16> bytes) {
  CUuuid id;
  std::memcpy(id.bytes, bytes.data(), 16);
  return id;
}

const CUuuid kRuntimeInterface = Id({0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87,
                                     0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9});
const CUuuid kToolsHooks = Id({0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08,
                               0x00, 0x20, 0x0c, 0x0a, 0x66});
const CUuuid kToolsTls = Id({0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7,
                             0x8a, 0x3a, 0xec, 0xdc});
const CUuuid kContextStorage = Id({0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68,
                                   0xf3, 0x55, 0xd8, 0x95, 0x93});
const CUuuid kContextChecks = Id({0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb,
                                  0xd5, 0x00, 0x6d, 0xfa, 0x7e});
const CUuuid kIntegrity = Id({0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba,
                              0x12, 0x3c, 0x66, 0xe1, 0xf2});
const CUuuid kContextIdentity = Id({0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6,
                                    0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2});
const CUuuid kRefused = Id({0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e, 0xb9, 0xe2, 0xfb, 0x46,
                            0x9e, 0x7c, 0x0d, 0xd9});

class ExportTablesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(library_.handle(), nullptr) << library_.error();
    get_ = library_.Symbol<GetExportTable>("cuGetExportTable");
    ASSERT_NE(get_, nullptr);
  }

  Table Get(const CUuuid& id) {
    const void* table = nullptr;
    EXPECT_EQ(get_(&table, &id), CUDA_SUCCESS);
    return static_cast<Table>(table);
  }

  template <typename Function>
  static Function SlotOf(Table table, int slot) {
    return reinterpret_cast<Function>(const_cast<void*>(table[slot]));
  }

  const DriverLibrary& library_ = DriverLibrary::Get();
  GetExportTable get_ = nullptr;
};

TEST_F(ExportTablesTest, TablesHaveTheirSizesAndNoEmptySlots) {
  struct Expected {
    const CUuuid* id;
    size_t slots;
    bool sized;
  };
  for (const Expected& e : {Expected{&kRuntimeInterface, 13, true}, Expected{&kToolsHooks, 7, true},
                            Expected{&kToolsTls, 4, true}, Expected{&kContextStorage, 3, false},
                            Expected{&kContextChecks, 4, true}, Expected{&kIntegrity, 3, true},
                            Expected{&kContextIdentity, 95, true}}) {
    Table table = Get(*e.id);
    ASSERT_NE(table, nullptr);
    if (e.sized) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(table[0]), e.slots * sizeof(void*));
    }
    for (size_t slot = 0; slot < e.slots; ++slot) EXPECT_NE(table[slot], nullptr) << slot;
    EXPECT_EQ(Get(*e.id), table) << "a table's address never changes";
  }
}

TEST_F(ExportTablesTest, UnknownTablesAreRefused) {
  const CUuuid zero{};
  for (const CUuuid* id : {&kRefused, &zero}) {
    const void* table = reinterpret_cast<const void*>(1);
    EXPECT_EQ(get_(&table, id), CUDA_ERROR_INVALID_VALUE);
    EXPECT_EQ(table, nullptr);
  }
  EXPECT_EQ(get_(nullptr, &kRuntimeInterface), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(ExportTablesTest, SlotsThatWorkWithoutAContext) {
  using Buffer = void (*)(void**, size_t*);
  Table hooks = Get(kToolsHooks);
  for (auto [slot, bytes] : {std::pair<int, size_t>{2, 1024}, std::pair<int, size_t>{6, 14}}) {
    void* buffer = nullptr;
    size_t size = 0;
    SlotOf<Buffer>(hooks, slot)(&buffer, &size);
    ASSERT_NE(buffer, nullptr);
    EXPECT_EQ(size, bytes);
    const auto* data = static_cast<const uint8_t*>(buffer);
    EXPECT_EQ(std::count(data, data + size, 0), static_cast<long>(size)) << "slot " << slot;
  }

  CUcontext current = reinterpret_cast<CUcontext>(1);
  EXPECT_EQ(SlotOf<CUresult (*)(CUcontext*)>(Get(kToolsTls), 2)(&current), CUDA_SUCCESS);
  EXPECT_EQ(current, nullptr);

  Table checks = Get(kContextChecks);
  uint32_t flags = 7;
  void* special = &flags;
  EXPECT_EQ(
      SlotOf<CUresult (*)(CUcontext, uint32_t*, void**)>(checks, 2)(nullptr, &flags, &special),
      CUDA_SUCCESS);
  EXPECT_EQ(flags, 0u);
  EXPECT_EQ(special, nullptr);
  EXPECT_EQ(SlotOf<CUresult (*)()>(checks, 3)(), CUDA_SUCCESS);

  // Context-local storage needs a context: none is current here.
  void* value = nullptr;
  int key = 0;
  EXPECT_EQ(SlotOf<CUresult (*)(void**, CUcontext, void*)>(Get(kContextStorage), 2)(&value, nullptr,
                                                                                    &key),
            CUDA_ERROR_INVALID_CONTEXT);

  // The runtime interface's start check (CUDA 13.2's runtime calls it while
  // it starts) succeeds quietly: no "role unknown" warning at every start.
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(SlotOf<CUresult (*)()>(Get(kRuntimeInterface), 12)(), CUDA_SUCCESS);
  const std::string logged = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(logged.find("role ferry does not know"), std::string::npos) << logged;

  // The primary context needs cuInit (cudart calls it after).
  CUcontext primary = nullptr;
  EXPECT_EQ(SlotOf<CUresult (*)(CUcontext*, CUdevice)>(Get(kRuntimeInterface), 2)(&primary, 0),
            CUDA_ERROR_NOT_INITIALIZED);
}

TEST_F(ExportTablesTest, IntegrityChallengeAnswers) {
  using Check = CUresult (*)(uint32_t, uint64_t, uint64_t*);
  Table integrity = Get(kIntegrity);
  Table runtime_interface = Get(kRuntimeInterface);
  Check check = SlotOf<Check>(integrity, 1);

  uint64_t answer[2] = {};
  ASSERT_EQ(check(13000, 1700000000, answer), CUDA_SUCCESS);
  EXPECT_EQ(answer[0], 0x3341181C03CB675Cull);
  EXPECT_EQ(answer[1], 0x8ED383AA1F4CD1E8ull);
  ASSERT_EQ(check(13001, 1700000000, answer), CUDA_SUCCESS);
  EXPECT_EQ(answer[0], 0x1841181C03CB675Cull);
  EXPECT_EQ(answer[1], 0x8ED383AA1F4CD1E8ull);

  // Version 2: HMAC-MD2 over driver version, challenge version, pid, thread,
  // the two tables' addresses, the function's address and the time; no
  // devices before cuInit.
  const uint64_t seconds = 1760000000;
  std::vector<uint8_t> record;
  auto append = [&record](uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) record.push_back(static_cast<uint8_t>(value >> (8 * i)));
  };
  int driver_version = 0;
  ASSERT_EQ(library_.Symbol<CUresult (*)(int*)>("cuDriverGetVersion")(&driver_version),
            CUDA_SUCCESS);
  EXPECT_GE(driver_version, 13000);
  append(static_cast<uint32_t>(driver_version), 4);
  append(13002, 4);
  append(static_cast<uint32_t>(getpid()), 4);
  append(static_cast<uint32_t>(reinterpret_cast<uintptr_t>(pthread_self())), 4);
  append(reinterpret_cast<uintptr_t>(runtime_interface), 8);
  append(reinterpret_cast<uintptr_t>(integrity), 8);
  append(reinterpret_cast<uintptr_t>(integrity[1]), 8);
  append(seconds, 8);
  ASSERT_EQ(record.size(), 48u);
  const uint8_t key[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                           0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
  const client::Md2Digest expected = client::HmacMd2(key, record);
  ASSERT_EQ(check(13002, seconds, answer), CUDA_SUCCESS);
  EXPECT_EQ(std::memcmp(answer, expected.data(), 16), 0);

  // Another thread gets another answer (the thread is part of the record).
  uint64_t other[2] = {};
  std::thread([&] { EXPECT_EQ(check(13002, seconds, other), CUDA_SUCCESS); }).join();
  EXPECT_NE(std::memcmp(answer, other, 16), 0);

  EXPECT_EQ(check(13002, seconds, nullptr), CUDA_ERROR_INVALID_VALUE);
}

}  // namespace
}  // namespace ferry::test
