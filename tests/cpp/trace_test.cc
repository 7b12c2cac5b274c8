// The routing trace: round trip, torn and corrupt records, versions, the
// background writer, CSV and JSONL import/export.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "monitor/trace_writer.h"
#include "placement/crc32.h"
#include "placement/trace.h"

namespace dynamoe::placement {
namespace {

TraceStep MakeStep(int64_t step, int64_t layer, int64_t world, int64_t experts, bool with_plan) {
  TraceStep s;
  s.step = step, s.layer = layer;
  std::vector<int64_t> kept(world * experts), routed(world * experts);
  for (size_t i = 0; i < kept.size(); ++i) kept[i] = (step * 31 + static_cast<int64_t>(i) * 7) % 23, routed[i] = kept[i] + i % 3;
  s.kept = *CountMatrix::Make(world, experts, kept);
  s.routed = *CountMatrix::Make(world, experts, routed);
  if (with_plan) {
    Plan p = Plan::None(world, experts);
    p.copies[1] = {0};
    p.predicted_step_seconds = 0.25 + step;
    s.plan = p;
  }
  s.phase_seconds = {0.001 * step, 0.5, 1e-9};
  return s;
}

void ExpectSameStep(const TraceStep& a, const TraceStep& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.layer, b.layer);
  EXPECT_EQ(a.kept.counts, b.kept.counts);
  EXPECT_EQ(a.kept.world_size, b.kept.world_size);
  EXPECT_EQ(a.routed.counts, b.routed.counts);
  ASSERT_EQ(a.plan.has_value(), b.plan.has_value());
  if (a.plan) {
    EXPECT_EQ(a.plan->owner, b.plan->owner);
    EXPECT_EQ(a.plan->copies, b.plan->copies);
    EXPECT_EQ(a.plan->predicted_step_seconds, b.plan->predicted_step_seconds);
  }
  EXPECT_EQ(a.phase_seconds, b.phase_seconds);
}

// Header with one layer, a second layer by record, then steps.
std::string SampleTrace(std::vector<TraceStep>* steps, size_t* last_record_start) {
  TraceLayerSpec a{"moe0", 8, 64, 128, true, false, 2}, b{"moe1", 4, 64, 32, false, true, 4};
  std::string bytes = EncodeTraceHeader(4, 2, {"gate", "dispatch", "experts"}, {a});
  bytes += EncodeLayerRecord(b);
  steps->clear();
  for (int64_t i = 0; i < 5; ++i) {
    steps->push_back(MakeStep(i, i % 2, 4, i % 2 ? 4 : 8, i % 2 == 0));
    if (i == 4) *last_record_start = bytes.size();
    bytes += EncodeStepRecord(steps->back());
  }
  return bytes;
}

TEST(Trace, RoundTrip) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  const absl::StatusOr<Trace> t = ParseTrace(SampleTrace(&steps, &last));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->version, kTraceVersion);
  EXPECT_EQ(t->world_size, 4);
  EXPECT_EQ(t->rank, 2);
  EXPECT_EQ(t->phase_names, (std::vector<std::string>{"gate", "dispatch", "experts"}));
  ASSERT_EQ(t->layers.size(), 2u);
  EXPECT_EQ(t->layers[1].name, "moe1");
  EXPECT_EQ(t->layers[0].d_hidden, 128);
  EXPECT_TRUE(t->layers[0].gated);
  EXPECT_TRUE(t->layers[1].bias);
  EXPECT_EQ(t->layers[0].bytes_per_element, 2);
  ASSERT_EQ(t->steps.size(), steps.size());
  for (size_t i = 0; i < steps.size(); ++i) ExpectSameStep(t->steps[i], steps[i]);
  EXPECT_FALSE(t->stats.truncated);
  EXPECT_EQ(t->stats.records, 6);
}

TEST(Trace, TornLastRecordIsSkippedAtEveryByte) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  const std::string bytes = SampleTrace(&steps, &last);
  for (size_t cut = last; cut < bytes.size(); ++cut) {
    const absl::StatusOr<Trace> t = ParseTrace(std::string_view(bytes).substr(0, cut));
    ASSERT_TRUE(t.ok()) << "cut at " << cut << ": " << t.status();
    ASSERT_EQ(t->steps.size(), steps.size() - 1) << "cut at " << cut;
    EXPECT_EQ(t->stats.truncated, cut > last) << "cut at " << cut;
    if (cut > last) {
      ASSERT_EQ(t->stats.warnings.size(), 1u);
      EXPECT_NE(t->stats.warnings[0].find("cut short"), std::string::npos) << t->stats.warnings[0];
    }
  }
}

TEST(Trace, CutHeaderIsAnError) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  const std::string bytes = SampleTrace(&steps, &last);
  const std::string header = EncodeTraceHeader(4, 2, {"gate", "dispatch", "experts"},
                                               {TraceLayerSpec{"moe0", 8, 64, 128, true, false, 2}});
  for (size_t cut = 0; cut < header.size(); ++cut) {
    const absl::StatusOr<Trace> t = ParseTrace(std::string_view(bytes).substr(0, cut));
    ASSERT_FALSE(t.ok()) << "cut at " << cut;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  }
}

TEST(Trace, CorruptChecksumSkipsTheRecord) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  std::string bytes = SampleTrace(&steps, &last);
  bytes[last + 20] ^= 0x5a;  // inside the last step's payload
  const absl::StatusOr<Trace> t = ParseTrace(bytes);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->steps.size(), steps.size() - 1);
  EXPECT_EQ(t->stats.skipped_corrupt, 1);
  EXPECT_NE(t->stats.warnings.at(0).find("checksum mismatch"), std::string::npos);

  std::string header_bad = SampleTrace(&steps, &last);
  header_bad[25] ^= 0x01;  // inside the header payload
  const absl::StatusOr<Trace> h = ParseTrace(header_bad);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("header checksum"), std::string::npos) << h.status();
}

