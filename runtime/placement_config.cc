#include "runtime/placement_config.h"

#include <algorithm>
#include <string>

#include "runtime/launch_env.h"

namespace dynamoe::runtime {

placement::ClusterSpec ClusterFromConfig(const Config& config, int64_t world_size) {
  placement::ClusterSpec c;
  c.world_size = world_size;
  int64_t per_node = config.GetInt("DYNAMOE_RANKS_PER_NODE");
  if (per_node == 0) per_node = GlobalLaunchEnv().local_world_size.value_or(0);
  c.ranks_per_node = per_node >= world_size ? 0 : per_node;
  c.inter_node_bw = config.GetFloat("DYNAMOE_NET_BW");
  c.intra_node_bw = config.GetFloat("DYNAMOE_INTRA_BW");
  c.intra_node_latency_s = c.inter_node_latency_s = config.GetFloat("DYNAMOE_LATENCY_US") * 1e-6;
  c.flops = config.GetFloat("DYNAMOE_GPU_FLOPS");
  return c;
}

placement::PolicyOptions PolicyOptionsFromConfig(const Config& config, const std::string& layer) {
  placement::PolicyOptions o;
  o.interval = config.GetInt("DYNAMOE_PLACEMENT_INTERVAL");
  o.max_copied = config.GetInt("DYNAMOE_SHADOW_MAX");
  o.memory_budget_bytes = config.GetFloat("DYNAMOE_SHADOW_MEMORY_MB") * 1024.0 * 1024.0;
  o.hysteresis = config.GetFloat("DYNAMOE_PLACEMENT_HYSTERESIS");
  o.balance_tolerance = config.GetFloat("DYNAMOE_BALANCE_TOLERANCE");
  o.alpha = config.GetFloat("DYNAMOE_ALPHA");
  o.cost.training = true;
  o.cost.overlap = config.Get("DYNAMOE_SCHEDULE") == "overlap";
  o.layer = layer;
  return o;
}

}  // namespace dynamoe::runtime
