// Access tokens: who may borrow GPUs from ferryd and who may run its admin
// (mutating ferryctl) commands.
//
// A token is a random secret that `ferryctl token create` prints once:
//   ferry_<id>_<secret>   id: 8 random bytes (16 hex digits), public;
//                         secret: 32 random bytes (64 hex digits).
// The token file (ferryd --token-file, [auth] token_file) keeps, per token,
// its id, a name for logs, the pools it may borrow from ("*" = any), whether
// it is an admin token, a random 16-byte salt and HMAC-SHA256(salt, token):
// never the secret. The secret has 256 bits of entropy, so a fast keyed hash
// is enough (a slow password hash defends low-entropy secrets, which these are
// not, and would cost every handshake); the per-token salt keeps two files
// holding the same token from showing the same digest.
//
//   [[token]]
//   id = "3f2a9c0d11e2b7a4"
//   name = "alice"
//   pools = ["dev", "train"]
//   admin = false
//   salt = "<32 hex digits>"
//   hmac_sha256 = "<64 hex digits>"
//
// TokenSet::Find compares digests in constant time (CRYPTO_memcmp) and
// computes one HMAC whether or not the id exists, so its timing says nothing
// about the secret.
//
// Thread-safety: a TokenSet is immutable after Load/Parse; share it freely.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ferry::auth {

// One entry of the token file (what ferryd knows of a token).
struct Token {
  std::string id;                  // 16 hex digits
  std::string name;                // for logs; "" when created without --name
  std::vector<std::string> pools;  // pools it may borrow from; "*" = any
  bool admin = false;              // may run reload, rebind, drain, ...
  std::array<uint8_t, 16> salt{};
  std::array<uint8_t, 32> digest{};  // HMAC-SHA256(salt, whole token text)

  bool MayBorrowFrom(std::string_view pool) const;
  // "token 'alice' (3f2a9c0d11e2b7a4)" — for logs and refusals.
  std::string Describe() const;
};

// A token just made: the text to hand to its user, and its file entry.
struct NewToken {
  std::string secret;  // "ferry_<id>_<secret>": shown once, stored nowhere
  Token entry;
};

// Makes a token with fresh random id, secret and salt (OpenSSL's RAND_bytes).
Status CreateToken(std::string name, std::vector<std::string> pools, bool admin, NewToken* out);

// The TOML block ([[token]] ...) that stores `token` in a token file.
std::string FormatTokenEntry(const Token& token);

// Appends `token`'s entry to the token file at `path`, creating it with
// mode 0600 (only its owner, ferryd's user, reads it).
Status AppendTokenEntry(const std::string& path, const Token& token);

// Rewrites the token file at `path` without the token whose id is `id`
// (NotFound if none has it): every other entry is kept, comments are not.
// The new file replaces the old one whole (written aside, then renamed).
Status RemoveTokenEntry(const std::string& path, const std::string& id);

class TokenSet {
 public:
  // Reads a token file; every error names the file, line and key.
  static Status Load(const std::string& path, TokenSet* out);
  static Status Parse(std::string_view text, const std::string& path, TokenSet* out);

  // The token whose secret `presented` is; nullptr when it is malformed,
  // unknown or wrong.
  const Token* Find(std::string_view presented) const;
  size_t size() const { return tokens_.size(); }
  const std::vector<Token>& tokens() const { return tokens_; }

 private:
  std::vector<Token> tokens_;
};

}  // namespace ferry::auth
