// A cuBLAS program (cudart and cuBLAS as nvcc links them): creates a handle
// (cuBLAS and cuBLASLt bring their own runtime copies, which load their
// libraries through the driver), binds it to a stream, moves a matrix in and
// out with cublasSetMatrix / cublasGetMatrix (copies, no kernels), and runs
// one SGEMM, checked against a CPU reference; cublasDestroy at the end.
//
// Through ferryd --backend host nothing can run cuBLAS's kernels: the GEMM
// must fail with a clear error (ferry's log names the kernel that has no host
// implementation), and the program reports it, still destroys its handle
// cleanly, and exits 1. On a GPU it passes. Prints one line per step.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

bool Ok(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  std::printf("FAILED %s: %s (%s)\n", what, cudaGetErrorName(error), cudaGetErrorString(error));
  return false;
}

bool Ok(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return true;
  std::printf("FAILED %s: %s (%s)\n", what, cublasGetStatusName(status),
              cublasGetStatusString(status));
  return false;
}

// C = A * B (column-major n x n), on the device and checked on the host.
bool Sgemm(cublasHandle_t handle, cudaStream_t stream, int n) {
  const size_t count = static_cast<size_t>(n) * n;
  std::vector<float> a(count), b(count), c(count, -1.0f);
  for (size_t i = 0; i < count; ++i) {
    a[i] = static_cast<float>(i % 7) - 3.0f;
    b[i] = static_cast<float>(i % 5) * 0.5f;
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  bool ok = Ok(cudaMalloc(&da, count * sizeof(float)), "cudaMalloc A") &&
            Ok(cudaMalloc(&db, count * sizeof(float)), "cudaMalloc B") &&
            Ok(cudaMalloc(&dc, count * sizeof(float)), "cudaMalloc C");
  // Copies through cuBLAS's own runtime: no kernels involved.
  ok = ok && Ok(cublasSetMatrix(n, n, sizeof(float), a.data(), n, da, n), "cublasSetMatrix A") &&
       Ok(cublasSetMatrix(n, n, sizeof(float), b.data(), n, db, n), "cublasSetMatrix B");
  std::vector<float> back(count, 0.0f);
  ok = ok && Ok(cublasGetMatrix(n, n, sizeof(float), da, n, back.data(), n), "cublasGetMatrix A");
  if (ok) {
    for (size_t i = 0; i < count; ++i) ok = ok && back[i] == a[i];
    std::printf(ok ? "cublasSetMatrix / cublasGetMatrix round trip: ok\n"
                   : "FAILED cublasGetMatrix returned other values\n");
  }
  if (ok) {
    const float one = 1.0f, zero = 0.0f;
    ok =
        Ok(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, da, n, db, n, &zero, dc, n),
           "cublasSgemm") &&
        Ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize after cublasSgemm") &&
        Ok(cublasGetMatrix(n, n, sizeof(float), dc, n, c.data(), n), "cublasGetMatrix C");
  }
  if (ok) {
    for (int i = 0; ok && i < n; ++i) {
      for (int j = 0; ok && j < n; ++j) {
        double expected = 0;
        for (int k = 0; k < n; ++k) {
          expected += static_cast<double>(a[static_cast<size_t>(k) * n + i]) *
                      b[static_cast<size_t>(j) * n + k];
        }
        const float got = c[static_cast<size_t>(j) * n + i];
        if (std::fabs(got - expected) > 1e-3 * (1 + std::fabs(expected))) {
          std::printf("FAILED C[%d,%d] = %g, expected %g\n", i, j, got, expected);
          ok = false;
        }
      }
    }
    if (ok) std::printf("sgemm %d: ok\n", n);
  }
  // Frees run whatever happened: the context still works after a failed
  // launch.
  ok = Ok(cudaFree(da), "cudaFree A") && ok;
  ok = Ok(cudaFree(db), "cudaFree B") && ok;
  ok = Ok(cudaFree(dc), "cudaFree C") && ok;
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 64;
  cublasHandle_t handle = nullptr;
  if (!Ok(cublasCreate(&handle), "cublasCreate")) return 1;
  int version = 0;
  if (!Ok(cublasGetVersion(handle, &version), "cublasGetVersion")) return 1;
  std::printf("cublasCreate: ok (cuBLAS %d)\n", version);

  cudaStream_t stream = nullptr;
  cudaStream_t bound = nullptr;
  if (!Ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate") ||
      !Ok(cublasSetStream(handle, stream), "cublasSetStream") ||
      !Ok(cublasGetStream(handle, &bound), "cublasGetStream") ||
      !Ok(cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode")) {
    return 1;
  }
  if (bound != stream) {
    std::printf("FAILED cublasGetStream returned another stream\n");
    return 1;
  }
  std::printf("cublasSetStream: ok\n");

  const bool gemm_ok = Sgemm(handle, stream, n);
  const bool destroyed = Ok(cublasDestroy(handle), "cublasDestroy");
  if (destroyed) std::printf("cublasDestroy: ok\n");
  const bool stream_ok = Ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  const bool all = gemm_ok && destroyed && stream_ok;
  std::printf("%s\n", all ? "all checks passed" : "cuBLAS program failed");
  return all ? 0 : 1;
}
