// The cluster's records and key layout, without etcd.
#include "server/cluster/cluster_records.h"

#include <gtest/gtest.h>

namespace ferry::cluster {
namespace {

TEST(ClusterRecordsTest, KeysNameServerGpuLayoutAndSlice) {
  EXPECT_EQ(ServerKey("/ferry/", "a"), "/ferry/servers/a");
  EXPECT_EQ(GpuStateKey("/ferry/", "a", 3), "/ferry/gpus/a/3");
  EXPECT_EQ(ClaimKey("/ferry/", "a", 3, 4, 1), "/ferry/claims/a/3/4/1");
  // Every claim of a server lies under its prefix; another server's does not.
  EXPECT_EQ(ClaimKey("/p/", "ab", 0, 1, 0).rfind(ServerClaimsPrefix("/p/", "ab"), 0), 0u);
  EXPECT_NE(ClaimKey("/p/", "ab", 0, 1, 0).rfind(ServerClaimsPrefix("/p/", "a"), 0), 0u);
}

TEST(ClusterRecordsTest, ServerNamesAreKeySegments) {
  EXPECT_TRUE(CheckServerName("gpu-a.rack_1").ok());
  for (const char* bad : {"", "-a", ".a", "a/b", "a:b", "a b"}) {
    EXPECT_EQ(CheckServerName(bad).code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(CheckServerName(std::string(64, 'a')).ok());
  std::string prefix;
  ASSERT_TRUE(NormalizePrefix("/ferry", &prefix).ok());
  EXPECT_EQ(prefix, "/ferry/");
  EXPECT_FALSE(NormalizePrefix("", &prefix).ok());
}

TEST(ClusterRecordsTest, RecordsSurviveJson) {
  ServerRecord server;
  server.name = "a";
  server.advertise = "10.0.0.1:7070";
  server.labels = {{"rack", "r1"}};
  server.backend = "host";
  server.pid = 42;
  server.started_unix_ms = 1700000000123;
  server.gpus.push_back(GpuRecord{1, "GPU-00", "H100", 80ull << 30, 132});
  ServerRecord back;
  ASSERT_TRUE(FromJson(ToJson(server), &back).ok());
  EXPECT_EQ(back.name, "a");
  EXPECT_EQ(back.labels.at("rack"), "r1");
  ASSERT_EQ(back.gpus.size(), 1u);
  EXPECT_EQ(back.gpus[0].memory, 80ull << 30);
  EXPECT_EQ(back.gpus[0].sms, 132);
  EXPECT_EQ(back.started_unix_ms, 1700000000123);

  ClaimRecord claim;
  claim.server = "a";
  claim.gpu = 1;
  claim.slices_per_gpu = 4;
  claim.slice = 3;
  claim.session = 1ull << 40;
  claim.program = "train \"quoted\"";
  ClaimRecord claim_back;
  ASSERT_TRUE(FromJson(ToJson(claim), &claim_back).ok());
  EXPECT_EQ(claim_back.session, 1ull << 40);
  EXPECT_EQ(claim_back.program, "train \"quoted\"");
  EXPECT_EQ(claim_back.slice, 3);

  GpuState state;
  state.pool = "dev";
  state.free_slices = 2;
  state.drained = true;
  GpuState state_back;
  ASSERT_TRUE(FromJson(ToJson(state), &state_back).ok());
  EXPECT_EQ(state_back.pool, "dev");
  EXPECT_EQ(state_back.free_slices, 2);
  EXPECT_TRUE(state_back.drained);
}

TEST(ClusterRecordsTest, WhatIsNotARecordIsMalformed) {
  ServerRecord server;
  EXPECT_EQ(FromJson("not json", &server).code(), StatusCode::kMalformed);
  EXPECT_EQ(FromJson("[1,2]", &server).code(), StatusCode::kMalformed);
  EXPECT_EQ(FromJson(R"({"pid":"not a number"})", &server).code(), StatusCode::kMalformed);
  ClaimRecord claim;
  EXPECT_EQ(FromJson(R"({"gpu":{}})", &claim).code(), StatusCode::kMalformed);
}

TEST(ClusterRecordsTest, UuidsPrintAsNvidiaDoes) {
  std::array<uint8_t, 16> bytes{};
  for (int i = 0; i < 16; ++i) bytes[i] = static_cast<uint8_t>(i * 17);
  EXPECT_EQ(FormatGpuUuid(bytes), "GPU-00112233-4455-6677-8899-aabbccddeeff");
}

}  // namespace
}  // namespace ferry::cluster
