// ContextLocalStorage: put / get / delete per (context, key), and destructors
// that run once, outside the lock, when the context goes away.
#include "client/context_local_storage.h"

#include <gtest/gtest.h>

#include <tuple>
#include <vector>

namespace ferry::client {
namespace {

struct Call {
  void* context;
  void* key;
  void* value;
};
std::vector<Call>* g_calls = nullptr;
ContextLocalStorage* g_storage = nullptr;

void RecordingDestructor(void* context, void* key, void* value) {
  g_calls->push_back({context, key, value});
  // A destructor may use the storage itself (the lock is not held).
  void* ignored = nullptr;
  g_storage->Get(reinterpret_cast<uintptr_t>(context), key, &ignored);
}

class ContextLocalStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_calls = &calls_;
    g_storage = &storage_;
  }
  void TearDown() override {
    g_calls = nullptr;
    g_storage = nullptr;
  }
  ContextLocalStorage storage_;
  std::vector<Call> calls_;
  int key_a_ = 0, key_b_ = 0, key_c_ = 0, value_1_ = 0, value_2_ = 0;
};

TEST_F(ContextLocalStorageTest, PutGetDelete) {
  void* value = nullptr;
  EXPECT_FALSE(storage_.Get(1, &key_a_, &value));
  storage_.Put(1, &key_a_, &value_1_, nullptr);
  ASSERT_TRUE(storage_.Get(1, &key_a_, &value));
  EXPECT_EQ(value, &value_1_);
  // Per context and per key.
  EXPECT_FALSE(storage_.Get(2, &key_a_, &value));
  EXPECT_FALSE(storage_.Get(1, &key_b_, &value));
  // Put replaces.
  storage_.Put(1, &key_a_, &value_2_, nullptr);
  ASSERT_TRUE(storage_.Get(1, &key_a_, &value));
  EXPECT_EQ(value, &value_2_);
  EXPECT_TRUE(storage_.Delete(1, &key_a_));
  EXPECT_FALSE(storage_.Get(1, &key_a_, &value));
  EXPECT_FALSE(storage_.Delete(1, &key_a_));
}

TEST_F(ContextLocalStorageTest, DestructorsRunOnceForTheirContextOnly) {
  storage_.Put(7, &key_a_, &value_1_, &RecordingDestructor);
  storage_.Put(7, &key_b_, &value_2_, &RecordingDestructor);
  storage_.Put(8, &key_a_, &value_2_, &RecordingDestructor);
  storage_.Put(7, &key_c_, &value_1_, nullptr);  // no destructor: just dropped
  storage_.RunDestructors(7);
  ASSERT_EQ(calls_.size(), 2u);
  for (const Call& call : calls_) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(call.context), 7u);
    EXPECT_TRUE((call.key == &key_a_ && call.value == &value_1_) ||
                (call.key == &key_b_ && call.value == &value_2_));
  }
  void* value = nullptr;
  EXPECT_FALSE(storage_.Get(7, &key_a_, &value));
  EXPECT_FALSE(storage_.Get(7, &key_c_, &value));
  EXPECT_TRUE(storage_.Get(8, &key_a_, &value));
  storage_.RunDestructors(7);
  EXPECT_EQ(calls_.size(), 2u) << "destructors run once";
}

TEST_F(ContextLocalStorageTest, DeletedSlotsDoNotRunTheirDestructor) {
  storage_.Put(3, &key_a_, &value_1_, &RecordingDestructor);
  EXPECT_TRUE(storage_.Delete(3, &key_a_));
  storage_.RunDestructors(3);
  EXPECT_TRUE(calls_.empty());
}

}  // namespace
}  // namespace ferry::client
