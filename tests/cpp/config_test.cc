#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "common/status.h"
#include "config/config.h"
#include "config/placement_config.h"

namespace dynamoe::runtime {
namespace {

Config Parse(const std::map<std::string, std::string>& env, std::vector<std::string>* warnings = nullptr) {
  auto c = ParseConfig(env, warnings);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

std::string Error(const std::map<std::string, std::string>& env) {
  auto c = ParseConfig(env, nullptr);
  EXPECT_FALSE(c.ok());
  return std::string(c.status().message());
}

TEST(Config, DefaultsFromTable) {
  const Config c = Parse({});
  EXPECT_EQ(c.Get("DYNAMOE_PLACEMENT"), "none");
  EXPECT_EQ(c.Get("DYNAMOE_SCHEDULE"), "sequential");
  EXPECT_EQ(c.GetInt("DYNAMOE_GROUP_SIZE"), 4);
  EXPECT_DOUBLE_EQ(c.GetFloat("DYNAMOE_TIMEOUT_S"), 300);
  EXPECT_FALSE(c.GetBool("DYNAMOE_CHECK_PLAN"));
  EXPECT_EQ(c.Get("DYNAMOE_METRICS_ADDR"), "127.0.0.1");
}

TEST(Config, CanonicalValues) {
  const Config c = Parse({{"DYNAMOE_PLACEMENT", " Adaptive "}, {"DYNAMOE_CHECK_PLAN", "yes"},
                          {"DYNAMOE_NET_BW", "1e10"}, {"DYNAMOE_OVERLAP_DEGREE", "0"}});
  EXPECT_EQ(c.Get("DYNAMOE_PLACEMENT"), "adaptive");
  EXPECT_EQ(c.Get("DYNAMOE_CHECK_PLAN"), "1");
  EXPECT_DOUBLE_EQ(c.GetFloat("DYNAMOE_NET_BW"), 1e10);
  EXPECT_EQ(c.GetInt("DYNAMOE_OVERLAP_DEGREE"), 0);
}

TEST(Config, BadValuesNameVariableValueAndAccepted) {
  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> cases = {
      {{{"DYNAMOE_PLACEMENT", "greedy"}},
       "DYNAMOE_PLACEMENT=\"greedy\" is invalid: expected one of none, fastermoe, adaptive, eplb"},
      {{{"DYNAMOE_GROUP_SIZE", "4x"}}, "DYNAMOE_GROUP_SIZE=\"4x\" is invalid: expected an integer in [1, 65536]"},
      {{{"DYNAMOE_GROUP_SIZE", "0"}}, "DYNAMOE_GROUP_SIZE=\"0\" is invalid: expected an integer in [1, 65536]"},
      {{{"DYNAMOE_TIMEOUT_S", "nan"}}, "DYNAMOE_TIMEOUT_S=\"nan\" is invalid: expected a number in [0.001, 1e+07]"},
      {{{"DYNAMOE_CHECK_PLAN", "maybe"}},
       "DYNAMOE_CHECK_PLAN=\"maybe\" is invalid: expected 0/1, true/false, yes/no or on/off"},
      {{{"DYNAMOE_METRICS_PORT", "70000"}},
       "DYNAMOE_METRICS_PORT=\"70000\" is invalid: expected an integer in [0, 65535]"},
      {{{"FMOE_FASTER_GROUP_SIZE", "-2"}},
       "FMOE_FASTER_GROUP_SIZE=\"-2\" is invalid: expected an integer in [1, 65536]"},
  };
  for (const auto& [env, message] : cases) EXPECT_EQ(Error(env), message);
  EXPECT_NE(Error({{"FMOE_FASTER_SHADOW_ENABLE", "sure"}}).find("expected 0 or 1"), std::string::npos);
}

TEST(Config, FastMoEAliases) {
  Config c = Parse({{"FMOE_FASTER_SHADOW_ENABLE", "1"}, {"FMOE_FASTER_SCHEDULE_ENABLE", "1"},
                    {"FMOE_FASTER_GROUP_SIZE", "2"}, {"FMOE_FASTER_GLBPLC_NETBW", "1e9"},
                    {"FMOE_FASTER_GLBPLC_GPUTP", "5e12"}, {"FMOE_FASTER_GLBPLC_ALPHA", "4"}});
  EXPECT_EQ(c.Get("DYNAMOE_PLACEMENT"), "fastermoe");
  EXPECT_EQ(c.Get("DYNAMOE_SCHEDULE"), "overlap");
  EXPECT_EQ(c.GetInt("DYNAMOE_GROUP_SIZE"), 2);
  EXPECT_DOUBLE_EQ(c.GetFloat("DYNAMOE_NET_BW"), 1e9);
  EXPECT_DOUBLE_EQ(c.GetFloat("DYNAMOE_GPU_FLOPS"), 5e12);
  EXPECT_DOUBLE_EQ(c.GetFloat("DYNAMOE_ALPHA"), 4);
  EXPECT_EQ(Parse({{"FMOE_FASTER_SHADOW_ENABLE", "0"}}).Get("DYNAMOE_PLACEMENT"), "none");
}

TEST(Config, DynamoeNameWinsOverAliasWithWarning) {
  std::vector<std::string> warnings;
  Config c = Parse({{"FMOE_FASTER_SHADOW_ENABLE", "1"}, {"DYNAMOE_PLACEMENT", "eplb"}}, &warnings);
  EXPECT_EQ(c.Get("DYNAMOE_PLACEMENT"), "eplb");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0], "DYNAMOE_PLACEMENT=eplb overrides FMOE_FASTER_SHADOW_ENABLE=1");
}

TEST(Config, UnknownNamesWarnWithClosest) {
  std::vector<std::string> warnings;
  Parse({{"DYNAMOE_SHADOWMAX", "3"}, {"DYNAMOE_TIMEOUT", "5"}, {"FMOE_FASTER_GLBPLC_DMODEL", "1024"},
         {"OTHER_VAR", "1"}},
        &warnings);
  ASSERT_EQ(warnings.size(), 3u);
  EXPECT_EQ(warnings[0], "unknown variable DYNAMOE_SHADOWMAX is ignored; did you mean DYNAMOE_SHADOW_MAX?");
  EXPECT_EQ(warnings[1], "unknown variable DYNAMOE_TIMEOUT is ignored; did you mean DYNAMOE_TIMEOUT_S?");
  EXPECT_NE(warnings[2].find("FMOE_FASTER_GLBPLC_DMODEL has no effect"), std::string::npos);
}

TEST(Config, HashCoversSharedSettingsOnly) {
  const Config base = Parse({});
  EXPECT_EQ(base.Hash(), Parse({}).Hash());
  EXPECT_EQ(base.Hash(), Parse({{"DYNAMOE_TRACE", "/tmp/t"}, {"DYNAMOE_LOG_LEVEL", "debug"}}).Hash());
  const Config other = Parse({{"DYNAMOE_SHADOW_MAX", "2"}, {"DYNAMOE_SCHEDULE", "overlap"}});
  EXPECT_NE(base.Hash(), other.Hash());
  EXPECT_EQ(base.FirstDifference(other), "DYNAMOE_SCHEDULE");  // table order
  EXPECT_EQ(base.FirstDifference(base), "");
}

TEST(Config, EditDistance) {
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3u);
  EXPECT_EQ(EditDistance("", "abc"), 3u);
  EXPECT_EQ(EditDistance("same", "same"), 0u);
}

