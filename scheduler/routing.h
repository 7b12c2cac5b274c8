// What a router is told and returns, and the steps both devices' routers
// share: the router (router.h) and its CUDA path (cuda_path.h) both depend
// on this leaf rather than on each other.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace dynamoe::scheduler {

struct RouterOptions {
  int64_t top_k = 2;
  double capacity_factor = 0.0;
  int64_t min_capacity = 4;
  bool normalize = true;
  bool normalize_kept = false;          // renormalise over the kept choices after drops
  bool balance_first_choice = false;    // balance loss counts first choices only
  bool use_rts = false;
  uint64_t rts_seed = 0;
  int64_t step = 0;
  std::string noisy_gate_policy = "none";  // none, Jitter, RSample (training only)
  double jitter_eps = 0.01;
  bool check_finite = true;
  bool training = false;
  std::string name = "moe";
};

struct Routing {
  at::Tensor logits;         // [T, E] router dtype
  at::Tensor scores;         // [T, E] softmax(logits)
  at::Tensor expert_idx;     // [T, k] int64
  at::Tensor weight;         // [T, k] router dtype, in the autograd graph
  at::Tensor position;       // [T, k] int64 row in the sorted buffer, -1 if dropped
  at::Tensor kept_counts;    // [E] int64
  at::Tensor routed_counts;  // [E] int64, before capacity
  at::Tensor balance_loss;   // scalar, E * sum_e mean_score_e * routed_fraction_e
  at::Tensor z_loss;         // scalar, mean_t logsumexp(logits_t)^2
  int64_t num_rows = 0;      // kept assignments
  int64_t dropped = 0;
  int64_t capacity = -1;     // -1: unlimited
};

// What both devices' routers do after the choices and positions are known:
// the kept-weight renormalisation and the balance and z losses. `routed` is
// the [E] routed counts on the routing's device.
void FinishRouting(Routing& r, const at::Tensor& routed, const RouterOptions& options);

// Router math runs in float32, or float64 when the data is float64.
at::ScalarType RouterDtype(at::ScalarType data_dtype);

}  // namespace dynamoe::scheduler
