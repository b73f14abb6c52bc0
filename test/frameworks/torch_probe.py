#!/usr/bin/env python3
"""Stock PyTorch through ferry's stub against `ferryd --backend host`.

The host backend runs no kernel it has no host twin for, and it has none of
torch's: every probe here keeps to what needs no kernel (device queries,
allocation, copies, events, the caching allocator, graphs of copies and
memsets), and one probe checks that a kernel op fails with a clear error and
leaves the process able to copy. Verdict lines as probe_common says; "FIGURE"
lines carry timings for bench/results (never a verdict).
"""
import ctypes
import os
import sys
import threading
import time

started = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_common import Probes, Skip, check, check_ferry_libcuda  # noqa: E402

import torch  # noqa: E402

MIB = 1 << 20
probes = Probes("torch")
cuda = torch.device("cuda")


def figure(name, value):
    print("FIGURE torch.%s %s" % (name, value), flush=True)


def first_copy():
    """The first CUDA work of the process: context, module registration and
    one small round trip. Its time is the figure users feel first."""
    host = torch.arange(256, dtype=torch.float32)
    back = host.to(cuda).cpu()
    check(torch.equal(back, host), "first round trip changed the values")
    figure("import_to_first_copy_s", "%.2f" % (time.perf_counter() - started))
    return "256 floats there and back"


def device_query():
    check(torch.cuda.is_available(), "torch.cuda.is_available() is False")
    count = torch.cuda.device_count()
    check(count >= 1, "device_count %d" % count)
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    check(name and props.name == name, "name %r vs properties %r" % (name, props.name))
    check(props.total_memory > 0 and props.multi_processor_count > 0,
          "total_memory %d, SMs %d" % (props.total_memory, props.multi_processor_count))
    free, total = torch.cuda.mem_get_info(0)
    check(0 < free <= total == props.total_memory,
          "mem_get_info (%d, %d) vs total_memory %d" % (free, total, props.total_memory))
    capability = torch.cuda.get_device_capability(0)
    check(capability == (props.major, props.minor), "capability %s" % (capability,))
    return "%d device(s): %s, sm_%d%d, %d SMs, %.1f GiB; libcuda %s" % (
        count, name, props.major, props.minor, props.multi_processor_count,
        props.total_memory / (1 << 30), check_ferry_libcuda())


def allocation():
    tensors = [torch.empty(size, dtype=torch.uint8, device=cuda) for size in (1, 4096, 3 * MIB)]
    pointers = [t.data_ptr() for t in tensors]
    check(all(pointers) and len(set(pointers)) == len(pointers), "pointers %s" % pointers)
    return "1 B, 4 KiB, 3 MiB: distinct device pointers"


