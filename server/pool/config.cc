#include "server/pool/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "common/busy_poll.h"
#include "common/transport.h"
#include "common/units.h"

namespace ferry::pool {
namespace {

// What the parser says about a node's type, for messages.
std::string TypeName(const toml::node& node) {
  std::ostringstream out;
  out << node.type();
  return out.str();
}

bool ValidPoolName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// Reads one file's tables into a Config; every error names file, line, key.
class Reader {
 public:
  explicit Reader(const std::string& path, bool cluster = false)
      : path_(path.empty() ? "<config>" : path), cluster_(cluster) {}

  Status Read(const toml::table& root, Config* config) {
    // [server] first: its on_rebind and grace are the schedules' defaults.
    for (auto&& [key, node] : root) {
      const std::string name(key.str());
      if (cluster_ && (name == "auth" || name == "cluster" || name == "gpu")) {
        return Error(key.source(), name,
                     "belongs to one server's config (ferryd --config), not the cluster's: the "
                     "cluster's config has [server] default_pool/on_rebind/grace, [pool.NAME] "
                     "and [[schedule]]");
      }
      if (cluster_ && name == "server" && node.is_table()) {
        for (auto&& [server_key, value] : *node.as_table()) {
          const std::string_view k = server_key.str();
          if (k != "default_pool" && k != "on_rebind" && k != "grace") {
            return Error(server_key.source(), "server." + std::string(k),
                         "belongs to one server's config (ferryd --config), not the cluster's "
                         "([server] there has default_pool, on_rebind and grace)");
          }
        }
      }
      if (name != "server" && name != "auth" && name != "cluster" && name != "gpu" &&
          name != "pool" && name != "schedule") {
        return Error(key.source(), name,
                     "unknown key (the top level has [server], [auth], [cluster], [[gpu]], "
                     "[pool.NAME] and [[schedule]])");
      }
    }
    if (const toml::node* server = root.get("server")) {
      FERRY_RETURN_IF_ERROR(ReadServer(*server, &config->server));
    }
    if (const toml::node* auth = root.get("auth")) FERRY_RETURN_IF_ERROR(ReadAuth(*auth, config));
    if (const toml::node* cluster = root.get("cluster")) {
      FERRY_RETURN_IF_ERROR(ReadCluster(*cluster, &config->cluster));
    }
    if (const toml::node* gpus = root.get("gpu")) FERRY_RETURN_IF_ERROR(ReadGpus(*gpus, config));
    if (const toml::node* pools = root.get("pool"))
      FERRY_RETURN_IF_ERROR(ReadPools(*pools, config));
    if (const toml::node* schedules = root.get("schedule")) {
      FERRY_RETURN_IF_ERROR(ReadSchedules(*schedules, config));
    }
    return Validate(root, *config);
  }

 private:
  Status Error(const toml::source_region& where, std::string_view key, std::string_view what) {
    return Status::InvalidArgument(path_ + ":" + std::to_string(where.begin.line) + ": " +
                                   std::string(key) + ": " + std::string(what));
  }
  Status WrongType(const toml::node& node, std::string_view key, std::string_view expected) {
    return Error(node.source(), key,
                 "expected " + std::string(expected) + ", not " + TypeName(node));
  }

