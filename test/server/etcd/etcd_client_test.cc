// EtcdClient against a real etcd (test/support/etcd_server.h): every test
// starts its own etcd on free loopback ports, so tests that kill or restart
// it disturb no other.
#include "server/etcd/etcd_client.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "test/support/etcd_server.h"
#include "test/support/net.h"
#include "test/support/wait.h"

namespace ferry::etcd {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using test::EtcdServer;
using test::WaitFor;

// What a watch's callbacks saw; read from the test's thread.
class WatchLog {
 public:
  std::function<void(const std::vector<WatchEvent>&)> OnEvents() {
    return [this](const std::vector<WatchEvent>& batch) {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.insert(events_.end(), batch.begin(), batch.end());
    };
  }
  std::function<void(const Status&)> OnEnd() {
    return [this](const Status& why) {
      std::lock_guard<std::mutex> lock(mutex_);
      ends_.push_back(why);
    };
  }
  std::vector<WatchEvent> events() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }
  std::vector<Status> ends() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ends_;
  }
  bool WaitForEvents(size_t count) const {
    return WaitFor([&] { return events().size() >= count; }, seconds(10));
  }
  bool WaitForEnd() const {
    return WaitFor([&] { return !ends().empty(); }, seconds(10));
  }

 private:
  mutable std::mutex mutex_;
  std::vector<WatchEvent> events_;  // guarded by mutex_
  std::vector<Status> ends_;        // guarded by mutex_
};

std::unique_ptr<EtcdClient> MakeClient(std::vector<std::string> endpoints,
                                       absl::Duration timeout = absl::Seconds(2)) {
  std::unique_ptr<EtcdClient> client;
  Status status = EtcdClient::Create({std::move(endpoints), timeout}, &client);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return client;
}

std::string ClosedEndpoint() {
  return "http://127.0.0.1:" + std::to_string(test::ClosedLoopbackPort());
}

class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    etcd_ = EtcdServer::Start(&error);
    ASSERT_NE(etcd_, nullptr) << error;
    client_ = MakeClient({etcd_->endpoint()});
    ASSERT_NE(client_, nullptr);
  }

  std::optional<KeyValue> MustGet(const std::string& key) {
    std::optional<KeyValue> kv;
    Status status = client_->Get(key, &kv);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return kv;
  }

  std::unique_ptr<EtcdServer> etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST_F(EtcdClientTest, PutGetDelete) {
  ASSERT_TRUE(client_->Put("/ferry/a", "one").ok());
  std::optional<KeyValue> kv;
  int64_t revision = 0;
  ASSERT_TRUE(client_->Get("/ferry/a", &kv, &revision).ok());
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->key, "/ferry/a");
  EXPECT_EQ(kv->value, "one");
  EXPECT_EQ(kv->version, 1);
  EXPECT_EQ(kv->lease, 0);
  EXPECT_EQ(kv->create_revision, kv->mod_revision);
  EXPECT_EQ(revision, kv->mod_revision);

  // A second put: a new mod_revision and version, the same create_revision.
  ASSERT_TRUE(client_->Put("/ferry/a", std::string("two\0bytes", 9)).ok());
  std::optional<KeyValue> again = MustGet("/ferry/a");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->value, std::string("two\0bytes", 9));
  EXPECT_EQ(again->version, 2);
  EXPECT_EQ(again->create_revision, kv->create_revision);
  EXPECT_GT(again->mod_revision, kv->mod_revision);

  EXPECT_FALSE(MustGet("/ferry/absent").has_value());

  int64_t deleted = -1;
  ASSERT_TRUE(client_->Delete("/ferry/a", &deleted).ok());
  EXPECT_EQ(deleted, 1);
  EXPECT_FALSE(MustGet("/ferry/a").has_value());
  ASSERT_TRUE(client_->Delete("/ferry/a", &deleted).ok());
  EXPECT_EQ(deleted, 0);
}

