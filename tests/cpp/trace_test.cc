// The routing trace: round trip, torn and corrupt records, damage and
// resynchronisation, versions 1 and 2, streaming, the background writer, CSV
// and JSONL import/export and their limits.
#include <malloc.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "monitor/trace_writer.h"
#include "placement/crc32.h"
#include "placement/trace.h"
#include "replay/trace_import.h"
#include "tests/cpp/trace_frames.h"

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
    p.copies[1] = {1};  // expert 1 lives on rank 0 (2 per rank): a copy on rank 1
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

using testing::Payloads;
using testing::U32;
std::string FrameV2(const std::string& payload) { return testing::Frame(payload, 2); }
std::string FrameV1(const std::string& payload) { return testing::Frame(payload, 1); }

// The same trace in format version 1: no markers, no layer numbers.
std::string ToV1(const std::string& v2) {
  std::string out = v2.substr(0, 8) + U32(1);
  const std::vector<std::string> payloads = Payloads(v2);
  for (size_t i = 0; i < payloads.size(); ++i) {
    std::string p = payloads[i];
    if (i > 0 && p[0] == 1) p.erase(1, 4);  // a layer record's number (payload 0 is the header)
    out += FrameV1(p);
  }
  return out;
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
  header_bad[30] ^= 0x01;  // inside the header payload (after magic, version and the 16-byte frame head)
  const absl::StatusOr<Trace> h = ParseTrace(header_bad);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("header checksum"), std::string::npos) << h.status();
}

// Found by the fuzz driver once it framed edited payloads correctly (before,
// every edit failed the checksum): the decoders accepted layer sizes whose
// product overflows int64 in the cost model (UBSan in replay), and plans with
// a copy on the owner's rank. Both are errors naming the record now.
TEST(Trace, DecodersRejectWhatTheChecksumCannot) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  const std::vector<std::string> p = Payloads(SampleTrace(&steps, &last));
  ASSERT_EQ(p.size(), 7u);  // header, layer, 5 steps
  auto trace = [&](size_t i, const std::string& payload) {
    std::string b = std::string("DMOETRC\n") + U32(2);
    for (size_t k = 0; k < p.size(); ++k) b += FrameV2(k == i ? payload : p[k]);
    return b;
  };
  ASSERT_TRUE(ParseTrace(trace(99, "")).ok());  // the unedited payloads, framed here
  // The header's layer 0 "moe0": name length 4, then experts, d_model (at +8).
  const size_t moe0 = p[0].find("moe0");
  ASSERT_NE(moe0, std::string::npos);
  std::string header = p[0];
  header.replace(moe0 + 8, 4, U32(0xffffffffu));  // d_model 2^32 - 1
  absl::StatusOr<Trace> t = ParseTrace(trace(0, header));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("layer 'moe0' has 8 experts, d_model 4294967295"), std::string::npos)
      << t.status();
  // The layer record: kind, number, name "moe1", experts, d_model, d_hidden (at +21).
  std::string layer = p[1];
  ASSERT_EQ(layer.substr(9, 4), "moe1");
  layer.replace(21, 4, U32(1u << 25));
  t = ParseTrace(trace(1, layer));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("d_hidden 33554432"), std::string::npos) << t.status();

  // Step 0 (world 4, 8 experts) carries Plan::None with a copy of expert 1 on
  // rank 0; expert 1's owner is rank 0 too (8 / 4 experts per rank).
  std::string step = p[2];
  const size_t copies = 1 + 8 + 4 + 4 + 4 + 2 * 8 * 4 * 8 + 1 + 8 + 8 * 4;  // where expert 0's copy list starts
  ASSERT_EQ(step.substr(copies, 12), U32(0) + U32(1) + U32(1));  // expert 0: none; expert 1: one copy, on rank 1
  step.replace(copies + 8, 4, U32(0));                            // expert 1: its copy on its owner, rank 0
  t = ParseTrace(trace(2, step));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("expert 1 copies [0] must be distinct ascending ranks other than the owner 0"),
            std::string::npos)
      << t.status();
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
  const std::string unknown = FrameV2("\x09 a newer kind");
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
  // A token routed to no expert names no layer (found by the fuzz driver:
  // such a layer had no expert count, and building the trace threw).
  const auto empty = ImportRoutingJsonl(
      "{\"step\": 0, \"layer\": \"idle\", \"experts\": []}\n{\"step\": 0, \"layer\": \"moe0\", \"experts\": [1]}\n");
  ASSERT_TRUE(empty.ok()) << empty.status();
  ASSERT_EQ(empty->layers.size(), 1u);
  EXPECT_EQ(empty->layers[0].name, "moe0");
}

