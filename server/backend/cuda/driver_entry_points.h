// The CUDA driver entry points ferry's CUDA backend calls, each with the
// CUDA version of the variant it calls. One list for the backend's table
// (driver_api.h) and the fake driver its tests load, so the two cannot drift.
//
// X(name, version): `name` is the cuda.h name (cuCtxCreate), `version` the
// CUDA version that introduced the variant called: the loader asks
// cuGetProcAddress for exactly that version, and the member holding it is
// typed PFN_<name>_v<version> from cudaTypedefs.h. driver_api.h checks at
// compile time that this type is also the prototype cuda.h declares for
// `name`, whose export name is the dlsym fallback. So the version requested,
// the pointer's type and the fallback symbol are one fact checked by the
// compiler: a wrong version does not build. (A name whose newest variant is
// not the one cuda.h declares, such as cuCtxSynchronize, whose v13000 variant
// takes a context, is listed at cuda.h's version: asking the driver for
// CUDA_VERSION would hand back the newer ABI.)
#pragma once

// Every entry point the backend needs beyond the bootstrap ones (cuInit,
// cuDriverGetVersion, cuGetErrorName/String, cuGetProcAddress), which the
// loader finds with dlsym. All are required: a driver without one of them is
// refused with a Status that names it.
#define FERRY_CUDA_DRIVER_ENTRY_POINTS(X)                       \
  X(cuDeviceGetCount, 2000)                                     \
  X(cuDeviceGet, 2000)                                          \
  X(cuDeviceGetName, 2000)                                      \
  X(cuDeviceGetUuid, 11040)                                     \
  X(cuDeviceTotalMem, 3020)                                     \
  X(cuDeviceGetAttribute, 2000)                                 \
  X(cuCtxCreate, 12050)                                         \
  X(cuCtxDestroy, 4000)                                         \
  X(cuCtxPopCurrent, 4000)                                      \
  X(cuCtxSetCurrent, 4000)                                      \
  X(cuCtxSynchronize, 2000)                                     \
  X(cuCtxGetLimit, 3010)                                        \
  X(cuCtxSetLimit, 3010)                                        \
  X(cuMemAlloc, 3020)                                           \
  X(cuMemAllocPitch, 3020)                                      \
  X(cuMemFree, 3020)                                            \
  X(cuMemGetInfo, 3020)                                         \
  X(cuMemHostAlloc, 2020)                                       \
  X(cuMemFreeHost, 2000)                                        \
  X(cuMemcpyHtoDAsync, 3020)                                    \
  X(cuMemcpyDtoHAsync, 3020)                                    \
  X(cuMemcpyDtoDAsync, 3020)                                    \
  X(cuMemcpy2DAsync, 3020)                                      \
  X(cuMemsetD8Async, 3020)                                      \
  X(cuMemsetD16Async, 3020)                                     \
  X(cuMemsetD32Async, 3020)                                     \
  X(cuMemsetD2D8Async, 3020)                                    \
  X(cuMemsetD2D16Async, 3020)                                   \
  X(cuMemsetD2D32Async, 3020)                                   \
  X(cuLaunchKernelEx, 11060)                                    \
  X(cuStreamCreateWithPriority, 5050)                           \
  X(cuStreamQuery, 2000)                                        \
  X(cuStreamSynchronize, 2000)                                  \
  X(cuStreamDestroy, 4000)                                      \
  X(cuStreamAddCallback, 5000)                                  \
  X(cuStreamWaitEvent, 3020)                                    \
  X(cuEventCreate, 2000)                                        \
  X(cuEventRecord, 2000)                                        \
  X(cuEventQuery, 2000)                                         \
  X(cuEventSynchronize, 2000)                                   \
  X(cuEventElapsedTime, 12080)                                  \
  X(cuEventDestroy, 4000)                                       \
  X(cuModuleLoadData, 2000)                                     \
  X(cuModuleUnload, 2000)                                       \
  X(cuModuleGetFunction, 2000)                                  \
  X(cuModuleGetGlobal, 3020)                                    \
  X(cuModuleGetFunctionCount, 12040)                            \
  X(cuModuleEnumerateFunctions, 12040)                          \
  X(cuFuncGetName, 12030)                                       \
  X(cuFuncGetParamInfo, 12040)                                  \
  X(cuFuncLoad, 12040)                                          \
  X(cuFuncGetAttribute, 2020)                                   \
  X(cuFuncSetAttribute, 9000)                                   \
  X(cuFuncSetCacheConfig, 3000)                                 \
  X(cuLibraryLoadData, 12000)                                   \
  X(cuLibraryUnload, 12000)                                     \
  X(cuLibraryGetModule, 12000)                                  \
  X(cuLibraryGetKernelCount, 12040)                             \
  X(cuLibraryEnumerateKernels, 12040)                           \
  X(cuKernelGetName, 12030)                                     \
  X(cuKernelGetParamInfo, 12040)                                \
  X(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, 7000) \
  X(cuOccupancyAvailableDynamicSMemPerBlock, 10020)             \
  X(cuOccupancyMaxPotentialClusterSize, 11070)                  \
  X(cuOccupancyMaxActiveClusters, 11070)

