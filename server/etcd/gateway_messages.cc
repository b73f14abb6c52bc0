// etcd's gateway JSON: see gateway_messages.h.
#include "server/etcd/gateway_messages.h"

#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>

#include <nlohmann/json.hpp>

namespace ferry::etcd::gateway {
namespace {

using Json = nlohmann::json;

// Answers are quoted in error messages up to this many bytes.
constexpr size_t kQuoteBytes = 200;

std::string Quote(std::string_view body) {
  if (body.size() <= kQuoteBytes) return std::string(body);
  return std::string(body.substr(0, kQuoteBytes)) + "...";
}

Status NotEtcd(std::string_view what, std::string_view body) {
  return Status::Malformed("etcd answer: " + std::string(what) + ": " + Quote(body));
}

// Parses `body` as one JSON object (no exceptions: nlohmann's parse with
// allow_exceptions=false gives a "discarded" value on error).
Status ParseObject(std::string_view body, Json* out) {
  *out = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded()) return NotEtcd("not JSON", body);
  if (!out->is_object()) return NotEtcd("not a JSON object", body);
  return Status::Ok();
}

// protobuf's JSON mapping: an int64 is a string ("12"), though a number is
// accepted too; an absent field is 0.
bool ReadInt64(const Json& object, const char* name, int64_t* out) {
  *out = 0;
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return true;
  if (it->is_string()) return absl::SimpleAtoi(it->get_ref<const std::string&>(), out);
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
    return true;
  }
  return false;
}

// bytes fields are base64; an absent one is empty.
bool ReadBytes(const Json& object, const char* name, std::string* out) {
  out->clear();
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return true;
  return it->is_string() && absl::Base64Unescape(it->get_ref<const std::string&>(), out);
}

bool ReadBool(const Json& object, const char* name, bool* out) {
  *out = false;
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return true;
  if (!it->is_boolean()) return false;
  *out = it->get<bool>();
  return true;
}

// The object (or array) at `name`, or nullptr when absent; `*ok` false when
// present with another type.
const Json* Member(const Json& object, const char* name, Json::value_t type, bool* ok) {
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return nullptr;
  if (it->type() != type) {
    *ok = false;
    return nullptr;
  }
  return &*it;
}

Status ParseKeyValue(const Json& json, std::string_view body, KeyValue* kv) {
  if (!json.is_object() || !ReadBytes(json, "key", &kv->key) ||
      !ReadBytes(json, "value", &kv->value) ||
      !ReadInt64(json, "create_revision", &kv->create_revision) ||
      !ReadInt64(json, "mod_revision", &kv->mod_revision) ||
      !ReadInt64(json, "version", &kv->version) || !ReadInt64(json, "lease", &kv->lease)) {
    return NotEtcd("a key-value that is not etcd's", body);
  }
  return Status::Ok();
}

Status ParseKvs(const Json& object, std::string_view body, std::vector<KeyValue>* kvs) {
  kvs->clear();
  bool ok = true;
  const Json* list = Member(object, "kvs", Json::value_t::array, &ok);
  if (!ok) return NotEtcd("\"kvs\" is not a list", body);
  if (list == nullptr) return Status::Ok();
  kvs->reserve(list->size());
  for (const Json& entry : *list) {
    KeyValue kv;
    FERRY_RETURN_IF_ERROR(ParseKeyValue(entry, body, &kv));
    kvs->push_back(std::move(kv));
  }
  return Status::Ok();
}

// The store's revision from the answer's "header".
Status ParseHeaderRevision(const Json& object, std::string_view body, int64_t* revision) {
  bool ok = true;
  const Json* header = Member(object, "header", Json::value_t::object, &ok);
  if (!ok) return NotEtcd("\"header\" is not an object", body);
  if (header == nullptr) {
    *revision = 0;
    return Status::Ok();
  }
  if (!ReadInt64(*header, "revision", revision)) return NotEtcd("a bad header revision", body);
  return Status::Ok();
}

// A streamed answer's error object: {"error": {"grpc_code": N, "message":
// "..."}} (grpc-gateway's stream error form).
Status StreamError(const Json& error, std::string_view body) {
  int64_t code = 0;
  std::string message;
  if (error.is_object()) {
    if (!ReadInt64(error, "grpc_code", &code)) code = 0;
    const auto it = error.find("message");
    if (it != error.end() && it->is_string()) message = it->get<std::string>();
  } else if (error.is_string()) {
    message = error.get<std::string>();
  }
  if (message.empty()) message = Quote(body);
  if (code == kGrpcNotFound) return Status::NotFound("etcd: " + message);
  // The member cannot serve now (e.g. it lost its leader): as if it were away.
  if (code == kGrpcUnavailable) return Status::Disconnected("etcd: " + message);
  return Status::Internal("etcd: " + message + " (grpc code " + std::to_string(code) + ")");
}

std::string Base64(const std::string& bytes) { return absl::Base64Escape(bytes); }

void AddRange(const KeyRange& range, Json* object) {
  (*object)["key"] = Base64(range.key);
  if (!range.range_end.empty()) (*object)["range_end"] = Base64(range.range_end);
}

