// Entry points: modules, functions and kernel launches.
//
// A module image is sent whole (its length found by ferry::image), or, when
// it is large, named by its SHA-256 first so that an image the server already
// caches is not sent again. The server answers with every kernel's parameter
// layout, so cuModuleGetFunction is answered locally (and registered with the server without a
// round trip) and a launch packs `kernelParams` into one buffer laid out as the kernel expects —
// the same layout CU_LAUNCH_PARAM_BUFFER_POINTER uses.
#include <cuda.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "client/entry_point.h"
#include "client/image_upload.h"
#include "client/occupancy.h"
#include "common/content_hash.h"
#include "common/image/module_image.h"

using ferry::client::FunctionState;
using ferry::client::ModuleState;
using ferry::client::OutBytes;

namespace {

Status LoadModule(CUmodule* module, std::span<const uint8_t> image) {
  Runtime& rt = Runtime::Get();
  if (module == nullptr) return Status::InvalidArgument("module is NULL");
  uint64_t ctx = 0;
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
  const uint64_t id = rt.NewId(ferry::client::HandleKind::kModule);
  ModuleState state;
  state.ctx = ctx;
  ferry::client::ImageDescription description;
  FERRY_RETURN_IF_ERROR(ferry::client::LoadImage(
      rt.ConnectionOf(ctx), image,
      [&](wire::Call::Builder call) {
        auto args = call.initModuleLoad();
        args.setCtx(ctx);
        args.setModule(id);
        return args;
      },
      &description));
  state.kernels = std::move(description.kernels);
  state.globals = std::move(description.globals);
  rt.modules().AddModule(id, std::move(state));
  *module = Runtime::ToHandle<CUmodule>(id);
  return Status::Ok();
}

Status LoadModuleFromMemory(CUmodule* module, const void* image) {
  if (image == nullptr) return Status::InvalidArgument("image is NULL");
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  std::span<const uint8_t> bytes;
  FERRY_RETURN_IF_ERROR(ferry::image::ResolveImage(image, &bytes));
  return LoadModule(module, bytes);
}

Status LoadModuleFromFile(CUmodule* module, const char* path) {
  if (path == nullptr) return Status::InvalidArgument("fname is NULL");
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  std::vector<uint8_t> bytes;
  FERRY_RETURN_IF_ERROR(ferry::client::ReadImageFile(path, &bytes));
  return LoadModule(module, bytes);
}

// The function `f` names; a CUkernel names its function in the current
// context. `id` (optional) receives the function's id.
Status FunctionOf(CUfunction f, FunctionState* out, uint64_t* id = nullptr) {
  uint64_t resolved = 0;
  FERRY_RETURN_IF_ERROR(Runtime::Get().ResolveFunction(Runtime::HandleId(f), 0, &resolved, out));
  if (id != nullptr) *id = resolved;
  return Status::Ok();
}

// Packs the launch parameters into the kernel's parameter buffer layout.
Status PackParams(const FunctionState& function, void** kernel_params, void** extra,
                  std::vector<uint8_t>* buffer) {
  const auto& kernel = function.kernel;
  if (kernel_params != nullptr && extra != nullptr) {
    // The driver refuses the pair too: which one would hold the parameters?
    return Status::InvalidArgument("cuLaunchKernel of " + function.name +
                                   " got both kernelParams and extra; pass one of them");
  }
  if (kernel_params != nullptr) {
    buffer->assign(kernel.param_bytes, 0);
    for (size_t i = 0; i < kernel.params.size(); ++i) {
      if (kernel_params[i] == nullptr) {
        return Status::InvalidArgument("kernelParams[" + std::to_string(i) + "] of " +
                                       function.name + " is NULL");
      }
      std::memcpy(buffer->data() + kernel.params[i].offset, kernel_params[i],
                  kernel.params[i].size);
    }
    return Status::Ok();
  }
  if (extra != nullptr) {
    const void* pointer = nullptr;
    size_t size = 0;
    bool have_size = false;
    for (size_t i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
      if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) {
        pointer = extra[i + 1];
      } else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) {
        if (extra[i + 1] == nullptr)
          return Status::InvalidArgument("CU_LAUNCH_PARAM_BUFFER_SIZE is NULL");
        size = *static_cast<const size_t*>(extra[i + 1]);
        have_size = true;
      } else {
        return Status::InvalidArgument("unknown entry in the launch's extra array");
      }
    }
    if (pointer == nullptr || !have_size) {
      return Status::InvalidArgument("extra needs CU_LAUNCH_PARAM_BUFFER_POINTER and _SIZE");
    }
    if (size < kernel.param_bytes) {
      return Status::InvalidArgument("the parameter buffer holds " + std::to_string(size) +
                                     " bytes; " + function.name + " takes " +
                                     std::to_string(kernel.param_bytes));
    }
    const auto* p = static_cast<const uint8_t*>(pointer);
    buffer->assign(p, p + size);
    return Status::Ok();
  }
  if (kernel.param_bytes != 0) {
    return Status::InvalidArgument(function.name +
                                   " takes parameters; kernelParams and extra are NULL");
  }
  buffer->clear();
  return Status::Ok();
}

