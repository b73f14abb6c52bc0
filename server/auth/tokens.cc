#include "server/auth/tokens.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <span>

namespace ferry::auth {
namespace {

constexpr std::string_view kPrefix = "ferry_";
constexpr size_t kIdBytes = 8;
constexpr size_t kSecretBytes = 32;

std::string Hex(const uint8_t* bytes, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(2 * size);
  for (size_t i = 0; i < size; ++i) {
    text.push_back(kDigits[bytes[i] >> 4]);
    text.push_back(kDigits[bytes[i] & 15]);
  }
  return text;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // lower case only: the form CreateToken writes
}

// Decodes exactly out.size() bytes of lower-case hex.
bool FromHex(std::string_view text, std::span<uint8_t> out) {
  if (text.size() != 2 * out.size()) return false;
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = HexDigit(text[2 * i]), lo = HexDigit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

bool IsHex(std::string_view text, size_t digits) {
  return text.size() == digits &&
         std::all_of(text.begin(), text.end(), [](char c) { return HexDigit(c) >= 0; });
}

std::array<uint8_t, 32> Digest(const std::array<uint8_t, 16>& salt, std::string_view text) {
  std::array<uint8_t, 32> digest{};
  unsigned int length = 0;
  // HMAC fails only when OpenSSL itself is broken; a zero digest then
  // matches nothing that CreateToken wrote.
  if (HMAC(EVP_sha256(), salt.data(), static_cast<int>(salt.size()),
           reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data(),
           &length) == nullptr) {
    digest.fill(0);
  }
  return digest;
}

// Splits "ferry_<id>_<secret>"; false when it does not have that form.
bool SplitToken(std::string_view text, std::string_view* id) {
  if (text.substr(0, kPrefix.size()) != kPrefix) return false;
  text.remove_prefix(kPrefix.size());
  if (text.size() != 2 * kIdBytes + 1 + 2 * kSecretBytes || text[2 * kIdBytes] != '_') return false;
  *id = text.substr(0, 2 * kIdBytes);
  return IsHex(*id, 2 * kIdBytes) && IsHex(text.substr(2 * kIdBytes + 1), 2 * kSecretBytes);
}

bool ValidName(std::string_view name) {
  return name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
                  c == '@';
         });
}

}  // namespace

bool Token::MayBorrowFrom(std::string_view pool) const {
  return std::any_of(pools.begin(), pools.end(),
                     [&](const std::string& p) { return p == "*" || p == pool; });
}

std::string Token::Describe() const {
  return "token '" + (name.empty() ? std::string("(unnamed)") : name) + "' (" + id + ")";
}

Status CreateToken(std::string name, std::vector<std::string> pools, bool admin, NewToken* out) {
  if (!ValidName(name)) {
    return Status::InvalidArgument("token name '" + name + "': at most 64 of A-Z a-z 0-9 _ - . @");
  }
  if (pools.empty()) return Status::InvalidArgument("a token needs at least one pool ('*': any)");
  for (const std::string& pool : pools) {
    if (pool.empty() || (!ValidName(pool) && pool != "*")) {
      return Status::InvalidArgument("bad pool name '" + pool + "'");
    }
  }
  uint8_t id[kIdBytes], secret[kSecretBytes];
  Token token;
  if (RAND_bytes(id, sizeof(id)) != 1 || RAND_bytes(secret, sizeof(secret)) != 1 ||
      RAND_bytes(token.salt.data(), static_cast<int>(token.salt.size())) != 1) {
    return Status::Internal("OpenSSL's random generator failed");
  }
  token.id = Hex(id, sizeof(id));
  token.name = std::move(name);
  token.pools = std::move(pools);
  token.admin = admin;
  out->secret = std::string(kPrefix) + token.id + "_" + Hex(secret, sizeof(secret));
  OPENSSL_cleanse(secret, sizeof(secret));
  token.digest = Digest(token.salt, out->secret);
  out->entry = std::move(token);
  return Status::Ok();
}

std::string FormatTokenEntry(const Token& token) {
  std::string pools;
  for (const std::string& pool : token.pools) {
    pools += (pools.empty() ? "\"" : ", \"") + pool + "\"";
  }
  return "[[token]]\nid = \"" + token.id + "\"\nname = \"" + token.name + "\"\npools = [" + pools +
         "]\nadmin = " + (token.admin ? "true" : "false") + "\nsalt = \"" +
         Hex(token.salt.data(), token.salt.size()) + "\"\nhmac_sha256 = \"" +
         Hex(token.digest.data(), token.digest.size()) + "\"\n";
}

