// Tests for HostBackend (server/backend/host/host_backend.h) through the GpuBackend
// interface: memory, copies, memsets, stream order and legacy-stream
// semantics, events, completions, limits, and kernels from nvcc-built images
// run by the host implementations in host_test_kernels_host.cc.
//
// Ordering is made observable with a `gate` kernel that blocks its stream
// until the test opens it (or 10 s pass), and `log_append`, which appends an
// id to a log in device memory. Nothing asserts on durations; every wait is
// bounded.
#include "server/backend/host/host_backend.h"

#include <cuda.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "host_test_kernel_types.h"
#include "server/backend/host/ferry_host_kernel.h"
#include "server/backend/host/texture_sampler.h"

namespace ferry::backend {
namespace {

using namespace std::chrono_literals;

constexpr auto kTimeout = 10s;
// How long a test lets a stream run before checking that it did NOT get past
// a closed gate. Longer only makes a broken backend likelier to be caught.
// The sleeps on it are the checks of an absence, not synchronization: no
// condition can say "this never happens", so the window is the test; a
// correct backend passes whatever the machine's speed.
constexpr auto kSettle = 50ms;

constexpr char kVadd[] = "_Z4vaddPKfS0_Pfi";
constexpr char kScale[] = "_Z5scale9ScaleArgs";
constexpr char kLogAppend[] = "_Z10log_appendPiii";
constexpr char kGate[] = "_Z4gatePKi";
constexpr char kLaunchInfo[] = "_Z11launch_infoPj";
constexpr char kNoHost[] = "_Z6nohostPi";

#define ASSERT_OK(expr)                                     \
  do {                                                      \
    ::ferry::Status s_ = (expr);                            \
    ASSERT_TRUE(s_.ok()) << #expr << ": " << s_.ToString(); \
  } while (0)
#define EXPECT_OK(expr)                                     \
  do {                                                      \
    ::ferry::Status s_ = (expr);                            \
    EXPECT_TRUE(s_.ok()) << #expr << ": " << s_.ToString(); \
  } while (0)
#define EXPECT_CUDA_ERROR(expr, result)                                      \
  do {                                                                       \
    ::ferry::Status s_ = (expr);                                             \
    EXPECT_EQ(s_.cuda_result(), (result)) << #expr << ": " << s_.ToString(); \
  } while (0)

// Starts an asynchronous wait and blocks (bounded) until its Completion runs.
Status Await(const std::function<void(Completion)>& start) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> future = promise->get_future();
  start([promise](Status s) { promise->set_value(std::move(s)); });
  if (future.wait_for(kTimeout) != std::future_status::ready) {
    return Status::Internal("timed out waiting for a completion");
  }
  return future.get();
}

// A Completion to hand out and wait for (bounded).
class Awaited {
 public:
  Completion Callback() {
    return [promise = promise_](Status status) { promise->set_value(std::move(status)); };
  }
  bool ReadyWithin(std::chrono::milliseconds wait) {
    return future_.wait_for(wait) == std::future_status::ready;
  }
  Status Get() {
    if (!ReadyWithin(kTimeout)) return Status::Internal("timed out waiting for a completion");
    return future_.get();
  }

 private:
  std::shared_ptr<std::promise<Status>> promise_ = std::make_shared<std::promise<Status>>();
  std::future<Status> future_ = promise_->get_future();
};

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
HostBytes HostCopyOf(std::vector<T> values) {
  auto owner = std::make_shared<std::vector<T>>(std::move(values));
  return HostBytes{owner, reinterpret_cast<const uint8_t*>(owner->data()),
                   owner->size() * sizeof(T)};
}

template <typename T>
MutableHostBytes HostSpanOf(const std::shared_ptr<std::vector<T>>& v) {
  return MutableHostBytes{v, reinterpret_cast<uint8_t*>(v->data()), v->size() * sizeof(T)};
}

// Device pointers of the host backend are host addresses.
template <typename T>
T* HostView(uint64_t dptr) {
  return reinterpret_cast<T*>(dptr);
}

int LogCount(uint64_t log) { return std::atomic_ref<int>(*HostView<int>(log)).load(); }
std::vector<int> LogEntries(uint64_t log) {
  const int n = std::min(LogCount(log), kLogCapacity);
  return std::vector<int>(HostView<int>(log) + 1, HostView<int>(log) + 1 + n);
}

class HostBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HostBackendOptions options;
    options.kernel_libraries = {FERRY_TEST_HOST_KERNELS};
    options.device_count = 2;
    options.device_memory = kDeviceMemory;
    ASSERT_OK(CreateHostBackend(options, &backend_));
    tenant_ = backend_->CreateTenant();
    ASSERT_OK(NewContext(0, &ctx_));
  }

  static constexpr uint64_t kDeviceMemory = 64ull << 20;

  GpuBackend& b() { return *backend_; }
  // A context of the test's tenant on `device`.
  Status NewContext(int device, std::unique_ptr<Context>* out) {
    FERRY_RETURN_IF_ERROR(backend_->CreateContext(device, 0, out));
    backend_->JoinTenant(**out, *tenant_);
    return Status::Ok();
  }
  // Waits (bounded) until every release the tenant started has happened.
  Status Released() {
    return Await([&](Completion done) { backend_->WhenReleased(*tenant_, std::move(done)); });
  }
  Stream& legacy() { return backend_->LegacyStream(*ctx_); }

  std::unique_ptr<Stream> NewStream(unsigned flags = 0) {
    std::unique_ptr<Stream> s;
    EXPECT_OK(backend_->CreateStream(*ctx_, flags, 0, &s));
    return s;
  }
  std::unique_ptr<Event> NewEvent(unsigned flags = 0) {
    std::unique_ptr<Event> e;
    EXPECT_OK(backend_->CreateEvent(*ctx_, flags, &e));
    return e;
  }
  uint64_t Alloc(uint64_t bytes) {
    uint64_t dptr = 0;
    EXPECT_OK(backend_->MemAlloc(*ctx_, bytes, &dptr));
    return dptr;
  }
  uint64_t FreeBytes() {
    uint64_t free_bytes = 0, total = 0;
    EXPECT_OK(backend_->MemGetInfo(*ctx_, &free_bytes, &total));
    return free_bytes;
  }
  Status Sync(Stream& s) {
    return Await([&](Completion done) { backend_->WhenStreamIdle(s, std::move(done)); });
  }
  Status SyncContext() {
    return Await([&](Completion done) { backend_->WhenContextIdle(*ctx_, std::move(done)); });
  }

  template <typename T>
  void Write(uint64_t dptr, std::vector<T> values) {
    ASSERT_OK(backend_->CopyHostToDevice(legacy(), dptr, HostCopyOf(std::move(values))));
  }
  template <typename T>
  std::vector<T> Read(uint64_t dptr, size_t n) {
    auto out = std::make_shared<std::vector<T>>(n);
    EXPECT_OK(backend_->CopyDeviceToHost(legacy(), HostSpanOf(out), dptr));
    EXPECT_OK(Sync(legacy()));
    return *out;
  }

  // --- kernels ----------------------------------------------------------------

  // Loads the fatbin of host_test_kernels.cu into module_ / description_.
  bool LoadKernels() {
    if (std::string(FERRY_TEST_FATBIN).empty()) return false;
    std::vector<uint8_t> image = ReadFile(FERRY_TEST_FATBIN);
    EXPECT_FALSE(image.empty()) << FERRY_TEST_FATBIN;
    Status s = backend_->LoadModule(*ctx_, image, &module_, &description_);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return s.ok();
  }

  const KernelDescription* Kernel(std::string_view name) const {
    for (const KernelDescription& k : description_.kernels) {
      if (k.name == name) return &k;
    }
    return nullptr;
  }

  // Packs `args` at the offsets the image gives kernel `name`.
  template <typename... Args>
  HostBytes Pack(std::string_view name, const Args&... args) {
    const KernelDescription* k = Kernel(name);
    EXPECT_NE(k, nullptr) << name;
    if (k == nullptr) return {};
    EXPECT_EQ(k->params.size(), sizeof...(Args)) << name;
    uint64_t end = 0;
    for (const KernelParam& p : k->params) end = std::max<uint64_t>(end, p.offset + p.size);
    std::vector<uint8_t> buffer(end);
    size_t i = 0;
    auto put = [&](const auto& arg) {
      if (i >= k->params.size()) return;
      EXPECT_EQ(k->params[i].size, sizeof(arg)) << name << " param " << i;
      std::memcpy(buffer.data() + k->params[i].offset, &arg,
                  std::min<size_t>(sizeof(arg), k->params[i].size));
      ++i;
    };
    (put(args), ...);
    return HostCopyOf(std::move(buffer));
  }

  Function* Fn(std::string_view name) {
    Function* f = nullptr;
    EXPECT_OK(backend_->GetFunction(*module_, name, &f));
    return f;
  }

  template <typename... Args>
  Status Launch(Stream& s, std::string_view name, LaunchConfig config, const Args&... args) {
    Function* f = nullptr;
    FERRY_RETURN_IF_ERROR(backend_->GetFunction(*module_, name, &f));
    return backend_->Launch(s, *f, config, Pack(name, args...));
  }
  template <typename... Args>
  Status Launch1(Stream& s, std::string_view name, const Args&... args) {
    return Launch(s, name, LaunchConfig{}, args...);
  }

  // A zeroed log for log_append.
  uint64_t NewLog() {
    uint64_t log = Alloc((1 + kLogCapacity) * sizeof(int));
    std::memset(HostView<int>(log), 0, (1 + kLogCapacity) * sizeof(int));
    return log;
  }
  Status Append(Stream& s, uint64_t log, int id, int sleep_ms = 0) {
    return Launch1(s, kLogAppend, HostView<int>(log), id, sleep_ms);
  }

  // A flag in device memory that `gate` kernels wait on. Opens itself when it
  // goes out of scope, so that a failing test never leaves a stream blocked;
  // declare it after the streams it blocks.
  class Gate {
   public:
    explicit Gate(HostBackendTest* t) : flag_(t->Alloc(sizeof(int))) { *HostView<int>(flag_) = 0; }
    ~Gate() { Open(); }
    void Open() { std::atomic_ref<int>(*HostView<int>(flag_)).store(1); }
    const int* flag() const { return HostView<const int>(flag_); }

   private:
    uint64_t flag_;
  };
  Status Block(Stream& s, const Gate& gate) { return Launch1(s, kGate, gate.flag()); }

  // Destroyed in reverse: module, context, tenant, backend.
  std::unique_ptr<GpuBackend> backend_;
  std::unique_ptr<Tenant> tenant_;
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<Module> module_;
  ModuleDescription description_;
};

#define REQUIRE_KERNELS()                                                    \
  do {                                                                       \
    if (!LoadKernels()) {                                                    \
      if (std::string(FERRY_TEST_FATBIN).empty()) GTEST_SKIP() << "no nvcc"; \
      FAIL() << "cannot load the test kernels";                              \
    }                                                                        \
  } while (0)

// --- factory and devices ----------------------------------------------------

TEST(HostBackendFactoryTest, MissingKernelLibraryIsNamed) {
  HostBackendOptions options;
  options.kernel_libraries = {"/nonexistent/libkernels.so"};
  std::unique_ptr<GpuBackend> backend;
  Status s = CreateHostBackend(options, &backend);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent/libkernels.so"), std::string::npos) << s.message();
  EXPECT_EQ(backend, nullptr);
}

TEST(HostBackendFactoryTest, RejectsBadOptions) {
  std::unique_ptr<GpuBackend> backend;
  HostBackendOptions options;
  options.device_count = 0;
  EXPECT_FALSE(CreateHostBackend(options, &backend).ok());
  options.device_count = 1;
  options.device_memory = 0;
  EXPECT_FALSE(CreateHostBackend(options, &backend).ok());
}

TEST_F(HostBackendTest, DescribesEmulatedSm90Devices) {
  EXPECT_EQ(b().Name(), "host");
  EXPECT_GE(b().DriverVersion(), 13000);
  const std::vector<DeviceDescription>& devices = b().Devices();
  ASSERT_EQ(devices.size(), 2u);
  for (const DeviceDescription& d : devices) {
    EXPECT_EQ(d.name, "ferry host device (emulated sm_90)");
    EXPECT_EQ(d.total_memory, kDeviceMemory);
    ASSERT_EQ(d.attributes.size(), static_cast<size_t>(CU_DEVICE_ATTRIBUTE_MAX));
    const auto& a = d.attributes;
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR], 9);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR], 0);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT], 132);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_WARP_SIZE], 32);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK], 1024);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z], 64);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X], 2147483647);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING], 1);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS], 1);
    EXPECT_GT(a[CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT], 0);
    EXPECT_GT(a[CU_DEVICE_ATTRIBUTE_CLOCK_RATE], 0);
    EXPECT_GT(a[CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH], 0);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK], 48 * 1024);
    EXPECT_EQ(a[CU_DEVICE_ATTRIBUTE_PCI_BUS_ID], d.pci_bus);
  }
  EXPECT_NE(devices[0].uuid, devices[1].uuid);
  EXPECT_NE(devices[0].pci_bus, devices[1].pci_bus);

  // UUIDs are stable across backends (and so across ferryd restarts).
  std::unique_ptr<GpuBackend> other;
  ASSERT_OK(CreateHostBackend(HostBackendOptions{}, &other));
  EXPECT_EQ(other->Devices()[0].uuid, devices[0].uuid);
  EXPECT_EQ(other->Devices()[0].total_memory, 8ull << 30);
}