Json OpJson(const TxnOp& op) {
  Json request = Json::object();
  switch (op.kind) {
    case TxnOp::Kind::kPut:
      request["key"] = Base64(op.key);
      request["value"] = Base64(op.value);
      if (op.lease != 0) request["lease"] = std::to_string(op.lease);
      return Json{{"request_put", request}};
    case TxnOp::Kind::kDelete:
      AddRange(op.prefix ? PrefixRange(op.key) : SingleKey(op.key), &request);
      return Json{{"request_delete_range", request}};
    case TxnOp::Kind::kRange:
      AddRange(op.prefix ? PrefixRange(op.key) : SingleKey(op.key), &request);
      return Json{{"request_range", request}};
  }
  return Json::object();
}

Json CompareJson(const Compare& compare) {
  Json json = Json::object();
  json["key"] = Base64(compare.key);
  switch (compare.op) {
    case Compare::Op::kEqual:
      json["result"] = "EQUAL";
      break;
    case Compare::Op::kNotEqual:
      json["result"] = "NOT_EQUAL";
      break;
    case Compare::Op::kGreater:
      json["result"] = "GREATER";
      break;
    case Compare::Op::kLess:
      json["result"] = "LESS";
      break;
  }
  switch (compare.target) {
    case Compare::Target::kCreateRevision:
      json["target"] = "CREATE";
      json["create_revision"] = std::to_string(compare.number);
      break;
    case Compare::Target::kModRevision:
      json["target"] = "MOD";
      json["mod_revision"] = std::to_string(compare.number);
      break;
    case Compare::Target::kVersion:
      json["target"] = "VERSION";
      json["version"] = std::to_string(compare.number);
      break;
    case Compare::Target::kValue:
      json["target"] = "VALUE";
      json["value"] = Base64(compare.value);
      break;
  }
  return json;
}

size_t CountRanges(const std::vector<TxnOp>& ops) {
  size_t count = 0;
  for (const TxnOp& op : ops) count += op.kind == TxnOp::Kind::kRange ? 1 : 0;
  return count;
}

}  // namespace

KeyRange PrefixRange(const std::string& prefix) {
  if (prefix.empty()) return KeyRange{std::string(1, '\0'), std::string(1, '\0')};
  return KeyRange{prefix, PrefixEnd(prefix)};
}

KeyRange SingleKey(const std::string& key) { return KeyRange{key, {}}; }

std::string RangeBody(const KeyRange& range) {
  Json body = Json::object();
  AddRange(range, &body);
  return body.dump();
}

std::string PutBody(const std::string& key, const std::string& value, int64_t lease) {
  Json body = {{"key", Base64(key)}, {"value", Base64(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  return body.dump();
}

std::string DeleteRangeBody(const KeyRange& range) { return RangeBody(range); }

std::string TxnBody(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
                    const std::vector<TxnOp>& failure) {
  Json body = {{"compare", Json::array()}, {"success", Json::array()}, {"failure", Json::array()}};
  for (const Compare& compare : compares) body["compare"].push_back(CompareJson(compare));
  for (const TxnOp& op : success) body["success"].push_back(OpJson(op));
  for (const TxnOp& op : failure) body["failure"].push_back(OpJson(op));
  return body.dump();
}

std::string LeaseGrantBody(int64_t ttl_seconds) {
  return Json{{"TTL", std::to_string(ttl_seconds)}}.dump();
}

std::string LeaseIdBody(int64_t id) { return Json{{"ID", std::to_string(id)}}.dump(); }

std::string WatchCreateBody(const KeyRange& range, int64_t start_revision) {
  Json request = Json::object();
  AddRange(range, &request);
  if (start_revision != 0) request["start_revision"] = std::to_string(start_revision);
  return Json{{"create_request", request}}.dump();
}

Status ParseRange(std::string_view body, std::vector<KeyValue>* kvs, int64_t* revision) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(body, &json));
  int64_t header_revision = 0;
  FERRY_RETURN_IF_ERROR(ParseHeaderRevision(json, body, &header_revision));
  if (revision != nullptr) *revision = header_revision;
  return ParseKvs(json, body, kvs);
}

Status ParsePut(std::string_view body, int64_t* revision) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(body, &json));
  return ParseHeaderRevision(json, body, revision);
}

Status ParseDeleteRange(std::string_view body, int64_t* deleted) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(body, &json));
  if (!ReadInt64(json, "deleted", deleted)) return NotEtcd("a bad \"deleted\"", body);
  return Status::Ok();
}

