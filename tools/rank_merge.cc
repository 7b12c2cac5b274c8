#include "tools/rank_merge.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "replay/rank_files.h"
#include "replay/replay.h"

namespace dynamoe::tools {

using placement::CountMatrix;
using placement::Trace;
using placement::TraceLayerSpec;
using placement::TraceStep;

namespace fs = std::filesystem;

std::map<int64_t, std::string> RankFilesOf(const std::string& path) {
  std::map<int64_t, std::string> files;
  std::string base = path;
  if (base.size() > 8 && base.compare(base.size() - 8, 8, ".dmtrace") == 0) base.resize(base.size() - 8);
  const fs::path b(base);
  const fs::path dir = b.parent_path().empty() ? fs::path(".") : b.parent_path();
  const std::string stem = b.filename().string();
  if (stem.empty()) return files;
  static const std::regex kRank(R"(\.rank(\d{1,9})\.dmtrace)");
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::smatch m;
    if (name.size() > stem.size() && name.compare(0, stem.size(), stem) == 0) {
      const std::string rest = name.substr(stem.size());
      if (std::regex_match(rest, m, kRank))
        files[std::stoll(m[1].str())] = (b.parent_path() / name).string();
    }
  }
  return files;
}

namespace {

std::string Describe(const TraceLayerSpec& l) { return absl::StrCat("'", l.name, "' with ", l.num_experts, " experts"); }

struct Merge {
  int64_t world = 0;
  Trace out;
  std::map<std::pair<int64_t, int64_t>, size_t> index;  // (step, layer) -> out.steps
  std::vector<int64_t> last_rank;                       // per merged step: the last rank that filled it
  std::vector<int64_t> gap;                             // per merged step: a rank lacking it mid-file (-1: none)
  std::vector<char> drop;                               // per merged step: some rank lacks it at its end/to damage
  std::vector<int64_t> last_step;                       // per rank read: its file's highest step (-1: none)
  std::vector<char> damaged;                            // per rank read: records lost to damage
  std::vector<std::set<int64_t>> cut;                   // per rank read: steps dropped after its file ended
  int64_t lost_to_damage = 0;                           // merged steps dropped for a damaged file