TEST_F(EtcdClientTest, GetPrefixIsSortedAndDeletePrefixTakesOnlyThePrefix) {
  for (const char* key : {"/pool/b", "/pool/a", "/pool/c", "/poolx", "/other"}) {
    ASSERT_TRUE(client_->Put(key, std::string("v") + key).ok());
  }
  std::vector<KeyValue> kvs;
  int64_t revision = 0;
  ASSERT_TRUE(client_->GetPrefix("/pool/", &kvs, &revision).ok());
  ASSERT_EQ(kvs.size(), 3u);
  EXPECT_EQ(kvs[0].key, "/pool/a");
  EXPECT_EQ(kvs[1].key, "/pool/b");
  EXPECT_EQ(kvs[2].key, "/pool/c");
  EXPECT_EQ(kvs[2].value, "v/pool/c");
  EXPECT_GE(revision, kvs[2].mod_revision);

  ASSERT_TRUE(client_->GetPrefix("", &kvs).ok());  // every key
  EXPECT_EQ(kvs.size(), 5u);

  int64_t deleted = 0;
  ASSERT_TRUE(client_->DeletePrefix("/pool/", &deleted).ok());
  EXPECT_EQ(deleted, 3);
  ASSERT_TRUE(client_->GetPrefix("/pool", &kvs).ok());
  ASSERT_EQ(kvs.size(), 1u);
  EXPECT_EQ(kvs[0].key, "/poolx");
  EXPECT_TRUE(MustGet("/other").has_value());
}

TEST_F(EtcdClientTest, CompareAndCreateSucceedsOnceThenReturnsTheFailureBranchRange) {
  const std::vector<Compare> absent = {Compare::Absent("/leader")};
  const std::vector<TxnOp> create = {TxnOp::Put("/leader", "server-1")};
  const std::vector<TxnOp> read = {TxnOp::Range("/leader", false)};
  TxnResult result;
  ASSERT_TRUE(client_->Txn(absent, create, read, &result).ok());
  EXPECT_TRUE(result.succeeded);
  EXPECT_TRUE(result.ranges.empty());
  EXPECT_GT(result.revision, 0);
  const int64_t created_at = result.revision;

  const std::vector<TxnOp> create_other = {TxnOp::Put("/leader", "server-2")};
  ASSERT_TRUE(client_->Txn(absent, create_other, read, &result).ok());
  EXPECT_FALSE(result.succeeded);
  ASSERT_EQ(result.ranges.size(), 1u);
  ASSERT_EQ(result.ranges[0].size(), 1u);
  EXPECT_EQ(result.ranges[0][0].value, "server-1");
  EXPECT_EQ(result.ranges[0][0].create_revision, created_at);
  EXPECT_EQ(MustGet("/leader")->value, "server-1");
}

TEST_F(EtcdClientTest, TxnWithModRevisionValueAndVersionCompares) {
  ASSERT_TRUE(client_->Put("/cfg", "v1").ok());
  const int64_t first = MustGet("/cfg")->mod_revision;

  // The revision we read: the update applies, and the branch's range sees it.
  TxnResult result;
  ASSERT_TRUE(client_
                  ->Txn({Compare::ModRevisionIs("/cfg", first)},
                        {TxnOp::Put("/cfg", "v2"), TxnOp::Range("/cfg", false)}, {}, &result)
                  .ok());
  EXPECT_TRUE(result.succeeded);
  ASSERT_EQ(result.ranges.size(), 1u);
  ASSERT_EQ(result.ranges[0].size(), 1u);
  EXPECT_EQ(result.ranges[0][0].value, "v2");

  // A stale revision: nothing changes.
  ASSERT_TRUE(
      client_->Txn({Compare::ModRevisionIs("/cfg", first)}, {TxnOp::Put("/cfg", "v3")}, {}, &result)
          .ok());
  EXPECT_FALSE(result.succeeded);
  EXPECT_EQ(MustGet("/cfg")->value, "v2");

  // Value and version compares, and a prefix delete and range in a branch.
  ASSERT_TRUE(client_->Put("/cfg/x", "1").ok());
  ASSERT_TRUE(client_->Put("/cfg/y", "2").ok());
  const Compare value_is{Compare::Target::kValue, Compare::Op::kEqual, "/cfg", 0, "v2"};
  const Compare version_above{Compare::Target::kVersion, Compare::Op::kGreater, "/cfg", 1, {}};
  ASSERT_TRUE(client_
                  ->Txn({value_is, version_above},
                        {TxnOp::Range("/cfg/", true), TxnOp::Delete("/cfg")}, {}, &result)
                  .ok());
  EXPECT_TRUE(result.succeeded);
  ASSERT_EQ(result.ranges.size(), 1u);
  EXPECT_EQ(result.ranges[0].size(), 2u);
  EXPECT_FALSE(MustGet("/cfg").has_value());

  TxnOp delete_prefix = TxnOp::Delete("/cfg/");
  delete_prefix.prefix = true;
  ASSERT_TRUE(client_->Txn({}, {delete_prefix}, {}, &result).ok());
  EXPECT_TRUE(result.succeeded);
  std::vector<KeyValue> kvs;
  ASSERT_TRUE(client_->GetPrefix("/cfg", &kvs).ok());
  EXPECT_TRUE(kvs.empty());
}

