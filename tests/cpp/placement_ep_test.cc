// Every placement policy across real processes (placement_worker.cc), world
// sizes 2 and 4, fp64, fp32 and bf16: outputs and gradients equal `none`, plans identical on every
// rank (DYNAMOE_CHECK_PLAN=1 also checks each step), copies where the skew
// calls for them. A slow modelled GPU (1 MFLOP/s) makes copies pay off on
// these tiny experts; interval 2 exercises plan reuse.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "tests/cpp/gloo_skip.h"
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
                    Case{"W4_Gated12ExpertsBf16", 4, {"tokens=6,11,0,20", "gated=1", "experts=12", "dtypes=bfloat16"}}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
