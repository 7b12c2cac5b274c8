#include "config/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"
#include "config/settings.h"

extern char** environ;

namespace dynamoe::runtime {
namespace {

const ConfigEntry* Find(const std::string& name) {
  for (const auto& e : ConfigTable())
    if (e.name == name) return &e;
  return nullptr;
}

std::string FormatNumber(double v) { return absl::StrFormat("%g", v); }

std::string Accepted(const ConfigEntry& e) {
  switch (e.type) {
    case ValueType::kEnum: return absl::StrCat("one of ", absl::StrJoin(e.choices, ", "));
    case ValueType::kInt:
      return absl::StrCat("an integer in [", FormatNumber(e.min_value), ", ", FormatNumber(e.max_value), "]");
    case ValueType::kFloat:
      return absl::StrCat("a number in [", FormatNumber(e.min_value), ", ", FormatNumber(e.max_value), "]");
    case ValueType::kBool: return "0/1, true/false, yes/no or on/off";
    case ValueType::kString: return "any string";
  }
  return "";
}

absl::StatusOr<bool> ParseBool(const std::string& raw) {
  const std::string v = absl::AsciiStrToLower(raw);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  return absl::InvalidArgumentError("not a boolean");
}

// Validates `raw` for `e` and returns its canonical form.
absl::StatusOr<std::string> Canonical(const ConfigEntry& e, const std::string& source,
                                      const std::string& raw) {
  auto bad = [&]() {
    return absl::InvalidArgumentError(absl::StrCat(source, "=\"", raw, "\" is invalid: expected ",
                                                   Accepted(e)));
  };
  const std::string v(absl::StripAsciiWhitespace(raw));
  switch (e.type) {
    case ValueType::kEnum: {
      const std::string lower = absl::AsciiStrToLower(v);
      if (std::find(e.choices.begin(), e.choices.end(), lower) == e.choices.end()) return bad();
      return lower;
    }
    case ValueType::kInt: {
      if (v.empty()) return bad();
      char* end = nullptr;
      errno = 0;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (errno != 0 || *end != '\0' || n < e.min_value || n > e.max_value) return bad();
      return std::to_string(n);
    }
    case ValueType::kFloat: {
      if (v.empty()) return bad();
      char* end = nullptr;
      errno = 0;
      const double d = std::strtod(v.c_str(), &end);
      if (errno != 0 || *end != '\0' || !std::isfinite(d) || d < e.min_value || d > e.max_value)
        return bad();
      return FormatNumber(d);
    }
    case ValueType::kBool: {
      auto b = ParseBool(v);
      if (!b.ok()) return bad();
      return std::string(*b ? "1" : "0");
    }
    case ValueType::kString: return v;
  }
  return bad();
}

std::string ClosestKnownName(const std::string& name) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const auto& e : ConfigTable()) {
    const size_t d = EditDistance(name, e.name);
    if (d < best_distance) best_distance = d, best = e.name;
  }
  return best;
}

}  // namespace

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

absl::StatusOr<Config> ParseConfig(const std::map<std::string, std::string>& env,
                                   std::vector<std::string>* warnings) {
  auto warn = [&](std::string message) {
    if (warnings) warnings->push_back(std::move(message));
  };
  Config config;
  for (const auto& e : ConfigTable()) {
    DYNAMOE_ASSIGN_OR_RETURN(std::string value, Canonical(e, "default of " + e.name, e.default_value));
    // The FastMoE alias applies first; the dynamoe name, when also set, wins.
    if (!e.alias.empty()) {
      auto it = env.find(e.alias);
      if (it != env.end()) {
        if (e.alias_kind == AliasKind::kSwitch) {
          auto on = ParseBool(std::string(absl::StripAsciiWhitespace(it->second)));
          if (!on.ok())
            return absl::InvalidArgumentError(absl::StrCat(e.alias, "=\"", it->second,
                                                           "\" is invalid: expected 0 or 1 (FastMoE switch for ",
                                                           e.name, "=", e.alias_value, ")"));
          if (*on) value = e.alias_value;
        } else {
          DYNAMOE_ASSIGN_OR_RETURN(value, Canonical(e, e.alias, it->second));
        }
      }
    }
    auto it = env.find(e.name);
    if (it != env.end()) {
      DYNAMOE_ASSIGN_OR_RETURN(std::string own, Canonical(e, e.name, it->second));
      if (!e.alias.empty() && env.count(e.alias) && own != value)
        warn(absl::StrCat(e.name, "=", own, " overrides ", e.alias, "=", env.at(e.alias)));
      value = own;
    }
    config.values_[e.name] = value;
  }
  for (const auto& [name, value] : env) {
    if (name.rfind("DYNAMOE_", 0) == 0 && !Find(name)) {
      warn(absl::StrCat("unknown variable ", name, " is ignored; did you mean ", ClosestKnownName(name), "?"));
    } else if (name.rfind("FMOE_", 0) == 0) {
      auto ignored = IgnoredFastMoENames().find(name);
      if (ignored != IgnoredFastMoENames().end())
        warn(absl::StrCat(name, " has no effect in dynamoe: ", ignored->second));
    }
  }
  return config;
}