TEST_F(HostBackendTest, RejectsBadContextArguments) {
  std::unique_ptr<Context> ctx;
  EXPECT_CUDA_ERROR(b().CreateContext(2, 0, &ctx), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_CUDA_ERROR(b().CreateContext(-1, 0, &ctx), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_CUDA_ERROR(b().CreateContext(0, 0x100, &ctx), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().CreateContext(0, CU_CTX_SCHED_SPIN | CU_CTX_SCHED_YIELD, &ctx),
                    CUDA_ERROR_INVALID_VALUE);
  EXPECT_OK(b().CreateContext(1, CU_CTX_SCHED_BLOCKING_SYNC, &ctx));
}

// --- limits -------------------------------------------------------------------

TEST_F(HostBackendTest, LimitsHaveDefaultsAndArePerContext) {
  uint64_t v = 0;
  ASSERT_OK(b().GetLimit(*ctx_, CU_LIMIT_STACK_SIZE, &v));
  EXPECT_EQ(v, 1024u);
  ASSERT_OK(b().GetLimit(*ctx_, CU_LIMIT_PRINTF_FIFO_SIZE, &v));
  EXPECT_EQ(v, 1u << 20);
  ASSERT_OK(b().GetLimit(*ctx_, CU_LIMIT_MALLOC_HEAP_SIZE, &v));
  EXPECT_EQ(v, 8u << 20);

  ASSERT_OK(b().SetLimit(*ctx_, CU_LIMIT_STACK_SIZE, 4096));
  ASSERT_OK(b().GetLimit(*ctx_, CU_LIMIT_STACK_SIZE, &v));
  EXPECT_EQ(v, 4096u);
  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(0, 0, &other));
  ASSERT_OK(b().GetLimit(*other, CU_LIMIT_STACK_SIZE, &v));
  EXPECT_EQ(v, 1024u);
}

TEST_F(HostBackendTest, RejectsUnknownAndReadOnlyLimits) {
  uint64_t v = 0;
  EXPECT_CUDA_ERROR(b().GetLimit(*ctx_, 99, &v), CUDA_ERROR_UNSUPPORTED_LIMIT);
  EXPECT_CUDA_ERROR(b().GetLimit(*ctx_, -1, &v), CUDA_ERROR_UNSUPPORTED_LIMIT);
  EXPECT_CUDA_ERROR(b().SetLimit(*ctx_, 99, 1), CUDA_ERROR_UNSUPPORTED_LIMIT);
  EXPECT_CUDA_ERROR(b().SetLimit(*ctx_, CU_LIMIT_SHMEM_SIZE, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().SetLimit(*ctx_, CU_LIMIT_MAX_L2_FETCH_GRANULARITY, 1000),
                    CUDA_ERROR_INVALID_VALUE);
}

// --- memory -------------------------------------------------------------------

TEST_F(HostBackendTest, AllocFreeAndMemGetInfo) {
  uint64_t free_bytes = 0, total = 0;
  ASSERT_OK(b().MemGetInfo(*ctx_, &free_bytes, &total));
  EXPECT_EQ(total, kDeviceMemory);
  EXPECT_EQ(free_bytes, kDeviceMemory);

  uint64_t a = Alloc(1000);
  EXPECT_EQ(a % 256, 0u);
  EXPECT_EQ(FreeBytes(), kDeviceMemory - 1024);  // rounded up to 256
  uint64_t big = Alloc(1 << 20);
  EXPECT_EQ(big % 256, 0u);
  EXPECT_EQ(FreeBytes(), kDeviceMemory - 1024 - (1 << 20));
  ASSERT_OK(b().MemFree(*ctx_, a));
  ASSERT_OK(b().MemFree(*ctx_, big));
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
}

// virtual memory management: real address space of ferryd, memfd pages.
TEST_F(HostBackendTest, VirtualMemoryAliasesHonoursHintsAndCountsAgainstTheDevice) {
  uint64_t page = 0;
  ASSERT_OK(b().AllocationGranularity(0, /*recommended=*/true, &page));
  EXPECT_EQ(page, static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  uint64_t base = 0;
  ASSERT_OK(b().ReserveAddressRange(4 * page, 16 * page, 0, &base));
  EXPECT_EQ(base % (16 * page), 0u);
  // A free address as the hint is honoured (one just given back); a taken
  // one is not.
  uint64_t probe = 0;
  ASSERT_OK(b().ReserveAddressRange(page, 0, 0, &probe));
  ASSERT_OK(b().FreeAddressRange(probe, page));
  uint64_t hinted = 0;
  ASSERT_OK(b().ReserveAddressRange(page, 0, probe, &hinted));
  EXPECT_EQ(hinted, probe);
  uint64_t elsewhere = 0;
  ASSERT_OK(b().ReserveAddressRange(page, 0, base, &elsewhere));
  EXPECT_NE(elsewhere, base);

  std::unique_ptr<PhysicalMemory> memory;
  ASSERT_OK(b().CreatePhysicalMemory(0, 2 * page, &memory));
  EXPECT_EQ(FreeBytes(), kDeviceMemory - 2 * page);
  ASSERT_OK(b().MapMemory(base, 2 * page, *memory, 0));
  ASSERT_OK(b().MapMemory(base + 2 * page, page, *memory, page));       // its second page again
  EXPECT_FALSE(b().MapMemory(base + page, page, *memory, 0).ok());      // already mapped
  EXPECT_FALSE(b().MapMemory(base + 4 * page, page, *memory, 0).ok());  // outside the reservation
  const MemoryAccess read_write{0, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  ASSERT_OK(b().SetMemoryAccess(*tenant_, base, 2 * page, {&read_write, 1}));
  ASSERT_OK(b().SetMemoryAccess(*tenant_, base + 2 * page, page, {&read_write, 1}));
  EXPECT_FALSE(
      b().SetMemoryAccess(*tenant_, base, page, {&read_write, 1}).ok());  // part of a mapping
  auto* bytes = reinterpret_cast<uint8_t*>(base);
  EXPECT_EQ(bytes[0], 0);  // zero-filled
  bytes[page + 5] = 0x7E;
  EXPECT_EQ(bytes[2 * page + 5], 0x7E);  // the alias sees it

  EXPECT_FALSE(b().FreeAddressRange(base, 4 * page).ok());  // still mapped
  memory.reset();  // released; the mappings keep the memory
  EXPECT_EQ(FreeBytes(), kDeviceMemory - 2 * page);
  EXPECT_EQ(bytes[2 * page + 5], 0x7E);
  ASSERT_OK(b().UnmapMemory(*tenant_, base, 2 * page));
  EXPECT_EQ(FreeBytes(), kDeviceMemory - 2 * page);
  ASSERT_OK(b().UnmapMemory(*tenant_, base + 2 * page, page));
  ASSERT_OK(Released());
  EXPECT_EQ(FreeBytes(), kDeviceMemory);  // the last mapping gave it back
  ASSERT_OK(b().FreeAddressRange(base, 4 * page));
  ASSERT_OK(b().FreeAddressRange(hinted, page));
  ASSERT_OK(b().FreeAddressRange(elsewhere, page));

  std::unique_ptr<PhysicalMemory> too_big;
  EXPECT_EQ(b().CreatePhysicalMemory(0, kDeviceMemory + page, &too_big).code(),
            StatusCode::kOutOfMemory);
}

// Addresses nothing in this process uses now: a range mapped, then given
// back (0 if none could be had).
uint64_t UnusedAddresses(uint64_t bytes) {
  void* probe = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED || munmap(probe, bytes) != 0) return 0;
  return reinterpret_cast<uint64_t>(probe);
}

// Migration between servers: memory placed at given addresses (a session's
// from another server). Two small allocations may share a page (they came
// from malloc there); a range that overlaps memory of this process is
// refused; freed, the addresses can be had again.
TEST_F(HostBackendTest, MemAllocAtPlacesMemoryAtExactlyTheAddress) {
  constexpr uint64_t kSpan = 1 << 20;
  const uint64_t base = UnusedAddresses(kSpan);
  ASSERT_NE(base, 0u);
  const uint64_t before = FreeBytes();
  ASSERT_OK(b().MemAllocAt(*ctx_, base + 256, 512));   // one page, shared with the next
  ASSERT_OK(b().MemAllocAt(*ctx_, base + 1024, 8192));  // from that page into two more
  EXPECT_EQ(FreeBytes(), before - 512 - 8192);
  std::memset(reinterpret_cast<void*>(base + 256), 0xab, 512);
  std::memset(reinterpret_cast<void*>(base + 1024), 0xcd, 8192);
  EXPECT_EQ(*reinterpret_cast<uint8_t*>(base + 256 + 511), 0xab);
  // Overlapping either, or memory this process holds otherwise: refused.
  EXPECT_EQ(b().MemAllocAt(*ctx_, base + 512, 512).cuda_result(), CUDA_ERROR_ALREADY_MAPPED);
  const uint64_t ordinary = Alloc(1 << 20);
  EXPECT_EQ(b().MemAllocAt(*ctx_, ordinary, 4096).cuda_result(), CUDA_ERROR_ALREADY_MAPPED);
  EXPECT_EQ(b().MemAllocAt(*ctx_, 0, 4096).cuda_result(), CUDA_ERROR_INVALID_VALUE);
  ASSERT_OK(b().MemFree(*ctx_, ordinary));
  // The first freed, its page still holds the second: placed there again,
  // zeroed; both freed, the pages go (the whole span can be had at once).
  ASSERT_OK(b().MemFree(*ctx_, base + 256));
  ASSERT_OK(Released());
  ASSERT_OK(b().MemAllocAt(*ctx_, base + 256, 512));
  EXPECT_EQ(*reinterpret_cast<uint8_t*>(base + 256), 0);
  EXPECT_EQ(*reinterpret_cast<uint8_t*>(base + 1024), 0xcd);
  ASSERT_OK(b().MemFree(*ctx_, base + 256));
  ASSERT_OK(b().MemFree(*ctx_, base + 1024));
  ASSERT_OK(Released());
  EXPECT_EQ(FreeBytes(), before);
  ASSERT_OK(b().MemAllocAt(*ctx_, base, kSpan));
  ASSERT_OK(b().MemFree(*ctx_, base));
  ASSERT_OK(Released());
}

// Migration between servers, in process: the arriving session's addresses
// are held (nothing else lands there) until it places its memory.
TEST_F(HostBackendTest, HeldAddressesAreFreeForTheArrivalOnly) {
  constexpr uint64_t kSpan = 1 << 20;
  const uint64_t base = UnusedAddresses(kSpan);
  ASSERT_NE(base, 0u);
  const std::pair<uint64_t, uint64_t> ranges[] = {{base + 256, 512}, {base + 1024, kSpan - 2048}};
  std::shared_ptr<void> held;
  ASSERT_OK(b().HoldAddresses(ranges, &held));
  ASSERT_NE(held, nullptr);
  std::shared_ptr<void> again;
  EXPECT_EQ(b().HoldAddresses(ranges, &again).cuda_result(), CUDA_ERROR_ALREADY_MAPPED);
  EXPECT_EQ(b().MemAllocAt(*ctx_, base + 256, 512).cuda_result(), CUDA_ERROR_ALREADY_MAPPED);
  held.reset();
  ASSERT_OK(b().MemAllocAt(*ctx_, base + 256, 512));
  ASSERT_OK(b().MemAllocAt(*ctx_, base + 1024, kSpan - 2048));
  ASSERT_OK(b().MemFree(*ctx_, base + 256));
  ASSERT_OK(b().MemFree(*ctx_, base + 1024));
  ASSERT_OK(Released());
}

TEST_F(HostBackendTest, AllocationsAreZeroed) {
  for (uint64_t size : {100ull, 1ull << 20}) {
    uint64_t d = Alloc(size);
    std::vector<uint8_t> bytes = Read<uint8_t>(d, size);
    EXPECT_EQ(std::count(bytes.begin(), bytes.end(), 0), static_cast<long>(size));
    ASSERT_OK(b().MemFree(*ctx_, d));
  }
}

TEST_F(HostBackendTest, AllocPastDeviceMemoryIsOutOfMemory) {
  uint64_t a = Alloc(48ull << 20);
  uint64_t d = 0;
  Status s = b().MemAlloc(*ctx_, 32ull << 20, &d);
  EXPECT_EQ(s.code(), StatusCode::kOutOfMemory) << s.ToString();
  EXPECT_EQ(s.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(FreeBytes(), kDeviceMemory - (48ull << 20));

  // Accounting is per device.
  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(1, 0, &other));
  EXPECT_OK(b().MemAlloc(*other, 32ull << 20, &d));
  EXPECT_OK(b().MemFree(*other, d));

  ASSERT_OK(b().MemFree(*ctx_, a));
  EXPECT_OK(b().MemAlloc(*ctx_, 32ull << 20, &d));
  EXPECT_CUDA_ERROR(b().MemAlloc(*ctx_, ~0ull, &d), CUDA_ERROR_OUT_OF_MEMORY);
}

TEST_F(HostBackendTest, RejectsBadAllocAndFree) {
  uint64_t d = 0;
  EXPECT_CUDA_ERROR(b().MemAlloc(*ctx_, 0, &d), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().MemFree(*ctx_, 12345), CUDA_ERROR_INVALID_VALUE);
  uint64_t a = Alloc(512);
  EXPECT_CUDA_ERROR(b().MemFree(*ctx_, a + 256), CUDA_ERROR_INVALID_VALUE);
  EXPECT_OK(b().MemFree(*ctx_, a));
  EXPECT_CUDA_ERROR(b().MemFree(*ctx_, a), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(HostBackendTest, AllocPitchRoundsTo512) {
  uint64_t d = 0, pitch = 0;
  ASSERT_OK(b().MemAllocPitch(*ctx_, 1000, 3, 4, &d, &pitch));
  EXPECT_EQ(pitch, 1024u);
  EXPECT_EQ(d % 256, 0u);
  EXPECT_EQ(FreeBytes(), kDeviceMemory - 3 * 1024);
  ASSERT_OK(b().MemAllocPitch(*ctx_, 512, 2, 16, &d, &pitch));
  EXPECT_EQ(pitch, 512u);
  EXPECT_CUDA_ERROR(b().MemAllocPitch(*ctx_, 100, 2, 3, &d, &pitch), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().MemAllocPitch(*ctx_, 0, 2, 4, &d, &pitch), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(HostBackendTest, DestroyingAContextReleasesItsAllocations) {
  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(0, 0, &other));
  uint64_t d = 0;
  ASSERT_OK(b().MemAlloc(*other, 1 << 20, &d));
  EXPECT_EQ(FreeBytes(), kDeviceMemory - (1 << 20));
  other.reset();
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
}

// --- parking ------------------------------------------------------------------

// Whether [address, address + bytes) is mapped inaccessible in this process
// (/proc/self/maps: a range with "---p" protections covering it).
bool MappedInaccessible(uint64_t address, uint64_t bytes) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uint64_t start = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &start, &end, perms) != 3) continue;
    if (start <= address && address + bytes <= end) return std::string(perms) == "---p";
  }
  return false;
}

TEST_F(HostBackendTest, ParkedMemoryComesBackAtTheSameAddressesWithItsBytes) {
  ASSERT_TRUE(b().CanParkMemory());
  const uint64_t small = Alloc(1000);       // heap storage
  const uint64_t big = Alloc(1 << 20);      // mmap storage
  Write<uint64_t>(small, {0x1111, 0x2222});
  // A linked structure: the big allocation points at the small one.
  Write<uint64_t>(big, {small, 42, big + 8});
  ASSERT_OK(Sync(legacy()));
  // Another tenant's memory is not parked.
  std::unique_ptr<Tenant> neighbour_tenant = b().CreateTenant();
  std::unique_ptr<Context> neighbour;
  ASSERT_OK(b().CreateContext(0, 0, &neighbour));
  b().JoinTenant(*neighbour, *neighbour_tenant);
  uint64_t theirs = 0;
  ASSERT_OK(b().MemAlloc(*neighbour, 4096, &theirs));
  const uint64_t free_before = FreeBytes();

  ParkedMemory parked;
  ASSERT_OK(b().ParkTenantMemory(*tenant_, &parked));
  EXPECT_EQ(parked.allocations, 2u);
  EXPECT_EQ(parked.Total(), 1024u + (1 << 20));
  EXPECT_EQ(FreeBytes(), free_before + parked.Total());  // the device has that room back
  EXPECT_TRUE(MappedInaccessible(big, 1 << 20));       // its pages are gone
  ParkedMemory tenant_parked, tenant_resident;
  b().TenantMemory(*tenant_, &tenant_parked, &tenant_resident);
  EXPECT_EQ(tenant_parked.Total(), parked.Total());
  EXPECT_EQ(tenant_resident.Total(), 0u);
  ParkedMemory neighbour_parked, neighbour_resident;
  b().TenantMemory(*neighbour_tenant, &neighbour_parked, &neighbour_resident);
  EXPECT_EQ(neighbour_parked.Total(), 0u);
  EXPECT_EQ(neighbour_resident.Total(), 4096u);
  // Parking again moves nothing.
  ParkedMemory again;
  ASSERT_OK(b().ParkTenantMemory(*tenant_, &again));
  EXPECT_EQ(again.Total(), 0u);

  ParkedMemory unparked;
  ASSERT_OK(b().UnparkTenantMemory(*tenant_, &unparked));
  EXPECT_EQ(unparked.Total(), parked.Total());
  EXPECT_EQ(FreeBytes(), free_before);
  EXPECT_FALSE(MappedInaccessible(big, 1 << 20));
  EXPECT_EQ(Read<uint64_t>(small, 2), (std::vector<uint64_t>{0x1111, 0x2222}));
  const std::vector<uint64_t> links = Read<uint64_t>(big, 3);
  EXPECT_EQ(links, (std::vector<uint64_t>{small, 42, big + 8}));
  EXPECT_EQ(Read<uint64_t>(links[0], 1)[0], 0x1111u);  // the stored pointer still leads there
  ASSERT_OK(b().MemFree(*neighbour, theirs));
}

TEST_F(HostBackendTest, UnparkingWithoutRoomIsOutOfMemoryAndLeavesItParked) {
  const uint64_t mine = Alloc(40ull << 20);
  Write<uint32_t>(mine, {7, 8, 9});
  ASSERT_OK(Sync(legacy()));
  ASSERT_OK(b().ParkTenantMemory(*tenant_, nullptr));
  // Someone else takes the room meanwhile.
  std::unique_ptr<Tenant> other_tenant = b().CreateTenant();
  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(0, 0, &other));
  b().JoinTenant(*other, *other_tenant);
  uint64_t theirs = 0;
  ASSERT_OK(b().MemAlloc(*other, 40ull << 20, &theirs));
  Status refused = b().UnparkTenantMemory(*tenant_, nullptr);
  EXPECT_EQ(refused.code(), StatusCode::kOutOfMemory) << refused.ToString();
  EXPECT_NE(refused.message().find("parked bytes on device 0"), std::string::npos)
      << refused.message();
  ParkedMemory parked;
  b().TenantMemory(*tenant_, &parked, nullptr);
  EXPECT_EQ(parked.Total(), 40ull << 20);
  EXPECT_TRUE(MappedInaccessible(mine, 40ull << 20));

  ASSERT_OK(b().MemFree(*other, theirs));
  ASSERT_OK(Await([&](Completion done) { b().WhenReleased(*other_tenant, std::move(done)); }));
  ASSERT_OK(b().UnparkTenantMemory(*tenant_, nullptr));
  EXPECT_EQ(Read<uint32_t>(mine, 3), (std::vector<uint32_t>{7, 8, 9}));
}

TEST_F(HostBackendTest, FreeingParkedMemoryKeepsTheBooksRight) {
  const uint64_t a = Alloc(1 << 20);
  Alloc(512);
  ASSERT_OK(b().ParkTenantMemory(*tenant_, nullptr));
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
  ASSERT_OK(b().MemFree(*ctx_, a));  // a session that ends while parked frees it so
  ASSERT_OK(Released());
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
  ctx_.reset();  // the rest goes with the context
  ASSERT_OK(Released());
  ASSERT_OK(NewContext(0, &ctx_));
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
}

// --- copies and memsets -------------------------------------------------------

TEST_F(HostBackendTest, CopiesInEveryDirection) {
  const std::vector<int> values = {1, 2, 3, 4, 5, 6, 7, 8};
  uint64_t a = Alloc(sizeof(int) * values.size());
  uint64_t c = Alloc(sizeof(int) * values.size());
  Write(a, values);
  ASSERT_OK(b().CopyDeviceToDevice(legacy(), c, a, sizeof(int) * values.size()));
  EXPECT_EQ(Read<int>(c, values.size()), values);
  // Zero-length copies are accepted and do nothing.
  EXPECT_OK(b().CopyHostToDevice(legacy(), a, HostBytes{}));
  EXPECT_OK(b().CopyDeviceToDevice(legacy(), c, a, 0));
}

TEST_F(HostBackendTest, Copy2DInEveryDirection) {
  // 3 rows of 6 bytes; sources have pitch 10, destinations pitch 8 (device)
  // or 7 (host); bytes between rows must stay untouched.
  constexpr uint64_t kWidth = 6, kHeight = 3;
  std::vector<uint8_t> src(30);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i + 1);
  auto expect_rows = [&](const std::vector<uint8_t>& out, uint64_t pitch, uint8_t filler) {
    for (uint64_t r = 0; r < kHeight; ++r) {
      for (uint64_t x = 0; x < pitch && r * pitch + x < out.size(); ++x) {
        const uint8_t want = x < kWidth ? src[r * 10 + x] : filler;
        EXPECT_EQ(out[r * pitch + x], want) << "row " << r << " byte " << x;
      }
    }
  };

  uint64_t dev = Alloc(24);
  ASSERT_OK(b().Memset(legacy(), dev, 0, 0xEE, 1, 24, 1));
  Copy2D h2d;
  h2d.src_is_host = true;
  h2d.src_host = HostCopyOf(src);
  h2d.src_pitch = 10;
  h2d.dst_device = dev;
  h2d.dst_pitch = 8;
  h2d.width_bytes = kWidth;
  h2d.height = kHeight;
  ASSERT_OK(b().Copy2DAsync(legacy(), h2d));
  expect_rows(Read<uint8_t>(dev, 24), 8, 0xEE);

  // Device to device: dev (pitch 8) -> dev2 (pitch 12).
  uint64_t dev2 = Alloc(36);
  Copy2D d2d;
  d2d.src_device = dev;
  d2d.src_pitch = 8;
  d2d.dst_device = dev2;
  d2d.dst_pitch = 12;
  d2d.width_bytes = kWidth;
  d2d.height = kHeight;
  ASSERT_OK(b().Copy2DAsync(legacy(), d2d));
  expect_rows(Read<uint8_t>(dev2, 36), 12, 0);

  // Device to host: dev2 (pitch 12) -> host (pitch 7).
  auto host = std::make_shared<std::vector<uint8_t>>(21, 0x55);
  Copy2D d2h;
  d2h.src_device = dev2;
  d2h.src_pitch = 12;
  d2h.dst_is_host = true;
  d2h.dst_host = HostSpanOf(host);
  d2h.dst_pitch = 7;
  d2h.width_bytes = kWidth;
  d2h.height = kHeight;
  ASSERT_OK(b().Copy2DAsync(legacy(), d2h));
  ASSERT_OK(Sync(legacy()));
  expect_rows(*host, 7, 0x55);

  // Host to host, through the same path.
  auto host2 = std::make_shared<std::vector<uint8_t>>(18, 0x66);
  Copy2D h2h;
  h2h.src_is_host = true;
  h2h.src_host = HostCopyOf(src);
  h2h.src_pitch = 10;
  h2h.dst_is_host = true;
  h2h.dst_host = HostSpanOf(host2);
  h2h.dst_pitch = 6;
  h2h.width_bytes = kWidth;
  h2h.height = kHeight;
  ASSERT_OK(b().Copy2DAsync(legacy(), h2h));
  ASSERT_OK(Sync(legacy()));
  expect_rows(*host2, 6, 0x66);
}

