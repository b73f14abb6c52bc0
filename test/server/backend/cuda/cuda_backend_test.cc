// Tests for server/backend/cuda that need no GPU: the driver loader against missing
// files, the toolkit's stub library, fake drivers (ferry's marker, no
// devices, missing entry points, an older driver), and CudaBackend's call
// sequences against a full fake driver (fake_driver.cc) whose "GPU" is a
// host thread that can be paused.
//
// Thread-safety: each test owns its backend; the fake's global switches are
// reset in TearDown.
#include "server/backend/cuda/cuda_backend.h"

#include <cuda.h>
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/backend/cuda/driver_api.h"
#include "server/backend/cuda/waiter_pool.h"

namespace ferry::backend {
namespace {

// How long a test gives something that must NOT happen (a callback while the
// fake driver is paused, a destroy under a pending wait) the chance to happen
// wrongly. A check of absence, not synchronization: every positive outcome is
// waited for with a deadline.
constexpr std::chrono::milliseconds kSettle{50};

using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr auto kTimeout = std::chrono::seconds(10);

// --- helpers ----------------------------------------------------------------

// A test hook of a fake driver the backend already loaded (RTLD_NOLOAD: the
// same instance, never a second copy).
template <typename Fn>
Fn Hook(const char* library, const char* name) {
  void* handle = dlopen(library, RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return nullptr;
  return reinterpret_cast<Fn>(dlsym(handle, name));
}

// Collects one Completion, remembering the thread it ran on.
class Awaited {
 public:
  Completion Callback() {
    auto state = state_;
    return [state](Status status) {
      state->thread = std::this_thread::get_id();
      state->promise.set_value(std::move(status));
    };
  }
  bool Ready() { return future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  Status Get() {
    if (future_.wait_for(kTimeout) != std::future_status::ready) {
      return Status::Internal("Completion never ran");
    }
    return future_.get();
  }
  std::thread::id thread() const { return state_->thread; }

 private:
  struct State {
    std::promise<Status> promise;
    std::thread::id thread;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
  std::future<Status> future_ = state_->promise.get_future();
};

HostBytes Bytes(std::vector<uint8_t> data, std::weak_ptr<const void>* watch = nullptr) {
  auto owner = std::make_shared<std::vector<uint8_t>>(std::move(data));
  if (watch != nullptr) *watch = owner;
  return HostBytes{owner, owner->data(), owner->size()};
}

MutableHostBytes Buffer(size_t size, std::shared_ptr<std::vector<uint8_t>>* keep) {
  *keep = std::make_shared<std::vector<uint8_t>>(size, 0xEE);
  return MutableHostBytes{*keep, (*keep)->data(), size};
}

std::vector<uint8_t> Iota(size_t size, uint8_t first = 0) {
  std::vector<uint8_t> v(size);
  for (size_t i = 0; i < size; ++i) v[i] = static_cast<uint8_t>(first + i);
  return v;
}

// --- names and tables -------------------------------------------------------

TEST(DriverApiTest, EntryPointsUseTheVersionsCudaHeaderDeclares) {
  // The CUDA 13.0 mapping. If a new header changes one, the table follows
  // by construction; this test shows the change for review.
  std::map<std::string, std::string> names;
  for (const auto& name : cuda_internal::EntryPointNames()) names[name.base] = name.export_name;
  EXPECT_EQ(names["cuCtxCreate"], "cuCtxCreate_v4");
  EXPECT_EQ(names["cuCtxDestroy"], "cuCtxDestroy_v2");
  EXPECT_EQ(names["cuCtxPopCurrent"], "cuCtxPopCurrent_v2");
  EXPECT_EQ(names["cuEventElapsedTime"], "cuEventElapsedTime_v2");
  EXPECT_EQ(names["cuEventDestroy"], "cuEventDestroy_v2");
  EXPECT_EQ(names["cuStreamDestroy"], "cuStreamDestroy_v2");
  EXPECT_EQ(names["cuDeviceGetUuid"], "cuDeviceGetUuid_v2");
  EXPECT_EQ(names["cuDeviceTotalMem"], "cuDeviceTotalMem_v2");
  EXPECT_EQ(names["cuMemAlloc"], "cuMemAlloc_v2");
  EXPECT_EQ(names["cuMemAllocPitch"], "cuMemAllocPitch_v2");
  EXPECT_EQ(names["cuMemFree"], "cuMemFree_v2");
  EXPECT_EQ(names["cuMemGetInfo"], "cuMemGetInfo_v2");
  EXPECT_EQ(names["cuMemcpyHtoDAsync"], "cuMemcpyHtoDAsync_v2");
  EXPECT_EQ(names["cuMemcpyDtoHAsync"], "cuMemcpyDtoHAsync_v2");
  EXPECT_EQ(names["cuMemcpyDtoDAsync"], "cuMemcpyDtoDAsync_v2");
  EXPECT_EQ(names["cuMemcpy2DAsync"], "cuMemcpy2DAsync_v2");
  EXPECT_EQ(names["cuModuleGetGlobal"], "cuModuleGetGlobal_v2");
  // Legacy-stream (not _ptsz) variants of the stream functions.
  EXPECT_EQ(names["cuMemsetD8Async"], "cuMemsetD8Async");
  EXPECT_EQ(names["cuStreamQuery"], "cuStreamQuery");
  EXPECT_EQ(names["cuLaunchKernelEx"], "cuLaunchKernelEx");
  EXPECT_EQ(names["cuStreamAddCallback"], "cuStreamAddCallback");
  EXPECT_STREQ(FERRY_CUDA_EXPORT_NAME(cuGetProcAddress), "cuGetProcAddress_v2");
}

TEST(DriverApiTest, NamesResultsWithoutTheDriver) {
  EXPECT_STREQ(cuda_internal::CuResultName(CUDA_ERROR_STUB_LIBRARY), "CUDA_ERROR_STUB_LIBRARY");
  EXPECT_STREQ(cuda_internal::CuResultName(CUDA_ERROR_ILLEGAL_ADDRESS),
               "CUDA_ERROR_ILLEGAL_ADDRESS");
  EXPECT_STREQ(cuda_internal::CuResultName(static_cast<CUresult>(123456)),
               "CUresult (unknown value)");
}

// --- loading the driver -----------------------------------------------------

TEST(CudaBackendLoadTest, MissingFileNamesThePath) {
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = "/nonexistent/ferry/libcuda.so.1"}, &backend);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/ferry/libcuda.so.1"));
  EXPECT_EQ(backend, nullptr);
}

TEST(CudaBackendLoadTest, ToolkitStubFailsCleanly) {
  if (access(CUDA_STUB_PATH, F_OK) != 0) GTEST_SKIP() << "no stub at " << CUDA_STUB_PATH;
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = CUDA_STUB_PATH}, &backend);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kCuda);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_STUB_LIBRARY);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(CUDA_STUB_PATH), HasSubstr("cuInit"),
                                      HasSubstr("CUDA_ERROR_STUB_LIBRARY")));
}

TEST(CudaBackendLoadTest, DefaultSearchFailsCleanlyWithoutADriver) {
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({}, &backend);
  if (status.ok()) GTEST_SKIP() << "this machine has a driver with devices";
  // Either nothing was found, or the system driver said why it cannot run.
  EXPECT_THAT(status.message(),
              AnyOf(StartsWith("no NVIDIA driver found"), HasSubstr("CUDA driver /")));
}

TEST(CudaBackendLoadTest, RefusesFerrysOwnStandIn) {
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = FAKE_FERRY_PATH}, &backend);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr(FAKE_FERRY_PATH), HasSubstr("cuFerryClientIdentity")));
  // Refused before any of its entry points ran. (dlclose may leave a C++
  // library mapped, so ask it rather than the loader.)
  if (auto init_calls = Hook<int (*)()>(FAKE_FERRY_PATH, "fake_init_calls")) {
    EXPECT_EQ(init_calls(), 0);
  }
}

TEST(CudaBackendLoadTest, SearchSkipsAbsentFilesAndFerrysStandIn) {
  std::unique_ptr<cuda_internal::DriverApi> api;
  Status status = cuda_internal::LoadDriver({"/nonexistent/libcuda.so.1", FAKE_FERRY_PATH},
                                            /*explicit_path=*/false, &api);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(
      status.message(),
      AllOf(StartsWith("no NVIDIA driver found"), HasSubstr("/nonexistent/libcuda.so.1 (absent)"),
            HasSubstr(std::string(FAKE_FERRY_PATH) + " (ferry's stand-in, skipped)")));
}

TEST(CudaBackendLoadTest, SearchGoesPastFerrysStandInToTheNextDriver) {
  std::unique_ptr<cuda_internal::DriverApi> api;
  Status status = cuda_internal::LoadDriver({FAKE_FERRY_PATH, FAKE_NODEV_PATH},
                                            /*explicit_path=*/false, &api);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(FAKE_NODEV_PATH));  // it reached the second
}

// After the tests that expect ferry's stand-in never to have been initialized.
TEST(CudaBackendLoadTest, FerrysStandInLoadsWhenAllowedForTests) {
  // A chain (tests only): ferryd's CUDA backend on ferry's own libcuda.so.1.
  std::unique_ptr<GpuBackend> backend;
  Status status =
      CreateCudaBackend({.driver_path = FAKE_FERRY_PATH, .allow_ferry_driver = true}, &backend);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(backend->Name(), "cuda");
  EXPECT_EQ(Hook<int (*)()>(FAKE_FERRY_PATH, "fake_init_calls")(), 1);
}

TEST(CudaBackendLoadTest, ZeroDevicesIsAClearError) {
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = FAKE_NODEV_PATH}, &backend);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_NO_DEVICE);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr(FAKE_NODEV_PATH), HasSubstr("reports no CUDA devices")));
}

TEST(CudaBackendLoadTest, MissingEntryPointIsNamed) {
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = FAKE_PARTIAL_PATH}, &backend);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr(FAKE_PARTIAL_PATH), HasSubstr("lacks cuDeviceGet")));
}