const std::string& Config::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end())
    throw Error(absl::NotFoundError(absl::StrCat("no configuration entry named ", name)));
  return it->second;
}
int64_t Config::GetInt(const std::string& name) const { return std::stoll(Get(name)); }
double Config::GetFloat(const std::string& name) const { return std::stod(Get(name)); }
bool Config::GetBool(const std::string& name) const { return Get(name) == "1"; }

std::string Config::SharedValues() const {
  std::string out;
  for (const auto& e : ConfigTable())
    if (e.same_on_all_ranks) absl::StrAppend(&out, e.name, "=", Get(e.name), "\n");
  return out;
}

uint64_t Config::Hash() const { return Fnv1a64(SharedValues()); }

std::string Config::FirstDifference(const Config& other) const {
  for (const auto& e : ConfigTable())
    if (e.same_on_all_ranks && Get(e.name) != other.Get(e.name)) return e.name;
  return "";
}

std::string Config::Describe() const {
  std::vector<std::string> parts;
  for (const auto& e : ConfigTable()) parts.push_back(absl::StrCat(e.name, "=", Get(e.name)));
  return absl::StrJoin(parts, " ");
}

std::map<std::string, std::string> EnvironmentSnapshot() {
  std::map<std::string, std::string> env;
  for (char** p = environ; p && *p; ++p) {
    const std::string kv(*p);
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = kv.substr(0, eq);
    if (name.rfind("DYNAMOE_", 0) == 0 || name.rfind("FMOE_", 0) == 0) env[name] = kv.substr(eq + 1);
  }
  return env;
}

const Config& GlobalConfig() {
  static std::once_flag once;
  static absl::StatusOr<Config> config = absl::UnknownError("not read");
  std::call_once(once, [] {
    std::vector<std::string> warnings;
    config = ParseConfig(EnvironmentSnapshot(), &warnings);
    if (!config.ok()) return;
    SetLogLevel(SettingsFrom(*config).log_level);
    for (const auto& w : warnings) DYNAMOE_LOG(kWarning) << w;
    DYNAMOE_LOG(kInfo) << "configuration " << absl::StrFormat("%016x", config->Hash()) << ": "
                       << config->Describe();
  });
  if (!config.ok()) throw Error(config.status());
  return *config;
}

std::string EnvTableMarkdown() {
  std::string out =
      "| variable | type | default | accepted | FastMoE alias | same on all ranks | what it does |\n"
      "|---|---|---|---|---|---|---|\n";
  for (const auto& e : ConfigTable()) {
    static const char* kType[] = {"enum", "int", "float", "bool", "string"};
    std::string alias = "—";
    if (e.alias_kind == AliasKind::kSwitch) alias = absl::StrCat("`", e.alias, "=1` -> `", e.alias_value, "`");
    if (e.alias_kind == AliasKind::kSameValue) alias = absl::StrCat("`", e.alias, "`");
    const std::string def = e.default_value.empty() ? "(empty)" : absl::StrCat("`", e.default_value, "`");
    absl::StrAppend(&out, "| `", e.name, "` | ", kType[static_cast<int>(e.type)], " | ", def, " | ",
                    Accepted(e), " | ", alias, " | ", e.same_on_all_ranks ? "yes" : "no", " | ", e.help,
                    " |\n");
  }
  return out;
}

}  // namespace dynamoe::runtime