TEST_F(HostBackendTest, Copy2DRejectsShortHostBuffersAndNarrowPitch) {
  uint64_t dev = Alloc(64);
  Copy2D c;
  c.src_is_host = true;
  c.src_host = HostCopyOf(std::vector<uint8_t>(20));  // needs 2*10 + 6 = 26
  c.src_pitch = 10;
  c.dst_device = dev;
  c.dst_pitch = 8;
  c.width_bytes = 6;
  c.height = 3;
  EXPECT_CUDA_ERROR(b().Copy2DAsync(legacy(), c), CUDA_ERROR_INVALID_VALUE);
  c.src_host = HostCopyOf(std::vector<uint8_t>(26));
  c.dst_pitch = 4;  // narrower than a row
  EXPECT_CUDA_ERROR(b().Copy2DAsync(legacy(), c), CUDA_ERROR_INVALID_VALUE);
  c.dst_pitch = 8;
  EXPECT_OK(b().Copy2DAsync(legacy(), c));
  EXPECT_OK(Sync(legacy()));
}

TEST_F(HostBackendTest, MemsetOf8_16And32BitElements) {
  uint64_t d = Alloc(64);
  ASSERT_OK(b().Memset(legacy(), d, 0, 0x1AB, 1, 10, 1));  // only the low byte counts
  std::vector<uint8_t> bytes = Read<uint8_t>(d, 11);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(bytes[i], 0xAB) << i;
  EXPECT_EQ(bytes[10], 0);

  ASSERT_OK(b().Memset(legacy(), d, 0, 0xBEEF, 2, 4, 1));
  std::vector<uint16_t> halves = Read<uint16_t>(d, 5);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(halves[i], 0xBEEF) << i;
  EXPECT_EQ(halves[4], 0xABAB);

  ASSERT_OK(b().Memset(legacy(), d, 0, 0xDEADBEEF, 4, 1, 1));
  std::vector<uint32_t> words = Read<uint32_t>(d, 2);
  EXPECT_EQ(words[0], 0xDEADBEEFu);
  EXPECT_EQ(words[1], 0xBEEFBEEFu);

  EXPECT_CUDA_ERROR(b().Memset(legacy(), d, 0, 0, 3, 4, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().Memset(legacy(), d, 0, 0, 8, 4, 1), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(HostBackendTest, Memset2DLeavesThePaddingAlone) {
  // 3 rows, pitch 16 bytes; each row sets the first 3 elements.
  uint64_t d = Alloc(48);
  for (unsigned element : {1u, 2u, 4u}) {
    SCOPED_TRACE(element);
    ASSERT_OK(b().Memset(legacy(), d, 0, 0x11, 1, 48, 1));
    ASSERT_OK(b().Memset(legacy(), d, 16, 0xA5A5A5A5, element, 3, 3));
    std::vector<uint8_t> bytes = Read<uint8_t>(d, 48);
    for (int r = 0; r < 3; ++r) {
      for (unsigned x = 0; x < 16; ++x) {
        EXPECT_EQ(bytes[r * 16 + x], x < 3 * element ? 0xA5 : 0x11) << r << "," << x;
      }
    }
  }
  EXPECT_CUDA_ERROR(b().Memset(legacy(), d, 8, 0, 4, 3, 3), CUDA_ERROR_INVALID_VALUE);
}

// --- streams ------------------------------------------------------------------

TEST_F(HostBackendTest, StreamRunsItsWorkInOrder) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  ASSERT_OK(Append(*s, log, 1, 30));
  ASSERT_OK(Append(*s, log, 2));
  ASSERT_OK(Append(*s, log, 3, 10));
  ASSERT_OK(Append(*s, log, 4));
  ASSERT_OK(Sync(*s));
  EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2, 3, 4}));
}

