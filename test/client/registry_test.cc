// The client's registries (client/*_registry.h): ids, lookups, what a
// destroyed context takes with it, range lookups at their edges, capture
// bookkeeping and graph structure, and concurrent use from several threads.
#include <cuda.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client/allocation_registry.h"
#include "client/context_registry.h"
#include "client/graph_registry.h"
#include "client/handles.h"
#include "client/module_registry.h"
#include "client/stream_registry.h"

namespace ferry::client {
namespace {

// The CUresult the program would see.
CUresult Code(const Status& s) { return static_cast<CUresult>(s.cuda_result()); }

KernelTable Kernels(std::initializer_list<std::string> names) {
  auto table = std::make_shared<std::map<std::string, KernelInfo>>();
  for (const std::string& name : names) {
    KernelInfo info;
    info.params = {{0, 8}, {8, 4}};
    info.param_bytes = 12;
    (*table)[name] = info;
  }
  return table;
}

TEST(HandleIdsTest, IdsCarryTheirKindAndAreUnique) {
  HandleIds ids;
  const uint64_t a = ids.New(HandleKind::kContext);
  const uint64_t b = ids.New(HandleKind::kStream);
  EXPECT_TRUE(IsHandleKind(a, HandleKind::kContext));
  EXPECT_FALSE(IsHandleKind(a, HandleKind::kStream));
  EXPECT_TRUE(IsHandleKind(b, HandleKind::kStream));
  EXPECT_NE(a & 0xffffffffffffULL, b & 0xffffffffffffULL);
}

TEST(ContextRegistryTest, CreatedContextLifecycle) {
  HandleIds ids;
  ContextRegistry contexts(&ids);
  const uint64_t ctx = contexts.Add(/*device=*/1, /*flags=*/4);
  EXPECT_TRUE(IsHandleKind(ctx, HandleKind::kContext));
  EXPECT_TRUE(contexts.Check(ctx).ok());
  int device = -1;
  unsigned flags = 0;
  ASSERT_TRUE(contexts.Device(ctx, &device).ok());
  ASSERT_TRUE(contexts.Flags(ctx, &flags).ok());
  EXPECT_EQ(device, 1);
  EXPECT_EQ(flags, 4u);
  EXPECT_FALSE(contexts.IsLive(ctx));
  EXPECT_TRUE(contexts.LiveContexts().empty());
  EXPECT_TRUE(contexts.MarkLive(ctx));
  EXPECT_TRUE(contexts.IsLive(ctx));
  EXPECT_EQ(contexts.LiveContexts(), std::vector<uint64_t>{ctx});
  EXPECT_TRUE(contexts.CheckDestroyable(ctx).ok());
  bool was_live = false;
  ASSERT_TRUE(contexts.Remove(ctx, &was_live).ok());
  EXPECT_TRUE(was_live);
  EXPECT_EQ(Code(contexts.Check(ctx)), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(Code(contexts.Remove(ctx, &was_live)), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_FALSE(contexts.MarkLive(ctx));  // a destroyed context is not brought back
  EXPECT_EQ(Code(contexts.Check(ctx)), CUDA_ERROR_INVALID_CONTEXT);
}

TEST(ContextRegistryTest, PrimaryContextIsStableAndRefCounted) {
  HandleIds ids;
  ContextRegistry contexts(&ids);
  contexts.SetPrimaryFlags(0, 2);
  const uint64_t primary = contexts.PrimaryId(0);
  EXPECT_EQ(contexts.PrimaryId(0), primary);
  EXPECT_NE(contexts.PrimaryId(1), primary);
  unsigned flags = 0;
  ASSERT_TRUE(contexts.Flags(primary, &flags).ok());
  EXPECT_EQ(flags, 2u);
  EXPECT_EQ(Code(contexts.CheckDestroyable(primary)), CUDA_ERROR_INVALID_CONTEXT);
  bool was_live = false;
  EXPECT_EQ(Code(contexts.Remove(primary, &was_live)), CUDA_ERROR_INVALID_CONTEXT);

  int active = -1;
  contexts.PrimaryState(0, &flags, &active);
  EXPECT_EQ(active, 0);
  contexts.MarkLive(primary);
  contexts.RetainPrimary(0);
  contexts.RetainPrimary(0);
  contexts.PrimaryState(0, &flags, &active);
  EXPECT_EQ(active, 1);
  bool last = true;
  ASSERT_TRUE(contexts.ReleasePrimary(0, &last).ok());
  EXPECT_FALSE(last);
  ASSERT_TRUE(contexts.ReleasePrimary(0, &last).ok());
  EXPECT_TRUE(last);
  EXPECT_EQ(Code(contexts.ReleasePrimary(0, &last)), CUDA_ERROR_INVALID_CONTEXT);
  // Reset: not live, same id afterwards; only one resetter wins.
  EXPECT_TRUE(contexts.MarkNotLive(primary));
  EXPECT_FALSE(contexts.MarkNotLive(primary));
  EXPECT_EQ(contexts.PrimaryId(0), primary);
  contexts.SetPrimaryFlags(0, 8);
  ASSERT_TRUE(contexts.Flags(primary, &flags).ok());
  EXPECT_EQ(flags, 8u);
}

TEST(StreamRegistryTest, StreamsAndEventsGoWithTheirContext) {
  HandleIds ids;
  StreamRegistry streams(&ids);
  uint64_t s1 = 0, s2 = 0, e1 = 0, e2 = 0;
  ASSERT_TRUE(streams.AddStream(/*ctx=*/10, 1, -1, &s1).ok());
  ASSERT_TRUE(streams.AddStream(/*ctx=*/20, 0, 0, &s2).ok());
  ASSERT_TRUE(streams.AddEvent(10, 2, &e1).ok());
  ASSERT_TRUE(streams.AddEvent(20, 0, &e2).ok());
  EXPECT_TRUE(IsHandleKind(s1, HandleKind::kStream));
  EXPECT_TRUE(IsHandleKind(e1, HandleKind::kEvent));
  StreamState stream;
  ASSERT_TRUE(streams.FindStream(s1, &stream).ok());
  EXPECT_EQ(stream.ctx, 10u);
  EXPECT_EQ(stream.flags, 1u);
  EXPECT_EQ(stream.priority, -1);

  streams.NoteEventRecord(e1, StreamKey{10, s1}, 7);
  streams.NoteEventRecord(e1, StreamKey{10, 0}, 5);  // an earlier call, noted later
  EventState event;
  ASSERT_TRUE(streams.FindEvent(e1, &event).ok());
  EXPECT_EQ(event.recorded_seq, 7u);
  EXPECT_EQ(event.recorded_on, (StreamKey{10, s1}));

  streams.ForgetContext(10);
  EXPECT_FALSE(streams.HasStream(s1));
  EXPECT_EQ(Code(streams.FindEvent(e1, &event)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_TRUE(streams.HasStream(s2));
  EXPECT_TRUE(streams.FindEvent(e2, &event).ok());
  ASSERT_TRUE(streams.RemoveStream(s2, &stream).ok());
  EXPECT_EQ(stream.ctx, 20u);
  EXPECT_EQ(Code(streams.RemoveStream(s2, nullptr)), CUDA_ERROR_INVALID_HANDLE);
  ASSERT_TRUE(streams.RemoveEvent(e2).ok());
  EXPECT_EQ(Code(streams.RemoveEvent(e2)), CUDA_ERROR_INVALID_HANDLE);
}

TEST(ModuleRegistryTest, FunctionsHaveOneIdPerModuleAndName) {
  HandleIds ids;
  ModuleRegistry modules(&ids);
  const uint64_t module = ids.New(HandleKind::kModule);
  modules.AddModule(module, ModuleState{/*ctx=*/5, Kernels({"add", "mul"}), {}, 0});
  uint64_t add = 0, again = 0, mul = 0;
  bool created = false;
  ASSERT_TRUE(modules.AddFunction(module, "add", &add, &created).ok());
  EXPECT_TRUE(created);
  ASSERT_TRUE(modules.AddFunction(module, "add", &again, &created).ok());
  EXPECT_FALSE(created);
  EXPECT_EQ(again, add);
  ASSERT_TRUE(modules.AddFunction(module, "mul", &mul, &created).ok());
  EXPECT_NE(mul, add);
  EXPECT_TRUE(IsHandleKind(add, HandleKind::kFunction));
  EXPECT_EQ(Code(modules.AddFunction(module, "nope", &again, &created)), CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(Code(modules.AddFunction(module + 1, "add", &again, &created)),
            CUDA_ERROR_INVALID_HANDLE);

  FunctionState function;
  ASSERT_TRUE(modules.FindFunction(add, &function).ok());
  EXPECT_EQ(function.module, module);
  EXPECT_EQ(function.ctx, 5u);
  EXPECT_EQ(function.name, "add");
  size_t offset = 0, size = 0;
  ASSERT_TRUE(ParamInfo(function.kernel, 1, &offset, &size).ok());
  EXPECT_EQ(offset, 8u);
  EXPECT_EQ(size, 4u);
  EXPECT_FALSE(ParamInfo(function.kernel, 2, &offset, &size).ok());

  modules.EraseFunction(mul);
  EXPECT_EQ(Code(modules.FindFunction(mul, &function)), CUDA_ERROR_INVALID_HANDLE);
  ASSERT_TRUE(modules.RemoveModule(module).ok());
  EXPECT_EQ(Code(modules.FindFunction(add, &function)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(Code(modules.RemoveModule(module)), CUDA_ERROR_INVALID_HANDLE);
}

TEST(ModuleRegistryTest, LibrariesOutliveContextsButNotTheirShareInThem) {
  HandleIds ids;
  ModuleRegistry modules(&ids);
  const uint64_t library = ids.New(HandleKind::kLibrary);
  LibraryState state;
  state.kernel_names = {"k"};
  state.kernels = Kernels({"k"});
  state.globals = {{"g", 16}};
  modules.AddLibrary(library, state);
  EXPECT_EQ(modules.LibraryIds(), std::vector<uint64_t>{library});

  uint64_t kernel = 0, same = 0;
  ASSERT_TRUE(modules.LibraryKernel(library, "k", &kernel).ok());
  ASSERT_TRUE(modules.LibraryKernel(library, "k", &same).ok());
  EXPECT_EQ(kernel, same);
  EXPECT_TRUE(IsHandleKind(kernel, HandleKind::kKernel));
  EXPECT_EQ(Code(modules.LibraryKernel(library, "x", &same)), CUDA_ERROR_NOT_FOUND);

  // The library's module and the kernel's function in two contexts.
  std::map<uint64_t, uint64_t> function_in;
  for (uint64_t ctx : {uint64_t{100}, uint64_t{200}}) {
    uint64_t module = 1;
    ModuleState fresh;
    ASSERT_TRUE(modules.LibraryModuleIn(library, ctx, &module, &fresh).ok());
    ASSERT_EQ(module, 0u);
    EXPECT_EQ(fresh.ctx, ctx);
    EXPECT_EQ(fresh.library, library);
    EXPECT_EQ(fresh.globals.at("g"), 16u);
    module = ids.New(HandleKind::kModule);
    ASSERT_TRUE(modules.AddLibraryModule(library, module, fresh, [] { return true; }).ok());
    uint64_t found = 0;
    ASSERT_TRUE(modules.LibraryModuleIn(library, ctx, &found, &fresh).ok());
    EXPECT_EQ(found, module);

    uint64_t function = 1;
    KernelState kernel_state;
    ASSERT_TRUE(modules.KernelFunctionIn(kernel, ctx, &function, &kernel_state).ok());
    ASSERT_EQ(function, 0u);
    EXPECT_EQ(kernel_state.name, "k");
    bool created = false;
    ASSERT_TRUE(modules.AddFunction(module, "k", &function, &created).ok());
    ASSERT_TRUE(modules.SetKernelFunction(kernel, ctx, function).ok());
    function_in[ctx] = function;
  }
  // A module for a context that went meanwhile is refused.
  uint64_t module = 0;
  ModuleState fresh;
  ASSERT_TRUE(modules.LibraryModuleIn(library, 300, &module, &fresh).ok());
  EXPECT_EQ(Code(modules.AddLibraryModule(library, ids.New(HandleKind::kModule), fresh,
                                          [] { return false; })),
            CUDA_ERROR_INVALID_CONTEXT);

  std::vector<std::pair<uint64_t, uint64_t>> functions;
  ASSERT_TRUE(modules.SetKernelAttribute(kernel, 0, 8, 1024, &functions).ok());
  EXPECT_EQ(functions.size(), 2u);
  KernelState kernel_state;
  ASSERT_TRUE(modules.FindKernel(kernel, &kernel_state).ok());
  EXPECT_EQ(kernel_state.attributes.at(0).at(8), 1024);

  // Context 100 goes: its module and function go, the library and kernel stay.
  modules.ForgetContext(100);
  FunctionState function;
  EXPECT_EQ(Code(modules.FindFunction(function_in[100], &function)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_TRUE(modules.FindFunction(function_in[200], &function).ok());
  LibraryState library_state;
  ASSERT_TRUE(modules.FindLibrary(library, &library_state).ok());
  EXPECT_EQ(library_state.modules.count(100), 0u);
  EXPECT_EQ(library_state.modules.count(200), 1u);
  uint64_t function_id = 1;
  ASSERT_TRUE(modules.KernelFunctionIn(kernel, 100, &function_id, &kernel_state).ok());
  EXPECT_EQ(function_id, 0u);
  EXPECT_EQ(Code(modules.SetKernelFunction(kernel, 100, function_in[100])),
            CUDA_ERROR_INVALID_CONTEXT);
  // A library's module is not unloaded by cuModuleUnload.
  EXPECT_EQ(Code(modules.RemoveModule(library_state.modules.at(200))), CUDA_ERROR_INVALID_HANDLE);

  ASSERT_TRUE(modules.RemoveLibrary(library).ok());
  EXPECT_EQ(Code(modules.FindFunction(function_in[200], &function)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(Code(modules.FindKernel(kernel, &kernel_state)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(Code(modules.FindModule(library_state.modules.at(200), &fresh)),
            CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(Code(modules.RemoveLibrary(library)), CUDA_ERROR_INVALID_HANDLE);
}

TEST(AllocationRegistryTest, DeviceRangesAtTheirEdges) {
  AllocationRegistry allocations;
  allocations.AddDevice(0x1000, 0x100, /*ctx=*/1);
  allocations.AddDevice(0x1100, 0x100, /*ctx=*/1);  // adjacent
  uint64_t base = 0;
  DeviceAllocation found;
  EXPECT_FALSE(allocations.FindDevice(0xfff, &base, &found));
  ASSERT_TRUE(allocations.FindDevice(0x1000, &base, &found));
  EXPECT_EQ(base, 0x1000u);
  ASSERT_TRUE(allocations.FindDevice(0x10ff, &base, &found));
  EXPECT_EQ(base, 0x1000u);
  ASSERT_TRUE(allocations.FindDevice(0x1100, &base, &found));
  EXPECT_EQ(base, 0x1100u);
  EXPECT_FALSE(allocations.FindDevice(0x1200, nullptr, nullptr));

  EXPECT_TRUE(allocations.CheckDevice(0x1000, 0x100, "x").ok());
  EXPECT_TRUE(allocations.CheckDevice(0x10ff, 1, "x").ok());
  EXPECT_TRUE(allocations.CheckDevice(0x5000, 0, "x").ok());  // no bytes: nothing to check
  // Across two adjacent allocations is not inside one.
  EXPECT_EQ(Code(allocations.CheckDevice(0x10ff, 2, "x")), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(allocations.CheckDevice(0x1000, ~0ULL, "x")), CUDA_ERROR_INVALID_VALUE);
  EXPECT_TRUE(allocations.CheckDevice2D(0x1000, 0x40, 0x40, 4, "x").ok());
  EXPECT_FALSE(allocations.CheckDevice2D(0x1000, 0x40, 0x41, 4, "x").ok());
  EXPECT_FALSE(allocations.CheckDevice2D(0x1000, ~0ULL, 1, 3, "x").ok());  // overflows

  // cuMemFree takes the start only; globals are not freed.
  EXPECT_EQ(Code(allocations.RemoveDevice(0x1001)), CUDA_ERROR_INVALID_VALUE);
  allocations.AddDevice(0x8000, 0x10, /*ctx=*/2, /*global=*/true);
  EXPECT_EQ(Code(allocations.RemoveDevice(0x8000)), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(allocations.RemoveDevice(0x1100).ok());
  EXPECT_FALSE(allocations.FindDevice(0x1100, nullptr, nullptr));

  // A range the server hands out over a stale record replaces it.
  allocations.AddDevice(0x1080, 0x100, /*ctx=*/3);
  ASSERT_TRUE(allocations.FindDevice(0x1090, &base, &found));
  EXPECT_EQ(base, 0x1080u);
  EXPECT_EQ(found.ctx, 3u);
  EXPECT_FALSE(allocations.FindDevice(0x1000, nullptr, nullptr));

  // A context's allocations (its globals included) go with it.
  allocations.ForgetContext(2);
  EXPECT_FALSE(allocations.FindDevice(0x8000, nullptr, nullptr));
  EXPECT_TRUE(allocations.FindDevice(0x1080, nullptr, nullptr));
}

// What a program whose devices span servers records (Runtime::RecordAllocation):
// a range overlapping memory of a context "elsewhere" is refused and changes
// nothing; one overlapping only its own server's stale records replaces them.
TEST(AllocationRegistryTest, RefusesARangeOverlappingAnotherServersMemory) {
  AllocationRegistry allocations;
  allocations.AddDevice(0x10000, 0x1000, /*ctx=*/1);
  allocations.AddDevice(0x20000, 0x1000, /*ctx=*/2);
  const auto context_2_elsewhere = [](uint64_t ctx) { return ctx == 2; };
  // Edges: touching is not overlapping.
  EXPECT_TRUE(allocations.AddDeviceUnlessOverlapping(0x11000, 0xF000, 3, context_2_elsewhere));
  EXPECT_FALSE(allocations.AddDeviceUnlessOverlapping(0x1FFFF, 2, 3, context_2_elsewhere));
  DeviceAllocation found;
  ASSERT_TRUE(allocations.FindDevice(0x20000, nullptr, &found));
  EXPECT_EQ(found.ctx, 2u);  // unchanged
  EXPECT_TRUE(allocations.FindDevice(0x11000, nullptr, &found));
  EXPECT_EQ(found.ctx, 3u);
  // Over context 1's (not elsewhere) record: replaces it.
  EXPECT_TRUE(allocations.AddDeviceUnlessOverlapping(0x10800, 0x100, 3, context_2_elsewhere));
  EXPECT_FALSE(allocations.FindDevice(0x10000, nullptr, nullptr));
}

// virtual memory management: a mapping is device memory only while some
// device may access it; mappings side by side are one span; a released
// handle's record stays while it is mapped.
TEST(AllocationRegistryTest, MappingsWithAccessAreDeviceMemoryAndJoin) {
  AllocationRegistry allocations;
  CUmemAllocationProp prop{};
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 1;
  allocations.AddPhysical(7, prop);
  allocations.AddMapping(0x10000, 0x1000, 7);
  allocations.AddMapping(0x11000, 0x1000, 7);
  EXPECT_FALSE(allocations.FindDevice(0x10000, nullptr, nullptr));  // no access yet
  const std::pair<int, unsigned> read_write[] = {{1, CU_MEM_ACCESS_FLAGS_PROT_READWRITE}};
  allocations.SetMappingAccess(0x10000, 0x2000, read_write);
  DeviceAllocation found;
  ASSERT_TRUE(allocations.FindDevice(0x11fff, nullptr, &found));
  EXPECT_TRUE(found.mapped);
  EXPECT_EQ(found.device, 1);
  EXPECT_TRUE(allocations.CheckDevice(0x10ff0, 0x20, "x").ok());                 // across both
  EXPECT_FALSE(allocations.CheckDevice(0x11ff0, 0x20, "x").ok());                // past the second
  EXPECT_EQ(Code(allocations.RemoveDevice(0x10000)), CUDA_ERROR_INVALID_VALUE);  // not cuMemFree's

  allocations.ReleasePhysical(7);
  EXPECT_EQ(Code(allocations.CheckPhysical(7, nullptr)), CUDA_ERROR_INVALID_HANDLE);
  allocations.RetainPhysical(7);  // cuMemRetainAllocationHandle of a mapped address
  PhysicalAllocation physical;
  ASSERT_TRUE(allocations.CheckPhysical(7, &physical).ok());
  EXPECT_EQ(physical.prop.location.id, 1);
  allocations.ReleasePhysical(7);

  const std::pair<int, unsigned> none[] = {{1, CU_MEM_ACCESS_FLAGS_PROT_NONE}};
  allocations.SetMappingAccess(0x11000, 0x1000, none);
  EXPECT_FALSE(allocations.FindDevice(0x11000, nullptr, nullptr));
  EXPECT_TRUE(allocations.FindDevice(0x10000, nullptr, nullptr));
  allocations.RemoveMappings(0x10000, 0x2000);
  EXPECT_FALSE(allocations.FindDevice(0x10000, nullptr, nullptr));
  allocations.RetainPhysical(7);  // gone with its last mapping
  EXPECT_EQ(Code(allocations.CheckPhysical(7, nullptr)), CUDA_ERROR_INVALID_HANDLE);
}

TEST(AllocationRegistryTest, HostRanges) {
  AllocationRegistry allocations;
  std::vector<char> buffer(256);
  char* p = buffer.data();
  ASSERT_TRUE(allocations.AddHost(p, HostAllocation{128, 0, /*registered=*/true}).ok());
  const void* base = nullptr;
  HostAllocation found;
  ASSERT_TRUE(allocations.FindHost(p + 127, &base, &found));
  EXPECT_EQ(base, p);
  EXPECT_TRUE(found.registered);
  EXPECT_FALSE(allocations.FindHost(p + 128, nullptr, nullptr));
  // An overlapping registration is refused; driver memory replaces.
  EXPECT_EQ(Code(allocations.AddHost(p + 64, HostAllocation{128, 0, true})),
            CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
  EXPECT_FALSE(allocations.AddHost(p + 200, HostAllocation{0, 0, true}).ok());
  ASSERT_TRUE(allocations.AddHost(p + 128, HostAllocation{64, 1, false}).ok());
  // Unregistering needs the start and the right kind.
  EXPECT_EQ(Code(allocations.RemoveHost(p + 1, true, nullptr)),
            CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
  EXPECT_EQ(Code(allocations.RemoveHost(p, false, nullptr)), CUDA_ERROR_INVALID_VALUE);
  HostAllocation removed;
  ASSERT_TRUE(allocations.RemoveHost(p + 128, false, &removed).ok());
  EXPECT_EQ(removed.flags, 1u);
  ASSERT_TRUE(allocations.RemoveHost(p, true, nullptr).ok());
  EXPECT_FALSE(allocations.FindHost(p, nullptr, nullptr));
}

// Threads add, look up and remove their own objects, and each makes and
// destroys a context of its own; every id stays unique and each thread finds
// what it made. Bounded: a fixed number of iterations.
TEST(RegistryConcurrencyTest, SeveralThreads) {
  HandleIds ids;
  ContextRegistry contexts(&ids);
  StreamRegistry streams(&ids);
  ModuleRegistry modules(&ids);
  AllocationRegistry allocations;
  constexpr int kThreads = 4;
  constexpr int kIterations = 500;
  std::vector<std::vector<uint64_t>> made(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const uint64_t ctx = contexts.Add(t, 0);
      contexts.MarkLive(ctx);
      const uint64_t module = ids.New(HandleKind::kModule);
      modules.AddModule(module, ModuleState{ctx, Kernels({"k"}), {}, 0});
      for (int i = 0; i < kIterations; ++i) {
        uint64_t stream = 0, function = 0;
        bool created = false;
        ASSERT_TRUE(streams.AddStream(ctx, 0, 0, &stream).ok());
        ASSERT_TRUE(modules.AddFunction(module, "k", &function, &created).ok());
        EXPECT_EQ(created, i == 0);
        const uint64_t dptr = (uint64_t{1} << 40) * (t + 1) + uint64_t{0x1000} * i;
        allocations.AddDevice(dptr, 0x1000, ctx);
        ASSERT_TRUE(allocations.CheckDevice(dptr + 0xfff, 1, "x").ok());
        ASSERT_TRUE(streams.HasStream(stream));
        made[t].push_back(stream);
        ASSERT_TRUE(streams.RemoveStream(stream, nullptr).ok());
        if (i % 2 == 0) {
          ASSERT_TRUE(allocations.RemoveDevice(dptr).ok());
        }
      }
      // A short-lived context of this thread: made, used, destroyed.
      const uint64_t scratch = contexts.Add(t, 0);
      uint64_t event = 0;
      ASSERT_TRUE(streams.AddEvent(scratch, 0, &event).ok());
      bool live = true;
      ASSERT_TRUE(contexts.Remove(scratch, &live).ok());
      EXPECT_FALSE(live);
      streams.ForgetContext(scratch);
      modules.ForgetContext(scratch);
      allocations.ForgetContext(scratch);
      EventState state;
      EXPECT_FALSE(streams.FindEvent(event, &state).ok());
      made[t].push_back(event);
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::set<uint64_t> unique;
  for (const auto& list : made) unique.insert(list.begin(), list.end());
  EXPECT_EQ(unique.size(), static_cast<size_t>(kThreads * (kIterations + 1)));
  EXPECT_EQ(contexts.LiveContexts().size(), static_cast<size_t>(kThreads));
  for (uint64_t ctx : contexts.LiveContexts()) allocations.ForgetContext(ctx);
  EXPECT_FALSE(allocations.FindDevice((uint64_t{1} << 40) + 0x1000, nullptr, nullptr));
}

// --- GraphRegistry ------------------------------------------------------------------

TEST(GraphRegistryTest, AnEventRecordedInACaptureForksTheStreamThatWaitsForIt) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  CaptureState origin;
  origin.ctx = 1;
  origin.mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
  ASSERT_TRUE(graphs.BeginCapture(10, &origin).ok());
  EXPECT_EQ(origin.origin, 10u);
  graphs.NoteEventRecord(/*event=*/7, /*stream=*/10);
  graphs.NoteStreamWait(/*stream=*/11, /*ctx=*/1, /*blocking=*/false, /*event=*/7);
  CaptureState joined;
  ASSERT_TRUE(graphs.FindCapture(11, &joined));
  EXPECT_EQ(joined.id, origin.id);
  EXPECT_EQ(joined.origin, 10u);
  // Another context's stream does not join; an unmarked event forks nothing.
  graphs.NoteStreamWait(12, /*ctx=*/2, false, 7);
  graphs.NoteStreamWait(13, 1, false, /*event=*/8);
  EXPECT_FALSE(graphs.FindCapture(12, &joined));
  EXPECT_FALSE(graphs.FindCapture(13, &joined));
  // Re-recorded outside the capture, the event forks nothing either.
  graphs.NoteEventRecord(7, /*stream=*/14);
  graphs.NoteStreamWait(15, 1, false, 7);
  EXPECT_FALSE(graphs.FindCapture(15, &joined));
  // A joined stream destroyed leaves; the origin destroyed ends the capture.
  graphs.ForgetStream(11);
  EXPECT_FALSE(graphs.FindCapture(11, &joined));
  EXPECT_TRUE(graphs.AnyCapture());
  graphs.NoteEventRecord(7, 10);
  graphs.NoteStreamWait(11, 1, false, 7);
  graphs.ForgetStream(10);
  EXPECT_FALSE(graphs.FindCapture(11, &joined));
  EXPECT_FALSE(graphs.AnyCapture());
}

TEST(GraphRegistryTest, CaptureModesForbidUnsafeCallsAsTheDriverDoes) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  EXPECT_TRUE(graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_GLOBAL).empty());
  CaptureState local;
  local.mode = CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
  ASSERT_TRUE(graphs.BeginCapture(10, &local).ok());
  // This thread's thread-local capture forbids it in global and thread-local
  // mode, not in relaxed mode; another thread is not forbidden.
  EXPECT_EQ(graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_GLOBAL).size(), 1u);
  EXPECT_EQ(graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).size(), 1u);
  EXPECT_TRUE(graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_RELAXED).empty());
  size_t other_thread = 99;
  std::thread([&] {
    other_thread = graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_GLOBAL).size();
  }).join();
  EXPECT_EQ(other_thread, 0u);
  // A global capture of another thread forbids this thread in global mode only.
  std::thread([&] {
    CaptureState global;
    global.mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    ASSERT_TRUE(graphs.BeginCapture(20, &global).ok());
  }).join();
  graphs.ForgetStream(10);
  EXPECT_EQ(graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_GLOBAL).size(), 1u);
  EXPECT_TRUE(graphs.CapturesForbiddingUnsafeCalls(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).empty());
}

TEST(GraphRegistryTest, RecordsTheStructureOfGraphsBuiltNodeByNode) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  const uint64_t graph = graphs.NewGraph();
  const uint64_t a = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_MEMSET, {});
  const uint64_t b = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_KERNEL, {a});
  std::vector<GraphRegistry::NodeShape> shape;
  ASSERT_TRUE(graphs.GraphShape(graph, &shape).ok());
  ASSERT_EQ(shape.size(), 2u);
  EXPECT_EQ(shape[0].id, a);
  EXPECT_EQ(shape[1].dependencies, std::vector<uint64_t>{a});
  // Executable graphs: a kernel node of their own graph only.
  const uint64_t exec = graphs.NewExec(graph, 0);
  EXPECT_TRUE(graphs.CheckExecNode(exec, b, {CU_GRAPH_NODE_TYPE_KERNEL}).ok());
  EXPECT_EQ(Code(graphs.CheckExecNode(exec, a, {CU_GRAPH_NODE_TYPE_KERNEL})),
            CUDA_ERROR_INVALID_VALUE);
  const uint64_t other = graphs.NewGraph();
  const uint64_t c = graphs.NewNode(other, CU_GRAPH_NODE_TYPE_KERNEL, {});
  EXPECT_EQ(Code(graphs.CheckExecNode(exec, c, {CU_GRAPH_NODE_TYPE_KERNEL})),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_TRUE(graphs.NodeEnabled(exec, b));
  graphs.SetNodeEnabled(exec, b, false);
  EXPECT_FALSE(graphs.NodeEnabled(exec, b));
  // Opaque graphs (captured, cloned) have no recorded structure; a destroyed
  // graph takes its nodes with it.
  const uint64_t captured = graphs.NewGraph(/*opaque=*/true);
  EXPECT_EQ(Code(graphs.GraphShape(captured, &shape)), CUDA_ERROR_NOT_SUPPORTED);
  ASSERT_TRUE(graphs.RemoveGraph(graph).ok());
  EXPECT_EQ(Code(graphs.CheckExecNode(exec, b, {CU_GRAPH_NODE_TYPE_KERNEL})),
            CUDA_ERROR_INVALID_HANDLE);
}

TEST(GraphRegistryTest, AnswersANodesParametersForItsOwnTypeOnly) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  const uint64_t graph = graphs.NewGraph();
  const uint64_t memset = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_MEMSET, {});
  const uint64_t empty = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {memset});
  auto recorded = std::make_shared<RecordedNodeParams>();
  recorded->memset.value = 7;
  graphs.SetNodeParams(memset, recorded);
  std::shared_ptr<const RecordedNodeParams> got;
  ASSERT_TRUE(graphs.NodeParams(memset, CU_GRAPH_NODE_TYPE_MEMSET, &got).ok());
  EXPECT_EQ(got->memset.value, 7u);
  EXPECT_EQ(Code(graphs.NodeParams(memset, CU_GRAPH_NODE_TYPE_KERNEL, &got)),
            CUDA_ERROR_INVALID_VALUE);
  // A node with nothing recorded (an empty node) has no parameters to answer.
  EXPECT_EQ(Code(graphs.NodeParams(empty, CU_GRAPH_NODE_TYPE_EMPTY, &got)),
            CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(graphs.RemoveGraph(graph).ok());
  EXPECT_EQ(Code(graphs.NodeParams(memset, CU_GRAPH_NODE_TYPE_MEMSET, &got)),
            CUDA_ERROR_INVALID_HANDLE);
}

// cuGraphExecUpdate's comparison: node count, node types in the order added
// and dependencies by position; an opaque graph on either side is not compared.
TEST(GraphRegistryTest, ComparesTopologyForExecUpdate) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  // A graph of nodes of `types`, node i after the nodes at dependencies[i].
  auto build = [&](std::vector<int> types, std::vector<std::vector<size_t>> dependencies) {
    const uint64_t graph = graphs.NewGraph();
    std::vector<uint64_t> nodes;
    for (size_t i = 0; i < types.size(); ++i) {
      std::vector<uint64_t> after;
      for (size_t d : dependencies[i]) after.push_back(nodes[d]);
      nodes.push_back(graphs.NewNode(graph, types[i], after));
    }
    return std::make_pair(graph, nodes);
  };
  const std::vector<int> types = {CU_GRAPH_NODE_TYPE_MEMSET, CU_GRAPH_NODE_TYPE_KERNEL,
                                  CU_GRAPH_NODE_TYPE_KERNEL};
  const uint64_t source = build(types, {{}, {0}, {0, 1}}).first;
  const uint64_t exec = graphs.NewExec(source, 0);
  GraphRegistry::ExecUpdateCheck check;

  // Same topology (dependencies listed in another order): success.
  const uint64_t same = build(types, {{}, {0}, {1, 0}}).first;
  ASSERT_TRUE(graphs.CheckExecUpdate(exec, same, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_SUCCESS);
  // One node fewer: topology changed, no node named.
  const uint64_t fewer =
      build({CU_GRAPH_NODE_TYPE_MEMSET, CU_GRAPH_NODE_TYPE_KERNEL}, {{}, {0}}).first;
  ASSERT_TRUE(graphs.CheckExecUpdate(exec, fewer, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED);
  EXPECT_EQ(check.error_node, 0u);
  // The second node a memset: node type changed, that node named.
  const auto [retyped, retyped_nodes] =
      build({CU_GRAPH_NODE_TYPE_MEMSET, CU_GRAPH_NODE_TYPE_MEMSET, CU_GRAPH_NODE_TYPE_KERNEL},
            {{}, {0}, {0, 1}});
  ASSERT_TRUE(graphs.CheckExecUpdate(exec, retyped, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED);
  EXPECT_EQ(check.error_node, retyped_nodes[1]);
  // The last node loses its edge from the first: that node and the edge's source named.
  const auto [unlinked, unlinked_nodes] = build(types, {{}, {0}, {1}});
  ASSERT_TRUE(graphs.CheckExecUpdate(exec, unlinked, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED);
  EXPECT_EQ(check.error_node, unlinked_nodes[2]);
  EXPECT_EQ(check.error_from_node, unlinked_nodes[0]);

  // The executable graph keeps its source's shape as instantiated: a node
  // added to the source later, or the source destroyed, changes nothing.
  graphs.NewNode(source, CU_GRAPH_NODE_TYPE_EMPTY, {});
  ASSERT_TRUE(graphs.RemoveGraph(source).ok());
  ASSERT_TRUE(graphs.CheckExecUpdate(exec, same, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_SUCCESS);

  // Opaque on either side: not supported; unknown handles: INVALID_HANDLE.
  const uint64_t captured = graphs.NewGraph(/*opaque=*/true);
  ASSERT_TRUE(graphs.CheckExecUpdate(exec, captured, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_ERROR_NOT_SUPPORTED);
  const uint64_t captured_exec = graphs.NewExec(captured, 0);
  ASSERT_TRUE(graphs.CheckExecUpdate(captured_exec, same, &check).ok());
  EXPECT_EQ(check.result, CU_GRAPH_EXEC_UPDATE_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(Code(graphs.CheckExecUpdate(exec, captured + 1000, &check)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(Code(graphs.CheckExecUpdate(same, same, &check)), CUDA_ERROR_INVALID_HANDLE);
}

TEST(GraphRegistryTest, EditsEdgesWithTheDriversRulesAllOrNothing) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  const uint64_t graph = graphs.NewGraph();
  const uint64_t a = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {});
  const uint64_t b = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {});
  const uint64_t c = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {a});
  const uint64_t other = graphs.NewGraph();
  const uint64_t stranger = graphs.NewNode(other, CU_GRAPH_NODE_TYPE_EMPTY, {});
  auto dependencies_of = [&](uint64_t node) {
    std::vector<GraphRegistry::NodeShape> shape;
    EXPECT_TRUE(graphs.GraphShape(graph, &shape).ok());
    for (const auto& n : shape) {
      if (n.id == node) return n.dependencies;
    }
    ADD_FAILURE() << "no node " << node;
    return std::vector<uint64_t>{};
  };
  ASSERT_TRUE(graphs.EditEdges(graph, {a, b}, {b, c}, false).ok());
  EXPECT_EQ(dependencies_of(b), std::vector<uint64_t>{a});
  EXPECT_EQ(dependencies_of(c), (std::vector<uint64_t>{a, b}));
  // Refused, and nothing changes: an edge present already (the first one is
  // new), a missing edge removed, a self edge, an edge named twice, a node
  // of another graph or unknown; an unknown graph is INVALID_HANDLE.
  EXPECT_EQ(Code(graphs.EditEdges(graph, {b, a}, {a, b}, false)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.EditEdges(graph, {a, b}, {b, a}, true)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.EditEdges(graph, {b}, {b}, false)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.EditEdges(graph, {c, c}, {b, b}, false)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.EditEdges(graph, {stranger}, {a}, false)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.EditEdges(graph, {a}, {stranger + 1000}, false)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.EditEdges(other + 1000, {a}, {b}, false)), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(dependencies_of(a), std::vector<uint64_t>{});
  EXPECT_EQ(dependencies_of(b), std::vector<uint64_t>{a});
  EXPECT_EQ(dependencies_of(c), (std::vector<uint64_t>{a, b}));
  // Removing takes exactly the named edges.
  ASSERT_TRUE(graphs.EditEdges(graph, {a}, {c}, true).ok());
  EXPECT_EQ(dependencies_of(c), std::vector<uint64_t>{b});
}

TEST(GraphRegistryTest, FindsCyclesAndForgetsDestroyedNodesAndTheirEdges) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  const uint64_t graph = graphs.NewGraph();
  const uint64_t a = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {});
  const uint64_t b = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_KERNEL, {a});
  const uint64_t c = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {a, b});
  EXPECT_EQ(graphs.NodeOnCycle(graph), 0u);  // a diamond is no cycle
  ASSERT_TRUE(graphs.EditEdges(graph, {c}, {a}, false).ok());
  const uint64_t on_cycle = graphs.NodeOnCycle(graph);
  EXPECT_TRUE(on_cycle == a || on_cycle == b || on_cycle == c) << on_cycle;
  // An executable graph made before b is destroyed keeps b; b's edges go.
  const uint64_t exec = graphs.NewExec(graph, 0);
  uint64_t of = 0;
  ASSERT_TRUE(graphs.DestroyNode(b, &of).ok());
  EXPECT_EQ(of, graph);
  EXPECT_EQ(Code(graphs.DestroyNode(b, &of)), CUDA_ERROR_INVALID_HANDLE);
  std::vector<GraphRegistry::NodeShape> shape;
  ASSERT_TRUE(graphs.GraphShape(graph, &shape).ok());
  ASSERT_EQ(shape.size(), 2u);
  EXPECT_EQ(shape[1].dependencies, std::vector<uint64_t>{a});
  EXPECT_NE(graphs.NodeOnCycle(graph), 0u);  // a -> c -> a remains
  ASSERT_TRUE(graphs.EditEdges(graph, {c}, {a}, true).ok());
  EXPECT_EQ(graphs.NodeOnCycle(graph), 0u);
  // A node added after instantiation is not one of the executable graph's.
  const uint64_t late = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_EMPTY, {});
  EXPECT_TRUE(graphs.CheckExecNode(exec, c, {CU_GRAPH_NODE_TYPE_EMPTY}).ok());
  EXPECT_EQ(Code(graphs.CheckExecNode(exec, late, {CU_GRAPH_NODE_TYPE_EMPTY})),
            CUDA_ERROR_INVALID_VALUE);
}

TEST(GraphRegistryTest, AChildGraphUpdateNeedsTheTopologyTheNodeWasAddedWith) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  auto chain = [&](size_t length) {
    const uint64_t g = graphs.NewGraph();
    uint64_t previous = 0;
    for (size_t i = 0; i < length; ++i) {
      std::vector<uint64_t> after;
      if (previous != 0) after.push_back(previous);
      previous = graphs.NewNode(g, CU_GRAPH_NODE_TYPE_MEMSET, after);
    }
    return g;
  };
  const uint64_t child = chain(2);
  const uint64_t parent = graphs.NewGraph();
  const uint64_t node = graphs.NewNode(parent, CU_GRAPH_NODE_TYPE_GRAPH, {});
  graphs.NoteChildGraph(node, child);
  // The child changing afterwards does not change what the node holds.
  graphs.NewNode(child, CU_GRAPH_NODE_TYPE_MEMSET, {});
  EXPECT_TRUE(graphs.CheckChildGraphUpdate(node, chain(2)).ok());
  EXPECT_EQ(Code(graphs.CheckChildGraphUpdate(node, chain(3))), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.CheckChildGraphUpdate(node, child)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.CheckChildGraphUpdate(node, child + 1000)), CUDA_ERROR_INVALID_HANDLE);
}

TEST(GraphRegistryTest, AClonesNodesAreCopiesWithHandlesOfTheirOwn) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  const uint64_t graph = graphs.NewGraph();
  const uint64_t a = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_MEMSET, {});
  const uint64_t b = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_KERNEL, {a});
  uint64_t clone = 0;
  std::vector<std::pair<uint64_t, uint64_t>> copies;
  ASSERT_TRUE(graphs.CloneGraph(graph, &clone, &copies).ok());
  ASSERT_EQ(copies.size(), 2u);
  EXPECT_EQ(copies[0].first, a);
  EXPECT_EQ(copies[1].first, b);
  EXPECT_FALSE(graphs.IsOpaque(clone));
  uint64_t found = 0;
  ASSERT_TRUE(graphs.FindInClone(b, clone, &found).ok());
  EXPECT_EQ(found, copies[1].second);
  std::vector<GraphRegistry::NodeShape> shape;
  ASSERT_TRUE(graphs.GraphShape(clone, &shape).ok());
  ASSERT_EQ(shape.size(), 2u);
  EXPECT_EQ(shape[1].type, CU_GRAPH_NODE_TYPE_KERNEL);
  EXPECT_EQ(shape[1].dependencies, std::vector<uint64_t>{copies[0].second});
  // A node of the original is no node of the clone, and the clone's copy
  // destroyed is found no more; the original keeps its edge.
  EXPECT_FALSE(graphs.IsNodeOf(a, clone));
  uint64_t of = 0;
  ASSERT_TRUE(graphs.DestroyNode(copies[0].second, &of).ok());
  EXPECT_EQ(Code(graphs.FindInClone(a, clone, &found)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.FindInClone(a, clone + 1000, &found)), CUDA_ERROR_INVALID_HANDLE);
  ASSERT_TRUE(graphs.GraphShape(graph, &shape).ok());
  EXPECT_EQ(shape[1].dependencies, std::vector<uint64_t>{a});
  // A clone of an opaque (captured) graph is opaque, with no copies named.
  const uint64_t captured = graphs.NewGraph(/*opaque=*/true);
  ASSERT_TRUE(graphs.CloneGraph(captured, &clone, &copies).ok());
  EXPECT_TRUE(copies.empty());
  EXPECT_TRUE(graphs.IsOpaque(clone));
}

TEST(GraphRegistryTest, KeepsKernelNodeAttributesForKernelNodesOnly) {
  HandleIds ids;
  GraphRegistry graphs(&ids);
  const uint64_t graph = graphs.NewGraph();
  const uint64_t kernel = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_KERNEL, {});
  const uint64_t memset = graphs.NewNode(graph, CU_GRAPH_NODE_TYPE_MEMSET, {});
  KernelNodeAttributes attributes;
  ASSERT_TRUE(graphs.KernelAttributes(kernel, &attributes).ok());
  EXPECT_EQ(attributes.priority, 0);
  EXPECT_FALSE(attributes.cooperative);
  attributes.priority = 3;
  attributes.cluster = {2, 1, 1};
  ASSERT_TRUE(graphs.SetKernelAttributes(kernel, attributes).ok());
  KernelNodeAttributes read;
  ASSERT_TRUE(graphs.KernelAttributes(kernel, &read).ok());
  EXPECT_EQ(read.priority, 3);
  EXPECT_EQ(read.cluster, (std::array<unsigned, 3>{2, 1, 1}));
  EXPECT_EQ(Code(graphs.KernelAttributes(memset, &read)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.SetKernelAttributes(memset, attributes)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Code(graphs.KernelAttributes(memset + 1000, &read)), CUDA_ERROR_INVALID_HANDLE);
  // A clone's copy has its original's attributes.
  uint64_t clone = 0;
  std::vector<std::pair<uint64_t, uint64_t>> copies;
  ASSERT_TRUE(graphs.CloneGraph(graph, &clone, &copies).ok());
  ASSERT_TRUE(graphs.KernelAttributes(copies[0].second, &read).ok());
  EXPECT_EQ(read.priority, 3);
}

}  // namespace
}  // namespace ferry::client
