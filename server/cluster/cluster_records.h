// What a cluster of ferryds keeps in etcd, and how it is laid out.
//
// Keys, under the cluster's prefix P (default "/ferry/"):
//   P servers/NAME                 ServerRecord, bound to the server's lease
//   P gpus/NAME/INDEX              GpuState: the pool the owner binds that GPU
//                                  to and its free slices; bound to the
//                                  server's lease (written by the owner only)
//   P pool-config                  the cluster's pool config: TOML text as
//                                  `ferryctl apply` stored it (pools,
//                                  schedules; pool/config.h
//                                  ParseClusterConfig), no lease
//   P queue/POOL/SERVER-SESSION    WaiterRecord: a borrow waiting for POOL,
//                                  bound to its waiter's lease; oldest
//                                  (create revision) first
//   P claims/NAME/INDEX/N/SLICE    ClaimRecord: slice SLICE of GPU NAME:INDEX
//                                  split N ways is held; bound to the holding
//                                  session's own lease
// Values are JSON objects. A key exists exactly as long as its lease: a
// server that dies leaves the cluster within its TTL, and a session's
// claims go with its lease (revoked at the session's end, or expired when
// its server dies).
//
// Thread-safety: plain values and free functions.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "server/etcd/etcd_client.h"

namespace ferry::cluster {

// A GPU as its server describes it when it joins.
struct GpuRecord {
  int index = 0;     // the server's [[gpu]] index: the GPU is NAME:INDEX
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
  std::string name;
  uint64_t memory = 0;  // bytes
  int sms = 0;          // streaming multiprocessors
};

struct ServerRecord {
  std::string name;
  std::string advertise;  // HOST:PORT where clients reach this ferryd
  std::map<std::string, std::string> labels;
  std::string backend;  // "cuda" or "host"
  uint32_t pid = 0;
  int64_t started_unix_ms = 0;
  std::vector<GpuRecord> gpus;
};

// A GPU's binding as its owner publishes it, for placement elsewhere and
// for status.
struct GpuState {
  std::string server;
  int index = 0;
  std::string pool;
  int slices_per_gpu = 1;
  int free_slices = 0;
  bool drained = false;
  std::string binding;  // "default", "schedule: WINDOW", "manual until ..."
  int64_t next_change_unix_ms = 0;  // 0: none scheduled
  std::string next_pool;
};

struct ClaimRecord {
  std::string server;
  int gpu = 0;
  int slices_per_gpu = 1;
  int slice = 0;
  std::string pool;
  uint64_t session = 0;  // the holding server's session id
  std::string host;      // the client's
  uint32_t pid = 0;
  std::string program;
  int64_t since_unix_ms = 0;
  int64_t lease = 0;  // etcd lease (filled in when read)
};

// A borrow waiting in the cluster's queue (P queue/POOL/SERVER-SESSION,
// bound to the waiter's lease; its create revision is its place).
struct WaiterRecord {
  std::string server;  // the entry server that queued it
  uint64_t session = 0;
  std::string pool;
  int gpus = 1;
  std::string host;
  uint32_t pid = 0;
  std::string program;
  int64_t since_unix_ms = 0;
  int64_t deadline_unix_ms = 0;
};

struct QueueEntry {
  std::string ticket;  // its key
  int64_t create_revision = 0;
  WaiterRecord waiter;
};

struct ClusterSnapshot {
  int64_t revision = 0;
  std::vector<ServerRecord> servers;  // by name
  std::vector<GpuState> gpus;         // by server, index
  std::vector<ClaimRecord> claims;    // by key
  std::vector<QueueEntry> queue;      // every pool's, oldest first
};

// Key names. `prefix` ends with '/'.
std::string ServerKey(const std::string& prefix, const std::string& server);
std::string GpuStateKey(const std::string& prefix, const std::string& server, int gpu);
std::string ClaimKey(const std::string& prefix, const std::string& server, int gpu,
                     int slices_per_gpu, int slice);
std::string PoolConfigKey(const std::string& prefix);
std::string QueuePrefix(const std::string& prefix, const std::string& pool);
// Every claim on a GPU of `server` (a prefix).
std::string ServerClaimsPrefix(const std::string& prefix, const std::string& server);

// A server name: 1 to 63 of [A-Za-z0-9._-], not starting with '.' or '-'
// (it is a key segment and goes in "NAME:INDEX"). InvalidArgument otherwise.
Status CheckServerName(const std::string& name);
// A prefix as given (e.g. "/ferry"), made to end with '/'; InvalidArgument
// when empty.
Status NormalizePrefix(const std::string& given, std::string* prefix);

std::string ToJson(const ServerRecord& record);
std::string ToJson(const GpuState& state);
std::string ToJson(const ClaimRecord& claim);
std::string ToJson(const WaiterRecord& waiter);
Status FromJson(const std::string& json, WaiterRecord* out);
// Malformed when `json` is not such a record.
Status FromJson(const std::string& json, ServerRecord* out);
Status FromJson(const std::string& json, GpuState* out);
Status FromJson(const std::string& json, ClaimRecord* out);

// A queue entry as etcd holds it (its key is the ticket, its create
// revision its place); Malformed when the value is not a waiter.
Status QueueEntryFrom(const etcd::KeyValue& kv, QueueEntry* out);
void SortOldestFirst(std::vector<QueueEntry>* entries);

// Reads the whole cluster in one consistent read (without `with_claims`:
// servers and GPU states only). Records that do not parse are skipped with
// a warning in the log (a newer ferryd may write more).
Status ReadCluster(etcd::EtcdClient& store, const std::string& prefix, ClusterSnapshot* out,
                   bool with_claims = true);

// A device UUID as NVIDIA prints it.
std::string FormatGpuUuid(const std::array<uint8_t, 16>& bytes);

}  // namespace ferry::cluster