  Status String(const toml::node& node, std::string_view key, std::string* out) {
    if (!node.is_string()) return WrongType(node, key, "a string");
    *out = node.as_string()->get();
    return Status::Ok();
  }
  Status Strings(const toml::node& node, std::string_view key, bool allow_single,
                 std::vector<std::string>* out) {
    out->clear();
    if (allow_single && node.is_string()) {
      out->push_back(node.as_string()->get());
      return Status::Ok();
    }
    const char* expected = allow_single ? "a string or an array of strings" : "an array of strings";
    if (!node.is_array()) return WrongType(node, key, expected);
    for (const toml::node& item : *node.as_array()) {
      if (!item.is_string()) return WrongType(item, key, expected);
      out->push_back(item.as_string()->get());
    }
    return Status::Ok();
  }
  Status Integer(const toml::node& node, std::string_view key, int64_t min, int64_t max,
                 int64_t* out) {
    if (!node.is_integer()) return WrongType(node, key, "an integer");
    const int64_t value = node.as_integer()->get();
    if (value < min || value > max) {
      return Error(node.source(), key,
                   std::to_string(value) + " is out of range (" + std::to_string(min) + " to " +
                       std::to_string(max) + ")");
    }
    *out = value;
    return Status::Ok();
  }
  Status Duration(const toml::node& node, std::string_view key, absl::Duration* out) {
    std::string text;
    FERRY_RETURN_IF_ERROR(String(node, key, &text));
    std::chrono::milliseconds ms;
    if (!ParseDuration(text, &ms)) {
      return Error(node.source(), key,
                   "'" + text + "' is not a duration (e.g. \"30s\", \"15m\", \"1h30m\")");
    }
    *out = absl::FromChrono(ms);
    return Status::Ok();
  }
  // A byte count, more than 0: an integer or a string such as "8GiB".
  Status Size(const toml::node& node, std::string_view key, uint64_t* out) {
    uint64_t bytes = 0;
    if (node.is_integer() && node.as_integer()->get() > 0) {
      bytes = static_cast<uint64_t>(node.as_integer()->get());
    } else if (node.is_string()) {
      if (!ParseByteSize(node.as_string()->get(), &bytes) || bytes == 0) {
        return Error(node.source(), key,
                     "'" + node.as_string()->get() +
                         "' is not a size (e.g. \"8GiB\", \"512MiB\"; more than 0)");
      }
    } else {
      return WrongType(node, key, "a size such as \"8GiB\"");
    }
    *out = bytes;
    return Status::Ok();
  }
  Status Policy(const toml::node& node, std::string_view key, RebindPolicy* out) {
    std::string text;
    FERRY_RETURN_IF_ERROR(String(node, key, &text));
    if (text == "drain") {
      *out = RebindPolicy::kDrain;
    } else if (text == "preempt") {
      *out = RebindPolicy::kPreempt;
    } else if (text == "migrate") {
      *out = RebindPolicy::kMigrate;
    } else {
      return Error(node.source(), key,
                   "'" + text + "' is not \"drain\", \"preempt\" or \"migrate\"");
    }
    return Status::Ok();
  }
  Status Time(const toml::node& node, std::string_view key, TimeOfDay* out) {
    if (node.is_time()) {
      const toml::time t = node.as_time()->get();
      if (t.nanosecond != 0)
        return Error(node.source(), key, "fractions of a second are not allowed");
      *out = TimeOfDay{t.hour, t.minute, t.second};
      return Status::Ok();
    }
    if (node.is_string()) {
      Status status = ParseTimeOfDay(node.as_string()->get(), out);
      if (!status.ok()) return Error(node.source(), key, status.message());
      return Status::Ok();
    }
    return WrongType(node, key, "a time of day (20:00:00 or \"20:00\")");
  }
  const toml::table* Table(const toml::node& node) { return node.as_table(); }

