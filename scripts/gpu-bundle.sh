#!/usr/bin/env bash
# Builds ferry on this machine and packs what a machine with a GPU needs into
# device-bundle/ (ignored by git; carried to the device, so it must stay
# under 64 MiB): ferryd and ferryctl, ferry's libcuda.so.1 and NVML stand-in, the shared
# libraries they need that a stock CUDA image lacks (Cap'n Proto, Abseil, ...),
# the end-to-end programs and their module images, the GPU checks (test/gpu:
# cuBLAS, fault isolation, compute shares, graph bench, PyTorch and CuPy
# scripts) and ferry-bench with its kernels, for the driver figures.
# scripts/gpu-check.sh runs it there (or here, with --backend host).
#
#   scripts/gpu-bundle.sh            # build, then pack
#
# Environment: BUILD_DIR (default build), BUNDLE_DIR (default device-bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
bundle=${BUNDLE_DIR:-device-bundle}

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$build" -j"$(nproc)"

rm -rf "$bundle"
mkdir -p "$bundle"/{bin,client,deps,programs,images,host-kernels,checks}

# Debug info is most of the size; the device has no debugger anyway.
pack() {  # pack FILE DEST_DIR
  objcopy --strip-debug "$1" "$2/$(basename "$1")"
}

pack "$build/bin/ferryd" "$bundle/bin"
pack "$build/bin/ferryctl" "$bundle/bin"
pack "$build/lib/libcuda.so.1" "$bundle/client"
# ferry's NVML beside it, as on a client host: programs through ferry
# (e2e_nvml_query) must not find the GPU host's own NVML first.
pack "$build/lib/libnvidia-ml.so.1" "$bundle/client"
for program in "$build"/test/e2e/e2e_*; do
  [ -x "$program" ] && [ -f "$program" ] || continue
  case "$(basename "$program")" in e2e_test|e2e_plugin_test) continue ;; esac
  pack "$program" "$bundle/programs"
done
cp "$build"/test/e2e/e2e_kernels.* "$bundle/images/"
# Runtime programs (nvcc-built, cudart static and shared) when the tree has them.
if [ -d "$build/test/e2e_runtime" ]; then
  find "$build/test/e2e_runtime" -maxdepth 1 -type f -perm -u+x -name 'rt_*' \
    -exec cp {} "$bundle/programs/" \;
  cp "$build"/test/e2e_runtime/librt_*.so "$bundle/programs/" 2>/dev/null || true
  # runtime_link's JIT-link inputs.
  cp "$build"/test/e2e_runtime/link_*.ptx "$bundle/images/" 2>/dev/null || true
fi
# Every host-kernel plugin, for the harness's own check with --backend host
# (ferry-bench's among them, so that check takes the driver figures too).
find "$build/lib" "$build/test" -name 'lib*host*.so' -not -path '*/CMakeFiles/*' |
  xargs -r cp -t "$bundle/host-kernels/"
for program in gpu_cublas_gemm gpu_fault_check gpu_compute_share gpu_graph_bench; do
  pack "$build/test/gpu/$program" "$bundle/checks"
done
cp test/gpu/torch_check.py test/gpu/cupy_check.py "$bundle/checks/"
# ferry-bench's client mode takes the driver figures through ferry and natively.
pack "$build/bin/ferry-bench" "$bundle/bin"
cp "$build/bench/ferry_bench_kernels.fatbin" "$bundle/checks/"
# The CUDA backend's own GPU tests (gtest, label gpu), with their images.
pack "$build/bin/cuda_backend_gpu_test" "$bundle/checks"
mkdir -p "$bundle/checks/backend-images"
cp "$build"/test/server/backend/cuda/vadd.* "$bundle/checks/backend-images/"

# Shared libraries the binaries need, minus what every Linux image (glibc,
# the GCC runtime) and every CUDA image (the toolkit's libraries, the
# driver) already has. ldd resolves them on this machine.
is_stock() {
  case "$1" in
    libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|ld-linux*|linux-vdso*) return 0 ;;
    libgcc_s.so.*|libstdc++.so.*) return 0 ;;
    libcuda.so.*|libcudart.so.*|libcublas*.so.*|libnvidia*) return 0 ;;
  esac
  return 1
}
for binary in "$bundle"/bin/* "$bundle"/client/* "$bundle"/programs/* "$bundle"/checks/gpu_* \
  "$bundle"/checks/cuda_backend_gpu_test "$bundle"/host-kernels/*; do
  [ -f "$binary" ] || continue
  ldd "$binary" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
    while read -r name path; do
      is_stock "$name" || cp -nL "$path" "$bundle/deps/$name"
    done
done

{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!device-bundle' || echo ' (with uncommitted changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
} > "$bundle/MANIFEST"

size=$(du -sm "$bundle" | cut -f1)
echo "gpu-bundle: $bundle is ${size} MiB ($(find "$bundle" -type f | wc -l) files)"
if [ "$size" -ge 60 ]; then
  echo "gpu-bundle: $bundle is too large to carry (limit 64 MiB)" >&2
  exit 1
fi
