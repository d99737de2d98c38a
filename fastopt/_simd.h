/* What fastopt's loops were compiled for, and what the CPU can run; included by
   fastopt/_kernels.pyx.

   FASTOPT_COMPILED_SIMD names the widest SIMD instruction set this module was compiled to use
   (for the benchmark: bench/run.py records it).

   fastopt_cpu_level() is the run-time dispatch (setup.py, fastopt/_simd.py): the baseline
   module, which any x86-64 runs, tells which of the wider builds this CPU can run: 0 the
   baseline, 1 AVX2 and FMA, 2 AVX-512 F, CD, BW, DQ and VL. The compiler's builtins also check
   that the OS saves the wider registers (XGETBV), not only that the CPU has the instructions.
   setup.py defines FASTOPT_DISPATCH for the baseline module only where wider ones were built;
   elsewhere (and in the wider modules) it answers 0. */

#ifndef FASTOPT_SIMD_H
#define FASTOPT_SIMD_H

#if defined(__AVX512F__)
#define FASTOPT_COMPILED_SIMD "AVX-512F"
#elif defined(__AVX2__)
#define FASTOPT_COMPILED_SIMD "AVX2"
#elif defined(__AVX__)
#define FASTOPT_COMPILED_SIMD "AVX"
#elif defined(__SSE2__) || defined(_M_X64)
#define FASTOPT_COMPILED_SIMD "SSE2 (x86-64 baseline)"
#elif defined(__ARM_NEON)
#define FASTOPT_COMPILED_SIMD "NEON"
#else
#define FASTOPT_COMPILED_SIMD "none"
#endif

#if defined(FASTOPT_DISPATCH)
static int fastopt_cpu_level(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd")
          && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
          && __builtin_cpu_supports("avx512vl")))
        return 1;
    return 2;
}
#else
static int fastopt_cpu_level(void) { return 0; }
#endif

#endif  /* FASTOPT_SIMD_H */
