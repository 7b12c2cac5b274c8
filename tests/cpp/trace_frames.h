// Trace frames as docs/trace-format.md lays them out, built independently of
// the encoder (placement/trace.cc): for tests and the fuzzer that write
// records with right lengths and checksums around any payload.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "placement/crc32.h"

namespace dynamoe::testing {

inline std::string U32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }

// Version 1: length, payload CRC. Version 2: sync marker, length, payload
// CRC, CRC of those 8 bytes.
inline std::string Frame(const std::string& payload, uint32_t version) {
  const std::string n =
      U32(static_cast<uint32_t>(payload.size())) + U32(placement::Crc32(payload.data(), payload.size()));
  return version == 1 ? n + payload : "\xA7REC" + n + U32(placement::Crc32(n.data(), 8)) + payload;
}

// The payloads of a well-formed version-2 trace (the header's first).
inline std::vector<std::string> Payloads(const std::string& v2) {
  std::vector<std::string> out;
  for (size_t pos = 12; pos < v2.size();) {
    uint32_t len;
    std::memcpy(&len, v2.data() + pos + 4, 4);
    out.push_back(v2.substr(pos + 16, len));
    pos += 16 + len;
  }
  return out;
}

}  // namespace dynamoe::testing
