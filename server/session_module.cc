// Session handlers for modules, libraries, functions, launches and
// occupancy queries.

#include "server/session.h"

#include <cuda.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/log.h"
#include "server/session_internal.h"

namespace ferry::server {

namespace {

// Reads the geometry of a launch from `args` (a Launch or an
// OccupancyCluster: the same grid, block, shared-bytes and cluster fields);
// false when a grid or block dimension is 0.
template <typename Args>
bool ReadLaunchConfig(Args args, backend::LaunchConfig* config) {
  config->grid = {args.getGridX(), args.getGridY(), args.getGridZ()};
  config->block = {args.getBlockX(), args.getBlockY(), args.getBlockZ()};
  config->shared_bytes = args.getSharedBytes();
  config->cluster = {args.getClusterX(), args.getClusterY(), args.getClusterZ()};
  for (int i = 0; i < 3; ++i) {
    if (config->grid[i] == 0 || config->block[i] == 0) return false;
  }
  return true;
}

// Fills a moduleLoad reply (also libraryLoad's) from what the backend found.
void DescribeInReply(const backend::ModuleDescription& description, wire::Reply::Builder reply) {
  auto result = reply.initModuleLoad();
  auto kernels = result.initKernels(static_cast<unsigned>(description.kernels.size()));
  for (size_t i = 0; i < description.kernels.size(); ++i) {
    const auto& k = description.kernels[i];
    auto out = kernels[static_cast<unsigned>(i)];
    out.setName(k.name);
    auto params = out.initParams(static_cast<unsigned>(k.params.size()));
    for (size_t p = 0; p < k.params.size(); ++p) {
      params[static_cast<unsigned>(p)].setOffset(k.params[p].offset);
      params[static_cast<unsigned>(p)].setSize(k.params[p].size);
    }
  }
  auto globals = result.initGlobals(static_cast<unsigned>(description.globals.size()));
  for (size_t i = 0; i < description.globals.size(); ++i) {
    globals[static_cast<unsigned>(i)].setName(description.globals[i].name);
    globals[static_cast<unsigned>(i)].setSize(description.globals[i].size);
  }
}

}  // namespace

// The image of a moduleLoad or libraryLoad: sent with the call, or named by
// its hash and taken from the cache (the protocol prose in
// schema/ferry.capnp). `source->not_cached`: the server lacks it, the reply
// says so and nothing is to be created.
Status Session::TakeImage(capnp::Data::Reader hash_data, uint64_t image_bytes, CallContext& cx,
                          ImageSource* source) {
  source->named = hash_data.size() > 0;
  if (source->named) {
    if (hash_data.size() != source->hash.size()) {
      return Status::InvalidArgument("image hash of " + std::to_string(hash_data.size()) +
                                     " bytes; SHA-256 has 32");
    }
    std::memcpy(source->hash.data(), hash_data.begin(), source->hash.size());
  }
  source->image = cx.bulk_in;
  if (source->image.size > 0) {
    module_image_bytes_received_.fetch_add(source->image.size);
    // Only bytes that are what their name says may be kept under it (there
    // is nothing to keep, and so nothing to check, without a cache).
    if (source->named && module_cache_ != nullptr &&
        (image_bytes != source->image.size ||
         HashContent(std::span<const uint8_t>(source->image.data, source->image.size)) !=
             source->hash)) {
      return Status::InvalidArgument("image bytes do not match the SHA-256 sent with them");
    }
    return Status::Ok();
  }
  if (!source->named) return Status::Cuda(CUDA_ERROR_INVALID_IMAGE, "empty image");
  if (module_cache_ == nullptr || !module_cache_->Find(source->hash, image_bytes, &source->image)) {
    source->not_cached = true;
    cx.reply.setImageNotCached(true);
  }
  return Status::Ok();
}

// After a successful load: named bytes that came with the call go into the
// cache for the next process.
Session::LoadedImage Session::LoadedImageOf(const ImageSource& source,
                                            uint64_t image_bytes) const {
  LoadedImage loaded;
  if (source.named && module_cache_ != nullptr) {
    loaded.named = true;
    loaded.hash = source.hash;
    loaded.size = image_bytes;
    return loaded;
  }
  // Bytes no cache keeps: a copy (rare; the client names its images first,
  // and ferryd runs with a cache).
  auto copy = std::shared_ptr<uint8_t[]>(new uint8_t[source.image.size]);
  std::memcpy(copy.get(), source.image.data, source.image.size);
  loaded.unnamed = backend::HostBytes{copy, copy.get(), source.image.size};
  loaded.size = source.image.size;
  return loaded;
}

void Session::KeepImage(const ImageSource& source, const CallContext& cx) {
  if (source.named && cx.bulk_in.size > 0 && module_cache_ != nullptr) {
    module_cache_->Insert(source.hash, cx.bulk_in);
  }
}

Status Session::ModuleLoad(wire::ModuleLoad::Reader args, CallContext& cx) {
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  const uint64_t id = args.getModule();
  FERRY_RETURN_IF_ERROR(modules_.CheckNewId(id));
  ImageSource source;
  FERRY_RETURN_IF_ERROR(TakeImage(args.getImageHash(), args.getImageBytes(), cx, &source));
  if (source.not_cached) return Status::Ok();
  const backend::HostBytes& image = source.image;
  ModuleEntry entry;
  entry.ctx = args.getCtx();
  auto description = std::make_shared<backend::ModuleDescription>();
  FERRY_RETURN_IF_ERROR(backend_.LoadModule(*c->context,
                                            std::span<const uint8_t>(image.data, image.size),
                                            &entry.module, description.get()));
  KeepImage(source, cx);
  DescribeInReply(*description, cx.reply);
  entry.description = std::move(description);
  entry.image = LoadedImageOf(source, args.getImageBytes());
  return modules_.Insert(id, std::move(entry));
}

void Session::EraseModule(uint64_t id) {
  functions_.EraseIf([id](uint64_t, const FunctionEntry& f) { return f.module == id; });
  ranges_.EraseIf([id](const RangeEntry& range) { return range.module == id; });
  (void)modules_.Erase(id);
}

Status Session::ModuleUnload(wire::ModuleRef::Reader args) {
  const uint64_t id = args.getModule();
  ModuleEntry* m = nullptr;
  FERRY_RETURN_IF_ERROR(modules_.Find(id, &m));
  if (m->library != 0) {
    return Status::InvalidHandle("module " + std::to_string(id) +
                                 " belongs to a library; cuLibraryUnload unloads it");
  }
  EraseModule(id);
  return Status::Ok();
}

Status Session::ModuleGetFunction(wire::ModuleGetFunction::Reader args) {
  ModuleEntry* m = nullptr;
  FERRY_RETURN_IF_ERROR(modules_.Find(args.getModule(), &m));
  const uint64_t id = args.getFunction();
  FERRY_RETURN_IF_ERROR(functions_.CheckNewId(id));
  const std::string name(args.getName().cStr());
  FunctionEntry entry;
  entry.module = args.getModule();
  entry.ctx = m->ctx;
  entry.name = name;
  FERRY_RETURN_IF_ERROR(backend_.GetFunction(*m->module, name, &entry.function));
  for (const auto& kernel : m->description->kernels) {
    if (kernel.name != name) continue;
    for (const auto& p : kernel.params) {
      entry.param_bytes = std::max<uint64_t>(entry.param_bytes, uint64_t{p.offset} + p.size);
    }
  }
  return functions_.Insert(id, entry);
}

Status Session::ModuleGetGlobal(wire::ModuleGetGlobal::Reader args, CallContext& cx) {
  ModuleEntry* m = nullptr;
  FERRY_RETURN_IF_ERROR(modules_.Find(args.getModule(), &m));
  uint64_t dptr = 0, bytes = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetGlobal(*m->module, args.getName().cStr(), &dptr, &bytes));
  // The global becomes a range the session may copy to and from.
  // Asked again, it is already there (Insert refuses it).
  if (bytes > 0) {
    RangeEntry global{m->ctx, args.getModule(), 0};
    global.global = args.getName().cStr();
    if (!ranges_.Insert(dptr, bytes, std::move(global))) {
      // Asked again, it is already there; the client knows it now.
      if (auto known = ranges_.FindBase(dptr); known.value != nullptr) {
        known.value->known_to_client = true;
      }
    }
  }
  auto result = cx.reply.initModuleGetGlobal();
  result.setDptr(dptr);
  result.setBytes(bytes);
  return Status::Ok();
}

