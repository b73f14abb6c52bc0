// Connection: the client's side of one ferryd session.
//
// Every driver call becomes one Call message. Post() queues a call that needs
// no reply (README.md invariant 3): it is serialised at once into the pending
// batch (no allocation, no system call), and the batch goes out as one frame
// when a call that waits is issued, when it grows large, or after a short
// delay (the flusher thread), so queued work always reaches the server.
// Call() sends a call and blocks the calling thread until its reply; other
// threads keep posting and calling meanwhile, because replies are matched to
// waiters by seq.
//
// Reading replies (leader/follower): a thread that waits for a reply reads
// the connection itself while no other thread does, so a synchronous call
// costs no thread hop; it hands any reply that belongs to another waiter to
// that waiter, and when it has its own, it leaves the reader role to the next
// waiter. A background reader takes the role only while asynchronous copies
// (PostExpectingBytes) are outstanding and no caller reads, so their bytes
// land without anyone waiting.
//
// Order (invariant 4): seq numbers are assigned under the send lock in the
// order threads queue their calls, and the server executes them in that order.
//
// Asynchronous device-to-host copies (PostExpectingBytes) land in the caller's
// buffer when their reply arrives; WaitForEarlierCopies lets a synchronising
// call return only after every such copy issued before it has landed, and
// WaitForEarlierCopiesOn lets a query that found a stream's work done return
// only after that stream's copies landed (the server may report the stream
// done before the copies' replies, which travel separately, have arrived).
//
// Host callbacks (PostHostGate): the server answers a hostGate call when its
// stream reaches the gate and holds the stream there; the reader hands the
// program's function to the host-callback thread, which runs it and then
// opens the gate with a gateOpen frame. Calls that would wait are refused on
// that thread (CUDA forbids CUDA calls in host callbacks; waiting there for
// work behind the gate would never end). Graph host nodes use the same
// path: a graph launch carries one gate per host node (PostHostGates), and
// each gateReached names the registered function to run
// (RegisterHostFunction).
//
// Once the connection breaks, every call fails with the same Disconnected
// status, which names the server. A server that stays silent past the call
// deadline (ConnectionOptions::call_timeout) breaks it too: the watchdog
// thread fails the connection. The deadline measures silence: the client asks
// for keepalive frames (a quarter of the deadline apart) while the server
// works on a reply it owes, and a reply is overdue only once the deadline has
// passed both since its call was sent and since the last frame came. When
// the server takes the session's devices away (a notice: a Reply with seq 0,
// after a preemption), every call fails from then on with the notice's
// status, logged once.
//
// Thread-safety: all methods are safe from any thread.
#pragma once

#include <capnp/message.h>

#include "absl/functional/function_ref.h"

#include "absl/base/thread_annotations.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/host_callback_thread.h"
#include "common/rdma/rdma_connector.h"
#include "common/status.h"
#include "common/transport.h"
#include "schema/ferry.capnp.h"

