// Minimal leveled logger to stderr. The level is set once by runtime/ from
// DYNAMOE_LOG_LEVEL; layers below runtime only log through these macros.
#pragma once

#include <atomic>
#include <iostream>
#include <mutex>
#include <sstream>

namespace dynamoe {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

inline std::atomic<int>& LogThreshold() {
  static std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
  return level;
}
inline void SetLogLevel(LogLevel level) { LogThreshold() = static_cast<int>(level); }
inline bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= LogThreshold(); }

// Collects one message and writes it whole, so lines of concurrent ranks and
// threads do not interleave mid-line.
class LogLine {
 public:
  explicit LogLine(LogLevel level) {
    static const char kTag[] = {'D', 'I', 'W', 'E'};
    stream_ << "[dynamoe " << kTag[static_cast<int>(level)] << "] ";
  }
  ~LogLine() {
    stream_ << '\n';
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    std::cerr << stream_.str() << std::flush;
  }
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace dynamoe

#define DYNAMOE_LOG(level)                                       \
  if (!::dynamoe::LogEnabled(::dynamoe::LogLevel::level)) {      \
  } else                                                         \
    ::dynamoe::LogLine(::dynamoe::LogLevel::level).stream()
