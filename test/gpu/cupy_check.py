#!/usr/bin/env python3
"""CuPy on CUDA, for the GPU check, when the machine has CuPy: an
elementwise kernel (compiled at run time by NVRTC and loaded as a module), a
reduction, and a cuBLAS matmul, each against numpy. Run through ferry and
natively, unmodified.

Prints one line per sub-check and "result {json}" last; exits 0 when all
passed, 1 when one failed, 77 when CuPy (or numpy) cannot be imported, so
the harness reports SKIP with the reason printed.
"""
import json
import sys
import time


def main():
    try:
        import numpy as np
        import cupy as cp
    except Exception as error:  # noqa: BLE001 - any import failure means "not here"
        print("SKIP cupy not importable: %s: %s" % (type(error).__name__, error))
        return 77
    result = {"cupy": cp.__version__, "checks": {}, "details": {}}
    failures = []

    def run(name, fn):
        try:
            ok, detail = fn()
        except Exception as error:  # noqa: BLE001 - any failure is this check's
            ok, detail = False, "%s: %s" % (type(error).__name__,
                                            (str(error).splitlines() or [""])[0])
        result["checks"][name] = "PASS" if ok else "FAIL"
        result["details"][name] = detail
        print("%-12s %s %s" % (name, "PASS" if ok else "FAIL", detail), flush=True)
        if not ok:
            failures.append(name)

    rng = np.random.default_rng(0)

    def elementwise():
        kernel = cp.ElementwiseKernel("float32 x, float32 y", "float32 z",
                                      "z = x * x + 2.0f * y", "ferry_check_fma")
        x = rng.standard_normal(1 << 20, dtype=np.float32)
        y = rng.standard_normal(1 << 20, dtype=np.float32)
        got = cp.asnumpy(kernel(cp.asarray(x), cp.asarray(y)))
        ok = np.allclose(got, x * x + 2 * y, rtol=1e-6, atol=1e-6)
        return ok, "1M floats, custom kernel (NVRTC)"

    def reduction():
        x = rng.standard_normal((1024, 1024))
        d = cp.asarray(x)
        ok = abs(float(d.sum()) - x.sum()) < 1e-8 * abs(x).sum() and \
            np.allclose(cp.asnumpy(d.max(axis=0)), x.max(axis=0))
        return ok, "sum and max over 1M doubles"

    def matmul():
        a = rng.standard_normal((1024, 1024))
        b = rng.standard_normal((1024, 1024))
        da, db = cp.asarray(a), cp.asarray(b)
        start = time.perf_counter()
        dc = da @ db
        cp.cuda.Device().synchronize()
        ms = 1000 * (time.perf_counter() - start)
        ok = np.allclose(cp.asnumpy(dc), a @ b, rtol=1e-9, atol=1e-9)
        return ok, "1024^2 float64 (cuBLAS) vs numpy, %.1f ms" % ms

    for name, fn in [("elementwise", elementwise), ("reduction", reduction),
                     ("matmul", matmul)]:
        run(name, fn)
    result["failures"] = failures
    print("result " + json.dumps(result), flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