namespace ferry::client {

// The server-side stream a call is queued on, as the wire names it: context
// id and stream id (0 = the context's legacy stream).
struct StreamKey {
  uint64_t ctx = 0;
  uint64_t stream = 0;
  bool operator==(const StreamKey&) const = default;
};

// Bytes a call sends (the caller's memory).
struct OutBytes {
  const void* data = nullptr;
  uint64_t size = 0;
};
// Where a reply's bulk bytes go (the caller's memory).
struct InBytes {
  void* data = nullptr;
  uint64_t size = 0;
};

struct ConnectionOptions {
  // How long the flusher lets posts accumulate before it sends them.
  std::chrono::microseconds flush_delay{20};
  // The call deadline (FERRY_CALL_TIMEOUT): a reply awaited this long
  // without a frame from the server (or a write blocked that long) means the
  // server is stopped or unreachable; the connection then fails, as a lost one does, so every
  // call reports CUDA_ERROR_DEVICE_UNAVAILABLE instead of hanging. It also
  // bounds each wait for a handshake reply (plus the borrow's wait while
  // queued). 0: no deadline.
  std::chrono::milliseconds call_timeout = kDefaultCallTimeout;
  static constexpr std::chrono::milliseconds kDefaultCallTimeout{600000};
  // What carries the stream after the handshake, over a TCP connection
  // (FERRY_TRANSPORT; an rdma:// address means kRdma):
  //   kAuto: shared memory when ferryd runs on this host (same kernel, and
  //          its socket reachable from this network namespace; plain TCP
  //          or TLS); else RDMA when this host and ferryd both have a usable
  //          device (plain TCP only); else TCP. Said once in the log;
  //   kTcp:  TCP (or TLS);
  //   kRdma: RDMA or no connection (the reason in the error);
  //   kShm:  shared memory or no connection (the reason in the error); a
  //          unix: address is shared memory already.
  enum class Carrier { kAuto, kTcp, kRdma, kShm };
  Carrier carrier = Carrier::kAuto;
  rdma::DeviceChoice rdma_device;         // FERRY_RDMA_DEVICE, FERRY_RDMA_GID_INDEX
  rdma::RdmaOptions rdma_options;
  const rdma::Verbs* rdma_verbs = nullptr;  // null: the system's libibverbs (tests give a fake)
  // The kernel boot id the shared-memory offer carries (Hello.shm); "" =
  // this kernel's (common/shm_rendezvous.h BootId). Tests give another to
  // play a client on another host.
  std::string boot_id;
  // Tests only: called with the rendezvous socket ferryd names
  // (HelloReply.shm) before the client connects to it; returns the name to
  // connect to instead (a test connects strangers first, or names a socket
  // nobody listens on). Unset: ferryd's.
  std::function<std::string(const std::string&)> TEST_shm_rendezvous;
  // Migration between servers (schema MigrationOffer): how to reach another
  // ferryd ("HOST:PORT" or "unix:PATH") the way this client reaches its
  // first (TLS as configured). Set: the Hello says the client follows its
  // session when ferryd moves it to another server (Hello.followsMoves).
  // Unset: ferryd does not move this client's session.
  std::function<Status(const std::string& address, std::unique_ptr<Transport>* out)> connect_to;
};

// Whether a call may be sent the way it is: the schema's description of each
// call ($waits) says whether it waits for its reply, and Post (no reply),
// Call and PostExpectingBytes (reply) and PostHostGate (a gate) must agree
// with it. A disagreement is a bug in the client: a debug build aborts; a
// release build logs it and refuses the call with an Internal status, before
// anything is sent. A table lookup: cheap enough for every call.
Status CheckWaits(wire::Call::Which which, bool wants_reply, bool gate);

class Connection {
 public:
  // Fills in the call's arguments; called once, before the call returns.
  using Fill = absl::FunctionRef<void(wire::Call::Builder)>;
  // Reads a successful reply on the calling thread.
  using OnReply = std::function<Status(wire::Reply::Reader)>;
  // A host callback's body, run on the host-callback thread once the stream
  // reached its gate. `stream_failed`: the stream's work failed before the
  // gate, or the connection was lost, and `status` says how; otherwise
  // `status` is OK or the asynchronous error the session had latched.
  using HostFunction = std::function<void(const Status& status, bool stream_failed)>;

  // What the client asks of a server with pools (FERRY_POOL, FERRY_GPUS,
  // FERRY_WAIT; a server without pools ignores them), and the token that
  // allows it (FERRY_TOKEN or FERRY_TOKEN_FILE; a server without a token
  // file ignores it).
  struct Borrow {
    std::string pool;  // "" = the server's default pool
    uint32_t gpus = 1;
    uint64_t wait_ms = 0;  // 0 = do not queue
    std::string token;     // "" = none
    uint32_t redirects = 0;  // times this borrow was sent on (HelloReply.redirect)
    std::string queue_ticket;  // its place in a cluster's queue, from a redirect
    // One part of a borrow split across servers, more parts to follow: the
    // server leaves the queue ticket for the next part (Hello.ticketStays).
    bool ticket_stays = false;
    // Migration between servers: not empty, this Hello resumes the session
    // that ferryd moved to the server it goes to (Hello.resumeTicket).
    std::string resume_ticket;
  };
  // One server's share of a borrow split across a cluster's servers.
  struct BorrowPart {
    std::string address;  // HOST:PORT
    uint32_t gpus = 0;
  };
  // Where a cluster's ferryd sends a client (HelloReply.redirect).
  struct Redirect {
    std::string address;  // "" = not sent on
    std::string pool;     // the pool to borrow from there
    std::string queue_ticket;
    // Not empty: no one server has room for the whole borrow; borrow these
    // parts, in order (HelloReply.parts). `address` is empty then.
    std::vector<BorrowPart> parts;
  };

