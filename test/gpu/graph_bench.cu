// Graph launch against the same kernels launched one by one on a stream,
// for the GPU check's figures (natively and through ferry).
//
//   gpu_graph_bench [--kernels K] [--steps N]
//
// A step is K tiny dependent kernels. Stream: N steps of K launches, then a
// synchronize. Graph: one step captured from a stream (cudaStreamBeginCapture),
// instantiated, launched N times, then a synchronize. Each result is checked.
// Prints "stream_us_per_step X", "graph_us_per_step Y" (or the error that
// stopped the graph), a JSON "result" line, and exits 0 when both ran and
// were right, 3 when only the graph failed, 1 otherwise.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

__global__ void bump(unsigned* counter) {
  if (threadIdx.x == 0) *counter += 1;
}

bool Report(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return false;
  std::printf("%s: %s (%s)\n", what, cudaGetErrorName(error), cudaGetErrorString(error));
  return true;
}

using Clock = std::chrono::steady_clock;

double MicrosPerStep(Clock::time_point start, int steps) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / steps;
}

}  // namespace

int main(int argc, char** argv) {
  int kernels = 20, steps = 500;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--kernels") == 0 && i + 1 < argc) {
      kernels = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: gpu_graph_bench [--kernels K] [--steps N]\n");
      return 2;
    }
  }
  cudaStream_t stream;
  unsigned* counter = nullptr;
  if (Report(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate") ||
      Report(cudaMalloc(&counter, sizeof(unsigned)), "cudaMalloc"))
    return 1;
  auto check = [&](const char* what, unsigned expected) {
    unsigned got = 0;
    if (Report(cudaMemcpy(&got, counter, sizeof(got), cudaMemcpyDeviceToHost), what)) return false;
    if (got != expected) std::printf("%s: counter is %u, expected %u\n", what, got, expected);
    return got == expected;
  };

  // Stream launches (one warm-up step first).
  if (Report(cudaMemset(counter, 0, sizeof(unsigned)), "cudaMemset")) return 1;
  for (int k = 0; k < kernels; ++k) bump<<<1, 32, 0, stream>>>(counter);
  if (Report(cudaStreamSynchronize(stream), "warm-up")) return 1;
  auto start = Clock::now();
  for (int s = 0; s < steps; ++s) {
    for (int k = 0; k < kernels; ++k) bump<<<1, 32, 0, stream>>>(counter);
  }
  if (Report(cudaStreamSynchronize(stream), "stream steps")) return 1;
  const double stream_us = MicrosPerStep(start, steps);
  if (!check("stream result", unsigned(kernels) * (steps + 1))) return 1;
  std::printf("stream_us_per_step %.3f (%d kernels, %d steps)\n", stream_us, kernels, steps);

  // The same step as a graph.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (Report(cudaMemset(counter, 0, sizeof(unsigned)), "cudaMemset")) return 1;
  bool graph_ok = !Report(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                          "graph: cudaStreamBeginCapture");
  if (graph_ok) {
    for (int k = 0; k < kernels; ++k) bump<<<1, 32, 0, stream>>>(counter);
    graph_ok = !Report(cudaStreamEndCapture(stream, &graph), "graph: cudaStreamEndCapture") &&
               !Report(cudaGraphInstantiate(&exec, graph, 0), "graph: cudaGraphInstantiate") &&
               !Report(cudaGraphLaunch(exec, stream), "graph: warm-up launch") &&
               !Report(cudaStreamSynchronize(stream), "graph: warm-up synchronize");
  }
  double graph_us = 0;
  if (graph_ok) {
    start = Clock::now();
    for (int s = 0; s < steps && graph_ok; ++s) {
      graph_ok = !Report(cudaGraphLaunch(exec, stream), "graph: cudaGraphLaunch");
    }
    graph_ok = graph_ok && !Report(cudaStreamSynchronize(stream), "graph: synchronize");
    graph_us = MicrosPerStep(start, steps);
    graph_ok = graph_ok && check("graph result", unsigned(kernels) * (steps + 1));
  }
  if (graph_ok) std::printf("graph_us_per_step %.3f\n", graph_us);
  std::printf("result {\"stream_us_per_step\":%.3f,\"graph_us_per_step\":%s}\n", stream_us,
              graph_ok ? std::to_string(graph_us).c_str() : "null");
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaFree(counter);
  cudaStreamDestroy(stream);
  return graph_ok ? 0 : 3;
}
