#include "replay/replay_inputs.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "replay/replay.h"
#include "replay/trace_import.h"

namespace dynamoe::placement {
namespace {

// Synthesize's bounds besides the shared ones (trace.h, replay.h): they keep
// every product of options within int64.
constexpr int64_t kSynthMaxSteps = 10'000'000, kSynthMaxLayers = 4096, kSynthMaxExperts = 1 << 16,
                  kSynthMaxTokens = int64_t{1} << 30;

}  // namespace

std::vector<std::string> ClusterPresetNames() { return {"default", "h100-nvlink-ib", "a100-nvlink-ib"}; }

absl::StatusOr<ClusterSpec> ClusterPreset(const std::string& name) {
  ClusterSpec c;
  c.world_size = 0;
  if (name == "default") return c;  // the DYNAMOE_* cost-model defaults, one node
  if (name == "h100-nvlink-ib") {
    // NVLink 4 (450 GB/s per direction) inside a node of 8; 400 Gb/s InfiniBand
    // per GPU between nodes; 700 TFLOP/s bf16 (a dense 8192^3 GEMM measured
    // 707-721 TFLOP/s on the lent H100, bench/README.md).
    c.ranks_per_node = 8, c.intra_node_bw = 450e9, c.inter_node_bw = 50e9;
    c.intra_node_latency_s = 3e-6, c.inter_node_latency_s = 8e-6, c.flops = 700e12;
    return c;
  }
  if (name == "a100-nvlink-ib") {
    // NVLink 3 (300 GB/s per direction), 200 Gb/s InfiniBand per GPU, 250 TFLOP/s.
    c.ranks_per_node = 8, c.intra_node_bw = 300e9, c.inter_node_bw = 25e9;
    c.intra_node_latency_s = 3e-6, c.inter_node_latency_s = 10e-6, c.flops = 250e12;
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown cluster preset '", name, "'; expected one of ",
                                                 absl::StrJoin(ClusterPresetNames(), ", ")));
}

absl::StatusOr<ClusterSpec> ParseClusterFile(const std::string& text, ClusterSpec c) {
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    const std::vector<absl::string_view> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    double v = 0;
    DYNAMOE_CHECK_ARG(kv.size() == 2 && absl::SimpleAtod(absl::StripAsciiWhitespace(kv[1]), &v) && std::isfinite(v) &&
                          v >= 0,
                      "cluster file line ", line_no, ": expected key = non-negative finite number, got \"",
                      line.substr(0, 80), "\"");
    const std::string key(absl::StripAsciiWhitespace(kv[0]));
    // Rank counts are integers within the replayable world.
    const bool integer = v == std::floor(v) && v <= kMaxReplayWorld;
    if (key == "world_size" || key == "ranks_per_node")
      DYNAMOE_CHECK_ARG(integer && (key == "world_size" || v >= 1), "cluster file line ", line_no, ": ", key,
                        " must be an integer in [", key == "world_size" ? 0 : 1, ", ", kMaxReplayWorld, "], got ",
                        kv[1]);
    if (key == "world_size") c.world_size = static_cast<int64_t>(v);
    else if (key == "ranks_per_node") c.ranks_per_node = static_cast<int64_t>(v);
    else if (key == "intra_node_bw") c.intra_node_bw = v;
    else if (key == "inter_node_bw") c.inter_node_bw = v;
    else if (key == "intra_node_latency_s") c.intra_node_latency_s = v;
    else if (key == "inter_node_latency_s") c.inter_node_latency_s = v;
    else if (key == "flops") c.flops = v;
    else
      return absl::InvalidArgumentError(absl::StrCat(
          "cluster file line ", line_no, ": unknown key '", key, "'; expected world_size, ranks_per_node, ",
          "intra_node_bw, inter_node_bw, intra_node_latency_s, inter_node_latency_s or flops"));
  }
  DYNAMOE_CHECK_ARG(c.intra_node_bw > 0 && c.inter_node_bw > 0 && c.flops > 0,
                    "cluster file: bandwidths and flops must be > 0");
  return c;
}

namespace {

constexpr char kNotATrace[] =
    "not a trace: expected the binary format (docs/trace-format.md), CSV with the header "
    "\"step,layer,rank,expert,count\", or JSONL lines like {\"step\": 0, \"layer\": \"moe0\", \"experts\": [1, 2]}";
constexpr char kCsvHeader[] = "step,layer,rank,expert,count";

enum class Form { kBinary, kCsv, kJsonl, kNone, kUndecided };

// The form from the first bytes; kUndecided while they are all whitespace or
// a prefix of the CSV header.
Form Sniff(absl::string_view head, bool complete) {
  if (head.size() >= 7 && std::memcmp(head.data(), "DMOETRC", 7) == 0) return Form::kBinary;
  head = absl::StripLeadingAsciiWhitespace(head);
  if (absl::StartsWith(head, kCsvHeader)) return Form::kCsv;
  if (absl::StartsWith(head, "{")) return Form::kJsonl;
  if (!complete && (head.empty() || absl::StartsWith(kCsvHeader, head) ||
                    (head.size() < 7 && absl::StartsWith("DMOETRC", head))))
    return Form::kUndecided;
  return Form::kNone;
}

absl::StatusOr<Trace> ParseText(Form form, const std::string& text) {
  if (form == Form::kCsv) return ImportCountsCsv(text);
  if (form == Form::kJsonl) return ImportRoutingJsonl(text);
  return absl::InvalidArgumentError(kNotATrace);
}

}  // namespace

absl::StatusOr<Trace> ParseAnyTrace(const std::string& bytes) {
  const Form form = Sniff(bytes, /*complete=*/true);
  return form == Form::kBinary ? ParseTrace(bytes) : ParseText(form, bytes);
}

