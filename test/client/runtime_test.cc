// Runtime (client/runtime.h), the glue over the client's registries, against
// an in-process ferryd (Server with the host backend on loopback TCP), with
// two Runtime instances in one process: device queries come from the
// handshake, contexts are created on the server on first use, destroying a
// context frees what it owned on both sides, a library gets one module per
// context on first use, bad handles are refused without a round trip, and
// two instances share neither handles nor per-thread state; and one Runtime
// on two servers (a split borrow) sends each device's objects to its own
// server with that server's device ordinal. What the server
// holds is read from its session listing after a call that waits (the
// server runs a session's calls in order). Every wait is bounded.
#include "client/runtime.h"

#include <cuda.h>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/occupancy.h"
#include "common/frame.h"
#include "common/transport.h"
#include "server/backend/host/host_backend.h"
#include "server/server.h"
#include "test/support/tiny_library.h"
#include "test/support/wait.h"

namespace ferry::client {
namespace {

using namespace std::chrono_literals;

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend::HostBackendOptions options;
    options.device_count = 2;
    options.device_memory = 64 << 20;
    ASSERT_TRUE(backend::CreateHostBackend(options, &backend_).ok());
    server_ = std::make_unique<server::Server>(*backend_);
    ASSERT_TRUE(server_->Listen("127.0.0.1:0").ok());
    server_->Start();
    ASSERT_EQ(server_->BoundAddresses().size(), 1u);
    address_ = server_->BoundAddresses()[0];
  }
  void TearDown() override { server_->Stop(); }

  // A Runtime with a session of its own on the server.
  std::unique_ptr<Runtime> Connect() {
    std::unique_ptr<Transport> transport;
    Status status = ConnectTcp(address_, 5000ms, &transport);
    EXPECT_TRUE(status.ok()) << status.ToString();
    if (!status.ok()) return nullptr;
    std::unique_ptr<Runtime> runtime;
    status = Runtime::Connect(std::move(transport), address_, Connection::Borrow{}, &runtime);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return runtime;
  }

  // A call that waits: once it returns, the server has run every call `rt`
  // issued before it.
  static Status Barrier(Runtime& rt) {
    return rt.PartConnection(0).Call([](wire::Call::Builder call) { call.setPing(); });
  }

  // The server's view of `rt`'s session, after a Barrier. Fails the test
  // when the session is not listed.
  server::SessionInfo Info(Runtime& rt) {
    Status barrier = Barrier(rt);
    EXPECT_TRUE(barrier.ok()) << barrier.ToString();
    for (const server::SessionInfo& info : server_->Sessions()) {
      if (info.id == rt.session_id()) return info;
    }
    ADD_FAILURE() << "session " << rt.session_id() << " is not listed";
    return {};
  }

  std::unique_ptr<backend::GpuBackend> backend_;
  std::unique_ptr<server::Server> server_;
  std::string address_;
};

// One Runtime on two in-process servers of one device each, as a borrow split
// across a cluster's servers gives it: device 1 is the second server's device
// 0, and everything of its contexts goes there, with that ordinal.
class SplitRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) {
      backend::HostBackendOptions options;
      options.device_count = 1;
      options.device_memory = 64 << 20;
      ASSERT_TRUE(backend::CreateHostBackend(options, &backends_[i]).ok());
      servers_[i] = std::make_unique<server::Server>(*backends_[i]);
      ASSERT_TRUE(servers_[i]->Listen("127.0.0.1:0").ok());
      servers_[i]->Start();
      addresses_[i] = servers_[i]->BoundAddresses().at(0);
    }
    std::vector<std::unique_ptr<Transport>> transports(2);
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(ConnectTcp(addresses_[i], 5000ms, &transports[i]).ok());
    }
    Status status = Runtime::ConnectParts(std::move(transports), {addresses_[0], addresses_[1]},
                                          Connection::Borrow{}, &rt_);
    ASSERT_TRUE(status.ok()) << status.ToString();
  }
  void TearDown() override {
    rt_.reset();
    for (auto& server : servers_) server->Stop();
  }

  // Server `i`'s view of its session of the Runtime, after a call that waits
  // there.
  server::SessionInfo Info(int i) {
    Status barrier = rt_->PartConnection(i).Call([](wire::Call::Builder call) { call.setPing(); });
    EXPECT_TRUE(barrier.ok()) << barrier.ToString();
    std::vector<server::SessionInfo> sessions = servers_[i]->Sessions();
    EXPECT_EQ(sessions.size(), 1u);
    return sessions.empty() ? server::SessionInfo{} : sessions[0];
  }

  std::unique_ptr<backend::GpuBackend> backends_[2];
  std::unique_ptr<server::Server> servers_[2];
  std::string addresses_[2];
  std::unique_ptr<Runtime> rt_;
};

