#include "server/session_worker.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "common/descriptor_passing.h"
#include "common/frame.h"
#include "common/log.h"
#include "schema/worker.capnp.h"

extern char** environ;

namespace ferry::server {
namespace {

// A borrowed device on the link (WorkerStart, MoveRequest).
void DeviceToWire(const SessionDevice& d, wire::WorkerDevice::Builder o) {
  o.setBackendDevice(d.backend_device);
  o.setMemoryQuota(d.memory_quota);
  o.setComputeShare(d.compute_share);
  o.setGpu(d.gpu);
  o.setSlice(d.slice);
  o.setSlicesPerGpu(d.slices_per_gpu);
  o.setSmPartitionSms(d.sm_partition_sms);
  o.setMpsThreadPercentage(d.mps_thread_percentage);
}

SessionDevice DeviceFromWire(wire::WorkerDevice::Reader d) {
  SessionDevice device;
  device.backend_device = d.getBackendDevice();
  device.memory_quota = d.getMemoryQuota();
  device.compute_share = d.getComputeShare();
  device.gpu = d.getGpu();
  device.slice = d.getSlice();
  device.slices_per_gpu = d.getSlicesPerGpu();
  device.sm_partition_sms = d.getSmPartitionSms();
  device.mps_thread_percentage = d.getMpsThreadPercentage();
  return device;
}

// Runs one job at a time on a thread of its own: a job offered while the
// previous one still runs is refused (its caller answers the request at
// once), so a peer that floods requests never makes threads pile up. The
// owner calls Join before what the jobs use goes away.
class OneJobThread {
 public:
  ~OneJobThread() { Join(); }
  bool TryStart(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (running_) return false;
    if (thread_.joinable()) thread_.join();  // finished: it cleared running_
    running_ = true;
    try {
      thread_ = std::thread([this, job = std::move(job)] {
        job();
        std::lock_guard<std::mutex> done(mutex_);
        running_ = false;
      });
    } catch (const std::system_error&) {
      running_ = false;  // no thread to be had: refused like a busy one
      return false;
    }
    return true;
  }
  void Join() {
    std::thread finishing;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finishing = std::move(thread_);
    }
    if (finishing.joinable()) finishing.join();
  }

