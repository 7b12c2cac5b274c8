// CPU twin of the fused activation kernels (elementwise, in Acc<T>).
#include "kernels/activation.h"
#include "kernels/kernels.h"

namespace dynamoe::kernels {

template <typename T>
void ActivationForward(const T* h, const T* g, Activation act, T* a, int64_t begin, int64_t end) {
  using A = typename Acc<T>::type;
  const int k = static_cast<int>(act);
  for (int64_t i = begin; i < end; ++i) {
    A v = ActValue<A>(k, static_cast<A>(ToFloat(h[i])));
    if (g) v *= static_cast<A>(ToFloat(g[i]));
    a[i] = Store<T>(v);
  }
}

template <typename T>
void ActivationBackward(const T* grad_a, const T* h, const T* g, Activation act, T* grad_h, T* grad_g, T* a_out,
                        int64_t begin, int64_t end) {
  using A = typename Acc<T>::type;
  const int k = static_cast<int>(act);
  for (int64_t i = begin; i < end; ++i) {
    const A x = static_cast<A>(ToFloat(h[i])), ga = static_cast<A>(ToFloat(grad_a[i]));
    const A gv = g ? static_cast<A>(ToFloat(g[i])) : A(1);
    const A v = ActValue<A>(k, x);
    if (g) grad_g[i] = Store<T>(ga * v);
    if (a_out) a_out[i] = Store<T>(v * gv);
    grad_h[i] = Store<T>(ga * gv * ActDerivative<A>(k, x));
  }
}

#define DYNAMOE_INSTANTIATE(T)                                                                        \
  template void ActivationForward<T>(const T*, const T*, Activation, T*, int64_t, int64_t);           \
  template void ActivationBackward<T>(const T*, const T*, const T*, Activation, T*, T*, T*, int64_t, \
                                      int64_t);
DYNAMOE_INSTANTIATE(float)
DYNAMOE_INSTANTIATE(double)
DYNAMOE_INSTANTIATE(bf16)
DYNAMOE_INSTANTIATE(f16)
#undef DYNAMOE_INSTANTIATE

}  // namespace dynamoe::kernels
