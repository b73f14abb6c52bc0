@0xa443e9aa45e02d7f;
# Between ferryd's main process and the worker process that serves one
# client session (server/session_worker.h). Never seen by clients: both ends
# are the same ferryd binary, so there is no version to negotiate.
#
# Transport: a SOCK_SEQPACKET socketpair made when the worker is spawned; each
# message is one packet, a flat Cap'n Proto message; descriptors travel beside
# it (SCM_RIGHTS, common/descriptor_passing.h) where a member says so.

using Cxx = import "/capnp/c++.capnp";
using Ferry = import "ferry.capnp";
$Cxx.namespace("ferry::wire");

# A borrowed device (server/session_shares.h SessionDevice).
struct WorkerDevice {
  backendDevice @0 :Int32;
  memoryQuota @1 :UInt64;
  computeShare @2 :Float64;
  gpu @3 :Int32;
  slice @4 :Int32;
  slicesPerGpu @5 :Int32;
  smPartitionSms @6 :Int32;        # the mechanism ferryd's main process chose (SessionDevice)
  mpsThreadPercentage @7 :Int32;
}

# Where the client's connection stands (common/transport.h TransportHandover);
# its descriptors come with the WorkerStart message.
struct HandedTransport {
  kind @0 :UInt8;
  peerName @1 :Text;
  readPosition @2 :UInt64;
  writePosition @3 :UInt64;
}

struct WorkerStart {
  sessionId @0 :UInt64;
  hello @1 :Data;                # the client's Hello frame (its words) as ferryd read it
  pooled @2 :Bool;
  pool @3 :Text;
  devices @4 :List(WorkerDevice);
  bufferLimit @5 :UInt64;        # Session::SetBufferLimit
  preemption @6 :Text;           # not empty: preempted before it started, for this reason
  transport @7 :HandedTransport;
  tlsSecret @8 :Data;            # TLS: what the client's second Hello must carry (HelloReply.handoverSecret)
  # operator logs (server/session_log.h): the token the client authenticated
  # with ("" = none), for the session's log lines.
  tokenName @9 :Text;
  tokenId @10 :Text;
  # Session::SetRdma (ferryd --rdma, --rdma-device, --rdma-gid-index)
  rdmaEnabled @11 :Bool;
  rdmaDevice @12 :Text;
  rdmaGidIndex @13 :Int32;
  rdmaUnavailable @14 :Text;
  parkAfterMs @15 :Int64;        # SessionGrant.park_after in ms; -1: never parked
  idleRelease @16 :Bool;         # the main process may release the session (Session::SetSliceLease)
  # Migration between servers: the session arrives from another ferryd (Session::SetArrival).
  # When arrivalBytes > 0, a sealed memfd of that many bytes is the last descriptor beside the
  # message: the MigrationOffer's words (its first arrivalOfferBytes), then the offer's bulk.
  arrivalOfferBytes @17 :UInt64;
  arrivalBytes @18 :UInt64;
}

# A snapshot of the session (server/session.h SessionInfo).
struct WorkerSessionInfo {
  client @0 :Text;
  pid @1 :UInt32;
  host @2 :Text;
  program @3 :Text;
  bytesAllocated @4 :UInt64;
  allocations @5 :UInt64;
  contexts @6 :UInt32;
  streams @7 :UInt32;
  events @8 :UInt32;
  modules @9 :UInt32;
  sinceUnixMs @10 :Int64;
  deviceBytes @11 :List(UInt64);
  moduleImageBytesReceived @12 :UInt64;
  allocationsWaitedForReleases @13 :UInt64;
  # operator logs (server/session_log.h)
  tokenName @14 :Text;
  tokenId @15 :Text;
  bytesFromClient @16 :UInt64;
  bytesToClient @17 :UInt64;
  peakBytesAllocated @18 :UInt64;
  endReason @19 :Text;
  started @20 :Bool;
  # /metrics (server/server_metrics.cc)
  calls @21 :UInt64;
  launches @22 :UInt64;
  framesFromClient @23 :UInt64;
  framesToClient @24 :UInt64;
  syncCallCounts @25 :List(UInt64);  # per bucket of kSyncCallBucketSeconds (server/session.h), not cumulative
  syncCallSeconds @26 :Float64;      # their sum
  transport @27 :Text;               # SessionInfo.transport (server/session.h)
  # parking (SessionInfo, server/session.h)
  parked @28 :Bool;
  parkedBytes @29 :UInt64;
  parks @30 :UInt64;
  unparks @31 :UInt64;
  bytesParkedTotal @32 :UInt64;
  bytesUnparkedTotal @33 :UInt64;
  parkSeconds @34 :Float64;
  unparkSeconds @35 :Float64;
  idleMs @36 :Int64;
  # idle release (SessionInfo, server/session.h)
  slicesReleased @37 :Bool;
  releases @38 :UInt64;
  reborrows @39 :UInt64;
  moves @40 :UInt64;
}