// A 100-step trace (one layer, world 4, 8 experts); starts[i] is where step
// record i begins, starts[100] the end.
std::string HundredSteps(std::vector<TraceStep>* steps, std::vector<size_t>* starts) {
  std::string bytes = EncodeTraceHeader(4, 0, {"gate", "dispatch", "experts"}, {{"moe0", 8, 64, 128, true, false, 2}});
  steps->clear(), starts->clear();
  for (int64_t i = 0; i < 100; ++i) {
    steps->push_back(MakeStep(i, 0, 4, 8, i % 3 == 0));
    starts->push_back(bytes.size());
    bytes += EncodeStepRecord(steps->back());
  }
  starts->push_back(bytes.size());
  return bytes;
}

// The steps read are exactly `steps` without the `lost` step numbers.
void ExpectAllBut(const Trace& t, const std::vector<TraceStep>& steps, const std::set<int64_t>& lost) {
  std::vector<const TraceStep*> want;
  for (const TraceStep& s : steps)
    if (!lost.count(s.step)) want.push_back(&s);
  ASSERT_EQ(t.steps.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ExpectSameStep(t.steps[i], *want[i]);
}

TEST(Trace, DamagedMiddleCostsOnlyItsRecords) {
  std::vector<TraceStep> steps;
  std::vector<size_t> at;
  const std::string clean = HundredSteps(&steps, &at);
  auto size = [&](int i) { return static_cast<int64_t>(at[i + 1] - at[i]); };

  std::string b = clean;
  b[at[10] + 5] ^= 0x08;  // one flipped length bit of step 10
  absl::StatusOr<Trace> t = ParseTrace(b);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {10});
  EXPECT_EQ(t->stats.skipped_corrupt, 1);
  EXPECT_EQ(t->stats.skipped_regions, 1);
  EXPECT_EQ(t->stats.skipped_bytes, size(10));
  EXPECT_FALSE(t->stats.truncated);
  ASSERT_EQ(t->stats.warnings.size(), 1u);
  EXPECT_NE(t->stats.warnings[0].find("skipped " + std::to_string(size(10)) + " damaged bytes"), std::string::npos)
      << t->stats.warnings[0];

  // Several kinds of damage in one file: a flipped payload bit (20), three
  // records zeroed (40-42), a record torn by a crash and appended after (70),
  // garbage between records (after 80).
  b = clean;
  b[at[20] + 40] ^= 0x01;
  std::fill(b.begin() + at[40], b.begin() + at[43], '\0');
  const std::string garbage = "garbage \xA7REC\xA7RE in between";  // markers too
  b.insert(at[81], garbage);
  b.erase(at[70] + size(70) / 2, size(70) - size(70) / 2);
  t = ParseTrace(b);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {20, 40, 41, 42, 70});
  EXPECT_EQ(t->stats.skipped_regions, 4);
  EXPECT_EQ(t->stats.skipped_bytes, size(20) + size(40) + size(41) + size(42) + size(70) / 2 +
                                            static_cast<int64_t>(garbage.size()));
  EXPECT_GE(t->stats.skipped_corrupt, 4);
  EXPECT_FALSE(t->stats.truncated);
  EXPECT_TRUE(t->stats.damaged());
}