// Entry points the backend uses where the driver has them and does without
// where it does not: a driver that lacks one still loads, and its member
// stays null. cuCtxResetPersistingL2Cache (CUDA 11.0+) is answered
// CUDA_ERROR_NOT_SUPPORTED where missing, and so are stream capture and graphs
// (CUDA 11.4+) where any of theirs is (call sites check HasGraphs()). Green contexts (CUDA 12.4+)
// give a slice an SM partition; without them compute shares fall back to launch throttling. Call
// sites check HasGreenContexts() first.
#define FERRY_CUDA_OPTIONAL_ENTRY_POINTS(X) \
  X(cuCtxResetPersistingL2Cache, 11000)     \
  FERRY_CUDA_PEER_ENTRY_POINTS(X)           \
  FERRY_CUDA_MEMPOOL_ENTRY_POINTS(X)        \
  FERRY_CUDA_GRAPH_NODE_ENTRY_POINTS(X)     \
  FERRY_CUDA_GRAPH_ENTRY_POINTS(X)          \
  FERRY_CUDA_GRAPH_EDIT_ENTRY_POINTS(X)     \
  FERRY_CUDA_GRAPH_HOST_ENTRY_POINTS(X)     \
  FERRY_CUDA_VMM_ENTRY_POINTS(X)            \
  FERRY_CUDA_ARRAY_ENTRY_POINTS(X)          \
  FERRY_CUDA_LINK_ENTRY_POINTS(X)           \
  FERRY_CUDA_GREEN_CONTEXT_ENTRY_POINTS(X)

// virtual memory management (CUDA 10.2+): each answered
// CUDA_ERROR_NOT_SUPPORTED where the driver lacks it.
#define FERRY_CUDA_VMM_ENTRY_POINTS(X)    \
  X(cuMemGetAllocationGranularity, 10020) \
  X(cuMemCreate, 10020)                   \
  X(cuMemRelease, 10020)                  \
  X(cuMemAddressReserve, 10020)           \
  X(cuMemAddressFree, 10020)              \
  X(cuMemMap, 10020)                      \
  X(cuMemUnmap, 10020)                    \
  X(cuMemSetAccess, 10020)

// CUDA arrays, textures and surfaces: each answered CUDA_ERROR_NOT_SUPPORTED
// where the driver lacks it.
#define FERRY_CUDA_ARRAY_ENTRY_POINTS(X) \
  X(cuArray3DCreate, 3020)               \
  X(cuArrayDestroy, 2000)                \
  X(cuMipmappedArrayCreate, 5000)        \
  X(cuMipmappedArrayDestroy, 5000)       \
  X(cuMipmappedArrayGetLevel, 5000)      \
  X(cuMemcpy3DAsync, 3020)               \
  X(cuTexObjectCreate, 5000)             \
  X(cuTexObjectDestroy, 5000)            \
  X(cuSurfObjectCreate, 5000)            \
  X(cuSurfObjectDestroy, 5000)

// JIT linking (all or nothing: see HasLinker); answered
// CUDA_ERROR_NOT_SUPPORTED where the driver lacks it.
#define FERRY_CUDA_LINK_ENTRY_POINTS(X) \
  X(cuLinkCreate, 6050)                 \
  X(cuLinkAddData, 6050)                \
  X(cuLinkComplete, 5050)               \
  X(cuLinkDestroy, 5050)

// Stream-ordered allocation and memory pools (CUDA 11.2+), profiler control,
// stream attributes, stream memory operations and context-wide events: each answered
// CUDA_ERROR_NOT_SUPPORTED where the driver lacks it.
#define FERRY_CUDA_MEMPOOL_ENTRY_POINTS(X) \
  X(cuMemPoolCreate, 11020)                \
  X(cuMemPoolDestroy, 11020)               \
  X(cuMemPoolGetAttribute, 11020)          \
  X(cuMemPoolSetAttribute, 11020)          \
  X(cuMemPoolTrimTo, 11020)                \
  X(cuMemAllocFromPoolAsync, 11020)        \
  X(cuMemFreeAsync, 11020)                 \
  X(cuProfilerStart, 4000)                 \
  X(cuProfilerStop, 4000)                  \
  X(cuStreamSetAttribute, 11000)           \
  X(cuStreamBatchMemOp, 11070)             \
  X(cuCtxRecordEvent, 12050)               \
  X(cuCtxWaitEvent, 12050)

