// Log lines: named fields in text (key=value, quoted when needed) and the
// JSON form (one object per line, every line).
#include "common/log.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace ferry {
namespace {

// What WriteLogLine writes to stderr for `message` and `fields` in `format`.
std::string Captured(LogFormat format, const std::string& message,
                     const std::vector<LogField>& fields) {
  FILE* file = tmpfile();
  EXPECT_NE(file, nullptr);
  fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  dup2(fileno(file), STDERR_FILENO);
  SetLogFormat(format);
  WriteLogLine(LogLevel::kWarning, message, fields);
  SetLogFormat(LogFormat::kText);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::string out(4096, '\0');
  rewind(file);
  out.resize(fread(out.data(), 1, out.size(), file));
  fclose(file);
  return out;
}

const std::vector<LogField> kFields = {
    {"word", "plain"},         {"words", "two words"}, {"empty", ""},  {"count", uint64_t{5}},
    {"negative", int64_t{-3}}, {"ratio", 1.5},         {"flag", true}, {"quote", "say \"hi\""}};

TEST(LogTest, TextLinesAppendFieldsQuotingValuesThatWouldNotSplitBack) {
  const std::string line = Captured(LogFormat::kText, "something happened", kFields);
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  const std::string tail =
      " W something happened word=plain words=\"two words\" empty=\"\" count=5 negative=-3 "
      "ratio=1.5 flag=true quote=\"say \\\"hi\\\"\"\n";
  ASSERT_GE(line.size(), tail.size());
  EXPECT_EQ(line.substr(line.size() - tail.size()), tail) << line;
}

TEST(LogTest, JsonLinesAreOneObjectWithTheFieldsAsMembers) {
  const std::string line = Captured(LogFormat::kJson, "first\nsecond \"line\"\n", kFields);
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  EXPECT_EQ(line.rfind("{\"time\":\"", 0), 0u) << line;
  EXPECT_NE(line.find("Z\",\"level\":\"warning\",\"program\":"), std::string::npos) << line;
  EXPECT_NE(line.find(",\"pid\":" + std::to_string(getpid()) + ","), std::string::npos) << line;
  const std::string tail =
      "\"msg\":\"first\\nsecond \\\"line\\\"\",\"word\":\"plain\",\"words\":\"two words\","
      "\"empty\":\"\",\"count\":5,\"negative\":-3,\"ratio\":1.5,\"flag\":true,"
      "\"quote\":\"say \\\"hi\\\"\"}\n";
  ASSERT_GE(line.size(), tail.size());
  EXPECT_EQ(line.substr(line.size() - tail.size()), tail) << line;
}

TEST(LogTest, FormatNamesParse) {
  LogFormat format = LogFormat::kText;
  EXPECT_TRUE(ParseLogFormat("json", &format));
  EXPECT_EQ(format, LogFormat::kJson);
  EXPECT_TRUE(ParseLogFormat("text", &format));
  EXPECT_EQ(format, LogFormat::kText);
  EXPECT_FALSE(ParseLogFormat("xml", &format));
  EXPECT_EQ(format, LogFormat::kText);
}

}  // namespace
}  // namespace ferry
