// Element types, exact conversions to float64, rounding to narrow formats, and the ordered-integer
// view used for ULP distances. Host/device: the CPU kernels and the CUDA kernels share this math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "flashparity/common.h"

namespace flashparity {

// The element types a kernel accepts. Codes are stable: they cross the Python binding. The FP8
// formats (OCP's E4M3 without infinities, "fn", and E5M2, IEEE-like) are parity inputs and
// attention inputs (whose output is then bfloat16), never outputs.
enum class DType : int { Float64 = 0, Float32 = 1, Float16 = 2, BFloat16 = 3, Float8E4M3 = 4, Float8E5M2 = 5 };

FP_HOST_DEVICE constexpr FP_INLINE bool is_fp8(DType t) { return t == DType::Float8E4M3 || t == DType::Float8E5M2; }

// The dtype of an attention output for inputs of `t`: bfloat16 for FP8 (FlashAttention-3's rule),
// else the inputs' own.
FP_HOST_DEVICE constexpr FP_INLINE DType attention_out_dtype(DType t) { return is_fp8(t) ? DType::BFloat16 : t; }

FP_HOST_DEVICE constexpr FP_INLINE const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float64: return "float64";
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::Float8E4M3: return "float8_e4m3fn";
    case DType::Float8E5M2: return "float8_e5m2";
    default: return "bfloat16";
  }
}

FP_HOST_DEVICE constexpr FP_INLINE int dtype_size(DType t) {
  return t == DType::Float64 ? 8 : t == DType::Float32 ? 4 : is_fp8(t) ? 1 : 2;
}

// Significand bits (without the implicit one): orders the formats by precision.
FP_HOST_DEVICE constexpr FP_INLINE int dtype_mantissa_bits(DType t) {
  return t == DType::Float64    ? 52
         : t == DType::Float32  ? 23
         : t == DType::Float16  ? 10
         : t == DType::BFloat16 ? 7
         : t == DType::Float8E4M3 ? 3
                                  : 2;
}

// The narrower of two formats by precision (float8_e5m2 < float8_e4m3fn < bfloat16 < float16 <
// float32 < float64).
FP_HOST_DEVICE constexpr FP_INLINE DType narrower_dtype(DType a, DType b) {
  return dtype_mantissa_bits(a) <= dtype_mantissa_bits(b) ? a : b;
}

// Storage types for the 16-bit formats: raw bits, converted explicitly (never by implicit casts).
struct half_bits { std::uint16_t x; };
struct bf16_bits { std::uint16_t x; };
struct f8e4m3_bits { std::uint8_t x; };
struct f8e5m2_bits { std::uint8_t x; };

FP_HOST_DEVICE FP_INLINE float bits_to_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

FP_HOST_DEVICE FP_INLINE std::uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FP_HOST_DEVICE FP_INLINE std::uint64_t double_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(d));
#else
  std::uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
#endif
}

FP_HOST_DEVICE FP_INLINE double bits_to_double(std::uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, 8);
  return d;
#endif
}

// IEEE binary16 -> float32, exact (subnormals, infinities and NaN payloads included).
FP_HOST_DEVICE FP_INLINE float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float32
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return bits_to_float(sign | float_to_bits(mag));
}

FP_HOST_DEVICE FP_INLINE float bf16_to_float(std::uint16_t b) {
  return bits_to_float(static_cast<std::uint32_t>(b) << 16);
}

// FP8 -> float32, exact. E4M3 "fn": bias 7, no infinities, S.1111.111 is NaN (448 the largest
// finite); E5M2: bias 15, IEEE infinities and NaNs (the top byte of a float16).
FP_HOST_DEVICE FP_INLINE float f8e4m3_to_float(std::uint8_t x) {
  const std::uint32_t sign = static_cast<std::uint32_t>(x & 0x80u) << 24;
  const std::uint32_t exp = (x >> 3) & 0xfu, man = x & 0x7u;
  if (exp == 0xf && man == 0x7) return bits_to_float(sign | 0x7fc00000u);  // NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 120u) << 23) | (man << 20));
  return bits_to_float(sign | float_to_bits(static_cast<float>(man) * 0.001953125f));  // man * 2^-9
}

FP_HOST_DEVICE FP_INLINE float f8e5m2_to_float(std::uint8_t x) { return half_to_float(static_cast<std::uint16_t>(x) << 8); }