  Status ReadServer(const toml::node& node, ServerConfig* server) {
    if (!node.is_table()) return WrongType(node, "server", "a table ([server])");
    for (auto&& [key_node, value] : *node.as_table()) {
      const std::string key = "server." + std::string(key_node.str());
      const std::string_view name = key_node.str();
      if (name == "listen") {
        std::vector<std::string> listen;
        FERRY_RETURN_IF_ERROR(Strings(value, key, true, &listen));
        if (listen.empty()) return Error(value.source(), key, "needs at least one HOST:PORT");
        server->listen = listen;
      } else if (name == "backend") {
        std::string backend;
        FERRY_RETURN_IF_ERROR(String(value, key, &backend));
        if (backend != "cuda" && backend != "host" && backend != "auto") {
          return Error(value.source(), key,
                       "'" + backend + "' is not \"cuda\", \"host\" or \"auto\"");
        }
        server->backend = backend;
      } else if (name == "default_pool") {
        FERRY_RETURN_IF_ERROR(String(value, key, &server->default_pool));
      } else if (name == "cuda_driver") {
        std::string path;
        FERRY_RETURN_IF_ERROR(String(value, key, &path));
        server->cuda_driver = path;
      } else if (name == "host_kernels") {
        std::vector<std::string> libraries;
        FERRY_RETURN_IF_ERROR(Strings(value, key, false, &libraries));
        server->host_kernels = libraries;
      } else if (name == "log_level") {
        std::string level;
        FERRY_RETURN_IF_ERROR(String(value, key, &level));
        if (level != "debug" && level != "info" && level != "warning" && level != "error") {
          return Error(value.source(), key, "'" + level + "' is not debug, info, warning or error");
        }
        server->log_level = level;
      } else if (name == "handshake_timeout") {
        absl::Duration timeout;
        FERRY_RETURN_IF_ERROR(Duration(value, key, &timeout));
        if (timeout <= absl::ZeroDuration())
          return Error(value.source(), key, "must be more than 0");
        server->handshake_timeout = timeout;
      } else if (name == "max_connections" || name == "max_sessions") {
        int64_t count = 0;
        FERRY_RETURN_IF_ERROR(Integer(value, key, 1, 1 << 20, &count));
        (name == "max_connections" ? server->max_connections : server->max_sessions) =
            static_cast<int>(count);
      } else if (name == "session_buffer") {
        uint64_t bytes = 0;
        FERRY_RETURN_IF_ERROR(Size(value, key, &bytes));
        server->session_buffer = bytes;
      } else if (name == "compute_sharing") {
        std::string sharing;
        FERRY_RETURN_IF_ERROR(String(value, key, &sharing));
        if (sharing != "auto" && sharing != "mps") {
          return Error(value.source(), key, "'" + sharing + "' is not \"auto\" or \"mps\"");
        }
        server->compute_sharing = sharing;
      } else if (name == "metrics_listen") {
        std::string address;
        FERRY_RETURN_IF_ERROR(String(value, key, &address));
        std::string host;
        uint16_t port = 0;
        if (Status parsed = ParseHostPort(address, &host, &port); !parsed.ok()) {
          return Error(value.source(), key, parsed.message());
        }
        server->metrics_listen = address;
      } else if (name == "metrics_sessions") {
        if (!value.is_boolean()) return WrongType(value, key, "true or false");
        server->metrics_sessions = value.as_boolean()->get();
      } else if (name == "busy_poll") {
        int64_t us = 0;
        FERRY_RETURN_IF_ERROR(Integer(value, key, 0, kMaxBusyPollWindow.count(), &us));
        server->busy_poll = std::chrono::microseconds(us);
      } else if (name == "on_rebind") {
        FERRY_RETURN_IF_ERROR(Policy(value, key, &server->on_rebind));
      } else if (name == "grace") {
        FERRY_RETURN_IF_ERROR(Duration(value, key, &server->grace));
      } else {
        return Error(key_node.source(), key,
                     "unknown key ([server] has listen, backend, default_pool, cuda_driver, "
                     "host_kernels, log_level, on_rebind, grace, handshake_timeout, "
                     "max_connections, max_sessions, session_buffer, compute_sharing, "
                     "metrics_listen, metrics_sessions, busy_poll)");
      }
    }
    return Status::Ok();
  }

  Status ReadAuth(const toml::node& node, Config* config) {
    if (!node.is_table()) return WrongType(node, "auth", "a table ([auth])");
    AuthConfig& auth = config->auth;
    for (auto&& [key_node, value] : *node.as_table()) {
      const std::string key = "auth." + std::string(key_node.str());
      const std::string_view name = key_node.str();
      std::optional<std::string>* text = name == "token_file"   ? &auth.token_file
                                         : name == "tls_cert"   ? &auth.tls_cert
                                         : name == "tls_key"    ? &auth.tls_key
                                         : name == "unix_group" ? &auth.unix_group
                                                                : nullptr;
      if (text != nullptr) {
        std::string value_text;
        FERRY_RETURN_IF_ERROR(String(value, key, &value_text));
        if (value_text.empty()) return Error(value.source(), key, "is empty");
        *text = value_text;
      } else if (name == "unix_allow_uids" || name == "unix_allow_gids") {
        if (!value.is_array()) return WrongType(value, key, "an array of ids");
        std::vector<uint32_t> ids;
        for (const toml::node& item : *value.as_array()) {
          int64_t id = 0;
          FERRY_RETURN_IF_ERROR(Integer(item, key, 0, 0xfffffffe, &id));
          ids.push_back(static_cast<uint32_t>(id));
        }
        (name == "unix_allow_uids" ? auth.unix_allow_uids : auth.unix_allow_gids) = ids;
      } else {
        return Error(key_node.source(), key,
                     "unknown key ([auth] has token_file, tls_cert, tls_key, unix_group, "
                     "unix_allow_uids, unix_allow_gids)");
      }
    }
    return Status::Ok();
  }