 private:
  std::mutex mutex_;
  bool running_ = false;
  std::thread thread_;
};

// The link's messages are small: the largest is the start (the Hello, at
// most kHandshakeFrameLimits' 64 KiB, and the grant).
constexpr size_t kMaxLinkMessageBytes = 256 << 10;
// The descriptor the worker finds its link on.
constexpr int kWorkerLinkFd = 3;
// How long a TLS hand-over may take: the client's new handshake and its
// Hello again.
constexpr std::chrono::seconds kTlsHandoverTimeout{30};
// How long a worker's session waits for the main process to answer a module
// image lookup before it treats the image as not held.
constexpr std::chrono::seconds kImageAnswerTimeout{30};

// One message of the link as bytes, built by `fill` on the root of type T.
template <typename T, typename Fill>
std::vector<uint8_t> Encode(Fill&& fill) {
  capnp::MallocMessageBuilder message;
  fill(message.initRoot<T>());
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

// The bytes of a received message, copied into words (the reader needs them
// aligned).
kj::Array<capnp::word> Words(const std::vector<uint8_t>& bytes) {
  auto words =
      kj::heapArray<capnp::word>((bytes.size() + sizeof(capnp::word) - 1) / sizeof(capnp::word));
  std::memset(words.begin(), 0, words.size() * sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  return words;
}

void InfoToWire(const SessionInfo& in, wire::WorkerSessionInfo::Builder out) {
  out.setClient(in.client);
  out.setPid(in.pid);
  out.setHost(in.host);
  out.setProgram(in.program);
  out.setBytesAllocated(in.bytes_allocated);
  out.setAllocations(in.allocations);
  out.setContexts(in.contexts);
  out.setStreams(in.streams);
  out.setEvents(in.events);
  out.setModules(in.modules);
  out.setSinceUnixMs(in.since_unix_ms);
  out.setTransport(in.transport);
  auto bytes = out.initDeviceBytes(static_cast<unsigned>(in.device_bytes.size()));
  for (size_t i = 0; i < in.device_bytes.size(); ++i) {
    bytes.set(static_cast<unsigned>(i), in.device_bytes[i]);
  }
  out.setModuleImageBytesReceived(in.module_image_bytes_received);
  out.setAllocationsWaitedForReleases(in.allocations_waited_for_releases);
  out.setTokenName(in.token_name);
  out.setTokenId(in.token_id);
  out.setBytesFromClient(in.bytes_from_client);
  out.setBytesToClient(in.bytes_to_client);
  out.setPeakBytesAllocated(in.peak_bytes_allocated);
  out.setEndReason(in.end_reason);
  out.setStarted(in.started);
  out.setCalls(in.calls);
  out.setLaunches(in.launches);
  out.setFramesFromClient(in.frames_from_client);
  out.setFramesToClient(in.frames_to_client);
  auto counts = out.initSyncCallCounts(static_cast<unsigned>(in.sync_calls.counts.size()));
  for (size_t i = 0; i < in.sync_calls.counts.size(); ++i) {
    counts.set(static_cast<unsigned>(i), in.sync_calls.counts[i]);
  }
  out.setSyncCallSeconds(in.sync_calls.sum);
  out.setParked(in.parked);
  out.setParkedBytes(in.parked_bytes);
  out.setParks(in.parks);
  out.setUnparks(in.unparks);
  out.setBytesParkedTotal(in.bytes_parked_total);
  out.setBytesUnparkedTotal(in.bytes_unparked_total);
  out.setParkSeconds(in.park_seconds);
  out.setUnparkSeconds(in.unpark_seconds);
  out.setSlicesReleased(in.slices_released);
  out.setReleases(in.releases);
  out.setReborrows(in.reborrows);
  out.setMoves(in.moves);
  out.setIdleMs(in.idle_ms);
}

SessionInfo InfoFromWire(uint64_t id, wire::WorkerSessionInfo::Reader in) {
  SessionInfo out;
  out.id = id;
  out.client = in.getClient().cStr();
  out.pid = in.getPid();
  out.host = in.getHost().cStr();
  out.program = in.getProgram().cStr();
  out.bytes_allocated = in.getBytesAllocated();
  out.allocations = in.getAllocations();
  out.contexts = in.getContexts();
  out.streams = in.getStreams();
  out.events = in.getEvents();
  out.modules = in.getModules();
  out.since_unix_ms = in.getSinceUnixMs();
  out.transport = in.getTransport().cStr();
  for (uint64_t bytes : in.getDeviceBytes()) out.device_bytes.push_back(bytes);
  out.module_image_bytes_received = in.getModuleImageBytesReceived();
  out.allocations_waited_for_releases = in.getAllocationsWaitedForReleases();
  out.token_name = in.getTokenName().cStr();
  out.token_id = in.getTokenId().cStr();
  out.bytes_from_client = in.getBytesFromClient();
  out.bytes_to_client = in.getBytesToClient();
  out.peak_bytes_allocated = in.getPeakBytesAllocated();
  out.end_reason = in.getEndReason().cStr();
  out.started = in.getStarted();
  out.calls = in.getCalls();
  out.launches = in.getLaunches();
  out.frames_from_client = in.getFramesFromClient();
  out.frames_to_client = in.getFramesToClient();
  // Both ends are this binary: the same buckets, or none from a worker
  // that has not counted yet. Anything else is dropped, not misread.
  if (in.getSyncCallCounts().size() == std::size(kSyncCallBucketSeconds) + 1) {
    for (uint64_t count : in.getSyncCallCounts()) out.sync_calls.counts.push_back(count);
    out.sync_calls.sum = in.getSyncCallSeconds();
  }
  out.parked = in.getParked();
  out.parked_bytes = in.getParkedBytes();
  out.parks = in.getParks();
  out.unparks = in.getUnparks();
  out.bytes_parked_total = in.getBytesParkedTotal();
  out.bytes_unparked_total = in.getBytesUnparkedTotal();
  out.park_seconds = in.getParkSeconds();
  out.unpark_seconds = in.getUnparkSeconds();
  out.slices_released = in.getSlicesReleased();
  out.releases = in.getReleases();
  out.reborrows = in.getReborrows();
  out.moves = in.getMoves();
  out.idle_ms = in.getIdleMs();
  return out;
}

void NameToWire(const ContentHash& hash, uint64_t size, wire::ImageName::Builder out) {
  out.setHash(capnp::Data::Reader(hash.data(), hash.size()));
  out.setSize(size);
}

bool NameFromWire(wire::ImageName::Reader in, ContentHash* hash, uint64_t* size) {
  auto bytes = in.getHash();
  if (bytes.size() != hash->size()) return false;
  std::memcpy(hash->data(), bytes.begin(), hash->size());
  *size = in.getSize();
  return true;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
}

// "exited with status 3", "killed by signal 11 (Segmentation fault)"; "" for
// a clean exit.
std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) {
    return WEXITSTATUS(status) == 0 ? ""
                                    : "exited with status " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

// Waits until `fd` is readable or `timeout` passes; false on timeout.
bool WaitReadable(int fd, std::chrono::milliseconds timeout) {
  pollfd pfd{fd, POLLIN, 0};
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const int ready = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (ready > 0) return true;
    if (ready == 0) return false;
    if (errno != EINTR) return true;  // let the read report the error
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// The main process's side.

Status SessionWorker::Spawn(const std::vector<std::string>& command,
                            const std::vector<std::string>& environment,
                            std::shared_ptr<SessionWorker>* out, const WorkerBooks* books) {
  if (command.empty()) return Status::Internal("no session worker command");
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return Status::Internal(std::string("socketpair: ") + std::strerror(errno));
  }
  // Above kWorkerLinkFd, so that the dup2 below always makes a new
  // descriptor (dup2 onto itself would keep close-on-exec).
  const int child_end = ::fcntl(pair[1], F_DUPFD_CLOEXEC, kWorkerLinkFd + 1);
  ::close(pair[1]);
  if (child_end < 0) {
    ::close(pair[0]);
    return Status::Internal(std::string("fcntl(F_DUPFD): ") + std::strerror(errno));
  }
  std::vector<std::string> args = command;
  args.push_back("--session-worker");
  args.push_back(std::to_string(kWorkerLinkFd));
  // The shared books: above kWorkerBooksFd for the same reason.
  int books_end = -1;
  int books_slot = -1;
  if (books != nullptr && books->fd >= 0) {
    books_end = ::fcntl(books->fd, F_DUPFD_CLOEXEC, kWorkerBooksFd + 1);
    if (books_end < 0) {
      ::close(pair[0]);
      ::close(child_end);
      return Status::Internal(std::string("fcntl(F_DUPFD): ") + std::strerror(errno));
    }
    books_slot = books->new_slot ? books->new_slot() : -1;
    args.push_back("--host-memory-ledger");
    args.push_back(std::to_string(kWorkerBooksFd) + ":" + std::to_string(books_slot));
  }
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // ferryd's environment, with `environment`'s entries added or replacing.
  std::vector<std::string> added = environment;
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    const bool replaced = std::any_of(added.begin(), added.end(), [&](const std::string& a) {
      return std::string_view(a).substr(0, a.find('=')) == name;
    });
    if (!replaced) envp.push_back(*e);
  }
  for (std::string& entry : added) envp.push_back(entry.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, child_end, kWorkerLinkFd);
  if (books_end >= 0) posix_spawn_file_actions_adddup2(&actions, books_end, kWorkerBooksFd);
  // Nothing of other sessions (their sockets, their regions) reaches the
  // worker, whatever close-on-exec flags they carry.
  posix_spawn_file_actions_addclosefrom_np(&actions,
                                           (books_end >= 0 ? kWorkerBooksFd : kWorkerLinkFd) + 1);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  // Its own process group: a terminal's Ctrl-C reaches ferryd's main process,
  // which ends the sessions in order. Signals start unblocked and default.
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) sigaddset(&defaults, s);
  posix_spawnattr_setflags(&attributes,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attributes, 0);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  pid_t pid = 0;
  const int spawned =
      ::posix_spawn(&pid, command[0].c_str(), &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(child_end);
  if (books_end >= 0) ::close(books_end);
  if (spawned != 0) {
    if (books_slot >= 0 && books->release_slot) books->release_slot(books_slot);
    ::close(pair[0]);
    return Status::Internal("cannot start a session worker (" + command[0] +
                            "): " + std::strerror(spawned));
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  std::shared_ptr<SessionWorker> worker(new SessionWorker(pid, pidfd, pair[0]));
  if (books_slot >= 0) {
    worker->books_slot_ = books_slot;
    worker->release_books_slot_ = books->release_slot;
  }

  // Ready, or why not.
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
  Status status = WaitReadable(worker->link_, kReadyTimeout)
                      ? ReceiveWithDescriptors(worker->link_, kMaxLinkMessageBytes, &bytes, &fds)
                      : Status::Disconnected("it did not open its backend within " +
                                             std::to_string(kReadyTimeout.count()) + " s");
  CloseAll(fds);
  if (status.ok()) {
    try {
      auto words = Words(bytes);
      capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
      auto message = reader.getRoot<wire::FromWorker>();
      if (message.which() != wire::FromWorker::READY) {
        status = Status::Internal("its first message was not 'ready'");
      } else if (message.getReady().size() > 0) {
        status = Status::Unimplemented(message.getReady().cStr());
      }
    } catch (const kj::Exception& e) {
      status = Status::Internal(std::string("bad message: ") + e.getDescription().cStr());
    }
  }
  if (!status.ok()) {
    ::shutdown(worker->link_, SHUT_RDWR);
    const std::string ended = worker->Reap(std::chrono::seconds(1));
    return status.WithContext("the session worker could not start" +
                              (ended.empty() ? std::string() : " (it " + ended + ")"));
  }
  *out = std::move(worker);
  return Status::Ok();
}

SessionWorker::~SessionWorker() {
  bool reaped = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    reaped = reaped_;
  }
  if (!reaped) {
    // Never supervised (a spare, or a start that failed): it ends when its
    // link closes; a worker that does not is killed.
    ::shutdown(link_, SHUT_RDWR);
    (void)Reap(std::chrono::seconds(2));
  }
  ::close(link_);
  if (pidfd_ >= 0) ::close(pidfd_);
}

Status SessionWorker::Send(std::span<const uint8_t> bytes, std::span<const int> fds) {
  std::lock_guard<std::mutex> lock(send_mutex_);
  Status sent =
      SendWithDescriptors(link_, bytes, fds, std::chrono::steady_clock::now() + kLinkSendTimeout);
  if (!sent.ok()) {
    // A worker that stops reading its link must not hold up this process:
    // its session ends (Supervise reaps it).
    FERRY_LOG(kWarning) << "session " << session_id_ << ": its worker (pid " << pid_
                        << ") takes no messages: " << sent.message() << "; ending it";
    ::shutdown(link_, SHUT_RDWR);
  }
  return sent;
}

Status SessionWorker::Start(uint64_t session_id, TransportHandover& handover,
                            std::span<const capnp::word> hello, SessionGrant grant,
                            uint64_t buffer_limit, const std::string& preemption,
                            SessionInfo basics, const RdmaServing& rdma,
                            std::span<const uint8_t> tls_secret,
                            const std::shared_ptr<const SealedImage>& arrival,
                            uint64_t arrival_offer_bytes) {
  session_id_ = session_id;
  grant_ = grant;
  const std::string token_name = basics.token_name, token_id = basics.token_id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    last_info_ = std::move(basics);
    last_info_.id = session_id_;
  }
  std::vector<uint8_t> bytes = Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
    auto start = root.initStart();
    start.setSessionId(session_id_);
    start.setHello(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(hello.data()),
                                       hello.size() * sizeof(capnp::word)));
    start.setPooled(grant.pooled);
    start.setPool(grant.pool);
    auto devices = start.initDevices(static_cast<unsigned>(grant.devices.size()));
    for (size_t i = 0; i < grant.devices.size(); ++i) {
      DeviceToWire(grant.devices[i], devices[static_cast<unsigned>(i)]);
    }
    start.setBufferLimit(buffer_limit);
    start.setPreemption(preemption);
    start.setTokenName(token_name);
    start.setTokenId(token_id);
    start.setRdmaEnabled(rdma.enabled);
    start.setRdmaUnavailable(rdma.unavailable);
    start.setRdmaDevice(rdma.device.device);
    start.setRdmaGidIndex(rdma.device.gid_index);
    start.setIdleRelease(grant.releasable);
    start.setParkAfterMs(grant.park_after.has_value()
                             ? absl::ToInt64Milliseconds(*grant.park_after)
                             : -1);
    auto t = start.initTransport();
    t.setKind(static_cast<uint8_t>(handover.kind));
    t.setPeerName(handover.peer_name);
    t.setReadPosition(handover.read_position);
    t.setWritePosition(handover.write_position);
    start.setTlsSecret(capnp::Data::Reader(tls_secret.data(), tls_secret.size()));
    if (arrival != nullptr) {
      start.setArrivalOfferBytes(arrival_offer_bytes);
      start.setArrivalBytes(arrival->size());
    }
  });
  std::vector<int> fds = handover.fds;
  if (arrival != nullptr) fds.push_back(arrival->fd());  // last, after the connection's
  FERRY_RETURN_IF_ERROR(Send(bytes, fds));
  handover.CloseFds();  // the worker has its own copies now
  return Status::Ok();
}

