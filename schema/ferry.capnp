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
# values that cannot change are never asked again. Right after the final
# HelloReply the stream may leave a TCP connection: a client on ferryd's own
# host moves to shared memory (Hello.shm, HelloReply.shm), one on an RDMA
# fabric to RDMA (Hello.rdma, HelloReply.rdma); shared memory wins where both
# are offered.
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
# set, and only for those (and for hostGate calls, below). A reply may come
# after replies to later calls (a stream synchronize waits for the GPU while
# later calls from other client threads run), so replies carry the seq they
# answer. A call without
# wantsReply ("fire and forget": launches, async copies, memsets, records,
# waits, frees, destroys, host-to-device copies) that fails latches its error
# in the session; the next call that wants a reply is then not executed and
# answers that latched error instead (as CUDA reports asynchronous errors at
# the next call that waits), and the latch clears.
#
# Host callbacks (cuLaunchHostFunc, cuStreamAddCallback) run on the client, in
# stream order, through a gate: the client sends a hostGate call (without
# wantsReply) naming the stream. The server queues a gate there. When the work
# queued on the stream before it has finished, the server sends a Reply with
# the gate call's seq and `gateReached` (the one reply to a call without
# wantsReply); the gate then holds the stream, so work queued after it waits,
# until the client has run the function and sends a gateOpen frame (outside
# any callBatch: it is read even while the session's calls wait behind the
# gate, which they may, e.g. a stream destroy). A gate still closed when the
# connection ends is opened by the server. Replies to device-to-host copies
# that the gate's stream waited for are sent before its gateReached. A graph
# launch whose graph has host nodes (graphLaunchHostNodes) carries one gate
# per host node, told apart by GateReached.index (see StreamCaptureHostFunc).
#
# Handles: contexts, streams, events, modules and functions are named by ids
# that the client chooses (unique per session, never 0), so creating them needs
# no round trip; the server maps them to real objects per session and answers a
# bad id with CUDA_ERROR_INVALID_HANDLE. Stream id 0 means the legacy default
# stream of the call's context. Device pointers are the server's real
# addresses; every range a call touches is checked against the session's own
# allocations (CUDA_ERROR_INVALID_VALUE otherwise).
#
# Pool (when ferryd runs with pools): Hello says which pool, how many devices
# and how long the client will wait for them. While it waits, the server sends
# interim HelloReplys with queuePosition > 0 (1 = next), one each time the
# position changes; the final HelloReply (queuePosition 0) grants the devices
# or refuses with a status that says why (the pool is full, no such pool).
# A granted session's devices are its slices: device i is slices[i], with the
# slice's memory as its total memory. A Reply with seq 0 is a notice, not an
# answer: the server has taken the session's devices away (a schedule rebind
# preempted it) and freed everything the session had; its status says why, and
# every later call of the session fails with that status.
#
# Authentication (when ferryd has a token file): Hello.token must name a token
# of the file, else the HelloReply refuses with permissionDenied
# (CUDA_ERROR_NOT_PERMITTED) and the connection closes; nothing else of the
# peer is read. A client may borrow only from the token's pools; a control
# connection may send mutating requests (everything but status) only with an
# admin token. Over TCP the frames may travel inside TLS (ferryd --tls-cert):
# the TLS handshake comes first and the frames are its payload, unchanged;
# shared-memory sessions are set up over a unix socket, whose peer
# credentials ferryd may check.
#
# Module images are content-addressed: a moduleLoad may name its image by
# imageHash (SHA-256) and imageBytes instead of carrying it. If the server's
# image cache holds that image, it loads it; otherwise it answers OK with
# imageNotCached set and creates nothing, and the client sends the call again
# with the image as bulk (and the same hash, so the server can keep it). The
# server keeps only bytes whose SHA-256 it computed and found equal to the
# hash sent with them; bytes that do not match are refused
# (CUDA_ERROR_INVALID_VALUE). A moduleLoad with bulk and no hash is loaded
# and not kept. A libraryLoad names its image the same way.
#
# Keepalives: a client that bounds its waits for replies (FERRY_CALL_TIMEOUT)
# asks in Hello.keepaliveMs for a keepalive frame that often (the server makes
# it at least 10 ms) while the server owes it a reply it is still working on
# (a synchronize behind long work, a device-to-host copy queued behind it).
# The frame answers nothing; the client's deadline then measures the server's
# silence, not the length of the work. 0 (and an older client) asks for none.
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
  # host callbacks
  gateOpen @7;     # client -> server: open a host gate (message: GateOpen)
  # call deadline (keepalive)
  keepalive @8;    # server -> client: still working on the client's calls (message: an empty Reply)
  # migration between servers: ferryd -> ferryd, on a connection whose Hello.role is migration
  migrationOffer @9;   # message: MigrationOffer (no bulk)
  migrationAnswer @10; # message: MigrationAnswer
  migrationBytes @11;  # message: MigrationBytes; bulk: the offer's calls' bulk bytes, in order
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
    migration @2;  # another ferryd handing over a session it served (MigrationOffer)
  }
  pid @2 :UInt32;
  host @3 :Text;
  program @4 :Text;
  # pool
  pool @5 :Text;           # FERRY_POOL; "" = the server's default pool
  gpus @6 :UInt32;         # FERRY_GPUS: devices wanted; 0 means 1
  waitMs @7 :UInt64;       # FERRY_WAIT: how long to queue for them; 0 = not at all
  # authentication
  token @8 :Text;          # FERRY_TOKEN / ferryctl --token: "ferry_<id>_<secret>"; "" = none.
                           # A ferryd with a token file refuses a Hello whose token is
                           # missing or wrong (permissionDenied) and reads nothing more.
  # call deadline (keepalive)
  keepaliveMs @9 :UInt32;  # a keepalive frame this often while replies are due; 0 = never
  # TLS hand-over (HelloReply.handoverSecret): the Hello sent again, in the new TLS session
  handoverSecret @10 :Data;
  # cluster pool: how many times this client was sent on (HelloReply.redirect) for this borrow
  redirects @11 :UInt32;
  # cluster pool: this client follows HelloReply.redirect (a client that does not is refused
  # with the other server's address instead of being sent there)
  followsRedirects @12 :Bool;
  # cluster pool: the borrow's place in the cluster's queue (HelloReply.queueTicket), kept
  # when it is sent on
  queueTicket @13 :Text;
  # cluster pool: this Hello borrows one part of a borrow split across servers
  # (HelloReply.parts) and more parts follow: the claim checks the queue ticket but leaves it
  # (and its lease) for the next part's server; the last part's claim spends it
  ticketStays @14 :Bool;
  # cluster pool: this client borrows the parts of a split borrow (HelloReply.parts); only
  # then does ferryd split one (a client without it is refused, or waits, as before)
  followsParts @15 :Bool;
  # RDMA (common/rdma/rdma_connector.h): the client's queue pair and receive ring, offered for
  # the stream after the handshake; absent = TCP only. ferryd that can (a TCP connection
  # without TLS, an RDMA device of its own) answers with HelloReply.rdma, else with
  # HelloReply.rdmaRefusal, and the stream stays on TCP.
  rdma @16 :RdmaEndpoint;
  # With rdma: the client requires it (FERRY_SERVER=rdma://..., FERRY_TRANSPORT=rdma) —
  # informational; a refusal is answered the same, and the client gives up.
  rdmaRequired @17 :Bool;
  # Shared memory for a client on ferryd's own host (common/shm_rendezvous.h), offered over a
  # TCP or TLS connection (FERRY_TRANSPORT auto or shm); absent = stay. ferryd's session takes
  # it when the boot ids match (one kernel): HelloReply.shm, and the RDMA offer, if any, is
  # refused; else HelloReply.shmRefusal says why, and RDMA or TCP carries the stream.
  shm @18 :ShmOffer;
  # Migration between servers (issue 16; server/README.md "Migration"): this client follows its
  # session when ferryd moves it to another server (Reply.moveNotice, Reply.moved). ferryd moves
  # only the sessions of clients that say so.
  followsMoves @19 :Bool;
  # Not empty: this client's session was moved here (Reply.moved's ticket). ferryd serves it the
  # session it prepared for that ticket — its objects and memory at the same ids and addresses —
  # instead of borrowing; pool, gpus and waitMs are not read. A ticket is good once, for a
  # minute.
  resumeTicket @20 :Data;
}

# A client's offer to move its stream to shared memory.
struct ShmOffer {
  bootId @0 :Text;             # /proc/sys/kernel/random/boot_id of the client's kernel
  required @1 :Bool;           # FERRY_TRANSPORT=shm: the client gives up without it
                               # (informational, as Hello.rdmaRequired)
}