// Element -> float64, exact for every format.
FP_HOST_DEVICE FP_INLINE double to_f64(double v) { return v; }
FP_HOST_DEVICE FP_INLINE double to_f64(float v) { return static_cast<double>(v); }
FP_HOST_DEVICE FP_INLINE double to_f64(half_bits v) { return static_cast<double>(half_to_float(v.x)); }
FP_HOST_DEVICE FP_INLINE double to_f64(bf16_bits v) { return static_cast<double>(bf16_to_float(v.x)); }
FP_HOST_DEVICE FP_INLINE double to_f64(f8e4m3_bits v) { return static_cast<double>(f8e4m3_to_float(v.x)); }
FP_HOST_DEVICE FP_INLINE double to_f64(f8e5m2_bits v) { return static_cast<double>(f8e5m2_to_float(v.x)); }

// ---- rounding to a narrow format (round to nearest, ties to even, one rounding) ------------------

// Round a finite double to a binary format with `man` stored significand bits whose normal
// exponents are [emin, emax]; returns the rounded value as a double (+-inf on overflow).
// 2^e for a normal float64 exponent (-1022 <= e <= 1023), from its bit pattern (no libm call).
FP_HOST_DEVICE FP_INLINE double pow2(int e) { return bits_to_double(static_cast<std::uint64_t>(e + 1023) << 52); }

FP_HOST_DEVICE FP_INLINE double round_to_format(double v, int man, int emin, int emax) {
  const double av = std::fabs(v);
  if (av == 0.0) return v;
  // subnormal range of the target: a fixed quantum 2^(emin - man); scaling by a power of two is exact
  // and rint rounds ties to even in the default rounding mode.
  if (av < pow2(emin)) {
    const double q = pow2(emin - man);
    return std::rint(v / q) * q;
  }
  // normal: round the float64 significand (52 bits) to `man` bits on the bit pattern.
  std::uint64_t u = double_to_bits(v);
  const int drop = 52 - man;
  if (drop > 0) {
    const std::uint64_t half = (std::uint64_t{1} << (drop - 1)) - 1;
    u += half + ((u >> drop) & 1u);
    u &= ~((std::uint64_t{1} << drop) - 1);
  }
  const double r = bits_to_double(u);
  const double limit = pow2(emax + 1);  // first value past the largest finite one
  if (std::fabs(r) >= limit) return v < 0 ? -INFINITY : INFINITY;
  return r;
}

// Bit patterns of a double rounded (RNE) to each format; +-inf stay infinite and a NaN stays a
// quiet NaN with its sign and top payload bits, as the hardware's float32 -> float16 conversion
// (vcvtps2ph, cvt.rn.f16.f32) and bfloat16 conversions keep them.
FP_HOST_DEVICE FP_INLINE std::uint32_t round_to_f32_bits(double v) {
  return float_to_bits(static_cast<float>(v));  // the hardware conversion rounds to nearest even
}

FP_HOST_DEVICE FP_INLINE std::uint16_t round_to_bf16_bits(double v) {
  if (v != v) return static_cast<std::uint16_t>((float_to_bits(static_cast<float>(v)) >> 16) | 0x0040u);
  // the result is exactly representable in float32 (same exponent range), so the cast is exact
  const double r = round_to_format(v, 7, -126, 127);
  return static_cast<std::uint16_t>(float_to_bits(static_cast<float>(r)) >> 16);
}

FP_HOST_DEVICE FP_INLINE std::uint16_t round_to_half_bits(double v) {
  if (v != v) {
    const std::uint32_t f = float_to_bits(static_cast<float>(v));
    return static_cast<std::uint16_t>(((f >> 16) & 0x8000u) | 0x7e00u | ((f >> 13) & 0x3ffu));
  }
  const double r = round_to_format(v, 10, -14, 15);
  const std::uint16_t sign = std::signbit(r) ? 0x8000u : 0u;
  const double a = std::fabs(r);
  if (std::isinf(a)) return sign | 0x7c00u;
  if (a < 6.103515625e-05) {  // subnormal or zero: a = man * 2^-24 exactly
    return sign | static_cast<std::uint16_t>(a * 16777216.0);
  }
  // normal: exactly representable in float32, take its exponent and top 10 significand bits
  const std::uint32_t f = float_to_bits(static_cast<float>(a));
  const std::uint32_t exp = ((f >> 23) & 0xffu) - 112u;
  return sign | static_cast<std::uint16_t>((exp << 10) | ((f >> 13) & 0x3ffu));
}

