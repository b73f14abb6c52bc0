// CudaBackend — GpuBackend on NVIDIA's real driver (libcuda.so.1), loaded at
// run time with dlopen; ferry never links libcuda.
//
// What the GpuBackend contract leaves to the implementation, for this one:
//  * Driver: found as LoadDriver describes in driver_api.h. ferry's own
//    stand-in libcuda (it exports cuFerryClientIdentity) is refused unless
//    CudaBackendOptions::allow_ferry_driver says otherwise (tests only).
//  * Contexts are real contexts from cuCtxCreate, current on no thread
//    between calls. A partitioned context (CreatePartitionedContext) is a
//    green context (CUDA 12.4+: cuDeviceGetDevResource(SM) ->
//    cuDevSmResourceSplitByCount -> cuDevResourceGenerateDesc ->
//    cuGreenCtxCreate(CU_GREEN_CTX_DEFAULT_STREAM) -> cuCtxFromGreenCtx),
//    used everywhere a context is and destroyed with cuGreenCtxDestroy; its
//    cuCtxCreate flags are dropped. A device's split into N groups is made
//    once and kept, so group i of N is always the same SMs and different
//    groups never overlap (SmPartitionSize says how rounding works). Drivers
//    without the green-context entry points load as before and report
//    Unimplemented, and the caller throttles launches instead.
//    UNPROVEN ON A GPU: this path has only run against the fake driver in
//    test/server/backend/cuda. Open questions for the first GPU run: the driver
//    documents a green context as usable from one thread at a time, while
//    this backend uses a context from the session's executor and from
//    waiter-pool threads (cuEventSynchronize, cuCtxSynchronize); and green
//    contexts share the primary context's memory, so cuMemGetInfo reports
//    the device (the session reports the slice anyway). Each call makes its context current on the
//    calling thread (cached per thread), so a thread that calls into this backend must not change
//    its current context by other means.
//  * Where callbacks run: WhenStreamIdle's Completion, and the release of
//    HostBytes/MutableHostBytes owners, run on the driver's callback thread
//    (cuStreamAddCallback). The driver forbids CUDA calls there: Completions
//    and owner deleters must not call the CUDA driver API (so an owner must
//    not be, say, pinned memory freed with cuMemFreeHost) and must be quick,
//    since later work on the stream waits for them. WhenEventComplete and
//    WhenContextIdle Completions run on a bounded waiter pool.
//  * A closed host gate (EnqueueHostGate) holds the driver's callback thread
//    as well as its stream, so stream callbacks queued behind it (of this
//    context, and perhaps of others) wait until it opens.
//  * Host memory: copies may use pageable memory; the driver stages it.
//    A device-to-host copy goes through a page-locked staging buffer of the
//    context (cuMemHostAlloc, cached), since into pageable memory the driver
//    would return only when the copy is done, blocking the caller behind
//    held streams; the bytes land in the destination in a stream callback.
//    Copy2DAsync from device to host does the same. Only where no
//    page-locked memory can be had does a copy block.
//  * Allocations (parkable allocations, the default where the driver and
//    every device have virtual memory management): MemAlloc and
//    MemAllocPitch reserve addresses (cuMemAddressReserve), create pinned
//    device memory (cuMemCreate) and map it with read-write access for the
//    context's device and for devices the tenant enabled peer access from
//    (cuMemSetAccess: peer access alone does not reach such memory). One of
//    at least the granularity (2 MiB on current GPUs) gets a block of its
//    own, rounded up to the granularity; a smaller one is placed, 512-byte
//    aligned, in a granularity-sized chunk of its context shared with other
//    small ones. MemAllocPitch chooses rows 512 bytes apart. So parking
//    (ParkTenantMemory) can copy a tenant's blocks into host memory and give
//    their physical memory back, keeping every address. Nothing a program
//    sees through ferry changes: pointer attributes and address ranges are
//    answered by ferry's client from its own records, and IPC handles
//    (which virtual memory management would not give) are unsupported
//    anyway. Pool allocations (cuMemAllocFromPoolAsync) stay the driver's
//    and are never parked. Without parkable allocations, MemAlloc is
//    cuMemAlloc and nothing can be parked.
//    UNPROVEN ON A GPU: this path has run against the fake driver and, in
//    the chain tests, over ferry's stub to the host backend. Open questions
//    for the first GPU run: copies between such memory of two devices
//    (cuMemcpyDtoDAsync, cuMemcpyPeerAsync) without peer access enabled,
//    and what cuMemCreate + cuMemMap + cuMemSetAccess cost per allocation
//    next to cuMemAlloc.
//  * MemFree synchronizes like cudaFree: cuMemFree, or, for a parkable
//    allocation, cuCtxSynchronize of every context of the tenant before the
//    memory goes (cuMemUnmap does not wait for work that may still use it).
//    While a stream of the tenant is capturing, the driver refuses
//    cuCtxSynchronize (and ends the capture), so such a free takes the
//    allocation off the books at once and releases its memory at the next
//    free that can wait, at parking, or with its context.
//  * LoadModule describes kernels (name, parameter offsets and sizes from
//    the driver); `globals` is left empty: the driver cannot enumerate them.
//    GetGlobal finds a global by name.
//  * Destroying a Stream, Event, Module or Context waits for the work queued
//    on it (and for pending WhenEventComplete/WhenContextIdle waits on it).
//    The backend must outlive every object it created.
//
// Thread-safety: all methods are thread-safe (GpuBackend contract).
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "server/backend/api/gpu_backend.h"

namespace ferry::backend {

struct CudaBackendOptions {
  // NVIDIA's libcuda.so.1. Empty: search the usual system locations first,
  // then the dynamic loader's path (see DefaultDriverCandidates).
  std::string driver_path;
  // Most threads that wait for events and contexts at once.
  int max_waiter_threads = 16;
  // Tests only: accept ferry's own stand-in libcuda.so.1 as the driver, so
  // that this backend forwards to a second ferryd (a chain). Off by default:
  // pointed at a ferryd that forwards back to itself, it would deadlock.
  bool allow_ferry_driver = false;
  // Parkable allocations: MemAlloc and MemAllocPitch make their memory with
  // the driver's virtual memory management, so that a tenant's memory can be
  // parked in host memory and brought back at the same addresses
  // (GpuBackend::ParkTenantMemory). Where the driver or a device lacks
  // virtual memory management this is off whatever it says, and
  // CanParkMemory() is false. Off: cuMemAlloc, as before parking existed.
  bool parkable_allocations = true;
};

// Loads and initializes the driver and describes its devices. Fails with a
// Status naming the library and the reason: not found, ferry's stand-in,
// cuInit failure (e.g. CUDA_ERROR_STUB_LIBRARY for the toolkit's stub), no
// devices, or a missing entry point.
Status CreateCudaBackend(const CudaBackendOptions& options, std::unique_ptr<GpuBackend>* out);

}  // namespace ferry::backend
