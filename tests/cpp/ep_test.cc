// Multi-process expert parallelism: each test starts one worker process per
// rank (tests/cpp/ep_worker.cc) with torchrun's variables, as torchrun would.
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "monitor/trace_recorder.h"
#include "placement/trace.h"
#include "tests/cpp/gloo_skip.h"
#include "tools/local_launch.h"

namespace {

using dynamoe::tools::RankResult;

std::vector<RankResult> Launch(int world, const std::vector<std::string>& args,
                               std::map<int, std::map<std::string, std::string>> env_of_rank = {}) {
  dynamoe::tools::LaunchOptions options;
  options.env = {{"DYNAMOE_LOG_LEVEL", "warning"}};
  options.env_of_rank = std::move(env_of_rank);
  return dynamoe::tools::LaunchLocal(DYNAMOE_EP_WORKER, args, world, options);
}

double Elapsed(const RankResult& r) {
  const auto pos = r.out.find("elapsed_s=");
  return pos == std::string::npos ? -1 : std::stod(r.out.substr(pos + 10));
}

struct EqualCase {
  std::string name;  // the ctest name's last part
  int world;
  std::vector<std::string> args;
};
void PrintTo(const EqualCase& c, std::ostream* os) { *os << c.name; }

class EpEqualTest : public testing::TestWithParam<EqualCase> {};

// Each scenario's worker exits 0 only when every check of every rank passed.
TEST_P(EpEqualTest, MatchesSingleProcessLayer) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const auto results = Launch(GetParam().world, GetParam().args);
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dynamoe::tools::DescribeResults(results);
}

INSTANTIATE_TEST_SUITE_P(
    Worlds, EpEqualTest,
    testing::Values(
        EqualCase{"W2_RankWithoutTokens", 2, {"top_k=2", "tokens=5,0"}},
        EqualCase{"W3_Top1GatedUneven", 3, {"top_k=1", "gated=1", "tokens=5,0,17"}},
        EqualCase{"W4_Top4", 4, {"top_k=4", "tokens=5,0,17,9"}},
        EqualCase{"W4_CapacityPerSourceRank", 4, {"top_k=2", "capacity=1.0", "tokens=12,3,17,9"}},
        EqualCase{"W3_HeavyDrops", 3, {"top_k=2", "capacity=0.5", "tokens=30,7,1"}},
        EqualCase{"W4_TwoEpGroups", 4, {"top_k=2", "ep_size=2", "tokens=8,0,13,5"}},
        EqualCase{"W4_PureDataParallel", 4, {"top_k=2", "ep_size=1", "tokens=8,3,13,5"}},
        EqualCase{"W2_Float32GatedCapacity", 2, {"top_k=2", "dtype=float", "gated=1", "capacity=1.25", "tokens=40,9"}},
        EqualCase{"W3_Bfloat16", 3, {"top_k=2", "dtype=bfloat16", "tokens=20,0,11"}},
        // Custom experts (ExpertFactory) against a plain per-token loop.
        EqualCase{"W3_CustomExperts", 3, {"scenario=custom", "experts=6", "top_k=2", "tokens=9,0,14"}},
        EqualCase{"W4_CustomExpertsTwoEpGroups", 4,
                  {"scenario=custom", "experts=8", "top_k=3", "ep_size=2", "tokens=7,12,0,5"}},
        // bias_update_rate > 0 against the update computed from every rank's tokens.
        EqualCase{"W3_BiasUpdate", 3, {"scenario=bias", "experts=6", "top_k=2", "capacity=0.5", "tokens=20,9,14"}},
        EqualCase{"W4_BiasUpdateTwoEpGroups", 4,
                  {"scenario=bias", "experts=8", "top_k=2", "capacity=0.5", "ep_size=2", "tokens=20,9,14,6"}}),
    [](const testing::TestParamInfo<EqualCase>& info) { return info.param.name; });

// DYNAMOE_TRACE: each rank writes its file, and the count matrices the ranks
// all-gathered are recorded identically, with each row the tokens * k its
// rank routed (dropless).
TEST(EpTraceTest, EveryRankRecordsTheGatheredCounts) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  char dir[] = "/tmp/dynamoe_eptrace_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string prefix = std::string(dir) + "/run";
  std::map<int, std::map<std::string, std::string>> env;
  for (int r = 0; r < 2; ++r) env[r]["DYNAMOE_TRACE"] = prefix;
  const auto results = Launch(2, {"top_k=2", "tokens=12,7"}, env);
  for (const auto& r : results) ASSERT_EQ(r.exit_code, 0) << dynamoe::tools::DescribeResults(results);
  std::vector<std::vector<dynamoe::placement::TraceStep>> ep_steps(2);
  for (int r = 0; r < 2; ++r) {
    const std::string path = dynamoe::monitor::TraceRecorder::PathFor(prefix, r);
    const auto t = dynamoe::placement::ReadTraceFile(path);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->rank, r);
    EXPECT_EQ(t->phase_names.size(), 8u);
    EXPECT_FALSE(t->stats.truncated);
    for (const auto& s : t->steps)
      if (s.kept.world_size == 2) ep_steps[r].push_back(s);  // the worker's single-process reference has 1
    std::remove(path.c_str());
  }
  rmdir(dir);
  ASSERT_FALSE(ep_steps[0].empty());
  ASSERT_EQ(ep_steps[0].size(), ep_steps[1].size());
  const int64_t tokens[2] = {12, 7};
  for (size_t i = 0; i < ep_steps[0].size(); ++i) {
    const auto &a = ep_steps[0][i], &b = ep_steps[1][i];
    EXPECT_EQ(a.step, b.step);
    EXPECT_EQ(a.kept.counts, b.kept.counts);
    EXPECT_EQ(a.routed.counts, b.routed.counts);
    for (int r = 0; r < 2; ++r) {
      int64_t row = 0;
      for (int64_t e = 0; e < a.kept.num_experts; ++e) row += a.kept.at(r, e);
      EXPECT_EQ(row, tokens[r] * 2) << "step " << a.step << " rank " << r;
    }
  }
}

