// ferryctl's commands on a cluster pool, straight against etcd:
//   status --etcd URLS      servers, every GPU with its pool and window, the
//                           slices' holders, without asking any ferryd
//   apply -f FILE --etcd    validates and stores the cluster's pool config
//   rebind/drain SERVER:INDEX --etcd   finds the ferryd that owns the GPU
#pragma once

#include <cstdint>
#include <string>

namespace ferry::ferryctl {

// Prints the cluster under `prefix` of the etcd at `endpoints` (comma-
// separated) as `format` ("table" or "json"). Returns the exit status (1
// with a message on stderr when etcd cannot be read).
int PrintClusterStatus(const std::string& endpoints, const std::string& prefix,
                       const std::string& format);

// The cluster as `status --etcd -o json` prints it, into `*json`; false
// with the reason in `*error` when etcd cannot be read.
bool ClusterJson(const std::string& endpoints, const std::string& prefix, std::string* json,
                 std::string* error);

// Checks FILE as a cluster's pool config (pool/config.h ParseClusterConfig;
// GPUs it names on servers in the cluster now must exist there) and stores
// it. Errors name the file and line; nothing is stored then. Returns the
// exit status.
int ApplyClusterConfig(const std::string& endpoints, const std::string& prefix,
                       const std::string& file);

// "SERVER:INDEX" -> the advertised address of SERVER and INDEX, as etcd has
// them. Returns 0, or the exit status after a message on stderr.
int ResolveClusterGpu(const std::string& endpoints, const std::string& prefix,
                      const std::string& gpu, std::string* address, uint32_t* index);

}  // namespace ferry::ferryctl