TEST(Trace, EveryFrameHeadBitFlipLosesOneRecord) {
  std::vector<TraceStep> steps;
  std::vector<size_t> at;
  const std::string clean = HundredSteps(&steps, &at);
  for (size_t byte = 0; byte < 16; ++byte)  // marker, length, checksum, head checksum
    for (int bit = 0; bit < 8; ++bit) {
      std::string b = clean;
      b[at[50] + byte] ^= static_cast<char>(1 << bit);
      const absl::StatusOr<Trace> t = ParseTrace(b);
      ASSERT_TRUE(t.ok()) << byte << ":" << bit << " " << t.status();
      ASSERT_EQ(t->steps.size(), 99u) << "byte " << byte << " bit " << bit;
      EXPECT_EQ(t->steps[50].step, 51);
      EXPECT_EQ(t->stats.skipped_corrupt, 1);
    }
}

TEST(Trace, DamageUpToTheEndAndATornTail) {
  std::vector<TraceStep> steps;
  std::vector<size_t> at;
  std::string b = HundredSteps(&steps, &at);
  // Garbage over the last two records: damage running to the end, not a torn record.
  std::fill(b.begin() + at[98] + 3, b.end(), 'x');
  absl::StatusOr<Trace> t = ParseTrace(b);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {98, 99});
  EXPECT_FALSE(t->stats.truncated);
  EXPECT_EQ(t->stats.skipped_bytes, static_cast<int64_t>(at[100] - at[98]));
  EXPECT_NE(t->stats.warnings.at(0).find("the end of the file"), std::string::npos) << t->stats.warnings[0];
  // A flipped bit in 97, then 99 torn: damage, then a torn last record.
  b = HundredSteps(&steps, &at);
  b[at[97] + 30] ^= 0x10;
  b.resize(at[99] + 20);
  t = ParseTrace(b);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {97, 99});
  EXPECT_TRUE(t->stats.truncated);
  EXPECT_EQ(t->stats.skipped_regions, 1);
  EXPECT_EQ(t->stats.skipped_bytes, static_cast<int64_t>(at[98] - at[97] + 20));
}

TEST(Trace, ReadsVersion1AndResynchronisesIt) {
  std::vector<TraceStep> steps;
  size_t last = 0;
  const std::string v1 = ToV1(SampleTrace(&steps, &last));
  absl::StatusOr<Trace> t = ParseTrace(v1);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->version, 1u);
  ASSERT_EQ(t->layers.size(), 2u);
  EXPECT_EQ(t->layers[1].name, "moe1");
  ExpectAllBut(*t, steps, {});
  // A torn last version-1 record, at every byte.
  const size_t last_v1 = v1.size() - (Payloads(SampleTrace(&steps, &last)).back().size() + 8);
  for (size_t cut = last_v1 + 1; cut < v1.size(); ++cut) {
    t = ParseTrace(std::string_view(v1).substr(0, cut));
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->steps.size(), steps.size() - 1);
    EXPECT_TRUE(t->stats.truncated);
    EXPECT_FALSE(t->stats.damaged() && t->stats.skipped_regions > 0) << t->stats.warnings.at(0);
  }
  // A flipped length bit in the middle of a 100-step version-1 file.
  std::vector<size_t> at;
  std::string h = ToV1(HundredSteps(&steps, &at));
  const size_t step30 = at[30] - 8 * 30 - 4;  // version-1 frame heads are 8 bytes shorter
  h[step30 + 1] ^= 0x02;
  t = ParseTrace(h);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {30});
  EXPECT_EQ(t->stats.skipped_corrupt, 1);
}