template <typename Answer>
std::optional<Answer> SessionWorker::Ask(
    std::map<uint64_t, std::optional<Answer>>& answers, std::chrono::seconds timeout,
    const std::function<std::vector<uint8_t>(uint64_t)>& encode) {
  uint64_t request = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (link_closed_) return std::nullopt;
    request = next_request_++;
    answers[request];  // asked
  }
  const bool sent = Send(encode(request)).ok();
  std::unique_lock<std::mutex> lock(mutex_);
  if (sent) {
    answered_.wait_for(lock, timeout,
                       [&] { return link_closed_ || answers[request].has_value(); });
  }
  std::optional<Answer> answer = std::move(answers[request]);
  answers.erase(request);
  return answer;
}

template <typename Answer>
void SessionWorker::Deliver(std::map<uint64_t, std::optional<Answer>>& answers, uint64_t request,
                            Answer answer) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto asked = answers.find(request);
  if (asked == answers.end() || asked->second.has_value()) return;
  asked->second = std::move(answer);
  answered_.notify_all();
}

std::string SessionWorker::Supervise(ModuleCache* images) {
  // Requests for room run on threads of their own: making room asks other
  // workers to park, and one of them may be asking this one at the same
  // time; this thread keeps delivering answers meanwhile.
  OneJobThread relieving;
  // Borrowing the slices again may wait in the pool's queue: not on this
  // thread either. It ends when the link closes (link_closed_).
  OneJobThread borrowing;
  for (;;) {
    std::vector<uint8_t> bytes;
    std::vector<int> fds;
    if (!ReceiveWithDescriptors(link_, kMaxLinkMessageBytes, &bytes, &fds).ok()) break;
    bool understood = true;
    try {
      auto words = Words(bytes);
      capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
      auto message = reader.getRoot<wire::FromWorker>();
      switch (message.which()) {
        case wire::FromWorker::INFO: {
          // Only answers to questions still asked are kept.
          auto answer = message.getInfo();
          std::lock_guard<std::mutex> lock(mutex_);
          auto asked = info_answers_.find(answer.getRequestId());
          if (asked != info_answers_.end() && !asked->second.has_value()) {
            last_info_ = InfoFromWire(session_id_, answer.getInfo());
            asked->second = last_info_;
            answered_.notify_all();
          }
          break;
        }
        case wire::FromWorker::FINAL: {
          std::lock_guard<std::mutex> lock(mutex_);
          last_info_ = InfoFromWire(session_id_, message.getFinal());
          final_received_ = true;
          break;
        }
        case wire::FromWorker::PARKED: {
          auto answer = message.getParked();
          Deliver(park_answers_, answer.getRequestId(),
                  std::make_pair(StatusFromWire(answer.getStatus()), answer.getBytes()));
          break;
        }
        case wire::FromWorker::RELIEVE: {
          const uint64_t request = message.getRelieve().getRequestId();
          const int device = message.getRelieve().getDevice();
          const uint64_t wanted = message.getRelieve().getBytes();
          auto answer = [this, request](uint64_t freed) {
            (void)Send(Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
              auto relieved = root.initRelieved();
              relieved.setRequestId(request);
              relieved.setBytes(freed);
            }));
          };
          // One at a time (the worker's executor asks one at a time; a
          // request while one is still being served gets 0 at once).
          if (!relieve_ || !relieving.TryStart([this, device, wanted, answer] {
                answer(relieve_(device, wanted, session_id_));
              })) {
            answer(0);
          }
          break;
        }
        case wire::FromWorker::MOVED: {
          auto answer = message.getMoved();
          Deliver(move_answers_, answer.getRequestId(), StatusFromWire(answer.getStatus()));
          break;
        }
        case wire::FromWorker::DEPARTED: {
          auto answer = message.getDeparted();
          Deliver(depart_answers_, answer.getRequestId(),
                  std::make_pair(StatusFromWire(answer.getStatus()),
                                 std::string(answer.getSummary().cStr())));
          break;
        }
        case wire::FromWorker::RELEASE_SLICES: {
          // At once, on this thread: the pool's verdict is quick, and the
          // worker's session waits for it under its execution lock, so it
          // comes before any borrowAgain of the session.
          const uint64_t request = message.getReleaseSlices();
          const Status status = slice_lease_.give_back
                                    ? slice_lease_.give_back()
                                    : Status::Unimplemented("the session has no pool to give back to");
          (void)Send(Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
            auto answer = root.initSlicesReleased();
            answer.setRequestId(request);
            StatusToWire(status, answer.initStatus());
          }));
          break;
        }
        case wire::FromWorker::BORROW_AGAIN: {
          const uint64_t request = message.getBorrowAgain();
          auto answer = [this, request](const Status& status) {
            (void)Send(Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
              auto borrowed = root.initBorrowedAgain();
              borrowed.setRequestId(request);
              StatusToWire(status, borrowed.initStatus());
            }));
          };
          // The worker's executor asks once and waits for the answer.
          if (!slice_lease_.borrow_again ||
              !borrowing.TryStart([this, answer] {
                answer(slice_lease_.borrow_again([this] {
                  std::lock_guard<std::mutex> lock(mutex_);
                  return link_closed_;
                }));
              })) {
            answer(Status::Overloaded("the session is borrowing its slices again already"));
          }
          break;
        }
        case wire::FromWorker::PREEMPTED: {
          auto answer = message.getPreempted();
          std::lock_guard<std::mutex> lock(mutex_);
          if (answer.getRequestId() == preempt_request_ && !preempt_answer_.has_value()) {
            preempt_answer_ = answer.getFreed();
            answered_.notify_all();
          }
          break;
        }
        case wire::FromWorker::FIND_IMAGE: {
          ContentHash hash{};
          uint64_t size = 0;
          std::shared_ptr<const SealedImage> image;
          const bool named = NameFromWire(message.getFindImage().getName(), &hash, &size);
          const bool found = named && images != nullptr && images->FindSealed(hash, size, &image);
          const uint64_t request = message.getFindImage().getRequestId();
          std::vector<uint8_t> answer = Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
            auto out = root.initImage();
            out.setRequestId(request);
            out.setFound(found);
          });
          const int fd = found ? image->fd() : -1;
          (void)Send(answer, found ? std::span<const int>(&fd, 1) : std::span<const int>());
          break;
        }
        case wire::FromWorker::KEEP_IMAGE: {
          ContentHash hash{};
          uint64_t size = 0;
          if (fds.size() != 1 || !NameFromWire(message.getKeepImage(), &hash, &size)) {
            understood = false;
            break;
          }
          std::shared_ptr<const SealedImage> image;
          const int fd = fds[0];
          fds.clear();
          if (images == nullptr || !SealedImage::FromFd(fd, size, &image).ok() ||
              !images->InsertSealed(hash, std::move(image))) {
            FERRY_LOG(kWarning) << "session " << session_id_ << ": its worker offered module image "
                                << ContentHashHex(hash).substr(0, 16)
                                << "… that is not what it names; not kept";
          }
          break;
        }
        default:
          understood = false;
      }
    } catch (const kj::Exception& e) {
      understood = false;
    }
    CloseAll(fds);
    if (!understood) {
      // Workers are ferryd itself: a message that makes no sense means the
      // worker's memory is not what it should be. Its session ends.
      FERRY_LOG(kWarning) << "session " << session_id_ << ": its worker (pid " << pid_
                          << ") sent a malformed message; ending it";
      ::kill(pid_, SIGKILL);
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    link_closed_ = true;
    answered_.notify_all();
  }
  relieving.Join();
  borrowing.Join();
  return Reap(kExitGrace);
}