  // Connects, says Hello, and keeps the final HelloReply in `hello_reply`.
  // While the server queues the borrow, each interim reply is logged with
  // the queue position. A server of a cluster pool may send the client on
  // instead (HelloReply.redirect): then `*redirect` says where, `*out`
  // stays empty and the result is OK. Without `redirect` the Hello does not
  // offer to follow, so no server sends the client on.
  static Status Open(std::unique_ptr<Transport> transport, std::string server_name,
                     const Borrow& borrow, std::unique_ptr<Connection>* out,
                     std::unique_ptr<capnp::MessageReader>* hello_reply,
                     kj::Array<capnp::word>* hello_words, ConnectionOptions options = {},
                     Redirect* redirect = nullptr);
  ~Connection();

  // Open's handshake on `*transport`, which it may replace (a move to shared
  // memory or RDMA): the Hello for `borrow`, its replies, and the carrier's
  // set-up. With `redirect` filled, the server sent the client on.
  static Status Handshake(std::unique_ptr<Transport>* transport, const std::string& server_name,
                          const Borrow& borrow, const ConnectionOptions& options,
                          Redirect* redirect, std::unique_ptr<capnp::MessageReader>* hello_reply,
                          kj::Array<capnp::word>* hello_words);

  // RDMA set-up around the handshake (common/rdma/rdma_connector.h): the
  // connector whose endpoint the Hello offers, or why there is none; then,
  // with ferryd's answer, the stream moved to RDMA (or left on TCP when
  // ferryd refuses and RDMA is not `required`).
  static Status PrepareRdma(Transport& transport, const ConnectionOptions& options,
                            std::unique_ptr<rdma::RdmaConnector>* out);
  static Status FinishRdma(std::unique_ptr<rdma::RdmaConnector> connector,
                           wire::HelloReply::Reader reply, const std::string& server_name,
                           bool required, const ConnectionOptions& options,
                           std::unique_ptr<Transport>* transport);
  // Shared memory for a client on ferryd's host (common/shm_rendezvous.h):
  // the boot id the Hello offers, or why there is no offer (a transport
  // other than TCP or TLS, an unreadable boot id); then, with ferryd's
  // answer, the stream moved to shared memory (`*transport` replaced) or
  // left where it is (ferryd refuses, or its socket cannot be reached) — unless it is
  // `required`.
  static Status PrepareShm(const Transport& transport, const ConnectionOptions& options,
                           std::string* boot_id);
  static Status FinishShm(wire::HelloReply::Reader reply, const std::string& server_name,
                          bool required, const ConnectionOptions& options,
                          std::unique_ptr<Transport>* transport);

  // Queues a call without waiting. `bulk` is taken before return (copied into
  // the batch, or written to the socket when large). `seq_out`, when given,
  // receives the call's seq. Post, Call, PostExpectingBytes and PostHostGate
  // refuse a call whose schema description disagrees (CheckWaits).
  Status Post(const Fill& fill, OutBytes bulk = {}, uint64_t* seq_out = nullptr);
  // Sends a call and waits for its reply. A reply's bulk bytes are read into
  // `reply_bulk` (which must be exactly as large as the server sends).
  // `seq_out`, when given, receives the call's seq.
  Status Call(const Fill& fill, OutBytes bulk = {}, InBytes reply_bulk = {},
              const OnReply& on_reply = nullptr, uint64_t* seq_out = nullptr);
  // Sends a call, queued on `stream`, whose reply carries bytes for
  // `reply_bulk`, without waiting. An error in that reply is reported by the
  // next call that waits.
  Status PostExpectingBytes(const Fill& fill, InBytes reply_bulk, StreamKey stream);
  // Waits until every PostExpectingBytes issued before this call (by seq)
  // has landed; returns the first error among them, if any.
  Status WaitForEarlierCopies(uint64_t before_seq);
  // Waits until every PostExpectingBytes queued on `stream` with a seq below
  // `before_seq` has landed, and returns as WaitForEarlierCopies does. Meant
  // for after the server said the stream reached `before_seq`: those copies
  // are done, so this waits only for their replies to arrive, never for
  // work on other streams.
  // Also waits for the copies `stream` came to depend on through stream
  // waits issued before `before_seq` (AddCopyDependencies).
  Status WaitForEarlierCopiesOn(StreamKey stream, uint64_t before_seq);