namespace {

// Whoever can write the token file can add an admin token: refuse a file
// its group or others may write.
Status CheckOwnerOnlyWritable(const struct stat& st, const std::string& path) {
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0) return Status::Ok();
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return Status::PermissionDenied("token file " + path + " is writable by its group or others (mode " +
                                  mode + "): whoever can write it can add admin tokens; run "
                                  "`chmod go-w " + path + "`");
}

// The token file, open for reading and appending and exclusively locked
// (flock) until the destructor closes it: `ferryctl token create` and
// `revoke` running at once each see the other's entries. A revoke replaces
// the file (rename), so a lock taken on the replaced file is dropped and
// taken again on the current one.
class LockedTokenFile {
 public:
  ~LockedTokenFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status Open(const std::string& path, bool create) {
    for (;;) {
      const int fd = ::open(path.c_str(),
                            O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC | (create ? O_CREAT : 0),
                            0600);
      if (fd < 0) return Status::NotFound("cannot open token file " + path + ": " + strerror(errno));
      struct stat opened {}, current {};
      if (::flock(fd, LOCK_EX) != 0 || ::fstat(fd, &opened) != 0) {
        const int error = errno;
        ::close(fd);
        return Status::Internal("cannot lock token file " + path + ": " + strerror(error));
      }
      if (::stat(path.c_str(), &current) == 0 && current.st_dev == opened.st_dev &&
          current.st_ino == opened.st_ino) {
        fd_ = fd;
        return CheckOwnerOnlyWritable(opened, path);
      }
      ::close(fd);  // replaced while we waited: lock the new one
    }
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

Status WriteAll(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t written = ::write(fd, text.data(), text.size());
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return Status::Internal(strerror(written < 0 ? errno : EIO));
    text.remove_prefix(static_cast<size_t>(written));
  }
  return Status::Ok();
}

}  // namespace

Status AppendTokenEntry(const std::string& path, const Token& token) {
  LockedTokenFile file;
  FERRY_RETURN_IF_ERROR(file.Open(path, /*create=*/true));
  if (Status written = WriteAll(file.fd(), "\n" + FormatTokenEntry(token)); !written.ok()) {
    return Status::Internal("cannot write token file " + path + ": " + written.message());
  }
  if (::fsync(file.fd()) != 0) {
    return Status::Internal("cannot write token file " + path + ": " + strerror(errno));
  }
  return Status::Ok();
}

Status RemoveTokenEntry(const std::string& path, const std::string& id) {
  LockedTokenFile file;
  FERRY_RETURN_IF_ERROR(file.Open(path, /*create=*/false));
  TokenSet set;
  FERRY_RETURN_IF_ERROR(TokenSet::Load(path, &set));  // the locked file: it stays in place
  std::string text;
  bool found = false;
  for (const Token& token : set.tokens()) {
    if (token.id == id) {
      found = true;
    } else {
      text += (text.empty() ? "" : "\n") + FormatTokenEntry(token);
    }
  }
  if (!found) return Status::NotFound("no token with id " + id + " in " + path);
  // The new file is made afresh (a stale one, or a link planted in its
  // place, is removed first and never followed), owner-only whatever the
  // umask, and on disk before it replaces the old one.
  const std::string temp = path + ".new";
  if (::unlink(temp.c_str()) != 0 && errno != ENOENT) {
    return Status::Internal("cannot remove the stale " + temp + ": " + strerror(errno));
  }
  const int fd =
      ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return Status::Internal("cannot write " + temp + ": " + strerror(errno));
  Status status = ::fchmod(fd, 0600) == 0 ? WriteAll(fd, text) : Status::Internal(strerror(errno));
  if (status.ok() && ::fsync(fd) != 0) status = Status::Internal(strerror(errno));
  ::close(fd);
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = Status::Internal(strerror(errno));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return Status::Internal("cannot replace token file " + path + ": " + status.message());
  }
  return Status::Ok();
}