std::string SessionWorker::Reap(std::chrono::milliseconds grace) {
  const auto deadline = std::chrono::steady_clock::now() + grace;
  bool exited = false;
  while (!exited) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (pidfd_ >= 0) {
      exited = WaitReadable(pidfd_, std::max(left, std::chrono::milliseconds(0))) && Exited();
      if (!exited) break;
    } else {
      // No pidfd (an old kernel, a seccomp profile): ask without reaping.
      exited = Exited();
      if (exited || left.count() <= 0) break;
      std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(10)));
    }
  }
  if (!exited) {
    FERRY_LOG(kWarning) << "session " << session_id_ << ": its worker (pid " << pid_
                        << ") did not exit within " << grace.count() << " ms; killing it";
  }
  // The whole process group (the worker leads its own): whatever the worker
  // may have started goes with it. The leader is not reaped yet, so the
  // group cannot be someone else's.
  ::kill(-pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  {
    // Reaped: the pid may be another process's from now on.
    std::lock_guard<std::mutex> lock(mutex_);
    reaped_ = true;
  }
  // Whatever the worker still held of the shared device memory (it died
  // without freeing, or was killed) goes back to the devices.
  if (books_slot_ >= 0 && release_books_slot_) {
    release_books_slot_(std::exchange(books_slot_, -1));
  }
  return exited ? DescribeWaitStatus(status) : "did not exit and was killed";
}

