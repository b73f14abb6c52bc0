#include "client/module_registry.h"

#include <cuda.h>

namespace ferry::client {

Status ParamInfo(const KernelInfo& kernel, size_t index, size_t* offset, size_t* size) {
  if (index >= kernel.params.size()) return Status::InvalidArgument("parameter index out of range");
  if (offset != nullptr) *offset = kernel.params[index].offset;
  if (size != nullptr) *size = kernel.params[index].size;
  return Status::Ok();
}

// --- modules and functions ---------------------------------------------------------

void ModuleRegistry::AddModule(uint64_t id, ModuleState module) {
  std::lock_guard<std::mutex> lock(mu_);
  modules_[id] = std::move(module);
}

Status ModuleRegistry::RemoveModule(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = modules_.find(id);
  if (it == modules_.end()) return Status::InvalidHandle("not a module of this process");
  if (it->second.library != 0) {
    return Status::InvalidHandle("the module belongs to a library; cuLibraryUnload unloads it");
  }
  modules_.erase(it);
  std::erase_if(functions_, [id](const auto& e) { return e.second->module == id; });
  return Status::Ok();
}

Status ModuleRegistry::FindModule(uint64_t id, ModuleState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return CopyEntry(modules_, id, out, "not a module of this process");
}

Status ModuleRegistry::AddFunction(uint64_t module, const std::string& name, uint64_t* id,
                                   bool* created) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = modules_.find(module);
  if (it == modules_.end()) return Status::InvalidHandle("not a module of this process");
  auto kernel = it->second.kernels->find(name);
  if (kernel == it->second.kernels->end()) {
    return Status::NotFound("the module has no kernel named " + name);
  }
  // One id per (module, name): asking twice gives the same CUfunction.
  for (const auto& [fid, f] : functions_) {
    if (f->module == module && f->name == name) {
      *id = fid;
      *created = false;
      return Status::Ok();
    }
  }
  *created = true;
  *id = ids_->New(HandleKind::kFunction);
  functions_[*id] = std::make_shared<const FunctionState>(
      FunctionState{module, it->second.ctx, name, kernel->second});
  return Status::Ok();
}

void ModuleRegistry::EraseFunction(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  functions_.erase(id);
}

Status ModuleRegistry::FindFunction(uint64_t id, FunctionState* out) {
  std::shared_ptr<const FunctionState> function;
  FERRY_RETURN_IF_ERROR(FindFunction(id, &function));
  *out = *function;
  return Status::Ok();
}

Status ModuleRegistry::FindFunction(uint64_t id, std::shared_ptr<const FunctionState>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return CopyEntry(functions_, id, out, "not a function of this process");
}

bool ModuleRegistry::MaxThreadsPerBlock(uint64_t id, int* value) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = max_threads_per_block_.find(id);
  if (it == max_threads_per_block_.end() || functions_.count(id) == 0) return false;
  *value = it->second;
  return true;
}

void ModuleRegistry::NoteMaxThreadsPerBlock(uint64_t id, int value) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(max_threads_per_block_,
                [this](const auto& e) { return functions_.count(e.first) == 0; });
  if (functions_.count(id) != 0) max_threads_per_block_[id] = value;
}

// --- libraries and kernels ---------------------------------------------------------

void ModuleRegistry::AddLibrary(uint64_t id, LibraryState library) {
  std::lock_guard<std::mutex> lock(mu_);
  libraries_[id] = std::move(library);
}

Status ModuleRegistry::RemoveLibrary(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = libraries_.find(id);
  if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
  for (const auto& entry : it->second.modules) {
    const uint64_t module = entry.second;  // a local: clang before 16 cannot capture a binding
    modules_.erase(module);
    std::erase_if(functions_, [module](const auto& e) { return e.second->module == module; });
  }
  std::erase_if(kernels_, [id](const auto& e) { return e.second.library == id; });
  libraries_.erase(it);
  return Status::Ok();
}

Status ModuleRegistry::FindLibrary(uint64_t id, LibraryState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return CopyEntry(libraries_, id, out, "not a library of this process");
}

std::vector<uint64_t> ModuleRegistry::LibraryIds() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> ids;
  for (const auto& [id, library] : libraries_) ids.push_back(id);
  return ids;
}

