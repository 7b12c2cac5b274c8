// Fuzz target for the trace reader, its resynchronisation and the importers:
// any bytes give a trace or a clear error, never a crash (run under ASan +
// UBSan). Built with -fsanitize=fuzzer (clang), LLVMFuzzerTestOneInput is the
// entry point; otherwise main() mutates seeds deterministically:
//   - binary traces (version 2 and 1): byte flips, cuts, insertions, erasures,
//     32-bit overwrites (often over a length or count field);
//   - damage confined to a few records of a version-2 trace, with a property
//     check: every record outside the damage is still read, in order;
//   - CSV and JSONL: the same byte edits plus token edits (extreme numbers,
//     brackets, separators, lines);
//   - records whose payloads are edited and then framed again with correct
//     lengths and checksums (version 2 or 1), so that the header, layer, step
//     and plan decoders themselves see invalid data (a plain byte edit is
//     caught by the checksum first). The entry point also reads every binary
//     input a second time with its checksums recomputed, so that libFuzzer's
//     own mutations reach the decoders too.
// Every binary input is also read through a FILE* (the streaming path) and
// must give the same result as the in-memory parse. A trace that parses must
// hold what its consumers rely on (CheckDecoded), and is then replayed under
// every policy and calibrated, as dynamoe-replay would.
//
//   dynamoe_trace_fuzz [iterations] [seed]
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "placement/calibrate.h"
#include "placement/crc32.h"
#include "placement/replay.h"
#include "placement/replay_inputs.h"
#include "placement/trace.h"

