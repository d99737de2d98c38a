# cython: language_level=3, cdivision=True, autotestdict=False
# cdivision=True is part of the meaning here: x/0 must give inf or nan as in NumPy, never
# ZeroDivisionError. Safety directives (boundscheck, wraparound, initializedcheck) come from
# setup.py so FASTOPT_DEBUG_BUILD=1 can turn them back on.
"""Compiled update loops of fastopt: every optimizer's arithmetic lives here.

Each public ``<algo>_step`` takes lists holding, for every param to update, the param, its
grad and its state arrays, followed by the hyperparameters in the order of the matching rule
of ``fastopt.reference``. It either updates every param in place, in one stretch without the
GIL, and returns True, or, when any param is not one the loops can take exactly as NumPy
would (``ready``), touches nothing and returns False; the Python layer then checks the inputs,
explains what is wrong, or takes NumPy's path for that param. These checks are what keep the
loops inside memory, so they are never skipped.

setup.py compiles this one source at up to three instruction-set levels (``fastopt._kernels``,
the x86-64 baseline; ``_kernels_avx2``; ``_kernels_avx512``) and fastopt/_simd.py imports the
widest the CPU runs. The levels differ only in how wide the compiler vectorises the loops.

Order of operations follows ``fastopt.reference`` statement by statement, and each statement
is rounded to the array's dtype as NumPy >= 2 rounds it (Python float scalars are converted to
the array's dtype first), so results are bit-identical to the reference in float64 and in
float32. The only arithmetic done on scalars here is a single IEEE operation in double
(``1 - beta1``, ``momentum * momentum``, ``(1 + momentum) * lr``), which gives the same bits as
Python does; powers (Adam's bias corrections and lr_t) are computed in Python.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf
from libc.stdlib cimport free, malloc

cimport numpy as cnp

cnp.import_array()

ctypedef cnp.npy_intp intp

# Every update loop has this signature, so one driver can check and dispatch them all:
# the parameter, its gradient, up to two state buffers, the element count, and the scalars.
ctypedef void (*loop_float)(float*, const float*, float*, float*, intp,
                            const double*) noexcept nogil
ctypedef void (*loop_double)(double*, const double*, double*, double*, intp,
                             const double*) noexcept nogil


cdef inline floating _root(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _denominator(floating x, floating eps, bint eps_inside_sqrt) noexcept nogil:
    """``sqrt(x) + eps`` (the book), or ``sqrt(x + eps)`` (Keras, the seed notes' RMSprop)."""
    if eps_inside_sqrt:
        return _root(x + eps)
    return _root(x) + eps


# ---------------------------------------------------------------------------------------------
# The update loops. Scalars arrive as double and are converted to the array's dtype once, as
# NumPy converts a Python float that meets a float32 array.

cdef void _sgd(floating* p, const floating* g, floating* unused0, floating* unused1, intp n,
               const double* c) noexcept nogil:
    # c: lr
    cdef floating lr = <floating>c[0]
    cdef intp i
    for i in range(n):
        p[i] = p[i] - lr * g[i]


cdef void _momentum(floating* p, const floating* g, floating* v, floating* unused, intp n,
                    const double* c) noexcept nogil:
    # c: lr, momentum
    cdef floating lr = <floating>c[0]
    cdef floating momentum = <floating>c[1]
    cdef intp i
    for i in range(n):
        v[i] = momentum * v[i] - lr * g[i]
        p[i] = p[i] + v[i]


cdef void _nesterov(floating* p, const floating* g, floating* v, floating* unused, intp n,
                    const double* c) noexcept nogil:
    # c: lr, momentum. The book since 2021: parameter first, then velocity.
    cdef floating lr = <floating>c[0]
    cdef floating momentum = <floating>c[1]
    cdef floating momentum2 = <floating>(c[1] * c[1])
    cdef floating step = <floating>((1.0 + c[1]) * c[0])
    cdef floating param, velocity
    cdef intp i
    # Statement by statement, each rounded to the dtype; kept in registers (the planner
    # guarantees that p, g and v never share memory).
    for i in range(n):
        param = p[i] + momentum2 * v[i]
        p[i] = param - step * g[i]
        velocity = v[i] * momentum
        v[i] = velocity - lr * g[i]


cdef void _nesterov_velocity_first(floating* p, const floating* g, floating* v,
                                   floating* unused, intp n, const double* c) noexcept nogil:
    # c: lr, momentum. The book's 2016 form: velocity first, then parameter.
    cdef floating lr = <floating>c[0]
    cdef floating momentum = <floating>c[1]
    cdef floating momentum2 = <floating>(c[1] * c[1])
    cdef floating step = <floating>((1.0 + c[1]) * c[0])
    cdef floating param, velocity
    cdef intp i
    for i in range(n):
        velocity = v[i] * momentum
        velocity = velocity - lr * g[i]
        v[i] = velocity
        param = p[i] + momentum2 * velocity
        p[i] = param - step * g[i]


cdef void _adagrad(floating* p, const floating* g, floating* h, floating* unused, intp n,
                   const double* c) noexcept nogil:
    # c: lr, eps, eps_inside_sqrt
    cdef floating lr = <floating>c[0]
    cdef floating eps = <floating>c[1]
    cdef bint inside = c[2] != 0.0
    cdef intp i
    for i in range(n):
        h[i] = h[i] + g[i] * g[i]
        p[i] = p[i] - lr * g[i] / _denominator(h[i], eps, inside)


cdef void _rmsprop(floating* p, const floating* g, floating* h, floating* unused, intp n,
                   const double* c) noexcept nogil:
    # c: lr, decay_rate, eps, eps_inside_sqrt
    cdef floating lr = <floating>c[0]
    cdef floating decay_rate = <floating>c[1]
    cdef floating keep = <floating>(1.0 - c[1])
    cdef floating eps = <floating>c[2]
    cdef bint inside = c[3] != 0.0
    cdef intp i
    for i in range(n):
        h[i] = h[i] * decay_rate
        h[i] = h[i] + keep * g[i] * g[i]
        p[i] = p[i] - lr * g[i] / _denominator(h[i], eps, inside)


cdef void _adam(floating* p, const floating* g, floating* m, floating* v, intp n,
                const double* c) noexcept nogil:
    # c: lr_t, beta1, beta2, eps, eps_inside_sqrt.
    # lr_t is a NumPy float64 in the book, so under NumPy >= 2 the last statement is computed
    # in float64 even for float32 arrays, and rounded once when stored: so here too.
    cdef double lr_t = c[0]
    cdef floating one_minus_beta1 = <floating>(1.0 - c[1])
    cdef floating one_minus_beta2 = <floating>(1.0 - c[2])
    cdef floating eps = <floating>c[3]
    cdef bint inside = c[4] != 0.0
    cdef intp i
    for i in range(n):
        m[i] = m[i] + one_minus_beta1 * (g[i] - m[i])
        v[i] = v[i] + one_minus_beta2 * (g[i] * g[i] - v[i])
        p[i] = <floating>(<double>p[i]
                          - lr_t * <double>m[i] / <double>_denominator(v[i], eps, inside))


cdef void _adam_paper(floating* p, const floating* g, floating* m, floating* v, intp n,
                      const double* c) noexcept nogil:
    # c: lr, beta1, beta2, bias_correction1, bias_correction2, eps, eps_inside_sqrt
    # (Kingma & Ba, Algorithm 1; bias corrections 1 - beta**t computed in Python).
    cdef floating lr = <floating>c[0]
    cdef floating beta1 = <floating>c[1]
    cdef floating beta2 = <floating>c[2]
    cdef floating one_minus_beta1 = <floating>(1.0 - c[1])
    cdef floating one_minus_beta2 = <floating>(1.0 - c[2])
    cdef floating bias_correction1 = <floating>c[3]
    cdef floating bias_correction2 = <floating>c[4]
    cdef floating eps = <floating>c[5]
    cdef bint inside = c[6] != 0.0
    cdef floating m_hat, v_hat
    cdef intp i
    for i in range(n):
        m[i] = beta1 * m[i] + one_minus_beta1 * g[i]
        v[i] = beta2 * v[i] + one_minus_beta2 * g[i] * g[i]
        m_hat = m[i] / bias_correction1
        v_hat = v[i] / bias_correction2
        p[i] = p[i] - lr * m_hat / _denominator(v_hat, eps, inside)


# ---------------------------------------------------------------------------------------------
# Checks and the driver.

cdef inline bint _fits(cnp.ndarray a, cnp.ndarray like, bint target) noexcept:
    """Whether ``a`` has ``like``'s dtype and shape and can be read (or written) as one run."""
    cdef int ndim = cnp.PyArray_NDIM(like)
    cdef int d
    if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(like) or cnp.PyArray_NDIM(a) != ndim
            or not cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    for d in range(ndim):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(like)[d]:
            return False
    if target:
        return cnp.PyArray_ISCARRAY(a)   # C-contiguous, aligned, writeable, native order
    return cnp.PyArray_ISCARRAY_RO(a)    # C-contiguous, aligned, native order


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char* a0 = cnp.PyArray_BYTES(a)
    cdef char* b0 = cnp.PyArray_BYTES(b)
    cdef intp na = cnp.PyArray_NBYTES(a)
    cdef intp nb = cnp.PyArray_NBYTES(b)
    return na > 0 and nb > 0 and a0 < b0 + nb and b0 < a0 + na


ctypedef struct Task:
    # One param's update: its buffers (state pointers NULL when unused) and element count.
    void* param
    void* grad
    void* state0
    void* state1
    intp size
    bint single   # float32 rather than float64


cdef bint _plan(object param, object grad, object state0, object state1, Task* task) noexcept:
    """Fill ``task`` and return True if the loops can update this param as NumPy would.

    That is: exact ndarrays of one native float32/float64 dtype and one shape, C-contiguous
    and aligned, the targets writeable, and no two sharing memory (a fused loop reads each
    element once, where NumPy's separate statements would see one another's writes).
    """
    if type(param) is not cnp.ndarray or type(grad) is not cnp.ndarray:
        return False
    cdef cnp.ndarray p = <cnp.ndarray>param, g = <cnp.ndarray>grad
    cdef int typenum = cnp.PyArray_TYPE(p)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return False
    # PyArray_ISCARRAY: C-contiguous, aligned, writeable and native byte order
    if not (cnp.PyArray_ISCARRAY(p) and _fits(g, p, False)) or _overlap(p, g):
        return False
    task.param = cnp.PyArray_DATA(p)
    task.grad = cnp.PyArray_DATA(g)
    task.size = cnp.PyArray_SIZE(p)
    task.single = typenum == cnp.NPY_FLOAT
    return (_plan_state(state0, p, g, None, &task.state0)
            and _plan_state(state1, p, g, state0, &task.state1))


cdef bint _plan_state(object state, cnp.ndarray p, cnp.ndarray g, object other,
                      void** data) noexcept:
    """Set ``data`` to the buffer of ``state`` (NULL for None) if the loop can write it
    beside ``p``, ``g`` and ``other`` (the other state array, already planned)."""
    data[0] = NULL
    if state is None:
        return True
    if type(state) is not cnp.ndarray:
        return False
    cdef cnp.ndarray s = <cnp.ndarray>state
    if not _fits(s, p, True) or _overlap(s, p) or _overlap(s, g):
        return False
    if other is not None and _overlap(s, <cnp.ndarray>other):
        return False
    data[0] = cnp.PyArray_DATA(s)
    return True


def ready(param, grad, state0=None, state1=None):
    """Whether the compiled loops can update this param (with these state arrays) exactly as
    NumPy would; otherwise the caller takes NumPy's path."""
    cdef Task task
    return _plan(param, grad, state0, state1, &task)


cdef enum:
    STACK_TASKS = 32   # params planned without a heap allocation


# ---------------------------------------------------------------------------------------------
# Threads. A large param is split into one contiguous chunk per thread; every loop is
# elementwise, so the bits do not depend on the number of threads.

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTOPT_OPENMP 1
    #else
    #define FASTOPT_OPENMP 0
    #endif
    """
    const int FASTOPT_OPENMP

cdef enum:
    # From how many elements a param is split across threads, measured with bench/threads.py
    # on 2 cores: loops that only stream memory (SGD, Momentum, Nesterov) gain from about
    # 2**17 elements (float32 SGD: 0.86x at 2**16, 1.5x at 2**18); loops bound by sqrt and
    # division (AdaGrad, RMSprop, Adam) already at 2**12 (Adam: 1.1x at 2**12, 1.4-1.6x at
    # 2**14).
    STREAMING_MIN = 1 << 17
    DIVIDING_MIN = 1 << 13
    CHUNK_ALIGN = 16   # elements: chunks start on whole 64-byte lines for float32 and float64

cdef int _threads = 1
cdef bint _threads_used = False    # has a parallel region run in this process?
cdef bint _forked_child = False    # forked after the parent ran threads: GNU OpenMP would hang


def openmp() -> bool:
    """Whether this build can run the loops on several threads (compiled with OpenMP)."""
    return bool(FASTOPT_OPENMP)


def set_threads(int count):
    """Use up to ``count`` threads per large param; 1 without OpenMP or in a forked child."""
    global _threads
    if count < 1:
        raise ValueError(f"the number of threads must be >= 1; got {count}")
    _threads = count if FASTOPT_OPENMP and not _forked_child else 1


def get_threads() -> int:
    """The number of threads a large param's update is split into."""
    return _threads


def after_fork_in_child():
    """Called in a child process after os.fork(): GNU OpenMP's threads do not survive a fork,
    and a child that enters a parallel region after its parent did can hang; such a child
    runs every loop on one thread."""
    global _threads, _forked_child
    if _threads_used:
        _forked_child = True
        _threads = 1


# ---------------------------------------------------------------------------------------------
# Opt-in flush-to-zero. Subnormal operands make x86 arithmetic take slow microcode assists
# (bench/denormals.py: Adam 10-60x slower once its state is subnormal). When enabled, each
# run of a loop sets MXCSR's flush-to-zero and denormals-are-zero bits in the thread that runs
# it and restores the thread's previous MXCSR afterwards: nothing outside fastopt's loops is
# affected. Results then differ from NumPy's wherever a value is subnormal.

cdef extern from *:
    """
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
    """
    const int FASTOPT_CAN_FLUSH
    unsigned int fastopt_flush_begin() noexcept nogil
    void fastopt_flush_end(unsigned int saved) noexcept nogil

cdef bint _flush = False


def can_flush_denormals() -> bool:
    """Whether this build can flush subnormals to zero inside its loops (x86-64)."""
    return bool(FASTOPT_CAN_FLUSH)


def set_flush_denormals(bint enabled):
    """Flush subnormal inputs and results to zero inside the compiled loops, or stop."""
    global _flush
    if enabled and not FASTOPT_CAN_FLUSH:
        raise ValueError("flushing subnormals is only available on x86-64 builds")
    _flush = enabled


def get_flush_denormals() -> bool:
    return _flush


cdef inline void* _at(void* buffer, intp offset, intp itemsize) noexcept nogil:
    return NULL if buffer == NULL else <void*>(<char*>buffer + offset * itemsize)


cdef void _run_part(Task* task, loop_float run_float, loop_double run_double, const double* c,
                    intp start, intp stop, bint flush) noexcept nogil:
    """Run ``task``'s loop on elements [start, stop), flushing subnormals if asked."""
    cdef intp itemsize = 4 if task.single else 8
    cdef unsigned int saved = 0
    if flush:
        saved = fastopt_flush_begin()
    if task.single:
        run_float(<float*>_at(task.param, start, itemsize),
                  <const float*>_at(task.grad, start, itemsize),
                  <float*>_at(task.state0, start, itemsize),
                  <float*>_at(task.state1, start, itemsize), stop - start, c)
    else:
        run_double(<double*>_at(task.param, start, itemsize),
                   <const double*>_at(task.grad, start, itemsize),
                   <double*>_at(task.state0, start, itemsize),
                   <double*>_at(task.state1, start, itemsize), stop - start, c)
    if flush:
        fastopt_flush_end(saved)


cdef void _run_task(Task* task, loop_float run_float, loop_double run_double, const double* c,
                    int threads, intp parallel_min, bint flush) noexcept nogil:
    cdef intp chunk, start, part
    if threads < 2 or task.size < parallel_min:
        _run_part(task, run_float, run_double, c, 0, task.size, flush)
        return
    chunk = (task.size + threads - 1) // threads
    chunk = (chunk + CHUNK_ALIGN - 1) // CHUNK_ALIGN * CHUNK_ALIGN
    for part in prange(threads, num_threads=threads, schedule="static"):
        start = part * chunk
        if start < task.size:
            _run_part(task, run_float, run_double, c, start, min(start + chunk, task.size),
                      flush)


cdef bint _run(object params, object grads, object states0, object states1, int required,
               loop_float run_float, loop_double run_double, const double* c,
               intp parallel_min) except -1:
    """Update every param, or none.

    ``params``, ``grads`` and the ``required`` state containers (0 to 2) are all lists of the
    same length, or all dicts, the book's style, keyed by str. First plans every param
    (``_plan``); if any one cannot be taken (or a dict lacks its key), returns False having
    touched nothing. Otherwise runs all the loops in one stretch without the GIL (large params
    split across threads) and returns True.
    """
    global _threads_used
    cdef Py_ssize_t k, count
    cdef Task stack[STACK_TASKS]
    cdef Task* tasks = stack
    cdef int threads = _threads
    cdef bint flush = _flush
    cdef bint by_key = type(params) is dict
    cdef list keep = []   # dict path: every planned object, held until its loop has run
    if by_key:
        if (type(grads) is not dict or (required > 0 and type(states0) is not dict)
                or (required > 1 and type(states1) is not dict)):
            raise TypeError("params is a dict, so grads and the state must be dicts")
    elif type(params) is list:
        if (type(grads) is not list or (required > 0 and type(states0) is not list)
                or (required > 1 and type(states1) is not list)):
            raise TypeError("params is a list, so grads and the state must be lists")
        if (len(grads) != len(params) or (required > 0 and len(states0) != len(params))
                or (required > 1 and len(states1) != len(params))):
            raise ValueError("params, grads and state lists must have the same length")
    else:
        raise TypeError(f"params must be a list or a dict; got {type(params).__name__}")
    count = len(params)
    if count > STACK_TASKS:
        tasks = <Task*>malloc(count * sizeof(Task))
        if tasks == NULL:
            raise MemoryError()
    try:
        if by_key:
            k = 0
            for key, param in (<dict>params).items():
                # str keys only, so that looking them up in grads and the state runs no Python
                # code of the keys' own; and ``keep`` holds every planned array, so that even
                # code of a foreign key in grads cannot free one before its loop runs. Such
                # code could also swap keys without changing the dict's size, which the dict
                # iteration would not notice: never plan more than ``count`` params.
                if k == count or type(key) is not str or not _plan_by_key(
                        key, param, <dict>grads, states0, states1, required, &tasks[k], keep):
                    return False
                k += 1
        else:
            for k in range(count):
                if not _plan(params[k], grads[k], states0[k] if required > 0 else None,
                             states1[k] if required > 1 else None, &tasks[k]):
                    return False
        for k in range(count):
            if threads > 1 and tasks[k].size >= parallel_min:
                _threads_used = True
        with nogil:
            for k in range(count):
                _run_task(&tasks[k], run_float, run_double, c, threads, parallel_min, flush)
        return True
    finally:
        if tasks != stack:
            free(tasks)


cdef bint _plan_by_key(str key, object param, dict grads, object states0, object states1,
                       int required, Task* task, list keep) except -1:
    """``_plan`` for one key of dict params; False if grads or a state lacks the key."""
    cdef object grad = grads.get(key)
    cdef object state0 = None, state1 = None
    if grad is None:
        return False
    if required > 0:
        state0 = (<dict>states0).get(key)
        if state0 is None:
            return False
    if required > 1:
        state1 = (<dict>states1).get(key)
        if state1 is None:
            return False
    keep.append((param, grad, state0, state1))
    return _plan(param, grad, state0, state1, task)


# ---------------------------------------------------------------------------------------------
# Public entries: one per update rule, arguments in the order of fastopt.reference's rules.
# params, grads and the state come as lists of the same length or as dicts keyed by str (the
# book's style). Each entry updates every param and returns True, or, if any param is not one
# the loops can take (see ``ready``) or a dict lacks a key, updates none and returns False.

def sgd_step(params, grads, double lr):
    """``p -= lr*g`` for every param."""
    cdef double c[1]
    c[0] = lr
    return _run(params, grads, None, None, 0, _sgd[float], _sgd[double], c, STREAMING_MIN)


def momentum_step(params, grads, v,
                  double lr, double momentum):
    """``v = momentum*v - lr*g; p += v`` for every param."""
    cdef double c[2]
    c[0] = lr
    c[1] = momentum
    return _run(params, grads, v, None, 1, _momentum[float], _momentum[double], c,
                STREAMING_MIN)


def nesterov_step(params, grads, v,
                  double lr, double momentum, bint velocity_first):
    """Nesterov momentum; the book's 2016 order when ``velocity_first``."""
    cdef double c[2]
    c[0] = lr
    c[1] = momentum
    if velocity_first:
        return _run(params, grads, v, None, 1, _nesterov_velocity_first[float],
                    _nesterov_velocity_first[double], c, STREAMING_MIN)
    else:
        return _run(params, grads, v, None, 1, _nesterov[float], _nesterov[double], c,
                    STREAMING_MIN)


def adagrad_step(params, grads, h,
                 double lr, double eps, bint eps_inside_sqrt):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)`` for every param."""
    cdef double c[3]
    c[0] = lr
    c[1] = eps
    c[2] = eps_inside_sqrt
    return _run(params, grads, h, None, 1, _adagrad[float], _adagrad[double], c, DIVIDING_MIN)


def rmsprop_step(params, grads, h,
                 double lr, double decay_rate, double eps, bint eps_inside_sqrt):
    """``h *= decay_rate; h += (1-decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``."""
    cdef double c[4]
    c[0] = lr
    c[1] = decay_rate
    c[2] = eps
    c[3] = eps_inside_sqrt
    return _run(params, grads, h, None, 1, _rmsprop[float], _rmsprop[double], c, DIVIDING_MIN)


def adam_step(params, grads, m, v,
              double lr_t, double beta1, double beta2, double eps, bint eps_inside_sqrt):
    """The book's Adam: ``m += (1-beta1)*(g-m); v += (1-beta2)*(g**2-v);
    p -= lr_t*m / (sqrt(v) + eps)``."""
    cdef double c[5]
    c[0] = lr_t
    c[1] = beta1
    c[2] = beta2
    c[3] = eps
    c[4] = eps_inside_sqrt
    return _run(params, grads, m, v, 2, _adam[float], _adam[double], c, DIVIDING_MIN)


def adam_paper_step(params, grads, m,
                    v, double lr, double beta1, double beta2,
                    double bias_correction1, double bias_correction2, double eps,
                    bint eps_inside_sqrt):
    """Adam as in the paper's Algorithm 1 (bias-corrected moments)."""
    cdef double c[7]
    c[0] = lr
    c[1] = beta1
    c[2] = beta2
    c[3] = bias_correction1
    c[4] = bias_correction2
    c[5] = eps
    c[6] = eps_inside_sqrt
    return _run(params, grads, m, v, 2, _adam_paper[float], _adam_paper[double], c, DIVIDING_MIN)


# ---------------------------------------------------------------------------------------------
# For the benchmark: what the loops were compiled for, and the memory limit they run against.

cdef extern from *:
    """
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
    """
    const char* FASTOPT_COMPILED_SIMD


def compiled_simd():
    """The widest SIMD instruction set these loops were compiled to use."""
    return FASTOPT_COMPILED_SIMD.decode()


# Run-time dispatch (setup.py, fastopt/_simd.py): the baseline module, which any x86-64 runs,
# tells which of the wider builds this CPU can run. The compiler's builtins also check that the
# OS saves the wider registers (XGETBV), not only that the CPU has the instructions.

cdef extern from *:
    """
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
    """
    int fastopt_cpu_level() noexcept nogil


def cpu_simd_level():
    """The widest of fastopt's SIMD levels this CPU and OS can run: 'baseline', 'avx2' (AVX2
    and FMA) or 'avx512' (AVX-512 F, CD, BW, DQ, VL). Always 'baseline' in builds without
    dispatch (other CPUs, MSVC), and in every module but the baseline one."""
    return ("baseline", "avx2", "avx512")[fastopt_cpu_level()]


cdef void _stream(floating* t0, const floating* s, floating* t1, floating* t2, intp n,
                  const double* c) noexcept nogil:
    # c: the number of targets, 1 to 3 (t1 and t2 are NULL when unused)
    cdef int targets = <int>c[0]
    cdef intp i
    if targets == 1:
        for i in range(n):
            t0[i] = t0[i] + s[i]
    elif targets == 2:
        for i in range(n):
            t0[i] = t0[i] + s[i]
            t1[i] = t1[i] + s[i]
    else:
        for i in range(n):
            t0[i] = t0[i] + s[i]
            t1[i] = t1[i] + s[i]
            t2[i] = t2[i] + s[i]


def bandwidth_probe(list targets not None, source):
    """One pass that reads ``source`` and reads and writes 1 to 3 ``targets``.

    The memory traffic of an update that reads a grad and reads and writes the param and its
    state, with trivial arithmetic, run by the same planner and on the same threads as the
    updates: the benchmark's yardstick for the memory limit.
    """
    cdef double c[1]
    cdef int count = len(targets)
    if not 1 <= count <= 3:
        raise ValueError("bandwidth_probe takes 1 to 3 targets")
    c[0] = count
    if not _run([targets[0]], [source], [targets[1]] if count > 1 else None,
                [targets[2]] if count > 2 else None, count - 1, _stream[float],
                _stream[double], c, STREAMING_MIN):
        raise ValueError("targets and source must be C-contiguous, aligned float32 or float64 "
                         "arrays of one dtype and shape, the targets writeable, none sharing "
                         "memory")