absl::StatusOr<Trace> ReadAnyTraceFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot read trace: ", std::strerror(errno)));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, &std::fclose);
  std::string text;  // what was read: the magic of a binary trace, all of a text one
  char chunk[1 << 16];
  Form form = Form::kUndecided;
  try {
    // 8 bytes first (enough for the magic), so that a stream that is no
    // trace is rejected without waiting for more.
    for (size_t want = 8;; want = sizeof(chunk)) {
      const size_t got = std::fread(chunk, 1, want, f);
      if (std::ferror(f))
        return absl::DataLossError(absl::StrCat("read error at byte ", text.size() + got, ": ",
                                                std::strerror(errno)));
      text.append(chunk, got);
      if (form == Form::kUndecided) form = Sniff(text, got < want);
      if (form == Form::kNone) return absl::InvalidArgumentError(kNotATrace);
      if (form == Form::kBinary || got < want) break;
      struct stat st;  // a text form is read whole: one copy, grown once
      if (text.size() == 8 && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode))
        text.reserve(static_cast<size_t>(std::max<off_t>(st.st_size, 8)));
    }
    return form == Form::kBinary ? ReadTrace(f, text) : ParseText(form, text);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory after reading ", text.size(), " bytes"));
  }
}

absl::StatusOr<Trace> Synthesize(const SynthOptions& o) {
  DYNAMOE_CHECK_ARG(o.steps >= 1 && o.steps <= kSynthMaxSteps && o.layers >= 1 && o.layers <= kSynthMaxLayers &&
                        o.world >= 1 && o.world <= kMaxReplayWorld && o.experts >= 1 &&
                        o.experts <= kSynthMaxExperts && o.tokens >= 0 && o.tokens <= kSynthMaxTokens &&
                        o.top_k >= 1 && o.top_k <= o.experts && std::isfinite(o.zipf) && o.zipf >= 0 &&
                        o.drift_every >= 0 && o.burst_every >= 0,
                    "synth: expected steps in [1, ", kSynthMaxSteps, "], layers in [1, ", kSynthMaxLayers,
                    "], world in [1, ", kMaxReplayWorld, "], experts in [1, ", kSynthMaxExperts, "], tokens in [0, ",
                    kSynthMaxTokens, "], 1 <= top_k <= experts, a finite zipf >= 0, drift_every, burst_every >= 0");
  // Each factor is bounded above, so these products cannot overflow.
  DYNAMOE_CHECK_ARG(o.world * o.experts <= kMaxMatrixCells && o.world * o.tokens * o.top_k <= kMaxStepTotal,
                    "synth: world x experts must be at most 2^24 and world x tokens x top_k at most 2^40");
  DYNAMOE_CHECK_ARG(o.steps * o.layers <= kMaxImportCells / (o.world * o.experts), "synth: steps x layers x world x ",
                    "experts must be at most 2^27 (count-matrix cells in memory), got ", o.steps, " x ", o.layers,
                    " x ", o.world, " x ", o.experts);
  Trace t;
  t.rank = -1;
  t.world_size = o.world;
  for (int64_t l = 0; l < o.layers; ++l) t.layers.push_back({absl::StrCat("moe", l), o.experts, 0, 0, false, false, 2});
  std::mt19937_64 rng(o.seed);
  std::vector<double> zipf(o.experts);
  // Floored at the smallest normal double: a steep zipf underflows, and every
  // expert must stay drawable for top_k distinct draws.
  for (int64_t i = 0; i < o.experts; ++i)
    zipf[i] = std::max(1.0 / std::pow(static_cast<double>(i + 1), o.zipf), std::numeric_limits<double>::min());
  std::vector<double> scratch;
  for (int64_t s = 0; s < o.steps; ++s)
    for (int64_t l = 0; l < o.layers; ++l) {
      // The hot set moves by one expert every drift_every steps; layers are offset.
      const int64_t shift = (o.drift_every > 0 ? s / o.drift_every : 0) + l;
      std::vector<double> weight(o.experts);
      for (int64_t e = 0; e < o.experts; ++e) weight[(e + shift) % o.experts] = zipf[e];
      if (o.burst_every > 0 && s % o.burst_every == o.burst_every - 1) weight[(s / o.burst_every) % o.experts] *= 20;
      std::vector<int64_t> counts(o.world * o.experts, 0);
      double weight_sum = 0;
      for (double v : weight) weight_sum += v;
      for (int64_t r = 0; r < o.world; ++r)
        for (int64_t tok = 0; tok < o.tokens; ++tok) {
          // k distinct experts by sequential draws without replacement. The
          // draw is our own (53 random bits, linear scan), so a seed gives the
          // same trace with every standard library.
          std::vector<double>& w = scratch;
          w = weight;
          double left = weight_sum;
          for (int64_t j = 0; j < o.top_k; ++j) {
            double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * left;
            int64_t e = 0;
            while (e + 1 < o.experts && (w[e] == 0 || u >= w[e])) u -= w[e++];
            while (e > 0 && w[e] == 0) --e;  // rounding ran past the last nonzero weight
            ++counts[r * o.experts + e];
            left -= w[e];
            w[e] = 0;
          }
        }
      TraceStep st;
      st.step = s, st.layer = l;
      DYNAMOE_ASSIGN_OR_RETURN(st.kept, CountMatrix::Make(o.world, o.experts, counts));
      st.routed = st.kept;
      t.steps.push_back(std::move(st));
    }
  return t;
}

std::string EncodeTrace(const Trace& trace) {
  std::string out = EncodeTraceHeader(trace.world_size, trace.rank, trace.phase_names, trace.layers);
  for (const TraceStep& s : trace.steps) out += EncodeStepRecord(s);
  return out;
}

}  // namespace dynamoe::placement
