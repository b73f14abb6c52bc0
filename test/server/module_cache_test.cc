// The module image cache: ModuleCache on its own (bounds, recency), and two
// sessions sharing one through ferryd's real Session and HostBackend — the
// second load of an image sends only its hash and no image byte reaches the
// server, and bytes that do not match the hash sent with them are refused
// and never handed to another session under that hash.
#include "server/module_cache.h"

#include <capnp/serialize.h>
#include <cuda.h>
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/frame.h"
#include "server/session.h"
#include "test/support/host_backend.h"
#include "test/support/raw_client.h"

namespace ferry::server {
namespace {

backend::HostBytes Bytes(const std::string& text) {
  auto owned = std::make_shared<std::vector<uint8_t>>(text.begin(), text.end());
  backend::HostBytes bytes;
  bytes.data = owned->data();
  bytes.size = owned->size();
  bytes.owner = std::shared_ptr<const void>(owned, owned->data());
  return bytes;
}

ContentHash HashOf(const backend::HostBytes& bytes) {
  return HashContent(std::span<const uint8_t>(bytes.data, bytes.size));
}

// Session workers reach the cache as sealed memfds (session_worker.h): an
// image held as plain bytes is sealed once and found again as the same
// memfd; a worker's offer is kept only when its bytes are what it names.
TEST(ModuleCacheTest, SealedImagesAreSharedByDescriptorAndCheckedOnTheWayIn) {
  ModuleCache cache(1 << 20);
  const backend::HostBytes image = Bytes("an image held as plain bytes");
  cache.Insert(HashOf(image), image);
  std::shared_ptr<const SealedImage> first, second;
  ASSERT_TRUE(cache.FindSealed(HashOf(image), image.size, &first));
  ASSERT_TRUE(cache.FindSealed(HashOf(image), image.size, &second));
  EXPECT_EQ(first.get(), second.get()) << "sealed once, then remembered";
  ASSERT_EQ(first->size(), image.size);
  EXPECT_EQ(std::memcmp(first->data(), image.data, image.size), 0);
  // Nobody can change a sealed image's bytes any more.
  EXPECT_LT(::write(first->fd(), "x", 1), 0);

  std::shared_ptr<const SealedImage> offered;
  const std::string text = "bytes a worker offers";
  ASSERT_TRUE(
      SealedImage::FromBytes(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
          &offered)
          .ok());
  const ContentHash wrong = HashOf(image);
  EXPECT_FALSE(cache.InsertSealed(wrong, offered));
  std::shared_ptr<const SealedImage> found;
  EXPECT_FALSE(cache.FindSealed(wrong, offered->size(), &found));
  const ContentHash right = HashContent(std::span<const uint8_t>(offered->data(), offered->size()));
  EXPECT_TRUE(cache.InsertSealed(right, offered));
  backend::HostBytes bytes;
  ASSERT_TRUE(cache.Find(right, offered->size(), &bytes));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data), bytes.size), text);

  // A descriptor that is not sealed is refused.
  const int unsealed = ::memfd_create("unsealed", MFD_CLOEXEC);
  ASSERT_GE(unsealed, 0);
  ASSERT_EQ(::write(unsealed, "abc", 3), 3);
  std::shared_ptr<const SealedImage> refused;
  EXPECT_FALSE(SealedImage::FromFd(unsealed, 3, &refused).ok());
}

TEST(ModuleCacheTest, FindsWhatWasInsertedByHashAndSize) {
  ModuleCache cache(1 << 20);
  const backend::HostBytes image = Bytes("image one");
  const ContentHash hash = HashOf(image);
  backend::HostBytes found;
  EXPECT_FALSE(cache.Find(hash, image.size, &found));
  cache.Insert(hash, image);
  ASSERT_TRUE(cache.Find(hash, image.size, &found));
  EXPECT_EQ(std::string(found.data, found.data + found.size), "image one");
  EXPECT_FALSE(cache.Find(hash, image.size + 1, &found)) << "the size is part of the name";
  const ModuleCacheStats stats = cache.stats();
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 2u);
  EXPECT_EQ(stats.images, 1u);
  EXPECT_EQ(stats.bytes, image.size);
}

