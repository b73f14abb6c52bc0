#!/usr/bin/env bash
# Regenerates the seed corpus of test/fuzz/corpus: frame, session and
# shm_ring seeds from fuzz_make_seeds (frames and calls made with ferry's own
# code), image seeds from nvcc (a tiny kernel as cubin, PTX, and fatbins with
# zstd- and LZ4-compressed entries). Run after a change to a target's input
# language; commit the result (every file is small).
#
#   test/fuzz/make_seeds.sh [BUILD_DIR]   (default build; must hold fuzz_make_seeds)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
corpus=test/fuzz/corpus

"$build/bin/fuzz_make_seeds" "$corpus"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/tiny.cu" <<'CU'
__device__ int counter[2];
__constant__ float scale = 2.0f;
extern "C" __global__ void axpy(float* y, const float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * scale * x[i] + y[i];
  if (i == 0) atomicAdd(&counter[0], 1);
}
CU
mkdir -p "$corpus/image"
"$nvcc" -cubin -arch=sm_90 -o "$corpus/image/tiny.cubin" "$tmp/tiny.cu"
"$nvcc" --ptx -arch=sm_90 -o "$corpus/image/tiny.ptx" "$tmp/tiny.cu"
"$nvcc" --fatbin -arch=sm_90 -Xfatbin -compress-all -o "$corpus/image/tiny_zstd.fatbin" "$tmp/tiny.cu"
"$nvcc" --fatbin -gencode arch=compute_90,code=compute_90 --compress-mode=speed \
  -o "$corpus/image/tiny_ptx_lz4.fatbin" "$tmp/tiny.cu"
ls -l "$corpus"/*
