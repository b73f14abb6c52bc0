// HandleTable: a session's table of one handle kind, keyed by the id the
// client chose. Ids 0 and duplicates are refused, lookups of missing ids name
// the kind and the id, and size() follows every change.
#include "server/handle_table.h"

#include <gtest/gtest.h>

#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>

namespace ferry::server {
namespace {

struct Entry {
  std::unique_ptr<int> value;  // move-only, like the session's entries
  uint64_t ctx = 0;
};

Entry Make(int value, uint64_t ctx = 0) { return Entry{std::make_unique<int>(value), ctx}; }

TEST(HandleTableTest, InsertFindErase) {
  HandleTable<Entry> table("stream");
  EXPECT_EQ(table.size(), 0u);
  ASSERT_TRUE(table.Insert(7, Make(70)).ok());
  ASSERT_TRUE(table.Insert(8, Make(80)).ok());
  EXPECT_EQ(table.size(), 2u);
  EXPECT_TRUE(table.Contains(7));

  Entry* found = nullptr;
  ASSERT_TRUE(table.Find(7, &found).ok());
  EXPECT_EQ(*found->value, 70);
  // Pointers stay valid while other entries come and go.
  for (uint64_t id = 100; id < 1100; ++id) ASSERT_TRUE(table.Insert(id, Make(1)).ok());
  EXPECT_EQ(*found->value, 70);

  ASSERT_TRUE(table.Erase(7).ok());
  EXPECT_FALSE(table.Contains(7));
  EXPECT_EQ(table.size(), 1001u);
}

TEST(HandleTableTest, RefusesZeroAndDuplicatesWithoutChangingTheEntry) {
  HandleTable<Entry> table("event");
  Status zero = table.Insert(0, Make(1));
  EXPECT_EQ(zero.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(zero.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_NE(zero.message().find("event id 0"), std::string::npos) << zero.ToString();
  EXPECT_FALSE(table.CheckNewId(0).ok());

  ASSERT_TRUE(table.Insert(5, Make(50)).ok());
  EXPECT_FALSE(table.CheckNewId(5).ok());
  Status duplicate = table.Insert(5, Make(51));
  EXPECT_EQ(duplicate.cuda_result(), CUDA_ERROR_INVALID_VALUE);
  EXPECT_NE(duplicate.message().find("event id 5 is 0 or already in use"), std::string::npos)
      << duplicate.ToString();
  Entry* found = nullptr;
  ASSERT_TRUE(table.Find(5, &found).ok());
  EXPECT_EQ(*found->value, 50);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_TRUE(table.CheckNewId(6).ok());
}

TEST(HandleTableTest, MissingIdsNameTheKindAndTheId) {
  HandleTable<Entry> table("module");
  Entry* found = nullptr;
  Status missing = table.Find(42, &found);
  EXPECT_EQ(missing.cuda_result(), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(missing.message(), "no module 42 in this session");
  EXPECT_EQ(found, nullptr);  // untouched
  Status erase = table.Erase(42);
  EXPECT_EQ(erase.message(), "no module 42 in this session");
  EXPECT_FALSE(table.Find(0, &found).ok());
}

TEST(HandleTableTest, AKindMayReportMissingHandlesWithItsOwnCode) {
  HandleTable<Entry> table("context", [](std::string message) {
    return Status::Cuda(CUDA_ERROR_INVALID_CONTEXT, std::move(message));
  });
  Entry* found = nullptr;
  Status missing = table.Find(3, &found);
  EXPECT_EQ(missing.cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(missing.message(), "no context 3 in this session");
  EXPECT_EQ(table.Erase(3).cuda_result(), CUDA_ERROR_INVALID_CONTEXT);
}

TEST(HandleTableTest, EraseIfForEachAndClear) {
  HandleTable<Entry> table("function");
  for (uint64_t id = 1; id <= 10; ++id) ASSERT_TRUE(table.Insert(id, Make(0, id % 2)).ok());
  EXPECT_EQ(table.EraseIf([](uint64_t, const Entry& e) { return e.ctx == 1; }), 5u);
  EXPECT_EQ(table.size(), 5u);
  std::set<uint64_t> ids;
  table.ForEach([&](uint64_t id, Entry& e) {
    ids.insert(id);
    *e.value = static_cast<int>(id);  // ForEach hands out mutable entries
  });
  EXPECT_EQ(ids, (std::set<uint64_t>{2, 4, 6, 8, 10}));
  Entry* found = nullptr;
  ASSERT_TRUE(table.Find(4, &found).ok());
  EXPECT_EQ(*found->value, 4);
  EXPECT_EQ(table.EraseIf([](uint64_t id, const Entry&) { return id > 100; }), 0u);
  table.Clear();
  EXPECT_EQ(table.size(), 0u);
  EXPECT_FALSE(table.Contains(2));
  EXPECT_TRUE(table.Insert(2, Make(2)).ok());  // ids are free again
}

// size() is what status reports read from other threads while the owner
// changes the table; it must never tear or race (TSan runs check the latter).
TEST(HandleTableTest, SizeIsReadableFromAnotherThread) {
  HandleTable<Entry> table("stream");
  constexpr uint64_t kIds = 2000;
  std::atomic<bool> done{false};
  size_t largest = 0;
  std::thread reader([&] {
    while (!done.load()) largest = std::max(largest, table.size());
  });
  for (uint64_t id = 1; id <= kIds; ++id) ASSERT_TRUE(table.Insert(id, Make(0)).ok());
  table.EraseIf([](uint64_t id, const Entry&) { return id % 2 == 0; });
  done.store(true);
  reader.join();
  EXPECT_LE(largest, kIds);
  EXPECT_EQ(table.size(), kIds / 2);
}

}  // namespace
}  // namespace ferry::server
