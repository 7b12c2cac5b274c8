// Element types the kernels accept, without any framework type.
// bf16 is stored as the upper 16 bits of an IEEE float (same layout as
// at::BFloat16 and __nv_bfloat16), so callers may reinterpret their buffers.
#pragma once

#include <cstdint>
#include <cstring>

namespace dynamoe::kernels {

struct bf16 {
  uint16_t bits;
};

inline float ToFloat(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, NaN kept quiet.
inline bf16 FromFloat(float f, bf16*) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
inline float ToFloat(float v) { return v; }
inline double ToFloat(double v) { return v; }
inline float FromFloat(float f, float*) { return f; }
inline double FromFloat(double f, double*) { return f; }

// Accumulator type: double for double data, float otherwise.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T>
inline T Store(typename Acc<T>::type v) { return FromFloat(v, static_cast<T*>(nullptr)); }

}  // namespace dynamoe::kernels