# ferryd's answer to a ShmOffer it takes: where the client meets the session's shared region.
# The client connects to the abstract unix socket `socket` (the name without its leading NUL,
# in ferryd's network namespace), writes `nonce` there, and then writes one byte on the
# handshake's connection: 'S' (connected; ferryd accepts the connection whose nonce matches,
# passes the region's memfd over it as to a unix-socket client, and from then on every frame
# travels through shared memory; the TCP connection closes and the unix socket tells each side
# when the other is gone) or 'T' (it cannot reach the socket, e.g. from another network
# namespace: the stream stays where it is). Connections to the socket without the nonce are
# closed unheard.
struct ShmInvite {
  socket @0 :Text;             # "ferry-shm-<32 hex digits>"
  nonce @1 :Data;              # 16 random bytes
}

# One side of an RDMA connection: how to reach its RC queue pair, and where and how much the
# other side may write (common/rdma/rdma_transport.h).
struct RdmaEndpoint {
  gid @0 :Data;                # 16 bytes
  lid @1 :UInt32;
  qpNumber @2 :UInt32;
  packetSequence @3 :UInt32;
  mtu @4 :UInt32;              # an ibv_mtu value
  ringAddress @5 :UInt64;
  ringKey @6 :UInt32;
  ringBytes @7 :UInt64;        # a power of two
  receiveDepth @8 :UInt32;     # receives posted: the most unread messages
  smallMessageBytes @9 :UInt32;  # the largest SEND one receive takes
  device @10 :Text;            # "mlx5_0 port 1 gid 3", for logs
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
  # pool
  queuePosition @6 :UInt32;    # nonzero: still waiting at this position; more replies follow
  pool @7 :Text;               # the pool the devices come from; "" without pools
  slices @8 :List(SliceInfo);  # per device, when the server has pools
  # Not empty (TLS only): ferryd hands this connection to the process that will serve the
  # session. The client reads on to the end of this TLS session (the server's close_notify),
  # runs a new TLS handshake on the same socket (the certificate checked again), sends its
  # Hello again with this secret, and reads the final HelloReply from there.
  handoverSecret @9 :Data;
  # Not empty (a ferryd of a cluster pool): this server has no room for the borrow, the
  # server at this HOST:PORT has. The client closes this connection and sends its Hello
  # there, with Hello.redirects one higher (ferryd sends a client on at most twice).
  redirect @10 :Text;
  # With redirect: the borrow's place in the cluster's queue, for the Hello sent there; and
  # `pool` is the pool it borrows from (the entry server's default, when it named none).
  queueTicket @11 :Text;
  # Not empty (a ferryd of a cluster pool): no one server has room for the whole borrow
  # (Hello.gpus devices), these servers together have. The client closes this connection and
  # borrows each part from its server, in this order (the program's device ordinals follow
  # it), with `pool`, `queueTicket`, Hello.gpus = the part's gpus, Hello.ticketStays on every
  # part but the last, and Hello.redirects at its maximum (a part is not sent on again). A
  # part that fails fails the whole borrow; the parts already borrowed end with it.
  parts @12 :List(BorrowPart);
  # With the final reply, to a Hello with rdma: ferryd's queue pair, already connected to the
  # client's. The client connects its own, writes one byte on the TCP connection, and reads
  # ferryd's one byte back; from then on every frame travels over RDMA, and the TCP
  # connection stays open, silent, to tell each side when the other is gone.
  rdma @13 :RdmaEndpoint;
  # Why ferryd does not take the client's RDMA offer ("" = it takes it, or none was made).
  rdmaRefusal @14 :Text;
  # With the final reply, to a Hello with shm that ferryd takes: where to meet the session's
  # shared region (ShmInvite). ferryd then reads the client's one byte ('S' or 'T').
  shm @15 :ShmInvite;
  # Why ferryd does not take the client's shm offer ("" = it takes it, or none was made):
  # "ferryd is on another host", or why it cannot listen.
  shmRefusal @16 :Text;
}

# One server's share of a borrow split across the servers of a cluster pool.
struct BorrowPart {
  address @0 :Text;            # HOST:PORT the server advertises
  gpus @1 :UInt32;             # devices to borrow there
}

# A borrowed slice of a GPU (pool).
struct SliceInfo {
  gpu @0 :UInt32;              # the server's GPU index
  slice @1 :UInt32;            # 0-based, among the GPU's slices
  slicesPerGpu @2 :UInt32;
  memoryQuota @3 :UInt64;      # bytes this slice may allocate
  computeShare @4 :Float64;    # fraction of the GPU's compute, (0, 1]
  mechanism @5 :Text;          # how the share is enforced: "whole-gpu", "sm-partition (N SMs)"
                               # (CUDA green contexts), "launch-throttle"
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
  array @2;   # a CUDA array (arrays, textures and surfaces)
}

# Call descriptions. Each member of Call's union says, through these
# annotations, what schema/generate_calls.py needs to generate the mechanical
# parts of forwarding it (the server's dispatch and handler declarations, the
# client's wait check); schema/README.md says how to add a call. Every member
# carries $waits; the generator refuses a member without it, and refuses a
# field name below that the member's argument struct does not have.

# Whether the client waits for the call's reply (sets wantsReply):
#   "always"   Connection::Call, or PostExpectingBytes (an async copy whose
#              reply carries bytes)
#   "never"    Connection::Post: fire and forget, errors latch
#   "by-flag"  either; wantsReply decides per call (memcpy2D waits when its
#              destination is host memory; funcSetAttribute waits when the
#              program sets an attribute, not when the client replays it)
#   "gate"     Connection::PostHostGate: sent without wantsReply, answered
#              when its stream reaches it
annotation waits @0xd6494ff051bde0e3 (field) :Text;
# The argument field naming the stream (of the argument's `ctx`) the call is
# queued on, in stream order; absent: not a stream operation.
annotation orderedOn @0xff9c6315b799c12c (field) :Text;
# Argument fields carrying ids of objects the session must already hold
# (contexts, streams, events, modules, functions, libraries); a bad one is
# answered with CUDA_ERROR_INVALID_HANDLE.
annotation handles @0x9b1d26942b560ad8 (field) :List(Text);
# Argument fields carrying device addresses the server checks against the
# session's allocations.
annotation ranges @0xe966868546fbdd43 (field) :List(Text);
# The server's handler takes the CallContext (it fills the reply, reads or
# writes bulk bytes, or defers its reply). A Void member has no handler: the
# dispatch answers it with OK.
annotation usesContext @0x8f92a067bd250d37 (field) :Void;

struct Call {
  seq @0 :UInt64;
  wantsReply @1 :Bool;
  bulkBytes @2 :UInt64;

