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
//   - Megatron-Core router traces (router_trace_rank{0,1}.jsonl written into
//     a scratch directory, ImportMegatronTraceDir): token and byte edits of
//     either rank's lines; a bad file is an error naming the file and line;
//   - dynamoe.trace.record's one-rank files (<base>.rank{0,1}.dmtrace,
//     MergeRankFiles): payload edits framed again with correct checksums,
//     byte edits, cuts; an error names one of the files.
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
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "placement/crc32.h"
#include "placement/trace.h"
#include "replay/calibrate.h"
#include "replay/megatron_import.h"
#include "replay/replay.h"
#include "replay/replay_inputs.h"
#include "replay/trace_import.h"
#include "tests/cpp/trace_frames.h"
#include "tools/rank_merge.h"

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

// A scratch directory for the importers that read files, made once per
// process and removed at exit.
const std::string& ScratchDir() {
  // Never destroyed: the exit handler that removes the directory runs after static destructors.
  static const std::string* const dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    auto* d = new std::string(std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/dynamoe_trace_fuzz_XXXXXX");
    if (mkdtemp(d->data()) == nullptr) {
      std::perror("trace fuzz: mkdtemp");
      std::abort();
    }
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(ScratchDir(), ec); });
    return d;
  }();
  return *dir;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::perror(("trace fuzz: writing " + path).c_str());
    std::abort();
  }
}

// Rows are ranks: every matrix of an import of `world` rank files has `world` rows.
void CheckWorld(const Trace& t, size_t world, const std::string& input) {
  for (const TraceStep& s : t.steps)
    if (s.kept.world_size != static_cast<int64_t>(world)) Fail("a matrix whose rows are not the rank files", input);
}

// Megatron-Core's router trace directory, rank r's file holding ranks[r]:
// a trace of consistent shapes, or an error naming a rank file and a line.
bool ImportMegatronFiles(const std::vector<std::string>& ranks) {
  const std::string dir = ScratchDir() + "/megatron";
  std::filesystem::create_directories(dir);
  for (size_t r = 0; r < ranks.size(); ++r)
    WriteFile(dir + "/router_trace_rank" + std::to_string(r) + ".jsonl", ranks[r]);
  const absl::StatusOr<Trace> t = ImportMegatronTraceDir(dir);
  if (t.ok()) {
    CheckWorld(*t, ranks.size(), ranks[0]);
    CheckDecoded(*t, ranks[0]);
    Consume(*t);
    return true;
  }
  const std::string msg(t.status().message());
  const bool names_line = msg.find(dir + "/router_trace_rank") != std::string::npos && msg.find(" line ") != std::string::npos;
  // What no one line causes (no records at all, matrices over the limits) names the directory.
  const bool whole_dir = msg.rfind(dir + ": ", 0) == 0 && (msg.find("no routing records") != std::string::npos ||
                                                          msg.find("would be too large") != std::string::npos);
  if (!names_line && !whole_dir)
    Fail(("a Megatron import error names no file and line: " + msg.substr(0, 300)).c_str(), ranks[0]);
  return false;
}

// dynamoe.trace.record's one-rank files merged: a trace of every rank's rows,
// or an error naming one of the files.
bool MergeRecordFiles(const std::vector<std::string>& ranks) {
  std::map<int64_t, std::string> files;
  for (size_t r = 0; r < ranks.size(); ++r) {
    files[static_cast<int64_t>(r)] = ScratchDir() + "/job.rank" + std::to_string(r) + ".dmtrace";
    WriteFile(files[static_cast<int64_t>(r)], ranks[r]);
  }
  const absl::StatusOr<Trace> t = dynamoe::tools::MergeRankFiles(files);
  if (t.ok()) {
    CheckWorld(*t, ranks.size(), ranks[0]);
    CheckDecoded(*t, ranks[0]);
    Consume(*t);
    return true;
  }
  const std::string msg(t.status().message());
  if (msg.find(ScratchDir() + "/job.rank") == std::string::npos)
    Fail(("a rank merge error names no file: " + msg.substr(0, 300)).c_str(), ranks[0]);
  return false;
}

// Valid inputs of the file importers, for the other rank's file.
const char kMegatronRank0[] =
    "{\"step\": 0, \"stage\": \"pre_dispatch\", \"block\": \"decoder\", \"layer\": 1, \"rank\": 0, "
    "\"num_tokens\": 2, \"topk\": 2, \"top_indices\": [[1, 3], [0, 2]]}\n"
    "{\"step\": 0, \"stage\": \"post_dispatch\", \"block\": \"decoder\", \"layer\": 1, \"top_indices\": [[1]]}\n"
    "{\"step\": 0, \"block\": \"mtp\", \"mtp_idx\": 0, \"layer\": 0, \"logit_shape\": [2, 4], "
    "\"top_indices\": [[3, 2], [2, 0]], \"hs_offset\": 7}\n"
    "{\"step\": 1, \"stage\": \"pre_dispatch\", \"layer\": 1, \"top_indices\": [[0, 1], [1, 2], [3, 0]]}\n";
const char kMegatronRank1[] =
    "{\"step\": 0, \"stage\": \"pre_dispatch\", \"block\": \"decoder\", \"layer\": 1, \"rank\": 1, "
    "\"num_tokens\": 1, \"topk\": 2, \"top_indices\": [[2, 3]]}\n"
    "{\"step\": 1, \"layer\": 1, \"top_indices\": [[0, 3]]}\n";

