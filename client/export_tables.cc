// cuGetExportTable: the private tables the CUDA runtime asks its driver for.
//
// They are not in cuda.h. What each must do was observed (see
// client/README.md, "Export tables"): a table is an array of
// pointers, named by a 16-byte id; most start with their own size in bytes.
// All of them are answered here, locally: the runtime calls some of them
// (context-local storage) before almost every runtime call, and some before
// cuInit, when there is no server.
//
//   runtime interface   slot 2 gives a device's primary context without
//                       retaining it; slot 12 lets the runtime's start go on
//   tools hooks         slots 2 and 6 hand out zeroed buffers (no tool
//                       attached); the others notify tools, so do nothing
//   tools TLS           slot 2 gives the current context
//   context storage     put / delete / get per (context, key), destructors
//                       run when the context goes away
//   context checks      slot 2 and 3 report "nothing special"
//   integrity check     slot 1 answers the runtime's HMAC-MD2 challenge
//   context identity    slot 4 gives a context's id, as cuCtxGetId
//   NVML bridge         ferry's own: its NVML stand-in shares the program's
//                       session (client/nvml_bridge.cc)
//
// Slots whose role is unknown return CUDA_SUCCESS, as the observed driver
// does for the calls seen, and log a warning once when called, so a new
// runtime that starts to use one is noticed.
//
// Thread-safety: the tables are immutable once built (on first use); the
// functions in them are thread-safe.
#include <cuda.h>
#include <pthread.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "client/context_local_storage.h"
#include "client/cuda_result.h"
#include "client/md2.h"
#include "client/nvml_bridge.h"
#include "client/runtime.h"
#include "common/log.h"
#include "common/nvml_bridge.h"