TEST(EpCommunicatorTest, EveryCollectiveOnThreeRanks) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const auto results = Launch(3, {"scenario=collectives"});
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dynamoe::tools::DescribeResults(results);
}

constexpr double kTimeout = 3.0;
std::map<int, std::map<std::string, std::string>> WithTimeout(int world) {
  std::map<int, std::map<std::string, std::string>> env;
  for (int r = 0; r < world; ++r) env[r]["DYNAMOE_TIMEOUT_S"] = std::to_string(kTimeout);
  return env;
}

TEST(EpFailureTest, RankExitingMidStepIsNamedByEverySurvivor) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const int world = 3;
  const auto results = Launch(world, {"scenario=die"}, WithTimeout(world));
  EXPECT_EQ(results[2].exit_code, 0) << dynamoe::tools::DescribeResults(results);  // the rank that exits
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(results[r].exit_code, 3) << dynamoe::tools::DescribeResults(results);
    EXPECT_NE(results[r].err.find("layer 'moe' phase 'combine'"), std::string::npos) << results[r].err;
    EXPECT_NE(results[r].err.find("Cause: rank 2 stopped responding"), std::string::npos) << results[r].err;
    // The heartbeat names the dead rank; the bound is the README's (deadline
    // + 5 s), generous on a loaded machine.
    EXPECT_GT(Elapsed(results[r]), 0);
    EXPECT_LT(Elapsed(results[r]), kTimeout + 5) << "survivors must fail within DYNAMOE_TIMEOUT_S + 5 s";
  }
}

TEST(EpFailureTest, HungRankIsNamedWithinTheDeadline) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const int world = 2;
  const double hang_s = 8;
  const auto results = Launch(world, {"scenario=hang", "hang_s=" + std::to_string(static_cast<int>(hang_s))},
                              WithTimeout(world));
  EXPECT_EQ(results[0].exit_code, 3) << dynamoe::tools::DescribeResults(results);
  EXPECT_NE(results[0].err.find("DEADLINE_EXCEEDED"), std::string::npos) << results[0].err;
  EXPECT_NE(results[0].err.find("layer 'moe' phase 'combine'"), std::string::npos) << results[0].err;
  EXPECT_NE(results[0].err.find("Cause: rank 1 is alive but has not reached this collective"), std::string::npos)
      << results[0].err;
  // The deadline, not the peer's return, ended the wait: raised after most of
  // DYNAMOE_TIMEOUT_S (the diagnosis starts shortly before it) and before the
  // stalled rank woke up (5 s of slack for a loaded machine).
  EXPECT_GE(Elapsed(results[0]), kTimeout * 0.5);
  EXPECT_LT(Elapsed(results[0]), hang_s);
}

TEST(EpFailureTest, DivergedLayersFailOnEveryRank) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const int world = 3;
  const auto results = Launch(world, {"scenario=diverge"}, WithTimeout(world));
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 3) << dynamoe::tools::DescribeResults(results);
    EXPECT_NE(r.err.find("ranks diverged"), std::string::npos) << r.err;
  }
  EXPECT_NE(results[0].err.find("rank 1 (world rank 1) is in layer hash"), std::string::npos) << results[0].err;
}

TEST(EpFailureTest, MismatchedConfigurationIsNamedOnEveryRank) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const int world = 3;
  auto env = WithTimeout(world);
  env[1]["DYNAMOE_PLACEMENT"] = "adaptive";
  const auto results = Launch(world, {"scenario=config"}, env);
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 3) << dynamoe::tools::DescribeResults(results);
    EXPECT_NE(r.err.find("configuration differs between ranks: DYNAMOE_PLACEMENT="), std::string::npos) << r.err;
  }
}

TEST(EpFailureTest, MissingLauncherVariablesAreNamed) {
  const auto results = Launch(1, {"scenario=config"}, {{0, {{"MASTER_ADDR", ""}}}});
  EXPECT_EQ(results[0].exit_code, 3);
  EXPECT_NE(results[0].err.find("MASTER_ADDR is not set"), std::string::npos) << results[0].err;
}

}  // namespace