TEST(CudaBackendLoadTest, AsksCuGetProcAddressForEachListedVersionAndLegacyStreams) {
  std::unique_ptr<GpuBackend> backend;
  ASSERT_TRUE(CreateCudaBackend({.driver_path = FAKE_FULL_PATH}, &backend).ok());
  auto calls = Hook<int (*)()>(FAKE_FULL_PATH, "fake_proc_address_calls");
  auto version = Hook<int (*)()>(FAKE_FULL_PATH, "fake_last_proc_version");
  auto flags = Hook<unsigned long long (*)()>(FAKE_FULL_PATH, "fake_last_proc_flags");
  auto unimplemented = Hook<int (*)()>(FAKE_FULL_PATH, "fake_unimplemented_variant_requests");
  ASSERT_NE(calls, nullptr);
  EXPECT_GE(calls(), static_cast<int>(cuda_internal::EntryPointNames().size()));
  // The last entry point resolved is the last optional one, at its own
  // version (not CUDA_VERSION: see driver_entry_points.h).
  EXPECT_EQ(version(), cuda_internal::kVersion_cuCtxFromGreenCtx);
  EXPECT_EQ(flags(), static_cast<unsigned long long>(CU_GET_PROC_ADDRESS_LEGACY_STREAM));
  // Every variant the backend asked for is one the fake implements.
  EXPECT_EQ(unimplemented(), 0);
  EXPECT_EQ(backend->Name(), "cuda");
  EXPECT_EQ(backend->DriverVersion(), 13000);
}

TEST(DriverApiTest, CtxSynchronizeIsTheVariantWithoutAContext) {
  // CUDA 13 added cuCtxSynchronize_v2(CUcontext), which cuGetProcAddress
  // returns for version 13000: the backend's table must ask for 2000.
  EXPECT_EQ(cuda_internal::kVersion_cuCtxSynchronize, 2000);
  std::map<std::string, int> versions;
  for (const auto& name : cuda_internal::EntryPointNames()) versions[name.base] = name.version;
  EXPECT_EQ(versions["cuCtxSynchronize"], 2000);
  EXPECT_EQ(versions["cuCtxCreate"], 12050);
  EXPECT_EQ(versions["cuEventElapsedTime"], 12080);
}

TEST(FakeDriverProcAddressTest, AnswersLikeTheCuda13Driver) {
  // The fake returns the newest variant at or below the version asked for,
  // as NVIDIA's driver does, so it cannot hide a table that asks for the
  // wrong one.
  std::unique_ptr<GpuBackend> backend;  // loads the fake (cuInit) first
  ASSERT_TRUE(CreateCudaBackend({.driver_path = FAKE_FULL_PATH}, &backend).ok());
  auto get = Hook<decltype(&::cuGetProcAddress)>(FAKE_FULL_PATH, "cuGetProcAddress_v2");
  ASSERT_NE(get, nullptr);
  void* old_variant = nullptr;
  void* new_variant = nullptr;
  CUdriverProcAddressQueryResult query = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  ASSERT_EQ(get("cuCtxSynchronize", &old_variant, 12090, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &query),
            CUDA_SUCCESS);
  EXPECT_EQ(query, CU_GET_PROC_ADDRESS_SUCCESS);
  ASSERT_EQ(get("cuCtxSynchronize", &new_variant, 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &query),
            CUDA_SUCCESS);
  EXPECT_EQ(old_variant, Hook<void*>(FAKE_FULL_PATH, "cuCtxSynchronize"));
  EXPECT_EQ(new_variant, Hook<void*>(FAKE_FULL_PATH, "cuCtxSynchronize_v2"));
  // Called through the right type with a value that is no context, the new
  // variant says so, as the driver would.
  auto sync = reinterpret_cast<PFN_cuCtxSynchronize_v13000>(new_variant);
  int not_a_context = 0;
  EXPECT_EQ(sync(reinterpret_cast<CUcontext>(&not_a_context)), CUDA_ERROR_INVALID_CONTEXT);
  // Too old a version for a name: not sufficient.
  void* none = nullptr;
  EXPECT_NE(get("cuLibraryLoadData", &none, 11080, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &query),
            CUDA_SUCCESS);
  EXPECT_EQ(query, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  EXPECT_EQ(none, nullptr);
}

TEST(CudaBackendLoadTest, OlderDriverIsBoundByVersionedExportNames) {
  // The loader uses cuGetProcAddress only on a driver at least as new as the
  // header; an older one is bound by dlsym of the versioned export names,
  // which fix the same ABI.
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = FAKE_OLD_PATH}, &backend);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(backend->DriverVersion(), 12080);
  EXPECT_EQ(Hook<int (*)()>(FAKE_OLD_PATH, "fake_proc_address_calls")(), 0);
}

// --- the waiter pool ----------------------------------------------------------

TEST(WaiterPoolTest, BoundsThreadsAndRunsEveryJob) {
  std::atomic<int> ran{0};
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  {
    cuda_internal::WaiterPool pool(2);
    for (int i = 0; i < 6; ++i) {
      pool.Submit([&ran, gate] {
        gate.wait();
        ++ran;
      });
    }
    EXPECT_LE(pool.TEST_thread_count(), 2u);
    release.set_value();
  }  // the destructor runs what is queued, then joins
  EXPECT_EQ(ran.load(), 6);
}

TEST(WaiterPoolTest, JobsMaySubmitJobs) {
  std::atomic<int> ran{0};
  {
    cuda_internal::WaiterPool pool(1);
    pool.Submit([&] {
      ++ran;
      pool.Submit([&] { ++ran; });
    });
  }
  EXPECT_EQ(ran.load(), 2);
}

// --- CudaBackend on the full fake driver --------------------------------------

class FakeDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Status status =
        CreateCudaBackend({.driver_path = FAKE_FULL_PATH, .max_waiter_threads = 4}, &backend_);
    ASSERT_TRUE(status.ok()) << status.ToString();
    set_paused_ = Hook<void (*)(bool)>(FAKE_FULL_PATH, "fake_set_paused");
    set_sticky_ = Hook<void (*)(int)>(FAKE_FULL_PATH, "fake_set_sticky_error");
    set_drop_ = Hook<void (*)(bool)>(FAKE_FULL_PATH, "fake_set_drop_callbacks");
    live_ = Hook<int (*)()>(FAKE_FULL_PATH, "fake_live_objects");
    current_ = Hook<void* (*)()>(FAKE_FULL_PATH, "fake_current_context");
    last_launch_ = Hook<void (*)(unsigned*, size_t*)>(FAKE_FULL_PATH, "fake_last_launch");
    ASSERT_NE(set_paused_, nullptr);
    ASSERT_NE(last_launch_, nullptr);
    ASSERT_EQ(live_(), 0);
    status = backend_->CreateContext(0, 0, &ctx_);
    ASSERT_TRUE(status.ok()) << status.ToString();
  }
  void TearDown() override {
    set_paused_(false);
    set_sticky_(CUDA_SUCCESS);
    set_drop_(false);
    ctx_.reset();
    backend_.reset();
    EXPECT_EQ(live_(), 0) << "the fake driver still holds objects";
    EXPECT_EQ(Hook<int (*)()>(FAKE_FULL_PATH, "fake_pinned_buffers")(), 0)
        << "page-locked staging buffers outlived their contexts";
  }

  Stream& legacy() { return backend_->LegacyStream(*ctx_); }

  // Waits until the stream's work (and the callbacks before it) has run.
  Status Drain(Stream& stream) {
    Awaited idle;
    backend_->WhenStreamIdle(stream, idle.Callback());
    return idle.Get();
  }

  std::unique_ptr<Module> LoadFakeModule(ModuleDescription* description = nullptr) {
    static const char kImage[] = "FAKEMOD image";
    std::unique_ptr<Module> module;
    ModuleDescription ignored;
    Status status = backend_->LoadModule(
        *ctx_, std::span(reinterpret_cast<const uint8_t*>(kImage), sizeof(kImage)), &module,
        description != nullptr ? description : &ignored);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return module;
  }

  std::unique_ptr<GpuBackend> backend_;
  std::unique_ptr<Context> ctx_;
  void (*set_paused_)(bool) = nullptr;
  void (*set_sticky_)(int) = nullptr;
  void (*set_drop_)(bool) = nullptr;
  int (*live_)() = nullptr;
  void* (*current_)() = nullptr;
  void (*last_launch_)(unsigned*, size_t*) = nullptr;
};

TEST_F(FakeDriverTest, DescribesEveryDevice) {
  const auto& devices = backend_->Devices();
  ASSERT_EQ(devices.size(), 2u);
  for (int d = 0; d < 2; ++d) {
    const DeviceDescription& device = devices[d];
    EXPECT_EQ(device.name, "Fake GPU " + std::to_string(d));
    EXPECT_EQ(device.uuid[0], 16 * d);
    EXPECT_EQ(device.uuid[15], 15 + 16 * d);
    EXPECT_EQ(device.total_memory, (uint64_t{2} << 30) + d);
    ASSERT_EQ(device.attributes.size(), static_cast<size_t>(CU_DEVICE_ATTRIBUTE_MAX));
    EXPECT_EQ(device.attributes[0], 0);  // rejected by the driver
    EXPECT_EQ(device.attributes[CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK],
              10 * CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK + d);
    EXPECT_EQ(device.attributes[120], 0);  // rejected by the driver
    EXPECT_EQ(device.pci_bus, 10 * CU_DEVICE_ATTRIBUTE_PCI_BUS_ID + d);
    EXPECT_EQ(device.pci_device, 10 * CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID + d);
    EXPECT_EQ(device.pci_domain, 10 * CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID + d);
  }
}