TEST(Config, TableEntriesAreWellFormed) {
  for (const auto& e : ConfigTable()) {
    EXPECT_EQ(e.name.rfind("DYNAMOE_", 0), 0u) << e.name;
    EXPECT_FALSE(e.help.empty()) << e.name;
    EXPECT_TRUE(ParseConfig({{e.name, e.default_value}}, nullptr).ok()) << e.name << " default invalid";
  }
}

TEST(Config, ReadmeTableMatchesCode) {
  std::ifstream in(std::string(DYNAMOE_SOURCE_DIR) + "/README.md");
  ASSERT_TRUE(in.good()) << "README.md not found";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string readme = ss.str();
  const std::string begin = "<!-- env-table:begin -->\n", end = "<!-- env-table:end -->";
  const size_t b = readme.find(begin), e = readme.find(end);
  ASSERT_NE(b, std::string::npos) << "README.md lacks " << begin;
  ASSERT_NE(e, std::string::npos) << "README.md lacks " << end;
  EXPECT_EQ(readme.substr(b + begin.size(), e - b - begin.size()), EnvTableMarkdown())
      << "README's variable table differs from the code; regenerate it with scripts/update_readme.sh";
}

// The cost model's ranks per node (ClusterFromConfig, which every policy and
// the schedule use) under a launcher's LOCAL_WORLD_SIZE (nullptr: unset).
int64_t RanksPerNodeUnder(const char* local_world_size, const char* configured, int64_t world) {
  unsetenv("LOCAL_RANK");  // the launch parser checks it against LOCAL_WORLD_SIZE
  if (local_world_size)
    setenv("LOCAL_WORLD_SIZE", local_world_size, 1);
  else
    unsetenv("LOCAL_WORLD_SIZE");
  std::map<std::string, std::string> env;
  if (configured) env["DYNAMOE_RANKS_PER_NODE"] = configured;
  return ClusterFromConfig(ParseConfig(env, nullptr).value(), world).ranks_per_node;
}

