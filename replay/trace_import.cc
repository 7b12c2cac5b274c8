// Routing statistics from elsewhere into the trace's in-memory form: CSV of
// counts and JSONL of per-token routing; and the CSV export.
#include "replay/trace_import.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status.h"

namespace dynamoe::placement {
namespace {

// Counts keyed by (step, layer index) then (rank, expert), gathered before
// the matrices' sizes are known.
struct Accumulator {
  std::vector<std::string> layer_names;
  std::map<std::string, int64_t> layer_index;
  std::map<std::pair<int64_t, int64_t>, std::map<std::pair<int64_t, int64_t>, int64_t>> cells_;
  int64_t world = 0;
  std::map<int64_t, int64_t> experts;  // per layer

  int64_t Layer(const std::string& name) {
    auto [it, added] = layer_index.emplace(name, static_cast<int64_t>(layer_names.size()));
    if (added) layer_names.push_back(name);
    return it->second;
  }
  void Add(int64_t step, int64_t layer, int64_t rank, int64_t expert, int64_t count) {
    cells_[{step, layer}][{rank, expert}] += count;
    world = std::max(world, rank + 1);
    experts[layer] = std::max(experts[layer], expert + 1);
  }
  // `what` names the input in errors. The matrices are dense: their sizes
  // are checked before anything is allocated.
  absl::StatusOr<Trace> Build(const char* what) const {
    int64_t cells = 0;
    for (const auto& [key, entries] : cells_) {
      const int64_t per = world * experts.at(key.second);
      if (per > kMaxMatrixCells || per > kMaxImportCells - cells)
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": the count matrices would be too large: step ", key.first, " layer '", layer_names[key.second],
            "' is ", world, " ranks x ", experts.at(key.second), " experts (world = largest rank + 1, experts = ",
            "largest expert + 1); at most 2^24 cells per matrix and 2^27 in all are supported"));
      cells += per;
    }
    Trace t;
    t.rank = -1;
    t.world_size = world;
    for (size_t i = 0; i < layer_names.size(); ++i) {
      TraceLayerSpec l;
      l.name = layer_names[i];
      l.num_experts = experts.at(static_cast<int64_t>(i));
      t.layers.push_back(l);
    }
    for (const auto& [key, entries] : cells_) {
      const int64_t E = experts.at(key.second);
      std::vector<int64_t> counts(world * E, 0);
      for (const auto& [cell, count] : entries) counts[cell.first * E + cell.second] = count;
      TraceStep s;
      s.step = key.first, s.layer = key.second;
      DYNAMOE_ASSIGN_OR_RETURN(s.kept, CountMatrix::Make(world, E, std::move(counts)));
      DYNAMOE_RETURN_IF_ERROR(CheckCountLimits(
          s.kept, absl::StrCat(what, ": step ", key.first, " layer '", layer_names[key.second], "'")));
      s.routed = s.kept;
      t.steps.push_back(std::move(s));
    }
    return t;
  }
};

// A line as quoted in errors: a long one is cut.
std::string Quote(absl::string_view line) {
  return absl::StrCat("\"", line.substr(0, 80), line.size() > 80 ? "...\"" : "\"");
}

// The deepest nesting of brackets outside strings; stops counting past
// `limit`, so a hostile line costs one linear scan and no recursion.
int Depth(absl::string_view line, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : line) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

constexpr int kMaxDepth = 8;

bool ParseInt(absl::string_view field, int64_t* out) {
  return absl::SimpleAtoi(absl::StripAsciiWhitespace(field), out);
}

}  // namespace

