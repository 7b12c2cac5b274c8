// dynamoe-replay: replays recorded routing through placement policies under a
// cluster model and prints what each policy would have cost.
//
//   dynamoe-replay run TRACE... [--policies none,fastermoe,adaptive,eplb] [--world N]
//                  [--preset default|h100-nvlink-ib|a100-nvlink-ib] [--cluster FILE]
//                  [--interval N] [--hysteresis X] [--max-copied N] [--overlap] [--csv FILE]
//                  TRACE: a trace file (binary, CSV, JSONL), a Megatron-Core router trace
//                  directory, or the path a job of N ranks gave dynamoe.trace.record
//                  (its PATH.rank<R>.dmtrace files replay merged, as N ranks)
//                  [--experts N]   (a Megatron trace directory's experts per layer, when no
//                                   record shows the highest expert)
//                  [--export-csv FILE]   (one TRACE's counts as read, as "step,layer,rank,expert,count"
//                                         CSV: e.g. the per-rank rows of a merged recording)
//                  [--threads N]   (worker threads, default one per core: results do not depend on it)
//                  [--d-model N] [--d-hidden N] [--gated] [--dtype fp32|bf16|fp16]
//                                  (model this layer instead of the recorded one: each flag replaces that
//                                   field of every layer)
//                  [--tokens-per-rank N --top-k K]   (rescale every step to N tokens per rank of
//                                   top-K routing: RescaleTokensPerRank in replay/replay.h)
//                  The table ends with `balanced`, the force-balanced bound (replay/replay.h),
//                  and gives each policy's share of the bound's gain over none.
//                  [--out-dir DIR]   (summary.csv, steps.csv, expert_load.csv: the input of
//                                     `python3 -m dynamoe.replay plot DIR`)
//   dynamoe-replay calibrate TRACE [--heldout 0.2]
//   dynamoe-replay synth --out FILE [--steps N] [--layers N] [--experts N] [--world N]
//                  [--tokens N] [--top-k N] [--zipf S] [--drift-every N] [--burst-every N] [--seed N]
//
// Exit codes: 0 done (a damaged trace is read around its damage, with a
// warning); 1 bad input (a trace, a cluster file: unreadable, not a trace,
// over a limit, out of memory); 2 bad usage (an unknown subcommand or flag, a
// flag value that is not a number of the expected kind and range).
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "replay/calibrate.h"
#include "replay/megatron_import.h"
#include "replay/replay.h"
#include "replay/replay_inputs.h"
#include "replay/trace_import.h"
#include "tools/replay_files.h"

namespace {

using namespace dynamoe::placement;

constexpr char kUsage[] =
    "usage: dynamoe-replay run TRACE|MEGATRON_DIR|RECORD_PATH... [--policies none,fastermoe,adaptive,eplb] [--world N]\n"
    "                      [--preset default|h100-nvlink-ib|a100-nvlink-ib] [--cluster FILE] [--interval N]\n"
    "                      [--hysteresis X] [--max-copied N] [--overlap] [--csv FILE] [--out-dir DIR] [--threads N]\n"
    "                      [--experts N] [--export-csv FILE] [--d-model N] [--d-hidden N] [--gated]\n"
    "                      [--dtype fp32|bf16|fp16] [--tokens-per-rank N --top-k K]\n"
    "       dynamoe-replay calibrate TRACE [--heldout 0.2]\n"
    "       dynamoe-replay synth --out FILE [--steps N] [--layers N] [--experts N] [--world N] [--tokens N]\n"
    "                      [--top-k N] [--zipf S] [--drift-every N] [--burst-every N] [--seed N]\n";

// `dynamoe-replay --help`: what run's columns and modelling flags mean.
constexpr char kHelp[] =
    "\n"
    "run replays each TRACE through the policies (--policies, default none,fastermoe,adaptive,eplb,balanced)\n"
    "and prints per policy: predicted mean and p99 step time, speed-up vs none, the share of the bound's\n"
    "gain it reaches ((none - policy) / (none - balanced), mean step times), imbalance before (max/mean\n"
    "expert load) and after (busiest rank / mean rows under the plan), MB moved, copies and plan changes.\n"
    "none and balanced are replayed even when not listed: speed-ups and shares are always against them.\n"
    "\n"
    "balanced is the force-balanced bound: every rank computes the mean rows (ceil(total / ranks)), no\n"
    "weights move, and tokens move as a perfectly balanced router sends them (each rank's rows spread\n"
    "evenly over all ranks, fractional rows, a latency per peer). No plan puts fewer rows on its busiest\n"
    "rank; a plan can beat its exchange only by keeping rows home with copies, whose weights it pays.\n"
    "\n"
    "The modelled layer is the recorded one (imported traces: d_model 1024, d_hidden 4096, bf16) with\n"
    "--d-model, --d-hidden, --gated (three matrices) and --dtype replacing those fields. --tokens-per-rank N\n"
    "--top-k K rescales every step so each rank routes N x K rows (its routed rows scaled to N x K, its\n"
    "kept rows by the same factor, integers by largest remainder): each rank keeps its distribution over\n"
    "the experts. The count matrices hold rows, not tokens, hence K.\n";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
};

