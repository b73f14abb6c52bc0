#include "client/image_upload.h"

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
  FERRY_RETURN_IF_ERROR(
      connection.Call(build, named ? OutBytes{} : OutBytes{image.data(), image.size()}, {}, answer));
  if (!not_cached) return Status::Ok();
  not_cached = false;
  FERRY_RETURN_IF_ERROR(connection.Call(build, OutBytes{image.data(), image.size()}, {}, answer));
  if (not_cached) return Status::Internal("ferryd asked twice for the bytes of an image");
  return Status::Ok();
}

}  // namespace ferry::client
