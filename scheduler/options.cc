#include "scheduler/options.h"

#include <cmath>

#include "common/status.h"
#include "kernels/kernels.h"

namespace dynamoe {

absl::Status MoEOptions::Validate() const {
  const std::string n = name_.empty() ? "moe" : name_;
  DYNAMOE_CHECK_ARG(d_model_ > 0, n, ": d_model must be > 0, got ", d_model_);
  DYNAMOE_CHECK_ARG(d_hidden_ > 0, n, ": d_hidden must be > 0, got ", d_hidden_);
  DYNAMOE_CHECK_ARG(num_experts_ > 0, n, ": num_experts must be > 0, got ", num_experts_);
  DYNAMOE_CHECK_ARG(top_k_ >= 1 && top_k_ <= num_experts_, n, ": top_k must be in [1, num_experts=",
                    num_experts_, "], got ", top_k_);
  DYNAMOE_CHECK_ARG(top_k_ <= kernels::kMaxTopK, n, ": top_k must be <= ", kernels::kMaxTopK, ", got ", top_k_);
  DYNAMOE_CHECK_ARG(std::isfinite(capacity_factor_), n, ": capacity_factor must be finite, got ", capacity_factor_);
  DYNAMOE_CHECK_ARG(!eval_capacity_factor_ || std::isfinite(*eval_capacity_factor_), n,
                    ": eval_capacity_factor must be finite, got ", eval_capacity_factor_.value_or(0));
  DYNAMOE_CHECK_ARG(min_capacity_ >= 0, n, ": min_capacity must be >= 0, got ", min_capacity_);
  DYNAMOE_CHECK_ARG(kernels::kActivationNames.Parse(activation_, "activation").ok(), n, ": activation must be one of ",
                    kernels::kActivationNames.Joined(), ", got \"", activation_, "\"");
  DYNAMOE_CHECK_ARG(balance_loss_choices_ == "all" || balance_loss_choices_ == "first", n,
                    ": balance_loss_choices must be \"all\" or \"first\", got \"", balance_loss_choices_, "\"");
  DYNAMOE_CHECK_ARG(noisy_gate_policy_ == "none" || noisy_gate_policy_ == "Jitter" ||
                        noisy_gate_policy_ == "RSample",
                    n, ": noisy_gate_policy must be one of none, Jitter, RSample, got \"",
                    noisy_gate_policy_, "\"");
  DYNAMOE_CHECK_ARG(jitter_eps_ >= 0 && jitter_eps_ < 1, n, ": jitter_eps must be in [0, 1), got ", jitter_eps_);
  // Finite as well: an infinite weight or rate turns the loss or the bias into inf/NaN.
  DYNAMOE_CHECK_ARG(balance_loss_weight_ >= 0 && std::isfinite(balance_loss_weight_), n,
                    ": balance_loss_weight must be finite and >= 0, got ", balance_loss_weight_);
  DYNAMOE_CHECK_ARG(z_loss_weight_ >= 0 && std::isfinite(z_loss_weight_), n,
                    ": z_loss_weight must be finite and >= 0, got ", z_loss_weight_);
  DYNAMOE_CHECK_ARG(bias_update_rate_ >= 0 && std::isfinite(bias_update_rate_), n,
                    ": bias_update_rate must be finite and >= 0, got ", bias_update_rate_);
  return absl::OkStatus();
}

absl::StatusOr<ValidatedOptions> ValidatedOptions::Make(MoEOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return ValidatedOptions(std::move(options));
}

}  // namespace dynamoe
