// Checks for the multi-process test workers: a failed check prints
// "MISMATCH: <what>" to stderr and is counted; the worker exits 1 if any failed.
#pragma once

#include <iostream>
#include <string>

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

// The worker's exit code: 0 when every check passed.
inline int ExitCode() { return Failures() ? 1 : 0; }

}  // namespace dynamoe::testing