  // Copies one stream's work depends on through event waits. A record of an
  // event on stream A at seq r captures CopiesBefore(A, r); a wait of stream B
  // for that event (call `since_seq`) adds the capture to B; a query of B that
  // found B's work done up to a seq past `since_seq` then also waits for those
  // copies' bytes (WaitForEarlierCopiesOn), and so does a query of the event
  // (WaitForCopies). Dependencies are transitive: A's own dependencies are
  // part of its captures.
  //
  // The asynchronous copies still in flight that work queued on `stream`
  // before `before_seq` depends on: the stream's own copies below
  // `before_seq` and those added to it by waits issued before `before_seq`.
  std::vector<uint64_t> CopiesBefore(StreamKey stream, uint64_t before_seq);
  // From the call `since_seq` (a stream wait) on, work on `stream` depends on
  // the copies `copies` (a capture of CopiesBefore). Copies landed already
  // are dropped.
  void AddCopyDependencies(StreamKey stream, uint64_t since_seq,
                           const std::vector<uint64_t>& copies);
  // Waits until each of `copies` landed; returns as WaitForEarlierCopies does.
  Status WaitForCopies(const std::vector<uint64_t>& copies);
  // Sends a hostGate call without waiting. `fn` runs once, as HostFunction
  // says, and the gate is opened after it returns. If the server refuses the
  // gate (a bad stream), `fn` never runs and the error is reported by the
  // next call that waits, like any asynchronous error.
  Status PostHostGate(const Fill& fill, HostFunction fn);
  // A hostGate that ferry opens itself, with no program function. `reached`
  // is called exactly once: `reached(OK, open)` when the server holds the
  // stream there — `open()` lets it go (call it once, from any thread, at
  // any later time) — or `reached(error, {})` when the gate was refused by
  // the server, never sent, or lost with the connection (broken or revoked:
  // no stream is held then). It runs on whichever thread learns it: the
  // reader, a thread inside Fail or Revoke (possibly holding this
  // connection's send lock), or the caller of PostOpenableGate; so it must
  // neither block nor call into this connection. Reaching and opening a gate
  // bypass the session's executor, so a wait built on gates cannot queue
  // behind the session's calls.
  using GateReached = std::function<void(Status status, std::function<void()> open)>;
  Status PostOpenableGate(const Fill& fill, GateReached reached);
  // graph host nodes: `fn` may be run any number of times from now on, once
  // for each gate that names `id` (a client-chosen id, never 0). Kept for the
  // connection's life: executable graphs may name it as long as they live.
  void RegisterHostFunction(uint64_t id, HostFunction fn);
  // Sends a call that carries `gates` host gates (graphLaunchHostNodes)
  // without waiting. Each gate, once reached, runs the registered function
  // its gateReached names and then opens; a refused call runs none, and its
  // error is reported by the next call that waits.
  Status PostHostGates(const Fill& fill, uint32_t gates);
  // The seq the next call will get.
  uint64_t NextSeq();
  // Sends whatever is queued.
  Status Flush();

  const std::string& server_name() const { return server_name_; }
  // What carries the stream (Transport::Description: "tcp", "tls",
  // "shm, ring 8 MiB", "rdma ..."); a move to another server changes it.
  std::string transport_description() const {
    std::shared_lock<std::shared_mutex> lock(transport_mutex_);
    return transport_->Description();
  }
  // Page-locked host memory of the program: a transport that can send from
  // it without a copy (RDMA) registers it on first use. Forget it before it
  // goes. Any thread.
  void NoteHostMemory(const void* address, size_t size) {
    std::shared_lock<std::shared_mutex> lock(transport_mutex_);
    transport_->RegisterHostMemory(address, size);
  }
  void ForgetHostMemory(const void* address) {
    std::shared_lock<std::shared_mutex> lock(transport_mutex_);
    transport_->UnregisterHostMemory(address);
  }
  // OK while the connection is up and the session has its devices.
  Status health();

