/* fastopt's exactly rounded software square root (AVX-512 builds, float64), included by
   fastopt/_kernels.pyx.

   sqrt is one IEEE operation: any method that rounds correctly gives the hardware's bits.
   Where the hardware square root is slow next to fused multiply-adds (Intel's cores: 3 cycles
   per float64 element at every width), this sequence is faster: a 14-bit reciprocal square
   root estimate, one Goldschmidt step (g ~ sqrt(x), h ~ 1/(2 sqrt(x)), about 2**-27
   relative), one Markstein step (g + h*(x - g*g), within one unit in the last place), then
   Tuckerman's test picks the correctly rounded one of g and its two neighbours by the signs
   of the exact residuals g*below - x and g*above - x (each one FMA, exact in sign). The
   inputs where a step could overflow or a residual underflow (below 2**-900, above 2**900),
   and zero, subnormal, inf, nan and negative lanes, go to the hardware instruction instead
   (a whole vector at a time; zero lanes are passed through). bench/verify_sqrt.py compares it
   with the hardware on 1e9 and more inputs of every class. The FMAs here are inside one
   operation proven to be correctly rounded; the update rules' own statements stay
   uncontracted.

   FASTOPT_SOFT_SQRT is 1 where the sequence is compiled (AVX-512 with GCC or clang), 0
   elsewhere; fastopt_soft_roots(x, n) takes x[0:n] = sqrt(x[0:n]) in place, by the sequence
   where there is one and by the C library's sqrt otherwise. */

#ifndef FASTOPT_SOFT_SQRT_H
#define FASTOPT_SOFT_SQRT_H

#include <Python.h>   /* Py_ssize_t */

#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FASTOPT_SOFT_SQRT 1
static inline __attribute__((always_inline)) __m512d fastopt_sqrt8(__m512d x) {
    const __m512d half = _mm512_set1_pd(0.5), zero = _mm512_setzero_pd();
    const __m512i one = _mm512_set1_epi64(1);
    __mmask8 in_range = _mm512_cmp_pd_mask(x, _mm512_set1_pd(0x1p-900), _CMP_GE_OQ)
                      & _mm512_cmp_pd_mask(x, _mm512_set1_pd(0x1p900), _CMP_LE_OQ);
    __mmask8 zeros = _mm512_cmp_pd_mask(x, zero, _CMP_EQ_OQ);
    __m512d y, g, h, r, below, above;
    __mmask8 down, up;
    if ((__mmask8)(in_range | zeros) != (__mmask8)0xFF)
        return _mm512_sqrt_pd(x);
    y = _mm512_rsqrt14_pd(x);
    g = _mm512_mul_pd(x, y);
    h = _mm512_mul_pd(half, y);
    r = _mm512_fnmadd_pd(g, h, half);                 /* 1/2 - g*h */
    g = _mm512_fmadd_pd(g, r, g);
    h = _mm512_fmadd_pd(h, r, h);
    g = _mm512_fmadd_pd(h, _mm512_fnmadd_pd(g, g, x), g);   /* g + h*(x - g*g) */
    below = _mm512_castsi512_pd(_mm512_sub_epi64(_mm512_castpd_si512(g), one));
    above = _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(g), one));
    down = _mm512_cmp_pd_mask(_mm512_fmsub_pd(g, below, x), zero, _CMP_GE_OQ);
    up = _mm512_cmp_pd_mask(_mm512_fmsub_pd(g, above, x), zero, _CMP_LT_OQ);
    g = _mm512_mask_blend_pd(down, g, below);
    g = _mm512_mask_blend_pd(up, g, above);
    return _mm512_mask_blend_pd(zeros, g, x);
}
/* x[0:n] = sqrt(x[0:n]), in place; inlined, so a block of constant n is straight code. */
static inline __attribute__((always_inline)) void fastopt_soft_roots(double* x,
                                                                     Py_ssize_t n) {
    Py_ssize_t i = 0;
    __mmask8 tail;
    for (; i + 8 <= n; i += 8)
        _mm512_storeu_pd(x + i, fastopt_sqrt8(_mm512_loadu_pd(x + i)));
    if (i < n) {
        tail = (__mmask8)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_pd(x + i, tail, fastopt_sqrt8(
            _mm512_mask_loadu_pd(_mm512_set1_pd(1.0), tail, x + i)));
    }
}
#else
#include <math.h>
#define FASTOPT_SOFT_SQRT 0
static void fastopt_soft_roots(double* x, Py_ssize_t n) {
    Py_ssize_t i;
    for (i = 0; i < n; i++)
        x[i] = sqrt(x[i]);
}
#endif

#endif  /* FASTOPT_SOFT_SQRT_H */
