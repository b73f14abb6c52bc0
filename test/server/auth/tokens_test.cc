// Tokens (server/auth/tokens.h): made with fresh randomness, stored as
// salted HMACs, found only by their exact secret, and token files that do
// not parse are refused naming the line.
#include "server/auth/tokens.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "test/support/ferryd.h"

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

}  // namespace
}  // namespace ferry::auth