  // Rank q's file (read whole) lacks merged step i: after its last step (the
  // job stopped before it wrote it) or lost to damage, the step is dropped;
  // in the middle it is an error.
  void Lacks(int64_t q, size_t i) {
    const int64_t step = out.steps[i].step;
    if (damaged[q]) {
      if (!drop[i]) ++lost_to_damage;
      drop[i] = 1;
    } else if (step >= last_step[q]) {  // ==: the last step, cut between its layers
      cut[q].insert(step);
      drop[i] = 1;
    } else if (gap[i] < 0) {
      gap[i] = q;
    }
  }
};

// Rank `rank`'s file into m (rank 0's, read first, sets the layers); ranks are read in order.
absl::Status MergeFile(Merge& m, int64_t rank, const std::string& file, const std::string& file0) {
  std::FILE* f = std::fopen(file.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", file, ": ", std::strerror(errno)));
  bool header_checked = false;
  int64_t filled = 0, last_step = -1;
  auto check_header = [&](const Trace& t) -> absl::Status {
    if (t.world_size != 1)
      return absl::InvalidArgumentError(absl::StrCat(
          file, " holds the counts of ", t.world_size, " ranks, not one: it is not a dynamoe.trace.record file ",
          "(a DYNAMOE_TRACE file holds every rank's counts already: replay it alone)"));
    if (t.rank != rank)
      return absl::InvalidArgumentError(absl::StrCat(file, ": its header names rank ", t.rank, ", its name rank ", rank));
    return absl::OkStatus();
  };
  auto sink = [&](const Trace& t, TraceStep s) -> absl::Status {
    if (!header_checked) {
      if (absl::Status st = check_header(t); !st.ok()) return st;
      header_checked = true;
    }
    const TraceLayerSpec& l = t.layers[s.layer];
    // Each step's matrix is copied into row `rank` of a world x experts one: its shape must be the header's.
    if (s.kept.world_size != 1 || s.routed.world_size != 1 || s.kept.num_experts != l.num_experts ||
        s.routed.num_experts != l.num_experts)
      return absl::InvalidArgumentError(absl::StrCat(file, ": step ", s.step, " of layer ", Describe(l), " counts ",
                                                     s.kept.world_size, " ranks x ", s.kept.num_experts,
                                                     " experts; a one-rank recording's are 1 x ", l.num_experts));
    if (rank > 0) {
      if (static_cast<size_t>(s.layer) >= m.out.layers.size())
        return absl::InvalidArgumentError(absl::StrCat(file, ": step ", s.step, " names layer ", s.layer, " but ",
                                                       file0, " declares ", m.out.layers.size(), " layers"));
      const TraceLayerSpec& l0 = m.out.layers[s.layer];
      if (l0.name != l.name || l0.num_experts != l.num_experts)
        return absl::InvalidArgumentError(absl::StrCat(file, ": layer ", s.layer, " is ", Describe(l), "; in ", file0,
                                                       " it is ", Describe(l0)));
    }
    const int64_t e = s.kept.num_experts;
    auto [it, added] = m.index.try_emplace({s.step, s.layer}, m.out.steps.size());
    if (added) {
      if (m.world * e > placement::kMaxMatrixCells)
        return absl::InvalidArgumentError(absl::StrCat(file, ": ", m.world, " ranks x ", e, " experts exceed the ",
                                                       placement::kMaxMatrixCells, " cells of a count matrix"));
      TraceStep merged;
      merged.step = s.step;
      merged.layer = s.layer;
      merged.kept = CountMatrix{m.world, e, std::vector<int64_t>(m.world * e, 0)};
      merged.routed = merged.kept;
      m.out.steps.push_back(std::move(merged));
      m.last_rank.push_back(-1);
      m.gap.push_back(-1);
      m.drop.push_back(0);
      for (int64_t q = 0; q < rank; ++q) m.Lacks(q, m.out.steps.size() - 1);  // absent from the files read
    }
    const size_t i = it->second;
    if (m.last_rank[i] == rank)
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": step ", s.step, " of layer '", l.name, "' is recorded twice"));
    m.last_rank[i] = rank;
    ++filled;
    last_step = std::max(last_step, s.step);
    TraceStep& d = m.out.steps[i];
    std::copy(s.kept.counts.begin(), s.kept.counts.end(), d.kept.counts.begin() + rank * e);
    std::copy(s.routed.counts.begin(), s.routed.counts.end(), d.routed.counts.begin() + rank * e);
    return absl::OkStatus();
  };
  absl::StatusOr<Trace> t = placement::ReadTrace(f, {}, sink);
  std::fclose(f);
  if (!t.ok()) {
    const std::string msg(t.status().message());
    // The sink's messages name the file already; the reader's do not.
    return absl::Status(t.status().code(), msg.rfind(file, 0) == 0 ? msg : absl::StrCat(file, ": ", msg));
  }
  if (!header_checked) DYNAMOE_RETURN_IF_ERROR(check_header(*t));
  if (rank == 0) {
    m.out.layers = t->layers;
  } else if (t->layers.size() != m.out.layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(file, " declares ", t->layers.size(), " layers; ", file0,
                                                   " declares ", m.out.layers.size()));
  } else {
    for (size_t l = 0; l < t->layers.size(); ++l)
      if (t->layers[l].name != m.out.layers[l].name || t->layers[l].num_experts != m.out.layers[l].num_experts)
        return absl::InvalidArgumentError(absl::StrCat(file, ": layer ", l, " is ", Describe(t->layers[l]), "; in ",
                                                       file0, " it is ", Describe(m.out.layers[l])));
  }
  m.last_step.push_back(last_step);
  m.damaged.push_back(t->stats.damaged() ? 1 : 0);
  m.cut.emplace_back();
  if (filled < static_cast<int64_t>(m.out.steps.size()))
    for (size_t i = 0; i < m.out.steps.size(); ++i)
      if (m.last_rank[i] != rank) m.Lacks(rank, i);
  placement::TraceReadStats& st = m.out.stats;
  st.records += t->stats.records;
  st.skipped_corrupt += t->stats.skipped_corrupt;
  st.skipped_regions += t->stats.skipped_regions;
  st.skipped_bytes += t->stats.skipped_bytes;
  st.skipped_unknown += t->stats.skipped_unknown;
  st.truncated = st.truncated || t->stats.truncated;
  for (const std::string& w : t->stats.warnings) st.Warn(absl::StrCat(file, ": ", w));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Trace> MergeRankFiles(const std::map<int64_t, std::string>& files) {
  if (files.empty()) return absl::NotFoundError("no rank files to merge");
  const placement::RankCoverage ranks = placement::CoverageOf(files);
  const int64_t world = ranks.world;
  const std::string& any = files.begin()->second;
  if (world > placement::kMaxReplayWorld)
    return absl::InvalidArgumentError(absl::StrCat(files.rbegin()->second, ": rank ", world - 1, " is over the ",
                                                   placement::kMaxReplayWorld, " ranks replay takes"));
  if (!ranks.missing.empty()) {
    const std::vector<int64_t>& absent = ranks.missing;
    const std::string name = fs::path(any).filename().string();
    const std::string base = name.substr(0, name.rfind(".rank"));
    return absl::NotFoundError(absl::StrCat(
        "rank files missing: ", base, ".rank{", absl::StrJoin(absent, ","), "}.dmtrace (found ", files.size(),
        " of ranks 0..", world - 1, " beside ", any, "; every rank of the job writes one)"));
  }
  Merge m;
  m.world = world;
  m.out.world_size = world;
  m.out.rank = -1;
  const std::string& file0 = files.at(0);
  for (const auto& [rank, file] : files) DYNAMOE_RETURN_IF_ERROR(MergeFile(m, rank, file, file0));
  // Steps some rank lacks: after its file's end or lost to damage (dropped), or
  // in its middle: the ranks recorded different steps (an error).
  std::vector<TraceStep> kept;
  for (size_t i = 0; i < m.out.steps.size(); ++i) {
    TraceStep& s = m.out.steps[i];
    if (const int64_t r = m.gap[i]; r >= 0)
      return absl::InvalidArgumentError(absl::StrCat(
          files.at(r), " has no step ", s.step, " of layer '", m.out.layers[s.layer].name, "', which ",
          files.at(m.last_rank[i]), " has, but has later steps: the ranks recorded different steps (a step is a ",
          "forward call of a router; every rank must make the same calls)"));
    if (!m.drop[i]) kept.push_back(std::move(s));
  }
  for (const auto& [rank, file] : files)
    if (const std::set<int64_t>& cut = m.cut[rank]; !cut.empty())
      m.out.stats.warnings.push_back(absl::StrCat(
          file, " ends at step ", m.last_step[rank], ": ", cut.size(), " step", cut.size() == 1 ? "" : "s",
          " (", *cut.begin(), cut.size() == 1 ? "" : absl::StrCat("..", *cut.rbegin()), ") that other ranks recorded ",
          "after it dropped (the job stopped before this rank wrote them)"));
  if (m.lost_to_damage > 0)
    m.out.stats.warnings.push_back(
        absl::StrCat(m.lost_to_damage, " steps dropped: some rank's record of them was lost to damage"));
  m.out.steps = std::move(kept);
  return std::move(m.out);
}

}  // namespace dynamoe::tools
