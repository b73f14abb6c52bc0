// ferry-run: runs a program against ferry's libcuda.so.1 without touching the
// system's linker configuration (no /etc/ld.so.conf.d entry: the stand-in
// never shadows a real driver for other programs).
//
//   ferry-run [--config FILE] [--print-env] [--] PROGRAM [ARGS...]
//
// It puts the directory of ferry's client libraries (the stub libcuda.so.1,
// installed apart from the default linker path) first in LD_LIBRARY_PATH,
// sets the FERRY_* variables a client config file names, and executes
// PROGRAM in its own place (exec: same pid, signals and exit status).
//
// The config file: --config FILE, else $XDG_CONFIG_HOME/ferry/client.toml
// (default ~/.config/ferry/client.toml), else /etc/ferry/client.toml (for an
// install under a prefix other than /usr: PREFIX/etc/ferry/client.toml),
// else none. Variables already in the environment win
// over the file, so `FERRY_POOL=train ferry-run ./job` overrides one
// setting. Keys (each sets the variable after it):
//
//   server = "gpu-host:7070"          FERRY_SERVER
//   token_file = "~/.ferry/token"     FERRY_TOKEN_FILE (a leading ~/ is $HOME)
//   tls_ca = "/etc/ferry/ca.pem"      FERRY_TLS_CA
//   tls_server_name = "gpu-host"      FERRY_TLS_SERVER_NAME
//   allow_plain_token = false         FERRY_ALLOW_PLAIN_TOKEN (true: 1)
//   pool = "dev"                      FERRY_POOL
//   gpus = 1                          FERRY_GPUS
//   wait = "5m"                       FERRY_WAIT
//   connect_timeout_ms = 3000         FERRY_CONNECT_TIMEOUT_MS
//   call_timeout = "10m"              FERRY_CALL_TIMEOUT
//   log_level = "info"                FERRY_LOG_LEVEL
//   busy_poll = 50                    FERRY_BUSY_POLL
//
// An unknown key, a value of the wrong type or a file that does not parse is
// an error naming the file and line (exit 2), not a silent default. The
// token's secret itself has no key: it belongs in the file token_file names.
//
// --print-env prints the resulting `export NAME='value'` lines instead of
// running anything (for `eval "$(ferry-run --print-env)"` in a shell).
// Exit status: PROGRAM's; 2 bad usage or config; 126/127 PROGRAM cannot be
// executed / found (as env(1)).
#include <unistd.h>

#include <toml++/toml.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

enum class ValueKind { kString, kPath, kInteger, kBool, kStringOrInteger };

struct Key {
  std::string_view key;
  std::string_view variable;
  ValueKind kind;
};

constexpr Key kKeys[] = {
    {"server", "FERRY_SERVER", ValueKind::kString},
    {"token_file", "FERRY_TOKEN_FILE", ValueKind::kPath},
    {"tls_ca", "FERRY_TLS_CA", ValueKind::kPath},
    {"tls_server_name", "FERRY_TLS_SERVER_NAME", ValueKind::kString},
    {"allow_plain_token", "FERRY_ALLOW_PLAIN_TOKEN", ValueKind::kBool},
    {"pool", "FERRY_POOL", ValueKind::kString},
    {"gpus", "FERRY_GPUS", ValueKind::kInteger},
    {"wait", "FERRY_WAIT", ValueKind::kString},
    {"connect_timeout_ms", "FERRY_CONNECT_TIMEOUT_MS", ValueKind::kInteger},
    {"call_timeout", "FERRY_CALL_TIMEOUT", ValueKind::kStringOrInteger},
    {"log_level", "FERRY_LOG_LEVEL", ValueKind::kString},
    {"busy_poll", "FERRY_BUSY_POLL", ValueKind::kInteger},
};

constexpr const char kUsage[] =
    "usage: ferry-run [--config FILE] [--print-env] [--] PROGRAM [ARGS...]\n"
    "Runs PROGRAM with ferry's libcuda.so.1 first in LD_LIBRARY_PATH and the FERRY_*\n"
    "variables of the client config (--config, else ~/.config/ferry/client.toml, else\n"
    "/etc/ferry/client.toml); variables already set win.\n";

[[noreturn]] void Fail(int status, const std::string& message) {
  std::fprintf(stderr, "ferry-run: %s\n", message.c_str());
  std::exit(status);
}

// This program's own path.
std::filesystem::path Self() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) Fail(2, "cannot find its own location: " + error.message());
  return self;
}

// The system's client config, where the ferry-client package installs it:
// PREFIX/etc/ferry/client.toml for ferry-run in PREFIX/bin, except /etc for
// the prefix /usr (as scripts/packaging/install_files.cmake places it).
std::string SystemConfigPath() {
  const std::filesystem::path prefix = (Self().parent_path() / "..").lexically_normal();
  const std::filesystem::path etc = prefix == "/usr" ? "/etc" : prefix / "etc";
  return (etc / "ferry" / "client.toml").string();
}

std::string Home() {
  const char* home = std::getenv("HOME");
  return home != nullptr ? home : "";
}

