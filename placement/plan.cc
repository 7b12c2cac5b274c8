#include "placement/plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/status.h"

namespace dynamoe::placement {

int64_t Quota::SourceRows(int64_t s) const {
  if (s < 0 || s + 1 >= static_cast<int64_t>(start.size())) return 0;
  int64_t n = 0;
  for (int32_t k = start[s]; k < start[s + 1]; ++k) n += rows[k];
  return n;
}

Plan Plan::None(int64_t world_size, int64_t num_experts) {
  Plan p;
  p.world_size = world_size;
  p.num_experts = num_experts;
  p.owner.resize(num_experts);
  p.copies.assign(num_experts, {});
  const int64_t per_rank = num_experts / std::max<int64_t>(world_size, 1);
  for (int64_t e = 0; e < num_experts; ++e) p.owner[e] = static_cast<int32_t>(e / std::max<int64_t>(per_rank, 1));
  return p;
}

bool Plan::Holds(int64_t rank, int64_t expert) const {
  if (owner[expert] == rank) return true;
  const auto& c = copies[expert];
  return !c.empty() && std::binary_search(c.begin(), c.end(), static_cast<int32_t>(rank));
}

std::vector<int64_t> Plan::Shadowed() const {
  std::vector<int64_t> out;
  if (world_size < 2) return out;
  for (int64_t e = 0; e < num_experts; ++e)
    if (static_cast<int64_t>(copies[e].size()) == world_size - 1) out.push_back(e);
  return out;
}

std::vector<int64_t> Plan::ReplicaCounts() const {
  std::vector<int64_t> out(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) out[e] = static_cast<int64_t>(copies[e].size());
  return out;
}

int64_t Plan::TotalCopies() const {
  int64_t n = 0;
  for (const auto& c : copies) n += static_cast<int64_t>(c.size());
  return n;
}

std::vector<int64_t> Plan::CopiesOn(int64_t rank) const {
  std::vector<int64_t> out;
  for (int64_t e = 0; e < num_experts; ++e)
    if (owner[e] != rank && Holds(rank, e)) out.push_back(e);
  return out;
}

uint64_t Plan::Hash() const {
  std::string bytes = absl::StrCat(world_size, "/", num_experts, "/");
  for (int64_t e = 0; e < num_experts; ++e) {
    absl::StrAppend(&bytes, owner[e], ":");
    for (int32_t r : copies[e]) absl::StrAppend(&bytes, r, ",");
    bytes += ';';
    if (HasQuota(e)) {
      const Quota& q = quotas[e];
      for (size_t s = 0; s + 1 < q.start.size(); ++s) {
        for (int32_t k = q.start[s]; k < q.start[s + 1]; ++k) absl::StrAppend(&bytes, q.dest[k], "=", q.rows[k], ",");
        bytes += '|';
      }
    }
  }
  return Fnv1a64(bytes);
}

std::string Plan::Summary() const {
  const std::vector<int64_t> shadowed = Shadowed();
  std::vector<std::string> replicas;
  for (int64_t e = 0; e < num_experts; ++e)
    if (!copies[e].empty() && static_cast<int64_t>(copies[e].size()) < world_size - 1)
      replicas.push_back(absl::StrCat(e, ": ", absl::StrJoin(copies[e], ",")));
  return absl::StrCat("shadowed [", absl::StrJoin(shadowed, ","), "] replicas {", absl::StrJoin(replicas, "; "),
                      "}");
}

absl::Status Plan::Validate() const {
  DYNAMOE_CHECK_ARG(world_size >= 1 && num_experts >= 1 && num_experts % world_size == 0,
                    "plan: num_experts (", num_experts, ") must be a positive multiple of world_size (", world_size,
                    ")");
  DYNAMOE_CHECK_ARG(static_cast<int64_t>(owner.size()) == num_experts &&
                        static_cast<int64_t>(copies.size()) == num_experts,
                    "plan: owner and copies must have ", num_experts, " entries, got ", owner.size(), " and ",
                    copies.size());
  for (int64_t e = 0; e < num_experts; ++e) {
    DYNAMOE_CHECK_ARG(owner[e] >= 0 && owner[e] < world_size, "plan: expert ", e, " has owner ", owner[e],
                      ", expected a rank in [0, ", world_size, ")");
    for (size_t i = 0; i < copies[e].size(); ++i) {
      const int32_t r = copies[e][i];
      DYNAMOE_CHECK_ARG(r >= 0 && r < world_size && r != owner[e] && (i == 0 || copies[e][i - 1] < r), "plan: expert ",
                        e, " copies [", absl::StrJoin(copies[e], ","),
                        "] must be distinct ascending ranks other than the owner ", owner[e]);
    }
  }
  DYNAMOE_CHECK_ARG(quotas.empty() || static_cast<int64_t>(quotas.size()) == num_experts, "plan: quotas must have ",
                    num_experts, " entries or none, got ", quotas.size());
  for (int64_t e = 0; e < num_experts && !quotas.empty(); ++e) {
    const Quota& q = quotas[e];
    if (q.empty()) continue;
    DYNAMOE_CHECK_ARG(static_cast<int64_t>(q.start.size()) == world_size + 1 && q.start.front() == 0 &&
                          q.dest.size() == q.rows.size() && q.start.back() == static_cast<int32_t>(q.dest.size()),
                      "plan: expert ", e, " quota must have ", world_size + 1, " source offsets over its pieces");
    for (int64_t s = 0; s < world_size; ++s)
      DYNAMOE_CHECK_ARG(q.start[s] <= q.start[s + 1], "plan: expert ", e, " quota offsets must not decrease");
    for (size_t k = 0; k < q.dest.size(); ++k)
      DYNAMOE_CHECK_ARG(q.rows[k] > 0 && q.dest[k] >= 0 && q.dest[k] < world_size && Holds(q.dest[k], e),
                        "plan: expert ", e, " quota sends ", q.rows[k], " rows to rank ", q.dest[k],
                        ", expected rows > 0 to a rank holding the expert");
  }
  return absl::OkStatus();
}

}  // namespace dynamoe::placement
