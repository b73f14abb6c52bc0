#!/usr/bin/env python3
"""Stock PyTorch on CUDA, for the GPU check. Run unmodified twice:
through ferry (LD_LIBRARY_PATH puts ferry's libcuda.so.1 first, FERRY_SERVER
set) and natively; the harness compares the two.

Checks: which libcuda.so.1 the process loaded (from /proc/self/maps; with
--expect-libcuda-dir it must come from that folder), device query, tensor
ops against CPU references, copies both ways (pageable and pinned,
non_blocking), a small MLP trained for --steps steps whose loss must fall,
torch.cuda.synchronize, memory stats. Prints "result {json}" as its last
line and exits 0 when every check passed.
"""
import argparse
import json
import os
import sys
import time


def loaded_libcuda():
    """Paths of every libcuda.so* mapped into this process."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libcuda.so"):
                paths.add(parts[5])
    return sorted(paths)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--expect-libcuda-dir", default="",
                        help="fail unless libcuda.so.1 was loaded from this folder")
    args = parser.parse_args()
    result = {"checks": {}}
    failures = []

    def check(name, ok, detail=""):
        result["checks"][name] = "PASS" if ok else "FAIL"
        print("%-28s %s %s" % (name, "PASS" if ok else "FAIL", detail), flush=True)
        if not ok:
            failures.append(name)

    import torch

    available = torch.cuda.is_available()
    check("cuda_available", available, "torch %s" % torch.__version__)
    if not available:
        print("result " + json.dumps(result))
        return 1

    libcuda = loaded_libcuda()
    result["libcuda"] = libcuda
    if args.expect_libcuda_dir:
        want = os.path.realpath(args.expect_libcuda_dir)
        ok = bool(libcuda) and all(os.path.dirname(os.path.realpath(p)) == want for p in libcuda)
    else:
        ok = bool(libcuda)
    check("libcuda_loaded", ok, " ".join(libcuda))

    count = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    result["device"] = {"count": count, "name": props.name, "memory": props.total_memory,
                        "sms": props.multi_processor_count,
                        "capability": "%d.%d" % (props.major, props.minor)}
    check("device_query", count >= 1 and props.total_memory > 0 and props.multi_processor_count > 0,
          "%s, %d SMs, %.1f GiB" % (props.name, props.multi_processor_count,
                                    props.total_memory / 2**30))

    torch.manual_seed(0)
    dev = torch.device("cuda:0")
    a_cpu = torch.randn(512, 256, dtype=torch.float64)
    b_cpu = torch.randn(256, 128, dtype=torch.float64)
    a, b = a_cpu.to(dev), b_cpu.to(dev)
    mm_ok = torch.allclose((a @ b).cpu(), a_cpu @ b_cpu, rtol=1e-10, atol=1e-10)
    ew_ok = torch.allclose((a.sin() * 2 + a.exp()).cpu(), a_cpu.sin() * 2 + a_cpu.exp(), rtol=1e-12)
    red_ok = abs(float(a.sum()) - float(a_cpu.sum())) < 1e-8 and \
        torch.equal(a.argmax(dim=1).cpu(), a_cpu.argmax(dim=1))
    check("tensor_ops", mm_ok and ew_ok and red_ok,
          "matmul %s elementwise %s reductions %s" % (mm_ok, ew_ok, red_ok))

    big = torch.arange(1 << 22, dtype=torch.int32)
    pinned = big.pin_memory()
    on_dev = pinned.to(dev, non_blocking=True)
    back = torch.empty_like(pinned).pin_memory()
    back.copy_(on_dev * 3, non_blocking=True)
    torch.cuda.synchronize()
    copies_ok = torch.equal(back, big * 3) and torch.equal(big.to(dev).cpu(), big)
    check("copies", copies_ok, "16 MiB pageable and pinned, both ways")

    # A small MLP on a fixed synthetic regression task.
    torch.manual_seed(1)
    x = torch.randn(4096, 64, device=dev)
    w_true = torch.randn(64, 1, device=dev)
    y = torch.tanh(x @ w_true) + 0.01 * torch.randn(4096, 1, device=dev)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 1)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    step_times = []
    for step in range(args.steps):
        start = time.perf_counter()
        batch = torch.randint(0, x.shape[0], (256,), device=dev)
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))  # waits for the step, as a training loop that logs does
        step_times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    first = sum(losses[:10]) / 10
    last = sum(losses[-10:]) / 10
    timed = sorted(step_times[10:]) or sorted(step_times)
    result["training"] = {"steps": args.steps, "loss_first10": first, "loss_last10": last,
                          "step_ms_median": 1000 * timed[len(timed) // 2],
                          "step_ms_mean": 1000 * sum(timed) / len(timed)}
    check("training", last < 0.5 * first,
          "loss %.4f -> %.4f, %.3f ms/step (median)" % (first, last,
                                                        result["training"]["step_ms_median"]))

    allocated = torch.cuda.memory_allocated()
    peak = torch.cuda.max_memory_allocated()
    free, total = torch.cuda.mem_get_info()
    result["memory"] = {"allocated": allocated, "peak": peak, "free": free, "total": total}
    check("memory_stats", 0 < allocated <= peak and 0 < free <= total,
          "allocated %d peak %d free %d of %d" % (allocated, peak, free, total))

    result["failures"] = failures
    print("result " + json.dumps(result), flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
