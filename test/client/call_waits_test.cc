// CheckWaits (client/connection.cc): the client refuses to send a call the
// way its schema description ($waits in schema/ferry.capnp) forbids, so a
// call that must answer is never posted (its value would be lost) and a
// fire-and-forget call never costs a round trip. A debug build aborts at the
// wrong call site; a release build refuses with Internal.
#include <capnp/schema.h>
#include <gtest/gtest.h>

#include "client/connection.h"
#include "schema/call_table.h"

namespace ferry::client {
namespace {

using W = wire::Call;

#ifdef NDEBUG
#define EXPECT_REFUSED(expr) EXPECT_EQ((expr).code(), StatusCode::kInternal)
#else
#define EXPECT_REFUSED(expr) EXPECT_DEATH((void)(expr), "")
#endif

class CallWaitsTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(CallWaitsTest, ACallThatAlwaysWaitsIsRefusedWhenPosted) {
  EXPECT_TRUE(CheckWaits(W::MEM_ALLOC, /*wants_reply=*/true, /*gate=*/false).ok());
  EXPECT_REFUSED(CheckWaits(W::MEM_ALLOC, /*wants_reply=*/false, /*gate=*/false));
  EXPECT_REFUSED(CheckWaits(W::MEMCPY_DTO_H, /*wants_reply=*/false, /*gate=*/false));
  // cuMemAllocAsync waits for its address (not for the stream).
  EXPECT_TRUE(CheckWaits(W::MEM_ALLOC_ASYNC, true, false).ok());
  EXPECT_REFUSED(CheckWaits(W::MEM_ALLOC_ASYNC, false, false));
}

TEST_F(CallWaitsTest, ACallThatNeverWaitsIsRefusedWhenSentToWait) {
  EXPECT_TRUE(CheckWaits(W::MEM_FREE, /*wants_reply=*/false, /*gate=*/false).ok());
  EXPECT_REFUSED(CheckWaits(W::MEM_FREE, /*wants_reply=*/true, /*gate=*/false));
  EXPECT_TRUE(CheckWaits(W::CTX_RESET_PERSISTING_L2_CACHE, false, false).ok());
  EXPECT_REFUSED(CheckWaits(W::CTX_RESET_PERSISTING_L2_CACHE, true, false));
  EXPECT_TRUE(CheckWaits(W::MEM_FREE_ASYNC, false, false).ok());
  EXPECT_REFUSED(CheckWaits(W::MEM_FREE_ASYNC, true, false));
}

// stream capture and graphs: beginning a capture and launching a graph never
// wait; ending a capture always does (an invalidated capture is reported there).
TEST_F(CallWaitsTest, CaptureAndGraphCallsWaitAsDescribed) {
  EXPECT_TRUE(CheckWaits(W::STREAM_BEGIN_CAPTURE, false, false).ok());
  EXPECT_REFUSED(CheckWaits(W::STREAM_BEGIN_CAPTURE, true, false));
  EXPECT_TRUE(CheckWaits(W::GRAPH_LAUNCH, false, false).ok());
  EXPECT_REFUSED(CheckWaits(W::GRAPH_LAUNCH, true, false));
  EXPECT_TRUE(CheckWaits(W::STREAM_END_CAPTURE, true, false).ok());
  EXPECT_REFUSED(CheckWaits(W::STREAM_END_CAPTURE, false, false));
}

TEST_F(CallWaitsTest, ByFlagCallsGoEitherWayAndGatesOnlyThroughPostHostGate) {
  EXPECT_TRUE(CheckWaits(W::MEMCPY2_D, /*wants_reply=*/true, /*gate=*/false).ok());
  EXPECT_TRUE(CheckWaits(W::MEMCPY2_D, /*wants_reply=*/false, /*gate=*/false).ok());
  EXPECT_REFUSED(CheckWaits(W::MEMCPY2_D, /*wants_reply=*/false, /*gate=*/true));
  EXPECT_TRUE(CheckWaits(W::HOST_GATE, /*wants_reply=*/false, /*gate=*/true).ok());
  EXPECT_REFUSED(CheckWaits(W::HOST_GATE, /*wants_reply=*/false, /*gate=*/false));
}

TEST_F(CallWaitsTest, AnOrdinalWithoutADescriptionIsRefused) {
  EXPECT_REFUSED(CheckWaits(static_cast<W::Which>(wire::kCallMembers), true, false));
}

TEST(CallTableTest, FollowsTheSchemaDescriptions) {
  // One description per member of Call's union.
  ASSERT_EQ(wire::kCallMembers, capnp::Schema::from<wire::Call>().getUnionFields().size());
  EXPECT_EQ(wire::kCallWaits[static_cast<size_t>(W::PING)], wire::CallWaits::kAlways);
  EXPECT_EQ(wire::kCallWaits[static_cast<size_t>(W::LAUNCH)], wire::CallWaits::kNever);
  EXPECT_EQ(wire::kCallWaits[static_cast<size_t>(W::FUNC_SET_ATTRIBUTE)], wire::CallWaits::kByFlag);
  const wire::CallDescription& copy = wire::kCallDescriptions[static_cast<size_t>(W::MEMCPY_DTO_D)];
  EXPECT_STREQ(copy.name, "memcpyDtoD");
  EXPECT_STREQ(copy.ordered_on, "stream");
  EXPECT_STREQ(copy.handles, "ctx,stream");
  EXPECT_STREQ(copy.ranges, "dst,src");
  EXPECT_STREQ(wire::kCallDescriptions[static_cast<size_t>(W::MEM_FREE)].ordered_on, "");
}

}  // namespace
}  // namespace ferry::client
