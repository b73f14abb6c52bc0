// EtcdServer: a real etcd (the etcd-server package's /usr/bin/etcd) for
// tests, single member, on free loopback ports with a data directory of its
// own. Tests stop, kill and restart it to show what ferry does while the
// cluster store is away and after it comes back.
//
// Thread-safety: one object belongs to one thread. The process is known by
// its PID only (ChildProcess); it gets SIGKILL if the test dies.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "test/support/child_process.h"

namespace ferry::test {

class EtcdServer {
 public:
  // Starts etcd and waits (bounded) until it serves requests. nullptr, with
  // why in `*error`, when etcd is not installed or does not come up.
  static std::unique_ptr<EtcdServer> Start(std::string* error);

  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;
  ~EtcdServer();  // kills etcd and removes its directory

  // "http://127.0.0.1:PORT": where clients talk to it (the same after
  // Restart).
  std::string endpoint() const;
  int client_port() const { return client_port_; }
  bool running() const;

  // SIGTERM, then a bounded wait (SIGKILL if it does not end).
  void Stop();
  // SIGKILL: etcd gets no chance to close anything.
  void Kill();
  // Starts a stopped or killed etcd again, on the same ports and data
  // directory, and waits until it serves; false with why in `*error`.
  bool Restart(std::string* error);

  // Compacts etcd's history up to `revision` (etcd's /v3/kv/compaction;
  // EtcdClient has no call for it): watches from before it then end.
  bool Compact(int64_t revision, std::string* error);

  // The tails of etcd's output, for failure messages.
  std::string Describe() const;

 private:
  EtcdServer(std::string binary, std::string directory)
      : binary_(std::move(binary)), directory_(std::move(directory)) {}

  // Starts the process on the current ports and waits until it serves.
  bool Launch(std::string* error);

  std::string binary_;
  std::string directory_;  // holds data/ and the output files
  int client_port_ = -1;
  int peer_port_ = -1;
  int launches_ = 0;  // numbers the output files of each start
  std::optional<ChildProcess> process_;
};

}  // namespace ferry::test