TEST(Trace, VersionMagicAndUnknownRecords) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  std::string bytes = SampleTrace(&steps, &last);
  std::string v7 = bytes;
  v7[8] = 7;
  const absl::StatusOr<Trace> t7 = ParseTrace(v7);
  ASSERT_FALSE(t7.ok());
  EXPECT_EQ(t7.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(t7.status().message().find("version 7 is not supported"), std::string::npos) << t7.status();

  const absl::StatusOr<Trace> junk = ParseTrace("PK\x03\x04 a zip file, not a trace");
  ASSERT_FALSE(junk.ok());
  EXPECT_NE(junk.status().message().find("not a dynamoe trace"), std::string::npos) << junk.status();

  // A record kind from a newer writer: skipped, the rest still read.
  std::string unknown = EncodeLayerRecord({"x", 1, 1, 1, false, false, 4});
  unknown[8] = 9;  // the kind byte; fix the checksum
  const uint32_t crc = Crc32(unknown.data() + 8, unknown.size() - 8);
  std::memcpy(&unknown[4], &crc, 4);
  const absl::StatusOr<Trace> u = ParseTrace(bytes.substr(0, last) + unknown + bytes.substr(last));
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->stats.skipped_unknown, 1);
  EXPECT_EQ(u->steps.size(), steps.size());
}

TEST(Trace, WriterThreadRecordsEveryStep) {
  char dir[] = "/tmp/dynamoe_trace_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/t.rank0.dmtrace";
  auto w = monitor::TraceWriter::Open(path, 2, 0, {"gate", "experts"});
  ASSERT_TRUE(w.ok()) << w.status();
  const int64_t l0 = (*w)->AddLayer({"moe0", 4, 16, 32, false, false, 4});
  const int64_t l1 = (*w)->AddLayer({"moe1", 4, 16, 32, false, false, 4});
  EXPECT_EQ((*w)->AddLayer({"moe0", 4, 16, 32, false, false, 4}), l0);
  std::vector<TraceStep> steps;
  for (int64_t i = 0; i < 200; ++i) {
    steps.push_back(MakeStep(i, i % 2 ? l1 : l0, 2, 4, i % 3 == 0));
    (*w)->Append(steps.back());
  }
  ASSERT_TRUE((*w)->Close().ok());
  const absl::StatusOr<Trace> t = ReadTraceFile(path);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->steps.size(), steps.size());
  for (size_t i = 0; i < steps.size(); ++i) ExpectSameStep(t->steps[i], steps[i]);
  std::remove(path.c_str());
  rmdir(dir);

  const auto bad = monitor::TraceWriter::Open("/nonexistent-dir/x.dmtrace", 1, 0, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("/nonexistent-dir/x.dmtrace"), std::string::npos) << bad.status();
}

TEST(Trace, CsvRoundTripAndErrors) {
  const std::string csv =
      "step,layer,rank,expert,count\n0,moe0,0,0,5\n0,moe0,1,2,7\n1,moe0,0,1,3\n0,moe1,1,1,9\n";
  const absl::StatusOr<Trace> t = ImportCountsCsv(csv);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->world_size, 2);
  ASSERT_EQ(t->layers.size(), 2u);
  EXPECT_EQ(t->layers[0].num_experts, 3);
  ASSERT_EQ(t->steps.size(), 3u);
  EXPECT_EQ(t->steps[0].kept.counts, (std::vector<int64_t>{5, 0, 0, 0, 0, 7}));
  // Export then import again: the same matrices.
  const absl::StatusOr<Trace> again = ImportCountsCsv(ExportCountsCsv(*t));
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->steps.size(), t->steps.size());
  for (size_t i = 0; i < t->steps.size(); ++i) EXPECT_EQ(again->steps[i].kept.counts, t->steps[i].kept.counts);

  const auto bad_header = ImportCountsCsv("step,layer,expert,count\n");
  EXPECT_NE(bad_header.status().message().find("expected the header"), std::string::npos);
  const auto bad_line = ImportCountsCsv("step,layer,rank,expert,count\n0,moe0,0,x,1\n");
  EXPECT_NE(bad_line.status().message().find("CSV line 2"), std::string::npos) << bad_line.status();
  const auto dup = ImportCountsCsv("step,layer,rank,expert,count\n0,a,0,0,1\n0,a,0,0,2\n");
  EXPECT_NE(dup.status().message().find("appears twice"), std::string::npos) << dup.status();
}

TEST(Trace, JsonlRoutingIsCounted) {
  const std::string jsonl =
      "{\"step\": 0, \"layer\": \"moe0\", \"experts\": [3, 1]}\n"
      "{\"step\": 0, \"layer\": \"moe0\", \"experts\": [3, 0], \"rank\": 1}\n"
      "{\"step\": 1, \"layer\": 7, \"experts\": [2]}\n";
  const absl::StatusOr<Trace> t = ImportRoutingJsonl(jsonl);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->steps.size(), 2u);
  EXPECT_EQ(t->layers[1].name, "7");
  EXPECT_EQ(t->steps[0].kept.counts, (std::vector<int64_t>{0, 1, 0, 1, 1, 0, 0, 1}));
  const auto bad = ImportRoutingJsonl("{\"step\": 0, \"layer\": \"a\", \"experts\": [-1]}\n");
  EXPECT_NE(bad.status().message().find("JSONL line 1"), std::string::npos) << bad.status();
  const auto not_json = ImportRoutingJsonl("\n{oops\n");
  EXPECT_NE(not_json.status().message().find("JSONL line 2"), std::string::npos) << not_json.status();
}

}  // namespace
}  // namespace dynamoe::placement
