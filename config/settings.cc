#include "config/settings.h"

#include "absl/strings/str_format.h"
#include "common/enum_names.h"
#include "common/status.h"

namespace dynamoe::runtime {
namespace {

constexpr EnumNames<ScheduleKind, 2> kSchedules({"sequential", "overlap"});
constexpr EnumNames<CalibrateMode, 2> kCalibrate({"off", "online"});
constexpr EnumNames<GemmAlgorithm, 2> kGemm({"loop", "grouped"});
constexpr EnumNames<LogLevel, 4> kLogLevels({"debug", "info", "warning", "error"});  // LogLevel's values 0-3

// Canonical string (config.cc's Canonical) -> typed field. The Config is
// validated, so a failure here is a table/type mismatch in settings.def.
absl::Status FromCanonical(const std::string& v, int64_t* out) {
  try {
    *out = std::stoll(v);
    return absl::OkStatus();
  } catch (const std::exception&) {
    return absl::InternalError(absl::StrCat("not an integer: \"", v, "\""));
  }
}
absl::Status FromCanonical(const std::string& v, double* out) {
  try {
    *out = std::stod(v);
    return absl::OkStatus();
  } catch (const std::exception&) {
    return absl::InternalError(absl::StrCat("not a number: \"", v, "\""));
  }
}
absl::Status FromCanonical(const std::string& v, bool* out) {
  *out = v == "1";
  return v == "1" || v == "0" ? absl::OkStatus() : absl::InternalError(absl::StrCat("not 0/1: \"", v, "\""));
}
absl::Status FromCanonical(const std::string& v, std::string* out) {
  *out = v;
  return absl::OkStatus();
}
template <typename E>
absl::Status Assign(absl::StatusOr<E> parsed, E* out) {
  if (!parsed.ok()) return parsed.status();
  *out = *parsed;
  return absl::OkStatus();
}
absl::Status FromCanonical(const std::string& v, PlacementPolicy* out) {
  return Assign(placement::ParsePolicy(v), out);
}
absl::Status FromCanonical(const std::string& v, ScheduleKind* out) { return Assign(ParseSchedule(v), out); }
absl::Status FromCanonical(const std::string& v, CalibrateMode* out) { return Assign(ParseCalibrate(v), out); }
absl::Status FromCanonical(const std::string& v, GemmAlgorithm* out) { return Assign(ParseGemmAlgorithm(v), out); }
absl::Status FromCanonical(const std::string& v, LogLevel* out) { return Assign(ParseLogLevel(v), out); }

// Typed field -> canonical string (the inverse of FromCanonical).
std::string ToCanonical(int64_t v) { return std::to_string(v); }
std::string ToCanonical(double v) { return absl::StrFormat("%g", v); }  // config.cc's FormatNumber
std::string ToCanonical(bool v) { return v ? "1" : "0"; }
std::string ToCanonical(const std::string& v) { return v; }
std::string ToCanonical(PlacementPolicy v) { return std::string(placement::PolicyName(v)); }
std::string ToCanonical(ScheduleKind v) { return std::string(ScheduleName(v)); }
std::string ToCanonical(CalibrateMode v) { return std::string(CalibrateName(v)); }
std::string ToCanonical(GemmAlgorithm v) { return std::string(GemmAlgorithmName(v)); }
std::string ToCanonical(LogLevel v) { return std::string(LogLevelName(v)); }

}  // namespace

const std::vector<std::string>& ScheduleNames() {
  static const std::vector<std::string> names = kSchedules.List();
  return names;
}
absl::string_view ScheduleName(ScheduleKind kind) { return kSchedules.Name(kind); }
absl::StatusOr<ScheduleKind> ParseSchedule(absl::string_view name) {
  return kSchedules.Parse(name, "schedule: unknown schedule");
}

const std::vector<std::string>& CalibrateNames() {
  static const std::vector<std::string> names = kCalibrate.List();
  return names;
}
absl::string_view CalibrateName(CalibrateMode mode) { return kCalibrate.Name(mode); }
absl::StatusOr<CalibrateMode> ParseCalibrate(absl::string_view name) {
  return kCalibrate.Parse(name, "DYNAMOE_CALIBRATE: unknown mode");
}

const std::vector<std::string>& GemmAlgorithmNames() {
  static const std::vector<std::string> names = kGemm.List();
  return names;
}
absl::string_view GemmAlgorithmName(GemmAlgorithm algorithm) { return kGemm.Name(algorithm); }
absl::StatusOr<GemmAlgorithm> ParseGemmAlgorithm(absl::string_view name) {
  return kGemm.Parse(name, "DYNAMOE_GROUPED_GEMM: unknown GEMM algorithm");
}

const std::vector<std::string>& LogLevelNames() {
  static const std::vector<std::string> names = kLogLevels.List();
  return names;
}
absl::string_view LogLevelName(LogLevel level) { return kLogLevels.Name(level); }
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  return kLogLevels.Parse(name, "DYNAMOE_LOG_LEVEL: unknown log level");
}

Settings SettingsFrom(const Config& config) {
  Settings s;
#define DYNAMOE_SETTING(field, Type, kind, name, ...)                                                  \
  if (absl::Status st = FromCanonical(config.Get(name), &s.field); !st.ok())                           \
    throw Error(absl::InternalError(absl::StrCat("settings: ", name, " has no ", #Type, " value: ", \
                                                 st.message())));
#include "config/settings.def"
#undef DYNAMOE_SETTING
  return s;
}

std::map<std::string, std::string> SettingsValues(const Settings& s) {
  std::map<std::string, std::string> values;
#define DYNAMOE_SETTING(field, Type, kind, name, ...) values[name] = ToCanonical(s.field);
#include "config/settings.def"
#undef DYNAMOE_SETTING
  return values;
}

const Settings& GlobalSettings() {
  static const Settings settings = SettingsFrom(GlobalConfig());
  return settings;
}

}  // namespace dynamoe::runtime