// FP8 bit patterns of a double rounded to nearest even, as ml_dtypes and the hardware round:
// E4M3 "fn" has no infinity, so an overflow (above 464; 464 rounds to 448) or an infinity gives its NaN pattern
// S.1111.111, which sits one step past the largest finite value in the ordered-integer view; E5M2
// overflows to infinity like float16 (it is float16's top byte). NaN keeps its sign.
FP_HOST_DEVICE FP_INLINE std::uint8_t round_to_f8e4m3_bits(double v) {
  const std::uint8_t sign = std::signbit(v) ? 0x80u : 0u;
  if (v != v) return sign | 0x7fu;
  const double a = std::fabs(round_to_format(v, 3, -6, 8));
  if (!(a <= 448.0)) return sign | 0x7fu;  // past the largest finite (or an infinity)
  if (a < 0.015625) return sign | static_cast<std::uint8_t>(a * 512.0);  // subnormal or zero: man * 2^-9
  const std::uint32_t f = float_to_bits(static_cast<float>(a));
  const std::uint32_t exp = ((f >> 23) & 0xffu) - 120u;
  return sign | static_cast<std::uint8_t>((exp << 3) | ((f >> 20) & 0x7u));
}

FP_HOST_DEVICE FP_INLINE std::uint8_t round_to_f8e5m2_bits(double v) {
  if (v != v) return static_cast<std::uint8_t>((std::signbit(v) ? 0x80u : 0u) | 0x7eu);
  const double r = round_to_format(v, 2, -14, 15);  // then exactly a float16 whose low byte is 0
  return static_cast<std::uint8_t>(round_to_half_bits(r) >> 8);
}

// round_to_f8e4m3_bits / round_to_f8e5m2_bits of a finite float32, on its bits (the same answers,
// checked for every float32 in the FP8 range): branch-light integer code the CPU kernels vectorize.
// Normal results round the significand to 3 (2) bits on the pattern, the carry moving the
// exponent; results below the smallest normal are multiples of the subnormal step, x * 2^9 (2^16)
// rounded to an integer (exact scaling, then one rounding to nearest even; 8 (4) is the smallest
// normal, whose pattern is that integer too).
FP_HOST_DEVICE FP_INLINE std::uint8_t f32_to_f8e4m3_bits(float x) {
  const std::uint32_t u = float_to_bits(x), a = u & 0x7fffffffu;
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  if (a < 0x3c800000u) return sign | static_cast<std::uint8_t>(std::nearbyint(bits_to_float(a) * 512.0f));  // < 2^-6
  const std::uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) & 0xfff00000u;
  if (r > 0x43e00000u) return sign | 0x7fu;  // past 448: the NaN pattern
  return sign | static_cast<std::uint8_t>((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u));
}

FP_HOST_DEVICE FP_INLINE std::uint8_t f32_to_f8e5m2_bits(float x) {
  const std::uint32_t u = float_to_bits(x), a = u & 0x7fffffffu;
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  if (a < 0x38800000u) return sign | static_cast<std::uint8_t>(std::nearbyint(bits_to_float(a) * 65536.0f));  // < 2^-14
  const std::uint32_t r = (a + 0xfffffu + ((a >> 21) & 1u)) & 0xffe00000u;
  if (r >= 0x47800000u) return sign | 0x7cu;  // 2^16 and past: infinity
  return sign | static_cast<std::uint8_t>((((r >> 23) - 112u) << 2) | ((r >> 21) & 3u));
}

// The bit pattern of a finite value after rounding it to the format `narrow`. `own` is the format
// the value is stored in and `raw` its bit pattern: a value already in the narrow format is used as
// is, anything wider is rounded once (to nearest even), from its exact float64 value.
FP_HOST_DEVICE FP_INLINE std::uint64_t narrow_bits_in(DType narrow, DType own, std::uint64_t raw, double v) {
  if (own == narrow) return raw;
  switch (narrow) {
    case DType::Float32: return round_to_f32_bits(v);
    case DType::Float16: return round_to_half_bits(v);
    case DType::BFloat16: return round_to_bf16_bits(v);
    case DType::Float8E4M3: return round_to_f8e4m3_bits(v);
    case DType::Float8E5M2: return round_to_f8e5m2_bits(v);
    default: return double_to_bits(v);
  }
}

// Units in the last place between two finite values given as sign-magnitude patterns of type U:
// the distance between their ordered integers (magnitude, negated for a set sign bit; +0 and -0 both
// 0), i.e. the difference of the magnitudes for equal signs and their sum otherwise. Two finite
// magnitudes sum to less than 2^bits, so every step fits U.
template <typename U>
FP_HOST_DEVICE FP_INLINE U ulp_distance_of(U x, U y) {
  constexpr U kSign = static_cast<U>(U{1} << (8 * sizeof(U) - 1));
  const U mx = x & static_cast<U>(kSign - 1), my = y & static_cast<U>(kSign - 1);
  return ((x ^ y) & kSign) ? static_cast<U>(mx + my) : (mx > my ? static_cast<U>(mx - my) : static_cast<U>(my - mx));
}

