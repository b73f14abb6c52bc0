// Entry points: the library and kernel API (cuLibrary*, cuKernel*).
//
// A library is loaded with one round trip: the server keeps the image and
// answers with its kernels' parameter layouts and its globals, so every
// query here except cuLibraryGetGlobal and cuKernelGetAttribute is answered
// locally. Using a kernel in a context (a launch, cuKernelGetFunction) loads
// the library there without a round trip (Runtime::KernelFunction).
//
// Library options: CU_LIBRARY_BINARY_IS_PRESERVED is a promise the driver
// may use to avoid a copy; the server keeps its own copy either way, so it is
// accepted and ignored. CU_LIBRARY_HOST_UNIVERSAL_FUNCTION_AND_DATA_TABLE
// would need host code of the program to run on the server: refused.
// JIT options tune compilation on the server's driver and are ignored, as
// for cuModuleLoadDataEx.
//
// Thread-safety: every entry point may be called from any thread.
#include <cuda.h>

#include <mutex>
#include <set>
#include <vector>

#include "client/entry_point.h"
#include "client/image_upload.h"
#include "client/occupancy.h"
#include "common/image/module_image.h"

using ferry::client::KernelState;
using ferry::client::LibraryState;
using ferry::client::OutBytes;

namespace {

Status CheckLibraryOptions(CUlibraryOption* options, unsigned count) {
  if (count > 0 && options == nullptr) return Status::InvalidArgument("libraryOptions is NULL");
  for (unsigned i = 0; i < count; ++i) {
    switch (options[i]) {
      case CU_LIBRARY_BINARY_IS_PRESERVED:
        break;
      case CU_LIBRARY_HOST_UNIVERSAL_FUNCTION_AND_DATA_TABLE:
        return Status::Unimplemented(
            "CU_LIBRARY_HOST_UNIVERSAL_FUNCTION_AND_DATA_TABLE is not supported by ferry");
      default:
        return Status::InvalidArgument("unknown library option " + std::to_string(options[i]));
    }
  }
  return Status::Ok();
}

// Sends `image` (one whole fatbin, cubin or PTX text) as a new library.
Status LoadLibrary(CUlibrary* library, std::span<const uint8_t> image) {
  uint64_t id = 0;
  FERRY_RETURN_IF_ERROR(Runtime::Get().LoadLibrary(image, &id));
  *library = Runtime::ToHandle<CUlibrary>(id);
  return Status::Ok();
}

Status KernelOf(CUkernel kernel, KernelState* out) {
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  if (kernel == nullptr) return Status::InvalidHandle("kernel is NULL");
  return Runtime::Get().modules().FindKernel(Runtime::HandleId(kernel), out);
}

// The kernel's function in a live context of `device` (see
// Runtime::ContextForDevice).
Status KernelFunctionOnDevice(CUkernel kernel, CUdevice device, uint64_t* function) {
  Runtime& rt = Runtime::Get();
  KernelState state;
  FERRY_RETURN_IF_ERROR(KernelOf(kernel, &state));
  uint64_t ctx = 0;
  FERRY_RETURN_IF_ERROR(rt.ContextForDevice(device, &ctx));
  return rt.KernelFunction(Runtime::HandleId(kernel), ctx, function);
}

// Interned: the pointer stays valid for the life of the process.
const char* Intern(const std::string& name) {
  static std::mutex mu;
  static auto* names = new std::set<std::string>;
  std::lock_guard<std::mutex> lock(mu);
  return names->insert(name).first->c_str();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option* jitOptions,
                                   void** jitOptionsValues, unsigned int numJitOptions,
                                   CUlibraryOption* libraryOptions, void** libraryOptionValues,
                                   unsigned int numLibraryOptions) {
  return Api([&]() -> Status {
    if (library == nullptr || code == nullptr) return Status::InvalidArgument("NULL argument");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    FERRY_RETURN_IF_ERROR(CheckLibraryOptions(libraryOptions, numLibraryOptions));
    // A fatbin wrapper (what the CUDA runtime passes), a fatbin, a cubin or
    // PTX text: the image's own headers say how long it is.
    std::span<const uint8_t> bytes;
    FERRY_RETURN_IF_ERROR(ferry::image::ResolveImage(code, &bytes));
    return LoadLibrary(library, bytes);
  });
}

CUresult CUDAAPI cuLibraryLoadFromFile(CUlibrary* library, const char* fileName,
                                       CUjit_option* jitOptions, void** jitOptionsValues,
                                       unsigned int numJitOptions, CUlibraryOption* libraryOptions,
                                       void** libraryOptionValues, unsigned int numLibraryOptions) {
  return Api([&]() -> Status {
    if (library == nullptr || fileName == nullptr) return Status::InvalidArgument("NULL argument");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    FERRY_RETURN_IF_ERROR(CheckLibraryOptions(libraryOptions, numLibraryOptions));
    std::vector<uint8_t> bytes;
    FERRY_RETURN_IF_ERROR(ferry::client::ReadImageFile(fileName, &bytes));
    return LoadLibrary(library, bytes);
  });
}

CUresult CUDAAPI cuLibraryUnload(CUlibrary library) {
  return Api([&]() -> Status {
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    return Runtime::Get().UnloadLibrary(Runtime::HandleId(library));
  });
}

CUresult CUDAAPI cuLibraryGetKernel(CUkernel* pKernel, CUlibrary library, const char* name) {
  return Api([&]() -> Status {
    if (pKernel == nullptr || name == nullptr) return Status::InvalidArgument("NULL argument");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    uint64_t id = 0;
    FERRY_RETURN_IF_ERROR(
        Runtime::Get().modules().LibraryKernel(Runtime::HandleId(library), name, &id));
    *pKernel = Runtime::ToHandle<CUkernel>(id);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuLibraryGetKernelCount(unsigned int* count, CUlibrary lib) {
  return Api([&]() -> Status {
    if (count == nullptr) return Status::InvalidArgument("count is NULL");
    FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
    LibraryState state;
    FERRY_RETURN_IF_ERROR(Runtime::Get().modules().FindLibrary(Runtime::HandleId(lib), &state));
    *count = static_cast<unsigned>(state.kernel_names.size());
    return Status::Ok();
  });
}

CUresult CUDAAPI cuLibraryEnumerateKernels(CUkernel* kernels, unsigned int numKernels,
                                           CUlibrary lib) {
  return Api([&]() -> Status {
    if (kernels == nullptr && numKernels > 0) return Status::InvalidArgument("kernels is NULL");
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    LibraryState state;
    FERRY_RETURN_IF_ERROR(rt.modules().FindLibrary(Runtime::HandleId(lib), &state));
    if (numKernels > state.kernel_names.size()) {
      return Status::InvalidArgument("numKernels exceeds the library's kernel count");
    }
    for (unsigned i = 0; i < numKernels; ++i) {
      uint64_t id = 0;
      FERRY_RETURN_IF_ERROR(
          rt.modules().LibraryKernel(Runtime::HandleId(lib), state.kernel_names[i], &id));
      kernels[i] = Runtime::ToHandle<CUkernel>(id);
    }
    return Status::Ok();
  });
}

CUresult CUDAAPI cuLibraryGetModule(CUmodule* pMod, CUlibrary library) {
  return Api([&]() -> Status {
    if (pMod == nullptr) return Status::InvalidArgument("pMod is NULL");
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    uint64_t module = 0;
    FERRY_RETURN_IF_ERROR(rt.LibraryModule(Runtime::HandleId(library), ctx, &module));
    *pMod = Runtime::ToHandle<CUmodule>(module);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuLibraryGetGlobal(CUdeviceptr* dptr, size_t* bytes, CUlibrary library,
                                    const char* name) {
  return Api([&]() -> Status {
    if (name == nullptr) return Status::InvalidArgument("name is NULL");
    Runtime& rt = Runtime::Get();
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    uint64_t module = 0;
    FERRY_RETURN_IF_ERROR(rt.LibraryModule(Runtime::HandleId(library), ctx, &module));
    uint64_t address = 0, size = 0;
    FERRY_RETURN_IF_ERROR(rt.ModuleGlobal(module, name, &address, &size));
    if (dptr != nullptr) *dptr = address;
    if (bytes != nullptr) *bytes = size;
    return Status::Ok();
  });
}

CUresult CUDAAPI cuKernelGetFunction(CUfunction* pFunc, CUkernel kernel) {
  return Api([&]() -> Status {
    if (pFunc == nullptr) return Status::InvalidArgument("pFunc is NULL");
    Runtime& rt = Runtime::Get();
    KernelState state;
    FERRY_RETURN_IF_ERROR(KernelOf(kernel, &state));
    uint64_t ctx = 0;
    FERRY_RETURN_IF_ERROR(rt.CurrentContext(&ctx));
    uint64_t function = 0;
    FERRY_RETURN_IF_ERROR(rt.KernelFunction(Runtime::HandleId(kernel), ctx, &function));
    *pFunc = Runtime::ToHandle<CUfunction>(function);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuKernelGetLibrary(CUlibrary* pLib, CUkernel kernel) {
  return Api([&]() -> Status {
    if (pLib == nullptr) return Status::InvalidArgument("pLib is NULL");
    KernelState state;
    FERRY_RETURN_IF_ERROR(KernelOf(kernel, &state));
    *pLib = Runtime::ToHandle<CUlibrary>(state.library);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuKernelGetName(const char** name, CUkernel hfunc) {
  return Api([&]() -> Status {
    if (name == nullptr) return Status::InvalidArgument("name is NULL");
    KernelState state;
    FERRY_RETURN_IF_ERROR(KernelOf(hfunc, &state));
    *name = Intern(state.name);
    return Status::Ok();
  });
}

CUresult CUDAAPI cuKernelGetParamInfo(CUkernel kernel, size_t paramIndex, size_t* paramOffset,
                                      size_t* paramSize) {
  return Api([&]() -> Status {
    KernelState state;
    FERRY_RETURN_IF_ERROR(KernelOf(kernel, &state));
    return ferry::client::ParamInfo(state.info, paramIndex, paramOffset, paramSize);
  });
}

CUresult CUDAAPI cuKernelGetAttribute(int* pi, CUfunction_attribute attrib, CUkernel kernel,
                                      CUdevice dev) {
  return Api([&]() -> Status {
    if (pi == nullptr) return Status::InvalidArgument("pi is NULL");
    uint64_t function = 0;
    FERRY_RETURN_IF_ERROR(KernelFunctionOnDevice(kernel, dev, &function));
    return ferry::client::FunctionAttribute(Runtime::Get(), function, attrib, pi);
  });
}

CUresult CUDAAPI cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel,
                                      CUdevice dev) {
  return Api([&]() -> Status {
    KernelState state;
    FERRY_RETURN_IF_ERROR(KernelOf(kernel, &state));
    return Runtime::Get().SetKernelAttribute(Runtime::HandleId(kernel), dev, attrib, val);
  });
}

CUresult CUDAAPI cuKernelSetCacheConfig(CUkernel kernel, CUfunc_cache config, CUdevice dev) {
  return Api([&]() -> Status {
    KernelState state;
    FERRY_RETURN_IF_ERROR(KernelOf(kernel, &state));
    return Runtime::Get().SetKernelCacheConfig(Runtime::HandleId(kernel), dev, config);
  });
}

}  // extern "C"
