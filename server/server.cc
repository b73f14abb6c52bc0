#include "server/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <utility>

#include "common/frame.h"
#include "common/shm_transport.h"
#include "common/log.h"

namespace ferry::server {

Server::Server(backend::GpuBackend& backend, uint64_t module_cache_bytes) : backend_(backend) {
  if (module_cache_bytes > 0) module_cache_ = std::make_unique<ModuleCache>(module_cache_bytes);
}

ModuleCacheStats Server::module_cache_stats() const {
  return module_cache_ != nullptr ? module_cache_->stats() : ModuleCacheStats{};
}

Server::~Server() { Stop(); }

Status Server::Listen(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) {
    const std::string path = address.substr(5);
    if (path.empty()) return Status::InvalidArgument("bad listen address '" + address + "'");
    // A socket file left by an earlier ferryd would make bind fail.
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
    asio::error_code ec;
    auto acceptor = std::make_unique<asio::local::stream_protocol::acceptor>(io_);
    asio::local::stream_protocol::endpoint endpoint(path);
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Status::InvalidArgument("cannot listen on " + address + ": " + ec.message());
    bound_.push_back(address);
    unix_paths_.push_back(path);
    unix_acceptors_.push_back(std::move(acceptor));
    return Status::Ok();
  }
  std::string host;
  uint16_t port = 0;
  FERRY_RETURN_IF_ERROR(ParseHostPort(address, &host, &port));
  asio::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) {
    asio::ip::tcp::resolver resolver(io_);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return Status::InvalidArgument("cannot resolve listen address " + address + ": " + ec.message());
    }
    ip = results.begin()->endpoint().address();
  }
  auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(io_);
  asio::ip::tcp::endpoint endpoint(ip, port);
  acceptor->open(endpoint.protocol(), ec);
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(endpoint, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::InvalidArgument("cannot listen on " + address + ": " + ec.message());
  auto local = acceptor->local_endpoint();
  std::string bound = local.address().is_v6() ? "[" + local.address().to_string() + "]"
                                              : local.address().to_string();
  bound += ":" + std::to_string(local.port());
  bound_.push_back(bound);
  acceptors_.push_back(std::move(acceptor));
  return Status::Ok();
}

std::vector<std::string> Server::BoundAddresses() const { return bound_; }

void Server::Start() {
  for (auto& acceptor : acceptors_) StartAccept(*acceptor);
  for (auto& acceptor : unix_acceptors_) StartAcceptUnix(*acceptor);
  io_thread_ = std::thread([this] { io_.run(); });
}

void Server::StartAccept(asio::ip::tcp::acceptor& acceptor) {
  acceptor.async_accept([this, &acceptor](const asio::error_code& ec, asio::ip::tcp::socket socket) {
    if (ec) {
      if (ec != asio::error::operation_aborted) {
        FERRY_LOG(kWarning) << "accept failed: " << ec.message();
        StartAccept(acceptor);
      }
      return;
    }
    asio::error_code ignored;
    auto remote = socket.remote_endpoint(ignored);
    std::string peer = remote.address().to_string() + ":" + std::to_string(remote.port());
    int fd = socket.release(ignored);
    if (fd < 0) {
      StartAccept(acceptor);
      return;
    }
    TuneTcpSocket(fd);
    ServeOnNewThread(
        [fd, peer](std::unique_ptr<Transport>* out) {
          *out = std::make_unique<SocketTransport>(fd, peer);
          return Status::Ok();
        },
        peer);
    StartAccept(acceptor);
  });
}

void Server::StartAcceptUnix(asio::local::stream_protocol::acceptor& acceptor) {
  acceptor.async_accept(
      [this, &acceptor](const asio::error_code& ec, asio::local::stream_protocol::socket socket) {
        if (ec) {
          if (ec != asio::error::operation_aborted) {
            FERRY_LOG(kWarning) << "accept failed: " << ec.message();
            StartAcceptUnix(acceptor);
          }
          return;
        }
        asio::error_code ignored;
        std::string peer = "unix:" + acceptor.local_endpoint(ignored).path();
        const int fd = socket.release(ignored);
        ucred credentials{};
        socklen_t length = sizeof(credentials);
        if (fd >= 0 && ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0) {
          peer += " pid " + std::to_string(credentials.pid);
        }
        if (fd >= 0) {
          // The shared region is set up on the connection's own thread, never
          // on the accepting one.
          ServeOnNewThread(
              [fd, peer](std::unique_ptr<Transport>* out) {
                return ShmTransport::Accept(fd, peer, ShmTransport::kDefaultRingBytes, out);
              },
              peer);
        }
        StartAcceptUnix(acceptor);
      });
}

void Server::ServeOnNewThread(std::function<Status(std::unique_ptr<Transport>*)> make_transport,
                              std::string peer) {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopping_) {
      ++live_connections_;
      id = next_id_++;
    }
  }
  if (id == 0) {  // stopping: take the socket only to close it
    std::unique_ptr<Transport> unused;
    (void)make_transport(&unused);
    return;
  }
  std::thread([this, id, make_transport = std::move(make_transport), peer = std::move(peer)] {
    std::unique_ptr<Transport> transport;
    Status status = make_transport(&transport);
    if (!status.ok()) {
      FERRY_LOG(kWarning) << "connection from " << peer << " failed: " << status.ToString();
      ConnectionFinished(id);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      connections_[id] = transport.get();
      if (stopping_) transport->Shutdown();
    }
    ServeConnection(id, std::move(transport));
  }).detach();
}

