// Tokens (server/auth/tokens.h): made with fresh randomness, stored as
// salted HMACs, found only by their exact secret, and token files that do
// not parse are refused naming the line; token files are edited under a lock,
// never through a planted link, and refused when others may write them.
#include "server/auth/tokens.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "test/support/ferryd.h"
#include "test/support/pool_config.h"

namespace ferry::auth {
namespace {

NewToken Make(const std::string& name, std::vector<std::string> pools, bool admin) {
  NewToken token;
  Status status = CreateToken(name, std::move(pools), admin, &token);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return token;
}

TEST(TokensTest, AStoredTokenIsFoundByItsSecretOnly) {
  const NewToken alice = Make("alice", {"dev", "train"}, false);
  const NewToken ops = Make("ops", {"*"}, true);
  ASSERT_EQ(alice.secret.size(), 6u + 16 + 1 + 64);
  EXPECT_NE(alice.secret, ops.secret);
  EXPECT_NE(alice.entry.salt, ops.entry.salt);
  const std::string file = FormatTokenEntry(alice.entry) + "\n" + FormatTokenEntry(ops.entry);
  // The file never holds the secret.
  EXPECT_EQ(file.find(alice.secret.substr(23)), std::string::npos);
  TokenSet set;
  ASSERT_TRUE(TokenSet::Parse(file, "tokens.toml", &set).ok());
  ASSERT_EQ(set.size(), 2u);

  const Token* found = set.Find(alice.secret);
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->name, "alice");
  EXPECT_FALSE(found->admin);
  EXPECT_TRUE(found->MayBorrowFrom("train"));
  EXPECT_FALSE(found->MayBorrowFrom("prod"));
  found = set.Find(ops.secret);
  ASSERT_NE(found, nullptr);
  EXPECT_TRUE(found->admin);
  EXPECT_TRUE(found->MayBorrowFrom("anything"));

  // One character off anywhere in the secret, another token's id with this
  // secret, an unknown id, or no token form at all: nothing.
  for (size_t i = 23; i < alice.secret.size(); i += 7) {
    std::string wrong = alice.secret;
    wrong[i] = wrong[i] == 'a' ? 'b' : 'a';
    EXPECT_EQ(set.Find(wrong), nullptr) << i;
  }
  EXPECT_EQ(set.Find("ferry_" + ops.entry.id + alice.secret.substr(22)), nullptr);
  EXPECT_EQ(set.Find("ferry_0000000000000000" + alice.secret.substr(22)), nullptr);
  EXPECT_EQ(set.Find(""), nullptr);
  EXPECT_EQ(set.Find(alice.secret + "0"), nullptr);
  EXPECT_EQ(set.Find(alice.entry.id), nullptr);
}

TEST(TokensTest, BadNamesAndPoolsAreRefusedAtCreation) {
  NewToken token;
  EXPECT_FALSE(CreateToken("a b", {"dev"}, false, &token).ok());
  EXPECT_FALSE(CreateToken("ok", {}, false, &token).ok());
  EXPECT_FALSE(CreateToken("ok", {""}, false, &token).ok());
  EXPECT_FALSE(CreateToken("ok", {"de\"v"}, false, &token).ok());
}

TEST(TokensTest, BadTokenFilesNameTheLine) {
  const NewToken t = Make("t", {"dev"}, false);
  TokenSet set;
  Status status = TokenSet::Parse("[[token]]\nid = \"zz\"\n", "f.toml", &set);
  EXPECT_NE(status.message().find("f.toml:2: id"), std::string::npos) << status.message();
  status = TokenSet::Parse("[server]\nx = 1\n", "f.toml", &set);
  EXPECT_NE(status.message().find("unknown key"), std::string::npos) << status.message();
  status = TokenSet::Parse("[[token]]\nname = \"x\"\n", "f.toml", &set);
  EXPECT_NE(status.message().find("needs id, salt and hmac_sha256"), std::string::npos)
      << status.message();
  status = TokenSet::Parse(FormatTokenEntry(t.entry) + FormatTokenEntry(t.entry), "f.toml", &set);
  EXPECT_NE(status.message().find("appears twice"), std::string::npos) << status.message();
  status = TokenSet::Parse("[[token]\n", "f.toml", &set);
  EXPECT_FALSE(status.ok());
}

TEST(TokensTest, AppendingCreatesAnOwnerOnlyFileAndKeepsEarlierEntries) {
  const std::string dir = test::MakeTempDir("ferry-tokens-");
  ASSERT_FALSE(dir.empty());
  const std::string path = dir + "/tokens.toml";
  const NewToken a = Make("a", {"dev"}, false), b = Make("b", {"*"}, true);
  ASSERT_TRUE(AppendTokenEntry(path, a.entry).ok());
  ASSERT_TRUE(AppendTokenEntry(path, b.entry).ok());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  TokenSet set;
  ASSERT_TRUE(TokenSet::Load(path, &set).ok());
  EXPECT_EQ(set.size(), 2u);
  EXPECT_NE(set.Find(a.secret), nullptr);
  EXPECT_NE(set.Find(b.secret), nullptr);

  // Revoking rewrites the file without the entry, still owner-only.
  ASSERT_TRUE(RemoveTokenEntry(path, a.entry.id).ok());
  EXPECT_EQ(RemoveTokenEntry(path, a.entry.id).code(), StatusCode::kNotFound);
  ASSERT_TRUE(TokenSet::Load(path, &set).ok());
  EXPECT_EQ(set.size(), 1u);
  EXPECT_EQ(set.Find(a.secret), nullptr);
  EXPECT_NE(set.Find(b.secret), nullptr);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::filesystem::remove_all(dir);
}

TEST(TokensTest, ATokenFileOthersMayWriteIsRefused) {
  const std::string dir = test::MakeTempDir("ferry-tokens-");
  ASSERT_FALSE(dir.empty());
  const std::string path = dir + "/tokens.toml";
  const NewToken a = Make("a", {"*"}, true);
  ASSERT_TRUE(AppendTokenEntry(path, a.entry).ok());
  TokenSet set;
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);  // others may read: allowed
  EXPECT_TRUE(TokenSet::Load(path, &set).ok());
  for (const mode_t mode : {0620, 0602, 0666}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    const Status status = TokenSet::Load(path, &set);
    EXPECT_EQ(status.code(), StatusCode::kPermissionDenied) << status.ToString();
    EXPECT_NE(status.message().find("writable by its group or others"), std::string::npos)
        << status.message();
    // Nor is an entry added to it.
    EXPECT_EQ(AppendTokenEntry(path, Make("b", {"*"}, false).entry).code(),
              StatusCode::kPermissionDenied);
  }
  std::filesystem::remove_all(dir);
}