  union {
    ping @3 :Void  # a barrier
        $waits("always");
    ctxCreate @4 :CtxCreate
        $waits("always");
    ctxDestroy @5 :CtxRef
        $waits("never") $handles(["ctx"]);
    ctxSynchronize @6 :CtxRef  # waits for the GPU
        $waits("always") $handles(["ctx"]) $usesContext;
    ctxGetLimit @7 :CtxLimit
        $waits("always") $handles(["ctx"]) $usesContext;
    ctxSetLimit @8 :CtxLimit
        $waits("always") $handles(["ctx"]);
    memAlloc @9 :MemAlloc
        $waits("always") $handles(["ctx"]) $usesContext;
    memAllocPitch @10 :MemAllocPitch
        $waits("always") $handles(["ctx"]) $usesContext;
    memFree @11 :MemFree
        $waits("never") $ranges(["dptr"]);
    memGetInfo @12 :CtxRef
        $waits("always") $handles(["ctx"]) $usesContext;
    memcpyHtoD @13 :Memcpy  # bulk = the bytes
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]) $ranges(["dst"])
        $usesContext;
    memcpyDtoH @14 :Memcpy  # reply bulk = the bytes
        $waits("always") $orderedOn("stream") $handles(["ctx", "stream"]) $ranges(["src"])
        $usesContext;
    memcpyDtoD @15 :Memcpy
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]) $ranges(["dst", "src"]);
    memcpy2D @16 :Memcpy2D  # 2D and 3D; HtoD/DtoD async, DtoH sync
        $waits("by-flag") $orderedOn("stream") $handles(["ctx", "stream", "srcArray", "dstArray"])
        $ranges(["srcDevice", "dstDevice"]) $usesContext;
    memset @17 :Memset
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]) $ranges(["dst"]);
    moduleLoad @18 :ModuleLoad  # bulk = the image
        $waits("always") $handles(["ctx"]) $usesContext;
    moduleUnload @19 :ModuleRef
        $waits("never") $handles(["module"]);
    moduleGetFunction @20 :ModuleGetFunction
        $waits("never") $handles(["module"]);
    moduleGetGlobal @21 :ModuleGetGlobal
        $waits("always") $handles(["module"]) $usesContext;
    funcGetAttribute @22 :FuncAttribute
        $waits("always") $handles(["function"]) $usesContext;
    funcSetAttribute @23 :FuncAttribute
        $waits("by-flag") $handles(["function"]);
    funcSetCacheConfig @24 :FuncCacheConfig
        $waits("never") $handles(["function"]);
    launch @25 :Launch  # bulk = packed params
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream", "function"]) $usesContext;
    streamCreate @26 :StreamCreate
        $waits("never") $handles(["ctx"]);
    streamDestroy @27 :StreamRef
        $waits("never") $handles(["ctx", "stream"]);
    streamSynchronize @28 :StreamRef  # waits for the GPU
        $waits("always") $orderedOn("stream") $handles(["ctx", "stream"]) $usesContext;
    streamQuery @29 :StreamRef
        $waits("always") $orderedOn("stream") $handles(["ctx", "stream"]);
    streamWaitEvent @30 :StreamWaitEvent
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream", "event"]);
    eventCreate @31 :EventCreate
        $waits("never") $handles(["ctx"]);
    eventRecord @32 :EventRecord
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream", "event"]);
    eventQuery @33 :EventRef
        $waits("always") $handles(["event"]);
    eventSynchronize @34 :EventRef  # waits for the GPU
        $waits("always") $handles(["event"]) $usesContext;
    eventElapsedTime @35 :EventElapsedTime
        $waits("always") $handles(["start", "end"]) $usesContext;
    eventDestroy @36 :EventRef
        $waits("never") $handles(["event"]);
    # library and kernel API, occupancy
    libraryLoad @37 :LibraryLoad  # bulk = the image; reply moduleLoad
        $waits("always") $usesContext;
    libraryUnload @38 :LibraryRef
        $waits("never") $handles(["library"]);
    libraryLoadModule @39 :LibraryLoadModule
        $waits("never") $handles(["library", "ctx"]);
    occupancyMaxActiveBlocks @40 :OccupancyMaxActiveBlocks  # reply values
        $waits("always") $handles(["function"]) $usesContext;
    occupancyAvailableDynamicSmem @41 :OccupancyAvailableDynamicSmem  # reply value
        $waits("always") $handles(["function"]) $usesContext;
    occupancyCluster @42 :OccupancyCluster  # reply value
        $waits("always") $handles(["function"]) $usesContext;
    # host callbacks
    hostGate @43 :StreamRef  # answered when reached (see above)
        $waits("gate") $orderedOn("stream") $handles(["ctx", "stream"]) $usesContext;
    # context
    ctxResetPersistingL2Cache @44 :CtxRef  # cuCtxResetPersistingL2Cache
        $waits("never") $handles(["ctx"]);
    # peers
    deviceCanAccessPeer @45 :DevicePeer  # reply value: 1 or 0
        $waits("always") $usesContext;
    deviceGetP2PAttribute @46 :DevicePeer  # reply value
        $waits("always") $usesContext;
    ctxEnablePeerAccess @47 :CtxPeer
        $waits("never") $handles(["ctx", "peer"]);
    ctxDisablePeerAccess @48 :CtxPeer
        $waits("never") $handles(["ctx", "peer"]);
    memcpyPeer @49 :MemcpyPeer
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream", "dstCtx", "srcCtx"])
        $ranges(["dst", "src"]);
    # stream-ordered allocation and memory pools
    memPoolCreate @50 :MemPoolCreate  # cuMemPoolCreate, or a device's default pool
        $waits("never");
    memPoolDestroy @51 :MemPoolRef
        $waits("never") $handles(["pool"]);
    memPoolSetAttribute @52 :MemPoolAttribute
        $waits("never") $handles(["pool"]);
    memPoolGetAttribute @53 :MemPoolAttribute  # reply value
        $waits("always") $handles(["pool"]) $usesContext;
    memPoolTrimTo @54 :MemPoolTrim
        $waits("never") $handles(["pool"]);
    memAllocAsync @55 :MemAllocAsync  # reply memAlloc; see MemAllocAsync
        $waits("always") $orderedOn("stream") $handles(["ctx", "stream", "pool"]) $usesContext;
    memFreeAsync @56 :MemFreeAsync
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]) $ranges(["dptr"]);
    profilerControl @57 :ProfilerControl  # cuProfilerStart / cuProfilerStop
        $waits("never") $handles(["ctx"]);
    streamSetAttribute @58 :StreamAttribute
        $waits("never") $handles(["ctx", "stream"]) $ranges(["windowBase"]);
    streamGetAttribute @59 :StreamAttribute  # reply streamAttribute
        $waits("always") $handles(["ctx", "stream"]) $usesContext;
    streamCopyAttributes @60 :StreamCopyAttributes
        $waits("never") $handles(["dstCtx", "dst", "srcCtx", "src"]);
    streamMemOps @61 :StreamMemOps  # cuStreamWaitValue*, cuStreamWriteValue*, cuStreamBatchMemOp
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]) $ranges(["ops"]);
    ctxRecordEvent @62 :CtxEvent  # cuCtxRecordEvent: the event captures all of ctx's work
        $waits("never") $handles(["ctx", "event"]);
    ctxWaitEvent @63 :CtxEvent  # cuCtxWaitEvent: ctx's later work waits for the event
        $waits("never") $handles(["ctx", "event"]);
    # stream capture and graphs
    streamBeginCapture @64 :StreamBeginCapture
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]);
    streamEndCapture @65 :StreamRef  # waits: an invalidated capture is reported here
        $waits("always") $orderedOn("stream") $handles(["ctx", "stream"]);
    streamCaptureStatus @66 :StreamRef  # reply value: a CUstreamCaptureStatus
        $waits("always") $handles(["ctx", "stream"]) $usesContext;
    graphCreate @67 :GraphCreate
        $waits("never");
    graphDestroy @68 :GraphRef
        $waits("never") $handles(["graph"]);
    graphInstantiate @69 :GraphInstantiate  # waits when the graph allocates memory (quota)
        $waits("by-flag") $handles(["graph"]);
    graphExecDestroy @70 :GraphExecRef
        $waits("never") $handles(["exec"]);
    graphLaunch @71 :GraphLaunch
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream", "exec"]);
    graphUpload @72 :GraphLaunch
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream", "exec"]);
    graphNodeCount @73 :GraphRef  # reply value
        $waits("always") $handles(["graph"]) $usesContext;
    graphAddNode @74 :GraphAddNode  # kernel nodes: bulk = packed params
        $waits("never") $handles(["graph"]) $usesContext;
    graphClone @75 :GraphClone
        $waits("never") $handles(["graph"]);
    # virtual memory management (see MemCreate); every call waits, so each
    # error is the call's own (these calls are rare: a framework grows its
    # memory in large steps)
    memAddressReserve @76 :MemAddressReserve  # reply memAlloc (dptr)
        $waits("always") $usesContext;
    memAddressFree @77 :MemRange
        $waits("always") $ranges(["address"]);
    memCreate @78 :MemCreate
        $waits("always");
    memRelease @79 :MemHandleRef
        $waits("always") $handles(["handle"]);
    memMap @80 :MemMap
        $waits("always") $handles(["handle"]) $ranges(["address"]);
    memUnmap @81 :MemRange
        $waits("always") $ranges(["address"]);
    memSetAccess @82 :MemSetAccess
        $waits("always") $ranges(["address"]);
    memGetAccess @83 :MemGetAccess  # reply value: CUmemAccess_flags
        $waits("always") $ranges(["address"]) $usesContext;
    memRetainAllocationHandle @84 :MemRange  # reply value: the handle's id
        $waits("always") $ranges(["address"]) $usesContext;
    memGetAllocationGranularity @85 :MemGranularity  # reply value: bytes
        $waits("always") $usesContext;
    # CUDA arrays, textures and surfaces
    arrayCreate @86 :ArrayCreate  # cuArrayCreate, cuArray3DCreate, cuMipmappedArrayCreate
        $waits("always") $handles(["ctx"]);
    arrayDestroy @87 :ArrayRef  # cuArrayDestroy, cuMipmappedArrayDestroy
        $waits("never") $handles(["array"]);
    mipmappedArrayGetLevel @88 :MipmappedArrayGetLevel
        $waits("never") $handles(["mipmappedArray"]);
    texObjectCreate @89 :TexObjectCreate  # reply value: the object
        $waits("always") $handles(["ctx", "array"]) $ranges(["devPtr"]) $usesContext;
    texObjectDestroy @90 :TexObjectRef  # cuTexObjectDestroy, cuSurfObjectDestroy
        $waits("never") $handles(["object"]);
    # JIT linking (cuLinkCreate, cuLinkAddData/File, cuLinkComplete, cuLinkDestroy): see
    # LinkCreate. linkAddData and linkComplete answer a linkResult.
    linkCreate @91 :LinkCreate
        $waits("always") $handles(["ctx"]);
    linkAddData @92 :LinkAddData  # bulk = the input, unless named by its hash alone
        $waits("always") $handles(["link"]) $usesContext;
    linkComplete @93 :LinkRef  # linkResult.imageBytes: the linked image's size
        $waits("always") $handles(["link"]) $usesContext;
    linkImage @94 :LinkRef  # reply bulk = the linked image (after a successful linkComplete)
        $waits("always") $handles(["link"]) $usesContext;
    linkDestroy @95 :LinkRef
        $waits("never") $handles(["link"]);
    # stream capture and graphs, continued (multi-stream capture, node updates)
    streamCaptureInvalidate @96 :StreamRef  # a call the capture mode forbade was made
        $waits("never") $handles(["ctx", "stream"]);
    graphExecKernelNodeSetParams @97 :GraphExecKernelNode  # bulk = packed params
        $waits("never") $handles(["exec", "node"]) $usesContext;
    graphExecNodeSetEnabled @98 :GraphExecNodeEnabled  # cuGraphNodeSetEnabled
        $waits("never") $handles(["exec", "node"]);
    # whole-graph executable updates
    graphExecUpdate @99 :GraphExecUpdate  # cuGraphExecUpdate(_v2)
        $waits("always") $handles(["exec", "graph"]);
    # explicit-graph editing and node parameters (graphedit): see GraphEdges
    graphEditEdges @100 :GraphEdges  # cuGraphAddDependencies, cuGraphRemoveDependencies
        $waits("never") $handles(["graph"]);
    graphDestroyNode @101 :GraphNodeRef  # cuGraphDestroyNode
        $waits("never") $handles(["node"]);
    graphNodeSetParams @102 :GraphNodeSetParams  # kernel: bulk = packed params
        $waits("never") $handles(["node"]) $usesContext;
    # graph node kinds: memory allocation and free nodes, graph memory (see GraphAddMemNode)
    graphAddMemAllocNode @103 :GraphAddMemNode  # reply memAlloc (the node's address)
        $waits("always") $handles(["graph"]) $usesContext;
    graphAddMemFreeNode @104 :GraphAddMemNode
        $waits("never") $handles(["graph"]) $ranges(["dptr"]);
    deviceGetGraphMemAttribute @105 :DeviceGraphMem  # reply value
        $waits("always") $usesContext;
    deviceSetGraphMemAttribute @106 :DeviceGraphMem
        $waits("always");
    deviceGraphMemTrim @107 :DeviceGraphMem
        $waits("never");
    # graph node kinds: event record and wait nodes (see GraphAddEventNode)
    graphAddEventNode @108 :GraphAddEventNode
        $waits("never") $handles(["graph", "event"]);
    graphEventNodeSetEvent @109 :GraphEventNodeEvent  # cuGraphEvent{Record,Wait}NodeSetEvent
        $waits("never") $handles(["node", "event"]);
    graphExecEventNodeSetEvent @110 :GraphEventNodeEvent  # cuGraphExecEvent{Record,Wait}NodeSetEvent
        $waits("never") $handles(["exec", "node", "event"]);
    # NVML stand-in (client/nvml): what monitoring asks of a device (see DeviceTelemetry)
    deviceTelemetry @111 :DeviceQuery  # reply deviceTelemetry
        $waits("always") $usesContext;
    # graph host nodes (graphhost): see StreamCaptureHostFunc
    streamCaptureHostFunc @112 :StreamCaptureHostFunc  # cuLaunchHostFunc on a capturing stream
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]);
    graphLaunchHostNodes @113 :GraphLaunch  # graphLaunch of an executable graph with host nodes
        $waits("gate") $orderedOn("stream") $handles(["ctx", "stream", "exec"]) $usesContext;
    graphChildGraphNodeGetGraph @114 :GraphChildGraph  # cuGraphChildGraphNodeGetGraph
        $waits("never") $handles(["node"]);
    streamUpdateCaptureDependencies @115 :StreamCaptureDependencies
        $waits("never") $orderedOn("stream") $handles(["ctx", "stream"]);
    # migration between servers (see MigrationOffer)
    memAllocAt @116 :MemAllocAt  # reply memAlloc; only in a MigrationOffer's calls
        $waits("always") $handles(["ctx"]) $usesContext;
    moveMarker @117 :MoveMarker  # the client's answer to Reply.moveNotice; reply moved
        $waits("always") $usesContext;
    moveRefused @118 :MoveRefused  # the target refused the session (Reply.moved): it stays
        $waits("never");
  }
}

