@0xc3a9e0d51f2b7a64;
# ferry wire protocol, version 1.
#
# A connection carries frames. A frame is a 24-byte little-endian header
#   u32 magic 0x46525931 ("FRY1"), u16 kind (FrameKind), u16 flags (0),
#   u32 message bytes, u32 reserved (0), u64 bulk bytes
# followed by one Cap'n Proto message in the standard stream framing (segment
# table + segments, `message bytes` long in all) and then `bulk bytes` of raw
# payload. Bulk bytes (memcpy data, module images, kernel parameters) never
# travel inside the Cap'n Proto message.
#
# Handshake: the client sends Hello; the server answers HelloReply. A client
# session receives every device's description once (HelloReply.devices):
# values that cannot change are never asked again.
#
# Calls: the client sends callBatch frames. The message part of such a frame is
# one or more Call messages back to back, each in the standard stream framing
# (so a client serialises each call as it is issued and a batch is just their
# concatenation). Each Call carries a sequence number
# (seq) that increases by one per call in the order the client issued it,
# across all of its threads; the server executes a session's calls in exactly
# that order. A call's bulk bytes are the next `bulkBytes` bytes of the frame's
# bulk payload, in call order.
#
# Replies: the server sends a Reply frame for each call that has wantsReply
# set, and only for those. A reply may come after replies to later calls (a
# stream synchronize waits for the GPU while later calls from other client
# threads run), so replies carry the seq they answer. A call without
# wantsReply ("fire and forget": launches, async copies, memsets, records,
# waits, frees, destroys, host-to-device copies) that fails latches its error
# in the session; the next call that wants a reply is then not executed and
# answers that latched error instead (as CUDA reports asynchronous errors at
# the next call that waits), and the latch clears.
#
# Handles: contexts, streams, events, modules and functions are named by ids
# that the client chooses (unique per session, never 0), so creating them needs
# no round trip; the server maps them to real objects per session and answers a
# bad id with CUDA_ERROR_INVALID_HANDLE. Stream id 0 means the legacy default
# stream of the call's context. Device pointers are the server's real
# addresses; every range a call touches is checked against the session's own
# allocations (CUDA_ERROR_INVALID_VALUE otherwise).
#
# Module images are content-addressed: a moduleLoad may name its image by
# imageHash (SHA-256) and imageBytes instead of carrying it. If the server's
# image cache holds that image, it loads it; otherwise it answers OK with
# imageNotCached set and creates nothing, and the client sends the call again
# with the image as bulk (and the same hash, so the server can keep it). The
# server keeps only bytes whose SHA-256 it computed and found equal to the
# hash sent with them; bytes that do not match are refused
# (CUDA_ERROR_INVALID_VALUE). A moduleLoad with bulk and no hash is loaded
# and not kept.
#
# Evolution: ordinals never change meaning; a new call gets a new ordinal. A
# call the server does not know gets an Unimplemented status (the client
# reports CUDA_ERROR_NOT_SUPPORTED); the connection stays up. A frame that does
# not parse closes the session.

$import "/capnp/c++.capnp".namespace("ferry::wire");

const protocolVersion :UInt32 = 1;
const frameMagic :UInt32 = 0x46525931;

enum FrameKind {
  invalid @0;
  hello @1;
  helloReply @2;
  callBatch @3;
  reply @4;
  controlRequest @5;
  controlReply @6;
}

struct Status {
  code @0 :UInt8;          # ferry::StatusCode; 0 = OK
  cudaResult @1 :Int32;    # the CUresult to report
  message @2 :Text;
}

struct Hello {
  protocolVersion @0 :UInt32;
  role @1 :Role;
  enum Role {
    client @0;   # a CUDA program through the stand-in driver
    control @1;  # ferryctl
  }
  pid @2 :UInt32;
  host @3 :Text;
  program @4 :Text;
}

struct Device {
  name @0 :Text;
  uuid @1 :Data;           # 16 bytes
  totalMemory @2 :UInt64;
  pciDomain @3 :Int32;
  pciBus @4 :Int32;
  pciDevice @5 :Int32;
  attributes @6 :List(Int32);  # indexed by CUdevice_attribute
}