void Server::ConnectionFinished(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  connections_.erase(id);
  --live_connections_;
  connections_cv_.notify_all();
}

void Server::ServeConnection(uint64_t id, std::unique_ptr<Transport> transport) {
  Frame frame;
  Status status = ReadFrame(*transport, &frame);
  if (status.ok() && frame.kind != wire::FrameKind::HELLO) {
    status = Status::Malformed("expected a Hello frame first");
  }
  if (!status.ok()) {
    FERRY_LOG(kWarning) << "connection from " << transport->PeerName()
                        << " dropped before its handshake: " << status.ToString();
    ConnectionFinished(id);
    return;
  }
  try {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    auto hello = reader.getRoot<wire::Hello>();
    if (hello.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      capnp::MallocMessageBuilder message;
      auto reply = message.initRoot<wire::HelloReply>();
      StatusToWire(Status::Unimplemented("protocol version " +
                                         std::to_string(hello.getProtocolVersion()) +
                                         " is not supported; this ferryd speaks " +
                                         std::to_string(wire::PROTOCOL_VERSION)),
                   reply.initStatus());
      (void)WriteFrame(*transport, wire::FrameKind::HELLO_REPLY, message);
      ConnectionFinished(id);
      return;
    }
    if (hello.getRole() == wire::Hello::Role::CONTROL) {
      ServeControl(*transport);
      ConnectionFinished(id);
      return;
    }
    auto session =
        std::make_unique<Session>(id, std::move(transport), backend_, hello, module_cache_.get());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sessions_[id] = session.get();
      if (stopping_) session->Stop();
    }
    session->Run();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sessions_.erase(id);
      connections_.erase(id);  // the transport dies with the session
    }
    session.reset();
  } catch (const kj::Exception& e) {
    FERRY_LOG(kWarning) << "bad handshake from a client: " << e.getDescription().cStr();
  }
  ConnectionFinished(id);
}

void Server::ServeControl(Transport& transport) {
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::HelloReply>();
    StatusToWire(Status::Ok(), reply.initStatus());
    reply.setDriverVersion(backend_.DriverVersion());
    reply.setBackend(std::string(backend_.Name()));
    if (!WriteFrame(transport, wire::FrameKind::HELLO_REPLY, message).ok()) return;
  }
  for (;;) {
    Frame frame;
    if (!ReadFrame(transport, &frame).ok()) return;
    if (frame.kind != wire::FrameKind::CONTROL_REQUEST) return;
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::ControlReply>();
    reply.setBackend(std::string(backend_.Name()));
    try {
      capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
      auto request = reader.getRoot<wire::ControlRequest>();
      if (request.which() == wire::ControlRequest::STATUS) {
        auto sessions = Sessions();
        auto list = reply.initSessions(static_cast<unsigned>(sessions.size()));
        for (size_t i = 0; i < sessions.size(); ++i) {
          const SessionInfo& s = sessions[i];
          auto out = list[static_cast<unsigned>(i)];
          out.setId(s.id);
          out.setClient(s.client);
          out.setPid(s.pid);
          out.setHost(s.host);
          out.setProgram(s.program);
          out.setBytesAllocated(s.bytes_allocated);
          out.setAllocations(s.allocations);
          out.setContexts(s.contexts);
          out.setStreams(s.streams);
          out.setEvents(s.events);
          out.setModules(s.modules);
          out.setSinceUnixMs(s.since_unix_ms);
        }
        StatusToWire(Status::Ok(), reply.initStatus());
      } else {
        StatusToWire(Status::Unimplemented("unknown control request"), reply.initStatus());
      }
    } catch (const kj::Exception& e) {
      return;
    }
    if (!WriteFrame(transport, wire::FrameKind::CONTROL_REPLY, message).ok()) return;
  }
}

std::vector<SessionInfo> Server::Sessions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<SessionInfo> out;
  for (const auto& [id, session] : sessions_) out.push_back(session->Info());
  return out;
}

void Server::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && !io_thread_.joinable()) return;
    stopping_ = true;
    for (auto& [id, transport] : connections_) transport->Shutdown();
  }
  asio::post(io_, [this] {
    for (auto& acceptor : acceptors_) {
      asio::error_code ignored;
      acceptor->close(ignored);
    }
    for (auto& acceptor : unix_acceptors_) {
      asio::error_code ignored;
      acceptor->close(ignored);
    }
  });
  if (io_thread_.joinable()) io_thread_.join();
  std::unique_lock<std::mutex> lock(mutex_);
  connections_cv_.wait(lock, [this] { return live_connections_ == 0; });
  for (const std::string& path : unix_paths_) ::unlink(path.c_str());
  unix_paths_.clear();
}

}  // namespace ferry::server
