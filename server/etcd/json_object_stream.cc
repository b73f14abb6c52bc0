// JsonObjectStream: see json_object_stream.h.
#include "server/etcd/json_object_stream.h"

namespace ferry::etcd {

Status JsonObjectStream::Feed(std::string_view bytes, std::vector<std::string>* objects) {
  if (failed_) return Status::Malformed("JSON object stream: an earlier error ended it");
  for (const char byte : bytes) {
    if (depth_ == 0) {
      // Between objects: only whitespace, or the start of the next one.
      if (byte == ' ' || byte == '\n' || byte == '\r' || byte == '\t') continue;
      if (byte != '{') {
        failed_ = true;
        return Status::Malformed(std::string("JSON object stream: '") + byte +
                                 "' where an object should start");
      }
    }
    current_.push_back(byte);
    if (in_string_) {
      if (escaped_) {
        escaped_ = false;
      } else if (byte == '\\') {
        escaped_ = true;
      } else if (byte == '"') {
        in_string_ = false;
      }
    } else if (byte == '"') {
      in_string_ = true;
    } else if (byte == '{' || byte == '[') {
      ++depth_;
    } else if (byte == '}' || byte == ']') {
      if (--depth_ == 0) {
        objects->push_back(std::move(current_));
        current_.clear();
      }
    }
    if (current_.size() > kMaxObjectBytes) {
      failed_ = true;
      return Status::Malformed("JSON object stream: an object longer than " +
                               std::to_string(kMaxObjectBytes) + " bytes");
    }
  }
  return Status::Ok();
}

}  // namespace ferry::etcd