Status ModuleRegistry::LibraryKernel(uint64_t library, const std::string& name, uint64_t* kernel) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = libraries_.find(library);
  if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
  LibraryState& state = it->second;
  auto info = state.kernels->find(name);
  if (info == state.kernels->end()) {
    return Status::NotFound("the library has no kernel named " + name);
  }
  auto [id, created] = state.kernel_ids.emplace(name, 0);
  if (created) {
    id->second = ids_->New(HandleKind::kKernel);
    KernelState k;
    k.library = library;
    k.name = name;
    k.info = info->second;
    kernels_[id->second] = std::move(k);
  }
  *kernel = id->second;
  return Status::Ok();
}

Status ModuleRegistry::FindKernel(uint64_t id, KernelState* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return CopyEntry(kernels_, id, out, "not a kernel of this process");
}

Status ModuleRegistry::LibraryModuleIn(uint64_t library, uint64_t ctx, uint64_t* module,
                                       ModuleState* fresh) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = libraries_.find(library);
  if (it == libraries_.end()) return Status::InvalidHandle("not a library of this process");
  if (auto m = it->second.modules.find(ctx); m != it->second.modules.end()) {
    *module = m->second;
    return Status::Ok();
  }
  *module = 0;
  fresh->ctx = ctx;
  fresh->kernels = it->second.kernels;
  fresh->globals = it->second.globals;
  fresh->library = library;
  return Status::Ok();
}

Status ModuleRegistry::AddLibraryModule(uint64_t library, uint64_t module, ModuleState state,
                                        absl::FunctionRef<bool()> still_live) {
  std::lock_guard<std::mutex> lock(mu_);
  // Checked under mu_: a context destroyed after this check has its modules
  // forgotten (ForgetContext) after it, this one included.
  if (!still_live()) return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the context was destroyed");
  auto it = libraries_.find(library);
  if (it == libraries_.end()) return Status::InvalidHandle("the library was unloaded");
  it->second.modules[state.ctx] = module;
  modules_[module] = std::move(state);
  return Status::Ok();
}

Status ModuleRegistry::KernelFunctionIn(uint64_t kernel, uint64_t ctx, uint64_t* function,
                                        KernelState* kernel_state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = kernels_.find(kernel);
  if (it == kernels_.end()) return Status::InvalidHandle("not a kernel of this process");
  if (auto f = it->second.functions.find(ctx); f != it->second.functions.end()) {
    *function = f->second;
    return Status::Ok();
  }
  *function = 0;
  *kernel_state = it->second;
  return Status::Ok();
}

Status ModuleRegistry::SetKernelFunction(uint64_t kernel, uint64_t ctx, uint64_t function) {
  std::lock_guard<std::mutex> lock(mu_);
  if (functions_.count(function) == 0) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, "the context was destroyed");
  }
  auto it = kernels_.find(kernel);
  if (it == kernels_.end()) return Status::InvalidHandle("the kernel's library was unloaded");
  it->second.functions[ctx] = function;
  return Status::Ok();
}

Status ModuleRegistry::SetKernelAttribute(uint64_t kernel, int device, int attribute, int value,
                                          std::vector<std::pair<uint64_t, uint64_t>>* functions) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = kernels_.find(kernel);
  if (it == kernels_.end()) return Status::InvalidHandle("not a kernel of this process");
  it->second.attributes[device][attribute] = value;
  functions->assign(it->second.functions.begin(), it->second.functions.end());
  return Status::Ok();
}

Status ModuleRegistry::SetKernelCacheConfig(uint64_t kernel, int device, int config,
                                            std::vector<std::pair<uint64_t, uint64_t>>* functions) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = kernels_.find(kernel);
  if (it == kernels_.end()) return Status::InvalidHandle("not a kernel of this process");
  it->second.cache_configs[device] = config;
  functions->assign(it->second.functions.begin(), it->second.functions.end());
  return Status::Ok();
}

void ModuleRegistry::ForgetContext(uint64_t ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  // Libraries and kernels outlive contexts; only their share in `ctx` goes.
  for (auto& [id, library] : libraries_) library.modules.erase(ctx);
  for (auto& [id, kernel] : kernels_) kernel.functions.erase(ctx);
  std::erase_if(functions_, [ctx](const auto& e) { return e.second->ctx == ctx; });
  std::erase_if(modules_, [ctx](const auto& e) { return e.second.ctx == ctx; });
}

}  // namespace ferry::client