 private:
  struct Waiter {
    bool done = false;
    Status status;
    kj::Array<capnp::word> words;  // the reply message
    InBytes bulk;
    bool async = false;                          // PostExpectingBytes: no thread waits on it
    StreamKey stream;                            // PostExpectingBytes: the stream it is queued on
    std::chrono::steady_clock::time_point sent;  // when its call was queued (the deadline)
  };

  Connection(std::unique_ptr<Transport> transport, std::string server_name,
             ConnectionOptions options, Borrow borrow);
  // The server's notice that it moves the session to another server
  // (Reply.moveNotice; schema MigrationOffer), on the reader, which keeps
  // the role: sends moveMarker after everything queued and holds the
  // program's calls (moving_; host gates still open, so queued work
  // reaches its end), reads on until the marker's answer, and then either
  // connects to the target with the ticket and carries on there (the old
  // connection closes), or stays (the source refused, or the target did:
  // moveRefused tells the source why). The calls in flight are answered
  // either way. A second notice while one move runs is ignored.
  void FollowMove();
  // Gives `call` (the root of `message`) the next seq and serialises it into
  // the batch; send_mutex_ held.
  uint64_t AppendLocked(wire::Call::Builder call, capnp::MessageBuilder& message, bool wants_reply,
                        uint64_t bulk_bytes);
  Status FlushLocked();
  // Writes the batch (and `extra`, the last call's bulk, when given) as one
  // frame and empties it; send_mutex_ held.
  Status WriteBatchLocked(OutBytes extra);
  // Queues (and, when it must wait or is large, sends) one call. A waiter is
  // registered before the call leaves: `waiter` (owned by the caller, who
  // waits on it) or `async_waiter` (owned by the connection from then on).
  // The host gates of a call not reached yet: a hostGate call's one, whose
  // function is `fn`, or the `left` gates of a graph launch, each running
  // the registered function its gateReached names (`fn` empty).
  struct PendingGates {
    HostFunction fn;
    uint32_t left = 0;
    GateReached reached;  // set instead of `fn` (PostOpenableGate)
  };
  // `gates`, when it has any, is registered as this call's gates (hostGate,
  // graphLaunchHostNodes), owned by the connection from then on.
  Status Send(Fill fill, OutBytes bulk, bool wants_reply, Waiter* waiter,
              std::unique_ptr<Waiter> async_waiter, uint64_t* seq_out, PendingGates gates);
  // Hands a reached gate's function to the host-callback thread.
  void RunHostFunction(uint64_t seq, uint32_t index, HostFunction fn, Status status, bool held,
                       bool stream_failed);
  // Sends a gateOpen frame for gate `index` of call `seq`.
  Status OpenGate(uint64_t seq, uint32_t index);
  // Returns once `done()` holds or the connection broke, reading replies on
  // the calling thread whenever no other thread reads. `lock` holds
  // reply_mutex_ on entry and on return.
  void WaitUntil(std::unique_lock<std::mutex>& lock, absl::FunctionRef<bool()> done);
  // Reads one reply frame and hands it to its waiter (or its host function
  // to the host-callback thread); only the thread that holds the reader role
  // calls it, without reply_mutex_.
  Status ReadOneReply();
  // Gives up the reader role (reply_mutex_ held) and wakes whoever must take
  // it next.
  void ReleaseReaderLocked();
  // Takes the reader role, reads one reply without reply_mutex_ (a failed
  // read breaks the connection), and gives the role up. `lock` holds
  // reply_mutex_ on entry and on return; the role must be free.
  void ReadOneReplyAsReader(std::unique_lock<std::mutex>& lock);
  // True while replies arrive that nobody waits for (async copies, gates):
  // then the background reader reads when no caller does. reply_mutex_ held.
  bool UnclaimedRepliesPendingLocked() const { return !async_copies_.empty() || !gates_.empty(); }
  void BackgroundReaderLoop();
  // How often the background reader looks for frames nobody asked for while
  // nobody reads (Transport::PeerGoneOrTalking).
  static constexpr std::chrono::milliseconds kIdleLookInterval{100};
  void FlusherLoop();
  // Fails the connection once a reply has been awaited, or a write blocked,
  // for longer than the call deadline. Runs only with a deadline.
  void WatchdogLoop();
  void Fail(const Status& status);
  // The server's notice that the session lost its devices.
  void Revoke(const Status& notice);

