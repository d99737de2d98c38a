"""Is float64 Adam bound by the divider? The book's Adam loop in C, built at three SIMD levels.

    python bench/investigations/divider.py [--elements 39760] [--repeats 2000]

Writes the loop (TwoLayerNet's 39,760 elements by default) to a temporary C file, builds it
with the flags fastopt ships (-O3 -fno-math-errno -ffp-contract=off) at the x86-64 baseline,
with AVX2+FMA, and for this machine's own CPU, and prints the best and median time of the
whole loop and of a loop doing only its sqrt and division. Needs a C compiler (cc). A
diagnostic for this machine only: nothing here is built into fastopt.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

SOURCE = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
static int order(const void* a, const void* b) { double x = *(const double*)a,
                                                  y = *(const double*)b; return (x > y) - (x < y); }
__attribute__((noinline)) void adam(double* p, const double* g, double* m, double* v, long n,
                                    double lr_t, double b1, double b2) {
    for (long i = 0; i < n; i++) {
        m[i] = m[i] + b1 * (g[i] - m[i]);
        v[i] = v[i] + b2 * (g[i] * g[i] - v[i]);
        p[i] = p[i] - lr_t * m[i] / (sqrt(v[i]) + 1e-7);
    }
}
__attribute__((noinline)) void divide(double* p, const double* m, const double* v, long n,
                                      double lr_t) {
    for (long i = 0; i < n; i++) p[i] = p[i] - lr_t * m[i] / (sqrt(v[i]) + 1e-7);
}
int main(int argc, char** argv) {
    long n = atol(argv[1]); int repeats = atoi(argv[2]);
    double *p = malloc(n * 8), *g = malloc(n * 8), *m = calloc(n, 8), *v = calloc(n, 8);
    double *a = malloc(repeats * 8), *d = malloc(repeats * 8);
    for (long i = 0; i < n; i++) { p[i] = 1; g[i] = 1e-3 * ((i % 7) - 3); }
    for (int r = 0; r < repeats; r++) {
        double t = now(); adam(p, g, m, v, n, 1e-9, 0.1, 0.001); a[r] = now() - t;
        t = now(); divide(p, m, v, n, 1e-9); d[r] = now() - t;
    }
    qsort(a, repeats, 8, order); qsort(d, repeats, 8, order);
    printf("%.1f %.1f %.1f %.1f\n", a[0] * 1e6, a[repeats / 2] * 1e6, d[0] * 1e6,
           d[repeats / 2] * 1e6);
    return 0;
}
"""
LEVELS = [("x86-64 baseline (SSE2)", []), ("AVX2 + FMA", ["-mavx2", "-mfma"]),
          ("this CPU (native)", ["-march=" + "native"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=39760)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    flags = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
    print(f"the book's float64 Adam loop over {args.elements} elements, best/median of "
          f"{args.repeats} runs, one core")
    print(f"{'build':24} {'Adam us':>16} {'sqrt+div only us':>18} {'ns/element':>11}")
    with tempfile.TemporaryDirectory() as work:
        source = os.path.join(work, "adam.c")
        with open(source, "w") as out:
            out.write(SOURCE)
        for label, extra in LEVELS:
            binary = os.path.join(work, "adam")
            subprocess.run(["cc", *flags, *extra, source, "-o", binary, "-lm"], check=True)
            output = subprocess.run([binary, str(args.elements), str(args.repeats)],
                                    capture_output=True, text=True, check=True).stdout
            best, median, div_best, div_median = map(float, output.split())
            print(f"{label:24} {best:7.1f} / {median:6.1f} {div_best:8.1f} / {div_median:6.1f} "
                  f"{best * 1e3 / args.elements:11.2f}")


if __name__ == "__main__":
    main()