TEST(ModuleCacheTest, StaysWithinItsCapacityDroppingTheLeastRecentlyUsed) {
  ModuleCache cache(100);
  std::vector<backend::HostBytes> images;
  for (char c : std::string("abcd")) images.push_back(Bytes(std::string(40, c)));
  cache.Insert(HashOf(images[0]), images[0]);
  cache.Insert(HashOf(images[1]), images[1]);
  backend::HostBytes found;
  ASSERT_TRUE(cache.Find(HashOf(images[0]), 40, &found));  // a is now the most recent
  cache.Insert(HashOf(images[2]), images[2]);              // 120 > 100: b goes
  EXPECT_TRUE(cache.Find(HashOf(images[0]), 40, &found));
  EXPECT_FALSE(cache.Find(HashOf(images[1]), 40, &found));
  EXPECT_TRUE(cache.Find(HashOf(images[2]), 40, &found));
  EXPECT_LE(cache.stats().bytes, 100u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  // An image larger than the whole cache is not kept, and evicts nothing.
  const backend::HostBytes huge = Bytes(std::string(101, 'h'));
  cache.Insert(HashOf(huge), huge);
  EXPECT_FALSE(cache.Find(HashOf(huge), 101, &found));
  EXPECT_EQ(cache.stats().images, 2u);
}

TEST(ModuleCacheTest, AnEvictedImageStaysValidForWhoeverHoldsIt) {
  ModuleCache cache(50);
  const backend::HostBytes first = Bytes(std::string(40, 'x'));
  cache.Insert(HashOf(first), first);
  backend::HostBytes held;
  ASSERT_TRUE(cache.Find(HashOf(first), 40, &held));
  const backend::HostBytes second = Bytes(std::string(40, 'y'));
  cache.Insert(HashOf(second), second);  // evicts the first
  EXPECT_EQ(std::string(held.data, held.data + held.size), std::string(40, 'x'));
}

// A PTX image with one kernel named `kernel`.
std::string PtxImage(const std::string& kernel) {
  std::string text = ".version 8.0\n.target sm_90\n.address_size 64\n\n.visible .entry " + kernel +
                     "(\n  .param .u64 p\n)\n{\n  ret;\n}\n";
  // Padding comments make it large, as real images are.
  for (int i = 0; i < 2000; ++i) text += "// padding line " + std::to_string(i) + "\n";
  text.push_back('\0');
  return text;
}

struct LoadResult {
  Status status;
  bool not_cached = false;
  std::vector<std::string> kernels;
};

// A client speaking raw frames to a Session that shares `cache`.
class CachedSession {
 public:
  CachedSession(uint64_t id, backend::GpuBackend& backend, ModuleCache* cache) {
    std::unique_ptr<Transport> server_side, client_side;
    EXPECT_TRUE(MakeTransportPair(&server_side, &client_side).ok());
    capnp::MallocMessageBuilder hello;
    session_ = std::make_unique<Session>(id, std::move(server_side), backend,
                                         hello.initRoot<wire::Hello>().asReader(), cache);
    runner_ = std::thread([this] { session_->Run(); });
    client_ = std::make_unique<test::RawClient>(std::move(client_side));
    Frame frame;
    EXPECT_TRUE(ReadFrame(client_->transport(), &frame).ok());  // the HelloReply
    EXPECT_TRUE(
        client_->Call([](wire::Call::Builder c) { c.initCtxCreate().setCtx(1); }).status.ok());
  }

  ~CachedSession() {
    client_->transport().Shutdown();
    runner_.join();
  }

  // moduleLoad (libraryLoad when `library`) of id `id` with `hash` (empty:
  // none) and `image` as bulk (empty: none).
  LoadResult Load(uint64_t id, const std::vector<uint8_t>& hash, uint64_t image_bytes,
                  const std::string& image, bool library = false) {
    const test::ReplyResult reply = client_->Call(
        [&](wire::Call::Builder call) {
          if (library) {
            auto args = call.initLibraryLoad();
            args.setLibrary(id);
            if (!hash.empty()) {
              args.setImageHash(kj::arrayPtr(hash.data(), hash.size()));
              args.setImageBytes(image_bytes);
            }
          } else {
            auto args = call.initModuleLoad();
            args.setCtx(1);
            args.setModule(id);
            if (!hash.empty()) {
              args.setImageHash(kj::arrayPtr(hash.data(), hash.size()));
              args.setImageBytes(image_bytes);
            }
          }
        },
        std::vector<uint8_t>(image.begin(), image.end()));
    LoadResult result;
    result.status = reply.status;
    result.not_cached = reply.image_not_cached;
    result.kernels = reply.kernels;
    return result;
  }

  SessionInfo Info() const { return session_->Info(); }
  test::RawClient& client() { return *client_; }

 private:
  std::unique_ptr<Session> session_;
  std::thread runner_;
  std::unique_ptr<test::RawClient> client_;
};

std::vector<uint8_t> HashBytes(const std::string& image) {
  const ContentHash hash = HashContent(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(image.data()), image.size()));
  return std::vector<uint8_t>(hash.begin(), hash.end());
}

class SessionModuleCacheTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(test::CreateTestHostBackend(64 << 20, &backend_).ok()); }
  std::unique_ptr<backend::GpuBackend> backend_;
  ModuleCache cache_{64 << 20};
};

