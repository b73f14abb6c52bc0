#include "service_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "common/log.h"

namespace ferry {

ServiceNotifier ServiceNotifier::FromEnvironment() {
  const char* value = std::getenv("NOTIFY_SOCKET");
  std::string address = value != nullptr ? value : "";
  unsetenv("NOTIFY_SOCKET");
  if (!address.empty() && address[0] != '/' && address[0] != '@') {
    FERRY_LOG(kWarning) << "NOTIFY_SOCKET=" << address
                        << " is neither a path nor an abstract socket (@name); ferryd will not "
                           "report readiness to the service manager";
    address.clear();
  }
  return ServiceNotifier(std::move(address));
}

void ServiceNotifier::Ready(std::string_view status) {
  Send("READY=1\nSTATUS=" + std::string(status));
}

void ServiceNotifier::Reloading() {
  // MONOTONIC_USEC ties the reload to a moment, so the service manager can
  // tell this reload from an earlier one (systemd's Type=notify-reload
  // requires it; Type=notify accepts it).
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const unsigned long long usec =
      static_cast<unsigned long long>(now.tv_sec) * 1000000ull + now.tv_nsec / 1000;
  Send("RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=" + std::to_string(usec));
}

void ServiceNotifier::Stopping() { Send("STOPPING=1\nSTATUS=stopping"); }

void ServiceNotifier::Send(const std::string& message) {
  if (!enabled()) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (address_.size() >= sizeof(addr.sun_path)) {
    if (!failure_logged_) {
      FERRY_LOG(kWarning) << "NOTIFY_SOCKET=" << address_ << " is too long for a unix socket";
    }
    failure_logged_ = true;
    return;
  }
  std::memcpy(addr.sun_path, address_.data(), address_.size());
  // An abstract address has no terminating NUL: its length is the whole name.
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  const socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) +
                                                  address_.size() + (address_[0] == '/' ? 1 : 0));
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ssize_t sent = -1;
  int error = 0;
  if (fd >= 0) {
    sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
                  reinterpret_cast<const sockaddr*>(&addr), length);
    error = errno;
    close(fd);
  } else {
    error = errno;
  }
  if (sent != static_cast<ssize_t>(message.size()) && !failure_logged_) {
    failure_logged_ = true;
    FERRY_LOG(kWarning) << "cannot notify the service manager at NOTIFY_SOCKET=" << address_ << ": "
                        << std::strerror(error);
  }
}

}  // namespace ferry