// A configuration that no kernel can run on `device` is refused by the launch
// itself, as the driver does (CUDA_ERROR_INVALID_VALUE), so a program's
// cudaGetLastError right after <<<>>> sees it. Limits that depend on the
// kernel (its maximum threads per block, its dynamic shared memory limit) are
// checked by the server, and their errors arrive asynchronously.
Status CheckLaunchLimits(int device, const std::array<unsigned, 3>& grid,
                         const std::array<unsigned, 3>& block, unsigned shared_bytes) {
  const std::vector<ferry::client::DeviceInfo>& devices = Runtime::Get().devices();
  if (device < 0 || device >= static_cast<int>(devices.size())) {
    return Status::Cuda(CUDA_ERROR_INVALID_DEVICE, "the launch's context has no device");
  }
  const ferry::client::DeviceInfo& info = devices[device];
  static constexpr CUdevice_attribute kGridLimit[3] = {CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X,
                                                       CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y,
                                                       CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z};
  static constexpr CUdevice_attribute kBlockLimit[3] = {CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X,
                                                        CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y,
                                                        CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z};
  static constexpr const char* kAxis[3] = {"x", "y", "z"};
  uint64_t threads = 1;
  for (int i = 0; i < 3; ++i) {
    if (grid[i] == 0 || block[i] == 0) {
      return Status::InvalidArgument("a grid or block dimension is 0");
    }
    const int64_t grid_limit = info.Attribute(kGridLimit[i]);
    const int64_t block_limit = info.Attribute(kBlockLimit[i]);
    if (grid_limit > 0 && grid[i] > grid_limit) {
      return Status::InvalidArgument("grid dimension " + std::string(kAxis[i]) + " = " +
                                     std::to_string(grid[i]) + " exceeds the device's " +
                                     std::to_string(grid_limit));
    }
    if (block_limit > 0 && block[i] > block_limit) {
      return Status::InvalidArgument("block dimension " + std::string(kAxis[i]) + " = " +
                                     std::to_string(block[i]) + " exceeds the device's " +
                                     std::to_string(block_limit));
    }
    threads *= block[i];
  }
  const int64_t max_threads = info.Attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK);
  if (max_threads > 0 && threads > static_cast<uint64_t>(max_threads)) {
    return Status::InvalidArgument(std::to_string(threads) +
                                   " threads per block exceed the device's " +
                                   std::to_string(max_threads));
  }
  const int64_t max_shared = info.Attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
  if (max_shared > 0 && shared_bytes > max_shared) {
    return Status::InvalidArgument(std::to_string(shared_bytes) +
                                   " bytes of dynamic shared memory exceed the device's " +
                                   std::to_string(max_shared) + " per block");
  }
  return Status::Ok();
}

// A cooperative grid must fit on the device at once (CUDA's rule): blocks per
// SM for this block size and shared memory, as the server's occupancy answer
// gives it exactly, times the device's SM count. Checked here so the launch
// itself returns CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE, as the driver's
// does (the launch is posted; the server's check would only latch). One round
// trip per cooperative launch; the backend checks again when it launches.
Status CheckCooperativeGrid(Runtime& rt, uint64_t function_id, int device,
                            const std::array<unsigned, 3>& grid,
                            const std::array<unsigned, 3>& block, unsigned shared_bytes) {
  const uint64_t threads = uint64_t{block[0]} * block[1] * block[2];
  std::vector<int> per_sm;
  FERRY_RETURN_IF_ERROR(ferry::client::MaxActiveBlocks(
      rt, function_id, {static_cast<uint32_t>(threads)}, {shared_bytes}, 0, &per_sm));
  const int64_t sms = rt.devices()[device].Attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  const uint64_t resident = static_cast<uint64_t>(per_sm.at(0)) * static_cast<uint64_t>(sms);
  const uint64_t blocks = uint64_t{grid[0]} * grid[1] * grid[2];
  if (blocks > resident) {
    return Status::Cuda(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
                        "cooperative grid of " + std::to_string(blocks) + " blocks exceeds the " +
                            std::to_string(resident) + " that can be resident at once");
  }
  return Status::Ok();
}

