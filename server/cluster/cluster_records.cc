#include "server/cluster/cluster_records.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "common/log.h"

namespace ferry::cluster {
namespace {

using Json = nlohmann::json;

// Reads `key` of `object` into `out` when present; a field of the wrong type
// throws (caught by Parse).
template <typename T>
void Field(const Json& object, const char* key, T* out) {
  auto it = object.find(key);
  if (it != object.end() && !it->is_null()) *out = it->get<T>();
}

template <typename Record, typename Fill>
Status Parse(const std::string& text, const char* what, Record* out, Fill fill) {
  try {
    const Json object = Json::parse(text);
    if (!object.is_object()) return Status::Malformed(std::string(what) + " is not a JSON object");
    Record record;
    fill(object, &record);
    *out = std::move(record);
    return Status::Ok();
  } catch (const Json::exception& e) {
    return Status::Malformed(std::string("a ") + what + " that does not parse: " + e.what());
  }
}

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

std::string ServerKey(const std::string& prefix, const std::string& server) {
  return prefix + "servers/" + server;
}

std::string GpuStateKey(const std::string& prefix, const std::string& server, int gpu) {
  return prefix + "gpus/" + server + "/" + std::to_string(gpu);
}

std::string ClaimKey(const std::string& prefix, const std::string& server, int gpu,
                     int slices_per_gpu, int slice) {
  return ServerClaimsPrefix(prefix, server) + std::to_string(gpu) + "/" +
         std::to_string(slices_per_gpu) + "/" + std::to_string(slice);
}

std::string PoolConfigKey(const std::string& prefix) { return prefix + "pool-config"; }

std::string QueuePrefix(const std::string& prefix, const std::string& pool) {
  return prefix + "queue/" + pool + "/";
}

std::string ServerClaimsPrefix(const std::string& prefix, const std::string& server) {
  return prefix + "claims/" + server + "/";
}

Status CheckServerName(const std::string& name) {
  const bool ok = !name.empty() && name.size() <= 63 && name[0] != '.' && name[0] != '-' &&
                  std::all_of(name.begin(), name.end(), [](unsigned char c) {
                    return std::isalnum(c) != 0 || c == '.' || c == '_' || c == '-';
                  });
  if (ok) return Status::Ok();
  return Status::InvalidArgument("server name '" + name +
                                 "': 1 to 63 letters, digits, '.', '_' or '-', not starting "
                                 "with '.' or '-'");
}

Status NormalizePrefix(const std::string& given, std::string* prefix) {
  if (given.empty()) return Status::InvalidArgument("the cluster's key prefix is empty");
  *prefix = given.back() == '/' ? given : given + "/";
  return Status::Ok();
}

std::string ToJson(const ServerRecord& record) {
  Json gpus = Json::array();
  for (const GpuRecord& gpu : record.gpus) {
    gpus.push_back({{"index", gpu.index},
                    {"uuid", gpu.uuid},
                    {"name", gpu.name},
                    {"memory", gpu.memory},
                    {"sms", gpu.sms}});
  }
  return Json{{"name", record.name},
              {"advertise", record.advertise},
              {"labels", record.labels},
              {"backend", record.backend},
              {"pid", record.pid},
              {"started_unix_ms", record.started_unix_ms},
              {"gpus", gpus}}
      .dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string ToJson(const GpuState& state) {
  return Json{{"server", state.server},
              {"index", state.index},
              {"pool", state.pool},
              {"slices_per_gpu", state.slices_per_gpu},
              {"free_slices", state.free_slices},
              {"drained", state.drained},
              {"binding", state.binding},
              {"next_change_unix_ms", state.next_change_unix_ms},
              {"next_pool", state.next_pool}}
      .dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string ToJson(const ClaimRecord& claim) {
  return Json{{"server", claim.server},
              {"gpu", claim.gpu},
              {"slices_per_gpu", claim.slices_per_gpu},
              {"slice", claim.slice},
              {"pool", claim.pool},
              {"session", claim.session},
              {"host", claim.host},
              {"pid", claim.pid},
              {"program", claim.program},
              {"since_unix_ms", claim.since_unix_ms}}
      .dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string ToJson(const WaiterRecord& waiter) {
  return Json{{"server", waiter.server},
              {"session", waiter.session},
              {"pool", waiter.pool},
              {"gpus", waiter.gpus},
              {"host", waiter.host},
              {"pid", waiter.pid},
              {"program", waiter.program},
              {"since_unix_ms", waiter.since_unix_ms},
              {"deadline_unix_ms", waiter.deadline_unix_ms}}
      .dump(-1, ' ', false, Json::error_handler_t::replace);
}

Status FromJson(const std::string& json, WaiterRecord* out) {
  return Parse(json, "queue entry", out, [](const Json& o, WaiterRecord* w) {
    Field(o, "server", &w->server);
    Field(o, "session", &w->session);
    Field(o, "pool", &w->pool);
    Field(o, "gpus", &w->gpus);
    Field(o, "host", &w->host);
    Field(o, "pid", &w->pid);
    Field(o, "program", &w->program);
    Field(o, "since_unix_ms", &w->since_unix_ms);
    Field(o, "deadline_unix_ms", &w->deadline_unix_ms);
  });
}

Status FromJson(const std::string& json, ServerRecord* out) {
  return Parse(json, "server record", out, [](const Json& o, ServerRecord* r) {
    Field(o, "name", &r->name);
    Field(o, "advertise", &r->advertise);
    Field(o, "labels", &r->labels);
    Field(o, "backend", &r->backend);
    Field(o, "pid", &r->pid);
    Field(o, "started_unix_ms", &r->started_unix_ms);
    if (auto it = o.find("gpus"); it != o.end()) {
      for (const Json& g : *it) {
        GpuRecord gpu;
        Field(g, "index", &gpu.index);
        Field(g, "uuid", &gpu.uuid);
        Field(g, "name", &gpu.name);
        Field(g, "memory", &gpu.memory);
        Field(g, "sms", &gpu.sms);
        r->gpus.push_back(std::move(gpu));
      }
    }
  });
}

Status FromJson(const std::string& json, GpuState* out) {
  return Parse(json, "GPU state", out, [](const Json& o, GpuState* s) {
    Field(o, "server", &s->server);
    Field(o, "index", &s->index);
    Field(o, "pool", &s->pool);
    Field(o, "slices_per_gpu", &s->slices_per_gpu);
    Field(o, "free_slices", &s->free_slices);
    Field(o, "drained", &s->drained);
    Field(o, "binding", &s->binding);
    Field(o, "next_change_unix_ms", &s->next_change_unix_ms);
    Field(o, "next_pool", &s->next_pool);
  });
}

Status FromJson(const std::string& json, ClaimRecord* out) {
  return Parse(json, "claim", out, [](const Json& o, ClaimRecord* c) {
    Field(o, "server", &c->server);
    Field(o, "gpu", &c->gpu);
    Field(o, "slices_per_gpu", &c->slices_per_gpu);
    Field(o, "slice", &c->slice);
    Field(o, "pool", &c->pool);
    Field(o, "session", &c->session);
    Field(o, "host", &c->host);
    Field(o, "pid", &c->pid);
    Field(o, "program", &c->program);
    Field(o, "since_unix_ms", &c->since_unix_ms);
  });
}

Status QueueEntryFrom(const etcd::KeyValue& kv, QueueEntry* out) {
  QueueEntry entry;
  entry.ticket = kv.key;
  entry.create_revision = kv.create_revision;
  FERRY_RETURN_IF_ERROR(FromJson(kv.value, &entry.waiter));
  *out = std::move(entry);
  return Status::Ok();
}

void SortOldestFirst(std::vector<QueueEntry>* entries) {
  std::sort(entries->begin(), entries->end(), [](const QueueEntry& a, const QueueEntry& b) {
    return a.create_revision < b.create_revision;
  });
}

Status ReadCluster(etcd::EtcdClient& store, const std::string& prefix, ClusterSnapshot* out,
                   bool with_claims) {
  std::vector<etcd::KeyValue> kvs;
  ClusterSnapshot snapshot;
  if (with_claims) {
    FERRY_RETURN_IF_ERROR(store.GetPrefix(prefix, &kvs, &snapshot.revision));
  } else {
    // Two ranges in one transaction: one consistent read without the claims.
    etcd::TxnResult result;
    FERRY_RETURN_IF_ERROR(store.Txn({},
                                    {etcd::TxnOp::Range(prefix + "servers/", true),
                                     etcd::TxnOp::Range(prefix + "gpus/", true)},
                                    {}, &result));
    snapshot.revision = result.revision;
    for (auto& range : result.ranges) {
      for (etcd::KeyValue& kv : range) kvs.push_back(std::move(kv));
    }
  }
  const std::string servers = prefix + "servers/";
  const std::string gpus = prefix + "gpus/";
  const std::string claims = prefix + "claims/";
  const std::string queue = prefix + "queue/";
  for (const etcd::KeyValue& kv : kvs) {
    Status status = Status::Ok();
    if (StartsWith(kv.key, servers)) {
      ServerRecord record;
      status = FromJson(kv.value, &record);
      if (status.ok()) snapshot.servers.push_back(std::move(record));
    } else if (StartsWith(kv.key, gpus)) {
      GpuState state;
      status = FromJson(kv.value, &state);
      if (status.ok()) snapshot.gpus.push_back(std::move(state));
    } else if (StartsWith(kv.key, claims)) {
      ClaimRecord claim;
      status = FromJson(kv.value, &claim);
      claim.lease = kv.lease;
      if (status.ok()) snapshot.claims.push_back(std::move(claim));
    } else if (StartsWith(kv.key, queue)) {
      QueueEntry entry;
      status = QueueEntryFrom(kv, &entry);
      if (status.ok()) snapshot.queue.push_back(std::move(entry));
    }
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "cluster: skipping " << kv.key << ": " << status.message();
    }
  }
  // Keys come sorted as strings; GPUs read better by number.
  std::sort(snapshot.gpus.begin(), snapshot.gpus.end(), [](const GpuState& a, const GpuState& b) {
    return std::tie(a.server, a.index) < std::tie(b.server, b.index);
  });
  std::sort(snapshot.claims.begin(), snapshot.claims.end(),
            [](const ClaimRecord& a, const ClaimRecord& b) {
              return std::tie(a.server, a.gpu, a.slices_per_gpu, a.slice) <
                     std::tie(b.server, b.gpu, b.slices_per_gpu, b.slice);
            });
  SortOldestFirst(&snapshot.queue);
  *out = std::move(snapshot);
  return Status::Ok();
}

std::string FormatGpuUuid(const std::array<uint8_t, 16>& b) {
  char text[64];
  std::snprintf(text, sizeof text,
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return text;
}

}  // namespace ferry::cluster