struct HelloReply {
  status @0 :Status;
  sessionId @1 :UInt64;
  driverVersion @2 :Int32;
  backend @3 :Text;
  devices @4 :List(Device);
  server @5 :Text;         # the server's name for logs
}

struct KernelParam {
  offset @0 :UInt32;
  size @1 :UInt32;
}
struct Kernel {
  name @0 :Text;
  params @1 :List(KernelParam);
}
struct Global {
  name @0 :Text;
  size @1 :UInt64;
}

enum MemoryKind {
  device @0;
  host @1;    # bytes travel as bulk: packed rows for 2D copies
}

struct Call {
  seq @0 :UInt64;
  wantsReply @1 :Bool;
  bulkBytes @2 :UInt64;

  union {
    ping @3 :Void;                         # sync; a barrier
    ctxCreate @4 :CtxCreate;               # sync
    ctxDestroy @5 :CtxRef;                 # async
    ctxSynchronize @6 :CtxRef;             # sync, waits for the GPU
    ctxGetLimit @7 :CtxLimit;              # sync
    ctxSetLimit @8 :CtxLimit;              # sync
    memAlloc @9 :MemAlloc;                 # sync
    memAllocPitch @10 :MemAllocPitch;      # sync
    memFree @11 :MemFree;                  # async
    memGetInfo @12 :CtxRef;                # sync
    memcpyHtoD @13 :Memcpy;                # async; bulk = the bytes
    memcpyDtoH @14 :Memcpy;                # sync; reply bulk = the bytes
    memcpyDtoD @15 :Memcpy;                # async
    memcpy2D @16 :Memcpy2D;                # HtoD/DtoD async, DtoH sync
    memset @17 :Memset;                    # async
    moduleLoad @18 :ModuleLoad;            # sync; bulk = the image
    moduleUnload @19 :ModuleRef;           # async
    moduleGetFunction @20 :ModuleGetFunction;  # async
    moduleGetGlobal @21 :ModuleGetGlobal;  # sync
    funcGetAttribute @22 :FuncAttribute;   # sync
    funcSetAttribute @23 :FuncAttribute;   # sync
    funcSetCacheConfig @24 :FuncCacheConfig;  # async
    launch @25 :Launch;                    # async; bulk = packed params
    streamCreate @26 :StreamCreate;        # async
    streamDestroy @27 :StreamRef;          # async
    streamSynchronize @28 :StreamRef;      # sync, waits for the GPU
    streamQuery @29 :StreamRef;            # sync
    streamWaitEvent @30 :StreamWaitEvent;  # async
    eventCreate @31 :EventCreate;          # async
    eventRecord @32 :EventRecord;          # async
    eventQuery @33 :EventRef;              # sync
    eventSynchronize @34 :EventRef;        # sync, waits for the GPU
    eventElapsedTime @35 :EventElapsedTime;  # sync
    eventDestroy @36 :EventRef;            # async
  }
}