TEST_F(FakeDriverTest, ContextsAreNotLeftCurrent) {
  // SetUp created ctx_ on this thread and made no other call.
  EXPECT_EQ(current_(), nullptr);
  std::unique_ptr<Context> second;
  ASSERT_TRUE(backend_->CreateContext(1, 0, &second).ok());
  EXPECT_EQ(current_(), nullptr);
  std::unique_ptr<Context> bad;
  Status status = backend_->CreateContext(2, 0, &bad);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_INVALID_DEVICE);
}

TEST_F(FakeDriverTest, CopiesKeepHostBuffersUntilTheyHaveRun) {
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &dptr).ok());
  set_paused_(true);  // the "GPU" runs nothing until released
  std::weak_ptr<const void> source;
  ASSERT_TRUE(backend_->CopyHostToDevice(legacy(), dptr, Bytes(Iota(64), &source)).ok());
  std::shared_ptr<std::vector<uint8_t>> out;
  ASSERT_TRUE(backend_->CopyDeviceToHost(legacy(), Buffer(64, &out), dptr).ok());
  std::weak_ptr<std::vector<uint8_t>> watch_out = out;
  out.reset();
  EXPECT_FALSE(source.expired()) << "the source was released before the copy ran";
  EXPECT_FALSE(watch_out.expired()) << "the destination was released before the copy ran";
  EXPECT_EQ(backend_->QueryStream(legacy()).cuda_result(), CUDA_ERROR_NOT_READY);
  set_paused_(false);
  ASSERT_TRUE(Drain(legacy()).ok());
  EXPECT_TRUE(source.expired());
  EXPECT_TRUE(watch_out.expired());
  // The Completion ran inside the last callback, which may not have returned
  // yet; the stream is idle to a query all the same (nothing queued since).
  Status query = backend_->QueryStream(legacy());
  EXPECT_TRUE(query.ok()) << query.ToString();
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, CopyAndMemsetRoundTrip) {
  uint64_t a = 0, b = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &a).ok());
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &b).ok());
  ASSERT_TRUE(backend_->CopyHostToDevice(legacy(), a, Bytes(Iota(64))).ok());
  ASSERT_TRUE(backend_->CopyDeviceToDevice(legacy(), b, a, 64).ok());
  ASSERT_TRUE(backend_->Memset(legacy(), b, 0, 0xAB, 1, 4, 1).ok());
  ASSERT_TRUE(backend_->Memset(legacy(), b + 4, 0, 0xBEEF, 2, 2, 1).ok());
  ASSERT_TRUE(backend_->Memset(legacy(), b + 8, 0, 0x01020304, 4, 1, 1).ok());
  EXPECT_EQ(backend_->Memset(legacy(), b, 0, 0, 3, 1, 1).code(), StatusCode::kInvalidArgument);
  std::shared_ptr<std::vector<uint8_t>> out;
  ASSERT_TRUE(backend_->CopyDeviceToHost(legacy(), Buffer(64, &out), b).ok());
  ASSERT_TRUE(Drain(legacy()).ok());
  std::vector<uint8_t> expected = Iota(64);
  for (int i = 0; i < 4; ++i) expected[i] = 0xAB;
  const uint16_t beef[2] = {0xBEEF, 0xBEEF};
  std::memcpy(&expected[4], beef, 4);
  const uint32_t word = 0x01020304;
  std::memcpy(&expected[8], &word, 4);
  EXPECT_EQ(*out, expected);
  uint64_t free_bytes = 0, total = 0;
  ASSERT_TRUE(backend_->MemGetInfo(*ctx_, &free_bytes, &total).ok());
  EXPECT_EQ(total, uint64_t{2} << 30);
  ASSERT_TRUE(backend_->MemFree(*ctx_, a).ok());
  ASSERT_TRUE(backend_->MemFree(*ctx_, b).ok());
}

TEST_F(FakeDriverTest, PitchedMemoryAnd2DCopies) {
  uint64_t dptr = 0, pitch = 0;
  ASSERT_TRUE(backend_->MemAllocPitch(*ctx_, 100, 3, 4, &dptr, &pitch).ok());
  EXPECT_EQ(pitch, 512u);  // chosen by the backend (parkable allocations)
  ASSERT_TRUE(backend_->Memset(legacy(), dptr, pitch, 7, 1, 100, 3).ok());
  // Host rows 100 bytes apart -> device, then back into rows 120 apart.
  Copy2D up;
  up.src_is_host = true;
  up.src_host = Bytes(Iota(300));
  up.src_pitch = 100;
  up.dst_device = dptr;
  up.dst_pitch = pitch;
  up.width_bytes = 50;
  up.height = 3;
  ASSERT_TRUE(backend_->Copy2DAsync(legacy(), up).ok());
  Copy2D down;
  down.src_device = dptr;
  down.src_pitch = pitch;
  down.dst_is_host = true;
  std::shared_ptr<std::vector<uint8_t>> out;
  down.dst_host = Buffer(360, &out);
  down.dst_pitch = 120;
  down.width_bytes = 100;
  down.height = 3;
  ASSERT_TRUE(backend_->Copy2DAsync(legacy(), down).ok());
  ASSERT_TRUE(Drain(legacy()).ok());
  for (int row = 0; row < 3; ++row) {
    for (int x = 0; x < 100; ++x) {
      const uint8_t expected = x < 50 ? static_cast<uint8_t>(row * 100 + x) : 7;
      ASSERT_EQ((*out)[row * 120 + x], expected) << "row " << row << " x " << x;
    }
    // The bytes between the rows are not the copy's (staging lands rows only).
    if (row < 2) {
      for (int x = 100; x < 120; ++x) ASSERT_EQ((*out)[row * 120 + x], 0xEE) << "gap " << row;
    }
  }
  // A host buffer too small for its rows is refused before the driver sees it.
  Copy2D bad = down;
  bad.dst_host = Buffer(300, &out);
  EXPECT_EQ(backend_->Copy2DAsync(legacy(), bad).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

// CUDA arrays, textures and surfaces: a driver without their entry points
// (the fake one) still loads, and each of them answers NOT_SUPPORTED, a 3D
// copy included, before the driver is called.
TEST_F(FakeDriverTest, ArraysTexturesAnd3DCopiesNeedTheirEntryPoints) {
  ArrayDescriptor descriptor;
  descriptor.width = 4;
  descriptor.format = CU_AD_FORMAT_FLOAT;
  std::unique_ptr<Array> array;
  EXPECT_EQ(backend_->CreateArray(*ctx_, descriptor, &array).cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);
  std::unique_ptr<MipmappedArray> mipmapped;
  EXPECT_EQ(backend_->CreateMipmappedArray(*ctx_, descriptor, 1, &mipmapped).cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &dptr).ok());
  TextureResource resource;
  resource.kind = TextureResource::Kind::kLinear;
  resource.dev_ptr = dptr;
  resource.format = CU_AD_FORMAT_FLOAT;
  resource.size_bytes = 64;
  std::unique_ptr<TextureObject> object;
  EXPECT_EQ(backend_->CreateTextureObject(*ctx_, resource, TextureDescription{}, nullptr, &object)
                .cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);
  Copy2D volume;
  volume.src_device = dptr;
  volume.src_pitch = 8;
  volume.dst_device = dptr + 32;
  volume.dst_pitch = 8;
  volume.width_bytes = 8;
  volume.height = 2;
  volume.depth = 2;
  EXPECT_EQ(backend_->Copy2DAsync(legacy(), volume).cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, LoadsModulesAndLaunchesFromThePackedBuffer) {
  ModuleDescription description;
  std::unique_ptr<Module> module = LoadFakeModule(&description);
  ASSERT_NE(module, nullptr);
  ASSERT_EQ(description.kernels.size(), 2u);
  EXPECT_EQ(description.kernels[0].name, "fake_fill");
  ASSERT_EQ(description.kernels[0].params.size(), 3u);
  EXPECT_EQ(description.kernels[0].params[1].offset, 8u);
  EXPECT_EQ(description.kernels[0].params[2].size, 4u);
  EXPECT_EQ(description.kernels[1].name, "fake_noargs");
  EXPECT_TRUE(description.kernels[1].params.empty());
  EXPECT_TRUE(description.globals.empty());

  Function* fill = nullptr;
  ASSERT_TRUE(backend_->GetFunction(*module, "fake_fill", &fill).ok());
  Function* again = nullptr;
  ASSERT_TRUE(backend_->GetFunction(*module, "fake_fill", &again).ok());
  EXPECT_EQ(fill, again);
  Function* missing = nullptr;
  EXPECT_EQ(backend_->GetFunction(*module, "nope", &missing).code(), StatusCode::kNotFound);

  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 16 * 4, &dptr).ok());
  std::vector<uint8_t> params(16);
  const uint32_t n = 16, first = 100;
  std::memcpy(&params[0], &dptr, 8);
  std::memcpy(&params[8], &n, 4);
  std::memcpy(&params[12], &first, 4);
  LaunchConfig config;
  config.grid = {4, 1, 1};
  config.block = {32, 2, 1};
  config.shared_bytes = 128;
  config.cluster = {2, 0, 0};
  ASSERT_TRUE(backend_->Launch(legacy(), *fill, config, Bytes(params)).ok());
  unsigned launch[12];
  size_t params_size = 0;
  last_launch_(launch, &params_size);
  EXPECT_EQ(launch[0], 4u);
  EXPECT_EQ(launch[4], 2u);
  EXPECT_EQ(launch[6], 128u);
  EXPECT_EQ(launch[7], 1u);  // one attribute: the cluster
  EXPECT_EQ(launch[8], 2u);
  EXPECT_EQ(launch[9], 1u);
  EXPECT_EQ(launch[10], 1u);
  EXPECT_EQ(params_size, 16u);

  Function* noargs = nullptr;
  ASSERT_TRUE(backend_->GetFunction(*module, "fake_noargs", &noargs).ok());
  ASSERT_TRUE(backend_->Launch(legacy(), *noargs, LaunchConfig{}, HostBytes{}).ok());
  last_launch_(launch, &params_size);
  EXPECT_EQ(launch[7], 0u);  // no cluster attribute
  EXPECT_EQ(params_size, 0u);
  // A cooperative launch says so to the driver, beside its cluster.
  LaunchConfig cooperative;
  cooperative.cooperative = true;
  cooperative.cluster = {1, 1, 1};
  ASSERT_TRUE(backend_->Launch(legacy(), *noargs, cooperative, HostBytes{}).ok());
  last_launch_(launch, &params_size);
  EXPECT_EQ(launch[7], 2u);
  EXPECT_EQ(launch[11], 1u);

  std::shared_ptr<std::vector<uint8_t>> out;
  ASSERT_TRUE(backend_->CopyDeviceToHost(legacy(), Buffer(64, &out), dptr).ok());
  ASSERT_TRUE(Drain(legacy()).ok());
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t value;
    std::memcpy(&value, out->data() + 4 * i, 4);
    EXPECT_EQ(value, first + i);
  }
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, ChecksModuleImagesBeforeTheDriverReadsThem) {
  auto fake_image_length = Hook<size_t (*)()>(FAKE_FULL_PATH, "fake_last_image_length");
  std::unique_ptr<Module> module;
  ModuleDescription description;
  // Text without a NUL gets one (the driver reads PTX up to a NUL).
  const std::string text = "FAKEMOD no terminator";
  ASSERT_TRUE(
      backend_
          ->LoadModule(*ctx_, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
                       &module, &description)
          .ok());
  EXPECT_EQ(fake_image_length(), text.size());
  module.reset();
  // A fatbin whose header claims more bytes than were sent.
  std::vector<uint8_t> fatbin(32, 0);
  const uint32_t magic = 0xBA55ED50;
  const uint16_t header = 16;
  const uint64_t payload = 1 << 20;
  std::memcpy(&fatbin[0], &magic, 4);
  std::memcpy(&fatbin[6], &header, 2);
  std::memcpy(&fatbin[8], &payload, 8);
  EXPECT_EQ(backend_->LoadModule(*ctx_, fatbin, &module, &description).code(),
            StatusCode::kInvalidArgument);
  // An ELF whose section table lies past the end.
  std::vector<uint8_t> elf(64, 0);
  std::memcpy(&elf[0],
              "\x7f"
              "ELF",
              4);
  elf[4] = 2;
  elf[5] = 1;
  const uint64_t sh_off = 4096;
  const uint16_t sh_size = 64, sh_num = 3;
  std::memcpy(&elf[0x28], &sh_off, 8);
  std::memcpy(&elf[0x3A], &sh_size, 2);
  std::memcpy(&elf[0x3C], &sh_num, 2);
  EXPECT_EQ(backend_->LoadModule(*ctx_, elf, &module, &description).code(),
            StatusCode::kInvalidArgument);
  // The driver's own refusal comes back as its CUresult.
  const char junk[] = "not a module";
  EXPECT_EQ(backend_
                ->LoadModule(*ctx_, std::span(reinterpret_cast<const uint8_t*>(junk), sizeof(junk)),
                             &module, &description)
                .cuda_result(),
            CUDA_ERROR_INVALID_IMAGE);
}

