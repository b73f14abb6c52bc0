#include "cluster_commands.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <ctime>
#include <map>
#include <memory>

#include "common/units.h"
#include "server/cluster/cluster_records.h"
#include "server/etcd/etcd_client.h"
#include "server/pool/config.h"

namespace ferry::ferryctl {
namespace {

using Json = nlohmann::ordered_json;

// Bytes that are not UTF-8 (a program's name) print as U+FFFD instead of
// throwing.
std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

const cluster::GpuState* FindState(const cluster::ClusterSnapshot& snapshot,
                                   const std::string& server, int index) {
  for (const cluster::GpuState& state : snapshot.gpus) {
    if (state.server == server && state.index == index) return &state;
  }
  return nullptr;
}

Json ToJson(const cluster::ClusterSnapshot& snapshot, const std::string& endpoints) {
  Json servers = Json::array();
  for (const cluster::ServerRecord& server : snapshot.servers) {
    Json gpus = Json::array();
    for (const cluster::GpuRecord& gpu : server.gpus) {
      Json holders = Json::array();
      for (const cluster::ClaimRecord& c : snapshot.claims) {
        if (c.server != server.name || c.gpu != gpu.index) continue;
        holders.push_back({{"slice", c.slice},
                           {"slices_per_gpu", c.slices_per_gpu},
                           {"pool", c.pool},
                           {"session", c.session},
                           {"host", c.host},
                           {"pid", c.pid},
                           {"program", c.program},
                           {"since_unix_ms", c.since_unix_ms}});
      }
      Json entry = {{"gpu", server.name + ":" + std::to_string(gpu.index)},
                    {"index", gpu.index},
                    {"uuid", gpu.uuid},
                    {"name", gpu.name},
                    {"memory", gpu.memory},
                    {"sms", gpu.sms}};
      if (const cluster::GpuState* state = FindState(snapshot, server.name, gpu.index)) {
        entry["pool"] = state->pool;
        entry["binding"] = state->binding;
        entry["slices_per_gpu"] = state->slices_per_gpu;
        entry["free_slices"] = state->free_slices;
        entry["drained"] = state->drained;
        entry["next_change_unix_ms"] = state->next_change_unix_ms;
        entry["next_pool"] = state->next_pool;
      }
      entry["holders"] = std::move(holders);
      gpus.push_back(std::move(entry));
    }
    servers.push_back({{"name", server.name},
                       {"advertise", server.advertise},
                       {"labels", server.labels},
                       {"backend", server.backend},
                       {"pid", server.pid},
                       {"started_unix_ms", server.started_unix_ms},
                       {"live", true},
                       {"gpus", std::move(gpus)}});
  }
  // Claims whose server is gone (a dead server's claims outlive it by at
  // most their lease's TTL).
  Json orphans = Json::array();
  for (const cluster::ClaimRecord& c : snapshot.claims) {
    bool known = false;
    for (const cluster::ServerRecord& s : snapshot.servers) known = known || s.name == c.server;
    if (!known) {
      orphans.push_back({{"gpu", c.server + ":" + std::to_string(c.gpu)},
                         {"slice", c.slice},
                         {"slices_per_gpu", c.slices_per_gpu},
                         {"session", c.session},
                         {"pid", c.pid},
                         {"host", c.host}});
    }
  }
  Json queue = Json::array();
  std::map<std::string, int> positions;  // per pool
  for (const cluster::QueueEntry& e : snapshot.queue) {
    const cluster::WaiterRecord& w = e.waiter;
    queue.push_back({{"pool", w.pool},
                     {"position", ++positions[w.pool]},
                     {"server", w.server},
                     {"session", w.session},
                     {"gpus", w.gpus},
                     {"host", w.host},
                     {"pid", w.pid},
                     {"program", w.program},
                     {"since_unix_ms", w.since_unix_ms},
                     {"deadline_unix_ms", w.deadline_unix_ms}});
  }
  return {{"etcd", endpoints},
          {"revision", snapshot.revision},
          {"servers", std::move(servers)},
          {"queue", std::move(queue)},
          {"claims_of_servers_gone", std::move(orphans)}};
}

void PrintQueue(const cluster::ClusterSnapshot& snapshot) {
  std::printf("queue: %zu waiting\n", snapshot.queue.size());
  std::map<std::string, int> positions;
  for (const cluster::QueueEntry& e : snapshot.queue) {
    const cluster::WaiterRecord& w = e.waiter;
    const std::string who = w.program + "@" + w.host;
    std::printf("  #%-3d pool %-10s %d GPU(s)  via %-12s session %-5llu %-24s pid %-7u since %s  "
                "until %s\n",
                ++positions[w.pool], w.pool.c_str(), w.gpus, w.server.c_str(),
                static_cast<unsigned long long>(w.session), who.c_str(), w.pid,
                FormatUnixMillisUtc(w.since_unix_ms).c_str(),
                FormatUnixMillisUtc(w.deadline_unix_ms).c_str());
  }
}

void PrintTable(const cluster::ClusterSnapshot& snapshot, const std::string& endpoints) {
  std::printf("cluster in etcd %s (revision %lld): %zu server(s)\n", endpoints.c_str(),
              static_cast<long long>(snapshot.revision), snapshot.servers.size());
  std::printf("%-16s %-22s %-7s %-8s %-24s %s\n", "SERVER", "ADVERTISE", "BACKEND", "PID", "SINCE",
              "LABELS");
  for (const cluster::ServerRecord& s : snapshot.servers) {
    std::string labels;
    for (const auto& [key, value] : s.labels) labels += (labels.empty() ? "" : ",") + key + "=" + value;
    std::printf("%-16s %-22s %-7s %-8u %-24s %s\n", s.name.c_str(), s.advertise.c_str(),
                s.backend.c_str(), s.pid, FormatUnixMillisUtc(s.started_unix_ms).c_str(),
                labels.empty() ? "-" : labels.c_str());
  }
  std::printf("\n%-20s %-10s %-28s %6s %5s %10s  %s\n", "GPU", "POOL", "BINDING", "SLICES",
              "FREE", "MEMORY", "NEXT CHANGE");
  for (const cluster::ServerRecord& s : snapshot.servers) {
    for (const cluster::GpuRecord& gpu : s.gpus) {
      const std::string name = s.name + ":" + std::to_string(gpu.index);
      const cluster::GpuState* state = FindState(snapshot, s.name, gpu.index);
      if (state == nullptr) {
        std::printf("%-20s (no pool state published)\n", name.c_str());
        continue;
      }
      std::string next = "-";
      if (state->next_change_unix_ms != 0) {
        next = FormatUnixMillisUtc(state->next_change_unix_ms) + " -> " + state->next_pool;
      }
      std::printf("%-20s %-10s %-28s %6d %5d %10s  %s%s\n", name.c_str(), state->pool.c_str(),
                  state->binding.c_str(), state->slices_per_gpu, state->free_slices,
                  FormatByteSize(gpu.memory).c_str(), next.c_str(),
                  state->drained ? "  [DRAINED]" : "");
      for (const cluster::ClaimRecord& c : snapshot.claims) {
        if (c.server != s.name || c.gpu != gpu.index) continue;
        const std::string slice =
            std::to_string(c.slice + 1) + "/" + std::to_string(c.slices_per_gpu);
        const std::string who = c.program + "@" + c.host;
        std::printf("     slice %-5s session %-5llu %-8s %-24s pid %-7u since %s\n", slice.c_str(),
                    static_cast<unsigned long long>(c.session), c.pool.c_str(), who.c_str(), c.pid,
                    FormatUnixMillisUtc(c.since_unix_ms).c_str());
      }
    }
  }
  PrintQueue(snapshot);
}

}  // namespace

// The store at `endpoints` and the prefix (a prefix made to end in '/').
Status OpenStore(const std::string& endpoints, const std::string& prefix_text,
                 std::unique_ptr<etcd::EtcdClient>* store, std::string* prefix) {
  etcd::EtcdClient::Options options;
  FERRY_RETURN_IF_ERROR(etcd::EtcdClient::ParseEndpoints(endpoints, &options.endpoints));
  FERRY_RETURN_IF_ERROR(cluster::NormalizePrefix(prefix_text, prefix));
  return etcd::EtcdClient::Create(options, store);
}

// OpenStore, with a message on stderr when it fails.
bool OpenStoreOrSay(const std::string& endpoints, const std::string& prefix_text,
                    std::unique_ptr<etcd::EtcdClient>* store, std::string* prefix) {
  Status status = OpenStore(endpoints, prefix_text, store, prefix);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: --etcd %s: %s\n", endpoints.c_str(), status.message().c_str());
  }
  return status.ok();
}