// The flags each subcommand takes (--overlap takes no value).
const std::map<std::string, std::set<std::string>> kFlags = {
    {"run", {"--policies", "--world", "--preset", "--cluster", "--interval", "--hysteresis", "--max-copied",
             "--overlap", "--csv", "--out-dir", "--threads", "--experts", "--export-csv", "--d-model", "--d-hidden",
             "--gated", "--dtype", "--tokens-per-rank", "--top-k"}},
    {"calibrate", {"--heldout"}},
    {"synth", {"--out", "--steps", "--layers", "--experts", "--world", "--tokens", "--top-k", "--zipf",
               "--drift-every", "--burst-every", "--seed"}},
};

// Flags that take no value.
const std::set<std::string> kBare = {"--overlap", "--gated"};

// --key value pairs (and the bare flags); positional arguments otherwise.
bool ParseArgs(int argc, char** argv, Args* a) {
  const std::set<std::string>& known = kFlags.at(argv[1]);
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    if (s.rfind("--", 0) != 0) {
      a->positional.push_back(s);
    } else if (!known.count(s)) {
      std::cerr << "dynamoe-replay " << argv[1] << ": unknown flag " << s << "\n" << kUsage;
      return false;
    } else if (kBare.count(s)) {
      a->flags[s] = "1";
    } else if (i + 1 < argc) {
      a->flags[s] = argv[++i];
    } else {
      std::cerr << "dynamoe-replay: " << s << " needs a value\n" << kUsage;
      return false;
    }
  }
  return true;
}

// absl's parsers skip surrounding whitespace; a flag value must be exact.
bool Bare(const std::string& v) {
  return !v.empty() && !std::isspace(static_cast<unsigned char>(v.front())) &&
         !std::isspace(static_cast<unsigned char>(v.back()));
}

// Strict numeric flags: the whole value, an integer where one is expected,
// finite, in [lo, hi]. An absent flag leaves *out as it is.
template <typename T>
bool Integer(const Args& a, const std::string& key, T lo, T hi, T* out) {
  auto it = a.flags.find(key);
  if (it == a.flags.end()) return true;
  T v;
  if (!Bare(it->second) || !absl::SimpleAtoi(it->second, &v) || v < lo || v > hi) {
    std::cerr << "dynamoe-replay: " << key << " expects an integer in [" << lo << ", " << hi << "], got '"
              << it->second << "'\n";
    return false;
  }
  *out = v;
  return true;
}

// open: the range is (lo, hi) rather than [lo, hi].
bool Real(const Args& a, const std::string& key, double lo, double hi, double* out, bool open = false) {
  auto it = a.flags.find(key);
  if (it == a.flags.end()) return true;
  double v;
  if (!Bare(it->second) || !absl::SimpleAtod(it->second, &v) || !std::isfinite(v) ||
      (open ? v <= lo || v >= hi : v < lo || v > hi)) {
    std::cerr << "dynamoe-replay: " << key << " expects a finite number in " << (open ? "(" : "[") << lo << ", "
              << hi << (open ? ")" : "]") << ", got '" << it->second << "'\n";
    return false;
  }
  *out = v;
  return true;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad() || ss.bad()) return false;
  *out = ss.str();
  return true;
}

