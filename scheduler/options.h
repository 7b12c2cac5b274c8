// dynamoe::MoEOptions, built like LibTorch's own options (chained setters):
//   MoEOptions(512, 2048, 8).top_k(2).capacity_factor(1.25).activation("silu")
// The Python dynamoe.MoE takes the same names as keyword arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <torch/arg.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dynamoe {

struct MoEOptions {
  MoEOptions(int64_t d_model, int64_t d_hidden, int64_t num_experts)
      : d_model_(d_model), d_hidden_(d_hidden), num_experts_(num_experts) {}

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, d_hidden);
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, top_k) = 2;
  // > 0: fixed capacity (drops overflow); 0: dropless; < 0: dropless up to |cf|.
  TORCH_ARG(double, capacity_factor) = 0.0;
  // Capacity factor in eval mode; unset means capacity_factor.
  TORCH_ARG(std::optional<double>, eval_capacity_factor) = std::nullopt;
  TORCH_ARG(int64_t, min_capacity) = 4;
  // Renormalise the top-k weights to sum 1; unset means top_k > 1.
  TORCH_ARG(std::optional<bool>, normalize_topk) = std::nullopt;
  // After capacity drops, renormalise each token's kept weights to sum 1
  // (DeepSpeed's top-2 gate: a token whose second choice is dropped puts 1.0 on its first).
  TORCH_ARG(bool, normalize_kept) = false;
  // The router has a bias, gate.bias [E] (FastMoE's gates: nn.Linear with bias).
  TORCH_ARG(bool, router_bias) = false;
  // Which choices the balance loss counts: "all" (every routed choice, divided
  // by T*k) or "first" (first choices only, divided by T: DeepSpeed's top-2 and
  // FastMoE's GShard gate). Equal for top_k = 1.
  TORCH_ARG(std::string, balance_loss_choices) = "all";
  TORCH_ARG(std::string, activation) = "gelu";  // gelu, relu, silu
  TORCH_ARG(bool, gated) = false;               // w3: act(x w1) * (x w3), e.g. SwiGLU
  TORCH_ARG(bool, bias) = false;                // b1, b2
  TORCH_ARG(bool, use_rts) = false;             // DeepSpeed random token selection
  TORCH_ARG(int64_t, rts_seed) = 0;
  TORCH_ARG(std::string, noisy_gate_policy) = "none";  // none, Jitter, RSample
  TORCH_ARG(double, jitter_eps) = 0.01;
  TORCH_ARG(double, balance_loss_weight) = 1.0;  // GShard/Switch load-balancing loss
  TORCH_ARG(double, z_loss_weight) = 0.0;        // router z-loss
  // DeepSeek-V3 auxiliary-loss-free bias: > 0 enables its sign update.
  TORCH_ARG(double, bias_update_rate) = 0.0;
  TORCH_ARG(bool, use_residual) = false;  // DeepSpeed residual MoE
  TORCH_ARG(bool, check_finite) = true;   // error on non-finite router logits
  // Used in errors, metrics and traces; "" (the default): MoELayer names
  // itself moe0, moe1, ... in creation order (scheduler::NextDefaultLayerName).
  TORCH_ARG(std::string, name) = "";


 public:  // TORCH_ARG leaves the section private
  bool normalize() const { return normalize_topk_.value_or(top_k_ > 1); }
  double capacity_factor_for(bool training) const {
    return training ? capacity_factor_ : eval_capacity_factor_.value_or(capacity_factor_);
  }
  // Names the first invalid field, what was expected and what came.
  absl::Status Validate() const;
};

// MoEOptions that passed Validate(). Only Make builds one, so the step takes
// these without checking again: scheduler::Layer validates once, at
// construction, and each forward then validates nothing.
class ValidatedOptions {
 public:
  // Validate()'s error, unchanged.
  static absl::StatusOr<ValidatedOptions> Make(MoEOptions options);

  const MoEOptions& get() const { return options_; }
  const MoEOptions* operator->() const { return &options_; }
  // Validate() does not check the name, so renaming keeps the options valid.
  void set_name(std::string name) { options_.name(std::move(name)); }

 private:
  explicit ValidatedOptions(MoEOptions options) : options_(std::move(options)) {}
  MoEOptions options_;
};

}  // namespace dynamoe
