#!/usr/bin/env python3
"""Stock CuPy through ferry's stub against `ferryd --backend host`.

    cupy_probe.py cupy13|cupy12

The argument names the CuPy build (cupy-cuda13x or cupy-cuda12x) and so the
CUDA runtime major version it must have loaded: the CUDA 12 runtime asks the
driver for entry points and export tables differently from the CUDA 13 one.
The host backend has no twin for CuPy's kernels (compiled at run time by
NVRTC): the probes keep to the runtime's memory, copy, stream, event and graph
calls, and one checks that an elementwise kernel fails with a clear error and
leaves the process able to copy. Verdict lines as probe_common says.
"""
import os
import sys
import time

started = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_common import Probes, Skip, check, check_ferry_libcuda  # noqa: E402

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

MIB = 1 << 20
framework = sys.argv[1] if len(sys.argv) > 1 else "cupy13"
expected_major = {"cupy13": 13, "cupy12": 12}[framework]
probes = Probes(framework)
runtime = cp.cuda.runtime
rng = np.random.default_rng(0)


def figure(name, value):
    print("FIGURE %s.%s %s" % (framework, name, value), flush=True)


def first_copy():
    host = np.arange(256, dtype=np.float32)
    back = cp.asnumpy(cp.asarray(host))
    check(np.array_equal(back, host), "first round trip changed the values")
    figure("import_to_first_copy_s", "%.2f" % (time.perf_counter() - started))
    return "256 floats there and back"


