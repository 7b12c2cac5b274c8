#include "replay/megatron_import.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <regex>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "replay/rank_files.h"

namespace dynamoe::placement {
namespace {

namespace fs = std::filesystem;

// Reads a file a line at a time through a fixed buffer.
class LineReader {
 public:
  explicit LineReader(std::FILE* f) : f_(f), buf_(1 << 20) {}
  // False at the end of the file. `newline`: the line ended in '\n' (a torn
  // last line does not).
  absl::StatusOr<bool> Next(std::string* line, bool* newline) {
    line->clear();
    *newline = false;
    for (;;) {
      if (pos_ == end_) {
        if (eof_) return !line->empty();
        end_ = std::fread(buf_.data(), 1, buf_.size(), f_);
        pos_ = 0;
        if (end_ == 0) {
          if (std::ferror(f_)) return absl::DataLossError(absl::StrCat("read error: ", std::strerror(errno)));
          eof_ = true;
        }
        continue;
      }
      const char* start = buf_.data() + pos_;
      const char* nl = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
      const size_t n = nl ? static_cast<size_t>(nl - start) : end_ - pos_;
      if (static_cast<int64_t>(line->size() + n) > kMaxMegatronLine)
        return absl::InvalidArgumentError("line longer than 2^30 bytes");
      line->append(start, n);
      pos_ += n;
      if (nl) {
        ++pos_;
        *newline = true;
        return true;
      }
    }
  }

 private:
  std::FILE* f_;
  std::vector<char> buf_;
  size_t pos_ = 0, end_ = 0;
  bool eof_ = false;
};

// One record's fields, read by SAX (no JSON tree: a record's top_indices are
// counted as they are parsed).
struct Record {
  std::optional<int64_t> step, layer, rank, num_tokens, topk, mtp_idx, logit_experts;
  std::optional<std::string> stage, block;
  bool has_indices = false;
  int64_t rows = 0, row_len = -1;
  std::vector<int64_t> hist;  // assignments per expert (zeroed between records)
  int64_t max_expert = -1;
  std::string error;  // set: the record is bad
};

constexpr int kMaxDepth = 8;

class Sax : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit Sax(Record* r) : r_(r) {}
  bool null() override { return Scalar(); }
  bool boolean(bool) override { return Scalar(); }
  bool number_integer(number_integer_t v) override { return Int(v); }
  bool number_unsigned(number_unsigned_t v) override {
    return Int(v > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(v));
  }
  bool number_float(number_float_t, const string_t&) override {
    if (depth_ == 1 && IsIntField()) return Fail(absl::StrCat("\"", key_, "\" must be an integer"));
    if (in_indices_) return Fail("top_indices must hold integers");
    return Scalar();
  }
  bool string(string_t& s) override {
    if (depth_ == 1 && key_ == "stage") r_->stage = s;
    else if (depth_ == 1 && key_ == "block") r_->block = s;
    else if (depth_ == 1 && IsIntField()) return Fail(absl::StrCat("\"", key_, "\" must be an integer"));
    else if (in_indices_) return Fail("top_indices must hold integers");
    return true;
  }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    if (in_indices_) return Fail("top_indices must be an array of arrays of expert indices");
    if (depth_ == 0) top_object_ = true;
    return Enter();
  }
  bool key(string_t& k) override {
    if (depth_ == 1) {
      key_ = k;
      if (k == "top_indices" && r_->has_indices) return Fail("\"top_indices\" appears twice");
    }
    return true;
  }
  bool end_object() override { --depth_; return true; }
  bool start_array(std::size_t) override {
    if (depth_ == 0) return Fail("expected a JSON object, got an array");
    if (depth_ == 1 && key_ == "top_indices") {
      in_indices_ = true, r_->has_indices = true;
    } else if (depth_ == 1 && key_ == "logit_shape") {
      in_shape_ = true, shape_.clear();
    } else if (in_indices_) {
      if (depth_ != 2) return Fail("top_indices must be an array of arrays of expert indices");
      row_n_ = 0;
    }
    return Enter();
  }
  bool end_array() override {
    --depth_;
    if (in_indices_ && depth_ == 2) {  // a row closed
      if (r_->row_len >= 0 && row_n_ != r_->row_len)
        return Fail(absl::StrCat("top_indices row ", r_->rows, " has ", row_n_, " experts, row 0 has ",
                                 r_->row_len));
      r_->row_len = row_n_;
      ++r_->rows;
    } else if (in_indices_ && depth_ == 1) {
      in_indices_ = false;
    } else if (in_shape_ && depth_ == 1) {
      in_shape_ = false;
      if (shape_.size() == 2 && shape_[1] > 0 && shape_[1] <= kMaxImportIndex) r_->logit_experts = shape_[1];
    }
    return true;
  }
  bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception&) override {
    syntax_error_ = true;
    if (r_->error.empty()) r_->error = absl::StrCat("not valid JSON (at byte ", pos, ")");
    return false;
  }
  bool syntax_error() const { return syntax_error_; }
  bool top_object() const { return top_object_; }

 private:
  bool IsIntField() const {
    return key_ == "step" || key_ == "layer" || key_ == "rank" || key_ == "num_tokens" || key_ == "topk" ||
           key_ == "mtp_idx";
  }
  bool Enter() {
    if (++depth_ > kMaxDepth) return Fail(absl::StrCat("nested deeper than ", kMaxDepth, " levels"));
    return true;
  }
  bool Fail(std::string what) {
    if (r_->error.empty()) r_->error = std::move(what);
    return false;
  }
  bool Scalar() {
    if (depth_ == 0) return Fail("expected a JSON object");
    if (in_indices_) return Fail("top_indices must hold integers");
    if (depth_ == 1 && IsIntField()) return Fail(absl::StrCat("\"", key_, "\" must be an integer"));
    return true;
  }
  bool Int(int64_t v) {
    if (depth_ == 0) return Fail("expected a JSON object");
    if (in_indices_) {
      if (depth_ != 3) return Fail("top_indices must be an array of arrays of expert indices");
      if (v < 0 || v >= kMaxImportIndex)
        return Fail(absl::StrCat("expert indices must be in [0, 2^20), got ", v));
      if (v >= static_cast<int64_t>(r_->hist.size())) r_->hist.resize(v + 1, 0);
      ++r_->hist[v];
      r_->max_expert = std::max(r_->max_expert, v);
      ++row_n_;
      return true;
    }
    if (in_shape_) {
      shape_.push_back(v);
      return true;
    }
    if (depth_ != 1) return true;
    if (key_ == "step") r_->step = v;
    else if (key_ == "layer") r_->layer = v;
    else if (key_ == "rank") r_->rank = v;
    else if (key_ == "num_tokens") r_->num_tokens = v;
    else if (key_ == "topk") r_->topk = v;
    else if (key_ == "mtp_idx") r_->mtp_idx = v;
    return true;
  }

  Record* r_;
  int depth_ = 0;
  std::string key_;
  bool in_indices_ = false, in_shape_ = false, syntax_error_ = false, top_object_ = false;
  int64_t row_n_ = 0;
  std::vector<int64_t> shape_;
};

