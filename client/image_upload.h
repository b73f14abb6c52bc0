// Sending a module or library image (schema/README.md: module images are
// content-addressed). An image of kNameByHashMinBytes or more goes by its
// SHA-256 alone first; only when the server answers imageNotCached does the
// call go again with the bytes (and the same name, so ferryd can keep them).
// A second process loading the same large image (cuBLAS's fatbins) then
// sends 32 bytes instead of the image.
//
// Thread-safety: as Connection::Call.
#pragma once

#include <cstdint>
#include <span>

#include <absl/functional/function_ref.h>

#include <map>
#include <string>
#include <vector>

#include "client/connection.h"
#include "client/runtime.h"
#include "common/content_hash.h"
#include "common/status.h"
#include "schema/ferry.capnp.h"

namespace ferry::client {

// Images at least this large are named by their hash first (the server may
// hold them already); smaller ones are cheaper to send than to hash and ask.
constexpr size_t kNameByHashMinBytes = 64 << 10;

// Calls the server with the call `fill` builds, carrying `image`. `fill`
// gets the image's name (nullptr: the image is sent unnamed) and sets it in
// the call's imageHash/imageBytes fields. `on_reply` sees only the final
// reply (never an imageNotCached one).
Status CallWithImage(Connection& connection, std::span<const uint8_t> image,
                     absl::FunctionRef<void(wire::Call::Builder, const ContentHash* name)> fill,
                     absl::FunctionRef<Status(wire::Reply::Reader)> on_reply);

// What a moduleLoad or libraryLoad reply describes.
struct ImageDescription {
  std::vector<std::string> kernel_names;    // in the order the image lists them
  KernelTable kernels;                      // name -> parameter layout
  std::map<std::string, uint64_t> globals;  // name -> size
};

// Reads the description from a load's reply; a reply without one is
// Malformed.
Status ReadImageDescription(wire::Reply::Reader reply, ImageDescription* out);

// Loads `image` as a module or library and reads the reply's description
// into `*out`. `init` starts the call's arguments (initModuleLoad or
// initLibraryLoad, with their ids set by the caller's lambda) and returns
// them; the image's name goes into them as CallWithImage decides.
template <typename Init>
Status LoadImage(Connection& connection, std::span<const uint8_t> image, Init init,
                 ImageDescription* out) {
  return CallWithImage(
      connection, image,
      [&](wire::Call::Builder call, const ContentHash* name) {
        auto args = init(call);
        if (name != nullptr) {
          args.setImageHash(kj::arrayPtr(name->data(), name->size()));
          args.setImageBytes(image.size());
        }
      },
      [&](wire::Reply::Reader reply) { return ReadImageDescription(reply, out); });
}

// Reads the file at `path` as it is (cuLinkAddFile):
// CUDA_ERROR_FILE_NOT_FOUND when it cannot be opened.
Status ReadFileBytes(const char* path, std::vector<uint8_t>* bytes);

// Reads the image file at `path` (cuModuleLoad, cuLibraryLoadFromFile):
// CUDA_ERROR_FILE_NOT_FOUND when it cannot be opened, an error when it is no
// image; PTX text gets the terminating NUL the loaders expect.
Status ReadImageFile(const char* path, std::vector<uint8_t>* bytes);

}  // namespace ferry::client