TEST_F(EtcdClientTest, KeysOfARevokedLeaseVanish) {
  int64_t lease = 0;
  ASSERT_TRUE(client_->GrantLease(absl::Seconds(30), &lease).ok());
  EXPECT_NE(lease, 0);
  ASSERT_TRUE(client_->Put("/live/1", "a", lease).ok());
  ASSERT_TRUE(client_->Put("/live/2", "b", lease).ok());
  TxnResult result;
  ASSERT_TRUE(client_->Txn({}, {TxnOp::Put("/live/3", "c", lease)}, {}, &result).ok());
  ASSERT_TRUE(client_->Put("/kept", "d").ok());
  std::optional<KeyValue> kv = MustGet("/live/1");
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->lease, lease);

  ASSERT_TRUE(client_->RevokeLease(lease).ok());
  std::vector<KeyValue> kvs;
  ASSERT_TRUE(client_->GetPrefix("/live/", &kvs).ok());
  EXPECT_TRUE(kvs.empty());
  EXPECT_TRUE(MustGet("/kept").has_value());

  // A lease already gone: revoking is fine, binding a key to it is not.
  EXPECT_TRUE(client_->RevokeLease(lease).ok());
  Status put = client_->Put("/live/4", "e", lease);
  EXPECT_EQ(put.code(), StatusCode::kNotFound) << put.ToString();
}

TEST_F(EtcdClientTest, KeepAliveOnceKeepsALeasePastItsTtlUntilRevoked) {
  int64_t lease = 0;
  ASSERT_TRUE(client_->GrantLease(absl::Seconds(2), &lease).ok());
  ASSERT_TRUE(client_->Put("/alive", "yes", lease).ok());
  // Twice the TTL, renewing every quarter of it; the key must stay.
  const auto end = std::chrono::steady_clock::now() + seconds(4);
  int renewals = 0;
  while (std::chrono::steady_clock::now() < end) {
    absl::Duration ttl_left;
    Status status = client_->KeepAliveOnce(lease, &ttl_left);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_GT(ttl_left, absl::ZeroDuration());
    EXPECT_LE(ttl_left, absl::Seconds(2));
    ASSERT_TRUE(MustGet("/alive").has_value()) << "after " << renewals << " renewals";
    ++renewals;
    std::this_thread::sleep_for(milliseconds(500));  // the renewal pace, not a synchronization
  }
  ASSERT_TRUE(client_->RevokeLease(lease).ok());
  Status gone = client_->KeepAliveOnce(lease);
  EXPECT_EQ(gone.code(), StatusCode::kNotFound) << gone.ToString();
  EXPECT_FALSE(MustGet("/alive").has_value());
}

TEST_F(EtcdClientTest, ALeaseLeftAloneExpires) {
  int64_t lease = 0;
  ASSERT_TRUE(client_->GrantLease(absl::Seconds(1), &lease).ok());
  ASSERT_TRUE(client_->Put("/ephemeral", "x", lease).ok());
  EXPECT_TRUE(
      WaitFor([&] { return !MustGet("/ephemeral").has_value(); }, seconds(10), milliseconds(50)));
  Status gone = client_->KeepAliveOnce(lease);
  EXPECT_EQ(gone.code(), StatusCode::kNotFound) << gone.ToString();
}

TEST_F(EtcdClientTest, GrantLeaseRefusesATtlBelowOneSecond) {
  int64_t lease = 0;
  EXPECT_EQ(client_->GrantLease(absl::Milliseconds(500), &lease).code(),
            StatusCode::kInvalidArgument);
}

