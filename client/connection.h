// Connection: the client's side of one ferryd session.
//
// Every driver call becomes one Call message. Post() queues a call that needs
// no reply (DESIGN invariant 3): it is serialised at once into the pending
// batch, and the batch goes out as one frame when a call that waits is
// issued, when it grows large, or after a short delay (the flusher thread), so
// queued work always reaches the server. Call() sends a call and blocks the
// calling thread until its reply; other threads keep posting and calling
// meanwhile, because replies are matched to waiters by seq on a reader thread.
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
// work behind the gate would never end).
//
// Once the connection breaks, every call fails with the same Disconnected
// status, which names the server.
//
// Thread-safety: all methods are safe from any thread.
#pragma once

#include <capnp/message.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client/host_callback_thread.h"
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

class Connection {
 public:
  using Fill = std::function<void(wire::Call::Builder)>;
  // Reads a successful reply on the calling thread.
  using OnReply = std::function<Status(wire::Reply::Reader)>;
  // A host callback's body, run on the host-callback thread once the stream
  // reached its gate. `stream_failed`: the stream's work failed before the
  // gate, or the connection was lost, and `status` says how; otherwise
  // `status` is OK or the asynchronous error the session had latched.
  using HostFunction = std::function<void(const Status& status, bool stream_failed)>;

  // Connects, says Hello, and keeps the HelloReply in `hello_reply`.
  static Status Open(std::unique_ptr<Transport> transport, std::string server_name,
                     std::unique_ptr<Connection>* out,
                     std::unique_ptr<capnp::MessageReader>* hello_reply,
                     kj::Array<capnp::word>* hello_words);
  ~Connection();

  // Queues a call without waiting. `bulk` is taken before return (copied into
  // the batch, or written to the socket when large). `seq_out`, when given,
  // receives the call's seq.
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
  Status WaitForEarlierCopiesOn(StreamKey stream, uint64_t before_seq);
  // Sends a hostGate call without waiting. `fn` runs once, as HostFunction
  // says, and the gate is opened after it returns. If the server refuses the
  // gate (a bad stream), `fn` never runs and the error is reported by the
  // next call that waits, like any asynchronous error.
  Status PostHostGate(const Fill& fill, HostFunction fn);
  // The seq the next call will get.
  uint64_t NextSeq();
  // Sends whatever is queued.
  Status Flush();

  const std::string& server_name() const { return server_name_; }
  // OK while the connection is up.
  Status health();

 private:
  struct Waiter {
    bool done = false;
    Status status;
    kj::Array<capnp::word> words;  // the reply message
    InBytes bulk;
    bool async = false;  // PostExpectingBytes: no thread waits on it
    StreamKey stream;    // PostExpectingBytes: the stream it is queued on
  };

  Connection(std::unique_ptr<Transport> transport, std::string server_name);
  // Serialises `fill`'s call with the next seq into the batch; send_mutex_ held.
  uint64_t AppendLocked(const Fill& fill, bool wants_reply, uint64_t bulk_bytes);
  Status FlushLocked();
  // Queues (and, when it must wait or is large, sends) one call. A waiter is
  // registered before the call leaves: `waiter` (owned by the caller, who
  // waits on it) or `async_waiter` (owned by the connection from then on).
  // `gate`, when set, is registered as the host function of this (hostGate)
  // call, owned by the connection from then on.
  Status Send(const Fill& fill, OutBytes bulk, bool wants_reply, Waiter* waiter,
              std::unique_ptr<Waiter> async_waiter, uint64_t* seq_out, HostFunction gate = nullptr);
  // Hands a reached gate's function to the host-callback thread.
  void RunHostFunction(uint64_t seq, HostFunction fn, Status status, bool held, bool stream_failed);
  // Sends a gateOpen frame for the hostGate call `seq`.
  Status OpenGate(uint64_t seq);
  void ReaderLoop();
  void FlusherLoop();
  void Fail(const Status& status);

  const std::string server_name_;
  std::unique_ptr<Transport> transport_;

  // Sending. Guarded by send_mutex_.
  std::mutex send_mutex_;
  uint64_t next_seq_ = 1;
  std::vector<capnp::word> batch_words_;
  std::vector<uint8_t> batch_bulk_;
  size_t batch_calls_ = 0;

  // Replies. Guarded by reply_mutex_.
  std::mutex reply_mutex_;
  std::condition_variable reply_cv_;
  std::map<uint64_t, Waiter*> waiters_;
  std::map<uint64_t, std::unique_ptr<Waiter>> async_copies_;  // owned here
  Status async_error_;  // first failed PostExpectingBytes, until reported
  Status broken_;       // set once the connection fails
  std::map<uint64_t, HostFunction> gates_;  // hostGate calls not yet reached

  // Flusher.
  std::mutex flush_mutex_;
  std::condition_variable flush_cv_;
  bool flush_requested_ = false;  // guarded by flush_mutex_
  bool stopping_ = false;         // guarded by flush_mutex_

  std::thread reader_;
  std::thread flusher_;
  // Last: destroyed first, while everything its jobs use still exists.
  HostCallbackThread host_callbacks_;
};

}  // namespace ferry::client
