// ferry::Status — how errors travel inside ferry (client, wire, server).
//
// A Status is OK or carries a category (StatusCode), the CUresult that the C
// surface will report for it, and a human-readable message. Named constructors
// pick the CUresult that the category means (README.md invariant 8); Status::Cuda
// carries a driver error through unchanged. The conversion to CUresult happens
// in exactly one place (client/cuda_result.h: ToCuResult).
//
// Thread-safety: a value type; distinct objects may be used from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace ferry {

enum class StatusCode : uint8_t {
  kOk = 0,
  kCuda = 1,              // a driver error, reported as its CUresult
  kInvalidArgument = 2,   // a bad value from the caller
  kNotFound = 3,          // a name or id that does not exist
  kOutOfMemory = 4,       // an allocation past the device or quota
  kDisconnected = 5,      // the peer is gone or unreachable
  kUnimplemented = 6,     // a call ferry does not forward
  kPermissionDenied = 7,  // not allowed for this session
  kOverloaded = 8,        // no capacity now; try later
  kInternal = 9,          // a bug or an unexpected failure in ferry itself
  kMalformed = 10,        // a frame or message that does not parse
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  // A driver error: `cuda_result` is the CUresult to report.
  static Status Cuda(int cuda_result, std::string message) {
    return Status(StatusCode::kCuda, cuda_result, std::move(message));
  }
  static Status InvalidArgument(std::string message);   // CUDA_ERROR_INVALID_VALUE
  static Status InvalidHandle(std::string message);     // CUDA_ERROR_INVALID_HANDLE
  static Status NotFound(std::string message);          // CUDA_ERROR_NOT_FOUND
  static Status OutOfMemory(std::string message);       // CUDA_ERROR_OUT_OF_MEMORY
  static Status Disconnected(std::string message);      // CUDA_ERROR_DEVICE_UNAVAILABLE
  static Status Unimplemented(std::string message);     // CUDA_ERROR_NOT_SUPPORTED
  static Status PermissionDenied(std::string message);  // CUDA_ERROR_NOT_PERMITTED
  static Status Overloaded(std::string message);        // CUDA_ERROR_DEVICE_UNAVAILABLE
  static Status Internal(std::string message);          // CUDA_ERROR_UNKNOWN
  static Status Malformed(std::string message);         // CUDA_ERROR_INVALID_VALUE

  // Rebuilds a Status received from the wire; `code` is trusted only as far as
  // it is a known StatusCode (unknown values become kInternal).
  static Status FromWire(uint8_t code, int cuda_result, std::string message);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  int cuda_result() const { return cuda_result_; }  // 0 when ok()
  const std::string& message() const { return message_; }

  // "OutOfMemory (CUDA 2): message" — for logs.
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context` + ": ".
  Status WithContext(std::string_view context) const;

 private:
  Status(StatusCode code, int cuda_result, std::string message)
      : code_(code), cuda_result_(cuda_result), message_(std::move(message)) {}

  StatusCode code_ = StatusCode::kOk;
  int cuda_result_ = 0;
  std::string message_;
};

}  // namespace ferry

// Returns from the enclosing function when `expr` yields a non-OK Status.
#define FERRY_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::ferry::Status ferry_status_ = (expr);        \
    if (!ferry_status_.ok()) return ferry_status_; \
  } while (0)
