#include "tools/rank_merge.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "placement/replay.h"

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
  std::vector<int64_t> missing;                         // per merged step: the first rank without it (-1: none)
};

// Rank `rank`'s file into m (rank 0's, read first, sets the layers); appends whether it was damaged.
absl::Status MergeFile(Merge& m, int64_t rank, const std::string& file, const std::string& file0,
                       std::vector<char>* damaged) {
  std::FILE* f = std::fopen(file.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", file, ": ", std::strerror(errno)));
  bool header_checked = false;
  int64_t filled = 0;
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
    if (s.kept.num_experts != l.num_experts)
      return absl::InvalidArgumentError(absl::StrCat(file, ": step ", s.step, " of layer ", Describe(l), " counts ",
                                                     s.kept.num_experts, " experts"));
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
      m.missing.push_back(rank > 0 ? 0 : -1);  // a step new after rank 0's file is absent from it
    }
    const size_t i = it->second;
    if (m.last_rank[i] == rank)
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": step ", s.step, " of layer '", l.name, "' is recorded twice"));
    m.last_rank[i] = rank;
    ++filled;
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
  if (filled < static_cast<int64_t>(m.out.steps.size()))
    for (size_t i = 0; i < m.out.steps.size(); ++i)
      if (m.last_rank[i] != rank && m.missing[i] < 0) m.missing[i] = rank;
  placement::TraceReadStats& st = m.out.stats;
  st.records += t->stats.records;
  st.skipped_corrupt += t->stats.skipped_corrupt;
  st.skipped_regions += t->stats.skipped_regions;
  st.skipped_bytes += t->stats.skipped_bytes;
  st.skipped_unknown += t->stats.skipped_unknown;
  st.truncated = st.truncated || t->stats.truncated;
  for (const std::string& w : t->stats.warnings)
    if (st.warnings.size() < placement::TraceReadStats::kMaxWarnings) st.warnings.push_back(absl::StrCat(file, ": ", w));
  damaged->push_back(t->stats.damaged() ? 1 : 0);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Trace> MergeRankFiles(const std::map<int64_t, std::string>& files) {
  if (files.empty()) return absl::NotFoundError("no rank files to merge");
  const int64_t world = files.rbegin()->first + 1;
  const std::string& any = files.begin()->second;
  if (world > placement::kMaxReplayWorld)
    return absl::InvalidArgumentError(absl::StrCat(files.rbegin()->second, ": rank ", world - 1, " is over the ",
                                                   placement::kMaxReplayWorld, " ranks replay takes"));
  if (static_cast<int64_t>(files.size()) != world) {
    std::vector<int64_t> absent;
    for (int64_t r = 0; r < world && absent.size() < 8; ++r)
      if (!files.count(r)) absent.push_back(r);
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
  std::vector<char> damaged;
  const std::string& file0 = files.at(0);
  for (const auto& [rank, file] : files) DYNAMOE_RETURN_IF_ERROR(MergeFile(m, rank, file, file0, &damaged));
  // Steps some rank lacks: lost to damage (dropped) or recorded differently (an error).
  std::vector<TraceStep> kept;
  int64_t dropped = 0;
  for (size_t i = 0; i < m.out.steps.size(); ++i) {
    TraceStep& s = m.out.steps[i];
    const int64_t r = m.missing[i];
    if (r < 0) {
      kept.push_back(std::move(s));
      continue;
    }
    const std::string& layer = m.out.layers[s.layer].name;
    if (!damaged[r])
      return absl::InvalidArgumentError(absl::StrCat(
          files.at(r), " has no step ", s.step, " of layer '", layer, "', which ",
          files.at(r == 0 ? m.last_rank[i] : 0), " has: the ranks recorded different steps (a step is a forward call",
          " of a router; every rank must make the same calls)"));
    ++dropped;
  }
  if (dropped > 0)
    m.out.stats.warnings.push_back(absl::StrCat(dropped, " steps dropped: some rank's record of them was lost to damage"));
  m.out.steps = std::move(kept);
  return std::move(m.out);
}

}  // namespace dynamoe::tools