struct CtxCreate {
  ctx @0 :UInt64;
  device @1 :Int32;
  flags @2 :UInt32;
}
struct CtxRef {
  ctx @0 :UInt64;
}
struct CtxLimit {
  ctx @0 :UInt64;
  limit @1 :UInt32;
  value @2 :UInt64;
}
struct MemAlloc {
  ctx @0 :UInt64;
  bytes @1 :UInt64;
}
struct MemAllocPitch {
  ctx @0 :UInt64;
  widthBytes @1 :UInt64;
  height @2 :UInt64;
  elementBytes @3 :UInt32;
}
struct MemFree {
  dptr @0 :UInt64;
}
struct Memcpy {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  dst @2 :UInt64;     # device address (unused for DtoH)
  src @3 :UInt64;     # device address (unused for HtoD)
  bytes @4 :UInt64;
}
struct Memcpy2D {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  srcKind @2 :MemoryKind;
  srcDevice @3 :UInt64;
  srcPitch @4 :UInt64;
  dstKind @5 :MemoryKind;
  dstDevice @6 :UInt64;
  dstPitch @7 :UInt64;
  widthBytes @8 :UInt64;
  height @9 :UInt64;
}
struct Memset {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  dst @2 :UInt64;
  pitch @3 :UInt64;
  value @4 :UInt32;
  elementBytes @5 :UInt8;
  width @6 :UInt64;     # elements per row
  height @7 :UInt64;
}
struct ModuleLoad {
  ctx @0 :UInt64;
  module @1 :UInt64;
  # module image cache
  imageHash @2 :Data;     # SHA-256 of the image (32 bytes), or empty
  imageBytes @3 :UInt64;  # the image's length, when imageHash is set
}
struct ModuleRef {
  module @0 :UInt64;
}
struct ModuleGetFunction {
  module @0 :UInt64;
  function @1 :UInt64;
  name @2 :Text;
}
struct ModuleGetGlobal {
  module @0 :UInt64;
  name @1 :Text;
}
struct FuncAttribute {
  function @0 :UInt64;
  attribute @1 :Int32;
  value @2 :Int32;
}
struct FuncCacheConfig {
  function @0 :UInt64;
  config @1 :Int32;
}
struct Launch {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  function @2 :UInt64;
  gridX @3 :UInt32;
  gridY @4 :UInt32;
  gridZ @5 :UInt32;
  blockX @6 :UInt32;
  blockY @7 :UInt32;
  blockZ @8 :UInt32;
  sharedBytes @9 :UInt32;
  clusterX @10 :UInt32;
  clusterY @11 :UInt32;
  clusterZ @12 :UInt32;
}
struct StreamCreate {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  flags @2 :UInt32;
  priority @3 :Int32;
}
struct StreamRef {
  ctx @0 :UInt64;
  stream @1 :UInt64;
}
struct StreamWaitEvent {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  event @2 :UInt64;
}
struct EventCreate {
  ctx @0 :UInt64;
  event @1 :UInt64;
  flags @2 :UInt32;
}
struct EventRecord {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  event @2 :UInt64;
}
struct EventRef {
  event @0 :UInt64;
}
struct EventElapsedTime {
  start @0 :UInt64;
  end @1 :UInt64;
}

struct Reply {
  seq @0 :UInt64;
  status @1 :Status;
  union {
    none @2 :Void;
    memAlloc @3 :MemAllocResult;
    memGetInfo @4 :MemInfoResult;
    moduleLoad @5 :ModuleLoadResult;
    moduleGetGlobal @6 :GlobalResult;
    value @7 :Int64;          # ctxGetLimit, funcGetAttribute
    elapsedMs @8 :Float32;    # eventElapsedTime
  }
  # memcpyDtoH / memcpy2D to host: the bytes are the reply's bulk payload.
  latchedFromSeq @9 :UInt64;  # nonzero: status is the latched error of that earlier call
  # module image cache
  imageNotCached @10 :Bool;   # moduleLoad by hash alone: the server lacks the image
}

struct MemAllocResult {
  dptr @0 :UInt64;
  pitch @1 :UInt64;
}
struct MemInfoResult {
  free @0 :UInt64;
  total @1 :UInt64;
}
struct ModuleLoadResult {
  kernels @0 :List(Kernel);
  globals @1 :List(Global);
}
struct GlobalResult {
  dptr @0 :UInt64;
  bytes @1 :UInt64;
}

# ferryctl's requests, on a connection whose Hello.role is control.
struct ControlRequest {
  union {
    none @0 :Void;     # never sent; keeps room for requests with arguments
    status @1 :Void;   # list sessions
  }
}

struct SessionInfo {
  id @0 :UInt64;
  client @1 :Text;        # peer address
  pid @2 :UInt32;
  host @3 :Text;
  program @4 :Text;
  bytesAllocated @5 :UInt64;
  allocations @6 :UInt64;
  contexts @7 :UInt32;
  streams @8 :UInt32;
  events @9 :UInt32;
  modules @10 :UInt32;
  sinceUnixMs @11 :Int64;
}

struct ControlReply {
  status @0 :Status;
  union {
    none @1 :Void;
    sessions @2 :List(SessionInfo);
  }
  backend @3 :Text;
}