TEST(Trace, LostLayerDeclarationKeepsItsSteps) {
  std::string b = EncodeTraceHeader(2, 0, {}, {{"moe0", 4, 8, 16, false, false, 4}});
  const size_t l1 = b.size();
  b += EncodeLayerRecord({"moe1", 2, 8, 16, false, false, 4}, 1);
  const size_t l2 = b.size();
  b += EncodeLayerRecord({"moe2", 4, 8, 16, false, false, 4}, 2);
  std::vector<TraceStep> steps;
  for (int64_t i = 0; i < 6; ++i) {
    steps.push_back(MakeStep(i, i % 3, 2, i % 3 == 1 ? 2 : 4, false));
    b += EncodeStepRecord(steps.back());
  }
  b[l1 + 20] ^= 0x40;  // the declaration of moe1
  const absl::StatusOr<Trace> t = ParseTrace(b);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {});
  ASSERT_EQ(t->layers.size(), 3u);
  EXPECT_EQ(t->layers[1].name, "layer1-undeclared");
  EXPECT_EQ(t->layers[1].num_experts, 2);
  EXPECT_EQ(t->layers[2].name, "moe2");  // numbered by its record, not by arrival
  EXPECT_NE(t->stats.warnings.back().find("layer 1 was declared in a damaged region"), std::string::npos);
  EXPECT_EQ(t->stats.skipped_bytes, static_cast<int64_t>(l2 - l1));
  // Without damage, an undeclared layer is still an error.
  std::string undeclared = EncodeTraceHeader(2, 0, {}, {{"moe0", 4, 8, 16, false, false, 4}});
  undeclared += EncodeStepRecord(MakeStep(0, 1, 2, 4, false));
  EXPECT_NE(ParseTrace(undeclared).status().message().find("names layer 1 but 1 are declared"), std::string::npos);
}

// A FILE* over a generator, to watch what the reader asks for.
struct Source {
  std::function<std::string(uint64_t offset)> chunk;  // the bytes from offset on ("" at the end)
  uint64_t offset = 0;
  std::string pending;
  size_t used = 0;          // of pending
  int64_t fail_after = -1;  // bytes delivered before a read error
  size_t heap_peak = 0;
};

ssize_t ReadSource(void* cookie, char* buf, size_t size) {
  auto* s = static_cast<Source*>(cookie);
  s->heap_peak = std::max(s->heap_peak, mallinfo2().uordblks);
  if (s->fail_after >= 0 && s->offset >= static_cast<uint64_t>(s->fail_after)) return errno = EIO, -1;
  if (s->used == s->pending.size()) s->pending = s->chunk(s->offset), s->used = 0;
  const size_t n = std::min(size, s->pending.size() - s->used);
  std::memcpy(buf, s->pending.data() + s->used, n);
  s->used += n;
  s->offset += n;
  return static_cast<ssize_t>(n);
}

// unbuffered: reads reach the source byte by byte as the reader asks for them.
std::FILE* Open(Source* s, bool unbuffered = false) {
  std::FILE* f = fopencookie(s, "r", {ReadSource, nullptr, nullptr, nullptr});
  if (unbuffered) setvbuf(f, nullptr, _IONBF, 0);
  return f;
}

TEST(Trace, StreamsAFileAndChecksTheMagicFirst) {
  // 1 GiB that is no trace: rejected after its first bytes.
  Source junk{[](uint64_t off) { return off < (1ull << 30) ? std::string(4096, 'x') : std::string(); }};
  std::FILE* f = Open(&junk, /*unbuffered=*/true);
  absl::StatusOr<Trace> t = ReadTrace(f);
  std::fclose(f);
  EXPECT_NE(t.status().message().find("not a dynamoe trace"), std::string::npos) << t.status();
  EXPECT_LE(junk.offset, 64u);

  // 64 MiB of records the reader skips (an unknown kind), then 10 steps: the
  // heap never holds the file, and warnings stay bounded.
  const std::string header = EncodeTraceHeader(4, 0, {}, {{"moe0", 8, 64, 128, true, false, 2}});
  const std::string filler = FrameV2("\x09" + std::string((1 << 20) - 1, 'f'));
  std::string tail;
  std::vector<TraceStep> steps;
  for (int64_t i = 0; i < 10; ++i) steps.push_back(MakeStep(i, 0, 4, 8, false)), tail += EncodeStepRecord(steps.back());
  const uint64_t body = 64 * filler.size();
  Source big{[&](uint64_t off) {
    if (off < header.size()) return header.substr(off);
    if (off < header.size() + body) return filler.substr((off - header.size()) % filler.size());
    return off - header.size() - body < tail.size() ? tail.substr(off - header.size() - body) : std::string();
  }};
  const size_t heap_before = mallinfo2().uordblks;
  f = Open(&big);
  t = ReadTrace(f);
  std::fclose(f);
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAllBut(*t, steps, {});
  EXPECT_EQ(t->stats.skipped_unknown, 64);
  EXPECT_EQ(t->stats.warnings.size(), TraceReadStats::kMaxWarnings + 1);
  EXPECT_LT(big.heap_peak - heap_before, 16u << 20) << "the reader buffered " << big.heap_peak - heap_before;
}