TEST_F(SessionModuleCacheTest, ASecondProcessLoadingTheSameImageSendsOnlyItsHash) {
  const std::string image = PtxImage("shared_kernel");
  const std::vector<uint8_t> hash = HashBytes(image);
  {
    CachedSession first(1, *backend_, &cache_);
    // By hash alone: the server does not have it yet and creates nothing.
    LoadResult asked = first.Load(10, hash, image.size(), "");
    ASSERT_TRUE(asked.status.ok()) << asked.status.ToString();
    EXPECT_TRUE(asked.not_cached);
    EXPECT_EQ(first.Info().modules, 0u);
    LoadResult sent = first.Load(10, hash, image.size(), image);
    ASSERT_TRUE(sent.status.ok()) << sent.status.ToString();
    EXPECT_FALSE(sent.not_cached);
    EXPECT_EQ(sent.kernels, std::vector<std::string>{"shared_kernel"});
    EXPECT_EQ(first.Info().module_image_bytes_received, image.size());
  }
  CachedSession second(2, *backend_, &cache_);
  LoadResult loaded = second.Load(20, hash, image.size(), "");
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_FALSE(loaded.not_cached);
  EXPECT_EQ(loaded.kernels, std::vector<std::string>{"shared_kernel"});
  EXPECT_EQ(second.Info().modules, 1u);
  EXPECT_EQ(second.Info().module_image_bytes_received, 0u) << "the second load sent image bytes";
  EXPECT_EQ(cache_.stats().hits, 1u);
  EXPECT_EQ(cache_.stats().insertions, 1u);
}

// Libraries (what the CUDA runtime and cuBLAS load) are named the same way,
// and share the cache with modules.
TEST_F(SessionModuleCacheTest, LibrariesAreNamedByHashAndShareTheCacheWithModules) {
  const std::string image = PtxImage("library_kernel");
  const std::vector<uint8_t> hash = HashBytes(image);
  {
    CachedSession first(1, *backend_, &cache_);
    LoadResult asked = first.Load(7, hash, image.size(), "", /*library=*/true);
    ASSERT_TRUE(asked.status.ok()) << asked.status.ToString();
    EXPECT_TRUE(asked.not_cached);
    LoadResult sent = first.Load(7, hash, image.size(), image, /*library=*/true);
    ASSERT_TRUE(sent.status.ok()) << sent.status.ToString();
    EXPECT_FALSE(sent.not_cached);
    EXPECT_EQ(sent.kernels, std::vector<std::string>{"library_kernel"});
    // Bytes that are not what their name says are refused.
    std::string forged = image;
    forged[forged.size() / 2] ^= 1;
    EXPECT_EQ(first.Load(8, hash, forged.size(), forged, /*library=*/true).status.cuda_result(),
              CUDA_ERROR_INVALID_VALUE);
  }
  CachedSession second(2, *backend_, &cache_);
  LoadResult library = second.Load(9, hash, image.size(), "", /*library=*/true);
  ASSERT_TRUE(library.status.ok()) << library.status.ToString();
  EXPECT_FALSE(library.not_cached);
  EXPECT_EQ(library.kernels, std::vector<std::string>{"library_kernel"});
  LoadResult module = second.Load(20, hash, image.size(), "");
  ASSERT_TRUE(module.status.ok()) << module.status.ToString();
  EXPECT_FALSE(module.not_cached);
  EXPECT_EQ(second.Info().module_image_bytes_received, 0u) << "the second process sent image bytes";
  EXPECT_EQ(cache_.stats().hits, 2u);
  EXPECT_EQ(cache_.stats().insertions, 1u);
}

