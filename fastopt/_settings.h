/* fastopt's run-time settings, included by fastopt/_kernels.pyx: the thread count, the
   square-root method and flush-to-zero, C ints read by every update and set from Python
   (fastopt/_settings.py, fastopt/_simd.py).

   Without the GIL a setter and an update can run at the same instant, so each setting is
   read and written with atomic loads and stores (fastopt_setting_get/set), never plain ones.
   Relaxed order is enough: each is one value on its own, and publishes no other memory. */

#ifndef FASTOPT_SETTINGS_H
#define FASTOPT_SETTINGS_H

#if defined(__GNUC__) || defined(__clang__)
#define FASTOPT_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define FASTOPT_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#else
/* MSVC: an aligned int is loaded and stored in one instruction; volatile makes the
   compiler emit exactly one load or store per access. */
#define FASTOPT_LOAD(x) (*(volatile int*)&(x))
#define FASTOPT_STORE(x, v) (*(volatile int*)&(x) = (v))
#endif
enum { FASTOPT_THREADS, FASTOPT_SOFT_ROOTS, FASTOPT_FLUSH, FASTOPT_SETTINGS };
static int fastopt_settings[FASTOPT_SETTINGS] = {1, 0, 0};
static int fastopt_setting_get(int which) { return FASTOPT_LOAD(fastopt_settings[which]); }
static void fastopt_setting_set(int which, int value) {
    FASTOPT_STORE(fastopt_settings[which], value);
}

#endif  /* FASTOPT_SETTINGS_H */
