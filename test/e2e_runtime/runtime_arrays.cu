// CUDA arrays, textures and surfaces through the CUDA runtime (and the
// driver's array copies), on a slice of a pool (runtime_pools.toml: a
// quarter of the device): 2D, 3D, layered and mipmapped arrays filled and
// read back through every kind of copy (host, device, array sides; 2D, 3D
// and the driver's one-row copies), a 2D texture read by a kernel with
// clamped, bordered and normalized wrapping coordinates and with linear
// filtering, a 1D texture over linear memory, a surface read and written by
// a kernel, the objects' descriptors read back, copies past an array's
// extent refused with cudaErrorInvalidValue and an array past the slice's
// quota refused with cudaErrorMemoryAllocation. Every kernel has a host twin
// in host_kernels.cc.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "runtime_check.h"

// out[i] = the texel tex2D reads at (coords[2i], coords[2i + 1]).
extern "C" __global__ void rt_tex_sample(cudaTextureObject_t tex, const float* coords, float* out,
                                         int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tex2D<float>(tex, coords[2 * i], coords[2 * i + 1]);
}

// out[i] = tex1Dfetch(tex, i).
extern "C" __global__ void rt_tex_fetch1d(cudaTextureObject_t tex, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tex1Dfetch<float>(tex, i);
}

// Every float element (x, y) of the surface's width x height array becomes
// element * factor + x.
extern "C" __global__ void rt_surf_scale(cudaSurfaceObject_t surf, int width, int height,
                                         float factor) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= width * height) return;
  const int x = i % width, y = i / width;
  const float v = surf2Dread<float>(surf, x * static_cast<int>(sizeof(float)), y);
  surf2Dwrite(v * factor + static_cast<float>(x), surf, x * static_cast<int>(sizeof(float)), y);
}

namespace {

constexpr int kWidth = 8, kHeight = 6;

float Texel(int x, int y) { return static_cast<float>(y * 100 + x); }

std::vector<float> Image(int width, int height, int salt = 0) {
  std::vector<float> v(static_cast<size_t>(width) * height);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) v[y * width + x] = Texel(x, y) + salt;
  }
  return v;
}