  Status ReadCluster(const toml::node& node, ClusterConfig* cluster) {
    if (!node.is_table()) return WrongType(node, "cluster", "a table ([cluster])");
    for (auto&& [key_node, value] : *node.as_table()) {
      const std::string key = "cluster." + std::string(key_node.str());
      const std::string_view name = key_node.str();
      if (name == "etcd") {
        std::vector<std::string> endpoints;
        FERRY_RETURN_IF_ERROR(Strings(value, key, true, &endpoints));
        if (endpoints.empty()) return Error(value.source(), key, "needs at least one URL");
        cluster->etcd = endpoints;
      } else if (name == "name" || name == "advertise" || name == "prefix") {
        std::string text;
        FERRY_RETURN_IF_ERROR(String(value, key, &text));
        if (text.empty()) return Error(value.source(), key, "is empty");
        (name == "name" ? cluster->name : name == "advertise" ? cluster->advertise : cluster->prefix) =
            text;
      } else if (name == "ttl") {
        absl::Duration ttl;
        FERRY_RETURN_IF_ERROR(Duration(value, key, &ttl));
        if (ttl < absl::Seconds(2)) return Error(value.source(), key, "must be at least 2s");
        cluster->ttl = ttl;
      } else if (name == "labels") {
        if (!value.is_table()) return WrongType(value, key, "a table of strings");
        std::map<std::string, std::string> labels;
        for (auto&& [label, label_value] : *value.as_table()) {
          std::string text;
          FERRY_RETURN_IF_ERROR(String(label_value, key + "." + std::string(label.str()), &text));
          labels[std::string(label.str())] = text;
        }
        cluster->labels = labels;
      } else {
        return Error(key_node.source(), key,
                     "unknown key ([cluster] has etcd, name, advertise, labels, ttl, prefix)");
      }
    }
    return Status::Ok();
  }

  Status ReadGpus(const toml::node& node, Config* config) {
    if (!node.is_array_of_tables()) return WrongType(node, "gpu", "an array of tables ([[gpu]])");
    std::set<int> seen;
    int n = 0;
    for (const toml::node& item : *node.as_array()) {
      const std::string prefix = "gpu[" + std::to_string(n++) + "]";
      GpuConfig gpu;
      gpu.line = static_cast<int>(item.source().begin.line);
      bool has_index = false;
      for (auto&& [key_node, value] : *item.as_table()) {
        const std::string key = prefix + "." + std::string(key_node.str());
        if (key_node.str() == "index") {
          int64_t index = 0;
          FERRY_RETURN_IF_ERROR(Integer(value, key, 0, 63, &index));
          gpu.index = static_cast<int>(index);
          has_index = true;
        } else if (key_node.str() == "memory") {
          uint64_t bytes = 0;
          FERRY_RETURN_IF_ERROR(Size(value, key, &bytes));
          gpu.memory = bytes;
        } else {
          return Error(key_node.source(), key, "unknown key ([[gpu]] has index, memory)");
        }
      }
      if (!has_index) return Error(item.source(), prefix + ".index", "missing");
      if (!seen.insert(gpu.index).second) {
        return Error(item.source(), prefix + ".index",
                     "GPU " + std::to_string(gpu.index) + " is listed twice");
      }
      config->gpus.push_back(gpu);
    }
    return Status::Ok();
  }