TEST_F(EtcdClientTest, WatchSeesPutsAndDeletesInOrder) {
  WatchLog log;
  std::unique_ptr<Watch> watch = client_->WatchPrefix("/w/", 0, log.OnEvents(), log.OnEnd());
  ASSERT_TRUE(client_->Put("/w/a", "1").ok());
  ASSERT_TRUE(client_->Put("/outside", "x").ok());
  ASSERT_TRUE(client_->Put("/w/b", "2").ok());
  ASSERT_TRUE(client_->Put("/w/a", "3").ok());
  ASSERT_TRUE(client_->Delete("/w/b").ok());
  std::optional<KeyValue> a = MustGet("/w/a");
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(client_->DeletePrefix("/w/").ok());  // one batch: a's delete

  ASSERT_TRUE(log.WaitForEvents(5)) << log.events().size() << " events";
  const std::vector<WatchEvent> events = log.events();
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[0].kv.key, "/w/a");
  EXPECT_EQ(events[0].kv.value, "1");
  EXPECT_EQ(events[0].kv.version, 1);
  EXPECT_EQ(events[1].kv.key, "/w/b");
  EXPECT_EQ(events[2].kv.value, "3");
  EXPECT_EQ(events[2].kv.mod_revision, a->mod_revision);
  EXPECT_EQ(events[3].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[3].kv.key, "/w/b");
  EXPECT_EQ(events[4].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[4].kv.key, "/w/a");
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GT(events[i].kv.mod_revision, events[i - 1].kv.mod_revision) << "event " << i;
  }
  EXPECT_TRUE(log.ends().empty());
}

TEST_F(EtcdClientTest, WatchFromAStartRevisionReplaysHistory) {
  ASSERT_TRUE(client_->Put("/h/1", "a").ok());
  const int64_t first = MustGet("/h/1")->mod_revision;
  ASSERT_TRUE(client_->Put("/h/2", "b").ok());
  ASSERT_TRUE(client_->Delete("/h/1").ok());

  WatchLog log;
  std::unique_ptr<Watch> watch = client_->WatchPrefix("/h/", first, log.OnEvents(), log.OnEnd());
  ASSERT_TRUE(client_->Put("/h/3", "c").ok());
  ASSERT_TRUE(log.WaitForEvents(4));
  const std::vector<WatchEvent> events = log.events();
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].kv.key, "/h/1");
  EXPECT_EQ(events[0].kv.mod_revision, first);
  EXPECT_EQ(events[1].kv.key, "/h/2");
  EXPECT_EQ(events[2].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[3].kv.key, "/h/3");
}

TEST_F(EtcdClientTest, AWatchFromACompactedRevisionEndsWithNotFound) {
  ASSERT_TRUE(client_->Put("/c/1", "a").ok());
  const int64_t first = MustGet("/c/1")->mod_revision;
  ASSERT_TRUE(client_->Put("/c/1", "b").ok());
  ASSERT_TRUE(client_->Put("/c/1", "c").ok());
  std::string error;
  ASSERT_TRUE(etcd_->Compact(first + 2, &error)) << error;

  WatchLog log;
  std::unique_ptr<Watch> watch = client_->WatchPrefix("/c/", first, log.OnEvents(), log.OnEnd());
  ASSERT_TRUE(log.WaitForEnd());
  EXPECT_EQ(log.ends()[0].code(), StatusCode::kNotFound) << log.ends()[0].ToString();
  EXPECT_TRUE(log.events().empty());
}

TEST_F(EtcdClientTest, DestroyingAnIdleWatchReturnsPromptly) {
  WatchLog log;
  std::unique_ptr<Watch> watch = client_->WatchPrefix("/idle/", 0, log.OnEvents(), log.OnEnd());
  const auto start = std::chrono::steady_clock::now();
  watch.reset();
  // The stream's read blocks for as long as nothing changes (a day); the
  // destructor must interrupt it rather than wait.
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(1));
  EXPECT_TRUE(log.ends().empty());

  // A watch whose stream still waits for its first answer (a peer that
  // accepts and never answers; WatchPrefix gives up waiting after
  // request_timeout) is destroyed as promptly.
  int port = -1;
  const int listener = test::ListenOnLoopback(&port);
  ASSERT_GE(listener, 0);
  std::unique_ptr<EtcdClient> silent =
      MakeClient({"http://127.0.0.1:" + std::to_string(port)}, absl::Milliseconds(200));
  ASSERT_NE(silent, nullptr);
  std::unique_ptr<Watch> pending = silent->WatchPrefix("/idle/", 0, log.OnEvents(), log.OnEnd());
  const auto pending_start = std::chrono::steady_clock::now();
  pending.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - pending_start, seconds(1));
  close(listener);
  EXPECT_TRUE(log.ends().empty());
  EXPECT_TRUE(log.events().empty());
}