TEST_F(HostBackendTest, RejectsBadStreamFlags) {
  std::unique_ptr<Stream> s;
  EXPECT_CUDA_ERROR(b().CreateStream(*ctx_, 0x2, 0, &s), CUDA_ERROR_INVALID_VALUE);
  EXPECT_OK(b().CreateStream(*ctx_, CU_STREAM_NON_BLOCKING, -100, &s));  // priority clamped
}

TEST_F(HostBackendTest, LegacyStreamWaitsForBlockingStreams) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(*s, gate));
  ASSERT_OK(Append(legacy(), log, 1));
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(LogCount(log), 0);
  EXPECT_CUDA_ERROR(b().QueryStream(legacy()), CUDA_ERROR_NOT_READY);
  gate.Open();
  ASSERT_OK(Sync(legacy()));
  EXPECT_EQ(LogEntries(log), std::vector<int>{1});
  EXPECT_OK(b().QueryStream(*s));  // the legacy op waited for it
}

TEST_F(HostBackendTest, BlockingStreamWaitsForLegacyStream) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(legacy(), gate));
  ASSERT_OK(Append(*s, log, 1));
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(LogCount(log), 0);
  EXPECT_CUDA_ERROR(b().QueryStream(*s), CUDA_ERROR_NOT_READY);
  gate.Open();
  ASSERT_OK(Sync(*s));
  EXPECT_EQ(LogEntries(log), std::vector<int>{1});
}

TEST_F(HostBackendTest, LegacyOrderIsTransitive) {
  // blocking A -> legacy -> blocking B: B's work waits for A's through the
  // legacy stream, though A and B never synchronize directly.
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto a = NewStream();
  auto c = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(*a, gate));
  ASSERT_OK(Append(*a, log, 1));
  ASSERT_OK(Append(legacy(), log, 2));
  ASSERT_OK(Append(*c, log, 3));
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(LogCount(log), 0);
  gate.Open();
  ASSERT_OK(Sync(*c));
  EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2, 3}));
}

// NVML stand-in: a running kernel makes the device busy (utilization > 0)
// while it runs; the host backend reads no sensors.
TEST_F(HostBackendTest, TelemetryShowsTheDeviceBusyWhileAKernelRuns) {
  REQUIRE_KERNELS();
  DeviceTelemetry idle;
  ASSERT_OK(b().ReadDeviceTelemetry(0, &idle));
  EXPECT_EQ(idle.temperature_c, -1);
  EXPECT_EQ(idle.power_milliwatts, -1);
  EXPECT_GE(idle.memory_utilization, 0);
  auto s = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(*s, gate));
  // The kernel runs until the gate opens: its share of the last second grows
  // from the moment it starts.
  DeviceTelemetry busy;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    ASSERT_OK(b().ReadDeviceTelemetry(0, &busy));
  } while (busy.gpu_utilization == 0 && std::chrono::steady_clock::now() < deadline);
  EXPECT_GT(busy.gpu_utilization, 0);
  EXPECT_LE(busy.gpu_utilization, 100);
  gate.Open();
  ASSERT_OK(Sync(*s));
  EXPECT_CUDA_ERROR(b().ReadDeviceTelemetry(99, &busy), CUDA_ERROR_INVALID_DEVICE);
}

TEST_F(HostBackendTest, BlockingStreamsDoNotWaitForEachOther) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto a = NewStream();
  auto c = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(*a, gate));
  ASSERT_OK(Append(*c, log, 7));
  ASSERT_OK(Sync(*c));  // completes while `a` is blocked
  EXPECT_EQ(LogEntries(log), std::vector<int>{7});
  EXPECT_CUDA_ERROR(b().QueryStream(*a), CUDA_ERROR_NOT_READY);
}

TEST_F(HostBackendTest, NonBlockingStreamIgnoresLegacyStream) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto nb = NewStream(CU_STREAM_NON_BLOCKING);
  {
    Gate gate(this);
    ASSERT_OK(Block(legacy(), gate));
    ASSERT_OK(Append(*nb, log, 1));
    ASSERT_OK(Sync(*nb));  // does not wait for the blocked legacy stream
    EXPECT_EQ(LogEntries(log), std::vector<int>{1});
    EXPECT_CUDA_ERROR(b().QueryStream(legacy()), CUDA_ERROR_NOT_READY);
  }
  ASSERT_OK(Sync(legacy()));
  {
    Gate gate(this);
    ASSERT_OK(Block(*nb, gate));
    ASSERT_OK(Append(legacy(), log, 2));
    ASSERT_OK(Sync(legacy()));  // nor does the legacy stream wait for it
    EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2}));
    EXPECT_CUDA_ERROR(b().QueryStream(*nb), CUDA_ERROR_NOT_READY);
  }
}

TEST_F(HostBackendTest, WhenStreamIdleRunsAfterTheWorkOnAnotherThread) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(*s, gate));
  ASSERT_OK(Append(*s, log, 1));
  auto promise = std::make_shared<std::promise<std::pair<int, std::thread::id>>>();
  auto future = promise->get_future();
  b().WhenStreamIdle(*s, [promise, log](Status st) {
    EXPECT_TRUE(st.ok()) << st.ToString();
    promise->set_value({LogCount(log), std::this_thread::get_id()});
  });
  // Returned without waiting; the callback has not run.
  EXPECT_EQ(future.wait_for(kSettle), std::future_status::timeout);
  gate.Open();
  ASSERT_EQ(future.wait_for(kTimeout), std::future_status::ready);
  auto [count, thread] = future.get();
  EXPECT_EQ(count, 1);
  EXPECT_NE(thread, std::this_thread::get_id());

  // An idle stream still calls back from a backend thread, never inline.
  std::thread::id idle_thread;
  ASSERT_OK(Await([&](Completion done) {
    b().WhenStreamIdle(*s, [&, done](Status st) {
      idle_thread = std::this_thread::get_id();
      done(st);
    });
  }));
  EXPECT_NE(idle_thread, std::this_thread::get_id());
}

TEST_F(HostBackendTest, CompletionsOfAStreamRunInOrder) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  std::mutex mu;
  std::vector<int> order;
  auto promise = std::make_shared<std::promise<void>>();
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK(Append(*s, log, i));
    b().WhenStreamIdle(*s, [&, i, promise](Status) {
      bool last;
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(i);
        last = order.size() == 20;
      }
      if (last) promise->set_value();  // the test may end once this is set
    });
  }
  ASSERT_EQ(promise->get_future().wait_for(kTimeout), std::future_status::ready);
  std::vector<int> want(20);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(order, want);
}

TEST_F(HostBackendTest, WhenContextIdleWaitsForEveryStream) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto a = NewStream(CU_STREAM_NON_BLOCKING);
  auto c = NewStream();
  Gate gate(this);
  ASSERT_OK(Block(*a, gate));
  ASSERT_OK(Append(*c, log, 1));
  ASSERT_OK(Append(legacy(), log, 2));
  auto promise = std::make_shared<std::promise<Status>>();
  auto future = promise->get_future();
  b().WhenContextIdle(*ctx_, [promise](Status s) { promise->set_value(s); });
  EXPECT_EQ(future.wait_for(kSettle), std::future_status::timeout);
  gate.Open();
  ASSERT_EQ(future.wait_for(kTimeout), std::future_status::ready);
  EXPECT_OK(future.get());
  EXPECT_EQ(LogCount(log), 2);
  EXPECT_OK(b().QueryStream(*a));
}

TEST_F(HostBackendTest, DestroyingABusyStreamWaitsForItsWork) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  ASSERT_OK(Append(*s, log, 1, 50));
  ASSERT_OK(Append(*s, log, 2, 20));
  s.reset();
  EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2}));
}

TEST_F(HostBackendTest, MemFreeWaitsForQueuedWork) {
  REQUIRE_KERNELS();
  auto s = NewStream(CU_STREAM_NON_BLOCKING);
  Gate gate(this);
  uint64_t buffer = NewLog();
  ASSERT_OK(Block(*s, gate));
  ASSERT_OK(Append(*s, buffer, 5));  // writes into `buffer` after the gate
  const uint64_t before = FreeBytes();
  // Returns at once; the storage, and the device bytes it takes, stay until
  // the queued write is done (ASan builds check the storage).
  ASSERT_OK(b().MemFree(*ctx_, buffer));
  EXPECT_EQ(FreeBytes(), before);
  EXPECT_CUDA_ERROR(b().QueryStream(*s), CUDA_ERROR_NOT_READY);
  gate.Open();
  ASSERT_OK(SyncContext());
  ASSERT_OK(Released());
  EXPECT_GT(FreeBytes(), before);
}

// --- host gates ----------------------------------------------------------------

// Opens itself when it goes out of scope, like Gate; declare it after the
// streams it holds.
struct OpenOnExit {
  std::shared_ptr<HostGate> gate = std::make_shared<HostGate>();
  ~OpenOnExit() { gate->Open(); }
};

TEST_F(HostBackendTest, HostGateIsReachedAfterEarlierWorkAndHoldsLaterWork) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  Gate kernel_gate(this);
  OpenOnExit host_gate;
  ASSERT_OK(Block(*s, kernel_gate));
  ASSERT_OK(Append(*s, log, 1));
  auto reached = std::make_shared<std::promise<std::pair<Status, int>>>();
  auto future = reached->get_future();
  ASSERT_OK(b().EnqueueHostGate(*s, host_gate.gate, [reached, log](Status st) {
    reached->set_value({st, LogCount(log)});
  }));
  ASSERT_OK(Append(*s, log, 2));
  EXPECT_EQ(future.wait_for(kSettle), std::future_status::timeout)
      << "reached before the work queued before it ran";
  kernel_gate.Open();
  ASSERT_EQ(future.wait_for(kTimeout), std::future_status::ready);
  auto [status, count_when_reached] = future.get();
  EXPECT_OK(status);
  EXPECT_EQ(count_when_reached, 1);
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(LogEntries(log), std::vector<int>{1}) << "work after a closed gate ran";
  EXPECT_CUDA_ERROR(b().QueryStream(*s), CUDA_ERROR_NOT_READY);
  host_gate.gate->Open();
  ASSERT_OK(Sync(*s));
  EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2}));
}