namespace {

using namespace dynamoe::placement;

[[noreturn]] void Fail(const char* what, const std::string& input) {
  std::fprintf(stderr, "trace fuzz: %s (input of %zu bytes)\n", what, input.size());
  std::abort();
}

// The streaming reader must agree with the in-memory one.
void CheckStreamingAgrees(const std::string& bytes, const absl::StatusOr<Trace>& parsed) {
  if (bytes.empty()) return;  // fmemopen needs a buffer
  std::string copy = bytes;
  std::FILE* f = fmemopen(copy.data(), copy.size(), "rb");
  if (f == nullptr) return;
  const absl::StatusOr<Trace> streamed = ReadTrace(f);
  std::fclose(f);
  if (streamed.ok() != parsed.ok()) Fail("ReadTrace and ParseTrace disagree on success", bytes);
  if (!parsed.ok()) return;
  const TraceReadStats &a = parsed->stats, &b = streamed->stats;
  if (parsed->steps.size() != streamed->steps.size() || a.records != b.records ||
      a.skipped_bytes != b.skipped_bytes || a.skipped_corrupt != b.skipped_corrupt || a.truncated != b.truncated)
    Fail("ReadTrace and ParseTrace read different traces", bytes);
}

// What the replay engine, calibration and the CSV export index by: a parsed
// trace must never break it, whatever the input.
void CheckDecoded(const Trace& t, const std::string& input) {
  for (const TraceStep& s : t.steps) {
    if (s.layer < 0 || static_cast<size_t>(s.layer) >= t.layers.size()) Fail("a step names an unknown layer", input);
    const CountMatrix& k = s.kept;
    if (k.world_size < 1 || k.num_experts < 1 || k.world_size * k.num_experts > kMaxMatrixCells ||
        k.counts.size() != static_cast<size_t>(k.world_size * k.num_experts))
      Fail("a kept matrix of inconsistent shape", input);
    if (s.routed.world_size != k.world_size || s.routed.num_experts != k.num_experts ||
        s.routed.counts.size() != k.counts.size())
      Fail("routed and kept matrices differ in shape", input);
    if (!CheckCountLimits(k, "kept").ok() || !CheckCountLimits(s.routed, "routed").ok())
      Fail("counts over the limits were accepted", input);
    if (s.plan) {
      if (s.plan->world_size != k.world_size || s.plan->num_experts != k.num_experts)
        Fail("a plan of another shape than its counts", input);
      if (const absl::Status v = s.plan->Validate(); !v.ok())
        Fail(("an invalid plan was accepted: " + std::string(v.message())).c_str(), input);
    }
  }
}

// dynamoe-replay's consumers on a parsed trace: errors are fine, crashes not.
// One thread (the fuzzer's per-input cost); replay results do not depend on it.
void Consume(const Trace& t) {
  if (t.steps.empty() || t.steps.size() > 64) return;  // bounded work per input
  ReplayOptions o;
  o.threads = 1;
  (void)Replay(t, o);
  (void)Calibrate(t);
}

// The input with every frame's checksums (and, in version 2, head checksum)
// recomputed, walking the frames from the header on as their lengths say:
// whatever libFuzzer changed inside a payload then reaches its decoder.
std::string WithChecksumsFixed(std::string b) {
  if (b.size() < 12 || b.compare(0, 8, "DMOETRC\n") != 0) return b;
  uint32_t version;
  std::memcpy(&version, b.data() + 8, 4);
  if (version != 1 && version != 2) return b;
  const size_t head = version == 1 ? 8 : 16, len_at = version == 1 ? 0 : 4;
  for (size_t pos = 12; pos + head <= b.size();) {
    if (version == 2 && b.compare(pos, 4, "\xA7REC") != 0) break;
    uint32_t len;
    std::memcpy(&len, b.data() + pos + len_at, 4);
    if (len > b.size() - pos - head) break;  // a torn last record stays torn
    const uint32_t crc = Crc32(b.data() + pos + head, len);
    std::memcpy(b.data() + pos + len_at + 4, &crc, 4);
    if (version == 2) {
      const uint32_t head_crc = Crc32(b.data() + pos + 4, 8);
      std::memcpy(b.data() + pos + 12, &head_crc, 4);
    }
    pos += head + len;
  }
  return b;
}

void ParseAndConsume(const std::string& bytes) {
  const auto t = ParseTrace(bytes);
  CheckStreamingAgrees(bytes, t);
  if (t.ok()) {
    CheckDecoded(*t, bytes);
    Consume(*t);
    if (!t->layers.empty()) (void)ExportCountsCsv(*t);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  ParseAndConsume(bytes);
  if (const std::string fixed = WithChecksumsFixed(bytes); fixed != bytes) ParseAndConsume(fixed);
  for (const auto& imported : {ImportCountsCsv(bytes), ImportRoutingJsonl(bytes)})
    if (imported.ok()) {
      CheckDecoded(*imported, bytes);
      Consume(*imported);
    }
  (void)ParseAnyTrace(bytes);
  (void)ParseClusterFile(bytes, ClusterSpec{});
  return 0;
}

#ifndef DYNAMOE_LIBFUZZER
namespace {

std::string U32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }

TraceStep Step(int64_t i, int64_t layer, int64_t experts) {
  TraceStep s;
  s.step = i, s.layer = layer;
  std::vector<int64_t> c(2 * experts);
  for (size_t k = 0; k < c.size(); ++k) c[k] = (i * 7 + static_cast<int64_t>(k) * 3) % 11;
  s.kept = *CountMatrix::Make(2, experts, c);
  s.routed = s.kept;
  if (i % 4 == 0) s.plan = Plan::None(2, experts);
  if (i % 4 == 2) {  // a plan with a copy: the copies decoder has lists to read
    s.plan = Plan::None(2, experts);
    s.plan->copies[0] = {1};
    s.plan->predicted_step_seconds = 0.125;
  }
  s.phase_seconds = {0.5, 0.25 + 0.01 * i, 0.125, 0.0625};
  return s;
}

// A version-2 trace; starts[i] is where record i (after the header) begins,
// starts.back() the end; steps are the step numbers of step records.
struct Seed {
  std::string bytes;
  std::vector<size_t> starts;
  std::vector<int64_t> steps;  // per record: its step, -1 for a layer record
};

Seed BinarySeed() {
  Seed s;
  // The phases calibration reads, so that calibration runs on what parses.
  s.bytes = EncodeTraceHeader(2, 0, {"dispatch", "experts", "combine", "count_allgather"},
                              {TraceLayerSpec{"moe0", 4, 8, 16, true, false, 2}});
  s.starts.push_back(s.bytes.size());
  s.bytes += EncodeLayerRecord({"moe1", 2, 8, 16, false, true, 4}, 1);
  s.steps.push_back(-1);
  for (int64_t i = 0; i < 12; ++i) {
    s.starts.push_back(s.bytes.size());
    s.bytes += EncodeStepRecord(Step(i, i % 2, i % 2 ? 2 : 4));
    s.steps.push_back(i);
  }
  s.starts.push_back(s.bytes.size());
  return s;
}

// The same records in format version 1 (8-byte frame heads, no layer numbers).
std::string ToV1(const std::string& v2) {
  std::string out = v2.substr(0, 8) + U32(1);
  for (size_t pos = 12, i = 0; pos < v2.size(); ++i) {
    uint32_t len;
    std::memcpy(&len, v2.data() + pos + 4, 4);
    std::string p = v2.substr(pos + 16, len);
    if (i > 0 && p[0] == 1) p.erase(1, 4);
    out += U32(static_cast<uint32_t>(p.size())) + U32(Crc32(p.data(), p.size())) + p;
    pos += 16 + len;
  }
  return out;
}

// One random byte-level edit somewhere in [lo, hi) of b.
void ByteEdit(std::string& b, size_t lo, size_t hi, std::mt19937& rng) {
  if (hi <= lo) return;
  const size_t at = lo + rng() % (hi - lo);
  switch (rng() % 5) {
    case 0: b[at] = static_cast<char>(b[at] ^ (1u << (rng() % 8))); break;
    case 1: b.insert(at, 1 + rng() % 16, static_cast<char>(rng())); break;
    case 2: b.erase(at, std::min<size_t>(1 + rng() % 24, hi - at)); break;
    case 3: b[at] = static_cast<char>(rng()); break;
    default:  // a random 32-bit value, often over a length or count field
      for (size_t j = 0; j < 4 && at + j < hi; ++j) b[at + j] = static_cast<char>(rng());
  }
}

const char* const kTokens[] = {"9223372036854775807", "-1", "1048575", "1048576", "1e400", "nan", "0", "18446744073709551615",
                               "[[[[[[[[[[", "]]]]", "{", "}", ",", "\n", "\"", "\\", ":", "step", "\"experts\": [",
                               "1099511627776", " ", "moe0"};

// Text edits: a token in place of or next to a random span.
void TextEdit(std::string& b, std::mt19937& rng) {
  const std::string tok = kTokens[rng() % (sizeof(kTokens) / sizeof(kTokens[0]))];
  const size_t at = b.empty() ? 0 : rng() % b.size();
  if (rng() % 2) b.erase(at, rng() % 6);
  b.insert(std::min(at, b.size()), rng() % 8 == 0 ? std::string(1 + rng() % 2000, tok[0]) : tok);
}

// The payloads of a well-formed version-2 trace (the header's first).
std::vector<std::string> Payloads(const std::string& v2) {
  std::vector<std::string> out;
  for (size_t pos = 12; pos < v2.size();) {
    uint32_t len;
    std::memcpy(&len, v2.data() + pos + 4, 4);
    out.push_back(v2.substr(pos + 16, len));
    pos += 16 + len;
  }
  return out;
}

// Frames as docs/trace-format.md lays them out: whatever the payload, its
// length and checksums are right.
std::string Reframe(const std::string& p, uint32_t version) {
  const std::string n = U32(static_cast<uint32_t>(p.size())) + U32(Crc32(p.data(), p.size()));
  return version == 1 ? n + p : "\xA7REC" + n + U32(Crc32(n.data(), 8)) + p;
}

// Values that sit on the decoders' bounds (counts, dimensions, ranks, lengths).
const uint32_t kEdge[] = {0, 1, 2, 3, 4, 7, 0x7f, 0xff, 0xffff, 1u << 16, (1u << 24) - 1, 1u << 24, (1u << 24) + 1,
                          0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff};

// One edit of a payload: a byte edit, an edge value over any 4 bytes, or an
// 8-byte count/time field set to an extreme.
void PayloadEdit(std::string& p, std::mt19937& rng) {
  if (p.empty()) return p.push_back(static_cast<char>(rng()));
  const size_t at = rng() % p.size();
  switch (rng() % 4) {
    case 0: return ByteEdit(p, 0, p.size(), rng);
    case 1: case 2: {
      const uint32_t v = kEdge[rng() % (sizeof(kEdge) / sizeof(kEdge[0]))];
      for (size_t j = 0; j < 4 && at + j < p.size(); ++j) p[at + j] = static_cast<char>(v >> (8 * j));
      return;
    }
    default: {
      const uint64_t wide[] = {0x8000000000000000ull, 0x7fffffffffffffffull, 1ull << 40, (1ull << 40) + 1,
                               0xffffffffffffffffull, 0x7ff8000000000000ull /* NaN */, 0x7ff0000000000000ull /* inf */};
      const uint64_t v = wide[rng() % (sizeof(wide) / sizeof(wide[0]))];
      for (size_t j = 0; j < 8 && at + j < p.size(); ++j) p[at + j] = static_cast<char>(v >> (8 * j));
    }
  }
}

// Edited payloads behind correct frames: the decoders, not the checksums,
// must reject them. Sometimes whole records are reordered or repeated.
std::string ReframedInput(const std::vector<std::string>& payloads, std::mt19937& rng) {
  std::vector<std::string> p = payloads;
  const uint32_t version = rng() % 4 == 0 ? 1 : 2;
  if (version == 1)  // version 1 layer records carry no number
    for (size_t i = 1; i < p.size(); ++i)
      if (p[i][0] == 1) p[i].erase(1, 4);
  const int records = 1 + static_cast<int>(rng() % 2);
  for (int r = 0; r < records; ++r) {
    std::string& target = p[rng() % p.size()];
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) PayloadEdit(target, rng);
  }
  if (rng() % 8 == 0) {  // whole records out of order or repeated: valid frames all
    const size_t a = 1 + rng() % (p.size() - 1), b = 1 + rng() % (p.size() - 1);
    if (rng() % 2) std::swap(p[a], p[b]);
    else p.insert(p.begin() + static_cast<std::ptrdiff_t>(a), p[b]);
  }
  std::string out = std::string("DMOETRC\n") + U32(version);
  for (const std::string& q : p) out += Reframe(q, version);
  return out;
}

// Damage confined to records [first, last] must cost no other record.
void CheckDamageStaysLocal(const Seed& seed, std::mt19937& rng) {
  const size_t n = seed.steps.size();
  const size_t first = rng() % n, last = std::min(n - 1, first + rng() % 3);
  std::string b = seed.bytes.substr(0, seed.starts[first]);
  std::string region = seed.bytes.substr(seed.starts[first], seed.starts[last + 1] - seed.starts[first]);
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < edits; ++k) ByteEdit(region, 0, region.size(), rng);
  if (region == seed.bytes.substr(seed.starts[first], region.size())) return;  // no damage after all
  b += region + seed.bytes.substr(seed.starts[last + 1]);
  const absl::StatusOr<Trace> t = ParseTrace(b);
  CheckStreamingAgrees(b, t);
  if (!t.ok()) Fail(("damage inside records made the read fail: " + std::string(t.status().message())).c_str(), b);
  // Every step record outside [first, last], in order, read as written.
  std::vector<int64_t> want;
  for (size_t i = 0; i < n; ++i)
    if ((i < first || i > last) && seed.steps[i] >= 0) want.push_back(seed.steps[i]);
  size_t k = 0;
  for (const TraceStep& s : t->steps) {
    if (k < want.size() && s.step == want[k]) {
      const TraceStep ref = Step(s.step, s.step % 2, s.step % 2 ? 2 : 4);
      if (s.kept.counts != ref.kept.counts || s.layer != ref.layer) Fail("a step outside the damage changed", b);
      ++k;
    }
  }
  if (k != want.size()) Fail("damage inside records lost a record outside them", b);
  if (!t->stats.damaged()) Fail("damage went unreported", b);
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 10000;
  std::mt19937 rng(argc > 2 ? static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)) : 12345u);
  const Seed binary = BinarySeed();
  const std::string v1 = ToV1(binary.bytes);
  const std::string csv = ExportCountsCsv(*ParseTrace(binary.bytes));
  const std::string jsonl =
      "{\"step\": 0, \"layer\": \"moe0\", \"experts\": [3, 1], \"rank\": 1}\n"
      "{\"step\": 0, \"layer\": 7, \"experts\": [2]}\n{\"step\": 1, \"layer\": \"moe0\", \"experts\": [0, 1]}\n";
  const std::vector<std::string> payloads = Payloads(binary.bytes);
  long parsed = 0, local = 0, reframed = 0, reframed_parsed = 0, decoder_rejected = 0;
  for (long i = 0; i < iterations; ++i) {
    if (i > 0 && i % 100000 == 0) std::fprintf(stderr, "trace fuzz: %ld inputs\n", i);
    const int kind = static_cast<int>(i % 6);
    if (kind == 4) {
      CheckDamageStaysLocal(binary, rng);
      ++local;
      continue;
    }
    if (kind == 5) {
      const std::string b = ReframedInput(payloads, rng);
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(b.data()), b.size());
      const absl::StatusOr<Trace> t = ParseTrace(b);
      ++reframed;
      if (t.ok()) {
        ++reframed_parsed;
        // Every frame is right: nothing may be skipped as damage.
        if (t->stats.damaged()) Fail("a correctly framed record was read as damage", b);
      } else if (std::string(t.status().message()).find("checksum") == std::string::npos) {
        ++decoder_rejected;
      }
      continue;
    }
    std::string b = kind == 0 ? binary.bytes : kind == 1 ? v1 : kind == 2 ? csv : jsonl;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      if (kind >= 2 && rng() % 2) TextEdit(b, rng);
      else if (rng() % 8 == 0) b.resize(rng() % b.size());
      else ByteEdit(b, 0, b.size(), rng);
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(b.data()), b.size());
    parsed += ParseAnyTrace(b).ok();
  }
  std::printf("trace fuzz: %ld inputs (%ld with damage confined to records, every other record read), %ld parsed, "
              "the rest rejected with an error; %ld correctly framed edited records: %ld parsed, %ld rejected by "
              "a decoder; no crash\n",
              iterations, local, parsed, reframed, reframed_parsed, decoder_rejected);
  return 0;
}
#endif
