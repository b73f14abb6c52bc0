// ClusterMember against a real etcd: registration and leaving, claims as
// transactions (one holder per slice, also under concurrent claims), a
// second server of the same name kept out, etcd going away and coming back,
// and leases that vanish behind the member's back.
#include "server/cluster/cluster_member.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "test/support/etcd_server.h"
#include "test/support/wait.h"

namespace ferry::cluster {
namespace {

using namespace std::chrono_literals;

constexpr auto kConditionTimeout = 20s;

class ClusterMemberTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    etcd_ = test::EtcdServer::Start(&error);
    ASSERT_NE(etcd_, nullptr) << error;
    store_ = NewClient();
  }

  std::unique_ptr<etcd::EtcdClient> NewClient() {
    etcd::EtcdClient::Options options;
    options.endpoints = {etcd_->endpoint()};
    options.request_timeout = absl::Seconds(1);
    std::unique_ptr<etcd::EtcdClient> client;
    EXPECT_TRUE(etcd::EtcdClient::Create(options, &client).ok());
    return client;
  }

  // A member named `name` with a short lease, joined with `gpus` GPUs that
  // each have `free` free slices of pool "dev" (4 per GPU).
  std::unique_ptr<ClusterMember> Join(const std::string& name, int gpus, int free,
                                      Status* joined = nullptr) {
    ClusterMember::Options options;
    options.name = name;
    options.advertise = "127.0.0.1:" + std::to_string(7000 + name.size());
    options.ttl = absl::Seconds(2);
    options.retry = absl::Milliseconds(100);
    std::unique_ptr<ClusterMember> member;
    Status created = ClusterMember::Create(NewClient(), options, &member);
    EXPECT_TRUE(created.ok()) << created.message();
    if (member == nullptr) return nullptr;
    ServerRecord self;
    self.backend = "host";
    for (int i = 0; i < gpus; ++i) self.gpus.push_back(GpuRecord{i, "GPU-x", "host", 64 << 20, 1});
    Status status = member->Join(self, [gpus, free] {
      std::vector<GpuState> states;
      for (int i = 0; i < gpus; ++i) {
        GpuState state;
        state.index = i;
        state.pool = "dev";
        state.slices_per_gpu = 4;
        state.free_slices = free;
        states.push_back(state);
      }
      return states;
    });
    if (joined != nullptr) *joined = status;
    return member;
  }

  static std::vector<ClaimRecord> Slice(int gpu, int slice) {
    ClaimRecord claim;
    claim.gpu = gpu;
    claim.slices_per_gpu = 4;
    claim.slice = slice;
    claim.pool = "dev";
    claim.host = "client-host";
    claim.pid = 1234;
    claim.program = "test";
    return {claim};
  }

  ClusterSnapshot Read() {
    ClusterSnapshot snapshot;
    Status status = ReadCluster(*store_, "/ferry/", &snapshot);
    EXPECT_TRUE(status.ok()) << status.message();
    return snapshot;
  }

  std::unique_ptr<test::EtcdServer> etcd_;
  std::unique_ptr<etcd::EtcdClient> store_;
};

TEST_F(ClusterMemberTest, JoinRegistersTheServerAndItsGpusAndLeaveRemovesThemAtOnce) {
  Status joined;
  std::unique_ptr<ClusterMember> member = Join("a", 2, 4, &joined);
  ASSERT_TRUE(joined.ok()) << joined.message();
  EXPECT_TRUE(member->registered());
  ClusterSnapshot snapshot = Read();
  ASSERT_EQ(snapshot.servers.size(), 1u);
  EXPECT_EQ(snapshot.servers[0].name, "a");
  EXPECT_EQ(snapshot.servers[0].gpus.size(), 2u);
  ASSERT_EQ(snapshot.gpus.size(), 2u);
  EXPECT_EQ(snapshot.gpus[1].server, "a");
  EXPECT_EQ(snapshot.gpus[1].pool, "dev");
  member->Leave();
  snapshot = Read();
  EXPECT_TRUE(snapshot.servers.empty());
  EXPECT_TRUE(snapshot.gpus.empty());
}