Status Session::FuncGetAttribute(wire::FuncAttribute::Reader args, CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  int value = 0;
  FERRY_RETURN_IF_ERROR(backend_.GetFunctionAttribute(*f->function, args.getAttribute(), &value));
  cx.reply.setValue(value);
  return Status::Ok();
}

Status Session::FuncSetAttribute(wire::FuncAttribute::Reader args) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  FERRY_RETURN_IF_ERROR(
      backend_.SetFunctionAttribute(*f->function, args.getAttribute(), args.getValue()));
  f->attributes[args.getAttribute()] = args.getValue();
  return Status::Ok();
}

Status Session::FuncSetCacheConfig(wire::FuncCacheConfig::Reader args) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  FERRY_RETURN_IF_ERROR(backend_.SetFunctionCacheConfig(*f->function, args.getConfig()));
  f->cache_config = args.getConfig();
  return Status::Ok();
}

Status Session::Launch(wire::Launch::Reader args, CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  backend::Stream* stream = nullptr;
  FERRY_RETURN_IF_ERROR(FindStream(args.getCtx(), args.getStream(), &stream));
  FERRY_RETURN_IF_ERROR(CaptureGuard(args.getStream(), CaptureUse::kRecorded, {}, f->module));
  if (cx.bulk_in.size < f->param_bytes) {
    return Status::InvalidArgument("launch carried " + std::to_string(cx.bulk_in.size) +
                                   " parameter bytes; the kernel takes " +
                                   std::to_string(f->param_bytes));
  }
  backend::LaunchConfig config;
  if (!ReadLaunchConfig(args, &config)) {
    return Status::InvalidArgument("launch with a zero grid or block dimension");
  }
  config.cooperative = args.getCooperative();
  // The function's context names the device whose compute share applies.
  return LaunchUnderShare(
      f->ctx, *stream, [&] { return backend_.Launch(*stream, *f->function, config, cx.bulk_in); });
}

