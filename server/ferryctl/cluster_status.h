// `ferryctl status --etcd URLS`: the cluster as etcd holds it — servers,
// every GPU with its pool and window, the slices' holders — read straight
// from the store, without asking any ferryd.
#pragma once

#include <string>

namespace ferry::ferryctl {

// Prints the cluster under `prefix` of the etcd at `endpoints` (comma-
// separated) as `format` ("table" or "json"). Returns the exit status (1
// with a message on stderr when etcd cannot be read).
int PrintClusterStatus(const std::string& endpoints, const std::string& prefix,
                       const std::string& format);

}  // namespace ferry::ferryctl
