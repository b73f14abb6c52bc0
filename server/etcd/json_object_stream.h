// JsonObjectStream: cuts a byte stream of concatenated JSON objects (etcd's
// streamed gateway answers: one object per chunk, but chunks may arrive
// split or joined by the transport) into whole objects.
//
// It finds an object's end by counting braces outside strings; it does not
// check the JSON inside (the caller's parser does). Whitespace between
// objects is skipped; anything else between objects is Malformed.
//
// Thread-safety: one object belongs to one thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ferry::etcd {

class JsonObjectStream {
 public:
  // An object longer than this is Malformed (etcd's objects are far smaller;
  // this bounds what a broken peer makes us buffer).
  static constexpr size_t kMaxObjectBytes = size_t{64} << 20;

  // Appends `bytes` and moves every object completed by them, in order, to
  // the end of `*objects`. After a Malformed error the stream is unusable.
  Status Feed(std::string_view bytes, std::vector<std::string>* objects);

  // True when no object has started but not ended.
  bool idle() const { return depth_ == 0 && current_.empty(); }

 private:
  std::string current_;  // the bytes of the object being read
  int depth_ = 0;        // braces and brackets open in `current_`
  bool in_string_ = false;
  bool escaped_ = false;  // the previous byte was a backslash inside a string
  bool failed_ = false;
};

}  // namespace ferry::etcd
