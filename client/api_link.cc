// Entry points: JIT linking (cuLinkCreate, cuLinkAddData, cuLinkAddFile,
// cuLinkComplete, cuLinkDestroy; the first-generation names are in
// api_legacy.cc).
//
// The link runs on the server (the protocol prose at schema/ferry.capnp's
// LinkCreate). Inputs travel like module images: a large one is named by its
// SHA-256 first and sent only if ferryd lacks it (CallWithImage). The linked
// image comes back at cuLinkComplete and is owned by the link state until
// cuLinkDestroy, as the driver's is. Options are honoured as the driver does:
// after every call the server's log text is copied into the program's
// CU_JIT_INFO_LOG_BUFFER / CU_JIT_ERROR_LOG_BUFFER (NUL-terminated, within
// their sizes), and the output options (CU_JIT_WALL_TIME, the log sizes,
// CU_JIT_THREADS_PER_BLOCK) are written back into the program's optionValues
// (cuLinkCreate's, which CUDA requires to live as long as the link, and
// cuLinkAddData's own). The global symbol table (CU_JIT_GLOBAL_SYMBOL_NAMES,
// _ADDRESSES, _COUNT) is read here and sent as names with device addresses;
// the referenced-name lists (CU_JIT_REFERENCED_*), pointers into the program
// that nothing translates, are refused with CUDA_ERROR_NOT_SUPPORTED.
//
// Thread-safety: every entry point is safe from any thread; calls on one link
// state are serialised by its mutex.
#include <cuda.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "client/entry_point.h"
#include "client/image_upload.h"
#include "common/frame.h"

using ferry::client::HandleKind;
using ferry::client::InBytes;