// The trace at `path`, its warnings and a summary of any damage on stderr;
// nullopt (after an error line) when it cannot be read.
std::optional<Trace> LoadTrace(const std::string& path, int64_t experts = 0) {
  auto t = dynamoe::tools::ReadReplayInput(path, experts);
  if (!t.ok()) {
    std::cerr << "dynamoe-replay: " << path << ": " << t.status().message() << "\n";
    return std::nullopt;
  }
  const TraceReadStats& st = t->stats;
  for (const std::string& w : st.warnings) std::cerr << "dynamoe-replay: " << path << ": warning: " << w << "\n";
  auto n = [](int64_t k, const char* what) { return absl::StrCat(k, " ", what, k == 1 ? "" : "s"); };
  if (st.damaged())
    std::cerr << "dynamoe-replay: " << path << ": warning: damaged trace: lost " << n(st.skipped_corrupt, "record")
              << " in " << n(st.skipped_regions, "damaged region") << (st.truncated ? " and a torn last record" : "")
              << ", skipped " << n(st.skipped_bytes, "byte") << "; replaying the "
              << n(static_cast<int64_t>(t->steps.size()), "step") << " read\n";
  return *std::move(t);
}

// "96 steps of 3 layers": distinct step numbers, not layer-steps (records).
std::string StepsOfLayers(const Trace& t) {
  std::vector<int64_t> ids;
  ids.reserve(t.steps.size());
  for (const TraceStep& s : t.steps) ids.push_back(s.step);
  std::sort(ids.begin(), ids.end());
  const int64_t steps = std::unique(ids.begin(), ids.end()) - ids.begin();
  const int64_t layers = static_cast<int64_t>(t.layers.size()), records = static_cast<int64_t>(t.steps.size());
  std::string out = absl::StrCat(steps, steps == 1 ? " step" : " steps", " of ", layers, layers == 1 ? " layer" : " layers");
  // Layers that skip steps (a recording of some layers only) make records fewer.
  if (records != steps * layers) absl::StrAppend(&out, " (", records, " layer-steps)");
  return out;
}

// modelled: a line on what was modelled instead of the recording ("" for none).
void PrintReport(const std::string& path, const Trace& t, const ReplayReport& r, const std::string& modelled) {
  std::cout << absl::StrFormat("%s: %s, recorded on %d ranks, replayed on %d\n", path, StepsOfLayers(t),
                               t.steps.empty() ? 0 : t.steps[0].kept.world_size, r.world_size)
            << modelled;
  std::cout << absl::StrFormat("%-10s %12s %12s %9s %8s %18s %12s %12s %12s\n", "policy", "mean ms", "p99 ms",
                               "speedup", "of bound", "imbalance bef/aft", "MB/step", "copies/step", "plan changes");
  for (const PolicyReport& p : r.policies) {
    const std::string share =
        std::isnan(p.bound_fraction) ? std::string("n/a") : absl::StrFormat("%.1f%%", 100 * p.bound_fraction);
    std::cout << absl::StrFormat("%-10s %12.4f %12.4f %8.3fx %8s %8.2f / %-7.2f %12.3f %12.2f %12d\n", p.policy,
                                 p.mean_seconds * 1e3, p.p99_seconds * 1e3, p.speedup_vs_none, share,
                                 p.imbalance_before, p.imbalance_after, p.bytes_per_step / 1e6, p.copies_per_step,
                                 p.plan_changes);
  }
}

// What the replay modelled instead of the recording: one line.
std::string Modelled(const Trace& t, const ReplayOptions& o, int64_t tokens_per_rank, int64_t top_k) {
  std::set<std::string> layers;
  for (const TraceLayerSpec& l : t.layers) {
    const LayerSpec s = ModelledLayer(l, o);
    layers.insert(absl::StrFormat("d_model %d, d_hidden %d%s%s, %s", s.d_model, s.d_hidden, s.gated ? ", gated" : "",
                                  s.bias ? ", bias" : "",
                                  s.bytes_per_element == 4 ? "fp32" : absl::StrCat(8 * s.bytes_per_element, "-bit")));
  }
  std::string out = absl::StrCat("modelled: ", absl::StrJoin(layers, "; "));
  if (tokens_per_rank > 0) absl::StrAppendFormat(&out, "; %d tokens per rank, top-%d", tokens_per_rank, top_k);
  return out + "\n";
}