SessionInfo SessionWorker::Info() const {
  std::unique_lock<std::mutex> lock(mutex_);
  if (link_closed_) return last_info_;
  const uint64_t request = next_request_++;
  info_answers_[request];  // asked
  lock.unlock();
  std::vector<uint8_t> bytes =
      Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) { root.setInfoRequest(request); });
  const bool sent = const_cast<SessionWorker*>(this)->Send(bytes).ok();
  lock.lock();
  if (sent) {
    answered_.wait_for(lock, kInfoTimeout,
                       [&] { return link_closed_ || info_answers_[request].has_value(); });
  }
  std::optional<SessionInfo> answer = std::move(info_answers_[request]);
  info_answers_.erase(request);  // answered or not: no longer asked
  return answer.has_value() ? std::move(*answer) : last_info_;
}

bool SessionWorker::Preempt(const std::string& reason) {
  std::lock_guard<std::mutex> one_at_a_time(preempt_mutex_);
  uint64_t request = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (link_closed_) return false;
    request = preempt_request_ = next_request_++;
    preempt_answer_.reset();
  }
  std::vector<uint8_t> bytes = Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
    auto preempt = root.initPreempt();
    preempt.setRequestId(request);
    preempt.setReason(reason);
  });
  if (!Send(bytes).ok()) return false;
  std::unique_lock<std::mutex> lock(mutex_);
  // The worker waits a bounded time for its batch in progress (Session::
  // Preempt) before it answers; one that does not answer by then ends, and
  // its slices come back when it has exited.
  if (!answered_.wait_for(lock, kPreemptAnswerTimeout,
                          [&] { return link_closed_ || preempt_answer_.has_value(); })) {
    lock.unlock();
    FERRY_LOG(kWarning) << "session " << session_id_ << ": its worker did not answer the "
                        << "preemption within " << kPreemptAnswerTimeout.count() << " s; ending it";
    Stop();
    return false;
  }
  return preempt_answer_.value_or(false);
}

Status SessionWorker::Park(absl::Duration min_idle, const std::string& reason, int count_device,
                           uint64_t* parked_bytes) {
  return AskToPark(min_idle, reason, /*release=*/false, count_device, parked_bytes);
}

Status SessionWorker::ReleaseIdle(absl::Duration min_idle, uint64_t* parked_bytes) {
  *parked_bytes = 0;
  if (!slice_lease_.give_back || !slice_lease_.borrow_again) {
    return Status::Unimplemented("session " + std::to_string(session_id_) +
                                      " has no pool to give its slices back to");
  }
  return AskToPark(min_idle, "", /*release=*/true, -1, parked_bytes);
}

Status SessionWorker::AskToPark(absl::Duration min_idle, const std::string& reason, bool release,
                                int count_device, uint64_t* parked_bytes) {
  *parked_bytes = 0;
  std::optional<std::pair<Status, uint64_t>> answer =
      Ask(park_answers_, kParkAnswerTimeout, [&](uint64_t request) {
        return Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
          auto park = root.initPark();
          park.setRequestId(request);
          park.setMinIdleMs(absl::ToInt64Milliseconds(min_idle));
          park.setReason(reason);
          park.setReleaseSlices(release);
          park.setCountDevice(count_device);
        });
      });
  if (!answer.has_value()) {
    return Status::Overloaded("session " + std::to_string(session_id_) +
                              "'s worker did not answer the park request (or has ended)");
  }
  *parked_bytes = answer->second;
  return answer->first;
}

Status SessionWorker::MoveDevice(int device, const SessionDevice& to) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (link_closed_) return Status::Overloaded("the session has ended");
  }
  std::optional<Status> answer = Ask(move_answers_, kMoveAnswerTimeout, [&](uint64_t request) {
    return Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
      auto move = root.initMove();
      move.setRequestId(request);
      move.setDevice(device);
      DeviceToWire(to, move.initTarget());
    });
  });
  if (!answer.has_value()) {
    // Moved or not, nobody knows: the session cannot go on with a grant
    // that may not say where its memory is.
    FERRY_LOG(kWarning) << "session " << session_id_ << ": its worker did not answer the move "
                        << "within " << kMoveAnswerTimeout.count() << " s; ending it";
    Stop();
    return Status::Overloaded("session " + std::to_string(session_id_) +
                              "'s worker did not answer the move; the session is ended");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (answer->ok() && device >= 0 && static_cast<size_t>(device) < grant_.devices.size()) {
    grant_.devices[device] = to;
  }
  return *answer;
}

Status SessionWorker::Depart(const SessionDeparture& to, std::string* summary) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (link_closed_) return Status::Overloaded("the session has ended");
  }
  constexpr auto kWait = Session::kDepartureWait + std::chrono::seconds(10);
  std::optional<std::pair<Status, std::string>> answer =
      Ask(depart_answers_, kWait, [&](uint64_t request) {
        return Encode<wire::ToWorker>([&](wire::ToWorker::Builder root) {
          auto depart = root.initDepart();
          depart.setRequestId(request);
          depart.setAddress(to.address);
          depart.setGpu(to.gpu);
          depart.setToken(to.token);
        });
      });
  if (!answer.has_value()) {
    return Status::Overloaded("session " + std::to_string(session_id_) +
                              "'s worker did not answer the move");
  }
  *summary = answer->second;
  return answer->first;
}

bool SessionWorker::SentFinalFigures() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return final_received_;
}

void SessionWorker::Stop() { ::shutdown(link_, SHUT_RDWR); }

bool SessionWorker::Exited() const {
  siginfo_t info{};
  // WNOWAIT: only look; Reap reaps.
  return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid_;
}

// ---------------------------------------------------------------------------
// The worker's side.

namespace {

// The worker's end of the link: sends from any thread, and module image
// lookups that wait for the main process's answer (delivered by the thread
// that reads the link).
class WorkerLink final : public ModuleImages {
 public:
  explicit WorkerLink(int fd) : fd_(fd) {}

  Status Send(std::span<const uint8_t> bytes, std::span<const int> fds = {}) {
    std::lock_guard<std::mutex> lock(send_mutex_);
    return SendWithDescriptors(fd_, bytes, fds);
  }