// The fault suite: one rank killed or frozen at a chosen collective
// (DYNAMOE_FAULT). Every survivor must raise within DYNAMOE_TIMEOUT_S + 5 s,
// naming the layer, the phase and the peer, and exit by itself within
// DYNAMOE_TIMEOUT_S + 10 s; a frozen rank is killed by the launcher at the end.
namespace fault {

struct Case {
  std::string name;
  int world, ep_size;
  std::map<std::string, std::string> env;
  int faulty;                  // the world rank that dies or freezes
  std::vector<std::string> every_survivor_names;  // substrings of each survivor's error
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Longer than the other failure tests' 3 s: the start-up check runs under the
// same deadline, and 3 or 4 ranks loading libtorch on 2 loaded cores can take 3 s.
constexpr double kFaultTimeout = 5.0;

class FaultTest : public testing::TestWithParam<Case> {};

TEST_P(FaultTest, SurvivorsNameTheFaultWithinTheDeadline) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  const Case& c = GetParam();
  dynamoe::tools::LaunchOptions options;
  options.env = {{"DYNAMOE_LOG_LEVEL", "error"}, {"DYNAMOE_TIMEOUT_S", std::to_string(kFaultTimeout)},
                 {"DYNAMOE_GPU_FLOPS", "1e6"}};  // a slow modelled GPU: the policies copy the hot expert
  for (const auto& [k, v] : c.env) options.env[k] = v;
  options.timeout_s = kFaultTimeout + 10 + 5;  // + start-up; then the launcher kills what is left (the frozen rank)
  const auto results = dynamoe::tools::LaunchLocal(
      DYNAMOE_EP_WORKER, {"scenario=fault", "experts=6", "ep_size=" + std::to_string(c.ep_size)}, c.world, options);
  const std::string all = dynamoe::tools::DescribeResults(results);
  EXPECT_EQ(results[c.faulty].exit_code, 128 + 9) << all;  // SIGKILL: its own, or the launcher's after SIGSTOP
  for (int r = 0; r < c.world; ++r) {
    if (r == c.faulty) continue;
    EXPECT_EQ(results[r].exit_code, 3) << "rank " << r << " must exit by itself with the error\n" << all;
    for (const auto& s : c.every_survivor_names)
      EXPECT_NE(results[r].err.find(s), std::string::npos) << "rank " << r << " does not name \"" << s << "\"\n"
                                                           << results[r].err;
    // The README's bound (deadline + 5 s): 100% slack on a 5 s deadline.
    EXPECT_GT(Elapsed(results[r]), 0) << all;
    EXPECT_LE(Elapsed(results[r]), kFaultTimeout + 5) << "rank " << r << " raised late\n" << results[r].err;
  }
  // "Exits by itself" is the exit code 3 above: the launcher kills whatever
  // outlives options.timeout_s (128 + 9), so no wall-clock check is needed.
}

INSTANTIATE_TEST_SUITE_P(
    Faults, FaultTest,
    testing::Values(
        Case{"KilledInBackwardSequential", 3, 3, {{"DYNAMOE_FAULT", "kill,combine,backward,2,1"}}, 2,
             {"layer 'moe' phase '", "(backward)", "rank 2"}},
        Case{"KilledInBackwardOverlap", 3, 3,
             {{"DYNAMOE_FAULT", "kill,combine,backward,2,1"}, {"DYNAMOE_SCHEDULE", "overlap"},
              {"DYNAMOE_OVERLAP_DEGREE", "2"}, {"DYNAMOE_GROUP_SIZE", "1"}},
             2,
             {"layer 'moe' phase '", "(backward)", "rank 2"}},
        Case{"KilledInCopiedExpertsWeightExchange", 3, 3,
             {{"DYNAMOE_FAULT", "kill,shadow_broadcast,forward,1,1"}, {"DYNAMOE_PLACEMENT", "fastermoe"}}, 1,
             {"layer 'moe' phase 'shadow_broadcast'", "rank 1"}},
        Case{"KilledInCopiedExpertsGradientReturn", 3, 3,
             {{"DYNAMOE_FAULT", "kill,shadow_reduce,backward,1,1"}, {"DYNAMOE_PLACEMENT", "fastermoe"}}, 1,
             {"layer 'moe' phase 'shadow_reduce' (backward)", "rank 1"}},
        Case{"StoreHostFrozenWithThreeGroups", 4, 2, {{"DYNAMOE_FAULT", "stop,dispatch,forward,0,2"}}, 0,
             {"is unreachable: world rank 0 died or is frozen", "phase '"}},
        Case{"PeerFrozenWithThreeOverlapStagesInFlight", 3, 3,
             {{"DYNAMOE_FAULT", "stop,dispatch,forward,2,3"}, {"DYNAMOE_SCHEDULE", "overlap"},
              {"DYNAMOE_OVERLAP_DEGREE", "3"}, {"DYNAMOE_GROUP_SIZE", "1"}},
             2, {"layer 'moe' phase '", "rank 2"}}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace fault