// How a launch runs beyond its shape: a cluster (0s: none) and cooperation.
struct LaunchMode {
  std::array<unsigned, 3> cluster{0, 0, 0};
  bool cooperative = false;
};

Status Launch(CUfunction f, const std::array<unsigned, 3>& grid,
              const std::array<unsigned, 3>& block, unsigned shared_bytes, CUstream stream,
              void** kernel_params, void** extra, const LaunchMode& mode, bool per_thread) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  StreamTarget target;
  FERRY_RETURN_IF_ERROR(rt.ResolveStream(stream, per_thread, &target));
  // A CUkernel runs in the stream's context (the current one for stream 0).
  // The state is shared, not copied: launches are the hot path.
  std::shared_ptr<const FunctionState> shared;
  uint64_t function_id = 0;
  FERRY_RETURN_IF_ERROR(
      rt.ResolveFunction(Runtime::HandleId(f), target.ctx, &function_id, &shared));
  const FunctionState& function = *shared;
  int device = 0;
  FERRY_RETURN_IF_ERROR(rt.contexts().Device(target.ctx, &device));
  FERRY_RETURN_IF_ERROR(CheckLaunchLimits(device, grid, block, shared_bytes));
  if (mode.cooperative) {
    FERRY_RETURN_IF_ERROR(CheckCooperativeGrid(rt, function_id, device, grid, block, shared_bytes));
  }
  thread_local std::vector<uint8_t> params;
  FERRY_RETURN_IF_ERROR(PackParams(function, kernel_params, extra, &params));
  return rt.ConnectionOf(target.ctx)
      .Post(
          [&](wire::Call::Builder call) {
            auto args = call.initLaunch();
            SetStreamTarget(args, target);
            args.setFunction(function_id);
            SetLaunchShape(args, grid, block, shared_bytes);
            args.setClusterX(mode.cluster[0]);
            args.setClusterY(mode.cluster[1]);
            args.setClusterZ(mode.cluster[2]);
            args.setCooperative(mode.cooperative);
          },
          OutBytes{params.data(), params.size()});
}

Status LaunchEx(const CUlaunchConfig* config, CUfunction f, void** kernel_params, void** extra,
                bool per_thread) {
  if (config == nullptr) return Status::InvalidArgument("config is NULL");
  LaunchMode mode;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const CUlaunchAttribute& a = config->attrs[i];
    switch (a.id) {
      case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
        mode.cluster = {a.value.clusterDim.x, a.value.clusterDim.y, a.value.clusterDim.z};
        break;
      case CU_LAUNCH_ATTRIBUTE_PRIORITY:  // a scheduling hint
        break;
      case CU_LAUNCH_ATTRIBUTE_COOPERATIVE:
        mode.cooperative = a.value.cooperative != 0;
        break;
      case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION:
        // Allowing overlap is an optimisation; running serialised is correct.
        break;
      default:
        return Status::Unimplemented("launch attribute " + std::to_string(a.id) +
                                     " is not supported by ferry yet");
    }
  }
  return Launch(f, {config->gridDimX, config->gridDimY, config->gridDimZ},
                {config->blockDimX, config->blockDimY, config->blockDimZ}, config->sharedMemBytes,
                config->hStream, kernel_params, extra, mode, per_thread);
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuModuleLoad(CUmodule* module, const char* fname) {
  return Api([&] { return LoadModuleFromFile(module, fname); });
}

CUresult CUDAAPI cuModuleLoadData(CUmodule* module, const void* image) {
  return Api([&] { return LoadModuleFromMemory(module, image); });
}

CUresult CUDAAPI cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int numOptions,
                                    CUjit_option* options, void** optionValues) {
  // JIT options tune compilation on the server's driver; ferry loads the image
  // as given. Output options (logs) are left untouched: nothing was logged here.
  return Api([&] { return LoadModuleFromMemory(module, image); });
}

