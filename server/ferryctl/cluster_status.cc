#include "cluster_status.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <ctime>
#include <memory>

#include "common/units.h"
#include "server/cluster/cluster_records.h"
#include "server/etcd/etcd_client.h"

namespace ferry::ferryctl {
namespace {

using Json = nlohmann::ordered_json;

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
  return {{"etcd", endpoints},
          {"revision", snapshot.revision},
          {"servers", std::move(servers)},
          {"claims_of_servers_gone", std::move(orphans)}};
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
}

}  // namespace

int PrintClusterStatus(const std::string& endpoints, const std::string& prefix_text,
                       const std::string& format) {
  etcd::EtcdClient::Options options;
  std::unique_ptr<etcd::EtcdClient> store;
  std::string prefix;
  Status status = etcd::EtcdClient::ParseEndpoints(endpoints, &options.endpoints);
  if (status.ok()) status = cluster::NormalizePrefix(prefix_text, &prefix);
  if (status.ok()) status = etcd::EtcdClient::Create(options, &store);
  cluster::ClusterSnapshot snapshot;
  if (status.ok()) status = cluster::ReadCluster(*store, prefix, &snapshot);
  if (!status.ok()) {
    std::fprintf(stderr, "ferryctl: cannot read the cluster from etcd %s: %s\n", endpoints.c_str(),
                 status.message().c_str());
    return 1;
  }
  if (format == "json") {
    std::printf("%s\n", ToJson(snapshot, store->Describe()).dump().c_str());
  } else {
    PrintTable(snapshot, store->Describe());
  }
  return 0;
}

}  // namespace ferry::ferryctl