TEST_F(ClusterMemberTest, ASliceHasOneHolderUntilItIsReleased) {
  std::unique_ptr<ClusterMember> member = Join("a", 1, 4);
  ASSERT_TRUE(member->registered());
  ASSERT_TRUE(member->Claim(1, Slice(0, 2)).ok());
  Status second = member->Claim(2, Slice(0, 2));
  EXPECT_EQ(second.code(), StatusCode::kOverloaded);
  EXPECT_NE(second.message().find("slice 3/4 of GPU a:0"), std::string::npos) << second.message();
  EXPECT_NE(second.message().find("session 1"), std::string::npos) << second.message();
  // Another slice of the same GPU is free.
  EXPECT_TRUE(member->Claim(3, Slice(0, 3)).ok());
  ClusterSnapshot snapshot = Read();
  ASSERT_EQ(snapshot.claims.size(), 2u);
  EXPECT_EQ(snapshot.claims[0].session, 1u);
  EXPECT_NE(snapshot.claims[0].lease, snapshot.claims[1].lease) << "a lease per session";
  // Release revokes before it returns: the slice is free at once.
  member->Release(1);
  EXPECT_TRUE(member->Claim(2, Slice(0, 2)).ok());
}

TEST_F(ClusterMemberTest, ConcurrentClaimsNeverShareASlice) {
  std::unique_ptr<ClusterMember> member = Join("a", 1, 4);
  ASSERT_TRUE(member->registered());
  constexpr int kThreads = 8, kRounds = 15, kSlices = 2;
  std::atomic<int> holders[kSlices] = {};
  std::atomic<int> granted{0}, refused{0}, overlaps{0};
  std::atomic<uint64_t> next_session{1};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(t);
      for (int round = 0; round < kRounds; ++round) {
        const int slice = static_cast<int>(random() % kSlices);
        const uint64_t session = next_session.fetch_add(1);
        if (!member->Claim(session, Slice(0, slice)).ok()) {
          ++refused;
          continue;
        }
        ++granted;
        if (holders[slice].fetch_add(1) != 0) ++overlaps;
        // Held across a round trip to etcd, so other threads claim meanwhile;
        // the claim read back is this session's.
        std::optional<etcd::KeyValue> kv;
        ClaimRecord held;
        if (!store_->Get(ClaimKey("/ferry/", "a", 0, 4, slice), &kv).ok() || !kv.has_value() ||
            !FromJson(kv->value, &held).ok() || held.session != session) {
          ++overlaps;
        }
        holders[slice].fetch_sub(1);  // before the release: its key still stands
        member->Release(session);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_GT(granted.load(), 0);
  EXPECT_EQ(granted.load() + refused.load(), kThreads * kRounds);
  // Every released claim goes.
  EXPECT_TRUE(test::WaitFor([&] { return Read().claims.empty(); }, kConditionTimeout, 20ms));
}

TEST_F(ClusterMemberTest, ASecondServerOfTheSameNameWaitsUntilTheFirstIsGone) {
  std::unique_ptr<ClusterMember> first = Join("a", 1, 4);
  ASSERT_TRUE(first->registered());
  Status joined;
  std::unique_ptr<ClusterMember> second = Join("a", 1, 4, &joined);
  EXPECT_EQ(joined.code(), StatusCode::kOverloaded);
  EXPECT_NE(joined.message().find("already has a server named a"), std::string::npos)
      << joined.message();
  EXPECT_FALSE(second->registered());
  EXPECT_EQ(second->Claim(1, Slice(0, 0)).code(), StatusCode::kDisconnected);
  first->Leave();
  EXPECT_TRUE(test::WaitFor([&] { return second->registered(); }, kConditionTimeout, 20ms));
}

TEST_F(ClusterMemberTest, WithoutEtcdClaimsFailClearlyAndWorkAgainWhenItIsBack) {
  std::unique_ptr<ClusterMember> member = Join("a", 1, 4);
  ASSERT_TRUE(member->registered());
  ASSERT_TRUE(member->Claim(1, Slice(0, 0)).ok());
  etcd_->Stop();
  Status away = member->Claim(2, Slice(0, 1));
  EXPECT_EQ(away.code(), StatusCode::kDisconnected);
  EXPECT_NE(away.message().find("cluster"), std::string::npos) << away.message();
  std::string error;
  ASSERT_TRUE(etcd_->Restart(&error)) << error;
  EXPECT_TRUE(test::WaitFor([&] { return member->Claim(2, Slice(0, 1)).ok(); }, kConditionTimeout,
                            50ms));
  // The claim made before etcd went away is still held.
  ClusterSnapshot snapshot = Read();
  ASSERT_EQ(snapshot.claims.size(), 2u);
  EXPECT_EQ(snapshot.claims[0].session, 1u);
}

TEST_F(ClusterMemberTest, LeasesLostBehindTheMembersBackAreReplaced) {
  std::unique_ptr<ClusterMember> member = Join("a", 1, 4);
  ASSERT_TRUE(member->registered());
  ASSERT_TRUE(member->Claim(7, Slice(0, 1)).ok());
  ClusterSnapshot before = Read();
  ASSERT_EQ(before.claims.size(), 1u);
  std::optional<etcd::KeyValue> server_key;
  ASSERT_TRUE(store_->Get(ServerKey("/ferry/", "a"), &server_key).ok());
  ASSERT_TRUE(server_key.has_value());
  // As if both leases had expired while etcd could not be reached.
  ASSERT_TRUE(store_->RevokeLease(server_key->lease).ok());
  ASSERT_TRUE(store_->RevokeLease(before.claims[0].lease).ok());
  EXPECT_TRUE(test::WaitFor(
      [&] {
        ClusterSnapshot now = Read();
        return now.servers.size() == 1 && now.gpus.size() == 1 && now.claims.size() == 1 &&
               now.claims[0].session == 7 && now.claims[0].lease != before.claims[0].lease;
      },
      kConditionTimeout, 50ms));
}

TEST_F(ClusterMemberTest, TheQueueIsOldestFirstAndATicketIsSpentByItsClaim) {
  std::unique_ptr<ClusterMember> a = Join("a", 1, 4);
  std::unique_ptr<ClusterMember> b = Join("b", 1, 4);
  ASSERT_TRUE(a->registered());
  ASSERT_TRUE(b->registered());
  WaiterRecord waiter;
  waiter.pool = "dev";
  std::string first, second, other_pool;
  ASSERT_TRUE(b->Enqueue(11, waiter, &first).ok());
  ASSERT_TRUE(a->Enqueue(12, waiter, &second).ok());
  waiter.pool = "train";
  ASSERT_TRUE(a->Enqueue(13, waiter, &other_pool).ok());
  std::vector<QueueEntry> queue;
  ASSERT_TRUE(a->ReadQueue("dev", &queue).ok());
  ASSERT_EQ(queue.size(), 2u);
  EXPECT_EQ(queue[0].ticket, first);
  EXPECT_EQ(queue[0].waiter.server, "b");
  EXPECT_EQ(queue[1].waiter.session, 12u);
  // Tickets are unguessable and name their pool.
  EXPECT_NE(first.find("/ferry/queue/dev/b-11-"), std::string::npos) << first;
  EXPECT_EQ(a->AdoptTicket(21, "train", first).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a->AdoptTicket(21, "dev", "/ferry/queue/dev/b-11-0").code(), StatusCode::kNotFound);
  // b's client is sent to a with its ticket: a keeps it alive and its claim
  // spends it, in one transaction.
  b->HandOffTicket(11);
  ASSERT_TRUE(a->AdoptTicket(21, "dev", first).ok());
  ASSERT_TRUE(a->Claim(21, Slice(0, 0), first).ok());
  ASSERT_TRUE(a->ReadQueue("dev", &queue).ok());
  ASSERT_EQ(queue.size(), 1u);
  EXPECT_EQ(queue[0].ticket, second);
  // A spent ticket claims nothing, and takes nothing.
  Status again = a->Claim(22, Slice(0, 1), first);
  EXPECT_EQ(again.code(), StatusCode::kOverloaded);
  EXPECT_NE(again.message().find("place in the cluster's queue"), std::string::npos)
      << again.message();
  EXPECT_EQ(Read().claims.size(), 1u);
  // A wait that ends gives its place up at once.
  a->Dequeue(12);
  ASSERT_TRUE(a->ReadQueue("dev", &queue).ok());
  EXPECT_TRUE(queue.empty());
  ASSERT_TRUE(a->ReadQueue("train", &queue).ok());
  EXPECT_EQ(queue.size(), 1u);
}

TEST_F(ClusterMemberTest, APartOfASplitBorrowLeavesTheTicketForTheNextPart) {
  std::unique_ptr<ClusterMember> a = Join("a", 1, 4);
  std::unique_ptr<ClusterMember> b = Join("b", 1, 4);
  ASSERT_TRUE(a->registered());
  ASSERT_TRUE(b->registered());
  WaiterRecord waiter;
  waiter.pool = "dev";
  waiter.gpus = 2;
  std::string ticket;
  ASSERT_TRUE(a->Enqueue(11, waiter, &ticket).ok());
  // a split the borrow into a part on a and one on b, and handed the ticket
  // to the client; the client borrows a's part first.
  a->HandOffTicket(11);
  ASSERT_TRUE(a->AdoptTicket(21, "dev", ticket).ok());
  ASSERT_TRUE(a->Claim(21, Slice(0, 0), ticket, ClusterMember::TicketUse::kLeaveForNextPart).ok());
  std::vector<QueueEntry> queue;
  ASSERT_TRUE(a->ReadQueue("dev", &queue).ok());
  ASSERT_EQ(queue.size(), 1u);  // its lease was not revoked either: that would delete it
  EXPECT_EQ(queue[0].ticket, ticket);
  // a no longer holds it: its session's wait ending does not take it away.
  a->Dequeue(21);
  ASSERT_TRUE(a->ReadQueue("dev", &queue).ok());
  EXPECT_EQ(queue.size(), 1u);
  // The last part, on b, spends it with its claim.
  ASSERT_TRUE(b->AdoptTicket(31, "dev", ticket).ok());
  ASSERT_TRUE(b->Claim(31, Slice(0, 0), ticket).ok());
  ASSERT_TRUE(b->ReadQueue("dev", &queue).ok());
  EXPECT_TRUE(queue.empty());
  ClusterSnapshot snapshot = Read();
  ASSERT_EQ(snapshot.claims.size(), 2u);
  EXPECT_EQ(snapshot.claims[0].server, "a");
  EXPECT_EQ(snapshot.claims[1].server, "b");
  // A part whose ticket is gone claims nothing.
  Status late = a->Claim(22, Slice(0, 1), ticket, ClusterMember::TicketUse::kLeaveForNextPart);
  EXPECT_EQ(late.code(), StatusCode::kOverloaded);
  EXPECT_NE(late.message().find("place in the cluster's queue"), std::string::npos)
      << late.message();
  EXPECT_EQ(Read().claims.size(), 2u);
}

TEST_F(ClusterMemberTest, RoomIsLookedForOnOtherServersOnly) {
  std::unique_ptr<ClusterMember> a = Join("a", 2, 4);
  std::unique_ptr<ClusterMember> b = Join("b", 2, 1);
  std::unique_ptr<ClusterMember> c = Join("cc", 1, 3);
  ClusterSnapshot snapshot = Read();
  ASSERT_EQ(snapshot.servers.size(), 3u);
  std::string advertise;
  // From a: b has 2 GPUs with one free slice each, cc 1 GPU with three.
  EXPECT_EQ(a->FindRoom(snapshot, "dev", 1, &advertise), "cc");
  EXPECT_EQ(advertise, "127.0.0.1:7002");
  EXPECT_EQ(a->FindRoom(snapshot, "dev", 2, &advertise), "b");
  EXPECT_EQ(a->FindRoom(snapshot, "dev", 3, &advertise), "");
  EXPECT_EQ(a->FindRoom(snapshot, "train", 1, &advertise), "");
  EXPECT_EQ(c->FindRoom(snapshot, "dev", 2, &advertise), "a");
}

}  // namespace
}  // namespace ferry::cluster