CUresult CUDAAPI cuModuleLoadFatBinary(CUmodule* module, const void* fatCubin) {
  return Api([&] { return LoadModuleFromMemory(module, fatCubin); });
}

CUresult CUDAAPI cuModuleUnload(CUmodule hmod) {
  return Api([&] {
    return DestroyHandle(
        hmod, [](Runtime& rt, uint64_t id) { return rt.modules().RemoveModule(id); },
        [](wire::Call::Builder call, uint64_t id) { call.initModuleUnload().setModule(id); });
  });
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    if (hfunc == nullptr || name == nullptr) return Status::InvalidArgument("NULL argument");
    const uint64_t module = Runtime::HandleId(hmod);
    ModuleState state;
    FERRY_RETURN_IF_ERROR(rt.modules().FindModule(module, &state));
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(rt.ModuleFunction(module, name, &id));
    *hfunc = Runtime::ToHandle<CUfunction>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, CUmodule hmod,
                                      const char* name) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    uint64_t address = 0, size = 0;
    FERRY_RETURN_IF_ERROR(
        Runtime::Get().ModuleGlobal(Runtime::HandleId(hmod), name, &address, &size));
    if (dptr != nullptr) *dptr = address;
    if (bytes != nullptr) *bytes = size;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction hfunc) {
  return Api([&]() -> Status {
    if (pi == nullptr) return Status::InvalidArgument("pi is NULL");
    FunctionState function;
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(FunctionOf(hfunc, &function, &id));
    return ferry::client::FunctionAttribute(Runtime::Get(), id, attrib, pi);
  });
}

CUresult CUDAAPI cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
  return Api([&]() -> Status {
    FunctionState function;
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(FunctionOf(hfunc, &function, &id));
    return Runtime::Get().FunctionConnection(id).Call([&](wire::Call::Builder call) {
      auto args = call.initFuncSetAttribute();
      args.setFunction(id);
      args.setAttribute(attrib);
      args.setValue(value);
    });
  });
}

CUresult CUDAAPI cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
  return Api([&]() -> Status {
    FunctionState function;
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(FunctionOf(hfunc, &function, &id));
    if (config < CU_FUNC_CACHE_PREFER_NONE || config > CU_FUNC_CACHE_PREFER_EQUAL) {
      return Status::InvalidArgument("bad cache config");
    }
    return Runtime::Get().FunctionConnection(id).Post([&](wire::Call::Builder call) {
      auto args = call.initFuncSetCacheConfig();
      args.setFunction(id);
      args.setConfig(config);
    });
  });
}

CUresult CUDAAPI cuFuncGetName(const char** name, CUfunction hfunc) {
  return Api([&]() -> Status {
    if (name == nullptr) return Status::InvalidArgument("name is NULL");
    FunctionState function;
    FERRY_RETURN_IF_ERROR(FunctionOf(hfunc, &function));
    // Interned: the pointer stays valid for the life of the process.
    static std::mutex mu;
    static auto* names = new std::set<std::string>;
    std::lock_guard<std::mutex> lock(mu);
    *name = names->insert(function.name).first->c_str();
    return Status::Ok();
  });
}