namespace {

// The client's half of one CUlinkState.
struct LinkState {
  std::mutex mu;  // serialises calls on this link
  uint64_t ctx = 0;
  // The program's cuLinkCreate arrays (outputs are written into `values`).
  std::vector<CUjit_option> options;
  void** values = nullptr;
  char* info_log = nullptr;  // the program's log buffers, and their sizes
  size_t info_capacity = 0;
  char* error_log = nullptr;
  size_t error_capacity = 0;
  std::vector<uint8_t> image;  // the linked image, after cuLinkComplete
};

// What cuLinkCreate's options say beyond (option, value) pairs.
struct GlobalSymbolTable {
  const char* const* names = nullptr;
  void* const* addresses = nullptr;
  unsigned count = 0;
  bool given = false;  // any of the three options was
};

// The links of the process by handle id (the entry points use the one
// Runtime). Links of a destroyed context stay here until cuLinkDestroy; the
// server then answers INVALID_HANDLE for them.
std::mutex g_links_mu;
std::map<uint64_t, std::shared_ptr<LinkState>>& Links() {
  static auto* links = new std::map<uint64_t, std::shared_ptr<LinkState>>;
  return *links;
}

Status FindLink(CUlinkState state, std::shared_ptr<LinkState>* out) {
  std::lock_guard<std::mutex> lock(g_links_mu);
  return ferry::client::CopyEntry(Links(), Runtime::HandleId(state), out, "unknown CUlinkState");
}

bool IsOutputOption(int option) {
  return option == CU_JIT_WALL_TIME || option == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES ||
         option == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES || option == CU_JIT_THREADS_PER_BLOCK;
}

// Reads the program's (options, values) into wire options. cuLinkCreate's
// (`state` and `symbols` given) record where the log buffers and the global
// symbol table are; cuLinkAddData's refuse the options CUDA accepts only at
// cuLinkCreate.
Status ReadOptions(unsigned count, const CUjit_option* options, void* const* values,
                   LinkState* state, GlobalSymbolTable* symbols,
                   std::vector<std::pair<int, uint64_t>>* out) {
  if (count > 0 && (options == nullptr || values == nullptr)) {
    return Status::InvalidArgument("options or optionValues is NULL");
  }
  for (unsigned i = 0; i < count; ++i) {
    const CUjit_option option = options[i];
    uint64_t value = 0;
    std::memcpy(&value, &values[i], sizeof(value));
    switch (option) {
      case CU_JIT_INFO_LOG_BUFFER:
      case CU_JIT_ERROR_LOG_BUFFER:
      case CU_JIT_WALL_TIME:
      case CU_JIT_TARGET_FROM_CUCONTEXT:
      case CU_JIT_TARGET:
        if (state == nullptr) {
          return Status::InvalidArgument("JIT option " + std::to_string(option) +
                                         " is accepted by cuLinkCreate only");
        }
        if (option == CU_JIT_INFO_LOG_BUFFER) state->info_log = static_cast<char*>(values[i]);
        if (option == CU_JIT_ERROR_LOG_BUFFER) state->error_log = static_cast<char*>(values[i]);
        // The pointer stays here: the server logs into a buffer of its own.
        if (option == CU_JIT_INFO_LOG_BUFFER || option == CU_JIT_ERROR_LOG_BUFFER) value = 0;
        break;
      case CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES:
        if (state != nullptr) state->info_capacity = static_cast<uint32_t>(value);
        break;
      case CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES:
        if (state != nullptr) state->error_capacity = static_cast<uint32_t>(value);
        break;
      case CU_JIT_GLOBAL_SYMBOL_NAMES:
      case CU_JIT_GLOBAL_SYMBOL_ADDRESSES:
      case CU_JIT_GLOBAL_SYMBOL_COUNT:
        if (symbols == nullptr) {
          return Status::InvalidArgument("JIT option " + std::to_string(option) +
                                         " is accepted by cuLinkCreate only");
        }
        symbols->given = true;
        if (option == CU_JIT_GLOBAL_SYMBOL_NAMES) {
          symbols->names = static_cast<const char* const*>(values[i]);
        } else if (option == CU_JIT_GLOBAL_SYMBOL_ADDRESSES) {
          symbols->addresses = static_cast<void* const*>(values[i]);
        } else {
          symbols->count = static_cast<uint32_t>(value);
        }
        continue;  // travels as the table, not as an option
      case CU_JIT_REFERENCED_KERNEL_NAMES:
      case CU_JIT_REFERENCED_KERNEL_COUNT:
      case CU_JIT_REFERENCED_VARIABLE_NAMES:
      case CU_JIT_REFERENCED_VARIABLE_COUNT:
        return Status::Unimplemented("JIT option " + std::to_string(option) +
                                     " (a list of referenced names) is not forwarded by ferry");
      default:
        if (option < 0 || option >= CU_JIT_NUM_OPTIONS) {
          return Status::InvalidArgument("unknown JIT option " + std::to_string(option));
        }
        break;
    }
    out->emplace_back(option, value);
  }
  return Status::Ok();
}

template <typename Builder>
void SetOptions(Builder args, const std::vector<std::pair<int, uint64_t>>& options) {
  auto list = args.initOptions(static_cast<unsigned>(options.size()));
  for (unsigned i = 0; i < options.size(); ++i) {
    list[i].setOption(options[i].first);
    list[i].setValue(options[i].second);
  }
}

// Writes the output options among `slots` back into the program's `values`,
// at the slot of the same option.
void WriteOutputs(capnp::List<wire::JitOption>::Reader slots, unsigned count,
                  const CUjit_option* options, void** values) {
  for (auto slot : slots) {
    if (!IsOutputOption(slot.getOption())) continue;
    const uint64_t value = slot.getValue();
    for (unsigned i = 0; i < count; ++i) {
      if (options[i] == slot.getOption()) std::memcpy(&values[i], &value, sizeof(value));
    }
  }
}

// Copies a log's text into the program's buffer, NUL-terminated.
void WriteLog(capnp::Data::Reader text, char* buffer, size_t capacity) {
  if (buffer == nullptr || capacity == 0) return;
  const size_t n = std::min<size_t>(text.size(), capacity - 1);
  std::memcpy(buffer, text.begin(), n);
  buffer[n] = '\0';
}

// Reads a linkResult: the logs and outputs go to the program, the call's
// outcome is returned. `input` (cuLinkAddData's own options) may be empty.
Status ApplyLinkResult(wire::Reply::Reader reply, LinkState& link, unsigned input_count,
                       const CUjit_option* input_options, void** input_values,
                       uint64_t* image_bytes = nullptr) {
  if (!reply.isLinkResult()) return Status::Malformed("link reply without a linkResult");
  auto result = reply.getLinkResult();
  WriteLog(result.getInfoLog(), link.info_log, link.info_capacity);
  WriteLog(result.getErrorLog(), link.error_log, link.error_capacity);
  WriteOutputs(result.getOptions(), static_cast<unsigned>(link.options.size()), link.options.data(),
               link.values);
  WriteOutputs(result.getInputOptions(), input_count, input_options, input_values);
  if (image_bytes != nullptr) *image_bytes = result.getImageBytes();
  return ferry::StatusFromWire(result.getOutcome());
}

Status LinkCreate(unsigned count, CUjit_option* options, void** values, CUlinkState* out) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  if (out == nullptr) return Status::InvalidArgument("stateOut is NULL");
  auto link = std::make_shared<LinkState>();
  FERRY_RETURN_IF_ERROR(rt.CurrentContext(&link->ctx));
  std::vector<std::pair<int, uint64_t>> wire_options;
  GlobalSymbolTable symbols;
  FERRY_RETURN_IF_ERROR(ReadOptions(count, options, values, link.get(), &symbols, &wire_options));
  if (symbols.given && symbols.count > 0 &&
      (symbols.names == nullptr || symbols.addresses == nullptr)) {
    return Status::InvalidArgument("CU_JIT_GLOBAL_SYMBOL_COUNT without its names or addresses");
  }
  link->options.assign(options, options + count);
  link->values = values;
  const uint64_t id = rt.NewId(HandleKind::kLink);
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(link->ctx).Call([&](wire::Call::Builder call) {
    auto args = call.initLinkCreate();
    args.setCtx(link->ctx);
    args.setLink(id);
    SetOptions(args, wire_options);
    auto table = args.initGlobalSymbols(symbols.given ? symbols.count : 0);
    for (unsigned i = 0; i < table.size(); ++i) {
      if (symbols.names[i] == nullptr) continue;  // the server refuses a nameless entry
      table[i].setName(symbols.names[i]);
      table[i].setAddress(reinterpret_cast<uint64_t>(symbols.addresses[i]));
    }
  }));
  {
    std::lock_guard<std::mutex> lock(g_links_mu);
    Links()[id] = std::move(link);
  }
  *out = Runtime::ToHandle<CUlinkState>(id);
  return Status::Ok();
}