int Run(const Args& a) {
  if (a.positional.empty()) {
    std::cerr << "dynamoe-replay run: no trace given\n" << kUsage;
    return 2;
  }
  ReplayOptions o;
  auto preset = ClusterPreset(a.flags.count("--preset") ? a.flags.at("--preset") : "default");
  if (!preset.ok()) {
    std::cerr << "dynamoe-replay: " << preset.status().message() << "\n";
    return 2;
  }
  o.cluster = *preset;
  if (a.flags.count("--cluster")) {
    std::string text;
    if (!ReadFile(a.flags.at("--cluster"), &text)) {
      std::cerr << "dynamoe-replay: cannot read cluster file '" << a.flags.at("--cluster") << "'\n";
      return 1;
    }
    auto c = ParseClusterFile(text, o.cluster);
    if (!c.ok()) {
      std::cerr << "dynamoe-replay: " << a.flags.at("--cluster") << ": " << c.status().message() << "\n";
      return 1;
    }
    o.cluster = *c;
    o.world_size = c->world_size;
  }
  if (a.flags.count("--policies")) o.policies = absl::StrSplit(a.flags.at("--policies"), ',');
  if (!Integer<int64_t>(a, "--world", 1, kMaxReplayWorld, &o.world_size) ||
      !Integer<int64_t>(a, "--interval", 1, 1'000'000'000, &o.policy.interval) ||
      !Real(a, "--hysteresis", 0, 1, &o.policy.hysteresis) ||
      !Integer<int64_t>(a, "--max-copied", 0, 1 << 24, &o.policy.max_copied) ||
      !Integer<int64_t>(a, "--threads", 1, 1024, &o.threads))
    return 2;
  int64_t experts = 0;  // --experts: a Megatron trace directory's expert count; meaningless for other inputs
  if (!Integer<int64_t>(a, "--experts", 1, kMaxImportIndex, &experts)) return 2;
  if (experts > 0)
    for (const std::string& path : a.positional)
      if (!dynamoe::placement::IsMegatronTraceDir(path)) {
        std::cerr << "dynamoe-replay run: --experts applies to a Megatron-Core router trace directory only; '" << path
                  << "' is not one (other inputs carry their expert counts)\n";
        return 2;
      }
  o.policy.cost.overlap = a.flags.count("--overlap") > 0;
  // The modelled layer and batch (kHelp). Sizes up to 2^20 keep an expert's
  // bytes (3 x d_model x d_hidden x 4) far inside int64.
  if (!Integer<int64_t>(a, "--d-model", 1, 1 << 20, &o.layer.d_model) ||
      !Integer<int64_t>(a, "--d-hidden", 1, 1 << 20, &o.layer.d_hidden))
    return 2;
  if (a.flags.count("--gated")) o.layer.gated = true;
  if (a.flags.count("--dtype")) {
    const std::string& d = a.flags.at("--dtype");
    o.layer.bytes_per_element = d == "fp32" ? 4 : d == "bf16" || d == "fp16" ? 2 : 0;
    if (o.layer.bytes_per_element == 0) {
      std::cerr << "dynamoe-replay: --dtype expects fp32, bf16 or fp16, got '" << d << "'\n";
      return 2;
    }
  }
  int64_t tokens_per_rank = 0, top_k = 0;
  if (!Integer<int64_t>(a, "--tokens-per-rank", 1, int64_t{1} << 30, &tokens_per_rank) ||
      !Integer<int64_t>(a, "--top-k", 1, kMaxImportIndex, &top_k))
    return 2;
  if ((tokens_per_rank > 0) != (top_k > 0)) {
    std::cerr << "dynamoe-replay run: --tokens-per-rank and --top-k go together (a trace counts rows, "
                 "top-k per token: N tokens per rank are N x K rows)\n";
    return 2;
  }
  if (isatty(2))  // a progress bar on a terminal; logs and pipes stay clean
    o.progress = [](int64_t done, int64_t total) {
      const int pct = static_cast<int>(100 * done / total);
      std::cerr << "\rreplaying [" << std::string(pct / 5, '#') << std::string(20 - pct / 5, ' ') << "] " << pct
                << "%" << (done == total ? "\r" + std::string(40, ' ') + "\r" : "") << std::flush;
    };
  // --csv: the per-step rows; --out-dir: those plus the summary and the
  // expert loads, under fixed names.
  std::ofstream csv, steps, summary, loads;
  auto open = [](std::ofstream& f, const std::string& path) {
    f.open(path);
    if (!f) std::cerr << "dynamoe-replay: cannot write '" << path << "'\n";
    return static_cast<bool>(f);
  };
  std::string out_dir;
  if (a.flags.count("--out-dir")) {
    out_dir = a.flags.at("--out-dir");
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) {
      std::cerr << "dynamoe-replay: cannot create '" << out_dir << "': " << ec.message() << "\n";
      return 1;
    }
    if (!open(summary, out_dir + "/summary.csv") || !open(steps, out_dir + "/steps.csv") ||
        !open(loads, out_dir + "/expert_load.csv"))
      return 1;
    dynamoe::tools::WriteSummaryHeader(summary);
    dynamoe::tools::WriteStepsHeader(steps);
    dynamoe::tools::WriteExpertLoadHeader(loads);
  }
  if (a.flags.count("--csv")) {
    if (!open(csv, a.flags.at("--csv"))) return 1;
    dynamoe::tools::WriteStepsHeader(csv);
  }
  if (a.flags.count("--export-csv") && a.positional.size() != 1) {
    std::cerr << "dynamoe-replay run: --export-csv takes one TRACE\n" << kUsage;
    return 2;
  }
  int rc = 0;
  for (const std::string& path : a.positional) {
    std::optional<Trace> t = LoadTrace(path, experts);
    if (!t) {
      rc = 1;
      continue;
    }
    if (a.flags.count("--export-csv")) {
      std::ofstream f(a.flags.at("--export-csv"), std::ios::binary);
      // Streamed row by row: a big trace's CSV is never held whole.
      if (!f || (ExportCountsCsv(*t, f), !f.flush())) {
        std::cerr << "dynamoe-replay: cannot write '" << a.flags.at("--export-csv") << "'\n";
        return 1;
      }
    }
    if (tokens_per_rank > 0)
      if (absl::Status s = RescaleTokensPerRank(*t, tokens_per_rank, top_k); !s.ok()) {
        std::cerr << "dynamoe-replay: " << path << ": " << s.message() << "\n";
        rc = 1;
        continue;
      }
    auto r = Replay(*t, o);
    if (!r.ok()) {
      std::cerr << "dynamoe-replay: " << path << ": " << r.status().message()
                << dynamoe::tools::ReplayErrorHint(path, r.status()) << "\n";
      const auto& m = r.status().message();
      rc = r.status().code() == absl::StatusCode::kInvalidArgument &&
                   (m.find("unknown") != std::string::npos || m.find("listed twice") != std::string::npos)
               ? 2
               : 1;
      continue;
    }
    PrintReport(path, *t, *r, o.layer.any() || tokens_per_rank > 0 ? Modelled(*t, o, tokens_per_rank, top_k) : "");
    for (std::ofstream* f : {&csv, &steps})
      if (f->is_open()) dynamoe::tools::WriteStepsRows(*f, path, *t, *r);
    if (summary.is_open()) dynamoe::tools::WriteSummaryRows(summary, path, *r);
    if (loads.is_open()) dynamoe::tools::WriteExpertLoadRows(loads, path, *t);
  }
  for (std::ofstream* f : {&csv, &steps, &summary, &loads})
    if (f->is_open() && !f->flush()) {
      std::cerr << "dynamoe-replay: writing the CSV files failed (disk full?)\n";
      return 1;
    }
  if (!out_dir.empty()) {
    std::cout << "wrote " << out_dir << "/{summary,steps,expert_load}.csv; plot them with: python3 -m dynamoe.replay plot "
              << out_dir << "\n";
  }
  return rc;
}