# Migration between servers (issue 16; server/README.md "Migration").
#
# ferryctl asks the session's ferryd (the source) to move it to GPU `gpu` of another ferryd (the
# target). The source sends the client a notice (a Reply with seq 0 and moveNotice). The client
# stops sending calls, and sends moveMarker: every call before it is executed by the source,
# which then waits for the session's streams to finish, connects to the target (Hello.role
# migration, with the token ferryctl gave) and sends a MigrationOffer: the calls that make the
# session's objects again under the same ids (contexts, streams, events, modules and libraries
# with their images, functions), and memAllocAt for every allocation at its address followed by
# memcpyHtoD of its bytes. The target checks the offer and borrows a slice (a MigrationAnswer
# without a ticket: go on, or the refusal), then reads the bytes (migrationBytes) and answers a
# ticket (MigrationAnswer). The source answers the marker with Reply.moved (the target's address and
# the ticket). The client connects there with Hello.resumeTicket: the target's session makes
# the objects (refusing if an address cannot be had) and answers the handshake; the client then
# closes its connection to the source, whose session ends and frees everything, and sends its
# calls to the target from then on, the same ids and addresses. If the target refuses, the
# client sends moveRefused (its reason) to the source and carries on there: nothing was lost.
struct MemAllocAt {
  ctx @0 :UInt64;
  dptr @1 :UInt64;   # the allocation's address, which it must get exactly
  bytes @2 :UInt64;
}
struct MoveMarker {
  # Nothing yet: the marker's place among the calls is what counts.
}
struct MoveRefused {
  reason @0 :Text;
}
struct MovedTo {
  address @0 :Text;  # the target ferryd, as the source reached it
  ticket @1 :Data;   # Hello.resumeTicket
}
struct MigrationOffer {
  sessionId @0 :UInt64;   # on the source, for logs
  source @1 :Text;        # the source ferryd, for logs
  gpu @2 :Int32;          # the target's GPU (its [[gpu]] index)
  pool @3 :Text;          # the pool the session borrowed from ("" = the target's default)
  memory @4 :UInt64;      # the device memory the client was told of: its slice's quota, or the GPU's
  deviceName @5 :Text;    # the model: device code runs only on the same
  pid @6 :UInt32;
  host @7 :Text;
  program @8 :Text;
  tokenName @9 :Text;     # the token the client authenticated with on the source ("" = none)
  calls @10 :List(Call);  # made again in this order
  latched @11 :Status;    # the session's latched error of a call that did not wait (OK: none)
  latchedSeq @12 :UInt64;
  globalsAt @13 :List(UInt64);  # where each moduleGetGlobal among the calls must find its global
}
struct MigrationAnswer {
  status @0 :Status;
  ticket @1 :Data;        # after the bytes: for the client's Hello.resumeTicket
  sessionId @2 :UInt64;   # the session's id on the target
}
struct MigrationBytes {
  bytes @0 :UInt64;       # the bulk that follows: the sum of the offer's calls' bulkBytes
}

# NVML stand-in: the session's device `device` (its ordinal) as a monitor
# sees it, answered by the session (DeviceTelemetry).
struct DeviceQuery {
  device @0 :Int32;
}

# virtual memory management
#
# cuMemAddressReserve reserves a range of device addresses (the server's real
# ones); cuMemCreate makes physical memory on a device, named by an id the
# client chooses (a CUmemGenericAllocationHandle), charged to that device's
# quota; cuMemMap places (part of) it at an address inside one of the
# session's reservations, and cuMemSetAccess makes mapped ranges usable. Only
# a range that is mapped and accessible counts as the session's memory for
# copies, memsets and kernels, and mappings that follow each other without a
# gap form one span. cuMemRelease drops the client's reference; the memory
# (and its quota) goes once no mapping holds it either.
# cuMemRetainAllocationHandle answers the id of the memory mapped at an
# address and adds a reference. The $ranges fields here are checked against
# the session's reservations (memAddressFree, memMap: the start of one, or a
# range inside one) and mappings (the others).
struct MemAddressReserve {
  bytes @0 :UInt64;
  alignment @1 :UInt64;  # 0: the granularity
  address @2 :UInt64;    # a hint, as the driver takes it; 0: none
  flags @3 :UInt64;      # must be 0
}
struct MemRange {
  address @0 :UInt64;
  bytes @1 :UInt64;      # memRetainAllocationHandle: unused
}
struct MemCreate {
  handle @0 :UInt64;     # new id
  device @1 :Int32;      # the session's device ordinal
  bytes @2 :UInt64;      # a multiple of the device's granularity
  flags @3 :UInt64;      # cuMemCreate's flags (0)
}
struct MemHandleRef {
  handle @0 :UInt64;
}
struct MemMap {
  address @0 :UInt64;
  bytes @1 :UInt64;
  offset @2 :UInt64;     # into the physical memory
  handle @3 :UInt64;
  flags @4 :UInt64;      # must be 0
}
# One CUmemAccessDesc: `device` (a session device ordinal) may read
# (flags 1), read and write (3) or not touch (0) the range.
struct MemAccess {
  device @0 :Int32;
  flags @1 :UInt32;
}
struct MemSetAccess {
  address @0 :UInt64;
  bytes @1 :UInt64;      # whole mappings, one after another
  access @2 :List(MemAccess);
}
struct MemGetAccess {
  address @0 :UInt64;
  device @1 :Int32;
}
struct MemGranularity {
  device @0 :Int32;
  recommended @1 :Bool;  # CU_MEM_ALLOC_GRANULARITY_RECOMMENDED; else MINIMUM
}

