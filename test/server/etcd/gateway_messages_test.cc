// etcd's gateway JSON and the object stream, without an etcd: the answers
// here have the shapes etcd 3.4.23 sends (trimmed headers).
#include "server/etcd/gateway_messages.h"

#include <gtest/gtest.h>

#include "server/etcd/json_object_stream.h"

namespace ferry::etcd {
namespace {

TEST(JsonObjectStreamTest, CutsJoinedAndSplitObjects) {
  const std::string text =
      "{\"a\":1}\n{\"b\":{\"c\":[1,{\"d\":2}]}}  \r\n{\"s\":\"}{\\\"]\"}{\"e\":[]}";
  const std::vector<std::string> expected = {"{\"a\":1}", "{\"b\":{\"c\":[1,{\"d\":2}]}}",
                                             "{\"s\":\"}{\\\"]\"}", "{\"e\":[]}"};
  // Whole, and one byte at a time.
  JsonObjectStream whole;
  std::vector<std::string> objects;
  ASSERT_TRUE(whole.Feed(text, &objects).ok());
  EXPECT_EQ(objects, expected);
  EXPECT_TRUE(whole.idle());

  JsonObjectStream bytewise;
  objects.clear();
  for (char byte : text) {
    ASSERT_TRUE(bytewise.Feed(std::string_view(&byte, 1), &objects).ok());
  }
  EXPECT_EQ(objects, expected);

  JsonObjectStream partial;
  objects.clear();
  ASSERT_TRUE(partial.Feed("{\"x\":\"a\\\\\"", &objects).ok());  // ends in an escaped backslash
  EXPECT_TRUE(objects.empty());
  EXPECT_FALSE(partial.idle());
  ASSERT_TRUE(partial.Feed("}", &objects).ok());
  EXPECT_EQ(objects, std::vector<std::string>{"{\"x\":\"a\\\\\"}"});
}

TEST(JsonObjectStreamTest, SomethingOtherThanAnObjectIsMalformed) {
  JsonObjectStream stream;
  std::vector<std::string> objects;
  EXPECT_EQ(stream.Feed("{}x{}", &objects).code(), StatusCode::kMalformed);
  EXPECT_EQ(objects.size(), 1u);
  EXPECT_EQ(stream.Feed("{}", &objects).code(), StatusCode::kMalformed);  // stays failed
}

TEST(GatewayMessagesTest, RequestBodies) {
  EXPECT_EQ(gateway::RangeBody(gateway::SingleKey("/a")), R"({"key":"L2E="})");
  EXPECT_EQ(gateway::RangeBody(gateway::PrefixRange("/a/")),
            R"({"key":"L2Ev","range_end":"L2Ew"})");
  EXPECT_EQ(gateway::RangeBody(gateway::PrefixRange("")), R"({"key":"AA==","range_end":"AA=="})");
  EXPECT_EQ(gateway::PutBody("k", "v", 0), R"({"key":"aw==","value":"dg=="})");
  EXPECT_EQ(gateway::PutBody("k", "", 7587862), R"({"key":"aw==","lease":"7587862","value":""})");
  EXPECT_EQ(gateway::LeaseIdBody(5007618301855006989), R"({"ID":"5007618301855006989"})");
  EXPECT_EQ(gateway::WatchCreateBody(gateway::PrefixRange("/w/"), 12),
            R"({"create_request":{"key":"L3cv","range_end":"L3cw","start_revision":"12"}})");
  EXPECT_EQ(
      gateway::TxnBody({Compare::Absent("k")}, {TxnOp::Put("k", "v")}, {TxnOp::Range("k", false)}),
      R"({"compare":[{"create_revision":"0","key":"aw==","result":"EQUAL","target":"CREATE"}],)"
      R"("failure":[{"request_range":{"key":"aw=="}}],)"
      R"("success":[{"request_put":{"key":"aw==","value":"dg=="}}]})");
}

TEST(GatewayMessagesTest, ParsesRangeWithAbsentFieldsAsZero) {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;
  ASSERT_TRUE(gateway::ParseRange(
                  R"({"header":{"revision":"7"},"kvs":[{"key":"L3QvMg==","create_revision":"7",)"
                  R"("mod_revision":"7","version":"1"}],"count":"1"})",
                  &kvs, &revision)
                  .ok());
  EXPECT_EQ(revision, 7);
  ASSERT_EQ(kvs.size(), 1u);
  EXPECT_EQ(kvs[0].key, "/t/2");
  EXPECT_EQ(kvs[0].value, "");
  EXPECT_EQ(kvs[0].lease, 0);
  ASSERT_TRUE(gateway::ParseRange(R"({"header":{"revision":"2"}})", &kvs, &revision).ok());
  EXPECT_TRUE(kvs.empty());

  EXPECT_EQ(gateway::ParseRange("not json", &kvs, &revision).code(), StatusCode::kMalformed);
  EXPECT_EQ(gateway::ParseRange(R"({"kvs":[{"key":"!!"}]})", &kvs, &revision).code(),
            StatusCode::kMalformed);
  EXPECT_EQ(gateway::ParseRange(R"({"kvs":[{"version":"x"}]})", &kvs, &revision).code(),
            StatusCode::kMalformed);
}

TEST(GatewayMessagesTest, ParsesTxnRangesOfTheBranchThatRan) {
  const std::vector<TxnOp> success = {TxnOp::Put("/t/1", "x")};
  const std::vector<TxnOp> failure = {TxnOp::Range("/t/1", false)};
  TxnResult result;
  ASSERT_TRUE(gateway::ParseTxn(
                  R"({"header":{"revision":"6"},"responses":[{"response_range":{"header":)"
                  R"({"revision":"6"},"kvs":[{"key":"L3QvMQ==","value":"eA=="}],"count":"1"}}]})",
                  success, failure, &result)
                  .ok());
  EXPECT_FALSE(result.succeeded);
  EXPECT_EQ(result.revision, 6);
  ASSERT_EQ(result.ranges.size(), 1u);
  EXPECT_EQ(result.ranges[0][0].value, "x");
  // The success branch has no range: a range answer there is not etcd's.
  EXPECT_EQ(gateway::ParseTxn(R"({"succeeded":true,"responses":[{"response_range":{}}]})", success,
                              failure, &result)
                .code(),
            StatusCode::kMalformed);
}

TEST(GatewayMessagesTest, ParsesLeasesAndErrors) {
  int64_t id = 0;
  int64_t ttl = 0;
  ASSERT_TRUE(
      gateway::ParseLeaseGrant(R"({"ID":"5007618301855006987","TTL":"5"})", &id, &ttl).ok());
  EXPECT_EQ(id, 5007618301855006987);
  EXPECT_EQ(ttl, 5);
  ASSERT_TRUE(gateway::ParseKeepAlive(R"({"result":{"ID":"12","TTL":"3"}})", &ttl).ok());
  EXPECT_EQ(ttl, 3);
  ASSERT_TRUE(gateway::ParseKeepAlive(R"({"result":{"header":{},"ID":"12"}})", &ttl).ok());
  EXPECT_EQ(ttl, 0);  // etcd 3.4's answer for a lease that is gone

  int code = 0;
  Status not_found = gateway::ParseError(
      404,
      R"({"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5})",
      &code);
  EXPECT_EQ(not_found.code(), StatusCode::kNotFound);
  EXPECT_EQ(code, 5);
  EXPECT_EQ(not_found.message(), "etcdserver: requested lease not found");
  Status other = gateway::ParseError(400, R"({"error":"bad","message":"bad","code":3})", &code);
  EXPECT_EQ(other.code(), StatusCode::kInternal);
  EXPECT_NE(other.message().find("bad"), std::string::npos);
  EXPECT_EQ(gateway::ParseError(404, "Not Found\n", &code).code(), StatusCode::kMalformed);
  EXPECT_EQ(code, -1);
}

