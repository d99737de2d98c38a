/* fastopt's thread pool, included by fastopt/_kernels.pyx: a small pool of POSIX threads of
   fastopt's own, started on the first update that uses more than one thread.

   A large update's elements (all its params laid end to end, each from a whole CHUNK_ALIGN:
   one region per update, see ``_run_all`` in _kernels.pyx) are cut into chunks of whole
   64-byte lines, so a chunk may cover the end of one param and the start of the next, and the
   calling thread and the pool's workers claim chunks one at a time from one shared atomic
   word. The caller works from the start and never waits for a worker that has not claimed a
   chunk: when the last chunk is taken it waits only for the chunks other threads are running.
   A worker that wakes late, or never gets a core, finds nothing left to claim. Every loop is
   elementwise, and the sums (``sum_of_squares``, Adafactor's passes) are split by blocks,
   rows or columns that the thread count does not change, so the bits do not depend on who
   runs which chunk.

   The word holds the job's generation (32 bits), its number of chunks and the next chunk to
   claim (16 bits each). A thread claims chunk i with a compare-and-swap from (g, n, i) to
   (g, n, i + 1), and only then reads the job (its function and the caller's data, which lives
   on the caller's stack): a successful claim means the job is not finished, because the
   caller waits until every claimed chunk is done, so the data is still there. Nothing read
   before the claim is used, so a worker that saw an older job cannot mix it with the current
   one, and a generation that came round again (after 2**32 jobs) is still the job the word
   describes. One job runs at a time; a caller that finds the pool busy (another Python thread
   is updating) runs its param on its own thread, with the same bits.

   Workers spin briefly after a job (consecutive params of one update find them awake), then
   sleep on a condition variable; they yield the CPU while they spin, so that a core shared
   with other work is not held. A job too small to repay a wake-up (the caller says so) runs
   on the caller alone while the workers sleep. The caller's own wait (for claimed chunks) spins without
   yielding for up to twice its own time per chunk (a worker on a core of its own finishes its
   last chunk within about one chunk's time of the caller), then sleeps; when it had to sleep,
   a worker lost its CPU, and the next few jobs (4, 8, ... at most 64) run on the caller
   alone. In a forked child the pool is empty (a pthread_atfork handler forgets the parent's
   workers) and starts again on its first threaded update. Builds without POSIX threads
   (MSVC) run on one thread: FASTOPT_POOL is 0 there and fastopt_pool_run runs the whole job
   on the calling thread. */

#ifndef FASTOPT_POOL_H
#define FASTOPT_POOL_H

#include <numpy/npy_common.h>   /* npy_intp */

#if (defined(__unix__) || defined(__APPLE__)) && (defined(__GNUC__) || defined(__clang__))
#define FASTOPT_POOL 1
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>

typedef void (*fastopt_chunk_fn)(void* job, npy_intp start, npy_intp stop);

#define FASTOPT_SPIN_NS 50000   /* how long a worker or a waiting caller spins */
#define FASTOPT_MAX_BACKOFF 64

static struct {
    uint64_t word;        /* atomic: generation << 32 | chunks << 16 | next chunk */
    npy_intp done;        /* atomic: chunks of the current job finished */
    int sleepers;         /* atomic: workers asleep on `wake` */
    int waiting;          /* atomic: the caller is asleep on `finished` */
    int wanted;           /* atomic: how many workers may join the current job */
    int busy;             /* atomic: a caller owns the pool */
    int hold;             /* atomic: tests only; workers claim nothing while set */
    long long worker_chunks;   /* atomic: chunks run by workers, for the tests */
    long long wakes;      /* atomic: jobs that woke sleeping workers, for the tests */
    /* The current job: written by its caller before it publishes `word`, read by a
       thread only after it has claimed one of the job's chunks. */
    fastopt_chunk_fn fn;
    void* job;
    npy_intp chunk, size;
    /* The caller's side, under `busy`. */
    uint32_t generation;
    int backoff, skip;    /* jobs to run on the caller alone after a worker was late */
    int started;          /* workers running (stored atomically: read from Python) */
    int atfork;           /* the fork handler is registered */
    pthread_mutex_t lock;
    pthread_cond_t wake, finished;
} fastopt_pool = {   /* every other field starts at 0 (NULL) */
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .finished = PTHREAD_COND_INITIALIZER,
};

