// Typed settings (config/settings.h): generated from the same rows as the
// configuration table, so every entry has a field and the two agree; enum
// names parse exactly and name the accepted values; the launcher's variables
// have one parser, which rejects bad values naming the variable.
#include <map>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "placement/policy.h"
#include "config/config.h"
#include "config/launch_env.h"
#include "config/placement_config.h"
#include "config/settings.h"

namespace dynamoe::runtime {
namespace {

Config Parse(const std::map<std::string, std::string>& env) {
  auto c = ParseConfig(env, nullptr);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// Non-default values for every kind of entry, and FastMoE aliases.
const std::vector<std::map<std::string, std::string>>& Snapshots() {
  static const std::vector<std::map<std::string, std::string>> snapshots = {
      {},
      {{"DYNAMOE_PLACEMENT", "eplb"}, {"DYNAMOE_SCHEDULE", "overlap"}, {"DYNAMOE_GROUP_SIZE", "2"},
       {"DYNAMOE_OVERLAP_DEGREE", "0"}, {"DYNAMOE_PLACEMENT_INTERVAL", "7"}, {"DYNAMOE_SHADOW_MAX", "3"},
       {"DYNAMOE_SHADOW_MEMORY_MB", "12.5"}, {"DYNAMOE_PLACEMENT_HYSTERESIS", "0.2"},
       {"DYNAMOE_BALANCE_TOLERANCE", "1.5"}, {"DYNAMOE_CALIBRATE", "online"}, {"DYNAMOE_RANKS_PER_NODE", "8"},
       {"DYNAMOE_NET_BW", "1234567890"}, {"DYNAMOE_INTRA_BW", "3e11"}, {"DYNAMOE_LATENCY_US", "2.5"},
       {"DYNAMOE_GPU_FLOPS", "9e14"}, {"DYNAMOE_ALPHA", "3"}, {"DYNAMOE_METRICS_PORT", "9400"},
       {"DYNAMOE_METRICS_ADDR", "0.0.0.0"}, {"DYNAMOE_METRICS_PER_EXPERT", "yes"}, {"DYNAMOE_TRACE", "/tmp/run"},
       {"DYNAMOE_TRACE_FLUSH_S", "0.5"}, {"DYNAMOE_COMM_ADDR", "10.0.0.1"}, {"DYNAMOE_TIMEOUT_S", "12"},
       {"DYNAMOE_LOG_LEVEL", "Warning"}, {"DYNAMOE_GROUPED_GEMM", "grouped"}, {"DYNAMOE_OPS_LIBRARY", "/x/lib.so"},
       {"DYNAMOE_CHECK_PLAN", "on"}},
      {{"FMOE_FASTER_SHADOW_ENABLE", "1"}, {"FMOE_FASTER_SCHEDULE_ENABLE", "1"}, {"FMOE_FASTER_GROUP_SIZE", "3"},
       {"DYNAMOE_PLACEMENT", "adaptive"}, {"DYNAMOE_LOG_LEVEL", "debug"}},
      {{"DYNAMOE_LOG_LEVEL", "error"}, {"DYNAMOE_CALIBRATE", "off"}, {"DYNAMOE_PLACEMENT", "fastermoe"}},
  };
  return snapshots;
}

TEST(Settings, EveryTableEntryHasAFieldThatAgreesWithTheConfig) {
  std::set<std::string> names;
  for (const auto& e : ConfigTable()) names.insert(e.name);
  for (const auto& env : Snapshots()) {
    const Config c = Parse(env);
    const std::map<std::string, std::string> typed = SettingsValues(SettingsFrom(c));
    std::set<std::string> fields;
    for (const auto& [name, value] : typed) fields.insert(name);
    EXPECT_EQ(fields, names) << "a table entry without a typed field, or the reverse";
    EXPECT_EQ(typed, c.values());
  }
}

TEST(Settings, TypedFieldsHoldTheConfigsValues) {
  const Config c = Parse(Snapshots()[1]);
  const Settings s = SettingsFrom(c);
  EXPECT_EQ(s.placement, PlacementPolicy::kEplb);
  EXPECT_EQ(s.schedule, ScheduleKind::kOverlap);
  EXPECT_EQ(s.group_size, c.GetInt("DYNAMOE_GROUP_SIZE"));
  EXPECT_EQ(s.overlap_degree, 0);
  EXPECT_EQ(s.placement_interval, 7);
  EXPECT_DOUBLE_EQ(s.shadow_memory_mb, 12.5);
  EXPECT_EQ(s.calibrate, CalibrateMode::kOnline);
  EXPECT_DOUBLE_EQ(s.net_bw, c.GetFloat("DYNAMOE_NET_BW"));  // the canonical (%g) value, as before
  EXPECT_EQ(s.metrics_port, 9400);
  EXPECT_EQ(s.metrics_addr, "0.0.0.0");
  EXPECT_TRUE(s.metrics_per_expert);
  EXPECT_EQ(s.trace, "/tmp/run");
  EXPECT_DOUBLE_EQ(s.timeout_s, 12);
  EXPECT_EQ(s.log_level, LogLevel::kWarning);
  EXPECT_EQ(s.grouped_gemm, GemmAlgorithm::kGrouped);
  EXPECT_TRUE(s.check_plan);

  const Settings d = SettingsFrom(Parse({}));
  EXPECT_EQ(d.placement, PlacementPolicy::kNone);
  EXPECT_EQ(d.schedule, ScheduleKind::kSequential);
  EXPECT_EQ(d.group_size, 4);
  EXPECT_EQ(d.log_level, LogLevel::kInfo);
  EXPECT_EQ(d.grouped_gemm, GemmAlgorithm::kLoop);
  EXPECT_FALSE(d.check_plan);

  const Settings fastmoe = SettingsFrom(Parse(Snapshots()[2]));
  EXPECT_EQ(fastmoe.placement, PlacementPolicy::kAdaptive);  // the dynamoe name wins over the switch
  EXPECT_EQ(fastmoe.schedule, ScheduleKind::kOverlap);
  EXPECT_EQ(fastmoe.group_size, 3);
}

// The hash ranks compare: the generated table gives the same input string,
// so the same environment hashes as it did before settings.def. (Update these
// only with a deliberate change to a shared entry.)
TEST(Settings, GeneratedTableKeepsTheConfigHash) {
  EXPECT_EQ(Parse({}).Hash(), 0xa9d1b3eaf4c90ba0u);
  EXPECT_EQ(Parse({{"DYNAMOE_PLACEMENT", "eplb"}, {"DYNAMOE_NET_BW", "1234567890"},
                   {"FMOE_FASTER_SCHEDULE_ENABLE", "1"}, {"DYNAMOE_LOG_LEVEL", "debug"}})
                .Hash(),
            0xfc1485e8b450a2f8u);
}

TEST(Settings, EnumChoicesAreTheEnumsNames) {
  std::map<std::string, std::vector<std::string>> choices;
  for (const auto& e : ConfigTable())
    if (e.type == ValueType::kEnum) choices[e.name] = e.choices;
  EXPECT_EQ(choices.at("DYNAMOE_PLACEMENT"), placement::PolicyNames());
  EXPECT_EQ(choices.at("DYNAMOE_SCHEDULE"), ScheduleNames());
  EXPECT_EQ(choices.at("DYNAMOE_CALIBRATE"), CalibrateNames());
  EXPECT_EQ(choices.at("DYNAMOE_GROUPED_GEMM"), GemmAlgorithmNames());
  EXPECT_EQ(choices.at("DYNAMOE_LOG_LEVEL"), LogLevelNames());
  EXPECT_EQ(choices.size(), 5u);
  const std::vector<std::string> policies = {"none", "fastermoe", "adaptive", "eplb"};
  EXPECT_EQ(placement::PolicyNames(), policies);
}

TEST(Settings, EnumNamesRoundTrip) {
  for (const std::string& n : placement::PolicyNames())
    EXPECT_EQ(placement::PolicyName(placement::ParsePolicy(n).value()), n);
  for (const std::string& n : ScheduleNames()) EXPECT_EQ(ScheduleName(ParseSchedule(n).value()), n);
  for (const std::string& n : CalibrateNames()) EXPECT_EQ(CalibrateName(ParseCalibrate(n).value()), n);
  for (const std::string& n : GemmAlgorithmNames()) EXPECT_EQ(GemmAlgorithmName(ParseGemmAlgorithm(n).value()), n);
  for (const std::string& n : LogLevelNames()) EXPECT_EQ(LogLevelName(ParseLogLevel(n).value()), n);
  EXPECT_EQ(ParseLogLevel("error").value(), LogLevel::kError);
}

TEST(Settings, BadEnumNamesAreRejectedNamingTheAcceptedValues) {
  auto message = [](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.message());
  };
  EXPECT_EQ(message(placement::ParsePolicy("greedy").status()),
            "placement: unknown policy \"greedy\"; expected one of none, fastermoe, adaptive, eplb");
  EXPECT_EQ(message(placement::ParsePolicy("Adaptive").status()),  // exact names only
            "placement: unknown policy \"Adaptive\"; expected one of none, fastermoe, adaptive, eplb");
  EXPECT_EQ(message(ParseSchedule("pipelined").status()),
            "schedule: unknown schedule \"pipelined\"; expected one of sequential, overlap");
  EXPECT_EQ(message(ParseGemmAlgorithm("batched").status()),
            "DYNAMOE_GROUPED_GEMM: unknown GEMM algorithm \"batched\"; expected one of loop, grouped");
  EXPECT_EQ(message(ParseCalibrate("offline").status()),
            "DYNAMOE_CALIBRATE: unknown mode \"offline\"; expected one of off, online");
  EXPECT_EQ(message(ParseLogLevel("verbose").status()),
            "DYNAMOE_LOG_LEVEL: unknown log level \"verbose\"; expected one of debug, info, warning, error");
  // MakePolicy by name reports the same.
  placement::ClusterSpec cluster;
  EXPECT_EQ(message(placement::MakePolicy("greedy", cluster, {}, {}).status()),
            "placement: unknown policy \"greedy\"; expected one of none, fastermoe, adaptive, eplb");
}

TEST(Settings, PolicyOptionsAndClusterComeFromTheTypedFields) {
  const Settings s = SettingsFrom(Parse(Snapshots()[1]));
  const placement::PolicyOptions o = PolicyOptionsFromSettings(s, "layer0");
  EXPECT_EQ(o.interval, 7);
  EXPECT_EQ(o.max_copied, 3);
  EXPECT_DOUBLE_EQ(o.memory_budget_bytes, 12.5 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(o.hysteresis, 0.2);
  EXPECT_DOUBLE_EQ(o.balance_tolerance, 1.5);
  EXPECT_DOUBLE_EQ(o.alpha, 3);
  EXPECT_TRUE(o.cost.overlap);
  EXPECT_EQ(o.layer, "layer0");
  const placement::ClusterSpec c = ClusterFromSettings(s, 16);  // ranks per node configured: no launcher read
  EXPECT_EQ(c.ranks_per_node, 8);
  EXPECT_DOUBLE_EQ(c.inter_node_bw, s.net_bw);
  EXPECT_DOUBLE_EQ(c.intra_node_latency_s, 2.5e-6);
  EXPECT_DOUBLE_EQ(c.flops, 9e14);
}

// The launcher's variables have one parser (ParseLaunchEnv); the example's
// atoi(WORLD_SIZE), which read "two" as 0, now goes through it too.
TEST(LaunchEnv, BadValuesAreErrorsNamingTheVariable) {
  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> cases = {
      {{{"WORLD_SIZE", "two"}}, "WORLD_SIZE must be an integer in [1, 1073741824], got \"two\""},
      {{{"WORLD_SIZE", "0"}}, "WORLD_SIZE must be an integer in [1, 1073741824], got \"0\""},
      {{{"RANK", "-1"}}, "RANK must be an integer in [0, 1073741824], got \"-1\""},
      {{{"LOCAL_RANK", "1x"}}, "LOCAL_RANK must be an integer in [0, 1073741824], got \"1x\""},
      {{{"LOCAL_WORLD_SIZE", " "}}, "LOCAL_WORLD_SIZE must be an integer in [1, 1073741824], got \" \""},
      {{{"MASTER_PORT", "70000"}}, "MASTER_PORT must be an integer in [1, 65535], got \"70000\""},
      {{{"RANK", "4"}, {"WORLD_SIZE", "4"}}, "RANK must be in [0, WORLD_SIZE=4), got 4"},
  };
  for (const auto& [env, message] : cases) {
    auto parsed = ParseLaunchEnv(env);
    ASSERT_FALSE(parsed.ok()) << message;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(parsed.status().message(), message);
  }
}

TEST(LaunchEnv, ParsesTorchrunsVariables) {
  const LaunchEnv e = ParseLaunchEnv({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                      {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"},
                                      {"TORCHELASTIC_RUN_ID", "job7"}, {"TORCHELASTIC_RESTART_COUNT", "2"}})
                          .value();
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_EQ(e.Incarnation(), "job7/2");
  const LaunchEnv none = ParseLaunchEnv({{"WORLD_SIZE", ""}, {"MASTER_ADDR", ""}}).value();  // empty is unset
  EXPECT_FALSE(none.world_size.has_value());
  EXPECT_FALSE(none.master_addr.has_value());
  EXPECT_EQ(none.RankOrZero(), 0);
}

}  // namespace
}  // namespace dynamoe::runtime
