// Entry points the CUDA runtime calls while it bootstraps that need no
// server: answered from this process's state alone.
//
// Thread-safety: stateless; safe from any thread.
#include <cuda.h>

#include <cstdlib>
#include <cstring>

#include "client/cuda_result.h"
#include "client/runtime.h"

using ferry::Status;
using ferry::client::Api;
using ferry::client::Runtime;

extern "C" {

// The runtime asks right after cuInit whether modules load lazily. As in
// the driver, CUDA_MODULE_LOADING=EAGER chooses eager loading and anything
// else (or nothing) lazy loading, the default since CUDA 12.2.
CUresult CUDAAPI cuModuleGetLoadingMode(CUmoduleLoadingMode* mode) {
  return Api([&]() -> Status {
    if (mode == nullptr) return Status::InvalidArgument("mode is NULL");
    const Status ready = Runtime::Get().Ready();
    if (!ready.ok() && ready.cuda_result() == CUDA_ERROR_NOT_INITIALIZED) return ready;
    const char* setting = std::getenv("CUDA_MODULE_LOADING");
    *mode = setting != nullptr && std::strcmp(setting, "EAGER") == 0 ? CU_MODULE_EAGER_LOADING
                                                                     : CU_MODULE_LAZY_LOADING;
    return Status::Ok();
  });
}

}  // extern "C"