Status TokenSet::Load(const std::string& path, TokenSet* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::NotFound("cannot read token file " + path + ": " + strerror(errno));
  struct stat st {};
  Status status = ::fstat(fd, &st) == 0
                      ? CheckOwnerOnlyWritable(st, path)
                      : Status::NotFound("cannot read token file " + path + ": " + strerror(errno));
  std::string text;
  char buffer[8192];
  while (status.ok()) {
    const ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) status = Status::NotFound("cannot read token file " + path + ": " + strerror(errno));
    if (got <= 0) break;
    text.append(buffer, static_cast<size_t>(got));
  }
  ::close(fd);
  FERRY_RETURN_IF_ERROR(status);
  return Parse(text, path, out);
}

Status TokenSet::Parse(std::string_view text, const std::string& path, TokenSet* out) {
  TokenSet set;
  auto error = [&](const toml::source_region& where, std::string_view key, std::string_view what) {
    return Status::InvalidArgument(path + ":" + std::to_string(where.begin.line) + ": " +
                                   std::string(key) + ": " + std::string(what));
  };
  try {
    toml::table root = toml::parse(text, path);
    for (auto&& [key, node] : root) {
      if (key.str() != "token" || !node.is_array_of_tables()) {
        return error(key.source(), key.str(), "unknown key (a token file has [[token]] tables)");
      }
    }
    const toml::array* tokens = root["token"].as_array();
    for (size_t i = 0; tokens != nullptr && i < tokens->size(); ++i) {
      const toml::table& table = *tokens->get(i)->as_table();
      Token token;
      bool has_salt = false, has_digest = false;
      for (auto&& [key_node, value] : table) {
        const std::string_view key = key_node.str();
        const std::string* s = value.as_string() ? &value.as_string()->get() : nullptr;
        if (key == "id" && s != nullptr && IsHex(*s, 2 * kIdBytes)) {
          token.id = *s;
        } else if (key == "name" && s != nullptr && ValidName(*s)) {
          token.name = *s;
        } else if (key == "admin" && value.is_boolean()) {
          token.admin = value.as_boolean()->get();
        } else if (key == "salt" && s != nullptr && FromHex(*s, token.salt)) {
          has_salt = true;
        } else if (key == "hmac_sha256" && s != nullptr && FromHex(*s, token.digest)) {
          has_digest = true;
        } else if (key == "pools" && value.is_array()) {
          for (const toml::node& pool : *value.as_array()) {
            if (!pool.is_string()) return error(value.source(), key, "pools are strings");
            token.pools.push_back(pool.as_string()->get());
          }
        } else if (key == "id" || key == "name" || key == "admin" || key == "salt" ||
                   key == "hmac_sha256" || key == "pools") {
          return error(value.source(), key,
                       "bad value (write entries with `ferryctl token create`)");
        } else {
          return error(key_node.source(), key,
                       "unknown key ([[token]] has id, name, pools, admin, salt, hmac_sha256)");
        }
      }
      if (token.id.empty() || !has_salt || !has_digest) {
        return error(table.source(), "token", "needs id, salt and hmac_sha256");
      }
      for (const Token& other : set.tokens_) {
        if (other.id == token.id) return error(table.source(), "id", "appears twice");
      }
      set.tokens_.push_back(std::move(token));
    }
  } catch (const toml::parse_error& e) {
    return Status::InvalidArgument(path + ":" + std::to_string(e.source().begin.line) + ":" +
                                   std::to_string(e.source().begin.column) + ": " +
                                   std::string(e.description()));
  }
  *out = std::move(set);
  return Status::Ok();
}

const Token* TokenSet::Find(std::string_view presented) const {
  std::string_view id;
  if (!SplitToken(presented, &id)) return nullptr;
  const Token* candidate = nullptr;
  for (const Token& token : tokens_) {
    if (token.id == id) candidate = &token;
  }
  // One HMAC either way; an unknown id is compared against a digest no
  // secret has (all zero), so the answer takes the same time.
  static const Token kNobody{};
  const Token& against = candidate != nullptr ? *candidate : kNobody;
  const std::array<uint8_t, 32> digest = Digest(against.salt, presented);
  const bool equal = CRYPTO_memcmp(digest.data(), against.digest.data(), digest.size()) == 0;
  return equal && candidate != nullptr ? candidate : nullptr;
}

}  // namespace ferry::auth