  Status ReadPools(const toml::node& node, Config* config) {
    if (!node.is_table()) return WrongType(node, "pool", "tables ([pool.NAME])");
    for (auto&& [name_node, value] : *node.as_table()) {
      const std::string name(name_node.str());
      const std::string prefix = "pool." + name;
      if (!ValidPoolName(name)) {
        return Error(name_node.source(), prefix,
                     "a pool name has 1 to 64 letters, digits, '_' or '-'");
      }
      if (!value.is_table()) return WrongType(value, prefix, "a table ([" + prefix + "])");
      PoolConfig pool;
      pool.name = name;
      for (auto&& [key_node, item] : *value.as_table()) {
        const std::string key = prefix + "." + std::string(key_node.str());
        if (key_node.str() == "slices_per_gpu") {
          int64_t slices = 0;
          FERRY_RETURN_IF_ERROR(Integer(item, key, 1, kMaxSlicesPerGpu, &slices));
          pool.slices_per_gpu = static_cast<int>(slices);
        } else if (key_node.str() == "memory_overcommit") {
          if (!item.is_number()) return WrongType(item, key, "a number");
          const double factor = item.value<double>().value_or(0);
          if (!(factor >= 1.0 && factor <= kMaxMemoryOvercommit)) {
            return Error(item.source(), key,
                         std::to_string(factor) + " is out of range (1 to " +
                             std::to_string(static_cast<int>(kMaxMemoryOvercommit)) + ")");
          }
          pool.memory_overcommit = factor;
        } else if (key_node.str() == "park_after") {
          FERRY_RETURN_IF_ERROR(Duration(item, key, &pool.park_after));
          if (pool.park_after < absl::ZeroDuration()) {
            return Error(item.source(), key, "must not be negative");
          }
        } else if (key_node.str() == "idle_release") {
          absl::Duration after;
          FERRY_RETURN_IF_ERROR(Duration(item, key, &after));
          if (after < kMinIdleRelease) {
            return Error(item.source(), key,
                         "must be at least " + absl::FormatDuration(kMinIdleRelease));
          }
          pool.idle_release = after;
        } else {
          return Error(key_node.source(), key,
                       "unknown key ([pool.NAME] has slices_per_gpu, memory_overcommit, "
                       "park_after, idle_release)");
        }
      }
      config->pools[name] = pool;
    }
    return Status::Ok();
  }

