// Megatron-Core router trace directories (replay/megatron_import.h): a
// fixture written from the published record layout against the same routing
// as dynamoe JSONL and against counts tallied here; bad and torn input.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "replay/megatron_import.h"
#include "replay/replay.h"
#include "replay/trace_import.h"

namespace dynamoe::placement {
namespace {

namespace fs = std::filesystem;

// Scratch directories, removed in TearDown even when an ASSERT returned early.
class MegatronImport : public ::testing::Test {
 protected:
  fs::path MakeDir() {
    char dir[] = "/tmp/dynamoe_megatron_XXXXXX";
    EXPECT_NE(mkdtemp(dir), nullptr);
    dirs_.emplace_back(dir);
    return dirs_.back();
  }
  void TearDown() override {
    std::error_code ec;
    for (const fs::path& d : dirs_) fs::remove_all(d, ec);
  }

 private:
  std::vector<fs::path> dirs_;
};

void Write(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// One Megatron record, as router_trace.py lays it out.
std::string Record(int64_t step, const std::string& block, int mtp_idx, int layer, int rank,
                   const std::vector<std::vector<int>>& rows) {
  std::ostringstream s;
  s << "{\"step\": " << step << ", \"stage\": \"pre_dispatch\", \"block\": \"" << block << "\", \"layer\": " << layer
    << ", \"rank\": " << rank << ", \"num_tokens\": " << rows.size() << ", \"topk\": " << rows[0].size();
  if (mtp_idx >= 0) s << ", \"mtp_idx\": " << mtp_idx;
  s << ", \"top_indices\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    s << (i ? ", [" : "[");
    for (size_t j = 0; j < rows[i].size(); ++j) s << (j ? ", " : "") << rows[i][j];
    s << "]";
  }
  s << "]}\n";
  return s.str();
}

struct Fixture {
  fs::path dir;
  std::string jsonl;  // the same routing, one token per line
  // (step, layer name, rank, expert) -> assignments, tallied while writing
  std::map<std::tuple<int64_t, std::string, int, int>, int64_t> tally;
};

// 2 ranks, 3 steps, decoder layers 0..2 and MTP head 0's layer 1 (it shares
// decoder layer 1's number), 8 experts, top-2, 5 tokens per record; step 1
// has two micro-batches per layer. Records are written MTP first and layers
// backwards, so the importer's ordering is what puts them in name order.
Fixture MakeFixture(const fs::path& dir) {
  Fixture f;
  f.dir = dir;
  std::mt19937 rng(7);
  struct L {
    std::string block;
    int mtp, layer;
    std::string name;
  };
  const std::vector<L> file_order = {{"mtp", 0, 1, "mtp0.1"}, {"decoder", -1, 2, "decoder.2"},
                                     {"decoder", -1, 1, "decoder.1"}, {"decoder", -1, 0, "decoder.0"}};
  std::map<std::tuple<int64_t, std::string>, std::vector<std::string>> json_lines;  // by (step, name)
  for (int rank = 0; rank < 2; ++rank) {
    std::string text;
    for (int64_t step = 0; step < 3; ++step)
      for (const L& l : file_order)
        for (int micro = 0; micro < (step == 1 ? 2 : 1); ++micro) {
          std::vector<std::vector<int>> rows;
          for (int t = 0; t < 5; ++t) {
            const int a = static_cast<int>(rng() % 8);
            rows.push_back({a, (a + 1 + static_cast<int>(rng() % 7)) % 8});
          }
          // Expert 7 appears in every layer, so both importers see 8 experts.
          if (step == 0) rows[0] = {7, 0};
          for (const auto& row : rows) {
            for (int e : row) ++f.tally[{step, l.name, rank, e}];
            json_lines[{step, l.name}].push_back("{\"step\": " + std::to_string(step) + ", \"layer\": \"" + l.name +
                                                 "\", \"experts\": [" + std::to_string(row[0]) + ", " +
                                                 std::to_string(row[1]) + "], \"rank\": " + std::to_string(rank) +
                                                 "}\n");
          }
          text += Record(step, l.block, l.mtp, l.layer, rank, rows);
        }
    Write(f.dir / ("router_trace_rank" + std::to_string(rank) + ".jsonl"), text);
  }
  // dynamoe JSONL in name order (its importer numbers layers as they appear).
  for (int64_t step = 0; step < 3; ++step)
    for (const char* name : {"decoder.0", "decoder.1", "decoder.2", "mtp0.1"})
      for (const std::string& line : json_lines[{step, name}]) f.jsonl += line;
  return f;
}

TEST_F(MegatronImport, EqualsTheSameRoutingAsJsonlAndTheTally) {
  const Fixture f = MakeFixture(MakeDir());
  ASSERT_TRUE(IsMegatronTraceDir(f.dir));
  auto m = ImportMegatronTraceDir(f.dir);
  ASSERT_TRUE(m.ok()) << m.status();
  auto j = ImportRoutingJsonl(f.jsonl);
  ASSERT_TRUE(j.ok()) << j.status();

  EXPECT_EQ(m->world_size, 2);
  ASSERT_EQ(m->layers.size(), 4u);
  const std::vector<std::string> names = {"decoder.0", "decoder.1", "decoder.2", "mtp0.1"};
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(m->layers[i].name, names[i]);
    EXPECT_EQ(m->layers[i].num_experts, 8);
    EXPECT_EQ(j->layers[i].name, names[i]);
  }
  ASSERT_EQ(m->steps.size(), 12u);
  ASSERT_EQ(j->steps.size(), m->steps.size());
  for (size_t i = 0; i < m->steps.size(); ++i) {
    const TraceStep& s = m->steps[i];
    EXPECT_EQ(s.step, j->steps[i].step);
    EXPECT_EQ(s.layer, j->steps[i].layer);
    EXPECT_EQ(s.kept.counts, j->steps[i].kept.counts) << "step " << s.step << " layer " << s.layer;
    EXPECT_EQ(s.routed.counts, s.kept.counts);
    for (int r = 0; r < 2; ++r)
      for (int e = 0; e < 8; ++e) {
        auto it = f.tally.find({s.step, m->layers[s.layer].name, r, e});
        EXPECT_EQ(s.kept.at(r, e), it == f.tally.end() ? 0 : it->second)
            << "step " << s.step << " layer " << m->layers[s.layer].name << " rank " << r << " expert " << e;
      }
  }
  // Step 1 held two micro-batches of 5 top-2 tokens per rank and layer.
  EXPECT_EQ(m->steps[4].kept.counts.size(), 16u);
  int64_t step1 = 0;
  for (int64_t c : m->steps[4].kept.counts) step1 += c;
  EXPECT_EQ(step1, 2 * 2 * 5 * 2);

  // The replay table is the same.
  ReplayOptions o;
  o.threads = 1;
  auto rm = Replay(*m, o), rj = Replay(*j, o);
  ASSERT_TRUE(rm.ok() && rj.ok());
  ASSERT_EQ(rm->policies.size(), rj->policies.size());
  for (size_t p = 0; p < rm->policies.size(); ++p) {
    EXPECT_EQ(rm->policies[p].step_seconds, rj->policies[p].step_seconds);
    EXPECT_EQ(rm->policies[p].copies_per_step, rj->policies[p].copies_per_step);
    EXPECT_EQ(rm->policies[p].imbalance_after, rj->policies[p].imbalance_after);
  }
}

TEST_F(MegatronImport, ExpertCountFromFlagOrLogitShape) {
  const fs::path dir = MakeDir();
  Write(dir / "router_trace_rank0.jsonl", Record(0, "decoder", -1, 0, 0, {{0, 1}, {2, 1}}));
  auto t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->layers[0].num_experts, 3);  // largest index + 1
  MegatronImportOptions o;
  o.experts = 16;
  t = ImportMegatronTraceDir(dir, o);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->layers[0].num_experts, 16);
  EXPECT_EQ(t->steps[0].kept.counts, (std::vector<int64_t>{1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  // The logits sidecar's shape [tokens, experts] tells the count too.
  Write(dir / "router_trace_rank0.jsonl",
        "{\"step\": 0, \"block\": \"decoder\", \"layer\": 0, \"top_indices\": [[1]], \"logit_offset\": 0, "
        "\"logit_bytes\": 8, \"logit_shape\": [1, 4]}\n");
  t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->layers[0].num_experts, 4);
}

// Each bad record is an error naming the file and its line.
TEST_F(MegatronImport, BadRecordsNameFileAndLine) {
  const std::string good = Record(0, "decoder", -1, 0, 1, {{0, 1}});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [[0, 1]]\n", "not valid JSON"},
      {"[1, 2]\n", "expected a JSON object"},
      {"{\"step\": 1, \"layer\": 0}\n", "\"top_indices\""},
      {"{\"step\": 1.5, \"layer\": 0, \"top_indices\": [[0, 1]]}\n", "\"step\" must be an integer"},
      {"{\"layer\": 0, \"top_indices\": [[0, 1]]}\n", "\"step\" must be an integer >= 0"},
      {"{\"step\": 1, \"layer\": -2, \"top_indices\": [[0, 1]]}\n", "\"layer\""},
      {"{\"step\": 1, \"layer\": 0, \"rank\": 0, \"top_indices\": [[0, 1]]}\n", "the file is rank 1's"},
      {"{\"step\": 1, \"layer\": 0, \"num_tokens\": 3, \"top_indices\": [[0, 1]]}\n", "top_indices has 1 rows"},
      {"{\"step\": 1, \"layer\": 0, \"topk\": 3, \"top_indices\": [[0, 1]]}\n", "\"topk\" is 3"},
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [[0, 1], [2]]}\n", "row 1 has 1 experts"},
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [[0, -1]]}\n", "expert indices must be in [0, 2^20)"},
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [0, 1]}\n", "array of arrays"},
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [[\"a\"]]}\n", "must hold integers"},
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [[[[[[[[[0]]]]]]]]]}\n", "array of arrays"},
      {"{\"step\": 1, \"layer\": 0, \"x\": [[[[[[[[[0]]]]]]]]], \"top_indices\": [[0]]}\n", "nested deeper"},
      {"{\"step\": 1, \"layer\": 0, \"top_indices\": [[0]], \"top_indices\": [[1]]}\n", "appears twice"},
      {"{\"step\": 1, \"layer\": 0, \"logit_shape\": [1, 2], \"top_indices\": [[5]]}\n", "logit_shape gives 2"},
  };
  for (const auto& [bad, expected] : cases) {
    const fs::path dir = MakeDir();
    Write(dir / "router_trace_rank0.jsonl", Record(0, "decoder", -1, 0, 0, {{0, 1}}));
    // The bad record is line 3 of rank 1's file, after a blank line.
    Write(dir / "router_trace_rank1.jsonl", good + "\n" + bad + good);
    auto t = ImportMegatronTraceDir(dir);
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    const std::string msg(t.status().message());
    EXPECT_NE(msg.find("router_trace_rank1.jsonl line 3: "), std::string::npos) << msg;
    EXPECT_NE(msg.find(expected), std::string::npos) << "expected '" << expected << "' in: " << msg;
  }
}