namespace ferry::client {
namespace {

using Uuid = std::array<uint8_t, 16>;

// The tables, in the order of kTableNames.
enum TableIndex : int {
  kRuntimeInterface,
  kToolsHooks,
  kToolsTls,
  kContextStorage,
  kContextChecks,
  kIntegrity,
  kContextIdentity,
  kTableCount,
};
constexpr const char* kTableNames[kTableCount] = {
    "runtime interface", "tools runtime hooks", "tools TLS",        "context-local storage",
    "context checks",    "integrity check",     "context identity",
};
// The ids, byte for byte as the runtime passes them.
constexpr Uuid kTableIds[kTableCount] = {
    {0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d,
     0xf9},
    {0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a,
     0x66},
    {0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec,
     0xdc},
    {0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95,
     0x93},
    {0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa,
     0x7e},
    {0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1,
     0xf2},
    {0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8,
     0xf2},
};
// Slots per table, the size slot included. Context-local storage has no
// size slot. The context-identity table is the size a CUDA 13 driver serves.
constexpr size_t kTableSlots[kTableCount] = {13, 7, 4, 3, 4, 3, 95};
constexpr bool kTableHasSize[kTableCount] = {true, true, true, false, true, true, true};

// The integrity check's HMAC key (the first pass of the runtime's check
// depends on no input, so it is a constant).
constexpr uint8_t kIntegrityKey[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                                       0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
// The fixed answers for challenge versions ending in 0 and 1.
constexpr uint64_t kIntegrityAnswer0[2] = {0x3341181C03CB675Cull, 0x8ED383AA1F4CD1E8ull};
constexpr uint64_t kIntegrityAnswer1[2] = {0x1841181C03CB675Cull, 0x8ED383AA1F4CD1E8ull};

std::string UuidText(const uint8_t* bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  for (int i = 0; i < 16; ++i) {
    text += kHex[bytes[i] >> 4];
    text += kHex[bytes[i] & 15];
  }
  return text;
}

ContextLocalStorage& Storage() { return Runtime::Get().context_local_storage(); }

// A slot of unknown role: answers success and says so once.
template <int kTable, int kSlot>
CUresult CUDAAPI UnknownSlot() {
  FERRY_LOG_ONCE(kWarning) << "the CUDA runtime called slot " << kSlot << " of the "
                           << kTableNames[kTable]
                           << " export table, whose role ferry does not know; it returns success";
  return CUDA_SUCCESS;
}

// ---- runtime interface -------------------------------------------------------------

// Slot 2: the primary context of `device`, not retained: cudart makes it
// current and retains it later, and expects the same handle then.
CUresult CUDAAPI RuntimePrimaryContext(CUcontext* ctx, CUdevice device) {
  return Api([&]() -> Status {
    if (ctx == nullptr) return Status::InvalidArgument("ctx is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    FERRY_RETURN_IF_ERROR(rt.CheckDevice(device));
    *ctx = Runtime::ToHandle<CUcontext>(rt.contexts().PrimaryId(device));
    return Status::Ok();
  });
}

// Slot 12: called with no arguments we know of, once, while the CUDA 13.2
// runtime initializes (PyTorch 2.15's cudaGetDeviceCount; not the CUDA 13.0
// nor the 12.9 runtime); an error from it fails the runtime's start. What
// the driver checks there is unknown; success lets the start go on, and
// needs no warning every time a program starts.
CUresult CUDAAPI RuntimeStartCheck() {
  FERRY_LOG_ONCE(kDebug) << "runtime interface slot 12 called (start check): success";
  return CUDA_SUCCESS;
}

// ---- tools runtime hooks -----------------------------------------------------------

// The other slots notify attached profiling tools of runtime calls (seen:
// cudaGetDeviceProperties calls slots 4 and 1, the latter with what looks
// like a callback id, 440, and a 0x70-byte record). With no tool attached
// (the zeroed buffers below) there is nothing to notify: success, logged at
// debug level only, as every runtime call may make them.
template <int kSlot>
CUresult CUDAAPI ToolsNotification() {
  FERRY_LOG_ONCE(kDebug) << "tools runtime hooks slot " << kSlot << " called (no tool attached)";
  return CUDA_SUCCESS;
}

// Slots 2 and 6: buffers where tools would install runtime callbacks; zeroed
// means "no tool attached". Sizes as the driver hands them out.
alignas(64) uint8_t g_hooks_buffer_2[1024];
alignas(64) uint8_t g_hooks_buffer_6[14];

void CUDAAPI ToolsHooksBuffer2(void** buffer, size_t* size) {
  if (buffer != nullptr) *buffer = g_hooks_buffer_2;
  if (size != nullptr) *size = sizeof(g_hooks_buffer_2);
}

void CUDAAPI ToolsHooksBuffer6(void** buffer, size_t* size) {
  if (buffer != nullptr) *buffer = g_hooks_buffer_6;
  if (size != nullptr) *size = sizeof(g_hooks_buffer_6);
}

// ---- tools TLS ---------------------------------------------------------------------

// Slot 2: the calling thread's current context (NULL if none).
CUresult CUDAAPI ToolsCurrentContext(CUcontext* ctx) {
  if (ctx != nullptr) *ctx = Runtime::ToHandle<CUcontext>(Runtime::Get().CurrentContextId());
  return CUDA_SUCCESS;
}

// ---- context-local storage ---------------------------------------------------------

// `ctx`, or the current context when NULL; it must be a context of this
// process.
Status StorageContext(CUcontext ctx, uint64_t* id) {
  Runtime& rt = Runtime::Get();
  *id = ctx != nullptr ? Runtime::HandleId(ctx) : rt.CurrentContextId();
  if (*id == 0) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "no current context");
  return rt.contexts().Check(*id);
}

CUresult CUDAAPI StoragePut(CUcontext ctx, void* key, void* value,
                            ContextLocalStorage::Destructor destructor) {
  return Api([&]() -> Status {
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(StorageContext(ctx, &id));
    Storage().Put(id, key, value, destructor);
    return Status::Ok();
  });
}

CUresult CUDAAPI StorageDelete(CUcontext ctx, void* key) {
  return Api([&]() -> Status {
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(StorageContext(ctx, &id));
    if (!Storage().Delete(id, key)) return Status::InvalidHandle("no such context-local slot");
    return Status::Ok();
  });
}

// An absent key answers CUDA_ERROR_INVALID_HANDLE: the runtime takes that as
// "not set up for this context yet" and initialises it.
CUresult CUDAAPI StorageGet(void** value, CUcontext ctx, void* key) {
  return Api([&]() -> Status {
    if (value == nullptr) return Status::InvalidArgument("value is NULL");
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(StorageContext(ctx, &id));
    if (!Storage().Get(id, key, value)) return Status::InvalidHandle("no such context-local slot");
    return Status::Ok();
  });
}

// ---- context checks ----------------------------------------------------------------

// Slot 2: flags and a pointer that a real driver sets for special contexts;
// ferry's contexts are ordinary.
CUresult CUDAAPI ContextCheck(CUcontext /*ctx*/, uint32_t* flags, void** special) {
  if (flags != nullptr) *flags = 0;
  if (special != nullptr) *special = nullptr;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI ContextCheckGlobal() { return CUDA_SUCCESS; }

// ---- integrity check ---------------------------------------------------------------

CUresult CUDAAPI IntegrityCheck(uint32_t version, uint64_t unix_seconds, uint64_t* answer);

// ---- context identity --------------------------------------------------------------

// Slot 4: the context's id, the one cuCtxGetId reports.
CUresult CUDAAPI ContextIdentity(CUcontext ctx, uint64_t* id) {
  if (id == nullptr) return CUDA_ERROR_INVALID_VALUE;
  unsigned long long value = 0;
  const CUresult result = cuCtxGetId(ctx, &value);
  if (result == CUDA_SUCCESS) *id = value;
  return result;
}

// ---- the tables --------------------------------------------------------------------

template <typename Function>
const void* Slot(Function function) {
  return reinterpret_cast<const void*>(function);
}

// A table of `kTable`, every slot at first of unknown role.
template <int kTable, size_t... kSlots>
std::vector<const void*> UnknownSlots(std::index_sequence<kSlots...>) {
  return {Slot(&UnknownSlot<kTable, static_cast<int>(kSlots)>)...};
}

struct Tables {
  std::array<std::vector<const void*>, kTableCount> slots;
};

template <int kTable>
std::vector<const void*> NewTable() {
  std::vector<const void*> table =
      UnknownSlots<kTable>(std::make_index_sequence<kTableSlots[kTable]>());
  if (kTableHasSize[kTable]) {
    table[0] = reinterpret_cast<const void*>(static_cast<uintptr_t>(table.size() * sizeof(void*)));
  }
  return table;
}

const Tables& GetTables() {
  static const Tables* tables = [] {
    auto* t = new Tables;  // never destroyed: the runtime keeps the pointers
    t->slots[kRuntimeInterface] = NewTable<kRuntimeInterface>();
    t->slots[kRuntimeInterface][2] = Slot(&RuntimePrimaryContext);
    t->slots[kRuntimeInterface][12] = Slot(&RuntimeStartCheck);
    t->slots[kToolsHooks] = NewTable<kToolsHooks>();
    t->slots[kToolsHooks][1] = Slot(&ToolsNotification<1>);
    t->slots[kToolsHooks][3] = Slot(&ToolsNotification<3>);
    t->slots[kToolsHooks][4] = Slot(&ToolsNotification<4>);
    t->slots[kToolsHooks][5] = Slot(&ToolsNotification<5>);
    t->slots[kToolsHooks][2] = Slot(&ToolsHooksBuffer2);
    t->slots[kToolsHooks][6] = Slot(&ToolsHooksBuffer6);
    t->slots[kToolsTls] = NewTable<kToolsTls>();
    t->slots[kToolsTls][2] = Slot(&ToolsCurrentContext);
    t->slots[kContextStorage] = NewTable<kContextStorage>();
    t->slots[kContextStorage][0] = Slot(&StoragePut);
    t->slots[kContextStorage][1] = Slot(&StorageDelete);
    t->slots[kContextStorage][2] = Slot(&StorageGet);
    t->slots[kContextChecks] = NewTable<kContextChecks>();
    t->slots[kContextChecks][2] = Slot(&ContextCheck);
    t->slots[kContextChecks][3] = Slot(&ContextCheckGlobal);
    t->slots[kIntegrity] = NewTable<kIntegrity>();
    t->slots[kIntegrity][1] = Slot(&IntegrityCheck);
    t->slots[kContextIdentity] = NewTable<kContextIdentity>();
    t->slots[kContextIdentity][4] = Slot(&ContextIdentity);
    return t;
  }();
  return *tables;
}

template <typename T>
void AppendLittleEndian(std::vector<uint8_t>* out, T value) {
  auto bits = static_cast<std::make_unsigned_t<T>>(value);
  for (size_t i = 0; i < sizeof(T); ++i) out->push_back(static_cast<uint8_t>(bits >> (8 * i)));
}

// Slot 1: the runtime's challenge. Versions ending in 0 and 1 have fixed
// answers; for 2 the answer is HMAC-MD2 over a record of this process, this
// thread, the tables' addresses and the devices, which the runtime computes
// too and compares. Every field counts: a wrong one fails every runtime call
// with cudaErrorSoftwareValidityNotEstablished.
CUresult CUDAAPI IntegrityCheck(uint32_t version, uint64_t unix_seconds, uint64_t* answer) {
  return Api([&]() -> Status {
    if (answer == nullptr) return Status::InvalidArgument("answer is NULL");
    if (version % 10 == 0) {
      answer[0] = kIntegrityAnswer0[0];
      answer[1] = kIntegrityAnswer0[1];
      return Status::Ok();
    }
    if (version % 10 == 1) {
      answer[0] = kIntegrityAnswer1[0];
      answer[1] = kIntegrityAnswer1[1];
      return Status::Ok();
    }
    int driver_version = 0;
    cuDriverGetVersion(&driver_version);  // the value the runtime was told
    const Tables& tables = GetTables();
    std::vector<uint8_t> record;
    AppendLittleEndian(&record, static_cast<uint32_t>(driver_version));
    AppendLittleEndian(&record, version);
    AppendLittleEndian(&record, static_cast<uint32_t>(getpid()));
    AppendLittleEndian(&record, static_cast<uint32_t>(reinterpret_cast<uintptr_t>(pthread_self())));
    AppendLittleEndian(&record,
                       reinterpret_cast<uintptr_t>(tables.slots[kRuntimeInterface].data()));
    AppendLittleEndian(&record, reinterpret_cast<uintptr_t>(tables.slots[kIntegrity].data()));
    AppendLittleEndian(&record, reinterpret_cast<uintptr_t>(tables.slots[kIntegrity][1]));
    AppendLittleEndian(&record, unix_seconds);
    // The devices the runtime was shown; none before cuInit (or when it
    // failed), as the runtime then saw none.
    const Status ready = Runtime::Get().Ready();
    const bool initialised = ready.ok() || ready.cuda_result() != CUDA_ERROR_NOT_INITIALIZED;
    if (initialised) {
      for (const DeviceInfo& device : Runtime::Get().devices()) {
        record.insert(record.end(), device.uuid.begin(), device.uuid.end());
        AppendLittleEndian(&record, static_cast<int32_t>(device.pci_domain));
        AppendLittleEndian(&record, static_cast<int32_t>(device.pci_bus));
        AppendLittleEndian(&record, static_cast<int32_t>(device.pci_device));
      }
    }
    const Md2Digest digest = HmacMd2(kIntegrityKey, record);
    std::memcpy(answer, digest.data(), digest.size());
    return Status::Ok();
  });
}

Status GetExportTable(const void** table, const CUuuid* table_id) {
  if (table == nullptr || table_id == nullptr) return Status::InvalidArgument("NULL argument");
  *table = nullptr;
  const auto* id = reinterpret_cast<const uint8_t*>(table_id->bytes);
  for (int index = 0; index < kTableCount; ++index) {
    if (std::memcmp(id, kTableIds[index].data(), kTableIds[index].size()) == 0) {
      *table = GetTables().slots[index].data();
      return Status::Ok();
    }
  }
  // ferry's own table for its NVML stand-in (common/nvml_bridge.h).
  if (std::memcmp(id, kFerryNvmlBridgeId, sizeof(kFerryNvmlBridgeId)) == 0) {
    *table = NvmlBridgeTable();
    return Status::Ok();
  }
  // Tables ferry does not serve; the runtime tolerates the refusal of those
  // it asks for that are not above (the f8cf... table, before cuInit).
  FERRY_LOG(kDebug) << "cuGetExportTable: table " << UuidText(id) << " is not served";
  return Status::InvalidArgument("unknown export table " + UuidText(id));
}

}  // namespace

}  // namespace ferry::client

extern "C" CUresult CUDAAPI cuGetExportTable(const void** ppExportTable,
                                             const CUuuid* pExportTableId) {
  return ferry::client::Api(
      [&] { return ferry::client::GetExportTable(ppExportTable, pExportTableId); });
}