TEST_F(FakeDriverTest, RealNvccImagesPassTheImageChecks) {
#ifndef VADD_FATBIN
  GTEST_SKIP() << "built without nvcc";
#else
  for (const char* path : {VADD_FATBIN, VADD_CUBIN, VADD_PTX}) {
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> image((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    ASSERT_FALSE(image.empty()) << path;
    std::unique_ptr<Module> module;
    ModuleDescription description;
    // Past ferry's checks, the fake driver refuses anything not "FAKEMOD".
    EXPECT_EQ(backend_->LoadModule(*ctx_, image, &module, &description).cuda_result(),
              CUDA_ERROR_INVALID_IMAGE)
        << path;
  }
#endif
}

TEST_F(FakeDriverTest, GlobalsAttributesAndLimits) {
  std::unique_ptr<Module> module = LoadFakeModule();
  uint64_t dptr = 0, bytes = 0;
  ASSERT_TRUE(backend_->GetGlobal(*module, "fake_global", &dptr, &bytes).ok());
  EXPECT_NE(dptr, 0u);
  EXPECT_EQ(bytes, 64u);
  EXPECT_EQ(backend_->GetGlobal(*module, "nope", &dptr, &bytes).code(), StatusCode::kNotFound);

  Function* fill = nullptr;
  ASSERT_TRUE(backend_->GetFunction(*module, "fake_fill", &fill).ok());
  int value = 0;
  ASSERT_TRUE(
      backend_->GetFunctionAttribute(*fill, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, &value).ok());
  EXPECT_EQ(value, 1024);
  ASSERT_TRUE(
      backend_->SetFunctionAttribute(*fill, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 65536)
          .ok());
  ASSERT_TRUE(
      backend_->GetFunctionAttribute(*fill, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, &value)
          .ok());
  EXPECT_EQ(value, 65536);
  EXPECT_TRUE(backend_->SetFunctionCacheConfig(*fill, CU_FUNC_CACHE_PREFER_SHARED).ok());

  ASSERT_TRUE(backend_->SetLimit(*ctx_, CU_LIMIT_STACK_SIZE, 4096).ok());
  uint64_t limit = 0;
  ASSERT_TRUE(backend_->GetLimit(*ctx_, CU_LIMIT_STACK_SIZE, &limit).ok());
  EXPECT_EQ(limit, 4096u);
}

TEST_F(FakeDriverTest, StreamsEventsAndCompletions) {
  auto priority = Hook<int (*)()>(FAKE_FULL_PATH, "fake_last_priority");
  std::unique_ptr<Stream> stream;
  ASSERT_TRUE(backend_->CreateStream(*ctx_, CU_STREAM_NON_BLOCKING, -1, &stream).ok());
  EXPECT_EQ(priority(), -1);
  std::unique_ptr<Event> start, end;
  ASSERT_TRUE(backend_->CreateEvent(*ctx_, 0, &start).ok());
  ASSERT_TRUE(backend_->CreateEvent(*ctx_, 0, &end).ok());

  set_paused_(true);
  ASSERT_TRUE(backend_->RecordEvent(*start, *stream).ok());
  ASSERT_TRUE(backend_->RecordEvent(*end, *stream).ok());
  ASSERT_TRUE(backend_->StreamWaitEvent(legacy(), *end).ok());
  EXPECT_EQ(backend_->QueryEvent(*end).cuda_result(), CUDA_ERROR_NOT_READY);
  EXPECT_EQ(backend_->QueryStream(*stream).cuda_result(), CUDA_ERROR_NOT_READY);
  Awaited event_done, stream_idle, context_idle;
  backend_->WhenEventComplete(*end, event_done.Callback());
  backend_->WhenStreamIdle(*stream, stream_idle.Callback());
  backend_->WhenContextIdle(*ctx_, context_idle.Callback());
  std::this_thread::sleep_for(kSettle);
  EXPECT_FALSE(event_done.Ready());
  EXPECT_FALSE(stream_idle.Ready());
  EXPECT_FALSE(context_idle.Ready());
  set_paused_(false);
  EXPECT_TRUE(event_done.Get().ok());
  EXPECT_TRUE(stream_idle.Get().ok());
  EXPECT_TRUE(context_idle.Get().ok());
  // None of them ran on the caller's thread.
  EXPECT_NE(event_done.thread(), std::this_thread::get_id());
  EXPECT_NE(stream_idle.thread(), std::this_thread::get_id());
  EXPECT_NE(context_idle.thread(), std::this_thread::get_id());
  EXPECT_TRUE(backend_->QueryEvent(*end).ok());
  float ms = 0;
  ASSERT_TRUE(backend_->EventElapsedTime(*start, *end, &ms).ok());
  EXPECT_FLOAT_EQ(ms, 1.5f);
}

TEST_F(FakeDriverTest, DestroyingAnEventWaitsForItsPendingWait) {
  std::unique_ptr<Event> event;
  ASSERT_TRUE(backend_->CreateEvent(*ctx_, 0, &event).ok());
  set_paused_(true);
  ASSERT_TRUE(backend_->RecordEvent(*event, legacy()).ok());
  Awaited done;
  backend_->WhenEventComplete(*event, done.Callback());
  std::atomic<bool> destroyed{false};
  std::thread destroyer([&] {
    event.reset();
    destroyed = true;
  });
  std::this_thread::sleep_for(kSettle);
  EXPECT_FALSE(destroyed.load()) << "the event went away under a pending wait";
  set_paused_(false);
  destroyer.join();
  EXPECT_TRUE(done.Get().ok());
}

TEST_F(FakeDriverTest, ARecordAfterAPendingWaitLeavesThatWaitOnTheOldRecord) {
  // One waiter thread, kept busy, so the event wait cannot start before the
  // event is recorded again: the backend must snapshot the old record.
  ctx_.reset();
  backend_.reset();
  ASSERT_TRUE(
      CreateCudaBackend({.driver_path = FAKE_FULL_PATH, .max_waiter_threads = 1}, &backend_).ok());
  ASSERT_TRUE(backend_->CreateContext(0, 0, &ctx_).ok());
  std::unique_ptr<Stream> other;
  ASSERT_TRUE(backend_->CreateStream(*ctx_, 0, 0, &other).ok());
  std::unique_ptr<Event> event;
  ASSERT_TRUE(backend_->CreateEvent(*ctx_, 0, &event).ok());
  set_paused_(true);
  Awaited busy, done;
  backend_->WhenContextIdle(*ctx_, busy.Callback());  // holds the only thread
  ASSERT_TRUE(backend_->RecordEvent(*event, legacy()).ok());
  backend_->WhenEventComplete(*event, done.Callback());
  ASSERT_TRUE(backend_->RecordEvent(*event, *other).ok());  // snapshots
  ASSERT_TRUE(backend_->RecordEvent(*event, *other).ok());  // already pinned
  set_paused_(false);
  EXPECT_TRUE(busy.Get().ok());
  EXPECT_TRUE(done.Get().ok());
  // TearDown checks that the snapshot event and stream were released.
}

TEST_F(FakeDriverTest, StickyErrorsReachCompletionsAndBuffersAreReleased) {
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 16, &dptr).ok());
  set_sticky_(CUDA_ERROR_ILLEGAL_ADDRESS);
  std::weak_ptr<const void> source;
  ASSERT_TRUE(backend_->CopyHostToDevice(legacy(), dptr, Bytes(Iota(16), &source)).ok());
  Awaited idle, context_idle;
  backend_->WhenStreamIdle(legacy(), idle.Callback());
  backend_->WhenContextIdle(*ctx_, context_idle.Callback());
  Status status = idle.Get();
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_ILLEGAL_ADDRESS);
  EXPECT_THAT(status.message(), HasSubstr("CUDA_ERROR_ILLEGAL_ADDRESS"));
  EXPECT_EQ(context_idle.Get().cuda_result(), CUDA_ERROR_ILLEGAL_ADDRESS);
  EXPECT_TRUE(source.expired());
  set_sticky_(CUDA_SUCCESS);
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, CallbacksTheDriverNeverRanCompleteAtContextDestruction) {
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 16, &dptr).ok());
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
  set_drop_(true);  // the driver accepts callbacks and never runs them
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 16, &dptr).ok());
  std::weak_ptr<const void> source;
  ASSERT_TRUE(backend_->CopyHostToDevice(legacy(), dptr, Bytes(Iota(16), &source)).ok());
  Awaited idle;
  backend_->WhenStreamIdle(legacy(), idle.Callback());
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
  EXPECT_FALSE(idle.Ready());
  ctx_.reset();
  EXPECT_EQ(idle.Get().cuda_result(), CUDA_ERROR_CONTEXT_IS_DESTROYED);
  EXPECT_TRUE(source.expired());
}