TEST_F(MegatronImport, ExpertsFlagBelowAnIndexIsAnError) {
  const fs::path dir = MakeDir();
  Write(dir / "router_trace_rank0.jsonl", Record(0, "decoder", -1, 0, 0, {{0, 1}}) + Record(1, "decoder", -1, 0, 0, {{0, 9}}));
  MegatronImportOptions o;
  o.experts = 8;
  auto t = ImportMegatronTraceDir(dir, o);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("router_trace_rank0.jsonl line 2: expert index 9 is out of range: --experts is 8"),
            std::string::npos)
      << t.status();
}

TEST_F(MegatronImport, TornLastLineIsAWarningAndEarlierRecordsAreKept) {
  const fs::path dir = MakeDir();
  const std::string full = Record(0, "decoder", -1, 0, 0, {{0, 1}, {1, 2}}) + Record(1, "decoder", -1, 0, 0, {{3, 1}});
  const std::string torn = Record(2, "decoder", -1, 0, 0, {{0, 1}, {1, 2}});
  Write(dir / "router_trace_rank0.jsonl", full + torn.substr(0, torn.size() / 2));
  auto t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->stats.truncated);
  EXPECT_EQ(t->stats.skipped_bytes, static_cast<int64_t>(torn.size() / 2));
  ASSERT_EQ(t->steps.size(), 2u);
  EXPECT_EQ(t->steps[1].step, 1);
  EXPECT_EQ(t->steps[1].kept.counts, (std::vector<int64_t>{0, 1, 0, 1}));
  ASSERT_EQ(t->stats.warnings.size(), 1u);
  EXPECT_NE(t->stats.warnings[0].find("router_trace_rank0.jsonl line 3: torn last line"), std::string::npos)
      << t->stats.warnings[0];
  // The same cut line followed by a newline is not torn: it is a bad record.
  Write(dir / "router_trace_rank0.jsonl", full + torn.substr(0, torn.size() / 2) + "\n");
  t = ImportMegatronTraceDir(dir);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("router_trace_rank0.jsonl line 3: not valid JSON"), std::string::npos)
      << t.status();
  // A whole last record without the newline is kept.
  Write(dir / "router_trace_rank0.jsonl", full + torn.substr(0, torn.size() - 1));
  t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->stats.truncated);
  EXPECT_EQ(t->steps.size(), 3u);
}