  // The server first connected to (after a move to another server,
  // moved_to_ names where the session is).
  const std::string server_name_;
  const ConnectionOptions options_;
  const Borrow borrow_;  // the token, for a move's Hello
  // Replaced only by FollowMove, which holds the send lock, the reader role
  // and transport_mutex_ (exclusively) for that; every other user of the
  // pointer holds one of those.
  mutable std::shared_mutex transport_mutex_;
  std::unique_ptr<Transport> transport_;
  // The server a move went to last ("" = none), for logs and errors
  // (ServerNameLocked).
  std::string moved_to_ ABSL_GUARDED_BY(reply_mutex_);
  // The server the session is on now: server_name_, or where it moved.
  std::string ServerNameLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(reply_mutex_) {
    return moved_to_.empty() ? server_name_ : moved_to_;
  }

  // Sending.
  std::mutex send_mutex_;
  uint64_t next_seq_ ABSL_GUARDED_BY(send_mutex_) = 1;
  std::vector<capnp::word> batch_words_ ABSL_GUARDED_BY(send_mutex_);
  std::vector<uint8_t> batch_bulk_ ABSL_GUARDED_BY(send_mutex_);
  size_t batch_calls_ ABSL_GUARDED_BY(send_mutex_) = 0;
  // A move to another server is under way (FollowMove): the program's calls
  // wait (send_cv_) until it is done, here or there.
  bool moving_ ABSL_GUARDED_BY(send_mutex_) = false;
  std::condition_variable send_cv_;

  // Replies.
  std::mutex reply_mutex_;
  std::condition_variable reply_cv_;
  std::map<uint64_t, Waiter*> waiters_ ABSL_GUARDED_BY(reply_mutex_);
  // Owned here.
  std::map<uint64_t, std::unique_ptr<Waiter>> async_copies_ ABSL_GUARDED_BY(reply_mutex_);
  // Per stream (ctx, stream id): (since_seq, copy seq) of the copies it
  // depends on through event waits (AddCopyDependencies); only copies still
  // in flight when added, pruned as they are found landed.
  std::map<std::pair<uint64_t, uint64_t>, std::vector<std::pair<uint64_t, uint64_t>>>
      copy_dependencies_ ABSL_GUARDED_BY(reply_mutex_);
  // The first failed PostExpectingBytes, until reported.
  Status async_error_ ABSL_GUARDED_BY(reply_mutex_);
  Status broken_ ABSL_GUARDED_BY(reply_mutex_);  // set once the connection fails
  // Calls whose host gates are not all reached yet, by seq.
  std::map<uint64_t, PendingGates> gates_ ABSL_GUARDED_BY(reply_mutex_);
  // graph host nodes: RegisterHostFunction's, by id.
  std::map<uint64_t, HostFunction> host_functions_ ABSL_GUARDED_BY(reply_mutex_);
  // Set once the server took the session's devices away.
  Status revoked_ ABSL_GUARDED_BY(reply_mutex_);
  bool reader_busy_ ABSL_GUARDED_BY(reply_mutex_) = false;  // a thread holds the reader role
  int sleepers_ ABSL_GUARDED_BY(reply_mutex_) = 0;          // callers blocked on reply_cv_
  bool stopping_reader_ ABSL_GUARDED_BY(reply_mutex_) = false;
  std::condition_variable background_cv_;  // the background reader's turn may have come
  std::atomic<bool> broken_flag_{false};   // broken_ or revoked_ is set; read without the lock
  std::vector<uint8_t> discard_;           // the reader role's scratch

  // Flusher.
  std::mutex flush_mutex_;
  std::condition_variable flush_cv_;
  bool flush_requested_ ABSL_GUARDED_BY(flush_mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(flush_mutex_) = false;

  // Steady-clock nanoseconds since a transport write began; 0 when none is
  // in progress. Read by the watchdog.
  std::atomic<int64_t> write_started_ns_{0};
  // Steady-clock nanoseconds when the last frame from the server (a reply or
  // a keepalive) was read. Read by the watchdog.
  std::atomic<int64_t> last_heard_ns_{0};
  std::condition_variable watchdog_cv_;  // the connection is closing

  std::thread background_reader_;
  std::thread flusher_;
  std::thread watchdog_;
  // Last: destroyed first, while everything its jobs use still exists.
  HostCallbackThread host_callbacks_;
};

}  // namespace ferry::client