# JIT linking. A link belongs to `ctx` (the current context of cuLinkCreate)
# and runs on the server: the CUDA backend uses the driver's linker, the host
# backend its own (server/backend/host/host_link.h says what linking means there).
# Inputs travel like module images (named by SHA-256 first when large; the
# server's image cache serves them). Options travel as (option, value) pairs,
# the value being what the program's optionValues slot holds; options that
# carry pointers are translated: a log buffer (CU_JIT_INFO_LOG_BUFFER,
# CU_JIT_ERROR_LOG_BUFFER) travels with value 0 and the server links into a
# buffer of its own of the size the program gave, whose contents come back in
# every linkResult; the client copies them into the program's buffer and
# writes the output options (wall time, log sizes, threads per block) back
# into the program's optionValues, as the driver does. The global symbol
# table (CU_JIT_GLOBAL_SYMBOL_NAMES/ADDRESSES/COUNT) travels as
# globalSymbols: names with device addresses, each checked against the
# session's allocations; tables of referenced names are not forwarded.
struct JitOption {
  option @0 :Int32;  # a CUjit_option
  value @1 :UInt64;  # the optionValues slot's bits (a float option in the low 32 bits)
}
struct LinkCreate {
  ctx @0 :UInt64;
  link @1 :UInt64;
  options @2 :List(JitOption);
  globalSymbols @3 :List(JitSymbol);  # CU_JIT_GLOBAL_SYMBOL_*: names the inputs may use
}
struct JitSymbol {
  name @0 :Text;
  address @1 :UInt64;  # a device address of the session's
}
struct LinkAddData {
  link @0 :UInt64;
  type @1 :Int32;              # a CUjitInputType
  name @2 :Text;               # the input's name in log messages
  options @3 :List(JitOption);  # this input's compiler options
  # module image cache
  imageHash @4 :Data;     # SHA-256 of the input, or empty
  imageBytes @5 :UInt64;  # the input's length, when imageHash is set
}
struct LinkRef {
  link @0 :UInt64;
}
# What a link call did. The call's own outcome is `outcome`, not the reply's
# status (which is OK once the link was found), so that the logs of a failed
# link still reach the program.
struct LinkResult {
  outcome @0 :Status;
  infoLog @1 :Data;                  # the info log buffer's text so far, without its NUL
  errorLog @2 :Data;                 # the error log buffer's
  options @3 :List(JitOption);       # the link's option slots after the call
  inputOptions @4 :List(JitOption);  # linkAddData: its own option slots after the call
  imageBytes @5 :UInt64;             # linkComplete: the linked image's size
}

