#include "client/image_upload.h"

#include <cuda.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "common/image/module_image.h"

namespace ferry::client {

Status CallWithImage(Connection& connection, std::span<const uint8_t> image,
                     absl::FunctionRef<void(wire::Call::Builder, const ContentHash* name)> fill,
                     absl::FunctionRef<Status(wire::Reply::Reader)> on_reply) {
  const bool named = image.size() >= kNameByHashMinBytes;
  ContentHash hash{};
  if (named) hash = HashContent(image);
  const ContentHash* name = named ? &hash : nullptr;
  bool not_cached = false;
  auto build = [&](wire::Call::Builder call) { fill(call, name); };
  auto answer = [&](wire::Reply::Reader reply) {
    if (reply.getImageNotCached()) {
      not_cached = true;
      return Status::Ok();
    }
    return on_reply(reply);
  };
  FERRY_RETURN_IF_ERROR(connection.Call(
      build, named ? OutBytes{} : OutBytes{image.data(), image.size()}, {}, answer));
  if (!not_cached) return Status::Ok();
  not_cached = false;
  FERRY_RETURN_IF_ERROR(connection.Call(build, OutBytes{image.data(), image.size()}, {}, answer));
  if (not_cached) return Status::Internal("ferryd asked twice for the bytes of an image");
  return Status::Ok();
}

Status ReadImageDescription(wire::Reply::Reader reply, ImageDescription* out) {
  if (!reply.isModuleLoad()) return Status::Malformed("load reply without a description");
  auto kernels = std::make_shared<std::map<std::string, KernelInfo>>();
  for (auto kernel : reply.getModuleLoad().getKernels()) {
    KernelInfo info;
    for (auto p : kernel.getParams()) {
      info.params.push_back({p.getOffset(), p.getSize()});
      info.param_bytes =
          std::max<uint64_t>(info.param_bytes, uint64_t{p.getOffset()} + p.getSize());
    }
    const std::string name = kernel.getName().cStr();
    if (kernels->emplace(name, std::move(info)).second) out->kernel_names.push_back(name);
  }
  out->kernels = std::move(kernels);
  for (auto global : reply.getModuleLoad().getGlobals()) {
    out->globals[global.getName().cStr()] = global.getSize();
  }
  return Status::Ok();
}

Status ReadFileBytes(const char* path, std::vector<uint8_t>* bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Cuda(CUDA_ERROR_FILE_NOT_FOUND, std::string("cannot open ") + path);
  bytes->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return Status::Ok();
}

Status ReadImageFile(const char* path, std::vector<uint8_t>* bytes) {
  FERRY_RETURN_IF_ERROR(ReadFileBytes(path, bytes));
  image::ImageKind kind;
  FERRY_RETURN_IF_ERROR(image::ClassifyImage(*bytes, &kind));
  if (kind == image::ImageKind::kPtx && (bytes->empty() || bytes->back() != 0)) {
    bytes->push_back(0);
  }
  return Status::Ok();
}

}  // namespace ferry::client
