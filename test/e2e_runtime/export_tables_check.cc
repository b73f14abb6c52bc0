// A driver-API program that uses the private export tables the way the CUDA
// runtime does, against a live ferryd: the runtime interface's primary
// context, the tools TLS's current context, the context identity,
// context-local storage with destructors (run at primary-context reset and
// at cuCtxDestroy, while the context still works), and the integrity answer
// with the server's device in the record. Prints "all checks passed" or the
// first failure (exit 1).
#include <cuda.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <vector>

#include "client/md2.h"
#include "runtime_check.h"

namespace {

using Table = const void* const*;
using PrimaryContextFn = CUresult (*)(CUcontext*, CUdevice);
using CurrentContextFn = CUresult (*)(CUcontext*);
using ContextIdFn = CUresult (*)(CUcontext, uint64_t*);
using Destructor = void (*)(CUcontext, void*, void*);
using StoragePutFn = CUresult (*)(CUcontext, void*, void*, Destructor);
using StorageDeleteFn = CUresult (*)(CUcontext, void*);
using StorageGetFn = CUresult (*)(void**, CUcontext, void*);
using IntegrityFn = CUresult (*)(uint32_t, uint64_t, uint64_t*);

CUuuid Id(const char* hex) {
  CUuuid id;
  for (int i = 0; i < 16; ++i) {
    unsigned byte = 0;
    std::sscanf(hex + 2 * i, "%2x", &byte);
    id.bytes[i] = static_cast<char>(byte);
  }
  return id;
}

template <typename Function>
Function SlotOf(Table table, int slot) {
  return reinterpret_cast<Function>(const_cast<void*>(table[slot]));
}

struct DestructorCall {
  CUcontext ctx;
  void* key;
  void* value;
  CUresult free_result;  // the destructor frees memory in the dying context
};
std::vector<DestructorCall> g_destructor_calls;
CUdeviceptr g_allocation = 0;

void RecordingDestructor(CUcontext ctx, void* key, void* value) {
  CUresult free_result = CUDA_SUCCESS;
  if (g_allocation != 0) {
    free_result = cuMemFree(g_allocation);
    g_allocation = 0;
  }
  g_destructor_calls.push_back({ctx, key, value, free_result});
}

void Append(std::vector<uint8_t>* record, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) record->push_back(static_cast<uint8_t>(value >> (8 * i)));
}

}  // namespace