TEST_F(HostBackendTest, HostGateOpenedBeforeItIsReachedNeverHolds) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream();
  auto gate = std::make_shared<HostGate>();
  gate->Open();
  ASSERT_OK(
      Await([&](Completion done) { ASSERT_OK(b().EnqueueHostGate(*s, gate, std::move(done))); }));
  ASSERT_OK(Append(*s, log, 1));
  ASSERT_OK(Sync(*s));
  EXPECT_EQ(LogEntries(log), std::vector<int>{1});
}

TEST_F(HostBackendTest, HostGateOnTheLegacyStreamFollowsBlockingStreams) {
  REQUIRE_KERNELS();
  auto s = NewStream();
  auto nb = NewStream(CU_STREAM_NON_BLOCKING);
  Gate kernel_gate(this);
  OpenOnExit host_gate;
  ASSERT_OK(Block(*s, kernel_gate));
  Awaited reached;
  ASSERT_OK(b().EnqueueHostGate(legacy(), host_gate.gate, reached.Callback()));
  EXPECT_FALSE(reached.ReadyWithin(kSettle)) << "reached before a blocking stream's work ran";
  kernel_gate.Open();
  EXPECT_OK(reached.Get());
  // A blocking stream's later work waits for the held legacy stream; a
  // non-blocking stream's does not.
  uint64_t log = NewLog();
  ASSERT_OK(Append(*nb, log, 1));
  ASSERT_OK(Sync(*nb));
  ASSERT_OK(Append(*s, log, 2));
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(LogEntries(log), std::vector<int>{1});
  host_gate.gate->Open();
  ASSERT_OK(Sync(*s));
  EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2}));
}

TEST_F(HostBackendTest, HostGatesOfOneStreamAreReachedOneAfterAnother) {
  auto s = NewStream();
  OpenOnExit first, second;
  Awaited first_reached, second_reached;
  ASSERT_OK(b().EnqueueHostGate(*s, first.gate, first_reached.Callback()));
  ASSERT_OK(b().EnqueueHostGate(*s, second.gate, second_reached.Callback()));
  EXPECT_OK(first_reached.Get());
  EXPECT_FALSE(second_reached.ReadyWithin(kSettle)) << "the second gate passed a closed first";
  first.gate->Open();
  EXPECT_OK(second_reached.Get());
  second.gate->Open();
  ASSERT_OK(Sync(*s));
}

TEST_F(HostBackendTest, DestroyingAStreamWaitsForItsClosedHostGate) {
  auto s = NewStream();
  auto gate = std::make_shared<HostGate>();
  Awaited reached;
  ASSERT_OK(b().EnqueueHostGate(*s, gate, reached.Callback()));
  EXPECT_OK(reached.Get());
  std::atomic<bool> destroyed{false};
  std::thread destroyer([&] {
    s.reset();
    destroyed = true;
  });
  std::this_thread::sleep_for(kSettle);
  EXPECT_FALSE(destroyed.load()) << "the stream went away under a closed gate";
  gate->Open();
  destroyer.join();
  EXPECT_TRUE(destroyed.load());
}

// --- releasing memory after queued work ------------------------------------------

// A copy queued on ANOTHER context's stream (unified addressing: any context
// of the client may name the memory) still targets the memory when it is
// freed: the memory must stay until that copy has run. 1 MiB is mmap'ed, so
// freed pages fault.
TEST_F(HostBackendTest, MemFreeWaitsForQueuedWorkOfAnotherContext) {
  std::unique_ptr<Context> other;
  ASSERT_OK(NewContext(1, &other));
  std::unique_ptr<Stream> s;
  ASSERT_OK(b().CreateStream(*other, CU_STREAM_NON_BLOCKING, 0, &s));
  constexpr uint64_t kBytes = 1 << 20;
  const uint64_t buffer = Alloc(kBytes);
  OpenOnExit held;
  Awaited reached;
  ASSERT_OK(b().EnqueueHostGate(*s, held.gate, reached.Callback()));
  ASSERT_OK(b().CopyHostToDevice(*s, buffer, HostCopyOf(std::vector<uint8_t>(kBytes, 0x5A))));
  ASSERT_OK(reached.Get());
  const uint64_t before = FreeBytes();
  ASSERT_OK(b().MemFree(*ctx_, buffer));
  Awaited released;
  b().WhenReleased(*tenant_, released.Callback());
  EXPECT_FALSE(released.ReadyWithin(kSettle)) << "released under a queued copy";
  EXPECT_EQ(FreeBytes(), before);
  held.gate->Open();
  ASSERT_OK(Sync(*s));
  ASSERT_OK(released.Get());
  EXPECT_EQ(FreeBytes(), before + kBytes);
}

// cuMemFreeAsync orders the free on its own stream; a copy still queued on
// another stream of the tenant keeps the memory until it has run (freed
// pages would fault), and `freed` (the quota's return) comes only then.
TEST_F(HostBackendTest, MemFreeAsyncWaitsForQueuedWorkOnAnotherStream) {
  std::unique_ptr<MemPool> pool;
  ASSERT_OK(b().CreateMemPool(0, 0, &pool));
  auto held_stream = NewStream(CU_STREAM_NON_BLOCKING);
  auto free_stream = NewStream(CU_STREAM_NON_BLOCKING);
  constexpr uint64_t kBytes = 1 << 20;
  uint64_t buffer = 0;
  ASSERT_OK(b().MemAllocFromPool(*free_stream, *pool, kBytes, &buffer));
  OpenOnExit held;
  Awaited reached;
  ASSERT_OK(b().EnqueueHostGate(*held_stream, held.gate, reached.Callback()));
  ASSERT_OK(
      b().CopyHostToDevice(*held_stream, buffer, HostCopyOf(std::vector<uint8_t>(kBytes, 0x5A))));
  ASSERT_OK(reached.Get());
  Awaited freed;
  ASSERT_OK(b().MemFreeAsync(*free_stream, buffer, freed.Callback()));
  ASSERT_OK(Sync(*free_stream));
  EXPECT_FALSE(freed.ReadyWithin(kSettle)) << "freed under a queued copy";
  held.gate->Open();
  ASSERT_OK(Sync(*held_stream));
  ASSERT_OK(freed.Get());
  ASSERT_OK(Released());
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
}

// Tenants do not wait for each other: a context of another tenant held by a
// gate does not hold back this tenant's release.
TEST_F(HostBackendTest, ReleasesDoNotWaitForAnotherTenantsWork) {
  std::unique_ptr<Tenant> stranger_tenant = b().CreateTenant();
  std::unique_ptr<Context> stranger;
  ASSERT_OK(b().CreateContext(0, 0, &stranger));
  b().JoinTenant(*stranger, *stranger_tenant);
  std::unique_ptr<Stream> s;
  ASSERT_OK(b().CreateStream(*stranger, CU_STREAM_NON_BLOCKING, 0, &s));
  OpenOnExit held;
  Awaited reached;
  ASSERT_OK(b().EnqueueHostGate(*s, held.gate, reached.Callback()));
  ASSERT_OK(reached.Get());
  const uint64_t buffer = Alloc(4096);
  ASSERT_OK(b().MemFree(*ctx_, buffer));
  ASSERT_OK(Released());
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
}

// Unmapping and taking access away return at once; the pages stay for the
// copy queued before (it lands in the physical memory, seen through a second
// mapping), and the physical memory is charged until it has run.
TEST_F(HostBackendTest, UnmapAndNarrowingKeepThePagesForQueuedWork) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  uint64_t base = 0, alias = 0;
  ASSERT_OK(b().ReserveAddressRange(2 * page, 0, 0, &base));
  ASSERT_OK(b().ReserveAddressRange(page, 0, 0, &alias));
  std::unique_ptr<PhysicalMemory> memory;
  ASSERT_OK(b().CreatePhysicalMemory(0, page, &memory));
  ASSERT_OK(b().MapMemory(base, page, *memory, 0));
  ASSERT_OK(b().MapMemory(base + page, page, *memory, 0));
  ASSERT_OK(b().MapMemory(alias, page, *memory, 0));
  const MemoryAccess read_write{0, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  const MemoryAccess none{0, CU_MEM_ACCESS_FLAGS_PROT_NONE};
  for (uint64_t at : {base, base + page, alias}) {
    ASSERT_OK(b().SetMemoryAccess(*tenant_, at, page, {&read_write, 1}));
  }
  auto s = NewStream(CU_STREAM_NON_BLOCKING);
  OpenOnExit held;
  Awaited reached;
  ASSERT_OK(b().EnqueueHostGate(*s, held.gate, reached.Callback()));
  ASSERT_OK(reached.Get());
  ASSERT_OK(b().Memset(*s, base, 0, 0x5A, 1, 8, 1));
  ASSERT_OK(b().Memset(*s, base + page + 8, 0, 0x6B, 1, 8, 1));
  ASSERT_OK(b().UnmapMemory(*tenant_, base, page));
  ASSERT_OK(b().SetMemoryAccess(*tenant_, base + page, page, {&none, 1}));
  memory.reset();  // the mappings hold it
  held.gate->Open();
  ASSERT_OK(Sync(*s));
  ASSERT_OK(Released());
  const auto* bytes = reinterpret_cast<const uint8_t*>(alias);
  EXPECT_EQ(bytes[0], 0x5A);
  EXPECT_EQ(bytes[8], 0x6B);
  ASSERT_OK(b().UnmapMemory(*tenant_, base + page, page));
  ASSERT_OK(b().UnmapMemory(*tenant_, alias, page));
  ASSERT_OK(Released());
  EXPECT_EQ(FreeBytes(), kDeviceMemory);
  ASSERT_OK(b().FreeAddressRange(base, 2 * page));
  ASSERT_OK(b().FreeAddressRange(alias, page));
}

TEST_F(HostBackendTest, HostGateRejectsANullGate) {
  EXPECT_CUDA_ERROR(b().EnqueueHostGate(legacy(), nullptr, [](Status) {}),
                    CUDA_ERROR_INVALID_VALUE);
}

TEST_F(HostBackendTest, ConcurrentCallersOnManyStreams) {
  constexpr int kThreads = 4, kRounds = 50;
  std::vector<std::thread> threads;
  std::vector<uint64_t> buffers(kThreads);
  for (auto& d : buffers) d = Alloc(kRounds * sizeof(uint32_t));
  std::vector<std::unique_ptr<Stream>> streams;
  for (int t = 0; t < kThreads; ++t)
    streams.push_back(NewStream(t % 2 ? CU_STREAM_NON_BLOCKING : 0));
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Stream& s = t == 0 ? legacy() : *streams[t];
      for (int r = 0; r < kRounds; ++r) {
        EXPECT_OK(b().Memset(s, buffers[t] + r * 4, 0, r * 1000 + t, 4, 1, 1));
        if (r % 10 == 0) b().WhenStreamIdle(s, [](Status) {});
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_OK(SyncContext());
  for (int t = 0; t < kThreads; ++t) {
    std::vector<uint32_t> got = Read<uint32_t>(buffers[t], kRounds);
    for (int r = 0; r < kRounds; ++r) EXPECT_EQ(got[r], static_cast<uint32_t>(r * 1000 + t));
  }
}

// --- events -------------------------------------------------------------------

TEST_F(HostBackendTest, EventNeverRecordedIsComplete) {
  auto e = NewEvent();
  EXPECT_OK(b().QueryEvent(*e));
  EXPECT_OK(Await([&](Completion done) { b().WhenEventComplete(*e, std::move(done)); }));
  auto s = NewStream();
  EXPECT_OK(b().StreamWaitEvent(*s, *e));  // nothing to wait for
  EXPECT_OK(Sync(*s));
}

TEST_F(HostBackendTest, EventIsNotReadyUntilReached) {
  REQUIRE_KERNELS();
  auto s = NewStream();
  auto e = NewEvent();
  Gate gate(this);
  ASSERT_OK(Block(*s, gate));
  ASSERT_OK(b().RecordEvent(*e, *s));
  EXPECT_CUDA_ERROR(b().QueryEvent(*e), CUDA_ERROR_NOT_READY);
  auto promise = std::make_shared<std::promise<Status>>();
  auto future = promise->get_future();
  b().WhenEventComplete(*e, [promise](Status st) { promise->set_value(st); });
  EXPECT_EQ(future.wait_for(kSettle), std::future_status::timeout);
  gate.Open();
  ASSERT_EQ(future.wait_for(kTimeout), std::future_status::ready);
  EXPECT_OK(future.get());
  EXPECT_OK(b().QueryEvent(*e));
}

TEST_F(HostBackendTest, EventElapsedTime) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto start = NewEvent();
  auto end = NewEvent();
  float ms = -1;
  EXPECT_CUDA_ERROR(b().EventElapsedTime(*start, *end, &ms), CUDA_ERROR_INVALID_HANDLE);

  Gate gate(this);
  ASSERT_OK(b().RecordEvent(*start, legacy()));
  ASSERT_OK(Block(legacy(), gate));
  ASSERT_OK(Append(legacy(), log, 1, 5));
  ASSERT_OK(b().RecordEvent(*end, legacy()));
  EXPECT_CUDA_ERROR(b().EventElapsedTime(*start, *end, &ms), CUDA_ERROR_NOT_READY);
  gate.Open();
  ASSERT_OK(Await([&](Completion done) { b().WhenEventComplete(*end, std::move(done)); }));
  ASSERT_OK(b().EventElapsedTime(*start, *end, &ms));
  EXPECT_GE(ms, 0.0f);

  auto untimed = NewEvent(CU_EVENT_DISABLE_TIMING);
  ASSERT_OK(b().RecordEvent(*untimed, legacy()));
  ASSERT_OK(Sync(legacy()));
  EXPECT_CUDA_ERROR(b().EventElapsedTime(*start, *untimed, &ms), CUDA_ERROR_INVALID_HANDLE);
}

