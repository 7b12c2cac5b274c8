#include "config/placement_config.h"

#include "config/launch_env.h"

namespace dynamoe::runtime {

placement::ClusterSpec ClusterFromSettings(const Settings& s, int64_t world_size) {
  placement::ClusterSpec c;
  c.world_size = world_size;
  int64_t per_node = s.ranks_per_node;
  if (per_node == 0) per_node = GlobalLaunchEnv().local_world_size.value_or(0);
  c.ranks_per_node = per_node >= world_size ? 0 : per_node;
  c.inter_node_bw = s.net_bw;
  c.intra_node_bw = s.intra_bw;
  c.intra_node_latency_s = c.inter_node_latency_s = s.latency_us * 1e-6;
  c.flops = s.gpu_flops;
  return c;
}

placement::ClusterSpec ClusterFromConfig(const Config& config, int64_t world_size) {
  return ClusterFromSettings(SettingsFrom(config), world_size);
}

placement::PolicyOptions PolicyOptionsFromSettings(const Settings& s, const std::string& layer) {
  placement::PolicyOptions o;
  o.interval = s.placement_interval;
  o.max_copied = s.shadow_max;
  o.memory_budget_bytes = s.shadow_memory_mb * 1024.0 * 1024.0;
  o.hysteresis = s.placement_hysteresis;
  o.balance_tolerance = s.balance_tolerance;
  o.alpha = s.alpha;
  o.cost.training = true;
  o.cost.overlap = s.schedule == ScheduleKind::kOverlap;
  o.layer = layer;
  return o;
}

}  // namespace dynamoe::runtime
