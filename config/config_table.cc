// The configuration table, generated from settings.def (the same rows give
// the typed Settings fields).
#include "config/config.h"
#include "config/settings.h"

namespace dynamoe::runtime {

const std::vector<ConfigEntry>& ConfigTable() {
  static const std::vector<ConfigEntry> table = {
#define DYNAMOE_SETTING(field, Type, kind, name, default_value, choices, min_value, max_value, alias, alias_kind, \
                        alias_value, same_on_all_ranks, help)                                                      \
  {name,      ValueType::kind, default_value,     choices,           min_value, max_value, alias, \
   AliasKind::alias_kind, alias_value, same_on_all_ranks, help},
#include "config/settings.def"
#undef DYNAMOE_SETTING
  };
  return table;
}

const std::map<std::string, std::string>& IgnoredFastMoENames() {
  static const std::map<std::string, std::string> names = {
      {"FMOE_FASTER_GLBPLC_DMODEL", "dynamoe takes d_model from the layer itself"},
      {"FMOE_FUSE_GRAN", "fuse granularity is chosen by dynamoe's kernels"},
  };
  return names;
}

}  // namespace dynamoe::runtime
