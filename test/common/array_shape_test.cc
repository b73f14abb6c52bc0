#include "common/array_shape.h"

#include <cuda.h>
#include <gtest/gtest.h>

#include <array>
#include <initializer_list>

namespace ferry {
namespace {

ArrayShape Shape(uint64_t width, uint64_t height, uint64_t depth, int format = CU_AD_FORMAT_FLOAT,
                 unsigned channels = 1, unsigned flags = 0) {
  ArrayShape shape;
  shape.width = width;
  shape.height = height;
  shape.depth = depth;
  shape.format = format;
  shape.channels = channels;
  shape.flags = flags;
  return shape;
}

uint64_t Bytes(const ArrayShape& shape, unsigned levels = 0) {
  unsigned element = 0;
  uint64_t bytes = 0;
  const Status status = CheckArrayShape(shape, levels, &element, &bytes);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return bytes;
}

int Refusal(const ArrayShape& shape, unsigned levels = 0) {
  unsigned element = 0;
  uint64_t bytes = 0;
  return CheckArrayShape(shape, levels, &element, &bytes).cuda_result();
}

TEST(ArrayShapeTest, BytesCoverEveryElementLayerFaceAndLevel) {
  EXPECT_EQ(Bytes(Shape(10, 0, 0)), 40u);                                  // 1D
  EXPECT_EQ(Bytes(Shape(10, 3, 0, CU_AD_FORMAT_UNSIGNED_INT8, 4)), 120u);  // 2D uchar4
  EXPECT_EQ(Bytes(Shape(4, 3, 2, CU_AD_FORMAT_HALF, 2)), 96u);             // 3D half2
  EXPECT_EQ(Bytes(Shape(8, 0, 5, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_LAYERED)), 160u);
  EXPECT_EQ(Bytes(Shape(4, 4, 6, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_CUBEMAP)), 384u);
  EXPECT_EQ(
      Bytes(Shape(4, 4, 12, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_CUBEMAP | CUDA_ARRAY3D_LAYERED)),
      768u);
  // Mipmapped: 16 x 8, 8 x 4, 4 x 2 floats; layers are not halved.
  EXPECT_EQ(Bytes(Shape(16, 8, 0), 3), (128u + 32u + 8u) * 4u);
  EXPECT_EQ(Bytes(Shape(4, 4, 3, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_LAYERED), 2),
            (16u + 4u) * 3u * 4u);
  const ArrayShape level = ArrayLevelShape(Shape(5, 3, 0), 2);
  EXPECT_EQ(level.width, 1u);
  EXPECT_EQ(level.height, 1u);
  EXPECT_EQ(level.depth, 0u);
}

TEST(ArrayShapeTest, ShapesNoArrayHasAreInvalidValues) {
  EXPECT_EQ(Refusal(Shape(0, 4, 0)), CUDA_ERROR_INVALID_VALUE);  // no width
  EXPECT_EQ(Refusal(Shape(4, 0, 2)), CUDA_ERROR_INVALID_VALUE);  // 3D, no height
  EXPECT_EQ(Refusal(Shape(4, 4, 0, CU_AD_FORMAT_FLOAT, 3)), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(Refusal(Shape(4, 4, 0, 0x7777)), CUDA_ERROR_INVALID_VALUE);  // format
  EXPECT_EQ(Refusal(Shape(4, 0, 0, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_LAYERED)),
            CUDA_ERROR_INVALID_VALUE);  // no layers
  EXPECT_EQ(Refusal(Shape(4, 5, 6, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_CUBEMAP)),
            CUDA_ERROR_INVALID_VALUE);  // not square
  EXPECT_EQ(Refusal(Shape(4, 4, 7, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_CUBEMAP)),
            CUDA_ERROR_INVALID_VALUE);                               // 7 faces
  EXPECT_EQ(Refusal(Shape(16, 8, 0), 6), CUDA_ERROR_INVALID_VALUE);  // levels
  EXPECT_EQ(Refusal(Shape(1ull << 40, 1ull << 40, 1ull << 20)), CUDA_ERROR_INVALID_VALUE);
}

TEST(ArrayShapeTest, CopiesMustFitTheExtentInWholeElements) {
  const ArrayShape shape = Shape(4, 3, 2);  // rows of 16 bytes
  EXPECT_TRUE(CheckArrayExtent(shape, 4, 0, 0, 0, 16, 3, 2, "dst").ok());
  EXPECT_TRUE(CheckArrayExtent(shape, 4, 8, 2, 1, 8, 1, 1, "dst").ok());
  for (auto [x, y, z, width, height, depth] :
       std::initializer_list<std::array<uint64_t, 6>>{{4, 0, 0, 16, 1, 1},
                                                      {0, 1, 0, 16, 3, 1},
                                                      {0, 0, 1, 16, 1, 2},
                                                      {2, 0, 0, 4, 1, 1},
                                                      {0, 0, 0, 6, 1, 1},
                                                      {~0ull, 0, 0, 4, 1, 1},
                                                      {0, ~0ull, 0, 4, 2, 1}}) {
    EXPECT_EQ(CheckArrayExtent(shape, 4, x, y, z, width, height, depth, "dst").cuda_result(),
              CUDA_ERROR_INVALID_VALUE)
        << x << "," << y << "," << z << " " << width << "x" << height << "x" << depth;
  }
  // A 1D array has one row and one slice.
  EXPECT_TRUE(CheckArrayExtent(Shape(8, 0, 0), 4, 0, 0, 0, 32, 1, 1, "src").ok());
  EXPECT_FALSE(CheckArrayExtent(Shape(8, 0, 0), 4, 0, 0, 0, 32, 2, 1, "src").ok());
}

}  // namespace
}  // namespace ferry
