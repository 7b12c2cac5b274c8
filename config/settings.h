// dynamoe's configuration as typed fields, in the spirit of NCCL's
// NCCL_PARAM: one field per entry of the configuration table, generated from
// the same list (settings.def), so `GlobalSettings().timeout_s` replaces
// `GlobalConfig().GetFloat("DYNAMOE_TIMEOUT_S")` and a mistyped name is a
// compile error. Config (config.h) stays the validated, hashed string form
// that ranks compare; Settings is built from it once.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/log.h"
#include "placement/policy.h"
#include "config/config.h"

namespace dynamoe::runtime {

using placement::PlacementPolicy;  // DYNAMOE_PLACEMENT; names in placement/policy.h
enum class ScheduleKind { kSequential, kOverlap };  // DYNAMOE_SCHEDULE
enum class CalibrateMode { kOff, kOnline };         // DYNAMOE_CALIBRATE
enum class GemmAlgorithm { kLoop, kGrouped };       // DYNAMOE_GROUPED_GEMM
// DYNAMOE_LOG_LEVEL: dynamoe::LogLevel (common/log.h).

// Each enum's names, in enumerator order (the table's choices), its name, and
// an exact-match parse whose InvalidArgument names the accepted values.
const std::vector<std::string>& ScheduleNames();
absl::string_view ScheduleName(ScheduleKind kind);
absl::StatusOr<ScheduleKind> ParseSchedule(absl::string_view name);  // `schedule: unknown schedule "x"; ...`
const std::vector<std::string>& CalibrateNames();
absl::string_view CalibrateName(CalibrateMode mode);
absl::StatusOr<CalibrateMode> ParseCalibrate(absl::string_view name);
const std::vector<std::string>& GemmAlgorithmNames();
absl::string_view GemmAlgorithmName(GemmAlgorithm algorithm);
absl::StatusOr<GemmAlgorithm> ParseGemmAlgorithm(absl::string_view name);
const std::vector<std::string>& LogLevelNames();
absl::string_view LogLevelName(LogLevel level);
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);

// Value-initialised members are zeros, not the table's defaults: build a
// Settings with SettingsFrom (ParseConfig({}) gives the defaults).
struct Settings {
#define DYNAMOE_SETTING(field, Type, ...) Type field{};
#include "config/settings.def"
#undef DYNAMOE_SETTING
};

// The typed values of a (validated) Config.
Settings SettingsFrom(const Config& config);

// Variable name -> canonical string of each field, as Config::values() has it
// (a Settings built from a Config gives that Config's values back).
std::map<std::string, std::string> SettingsValues(const Settings& settings);

// SettingsFrom(GlobalConfig()), built on first use. Throws dynamoe::Error on
// a bad environment value, as GlobalConfig() does.
const Settings& GlobalSettings();

}  // namespace dynamoe::runtime