Status LinkAdd(CUlinkState state, CUjitInputType type, std::span<const uint8_t> data,
               const char* name, unsigned count, CUjit_option* options, void** values) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  std::shared_ptr<LinkState> link;
  FERRY_RETURN_IF_ERROR(FindLink(state, &link));
  std::vector<std::pair<int, uint64_t>> wire_options;
  FERRY_RETURN_IF_ERROR(ReadOptions(count, options, values, nullptr, nullptr, &wire_options));
  std::lock_guard<std::mutex> lock(link->mu);
  Status outcome;
  FERRY_RETURN_IF_ERROR(ferry::client::CallWithImage(
      rt.ConnectionOf(link->ctx), data,
      [&](wire::Call::Builder call, const ferry::ContentHash* hash) {
        auto args = call.initLinkAddData();
        args.setLink(Runtime::HandleId(state));
        args.setType(type);
        args.setName(name != nullptr ? name : "");
        SetOptions(args, wire_options);
        if (hash != nullptr) {
          args.setImageHash(kj::arrayPtr(hash->data(), hash->size()));
          args.setImageBytes(data.size());
        }
      },
      [&](wire::Reply::Reader reply) {
        outcome = ApplyLinkResult(reply, *link, count, options, values);
        return Status::Ok();
      }));
  return outcome;
}

Status LinkAddData(CUlinkState state, CUjitInputType type, void* data, size_t size,
                   const char* name, unsigned count, CUjit_option* options, void** values) {
  if (data == nullptr || size == 0) return Status::InvalidArgument("data is NULL or size is 0");
  return LinkAdd(state, type, std::span<const uint8_t>(static_cast<const uint8_t*>(data), size),
                 name, count, options, values);
}