# peers
# Two of the session's devices: cuDeviceCanAccessPeer (device, peer) and
# cuDeviceGetP2PAttribute (attribute; device = source, peer = destination).
struct DevicePeer {
  device @0 :Int32;
  peer @1 :Int32;
  attribute @2 :Int32;
}
# cuCtxEnablePeerAccess / cuCtxDisablePeerAccess: `ctx` (the current context)
# gains or loses access to the memory of `peer`'s device.
struct CtxPeer {
  ctx @0 :UInt64;
  peer @1 :UInt64;
  flags @2 :UInt32;
}
# cuMemcpyPeer(Async): `bytes` from `src` (memory of srcCtx's device) to `dst`
# (memory of dstCtx's device), queued on `stream` of `ctx`. `synchronous`
# (cuMemcpyPeer, stream 0): also ordered after and before the work of the
# legacy streams of dstCtx and srcCtx.
struct MemcpyPeer {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  dst @2 :UInt64;
  dstCtx @3 :UInt64;
  src @4 :UInt64;
  srcCtx @5 :UInt64;
  bytes @6 :UInt64;
  synchronous @7 :Bool;
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
  # CUDA arrays, textures and surfaces: 3D copies and array sides. A side of
  # kind `array` is the array `*Array` (an array of the session) from
  # (*X bytes, *Y, *Z) on; a nonzero `*Array` must name one of the session's
  # arrays whatever the kind. `depth` slices of `height` rows; a device
  # side's slices are `*Height` rows of `*Pitch` bytes apart (0: `height`),
  # a host side's travel packed (width x height x depth bytes).
  srcArray @10 :UInt64;
  srcX @11 :UInt64;
  srcY @12 :UInt64;
  srcZ @13 :UInt64;
  srcHeight @14 :UInt64;
  dstArray @15 :UInt64;
  dstX @16 :UInt64;
  dstY @17 :UInt64;
  dstZ @18 :UInt64;
  dstHeight @19 :UInt64;
  depth @20 :UInt64 = 1;
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
  # cooperative launches: every block of the grid must be resident at once
  # (cuLaunchCooperativeKernel, CU_LAUNCH_ATTRIBUTE_COOPERATIVE); a grid
  # larger than that is CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE.
  cooperative @13 :Bool;
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

# stream capture and graphs
#
# A capture happens where the work runs: streamBeginCapture makes the server's
# stream record the stream-ordered calls issued on it (launches, device-only
# copies and memsets, graph launches) into a graph instead of running them;
# streamEndCapture ends it, and the graph becomes `graph` (the id the client
# chose at the beginning). eventRecord on a capturing stream makes no node:
# a stream that then waits for the event (streamWaitEvent) joins the capture
# (fork), and the origin stream waiting for an event recorded on a joined
# stream joins that work back; streamEndCapture on the origin fails with
# CUDA_ERROR_STREAM_CAPTURE_UNJOINED when some joined work was not joined
# back, and on a joined stream with CUDA_ERROR_STREAM_CAPTURE_UNMATCHED.
# streamCaptureInvalidate: the client refused a call the capture mode forbids.
# A call that would synchronize with a capturing
# stream (synchronize, query, a copy to or from host memory, a host gate)
# fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the
# capture; later calls on the stream fail with
# CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, and so does its streamEndCapture
# (which still ends the capture, creating no graph). Graphs and executable
# graphs are client-chosen ids; a graph launch is one call however many nodes
# the graph has. The device ranges a graph touches are checked again at each
# launch.
struct StreamBeginCapture {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  mode @2 :UInt32;    # CUstreamCaptureMode
  graph @3 :UInt64;   # new graph id: the graph the capture builds
  # graphhost: cuStreamBeginCaptureToGraph. `graph` is an existing graph of
  # the session (no other capture builds it, and it cannot be destroyed
  # while one does); the captured nodes are added to it, the first after
  # `dependencies` (nodes of it). Its explicitly added nodes keep their ids;
  # the captured ones have none. Whatever streamEndCapture answers, the
  # graph keeps the ranges and kernels the capture used among its uses.
  toGraph @4 :Bool;
  dependencies @5 :List(UInt64);
}
# cuStreamUpdateCaptureDependencies (graphhost): the next node the capturing
# stream records also depends on `dependencies` (set: only on them; the
# stream's earlier tips are then no longer required to be joined back).
# Captured nodes have no ids, so the nodes named are explicitly added nodes
# of the capture's graph (a capture into a graph, cuStreamBeginCaptureToGraph);
# the host backend keeps the order of the capture's own work as well.
struct StreamCaptureDependencies {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  dependencies @2 :List(UInt64);
  set @3 :Bool;
}
struct GraphCreate {
  graph @0 :UInt64;   # new graph id
  flags @1 :UInt32;
}
struct GraphRef {
  graph @0 :UInt64;
}
struct GraphInstantiate {
  graph @0 :UInt64;
  exec @1 :UInt64;    # new executable graph id
  flags @2 :UInt64;
}
struct GraphExecRef {
  exec @0 :UInt64;
}
struct GraphLaunch {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  exec @2 :UInt64;
  # graphLaunchHostNodes: how many host nodes the executable graph has, as
  # the client counts them (each is one host gate of the call); a launch
  # whose count differs from the server's is refused.
  hostNodes @3 :UInt32;
}
struct GraphClone {
  graph @0 :UInt64;
  clone @1 :UInt64;  # new graph id: a copy of `graph`'s nodes
  # graphedit: ids for the copies of `graph`'s explicitly added nodes
  # (copies[i] of originals[i]; all of them or none). Without them the
  # clone's nodes have no ids (the client then treats the clone as opaque).
  originals @2 :List(UInt64);
  copies @3 :List(UInt64);
}
# cuGraphAdd*Node: a node of `graph` after `dependencies` (nodes of the same
# graph). Its work is what the stream-ordered call would do (the `stream`
# fields are unused), in the argument's `ctx`; a graph's work belongs to one
# context.
struct GraphAddNode {
  graph @0 :UInt64;
  node @1 :UInt64;   # new node id
  dependencies @2 :List(UInt64);
  union {
    empty @3 :Void;
    kernel @4 :Launch;
    memset @5 :Memset;
    memcpy @6 :Memcpy;  # device to device
    childGraph @7 :UInt64;  # a graph, copied as it is now (its later changes are not seen)
    host @8 :UInt64;        # graph host nodes: the host function's id (see StreamCaptureHostFunc)
  }
}

# Memory allocation and free nodes (cuGraphAddMemAllocNode, cuGraphAddMemFreeNode).
# An allocation node gets its address when it is added (the reply's memAlloc):
# other nodes of its graph may name the range from then on. The memory is the
# executable graph's: charged to the slice quota of the context's device when
# the graph is instantiated (OUT_OF_MEMORY there; instantiating such a graph
# waits for the reply) and given back when the executable graph is destroyed
# and its launches are done; only one executable graph of such a graph may
# exist at a time. The range is valid in every call from instantiation until
# the executable graph is destroyed. A free node names an allocation of a
# memory node (`dptr`); launching an executable graph whose allocations a
# previous launch made and nothing freed answers INVALID_VALUE (unless it was
# instantiated with AUTO_FREE_ON_LAUNCH).
struct GraphAddMemNode {
  graph @0 :UInt64;
  node @1 :UInt64;   # new node id
  dependencies @2 :List(UInt64);
  ctx @3 :UInt64;    # allocation: the context whose device the memory is on
  bytes @4 :UInt64;  # allocation: its size
  dptr @5 :UInt64;   # free: the allocation freed
}
# Event record and wait nodes (cuGraphAddEventRecordNode, cuGraphAddEventWaitNode):
# at each launch, a record node records `event` on the launch's stream after
# the nodes before it, and a wait node makes the nodes after it wait for the
# event's latest record, as cuEventRecord and cuStreamWaitEvent on that stream
# would (events recorded so are seen by every event call). The event must be
# of the graph's context and still exist at each launch. Graphs with event
# nodes cannot be child graphs or be updated (cuGraphExecUpdate), and are not
# launched into a capture.
struct GraphAddEventNode {
  graph @0 :UInt64;
  node @1 :UInt64;   # new node id
  dependencies @2 :List(UInt64);
  event @3 :UInt64;
  wait @4 :Bool;     # a wait node (else a record node)
}
# The event of event node `node` becomes `event`: in its graph
# (graphEventNodeSetEvent; `exec` unused), or in executable graph `exec` from
# its next launch on (graphExecEventNodeSetEvent).
struct GraphEventNodeEvent {
  exec @0 :UInt64;
  node @1 :UInt64;
  event @2 :UInt64;
}
# cuDeviceGet/SetGraphMemAttribute (CUgraphMem_attribute `attribute`; set:
# only the high watermarks, to 0) and cuDeviceGraphMemTrim, for the session's
# device `device`. The figures are the session's own: bytes its executable
# graphs hold (reserved) and bytes of allocations made by launched graphs and
# not freed yet (used).
struct DeviceGraphMem {
  device @0 :Int32;
  attribute @1 :Int32;
  value @2 :UInt64;
}

# Graph host nodes (graphhost): cuGraphAddHostNode, cuGraphHostNodeSetParams,
# cuGraphExecHostNodeSetParams and cuLaunchHostFunc on a capturing stream
# (streamCaptureHostFunc) give the server a host function by an id the client
# chose (unique per session, never 0; the client keeps the function and its
# user data under it). A host node runs in the client, mid-replay: an
# executable graph with host nodes is launched with graphLaunchHostNodes,
# whose host gates are its host nodes. When the replay reaches host node i
# (its dependencies done; the order is the replay's), the server sends a
# gateReached reply to the launch's seq with `index` i and the node's
# `hostFunction`, and the replay waits there until the client ran the
# function and opened that gate (a gateOpen with the seq and index). Each of
# the launch's `hostNodes` gates is answered exactly once; a refused launch
# answers each with held false. A launch of such a graph with graphLaunch,
# into a capture, or as a child graph is refused; the gates of a client
# that went away are opened by the server (no replay waits on them).
struct StreamCaptureHostFunc {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  hostFunction @2 :UInt64;
}

# cuGraphChildGraphNodeGetGraph: child-graph node `node`'s own graph (the
# copy of the child it runs) becomes graph `graph`, a new id, and its nodes
# `nodes` (new ids, one for each node of the child as it was added, in the
# order they were added; none when the child had captured or cloned nodes).
# Edits of `graph` reach the node: instantiations of the node's graph made
# after them run them. It belongs to the node: it cannot be destroyed, and
# goes with the node or its graph; memory allocation and free nodes cannot
# be added to it (INVALID_VALUE, as the driver documents), nor event or host
# nodes (NOT_SUPPORTED, as in any child graph). A node has one such id.
struct GraphChildGraph {
  node @0 :UInt64;
  graph @1 :UInt64;
  nodes @2 :List(UInt64);
}

# cuGraphExecKernelNodeSetParams: kernel node `node` (of the graph `exec`
# was instantiated from) runs `kernel` (its ctx and function must be the
# node's; the stream field is unused) with the packed parameters in the
# bulk bytes from the next launch of `exec` on, checked as a launch is.
struct GraphExecKernelNode {
  exec @0 :UInt64;
  node @1 :UInt64;
  kernel @2 :Launch;
}
# cuGraphExecUpdate: `exec` runs the nodes of `graph` from its next launch on.
# The client checked that `graph` has the topology of the graph `exec` was
# instantiated from (node kinds in order, dependencies); the server checks
# that both have as many nodes and work in the same context
# (GRAPH_EXEC_UPDATE_FAILURE otherwise). `graph`'s nodes were checked when
# they were added; node ids (and disabled nodes) stay those of `exec`'s graph.
struct GraphExecUpdate {
  exec @0 :UInt64;
  graph @1 :UInt64;
}
# cuGraphNodeSetEnabled: a kernel, memset or memcpy node of the graph `exec`
# came from runs (enabled) or does nothing in later launches of `exec`.
struct GraphExecNodeEnabled {
  exec @0 :UInt64;
  node @1 :UInt64;
  enabled @2 :Bool;
}

# explicit-graph editing (graphedit). The client records each graph's
# explicitly added nodes and edges, so it checks an edit as the driver does
# (unknown nodes or edges, an edge added twice, nodes of another graph:
# CUDA_ERROR_INVALID_VALUE) and sends it fire-and-forget; the server checks
# again what keeps it sound. A graph's nodes run in a topological order of
# their dependencies, computed when it is instantiated (a cycle is refused
# there, as the driver refuses it).
#
# graphEditEdges adds (remove false) or removes the edges from[i] -> to[i]
# (to[i] then depends on from[i]); both lists have the same length.
struct GraphEdges {
  graph @0 :UInt64;
  from @1 :List(UInt64);
  to @2 :List(UInt64);
  remove @3 :Bool;
}
# graphDestroyNode: the node and its edges leave its graph.
struct GraphNodeRef {
  node @0 :UInt64;
}
# cuGraph{Kernel,Memset,Memcpy}NodeSetParams, cuGraphExec{Kernel,Memset,
# Memcpy,ChildGraph}NodeSetParams, cuGraph(Exec)NodeSetParams: node `node`
# does `work` from now on, either in its graph (exec 0: later instantiations,
# clones and child-graph copies take it) or only in executable graph `exec`
# (instantiated from the node's graph; launches queued already run what they
# were queued with). The work is checked as a new node's; it must be of the
# node's kind and in the node's context (the `stream` fields are unused).
# childGraph (exec only): a graph of the topology of the node's child.
struct GraphNodeSetParams {
  exec @0 :UInt64;  # 0: the graph's node
  node @1 :UInt64;
  union {
    kernel @2 :Launch;
    memset @3 :Memset;
    memcpy @4 :Memcpy;  # device to device
    childGraph @5 :UInt64;
    host @6 :UInt64;  # graph host nodes: the host function's id
  }
}

# library and kernel API, occupancy
#
# A library (cuLibraryLoadData) belongs to no context: libraryLoad sends its
# image once, the server keeps it and answers with its kernels and globals.
# A CUkernel is a client-side name for (library, kernel name); wherever it is
# used in a context, the client first sends libraryLoadModule, which loads
# the kept image into that context as an ordinary module with a client-chosen
# id (so cuLibraryGetModule has an answer), and then moduleGetFunction on that
# module. Both are fire-and-forget, so the first launch of a kernel in a
# context costs no round trip. libraryUnload drops the library and every
# module it has in any context; a context's destruction drops the library's
# module in that context only. moduleUnload of a library's module is refused.
struct LibraryLoad {
  library @0 :UInt64;
  # module image cache: as ModuleLoad's
  imageHash @1 :Data;     # SHA-256 of the image (32 bytes), or empty
  imageBytes @2 :UInt64;  # the image's length, when imageHash is set
}
struct LibraryRef {
  library @0 :UInt64;
}
struct LibraryLoadModule {
  library @0 :UInt64;
  ctx @1 :UInt64;
  module @2 :UInt64;   # new module id: the library's module in ctx
}
# For each i, blocks of blockSizes[i] threads using dynamicSmemBytes[i]
# bytes of dynamic shared memory: how many fit on one multiprocessor
# (cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags). Several sizes in
# one call let the client run cuOccupancyMaxPotentialBlockSize's search,
# whose callback lives in the client, in one round trip. Both lists have the
# same length, at most 1024.
struct OccupancyMaxActiveBlocks {
  function @0 :UInt64;
  blockSizes @1 :List(UInt32);
  dynamicSmemBytes @2 :List(UInt64);
  flags @3 :UInt32;
}
struct OccupancyAvailableDynamicSmem {
  function @0 :UInt64;
  numBlocks @1 :UInt32;
  blockSize @2 :UInt32;
}
# cuOccupancyMaxPotentialClusterSize / cuOccupancyMaxActiveClusters for a
# launch configuration (cluster 0 = none given).
struct OccupancyCluster {
  function @0 :UInt64;
  query @1 :Query;
  enum Query {
    maxPotentialClusterSize @0;
    maxActiveClusters @1;
  }
  gridX @2 :UInt32;
  gridY @3 :UInt32;
  gridZ @4 :UInt32;
  blockX @5 :UInt32;
  blockY @6 :UInt32;
  blockZ @7 :UInt32;
  sharedBytes @8 :UInt32;
  clusterX @9 :UInt32;
  clusterY @10 :UInt32;
  clusterZ @11 :UInt32;
}

# stream-ordered allocation and memory pools
#
# A memory pool is named by an id the client chooses. memPoolCreate with
# `isDefault` makes the session's default pool of `device` (what
# cuDeviceGetDefaultMemPool names; the client sends it once per device, before
# the pool is first used, and it cannot be destroyed); without it, a pool
# cuMemPoolCreate made. Each session's pools are its own, the default ones
# included, so one session's attributes and trims never reach another's.
struct MemPoolCreate {
  pool @0 :UInt64;
  device @1 :Int32;       # the session's device ordinal
  isDefault @2 :Bool;
  maxSize @3 :UInt64;     # CUmemPoolProps.maxSize; 0 = no limit of its own
}
struct MemPoolRef {
  pool @0 :UInt64;
}
# CUmemPool_attribute `attribute`; int attributes travel as their value.
struct MemPoolAttribute {
  pool @0 :UInt64;
  attribute @1 :Int32;
  value @2 :UInt64;
}
struct MemPoolTrim {
  pool @0 :UInt64;
  minBytesToKeep @1 :UInt64;
}
# cuMemAllocAsync / cuMemAllocFromPoolAsync: `bytes` from `pool` (the client
# names the device's current pool for cuMemAllocAsync), usable in `stream`'s
# order. The server allocates when it executes the call, which waits for the
# reply (the address) but not for the stream: the driver's stream-ordered
# allocator hands out the address at once, the same way. The allocation is
# charged to the pool device's quota then, and its range is the session's
# from then on.
struct MemAllocAsync {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  pool @2 :UInt64;
  bytes @3 :UInt64;
}
# cuMemFreeAsync: frees `dptr` (the start of a stream-ordered allocation, or
# of any allocation) when `stream` reaches the call. The range is no longer
# the session's from the call on; the quota is given back once the free has
# executed.
struct MemFreeAsync {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  dptr @2 :UInt64;
}
struct ProfilerControl {
  ctx @0 :UInt64;
  start @1 :Bool;  # false: stop
}
# cuStreamSetAttribute / cuStreamGetAttribute: one CUstreamAttrID
# (`attribute`) of a stream. The server keeps the values (answering
# streamGetAttribute) and hands them to the backend. Access policy window
# (CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW): window*, hitRatio, hitProp,
# missProp; the window, when not empty, lies in the session's memory.
# Synchronization policy (CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY): value.
struct StreamAttribute {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  attribute @2 :Int32;
  windowBase @3 :UInt64;
  windowBytes @4 :UInt64;
  hitRatio @5 :Float32;
  hitProp @6 :Int32;
  missProp @7 :Int32;
  value @8 :UInt32;
}
# Stream memory operations, executed in order when the stream reaches them:
# waits on and writes of 32- or 64-bit values in the session's memory, flushes
# and barriers. `operation` is a CUstreamBatchMemOpType, `flags` that
# operation's flags (CUstreamWaitValue_flags, CUstreamWriteValue_flags,
# CUstreamMemoryBarrier_flags).
struct StreamMemOp {
  operation @0 :Int32;
  address @1 :UInt64;
  value @2 :UInt64;
  flags @3 :UInt32;
}
struct StreamMemOps {
  ctx @0 :UInt64;
  stream @1 :UInt64;
  ops @2 :List(StreamMemOp);  # 1 to 256
  flags @3 :UInt32;           # cuStreamBatchMemOp's own flags (0)
}

# CUDA arrays, textures and surfaces
#
# An array belongs to a context and is named by an id the client chooses;
# its memory is charged to the context device's quota until it is
# destroyed (with its context, or at the session's end). A mipmapped array
# (`levels` > 0) is an array id of its own; mipmappedArrayGetLevel names one
# of its levels with a new array id, which lives as long as the mipmapped
# array and cannot be destroyed by itself. Extents are elements: `height` 0
# is a 1D array, `depth` 0 a 2D one; `flags` are CUDA_ARRAY3D_* flags
# (layered: `depth` layers; cubemap: 6 faces, or 6 x layers).
struct ArrayCreate {
  ctx @0 :UInt64;
  array @1 :UInt64;      # new array id
  width @2 :UInt64;
  height @3 :UInt64;
  depth @4 :UInt64;
  format @5 :UInt32;     # CUarray_format
  numChannels @6 :UInt32;
  flags @7 :UInt32;
  levels @8 :UInt32;     # 0: an ordinary array; else a mipmapped one
}
struct ArrayRef {
  array @0 :UInt64;
}
struct MipmappedArrayGetLevel {
  mipmappedArray @0 :UInt64;
  level @1 :UInt32;
  array @2 :UInt64;      # new array id: the level
}
# cuTexObjectCreate (`surface` false) and cuSurfObjectCreate (true): the
# reply's value is the object a kernel receives, the backend's own (the
# driver's on the CUDA backend). Resource (CUresourcetype `resourceType`):
# `array` (an array or mipmapped array of the session) or device memory at
# `devPtr` (linear: `sizeBytes`; pitch2D: `width` x `height` texels of
# `format` x `numChannels`, rows `pitchBytes` apart), a range of the
# session's. Surfaces take arrays only. The CUDA_TEXTURE_DESC fields follow;
# `hasView` adds a CUDA_RESOURCE_VIEW_DESC.
struct TexObjectCreate {
  ctx @0 :UInt64;
  surface @1 :Bool;
  resourceType @2 :UInt32;
  array @3 :UInt64;
  devPtr @4 :UInt64;
  format @5 :UInt32;
  numChannels @6 :UInt32;
  sizeBytes @7 :UInt64;
  width @8 :UInt64;
  height @9 :UInt64;
  pitchBytes @10 :UInt64;
  addressMode @11 :List(UInt32);  # 3
  filterMode @12 :UInt32;
  flags @13 :UInt32;
  maxAnisotropy @14 :UInt32;
  mipmapFilterMode @15 :UInt32;
  mipmapLevelBias @16 :Float32;
  minMipmapLevelClamp @17 :Float32;
  maxMipmapLevelClamp @18 :Float32;
  borderColor @19 :List(Float32);  # 4
  hasView @20 :Bool;
  viewFormat @21 :UInt32;
  viewWidth @22 :UInt64;
  viewHeight @23 :UInt64;
  viewDepth @24 :UInt64;
  viewFirstLevel @25 :UInt32;
  viewLastLevel @26 :UInt32;
  viewFirstLayer @27 :UInt32;
  viewLastLayer @28 :UInt32;
}
struct TexObjectRef {
  object @0 :UInt64;
  surface @1 :Bool;
}

# A context and one of its events (cuCtxRecordEvent, cuCtxWaitEvent).
struct CtxEvent {
  ctx @0 :UInt64;
  event @1 :UInt64;
}

# cuStreamCopyAttributes: every attribute above, from src to dst.
struct StreamCopyAttributes {
  dstCtx @0 :UInt64;
  dst @1 :UInt64;
  srcCtx @2 :UInt64;
  src @3 :UInt64;
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
    value @7 :Int64;          # ctxGetLimit, funcGetAttribute, streamCaptureStatus, graphNodeCount
    elapsedMs @8 :Float32;    # eventElapsedTime
    # library and kernel API, occupancy
    values @10 :List(Int64);  # occupancyMaxActiveBlocks, one per block size
    # host callbacks
    gateReached @11 :GateReached;  # hostGate
    # stream attributes
    streamAttribute @13 :StreamAttribute;  # streamGetAttribute
    # JIT linking
    linkResult @14 :LinkResult;  # linkCreate, linkAddData, linkComplete
    # NVML stand-in
    deviceTelemetry @15 :DeviceTelemetry;  # deviceTelemetry
    # migration between servers (MigrationOffer)
    moveNotice @16 :Void;     # seq 0: stop sending calls and send moveMarker
    moved @17 :MovedTo;       # moveMarker: where the session waits
  }
  # memcpyDtoH / memcpy2D to host: the bytes are the reply's bulk payload.
  latchedFromSeq @9 :UInt64;  # nonzero: status is the latched error of that earlier call
  # module image cache
  imageNotCached @12 :Bool;   # moduleLoad, libraryLoad or linkAddData by hash alone: the
                              # server lacks the image
}

