// The JSON of etcd's v3 gateway: request bodies built and answers parsed,
// without any I/O (EtcdClient sends them; tests check them alone).
//
// The gateway speaks protobuf's JSON mapping: keys and values are base64
// (standard alphabet, padded), int64 fields are JSON strings, and a field at
// its zero value is left out (an absent count is 0, an absent flag false).
// Parsers accept int64 fields as strings or numbers, and treat anything else
// that etcd would not send (not JSON, a wrong type, bad base64) as Malformed.
//
// Thread-safety: free functions without state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "server/etcd/etcd_client.h"

namespace ferry::etcd::gateway {

// etcd's [key, range_end) for every key starting with `prefix`. An empty
// prefix is every key: etcd spells that key "\0", range_end "\0".
struct KeyRange {
  std::string key;
  std::string range_end;  // empty: `key` alone
};
KeyRange PrefixRange(const std::string& prefix);
KeyRange SingleKey(const std::string& key);

// Request bodies, one per gateway path.
std::string RangeBody(const KeyRange& range);                                          // kv/range
std::string PutBody(const std::string& key, const std::string& value, int64_t lease);  // kv/put
std::string DeleteRangeBody(const KeyRange& range);  // kv/deleterange
std::string TxnBody(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
                    const std::vector<TxnOp>& failure);  // kv/txn
std::string LeaseGrantBody(int64_t ttl_seconds);         // lease/grant
std::string LeaseIdBody(int64_t id);                     // lease/keepalive, lease/revoke
std::string WatchCreateBody(const KeyRange& range, int64_t start_revision);  // watch

// Answers of status 200. The streamed ones (keep-alive, watch) may be an
// error object instead ({"error": {"grpc_code": N, "message": ...}}): that
// gives NotFound for code 5, Disconnected for code 14, else Internal.
Status ParseRange(std::string_view body, std::vector<KeyValue>* kvs, int64_t* revision);
Status ParsePut(std::string_view body, int64_t* revision);
Status ParseDeleteRange(std::string_view body, int64_t* deleted);
// `success`, `failure`: the request's branches. The answer's "succeeded"
// tells which ran; it must hold one range answer per kRange op of that one.
Status ParseTxn(std::string_view body, const std::vector<TxnOp>& success,
                const std::vector<TxnOp>& failure, TxnResult* result);
Status ParseLeaseGrant(std::string_view body, int64_t* id, int64_t* ttl_seconds);
// `*ttl_seconds` is 0 (or negative) when the lease is gone: etcd 3.4 then
// answers 200 with the TTL left out.
Status ParseKeepAlive(std::string_view body, int64_t* ttl_seconds);

// An answer of status >= 400: {"error": "...", "code": <grpc code>,
// "message": "..."}. grpc code 5 (NOT_FOUND, e.g. "requested lease not
// found") is NotFound; anything else Internal, with etcd's message.
// `*grpc_code` gets the code (-1 when the body is not etcd's error JSON,
// which is Malformed).
Status ParseError(int http_status, std::string_view body, int* grpc_code);
inline constexpr int kGrpcNotFound = 5;
inline constexpr int kGrpcUnavailable = 14;  // e.g. "etcdserver: no leader"

// One object of a watch stream.
struct WatchMessage {
  bool created = false;          // the watch now exists (the stream's first object)
  bool canceled = false;         // etcd ended the watch (see cancel_reason)
  int64_t compact_revision = 0;  // > 0: the start revision was compacted away
  std::string cancel_reason;
  int64_t revision = 0;  // the store's revision (header), when given
  std::vector<WatchEvent> events;
};
Status ParseWatchMessage(std::string_view object, WatchMessage* message);

}  // namespace ferry::etcd::gateway
