// ServiceNotifier: ferryd's side of systemd's readiness protocol (the unit's
// Type=notify; sd_notify(3)), in a few lines instead of a libsystemd
// dependency: each state is one datagram of "KEY=VALUE" lines sent to the
// AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for the
// abstract namespace). systemd tells the sender by the datagram's
// credentials, so the unit needs NotifyAccess=main (the default).
//
//   READY=1 + STATUS=...         once every listener accepts connections
//   RELOADING=1 + MONOTONIC_USEC  when a SIGHUP reload begins; READY=1 after
//   STOPPING=1                    when a stop begins
//
// Without $NOTIFY_SOCKET (not started by systemd) every call does nothing.
// A failed send is logged once and otherwise ignored: readiness is advice,
// ferryd serves either way (systemd then times the start out).
//
// Thread-safety: one object, used by ferryd's main thread.
#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace ferry {

class ServiceNotifier {
 public:
  // Takes $NOTIFY_SOCKET and removes it from the environment, so that no
  // process ferryd starts speaks for ferryd. An address that is neither a
  // path nor "@name" (e.g. systemd's vsock: form) is logged and ignored.
  static ServiceNotifier FromEnvironment();

  bool enabled() const { return !address_.empty(); }

  void Ready(std::string_view status);
  void Reloading();
  void Stopping();

 private:
  explicit ServiceNotifier(std::string address) : address_(std::move(address)) {}
  void Send(const std::string& message);

  std::string address_;  // "" = not under systemd
  bool failure_logged_ = false;
};

}  // namespace ferry
