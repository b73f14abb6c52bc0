// Status (common/status.h): each named constructor's category and CUresult,
// FromWire's handling of codes it does not know, WithContext and ToString.
#include "common/status.h"

#include <cuda.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace ferry {
namespace {

TEST(StatusTest, DefaultIsOk) {
  const Status status;
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kOk);
  EXPECT_EQ(status.cuda_result(), 0);
  EXPECT_EQ(status.message(), "");
  EXPECT_EQ(status.ToString(), "OK");
  EXPECT_TRUE(Status::Ok().ok());
}

TEST(StatusTest, NamedConstructorsPickTheirCategoryAndCuresult) {
  struct Case {
    std::function<Status(std::string)> make;
    StatusCode code;
    int cuda_result;
  };
  const std::vector<Case> cases = {
      {Status::InvalidArgument, StatusCode::kInvalidArgument, CUDA_ERROR_INVALID_VALUE},
      {Status::InvalidHandle, StatusCode::kInvalidArgument, CUDA_ERROR_INVALID_HANDLE},
      {Status::NotFound, StatusCode::kNotFound, CUDA_ERROR_NOT_FOUND},
      {Status::OutOfMemory, StatusCode::kOutOfMemory, CUDA_ERROR_OUT_OF_MEMORY},
      {Status::Disconnected, StatusCode::kDisconnected, CUDA_ERROR_DEVICE_UNAVAILABLE},
      {Status::Unimplemented, StatusCode::kUnimplemented, CUDA_ERROR_NOT_SUPPORTED},
      {Status::PermissionDenied, StatusCode::kPermissionDenied, CUDA_ERROR_NOT_PERMITTED},
      {Status::Overloaded, StatusCode::kOverloaded, CUDA_ERROR_DEVICE_UNAVAILABLE},
      {Status::Internal, StatusCode::kInternal, CUDA_ERROR_UNKNOWN},
      {Status::Malformed, StatusCode::kMalformed, CUDA_ERROR_INVALID_VALUE},
  };
  for (const Case& c : cases) {
    const Status status = c.make("what happened");
    EXPECT_FALSE(status.ok()) << status.ToString();
    EXPECT_EQ(status.code(), c.code) << status.ToString();
    EXPECT_EQ(status.cuda_result(), c.cuda_result) << status.ToString();
    EXPECT_EQ(status.message(), "what happened");
  }
}

TEST(StatusTest, CudaCarriesTheDriverErrorUnchanged) {
  const Status status = Status::Cuda(CUDA_ERROR_ILLEGAL_ADDRESS, "bad address");
  EXPECT_EQ(status.code(), StatusCode::kCuda);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_ILLEGAL_ADDRESS);
  EXPECT_EQ(status.message(), "bad address");
}

TEST(StatusTest, FromWireKeepsKnownCodes) {
  const Status status = Status::FromWire(static_cast<uint8_t>(StatusCode::kOutOfMemory),
                                         CUDA_ERROR_OUT_OF_MEMORY, "full");
  EXPECT_EQ(status.code(), StatusCode::kOutOfMemory);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(status.message(), "full");
  EXPECT_TRUE(Status::FromWire(0, 0, "").ok());
}

TEST(StatusTest, FromWireMakesUnknownCodesInternal) {
  for (int code : {static_cast<int>(StatusCode::kMalformed) + 1, 99, 255}) {
    const Status status = Status::FromWire(static_cast<uint8_t>(code), 0, "from the future");
    EXPECT_EQ(status.code(), StatusCode::kInternal) << code;
    // No CUresult on the wire: still an error at the C surface.
    EXPECT_EQ(status.cuda_result(), CUDA_ERROR_UNKNOWN) << code;
    EXPECT_EQ(status.message(), "from the future");
  }
  // A CUresult that came with the unknown code is kept.
  EXPECT_EQ(Status::FromWire(200, CUDA_ERROR_LAUNCH_FAILED, "x").cuda_result(),
            CUDA_ERROR_LAUNCH_FAILED);
}

TEST(StatusTest, FromWireNeverMakesAnErrorWithoutACuresult) {
  const Status status = Status::FromWire(static_cast<uint8_t>(StatusCode::kCuda), 0, "zero");
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_UNKNOWN);
}

TEST(StatusTest, WithContextPrefixesTheMessageAndKeepsTheRest) {
  const Status status = Status::NotFound("no module 7").WithContext("cuModuleGetFunction");
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(status.cuda_result(), CUDA_ERROR_NOT_FOUND);
  EXPECT_EQ(status.message(), "cuModuleGetFunction: no module 7");
  // OK stays OK, with no message.
  const Status ok = Status::Ok().WithContext("anything");
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.message(), "");
}

TEST(StatusTest, ToStringNamesCategoryCuresultAndMessage) {
  EXPECT_EQ(Status::OutOfMemory("64 MiB past the quota").ToString(),
            "OutOfMemory (CUDA 2): 64 MiB past the quota");
  EXPECT_EQ(Status::Disconnected("server gone").ToString(), "Disconnected (CUDA 46): server gone");
  EXPECT_EQ(StatusCodeName(StatusCode::kMalformed), "Malformed");
}

}  // namespace
}  // namespace ferry