TEST_F(HostBackendTest, RejectsBadEventFlags) {
  std::unique_ptr<Event> e;
  EXPECT_CUDA_ERROR(b().CreateEvent(*ctx_, 0x8, &e), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().CreateEvent(*ctx_, CU_EVENT_INTERPROCESS, &e), CUDA_ERROR_INVALID_VALUE);
  EXPECT_OK(b().CreateEvent(*ctx_, CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING, &e));
}

TEST_F(HostBackendTest, StreamWaitEventWaitsForTheRecordAtCallTime) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto producer = NewStream(CU_STREAM_NON_BLOCKING);
  auto consumer = NewStream(CU_STREAM_NON_BLOCKING);
  auto other = NewStream(CU_STREAM_NON_BLOCKING);
  auto e = NewEvent();
  Gate gate(this);
  ASSERT_OK(Block(*producer, gate));
  ASSERT_OK(Append(*producer, log, 1));
  ASSERT_OK(b().RecordEvent(*e, *producer));
  ASSERT_OK(b().StreamWaitEvent(*consumer, *e));
  ASSERT_OK(Append(*consumer, log, 2));
  // Re-recording the event on an idle stream does not release the consumer:
  // it waits for the record that was latest when it called.
  ASSERT_OK(b().RecordEvent(*e, *other));
  ASSERT_OK(Sync(*other));
  EXPECT_OK(b().QueryEvent(*e));
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(LogCount(log), 0);
  EXPECT_CUDA_ERROR(b().QueryStream(*consumer), CUDA_ERROR_NOT_READY);
  gate.Open();
  ASSERT_OK(Sync(*consumer));
  EXPECT_EQ(LogEntries(log), (std::vector<int>{1, 2}));
}

// --- modules and kernels ------------------------------------------------------

TEST_F(HostBackendTest, LoadModuleDescribesKernelsAndGlobals) {
  REQUIRE_KERNELS();
  for (const char* name : {kVadd, kScale, kLogAppend, kGate, kLaunchInfo, kNoHost}) {
    EXPECT_NE(Kernel(name), nullptr) << name;
  }
  const KernelDescription* vadd = Kernel(kVadd);
  ASSERT_NE(vadd, nullptr);
  ASSERT_EQ(vadd->params.size(), 4u);
  const uint32_t offsets[] = {0, 8, 16, 24}, sizes[] = {8, 8, 8, 4};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(vadd->params[i].offset, offsets[i]) << i;
    EXPECT_EQ(vadd->params[i].size, sizes[i]) << i;
  }
  const KernelDescription* scale = Kernel(kScale);
  ASSERT_NE(scale, nullptr);
  ASSERT_EQ(scale->params.size(), 1u);
  EXPECT_EQ(scale->params[0].size, sizeof(ScaleArgs));

  auto global_size = [&](std::string_view name) -> uint64_t {
    for (const GlobalDescription& g : description_.globals) {
      if (g.name == name) return g.size;
    }
    return 0;
  };
  EXPECT_EQ(global_size("ferry_test_counter"), 4u);
  EXPECT_EQ(global_size("ferry_test_table"), 16u);
  EXPECT_EQ(global_size("ferry_test_zeroed"), 32u);
  EXPECT_EQ(global_size("ferry_test_const"), 8u);
}

TEST_F(HostBackendTest, LaunchRunsTheHostImplementation) {
  REQUIRE_KERNELS();
  constexpr int n = 1000;
  std::vector<float> a(n), c(n);
  for (int i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i);
    c[i] = 0.5f * static_cast<float>(i);
  }
  uint64_t da = Alloc(n * sizeof(float)), dc = Alloc(n * sizeof(float)),
           dout = Alloc(n * sizeof(float));
  Write(da, a);
  Write(dc, c);
  LaunchConfig config;
  config.grid = {4, 1, 1};
  config.block = {256, 1, 1};
  ASSERT_OK(Launch(legacy(), kVadd, config, HostView<const float>(da), HostView<const float>(dc),
                   HostView<float>(dout), n));
  std::vector<float> out = Read<float>(dout, n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + c[i]) << i;
}

TEST_F(HostBackendTest, LaunchPassesStructParametersByValue) {
  REQUIRE_KERNELS();
  uint64_t d = Alloc(8 * sizeof(float));
  Write(d, std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8});
  ScaleArgs args{};
  args.factor = 2.0f;
  args.n = 6;
  args.data = HostView<float>(d);
  args.offset = 0.5f;
  LaunchConfig config;
  config.block = {32, 1, 1};
  ASSERT_OK(Launch(legacy(), kScale, config, args));
  EXPECT_EQ(Read<float>(d, 8), (std::vector<float>{2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 7, 8}));
}

TEST_F(HostBackendTest, LaunchPassesTheConfiguration) {
  REQUIRE_KERNELS();
  uint64_t d = Alloc(7 * sizeof(unsigned));
  LaunchConfig config;
  config.grid = {2, 3, 4};
  config.block = {8, 4, 2};
  config.shared_bytes = 128;
  ASSERT_OK(Launch(legacy(), kLaunchInfo, config, HostView<unsigned>(d)));
  EXPECT_EQ(Read<unsigned>(d, 7), (std::vector<unsigned>{2, 3, 4, 8, 4, 2, 128}));
}

TEST_F(HostBackendTest, MissingHostImplementationFailsAtEnqueueNamingTheKernel) {
  REQUIRE_KERNELS();
  uint64_t d = Alloc(sizeof(int));
  Status s = Launch1(legacy(), kNoHost, HostView<int>(d));
  EXPECT_EQ(s.cuda_result(), CUDA_ERROR_NOT_SUPPORTED) << s.ToString();
  EXPECT_NE(s.message().find(std::string("kernel ") + kNoHost), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::string("ferry_host_") + kNoHost), std::string::npos);
  EXPECT_NE(s.message().find(FERRY_TEST_HOST_KERNELS), std::string::npos) << s.message();
  EXPECT_OK(b().QueryStream(legacy()));  // nothing was queued
}

TEST_F(HostBackendTest, RejectsBadLaunches) {
  REQUIRE_KERNELS();
  Function* f = Fn(kLaunchInfo);
  ASSERT_NE(f, nullptr);
  uint64_t d = Alloc(7 * sizeof(unsigned));
  auto launch = [&](LaunchConfig c) {
    return b().Launch(legacy(), *f, c, Pack(kLaunchInfo, HostView<unsigned>(d)));
  };
  LaunchConfig c;
  c.block = {0, 1, 1};
  EXPECT_CUDA_ERROR(launch(c), CUDA_ERROR_INVALID_VALUE);
  c.block = {1024, 2, 1};
  EXPECT_CUDA_ERROR(launch(c), CUDA_ERROR_INVALID_VALUE);
  c.block = {1, 1, 65};
  EXPECT_CUDA_ERROR(launch(c), CUDA_ERROR_INVALID_VALUE);
  c = LaunchConfig{};
  c.grid = {1, 70000, 1};
  EXPECT_CUDA_ERROR(launch(c), CUDA_ERROR_INVALID_VALUE);
  c = LaunchConfig{};
  c.grid = {4, 1, 1};
  c.cluster = {3, 1, 1};
  EXPECT_CUDA_ERROR(launch(c), CUDA_ERROR_INVALID_CLUSTER_SIZE);
  c.cluster = {2, 1, 1};
  EXPECT_OK(launch(c));

  // Dynamic shared memory above 48 KiB needs the opt-in attribute.
  c = LaunchConfig{};
  c.shared_bytes = 64 * 1024;
  EXPECT_CUDA_ERROR(launch(c), CUDA_ERROR_INVALID_VALUE);
  ASSERT_OK(
      b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 64 * 1024));
  EXPECT_OK(launch(c));

  // A parameter buffer shorter than the kernel's parameters.
  EXPECT_CUDA_ERROR(b().Launch(legacy(), *f, LaunchConfig{}, HostCopyOf(std::vector<uint8_t>(4))),
                    CUDA_ERROR_INVALID_VALUE);
  EXPECT_OK(Sync(legacy()));
}

TEST_F(HostBackendTest, LaunchOnAnotherContextsStreamIsRejected) {
  REQUIRE_KERNELS();
  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(0, 0, &other));
  uint64_t d = Alloc(7 * sizeof(unsigned));
  EXPECT_CUDA_ERROR(b().Launch(b().LegacyStream(*other), *Fn(kLaunchInfo), LaunchConfig{},
                               Pack(kLaunchInfo, HostView<unsigned>(d))),
                    CUDA_ERROR_INVALID_HANDLE);
}

TEST_F(HostBackendTest, GetFunctionAndGetGlobalReportUnknownNames) {
  REQUIRE_KERNELS();
  Function* f = nullptr;
  EXPECT_EQ(b().GetFunction(*module_, "_Z7missingv", &f).code(), StatusCode::kNotFound);
  uint64_t d = 0, bytes = 0;
  EXPECT_EQ(b().GetGlobal(*module_, "no_such_global", &d, &bytes).code(), StatusCode::kNotFound);
}

TEST_F(HostBackendTest, GlobalsHoldTheirInitialValues) {
  REQUIRE_KERNELS();
  uint64_t d = 0, bytes = 0;
  ASSERT_OK(b().GetGlobal(*module_, "ferry_test_counter", &d, &bytes));
  EXPECT_EQ(bytes, 4u);
  EXPECT_EQ(Read<int>(d, 1), std::vector<int>{42});
  ASSERT_OK(b().GetGlobal(*module_, "ferry_test_table", &d, &bytes));
  EXPECT_EQ(bytes, 16u);
  EXPECT_EQ(Read<float>(d, 4), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f}));
  ASSERT_OK(b().GetGlobal(*module_, "ferry_test_zeroed", &d, &bytes));
  EXPECT_EQ(bytes, 32u);
  EXPECT_EQ(Read<int>(d, 8), std::vector<int>(8, 0));
  ASSERT_OK(b().GetGlobal(*module_, "ferry_test_const", &d, &bytes));
  EXPECT_EQ(Read<int>(d, 2), (std::vector<int>{7, 9}));

  // Each module instance has its own, writable copy.
  ASSERT_OK(b().GetGlobal(*module_, "ferry_test_counter", &d, &bytes));
  Write(d, std::vector<int>{5});
  std::unique_ptr<Module> second;
  ModuleDescription desc;
  ASSERT_OK(b().LoadModule(*ctx_, ReadFile(FERRY_TEST_FATBIN), &second, &desc));
  uint64_t d2 = 0;
  ASSERT_OK(b().GetGlobal(*second, "ferry_test_counter", &d2, &bytes));
  EXPECT_NE(d2, d);
  EXPECT_EQ(Read<int>(d2, 1), std::vector<int>{42});
  EXPECT_EQ(Read<int>(d, 1), std::vector<int>{5});
}