# A module image by name (server/module_cache.h): SHA-256 and length.
struct ImageName {
  hash @0 :Data;
  size @1 :UInt64;
}

struct ToWorker {
  union {
    start @0 :WorkerStart;        # first, once; the connection's descriptors beside it
    preempt @1 :PreemptRequest;   # Session::Preempt; answered by FromWorker.preempted
    infoRequest @2 :UInt64;       # answered by FromWorker.info with this id
    image @3 :ImageAnswer;        # answers FromWorker.findImage
    park @4 :ParkRequest;         # Session::Park; answered by FromWorker.parked
    relieved @5 :RelieveAnswer;   # answers FromWorker.relieve
    borrowedAgain @6 :StatusAnswer;  # answers FromWorker.borrowAgain
    slicesReleased @7 :StatusAnswer; # answers FromWorker.releaseSlices (the pool's verdict)
    move @8 :MoveRequest;         # Session::MoveDevice; answered by FromWorker.moved
    depart @9 :DepartRequest;     # Session::Depart; answered by FromWorker.departed
  }
}

struct ParkRequest {
  requestId @0 :UInt64;
  minIdleMs @1 :Int64;
  reason @2 :Text;
  releaseSlices @3 :Bool;       # Session::ReleaseIdle instead of Park (reason unused)
  countDevice @4 :Int32;        # Park's count_device: ParkAnswer.bytes counts this backend device (-1: all)
}

# An answer that is a status: the main process's to the worker's session giving its slices back
# or borrowing them again (Session::SliceLease, Server::SliceLeaseFor); the worker's to a move.
struct StatusAnswer {
  requestId @0 :UInt64;
  status @1 :Ferry.Status;
}

# Migration between GPUs of one server: session device `device` moves to `target`.
struct MoveRequest {
  requestId @0 :UInt64;
  device @1 :Int32;
  target @2 :WorkerDevice;
}

# Migration between servers: the session moves to GPU `gpu` of the ferryd at `address`.
struct DepartRequest {
  requestId @0 :UInt64;
  address @1 :Text;
  gpu @2 :Int32;
  token @3 :Text;
}

struct DepartAnswer {
  requestId @0 :UInt64;
  status @1 :Ferry.Status;
  summary @2 :Text;            # what happened, for ferryctl
}

struct ParkAnswer {
  requestId @0 :UInt64;
  status @1 :Ferry.Status;               # Session::Park's result
  bytes @2 :UInt64;                       # parked by this request
}

# The worker's session found a device full (memory overcommit): the main process parks other
# idle sessions' memory on that device (Server::RelieveMemoryPressure) and answers.
struct RelieveRequest {
  requestId @0 :UInt64;
  device @1 :Int32;       # backend device
  bytes @2 :UInt64;
}

struct RelieveAnswer {
  requestId @0 :UInt64;
  bytes @1 :UInt64;       # parked elsewhere
}

struct PreemptRequest {
  requestId @0 :UInt64;
  reason @1 :Text;
}

struct PreemptAnswer {
  requestId @0 :UInt64;
  freed @1 :Bool;                 # the session's resources are free (Session::Preempt's result)
}

struct ImageAnswer {
  requestId @0 :UInt64;
  found @1 :Bool;                 # then a sealed memfd holding the image comes beside
}

struct FromWorker {
  union {
    info @0 :InfoAnswer;
    preempted @1 :PreemptAnswer;  # Preempt's result
    findImage @2 :FindImage;
    keepImage @3 :ImageName;      # a sealed memfd with the image beside; the main process checks its hash
    ready @4 :Text;               # first, once: "" when its backend is up (then it waits for start), else why not
    final @5 :WorkerSessionInfo;  # last, once: the session's figures after it ended and freed
                                  # everything (its end log line, server/session_log.h)
    parked @6 :ParkAnswer;        # answers ToWorker.park
    relieve @7 :RelieveRequest;   # answered by ToWorker.relieved
    # Idle release: the session's memory is parked and its slices go back to the pool now (sent
    # under the session's execution lock and answered, so it precedes any borrowAgain); a
    # request id, answered by ToWorker.slicesReleased.
    releaseSlices @8 :UInt64;
    borrowAgain @9 :UInt64;       # a request id; answered by ToWorker.borrowedAgain
    moved @10 :StatusAnswer;      # answers ToWorker.move
    departed @11 :DepartAnswer;   # answers ToWorker.depart
  }
}

struct InfoAnswer {
  requestId @0 :UInt64;
  info @1 :WorkerSessionInfo;
}

struct FindImage {
  requestId @0 :UInt64;
  name @1 :ImageName;
}