// 2D copies to, from and between arrays, through host and device memory,
// with a partial copy at an offset, and copies past the extent refused.
void TwoDimensionalCopies(cudaArray_t array) {
  const std::vector<float> image = Image(kWidth, kHeight);
  const size_t row = kWidth * sizeof(float);
  RT_CHECK(
      cudaMemcpy2DToArray(array, 0, 0, image.data(), row, row, kHeight, cudaMemcpyHostToDevice));
  std::vector<float> back(image.size(), -1);
  RT_CHECK(
      cudaMemcpy2DFromArray(back.data(), row, array, 0, 0, row, kHeight, cudaMemcpyDeviceToHost));
  RT_EXPECT(back == image);

  // Through device memory with a pitch of its own, and into a second array.
  float* pitched = nullptr;
  size_t pitch = 0;
  RT_CHECK(cudaMallocPitch(reinterpret_cast<void**>(&pitched), &pitch, row, kHeight));
  RT_CHECK(
      cudaMemcpy2DFromArray(pitched, pitch, array, 0, 0, row, kHeight, cudaMemcpyDeviceToDevice));
  cudaArray_t second = nullptr;
  const cudaChannelFormatDesc format = cudaCreateChannelDesc<float>();
  RT_CHECK(cudaMallocArray(&second, &format, kWidth, kHeight));
  RT_CHECK(
      cudaMemcpy2DToArray(second, 0, 0, pitched, pitch, row, kHeight, cudaMemcpyDeviceToDevice));
  // A 3 x 2 block of the first array at (2, 1) over the second's (4, 3).
  RT_CHECK(cudaMemcpy2DArrayToArray(second, 4 * sizeof(float), 3, array, 2 * sizeof(float), 1,
                                    3 * sizeof(float), 2, cudaMemcpyDeviceToDevice));
  RT_CHECK(
      cudaMemcpy2DFromArray(back.data(), row, second, 0, 0, row, kHeight, cudaMemcpyDeviceToHost));
  for (int y = 0; y < kHeight; ++y) {
    for (int x = 0; x < kWidth; ++x) {
      const bool moved = x >= 4 && x < 7 && y >= 3 && y < 5;
      RT_EXPECT(back[y * kWidth + x] == (moved ? Texel(x - 2, y - 2) : Texel(x, y)));
    }
  }

  // Past the extent: one column too wide, one row too low, a misaligned x.
  RT_EXPECT(cudaMemcpy2DToArray(array, sizeof(float), 0, image.data(), row, row, kHeight,
                                cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  RT_EXPECT(cudaMemcpy2DToArray(array, 0, 1, image.data(), row, row, kHeight,
                                cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  RT_EXPECT(cudaMemcpy2DFromArray(back.data(), row, array, 2, 0, sizeof(float), 1,
                                  cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  (void)cudaGetLastError();  // clears the refusals above
  // The array is as it was.
  RT_CHECK(
      cudaMemcpy2DFromArray(back.data(), row, array, 0, 0, row, kHeight, cudaMemcpyDeviceToHost));
  RT_EXPECT(back == image);
  RT_CHECK(cudaFreeArray(second));
  RT_CHECK(cudaFree(pitched));
}

// The driver's one-row copies (cuMemcpyHtoA and its kin) and its descriptor.
void DriverCopies(cudaArray_t runtime_array) {
  CUarray array = reinterpret_cast<CUarray>(runtime_array);
  CUDA_ARRAY3D_DESCRIPTOR d = {};
  RT_CHECK_CU(cuArray3DGetDescriptor(&d, array));
  RT_EXPECT(d.Width == kWidth && d.Height == kHeight && d.Depth == 0 &&
            d.Format == CU_AD_FORMAT_FLOAT && d.NumChannels == 1);
  const std::vector<float> row = {1.5f, 2.5f, 3.5f};
  RT_CHECK_CU(cuMemcpyHtoA(array, sizeof(float), row.data(), row.size() * sizeof(float)));
  std::vector<float> back(row.size());
  RT_CHECK_CU(cuMemcpyAtoH(back.data(), array, sizeof(float), back.size() * sizeof(float)));
  RT_EXPECT(back == row);
  CUdeviceptr linear = 0;
  RT_CHECK_CU(cuMemAlloc(&linear, kWidth * sizeof(float)));
  RT_CHECK_CU(cuMemcpyAtoD(linear, array, 0, kWidth * sizeof(float)));
  RT_CHECK_CU(cuMemcpyDtoA(array, 0, linear, kWidth * sizeof(float)));
  RT_CHECK_CU(cuMemcpyAtoA(array, 0, array, 4 * sizeof(float), 2 * sizeof(float)));
  std::vector<float> first(kWidth);
  RT_CHECK_CU(cuMemcpyAtoH(first.data(), array, 0, kWidth * sizeof(float)));
  const std::vector<float> expected = {Texel(4, 0), Texel(5, 0), 2.5f,        3.5f,
                                       Texel(4, 0), Texel(5, 0), Texel(6, 0), Texel(7, 0)};
  RT_EXPECT(first == expected);
  // One byte past the row.
  RT_EXPECT(cuMemcpyHtoA(array, sizeof(float), row.data(), kWidth * sizeof(float)) ==
            CUDA_ERROR_INVALID_VALUE);
  RT_CHECK_CU(cuMemFree(linear));
  // Back to the image for the texture below.
  const std::vector<float> image = Image(kWidth, kHeight);
  RT_CHECK(cudaMemcpy2DToArray(runtime_array, 0, 0, image.data(), kWidth * sizeof(float),
                               kWidth * sizeof(float), kHeight, cudaMemcpyHostToDevice));
}

// A 3D array and a layered one through cudaMemcpy3D from and to pitched
// device memory and host memory, and a subvolume at an offset.
void ThreeDimensionalCopies() {
  const int w = 5, h = 4, depth = 3;
  const cudaChannelFormatDesc format = cudaCreateChannelDesc<float>();
  for (unsigned flags : {0u, static_cast<unsigned>(cudaArrayLayered)}) {
    cudaArray_t array = nullptr;
    RT_CHECK(cudaMalloc3DArray(&array, &format, make_cudaExtent(w, h, depth), flags));
    std::vector<float> volume(w * h * depth);
    for (size_t i = 0; i < volume.size(); ++i) volume[i] = static_cast<float>(i) * 0.5f;
    cudaMemcpy3DParms in = {};
    in.srcPtr = make_cudaPitchedPtr(volume.data(), w * sizeof(float), w, h);
    in.dstArray = array;
    in.extent = make_cudaExtent(w, h, depth);
    in.kind = cudaMemcpyHostToDevice;
    RT_CHECK(cudaMemcpy3D(&in));
    // Array -> pitched device memory -> host.
    cudaPitchedPtr device = {};
    RT_CHECK(cudaMalloc3D(&device, make_cudaExtent(w * sizeof(float), h, depth)));
    cudaMemcpy3DParms to_device = {};
    to_device.srcArray = array;
    to_device.dstPtr = device;
    to_device.extent = make_cudaExtent(w, h, depth);
    to_device.kind = cudaMemcpyDeviceToDevice;
    RT_CHECK(cudaMemcpy3D(&to_device));
    std::vector<float> back(volume.size(), -1);
    cudaMemcpy3DParms out = {};
    out.srcPtr = device;
    out.dstPtr = make_cudaPitchedPtr(back.data(), w * sizeof(float), w, h);
    out.extent = make_cudaExtent(w * sizeof(float), h, depth);
    out.kind = cudaMemcpyDeviceToHost;
    RT_CHECK(cudaMemcpy3D(&out));
    RT_EXPECT(back == volume);
    // A 2 x 2 x 2 block at (1, 1, 1) straight to the host.
    std::vector<float> block(8, -1);
    cudaMemcpy3DParms part = {};
    part.srcArray = array;
    part.srcPos = make_cudaPos(1, 1, 1);
    part.dstPtr = make_cudaPitchedPtr(block.data(), 2 * sizeof(float), 2, 2);
    part.extent = make_cudaExtent(2, 2, 2);
    part.kind = cudaMemcpyDeviceToHost;
    RT_CHECK(cudaMemcpy3DAsync(&part, 0));
    RT_CHECK(cudaStreamSynchronize(0));
    for (int z = 0; z < 2; ++z) {
      for (int y = 0; y < 2; ++y) {
        for (int x = 0; x < 2; ++x) {
          RT_EXPECT(block[(z * 2 + y) * 2 + x] == volume[((z + 1) * h + (y + 1)) * w + (x + 1)]);
        }
      }
    }
    // One slice (layer) too many.
    part.srcPos = make_cudaPos(0, 0, depth - 1);
    RT_EXPECT(cudaMemcpy3D(&part) == cudaErrorInvalidValue);
    (void)cudaGetLastError();
    RT_CHECK(cudaFree(device.ptr));
    RT_CHECK(cudaFreeArray(array));
  }
}

// A mipmapped array: each level has its own extents and keeps its bytes.
void MipmappedArrays() {
  const cudaChannelFormatDesc format = cudaCreateChannelDesc<float>();
  cudaMipmappedArray_t mipmapped = nullptr;
  RT_CHECK(cudaMallocMipmappedArray(&mipmapped, &format, make_cudaExtent(16, 8, 0), 3));
  for (unsigned level = 0; level < 3; ++level) {
    cudaArray_t array = nullptr;
    RT_CHECK(cudaGetMipmappedArrayLevel(&array, mipmapped, level));
    cudaChannelFormatDesc got = {};
    cudaExtent extent = {};
    unsigned flags = 0;
    RT_CHECK(cudaArrayGetInfo(&got, &extent, &flags, array));
    RT_EXPECT(extent.width == (16u >> level) && extent.height == (8u >> level));
    const std::vector<float> image = Image(16 >> level, 8 >> level, static_cast<int>(level));
    const size_t row = (16 >> level) * sizeof(float);
    RT_CHECK(cudaMemcpy2DToArray(array, 0, 0, image.data(), row, row, 8 >> level,
                                 cudaMemcpyHostToDevice));
  }
  for (unsigned level = 0; level < 3; ++level) {
    cudaArray_t array = nullptr;
    RT_CHECK(cudaGetMipmappedArrayLevel(&array, mipmapped, level));
    const std::vector<float> image = Image(16 >> level, 8 >> level, static_cast<int>(level));
    std::vector<float> back(image.size());
    const size_t row = (16 >> level) * sizeof(float);
    RT_CHECK(cudaMemcpy2DFromArray(back.data(), row, array, 0, 0, row, 8 >> level,
                                   cudaMemcpyDeviceToHost));
    RT_EXPECT(back == image);
  }
  cudaArray_t missing = nullptr;
  RT_EXPECT(cudaGetMipmappedArrayLevel(&missing, mipmapped, 3) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_CHECK(cudaFreeMipmappedArray(mipmapped));
}

// Samples `tex` at each (x, y) of `coords` through rt_tex_sample.
std::vector<float> Sample(cudaTextureObject_t tex, const std::vector<float>& coords) {
  const int n = static_cast<int>(coords.size() / 2);
  float* d_coords = nullptr;
  float* d_out = nullptr;
  RT_CHECK(cudaMalloc(reinterpret_cast<void**>(&d_coords), coords.size() * sizeof(float)));
  RT_CHECK(cudaMalloc(reinterpret_cast<void**>(&d_out), n * sizeof(float)));
  RT_CHECK(
      cudaMemcpy(d_coords, coords.data(), coords.size() * sizeof(float), cudaMemcpyHostToDevice));
  rt_tex_sample<<<(n + 63) / 64, 64>>>(tex, d_coords, d_out, n);
  RT_CHECK(cudaGetLastError());
  std::vector<float> out(n);
  RT_CHECK(cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
  RT_CHECK(cudaFree(d_coords));
  RT_CHECK(cudaFree(d_out));
  return out;
}

void Textures(cudaArray_t array) {
  cudaResourceDesc resource = {};
  resource.resType = cudaResourceTypeArray;
  resource.res.array.array = array;
  cudaTextureDesc texture = {};
  texture.addressMode[0] = cudaAddressModeClamp;
  texture.addressMode[1] = cudaAddressModeClamp;
  texture.filterMode = cudaFilterModePoint;
  texture.readMode = cudaReadModeElementType;
  cudaTextureObject_t clamped = 0;
  RT_CHECK(cudaCreateTextureObject(&clamped, &resource, &texture, nullptr));
  RT_EXPECT(clamped != 0);
  // Texel centres, then coordinates past every edge (clamped to it).
  std::vector<float> coords, expected;
  for (int y = 0; y < kHeight; ++y) {
    for (int x = 0; x < kWidth; ++x) {
      coords.insert(coords.end(), {x + 0.5f, y + 0.5f});
      expected.push_back(Texel(x, y));
    }
  }
  coords.insert(coords.end(), {-3.0f, -1.0f, kWidth + 4.0f, 2.5f, 3.5f, kHeight + 9.0f});
  expected.insert(expected.end(), {Texel(0, 0), Texel(kWidth - 1, 2), Texel(3, kHeight - 1)});
  RT_EXPECT(Sample(clamped, coords) == expected);

  // Descriptors read back.
  cudaResourceDesc resource_back = {};
  RT_CHECK(cudaGetTextureObjectResourceDesc(&resource_back, clamped));
  RT_EXPECT(resource_back.resType == cudaResourceTypeArray &&
            resource_back.res.array.array == array);
  cudaTextureDesc texture_back = {};
  RT_CHECK(cudaGetTextureObjectTextureDesc(&texture_back, clamped));
  RT_EXPECT(texture_back.addressMode[0] == cudaAddressModeClamp &&
            texture_back.filterMode == cudaFilterModePoint && texture_back.normalizedCoords == 0);

  // Normalized coordinates that wrap, and a border.
  texture.normalizedCoords = 1;
  texture.addressMode[0] = cudaAddressModeWrap;
  texture.addressMode[1] = cudaAddressModeBorder;
  cudaTextureObject_t wrapped = 0;
  RT_CHECK(cudaCreateTextureObject(&wrapped, &resource, &texture, nullptr));
  RT_EXPECT(wrapped != clamped);
  const float dx = 1.0f / kWidth, dy = 1.0f / kHeight;
  const std::vector<float> normalized = {
      2.5f * dx,        1.5f * dy,  // (2, 1)
      1.0f + 2.5f * dx, 4.5f * dy,  // wraps to (2, 4)
      -0.5f * dx,       0.5f * dy,  // wraps to (7, 0)
      0.5f * dx,        1.5f,       // below the last row: the border, 0
  };
  RT_EXPECT(Sample(wrapped, normalized) ==
            (std::vector<float>{Texel(2, 1), Texel(2, 4), Texel(kWidth - 1, 0), 0.0f}));
  RT_CHECK(cudaDestroyTextureObject(wrapped));

  // Linear filtering: between texel centres (at i + 0.5) the texels, which
  // grow linearly here, interpolate (a GPU weighs with 9-bit fixed point:
  // these weights are exact in it).
  texture.normalizedCoords = 0;
  texture.addressMode[0] = cudaAddressModeClamp;
  texture.addressMode[1] = cudaAddressModeClamp;
  texture.filterMode = cudaFilterModeLinear;
  cudaTextureObject_t filtered = 0;
  RT_CHECK(cudaCreateTextureObject(&filtered, &resource, &texture, nullptr));
  const std::vector<float> between = Sample(filtered, {1.0f, 0.5f, 2.25f, 1.75f, 0.25f, 3.5f});
  const float interpolated[] = {0.5f, 100 * 1.25f + 1.75f, Texel(0, 3)};
  for (int i = 0; i < 3; ++i) RT_EXPECT(std::fabs(between[i] - interpolated[i]) < 1e-3f);
  RT_CHECK(cudaDestroyTextureObject(filtered));
  RT_CHECK(cudaDestroyTextureObject(clamped));
  // A destroyed object is gone.
  RT_EXPECT(cudaGetTextureObjectResourceDesc(&resource_back, clamped) != cudaSuccess);
  (void)cudaGetLastError();

  // A 1D texture over linear memory, read with tex1Dfetch.
  const int n = 100;
  std::vector<float> values(n);
  for (int i = 0; i < n; ++i) values[i] = 3.0f * i - 7.0f;
  float* linear = nullptr;
  float* out = nullptr;
  RT_CHECK(cudaMalloc(reinterpret_cast<void**>(&linear), n * sizeof(float)));
  RT_CHECK(cudaMalloc(reinterpret_cast<void**>(&out), n * sizeof(float)));
  RT_CHECK(cudaMemcpy(linear, values.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  cudaResourceDesc linear_resource = {};
  linear_resource.resType = cudaResourceTypeLinear;
  linear_resource.res.linear.devPtr = linear;
  linear_resource.res.linear.desc = cudaCreateChannelDesc<float>();
  linear_resource.res.linear.sizeInBytes = n * sizeof(float);
  cudaTextureDesc linear_texture = {};
  linear_texture.readMode = cudaReadModeElementType;
  cudaTextureObject_t fetched = 0;
  RT_CHECK(cudaCreateTextureObject(&fetched, &linear_resource, &linear_texture, nullptr));
  rt_tex_fetch1d<<<2, 64>>>(fetched, out, n);
  RT_CHECK(cudaGetLastError());
  std::vector<float> back(n);
  RT_CHECK(cudaMemcpy(back.data(), out, n * sizeof(float), cudaMemcpyDeviceToHost));
  RT_EXPECT(back == values);
  RT_CHECK(cudaDestroyTextureObject(fetched));
  // A linear resource past its allocation is refused.
  linear_resource.res.linear.sizeInBytes = 2 * n * sizeof(float);
  RT_EXPECT(cudaCreateTextureObject(&fetched, &linear_resource, &linear_texture, nullptr) ==
            cudaErrorInvalidValue);
  (void)cudaGetLastError();
  RT_CHECK(cudaFree(linear));
  RT_CHECK(cudaFree(out));
}

void Surfaces() {
  const cudaChannelFormatDesc format = cudaCreateChannelDesc<float>();
  cudaArray_t array = nullptr;
  RT_CHECK(cudaMallocArray(&array, &format, kWidth, kHeight, cudaArraySurfaceLoadStore));
  const std::vector<float> image = Image(kWidth, kHeight);
  const size_t row = kWidth * sizeof(float);
  RT_CHECK(
      cudaMemcpy2DToArray(array, 0, 0, image.data(), row, row, kHeight, cudaMemcpyHostToDevice));
  cudaResourceDesc resource = {};
  resource.resType = cudaResourceTypeArray;
  resource.res.array.array = array;
  cudaSurfaceObject_t surface = 0;
  RT_CHECK(cudaCreateSurfaceObject(&surface, &resource));
  cudaResourceDesc back_resource = {};
  RT_CHECK(cudaGetSurfaceObjectResourceDesc(&back_resource, surface));
  RT_EXPECT(back_resource.res.array.array == array);
  rt_surf_scale<<<1, 64>>>(surface, kWidth, kHeight, 2.0f);
  RT_CHECK(cudaGetLastError());
  std::vector<float> back(image.size());
  RT_CHECK(
      cudaMemcpy2DFromArray(back.data(), row, array, 0, 0, row, kHeight, cudaMemcpyDeviceToHost));
  for (int y = 0; y < kHeight; ++y) {
    for (int x = 0; x < kWidth; ++x) {
      RT_EXPECT(back[y * kWidth + x] == Texel(x, y) * 2.0f + static_cast<float>(x));
    }
  }
  RT_CHECK(cudaDestroySurfaceObject(surface));
  RT_CHECK(cudaFreeArray(array));
}

// An array larger than the slice's quota.
void PastTheQuota() {
  size_t free_bytes = 0, total = 0;
  RT_CHECK(cudaMemGetInfo(&free_bytes, &total));
  const cudaChannelFormatDesc format = cudaCreateChannelDesc<float4>();
  const size_t side = 16384;
  const size_t depth = total / (side * side * sizeof(float4)) + 1;
  cudaArray_t array = nullptr;
  RT_EXPECT(cudaMalloc3DArray(&array, &format, make_cudaExtent(side, side, depth)) ==
            cudaErrorMemoryAllocation);
  (void)cudaGetLastError();
  size_t free_after = 0;
  RT_CHECK(cudaMemGetInfo(&free_after, &total));
  RT_EXPECT(free_after == free_bytes);
}

}  // namespace

int main() {
  const cudaChannelFormatDesc format = cudaCreateChannelDesc<float>();
  size_t free_before = 0, total = 0;
  RT_CHECK(cudaMemGetInfo(&free_before, &total));
  cudaArray_t array = nullptr;
  RT_CHECK(cudaMallocArray(&array, &format, kWidth, kHeight));
  size_t free_with_array = 0;
  RT_CHECK(cudaMemGetInfo(&free_with_array, &total));
  RT_EXPECT(free_before - free_with_array >= kWidth * kHeight * sizeof(float));

  TwoDimensionalCopies(array);
  std::printf("2D array copies: ok\n");
  DriverCopies(array);
  std::printf("driver array copies: ok\n");
  ThreeDimensionalCopies();
  std::printf("3D and layered array copies: ok\n");
  MipmappedArrays();
  std::printf("mipmapped arrays: ok\n");
  Textures(array);
  std::printf("texture objects: ok\n");
  Surfaces();
  std::printf("surface objects: ok\n");
  PastTheQuota();
  std::printf("array past the quota: ok\n");

  RT_CHECK(cudaFreeArray(array));
  size_t free_after = 0;
  RT_CHECK(cudaMemGetInfo(&free_after, &total));
  RT_EXPECT(free_after == free_before);
  std::printf("all checks passed\n");
  return 0;
}