// ulp_distance_of for patterns of width w (8, 16, 32 or 64 bits): formats up to 32 bits in 32-bit
// arithmetic, the sign moved to bit 31.
FP_HOST_DEVICE FP_INLINE std::uint64_t ulp_distance_bits(std::uint64_t x, std::uint64_t y, int w) {
  if (w <= 32) {
    const int shift = 32 - w;
    return ulp_distance_of(static_cast<std::uint32_t>(x) << shift, static_cast<std::uint32_t>(y) << shift) >> shift;
  }
  return ulp_distance_of(x, y);
}

FP_HOST_DEVICE FP_INLINE std::uint64_t raw_bits(double v) { return double_to_bits(v); }
FP_HOST_DEVICE FP_INLINE std::uint64_t raw_bits(float v) { return float_to_bits(v); }
FP_HOST_DEVICE FP_INLINE std::uint64_t raw_bits(half_bits v) { return v.x; }
FP_HOST_DEVICE FP_INLINE std::uint64_t raw_bits(bf16_bits v) { return v.x; }
FP_HOST_DEVICE FP_INLINE std::uint64_t raw_bits(f8e4m3_bits v) { return v.x; }
FP_HOST_DEVICE FP_INLINE std::uint64_t raw_bits(f8e5m2_bits v) { return v.x; }

// float64 -> element, rounded to nearest even (the kernels' output conversion).
template <typename T> FP_HOST_DEVICE FP_INLINE T from_f64(double x);
template <> FP_HOST_DEVICE FP_INLINE double from_f64<double>(double x) { return x; }
template <> FP_HOST_DEVICE FP_INLINE float from_f64<float>(double x) { return static_cast<float>(x); }
template <> FP_HOST_DEVICE FP_INLINE half_bits from_f64<half_bits>(double x) { return half_bits{round_to_half_bits(x)}; }
template <> FP_HOST_DEVICE FP_INLINE bf16_bits from_f64<bf16_bits>(double x) { return bf16_bits{round_to_bf16_bits(x)}; }

template <typename T> struct DTypeOf;
template <> struct DTypeOf<double> { static constexpr DType value = DType::Float64; };
template <> struct DTypeOf<float> { static constexpr DType value = DType::Float32; };
template <> struct DTypeOf<half_bits> { static constexpr DType value = DType::Float16; };
template <> struct DTypeOf<bf16_bits> { static constexpr DType value = DType::BFloat16; };
template <> struct DTypeOf<f8e4m3_bits> { static constexpr DType value = DType::Float8E4M3; };
template <> struct DTypeOf<f8e5m2_bits> { static constexpr DType value = DType::Float8E5M2; };

template <typename T> inline constexpr bool is_fp8_type = false;
template <> inline constexpr bool is_fp8_type<f8e4m3_bits> = true;
template <> inline constexpr bool is_fp8_type<f8e5m2_bits> = true;

// The storage type of an attention output for inputs of T (attention_out_dtype).
template <typename T>
using attn_out_t = std::conditional_t<is_fp8_type<T>, bf16_bits, T>;

// DTYPE_SWITCH(code, T, body): runs `body` with T bound to the storage type of `code`: the four
// formats every kernel takes (the caller has refused FP8 before; it runs as bfloat16 otherwise).
#define FP_DTYPE_SWITCH(code, T, ...)                                        \
  [&] {                                                                      \
    switch (code) {                                                          \
      case ::flashparity::DType::Float64: { using T = double; return __VA_ARGS__(); }        \
      case ::flashparity::DType::Float32: { using T = float; return __VA_ARGS__(); }         \
      case ::flashparity::DType::Float16: { using T = ::flashparity::half_bits; return __VA_ARGS__(); } \
      default: { using T = ::flashparity::bf16_bits; return __VA_ARGS__(); }                 \
    }                                                                        \
  }()

// FP_DTYPE_SWITCH with the FP8 formats too: the parity reductions, which take every format.
#define FP_DTYPE_SWITCH_ALL(code, T, ...)                                    \
  [&] {                                                                      \
    switch (code) {                                                          \
      case ::flashparity::DType::Float8E4M3: { using T = ::flashparity::f8e4m3_bits; return __VA_ARGS__(); } \
      case ::flashparity::DType::Float8E5M2: { using T = ::flashparity::f8e5m2_bits; return __VA_ARGS__(); } \
      default: return FP_DTYPE_SWITCH(code, T, __VA_ARGS__);                 \
    }                                                                        \
  }()

}  // namespace flashparity
