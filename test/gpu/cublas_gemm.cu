// A cuBLAS program for the GPU check: SGEMM and DGEMM at
// 1024, 2048 and 4096, each compared with a CPU reference, and timed.
// The reference is exact per entry: a fixed sample of output entries is
// recomputed on the CPU in double precision (a full 4096^3 product on the CPU
// would take minutes), and each must agree within a tolerance scaled to the
// dot-product length.
//
//   gpu_cublas_gemm [SIZE ...]     default sizes 1024 2048 4096
//
// Prints one line per GEMM ("sgemm 4096: PASS 12.3 ms max_rel_err 1.2e-06")
// and a JSON line "result {...}" for the harness; exits 0 when every GEMM
// passed. It runs unmodified both natively and through ferry.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

bool Check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  std::printf("FAILED %s: %s (%s)\n", what, cudaGetErrorName(error), cudaGetErrorString(error));
  return false;
}

bool Check(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return true;
  std::printf("FAILED %s: %s (%s)\n", what, cublasGetStatusName(status),
              cublasGetStatusString(status));
  return false;
}

template <typename T>
cublasStatus_t Gemm(cublasHandle_t handle, int n, const T* a, const T* b, T* c);

template <>
cublasStatus_t Gemm<float>(cublasHandle_t handle, int n, const float* a, const float* b, float* c) {
  const float one = 1, zero = 0;
  return cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n);
}

template <>
cublasStatus_t Gemm<double>(cublasHandle_t handle, int n, const double* a, const double* b,
                            double* c) {
  const double one = 1, zero = 0;
  return cublasDgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n);
}

struct GemmResult {
  bool pass = false;
  double ms = 0;           // one GEMM, median of the timed runs
  double max_rel_err = 0;  // over the sampled entries
};

// C = A * B, column-major, entries uniform in [-1, 1).
template <typename T>
GemmResult RunGemm(cublasHandle_t handle, int n, double tolerance) {
  GemmResult result;
  const size_t count = size_t(n) * n;
  std::vector<T> a(count), b(count), c(count);
  std::mt19937 rng(1234 + n);
  std::uniform_real_distribution<double> dist(-1, 1);
  for (auto& x : a) x = T(dist(rng));
  for (auto& x : b) x = T(dist(rng));

  T *da = nullptr, *db = nullptr, *dc = nullptr;
  if (!Check(cudaMalloc(&da, count * sizeof(T)), "cudaMalloc A") ||
      !Check(cudaMalloc(&db, count * sizeof(T)), "cudaMalloc B") ||
      !Check(cudaMalloc(&dc, count * sizeof(T)), "cudaMalloc C")) {
    return result;
  }
  bool ok =
      Check(cudaMemcpy(da, a.data(), count * sizeof(T), cudaMemcpyHostToDevice), "A to device") &&
      Check(cudaMemcpy(db, b.data(), count * sizeof(T), cudaMemcpyHostToDevice), "B to device") &&
      Check(Gemm(handle, n, da, db, dc), "warm-up gemm") &&
      Check(cudaDeviceSynchronize(), "synchronize after warm-up");
  std::vector<double> times;
  for (int run = 0; ok && run < 5; ++run) {
    auto start = std::chrono::steady_clock::now();
    ok =
        Check(Gemm(handle, n, da, db, dc), "gemm") && Check(cudaDeviceSynchronize(), "synchronize");
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  ok =
      ok && Check(cudaMemcpy(c.data(), dc, count * sizeof(T), cudaMemcpyDeviceToHost), "C to host");
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  if (!ok) return result;
  std::sort(times.begin(), times.end());
  result.ms = times[times.size() / 2];

  // Sampled reference: row i, column j of C is sum_k A[i,k] * B[k,j].
  std::uniform_int_distribution<int> pick(0, n - 1);
  result.pass = true;
  for (int s = 0; s < 512; ++s) {
    const int i = pick(rng), j = pick(rng);
    double expected = 0, magnitude = 0;
    for (int k = 0; k < n; ++k) {
      const double term = double(a[size_t(k) * n + i]) * double(b[size_t(j) * n + k]);
      expected += term;
      magnitude += std::fabs(term);
    }
    const double got = c[size_t(j) * n + i];
    const double rel = std::fabs(got - expected) / std::max(magnitude, 1e-30);
    result.max_rel_err = std::max(result.max_rel_err, rel);
    if (!(rel <= tolerance)) {
      if (result.pass) {
        std::printf("  C[%d,%d] = %.9g, expected %.9g (relative error %.3g > %.3g)\n", i, j, got,
                    expected, rel, tolerance);
      }
      result.pass = false;
    }
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {1024, 2048, 4096};

  cublasHandle_t handle = nullptr;
  if (!Check(cublasCreate(&handle), "cublasCreate")) return 1;
  // Plain FP32 (no TF32), so the tolerance below is about summation order.
  if (!Check(cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode")) return 1;

  bool all = true;
  std::string json = "{";
  for (int n : sizes) {
    for (int precision = 0; precision < 2; ++precision) {
      const char* name = precision == 0 ? "sgemm" : "dgemm";
      // Relative to the sum of |terms|: a few ulps of the type times sqrt(n).
      const double tolerance = (precision == 0 ? 1.2e-7 : 2.3e-16) * 8 * std::sqrt(double(n));
      GemmResult r = precision == 0 ? RunGemm<float>(handle, n, tolerance)
                                    : RunGemm<double>(handle, n, tolerance);
      std::printf("%s %d: %s %.3f ms max_rel_err %.3g\n", name, n, r.pass ? "PASS" : "FAIL", r.ms,
                  r.max_rel_err);
      all = all && r.pass;
      if (json.size() > 1) json += ",";
      json += "\"" + std::string(name) + "_" + std::to_string(n) + "_ms\":" + std::to_string(r.ms);
    }
  }
  json += "}";
  if (!Check(cublasDestroy(handle), "cublasDestroy")) all = false;
  std::printf("result %s\n", json.c_str());
  std::printf("%s\n", all ? "all gemms passed" : "SOME GEMMS FAILED");
  return all ? 0 : 1;
}