// The config file to read: `explicit_path` if given (it must exist), else the
// user's, else the system's, else none.
std::optional<std::string> ConfigPath(const std::optional<std::string>& explicit_path) {
  if (explicit_path.has_value()) {
    if (!std::filesystem::exists(*explicit_path)) Fail(2, *explicit_path + ": no such file");
    return explicit_path;
  }
  std::vector<std::string> candidates;
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  if (xdg != nullptr && xdg[0] == '/') {
    candidates.push_back(std::string(xdg) + "/ferry/client.toml");
  } else if (!Home().empty()) {
    candidates.push_back(Home() + "/.config/ferry/client.toml");
  }
  candidates.push_back(SystemConfigPath());
  for (const std::string& path : candidates) {
    if (std::filesystem::exists(path)) return path;
  }
  return std::nullopt;
}

std::string Where(const std::string& path, const toml::node& node) {
  return path + ":" + std::to_string(node.source().begin.line);
}

// The variables `path` sets, in file order.
std::vector<std::pair<std::string, std::string>> ReadConfig(const std::string& path) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    Fail(2,
         path + ":" + std::to_string(e.source().begin.line) + ": " + std::string(e.description()));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [key_node, value] : root) {
    const std::string key(key_node.str());
    const Key* known = nullptr;
    for (const Key& k : kKeys) {
      if (k.key == key) known = &k;
    }
    if (known == nullptr) {
      std::string keys;
      for (const Key& k : kKeys) keys += (keys.empty() ? "" : ", ") + std::string(k.key);
      const std::string hint = key == "token" ? " (put the secret in a file and name it with "
                                                "token_file)"
                                              : "";
      Fail(2, Where(path, value) + ": unknown key '" + key + "'" + hint + "; keys: " + keys);
    }
    std::optional<std::string> text;
    const bool integer_ok =
        known->kind == ValueKind::kInteger || known->kind == ValueKind::kStringOrInteger;
    const bool string_ok = known->kind != ValueKind::kInteger && known->kind != ValueKind::kBool;
    if (const auto* s = value.as_string(); s != nullptr && string_ok) {
      text = s->get();
      if (known->kind == ValueKind::kPath && text->rfind("~/", 0) == 0) {
        text = Home() + text->substr(1);
      }
    } else if (const auto* i = value.as_integer(); i != nullptr && integer_ok) {
      text = std::to_string(i->get());
    } else if (const auto* b = value.as_boolean();
               b != nullptr && known->kind == ValueKind::kBool) {
      text = b->get() ? "1" : "0";
    }
    if (!text.has_value()) {
      const char* wanted = known->kind == ValueKind::kInteger           ? "an integer"
                           : known->kind == ValueKind::kBool            ? "true or false"
                           : known->kind == ValueKind::kStringOrInteger ? "a string or an integer"
                                                                        : "a string";
      Fail(2, Where(path, value) + ": " + key + " must be " + wanted);
    }
    out.emplace_back(std::string(known->variable), *text);
  }
  return out;
}

// The directory holding ferry's libcuda.so.1: relative to this program, as
// installed (FERRY_RUN_STUB_DIR), or in a build tree (bin/ next to lib/).
std::string StubDirectory() {
  const std::filesystem::path self = Self();
  for (const char* relative : {FERRY_RUN_STUB_DIR, "../lib"}) {
    const std::filesystem::path dir = (self.parent_path() / relative).lexically_normal();
    if (std::filesystem::exists(dir / "libcuda.so.1")) return dir.string();
  }
  Fail(2, "ferry's libcuda.so.1 is not in " +
              (self.parent_path() / FERRY_RUN_STUB_DIR).lexically_normal().string() +
              ": is the ferry-client package whole?");
}

std::string ShellQuoted(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<std::string> config;
  bool print_env = false;
  int first = 1;
  for (; first < argc; ++first) {
    const std::string_view arg = argv[first];
    if (arg == "--") {
      ++first;
      break;
    }
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--print-env") {
      print_env = true;
    } else if (arg == "--config") {
      if (first + 1 >= argc) {
        std::fprintf(stderr, "ferry-run: --config needs a FILE\n%s", kUsage);
        return 2;
      }
      config = argv[++first];
    } else if (arg.rfind("--config=", 0) == 0) {
      config = std::string(arg.substr(9));
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "ferry-run: unknown flag '%s'\n%s", argv[first], kUsage);
      return 2;
    } else {
      break;
    }
  }
  if (first >= argc && !print_env) {
    std::fprintf(stderr, "ferry-run: no PROGRAM given\n%s", kUsage);
    return 2;
  }

  std::vector<std::string> set;  // the variables this run sets, for --print-env
  const std::string stub = StubDirectory();
  const char* old_path = std::getenv("LD_LIBRARY_PATH");
  const std::string library_path =
      old_path != nullptr && old_path[0] != '\0' ? stub + ":" + old_path : stub;
  setenv("LD_LIBRARY_PATH", library_path.c_str(), 1);
  set.push_back("LD_LIBRARY_PATH");
  if (const std::optional<std::string> path = ConfigPath(config)) {
    for (const auto& [variable, value] : ReadConfig(*path)) {
      if (std::getenv(variable.c_str()) != nullptr) continue;  // the environment wins
      setenv(variable.c_str(), value.c_str(), 1);
      set.push_back(variable);
    }
  }

  if (print_env) {
    for (const std::string& variable : set) {
      std::printf("export %s=%s\n", variable.c_str(),
                  ShellQuoted(std::getenv(variable.c_str())).c_str());
    }
    return 0;
  }
  execvp(argv[first], argv + first);
  const int error = errno;
  std::fprintf(stderr, "ferry-run: cannot run %s: %s\n", argv[first], std::strerror(error));
  return error == ENOENT ? 127 : 126;
}