Status LinkAddFile(CUlinkState state, CUjitInputType type, const char* path, unsigned count,
                   CUjit_option* options, void** values) {
  if (path == nullptr) return Status::InvalidArgument("path is NULL");
  FERRY_RETURN_IF_ERROR(Runtime::Get().Ready());
  std::shared_ptr<LinkState> link;
  FERRY_RETURN_IF_ERROR(FindLink(state, &link));
  // Read here, on the program's machine; PTX gets the NUL the linker reads.
  std::vector<uint8_t> bytes;
  FERRY_RETURN_IF_ERROR(ferry::client::ReadFileBytes(path, &bytes));
  if (bytes.empty()) return Status::InvalidArgument(std::string(path) + " is empty");
  if (type == CU_JIT_INPUT_PTX && bytes.back() != 0) bytes.push_back(0);
  return LinkAdd(state, type, bytes, path, count, options, values);
}

Status LinkComplete(CUlinkState state, void** cubin_out, size_t* size_out) {
  Runtime& rt = Runtime::Get();
  FERRY_RETURN_IF_ERROR(rt.Ready());
  if (cubin_out == nullptr) return Status::InvalidArgument("cubinOut is NULL");
  std::shared_ptr<LinkState> link;
  FERRY_RETURN_IF_ERROR(FindLink(state, &link));
  const uint64_t id = Runtime::HandleId(state);
  std::lock_guard<std::mutex> lock(link->mu);
  Status outcome;
  uint64_t image_bytes = 0;
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(link->ctx).Call(
      [&](wire::Call::Builder call) { call.initLinkComplete().setLink(id); }, {}, {},
      [&](wire::Reply::Reader reply) {
        outcome = ApplyLinkResult(reply, *link, 0, nullptr, nullptr, &image_bytes);
        return Status::Ok();
      }));
  FERRY_RETURN_IF_ERROR(outcome);
  // The image, into storage the link owns until cuLinkDestroy.
  link->image.resize(image_bytes);
  FERRY_RETURN_IF_ERROR(rt.ConnectionOf(link->ctx).Call(
      [&](wire::Call::Builder call) { call.initLinkImage().setLink(id); }, {},
      InBytes{link->image.data(), link->image.size()}));
  *cubin_out = link->image.data();
  if (size_out != nullptr) *size_out = link->image.size();
  return Status::Ok();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuLinkCreate_v2(unsigned int numOptions, CUjit_option* options,
                                 void** optionValues, CUlinkState* stateOut) {
  return Api([&] { return LinkCreate(numOptions, options, optionValues, stateOut); });
}

CUresult CUDAAPI cuLinkAddData_v2(CUlinkState state, CUjitInputType type, void* data, size_t size,
                                  const char* name, unsigned int numOptions, CUjit_option* options,
                                  void** optionValues) {
  return Api([&] {
    return LinkAddData(state, type, data, size, name, numOptions, options, optionValues);
  });
}

CUresult CUDAAPI cuLinkAddFile_v2(CUlinkState state, CUjitInputType type, const char* path,
                                  unsigned int numOptions, CUjit_option* options,
                                  void** optionValues) {
  return Api([&] { return LinkAddFile(state, type, path, numOptions, options, optionValues); });
}

CUresult CUDAAPI cuLinkComplete(CUlinkState state, void** cubinOut, size_t* sizeOut) {
  return Api([&] { return LinkComplete(state, cubinOut, sizeOut); });
}

CUresult CUDAAPI cuLinkDestroy(CUlinkState state) {
  return Api([&]() -> Status {
    Runtime& rt = Runtime::Get();
    FERRY_RETURN_IF_ERROR(rt.Ready());
    const uint64_t id = Runtime::HandleId(state);
    std::shared_ptr<LinkState> link;
    {
      std::lock_guard<std::mutex> lock(g_links_mu);
      FERRY_RETURN_IF_ERROR(ferry::client::CopyEntry(Links(), id, &link, "unknown CUlinkState"));
      Links().erase(id);
    }
    // To the server of the context it was made in.
    return rt.ConnectionOf(link->ctx).Post(
        [&](wire::Call::Builder call) { call.initLinkDestroy().setLink(id); });
  });
}

}  // extern "C"