  bool Find(const ContentHash& hash, uint64_t size, backend::HostBytes* image) override {
    uint64_t request = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return false;
      request = next_request_++;
      answers_[request] = kNotAnswered;
    }
    std::vector<uint8_t> bytes = Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
      auto find = root.initFindImage();
      find.setRequestId(request);
      NameToWire(hash, size, find.initName());
    });
    if (!Send(bytes).ok()) return false;
    std::unique_lock<std::mutex> lock(mutex_);
    answered_.wait_for(lock, kImageAnswerTimeout,
                       [&] { return closed_ || answers_[request] != kNotAnswered; });
    auto it = answers_.find(request);
    const int fd = it->second;
    answers_.erase(it);  // answered or not, no longer asked
    lock.unlock();
    if (fd < 0) return false;
    std::shared_ptr<const SealedImage> sealed;
    if (!SealedImage::FromFd(fd, size, &sealed).ok()) return false;
    *image = SealedImage::Bytes(sealed);
    return true;
  }

  void Insert(const ContentHash& hash, backend::HostBytes image) override {
    std::shared_ptr<const SealedImage> sealed;
    if (!SealedImage::FromBytes(std::span<const uint8_t>(image.data, image.size), &sealed).ok()) {
      return;
    }
    std::vector<uint8_t> bytes = Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
      NameToWire(hash, image.size, root.initKeepImage());
    });
    const int fd = sealed->fd();
    (void)Send(bytes, std::span<const int>(&fd, 1));
  }

  // The reader thread: an answer to lookup `request`; `fd` (-1: not held)
  // is owned from now on.
  void Answer(uint64_t request, int fd) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto asked = answers_.find(request);
    if (asked == answers_.end() || asked->second != kNotAnswered) {
      if (fd >= 0) ::close(fd);  // a lookup that gave up waiting
      return;
    }
    asked->second = fd;
    answered_.notify_all();
  }

  // Session::MemoryPressure over the link: asks the main process to make
  // room (FromWorker.relieve) and waits at most kRelieveAnswerTimeout.
  uint64_t Relieve(int device, uint64_t bytes) {
    uint64_t request = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return 0;
      request = next_request_++;
      relieved_[request];  // asked
    }
    std::vector<uint8_t> message = Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
      auto relieve = root.initRelieve();
      relieve.setRequestId(request);
      relieve.setDevice(device);
      relieve.setBytes(bytes);
    });
    if (!Send(message).ok()) return 0;
    std::unique_lock<std::mutex> lock(mutex_);
    answered_.wait_for(lock, kRelieveAnswerTimeout,
                       [&] { return closed_ || relieved_[request].has_value(); });
    const uint64_t freed = relieved_[request].value_or(0);
    relieved_.erase(request);
    return freed;
  }
  // The reader thread: the answer to Relieve's `request`.
  void AnswerRelieve(uint64_t request, uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto asked = relieved_.find(request);
    if (asked == relieved_.end() || asked->second.has_value()) return;
    asked->second = bytes;
    answered_.notify_all();
  }
  // Parking other sessions waits for each of them (SessionWorker::
  // kParkAnswerTimeout) and then some.
  static constexpr std::chrono::seconds kRelieveAnswerTimeout{40};

  // Session::SliceLease over the link: asks the main process to give the
  // session's slices back (FromWorker.releaseSlices) or to borrow them again
  // (FromWorker.borrowAgain) and waits for its answer, however long the
  // pool's queue takes, until the link closes or `gone` (looked at every
  // kGonePoll).
  enum class PoolAsk { kRelease, kBorrowAgain };
  Status AskPool(PoolAsk ask, const std::function<bool()>& gone) {
    uint64_t request = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return Status::Disconnected("ferryd's main process is gone");
      request = next_request_++;
      pool_answers_[request];  // asked
    }
    std::vector<uint8_t> message = Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
      if (ask == PoolAsk::kRelease) {
        root.setReleaseSlices(request);
      } else {
        root.setBorrowAgain(request);
      }
    });
    Status status = Send(message);
    std::unique_lock<std::mutex> lock(mutex_);
    while (status.ok() && !closed_ && !pool_answers_[request].has_value()) {
      lock.unlock();
      const bool ended = gone();
      lock.lock();
      if (ended) {
        status = Status::Disconnected("the session ended while it waited for the pool");
        break;
      }
      answered_.wait_for(lock, kGonePoll);
    }
    if (status.ok()) {
      status = pool_answers_[request].has_value()
                   ? *pool_answers_[request]
                   : Status::Disconnected("ferryd's main process is gone");
    }
    pool_answers_.erase(request);
    return status;
  }
  // The reader thread: the answer to AskPool's `request`.
  void AnswerPool(uint64_t request, Status status) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto asked = pool_answers_.find(request);
    if (asked == pool_answers_.end() || asked->second.has_value()) return;
    asked->second = std::move(status);
    answered_.notify_all();
  }
  static constexpr std::chrono::milliseconds kGonePoll{100};

  void Closed() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    answered_.notify_all();
  }

  ~WorkerLink() override {
    for (auto& [request, fd] : answers_) {
      if (fd >= 0) ::close(fd);
    }
  }

  // answers_' value while a lookup waits; -1 answers "not held".
  static constexpr int kNotAnswered = -2;

 private:
  const int fd_;
  std::mutex send_mutex_;
  std::mutex mutex_;
  std::condition_variable answered_;
  uint64_t next_request_ = 1;
  // Lookups still asked: request -> descriptor (-1: not held; kNotAnswered).
  std::map<uint64_t, int> answers_;
  // Relieve requests still asked (empty until answered).
  std::map<uint64_t, std::optional<uint64_t>> relieved_;
  // AskPool requests still asked (empty until answered).
  std::map<uint64_t, std::optional<Status>> pool_answers_;
  bool closed_ = false;
};

}  // namespace

namespace {

// Whether `a` and `b` are equal, in time that does not depend on where they
// differ.
bool SameSecret(capnp::Data::Reader a, capnp::Data::Reader b) {
  if (a.size() != b.size() || a.size() == 0) return false;
  uint8_t difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= a[i] ^ b[i];
  return difference == 0;
}

// The worker's side of a TLS hand-over: a new TLS session with the client on
// `handover`'s socket, and the client's Hello again, carrying `secret`.
Status AcceptHandedOverTls(TransportHandover handover, const TlsContext& tls,
                           capnp::Data::Reader secret, std::unique_ptr<Transport>* out) {
  if (handover.fds.size() != 1) return Status::InvalidArgument("no socket came with the start");
  const auto deadline = std::chrono::steady_clock::now() + kTlsHandoverTimeout;
  const int fd = handover.fds[0];
  handover.fds.clear();
  bool plain = false;
  std::unique_ptr<Transport> transport;
  FERRY_RETURN_IF_ERROR(AcceptTls(fd, handover.peer_name, tls, deadline, &transport, &plain));
  if (plain) return Status::PermissionDenied("the client did not start a new TLS session");
  transport->SetReadDeadline(deadline);
  Frame frame;
  FERRY_RETURN_IF_ERROR(ReadFrame(*transport, &frame, kHandshakeFrameLimits));
  transport->SetReadDeadline(kNoDeadline);
  if (frame.kind != wire::FrameKind::HELLO) {
    return Status::PermissionDenied("the new TLS session did not start with a Hello");
  }
  try {
    capnp::FlatArrayMessageReader reader(frame.words, PeerReaderOptions());
    if (!SameSecret(reader.getRoot<wire::Hello>().getHandoverSecret(), secret)) {
      return Status::PermissionDenied(
          "the Hello in the new TLS session lacks the hand-over secret");
    }
  } catch (const kj::Exception& e) {
    return Status::Malformed(std::string("bad Hello after the hand-over: ") +
                             e.getDescription().cStr());
  }
  *out = std::move(transport);
  return Status::Ok();
}

}  // namespace