// README: DYNAMOE_RANKS_PER_NODE=0 (the default) takes torchrun's
// LOCAL_WORLD_SIZE, else the group is one node. The launcher's variables are
// parsed once per process, so each case runs in a fresh process (a
// re-executed death test) with its own environment, and exits with the
// ranks per node it got.
TEST(ConfigDeathTest, RanksPerNodeFallsBackToLocalWorldSize) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(_exit(static_cast<int>(RanksPerNodeUnder("2", nullptr, 8))), ::testing::ExitedWithCode(2), "");
  EXPECT_EXIT(_exit(static_cast<int>(RanksPerNodeUnder("2", "0", 8))), ::testing::ExitedWithCode(2), "");
  // A configured value wins over the launcher's.
  EXPECT_EXIT(_exit(static_cast<int>(RanksPerNodeUnder("2", "4", 8))), ::testing::ExitedWithCode(4), "");
  // No launcher value: one node (0).
  EXPECT_EXIT(_exit(static_cast<int>(RanksPerNodeUnder(nullptr, nullptr, 8))), ::testing::ExitedWithCode(0), "");
  // Every rank of the group on the node: one node too.
  EXPECT_EXIT(_exit(static_cast<int>(RanksPerNodeUnder("8", nullptr, 8))), ::testing::ExitedWithCode(0), "");
}

TEST(Status, MacrosAndBoundary) {
  auto inner = [](int v) -> absl::StatusOr<int> {
    DYNAMOE_CHECK_ARG(v > 0, "v must be > 0, got ", v);
    return v * 2;
  };
  auto outer = [&](int v) -> absl::StatusOr<int> {
    DYNAMOE_ASSIGN_OR_RETURN(int doubled, inner(v));
    return doubled + 1;
  };
  EXPECT_EQ(*outer(3), 7);
  EXPECT_EQ(outer(-1).status().message(), "v must be > 0, got -1");
  try {
    ValueOrThrow(outer(0));
    FAIL() << "no exception";
  } catch (const dynamoe::Error& e) {
    EXPECT_STREQ(e.what(), "INVALID_ARGUMENT: v must be > 0, got 0");
    EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace dynamoe::runtime