# host callbacks
# The answer to a hostGate call, sent when its stream reaches it. `held`: the
# gate exists and holds its stream until the client opens it (a gateOpen
# frame); false when the call failed (the status says why, and the error is
# latched like any failed asynchronous call) and there is nothing to open.
# `streamFailed`: the stream's own work failed before the gate (a device-side
# error; cuLaunchHostFunc then skips the function, as CUDA does). The reply's
# status is that failure, else the session's latched error (left latched),
# else OK.
struct GateReached {
  held @0 :Bool;
  streamFailed @1 :Bool;
  # graph host nodes: which gate of the call (0 for a hostGate call) and the
  # host function to run (0 for a hostGate call: the call's own function).
  index @2 :UInt32;
  hostFunction @3 :UInt64;
}
# GateReached.index of the one answer to a refused graphLaunchHostNodes:
# it answers every gate of the call.
const allGatesOfTheCall :UInt32 = 0xffffffff;
# The message of a gateOpen frame.
struct GateOpen {
  gate @0 :UInt64;   # the seq of the hostGate (or graphLaunchHostNodes) call
  index @1 :UInt32;  # which of its gates (GateReached.index)
}

struct MemAllocResult {
  dptr @0 :UInt64;
  pitch @1 :UInt64;
}
# NVML stand-in: one device of the session as nvmlDeviceGetMemoryInfo,
# GetUtilizationRates, GetTemperature and GetPowerUsage report it. Memory is
# the session's: its slice's quota (the whole device without pools) and the
# bytes the session holds charged there. Utilization, temperature and power
# are the whole GPU's, as the backend reads them (the CUDA backend from
# NVIDIA's NVML, the host backend from its own accounting); -1 = the server
# cannot read that figure (the stand-in answers NVML_ERROR_NOT_SUPPORTED).
struct DeviceTelemetry {
  memoryTotal @0 :UInt64;
  memoryUsed @1 :UInt64;
  gpuUtilization @2 :Int32;     # percent of the recent past the GPU ran work
  memoryUtilization @3 :Int32;  # percent of the recent past device memory was read or written
  temperatureC @4 :Int32;       # the GPU's core temperature, degrees Celsius
  powerMilliwatts @5 :Int32;    # the GPU's power draw
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
    status @1 :Void;   # list sessions (and the pool)
    # pool
    reload @2 :Void;              # re-read the config file (as SIGHUP)
    rebind @3 :RebindRequest;     # ferryctl rebind GPU POOL
    drain @4 :DrainRequest;       # ferryctl drain GPU / undrain GPU
    testAdvanceClock @5 :Int64;   # TEST ONLY: move ferryd's fake clock by this many ms;
                                  # refused unless ferryd runs with --test-fake-clock
    migrate @6 :MigrateRequest;   # ferryctl migrate SESSION --to GPU
  }
}