TEST_F(SplitRuntimeTest, EachDevicesObjectsGoToItsOwnServer) {
  ASSERT_EQ(rt_->devices().size(), 2u);
  ASSERT_EQ(rt_->part_count(), 2u);
  EXPECT_EQ(rt_->PartOfDevice(0), 0u);
  EXPECT_EQ(rt_->PartOfDevice(1), 1u);
  EXPECT_EQ(rt_->ServerOrdinal(1), 0);
  EXPECT_EQ(&rt_->DeviceConnection(1), &rt_->PartConnection(1));

  // A context of device 1: created on the second server as its device 0
  // (the first server never hears of it), its memory there too.
  uint64_t ctx1 = 0;
  ASSERT_TRUE(rt_->CreateContext(1, 0, &ctx1).ok());
  EXPECT_EQ(&rt_->ConnectionOf(ctx1), &rt_->PartConnection(1));
  uint64_t dptr = 0;
  ASSERT_TRUE(rt_->AllocDevice(ctx1, 4096, &dptr).ok());
  EXPECT_EQ(Info(1).contexts, 1u);
  EXPECT_EQ(Info(1).bytes_allocated, 4096u);
  EXPECT_EQ(Info(0).contexts, 0u);
  EXPECT_EQ(Info(0).bytes_allocated, 0u);
  uint64_t ctx0 = 0;
  ASSERT_TRUE(rt_->CreateContext(0, 0, &ctx0).ok());
  EXPECT_EQ(&rt_->ConnectionOf(ctx0), &rt_->PartConnection(0));
  EXPECT_FALSE(rt_->SameSession(ctx0, ctx1));
  EXPECT_TRUE(rt_->SameSession(ctx1, ctx1));

  // A library belongs to no context: both servers load it, and its kernel
  // gets a function in each context, on that context's server.
  uint64_t library = 0;
  const std::vector<uint8_t> image = test::TinyLibraryImage();
  ASSERT_TRUE(rt_->LoadLibrary(image, &library).ok());
  uint64_t module0 = 0, module1 = 0;
  ASSERT_TRUE(rt_->LibraryModule(library, ctx0, &module0).ok());
  ASSERT_TRUE(rt_->LibraryModule(library, ctx1, &module1).ok());
  uint64_t function1 = 0;
  ASSERT_TRUE(rt_->ModuleFunction(module1, "k", &function1).ok());
  EXPECT_EQ(&rt_->FunctionConnection(function1), &rt_->PartConnection(1));
  EXPECT_EQ(&rt_->ObjectConnection(module0), &rt_->PartConnection(0));
  // Each server ran what was sent to it without an error (a call that waits
  // reports a latched one).
  EXPECT_TRUE(rt_->PartConnection(0).Call([](wire::Call::Builder c) { c.setPing(); }).ok());
  EXPECT_TRUE(rt_->PartConnection(1).Call([](wire::Call::Builder c) { c.setPing(); }).ok());
  EXPECT_GT(Info(0).module_image_bytes_received, 0u);
  EXPECT_GT(Info(1).module_image_bytes_received, 0u);
  EXPECT_EQ(Info(0).modules, 1u);
  EXPECT_EQ(Info(1).modules, 1u);

  // Destroying device 1's context frees its memory on its server.
  ASSERT_TRUE(rt_->DestroyContext(ctx1).ok());
  EXPECT_TRUE(test::WaitFor([&] { return Info(1).bytes_allocated == 0; }, 10s, 10ms));
}