int PrintClusterStatus(const std::string& endpoints, const std::string& prefix_text,
                       const std::string& format) {
  std::unique_ptr<etcd::EtcdClient> store;
  std::string prefix;
  if (!OpenStoreOrSay(endpoints, prefix_text, &store, &prefix)) return 2;
  cluster::ClusterSnapshot snapshot;
  Status status = cluster::ReadCluster(*store, prefix, &snapshot);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: cannot read the cluster from etcd %s: %s\n", endpoints.c_str(),
                 status.message().c_str());
    return 1;
  }
  if (format == "json") {
    std::printf("%s\n", Dump(ToJson(snapshot, store->Describe())).c_str());
  } else {
    PrintTable(snapshot, store->Describe());
  }
  return 0;
}

bool ClusterJson(const std::string& endpoints, const std::string& prefix_text, std::string* json,
                 std::string* error) {
  std::unique_ptr<etcd::EtcdClient> store;
  std::string prefix;
  Status status = OpenStore(endpoints, prefix_text, &store, &prefix);
  cluster::ClusterSnapshot snapshot;
  if (status.ok()) status = cluster::ReadCluster(*store, prefix, &snapshot);
  if (!status.ok()) {
    *error = status.message();
    return false;
  }
  *json = Dump(ToJson(snapshot, store->Describe()));
  return true;
}