TEST_F(MegatronImport, OtherStagesAreSkippedWithAWarning) {
  const fs::path dir = MakeDir();
  std::string other = Record(0, "decoder", -1, 0, 0, {{3, 3}});
  other.replace(other.find("pre_dispatch"), 12, "post_combine");
  Write(dir / "router_trace_rank0.jsonl", Record(0, "decoder", -1, 0, 0, {{0, 1}}) + other);
  auto t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->steps[0].kept.counts, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(t->stats.skipped_unknown, 1);
  ASSERT_EQ(t->stats.warnings.size(), 1u);
  EXPECT_NE(t->stats.warnings[0].find("\"post_combine\""), std::string::npos);
}

// Decoder layers, then MTP heads, then other blocks, whatever the file order.
TEST_F(MegatronImport, LayersAreOrderedDecoderThenMtpThenOtherBlocks) {
  const fs::path dir = MakeDir();
  Write(dir / "router_trace_rank0.jsonl", Record(0, "vision", -1, 0, 0, {{0, 1}}) + Record(0, "mtp", 0, 1, 0, {{1, 2}}) +
                                              Record(0, "decoder", -1, 1, 0, {{2, 3}}) +
                                              Record(0, "adapter", -1, 0, 0, {{3, 0}}));
  auto t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::string> names;
  for (const TraceLayerSpec& l : t->layers) names.push_back(l.name);
  EXPECT_EQ(names, (std::vector<std::string>{"decoder.1", "mtp0.1", "adapter.0", "vision.0"}));
}

