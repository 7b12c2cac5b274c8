// The placement library's inputs from the settings (the cluster and policy
// options); the layer spec comes from the layer itself.
#pragma once

#include <cstdint>
#include <string>

#include "placement/policy.h"
#include "placement/spec.h"
#include "config/config.h"
#include "config/settings.h"

namespace dynamoe::runtime {

// world_size: the expert-parallel group's size. Ranks per node: the
// configured value, else torchrun's LOCAL_WORLD_SIZE, else the whole group.
placement::ClusterSpec ClusterFromSettings(const Settings& settings, int64_t world_size);
// The same for a Config (SettingsFrom(config)), for callers that hold one.
placement::ClusterSpec ClusterFromConfig(const Config& config, int64_t world_size);

placement::PolicyOptions PolicyOptionsFromSettings(const Settings& settings, const std::string& layer);

}  // namespace dynamoe::runtime
