// CPU permute / combine kernels. Accumulation is in float (double for double
// data) and in a fixed order, so results do not depend on threading.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

namespace dynamoe::kernels {

template <typename T>
void GatherRows(const T* src, const int64_t* row_index, int64_t d, T* dst,
                int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row)
    std::memcpy(dst + row * d, src + row_index[row] * d, sizeof(T) * d);
}

template <typename T, typename W>
void CombineRows(const T* rows, const int64_t* position, const W* weight, int top_k,
                 int64_t d, T* out, int64_t token_begin, int64_t token_end) {
  using A = typename Acc<T>::type;
  std::vector<A> acc(d);
  for (int64_t t = token_begin; t < token_end; ++t) {
    std::fill(acc.begin(), acc.end(), A(0));
    for (int j = 0; j < top_k; ++j) {
      const int64_t a = t * top_k + j;
      if (position[a] < 0) continue;
      const A w = weight ? static_cast<A>(ToFloat(weight[a])) : A(1);
      const T* row = rows + position[a] * d;
      for (int64_t c = 0; c < d; ++c) acc[c] += w * static_cast<A>(ToFloat(row[c]));
    }
    T* o = out + t * d;
    for (int64_t c = 0; c < d; ++c) o[c] = Store<T>(acc[c]);
  }
}

template <typename T, typename W>
void ScatterWeightedRows(const T* grad_out, const int64_t* assignment, const W* weight,
                         int top_k, int64_t d, T* grad_rows, int64_t row_begin,
                         int64_t row_end) {
  using A = typename Acc<T>::type;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t a = assignment[row];
    const A w = weight ? static_cast<A>(ToFloat(weight[a])) : A(1);
    const T* g = grad_out + (a / top_k) * d;
    T* o = grad_rows + row * d;
    for (int64_t c = 0; c < d; ++c) o[c] = Store<T>(w * static_cast<A>(ToFloat(g[c])));
  }
}

template <typename T, typename W>
void CombineWeightGrad(const T* grad_out, const T* rows, const int64_t* position,
                       int top_k, int64_t d, W* grad_weight, int64_t token_begin,
                       int64_t token_end) {
  using A = typename Acc<T>::type;
  for (int64_t t = token_begin; t < token_end; ++t) {
    const T* g = grad_out + t * d;
    for (int j = 0; j < top_k; ++j) {
      const int64_t a = t * top_k + j;
      A dot = 0;
      if (position[a] >= 0) {
        const T* row = rows + position[a] * d;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<A>(ToFloat(g[c])) * static_cast<A>(ToFloat(row[c]));
      }
      grad_weight[a] = static_cast<W>(dot);
    }
  }
}

#define DYNAMOE_INSTANTIATE_ROWS(T, W)                                                      \
  template void CombineRows<T, W>(const T*, const int64_t*, const W*, int, int64_t, T*,     \
                                  int64_t, int64_t);                                        \
  template void ScatterWeightedRows<T, W>(const T*, const int64_t*, const W*, int, int64_t, \
                                          T*, int64_t, int64_t);                            \
  template void CombineWeightGrad<T, W>(const T*, const T*, const int64_t*, int, int64_t,   \
                                        W*, int64_t, int64_t);

template void GatherRows<float>(const float*, const int64_t*, int64_t, float*, int64_t, int64_t);
template void GatherRows<double>(const double*, const int64_t*, int64_t, double*, int64_t, int64_t);
template void GatherRows<bf16>(const bf16*, const int64_t*, int64_t, bf16*, int64_t, int64_t);
template void GatherRows<f16>(const f16*, const int64_t*, int64_t, f16*, int64_t, int64_t);
DYNAMOE_INSTANTIATE_ROWS(float, float)
DYNAMOE_INSTANTIATE_ROWS(double, double)
DYNAMOE_INSTANTIATE_ROWS(bf16, float)
DYNAMOE_INSTANTIATE_ROWS(f16, float)
#undef DYNAMOE_INSTANTIATE_ROWS

}  // namespace dynamoe::kernels