# Migration between GPUs of one server (issue 16; server/README.md "Migration").
struct MigrateRequest {
  session @0 :UInt64;
  gpu @1 :UInt32;       # the GPU (index) the session's device moves to
  device @2 :Int32;     # which of the session's devices; -1: its only one
  server @3 :Text;      # another ferryd (HOST:PORT or unix:PATH); "" = this one
  token @4 :Text;       # with server: the token the other ferryd requires (an admin one)
}

struct RebindRequest {
  gpu @0 :UInt32;
  pool @1 :Text;
  policy @2 :Text;    # "drain", "preempt", "migrate", or "" for the config's on_rebind
  graceMs @3 :Int64;  # drain grace; negative for the config's grace
}

struct DrainRequest {
  gpu @0 :UInt32;
  drained @1 :Bool;   # false: take borrows again
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
  transport @12 :Text;    # what carries its stream: "tcp", "tls", "shm, ring 8 MiB", "rdma ..."
  # memory overcommit (server/README.md, "Parking"): of bytesAllocated, how much is parked in
  # host memory now (the rest is resident), how often it was parked and brought back, and how
  # long ago its last call came
  parkedBytes @13 :UInt64;
  parks @14 :UInt64;
  unparks @15 :UInt64;
  idleMs @16 :Int64;
  # idle release (server/README.md, "Idle release"): its slices went back to the pool while it
  # is idle (its memory is parked); its next call borrows them again
  slicesReleased @17 :Bool;
}

struct ControlReply {
  status @0 :Status;
  union {
    none @1 :Void;
    sessions @2 :List(SessionInfo);
  }
  backend @3 :Text;
  # pool
  pool @4 :PoolStatus;   # with status replies
  message @5 :Text;      # what a reload, rebind or drain did
}

struct PoolStatus {
  enabled @0 :Bool;            # false: no pools; every session gets every device, whole
  configFile @1 :Text;
  nowUnixMs @2 :Int64;         # the pool's clock
  testClock @3 :Bool;          # the clock is ferryd's test-only fake clock
  gpus @4 :List(GpuStatus);
  queue @5 :List(WaiterStatus);
  nextChangeUnixMs @6 :Int64;  # the next scheduled change of any GPU's pool; 0 = none
  nextChangeGpu @7 :Int32;
  nextChangePool @8 :Text;
  # cluster pool (ferryd --etcd): this server's place in it; ferryctl reads the rest from etcd
  clusterName @9 :Text;        # "" = a pool of its own
  clusterEtcd @10 :Text;       # the etcd endpoints, comma-separated
  clusterPrefix @11 :Text;     # the cluster's keys there
  clusterRegistered @12 :Bool; # false while it cannot register (etcd away, a name taken)
}

struct GpuStatus {
  index @0 :UInt32;
  pool @1 :Text;
  source @2 :Text;             # "schedule", "default" or "manual"
  window @3 :Text;             # "20:00:00-08:00:00 Asia/Shanghai", or "manual until ..."
  drained @4 :Bool;
  memory @5 :UInt64;
  slicesPerGpu @6 :UInt32;     # the current pool's layout
  freeSlices @7 :UInt32;
  holders @8 :List(HolderStatus);
  nextChangeUnixMs @9 :Int64;  # 0 = none
  nextPool @10 :Text;
  # idle release: sessions that gave their slice of this GPU back while idle and come back to
  # it (memoryUsed, computeShare and mechanism unset; sinceUnixMs: when released;
  # drainDeadlineUnixMs: when a rebind preempts them, 0 = never)
  released @11 :List(HolderStatus);
}

struct HolderStatus {
  sessionId @0 :UInt64;
  pool @1 :Text;
  slice @2 :UInt32;
  slicesPerGpu @3 :UInt32;
  memoryQuota @4 :UInt64;
  memoryUsed @5 :UInt64;
  computeShare @6 :Float64;
  mechanism @7 :Text;
  host @8 :Text;
  pid @9 :UInt32;
  program @10 :Text;
  sinceUnixMs @11 :Int64;
  drainDeadlineUnixMs @12 :Int64;  # 0 = not draining
  preempting @13 :Bool;
}

struct WaiterStatus {
  position @0 :UInt32;         # within its pool
  sessionId @1 :UInt64;
  pool @2 :Text;
  gpus @3 :UInt32;
  host @4 :Text;
  pid @5 :UInt32;
  program @6 :Text;
  sinceUnixMs @7 :Int64;
  deadlineUnixMs @8 :Int64;
}