TEST_F(RuntimeTest, DevicesComeFromTheHandshake) {
  std::unique_ptr<Runtime> rt = Connect();
  ASSERT_NE(rt, nullptr);
  EXPECT_TRUE(rt->Ready().ok());
  EXPECT_TRUE(rt->Init(0).ok());  // built on an open session: nothing to do
  EXPECT_NE(rt->session_id(), 0u);
  const std::vector<backend::DeviceDescription>& served = backend_->Devices();
  ASSERT_EQ(rt->devices().size(), served.size());
  for (size_t i = 0; i < served.size(); ++i) {
    const DeviceInfo& device = rt->devices()[i];
    EXPECT_EQ(device.name, served[i].name);
    EXPECT_EQ(device.uuid, served[i].uuid);
    EXPECT_EQ(device.total_memory, served[i].total_memory);
    EXPECT_EQ(device.pci_bus, served[i].pci_bus);
    EXPECT_EQ(device.pci_device, served[i].pci_device);
    EXPECT_EQ(device.attributes, served[i].attributes);
    EXPECT_EQ(device.Attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
              served[i].attributes[CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT]);
  }
  EXPECT_TRUE(rt->CheckDevice(1).ok());
  EXPECT_EQ(rt->CheckDevice(2).cuda_result(), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_EQ(rt->CheckDevice(-1).cuda_result(), CUDA_ERROR_INVALID_DEVICE);
}

TEST_F(RuntimeTest, AContextIsCreatedOnTheServerOnFirstUse) {
  std::unique_ptr<Runtime> rt = Connect();
  ASSERT_NE(rt, nullptr);
  uint64_t ctx = 0;
  EXPECT_EQ(rt->CurrentContext(&ctx).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);

  // The runtime-interface table's way: the primary context's id, made
  // current, costs nothing on the server until a call needs it.
  const uint64_t primary = rt->contexts().PrimaryId(0);
  rt->SetCurrent(primary);
  EXPECT_EQ(rt->CurrentContextId(), primary);
  EXPECT_FALSE(rt->contexts().IsLive(primary));
  EXPECT_EQ(Info(*rt).contexts, 0u);

  ASSERT_TRUE(rt->CurrentContext(&ctx).ok());
  EXPECT_EQ(ctx, primary);
  EXPECT_TRUE(rt->contexts().IsLive(primary));
  EXPECT_EQ(Info(*rt).contexts, 1u);
  ASSERT_TRUE(rt->EnsureLive(primary).ok());  // live already: no second creation
  uint64_t retained = 0;
  ASSERT_TRUE(rt->RetainPrimary(0, &retained).ok());
  EXPECT_EQ(retained, primary);
  EXPECT_EQ(Info(*rt).contexts, 1u);

  // A created context is live at once and current on this thread.
  uint64_t created = 0;
  ASSERT_TRUE(rt->CreateContext(1, 0, &created).ok());
  EXPECT_NE(created, primary);
  EXPECT_EQ(rt->CurrentContextId(), created);
  EXPECT_EQ(Info(*rt).contexts, 2u);
  EXPECT_EQ(rt->PopCurrent(), created);
  EXPECT_EQ(rt->CurrentContextId(), primary);

  // Releasing the last retain destroys the primary context on the server;
  // the next use creates it again, under the same id.
  ASSERT_TRUE(rt->ReleasePrimary(0).ok());
  EXPECT_FALSE(rt->contexts().IsLive(primary));
  EXPECT_EQ(Info(*rt).contexts, 1u);
  ASSERT_TRUE(rt->CurrentContext(&ctx).ok());
  EXPECT_EQ(ctx, primary);
  EXPECT_EQ(Info(*rt).contexts, 2u);
}

// Counts the context-local storage destructors that ran, and for which
// context.
int destructor_runs = 0;
uint64_t destructor_context = 0;
void CountDestructor(void* context, void* /*key*/, void* /*value*/) {
  ++destructor_runs;
  destructor_context = reinterpret_cast<uint64_t>(context);
}

TEST_F(RuntimeTest, DestroyingAContextFreesItsAllocationsAndModulesOnTheServer) {
  std::unique_ptr<Runtime> rt = Connect();
  ASSERT_NE(rt, nullptr);
  uint64_t ctx = 0;
  ASSERT_TRUE(rt->CreateContext(0, 0, &ctx).ok());
  uint64_t a = 0, b = 0;
  ASSERT_TRUE(rt->AllocDevice(ctx, 4096, &a).ok());
  ASSERT_TRUE(rt->AllocDevice(ctx, 8192, &b).ok());
  uint64_t library = 0, module = 0;
  Status loaded = rt->LoadLibrary(test::TinyLibraryImage(), &library);
  ASSERT_TRUE(loaded.ok()) << loaded.ToString();
  ASSERT_TRUE(rt->LibraryModule(library, ctx, &module).ok());
  int key = 0;
  destructor_runs = 0;
  rt->context_local_storage().Put(ctx, &key, nullptr, CountDestructor);

  server::SessionInfo before = Info(*rt);
  EXPECT_EQ(before.contexts, 1u);
  EXPECT_EQ(before.allocations, 2u);
  EXPECT_GE(before.bytes_allocated, 4096u + 8192u);
  EXPECT_EQ(before.modules, 1u);

  ASSERT_TRUE(rt->DestroyContext(ctx).ok());
  EXPECT_EQ(destructor_runs, 1);
  EXPECT_EQ(destructor_context, ctx);
  server::SessionInfo after = Info(*rt);
  EXPECT_EQ(after.contexts, 0u);
  EXPECT_EQ(after.allocations, 0u);
  EXPECT_EQ(after.bytes_allocated, 0u);
  EXPECT_EQ(after.modules, 0u);

  // The client forgot them too, and the context is no longer current.
  EXPECT_FALSE(rt->allocations().FindDevice(a, nullptr, nullptr));
  EXPECT_FALSE(rt->allocations().FindDevice(b, nullptr, nullptr));
  ModuleState state;
  EXPECT_FALSE(rt->modules().FindModule(module, &state).ok());
  EXPECT_EQ(rt->contexts().Check(ctx).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(rt->CurrentContextId(), 0u);
  // The library outlives the context.
  uint64_t kernel = 0;
  EXPECT_TRUE(rt->modules().LibraryKernel(library, "k", &kernel).ok());
}

TEST_F(RuntimeTest, ALibraryLoadedOnceGetsAModulePerContextOnFirstUse) {
  std::unique_ptr<Runtime> rt = Connect();
  ASSERT_NE(rt, nullptr);
  uint64_t library = 0;
  Status loaded = rt->LoadLibrary(test::TinyLibraryImage(), &library);
  ASSERT_TRUE(loaded.ok()) << loaded.ToString();
  EXPECT_TRUE(Runtime::IsKind(library, HandleKind::kLibrary));
  uint64_t kernel = 0;
  ASSERT_TRUE(rt->modules().LibraryKernel(library, "k", &kernel).ok());

  // Not in a context that is not live.
  const uint64_t primary = rt->contexts().PrimaryId(0);
  uint64_t module = 0;
  EXPECT_EQ(rt->LibraryModule(library, primary, &module).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);

  uint64_t first = 0, second = 0;
  ASSERT_TRUE(rt->RetainPrimary(0, &first).ok());
  ASSERT_TRUE(rt->CreateContext(1, 0, &second).ok());
  EXPECT_EQ(Info(*rt).modules, 0u);  // loaded, but in no context yet

  uint64_t m1 = 0, m1_again = 0, m2 = 0;
  ASSERT_TRUE(rt->LibraryModule(library, first, &m1).ok());
  ASSERT_TRUE(rt->LibraryModule(library, first, &m1_again).ok());
  EXPECT_EQ(m1, m1_again);
  EXPECT_EQ(Info(*rt).modules, 1u);
  ASSERT_TRUE(rt->LibraryModule(library, second, &m2).ok());
  EXPECT_NE(m1, m2);
  EXPECT_EQ(Info(*rt).modules, 2u);

  // The kernel's function in each context lives in that context's module.
  uint64_t f1 = 0, f1_again = 0, f2 = 0;
  ASSERT_TRUE(rt->KernelFunction(kernel, first, &f1).ok());
  ASSERT_TRUE(rt->KernelFunction(kernel, first, &f1_again).ok());
  EXPECT_EQ(f1, f1_again);
  ASSERT_TRUE(rt->KernelFunction(kernel, second, &f2).ok());
  EXPECT_NE(f1, f2);
  FunctionState function;
  ASSERT_TRUE(rt->modules().FindFunction(f1, &function).ok());
  EXPECT_EQ(function.module, m1);
  ASSERT_TRUE(rt->modules().FindFunction(f2, &function).ok());
  EXPECT_EQ(function.module, m2);
  // A CUkernel where a CUfunction goes names the current context's function.
  uint64_t resolved = 0;
  ASSERT_TRUE(rt->ResolveFunction(kernel, 0, &resolved, &function).ok());
  EXPECT_EQ(resolved, f2);         // CreateContext made `second` current
  EXPECT_TRUE(Barrier(*rt).ok());  // the server took every registration

  ASSERT_TRUE(rt->UnloadLibrary(library).ok());
  EXPECT_EQ(Info(*rt).modules, 0u);
  EXPECT_FALSE(rt->modules().FindFunction(f1, &function).ok());
}

// cuOccupancyMaxPotentialBlockSize's search: the callback is asked for each
// candidate (the largest block size, then every multiple of the warp size
// below it), all candidates go to the server in one call, and the function's
// maximum block size is asked only the first time: one round trip after that.
TEST_F(RuntimeTest, MaxPotentialBlockSizeTakesOneRoundTrip) {
  std::unique_ptr<Runtime> rt = Connect();
  ASSERT_NE(rt, nullptr);
  uint64_t library = 0, kernel = 0, ctx = 0, function = 0;
  ASSERT_TRUE(rt->LoadLibrary(test::TinyLibraryImage(), &library).ok());
  ASSERT_TRUE(rt->modules().LibraryKernel(library, "k", &kernel).ok());
  ASSERT_TRUE(rt->CreateContext(0, 0, &ctx).ok());
  ASSERT_TRUE(rt->KernelFunction(kernel, ctx, &function).ok());
  ASSERT_TRUE(Barrier(*rt).ok());

  std::vector<int> asked;
  auto smem_of = [&](int size) {
    asked.push_back(size);
    return static_cast<size_t>(size) * 16;
  };
  int min_grid = 0, block = 0;
  uint64_t before = rt->PartConnection(0).NextSeq();
  Status status = MaxPotentialBlockSize(*rt, function, smem_of, 0, 0, &min_grid, &block);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(rt->PartConnection(0).NextSeq() - before,
            2u);  // the function's maximum, then the search
  ASSERT_FALSE(asked.empty());
  const int warp = rt->devices()[0].Attribute(CU_DEVICE_ATTRIBUTE_WARP_SIZE);
  for (size_t i = 1; i < asked.size(); ++i) {
    EXPECT_LT(asked[i], asked[i - 1]);
    EXPECT_EQ(asked[i] % warp, 0);
  }
  EXPECT_EQ(asked.back(), warp);

  // The answer is the best of the candidates, each asked of the server alone.
  std::vector<uint32_t> sizes(asked.begin(), asked.end());
  std::vector<uint64_t> smem;
  for (int size : asked) smem.push_back(static_cast<uint64_t>(size) * 16);
  std::vector<int> blocks;
  ASSERT_TRUE(MaxActiveBlocks(*rt, function, sizes, smem, 0, &blocks).ok());
  long long best_threads = 0;
  int best_size = 0, best_blocks = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (1ll * blocks[i] * sizes[i] > best_threads) {
      best_threads = 1ll * blocks[i] * sizes[i];
      best_size = static_cast<int>(sizes[i]);
      best_blocks = blocks[i];
    }
  }
  EXPECT_GT(best_size, 0);
  EXPECT_EQ(block, best_size);
  EXPECT_EQ(min_grid,
            best_blocks * rt->devices()[0].Attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT));

  // Again, and with a limit: one call each.
  const std::vector<int> first_asked = asked;
  asked.clear();
  before = rt->PartConnection(0).NextSeq();
  int again_grid = 0, again_block = 0;
  ASSERT_TRUE(MaxPotentialBlockSize(*rt, function, smem_of, 0, 0, &again_grid, &again_block).ok());
  EXPECT_EQ(rt->PartConnection(0).NextSeq() - before, 1u);
  EXPECT_EQ(asked, first_asked);
  EXPECT_EQ(again_block, block);
  EXPECT_EQ(again_grid, min_grid);
  asked.clear();
  before = rt->PartConnection(0).NextSeq();
  ASSERT_TRUE(
      MaxPotentialBlockSize(*rt, function, smem_of, 100, 0, &again_grid, &again_block).ok());
  EXPECT_EQ(rt->PartConnection(0).NextSeq() - before, 1u);
  ASSERT_FALSE(asked.empty());
  EXPECT_EQ(asked.front(), 100);
  EXPECT_LE(again_block, 100);
}

