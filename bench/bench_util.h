// Timing helpers shared by the standalone benchmarks.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace dynamoe::bench {

// Wall seconds of one call of f.
inline double Seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The median (the mean of the middle two for an even count; 0 when empty).
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// The median seconds of each variant (each returns the seconds of one call),
// run interleaved for `rounds` rounds after one warm-up call each, the first
// variant rotating, so the machine's noise hits all of them alike.
inline std::vector<double> InterleavedMedians(const std::vector<std::function<double()>>& variants, int rounds) {
  for (const auto& v : variants) v();
  std::vector<std::vector<double>> t(variants.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < variants.size(); ++i) {
      const size_t v = (i + r) % variants.size();
      t[v].push_back(variants[v]());
    }
  std::vector<double> medians;
  for (auto& samples : t) medians.push_back(Median(std::move(samples)));
  return medians;
}

}  // namespace dynamoe::bench