TEST_F(FakeDriverTest, CallbacksTheDriverRunsAfterContextDestructionAreHarmless) {
  // Nothing promises that a destroyed context runs no callback (ferry's own
  // libcuda, as a driver, delivers them late): the sweep at destruction runs
  // each Completion once, and the driver's late call must find its record
  // still valid and already claimed.
  auto set_defer = Hook<void (*)(bool)>(FAKE_FULL_PATH, "fake_set_defer_callbacks");
  auto run_deferred = Hook<int (*)()>(FAKE_FULL_PATH, "fake_run_deferred_callbacks");
  ASSERT_NE(set_defer, nullptr);
  ASSERT_NE(run_deferred, nullptr);
  set_defer(true);
  std::atomic<int> completions{0};
  Awaited idle;
  backend_->WhenStreamIdle(legacy(), [&completions, done = idle.Callback()](Status status) mutable {
    ++completions;
    std::move(done)(std::move(status));
  });
  std::weak_ptr<const void> source;
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 16, &dptr).ok());
  ASSERT_TRUE(backend_->CopyHostToDevice(legacy(), dptr, Bytes(Iota(16), &source)).ok());
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
  ctx_.reset();
  EXPECT_EQ(idle.Get().cuda_result(), CUDA_ERROR_CONTEXT_IS_DESTROYED);
  EXPECT_TRUE(source.expired());
  set_defer(false);
  EXPECT_GE(run_deferred(), 2);  // the Completion's and the copy's buffer release
  EXPECT_EQ(completions.load(), 1);
}

TEST_F(FakeDriverTest, StreamIsIdleOnceAWhenStreamIdleCompletionRan) {
  // The Completion runs inside the driver's callback, which the driver
  // counts as stream work until it returns; a client told "idle" must not
  // then see NOT_READY from a query (the chain through ferry's libcuda
  // showed it after every cuStreamSynchronize).
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  Awaited idle;
  backend_->WhenStreamIdle(legacy(),
                           [&entered, released, done = idle.Callback()](Status status) mutable {
                             entered.set_value();
                             released.wait();
                             std::move(done)(std::move(status));
                           });
  ASSERT_EQ(entered.get_future().wait_for(kTimeout), std::future_status::ready);
  EXPECT_TRUE(backend_->QueryStream(legacy()).ok());
  // New work makes it busy again (the GPU is held by the callback).
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &dptr).ok());
  ASSERT_TRUE(backend_->Memset(legacy(), dptr, 0, 0x11, 1, 64, 1).ok());
  EXPECT_EQ(backend_->QueryStream(legacy()).cuda_result(), CUDA_ERROR_NOT_READY);
  release.set_value();
  EXPECT_TRUE(idle.Get().ok());
  EXPECT_TRUE(Drain(legacy()).ok());
  EXPECT_TRUE(backend_->QueryStream(legacy()).ok());
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, DeviceToHostCopiesDoNotBlockBehindAHeldStream) {
  // Into pageable memory the driver copies "asynchronously" only once the
  // stream reaches the copy; the backend stages through page-locked memory,
  // so a copy queued behind held work returns at once and lands later.
  auto pageable = Hook<int (*)()>(FAKE_FULL_PATH, "fake_pageable_async_copies");
  ASSERT_NE(pageable, nullptr);
  const int pageable_before = pageable();
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 256, &dptr).ok());
  ASSERT_TRUE(backend_->CopyHostToDevice(legacy(), dptr, Bytes(Iota(256, 7))).ok());
  set_paused_(true);
  std::shared_ptr<std::vector<uint8_t>> landed;
  std::weak_ptr<const void> watch;
  {
    MutableHostBytes dst = Buffer(256, &landed);
    watch = dst.owner;
    auto copy = std::async(std::launch::async, [&] {
      return backend_->CopyDeviceToHost(legacy(), std::move(dst), dptr);
    });
    const bool returned = copy.wait_for(kTimeout) == std::future_status::ready;
    if (!returned) set_paused_(false);  // lets the blocked call (and `copy`) finish
    ASSERT_TRUE(returned) << "CopyDeviceToHost waited for the held stream";
    EXPECT_TRUE(copy.get().ok());
  }
  EXPECT_EQ((*landed)[0], 0xEE) << "landed before the stream ran";
  set_paused_(false);
  EXPECT_TRUE(Drain(legacy()).ok());
  EXPECT_EQ(*landed, Iota(256, 7));
  landed.reset();
  EXPECT_TRUE(watch.expired()) << "the destination was not released";
  // A 2D copy to the host behind held work returns at once as well.
  set_paused_(true);
  Copy2D down;
  down.src_device = dptr;
  down.src_pitch = 64;
  down.dst_is_host = true;
  std::shared_ptr<std::vector<uint8_t>> rows;
  down.dst_host = Buffer(200, &rows);
  down.dst_pitch = 100;
  down.width_bytes = 10;
  down.height = 2;
  auto copy2d = std::async(std::launch::async,
                           [&] { return backend_->Copy2DAsync(legacy(), std::move(down)); });
  const bool returned = copy2d.wait_for(kTimeout) == std::future_status::ready;
  set_paused_(false);
  ASSERT_TRUE(returned) << "Copy2DAsync to the host waited for the held stream";
  EXPECT_TRUE(copy2d.get().ok());
  EXPECT_TRUE(Drain(legacy()).ok());
  const std::vector<uint8_t> source = Iota(256, 7);
  for (int x = 0; x < 10; ++x) {
    EXPECT_EQ((*rows)[x], source[x]);
    EXPECT_EQ((*rows)[100 + x], source[64 + x]);
  }
  EXPECT_EQ((*rows)[10], 0xEE);
  EXPECT_EQ(pageable(), pageable_before);
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, HostGateReportsReachedThenHoldsLaterWorkUntilOpened) {
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &dptr).ok());
  ASSERT_TRUE(backend_->Memset(legacy(), dptr, 0, 0x11, 1, 64, 1).ok());
  set_paused_(true);
  auto gate = std::make_shared<HostGate>();
  Awaited reached;
  ASSERT_TRUE(backend_->EnqueueHostGate(legacy(), gate, reached.Callback()).ok());
  ASSERT_TRUE(backend_->Memset(legacy(), dptr, 0, 0x22, 1, 64, 1).ok());
  std::this_thread::sleep_for(kSettle);
  EXPECT_FALSE(reached.Ready()) << "reached before the work queued before it ran";
  set_paused_(false);
  EXPECT_TRUE(reached.Get().ok());
  EXPECT_NE(reached.thread(), std::this_thread::get_id());
  // Held: the memset queued after the gate has not run.
  std::this_thread::sleep_for(kSettle);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(dptr)[0], 0x11);
  EXPECT_EQ(backend_->QueryStream(legacy()).cuda_result(), CUDA_ERROR_NOT_READY);
  gate->Open();
  ASSERT_TRUE(Drain(legacy()).ok());
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(dptr)[0], 0x22);
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

TEST_F(FakeDriverTest, HostGateOpenedEarlyNeverHolds) {
  auto gate = std::make_shared<HostGate>();
  gate->Open();
  Awaited reached;
  ASSERT_TRUE(backend_->EnqueueHostGate(legacy(), gate, reached.Callback()).ok());
  EXPECT_TRUE(reached.Get().ok());
  EXPECT_TRUE(Drain(legacy()).ok());
}

TEST_F(FakeDriverTest, HostGateReportsAStickyError) {
  set_sticky_(CUDA_ERROR_ILLEGAL_ADDRESS);
  auto gate = std::make_shared<HostGate>();
  Awaited reached;
  ASSERT_TRUE(backend_->EnqueueHostGate(legacy(), gate, reached.Callback()).ok());
  EXPECT_EQ(reached.Get().cuda_result(), CUDA_ERROR_ILLEGAL_ADDRESS);
  gate->Open();
  set_sticky_(CUDA_SUCCESS);
  EXPECT_TRUE(Drain(legacy()).ok());
}