  Status ReadSchedules(const toml::node& node, Config* config) {
    if (!node.is_array_of_tables()) {
      return WrongType(node, "schedule", "an array of tables ([[schedule]])");
    }
    int n = 0;
    for (const toml::node& item : *node.as_array()) {
      const std::string prefix = "schedule[" + std::to_string(n++) + "]";
      std::string pool;
      std::vector<int> gpus;
      std::vector<std::string> gpu_names;
      std::map<std::string, std::string> server_labels;
      const toml::node* labels_node = nullptr;
      std::optional<TimeOfDay> from, to;
      std::string zone_name = "UTC";
      const toml::node* zone_node = nullptr;
      RebindPolicy policy = config->server.on_rebind;
      absl::Duration grace = config->server.grace;
      const toml::node* pool_node = nullptr;
      const toml::node* gpus_node = nullptr;
      for (auto&& [key_node, value] : *item.as_table()) {
        const std::string_view name = key_node.str();
        const std::string key = prefix + "." + std::string(name);
        if (name == "pool") {
          FERRY_RETURN_IF_ERROR(String(value, key, &pool));
          pool_node = &value;
        } else if (name == "gpus") {
          if (!value.is_array()) return WrongType(value, key, "an array of GPU indices");
          for (const toml::node& g : *value.as_array()) {
            if (g.is_string()) {
              const std::string gpu_name = g.as_string()->get();
              if (!IsGpuName(gpu_name)) {
                return Error(g.source(), key,
                             "'" + gpu_name + "' is not SERVER:INDEX or SERVER:*");
              }
              if (std::find(gpu_names.begin(), gpu_names.end(), gpu_name) != gpu_names.end()) {
                return Error(g.source(), key, "GPU " + gpu_name + " is listed twice");
              }
              gpu_names.push_back(gpu_name);
              continue;
            }
            if (cluster_) {
              return Error(g.source(), key,
                           "a cluster's config names GPUs as \"SERVER:INDEX\" or \"SERVER:*\"");
            }
            int64_t index = 0;
            FERRY_RETURN_IF_ERROR(Integer(g, key, 0, 63, &index));
            if (std::find(gpus.begin(), gpus.end(), index) != gpus.end()) {
              return Error(g.source(), key, "GPU " + std::to_string(index) + " is listed twice");
            }
            gpus.push_back(static_cast<int>(index));
          }
          gpus_node = &value;
        } else if (name == "labels") {
          if (!value.is_table()) return WrongType(value, key, "a table of strings");
          for (auto&& [label, label_value] : *value.as_table()) {
            std::string text;
            FERRY_RETURN_IF_ERROR(String(label_value, key + "." + std::string(label.str()), &text));
            server_labels[std::string(label.str())] = text;
          }
          if (server_labels.empty()) return Error(value.source(), key, "selects nothing");
          labels_node = &value;
        } else if (name == "from" || name == "to") {
          TimeOfDay t;
          FERRY_RETURN_IF_ERROR(Time(value, key, &t));
          (name == "from" ? from : to) = t;
        } else if (name == "timezone") {
          FERRY_RETURN_IF_ERROR(String(value, key, &zone_name));
          zone_node = &value;
        } else if (name == "on_rebind") {
          FERRY_RETURN_IF_ERROR(Policy(value, key, &policy));
        } else if (name == "grace") {
          FERRY_RETURN_IF_ERROR(Duration(value, key, &grace));
        } else {
          return Error(key_node.source(), key,
                       "unknown key ([[schedule]] has pool, gpus, labels, from, to, timezone, "
                       "on_rebind, grace)");
        }
      }
      if (pool_node == nullptr) return Error(item.source(), prefix + ".pool", "missing");
      if (config->pools.count(pool) == 0) {
        return Error(pool_node->source(), prefix + ".pool", UnknownPool(pool, *config));
      }
      if (gpus_node == nullptr && labels_node == nullptr) {
        return Error(item.source(), prefix + ".gpus", "missing (or select servers by labels)");
      }
      if (gpus_node != nullptr && gpus.empty() && gpu_names.empty()) {
        return Error(gpus_node->source(), prefix + ".gpus", "lists no GPU");
      }
      if (!config->gpus.empty()) {
        for (int g : gpus) {
          const bool listed = std::any_of(config->gpus.begin(), config->gpus.end(),
                                          [g](const GpuConfig& c) { return c.index == g; });
          if (!listed) {
            return Error(gpus_node->source(), prefix + ".gpus",
                         "GPU " + std::to_string(g) + " has no [[gpu]] table");
          }
        }
      }
      if (!from.has_value()) return Error(item.source(), prefix + ".from", "missing");
      if (!to.has_value()) return Error(item.source(), prefix + ".to", "missing");
      absl::TimeZone zone;
      Status status = LoadIanaTimeZone(zone_name, &zone);
      if (!status.ok()) {
        return Error(zone_node != nullptr ? zone_node->source() : item.source(),
                     prefix + ".timezone", status.message());
      }
      config->schedules.push_back(ScheduleConfig{pool, gpus, gpu_names, server_labels,
                                                 DailyWindow(*from, *to, zone, zone_name), policy,
                                                 grace, static_cast<int>(item.source().begin.line)});
    }
    return Status::Ok();
  }

  std::string UnknownPool(const std::string& pool, const Config& config) {
    std::string names;
    for (const auto& [name, p] : config.pools) names += (names.empty() ? "" : ", ") + name;
    return "no pool '" + pool + "' is defined" +
           (names.empty() ? std::string(" (add a [pool.NAME] table)") : " (pools: " + names + ")");
  }

  Status Validate(const toml::table& root, const Config& config) {
    const toml::node* server = root.get("server");
    const toml::node* default_pool =
        server != nullptr && server->is_table() ? server->as_table()->get("default_pool") : nullptr;
    if (config.pooling()) {
      if (default_pool == nullptr) {
        const toml::source_region where =
            server != nullptr ? server->source() : root.get("pool")->source();
        return Error(where, "server.default_pool",
                     "missing (pools are defined, so a GPU that no window covers needs a pool)");
      }
      if (config.pools.count(config.server.default_pool) == 0) {
        return Error(default_pool->source(), "server.default_pool",
                     UnknownPool(config.server.default_pool, config));
      }
    } else if (default_pool != nullptr) {
      return Error(default_pool->source(), "server.default_pool",
                   UnknownPool(config.server.default_pool, config));
    }
    return Status::Ok();
  }

