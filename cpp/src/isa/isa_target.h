// Per-ISA translation units: which instruction set a unit's kernels are compiled for, and the
// region of the unit that is compiled for it.
//
// A unit (attention_avx2.cpp, parity_block_avx512.cpp, ...) defines FP_ISA to one of the ids
// below and FP_ISA_NAMESPACE, includes every header its kernels use, and only then opens
// FP_ISA_BEGIN ... FP_ISA_END around its kernels. The whole file is compiled with the baseline
// flags; only the functions defined inside the region get the target's instructions (GCC's
// `#pragma GCC target`). So every inline function and template instantiation a unit emits from a
// shared header (std::vector's members, std::fill, dtype.h's helpers) is baseline code: when the
// linker keeps one copy of such a symbol out of several units, any copy is safe on every CPU.
// Inside the region everything sits in an anonymous namespace, reachable only through the unit's
// dispatch table (cpu_dispatch.cpp picks the table for the CPU). cmake/check_isa.py checks both
// properties on the compiled objects at every build.
//
// The feature macros FP_ISA_AVX2, FP_ISA_AVX512, ... (0 or 1) are what the kernels test; they do
// not depend on the compiler's own __AVX2__-style macros, whose presence inside a target region
// varies between compilers.
#pragma once

#define FP_ISA_ID_SCALAR 0
#define FP_ISA_ID_AVX2 1        // AVX2, FMA, F16C, POPCNT (Haswell, Zen 1)
#define FP_ISA_ID_AVX512 2      // + AVX-512 F, BW, DQ, VL (Skylake-X)
#define FP_ISA_ID_AVX512ICL 3   // + GFNI, BITALG (Ice Lake, Zen 4)
#define FP_ISA_ID_AVX512BF16 4  // AVX-512 + the BF16 dot products (Cooper Lake, Sapphire Rapids, Zen 4)
#define FP_ISA_ID_AVX512AMX 5   // + AMX-TILE, AMX-BF16 (Sapphire, Emerald, Granite Rapids)
#define FP_ISA_ID_NEON 16       // aarch64: ASIMD, the baseline (every ARMv8-A CPU)
#define FP_ISA_ID_NEONBF16 17   // + BFDOT (FEAT_BF16: Neoverse V1/V2/N2, Graviton3+, Grace, Apple M2+)

#ifndef FP_ISA
#error "a per-ISA unit defines FP_ISA (one of the FP_ISA_ID_* values) before including isa_target.h"
#endif

#define FP_ISA_X86 (FP_ISA >= FP_ISA_ID_AVX2 && FP_ISA < FP_ISA_ID_NEON)
#define FP_ISA_AVX2 (FP_ISA_X86 && FP_ISA >= FP_ISA_ID_AVX2)
#define FP_ISA_AVX512 (FP_ISA_X86 && FP_ISA >= FP_ISA_ID_AVX512)
#define FP_ISA_AVX512ICL (FP_ISA == FP_ISA_ID_AVX512ICL)
#define FP_ISA_AVX512BF16 (FP_ISA == FP_ISA_ID_AVX512BF16)
#define FP_ISA_AVX512AMX (FP_ISA == FP_ISA_ID_AVX512AMX)
#define FP_ISA_NEON (FP_ISA >= FP_ISA_ID_NEON)
#define FP_ISA_NEONBF16 (FP_ISA == FP_ISA_ID_NEONBF16)

#if FP_ISA_X86 && !(defined(__x86_64__) || defined(__i386__))
#error "x86 ISA units are built on x86 only"
#endif
#if FP_ISA_NEON && !defined(__aarch64__)
#error "NEON units are built on aarch64 only"
#endif

// GCC also takes prefer-vector-width=512 in a target string (its auto-vectorizer would otherwise use
// 256-bit vectors with AVX-512); Clang refuses it there, and the kernels' own vector types are zmm
// wide anyway.
#if defined(__clang__)
#define FP_ISA_WIDE ""
#else
#define FP_ISA_WIDE ",prefer-vector-width=512"
#endif
#if FP_ISA == FP_ISA_ID_AVX2
#define FP_ISA_TARGET "avx2,fma,f16c,popcnt,pclmul"
#elif FP_ISA == FP_ISA_ID_AVX512
#define FP_ISA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,popcnt,pclmul" FP_ISA_WIDE
#elif FP_ISA == FP_ISA_ID_AVX512ICL
#define FP_ISA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,gfni,avx512bitalg,avx2,fma,f16c,popcnt,pclmul" FP_ISA_WIDE
#elif FP_ISA == FP_ISA_ID_AVX512BF16
#define FP_ISA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,popcnt,pclmul" FP_ISA_WIDE
#elif FP_ISA == FP_ISA_ID_AVX512AMX
#define FP_ISA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16,avx2,fma,f16c,popcnt,pclmul" FP_ISA_WIDE
#elif FP_ISA == FP_ISA_ID_NEONBF16
// (GCC's arm_neon.h declares the BF16 intrinsics for armv8.2-a+bf16; every CPU with BF16 is 8.2 or later)
#define FP_ISA_TARGET "arch=armv8.2-a+bf16"
#endif
// FP_ISA_ID_NEON has no target string: ASIMD is aarch64's baseline, so its units are baseline code.

#define FP_ISA_PRAGMA_(x) _Pragma(#x)
#define FP_ISA_PRAGMA(x) FP_ISA_PRAGMA_(x)  // (expands FP_ISA_TARGET first)
#if !defined(FP_ISA_TARGET)  // the scalar and NEON units: baseline code, like the rest of the module
#define FP_ISA_BEGIN
#define FP_ISA_END
#elif defined(__clang__)
#define FP_ISA_BEGIN FP_ISA_PRAGMA(clang attribute push(__attribute__((target(FP_ISA_TARGET))), apply_to = function))
#define FP_ISA_END _Pragma("clang attribute pop")
#elif defined(__GNUC__)
#define FP_ISA_BEGIN _Pragma("GCC push_options") FP_ISA_PRAGMA(GCC target(FP_ISA_TARGET))
#define FP_ISA_END _Pragma("GCC pop_options")
#else
#error "per-ISA units need GCC's or Clang's target pragmas"
#endif
