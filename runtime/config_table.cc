// The entries of the configuration table. Defaults of the cost-model inputs
// follow FastMoE's shadow policy (50 Gbit/s network, 11.5 TFLOP/s, alpha 2).
#include "runtime/config.h"

namespace dynamoe::runtime {

const std::vector<ConfigEntry>& ConfigTable() {
  static const std::vector<ConfigEntry> table = {
      {"DYNAMOE_PLACEMENT", ValueType::kEnum, "none", {"none", "fastermoe", "adaptive", "eplb"}, 0, 0,
       "FMOE_FASTER_SHADOW_ENABLE", AliasKind::kSwitch, "fastermoe", true,
       "Placement policy that copies hot experts (shadowing or replicas)."},
      {"DYNAMOE_SCHEDULE", ValueType::kEnum, "sequential", {"sequential", "overlap"}, 0, 0,
       "FMOE_FASTER_SCHEDULE_ENABLE", AliasKind::kSwitch, "overlap", true,
       "Token exchange: one all-to-all, or chunks overlapped with expert compute."},
      {"DYNAMOE_GROUP_SIZE", ValueType::kInt, "4", {}, 1, 65536, "FMOE_FASTER_GROUP_SIZE",
       AliasKind::kSameValue, "", true, "Peers per stage of the overlap schedule; clamped to [1, world size - 1]."},
      {"DYNAMOE_OVERLAP_DEGREE", ValueType::kInt, "1", {}, 0, 64, "", AliasKind::kNone, "", true,
       "Token chunks per peer group of the overlap schedule; 0 picks one from the cost model."},
      {"DYNAMOE_PLACEMENT_INTERVAL", ValueType::kInt, "1", {}, 1, 1e9, "", AliasKind::kNone, "", true,
       "Steps between re-plans of the placement policy."},
      {"DYNAMOE_SHADOW_MAX", ValueType::kInt, "8", {}, 0, 1e6, "", AliasKind::kNone, "", true,
       "Most experts copied per layer (eplb: most redundant replicas)."},
      {"DYNAMOE_SHADOW_MEMORY_MB", ValueType::kFloat, "0", {}, 0, 1e9, "", AliasKind::kNone, "", true,
       "Most MiB of copied experts' weights plus gradients per rank and layer; 0 is no limit."},
      {"DYNAMOE_PLACEMENT_HYSTERESIS", ValueType::kFloat, "0.05", {}, 0, 1, "", AliasKind::kNone, "", true,
       "adaptive keeps its plan unless a new one is predicted this fraction faster."},
      {"DYNAMOE_BALANCE_TOLERANCE", ValueType::kFloat, "1.05", {}, 1, 100, "", AliasKind::kNone, "", true,
       "adaptive stops adding copies once the busiest rank's predicted rows are within this factor of the mean."},
      {"DYNAMOE_CALIBRATE", ValueType::kEnum, "off", {"off", "online"}, 0, 0, "", AliasKind::kNone, "", true,
       "online: fit the cost model's rates from the steps' measured phase times (the same fit on every rank)."},
      {"DYNAMOE_RANKS_PER_NODE", ValueType::kInt, "0", {}, 0, 65536, "", AliasKind::kNone, "", true,
       "Ranks per node for the cost model; 0 takes torchrun's LOCAL_WORLD_SIZE, else one node."},
      {"DYNAMOE_NET_BW", ValueType::kFloat, "6.25e9", {}, 1, 1e15, "FMOE_FASTER_GLBPLC_NETBW",
       AliasKind::kSameValue, "", true, "Inter-node bandwidth for the cost model, bytes per second."},
      {"DYNAMOE_INTRA_BW", ValueType::kFloat, "1.5e11", {}, 1, 1e15, "", AliasKind::kNone, "", true,
       "Intra-node bandwidth for the cost model, bytes per second."},
      {"DYNAMOE_LATENCY_US", ValueType::kFloat, "5", {}, 0, 1e7, "", AliasKind::kNone, "", true,
       "Per-message latency for the cost model, microseconds."},
      {"DYNAMOE_GPU_FLOPS", ValueType::kFloat, "1.15e13", {}, 1, 1e18, "FMOE_FASTER_GLBPLC_GPUTP",
       AliasKind::kSameValue, "", true, "Expert GEMM throughput for the cost model, FLOP per second."},
      {"DYNAMOE_ALPHA", ValueType::kFloat, "2", {}, 1e-3, 1e3, "FMOE_FASTER_GLBPLC_ALPHA",
       AliasKind::kSameValue, "", true, "d_hidden / d_model for the fastermoe criterion where the layer's d_hidden is unknown."},
      {"DYNAMOE_METRICS_PORT", ValueType::kInt, "0", {}, 0, 65535, "", AliasKind::kNone, "", false,
       "Prometheus exposer base port (port + local rank); 0 is off."},
      {"DYNAMOE_METRICS_ADDR", ValueType::kString, "127.0.0.1", {}, 0, 0, "", AliasKind::kNone, "", false,
       "Address the metrics exposer binds."},
      {"DYNAMOE_METRICS_PER_EXPERT", ValueType::kBool, "0", {}, 0, 0, "", AliasKind::kNone, "", false,
       "Also export dynamoe_expert_tokens_total, one series per layer, expert and rank."},
      {"DYNAMOE_TRACE", ValueType::kString, "", {}, 0, 0, "", AliasKind::kNone, "", false,
       "Path prefix of the routing trace; empty is off."},
      {"DYNAMOE_TRACE_FLUSH_S", ValueType::kFloat, "1", {}, 0, 3600, "", AliasKind::kNone, "", false,
       "Seconds between trace writes; a killed process loses at most this much trace."},
      {"DYNAMOE_COMM_ADDR", ValueType::kString, "", {}, 0, 0, "", AliasKind::kNone, "", false,
       "Address a C++ job's own Gloo groups (InitFromEnv) bind and advertise, and the one a Python group's rank 0 "
       "advertises for the store it hosts without MASTER_ADDR; empty picks the one that reaches MASTER_ADDR."},
      {"DYNAMOE_TIMEOUT_S", ValueType::kFloat, "300", {}, 0.001, 1e7, "", AliasKind::kNone, "", true,
       "Deadline of every collective, seconds."},
      {"DYNAMOE_LOG_LEVEL", ValueType::kEnum, "info", {"debug", "info", "warning", "error"}, 0, 0, "",
       AliasKind::kNone, "", false, "Log verbosity (debug explains placement decisions)."},
      {"DYNAMOE_GROUPED_GEMM", ValueType::kEnum, "loop", {"loop", "grouped"}, 0, 0, "", AliasKind::kNone, "", false,
       "CUDA expert GEMMs: one cuBLAS call per expert, or one cublasGemmGroupedBatchedEx call."},
      {"DYNAMOE_OPS_LIBRARY", ValueType::kString, "", {}, 0, 0, "", AliasKind::kNone, "", false,
       "Path of libdynamoe_ops.so for the Python package; empty searches build/*/bindings."},
      {"DYNAMOE_CHECK_PLAN", ValueType::kBool, "0", {}, 0, 0, "", AliasKind::kNone, "", true,
       "Verify every step that all ranks computed the same plan hash."},
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
