#include "monitor/load_report.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_format.h"

namespace dynamoe::monitor {

std::string LoadBars(const std::vector<int64_t>& expert_loads, int width) {
  const int64_t busiest = expert_loads.empty() ? 0 : *std::max_element(expert_loads.begin(), expert_loads.end());
  const double total = std::accumulate(expert_loads.begin(), expert_loads.end(), 0.0);
  std::string out;
  for (size_t e = 0; e < expert_loads.size(); ++e) {
    const int cells = busiest > 0 ? static_cast<int>((expert_loads[e] * width + busiest - 1) / busiest) : 0;
    absl::StrAppendFormat(&out, "  e%-3d |%s%s| %lld (%.1f%%)\n", static_cast<int>(e), std::string(cells, '#'),
                          std::string(width - cells, ' '), static_cast<long long>(expert_loads[e]),
                          total > 0 ? 100.0 * expert_loads[e] / total : 0.0);
  }
  return out;
}

}  // namespace dynamoe::monitor