TEST(GatewayMessagesTest, ParsesWatchMessages) {
  gateway::WatchMessage message;
  ASSERT_TRUE(gateway::ParseWatchMessage(R"({"result":{"header":{"revision":"7"},"created":true}})",
                                         &message)
                  .ok());
  EXPECT_TRUE(message.created);
  EXPECT_TRUE(message.events.empty());

  ASSERT_TRUE(gateway::ParseWatchMessage(
                  R"({"result":{"header":{"revision":"10"},"events":[{"kv":{"key":"L3cvMg==",)"
                  R"("create_revision":"9","mod_revision":"9","version":"1","value":"djI="}},)"
                  R"({"type":"DELETE","kv":{"key":"L3cvMQ==","mod_revision":"10"}}]}})",
                  &message)
                  .ok());
  EXPECT_EQ(message.revision, 10);
  ASSERT_EQ(message.events.size(), 2u);
  EXPECT_EQ(message.events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(message.events[0].kv.key, "/w/2");
  EXPECT_EQ(message.events[0].kv.value, "v2");
  EXPECT_EQ(message.events[1].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(message.events[1].kv.key, "/w/1");
  EXPECT_EQ(message.events[1].kv.mod_revision, 10);

  ASSERT_TRUE(gateway::ParseWatchMessage(
                  R"({"result":{"header":{},"canceled":true,"compact_revision":"9"}})", &message)
                  .ok());
  EXPECT_TRUE(message.canceled);
  EXPECT_EQ(message.compact_revision, 9);

  EXPECT_EQ(gateway::ParseWatchMessage(
                R"({"error":{"grpc_code":14,"http_code":503,"message":"no leader"}})", &message)
                .code(),
            StatusCode::kDisconnected);
  EXPECT_EQ(
      gateway::ParseWatchMessage(R"({"error":{"grpc_code":3,"message":"bad"}})", &message).code(),
      StatusCode::kInternal);
  EXPECT_EQ(
      gateway::ParseWatchMessage(R"({"result":{"events":[{"type":"BOGUS","kv":{}}]}})", &message)
          .code(),
      StatusCode::kMalformed);
}

}  // namespace
}  // namespace ferry::etcd
