// Session handlers for JIT linking (cuLinkCreate, cuLinkAddData/File,
// cuLinkComplete, cuLinkDestroy): the protocol prose at schema/ferry.capnp's
// LinkCreate says what travels.

#include "server/session.h"

#include <cuda.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "common/content_hash.h"
#include "server/session_internal.h"

namespace ferry::server {

namespace {

// A link's options as the program gave them, checked: at most this many, and
// no log buffer larger than kMaxJitLogBytes (a bigger one is clamped: the
// server holds each log in memory of its own, and the program gets as much
// of it as fits its buffer anyway).
constexpr unsigned kMaxJitOptions = 64;
constexpr uint64_t kMaxJitLogBytes = 1 << 20;

Status ReadJitOptions(capnp::List<wire::JitOption>::Reader in,
                      std::vector<backend::JitOption>* out) {
  if (in.size() > kMaxJitOptions) {
    return Status::InvalidArgument(std::to_string(in.size()) + " JIT options; at most " +
                                   std::to_string(kMaxJitOptions));
  }
  for (auto option : in) {
    backend::JitOption o{option.getOption(), option.getValue()};
    if (o.option < 0 || o.option >= CU_JIT_NUM_OPTIONS) {
      return Status::InvalidArgument("unknown JIT option " + std::to_string(o.option));
    }
    switch (o.option) {
      case CU_JIT_INFO_LOG_BUFFER:
      case CU_JIT_ERROR_LOG_BUFFER:
        o.value = 0;  // the backend's own buffer takes its place
        break;
      case CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES:
      case CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES:
        o.value = std::min<uint64_t>(static_cast<uint32_t>(o.value), kMaxJitLogBytes);
        break;
      case CU_JIT_GLOBAL_SYMBOL_NAMES:
      case CU_JIT_GLOBAL_SYMBOL_ADDRESSES:
      case CU_JIT_GLOBAL_SYMBOL_COUNT:
        return Status::InvalidArgument("the global symbol table travels as globalSymbols");
      case CU_JIT_REFERENCED_KERNEL_NAMES:
      case CU_JIT_REFERENCED_KERNEL_COUNT:
      case CU_JIT_REFERENCED_VARIABLE_NAMES:
      case CU_JIT_REFERENCED_VARIABLE_COUNT:
        // Pointers into the program that ferry does not translate (the
        // client refuses them first).
        return Status::Cuda(CUDA_ERROR_NOT_SUPPORTED,
                            "JIT option " + std::to_string(o.option) + " is not forwarded");
      default:
        break;
    }
    out->push_back(o);
  }
  return Status::Ok();
}

void OptionsToWire(const std::vector<backend::JitOption>& options,
                   capnp::List<wire::JitOption>::Builder out) {
  for (unsigned i = 0; i < options.size(); ++i) {
    out[i].setOption(options[i].option);
    out[i].setValue(options[i].value);
  }
}

// Fills a linkResult from a backend call's outcome and report.
wire::LinkResult::Builder ReplyLinkResult(const Status& outcome, const backend::LinkReport& report,
                                          wire::Reply::Builder reply) {
  auto result = reply.initLinkResult();
  StatusToWire(outcome, result.initOutcome());
  auto text = [](const std::string& log) {
    return kj::arrayPtr(reinterpret_cast<const kj::byte*>(log.data()), log.size());
  };
  result.setInfoLog(text(report.info_log));
  result.setErrorLog(text(report.error_log));
  OptionsToWire(report.options, result.initOptions(static_cast<unsigned>(report.options.size())));
  OptionsToWire(report.input_options,
                result.initInputOptions(static_cast<unsigned>(report.input_options.size())));
  return result;
}

}  // namespace

Status Session::LinkCreate(wire::LinkCreate::Reader args) {
  std::vector<backend::JitOption> options;
  FERRY_RETURN_IF_ERROR(ReadJitOptions(args.getOptions(), &options));
  // The global symbol table: each address must be the session's own, as any
  // device address a call names (a linked kernel would write there).
  constexpr unsigned kMaxJitSymbols = 4096;
  if (args.getGlobalSymbols().size() > kMaxJitSymbols) {
    return Status::InvalidArgument("more than " + std::to_string(kMaxJitSymbols) +
                                   " global symbols");
  }
  std::vector<backend::JitSymbol> symbols;
  for (auto symbol : args.getGlobalSymbols()) {
    if (symbol.getName().size() == 0)
      return Status::InvalidArgument("a global symbol without name");
    FERRY_RETURN_IF_ERROR(CheckRange(symbol.getAddress(), 1, "global symbol"));
    symbols.push_back({symbol.getName().cStr(), symbol.getAddress()});
  }
  return CreateInContext(links_, args.getCtx(), args.getLink(),
                         [&](backend::Context& ctx, LinkEntry* entry) {
                           return backend_.CreateLink(ctx, options, symbols, &entry->link);
                         });
}

Status Session::LinkAddData(wire::LinkAddData::Reader args, CallContext& cx) {
  LinkEntry* link = nullptr;
  FERRY_RETURN_IF_ERROR(links_.Find(args.getLink(), &link));
  if (!link->image.empty()) {
    return Status::InvalidHandle("link " + std::to_string(args.getLink()) + " is complete");
  }
  ImageSource source;
  FERRY_RETURN_IF_ERROR(TakeImage(args.getImageHash(), args.getImageBytes(), cx, &source));
  if (source.not_cached) return Status::Ok();
  std::vector<backend::JitOption> options;
  FERRY_RETURN_IF_ERROR(ReadJitOptions(args.getOptions(), &options));
  backend::LinkReport report;
  const Status added = backend_.AddLinkInput(
      *link->link, args.getType(), std::span<const uint8_t>(source.image.data, source.image.size),
      args.getName().cStr(), options, &report);
  // An input the driver took is worth keeping for the next process that
  // links (or loads) it.
  if (added.ok()) KeepImage(source, cx);
  ReplyLinkResult(added, report, cx.reply);
  return Status::Ok();
}

Status Session::LinkComplete(wire::LinkRef::Reader args, CallContext& cx) {
  LinkEntry* link = nullptr;
  FERRY_RETURN_IF_ERROR(links_.Find(args.getLink(), &link));
  backend::LinkReport report;
  std::span<const uint8_t> image;
  const Status completed = backend_.CompleteLink(*link->link, &image, &report);
  if (completed.ok()) {
    link->image = image;
    // The program usually loads the result next; named by its hash (as a
    // large image is), it is then found here instead of travelling back.
    if (module_cache_ != nullptr && !image.empty()) {
      auto copy = std::make_shared<std::vector<uint8_t>>(image.begin(), image.end());
      module_cache_->Insert(HashContent(image),
                            backend::HostBytes{copy, copy->data(), copy->size()});
    }
  }
  ReplyLinkResult(completed, report, cx.reply).setImageBytes(completed.ok() ? image.size() : 0);
  return Status::Ok();
}

Status Session::LinkImage(wire::LinkRef::Reader args, CallContext& cx) {
  LinkEntry* link = nullptr;
  FERRY_RETURN_IF_ERROR(links_.Find(args.getLink(), &link));
  if (link->image.empty()) {
    return Status::InvalidArgument("link " + std::to_string(args.getLink()) + " has not completed");
  }
  // Owned by the link, which outlives the reply (the executor writes it
  // before it runs another call).
  cx.reply_bulk = ConstBuffer{link->image.data(), link->image.size()};
  return Status::Ok();
}

Status Session::LinkDestroy(wire::LinkRef::Reader args) { return links_.Erase(args.getLink()); }

}  // namespace ferry::server