TEST_F(HostBackendTest, FunctionAttributes) {
  REQUIRE_KERNELS();
  Function* f = Fn(kVadd);
  ASSERT_NE(f, nullptr);
  int v = 0;
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, &v));
  EXPECT_EQ(v, 1024);
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_NUM_REGS, &v));
  EXPECT_EQ(v, 32);
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, &v));
  EXPECT_EQ(v, 0);
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_PTX_VERSION, &v));
  EXPECT_EQ(v, 90);
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_BINARY_VERSION, &v));
  EXPECT_EQ(v, 90);
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, &v));
  EXPECT_EQ(v, 48 * 1024);

  ASSERT_OK(b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 100000));
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, &v));
  EXPECT_EQ(v, 100000);
  ASSERT_OK(b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 50));
  ASSERT_OK(b().GetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, &v));
  EXPECT_EQ(v, 50);

  EXPECT_CUDA_ERROR(
      b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 300000),
      CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_NUM_REGS, 64),
                    CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().SetFunctionAttribute(*f, 1000, 1), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().GetFunctionAttribute(*f, 1000, &v), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().GetFunctionAttribute(*f, -1, &v), CUDA_ERROR_INVALID_VALUE);
  EXPECT_OK(b().SetFunctionCacheConfig(*f, CU_FUNC_CACHE_PREFER_SHARED));
  EXPECT_CUDA_ERROR(b().SetFunctionCacheConfig(*f, 7), CUDA_ERROR_INVALID_VALUE);
}

// Destroying a module never waits for its queued kernels (its globals stay
// until they have run): here one is held behind a gate.
TEST_F(HostBackendTest, DestroyingAModuleDoesNotWaitForItsKernels) {
  REQUIRE_KERNELS();
  uint64_t log = NewLog();
  auto s = NewStream(CU_STREAM_NON_BLOCKING);
  Gate gate(this);
  ASSERT_OK(Block(*s, gate));
  ASSERT_OK(Append(*s, log, 1));
  module_.reset();
  EXPECT_EQ(LogCount(log), 0);
  gate.Open();
  ASSERT_OK(Sync(*s));
  EXPECT_EQ(LogCount(log), 1);
}

TEST_F(HostBackendTest, LoadsPtxImages) {
  if (std::string(FERRY_TEST_PTX).empty()) GTEST_SKIP() << "no nvcc";
  std::vector<uint8_t> ptx = ReadFile(FERRY_TEST_PTX);
  ASSERT_FALSE(ptx.empty());
  ptx.push_back(0);  // PTX images are NUL-terminated text
  ASSERT_OK(b().LoadModule(*ctx_, ptx, &module_, &description_));
  uint64_t d = Alloc(7 * sizeof(unsigned));
  LaunchConfig config;
  config.grid = {5, 1, 1};
  ASSERT_OK(Launch(legacy(), kLaunchInfo, config, HostView<unsigned>(d)));
  EXPECT_EQ(Read<unsigned>(d, 1), std::vector<unsigned>{5});
  uint64_t g = 0, bytes = 0;
  ASSERT_OK(b().GetGlobal(*module_, "ferry_test_counter", &g, &bytes));
  EXPECT_EQ(Read<int>(g, 1), std::vector<int>{42});
}

TEST_F(HostBackendTest, RejectsImagesThatDoNotParse) {
  std::vector<uint8_t> garbage = {1, 2, 3, 4, 5, 6, 7, 8};
  std::unique_ptr<Module> m;
  ModuleDescription desc;
  EXPECT_FALSE(b().LoadModule(*ctx_, garbage, &m, &desc).ok());
  EXPECT_FALSE(b().LoadModule(*ctx_, {}, &m, &desc).ok());
  EXPECT_EQ(m, nullptr);
}

// --- libraries ---------------------------------------------------------------

TEST_F(HostBackendTest, LibraryLoadsOnceAndGivesEachContextItsOwnModule) {
  if (std::string(FERRY_TEST_FATBIN).empty()) GTEST_SKIP() << "no nvcc";
  std::vector<uint8_t> image = ReadFile(FERRY_TEST_FATBIN);
  std::unique_ptr<Library> library;
  ModuleDescription described;
  ASSERT_OK(b().LoadLibrary(image, &library, &described));
  // The image's bytes may go: the library keeps what it needs.
  std::fill(image.begin(), image.end(), 0);
  image.clear();
  ModuleDescription direct;
  std::unique_ptr<Module> plain;
  ASSERT_OK(b().LoadModule(*ctx_, ReadFile(FERRY_TEST_FATBIN), &plain, &direct));
  ASSERT_EQ(described.kernels.size(), direct.kernels.size());
  for (size_t i = 0; i < direct.kernels.size(); ++i) {
    EXPECT_EQ(described.kernels[i].name, direct.kernels[i].name);
    EXPECT_EQ(described.kernels[i].params.size(), direct.kernels[i].params.size());
  }
  EXPECT_EQ(described.globals.size(), direct.globals.size());

  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(1, 0, &other));
  std::unique_ptr<Module> here, there;
  ASSERT_OK(b().LoadLibraryModule(*ctx_, *library, &here));
  ASSERT_OK(b().LoadLibraryModule(*other, *library, &there));
  uint64_t g_here = 0, g_there = 0, bytes = 0;
  ASSERT_OK(b().GetGlobal(*here, "ferry_test_counter", &g_here, &bytes));
  ASSERT_OK(b().GetGlobal(*there, "ferry_test_counter", &g_there, &bytes));
  EXPECT_NE(g_here, g_there);
  Write(g_here, std::vector<int>{-9});
  EXPECT_EQ(Read<int>(g_here, 1), std::vector<int>{-9});
  EXPECT_EQ(*HostView<int>(g_there), 42);  // nothing runs on `other`: read directly

  // Its kernels run like a module's.
  module_ = std::move(here);
  description_ = described;
  uint64_t d = Alloc(7 * sizeof(unsigned));
  LaunchConfig config;
  config.grid = {3, 1, 1};
  ASSERT_OK(Launch(legacy(), kLaunchInfo, config, HostView<unsigned>(d)));
  EXPECT_EQ(Read<unsigned>(d, 1), std::vector<unsigned>{3});
  // Modules first, then the library (GpuBackend contract).
  module_.reset();
  there.reset();
  library.reset();
}

TEST_F(HostBackendTest, LibraryRejectsImagesThatDoNotParse) {
  std::unique_ptr<Library> library;
  ModuleDescription desc;
  const std::vector<uint8_t> garbage = {0x7f, 'E', 'L', 'F', 0, 0, 0, 0};
  EXPECT_FALSE(b().LoadLibrary(garbage, &library, &desc).ok());
  EXPECT_EQ(library, nullptr);
}

// --- occupancy (the model in device_model.h) -----------------------------------

TEST_F(HostBackendTest, OccupancyFollowsTheDocumentedModel) {
  REQUIRE_KERNELS();
  Function* f = Fn(kVadd);
  ASSERT_NE(f, nullptr);
  int blocks = 0;
  // Threads: 2048 per SM, at most 32 blocks.
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 1024, 0, 0, &blocks));
  EXPECT_EQ(blocks, 2);
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 96, 0, 0, &blocks));
  EXPECT_EQ(blocks, 21);  // 64 warps / 3
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 32, 0, 0, &blocks));
  EXPECT_EQ(blocks, 32);
  // Shared memory: 228 KiB per SM, each block 1 KiB more than it asks for.
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 128, 40 * 1024, 0, &blocks));
  EXPECT_EQ(blocks, 5);
  // More than the kernel allows: nothing fits.
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 128, 49 * 1024, 0, &blocks));
  EXPECT_EQ(blocks, 0);
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 2048, 0, 0, &blocks));
  EXPECT_EQ(blocks, 0);
  EXPECT_CUDA_ERROR(b().OccupancyMaxActiveBlocks(*f, 0, 0, 0, &blocks), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CUDA_ERROR(b().OccupancyMaxActiveBlocks(*f, 128, 0, 0x100, &blocks),
                    CUDA_ERROR_INVALID_VALUE);
  ASSERT_OK(
      b().OccupancyMaxActiveBlocks(*f, 128, 0, CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE, &blocks));
  EXPECT_EQ(blocks, 16);
  // The opt-in raises what a block may ask for.
  ASSERT_OK(
      b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 200 * 1024));
  ASSERT_OK(b().OccupancyMaxActiveBlocks(*f, 128, 100 * 1024, 0, &blocks));
  EXPECT_EQ(blocks, 2);

  uint64_t bytes = 0;
  ASSERT_OK(b().OccupancyAvailableDynamicSmem(*f, 2, 256, &bytes));
  EXPECT_EQ(bytes, 228 * 1024 / 2 - 1024);
  ASSERT_OK(b().OccupancyAvailableDynamicSmem(*f, 1, 256, &bytes));
  EXPECT_EQ(bytes, 200u * 1024);  // capped by the kernel's maximum
  ASSERT_OK(b().OccupancyAvailableDynamicSmem(*f, 3, 1024, &bytes));
  EXPECT_EQ(bytes, 0u);  // three blocks of 1024 never fit
  EXPECT_CUDA_ERROR(b().OccupancyAvailableDynamicSmem(*f, 0, 32, &bytes), CUDA_ERROR_INVALID_VALUE);

  LaunchConfig config;
  config.grid = {16, 1, 1};
  config.block = {256, 1, 1};
  int size = 0;
  ASSERT_OK(b().OccupancyMaxPotentialClusterSize(*f, config, &size));
  EXPECT_EQ(size, 8);
  ASSERT_OK(b().SetFunctionAttribute(*f, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1));
  ASSERT_OK(b().OccupancyMaxPotentialClusterSize(*f, config, &size));
  EXPECT_EQ(size, 16);
  config.cluster = {4, 1, 1};
  int clusters = 0;
  ASSERT_OK(b().OccupancyMaxActiveClusters(*f, config, &clusters));
  EXPECT_EQ(clusters, 8 * 16 / 4 * 8);  // 8 blocks of 256 per SM
  config.cluster = {32, 1, 1};
  ASSERT_OK(b().OccupancyMaxActiveClusters(*f, config, &clusters));
  EXPECT_EQ(clusters, 0);
  config.cluster = {2, 0, 1};
  EXPECT_CUDA_ERROR(b().OccupancyMaxActiveClusters(*f, config, &clusters),
                    CUDA_ERROR_INVALID_CLUSTER_SIZE);
  config.cluster = {0, 0, 0};
  config.block = {2048, 1, 1};
  EXPECT_CUDA_ERROR(b().OccupancyMaxPotentialClusterSize(*f, config, &size),
                    CUDA_ERROR_INVALID_VALUE);
}

// --- CUDA arrays, textures and surfaces ------------------------------------------

constexpr char kTexelAt[] = "_Z8texel_atyffPf";
constexpr char kSurfacePut[] = "_Z11surface_putyiifPi";

ArrayDescriptor FloatArray(uint64_t width, uint64_t height, uint64_t depth = 0,
                           unsigned flags = 0) {
  ArrayDescriptor d;
  d.width = width;
  d.height = height;
  d.depth = depth;
  d.format = CU_AD_FORMAT_FLOAT;
  d.channels = 1;
  d.flags = flags;
  return d;
}

float Texel(int x, int y) { return static_cast<float>(10 * y + x); }

TEST_F(HostBackendTest, ArraysAreAccountedDeviceMemoryCopiedIn3D) {
  const uint64_t before = FreeBytes();
  std::unique_ptr<Array> array;
  ASSERT_OK(b().CreateArray(*ctx_, FloatArray(4, 3, 2), &array));
  EXPECT_LT(FreeBytes(), before);
  std::vector<float> volume(24);
  std::iota(volume.begin(), volume.end(), 1.0f);
  Copy2D in;
  in.src_is_host = true;
  in.src_host = HostCopyOf(volume);
  in.src_pitch = 16;
  in.dst_array = array.get();
  in.width_bytes = 16;
  in.height = 3;
  in.depth = 2;
  ASSERT_OK(b().Copy2DAsync(legacy(), std::move(in)));
  // Array -> device memory with rows 32 bytes apart and slices 4 rows apart.
  const uint64_t pitched = Alloc(2 * 4 * 32);
  Copy2D out;
  out.src_array = array.get();
  out.dst_device = pitched;
  out.dst_pitch = 32;
  out.dst_height = 4;
  out.width_bytes = 16;
  out.height = 3;
  out.depth = 2;
  ASSERT_OK(b().Copy2DAsync(legacy(), std::move(out)));
  const std::vector<float> rows = Read<float>(pitched, 2 * 4 * 8);
  for (int z = 0; z < 2; ++z) {
    for (int y = 0; y < 3; ++y) {
      for (int x = 0; x < 4; ++x) {
        EXPECT_EQ(rows[(z * 4 + y) * 8 + x], volume[(z * 3 + y) * 4 + x]);
      }
    }
  }
  // A 2 x 2 block of slice 1 at element (1, 1), to the host.
  auto block = std::make_shared<std::vector<float>>(4);
  Copy2D part;
  part.src_array = array.get();
  part.src_x = 4;
  part.src_y = 1;
  part.src_z = 1;
  part.dst_is_host = true;
  part.dst_host = HostSpanOf(block);
  part.dst_pitch = 8;
  part.width_bytes = 8;
  part.height = 2;
  ASSERT_OK(b().Copy2DAsync(legacy(), std::move(part)));
  ASSERT_OK(Sync(legacy()));
  EXPECT_EQ(*block, (std::vector<float>{volume[17], volume[18], volume[21], volume[22]}));
  // What the host cannot honour is refused; the memory comes back.
  std::unique_ptr<Array> sparse;
  EXPECT_CUDA_ERROR(b().CreateArray(*ctx_, FloatArray(64, 64, 0, CUDA_ARRAY3D_SPARSE), &sparse),
                    CUDA_ERROR_NOT_SUPPORTED);
  array.reset();
  ASSERT_OK(b().MemFree(*ctx_, pitched));
  ASSERT_OK(SyncContext());
  EXPECT_EQ(FreeBytes(), before);
}