TEST_F(FakeDriverTest, HostGateTheDriverNeverRanIsReachedAtContextDestruction) {
  set_drop_(true);
  auto gate = std::make_shared<HostGate>();
  Awaited reached;
  ASSERT_TRUE(backend_->EnqueueHostGate(legacy(), gate, reached.Callback()).ok());
  gate->Open();  // the owner opens what it will never see reached (a session ending)
  ctx_.reset();
  EXPECT_EQ(reached.Get().cuda_result(), CUDA_ERROR_CONTEXT_IS_DESTROYED);
}

TEST_F(FakeDriverTest, HostGateRejectsANullGate) {
  EXPECT_EQ(backend_->EnqueueHostGate(legacy(), nullptr, [](Status) {}).code(),
            StatusCode::kInvalidArgument);
}

TEST_F(FakeDriverTest, ThreadsSwitchBetweenContexts) {
  // The fake refuses a stream whose context is not current on the calling
  // thread, so a stale per-thread cache would fail here.
  std::unique_ptr<Context> other;
  ASSERT_TRUE(backend_->CreateContext(1, 0, &other).ok());
  std::unique_ptr<Stream> s1, s2;
  ASSERT_TRUE(backend_->CreateStream(*ctx_, 0, 0, &s1).ok());
  ASSERT_TRUE(backend_->CreateStream(*other, 0, 0, &s2).ok());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        Context& ctx = i % 2 == 0 ? *ctx_ : *other;
        Stream& stream = i % 3 == 0 ? backend_->LegacyStream(ctx) : (i % 2 == 0 ? *s1 : *s2);
        uint64_t dptr = 0;
        if (!backend_->MemAlloc(ctx, 8, &dptr).ok()) ++failures;
        if (!backend_->Memset(stream, dptr, 0, 1, 1, 8, 1).ok()) ++failures;
        if (!backend_->MemFree(ctx, dptr).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  s1.reset();
  s2.reset();
  // A thread that had `other` current sees a new context, maybe at the same
  // address, and must still switch to it.
  std::promise<void> used;
  std::promise<void> next_ready;
  std::unique_ptr<Context> next;
  std::thread user([&] {
    uint64_t dptr = 0;
    EXPECT_TRUE(backend_->MemAlloc(*other, 8, &dptr).ok());
    EXPECT_TRUE(backend_->MemFree(*other, dptr).ok());
    used.set_value();
    next_ready.get_future().wait();
    EXPECT_TRUE(backend_->MemAlloc(*next, 8, &dptr).ok());
    EXPECT_TRUE(backend_->Memset(backend_->LegacyStream(*next), dptr, 0, 1, 1, 8, 1).ok());
    EXPECT_TRUE(backend_->MemFree(*next, dptr).ok());
  });
  used.get_future().wait();
  other.reset();
  ASSERT_TRUE(backend_->CreateContext(1, 0, &next).ok());
  next_ready.set_value();
  user.join();
}

TEST_F(FakeDriverTest, LibrariesAreTheDriversAndGetAModulePerContext) {
  auto library_modules = Hook<int (*)()>(FAKE_FULL_PATH, "fake_library_modules");
  ASSERT_NE(library_modules, nullptr);
  static const char kImage[] = "FAKEMOD library";
  std::unique_ptr<Library> library;
  ModuleDescription description;
  ASSERT_TRUE(backend_
                  ->LoadLibrary(std::span(reinterpret_cast<const uint8_t*>(kImage), sizeof(kImage)),
                                &library, &description)
                  .ok());
  // Described through cuLibraryEnumerateKernels / cuKernelGetParamInfo.
  ASSERT_EQ(description.kernels.size(), 2u);
  EXPECT_EQ(description.kernels[0].name, "fake_fill");
  ASSERT_EQ(description.kernels[0].params.size(), 3u);
  EXPECT_EQ(description.kernels[0].params[2].offset, 12u);
  EXPECT_TRUE(description.kernels[1].params.empty());
  EXPECT_EQ(library_modules(), 0);  // loaded into no context yet

  std::unique_ptr<Context> other;
  ASSERT_TRUE(backend_->CreateContext(1, 0, &other).ok());
  std::unique_ptr<Module> here, there;
  ASSERT_TRUE(backend_->LoadLibraryModule(*ctx_, *library, &here).ok());
  ASSERT_TRUE(backend_->LoadLibraryModule(*other, *library, &there).ok());
  EXPECT_EQ(library_modules(), 2);
  Function* fill = nullptr;
  ASSERT_TRUE(backend_->GetFunction(*here, "fake_fill", &fill).ok());
  ASSERT_TRUE(
      backend_->Launch(legacy(), *fill, LaunchConfig{}, Bytes(std::vector<uint8_t>(16))).ok());
  ASSERT_TRUE(Drain(legacy()).ok());
  // The library owns its modules: dropping ours unloads nothing, the library
  // unloads them all.
  here.reset();
  there.reset();
  EXPECT_EQ(library_modules(), 2);
  library.reset();
  EXPECT_EQ(library_modules(), 0);
  other.reset();

  std::unique_ptr<Library> bad;
  static const char kJunk[] = "not an image";
  EXPECT_EQ(backend_
                ->LoadLibrary(std::span(reinterpret_cast<const uint8_t*>(kJunk), sizeof(kJunk)),
                              &bad, &description)
                .cuda_result(),
            CUDA_ERROR_INVALID_IMAGE);
  EXPECT_EQ(bad, nullptr);
}

TEST_F(FakeDriverTest, OccupancyQueriesGoToTheDriverInTheFunctionsContext) {
  std::unique_ptr<Module> module = LoadFakeModule();
  ASSERT_NE(module, nullptr);
  Function* fill = nullptr;
  ASSERT_TRUE(backend_->GetFunction(*module, "fake_fill", &fill).ok());
  // The fake answers 2048 / block - smem / 1024 - flags, and checks that a
  // context is current (none is, between calls).
  int blocks = 0;
  ASSERT_TRUE(backend_->OccupancyMaxActiveBlocks(*fill, 256, 2048, 1, &blocks).ok());
  EXPECT_EQ(blocks, 8 - 2 - 1);
  EXPECT_EQ(backend_->OccupancyMaxActiveBlocks(*fill, 0, 0, 0, &blocks).cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  uint64_t bytes = 0;
  ASSERT_TRUE(backend_->OccupancyAvailableDynamicSmem(*fill, 3, 64, &bytes).ok());
  EXPECT_EQ(bytes, 3064u);
  LaunchConfig config;
  config.block = {128, 1, 1};
  int size = 0;
  ASSERT_TRUE(backend_->OccupancyMaxPotentialClusterSize(*fill, config, &size).ok());
  EXPECT_EQ(size, 4);  // 128 / 32, no cluster attribute
  config.cluster = {2, 1, 1};
  ASSERT_TRUE(backend_->OccupancyMaxPotentialClusterSize(*fill, config, &size).ok());
  EXPECT_EQ(size, 5);  // the cluster went as an attribute
  int clusters = 0;
  ASSERT_TRUE(backend_->OccupancyMaxActiveClusters(*fill, config, &clusters).ok());
  EXPECT_EQ(clusters, 2);
}

// --- SM partitions (green contexts) -------------------------------------------
// The fake's devices have 132 SMs, a minimum partition of 8 and an alignment
// of 8 (fake_driver.cc, FAKE_GREEN).

// The fake's record of `context`: whether it is a green context's, and its
// SMs. Makes the context current on this thread first (via GetLimit).
struct SmRange {
  bool green = false;
  unsigned first = 0, count = 0;
};
SmRange RangeOf(GpuBackend& backend, Context& context) {
  uint64_t value = 0;
  EXPECT_TRUE(backend.GetLimit(context, CU_LIMIT_STACK_SIZE, &value).ok());
  auto current = Hook<void* (*)()>(FAKE_FULL_PATH, "fake_current_context");
  auto sms = Hook<int (*)(void*, unsigned*, unsigned*)>(FAKE_FULL_PATH, "fake_context_sms");
  SmRange range;
  range.green = sms(current(), &range.first, &range.count) != 0;
  return range;
}

TEST_F(FakeDriverTest, HalfSharesAreDisjointGreenContextsOfAlignedSize) {
  auto split_calls = Hook<int (*)()>(FAKE_FULL_PATH, "fake_split_calls");
  auto min_count = Hook<unsigned (*)()>(FAKE_FULL_PATH, "fake_last_split_min_count");
  ASSERT_NE(split_calls, nullptr);
  int sms = 0;
  Status status = backend_->SmPartitionSize(0, 2, &sms);
  ASSERT_TRUE(status.ok()) << status.ToString();
  // 132 / 2 = 66, rounded down to the alignment of 8.
  EXPECT_EQ(sms, 64);
  EXPECT_EQ(min_count(), 64u);

  std::unique_ptr<Context> first, second;
  ASSERT_TRUE(backend_->CreatePartitionedContext(0, 0, 2, 0, &first).ok());
  ASSERT_TRUE(backend_->CreatePartitionedContext(0, 0, 2, 1, &second).ok());
  const SmRange a = RangeOf(*backend_, *first), b = RangeOf(*backend_, *second);
  EXPECT_TRUE(a.green);
  EXPECT_TRUE(b.green);
  EXPECT_EQ(a.count, 64u);
  EXPECT_EQ(b.count, 64u);
  EXPECT_TRUE(a.first + a.count <= b.first || b.first + b.count <= a.first)
      << "groups overlap: [" << a.first << "," << a.first + a.count << ") and [" << b.first << ","
      << b.first + b.count << ")";
  // A plain context is not green.
  EXPECT_FALSE(RangeOf(*backend_, *ctx_).green);

  // The split is made once per (device, groups): a second context of group 0
  // gets the very same SMs.
  const int calls = split_calls();
  std::unique_ptr<Context> again;
  ASSERT_TRUE(backend_->CreatePartitionedContext(0, 0, 2, 0, &again).ok());
  EXPECT_EQ(split_calls(), calls);
  const SmRange c = RangeOf(*backend_, *again);
  EXPECT_EQ(c.first, a.first);
  EXPECT_EQ(c.count, a.count);

  // A green context works like any context: its legacy stream runs work.
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*first, 64, &dptr).ok());
  ASSERT_TRUE(backend_->Memset(backend_->LegacyStream(*first), dptr, 0, 7, 1, 64, 1).ok());
  std::shared_ptr<std::vector<uint8_t>> out;
  ASSERT_TRUE(
      backend_->CopyDeviceToHost(backend_->LegacyStream(*first), Buffer(64, &out), dptr).ok());
  ASSERT_TRUE(Drain(backend_->LegacyStream(*first)).ok());
  EXPECT_EQ((*out)[63], 7);
  ASSERT_TRUE(backend_->MemFree(*first, dptr).ok());
  // Destroyed with cuGreenCtxDestroy (the fake refuses cuCtxDestroy on a
  // green context, so TearDown's live-object check would catch a leak).
  const int live = live_();
  again.reset();
  first.reset();
  second.reset();
  EXPECT_EQ(live_(), live - 3);
}