// Rank `rank`'s dynamoe.trace.record file: one layer, 1 x 4 matrices.
std::string OneRankRecording(int64_t rank) {
  std::string b = EncodeTraceHeader(1, rank, {"dispatch", "experts", "combine", "count_allgather"},
                                    {TraceLayerSpec{"moe0", 4, 8, 16, true, false, 2}});
  for (int64_t i = 0; i < 6; ++i) {
    TraceStep s;
    s.step = i, s.layer = 0;
    std::vector<int64_t> c(4);
    for (size_t k = 0; k < c.size(); ++k) c[k] = (i * 5 + rank * 3 + static_cast<int64_t>(k)) % 7;
    s.kept = *CountMatrix::Make(1, 4, c);
    s.routed = s.kept;
    s.phase_seconds = {0.5, 0.25 + 0.01 * i, 0.125, 0.0625};
    b += EncodeStepRecord(s);
  }
  return b;
}

// The entry point feeds the file importers too (the deterministic driver
// feeds them its own two-file mutations instead).
bool g_entry_feeds_file_importers = true;

void FeedFileImporters(const std::string& bytes, const std::string& fixed) {
  ImportMegatronFiles({bytes, kMegatronRank1});
  static const std::string rank1 = OneRankRecording(1);
  MergeRecordFiles({bytes, rank1});
  if (fixed != bytes) MergeRecordFiles({fixed, rank1});
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
  const std::string fixed = WithChecksumsFixed(bytes);
  if (fixed != bytes) ParseAndConsume(fixed);
  if (g_entry_feeds_file_importers) FeedFileImporters(bytes, fixed);
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

using dynamoe::testing::U32;

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

// Megatron's field names and values on their bounds.
const char* const kMegatronTokens[] = {"\"top_indices\": [[", "\"top_indices\": []", "\"mtp_idx\": ", "\"layer\": ",
                                       "\"stage\": \"post_dispatch\"", "\"block\": \"\"", "\"logit_shape\": [2, ",
                                       "\"rank\": ", "\"num_tokens\": ", "\"topk\": ", "1048575", "1048576", "-1",
                                       "[0, 1048575]", "[]", "[[]]", "null", "true", "1.5", "\"x\"", "\r\n"};

// Rank files of a Megatron trace directory, one or both edited.
std::vector<std::string> MegatronInput(std::mt19937& rng) {
  std::vector<std::string> ranks = {kMegatronRank0, kMegatronRank1};
  for (std::string& b : ranks) {
    if (rng() % 3 == 0) continue;  // this rank's file stays valid
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      const int how = static_cast<int>(rng() % 8);
      if (how < 4) {
        TextEdit(b, rng);
      } else if (how < 6) {
        const size_t at = rng() % b.size();
        if (rng() % 2) b.erase(at, rng() % 8);
        b.insert(std::min(at, b.size()), kMegatronTokens[rng() % (sizeof(kMegatronTokens) / sizeof(kMegatronTokens[0]))]);
      } else if (how == 6) {
        b.resize(rng() % b.size());  // a writer killed mid-file
      } else {
        ByteEdit(b, 0, b.size(), rng);
      }
    }
  }
  return ranks;
}

using dynamoe::testing::Payloads;

// Frames as docs/trace-format.md lays them out: whatever the payload, its
// length and checksums are right.
std::string Reframe(const std::string& p, uint32_t version) { return dynamoe::testing::Frame(p, version); }

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

// One-rank recordings of ranks 0 and 1, one or both edited: payloads framed
// again with correct checksums (the decoders and the merge see the edit),
// byte edits, or a cut (a killed job's files end at different steps).
std::vector<std::string> RecordingInput(const std::vector<std::vector<std::string>>& payloads, std::mt19937& rng) {
  std::vector<std::string> ranks = {OneRankRecording(0), OneRankRecording(1)};
  for (size_t r = 0; r < ranks.size(); ++r) {
    std::string& b = ranks[r];
    switch (rng() % 4) {
      case 0: break;  // this rank's file stays valid
      case 1: b = ReframedInput(payloads[r], rng); break;
      case 2: b.resize(12 + rng() % (b.size() - 12)); break;
      default: {
        const int edits = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < edits && !b.empty(); ++k) ByteEdit(b, 0, b.size(), rng);
      }
    }
  }
  if (rng() % 16 == 0) std::swap(ranks[0], ranks[1]);  // each file names the other's rank
  return ranks;
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
  const std::vector<std::vector<std::string>> recording_payloads = {Payloads(OneRankRecording(0)),
                                                                    Payloads(OneRankRecording(1))};
  g_entry_feeds_file_importers = false;  // kinds 6 and 7 feed them
  long parsed = 0, local = 0, reframed = 0, reframed_parsed = 0, decoder_rejected = 0;
  long megatron = 0, megatron_imported = 0, merges = 0, merged = 0;
  for (long i = 0; i < iterations; ++i) {
    if (i > 0 && i % 100000 == 0) std::fprintf(stderr, "trace fuzz: %ld inputs\n", i);
    const int kind = static_cast<int>(i % 8);
    if (kind == 6) {
      const std::vector<std::string> ranks = MegatronInput(rng);
      ++megatron;
      megatron_imported += ImportMegatronFiles(ranks);
      continue;
    }
    if (kind == 7) {
      const std::vector<std::string> ranks = RecordingInput(recording_payloads, rng);
      ++merges;
      merged += MergeRecordFiles(ranks);
      continue;
    }
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
              "a decoder; %ld Megatron trace directories: %ld imported, the rest an error naming file and line; %ld "
              "rank-file merges: %ld merged, the rest an error naming a file; no crash\n",
              iterations, local, parsed, reframed, reframed_parsed, decoder_rejected, megatron, megatron_imported,
              merges, merged);
  return 0;
}
#endif