void Session::MeasureLaunch(int device, backend::Stream& stream) {
  CompletionStarted();
  backend_.WhenStreamIdle(stream, [this, measured = shares_.LaunchQueued(device)](Status status) {
    measured(status);
    CompletionDone();
  });
}

// --- libraries ---------------------------------------------------------------------

Status Session::LibraryLoad(wire::LibraryLoad::Reader args, CallContext& cx) {
  const uint64_t id = args.getLibrary();
  FERRY_RETURN_IF_ERROR(libraries_.CheckNewId(id));
  ImageSource source;
  FERRY_RETURN_IF_ERROR(TakeImage(args.getImageHash(), args.getImageBytes(), cx, &source));
  if (source.not_cached) return Status::Ok();
  LibraryEntry entry;
  auto description = std::make_shared<backend::ModuleDescription>();
  FERRY_RETURN_IF_ERROR(
      backend_.LoadLibrary(std::span<const uint8_t>(source.image.data, source.image.size),
                           &entry.library, description.get()));
  KeepImage(source, cx);
  DescribeInReply(*description, cx.reply);
  entry.description = std::move(description);
  entry.image = LoadedImageOf(source, args.getImageBytes());
  return libraries_.Insert(id, std::move(entry));
}

Status Session::LibraryUnload(wire::LibraryRef::Reader args) {
  const uint64_t id = args.getLibrary();
  LibraryEntry* library = nullptr;
  FERRY_RETURN_IF_ERROR(libraries_.Find(id, &library));
  // Its modules in every context first (GpuBackend contract).
  std::vector<uint64_t> modules;
  modules_.ForEach([&](uint64_t module_id, const ModuleEntry& module) {
    if (module.library == id) modules.push_back(module_id);
  });
  for (uint64_t module_id : modules) EraseModule(module_id);
  return libraries_.Erase(id);
}

