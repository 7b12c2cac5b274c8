// Every placement policy across real processes (placement_worker.cc), world
// sizes 2, 3 and 4, fp64, fp32 and bf16, sequential and overlap schedules:
// outputs and gradients equal `none`, plans identical on every rank
// (DYNAMOE_CHECK_PLAN=1 also checks each step), copies where the skew calls
// for them; and hand-made uneven quotas forced into the layer, likewise. A
// slow modelled GPU (1 MFLOP/s) makes copies pay off on these tiny experts;
// interval 2 exercises plan reuse.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "tests/cpp/gloo_skip.h"
#include "tests/cpp/worker_expect.h"
#include "tools/local_launch.h"

namespace {

struct Case {
  std::string name;  // the ctest name's last part
  int world;
  std::vector<std::string> args;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class PlacementEpTest : public testing::TestWithParam<Case> {};

TEST_P(PlacementEpTest, EveryPolicyMatchesNone) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  dynamoe::tools::LaunchOptions options;
  options.env = {{"DYNAMOE_LOG_LEVEL", "warning"},
                 {"DYNAMOE_CHECK_PLAN", "1"},
                 {"DYNAMOE_GPU_FLOPS", "1e6"},
                 {"DYNAMOE_PLACEMENT_INTERVAL", "2"}};
  const auto results = dynamoe::tools::LaunchLocal(DYNAMOE_PLACEMENT_WORKER, GetParam().args, GetParam().world, options);
  const std::string all = dynamoe::tools::DescribeResults(results);
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << all;
  // The hot expert was copied by every policy but none (the worker checks
  // each step; this is the summary rank 0 printed, "<dtype>/hot/<policy>: N copies").
  for (const char* policy : {"fastermoe", "adaptive", "eplb"})
    EXPECT_EQ(results[0].out.find(std::string("hot/") + policy + ": 0 copies"), std::string::npos) << all;
}

INSTANTIATE_TEST_SUITE_P(
    Worlds, PlacementEpTest,
    testing::Values(Case{"W2_Fp64Fp32Bf16", 2, {"tokens=13,7", "dtypes=double,float,bfloat16"}},
                    Case{"W4_Fp64", 4, {"tokens=13,0,17,9"}},
                    Case{"W4_Gated12ExpertsBf16", 4, {"tokens=6,11,0,20", "gated=1", "experts=12", "dtypes=bfloat16"}},
                    // The policies' own quotas on the overlap schedule.
                    Case{"W3_OverlapFp64Bf16", 3,
                         {"tokens=13,0,17", "experts=6", "policies=fastermoe,adaptive,eplb",
                          "schedules=overlap:1:2,overlap:2:3", "dtypes=double,bfloat16"}}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

// Hand-made quotas, uneven on purpose (placement_worker.cc ForcedPlan: one
// holder gets most rows, holders' own rows sent away, a source split over
// three holders out of rank order, quotas that cover only some sources), on
// the sequential and overlap schedules: every output and gradient equals
// `none`'s.
class QuotaEpTest : public testing::TestWithParam<Case> {};

TEST_P(QuotaEpTest, UnevenQuotasMatchNone) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  dynamoe::tools::LaunchOptions options;
  options.env = {{"DYNAMOE_LOG_LEVEL", "warning"}, {"DYNAMOE_CHECK_PLAN", "1"}, {"DYNAMOE_GPU_FLOPS", "1e6"}};
  const auto results = dynamoe::tools::LaunchLocal(DYNAMOE_PLACEMENT_WORKER, GetParam().args, GetParam().world, options);
  const std::string all = dynamoe::tools::DescribeResults(results);
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << all;
  // The forced plans ran: expert 1 on every rank and expert E-1 on one more,
  // 3 steps (rank 0's summary "<dtype>/<routing>/<policy>@<schedule>: N copies").
  const std::string copies = std::to_string(3 * GetParam().world) + " copies over 3 steps";
  std::string schedules;  // the last schedules= argument wins, as in the worker
  for (const std::string& a : GetParam().args)
    if (a.rfind("schedules=", 0) == 0) schedules = a.substr(10);
  for (const char* pattern : {"most", "away", "three", "stale"})
    for (const std::string& schedule : dynamoe::testing::Split(schedules)) {
      const std::string label = std::string("/hot/quota-") + pattern + (schedule == "sequential" ? "" : "@" + schedule);
      EXPECT_NE(results[0].out.find(label + ": " + copies), std::string::npos) << label << "\n" << all;
    }
}

// DYNAMOE_CHECK_PLAN compares quotas too: ranks that force the same copies
// but other quotas stop at the first step, naming the ranks.
TEST(QuotaEpCheck, DifferentQuotasFailThePlanCheck) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  dynamoe::tools::LaunchOptions options;
  options.env = {{"DYNAMOE_LOG_LEVEL", "warning"}, {"DYNAMOE_CHECK_PLAN", "1"}};
  const auto results = dynamoe::tools::LaunchLocal(
      DYNAMOE_PLACEMENT_WORKER, {"policies=quota-diverge", "routings=hot", "tokens=13,7,9", "experts=6"}, 3, options);
  const std::string all = dynamoe::tools::DescribeResults(results);
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 3) << all;  // a dynamoe::Error
    EXPECT_NE(r.err.find("ranks computed different placement plans"), std::string::npos) << all;
  }
}

const std::vector<std::string> kQuotaArgs = {"policies=quota-most,quota-away,quota-three,quota-stale",
                                             "routings=hot,equal",
                                             "schedules=sequential,overlap:1:2,overlap:2:3"};
std::vector<std::string> With(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

INSTANTIATE_TEST_SUITE_P(
    Worlds, QuotaEpTest,
    testing::Values(Case{"W3_Fp64", 3, With(kQuotaArgs, {"tokens=13,0,17", "experts=6"})},
                    Case{"W4_Fp64", 4, With(kQuotaArgs, {"tokens=13,0,17,9"})},
                    Case{"W4_GatedFp32Bf16", 4,
                         With(kQuotaArgs, {"tokens=6,11,0,20", "gated=1", "experts=12", "dtypes=float,bfloat16",
                                           "schedules=sequential,overlap:2:3"})}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