TEST_F(MegatronImport, DirectoryLevelErrors) {
  const fs::path dir = MakeDir();
  EXPECT_FALSE(IsMegatronTraceDir(dir));
  auto t = ImportMegatronTraceDir(dir);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("no router_trace_rank{R}.jsonl files"), std::string::npos) << t.status();
  // Ranks 0 and 2 without 1.
  Write(dir / "router_trace_rank0.jsonl", Record(0, "decoder", -1, 0, 0, {{0, 1}}));
  Write(dir / "router_trace_rank2.jsonl", Record(0, "decoder", -1, 0, 2, {{0, 1}}));
  // Sidecars are not rank files.
  Write(dir / "logits_rank0.bin", "xx");
  t = ImportMegatronTraceDir(dir);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("rank files 1 missing"), std::string::npos) << t.status();
  // Only empty rank files: no records.
  Write(dir / "router_trace_rank1.jsonl", "");
  Write(dir / "router_trace_rank0.jsonl", "");
  Write(dir / "router_trace_rank2.jsonl", "\n");
  t = ImportMegatronTraceDir(dir);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("no routing records in 3 rank files"), std::string::npos) << t.status();
  // An empty rank file is a rank without tokens: a zero row.
  Write(dir / "router_trace_rank2.jsonl", Record(4, "decoder", -1, 5, 2, {{1, 0}}));
  t = ImportMegatronTraceDir(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->world_size, 3);
  EXPECT_EQ(t->steps[0].kept.counts, (std::vector<int64_t>{0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(t->layers[0].name, "decoder.5");
}

}  // namespace
}  // namespace dynamoe::placement