TEST_F(SessionModuleCacheTest, BytesThatDoNotMatchTheirHashAreRefusedAndNeverServedUnderIt) {
  const std::string victim_image = PtxImage("victim_kernel");
  const std::string planted_image = PtxImage("planted_kernel");
  const std::vector<uint8_t> victim_hash = HashBytes(victim_image);
  {
    // An attacker claims the victim's hash (and length) for its own bytes.
    std::string planted = planted_image;
    planted.resize(victim_image.size(), '\0');
    CachedSession attacker(1, *backend_, &cache_);
    LoadResult result = attacker.Load(10, victim_hash, victim_image.size(), planted);
    EXPECT_EQ(result.status.cuda_result(), CUDA_ERROR_INVALID_VALUE) << result.status.ToString();
    EXPECT_EQ(attacker.Info().modules, 0u);
  }
  EXPECT_EQ(cache_.stats().images, 0u);
  CachedSession victim(2, *backend_, &cache_);
  LoadResult asked = victim.Load(20, victim_hash, victim_image.size(), "");
  ASSERT_TRUE(asked.status.ok());
  EXPECT_TRUE(asked.not_cached) << "the victim was served bytes it did not send";
  LoadResult sent = victim.Load(20, victim_hash, victim_image.size(), victim_image);
  ASSERT_TRUE(sent.status.ok()) << sent.status.ToString();
  EXPECT_EQ(sent.kernels, std::vector<std::string>{"victim_kernel"});
  // A wrong length with the right hash is refused as well.
  CachedSession other(3, *backend_, &cache_);
  LoadResult wrong_length = other.Load(30, victim_hash, victim_image.size() + 1, victim_image);
  EXPECT_EQ(wrong_length.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  LoadResult bad_hash = other.Load(31, std::vector<uint8_t>(5, 1), victim_image.size(), "");
  EXPECT_EQ(bad_hash.status.cuda_result(), CUDA_ERROR_INVALID_VALUE);
}

TEST_F(SessionModuleCacheTest, WithoutACacheEveryLoadByHashAsksForTheBytes) {
  const std::string image = PtxImage("uncached_kernel");
  const std::vector<uint8_t> hash = HashBytes(image);
  CachedSession session(1, *backend_, nullptr);
  for (uint64_t module : {10, 11}) {
    LoadResult asked = session.Load(module, hash, image.size(), "");
    ASSERT_TRUE(asked.status.ok());
    EXPECT_TRUE(asked.not_cached);
    LoadResult sent = session.Load(module, hash, image.size(), image);
    ASSERT_TRUE(sent.status.ok()) << sent.status.ToString();
  }
  // Without a cache there is nothing to protect: the bytes are not checked
  // against the hash, only loaded.
  std::string other = PtxImage("other_kernel");
  LoadResult unchecked = session.Load(13, hash, image.size(), other);
  EXPECT_TRUE(unchecked.status.ok()) << unchecked.status.ToString();
  // An image sent without a hash is loaded and not kept.
  LoadResult plain = session.Load(12, {}, 0, image);
  ASSERT_TRUE(plain.status.ok()) << plain.status.ToString();
  EXPECT_EQ(session.Info().modules, 4u);
}

// JIT linking: a link input is named by its hash like a module image (it
// travels once), and the linked image goes into the cache, so a later load
// of it that names it by its hash sends nothing.
TEST_F(SessionModuleCacheTest, LinkInputsAndLinkedImagesAreCachedByHash) {
  const std::string input = PtxImage("linked_kernel");
  const std::vector<uint8_t> input_hash = HashBytes(input);
  auto link = [&](CachedSession& session, uint64_t id, const std::string& bytes) {
    EXPECT_TRUE(session.client()
                    .Call([&](wire::Call::Builder c) {
                      auto a = c.initLinkCreate();
                      a.setCtx(1);
                      a.setLink(id);
                    })
                    .status.ok());
    return session.client().Call(
        [&](wire::Call::Builder c) {
          auto a = c.initLinkAddData();
          a.setLink(id);
          a.setType(CU_JIT_INPUT_PTX);
          a.setImageHash(kj::arrayPtr(input_hash.data(), input_hash.size()));
          a.setImageBytes(input.size());
        },
        std::vector<uint8_t>(bytes.begin(), bytes.end()));
  };
  std::string linked;
  {
    CachedSession first(1, *backend_, &cache_);
    EXPECT_TRUE(link(first, 5, "").image_not_cached);
    const test::ReplyResult added = link(first, 6, input);
    ASSERT_TRUE(added.link_result && added.link_outcome.ok()) << added.status.ToString();
    const test::ReplyResult completed =
        first.client().Call([&](wire::Call::Builder c) { c.initLinkComplete().setLink(6); });
    ASSERT_TRUE(completed.link_outcome.ok()) << completed.link_outcome.ToString();
    const test::ReplyResult image =
        first.client().Call([&](wire::Call::Builder c) { c.initLinkImage().setLink(6); });
    ASSERT_EQ(image.bulk.size(), completed.image_bytes);
    linked.assign(image.bulk.begin(), image.bulk.end());
  }
  CachedSession second(2, *backend_, &cache_);
  const test::ReplyResult by_hash = link(second, 7, "");
  EXPECT_FALSE(by_hash.image_not_cached);
  EXPECT_TRUE(by_hash.link_outcome.ok()) << by_hash.link_outcome.ToString();
  LoadResult loaded = second.Load(20, HashBytes(linked), linked.size(), "");
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_FALSE(loaded.not_cached);
  EXPECT_EQ(loaded.kernels, std::vector<std::string>{"linked_kernel"});
  EXPECT_EQ(second.Info().module_image_bytes_received, 0u) << "the second process sent image bytes";
}

}  // namespace
}  // namespace ferry::server