def round_trip(nbytes):
    def probe():
        generator = torch.Generator().manual_seed(nbytes)
        host = torch.randint(-2**31, 2**31 - 1, (nbytes // 4,), dtype=torch.int32,
                             generator=generator)
        device = host.to(cuda)
        back = device.cpu()
        check(torch.equal(back, host), "values changed on the way")
        return "%d bytes H2D, D2H, equal" % nbytes
    return probe


def d2d_clone():
    host = torch.arange(4 * MIB // 4, dtype=torch.int32)
    device = host.to(cuda)
    copy = device.clone()
    check(copy.data_ptr() != device.data_ptr(), "clone shares storage")
    target = torch.empty_like(device)
    target.copy_(device)
    check(torch.equal(copy.cpu(), host) and torch.equal(target.cpu(), host), "clone differs")
    return "4 MiB clone() and copy_() on the device"


def pinned_non_blocking():
    stream = torch.cuda.Stream()
    check(stream.cuda_stream != torch.cuda.default_stream().cuda_stream, "not a new stream")
    nbytes = 16 * MIB
    source = torch.randint(0, 255, (nbytes,), dtype=torch.uint8).pin_memory()
    check(source.is_pinned(), "pin_memory() did not pin")
    back = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    with torch.cuda.stream(stream):
        device = source.to(cuda, non_blocking=True)
        back.copy_(device, non_blocking=True)
    stream.synchronize()
    check(torch.equal(back, source), "pinned round trip changed the values")
    return "16 MiB pinned H2D + D2H, non_blocking, on a new stream"


def events():
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    data = torch.empty(16 * MIB, dtype=torch.uint8).pin_memory()
    device = torch.empty(16 * MIB, dtype=torch.uint8, device=cuda)
    start.record()
    device.copy_(data, non_blocking=True)
    end.record()
    end.synchronize()
    check(end.query(), "end event not complete after synchronize")
    ms = start.elapsed_time(end)
    check(ms >= 0, "elapsed %f ms" % ms)
    # An event waited on by another stream orders that stream's copy after it.
    stream = torch.cuda.Stream()
    stream.wait_event(end)
    with torch.cuda.stream(stream):
        back = device.to("cpu", non_blocking=False)
    check(torch.equal(back, data), "copy after wait_event differs")
    return "16 MiB H2D timed at %.3f ms; wait_event orders a second stream" % ms


def streams_and_threads():
    """A high-priority stream with record_stream, and four threads copying
    at once (each its own stream state in the runtime, one connection)."""
    stream = torch.cuda.Stream(priority=-1)
    check(stream.priority == -1, "priority %d" % stream.priority)
    host = torch.arange(MIB // 4, dtype=torch.int32)
    with torch.cuda.stream(stream):
        device = host.to(cuda, non_blocking=True)
        device.record_stream(stream)
    stream.synchronize()
    check(stream.query() and torch.equal(device.cpu(), host), "priority stream copy differs")
    errors = []

    def worker(index):
        try:
            data = torch.full((MIB // 4,), index, dtype=torch.int32)
            with torch.cuda.stream(torch.cuda.Stream()):
                for _ in range(5):
                    check(torch.equal(data.to(cuda).cpu(), data), "thread %d: copy differs" % index)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append("%s: %s" % (type(error).__name__, error))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check(not errors, "; ".join(errors))
    return "priority -1 stream + record_stream; 4 threads x 5 round trips of 1 MiB"


def cupy_interop():
    """CuPy (its own CUDA runtime instance) in the same process as torch:
    DLPack both ways shares the device memory, on torch's stream."""
    try:
        import cupy as cp
        import numpy as np
    except ImportError as error:
        raise Skip("cupy not importable here: %s" % error)
    stream = torch.cuda.Stream()
    host = torch.arange(MIB // 4, dtype=torch.int32)
    with torch.cuda.stream(stream):
        shared = host.to(cuda, non_blocking=True)
    stream.synchronize()
    view = cp.from_dlpack(shared)
    check(view.data.ptr == shared.data_ptr(), "from_dlpack copied instead of sharing")
    check(np.array_equal(cp.asnumpy(view), host.numpy()), "CuPy reads other values")
    with cp.cuda.ExternalStream(stream.cuda_stream):
        made = cp.asarray(np.arange(1000, dtype=np.int32))
        back = torch.from_dlpack(made)
    check(back.data_ptr() == made.data.ptr, "torch.from_dlpack copied")
    check(torch.equal(back.cpu(), torch.arange(1000, dtype=torch.int32)), "torch reads other values")
    return "cupy %s: DLPack torch -> cupy -> torch shares memory, on torch's stream" % cp.__version__


def memory_stats():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    block = torch.empty(32 * MIB, dtype=torch.uint8, device=cuda)
    allocated = torch.cuda.memory_allocated()
    check(allocated - base >= 32 * MIB, "memory_allocated grew by %d" % (allocated - base))
    check(torch.cuda.memory_reserved() >= allocated, "reserved < allocated")
    free_holding, _ = torch.cuda.mem_get_info()
    del block
    check(torch.cuda.memory_allocated() == base, "memory_allocated did not drop back")
    check(torch.cuda.max_memory_allocated() >= base + 32 * MIB, "peak lost the block")
    reserved_before = torch.cuda.memory_reserved()
    torch.cuda.empty_cache()
    reserved_after = torch.cuda.memory_reserved()
    free_after, _ = torch.cuda.mem_get_info()
    check(reserved_after < reserved_before, "empty_cache kept %d reserved" % reserved_after)
    check(free_after - free_holding >= 32 * MIB,
          "mem_get_info free grew by %d after empty_cache" % (free_after - free_holding))
    stats = torch.cuda.memory_stats()
    check(stats["num_alloc_retries"] == 0 and stats["num_ooms"] == 0, "retries or OOMs")
    return "32 MiB: allocated/peak/reserved consistent, empty_cache gave %d MiB back" % (
        (free_after - free_holding) // MIB)


def cudart():
    """The CUDA runtime torch itself loaded (the same library, not a second
    copy): for cudaMemsetAsync, which torch has no op for that is not a
    kernel."""
    lib = ctypes.CDLL("libcudart.so.%d" % int(torch.version.cuda.split(".")[0]))
    lib.cudaMemsetAsync.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t,
                                    ctypes.c_void_p]
    return lib


def cuda_graph():
    """A torch.cuda.CUDAGraph capturing device-to-device copies and a memset;
    replayed after new input was copied in, the outputs follow the input."""
    runtime = cudart()
    n = 1 * MIB
    source = torch.zeros(n, dtype=torch.uint8).to(cuda)
    copied = torch.empty(n, dtype=torch.uint8, device=cuda)
    chained = torch.empty(n, dtype=torch.uint8, device=cuda)
    cleared = torch.empty(n, dtype=torch.uint8, device=cuda)
    graph = torch.cuda.CUDAGraph()
    # torch.cuda.graph captures on a side stream of its own.
    with torch.cuda.graph(graph):
        copied.copy_(source)
        code = runtime.cudaMemsetAsync(cleared.data_ptr(), 0x5A, n,
                                       torch.cuda.current_stream().cuda_stream)
        check(code == 0, "cudaMemsetAsync in capture: error %d" % code)
        chained.copy_(copied)
    for replay in range(3):
        value = 17 + replay
        source.copy_(torch.full((n,), value, dtype=torch.uint8))
        cleared.copy_(torch.zeros(n, dtype=torch.uint8))
        graph.replay()
        torch.cuda.synchronize()
        for name, tensor, expected in (("copy", copied, value), ("chained copy", chained, value),
                                       ("memset", cleared, 0x5A)):
            check(bool((tensor.cpu() == expected).all()),
                  "replay %d: %s output not %d" % (replay, name, expected))
    return "D2D copy -> memset -> D2D copy captured, 3 replays with new input"


def graph_host_copies():
    """Capturing a copy from pinned host memory. ferry refuses it (a replay
    would need the client's memory at the server): SKIP while it does, with
    the error the program saw."""
    pinned = torch.arange(MIB, dtype=torch.uint8).pin_memory()
    target = torch.empty(MIB, dtype=torch.uint8, device=cuda)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            target.copy_(pinned, non_blocking=True)
    except RuntimeError as error:
        message = (str(error).strip().splitlines() or [""])[0]
        if "capturing" in message or "capture" in message:
            torch.cuda.synchronize()
            raise Skip("ferry does not capture host<->device copies: %s" % message[:100])
        raise
    graph.replay()
    torch.cuda.synchronize()
    check(torch.equal(target.cpu(), pinned), "replayed H2D copy differs")
    return "pinned H2D copy captured and replayed"


def loaded_libraries(prefix):
    """Every library this process mapped whose file name starts with `prefix`."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith(prefix):
                paths.add(parts[5])
    return sorted(paths)


def nvml():
    """nvidia-ml-py (pynvml) and torch.cuda.utilization()/memory_usage() through
    ferry's NVML stand-in: it shares the program's session, so it reports the
    borrowed device, its memory as ferry accounts it, and this process."""
    try:
        import pynvml
    except ImportError:
        raise Skip("nvidia-ml-py not installed (scripts/test-frameworks.sh installs it)")
    pynvml.nvmlInit()
    try:
        expected = os.environ.get("FERRY_LIBCUDA_DIR")
        paths = loaded_libraries("libnvidia-ml.so")
        check(paths, "no libnvidia-ml.so mapped")
        if expected:
            foreign = [p for p in paths
                       if os.path.dirname(os.path.realpath(p)) != os.path.realpath(expected)]
            check(not foreign, "libnvidia-ml from elsewhere: %s" % foreign)
        count = pynvml.nvmlDeviceGetCount()
        check(count == torch.cuda.device_count(), "%d NVML devices vs %d CUDA devices"
              % (count, torch.cuda.device_count()))
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        props = torch.cuda.get_device_properties(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        check(name == props.name, "name %r vs %r" % (name, props.name))
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        check(uuid == "GPU-%s" % props.uuid, "uuid %s vs torch's %s" % (uuid, props.uuid))
        check(pynvml.nvmlDeviceGetCudaComputeCapability(handle) == (props.major, props.minor),
              "compute capability")
        # Memory: the device's total as torch sees it, and this session's use,
        # which grows by exactly what the caching allocator reserves.
        torch.cuda.synchronize()
        before = pynvml.nvmlDeviceGetMemoryInfo(handle)
        reserved_before = torch.cuda.memory_reserved(0)
        block = torch.empty(64 * MIB, dtype=torch.uint8, device=cuda)
        after = pynvml.nvmlDeviceGetMemoryInfo(handle)
        reserved_after = torch.cuda.memory_reserved(0)
        check(before.total == after.total == props.total_memory,
              "total %d vs total_memory %d" % (after.total, props.total_memory))
        check(after.used - before.used == reserved_after - reserved_before >= 64 * MIB,
              "used %d -> %d while torch reserved %d -> %d"
              % (before.used, after.used, reserved_before, reserved_after))
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        check([p.pid for p in processes] == [os.getpid()], "processes %s" % processes)
        check(processes[0].usedGpuMemory == after.used, "the process's memory")
        del block
        # torch's own NVML readers.
        utilization = torch.cuda.utilization(0)
        memory_usage = torch.cuda.memory_usage(0)
        check(0 <= utilization <= 100 and 0 <= memory_usage <= 100,
              "utilization %s, memory_usage %s" % (utilization, memory_usage))
        try:
            pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            temperature = "read"
        except pynvml.NVMLError_NotSupported:
            temperature = "not supported"
        return ("%s %s: %d MiB of %d MiB used, +%d MiB with a 64 MiB tensor; "
                "utilization %d%%, memory_usage %d%%; temperature %s"
                % (name, uuid, after.used // MIB, after.total // MIB,
                   (after.used - before.used) // MIB, utilization, memory_usage, temperature))
    finally:
        pynvml.nvmlShutdown()


def expandable_segments():
    """PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, in a process of its own
    (the setting is read once): the allocator maps memory with the VMM calls
    after asking NVML whether the GPU has a fabric, which ferry's NVML
    stand-in answers (without one torch crashes there)."""
    import subprocess
    code = (
        "import torch\n"
        "x = torch.empty(64 << 20, dtype=torch.uint8, device='cuda')\n"
        "y = torch.arange(1 << 20, dtype=torch.int32).cuda()\n"
        "assert torch.equal(y.cpu(), torch.arange(1 << 20, dtype=torch.int32))\n"
        "reserved = torch.cuda.memory_reserved()\n"
        "del x, y\n"
        "torch.cuda.empty_cache()\n"
        "print('reserved', reserved, torch.cuda.memory_reserved())\n")
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=240)
    lines = (run.stderr.strip().splitlines() or [""])
    check(run.returncode == 0, "rc %d: %s" % (run.returncode, lines[-1][:200]))
    check("nvmlDeviceGetGpuFabricInfoV failed" not in run.stderr, "torch's fabric query failed")
    reserved = run.stdout.split()
    check(len(reserved) == 3 and int(reserved[1]) >= 64 << 20,
          "output %r" % run.stdout.strip())
    return "64 MiB + 4 MiB mapped as expandable segments, %s bytes reserved, %s after empty_cache" % (
        reserved[1], reserved[2])


def kernel_fails_cleanly():
    a = torch.arange(1024, dtype=torch.float32).to(cuda)  # a copy, not arange's kernel
    try:
        result = torch.add(a, a)
        torch.cuda.synchronize()
        result.cpu()
    except RuntimeError as error:
        message = (str(error).strip().splitlines() or [""])[0]
    else:
        raise AssertionError("torch.add ran on the host backend: a twin of torch's kernel?")
    check("CUDA" in message or "cuda" in message, "unclear error: %r" % message)
    # The error is the kernel's alone: the context still copies.
    host = torch.arange(MIB // 4, dtype=torch.int32)
    check(torch.equal(host.to(cuda).cpu(), host), "copies broken after the kernel error")
    return "torch.add -> %s; copies work afterwards" % message[:120]


probes.run("first_copy", first_copy)
probes.run("device_query", device_query)
probes.run("allocation", allocation)
probes.run("round_trip_small", round_trip(4096))
probes.run("round_trip_16MiB", round_trip(16 * MIB))
probes.run("d2d_clone", d2d_clone)
probes.run("pinned_non_blocking", pinned_non_blocking)
probes.run("events", events)
probes.run("streams_and_threads", streams_and_threads)
probes.run("memory_stats", memory_stats)
probes.run("cuda_graph", cuda_graph)
probes.run("graph_host_copies", graph_host_copies)
probes.run("cupy_interop", cupy_interop)
probes.run("nvml", nvml)
probes.run("expandable_segments", expandable_segments)
# Last: whatever a kernel error leaves behind must not change the others.
probes.run("kernel_fails_cleanly", kernel_fails_cleanly)
sys.exit(probes.finish())