TEST_F(FakeDriverTest, QuartersGetFourDisjointGroups) {
  int sms = 0;
  ASSERT_TRUE(backend_->SmPartitionSize(1, 4, &sms).ok());
  EXPECT_EQ(sms, 32);  // 132 / 4 = 33, aligned down to 32
  std::vector<std::unique_ptr<Context>> contexts(4);
  std::vector<SmRange> ranges;
  for (int group = 0; group < 4; ++group) {
    Status status = backend_->CreatePartitionedContext(1, 0, 4, group, &contexts[group]);
    ASSERT_TRUE(status.ok()) << status.ToString();
    ranges.push_back(RangeOf(*backend_, *contexts[group]));
  }
  for (size_t i = 0; i < ranges.size(); ++i) {
    EXPECT_TRUE(ranges[i].green);
    EXPECT_EQ(ranges[i].count, 32u);
    EXPECT_LE(ranges[i].first + ranges[i].count, 132u);
    for (size_t j = i + 1; j < ranges.size(); ++j) {
      EXPECT_TRUE(ranges[i].first + ranges[i].count <= ranges[j].first ||
                  ranges[j].first + ranges[j].count <= ranges[i].first)
          << "groups " << i << " and " << j << " overlap";
    }
  }
}

TEST_F(FakeDriverTest, GroupsUnderTheDriversMinimumAreRefused) {
  int sms = 0;
  // 132 / 32 = 4 SMs, under the minimum partition of 8.
  Status status = backend_->SmPartitionSize(0, 32, &sms);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_THAT(status.message(), HasSubstr("minimum of 8"));
  std::unique_ptr<Context> context;
  EXPECT_FALSE(backend_->CreatePartitionedContext(0, 0, 32, 0, &context).ok());
  EXPECT_EQ(context, nullptr);
  // 16 groups of 8 still fit.
  ASSERT_TRUE(backend_->SmPartitionSize(0, 16, &sms).ok());
  EXPECT_EQ(sms, 8);
}

TEST_F(FakeDriverTest, BadPartitionArgumentsAreRefused) {
  std::unique_ptr<Context> context;
  EXPECT_EQ(backend_->CreatePartitionedContext(0, 0, 2, 2, &context).cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(backend_->CreatePartitionedContext(0, 0, 2, -1, &context).cuda_result(),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(backend_->CreatePartitionedContext(5, 0, 2, 0, &context).cuda_result(),
            CUDA_ERROR_INVALID_DEVICE);
  int sms = 0;
  EXPECT_FALSE(backend_->SmPartitionSize(0, 1, &sms).ok());
  EXPECT_EQ(context, nullptr);
}

// The fake driver has no JIT linker: a link is refused, clearly, and the
// backend works on.
TEST_F(FakeDriverTest, ADriverWithoutTheLinkerRefusesLinks) {
  std::unique_ptr<Link> link;
  const Status status = backend_->CreateLink(*ctx_, {{CU_JIT_LOG_VERBOSE, 1}}, {}, &link);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_THAT(status.message(), HasSubstr("no JIT linker"));
  EXPECT_EQ(link, nullptr);
  uint64_t dptr = 0;
  ASSERT_TRUE(backend_->MemAlloc(*ctx_, 64, &dptr).ok());
  ASSERT_TRUE(backend_->MemFree(*ctx_, dptr).ok());
}

// --- parkable allocations and parking -----------------------------------------
// A tenant of its own on `device`: its context joins it before any work.
struct TenantContext {
  std::unique_ptr<Tenant> tenant;
  std::unique_ptr<Context> ctx;
};

class FakeParkingTest : public FakeDriverTest {
 protected:
  void SetUp() override {
    FakeDriverTest::SetUp();
    vmm_used_ = Hook<size_t (*)(int)>(FAKE_FULL_PATH, "fake_vmm_used");
    vmm_objects_ = Hook<int (*)()>(FAKE_FULL_PATH, "fake_vmm_objects");
    set_vmm_limit_ = Hook<void (*)(size_t)>(FAKE_FULL_PATH, "fake_set_vmm_limit");
    pinned_ = Hook<int (*)()>(FAKE_FULL_PATH, "fake_pinned_buffers");
    ASSERT_NE(vmm_used_, nullptr);
    ASSERT_NE(set_vmm_limit_, nullptr);
    ASSERT_TRUE(backend_->CanParkMemory());
  }
  void TearDown() override {
    a_ = TenantContext{};
    b_ = TenantContext{};
    FakeDriverTest::TearDown();
    EXPECT_EQ(vmm_objects_(), 0)
        << "reservations, physical memory or mappings outlived the backend";
    set_vmm_limit_(kGiB);
  }

  TenantContext NewTenant(int device = 0) {
    TenantContext t;
    t.tenant = backend_->CreateTenant();
    Status status = backend_->CreateContext(device, 0, &t.ctx);
    EXPECT_TRUE(status.ok()) << status.ToString();
    backend_->JoinTenant(*t.ctx, *t.tenant);
    return t;
  }
  void Write(Context& ctx, uint64_t dptr, std::vector<uint8_t> bytes) {
    Stream& stream = backend_->LegacyStream(ctx);
    ASSERT_TRUE(backend_->CopyHostToDevice(stream, dptr, Bytes(std::move(bytes))).ok());
    ASSERT_TRUE(Drain(stream).ok());
  }
  std::vector<uint8_t> Read(Context& ctx, uint64_t dptr, size_t size) {
    Stream& stream = backend_->LegacyStream(ctx);
    std::shared_ptr<std::vector<uint8_t>> out;
    EXPECT_TRUE(backend_->CopyDeviceToHost(stream, Buffer(size, &out), dptr).ok());
    EXPECT_TRUE(Drain(stream).ok());
    return *out;
  }
  static std::vector<uint8_t> Pointer(uint64_t value) {
    std::vector<uint8_t> bytes(sizeof(value));
    std::memcpy(bytes.data(), &value, sizeof(value));
    return bytes;
  }

  static constexpr size_t kMiB = size_t{1} << 20;
  static constexpr size_t kGiB = size_t{1} << 30;
  TenantContext a_, b_;
  size_t (*vmm_used_)(int) = nullptr;
  int (*vmm_objects_)() = nullptr;
  void (*set_vmm_limit_)(size_t) = nullptr;
  int (*pinned_)() = nullptr;
};

TEST_F(FakeParkingTest, AllocationsAreVirtualMemoryAndSmallOnesShareAChunk) {
  a_ = NewTenant();
  uint64_t big = 0, small1 = 0, small2 = 0, pitched = 0, pitch = 0;
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 3 * kMiB, &big).ok());
  EXPECT_EQ(vmm_used_(0), 4 * kMiB) << "rounded up to the 2 MiB granularity";
  EXPECT_EQ(big % (2 * kMiB), 0u);
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 100, &small1).ok());
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 1, &small2).ok());
  ASSERT_TRUE(backend_->MemAllocPitch(*a_.ctx, 100, 3, 4, &pitched, &pitch).ok());
  EXPECT_EQ(pitch, 512u);
  EXPECT_EQ(vmm_used_(0), 6 * kMiB) << "the small ones share one 2 MiB chunk";
  EXPECT_EQ(small1 % 512, 0u);
  EXPECT_EQ(small2, small1 + 512);
  EXPECT_EQ(pitched, small1 + 1024);
  Write(*a_.ctx, small2, {42});
  EXPECT_EQ(Read(*a_.ctx, small2, 1), std::vector<uint8_t>{42});
  // The chunk goes with its last allocation; its free ranges join again.
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, small1).ok());
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, small2).ok());
  uint64_t again = 0;
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 1024, &again).ok());
  EXPECT_EQ(again, small1) << "first fit in the joined free range";
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, pitched).ok());
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, again).ok());
  EXPECT_EQ(vmm_used_(0), 4 * kMiB);
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, big).ok());
  EXPECT_EQ(vmm_used_(0), 0u);
  EXPECT_EQ(vmm_objects_(), 0);
}

// cuMemFreeAsync of MemAlloc's memory (the session allows it, as cudaFreeAsync
// allows freeing cudaMalloc's): the backend's own virtual memory is freed as
// MemFree frees it, never handed to the driver's cuMemFreeAsync (which the
// fake driver does not even have), and `freed` runs behind the stream.
TEST_F(FakeParkingTest, MemFreeAsyncFreesTheBackendsOwnAllocations) {
  a_ = NewTenant();
  uint64_t big = 0;
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 3 * kMiB, &big).ok());
  EXPECT_EQ(vmm_used_(0), 4 * kMiB);
  Stream& stream = backend_->LegacyStream(*a_.ctx);
  auto done = std::make_shared<std::promise<Status>>();
  ASSERT_TRUE(backend_->MemFreeAsync(stream, big, [done](Status s) { done->set_value(s); }).ok());
  ASSERT_TRUE(Drain(stream).ok());
  auto result = done->get_future();
  ASSERT_EQ(result.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(result.get().ok());
  EXPECT_EQ(vmm_used_(0), 0u);
  EXPECT_EQ(vmm_objects_(), 0);
}