CUresult CUDAAPI cuModuleGetFunctionCount(unsigned int* count, CUmodule mod) {
  return Api([&]() -> Status {
    if (count == nullptr) return Status::InvalidArgument("count is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    ModuleState state;
    FERRY_RETURN_IF_ERROR(Runtime::Get().modules().FindModule(Runtime::HandleId(mod), &state));
    *count = static_cast<unsigned>(state.kernels->size());
    return Status::Ok();
  });
}

CUresult CUDAAPI cuModuleEnumerateFunctions(CUfunction* functions, unsigned int numFunctions,
                                            CUmodule mod) {
  return Api([&]() -> Status {
    if (functions == nullptr && numFunctions > 0)
      return Status::InvalidArgument("functions is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t module = Runtime::HandleId(mod);
    ModuleState state;
    FERRY_RETURN_IF_ERROR(rt.modules().FindModule(module, &state));
    if (numFunctions > state.kernels->size()) {
      return Status::InvalidArgument("numFunctions exceeds the module's function count");
    }
    // In name order; each the same handle cuModuleGetFunction gives.
    auto it = state.kernels->begin();
    for (unsigned i = 0; i < numFunctions; ++i, ++it) {
      uint64_t id = 0;
      FERRY_RETURN_IF_ERROR(rt.ModuleFunction(module, it->first, &id));
      functions[i] = Runtime::ToHandle<CUfunction>(id);
    }
    return Status::Ok();
  });
}

// Functions are loaded with their module on the server (lazily there if its
// driver loads lazily, which it resolves on first use): to the program every
// function is loaded.
CUresult CUDAAPI cuFuncIsLoaded(CUfunctionLoadingState* state, CUfunction function) {
  return Api([&]() -> Status {
    if (state == nullptr) return Status::InvalidArgument("state is NULL");
    FunctionState f;
    FERRY_RETURN_IF_ERROR(FunctionOf(function, &f));
    *state = CU_FUNCTION_LOADING_STATE_LOADED;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuFuncLoad(CUfunction function) {
  return Api([&]() -> Status {
    FunctionState f;
    return FunctionOf(function, &f);
  });
}

CUresult CUDAAPI cuFuncGetModule(CUmodule* hmod, CUfunction hfunc) {
  return Api([&]() -> Status {
    if (hmod == nullptr) return Status::InvalidArgument("hmod is NULL");
    FunctionState function;
    FERRY_RETURN_IF_ERROR(FunctionOf(hfunc, &function));
    *hmod = Runtime::ToHandle<CUmodule>(function.module);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t* paramOffset,
                                    size_t* paramSize) {
  return Api([&]() -> Status {
    FunctionState function;
    FERRY_RETURN_IF_ERROR(FunctionOf(func, &function));
    return ferry::client::ParamInfo(function.kernel, paramIndex, paramOffset, paramSize);
  });
}

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                unsigned int gridDimZ, unsigned int blockDimX,
                                unsigned int blockDimY, unsigned int blockDimZ,
                                unsigned int sharedMemBytes, CUstream hStream, void** kernelParams,
                                void** extra) {
  return Api([&] {
    return Launch(f, {gridDimX, gridDimY, gridDimZ}, {blockDimX, blockDimY, blockDimZ},
                  sharedMemBytes, hStream, kernelParams, extra, LaunchMode{}, false);
  });
}

CUresult CUDAAPI cuLaunchKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                     unsigned int gridDimZ, unsigned int blockDimX,
                                     unsigned int blockDimY, unsigned int blockDimZ,
                                     unsigned int sharedMemBytes, CUstream hStream,
                                     void** kernelParams, void** extra) {
  return Api([&] {
    return Launch(f, {gridDimX, gridDimY, gridDimZ}, {blockDimX, blockDimY, blockDimZ},
                  sharedMemBytes, hStream, kernelParams, extra, LaunchMode{}, true);
  });
}

// Cooperative launches: as cuLaunchKernel, with every block resident at once.
CUresult CUDAAPI cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX,
                                           unsigned int gridDimY, unsigned int gridDimZ,
                                           unsigned int blockDimX, unsigned int blockDimY,
                                           unsigned int blockDimZ, unsigned int sharedMemBytes,
                                           CUstream hStream, void** kernelParams) {
  return Api([&] {
    return Launch(f, {gridDimX, gridDimY, gridDimZ}, {blockDimX, blockDimY, blockDimZ},
                  sharedMemBytes, hStream, kernelParams, nullptr, LaunchMode{.cooperative = true},
                  false);
  });
}

CUresult CUDAAPI cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gridDimX,
                                                unsigned int gridDimY, unsigned int gridDimZ,
                                                unsigned int blockDimX, unsigned int blockDimY,
                                                unsigned int blockDimZ, unsigned int sharedMemBytes,
                                                CUstream hStream, void** kernelParams) {
  return Api([&] {
    return Launch(f, {gridDimX, gridDimY, gridDimZ}, {blockDimX, blockDimY, blockDimZ},
                  sharedMemBytes, hStream, kernelParams, nullptr, LaunchMode{.cooperative = true},
                  true);
  });
}

CUresult CUDAAPI cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** kernelParams,
                                  void** extra) {
  return Api([&] { return LaunchEx(config, f, kernelParams, extra, false); });
}

CUresult CUDAAPI cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f,
                                       void** kernelParams, void** extra) {
  return Api([&] { return LaunchEx(config, f, kernelParams, extra, true); });
}

}  // extern "C"
