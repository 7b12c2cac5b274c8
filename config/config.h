// The configuration table: the one place dynamoe reads its environment.
// Each entry has a name, type, default, allowed values, an optional FastMoE
// alias and help text. The environment is read once, validated, logged and
// hashed; the README's variable table is generated from the same entries.
// The entries are listed in settings.def; code reads the values as typed
// fields through settings.h (GlobalSettings()), not by name through Get*.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dynamoe::runtime {

enum class ValueType { kEnum, kInt, kFloat, kBool, kString };

// How a FastMoE variable maps onto a dynamoe one.
enum class AliasKind {
  kNone,
  kSameValue,  // FMOE_X=v means DYNAMOE_Y=v
  kSwitch,     // FMOE_X=1 means DYNAMOE_Y=<alias_value>; FMOE_X=0 means nothing
};

struct ConfigEntry {
  std::string name;
  ValueType type;
  std::string default_value;
  std::vector<std::string> choices;  // kEnum only
  double min_value = 0;              // kInt / kFloat
  double max_value = 0;
  std::string alias;  // FastMoE name, empty if none
  AliasKind alias_kind = AliasKind::kNone;
  std::string alias_value;  // kSwitch only
  bool same_on_all_ranks = true;  // part of the hash ranks compare
  std::string help;
};

// All entries, in the order the README lists them.
const std::vector<ConfigEntry>& ConfigTable();

// FastMoE variables accepted with no effect in dynamoe, with the reason.
const std::map<std::string, std::string>& IgnoredFastMoENames();

class Config {
 public:
  // Canonical string value of a known variable (e.g. "1" for a true bool).
  // Prefer the typed Settings (settings.h): a mistyped name here fails only
  // at run time.
  const std::string& Get(const std::string& name) const;
  int64_t GetInt(const std::string& name) const;
  double GetFloat(const std::string& name) const;
  bool GetBool(const std::string& name) const;

  // "name=value\n" of the entries that must agree across ranks, in table order.
  std::string SharedValues() const;
  // FNV-1a 64 of SharedValues().
  uint64_t Hash() const;
  // The first entry that must agree across ranks and differs, or "" if none.
  std::string FirstDifference(const Config& other) const;
  // "DYNAMOE_A=x DYNAMOE_B=y ..." in table order.
  std::string Describe() const;
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  friend absl::StatusOr<Config> ParseConfig(const std::map<std::string, std::string>&,
                                            std::vector<std::string>*);
  std::map<std::string, std::string> values_;
};

// Builds a Config from an environment snapshot (name -> value). Returns
// InvalidArgument naming the variable, the value and what is accepted on the
// first bad value. Unknown DYNAMOE_* names and FastMoE names without effect
// produce warnings (with the closest known name) but no error.
absl::StatusOr<Config> ParseConfig(const std::map<std::string, std::string>& env,
                                   std::vector<std::string>* warnings);

// The DYNAMOE_* and FMOE_* variables of this process's environment.
std::map<std::string, std::string> EnvironmentSnapshot();

// The process-wide configuration: read from the environment on first use,
// logged at info level with its hash, and applied to the log level. Throws
// dynamoe::Error on a bad value.
const Config& GlobalConfig();

// Markdown table of the variables (the README section is generated from it).
std::string EnvTableMarkdown();

// Levenshtein distance, for "did you mean" suggestions.
size_t EditDistance(const std::string& a, const std::string& b);

}  // namespace dynamoe::runtime