struct LayerKey {
  std::string block;
  int64_t mtp = -1;  // -1: not an MTP head
  int64_t layer = 0;
  // Decoder layers first, then MTP heads, then other blocks; by layer within.
  auto Order() const {
    const int kind = mtp >= 0 ? 1 : block == "decoder" ? 0 : 2;
    return std::make_tuple(kind, mtp, block, layer);
  }
  bool operator<(const LayerKey& o) const { return Order() < o.Order(); }
  std::string Name() const {
    return mtp >= 0 ? absl::StrCat(block, mtp, ".", layer) : absl::StrCat(block, ".", layer);
  }
};

// Counts per (step, layer) and rank, grown as experts appear; the matrices
// are made dense once every file is read.
struct Counts {
  std::map<LayerKey, int64_t> layer_ids;
  std::vector<int64_t> experts;  // per layer id: largest expert + 1 seen (or given)
  std::map<std::pair<int64_t, int64_t>, std::vector<std::vector<int64_t>>> cells;  // (step, layer id) -> [rank][expert]
  int64_t cells_held = 0;  // int64s held by `cells`: counts, and the map node and row headers of each entry
};

// A `cells` entry's memory besides its counts, in int64s: the map node (key,
// links, vector: ~10 words) and one vector header (3 words) per rank.
int64_t EntryOverhead(int64_t world) { return 10 + 3 * world; }

// router_trace_rank{R}.jsonl
const std::regex& RankFileName() {
  static const std::regex kName(R"(router_trace_rank(\d+)\.jsonl)");
  return kName;
}

std::string Quote(const std::string& line) {
  return absl::StrCat("\"", line.substr(0, 80), line.size() > 80 ? "...\"" : "\"");
}

