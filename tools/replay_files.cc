#include "tools/replay_files.h"

#include <filesystem>
#include <map>
#include <regex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "replay/megatron_import.h"
#include "replay/replay_inputs.h"
#include "tools/rank_merge.h"

namespace dynamoe::tools {

using placement::PolicyReport;
using placement::ReplayReport;
using placement::Trace;

namespace {

// Trace names are paths: quote them when they could break the CSV.
std::string Field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

absl::StatusOr<Trace> ReadReplayInput(const std::string& path, int64_t experts) {
  std::error_code ec;
  const bool dir = std::filesystem::is_directory(path, ec);
  if (dir && placement::IsMegatronTraceDir(path)) {
    placement::MegatronImportOptions o;
    o.experts = experts;
    return placement::ImportMegatronTraceDir(path, o);
  }
  if (experts > 0)
    return absl::InvalidArgumentError(
        "--experts applies to a Megatron-Core router trace directory only (other inputs carry their expert counts)");
  // The path given to dynamoe.trace.record in a job of N ranks: no such file,
  // but <base>.rank<R>.dmtrace files, merged into one trace of N ranks.
  if (!std::filesystem::exists(path, ec))
    if (auto ranks = RankFilesOf(path); !ranks.empty()) return MergeRankFiles(ranks);
  auto t = placement::ReadAnyTraceFile(path);
  if (!t.ok() && dir)
    return absl::Status(t.status().code(),
                        absl::StrCat(t.status().message(), " (a directory without router_trace_rank{R}.jsonl files; ",
                                     "expected a Megatron-Core router trace directory (--moe-routing-trace-path) ",
                                     "a trace file, or the path given to dynamoe.trace.record)"));
  // One Megatron rank file is not a dynamoe JSONL trace: point at its directory.
  static const std::regex kRankFile(R"(router_trace_rank\d+\.jsonl)");
  if (!t.ok() && std::regex_match(std::filesystem::path(path).filename().string(), kRankFile))
    return absl::Status(t.status().code(),
                        absl::StrCat(t.status().message(), " (a Megatron-Core rank file: give its directory, ",
                                     std::filesystem::path(path).parent_path().string(), ", to read every rank)"));
  return t;
}

std::string ReplayErrorHint(const std::string& path, const absl::Status& status) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec) && status.message().find("do not divide") != std::string::npos)
    return " (the expert count of a Megatron trace is its largest index + 1: give the real one with --experts N)";
  return "";
}

void WriteSummaryHeader(std::ostream& out) {
  out << "trace,policy,world_size,steps,mean_seconds,p99_seconds,speedup_vs_none,imbalance_before,"
         "imbalance_after,bytes_per_step,copies_per_step,plan_changes,bound_fraction,weight_seconds\n";
}

void WriteSummaryRows(std::ostream& out, const std::string& trace_name, const ReplayReport& r) {
  for (const PolicyReport& p : r.policies)
    out << absl::StrFormat("%s,%s,%d,%d,%.9g,%.9g,%.6g,%.6g,%.6g,%.9g,%.6g,%d,%.6g,%.6g\n", Field(trace_name), p.policy,
                           r.world_size, r.steps, p.mean_seconds, p.p99_seconds, p.speedup_vs_none,
                           p.imbalance_before, p.imbalance_after, p.bytes_per_step, p.copies_per_step,
                           p.plan_changes, p.bound_fraction, p.weight_seconds);
}

void WriteStepsHeader(std::ostream& out) {
  out << "trace,policy,step_index,step,layer,predicted_seconds,imbalance_before,imbalance_after,copies\n";
}

void WriteStepsRows(std::ostream& out, const std::string& trace_name, const Trace& t, const ReplayReport& r) {
  const std::string name = Field(trace_name);
  for (const PolicyReport& p : r.policies)
    for (size_t i = 0; i < p.step_seconds.size(); ++i)
      out << absl::StrFormat("%s,%s,%d,%d,%s,%.9g,%.6g,%.6g,%d\n", name, p.policy, i, t.steps[i].step,
                             Field(t.layers[t.steps[i].layer].name), p.step_seconds[i], r.step_imbalance_before[i],
                             p.step_imbalance_after[i], p.step_copies[i]);
}

void WriteExpertLoadHeader(std::ostream& out) { out << "trace,step,expert,tokens\n"; }

void WriteExpertLoadRows(std::ostream& out, const std::string& trace_name, const Trace& t) {
  std::map<int64_t, std::vector<int64_t>> per_step;  // ordered by step number
  for (const auto& s : t.steps) {
    const std::vector<int64_t> loads = s.kept.ExpertLoads();
    std::vector<int64_t>& sum = per_step[s.step];
    if (sum.size() < loads.size()) sum.resize(loads.size(), 0);
    for (size_t e = 0; e < loads.size(); ++e) sum[e] += loads[e];
  }
  const std::string name = Field(trace_name);
  for (const auto& [step, loads] : per_step)
    for (size_t e = 0; e < loads.size(); ++e) out << name << ',' << step << ',' << e << ',' << loads[e] << '\n';
}

}  // namespace dynamoe::tools