int ApplyClusterConfig(const std::string& endpoints, const std::string& prefix_text,
                       const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "ferryctl: cannot read %s\n", file.c_str());
    return 1;
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  pool::Config config;
  Status status = pool::ParseClusterConfig(text, file, &config);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: %s\nnothing stored\n", status.message().c_str());
    return 1;
  }
  std::unique_ptr<etcd::EtcdClient> store;
  std::string prefix;
  if (!OpenStoreOrSay(endpoints, prefix_text, &store, &prefix)) return 2;
  cluster::ClusterSnapshot snapshot;
  status = cluster::ReadCluster(*store, prefix, &snapshot);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: cannot read the cluster from etcd %s: %s\nnothing stored\n",
                 endpoints.c_str(), status.message().c_str());
    return 1;
  }
  // A GPU named on a server that is in the cluster now must be one of its
  // GPUs; a server not in it now is taken on trust (it may join later).
  std::set<std::string> absent;
  for (const pool::ScheduleConfig& schedule : config.schedules) {
    for (const std::string& name : schedule.gpu_names) {
      const size_t colon = name.rfind(':');
      const std::string server = name.substr(0, colon);
      const std::string index = name.substr(colon + 1);
      auto it = std::find_if(snapshot.servers.begin(), snapshot.servers.end(),
                             [&](const cluster::ServerRecord& s) { return s.name == server; });
      if (it == snapshot.servers.end()) {
        absent.insert(server);
        continue;
      }
      if (index == "*") continue;
      const bool has = std::any_of(it->gpus.begin(), it->gpus.end(), [&](const cluster::GpuRecord& g) {
        return std::to_string(g.index) == index;
      });
      if (!has) {
        std::string indices;
        for (const cluster::GpuRecord& g : it->gpus) {
          indices += (indices.empty() ? "" : ", ") + std::to_string(g.index);
        }
        std::fprintf(stderr,
                     "ferryctl: %s:%d: schedule.gpus: server %s has no GPU %s (its GPUs: %s)\n"
                     "nothing stored\n",
                     file.c_str(), schedule.line, server.c_str(), index.c_str(), indices.c_str());
        return 1;
      }
    }
  }
  for (const std::string& server : absent) {
    std::fprintf(stderr,
                 "ferryctl: warning: server %s is not in the cluster now; its schedules apply "
                 "when it joins\n",
                 server.c_str());
  }
  status = store->Put(cluster::PoolConfigKey(prefix), text);
  std::optional<etcd::KeyValue> stored;
  if (status.ok()) status = store->Get(cluster::PoolConfigKey(prefix), &stored);
  if (!status.ok() || !stored.has_value()) {
    std::fprintf(stderr, "ferryctl: cannot store the config in etcd %s: %s\n", endpoints.c_str(),
                 status.ok() ? "it is not there after the write" : status.message().c_str());
    return 1;
  }
  std::printf("stored %s as the cluster's pool config (etcd revision %lld): %zu pool(s), %zu "
              "schedule(s); every ferryd of the cluster applies it now\n",
              file.c_str(), static_cast<long long>(stored->mod_revision), config.pools.size(),
              config.schedules.size());
  return 0;
}

int ResolveClusterGpu(const std::string& endpoints, const std::string& prefix_text,
                      const std::string& gpu, std::string* address, uint32_t* index) {
  const size_t colon = gpu.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == gpu.size() ||
      gpu.size() - colon - 1 > 4 ||
      gpu.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    std::fprintf(stderr, "ferryctl: GPU '%s' is not SERVER:INDEX\n", gpu.c_str());
    return 2;
  }
  const std::string server = gpu.substr(0, colon);
  std::unique_ptr<etcd::EtcdClient> store;
  std::string prefix;
  if (!OpenStoreOrSay(endpoints, prefix_text, &store, &prefix)) return 2;
  std::optional<etcd::KeyValue> kv;
  Status status = store->Get(cluster::ServerKey(prefix, server), &kv);
  cluster::ServerRecord record;
  if (status.ok() && kv.has_value()) status = cluster::FromJson(kv->value, &record);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: cannot read server %s from etcd %s: %s\n", server.c_str(),
                 endpoints.c_str(), status.message().c_str());
    return 1;
  }
  if (!kv.has_value()) {
    std::fprintf(stderr, "ferryctl: no server %s in the cluster (ferryctl status --etcd %s)\n",
                 server.c_str(), endpoints.c_str());
    return 1;
  }
  *address = record.advertise;
  *index = static_cast<uint32_t>(std::stoul(gpu.substr(colon + 1)));
  return 0;
}

}  // namespace ferry::ferryctl