int main() {
  RT_CHECK_CU(cuInit(0));
  CUdevice device = 0;
  RT_CHECK_CU(cuDeviceGet(&device, 0));

  const void* raw = nullptr;
  const CUuuid runtime_id = Id("6bd5fb6c5bf4e74a8987d93912fd9df9");
  const CUuuid tls_id = Id("42d85a8123f6cb478298f6e78a3aecdc");
  const CUuuid storage_id = Id("c693336e1121df11a8c368f355d89593");
  const CUuuid identity_id = Id("21318c60971432488ca641ff7324c8f2");
  const CUuuid integrity_id = Id("d4082055bde6704b8d34ba123c66e1f2");
  RT_CHECK_CU(cuGetExportTable(&raw, &runtime_id));
  Table runtime_interface = static_cast<Table>(raw);
  RT_CHECK_CU(cuGetExportTable(&raw, &tls_id));
  Table tools_tls = static_cast<Table>(raw);
  RT_CHECK_CU(cuGetExportTable(&raw, &storage_id));
  Table storage = static_cast<Table>(raw);
  RT_CHECK_CU(cuGetExportTable(&raw, &identity_id));
  Table identity = static_cast<Table>(raw);
  RT_CHECK_CU(cuGetExportTable(&raw, &integrity_id));
  Table integrity = static_cast<Table>(raw);

  // The primary context, unretained, is the handle a later retain returns.
  CUcontext unretained = nullptr;
  RT_CHECK_CU(SlotOf<PrimaryContextFn>(runtime_interface, 2)(&unretained, device));
  RT_EXPECT(unretained != nullptr);
  RT_EXPECT(SlotOf<PrimaryContextFn>(runtime_interface, 2)(&unretained, 99) ==
            CUDA_ERROR_INVALID_DEVICE);
  RT_CHECK_CU(cuCtxSetCurrent(unretained));
  CUcontext primary = nullptr;
  RT_CHECK_CU(cuDevicePrimaryCtxRetain(&primary, device));
  RT_EXPECT(primary == unretained);
  std::printf("primary context from the runtime interface: ok\n");

  CUcontext current = nullptr;
  RT_CHECK_CU(SlotOf<CurrentContextFn>(tools_tls, 2)(&current));
  RT_EXPECT(current == primary);

  uint64_t table_id = 0;
  unsigned long long driver_id = 0;
  RT_CHECK_CU(SlotOf<ContextIdFn>(identity, 4)(primary, &table_id));
  RT_CHECK_CU(cuCtxGetId(primary, &driver_id));
  RT_EXPECT(table_id == driver_id);
  std::printf("tools TLS and context identity: ok\n");

  // Context-local storage on the current (primary) context.
  auto put = SlotOf<StoragePutFn>(storage, 0);
  auto erase = SlotOf<StorageDeleteFn>(storage, 1);
  auto get = SlotOf<StorageGetFn>(storage, 2);
  static int key = 0, value = 0, other_key = 0;
  void* found = nullptr;
  RT_EXPECT(get(&found, nullptr, &key) == CUDA_ERROR_INVALID_HANDLE);
  RT_CHECK_CU(put(nullptr, &key, &value, &RecordingDestructor));
  RT_CHECK_CU(get(&found, nullptr, &key));
  RT_EXPECT(found == &value);
  RT_CHECK_CU(get(&found, primary, &key));
  RT_EXPECT(found == &value);
  RT_CHECK_CU(erase(nullptr, &key));
  RT_EXPECT(get(&found, nullptr, &key) == CUDA_ERROR_INVALID_HANDLE);
  RT_EXPECT(erase(nullptr, &key) == CUDA_ERROR_INVALID_HANDLE);

  // Destructors run at reset, once, while the context still works.
  RT_CHECK_CU(put(primary, &key, &value, &RecordingDestructor));
  RT_CHECK_CU(put(primary, &other_key, &value, nullptr));
  RT_CHECK_CU(cuMemAlloc(&g_allocation, 4096));
  RT_CHECK_CU(cuDevicePrimaryCtxReset(device));
  RT_EXPECT(g_destructor_calls.size() == 1);
  RT_EXPECT(g_destructor_calls[0].ctx == primary);
  RT_EXPECT(g_destructor_calls[0].key == &key && g_destructor_calls[0].value == &value);
  RT_EXPECT(g_destructor_calls[0].free_result == CUDA_SUCCESS);
  RT_EXPECT(get(&found, primary, &key) == CUDA_ERROR_INVALID_HANDLE);
  RT_EXPECT(get(&found, primary, &other_key) == CUDA_ERROR_INVALID_HANDLE);
  std::printf("context-local storage and destructors at primary reset: ok\n");

  // ... and at cuCtxDestroy of an ordinary context.
  CUcontext own = nullptr;
  RT_CHECK_CU(cuCtxCreate(&own, nullptr, 0, device));
  RT_CHECK_CU(put(own, &key, &other_key, &RecordingDestructor));
  RT_CHECK_CU(cuMemAlloc(&g_allocation, 4096));
  RT_CHECK_CU(cuCtxDestroy(own));
  RT_EXPECT(g_destructor_calls.size() == 2);
  RT_EXPECT(g_destructor_calls[1].ctx == own && g_destructor_calls[1].value == &other_key);
  RT_EXPECT(g_destructor_calls[1].free_result == CUDA_SUCCESS);
  RT_EXPECT(get(&found, own, &key) == CUDA_ERROR_INVALID_CONTEXT);
  std::printf("destructors at cuCtxDestroy: ok\n");

  // The integrity answer covers the devices the runtime is shown.
  const uint64_t seconds = static_cast<uint64_t>(std::time(nullptr));
  int driver_version = 0;
  RT_CHECK_CU(cuDriverGetVersion(&driver_version));
  std::vector<uint8_t> record;
  Append(&record, static_cast<uint32_t>(driver_version), 4);
  Append(&record, 13002, 4);
  Append(&record, static_cast<uint32_t>(getpid()), 4);
  Append(&record, static_cast<uint32_t>(reinterpret_cast<uintptr_t>(pthread_self())), 4);
  Append(&record, reinterpret_cast<uintptr_t>(runtime_interface), 8);
  Append(&record, reinterpret_cast<uintptr_t>(integrity), 8);
  Append(&record, reinterpret_cast<uintptr_t>(integrity[1]), 8);
  Append(&record, seconds, 8);
  int count = 0;
  RT_CHECK_CU(cuDeviceGetCount(&count));
  for (int d = 0; d < count; ++d) {
    CUuuid uuid;
    RT_CHECK_CU(cuDeviceGetUuid(&uuid, d));
    record.insert(record.end(), uuid.bytes, uuid.bytes + 16);
    for (CUdevice_attribute attribute :
         {CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID,
          CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID}) {
      int id = 0;
      RT_CHECK_CU(cuDeviceGetAttribute(&id, attribute, d));
      Append(&record, static_cast<uint32_t>(id), 4);
    }
  }
  const uint8_t hmac_key[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                                0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
  const ferry::client::Md2Digest expected = ferry::client::HmacMd2(hmac_key, record);
  uint64_t answer[2] = {};
  RT_CHECK_CU(SlotOf<IntegrityFn>(integrity, 1)(13002, seconds, answer));
  RT_EXPECT(std::memcmp(answer, expected.data(), 16) == 0);
  std::printf("integrity answer with %d device(s): ok\n", count);

  std::printf("all checks passed\n");
  return 0;
}