def device_query():
    version = runtime.runtimeGetVersion()
    check(version // 1000 == expected_major,
          "runtime %d loaded, CUDA %d expected" % (version, expected_major))
    driver = runtime.driverGetVersion()
    # A runtime runs on any driver of its major version or newer.
    check(driver // 1000 >= version // 1000, "driver %d older than runtime %d" % (driver, version))
    count = runtime.getDeviceCount()
    check(count >= 1, "device count %d" % count)
    props = runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    check(name and props["totalGlobalMem"] > 0 and props["multiProcessorCount"] > 0,
          "properties %r" % {k: props[k] for k in ("name", "totalGlobalMem")})
    free, total = runtime.memGetInfo()
    check(0 < free <= total == props["totalGlobalMem"], "memGetInfo (%d, %d)" % (free, total))
    check(cp.cuda.Device(0).compute_capability == "%d%d" % (props["major"], props["minor"]),
          "compute_capability")
    return "runtime %d, driver %d, %d device(s): %s, sm_%d%d; libcuda %s" % (
        version, driver, count, name, props["major"], props["minor"], check_ferry_libcuda())


def allocation():
    raw = runtime.malloc(3 * MIB)
    try:
        check(raw != 0, "cudaMalloc gave NULL")
    finally:
        runtime.free(raw)
    arrays = [cp.empty(size, dtype=cp.uint8) for size in (1, 4096, 3 * MIB)]
    pointers = [a.data.ptr for a in arrays]
    check(all(pointers) and len(set(pointers)) == len(pointers), "pointers %s" % pointers)
    return "cudaMalloc/cudaFree; pool arrays of 1 B, 4 KiB, 3 MiB"


def round_trip(nbytes):
    def probe():
        host = rng.integers(-2**31, 2**31 - 1, nbytes // 4, dtype=np.int32)
        back = cp.asnumpy(cp.asarray(host))
        check(np.array_equal(back, host), "values changed on the way")
        return "%d bytes H2D, D2H, equal" % nbytes
    return probe


def d2d_copy():
    host = np.arange(4 * MIB // 4, dtype=np.int32)
    source = cp.asarray(host)
    target = cp.empty_like(source)
    runtime.memcpy(target.data.ptr, source.data.ptr, source.nbytes,
                   runtime.memcpyDeviceToDevice)
    second = cp.empty_like(source)
    second.data.copy_from_device(source.data, source.nbytes)
    check(np.array_equal(cp.asnumpy(target), host) and np.array_equal(cp.asnumpy(second), host),
          "device copy differs")
    return "4 MiB cudaMemcpy D2D and MemoryPointer.copy_from_device"


def pinned_non_blocking():
    nbytes = 16 * MIB
    stream = cp.cuda.Stream(non_blocking=True)
    pinned_in = np.frombuffer(cp.cuda.alloc_pinned_memory(nbytes), np.uint8, nbytes)
    pinned_out = np.frombuffer(cp.cuda.alloc_pinned_memory(nbytes), np.uint8, nbytes)
    pinned_in[:] = rng.integers(0, 255, nbytes, dtype=np.uint8)
    device = cp.empty(nbytes, dtype=cp.uint8)
    device.set(pinned_in, stream=stream)
    device.get(stream=stream, out=pinned_out)
    stream.synchronize()
    check(np.array_equal(pinned_out, pinned_in), "pinned round trip changed the values")
    return "16 MiB pinned set/get on a non-blocking stream"


def events():
    stream = cp.cuda.Stream(non_blocking=True)
    nbytes = 16 * MIB
    pinned = np.frombuffer(cp.cuda.alloc_pinned_memory(nbytes), np.uint8, nbytes)
    pinned[:] = 7
    device = cp.empty(nbytes, dtype=cp.uint8)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    runtime.memcpyAsync(device.data.ptr, pinned.ctypes.data, nbytes,
                        runtime.memcpyHostToDevice, stream.ptr)
    end.record(stream)
    end.synchronize()
    check(end.done, "event not done after synchronize")
    ms = cp.cuda.get_elapsed_time(start, end)
    check(ms >= 0, "elapsed %f ms" % ms)
    other = cp.cuda.Stream(non_blocking=True)
    other.wait_event(end)
    back = device.get(stream=other)
    other.synchronize()
    check(bool((back == 7).all()), "copy after wait_event differs")
    return "16 MiB H2D timed at %.3f ms; wait_event orders a second stream" % ms


def memory_pool():
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    used = pool.used_bytes()
    block = cp.empty(32 * MIB, dtype=cp.uint8)
    check(pool.used_bytes() - used >= 32 * MIB, "used_bytes grew by %d" % (pool.used_bytes() - used))
    free_holding, _ = runtime.memGetInfo()
    del block
    check(pool.used_bytes() == used, "used_bytes did not drop back")
    pool.free_all_blocks()
    free_after, _ = runtime.memGetInfo()
    check(free_after - free_holding >= 32 * MIB,
          "memGetInfo free grew by %d after free_all_blocks" % (free_after - free_holding))
    return "32 MiB: used/total bytes consistent, free_all_blocks gave %d MiB back" % (
        (free_after - free_holding) // MIB)


def cuda_graph():
    """Stream capture of device-to-device copies and a memset; the graph
    replayed after new input was copied in, the outputs follow the input."""
    n = MIB
    stream = cp.cuda.Stream(non_blocking=True)
    source, copied, chained, cleared = (cp.zeros(n, dtype=cp.uint8) for _ in range(4))
    stream.synchronize()
    cp.cuda.Device().synchronize()
    stream.begin_capture()
    try:
        runtime.memcpyAsync(copied.data.ptr, source.data.ptr, n,
                            runtime.memcpyDeviceToDevice, stream.ptr)
        runtime.memsetAsync(cleared.data.ptr, 0x5A, n, stream.ptr)
        runtime.memcpyAsync(chained.data.ptr, copied.data.ptr, n,
                            runtime.memcpyDeviceToDevice, stream.ptr)
    finally:
        graph = stream.end_capture()
    for replay in range(3):
        value = 17 + replay
        source.set(np.full(n, value, dtype=np.uint8))
        cleared.set(np.zeros(n, dtype=np.uint8))
        graph.launch(stream)
        stream.synchronize()
        for name, array, expected in (("copy", copied, value), ("chained copy", chained, value),
                                      ("memset", cleared, 0x5A)):
            check(bool((cp.asnumpy(array) == expected).all()),
                  "replay %d: %s output not %d" % (replay, name, expected))
    return "D2D copy -> memset -> D2D copy captured, 3 replays with new input"


def graph_host_copies():
    """Capturing a copy from pinned host memory. ferry refuses it (a replay
    would need the client's memory at the server): SKIP while it does, with
    the error the program saw."""
    n = MIB
    stream = cp.cuda.Stream(non_blocking=True)
    pinned = np.frombuffer(cp.cuda.alloc_pinned_memory(n), np.uint8, n)
    pinned[:] = np.arange(n, dtype=np.uint8)
    target = cp.empty(n, dtype=cp.uint8)
    stream.begin_capture()
    try:
        runtime.memcpyAsync(target.data.ptr, pinned.ctypes.data, n,
                            runtime.memcpyHostToDevice, stream.ptr)
    finally:
        try:
            graph = stream.end_capture()
        except cp.cuda.runtime.CUDARuntimeError as error:
            if "Capture" not in str(error):
                raise
            raise Skip("ferry does not capture host<->device copies: %s" % str(error)[:100])
    graph.launch(stream)
    stream.synchronize()
    check(np.array_equal(cp.asnumpy(target), pinned), "replayed H2D copy differs")
    return "pinned H2D copy captured and replayed"


def kernel_fails_cleanly():
    a = cp.asarray(np.arange(1024, dtype=np.float32))
    try:
        (a + a).get()
    except (cp.cuda.driver.CUDADriverError, cp.cuda.runtime.CUDARuntimeError) as error:
        # The launch itself is queued; its error comes back on the next call
        # that waits (the runtime's error then, not the driver's).
        message = str(error)
    except Exception as error:  # noqa: BLE001 - sorted out below
        text = "%s: %s" % (type(error).__name__, error)
        if "nvrtc" in text.lower():
            raise Skip("CuPy could not compile its kernel (no NVRTC for this CUDA): %s"
                       % text[:120]) from error
        raise
    else:
        raise AssertionError("a + a ran on the host backend: a twin of CuPy's kernel?")
    host = np.arange(MIB // 4, dtype=np.int32)
    check(np.array_equal(cp.asnumpy(cp.asarray(host)), host), "copies broken after the error")
    return "a + a -> %s; copies work afterwards" % message[:120]


probes.run("first_copy", first_copy)
probes.run("device_query", device_query)
probes.run("allocation", allocation)
probes.run("round_trip_small", round_trip(4096))
probes.run("round_trip_16MiB", round_trip(16 * MIB))
probes.run("d2d_copy", d2d_copy)
probes.run("pinned_non_blocking", pinned_non_blocking)
probes.run("events", events)
probes.run("memory_pool", memory_pool)
probes.run("cuda_graph", cuda_graph)
probes.run("graph_host_copies", graph_host_copies)
probes.run("kernel_fails_cleanly", kernel_fails_cleanly)
sys.exit(probes.finish())