TEST_F(FakeParkingTest, ParkingKeepsBytesAndAddressesAndLeavesOtherTenantsAlone) {
  a_ = NewTenant();
  b_ = NewTenant();
  uint64_t big = 0, small = 0, other = 0;
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 3 * kMiB, &big).ok());
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 8, &small).ok());
  ASSERT_TRUE(backend_->MemAlloc(*b_.ctx, 64, &other).ok());
  std::vector<uint8_t> pattern = Iota(3 * kMiB, 7);
  Write(*a_.ctx, big, pattern);
  Write(*a_.ctx, small, Pointer(big));  // a pointer stored in device memory
  Write(*b_.ctx, other, Iota(64, 100));
  const size_t before = vmm_used_(0);
  const int pinned_before = pinned_();

  ParkedMemory moved;
  ASSERT_TRUE(backend_->ParkTenantMemory(*a_.tenant, &moved).ok());
  EXPECT_EQ(moved.Total(), 3 * kMiB + 8);
  EXPECT_EQ(moved.allocations, 2u);
  EXPECT_EQ(vmm_used_(0), before - 6 * kMiB) << "a's block and chunk went back to the device";
  EXPECT_EQ(pinned_(), pinned_before + 2) << "parked in page-locked host memory";
  ParkedMemory parked, resident;
  backend_->TenantMemory(*a_.tenant, &parked, &resident);
  EXPECT_EQ(parked.Total(), 3 * kMiB + 8);
  EXPECT_EQ(resident.Total(), 0u);
  ParkedMemory b_parked, b_resident;
  backend_->TenantMemory(*b_.tenant, &b_parked, &b_resident);
  EXPECT_EQ(b_parked.Total(), 0u);
  EXPECT_EQ(b_resident.Total(), 64u);
  EXPECT_EQ(Read(*b_.ctx, other, 64), Iota(64, 100));
  // Parking again moves nothing.
  ParkedMemory again;
  ASSERT_TRUE(backend_->ParkTenantMemory(*a_.tenant, &again).ok());
  EXPECT_EQ(again.Total(), 0u);

  moved = ParkedMemory{};
  const int pinned_parked = pinned_();
  ASSERT_TRUE(backend_->UnparkTenantMemory(*a_.tenant, &moved).ok());
  EXPECT_EQ(moved.Total(), 3 * kMiB + 8);
  EXPECT_EQ(vmm_used_(0), before);
  EXPECT_EQ(pinned_(), pinned_parked - 2) << "the parked copies went";
  EXPECT_EQ(Read(*a_.ctx, big, 3 * kMiB), pattern);
  EXPECT_EQ(Read(*a_.ctx, small, 8), Pointer(big));
  EXPECT_EQ(Read(*b_.ctx, other, 64), Iota(64, 100));
  parked = resident = ParkedMemory{};
  backend_->TenantMemory(*a_.tenant, &parked, &resident);
  EXPECT_EQ(parked.Total(), 0u);
  EXPECT_EQ(resident.Total(), 3 * kMiB + 8);
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, big).ok());
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, small).ok());
  ASSERT_TRUE(backend_->MemFree(*b_.ctx, other).ok());
}

TEST_F(FakeParkingTest, UnparkWithoutRoomIsOutOfMemoryAndStaysParked) {
  set_vmm_limit_(8 * kMiB);
  a_ = NewTenant();
  b_ = NewTenant();
  uint64_t first = 0, second = 0, crowd = 0;
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 2 * kMiB, &first).ok());
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 2 * kMiB, &second).ok());
  Write(*a_.ctx, first, Iota(64, 1));
  Write(*a_.ctx, second, Iota(64, 2));
  ASSERT_TRUE(backend_->ParkTenantMemory(*a_.tenant, nullptr).ok());
  ASSERT_TRUE(backend_->MemAlloc(*b_.ctx, 6 * kMiB, &crowd).ok());
  // Room for one of a's blocks, not both: whole or nothing.
  ParkedMemory moved;
  Status status = backend_->UnparkTenantMemory(*a_.tenant, &moved);
  EXPECT_EQ(status.code(), StatusCode::kOutOfMemory) << status.ToString();
  EXPECT_THAT(status.message(), AllOf(HasSubstr("device 0"), HasSubstr("4194304")));
  EXPECT_EQ(moved.Total(), 0u);
  EXPECT_EQ(vmm_used_(0), 6 * kMiB) << "what the failed unpark made is gone again";
  ParkedMemory parked, resident;
  backend_->TenantMemory(*a_.tenant, &parked, &resident);
  EXPECT_EQ(parked.Total(), 4 * kMiB);
  EXPECT_EQ(resident.Total(), 0u);
  ASSERT_TRUE(backend_->MemFree(*b_.ctx, crowd).ok());
  ASSERT_TRUE(backend_->UnparkTenantMemory(*a_.tenant, &moved).ok());
  EXPECT_EQ(moved.Total(), 4 * kMiB);
  EXPECT_EQ(Read(*a_.ctx, first, 64), Iota(64, 1));
  EXPECT_EQ(Read(*a_.ctx, second, 64), Iota(64, 2));
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, first).ok());
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, second).ok());
}

TEST_F(FakeParkingTest, FreeingWhileParkedKeepsTheBooks) {
  a_ = NewTenant();
  uint64_t kept = 0, freed = 0, small = 0;
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 2 * kMiB, &kept).ok());
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 4 * kMiB, &freed).ok());
  ASSERT_TRUE(backend_->MemAlloc(*a_.ctx, 16, &small).ok());
  Write(*a_.ctx, kept, Iota(64, 9));
  const int pinned_before = pinned_();
  ASSERT_TRUE(backend_->ParkTenantMemory(*a_.tenant, nullptr).ok());
  EXPECT_EQ(vmm_used_(0), 0u);
  uint64_t free_bytes = 0, total = 0;
  ASSERT_TRUE(backend_->MemGetInfo(*a_.ctx, &free_bytes, &total).ok());
  EXPECT_EQ(free_bytes, kGiB) << "parked memory is off the device";
  // A session that ends while parked frees everything it holds.
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, freed).ok());
  ASSERT_TRUE(backend_->MemFree(*a_.ctx, small).ok());
  EXPECT_EQ(pinned_(), pinned_before + 1) << "the freed blocks' copies went";
  ParkedMemory parked, resident;
  backend_->TenantMemory(*a_.tenant, &parked, &resident);
  EXPECT_EQ(parked.Total(), 2 * kMiB);
  EXPECT_EQ(parked.allocations, 1u);
  EXPECT_EQ(resident.Total(), 0u);
  ParkedMemory moved;
  ASSERT_TRUE(backend_->UnparkTenantMemory(*a_.tenant, &moved).ok());
  EXPECT_EQ(moved.Total(), 2 * kMiB);
  EXPECT_EQ(vmm_used_(0), 2 * kMiB);
  EXPECT_EQ(Read(*a_.ctx, kept, 64), Iota(64, 9));
  // Parked again and the context destroyed with it (no MemFree): its
  // reservations and copies go with it.
  ASSERT_TRUE(backend_->ParkTenantMemory(*a_.tenant, nullptr).ok());
  a_.ctx.reset();
  EXPECT_EQ(vmm_objects_(), 0);
  EXPECT_EQ(pinned_(), pinned_before);
}

TEST(CudaBackendParkingTest, WithoutParkableAllocationsMemAllocIsTheDrivers) {
  std::unique_ptr<GpuBackend> backend;
  ASSERT_TRUE(
      CreateCudaBackend({.driver_path = FAKE_FULL_PATH, .parkable_allocations = false}, &backend)
          .ok());
  EXPECT_FALSE(backend->CanParkMemory());
  auto creates = Hook<int (*)()>(FAKE_FULL_PATH, "fake_vmm_creates");
  const int creates_before = creates();
  std::unique_ptr<Tenant> tenant = backend->CreateTenant();
  std::unique_ptr<Context> ctx;
  ASSERT_TRUE(backend->CreateContext(0, 0, &ctx).ok());
  backend->JoinTenant(*ctx, *tenant);
  uint64_t dptr = 0, pitch = 0;
  ASSERT_TRUE(backend->MemAllocPitch(*ctx, 100, 3, 4, &dptr, &pitch).ok());
  EXPECT_EQ(pitch, 256u) << "the driver's cuMemAllocPitch";
  EXPECT_EQ(creates(), creates_before);
  EXPECT_EQ(backend->ParkTenantMemory(*tenant, nullptr).code(), StatusCode::kUnimplemented);
  ASSERT_TRUE(backend->MemFree(*ctx, dptr).ok());
}

TEST(CudaBackendGreenTest, DriverWithoutGreenContextsLoadsAndReportsNoPartition) {
  // fake_cuda_old has no green-context entry points.
  std::unique_ptr<GpuBackend> backend;
  Status status = CreateCudaBackend({.driver_path = FAKE_OLD_PATH}, &backend);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(Hook<void* (*)()>(FAKE_OLD_PATH, "cuGreenCtxCreate"), nullptr);
  int sms = 0;
  status = backend->SmPartitionSize(0, 2, &sms);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_THAT(status.message(), HasSubstr("no green contexts"));
  std::unique_ptr<Context> context;
  EXPECT_EQ(backend->CreatePartitionedContext(0, 0, 2, 0, &context).cuda_result(),
            CUDA_ERROR_NOT_SUPPORTED);
  // Plain contexts are unaffected.
  ASSERT_TRUE(backend->CreateContext(0, 0, &context).ok());
}

}  // namespace
}  // namespace ferry::backend
