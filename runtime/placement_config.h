// The placement library's inputs from the configuration table (the cluster
// and policy options); the layer spec comes from the layer itself.
#pragma once

#include <cstdint>

#include "placement/policy.h"
#include "placement/spec.h"
#include "runtime/config.h"

namespace dynamoe::runtime {

// world_size: the expert-parallel group's size. Ranks per node: the
// configured value, else torchrun's LOCAL_WORLD_SIZE, else the whole group.
placement::ClusterSpec ClusterFromConfig(const Config& config, int64_t world_size);

placement::PolicyOptions PolicyOptionsFromConfig(const Config& config, const std::string& layer);

}  // namespace dynamoe::runtime
