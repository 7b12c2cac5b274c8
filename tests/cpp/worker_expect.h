// Shared by the multi-process test workers: key=value arguments, and checks
// (a failed check prints "MISMATCH: <what>" to stderr and is counted; the
// worker exits 1 if any failed).
#pragma once

#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace dynamoe::testing {

inline int& Failures() {
  static int failures = 0;
  return failures;
}

inline void Expect(bool ok, const std::string& what) {
  if (!ok) {
    ++Failures();
    std::cerr << "MISMATCH: " << what << std::endl;
  }
}

// key=value arguments over the defaults; other arguments are ignored.
inline std::map<std::string, std::string> ParseArgs(int argc, char** argv, std::map<std::string, std::string> args) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    if (eq != std::string::npos) args[a.substr(0, eq)] = a.substr(eq + 1);
  }
  return args;
}

// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> Split(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

// The worker's exit code: 0 when every check passed.
inline int ExitCode() { return Failures() ? 1 : 0; }

}  // namespace dynamoe::testing
