// EtcdClient: ferry's client of etcd v3 (the cluster store of a multi-server
// pool), over etcd's JSON gateway (`POST /v3/...`, keys and values base64 in
// JSON) on plain HTTP/1.1.
//
// Why the gateway and not gRPC: the gateway is part of every etcd 3.4 server,
// speaks HTTP + JSON that Debian's cpp-httplib and nlohmann-json handle, and
// needs no code generated from etcd's .proto files (which Debian's etcd
// packages do not ship). Watches are the gateway's streamed responses (one
// JSON object per chunk).
//
// Endpoints are tried in order; a request goes to the first that answers and
// stays there until it fails. Every request is bounded by
// Options::request_timeout. A store that no endpoint answers gives
// Status::Disconnected naming the endpoints and the last error; an answer
// that is not what etcd sends gives Status::Malformed; an etcd error
// (e.g. "requested lease not found") gives Status::NotFound for an unknown
// lease and Status::Internal otherwise, with etcd's message.
//
// Thread-safety: every method is safe from any thread (each request takes a
// connection of its own from a small pool). A Watch runs its callbacks on its
// own thread.
#pragma once

#include <absl/time/time.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace ferry::etcd {

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;  // 0: not bound to a lease
};

// One condition of a transaction (etcd's Compare): the key's
// create_revision / mod_revision / version compared with `number`, or its
// value with `value`. A key that does not exist has create_revision 0.
struct Compare {
  enum class Target { kCreateRevision, kModRevision, kVersion, kValue };
  enum class Op { kEqual, kNotEqual, kGreater, kLess };
  Target target = Target::kCreateRevision;
  Op op = Op::kEqual;
  std::string key;
  int64_t number = 0;
  std::string value;

  static Compare Absent(std::string key) {  // create_revision == 0
    return Compare{Target::kCreateRevision, Op::kEqual, std::move(key), 0, {}};
  }
  static Compare ModRevisionIs(std::string key, int64_t revision) {
    return Compare{Target::kModRevision, Op::kEqual, std::move(key), revision, {}};
  }
};

// One operation of a transaction branch.
struct TxnOp {
  enum class Kind { kPut, kDelete, kRange };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;         // kPut
  int64_t lease = 0;         // kPut: bind the key to this lease
  bool prefix = false;       // kDelete / kRange: every key starting with `key`

  static TxnOp Put(std::string key, std::string value, int64_t lease = 0) {
    return TxnOp{Kind::kPut, std::move(key), std::move(value), lease, false};
  }
  static TxnOp Delete(std::string key) { return TxnOp{Kind::kDelete, std::move(key), {}, 0, false}; }
  static TxnOp Range(std::string key, bool prefix) {
    return TxnOp{Kind::kRange, std::move(key), {}, 0, prefix};
  }
};

struct TxnResult {
  bool succeeded = false;  // every Compare held: the success branch ran
  int64_t revision = 0;    // the store's revision after the transaction
  // One entry per kRange operation of the branch that ran, in order.
  std::vector<std::vector<KeyValue>> ranges;
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // kDelete: key and mod_revision only
};

// A running watch; destroying it cancels the watch and joins its thread
// (callbacks have returned when the destructor returns; a callback must not
// destroy its own Watch).
class Watch {
 public:
  virtual ~Watch() = default;
};

class EtcdClient {
 public:
  struct Options {
    // "http://host:port", tried in order. At least one.
    std::vector<std::string> endpoints;
    absl::Duration request_timeout = absl::Seconds(2);
  };

  // Checks the endpoints' form (InvalidArgument naming the bad one); does not
  // connect.
  static Status Create(Options options, std::unique_ptr<EtcdClient>* out);
  // Splits "http://a:2379,http://b:2379" into endpoints (a missing
  // "http://" is added); InvalidArgument for an empty list or an https://
  // endpoint (TLS to etcd is not supported yet).
  static Status ParseEndpoints(const std::string& list, std::vector<std::string>* endpoints);
  virtual ~EtcdClient() = default;

  // The key, or nullopt when absent. `revision`: the store's revision at the read.
  virtual Status Get(const std::string& key, std::optional<KeyValue>* out,
                     int64_t* revision = nullptr) = 0;
  // Every key starting with `prefix`, sorted by key.
  virtual Status GetPrefix(const std::string& prefix, std::vector<KeyValue>* out,
                           int64_t* revision = nullptr) = 0;
  virtual Status Put(const std::string& key, const std::string& value, int64_t lease = 0) = 0;
  // `deleted`: how many keys went (optional).
  virtual Status Delete(const std::string& key, int64_t* deleted = nullptr) = 0;
  virtual Status DeletePrefix(const std::string& prefix, int64_t* deleted = nullptr) = 0;
  virtual Status Txn(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
                     const std::vector<TxnOp>& failure, TxnResult* result) = 0;

  // A lease of `ttl` (whole seconds, at least 1); `*id` is etcd's id.
  virtual Status GrantLease(absl::Duration ttl, int64_t* id) = 0;
  // One keep-alive; `*ttl_left` is the lease's new TTL. NotFound when the
  // lease has expired or was revoked (its keys are gone).
  virtual Status KeepAliveOnce(int64_t id, absl::Duration* ttl_left = nullptr) = 0;
  // Revokes the lease (its keys are deleted). A lease already gone is OK.
  virtual Status RevokeLease(int64_t id) = 0;

  // Watches every key starting with `prefix`, from `start_revision` (0: from
  // now). `on_events` gets each batch of events in order; `on_end` is called
  // once if the watch stops by itself (the store went away, the revision was
  // compacted, ...), with why; it is not called when the Watch is destroyed.
  // The caller re-reads and watches again after an end.
  // Returns once etcd has created the watch (so "now" is no earlier than the
  // return), or it has ended, or request_timeout has passed; `on_end` may
  // run before it returns. Ends: Disconnected when no endpoint serves the
  // watch or its stream breaks, NotFound when `start_revision` was
  // compacted away.
  virtual std::unique_ptr<Watch> WatchPrefix(
      const std::string& prefix, int64_t start_revision,
      std::function<void(const std::vector<WatchEvent>&)> on_events,
      std::function<void(const Status&)> on_end) = 0;

  // "http://127.0.0.1:2379,..." for messages.
  virtual std::string Describe() const = 0;
};

// The smallest key greater than every key starting with `prefix` (etcd's
// range_end for a prefix).
std::string PrefixEnd(const std::string& prefix);

}  // namespace ferry::etcd