// One rank's file into `c`.
absl::Status ReadRankFile(const fs::path& path, int64_t rank, int64_t world, const MegatronImportOptions& o,
                          Counts& c, TraceReadStats& st, std::map<std::string, int64_t>& skipped_stages) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open: ", std::strerror(errno)));
  LineReader lines(f.get());
  std::string line;
  bool newline = false;
  int64_t line_no = 0;
  Record r;
  for (;;) {
    auto more = lines.Next(&line, &newline);
    ++line_no;
    const auto where = [&] { return absl::StrCat(path.string(), " line ", line_no, ": "); };
    if (!more.ok()) return absl::Status(more.status().code(), absl::StrCat(where(), more.status().message()));
    if (!*more) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    // Fresh fields; the histogram is zeroed only where the last record wrote.
    std::fill(r.hist.begin(), r.hist.begin() + (r.max_expert + 1), 0);
    std::vector<int64_t> hist = std::move(r.hist);
    r = Record{};
    r.hist = std::move(hist);
    Sax sax(&r);
    const bool parsed = nlohmann::json::sax_parse(line.begin(), line.end(), &sax) && r.error.empty();
    if (!parsed && sax.syntax_error() && !newline) {
      // A writer killed mid-line leaves the last record cut short.
      st.truncated = true;
      st.skipped_bytes += static_cast<int64_t>(line.size());
      st.Warn(absl::StrCat(where(), "torn last line (", line.size(), " bytes, no newline), skipped"));
      break;
    }
    const char* kExpected =
        "; expected a record like {\"step\": 0, \"stage\": \"pre_dispatch\", \"block\": \"decoder\", \"layer\": 3, "
        "\"rank\": 0, \"num_tokens\": 2, \"topk\": 2, \"top_indices\": [[12, 45], [3, 7]]}";
    if (!parsed) return absl::InvalidArgumentError(absl::StrCat(where(), r.error, kExpected, ", got ", Quote(line)));
    DYNAMOE_CHECK_ARG(sax.top_object(), where(), "expected a JSON object", kExpected, ", got ", Quote(line));
    DYNAMOE_CHECK_ARG(r.step && *r.step >= 0, where(), "\"step\" must be an integer >= 0", kExpected);
    DYNAMOE_CHECK_ARG(r.layer && *r.layer >= 0 && *r.layer < kMaxImportIndex, where(),
                      "\"layer\" must be an integer in [0, 2^20)", kExpected);
    DYNAMOE_CHECK_ARG(r.has_indices, where(), "\"top_indices\" (an array of per-token expert arrays) is missing",
                      kExpected);
    DYNAMOE_CHECK_ARG(!r.mtp_idx || (*r.mtp_idx >= 0 && *r.mtp_idx < kMaxImportIndex), where(),
                      "\"mtp_idx\" must be an integer in [0, 2^20)");
    DYNAMOE_CHECK_ARG(!r.rank || *r.rank == rank, where(), "\"rank\" is ", r.rank.value_or(0),
                      " but the file is rank ", rank, "'s (router_trace_rank", rank, ".jsonl)");
    DYNAMOE_CHECK_ARG(!r.num_tokens || *r.num_tokens == r.rows, where(), "\"num_tokens\" is ",
                      r.num_tokens.value_or(0), " but top_indices has ", r.rows, " rows");
    DYNAMOE_CHECK_ARG(!r.topk || r.rows == 0 || *r.topk == r.row_len, where(), "\"topk\" is ", r.topk.value_or(0),
                      " but the rows of top_indices have ", r.row_len, " experts");
    DYNAMOE_CHECK_ARG(!r.block || !r.block->empty(), where(), "\"block\" must be a non-empty name");
    if (r.stage && *r.stage != "pre_dispatch") {
      ++skipped_stages[*r.stage];
      continue;
    }
    const int64_t limit = o.experts > 0 ? o.experts : r.logit_experts.value_or(0);
    DYNAMOE_CHECK_ARG(limit == 0 || r.max_expert < limit, where(), "expert index ", r.max_expert, " is out of range: ",
                      o.experts > 0 ? "--experts is " : "logit_shape gives ", limit, " experts");
    if (r.max_expert < 0) continue;  // no tokens: adds nothing (and declares no layer without experts)

    const LayerKey key{r.block.value_or("decoder"), r.mtp_idx.value_or(-1), *r.layer};
    auto [it, added] = c.layer_ids.emplace(key, static_cast<int64_t>(c.experts.size()));
    if (added) c.experts.push_back(0);
    const int64_t id = it->second;
    c.experts[id] = std::max({c.experts[id], r.max_expert + 1, limit});
    auto& rows = c.cells[{*r.step, id}];
    if (rows.empty()) {
      c.cells_held += EntryOverhead(world);
      DYNAMOE_CHECK_ARG(c.cells_held <= kMaxImportCells, where(),
                        "the count matrices would hold over 2^27 cells (steps x layers x ranks x experts)");
      rows.resize(world);
    }
    std::vector<int64_t>& row = rows[rank];
    if (static_cast<int64_t>(row.size()) <= r.max_expert) {
      c.cells_held += r.max_expert + 1 - static_cast<int64_t>(row.size());
      DYNAMOE_CHECK_ARG(c.cells_held <= kMaxImportCells, where(),
                        "the count matrices would hold over 2^27 cells (steps x layers x ranks x experts)");
      row.resize(r.max_expert + 1, 0);
    }
    for (int64_t e = 0; e <= r.max_expert; ++e) {
      row[e] += r.hist[e];
      DYNAMOE_CHECK_ARG(row[e] <= kMaxStepTotal, where(), "counts over 2^40 in one step");
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsMegatronTraceDir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  // increment(ec), not a range-for: that throws when an entry cannot be read.
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (std::regex_match(it->path().filename().string(), RankFileName())) return true;
  return false;
}

absl::StatusOr<Trace> ImportMegatronTraceDir(const std::string& dir, const MegatronImportOptions& o) {
  DYNAMOE_CHECK_ARG(o.experts >= 0 && o.experts <= kMaxImportIndex, "--experts must be in [0, 2^20], got ",
                    o.experts);
  std::map<int64_t, fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::smatch m;
    const std::string name = it->path().filename().string();
    if (!std::regex_match(name, m, RankFileName())) continue;
    int64_t rank;
    DYNAMOE_CHECK_ARG(m[1].length() <= 7 && absl::SimpleAtoi(m[1].str(), &rank) && rank < kMaxImportIndex, dir,
                      ": ", name, ": rank out of range [0, 2^20)");
    DYNAMOE_CHECK_ARG(files.emplace(rank, it->path()).second, dir, ": two files for rank ", rank);
  }
  if (ec) return absl::NotFoundError(absl::StrCat(dir, ": cannot list: ", ec.message()));
  DYNAMOE_CHECK_ARG(!files.empty(), dir, ": no router_trace_rank{R}.jsonl files (Megatron-Core writes them into ",
                    "the directory given by --moe-routing-trace-path)");
  const RankCoverage ranks = CoverageOf(files);
  const int64_t world = ranks.world;
  if (!ranks.missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": rank files ", absl::StrJoin(ranks.missing, ", "),
                                                   " missing: expected ",
                                                   "router_trace_rank0.jsonl to router_trace_rank", world - 1,
                                                   ".jsonl (the world size is the largest rank + 1)"));
  }
  Counts c;
  Trace t;
  t.rank = -1;
  t.world_size = world;
  std::map<std::string, int64_t> skipped_stages;
  for (const auto& [rank, path] : files)
    DYNAMOE_RETURN_IF_ERROR(ReadRankFile(path, rank, world, o, c, t.stats, skipped_stages));
  for (const auto& [stage, n] : skipped_stages) {
    t.stats.skipped_unknown += n;
    t.stats.Warn(absl::StrCat(n, " record", n == 1 ? "" : "s", " of stage \"", stage,
                               "\" skipped (only \"pre_dispatch\" routing is counted)"));
  }
  DYNAMOE_CHECK_ARG(!c.cells.empty(), dir, ": no routing records in ", files.size(), " rank file",
                    files.size() == 1 ? "" : "s");
  // Layers in name order; ids were given in order of appearance.
  std::vector<int64_t> order(c.experts.size());  // id -> layer number in the trace
  int64_t cells = 0;
  for (const auto& [key, id] : c.layer_ids) {
    order[id] = static_cast<int64_t>(t.layers.size());
    TraceLayerSpec l;
    l.name = key.Name();
    l.num_experts = c.experts[id];
    t.layers.push_back(l);
  }
  std::vector<std::tuple<int64_t, int64_t, int64_t>> steps;  // (step, layer number, layer id)
  for (const auto& [k, rows] : c.cells) {
    const int64_t E = c.experts[k.second];
    DYNAMOE_CHECK_ARG(world * E <= kMaxMatrixCells && world * E <= kMaxImportCells - cells, dir,
                      ": the count matrices would be too large (", world, " ranks x ", E,
                      " experts per matrix; at most 2^24 cells per matrix and 2^27 in all)");
    cells += world * E;
    steps.emplace_back(k.first, order[k.second], k.second);
  }
  std::sort(steps.begin(), steps.end());
  for (const auto& [step, layer, id] : steps) {
    const int64_t E = t.layers[layer].num_experts;
    std::vector<int64_t> dense(world * E, 0);
    {  // Each entry freed as it is made dense: peak memory is about one copy of the counts, not two.
      auto entry = c.cells.extract({step, id});
      const auto& rows = entry.mapped();
      for (int64_t r = 0; r < world; ++r) std::copy(rows[r].begin(), rows[r].end(), dense.begin() + r * E);
    }
    TraceStep s;
    s.step = step, s.layer = layer;
    DYNAMOE_ASSIGN_OR_RETURN(s.kept, CountMatrix::Make(world, E, std::move(dense)));
    DYNAMOE_RETURN_IF_ERROR(CheckCountLimits(s.kept, absl::StrCat(dir, ": step ", step, " layer '",
                                                                  t.layers[layer].name, "'")));
    s.routed = s.kept;
    t.steps.push_back(std::move(s));
  }
  t.stats.records = static_cast<int64_t>(t.steps.size());
  return t;
}

}  // namespace dynamoe::placement