int Calibrate(const Args& a) {
  if (a.positional.size() != 1) {
    std::cerr << "dynamoe-replay calibrate: give one trace recorded with DYNAMOE_TRACE\n" << kUsage;
    return 2;
  }
  double heldout = 0.2;
  if (!Real(a, "--heldout", 0, 1, &heldout, /*open=*/true)) return 2;
  std::optional<Trace> t = LoadTrace(a.positional[0]);
  if (!t) return 1;
  auto c = dynamoe::placement::Calibrate(*t, heldout);
  if (!c.ok()) {
    std::cerr << "dynamoe-replay: " << a.positional[0] << ": " << c.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("%s: fitted on %d steps (after %d warm-up steps), checked on the %d after them\n",
                               a.positional[0], c->fit_steps, c->warmup_steps, c->heldout_steps);
  const auto& r = c->rates;
  std::cout << absl::StrFormat("fitted rates: %.4g s per expert row", r.seconds_per_row);
  if (c->flops > 0) std::cout << absl::StrFormat(" (%.4g FLOP/s)", c->flops);
  std::cout << absl::StrFormat(", intra-node %.4g B/s%s, %.4g s per message%s", r.intra_node_bw,
                               r.fitted[2] ? "" : " (prior)", r.intra_node_latency_s, r.fitted[0] ? "" : " (prior)");
  if (c->cluster.MultiNode())
    std::cout << absl::StrFormat(", inter-node %.4g B/s%s, %.4g s per message%s", r.inter_node_bw,
                                 r.fitted[3] ? "" : " (prior)", r.inter_node_latency_s, r.fitted[1] ? "" : " (prior)");
  std::cout << absl::StrFormat(", fixed %.4g s per step\n", r.fixed_s);
  for (const auto& f : c->fits)
    std::cout << absl::StrFormat("%-9s held-out median error %.1f%%\n", f.phase, 100 * f.heldout_median_error);
  std::cout << absl::StrFormat("forward step time, held-out steps: median error %.1f%%\n", 100 * c->step_median_error);
  std::cout << absl::StrFormat("  without the count all-gather (waiting for peers): median error %.1f%%\n",
                               100 * c->work_median_error);
  if (c->online_median_error >= 0)
    std::cout << absl::StrFormat("  running fit (as DYNAMOE_CALIBRATE=online reports it): median error %.1f%%\n",
                                 100 * c->online_median_error);
  return 0;
}

int Synth(const Args& a) {
  if (!a.flags.count("--out")) {
    std::cerr << "dynamoe-replay synth: --out FILE is required\n" << kUsage;
    return 2;
  }
  SynthOptions o;
  // Synthesize checks the combinations (cells, tokens x world) and the caps.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (!Integer<int64_t>(a, "--steps", 1, kMax, &o.steps) || !Integer<int64_t>(a, "--layers", 1, kMax, &o.layers) ||
      !Integer<int64_t>(a, "--experts", 1, kMax, &o.experts) ||
      !Integer<int64_t>(a, "--world", 1, kMaxReplayWorld, &o.world) ||
      !Integer<int64_t>(a, "--tokens", 0, kMax, &o.tokens) || !Integer<int64_t>(a, "--top-k", 1, kMax, &o.top_k) ||
      !Real(a, "--zipf", 0, 1e6, &o.zipf) || !Integer<int64_t>(a, "--drift-every", 0, kMax, &o.drift_every) ||
      !Integer<int64_t>(a, "--burst-every", 0, kMax, &o.burst_every) ||
      !Integer<uint64_t>(a, "--seed", 0, std::numeric_limits<uint64_t>::max(), &o.seed))
    return 2;
  auto t = Synthesize(o);
  if (!t.ok()) {
    std::cerr << "dynamoe-replay: " << t.status().message() << "\n";
    return 2;
  }
  const std::string& out = a.flags.at("--out");
  const bool as_csv = out.size() > 4 && out.substr(out.size() - 4) == ".csv";
  std::ofstream f(out, std::ios::binary);
  if (as_csv)
    ExportCountsCsv(*t, f);
  else
    f << EncodeTrace(*t);
  if (!f) {
    std::cerr << "dynamoe-replay: cannot write '" << out << "'\n";
    return 1;
  }
  std::cout << absl::StrFormat("wrote %s: %d steps x %d layers, %d experts, %d ranks, %d tokens per rank, top-%d\n",
                               out, o.steps, o.layers, o.experts, o.world, o.tokens, o.top_k);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "--help" || cmd == "-h" || cmd == "help" ||
      (argc > 2 && (std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h"))) {
    std::cout << kUsage << kHelp;
    return 0;
  }
  if (!kFlags.count(cmd)) {
    std::cerr << kUsage;
    return 2;
  }
  Args a;
  if (!ParseArgs(argc, argv, &a)) return 2;
  try {
    return cmd == "run" ? Run(a) : cmd == "calibrate" ? Calibrate(a) : Synth(a);
  } catch (const std::bad_alloc&) {
    std::cerr << "dynamoe-replay: out of memory\n";
    return 1;
  }
}