TEST_F(RuntimeTest, BadHandlesAreRefusedWithoutARoundTrip) {
  std::unique_ptr<Runtime> rt = Connect();
  ASSERT_NE(rt, nullptr);
  uint64_t ctx = 0;
  ASSERT_TRUE(rt->CreateContext(0, 0, &ctx).ok());
  const uint64_t bogus_ctx = (uint64_t{0xC7} << 48) | 0xFFFFFF;
  const uint64_t bogus_function = (uint64_t{0xF7} << 48) | 0xFFFFFF;
  const uint64_t bogus_library = (uint64_t{0x1B} << 48) | 0xFFFFFF;
  const uint64_t bogus_stream = (uint64_t{0x57} << 48) | 0xFFFFFF;

  ASSERT_TRUE(rt->PartConnection(0).Flush().ok());
  const uint64_t seq = rt->PartConnection(0).NextSeq();
  EXPECT_EQ(rt->EnsureLive(bogus_ctx).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(rt->DestroyContext(bogus_ctx).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(rt->DestroyContext(rt->contexts().PrimaryId(0)).cuda_result(),
            CUDA_ERROR_INVALID_CONTEXT);  // a primary context is not cuCtxDestroy's
  uint64_t id = 0;
  FunctionState function;
  EXPECT_EQ(rt->ResolveFunction(bogus_function, ctx, &id, &function).cuda_result(),
            CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(rt->ResolveFunction(0, ctx, &id, &function).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(rt->LibraryModule(bogus_library, ctx, &id).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(rt->UnloadLibrary(bogus_library).cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  StreamTarget target;
  EXPECT_EQ(
      rt->ResolveStream(reinterpret_cast<CUstream>(bogus_stream), false, &target).cuda_result(),
      CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(rt->PartConnection(0).NextSeq(), seq) << "a refused handle reached the wire";
  EXPECT_EQ(Info(*rt).contexts, 1u);
}

TEST_F(RuntimeTest, TwoRuntimesShareNeitherHandlesNorThreadState) {
  std::unique_ptr<Runtime> a = Connect();
  std::unique_ptr<Runtime> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a->session_id(), b->session_id());

  uint64_t ctx_a = 0, ctx_b = 0;
  ASSERT_TRUE(a->CreateContext(0, 0, &ctx_a).ok());
  ASSERT_TRUE(b->CreateContext(0, 0, &ctx_b).ok());
  EXPECT_NE(ctx_a, ctx_b);
  EXPECT_NE(a->contexts().PrimaryId(0), b->contexts().PrimaryId(0));
  // Each instance has its own current context on this thread.
  EXPECT_EQ(a->CurrentContextId(), ctx_a);
  EXPECT_EQ(b->CurrentContextId(), ctx_b);
  EXPECT_EQ(b->PopCurrent(), ctx_b);
  EXPECT_EQ(a->CurrentContextId(), ctx_a);
  EXPECT_EQ(b->CurrentContextId(), 0u);
  // And none on another thread.
  uint64_t other_thread_current = 1;
  std::thread([&] { other_thread_current = a->CurrentContextId(); }).join();
  EXPECT_EQ(other_thread_current, 0u);

  // B's registry does not know A's context: refused locally.
  const uint64_t seq = b->PartConnection(0).NextSeq();
  EXPECT_EQ(b->EnsureLive(ctx_a).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(b->DestroyContext(ctx_a).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(b->PartConnection(0).NextSeq(), seq);

  // B's session on the server does not know A's context or memory either.
  uint64_t dptr_a = 0;
  ASSERT_TRUE(a->AllocDevice(ctx_a, 4096, &dptr_a).ok());
  uint64_t stray = 0;
  EXPECT_FALSE(b->AllocDevice(ctx_a, 4096, &stray).ok());
  ASSERT_TRUE(b->PartConnection(0)
                  .Post([&](wire::Call::Builder call) { call.initMemFree().setDptr(dptr_a); })
                  .ok());
  EXPECT_FALSE(Barrier(*b).ok()) << "B freed A's memory";
  server::SessionInfo info_a = Info(*a);
  EXPECT_EQ(info_a.allocations, 1u);
  EXPECT_EQ(info_a.contexts, 1u);
  server::SessionInfo info_b = Info(*b);
  EXPECT_EQ(info_b.allocations, 0u);
  EXPECT_EQ(info_b.contexts, 1u);

  // Destroying a context of B leaves A's alone.
  ASSERT_TRUE(b->DestroyContext(ctx_b).ok());
  EXPECT_EQ(Info(*b).contexts, 0u);
  EXPECT_EQ(Info(*a).contexts, 1u);
  EXPECT_TRUE(a->contexts().IsLive(ctx_a));
}

TEST_F(RuntimeTest, DestroyingARuntimeEndsItsSession) {
  std::unique_ptr<Runtime> a = Connect();
  std::unique_ptr<Runtime> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  uint64_t ctx = 0, dptr = 0;
  ASSERT_TRUE(a->CreateContext(0, 0, &ctx).ok());
  ASSERT_TRUE(a->AllocDevice(ctx, 4096, &dptr).ok());
  const uint64_t gone = a->session_id();
  a.reset();
  EXPECT_TRUE(test::WaitFor(
      [&] {
        for (const server::SessionInfo& info : server_->Sessions()) {
          if (info.id == gone) return false;
        }
        return true;
      },
      10s));
  EXPECT_EQ(server_->Sessions().size(), 1u);
  EXPECT_TRUE(Barrier(*b).ok());  // the other session goes on
}

// Migration between servers (schema MigrationOffer) with the target in this
// very process: the first server's memory lies at the session's addresses
// here, so the second cannot place it there. The move is refused, and the
// program goes on where it was with everything it had.
TEST_F(SplitRuntimeTest, AMoveToAServerThatCannotPlaceTheMemoryLeavesTheProgramWhereItWas) {
  rt_.reset();  // a Runtime of its own, on the first server only, that follows moves
  std::unique_ptr<Transport> transport;
  ASSERT_TRUE(ConnectTcp(addresses_[0], 5000ms, &transport).ok());
  ConnectionOptions options;
  options.connect_to = [](const std::string& address, std::unique_ptr<Transport>* out) {
    return ConnectTransport(address, 5000ms, out);
  };
  std::unique_ptr<Runtime> rt;
  Status status = Runtime::Connect(std::move(transport), addresses_[0], Connection::Borrow{}, &rt,
                                   options);
  ASSERT_TRUE(status.ok()) << status.ToString();
  uint64_t ctx = 0, dptr = 0;
  ASSERT_TRUE(rt->CreateContext(0, 0, &ctx).ok());
  ASSERT_TRUE(rt->AllocDevice(ctx, 1 << 20, &dptr).ok());
  std::vector<uint8_t> bytes(1 << 20);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  Connection& connection = rt->PartConnection(0);
  auto copy_in = [&](wire::Call::Builder call) {
    auto args = call.initMemcpyHtoD();
    args.setCtx(ctx);
    args.setDst(dptr);
    args.setBytes(bytes.size());
  };
  ASSERT_TRUE(connection.Post(copy_in, OutBytes{bytes.data(), bytes.size()}).ok());

  // ferryctl's request: session 1 to the second server's GPU 0.
  std::unique_ptr<Transport> control;
  ASSERT_TRUE(ConnectTcp(addresses_[0], 5000ms, &control).ok());
  {
    capnp::MallocMessageBuilder message;
    auto hello = message.initRoot<wire::Hello>();
    hello.setProtocolVersion(wire::PROTOCOL_VERSION);
    hello.setRole(wire::Hello::Role::CONTROL);
    ASSERT_TRUE(WriteFrame(*control, wire::FrameKind::HELLO, message).ok());
    Frame frame;
    ASSERT_TRUE(ReadFrame(*control, &frame).ok());
  }
  {
    capnp::MallocMessageBuilder message;
    auto migrate = message.initRoot<wire::ControlRequest>().initMigrate();
    migrate.setSession(rt->session_id());
    migrate.setGpu(0);
    migrate.setDevice(-1);
    migrate.setServer(addresses_[1]);
    ASSERT_TRUE(WriteFrame(*control, wire::FrameKind::CONTROL_REQUEST, message).ok());
  }
  Frame frame;
  ASSERT_TRUE(ReadFrame(*control, &frame).ok());
  capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
  const Status moved = StatusFromWire(reader.getRoot<wire::ControlReply>().getStatus());
  EXPECT_FALSE(moved.ok());
  EXPECT_NE(moved.message().find("stays here"), std::string::npos) << moved.ToString();
  EXPECT_NE(moved.message().find("is taken"), std::string::npos) << moved.ToString();

  // Still the first server's, with its memory, and nothing left on the second.
  std::vector<uint8_t> back(bytes.size());
  Status read = connection.Call(
      [&](wire::Call::Builder call) {
        auto args = call.initMemcpyDtoH();
        args.setCtx(ctx);
        args.setSrc(dptr);
        args.setBytes(back.size());
      },
      {}, InBytes{back.data(), back.size()});
  ASSERT_TRUE(read.ok()) << read.ToString();
  EXPECT_EQ(back, bytes);
  EXPECT_EQ(servers_[0]->Sessions().size(), 1u);
  EXPECT_TRUE(test::WaitFor([&] { return servers_[1]->Sessions().empty(); }, 10s, 10ms));
}

}  // namespace
}  // namespace ferry::client