int RunSessionWorker(int link, backend::GpuBackend* backend, const Status& backend_status,
                     std::shared_ptr<TlsContext> tls) {
  ::prctl(PR_SET_NAME, "ferryd-idle");
  // No ptrace, no /proc/PID/mem, no core file of a tenant's memory.
  ::prctl(PR_SET_DUMPABLE, 0);
  WorkerLink worker_link(link);
  {
    std::vector<uint8_t> ready = Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
      root.setReady(backend != nullptr ? "" : backend_status.message());
    });
    if (!worker_link.Send(ready).ok() || backend == nullptr) return 1;
  }
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
  if (!ReceiveWithDescriptors(link, kMaxLinkMessageBytes, &bytes, &fds).ok()) {
    return 0;  // ferryd gave up on this session before handing it over
  }
  auto start_words = Words(bytes);
  std::shared_ptr<Session> session;
  kj::Array<capnp::word> hello_words;
  std::unique_ptr<capnp::FlatArrayMessageReader> hello_reader;
  std::string preemption;
  try {
    capnp::FlatArrayMessageReader reader(start_words, PeerReaderOptions());
    auto message = reader.getRoot<wire::ToWorker>();
    if (message.which() != wire::ToWorker::START) {
      CloseAll(fds);
      FERRY_LOG(kError) << "session worker: the first message was not the start";
      return 1;
    }
    auto start = message.getStart();
    SetLogProgram("ferryd-session-" + std::to_string(start.getSessionId()));
    // ps and /proc/PID/comm tell a session's worker ("ferryd-s12") from a
    // spare ("ferryd-idle").
    ::prctl(PR_SET_NAME, ("ferryd-s" + std::to_string(start.getSessionId())).c_str());
    // A session from another server: its offer and bytes, the last descriptor.
    std::optional<SessionArrival> arrival;
    if (start.getArrivalBytes() > 0) {
      if (fds.empty()) {
        FERRY_LOG(kError) << "session worker: the start names an arrival but brings no memfd";
        return 1;
      }
      std::shared_ptr<const SealedImage> sealed;
      const int fd = fds.back();
      fds.pop_back();
      Status mapped = SealedImage::FromFd(fd, start.getArrivalBytes(), &sealed);
      const uint64_t offer_bytes = start.getArrivalOfferBytes();
      if (mapped.ok() && (offer_bytes % sizeof(capnp::word) != 0 || offer_bytes > sealed->size())) {
        mapped = Status::Malformed("the arrival's offer does not fit its memfd");
      }
      if (!mapped.ok()) {
        CloseAll(fds);
        FERRY_LOG(kError) << "session worker: " << mapped.message();
        return 1;
      }
      SessionArrival a;
      a.offer = kj::heapArray<capnp::word>(offer_bytes / sizeof(capnp::word));
      std::memcpy(a.offer.begin(), sealed->data(), offer_bytes);
      a.bulk = backend::HostBytes{sealed, sealed->data() + offer_bytes,
                                  sealed->size() - offer_bytes};
      arrival = std::move(a);
    }
    TransportHandover handover;
    handover.kind = static_cast<TransportHandover::Kind>(start.getTransport().getKind());
    handover.peer_name = start.getTransport().getPeerName().cStr();
    handover.read_position = start.getTransport().getReadPosition();
    handover.write_position = start.getTransport().getWritePosition();
    handover.fds = std::move(fds);
    std::unique_ptr<Transport> transport;
    Status adopted;
    if (handover.kind == TransportHandover::Kind::kTlsRestart) {
      adopted =
          tls != nullptr
              ? AcceptHandedOverTls(std::move(handover), *tls, start.getTlsSecret(), &transport)
              : Status::Internal("a TLS connection came, but this worker has no certificate");
    } else {
      adopted = AdoptTransport(std::move(handover), &transport);
    }
    if (!adopted.ok()) {
      FERRY_LOG(kError) << "session worker: cannot take over the connection: " << adopted.message();
      return 1;
    }
    auto hello = start.getHello();
    hello_words = kj::heapArray<capnp::word>(hello.size() / sizeof(capnp::word));
    std::memcpy(hello_words.begin(), hello.begin(), hello_words.size() * sizeof(capnp::word));
    hello_reader =
        std::make_unique<capnp::FlatArrayMessageReader>(hello_words, PeerReaderOptions());
    SessionGrant grant;
    grant.pooled = start.getPooled();
    grant.pool = start.getPool().cStr();
    for (auto d : start.getDevices()) grant.devices.push_back(DeviceFromWire(d));
    // As ferryd's main process chose them (it alone knows --compute-sharing).
    grant.mechanisms_chosen = true;
    if (start.getParkAfterMs() >= 0) grant.park_after = absl::Milliseconds(start.getParkAfterMs());
    grant.releasable = start.getIdleRelease();
    session = std::make_shared<Session>(start.getSessionId(), std::move(transport), *backend,
                                        hello_reader->getRoot<wire::Hello>(), std::move(grant),
                                        &worker_link);
    session->SetBufferLimit(start.getBufferLimit());
    session->SetToken(start.getTokenName().cStr(), start.getTokenId().cStr());
    if (arrival.has_value()) session->SetArrival(std::move(*arrival));
    RdmaServing rdma;
    rdma.enabled = start.getRdmaEnabled();
    rdma.unavailable = start.getRdmaUnavailable().cStr();
    rdma.device.device = start.getRdmaDevice().cStr();
    rdma.device.gid_index = start.getRdmaGidIndex();
    session->SetRdma(std::move(rdma));
    session->SetMemoryPressure([&worker_link](int device, uint64_t bytes, uint64_t) {
      return worker_link.Relieve(device, bytes);
    });
    if (start.getIdleRelease()) {
      session->SetSliceLease(Session::SliceLease{
          [&worker_link] {
            return worker_link.AskPool(WorkerLink::PoolAsk::kRelease, [] { return false; });
          },
          [&worker_link](const std::function<bool()>& gone) {
            return worker_link.AskPool(WorkerLink::PoolAsk::kBorrowAgain, gone);
          }});
    }
    preemption = start.getPreemption().cStr();
  } catch (const kj::Exception& e) {
    FERRY_LOG(kError) << "session worker: bad start message: " << e.getDescription().cStr();
    return 1;
  }
  if (!preemption.empty()) session->Preempt(preemption);

  // The link's reader: the main process's requests, until it closes the link.
  std::mutex preempts_mutex;
  std::vector<std::thread> preempts;
  OneJobThread parking;  // park requests, one at a time
  OneJobThread moving;   // move requests, one at a time
  OneJobThread departing;  // moves to another server, one at a time
  std::thread reader([&] {
    for (;;) {
      std::vector<uint8_t> in;
      std::vector<int> in_fds;
      if (!ReceiveWithDescriptors(link, kMaxLinkMessageBytes, &in, &in_fds).ok()) break;
      try {
        auto words = Words(in);
        capnp::FlatArrayMessageReader reader(words, PeerReaderOptions());
        auto message = reader.getRoot<wire::ToWorker>();
        switch (message.which()) {
          case wire::ToWorker::PREEMPT: {
            // Preempt waits for the batch in progress, which may itself wait
            // for an image answer this thread delivers: not here.
            std::string reason = message.getPreempt().getReason().cStr();
            const uint64_t request = message.getPreempt().getRequestId();
            std::lock_guard<std::mutex> lock(preempts_mutex);
            preempts.emplace_back([&, reason, request] {
              const bool freed = session->Preempt(reason);
              (void)worker_link.Send(Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
                auto answer = root.initPreempted();
                answer.setRequestId(request);
                answer.setFreed(freed);
              }));
            });
            break;
          }
          case wire::ToWorker::PARK: {
            // Park waits (briefly) for the executor: not on this thread,
            // which delivers the answers the executor may be waiting for.
            const absl::Duration min_idle = absl::Milliseconds(message.getPark().getMinIdleMs());
            std::string reason = message.getPark().getReason().cStr();
            const uint64_t request = message.getPark().getRequestId();
            auto answer = [&worker_link, request](const Status& status, uint64_t parked) {
              (void)worker_link.Send(Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
                auto parked_answer = root.initParked();
                parked_answer.setRequestId(request);
                StatusToWire(status, parked_answer.initStatus());
                parked_answer.setBytes(parked);
              }));
            };
            const bool release = message.getPark().getReleaseSlices();
            const int count_device = message.getPark().getCountDevice();
            if (!parking.TryStart([&session, min_idle, reason, release, count_device, answer] {
                  uint64_t parked = 0;
                  const Status status =
                      release ? session->ReleaseIdle(min_idle, &parked)
                              : session->Park(min_idle, reason, count_device, &parked);
                  answer(status, parked);
                })) {
              answer(Status::Overloaded("the session is being parked already"), 0);
            }
            break;
          }
          case wire::ToWorker::MOVE: {
            // MoveDevice waits for the batch in execution, which may wait
            // for an answer this thread delivers: not here.
            const uint64_t request = message.getMove().getRequestId();
            const int device = message.getMove().getDevice();
            const SessionDevice target = DeviceFromWire(message.getMove().getTarget());
            auto answer = [&worker_link, request](const Status& status) {
              (void)worker_link.Send(Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
                auto moved = root.initMoved();
                moved.setRequestId(request);
                StatusToWire(status, moved.initStatus());
              }));
            };
            if (!moving.TryStart([&session, device, target, answer] {
                  answer(session->MoveDevice(device, target));
                })) {
              answer(Status::Overloaded("the session is moving already"));
            }
            break;
          }
          case wire::ToWorker::DEPART: {
            // Depart waits for the client's marker, a call this process's
            // executor runs: not on this thread.
            auto depart = message.getDepart();
            const uint64_t request = depart.getRequestId();
            SessionDeparture to;
            to.address = depart.getAddress().cStr();
            to.gpu = depart.getGpu();
            to.token = depart.getToken().cStr();
            auto answer = [&worker_link, request](const Status& status, const std::string& summary) {
              (void)worker_link.Send(Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
                auto departed = root.initDeparted();
                departed.setRequestId(request);
                StatusToWire(status, departed.initStatus());
                departed.setSummary(summary);
              }));
            };
            if (!departing.TryStart([&session, to, answer] {
                  std::string summary;
                  const Status status = session->Depart(to, &summary);
                  answer(status, summary);
                })) {
              answer(Status::Overloaded("the session is moving already"), "");
            }
            break;
          }
          case wire::ToWorker::BORROWED_AGAIN: {
            worker_link.AnswerPool(message.getBorrowedAgain().getRequestId(),
                                   StatusFromWire(message.getBorrowedAgain().getStatus()));
            break;
          }
          case wire::ToWorker::SLICES_RELEASED: {
            worker_link.AnswerPool(message.getSlicesReleased().getRequestId(),
                                   StatusFromWire(message.getSlicesReleased().getStatus()));
            break;
          }
          case wire::ToWorker::RELIEVED: {
            worker_link.AnswerRelieve(message.getRelieved().getRequestId(),
                                      message.getRelieved().getBytes());
            break;
          }
          case wire::ToWorker::INFO_REQUEST: {
            const uint64_t request = message.getInfoRequest();
            const SessionInfo info = session->Info();
            (void)worker_link.Send(Encode<wire::FromWorker>([&](wire::FromWorker::Builder root) {
              auto answer = root.initInfo();
              answer.setRequestId(request);
              InfoToWire(info, answer.initInfo());
            }));
            break;
          }
          case wire::ToWorker::IMAGE: {
            auto answer = message.getImage();
            int fd = -1;
            if (answer.getFound() && in_fds.size() == 1) {
              fd = in_fds[0];
              in_fds.clear();
            }
            worker_link.Answer(answer.getRequestId(), fd);
            break;
          }
          default:
            break;
        }
      } catch (const kj::Exception& e) {
        FERRY_LOG(kWarning) << "session worker: bad message from ferryd: "
                            << e.getDescription().cStr();
      }
      CloseAll(in_fds);
    }
    // ferryd closed the link (it stops, or died): end as a closed
    // connection would.
    worker_link.Closed();
    session->Stop();
  });

  session->Run();
  departing.Join();  // its answer goes before the final figures and the link's end
  {
    std::lock_guard<std::mutex> lock(preempts_mutex);
    for (std::thread& t : preempts) t.join();
    preempts.clear();
  }
  // The session's last figures, for its end log line in the main process.
  (void)worker_link.Send(Encode<wire::FromWorker>(
      [&](wire::FromWorker::Builder root) { InfoToWire(session->Info(), root.initFinal()); }));
  // Done: closing the link tells the main process, which reaps this process
  // and returns the session's slices once it has exited.
  ::shutdown(link, SHUT_RDWR);
  reader.join();
  parking.Join();
  moving.Join();
  departing.Join();  // a depart the reader started after the first join
  {
    std::lock_guard<std::mutex> lock(preempts_mutex);
    for (std::thread& t : preempts) t.join();
  }
  session.reset();
  return 0;
}

}  // namespace ferry::server
