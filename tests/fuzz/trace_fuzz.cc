// Fuzz target for the trace reader and the importers: any bytes give a trace
// or a clear error, never a crash (run under ASan + UBSan). Built with
// -fsanitize=fuzzer (clang), LLVMFuzzerTestOneInput is the entry point;
// otherwise main() mutates a valid trace deterministically: byte flips,
// cuts, insertions and length-field edits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "placement/trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto t = dynamoe::placement::ParseTrace(bytes);
  if (t.ok() && !t->layers.empty()) (void)dynamoe::placement::ExportCountsCsv(*t);
  (void)dynamoe::placement::ImportCountsCsv(bytes);
  (void)dynamoe::placement::ImportRoutingJsonl(bytes);
  return 0;
}

#ifndef DYNAMOE_LIBFUZZER
namespace {

std::string Seed() {
  using namespace dynamoe::placement;
  std::string b = EncodeTraceHeader(2, 0, {"gate", "experts"}, {TraceLayerSpec{"moe0", 4, 8, 16, true, false, 2}});
  b += EncodeLayerRecord({"moe1", 2, 8, 16, false, true, 4});
  for (int64_t i = 0; i < 3; ++i) {
    TraceStep s;
    s.step = i, s.layer = i % 2;
    const int64_t E = i % 2 ? 2 : 4;
    s.kept = *CountMatrix::Make(2, E, std::vector<int64_t>(2 * E, i + 1));
    s.routed = s.kept;
    if (i == 0) s.plan = Plan::None(2, E);
    s.phase_seconds = {0.5, 0.25};
    b += EncodeStepRecord(s);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 10000;
  const std::string seed = Seed();
  std::mt19937 rng(12345);
  long ok = 0;
  for (long i = 0; i < iterations; ++i) {
    std::string b = seed;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      const size_t at = rng() % b.size();
      switch (rng() % 5) {
        case 0: b[at] = static_cast<char>(b[at] ^ (1u << (rng() % 8))); break;
        case 1: b.resize(at); break;
        case 2: b.insert(at, 1, static_cast<char>(rng())); break;
        case 3: b.erase(at, 1 + rng() % 8); break;
        default:  // a random 32-bit value, often over a length or count field
          for (int j = 0; j < 4 && at + j < b.size(); ++j) b[at + j] = static_cast<char>(rng());
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(b.data()), b.size());
    ok += dynamoe::placement::ParseTrace(b).ok();
  }
  std::printf("trace fuzz: %ld mutated traces, %ld parsed, the rest rejected with an error; no crash\n", iterations,
              ok);
  return 0;
}
#endif