  // "SERVER:INDEX" or "SERVER:*" (a server name as the cluster's).
  static bool IsGpuName(const std::string& text) {
    const size_t colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon > 63) return false;
    const std::string server = text.substr(0, colon);
    const std::string index = text.substr(colon + 1);
    if (server[0] == '.' || server[0] == '-') return false;
    for (unsigned char c : server) {
      if (std::isalnum(c) == 0 && c != '.' && c != '_' && c != '-') return false;
    }
    if (index == "*") return true;
    return !index.empty() && index.size() <= 2 &&
           std::all_of(index.begin(), index.end(), [](unsigned char c) { return std::isdigit(c); });
  }

  std::string path_;
  bool cluster_ = false;  // a cluster's pool config (ParseClusterConfig)
};

Status Parse(std::string_view text, const std::string& path, bool cluster, Config* out) {
  Config config;
  config.path = path;
  try {
    toml::table root = toml::parse(text, path);
    Reader reader(path, cluster);
    FERRY_RETURN_IF_ERROR(reader.Read(root, &config));
  } catch (const toml::parse_error& e) {
    return Status::InvalidArgument((path.empty() ? std::string("<config>") : path) + ":" +
                                   std::to_string(e.source().begin.line) + ":" +
                                   std::to_string(e.source().begin.column) + ": " +
                                   std::string(e.description()));
  }
  *out = std::move(config);
  return Status::Ok();
}

}  // namespace

std::string_view RebindPolicyName(RebindPolicy policy) {
  switch (policy) {
    case RebindPolicy::kPreempt:
      return "preempt";
    case RebindPolicy::kMigrate:
      return "migrate";
    case RebindPolicy::kDrain:
      break;
  }
  return "drain";
}

Status ParseConfig(std::string_view text, const std::string& path, Config* out) {
  return Parse(text, path, /*cluster=*/false, out);
}

Status ParseClusterConfig(std::string_view text, const std::string& path, Config* out) {
  return Parse(text, path, /*cluster=*/true, out);
}

Config LocalizeSchedules(const Config& config, const std::string& server,
                         const std::map<std::string, std::string>& labels,
                         const std::vector<int>& indices) {
  Config local = config;
  local.schedules.clear();
  for (ScheduleConfig schedule : config.schedules) {
    if (schedule.gpu_names.empty() && schedule.server_labels.empty()) {
      local.schedules.push_back(std::move(schedule));
      continue;
    }
    std::vector<int> gpus = schedule.gpus;
    const auto add = [&gpus](int index) {
      if (std::find(gpus.begin(), gpus.end(), index) == gpus.end()) gpus.push_back(index);
    };
    for (const std::string& name : schedule.gpu_names) {
      const size_t colon = name.rfind(':');
      if (name.substr(0, colon) != server) continue;
      const std::string index = name.substr(colon + 1);
      if (index == "*") {
        for (int i : indices) add(i);
      } else {
        add(std::stoi(index));
      }
    }
    const bool labelled =
        !schedule.server_labels.empty() &&
        std::all_of(schedule.server_labels.begin(), schedule.server_labels.end(),
                    [&labels](const auto& wanted) {
                      auto it = labels.find(wanted.first);
                      return it != labels.end() && it->second == wanted.second;
                    });
    if (labelled) {
      for (int i : indices) add(i);
    }
    if (gpus.empty()) continue;
    std::sort(gpus.begin(), gpus.end());
    schedule.gpus = std::move(gpus);
    schedule.gpu_names.clear();
    schedule.server_labels.clear();
    local.schedules.push_back(std::move(schedule));
  }
  return local;
}

Config WithClusterPools(const Config& base, const Config& cluster) {
  Config merged = base;
  merged.pools = cluster.pools;
  merged.schedules = cluster.schedules;
  merged.server.default_pool = cluster.server.default_pool;
  merged.server.on_rebind = cluster.server.on_rebind;
  merged.server.grace = cluster.server.grace;
  return merged;
}

Status LoadConfigFile(const std::string& path, Config* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot read config file " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::InvalidArgument("error reading config file " + path);
  return ParseConfig(text.str(), path, out);
}

}  // namespace ferry::pool
