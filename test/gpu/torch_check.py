#!/usr/bin/env python3
"""Stock PyTorch on CUDA, for the GPU check. Run unmodified through ferry
(LD_LIBRARY_PATH puts ferry's libcuda.so.1 first, FERRY_SERVER set: over TCP
and over unix: shared memory) and natively; the harness compares the runs.

Sub-checks, each reported on its own (one failing does not stop the others;
the graph check runs last because a failed capture may leave the context in
a state later work should not inherit):

  libcuda_loaded   which libcuda.so.1 the process mapped (/proc/self/maps;
                   with --expect-libcuda-dir it must come from that folder)
  device_query     count, name, memory, SMs, capability
  tensor_ops       matmul, elementwise, reductions against CPU references
  copies           pageable and pinned, both ways, non_blocking
  mlp_training     a small MLP, --steps steps; its loss must fall
  transformer      an nn.TransformerEncoder on a shift-by-one token task, fixed seed and
                   data, --transformer-steps steps; its loss must fall, and the
                   harness compares its final loss with the native run's
  inference        the trained transformer in eval mode (the fused fast path):
                   accuracy well above chance, batched == chunked
  memory_stats     allocated / peak / reserved / mem_get_info consistent
  cuda_graphs      torch.cuda.CUDAGraph capture of the MLP's forward pass,
                   replayed --graph-replays times on new inputs, each result
                   checked against eager mode

--only NAME[,NAME...] runs those sub-checks alone. --pause-at-step K
--pause-seconds S makes the transformer's training stop calling the GPU for S
seconds before step K (ferryd may park its memory or give its slice back
meanwhile, issue 16): its losses must go on as an unpaused run's do.

Prints one line per sub-check and "result {json}" as its last line; exits 0
when every sub-check passed, 1 otherwise, 2 when torch or CUDA is missing.
"""
import argparse
import json
import os
import sys
import time
import traceback

