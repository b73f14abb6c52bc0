#include "common/status.h"

#include <cuda.h>

namespace ferry {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kCuda:
      return "Cuda";
    case StatusCode::kInvalidArgument:
      return "InvalidArgument";
    case StatusCode::kNotFound:
      return "NotFound";
    case StatusCode::kOutOfMemory:
      return "OutOfMemory";
    case StatusCode::kDisconnected:
      return "Disconnected";
    case StatusCode::kUnimplemented:
      return "Unimplemented";
    case StatusCode::kPermissionDenied:
      return "PermissionDenied";
    case StatusCode::kOverloaded:
      return "Overloaded";
    case StatusCode::kInternal:
      return "Internal";
    case StatusCode::kMalformed:
      return "Malformed";
  }
  return "Unknown";
}

Status Status::InvalidArgument(std::string m) {
  return Status(StatusCode::kInvalidArgument, CUDA_ERROR_INVALID_VALUE, std::move(m));
}
Status Status::InvalidHandle(std::string m) {
  return Status(StatusCode::kInvalidArgument, CUDA_ERROR_INVALID_HANDLE, std::move(m));
}
Status Status::NotFound(std::string m) {
  return Status(StatusCode::kNotFound, CUDA_ERROR_NOT_FOUND, std::move(m));
}
Status Status::OutOfMemory(std::string m) {
  return Status(StatusCode::kOutOfMemory, CUDA_ERROR_OUT_OF_MEMORY, std::move(m));
}
Status Status::Disconnected(std::string m) {
  return Status(StatusCode::kDisconnected, CUDA_ERROR_DEVICE_UNAVAILABLE, std::move(m));
}
Status Status::Unimplemented(std::string m) {
  return Status(StatusCode::kUnimplemented, CUDA_ERROR_NOT_SUPPORTED, std::move(m));
}
Status Status::PermissionDenied(std::string m) {
  return Status(StatusCode::kPermissionDenied, CUDA_ERROR_NOT_PERMITTED, std::move(m));
}
Status Status::Overloaded(std::string m) {
  return Status(StatusCode::kOverloaded, CUDA_ERROR_DEVICE_UNAVAILABLE, std::move(m));
}
Status Status::Internal(std::string m) {
  return Status(StatusCode::kInternal, CUDA_ERROR_UNKNOWN, std::move(m));
}
Status Status::Malformed(std::string m) {
  return Status(StatusCode::kMalformed, CUDA_ERROR_INVALID_VALUE, std::move(m));
}

Status Status::FromWire(uint8_t code, int cuda_result, std::string message) {
  if (code == 0) return Status();
  if (code > static_cast<uint8_t>(StatusCode::kMalformed)) {
    return Status(StatusCode::kInternal, cuda_result != 0 ? cuda_result : CUDA_ERROR_UNKNOWN,
                  std::move(message));
  }
  return Status(static_cast<StatusCode>(code), cuda_result != 0 ? cuda_result : CUDA_ERROR_UNKNOWN,
                std::move(message));
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(StatusCodeName(code_));
  s += " (CUDA ";
  s += std::to_string(cuda_result_);
  s += "): ";
  s += message_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, cuda_result_, std::move(m));
}

}  // namespace ferry