Status Session::LibraryLoadModule(wire::LibraryLoadModule::Reader args) {
  LibraryEntry* library = nullptr;
  FERRY_RETURN_IF_ERROR(libraries_.Find(args.getLibrary(), &library));
  ContextEntry* c = nullptr;
  FERRY_RETURN_IF_ERROR(contexts_.Find(args.getCtx(), &c));
  const uint64_t id = args.getModule();
  FERRY_RETURN_IF_ERROR(modules_.CheckNewId(id));
  uint64_t existing = 0;  // the library's module in this context, if any
  modules_.ForEach([&](uint64_t module_id, const ModuleEntry& module) {
    if (module.library == args.getLibrary() && module.ctx == args.getCtx()) existing = module_id;
  });
  if (existing != 0) {
    return Status::InvalidArgument("library " + std::to_string(args.getLibrary()) +
                                   " already has module " + std::to_string(existing) +
                                   " in context " + std::to_string(args.getCtx()));
  }
  ModuleEntry entry;
  entry.ctx = args.getCtx();
  entry.library = args.getLibrary();
  entry.description = library->description;
  FERRY_RETURN_IF_ERROR(backend_.LoadLibraryModule(*c->context, *library->library, &entry.module));
  return modules_.Insert(id, std::move(entry));
}

// --- occupancy ------------------------------------------------------------------------

Status Session::OccupancyMaxActiveBlocks(wire::OccupancyMaxActiveBlocks::Reader args,
                                         CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  auto sizes = args.getBlockSizes();
  auto smem = args.getDynamicSmemBytes();
  constexpr unsigned kMaxQueries = 1024;
  if (sizes.size() != smem.size() || sizes.size() == 0 || sizes.size() > kMaxQueries) {
    return Status::InvalidArgument(
        "occupancy query needs 1 to 1024 (block size, shared bytes) pairs");
  }
  std::vector<int64_t> answers;
  answers.reserve(sizes.size());
  for (unsigned i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > static_cast<uint32_t>(std::numeric_limits<int>::max())) {
      return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "block size out of range");
    }
    int blocks = 0;
    FERRY_RETURN_IF_ERROR(backend_.OccupancyMaxActiveBlocks(
        *f->function, static_cast<int>(sizes[i]), smem[i], args.getFlags(), &blocks));
    answers.push_back(blocks);
  }
  auto values = cx.reply.initValues(static_cast<unsigned>(answers.size()));
  for (unsigned i = 0; i < answers.size(); ++i) values.set(i, answers[i]);
  return Status::Ok();
}

Status Session::OccupancyAvailableDynamicSmem(wire::OccupancyAvailableDynamicSmem::Reader args,
                                              CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  constexpr uint32_t kIntMax = std::numeric_limits<int>::max();
  if (args.getNumBlocks() > kIntMax || args.getBlockSize() > kIntMax) {
    return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "block count or size out of range");
  }
  uint64_t bytes = 0;
  FERRY_RETURN_IF_ERROR(
      backend_.OccupancyAvailableDynamicSmem(*f->function, static_cast<int>(args.getNumBlocks()),
                                             static_cast<int>(args.getBlockSize()), &bytes));
  cx.reply.setValue(static_cast<int64_t>(bytes));
  return Status::Ok();
}

Status Session::OccupancyCluster(wire::OccupancyCluster::Reader args, CallContext& cx) {
  FunctionEntry* f = nullptr;
  FERRY_RETURN_IF_ERROR(functions_.Find(args.getFunction(), &f));
  backend::LaunchConfig config;
  if (!ReadLaunchConfig(args, &config)) {
    return Status::Cuda(CUDA_ERROR_INVALID_VALUE, "a grid or block dimension is 0");
  }
  int value = 0;
  switch (args.getQuery()) {
    case wire::OccupancyCluster::Query::MAX_POTENTIAL_CLUSTER_SIZE:
      FERRY_RETURN_IF_ERROR(
          backend_.OccupancyMaxPotentialClusterSize(*f->function, config, &value));
      break;
    case wire::OccupancyCluster::Query::MAX_ACTIVE_CLUSTERS:
      FERRY_RETURN_IF_ERROR(backend_.OccupancyMaxActiveClusters(*f->function, config, &value));
      break;
    default:
      return Status::InvalidArgument("unknown cluster occupancy query");
  }
  cx.reply.setValue(value);
  return Status::Ok();
}

}  // namespace ferry::server