TEST_F(EtcdClientTest, KillingEtcdEndsWatchesAndFailsRequestsUntilItIsBack) {
  ASSERT_TRUE(client_->Put("/k", "before").ok());
  WatchLog log;
  std::unique_ptr<Watch> watch = client_->WatchPrefix("/k", 0, log.OnEvents(), log.OnEnd());

  etcd_->Kill();
  ASSERT_TRUE(log.WaitForEnd());
  EXPECT_EQ(log.ends()[0].code(), StatusCode::kDisconnected) << log.ends()[0].ToString();

  std::optional<KeyValue> kv;
  Status get = client_->Get("/k", &kv);
  EXPECT_EQ(get.code(), StatusCode::kDisconnected);
  EXPECT_NE(get.message().find(etcd_->endpoint()), std::string::npos) << get.message();
  Status put = client_->Put("/k", "during");
  EXPECT_EQ(put.code(), StatusCode::kDisconnected) << put.ToString();

  std::string error;
  ASSERT_TRUE(etcd_->Restart(&error)) << error;
  ASSERT_TRUE(client_->Get("/k", &kv).ok());
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, "before");  // the data directory survived

  // A new watch, as a caller does after an end, sees changes again.
  WatchLog after;
  std::unique_ptr<Watch> rewatch =
      client_->WatchPrefix("/k", kv->mod_revision + 1, after.OnEvents(), after.OnEnd());
  ASSERT_TRUE(client_->Put("/k", "after").ok());
  ASSERT_TRUE(after.WaitForEvents(1));
  EXPECT_EQ(after.events()[0].kv.value, "after");
  EXPECT_EQ(log.ends().size(), 1u);  // on_end ran once
}

TEST_F(EtcdClientTest, AStoppedEtcdComesBackWithItsData) {
  ASSERT_TRUE(client_->Put("/persist", "yes").ok());
  etcd_->Stop();
  std::optional<KeyValue> kv;
  EXPECT_EQ(client_->Get("/persist", &kv).code(), StatusCode::kDisconnected);
  std::string error;
  ASSERT_TRUE(etcd_->Restart(&error)) << error;
  ASSERT_TRUE(client_->Get("/persist", &kv).ok());
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, "yes");
}

TEST_F(EtcdClientTest, RequestsGoToTheSecondEndpointWhenTheFirstIsClosed) {
  const std::string closed = ClosedEndpoint();
  std::unique_ptr<EtcdClient> client = MakeClient({closed, etcd_->endpoint()});
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->Describe(), closed + "," + etcd_->endpoint());
  ASSERT_TRUE(client->Put("/two", "endpoints").ok());
  std::optional<KeyValue> kv;
  ASSERT_TRUE(client->Get("/two", &kv).ok());
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, "endpoints");

  WatchLog log;
  std::unique_ptr<Watch> watch = client->WatchPrefix("/two", 0, log.OnEvents(), log.OnEnd());
  ASSERT_TRUE(client->Delete("/two").ok());
  ASSERT_TRUE(log.WaitForEvents(1));
  EXPECT_EQ(log.events()[0].type, WatchEvent::Type::kDelete);
}

TEST_F(EtcdClientTest, ConcurrentRequestsFromManyThreads) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const std::string key = "/mt/" + std::to_string(t) + "/" + std::to_string(i);
        std::optional<KeyValue> kv;
        if (!client_->Put(key, key).ok() || !client_->Get(key, &kv).ok() || !kv.has_value() ||
            kv->value != key) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  std::vector<KeyValue> kvs;
  ASSERT_TRUE(client_->GetPrefix("/mt/", &kvs).ok());
  EXPECT_EQ(kvs.size(), 100u);
}

// Without an etcd of their own.