// A link's logs stop growing at 1 MiB (the most the session lets a program
// read back), however many refused inputs a client adds: ferryd's memory
// does not follow a loop of bad cuLinkAddData calls.
TEST_F(HostBackendTest, LinkLogsStopGrowingAtTheirBound) {
  constexpr uint64_t kLogBound = 1 << 20;
  std::unique_ptr<Link> link;
  ASSERT_OK(b().CreateLink(*ctx_, {{CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, 8 * kLogBound}}, {}, &link));
  const std::string name(1000, 'n');
  const std::vector<uint8_t> garbage(64, 0xEE);
  LinkReport report;
  for (int i = 0; i < 1500; ++i) {  // ~1.5 MB of refusal lines
    ASSERT_FALSE(b().AddLinkInput(*link, CU_JIT_INPUT_PTX, garbage, name, {}, &report).ok());
  }
  EXPECT_GT(report.error_log.size(), kLogBound / 2);
  EXPECT_LE(report.error_log.size(), kLogBound);
}

TEST_F(HostBackendTest, TextureObjectsAreSampledOnlyInTheirContext) {
  REQUIRE_KERNELS();
  std::unique_ptr<Array> array;
  ASSERT_OK(b().CreateArray(*ctx_, FloatArray(4, 4), &array));
  std::vector<float> image;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) image.push_back(Texel(x, y));
  }
  Copy2D in;
  in.src_is_host = true;
  in.src_host = HostCopyOf(image);
  in.src_pitch = 16;
  in.dst_array = array.get();
  in.width_bytes = 16;
  in.height = 4;
  ASSERT_OK(b().Copy2DAsync(legacy(), std::move(in)));
  TextureResource resource;
  resource.array = array.get();
  TextureDescription texture;
  texture.address_mode = {CU_TR_ADDRESS_MODE_CLAMP, CU_TR_ADDRESS_MODE_CLAMP,
                          CU_TR_ADDRESS_MODE_CLAMP};
  std::unique_ptr<TextureObject> tex;
  ASSERT_OK(b().CreateTextureObject(*ctx_, resource, texture, nullptr, &tex));
  const uint64_t value = tex->value();
  ASSERT_NE(value, 0u);
  const uint64_t out = Alloc(5 * sizeof(float));
  auto sample = [&](Stream& stream, float x, float y, Module& module) {
    Function* f = nullptr;
    EXPECT_OK(b().GetFunction(module, kTexelAt, &f));
    EXPECT_OK(
        b().Launch(stream, *f, LaunchConfig{}, Pack(kTexelAt, value, x, y, HostView<float>(out))));
    EXPECT_OK(Sync(stream));
    return std::make_pair(HostView<float>(out)[0], static_cast<int>(HostView<float>(out)[4]));
  };
  EXPECT_EQ(sample(legacy(), 2.5f, 1.5f, *module_), std::make_pair(Texel(2, 1), FERRY_HOST_OK));
  EXPECT_EQ(sample(legacy(), 9.0f, -2.0f, *module_), std::make_pair(Texel(3, 0), FERRY_HOST_OK));

  // The same value in a launch of another context (as another session's
  // would be) names nothing.
  std::unique_ptr<Context> other;
  ASSERT_OK(b().CreateContext(0, 0, &other));
  std::unique_ptr<Module> other_module;
  ModuleDescription other_description;
  ASSERT_OK(b().LoadModule(*other, ReadFile(FERRY_TEST_FATBIN), &other_module, &other_description));
  EXPECT_EQ(sample(b().LegacyStream(*other), 2.5f, 1.5f, *other_module).second,
            FERRY_HOST_BAD_OBJECT);
  other_module.reset();
  other.reset();
  // Nor does a destroyed object.
  tex.reset();
  EXPECT_EQ(sample(legacy(), 2.5f, 1.5f, *module_).second, FERRY_HOST_BAD_OBJECT);
  // Views are refused.
  TextureView view;
  EXPECT_CUDA_ERROR(b().CreateTextureObject(*ctx_, resource, texture, &view, &tex),
                    CUDA_ERROR_NOT_SUPPORTED);
}

// A texture object over virtual memory (a CUDA backend chained over this
// one allocates so) reads a view of its own: unmapping the memory later
// leaves the object's texels readable.
TEST_F(HostBackendTest, TextureObjectsOverMappedMemoryOutliveTheMapping) {
  REQUIRE_KERNELS();
  uint64_t page = 0;
  ASSERT_OK(b().AllocationGranularity(0, /*recommended=*/true, &page));
  uint64_t base = 0;
  ASSERT_OK(b().ReserveAddressRange(page, 0, 0, &base));
  std::unique_ptr<PhysicalMemory> memory;
  ASSERT_OK(b().CreatePhysicalMemory(0, page, &memory));
  ASSERT_OK(b().MapMemory(base, page, *memory, 0));
  const MemoryAccess read_write{0, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  ASSERT_OK(b().SetMemoryAccess(*tenant_, base, page, {&read_write, 1}));
  // 4x4 floats, rows 64 bytes apart, starting 128 bytes into the page.
  std::vector<float> rows(4 * 16, 0.0f);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) rows[y * 16 + x] = Texel(x, y);
  }
  Write(base + 128, rows);
  ASSERT_OK(Sync(legacy()));
  TextureResource resource;
  resource.kind = TextureResource::Kind::kPitch2D;
  resource.dev_ptr = base + 128;
  resource.format = CU_AD_FORMAT_FLOAT;
  resource.width = 4;
  resource.height = 4;
  resource.pitch_bytes = 64;
  TextureDescription texture;
  texture.address_mode = {CU_TR_ADDRESS_MODE_CLAMP, CU_TR_ADDRESS_MODE_CLAMP,
                          CU_TR_ADDRESS_MODE_CLAMP};
  std::unique_ptr<TextureObject> tex;
  ASSERT_OK(b().CreateTextureObject(*ctx_, resource, texture, nullptr, &tex));
  // Past the mapping's end: refused.
  TextureResource too_long = resource;
  too_long.dev_ptr = base + page - 64;
  std::unique_ptr<TextureObject> refused;
  EXPECT_CUDA_ERROR(b().CreateTextureObject(*ctx_, too_long, texture, nullptr, &refused),
                    CUDA_ERROR_INVALID_VALUE);

  ASSERT_OK(b().UnmapMemory(*tenant_, base, page));
  memory.reset();
  ASSERT_OK(Released());
  const uint64_t out = Alloc(5 * sizeof(float));
  Function* f = nullptr;
  ASSERT_OK(b().GetFunction(*module_, kTexelAt, &f));
  ASSERT_OK(b().Launch(legacy(), *f, LaunchConfig{},
                       Pack(kTexelAt, tex->value(), 2.5f, 3.5f, HostView<float>(out))));
  ASSERT_OK(Sync(legacy()));
  EXPECT_EQ(HostView<float>(out)[0], Texel(2, 3));
  EXPECT_EQ(static_cast<int>(HostView<float>(out)[4]), FERRY_HOST_OK);
  tex.reset();
  ASSERT_OK(b().FreeAddressRange(base, page));
}

TEST_F(HostBackendTest, LinearFilteringWeighsTheTexelsAroundTheSamplePoint) {
  std::vector<float> image;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) image.push_back(Texel(x, y));
  }
  host_internal::TexelLayout layout;
  layout.base = reinterpret_cast<uint8_t*>(image.data());
  layout.width = layout.height = 4;
  layout.row_pitch = 16;
  layout.slice_pitch = 64;
  layout.format = CU_AD_FORMAT_FLOAT;
  layout.element_bytes = 4;
  layout.dimensions = 2;
  TextureDescription texture;
  texture.filter_mode = CU_TR_FILTER_MODE_LINEAR;
  texture.address_mode = {CU_TR_ADDRESS_MODE_CLAMP, CU_TR_ADDRESS_MODE_BORDER,
                          CU_TR_ADDRESS_MODE_CLAMP};
  texture.border_color = {-100, 0, 0, 0};
  auto sample = [&](float x, float y) {
    float out[4];
    host_internal::SampleLinear(layout, texture, x, y, 0, out);
    return out[0];
  };
  // Texel centres read the texel; between them the texel values, which
  // grow linearly here, interpolate exactly.
  EXPECT_FLOAT_EQ(sample(1.5f, 2.5f), Texel(1, 2));
  EXPECT_FLOAT_EQ(sample(2.25f, 1.75f), 10 * 1.25f + 1.75f);
  // Clamped on x: left of the first centre reads the first column.
  EXPECT_FLOAT_EQ(sample(0.2f, 1.5f), Texel(0, 1));
  // Bordered on y: above the first centre, the border's color mixes in.
  EXPECT_FLOAT_EQ(sample(1.5f, 0.25f), 0.25f * -100 + 0.75f * Texel(1, 0));
  // Floats can be filtered, integers read as integers cannot.
  std::unique_ptr<Array> array;
  ASSERT_OK(b().CreateArray(*ctx_, FloatArray(4, 4), &array));
  TextureResource resource;
  resource.array = array.get();
  std::unique_ptr<TextureObject> tex;
  ASSERT_OK(b().CreateTextureObject(*ctx_, resource, texture, nullptr, &tex));
  std::unique_ptr<Array> integers;
  ArrayDescriptor d = FloatArray(4, 4);
  d.format = CU_AD_FORMAT_SIGNED_INT32;
  ASSERT_OK(b().CreateArray(*ctx_, d, &integers));
  resource.array = integers.get();
  EXPECT_CUDA_ERROR(b().CreateTextureObject(*ctx_, resource, texture, nullptr, &tex),
                    CUDA_ERROR_INVALID_VALUE);
}

TEST_F(HostBackendTest, SurfaceObjectsWriteTheirArrayWithinItsExtent) {
  REQUIRE_KERNELS();
  std::unique_ptr<Array> plain, writable;
  ASSERT_OK(b().CreateArray(*ctx_, FloatArray(4, 4), &plain));
  ASSERT_OK(b().CreateArray(*ctx_, FloatArray(4, 4, 0, CUDA_ARRAY3D_SURFACE_LDST), &writable));
  TextureResource resource;
  resource.array = plain.get();
  std::unique_ptr<TextureObject> surface;
  EXPECT_CUDA_ERROR(b().CreateSurfaceObject(*ctx_, resource, &surface), CUDA_ERROR_INVALID_VALUE);
  resource.array = writable.get();
  ASSERT_OK(b().CreateSurfaceObject(*ctx_, resource, &surface));
  const uint64_t status = Alloc(sizeof(int));
  auto put = [&](uint64_t object, int x_bytes, int y, float value) {
    EXPECT_OK(Launch1(legacy(), kSurfacePut, object, x_bytes, y, value, HostView<int>(status)));
    EXPECT_OK(Sync(legacy()));
    return *HostView<int>(status);
  };
  EXPECT_EQ(put(surface->value(), 8, 2, 7.5f), FERRY_HOST_OK);
  EXPECT_EQ(put(surface->value(), 16, 0, 1.0f), FERRY_HOST_OUT_OF_RANGE);
  EXPECT_EQ(put(surface->value(), 0, 4, 1.0f), FERRY_HOST_OUT_OF_RANGE);
  auto texels = std::make_shared<std::vector<float>>(16, -1.0f);
  Copy2D read;
  read.src_array = writable.get();
  read.dst_is_host = true;
  read.dst_host = HostSpanOf(texels);
  read.dst_pitch = 16;
  read.width_bytes = 16;
  read.height = 4;
  ASSERT_OK(b().Copy2DAsync(legacy(), std::move(read)));
  ASSERT_OK(Sync(legacy()));
  for (int i = 0; i < 16; ++i) EXPECT_EQ((*texels)[i], i == 2 * 4 + 2 ? 7.5f : 0.0f) << i;
  // A texture object is not a surface.
  TextureDescription texture;
  std::unique_ptr<TextureObject> tex;
  ASSERT_OK(b().CreateTextureObject(*ctx_, resource, texture, nullptr, &tex));
  EXPECT_EQ(put(tex->value(), 0, 0, 1.0f), FERRY_HOST_BAD_OBJECT);
}

}  // namespace
}  // namespace ferry::backend