Status ParseTxn(std::string_view body, const std::vector<TxnOp>& success,
                const std::vector<TxnOp>& failure, TxnResult* result) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(body, &json));
  *result = TxnResult{};
  if (!ReadBool(json, "succeeded", &result->succeeded)) {
    return NotEtcd("a bad \"succeeded\"", body);
  }
  FERRY_RETURN_IF_ERROR(ParseHeaderRevision(json, body, &result->revision));
  bool ok = true;
  const Json* responses = Member(json, "responses", Json::value_t::array, &ok);
  if (!ok) return NotEtcd("\"responses\" is not a list", body);
  if (responses != nullptr) {
    for (const Json& response : *responses) {
      if (!response.is_object())
        return NotEtcd("a transaction response that is not an object", body);
      const Json* range = Member(response, "response_range", Json::value_t::object, &ok);
      if (!ok) return NotEtcd("a bad \"response_range\"", body);
      if (range == nullptr) continue;  // the answer of a put or a delete
      std::vector<KeyValue> kvs;
      FERRY_RETURN_IF_ERROR(ParseKvs(*range, body, &kvs));
      result->ranges.push_back(std::move(kvs));
    }
  }
  const size_t expected = CountRanges(result->succeeded ? success : failure);
  if (result->ranges.size() != expected) {
    return NotEtcd("a transaction answer with " + std::to_string(result->ranges.size()) +
                       " range results for " + std::to_string(expected) + " range operations",
                   body);
  }
  return Status::Ok();
}

Status ParseLeaseGrant(std::string_view body, int64_t* id, int64_t* ttl_seconds) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(body, &json));
  if (!ReadInt64(json, "ID", id) || !ReadInt64(json, "TTL", ttl_seconds)) {
    return NotEtcd("a lease grant that is not etcd's", body);
  }
  const auto error = json.find("error");
  if (error != json.end() && error->is_string() && !error->get_ref<const std::string&>().empty()) {
    return Status::Internal("etcd: lease grant: " + error->get<std::string>());
  }
  if (*id == 0) return NotEtcd("a lease grant without an ID", body);
  return Status::Ok();
}

Status ParseKeepAlive(std::string_view body, int64_t* ttl_seconds) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(body, &json));
  const auto error = json.find("error");
  if (error != json.end()) return StreamError(*error, body);
  bool ok = true;
  const Json* result = Member(json, "result", Json::value_t::object, &ok);
  if (!ok || result == nullptr) return NotEtcd("a keep-alive answer without \"result\"", body);
  if (!ReadInt64(*result, "TTL", ttl_seconds)) return NotEtcd("a bad keep-alive TTL", body);
  return Status::Ok();
}

Status ParseError(int http_status, std::string_view body, int* grpc_code) {
  *grpc_code = -1;
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  int64_t code = 0;
  if (json.is_discarded() || !json.is_object() || !ReadInt64(json, "code", &code)) {
    return Status::Malformed("etcd answered HTTP " + std::to_string(http_status) +
                             " without etcd's error JSON: " + Quote(body));
  }
  std::string message;
  for (const char* name : {"message", "error"}) {
    const auto it = json.find(name);
    if (it != json.end() && it->is_string() && !it->get_ref<const std::string&>().empty()) {
      message = it->get<std::string>();
      break;
    }
  }
  if (message.empty()) message = "HTTP " + std::to_string(http_status);
  *grpc_code = static_cast<int>(code);
  if (code == kGrpcNotFound) return Status::NotFound(message);
  return Status::Internal(message + " (HTTP " + std::to_string(http_status) + ", grpc code " +
                          std::to_string(code) + ")");
}

Status ParseWatchMessage(std::string_view object, WatchMessage* message) {
  Json json;
  FERRY_RETURN_IF_ERROR(ParseObject(object, &json));
  *message = WatchMessage{};
  const auto error = json.find("error");
  if (error != json.end()) return StreamError(*error, object);
  bool ok = true;
  const Json* result = Member(json, "result", Json::value_t::object, &ok);
  if (!ok || result == nullptr) return NotEtcd("a watch message without \"result\"", object);
  if (!ReadBool(*result, "created", &message->created) ||
      !ReadBool(*result, "canceled", &message->canceled) ||
      !ReadInt64(*result, "compact_revision", &message->compact_revision)) {
    return NotEtcd("a watch message that is not etcd's", object);
  }
  const auto reason = result->find("cancel_reason");
  if (reason != result->end() && reason->is_string())
    message->cancel_reason = reason->get<std::string>();
  FERRY_RETURN_IF_ERROR(ParseHeaderRevision(*result, object, &message->revision));
  const Json* events = Member(*result, "events", Json::value_t::array, &ok);
  if (!ok) return NotEtcd("\"events\" is not a list", object);
  if (events == nullptr) return Status::Ok();
  for (const Json& entry : *events) {
    if (!entry.is_object()) return NotEtcd("a watch event that is not an object", object);
    WatchEvent event;
    // An absent type is PUT (the enum's zero value).
    const auto type = entry.find("type");
    if (type != entry.end() && !type->is_null()) {
      if (*type == "DELETE") {
        event.type = WatchEvent::Type::kDelete;
      } else if (*type != "PUT") {
        return NotEtcd("a watch event of an unknown type", object);
      }
    }
    const Json* kv = Member(entry, "kv", Json::value_t::object, &ok);
    if (!ok || kv == nullptr) return NotEtcd("a watch event without \"kv\"", object);
    FERRY_RETURN_IF_ERROR(ParseKeyValue(*kv, object, &event.kv));
    message->events.push_back(std::move(event));
  }
  return Status::Ok();
}

}  // namespace ferry::etcd::gateway