TEST(EtcdClientNoServerTest, NoEndpointAnsweringIsDisconnectedNamingThemAll) {
  const std::string first = ClosedEndpoint();
  const std::string second = ClosedEndpoint();
  std::unique_ptr<EtcdClient> client = MakeClient({first, second});
  ASSERT_NE(client, nullptr);
  std::optional<KeyValue> kv;
  Status status = client->Get("/x", &kv);
  EXPECT_EQ(status.code(), StatusCode::kDisconnected);
  EXPECT_NE(status.message().find(first), std::string::npos) << status.message();
  EXPECT_NE(status.message().find(second), std::string::npos) << status.message();

  WatchLog log;
  std::unique_ptr<Watch> watch = client->WatchPrefix("/x", 0, log.OnEvents(), log.OnEnd());
  ASSERT_TRUE(log.WaitForEnd());
  EXPECT_EQ(log.ends()[0].code(), StatusCode::kDisconnected) << log.ends()[0].ToString();
}

TEST(EtcdClientNoServerTest, APeerThatNeverAnswersIsBoundedByTheRequestTimeout) {
  int port = -1;
  const int listener = test::ListenOnLoopback(&port);  // accepts (backlog), never answers
  ASSERT_GE(listener, 0);
  std::unique_ptr<EtcdClient> client =
      MakeClient({"http://127.0.0.1:" + std::to_string(port)}, absl::Milliseconds(300));
  ASSERT_NE(client, nullptr);
  std::optional<KeyValue> kv;
  Status get = client->Get("/x", &kv);
  EXPECT_EQ(get.code(), StatusCode::kDisconnected) << get.ToString();
  // A write that was sent but not answered may have taken effect: said so.
  Status put = client->Put("/x", "y");
  EXPECT_EQ(put.code(), StatusCode::kDisconnected);
  EXPECT_NE(put.message().find("may or may not"), std::string::npos) << put.message();
  close(listener);
}

TEST(EtcdClientNoServerTest, ParseEndpoints) {
  std::vector<std::string> endpoints;
  ASSERT_TRUE(
      EtcdClient::ParseEndpoints("http://a:2379, 10.0.0.2:2380 ,[::1]:2379", &endpoints).ok());
  EXPECT_EQ(endpoints, (std::vector<std::string>{"http://a:2379", "http://10.0.0.2:2380",
                                                 "http://[::1]:2379"}));
  ASSERT_TRUE(EtcdClient::ParseEndpoints("etcd:2379", &endpoints).ok());
  EXPECT_EQ(endpoints, std::vector<std::string>{"http://etcd:2379"});

  for (const char* bad : {"", " , ", "a:1,,b:2", "https://a:2379", "ftp://a:1", "a", "http://a:0",
                          "http://a:99999", "http://:2379", "http://a:2379/v3"}) {
    Status status = EtcdClient::ParseEndpoints(bad, &endpoints);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << "\"" << bad << "\"";
  }
  Status https = EtcdClient::ParseEndpoints("http://a:1,https://b:2", &endpoints);
  EXPECT_NE(https.message().find("https://b:2"), std::string::npos) << https.message();
  EXPECT_NE(https.message().find("TLS"), std::string::npos) << https.message();
}

TEST(EtcdClientNoServerTest, CreateChecksItsOptions) {
  std::unique_ptr<EtcdClient> client;
  EXPECT_EQ(EtcdClient::Create({{}, absl::Seconds(1)}, &client).code(),
            StatusCode::kInvalidArgument);
  Status bad = EtcdClient::Create({{"http://a:1", "b:2"}, absl::Seconds(1)}, &client);
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("\"b:2\""), std::string::npos) << bad.message();
  EXPECT_EQ(EtcdClient::Create({{"http://a:1"}, absl::ZeroDuration()}, &client).code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      EtcdClient::Create({{"http://a:1", "http://[::1]:2"}, absl::Seconds(1)}, &client).ok());
  EXPECT_EQ(client->Describe(), "http://a:1,http://[::1]:2");
}

TEST(EtcdClientNoServerTest, PrefixEnd) {
  EXPECT_EQ(PrefixEnd("/pool/"), "/pool0");
  EXPECT_EQ(PrefixEnd("a"), "b");
  EXPECT_EQ(PrefixEnd("a\xff"), "b");
  EXPECT_EQ(PrefixEnd("\xff\xff"), std::string(1, '\0'));
  EXPECT_EQ(PrefixEnd(""), std::string(1, '\0'));
}

}  // namespace
}  // namespace ferry::etcd