# cuBLAS picks reproducible kernels only with a fixed workspace; set before
# torch loads it, so the native and the ferry run compute the same losses.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def loaded_libcuda():
    """Paths of every libcuda.so* mapped into this process."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libcuda.so"):
                paths.add(parts[5])
    return sorted(paths)


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


class Checks:
    """Runs each sub-check, catching what it raises, and keeps the verdicts."""

    def __init__(self):
        self.result = {"checks": {}, "details": {}}
        self.failures = []

    def record(self, name, ok, detail=""):
        verdict = "PASS" if ok else "FAIL"
        self.result["checks"][name] = verdict
        self.result["details"][name] = detail
        print("%-16s %s %s" % (name, verdict, detail), flush=True)
        if not ok:
            self.failures.append(name)

    def run(self, name, fn):
        """fn returns (ok, detail); an exception is a FAIL naming it."""
        try:
            ok, detail = fn()
        except Exception as error:  # noqa: BLE001 - any failure is this check's
            traceback.print_exc(file=sys.stderr)
            ok, detail = False, "%s: %s" % (type(error).__name__, str(error).splitlines()[0]
                                            if str(error) else "")
        self.record(name, ok, detail)
        return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300, help="MLP training steps")
    parser.add_argument("--transformer-steps", type=int, default=300)
    parser.add_argument("--graph-replays", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expect-libcuda-dir", default="",
                        help="fail unless libcuda.so.1 was loaded from this folder")
    parser.add_argument("--only", default="", help="comma-separated sub-checks to run alone")
    parser.add_argument("--pause-at-step", type=int, default=-1,
                        help="the transformer makes no GPU call for --pause-seconds before it")
    parser.add_argument("--pause-seconds", type=float, default=0.0)
    args = parser.parse_args()
    checks = Checks()
    result = checks.result

    try:
        import torch
    except ImportError as error:
        checks.record("import_torch", False, str(error))
        print("result " + json.dumps(result))
        return 2

    result["torch"] = torch.__version__
    result["torch_cuda"] = torch.version.cuda
    available = torch.cuda.is_available()
    checks.record("cuda_available", available, "torch %s (CUDA %s)" % (torch.__version__,
                                                                      torch.version.cuda))
    if not available:
        print("result " + json.dumps(result))
        return 2
    dev = torch.device("cuda:0")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)

    def libcuda_loaded():
        torch.zeros(1, device=dev)  # the driver is loaded by now
        libcuda = loaded_libcuda()
        result["libcuda"] = libcuda
        if args.expect_libcuda_dir:
            want = os.path.realpath(args.expect_libcuda_dir)
            ok = bool(libcuda) and all(os.path.dirname(os.path.realpath(p)) == want
                                       for p in libcuda)
        else:
            ok = bool(libcuda)
        return ok, " ".join(libcuda)

    def device_query():
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        result["device"] = {"count": count, "name": props.name, "memory": props.total_memory,
                            "sms": props.multi_processor_count,
                            "capability": "%d.%d" % (props.major, props.minor)}
        ok = count >= 1 and props.total_memory > 0 and props.multi_processor_count > 0
        return ok, "%s, %d SMs, %.1f GiB" % (props.name, props.multi_processor_count,
                                             props.total_memory / 2**30)

    def tensor_ops():
        torch.manual_seed(args.seed)
        a_cpu = torch.randn(512, 256, dtype=torch.float64)
        b_cpu = torch.randn(256, 128, dtype=torch.float64)
        a, b = a_cpu.to(dev), b_cpu.to(dev)
        mm_ok = torch.allclose((a @ b).cpu(), a_cpu @ b_cpu, rtol=1e-10, atol=1e-10)
        ew_ok = torch.allclose((a.sin() * 2 + a.exp()).cpu(), a_cpu.sin() * 2 + a_cpu.exp(),
                               rtol=1e-12)
        red_ok = abs(float(a.sum()) - float(a_cpu.sum())) < 1e-8 and \
            torch.equal(a.argmax(dim=1).cpu(), a_cpu.argmax(dim=1))
        return mm_ok and ew_ok and red_ok, "matmul %s elementwise %s reductions %s" % (
            mm_ok, ew_ok, red_ok)

    def copies():
        big = torch.arange(1 << 22, dtype=torch.int32)
        pinned = big.pin_memory()
        on_dev = pinned.to(dev, non_blocking=True)
        back = torch.empty_like(pinned).pin_memory()
        back.copy_(on_dev * 3, non_blocking=True)
        torch.cuda.synchronize()
        ok = torch.equal(back, big * 3) and torch.equal(big.to(dev).cpu(), big)
        return ok, "16 MiB pageable and pinned, both ways"

    models = {}

    def mlp_training():
        torch.manual_seed(args.seed + 1)
        x = torch.randn(4096, 64, device=dev)
        w_true = torch.randn(64, 1, device=dev)
        y = torch.tanh(x @ w_true) + 0.01 * torch.randn(4096, 1, device=dev)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 1)).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses, step_times = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            batch = torch.randint(0, x.shape[0], (256,), device=dev)
            loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))  # waits for the step, as a training loop that logs does
            step_times.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        models["mlp"] = model
        first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
        step_ms = 1000 * median(step_times[10:] or step_times)
        result["training"] = {"steps": args.steps, "loss_first10": first, "loss_last10": last,
                              "step_ms_median": step_ms}
        return last < 0.5 * first, "loss %.4f -> %.4f, %.3f ms/step (median)" % (first, last,
                                                                                 step_ms)

    vocab, length = 32, 32

    def transformer_task(generator, count):
        # Each target is the previous token: it needs attention to the previous
        # position, so the model must learn positions, yet a few hundred steps
        # learn it.
        tokens = torch.randint(0, vocab, (count, length), generator=generator)
        targets = torch.roll(tokens, 1, dims=1)
        targets[:, 0] = tokens[:, 0]
        return tokens, targets

    class TinyTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, 128)
            self.position = torch.nn.Parameter(torch.randn(length, 128) * 0.02)
            layer = torch.nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=256,
                                                     dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2,
                                                       enable_nested_tensor=False)
            self.head = torch.nn.Linear(128, vocab)

        def forward(self, tokens):
            return self.head(self.encoder(self.embed(tokens) + self.position))

    def transformer():
        torch.manual_seed(args.seed + 2)
        generator = torch.Generator().manual_seed(args.seed + 3)
        tokens, targets = transformer_task(generator, 8192)
        tokens, targets = tokens.to(dev), targets.to(dev)
        # The batch order is drawn on the CPU, so it is the same in every run.
        order = torch.randint(0, tokens.shape[0], (args.transformer_steps, 64),
                              generator=generator).to(dev)
        model = TinyTransformer().to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses, step_times = [], []
        model.train()
        paused = 0.0
        for step in range(args.transformer_steps):
            if step == args.pause_at_step and args.pause_seconds > 0:
                # Idle: everything queued is done, then no call at all.
                torch.cuda.synchronize()
                pause_start = time.perf_counter()
                time.sleep(args.pause_seconds)
                paused = time.perf_counter() - pause_start
            start = time.perf_counter()
            batch = order[step]
            logits = model(tokens[batch])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab),
                                                     targets[batch].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            step_times.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        models["transformer"] = model
        first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
        step_ms = 1000 * median(step_times[10:] or step_times)
        result["transformer"] = {"steps": args.transformer_steps, "seed": args.seed,
                                 "loss_first10": first, "loss_last10": last,
                                 "loss_final": losses[-1], "step_ms_median": step_ms,
                                 "losses_every_50": losses[::50]}
        if args.pause_at_step >= 0 and args.pause_at_step < len(step_times):
            # The first step after the pause waits for what ferryd parked.
            result["transformer"]["paused_s"] = paused
            result["transformer"]["step_after_pause_ms"] = 1000 * step_times[args.pause_at_step]
        return last < 0.7 * first, "loss %.4f -> %.4f (final %.6f), %.3f ms/step (median)" % (
            first, last, losses[-1], step_ms)

    def inference():
        model = models.get("transformer")
        if model is None:
            return False, "no trained transformer (its training failed)"
        generator = torch.Generator().manual_seed(args.seed + 4)
        tokens, targets = transformer_task(generator, 1024)
        tokens, targets = tokens.to(dev), targets.to(dev)
        model.eval()
        with torch.inference_mode():
            start = time.perf_counter()
            logits = model(tokens)
            predicted = logits.argmax(dim=-1)
            accuracy = float((predicted == targets).float().mean())
            latency_ms = 1000 * (time.perf_counter() - start)
            chunked = torch.cat([model(chunk) for chunk in tokens.split(256)])
            consistent = torch.allclose(chunked, logits, rtol=1e-3, atol=1e-3)
        result["inference"] = {"accuracy": accuracy, "batch": 1024, "latency_ms": latency_ms}
        ok = accuracy > 3.0 / vocab and consistent
        return ok, "accuracy %.3f (chance %.3f), batched == chunked %s, 1024 sequences in " \
            "%.1f ms" % (accuracy, 1.0 / vocab, consistent, latency_ms)

    def memory_stats():
        allocated = torch.cuda.memory_allocated()
        peak = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.memory_reserved()
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        result["memory"] = {"allocated": allocated, "peak": peak, "reserved": reserved,
                            "free": free, "total": total,
                            "alloc_retries": stats.get("num_alloc_retries", 0)}
        ok = 0 < allocated <= min(peak, reserved) and 0 < free <= total
        return ok, "allocated %d peak %d reserved %d free %d of %d" % (allocated, peak,
                                                                        reserved, free, total)

    def cuda_graphs():
        model = models.get("mlp")
        if model is None:
            return False, "no trained MLP (its training failed)"
        model.eval()
        static_x = torch.randn(256, 64, device=dev)
        # Warm-up on a side stream, as torch.cuda.graphs requires before capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_y = model(static_x)
        worst = 0.0
        start = time.perf_counter()
        for replay in range(args.graph_replays):
            x = torch.randn(256, 64, device=dev)
            static_x.copy_(x)
            graph.replay()
            with torch.no_grad():
                expected = model(x)
            worst = max(worst, float((static_y - expected).abs().max()))
        torch.cuda.synchronize()
        elapsed_ms = 1000 * (time.perf_counter() - start)
        result["cuda_graphs"] = {"replays": args.graph_replays, "max_abs_diff": worst}
        return worst < 1e-4, "%d replays, max |graph - eager| %.2g, %.1f ms" % (
            args.graph_replays, worst, elapsed_ms)

    for name, fn in [("libcuda_loaded", libcuda_loaded), ("device_query", device_query),
                     ("tensor_ops", tensor_ops), ("copies", copies),
                     ("mlp_training", mlp_training), ("transformer", transformer),
                     ("inference", inference), ("memory_stats", memory_stats),
                     ("cuda_graphs", cuda_graphs)]:
        if args.only and name not in args.only.split(","):
            continue
        checks.run(name, fn)

    result["failures"] = checks.failures
    print("result " + json.dumps(result), flush=True)
    return 0 if not checks.failures else 1


if __name__ == "__main__":
    sys.exit(main())