static inline uint64_t fastopt_load_word(void) {
    return __atomic_load_n(&fastopt_pool.word, __ATOMIC_SEQ_CST);
}

static inline uint32_t fastopt_generation(uint64_t word) { return (uint32_t)(word >> 32); }
static inline npy_intp fastopt_chunks(uint64_t word) {
    return (npy_intp)((word >> 16) & 0xffff);
}
static inline npy_intp fastopt_next(uint64_t word) { return (npy_intp)(word & 0xffff); }

static inline void fastopt_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline long long fastopt_now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Claim and run chunks of the job in `word` until none is left; return how many ran. */
static npy_intp fastopt_claim(void) {
    uint64_t word = fastopt_load_word();
    npy_intp ran = 0;
    while (fastopt_next(word) < fastopt_chunks(word)) {
        if (!__atomic_compare_exchange_n(&fastopt_pool.word, &word, word + 1, 0,
                                         __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            continue;   /* `word` now holds the current value: try again */
        /* Chunk fastopt_next(word) is ours, so its job is running: read it now. */
        npy_intp start = fastopt_next(word) * fastopt_pool.chunk;
        npy_intp stop = start + fastopt_pool.chunk;
        if (stop > fastopt_pool.size)
            stop = fastopt_pool.size;
        fastopt_pool.fn(fastopt_pool.job, start, stop);
        ran++;
        npy_intp chunks = fastopt_chunks(word);
        /* The last access to the job: after it the caller may return. */
        if (__atomic_add_fetch(&fastopt_pool.done, 1, __ATOMIC_SEQ_CST) == chunks
                && __atomic_load_n(&fastopt_pool.waiting, __ATOMIC_SEQ_CST)) {
            pthread_mutex_lock(&fastopt_pool.lock);
            pthread_cond_broadcast(&fastopt_pool.finished);
            pthread_mutex_unlock(&fastopt_pool.lock);
        }
        word = fastopt_load_word();
    }
    return ran;
}

static void* fastopt_worker(void* arg) {
    int index = (int)(intptr_t)arg;
    uint32_t seen = fastopt_generation(fastopt_load_word());
    for (;;) {
        uint64_t word = fastopt_load_word();
        if (fastopt_generation(word) == seen) {
            /* Nothing new: spin a little (yielding), then sleep until a job comes. */
            long long until = fastopt_now_ns() + FASTOPT_SPIN_NS;
            int spins = 0;
            while (fastopt_generation(fastopt_load_word()) == seen) {
                if (++spins % 64 == 0) {
                    if (fastopt_now_ns() > until)
                        break;
                    sched_yield();
                }
                fastopt_relax();
            }
            pthread_mutex_lock(&fastopt_pool.lock);
            __atomic_add_fetch(&fastopt_pool.sleepers, 1, __ATOMIC_SEQ_CST);
            while (fastopt_generation(fastopt_load_word()) == seen)
                pthread_cond_wait(&fastopt_pool.wake, &fastopt_pool.lock);
            __atomic_sub_fetch(&fastopt_pool.sleepers, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&fastopt_pool.lock);
            continue;
        }
        seen = fastopt_generation(word);
        while (__atomic_load_n(&fastopt_pool.hold, __ATOMIC_SEQ_CST)) {
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL);
        }
        if (index < __atomic_load_n(&fastopt_pool.wanted, __ATOMIC_SEQ_CST)) {
            npy_intp ran = fastopt_claim();
            if (ran)
                __atomic_add_fetch(&fastopt_pool.worker_chunks, ran, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

/* In a forked child only the forking thread exists: forget the parent's workers (and a
   job another of its threads may have been running); the pool starts again when needed. */
static void fastopt_pool_forget(void) {
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t wake = PTHREAD_COND_INITIALIZER, finished = PTHREAD_COND_INITIALIZER;
    fastopt_pool.lock = lock;
    fastopt_pool.wake = wake;
    fastopt_pool.finished = finished;
    fastopt_pool.started = 0;
    fastopt_pool.sleepers = 0;
    fastopt_pool.waiting = 0;
    fastopt_pool.wanted = 0;
    fastopt_pool.done = 0;
    fastopt_pool.word = (uint64_t)fastopt_pool.generation << 32;
    fastopt_pool.busy = 0;
    fastopt_pool.backoff = fastopt_pool.skip = 0;
}

/* Start workers up to `count`; fewer if the system refuses. Under `busy`. */
static void fastopt_pool_grow(int count) {
    pthread_attr_t attr;
    sigset_t all, previous;
    if (!fastopt_pool.atfork) {
        if (pthread_atfork(NULL, NULL, fastopt_pool_forget) != 0)
            return;
        fastopt_pool.atfork = 1;
    }
    if (pthread_attr_init(&attr) != 0)
        return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 1 << 20);
    /* Workers block every signal: signals go to the process's own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    while (fastopt_pool.started < count) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, fastopt_worker,
                           (void*)(intptr_t)fastopt_pool.started) != 0)
            break;
        /* atomic: pool_workers() reads it without owning the pool */
        __atomic_store_n(&fastopt_pool.started, fastopt_pool.started + 1,
                         __ATOMIC_SEQ_CST);
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_attr_destroy(&attr);
}

/* Run fn(job, start, stop) over [0, size) in chunks of `chunk` elements (the last may be
   shorter; at most 65535 chunks), on the calling thread and up to threads - 1 workers. With
   `wake` 0 (a job too small to repay a sleeping worker's wake-up), the workers join only if
   none of them is asleep (they ran a job within the last FASTOPT_SPIN_NS, or the pool is
   starting); otherwise the caller runs the whole job alone. */
static void fastopt_pool_run(fastopt_chunk_fn fn, void* job, npy_intp size, npy_intp chunk,
                             int threads, int wake) {
    npy_intp chunks = (size + chunk - 1) / chunk;
    int expected = 0;
    if (!wake && __atomic_load_n(&fastopt_pool.sleepers, __ATOMIC_SEQ_CST)) {
        fn(job, 0, size);
        return;
    }
    if (threads < 2 || chunks < 2 || chunks > 0xffff
            || !__atomic_compare_exchange_n(&fastopt_pool.busy, &expected, 1, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        fn(job, 0, size);
        return;
    }
    if (fastopt_pool.skip > 0) {
        /* A worker was late lately: the CPUs are busy with other work. */
        fastopt_pool.skip--;
        __atomic_store_n(&fastopt_pool.busy, 0, __ATOMIC_SEQ_CST);
        fn(job, 0, size);
        return;
    }
    if (fastopt_pool.started < threads - 1)
        fastopt_pool_grow(threads - 1);
    fastopt_pool.fn = fn;
    fastopt_pool.job = job;
    fastopt_pool.chunk = chunk;
    fastopt_pool.size = size;
    __atomic_store_n(&fastopt_pool.done, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&fastopt_pool.wanted, threads - 1, __ATOMIC_SEQ_CST);
    fastopt_pool.generation++;
    __atomic_store_n(&fastopt_pool.word, (uint64_t)fastopt_pool.generation << 32
                     | (uint64_t)chunks << 16, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&fastopt_pool.sleepers, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(&fastopt_pool.wakes, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&fastopt_pool.lock);
        pthread_cond_broadcast(&fastopt_pool.wake);
        pthread_mutex_unlock(&fastopt_pool.lock);
    }
    long long began = fastopt_now_ns();
    npy_intp mine = fastopt_claim();
    /* Every chunk is claimed: wait for those other threads are running. */
    if (__atomic_load_n(&fastopt_pool.done, __ATOMIC_SEQ_CST) != chunks) {
        /* A worker on a core of its own finishes the chunk it holds within about one
           chunk's time of this thread's last, so that is how long the wait may take
           before the worker counts as late: twice the caller's own time per chunk, plus
           the spin. (Timed against a fixed spin alone, every chunk longer than the spin
           counted as late, and a large update ran on the caller alone most of the time.)
           Spin without yielding: sched_yield would hand this CPU to another process for
           the rest of its time slice, milliseconds. */
        long long ended = fastopt_now_ns();
        long long per_chunk = mine > 0 ? (ended - began) / mine : 0;
        long long until = ended + FASTOPT_SPIN_NS + 2 * per_chunk;
        int spins = 0;
        while (__atomic_load_n(&fastopt_pool.done, __ATOMIC_SEQ_CST) != chunks) {
            if (++spins % 64 == 0 && fastopt_now_ns() > until)
                break;
            fastopt_relax();
        }
        if (__atomic_load_n(&fastopt_pool.done, __ATOMIC_SEQ_CST) != chunks) {
            /* A worker that claimed a chunk has lost its CPU: wait for it asleep, and
               run the next jobs alone, more of them each time this happens again. */
            fastopt_pool.backoff = fastopt_pool.backoff ? fastopt_pool.backoff * 2 : 4;
            if (fastopt_pool.backoff > FASTOPT_MAX_BACKOFF)
                fastopt_pool.backoff = FASTOPT_MAX_BACKOFF;
            fastopt_pool.skip = fastopt_pool.backoff;
        }
        pthread_mutex_lock(&fastopt_pool.lock);
        __atomic_store_n(&fastopt_pool.waiting, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&fastopt_pool.done, __ATOMIC_SEQ_CST) != chunks)
            pthread_cond_wait(&fastopt_pool.finished, &fastopt_pool.lock);
        __atomic_store_n(&fastopt_pool.waiting, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&fastopt_pool.lock);
    } else {
        fastopt_pool.backoff /= 2;
    }
    __atomic_store_n(&fastopt_pool.busy, 0, __ATOMIC_SEQ_CST);
}

static void fastopt_pool_hold(int hold) {
    __atomic_store_n(&fastopt_pool.hold, hold, __ATOMIC_SEQ_CST);
}
static long long fastopt_pool_worker_chunks(void) {
    return __atomic_load_n(&fastopt_pool.worker_chunks, __ATOMIC_SEQ_CST);
}
static long long fastopt_pool_wakes(void) {
    return __atomic_load_n(&fastopt_pool.wakes, __ATOMIC_SEQ_CST);
}
static int fastopt_pool_sleepers(void) {
    return __atomic_load_n(&fastopt_pool.sleepers, __ATOMIC_SEQ_CST);
}
static int fastopt_pool_workers(void) {
    return __atomic_load_n(&fastopt_pool.started, __ATOMIC_SEQ_CST);
}
#else
#define FASTOPT_POOL 0
typedef void (*fastopt_chunk_fn)(void* job, npy_intp start, npy_intp stop);
static void fastopt_pool_run(fastopt_chunk_fn fn, void* job, npy_intp size, npy_intp chunk,
                             int threads, int wake) {
    (void)chunk; (void)threads; (void)wake;
    fn(job, 0, size);
}
static void fastopt_pool_hold(int hold) { (void)hold; }
static long long fastopt_pool_worker_chunks(void) { return 0; }
static long long fastopt_pool_wakes(void) { return 0; }
static int fastopt_pool_sleepers(void) { return 0; }
static int fastopt_pool_workers(void) { return 0; }
#endif

#endif  /* FASTOPT_POOL_H */