// Graph node kinds beyond FERRY_CUDA_GRAPH_ENTRY_POINTS' (memory allocation,
// free and event nodes, graph memory): each answered CUDA_ERROR_NOT_SUPPORTED
// where the driver lacks it.
#define FERRY_CUDA_GRAPH_NODE_ENTRY_POINTS(X)  \
  X(cuGraphAddMemAllocNode, 11040)             \
  X(cuGraphAddMemFreeNode, 11040)              \
  X(cuDeviceGraphMemTrim, 11040)               \
  X(cuGraphAddEventRecordNode, 11010)          \
  X(cuGraphAddEventWaitNode, 11010)            \
  X(cuGraphEventRecordNodeSetEvent, 11010)     \
  X(cuGraphEventWaitNodeSetEvent, 11010)       \
  X(cuGraphExecEventRecordNodeSetEvent, 11010) \
  X(cuGraphExecEventWaitNodeSetEvent, 11010)
// explicit-graph editing and node parameters: each answered
// CUDA_ERROR_NOT_SUPPORTED where the driver lacks it.
#define FERRY_CUDA_GRAPH_EDIT_ENTRY_POINTS(X) \
  X(cuGraphAddDependencies, 12030)            \
  X(cuGraphRemoveDependencies, 12030)         \
  X(cuGraphDestroyNode, 10000)                \
  X(cuGraphNodeFindInClone, 10000)            \
  X(cuGraphKernelNodeSetParams, 12000)        \
  X(cuGraphKernelNodeSetAttribute, 11000)     \
  X(cuGraphMemsetNodeSetParams, 10000)        \
  X(cuGraphMemcpyNodeSetParams, 10000)        \
  X(cuGraphExecMemsetNodeSetParams, 10020)    \
  X(cuGraphExecMemcpyNodeSetParams, 10020)    \
  X(cuGraphExecChildGraphNodeSetParams, 11010)

// graph host nodes (and cuLaunchHostFunc, which captures one), a child-graph
// node's graph, capture into a graph: each answered CUDA_ERROR_NOT_SUPPORTED
// where the driver lacks it.
#define FERRY_CUDA_GRAPH_HOST_ENTRY_POINTS(X) \
  X(cuGraphAddHostNode, 10000)                \
  X(cuGraphHostNodeSetParams, 10000)          \
  X(cuGraphExecHostNodeSetParams, 10020)      \
  X(cuLaunchHostFunc, 10000)                  \
  X(cuGraphChildGraphNodeGetGraph, 10000)     \
  X(cuStreamBeginCaptureToGraph, 12030)       \
  X(cuStreamUpdateCaptureDependencies, 12030)

// stream capture and graphs (all or nothing: see HasGraphs).
#define FERRY_CUDA_GRAPH_ENTRY_POINTS(X) \
  X(cuStreamBeginCapture, 10010)         \
  X(cuStreamEndCapture, 10000)           \
  X(cuGraphCreate, 10000)                \
  X(cuGraphGetNodes, 10000)              \
  X(cuGraphDestroy, 10000)               \
  X(cuGraphInstantiateWithFlags, 11040)  \
  X(cuGraphExecDestroy, 10000)           \
  X(cuGraphLaunch, 10000)                \
  X(cuGraphUpload, 11010)                \
  X(cuGraphAddEmptyNode, 10000)          \
  X(cuGraphAddKernelNode, 12000)         \
  X(cuGraphAddMemsetNode, 10000)         \
  X(cuGraphAddMemcpyNode, 10000)         \
  X(cuGraphClone, 10000)                 \
  X(cuGraphExecKernelNodeSetParams, 12000) \
  X(cuGraphAddChildGraphNode, 10000)       \
  X(cuGraphNodeSetEnabled, 11060)          \
  X(cuGraphExecUpdate, 12000)

// The green-context ones among them (all or nothing: see HasGreenContexts).
#define FERRY_CUDA_GREEN_CONTEXT_ENTRY_POINTS(X) \
  X(cuDeviceGetDevResource, 12040)               \
  X(cuDevSmResourceSplitByCount, 12040)          \
  X(cuDevResourceGenerateDesc, 12040)            \
  X(cuGreenCtxCreate, 12040)                     \
  X(cuGreenCtxDestroy, 12040)                    \
  X(cuCtxFromGreenCtx, 12040)

// Peers (cuDeviceCanAccessPeer and the rest): each is answered
// CUDA_ERROR_NOT_SUPPORTED where the driver lacks it.
#define FERRY_CUDA_PEER_ENTRY_POINTS(X) \
  X(cuDeviceCanAccessPeer, 4000)        \
  X(cuDeviceGetP2PAttribute, 8000)      \
  X(cuCtxEnablePeerAccess, 4000)        \
  X(cuCtxDisablePeerAccess, 4000)       \
  X(cuMemcpyPeerAsync, 4000)
