/* fastopt's opt-in flush-to-zero, included by fastopt/_kernels.pyx.

   Subnormal operands make x86 arithmetic take slow microcode assists
   (bench/investigations/denormals.py: Adam 10-60x slower once its state is subnormal). When enabled, each run of a loop calls
   fastopt_flush_begin, which sets MXCSR's flush-to-zero and denormals-are-zero bits in the
   thread that runs it and returns the thread's previous MXCSR, and fastopt_flush_end, which
   restores it: nothing outside fastopt's loops is affected. FASTOPT_CAN_FLUSH is 0 where
   there is no MXCSR (other CPUs); the two functions then do nothing. */

#ifndef FASTOPT_FPFLAGS_H
#define FASTOPT_FPFLAGS_H

#if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64)
#include <xmmintrin.h>
#define FASTOPT_CAN_FLUSH 1
static unsigned int fastopt_flush_begin(void) {
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u);   /* FTZ (bit 15) | DAZ (bit 6) */
    return saved;
}
static void fastopt_flush_end(unsigned int saved) { _mm_setcsr(saved); }
#else
#define FASTOPT_CAN_FLUSH 0
static unsigned int fastopt_flush_begin(void) { return 0; }
static void fastopt_flush_end(unsigned int saved) { (void)saved; }
#endif

#endif  /* FASTOPT_FPFLAGS_H */
