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
// IEEE binary16, layout-compatible with at::Half and __half.
struct f16 {
  uint16_t bits;
};

// A float's IEEE bits and back (memcpy: no aliasing rules broken).
inline uint32_t BitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float FloatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float ToFloat(bf16 v) { return FloatOf(static_cast<uint32_t>(v.bits) << 16); }

// Round to nearest even, NaN kept quiet.
inline bf16 FromFloat(float f, bf16*) {
  uint32_t u = BitsOf(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
inline float ToFloat(f16 v) {
  const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  uint32_t exp = (v.bits >> 10) & 0x1fu, man = v.bits & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // Inf / NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    u = sign | static_cast<uint32_t>(112 - e) << 23 | ((man & 0x3ffu) << 13);
  }
  return FloatOf(u);
}
// Round to nearest even, overflow to Inf, NaN kept.
inline f16 FromFloat(float f, f16*) {
  const uint32_t u = BitsOf(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16{static_cast<uint16_t>(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return f16{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504
  if (a < 0x38800000u) {  // subnormal or zero in half
    if (a < 0x33000000u) return f16{sign};
    const uint32_t man = (a & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(a >> 23);  // 14 .. 24
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return f16{static_cast<uint16_t>(sign | h)};
  }
  uint32_t h = ((a >> 13) - (112u << 10));
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return f16{static_cast<uint16_t>(sign | h)};
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