absl::StatusOr<Trace> ImportCountsCsv(std::string_view text) {
  Accumulator acc;
  std::set<std::tuple<int64_t, int64_t, int64_t, int64_t>> seen;
  int64_t line_no = 0;
  bool header = false;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    if (!header) {
      DYNAMOE_CHECK_ARG(line == "step,layer,rank,expert,count", "CSV line 1: expected the header ",
                        "\"step,layer,rank,expert,count\", got ", Quote(line));
      header = true;
      continue;
    }
    const std::vector<absl::string_view> f = absl::StrSplit(line, ',');
    int64_t step, rank, expert, count;
    DYNAMOE_CHECK_ARG(f.size() == 5 && ParseInt(f[0], &step) && ParseInt(f[2], &rank) && ParseInt(f[3], &expert) &&
                          ParseInt(f[4], &count),
                      "CSV line ", line_no, ": expected step,layer,rank,expert,count with integer step, rank, ",
                      "expert and count, got ", Quote(line));
    DYNAMOE_CHECK_ARG(step >= 0 && rank >= 0 && rank < kMaxImportIndex && expert >= 0 && expert < kMaxImportIndex &&
                          count >= 0 && count <= kMaxStepTotal,
                      "CSV line ", line_no, ": expected step >= 0, rank and expert in [0, 2^20) and count in ",
                      "[0, 2^40], got ", Quote(line));
    const int64_t layer = acc.Layer(std::string(absl::StripAsciiWhitespace(f[1])));
    DYNAMOE_CHECK_ARG(seen.emplace(step, layer, rank, expert).second, "CSV line ", line_no, ": step ", step,
                      " layer ", Quote(f[1]), " rank ", rank, " expert ", expert, " appears twice");
    acc.Add(step, layer, rank, expert, count);
  }
  DYNAMOE_CHECK_ARG(header, "CSV: empty input; expected the header \"step,layer,rank,expert,count\"");
  return acc.Build("CSV");
}

std::string ExportCountsCsv(const Trace& trace) {
  std::ostringstream out;
  ExportCountsCsv(trace, out);
  return out.str();
}

void ExportCountsCsv(const Trace& trace, std::ostream& out) {
  out << "step,layer,rank,expert,count\n";
  for (const TraceStep& s : trace.steps)
    for (int64_t r = 0; r < s.kept.world_size; ++r)
      for (int64_t e = 0; e < s.kept.num_experts; ++e)
        out << s.step << ',' << trace.layers[s.layer].name << ',' << r << ',' << e << ',' << s.kept.at(r, e) << '\n';
}

absl::StatusOr<Trace> ImportRoutingJsonl(std::string_view text) {
  Accumulator acc;
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const auto where = [&] { return absl::StrCat("JSONL line ", line_no, ": "); };
    // A record nests 2 deep; deeper input is rejected before the parser
    // builds (and later tears down) a value of that depth.
    DYNAMOE_CHECK_ARG(Depth(line, kMaxDepth) <= kMaxDepth, where(), "nested deeper than ", kMaxDepth,
                      " levels; expected a JSON object like {\"step\": 0, \"layer\": \"moe0\", \"experts\": [3, 1]}");
    const nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    DYNAMOE_CHECK_ARG(j.is_object(), where(), "expected a JSON object like ",
                      "{\"step\": 0, \"layer\": \"moe0\", \"experts\": [3, 1]}, got ", Quote(line));
    DYNAMOE_CHECK_ARG(j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() >= 0, where(),
                      "\"step\" must be an integer >= 0");
    DYNAMOE_CHECK_ARG(j.contains("layer") && (j["layer"].is_string() || j["layer"].is_number_integer()), where(),
                      "\"layer\" must be a name or an integer");
    DYNAMOE_CHECK_ARG(j.contains("experts") && j["experts"].is_array(), where(),
                      "\"experts\" must be an array of expert indices");
    int64_t rank = 0;
    if (j.contains("rank")) {
      DYNAMOE_CHECK_ARG(j["rank"].is_number_integer(), where(), "\"rank\" must be an integer");
      rank = j["rank"].get<int64_t>();
    }
    DYNAMOE_CHECK_ARG(rank >= 0 && rank < kMaxImportIndex, where(), "\"rank\" must be in [0, 2^20), got ", rank);
    const std::string name =
        j["layer"].is_string() ? j["layer"].get<std::string>() : std::to_string(j["layer"].get<int64_t>());
    // A token routed nowhere adds nothing; declaring its layer would leave
    // a layer without an expert count.
    if (j["experts"].empty()) continue;
    const int64_t layer = acc.Layer(name);
    for (const auto& e : j["experts"]) {
      DYNAMOE_CHECK_ARG(e.is_number_integer() && e.get<int64_t>() >= 0 && e.get<int64_t>() < kMaxImportIndex, where(),
                        "expert indices must be integers in [0, 2^20), got ",
                        e.is_number() ? Quote(e.dump()) : std::string("a ") + e.type_name());
      acc.Add(j["step"].get<int64_t>(), layer, rank, e.get<int64_t>(), 1);
    }
  }
  DYNAMOE_CHECK_ARG(!acc.cells_.empty(), "JSONL: no routing records in the input");
  return acc.Build("JSONL");
}

}  // namespace dynamoe::placement