TEST(TokensTest, RevokingNeverWritesThroughAPlantedLink) {
  const std::string dir = test::MakeTempDir("ferry-tokens-");
  ASSERT_FALSE(dir.empty());
  const std::string path = dir + "/tokens.toml";
  const NewToken a = Make("a", {"*"}, false), b = Make("b", {"*"}, false);
  ASSERT_TRUE(AppendTokenEntry(path, a.entry).ok());
  ASSERT_TRUE(AppendTokenEntry(path, b.entry).ok());
  // A link where the new file is written, pointing at a file of the victim.
  const std::string victim = dir + "/victim";
  ASSERT_TRUE(test::WriteTextFile(victim, "precious\n"));
  ASSERT_EQ(::symlink(victim.c_str(), (path + ".new").c_str()), 0);
  ASSERT_TRUE(RemoveTokenEntry(path, a.entry.id).ok());
  std::ifstream in(victim);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "precious\n");
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  TokenSet set;
  ASSERT_TRUE(TokenSet::Load(path, &set).ok());
  EXPECT_EQ(set.size(), 1u);
  EXPECT_NE(set.Find(b.secret), nullptr);
  std::filesystem::remove_all(dir);
}

TEST(TokensTest, ConcurrentCreatesAndRevokesLoseNoEntry) {
  const std::string dir = test::MakeTempDir("ferry-tokens-");
  ASSERT_FALSE(dir.empty());
  const std::string path = dir + "/tokens.toml";
  constexpr int kEach = 40;
  std::vector<NewToken> old_tokens, new_tokens;
  for (int i = 0; i < kEach; ++i) {
    old_tokens.push_back(Make("old" + std::to_string(i), {"*"}, false));
    new_tokens.push_back(Make("new" + std::to_string(i), {"*"}, false));
    ASSERT_TRUE(AppendTokenEntry(path, old_tokens.back().entry).ok());
  }
  // One thread revokes every old token while another appends the new ones:
  // a revoke that read the file before an append and replaced it after
  // would drop that append.
  std::thread revoker([&] {
    for (const NewToken& token : old_tokens) {
      EXPECT_TRUE(RemoveTokenEntry(path, token.entry.id).ok());
    }
  });
  for (const NewToken& token : new_tokens) {
    EXPECT_TRUE(AppendTokenEntry(path, token.entry).ok());
  }
  revoker.join();
  TokenSet set;
  ASSERT_TRUE(TokenSet::Load(path, &set).ok());
  EXPECT_EQ(set.size(), static_cast<size_t>(kEach));
  for (const NewToken& token : new_tokens) EXPECT_NE(set.Find(token.secret), nullptr);
  for (const NewToken& token : old_tokens) EXPECT_EQ(set.Find(token.secret), nullptr);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ferry::auth