TEST(Trace, AReadErrorIsAnErrorNotAPartialTrace) {
  std::vector<TraceStep> steps;
  std::vector<size_t> at;
  const std::string bytes = HundredSteps(&steps, &at);
  Source s{[&](uint64_t off) { return bytes.substr(off, 100); }};
  s.fail_after = static_cast<int64_t>(at[50]);
  std::FILE* f = Open(&s);
  const absl::StatusOr<Trace> t = ReadTrace(f);
  std::fclose(f);
  ASSERT_FALSE(t.ok()) << t->steps.size() << " steps read";
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss) << t.status();
  EXPECT_NE(t.status().message().find("read error at byte"), std::string::npos) << t.status();

  Source whole{[&](uint64_t off) { return bytes.substr(off, 100); }};
  f = Open(&whole);
  const absl::StatusOr<Trace> ok = ReadTrace(f);
  std::fclose(f);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ExpectAllBut(*ok, steps, {});
}

TEST(Trace, ImportsRejectHugeMatricesAndOverflowingCounts) {
  const std::string head = "step,layer,rank,expert,count\n";
  // Two lines naming rank and expert 2^20 - 1: 2^40 cells, not an allocation.
  auto huge = ImportCountsCsv(head + "0,a,1048575,1048575,1\n");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("at most 2^24 cells per matrix"), std::string::npos) << huge.status();
  // Many small lines, each a step of a 2^23-cell matrix: bounded in all.
  std::string sparse = head;
  for (int s = 0; s < 20; ++s) sparse += std::to_string(s) + ",a,1023,8191,1\n";
  auto many = ImportCountsCsv(sparse);
  ASSERT_FALSE(many.ok());
  EXPECT_NE(many.status().message().find("2^27 in all"), std::string::npos) << many.status();
  // Counts whose sum would overflow int64.
  auto overflow = ImportCountsCsv(head + "0,a,0,0,9223372036854775807\n0,a,1,0,9223372036854775807\n");
  ASSERT_FALSE(overflow.ok());
  EXPECT_NE(overflow.status().message().find("CSV line 2"), std::string::npos) << overflow.status();
  auto sum = ImportCountsCsv(head + "0,a,0,0,1099511627776\n0,a,1,0,1\n");  // 2^40 + 1
  ASSERT_FALSE(sum.ok());
  EXPECT_NE(sum.status().message().find("sum to at most 2^40"), std::string::npos) << sum.status();
  EXPECT_TRUE(ImportCountsCsv(head + "0,a,0,0,1099511627776\n").ok());

  // A deeply nested JSONL value: rejected without recursion.
  const std::string deep = "{\"step\": 0, \"layer\": \"a\", \"experts\": " + std::string(1000000, '[') +
                           std::string(1000000, ']') + "}\n";
  auto nested = ImportRoutingJsonl(deep);
  ASSERT_FALSE(nested.ok());
  EXPECT_NE(nested.status().message().find("JSONL line 1: nested deeper than 8 levels"), std::string::npos)
      << nested.status().message().substr(0, 200);
  auto array = ImportRoutingJsonl("{\"step\": 0, \"layer\": \"a\", \"experts\": [[1]]}\n");
  EXPECT_NE(array.status().message().find("got a array"), std::string::npos) << array.status();
  auto wide = ImportRoutingJsonl("{\"step\": 0, \"layer\": \"a\", \"experts\": [1048575], \"rank\": 1048575}\n");
  EXPECT_NE(wide.status().message().find("at most 2^24 cells"), std::string::npos) << wide.status();
  // A long bad line is quoted cut short.
  auto long_line = ImportCountsCsv(head + std::string(100000, '7') + "\n");
  EXPECT_LT(long_line.status().message().size(), 400u);
}

}  // namespace
}  // namespace dynamoe::placement
