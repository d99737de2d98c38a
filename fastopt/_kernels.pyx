# cython: language_level=3, cdivision=True, autotestdict=False
# cython: freethreading_compatible=True
# cdivision=True is part of the meaning here: x/0 must give inf or nan as in NumPy, never
# ZeroDivisionError. Safety directives (boundscheck, wraparound, initializedcheck) come from
# setup.py so FASTOPT_DEBUG_BUILD=1 can turn them back on.
#
# freethreading_compatible: the module declares that it runs without the GIL, so importing it
# into a free-threaded CPython (3.13t, 3.14t) leaves the GIL off (tools/freethreaded.sh runs the
# tests so, tests/test_freethreaded.py). What that rests on, module state by module state:
# - The run-time settings (thread count, square-root method, flush-to-zero) are C ints, each
#   set by one call and read once per update into a local (``_run``, ``sum_of_squares``), so
#   an update runs with one consistent value of each; they are read and written with atomic
#   loads and stores (``fastopt_setting_*``), never plain ones: without the GIL a setter and
#   an update can run at the same instant. No two settings change together.
# - The thread pool was already shared by callers running without the GIL (the loops release
#   it): one job at a time, owned by a compare-and-swap on ``busy``; its job fields are
#   published by the atomic word; the counters read from Python (workers started, chunks run)
#   are atomic. Its mutex and condition variables only put threads to sleep.
# - ``CallPlan`` objects never change after construction (``__init__``, ``note``), so any
#   number of threads may read one; the optimizer's lock (a Python ``threading.Lock``)
#   serialises the updates of one optimizer. ``_holds`` compares borrowed pointers without
#   dereferencing them; the plan's own references keep the planned objects alive.
# - The caller's lists and dicts are read through Cython's free-threading-safe accessors
#   (bounds-checked strong references for lists, a critical section while iterating a dict),
#   and every planned array is held (``keep``) until its loop has run, as with the GIL.
# - The Python-level module globals (``_LOOPS``, ``_FIELDS``, ``_FORMS``; fastopt/_simd.py's
#   chosen level and square-root method) are written only while the module is imported,
#   which CPython serialises; fastopt/_settings.py's slow-path flag is one module-global
#   bool, whose reads and writes are atomic in CPython with or without the GIL.
# - Flush-to-zero is each thread's own MXCSR, set and restored around each loop.
"""Compiled update loops of fastopt: every optimizer's arithmetic lives here.

Design rules of this module:

- One loop per update rule, generic over float and double (``floating``). Every loop has one
  signature: the param, its grad, three state slots (NULL when the rule or its options keep
  fewer), the element count, the step's scalars as a ``Step`` struct of named fields, and
  whether this param decays. One driver (``_run``) plans and runs them all.
- Every loop reads its grad through ``_grad``, the one shared transform: the clip factor
  (``g*grad_scale``), then coupled weight decay (``g + weight_decay*p``). A term that is off is
  left out, not multiplied by 1 or added as 0 (``0*p`` would turn an infinite param into nan).
  Decoupled decay (AdamW, Lion) is part of those rules' own statements.
- One public entry, ``run``, takes a loop by name (``loops()``; each loop is registered once,
  with the state slots it writes), then, for every param, the param, its grad and its three
  state containers (lists of the same length, or dicts keyed by str, the book's style), then
  which params decay, the grad transform and the rule's scalars as a dict of ``Step`` field
  names (fastopt/_rules.py's ``Step.scalars``), filled by name. It either updates every param
  in place, in one stretch without the GIL, and returns True, or, when any param is not one
  the loops can take exactly as NumPy would (``ready``), touches nothing and returns False;
  the Python layer then checks the inputs, explains what is wrong, or takes NumPy's path for
  that param. These checks are what keep the loops inside memory, so they are never skipped,
  and every planned array is held by a reference until its loop has run.
- ``CallPlan`` (the call path) runs a whole ``update()`` in one call while the attributes it
  was planned from hold the same objects (fastopt/_base.py decides when). The only Python
  scalar formulas restated here are its few of the step count (Adam's ``lr_t``, the bias
  corrections, step sizes), with the C library's ``pow`` and ``sqrt`` as Python's own ``**``
  and ``math.sqrt``; tests/test_callpath.py checks their bits against ``_next_step``
  (fastopt/_rules.py).
- Order of operations follows ``fastopt.reference`` statement by statement, and each statement
  is rounded to the array's dtype as NumPy >= 2 rounds it (Python float scalars are converted
  to the array's dtype first), so results are bit-identical to the reference in float64 and
  float32. The only arithmetic done on scalars here is a single IEEE operation in double
  (``1 - beta1``, ``momentum * momentum``, ``(1 + momentum) * lr``), which gives the same bits
  as Python does; powers, square roots of scalars and bias corrections are computed in Python.
- Nothing is contracted into a fused multiply-add (setup.py: ``-ffp-contract=off``), and
  reductions (the gradient norm) use a fixed blocking, so every SIMD level and thread count
  gives the same bits.

setup.py compiles this one source at up to three instruction-set levels (``fastopt._kernels``,
the x86-64 baseline; ``_kernels_avx2``; ``_kernels_avx512``) and fastopt/_simd.py imports the
widest the CPU runs. The levels differ only in how wide the compiler vectorises the loops.

The module's own C lives in C headers next to it, one per concern, each declared here by a
``cdef extern from`` block with the same names as in C: fastopt/_pool.h (the thread pool),
_soft_sqrt.h (the exactly rounded software square root), _fpflags.h (flush-to-zero through
MXCSR), _settings.h (the atomic run-time settings) and _simd.h (what the module was compiled
for, and what the CPU runs). setup.py puts fastopt/ on every level's include path.
"""
cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cython cimport floating
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport fabs, fabsf, pow, sqrt, sqrtf
from libc.stdlib cimport free, malloc, qsort

cimport numpy as cnp

from time import perf_counter

cnp.import_array()

ctypedef cnp.npy_intp intp


ctypedef struct Step:
    # The grad transform, shared by every rule (``_grad``).
    double grad_scale        # clipping: the grad is multiplied by it (1: no clipping)
    double weight_decay      # coupled decay, g + weight_decay*p, for params that decay
    # The rules' scalars, by name; each loop reads its own (fastopt.reference's rules).
    double lr
    double momentum
    double decay_rate
    double rho
    double beta1
    double beta2
    double eps
    double lr_t
    double bias_correction1
    double bias_correction2
    double bias_correction2_sqrt
    double step_size
    double grad_step
    double momentum_step
    double rectification
    double decoupled_decay   # AdamW's lr*weight_decay, Lion's weight_decay
    double clip              # ADOPT's bound on the normalised grad
    double ratio             # LAMB's and LARS's trust ratio, one param's
    double ckp1              # Schedule-Free's averaging weight of the step
    double lookahead_alpha   # Lookahead's slow step size (fastopt/wrappers.py)
    double step_lr           # Adafactor's min(lr, 1/sqrt(t))
    double lerp_weight       # Adafactor's t**beta2_decay
    double eps1              # Adafactor's floor of the second moment's estimate
    double eps2              # Adafactor's floor of the param's root mean square
    double clip_threshold    # Adafactor's d
    double dampening         # LARS's momentum dampening
    double adjusted_lr       # Muon's lr adjusted to one param's shape
    bint eps_inside_sqrt
    bint soft_roots          # float64 square roots by fastopt_soft_roots (set by _run)
    bint velocity_first
    bint rectified
    bint first               # ADOPT's first step: the second moment only; LARS's: the
    #                          momentum buffer is the grad
    bint nesterov            # LARS and Muon: Nesterov momentum
    bint eps1_of_dtype       # Adafactor: eps1 is the dtype's machine epsilon
    int targets              # the bandwidth probe's: how many arrays it reads and writes


# Every update loop has this signature, so one driver can check and dispatch them all.
ctypedef void (*loop_float)(float*, const float*, float*, float*, float*, intp, const Step*,
                            bint) noexcept nogil
ctypedef void (*loop_double)(double*, const double*, double*, double*, double*, intp,
                             const Step*, bint) noexcept nogil


# ---------------------------------------------------------------------------------------------
# The exactly rounded software square root (AVX-512 builds, float64): fused multiply-adds
# that give the hardware instruction's bits, faster where that instruction is slow. The C, and
# why it rounds correctly, is in fastopt/_soft_sqrt.h.

cdef extern from "_soft_sqrt.h":
    const bint FASTOPT_SOFT_SQRT
    void fastopt_soft_roots(double* x, intp n) noexcept nogil

cdef enum:
    ROOTS = 32   # elements per block of software square roots: four AVX-512 vectors


cdef inline floating _root(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _root_arg(floating x, floating eps, bint eps_inside_sqrt) noexcept nogil:
    """What the denominator takes the square root of: ``x``, or ``x + eps``."""
    return x + eps if eps_inside_sqrt else x


cdef inline floating _from_root(floating root, floating eps, bint eps_inside_sqrt) noexcept nogil:
    """The denominator from that square root: ``root + eps``, or ``root``."""
    return root if eps_inside_sqrt else root + eps


cdef inline floating _denominator(floating x, floating eps, bint eps_inside_sqrt) noexcept nogil:
    """``sqrt(x) + eps`` (the book), or ``sqrt(x + eps)`` (Keras, the lecture notes' RMSProp)."""
    return _from_root(_root(_root_arg(x, eps, eps_inside_sqrt)), eps, eps_inside_sqrt)


cdef inline floating _maximum(floating a, floating b) noexcept nogil:
    """``np.maximum(a, b)``: a NaN in either gives NaN; of two equal values (+0 and -0), b."""
    return a if (a > b or a != a) else b


cdef inline floating _minimum(floating a, floating b) noexcept nogil:
    """``np.minimum(a, b)``: a NaN in either gives NaN; of two equal values (+0 and -0), b."""
    return a if (a < b or a != a) else b


cdef inline floating _sign(floating x) noexcept nogil:
    """``np.sign(x)``: 1, -1, +0 for either zero, NaN for NaN."""
    if x > 0:
        return 1
    if x < 0:
        return -1
    if x == 0:
        return 0
    return x


cdef inline floating _grad(floating g, floating p, floating scale, floating decay,
                           bint decayed) noexcept nogil:
    """The grad a rule sees: ``g*grad_scale`` (the clip factor; exactly 1 when not clipping,
    and x*1 is x), then ``+ weight_decay*p`` if this param decays (coupled decay). The decay
    is a select, never ``+ 0*p``; both keep the loops free of branches, so they vectorise."""
    g = g * scale
    return g + decay * p if decayed else g


# ---------------------------------------------------------------------------------------------
# The update loops. Scalars arrive as double and are converted to the array's dtype once, as
# NumPy converts a Python float that meets a float32 array. Every loop begins with the same
# three lines that read the grad transform; ``decay`` is False for a param that does not decay.

cdef void _sgd(floating* p, const floating* g, floating* unused0, floating* unused1,
               floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef intp i
    for i in range(n):
        p[i] = p[i] - lr * _grad(g[i], p[i], scale, wd, decayed)


cdef void _momentum(floating* p, const floating* g, floating* v, floating* unused1,
                    floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating momentum = <floating>c.momentum
    cdef floating grad
    cdef intp i
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        v[i] = momentum * v[i] - lr * grad
        p[i] = p[i] + v[i]


cdef void _nesterov(floating* p, const floating* g, floating* v, floating* unused1,
                    floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    # The book since 2021: parameter first, then velocity; velocity_first: the 2016 order.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating momentum = <floating>c.momentum
    cdef floating momentum2 = <floating>(c.momentum * c.momentum)
    cdef floating step = <floating>((1.0 + c.momentum) * c.lr)
    cdef floating param, velocity, grad
    cdef intp i
    # Statement by statement, each rounded to the dtype; kept in registers (the planner
    # guarantees that p, g and v never share memory).
    if c.velocity_first:
        for i in range(n):
            grad = _grad(g[i], p[i], scale, wd, decayed)
            velocity = v[i] * momentum
            velocity = velocity - lr * grad
            v[i] = velocity
            param = p[i] + momentum2 * velocity
            p[i] = param - step * grad
    else:
        for i in range(n):
            grad = _grad(g[i], p[i], scale, wd, decayed)
            param = p[i] + momentum2 * v[i]
            p[i] = param - step * grad
            velocity = v[i] * momentum
            v[i] = velocity - lr * grad


cdef inline floating _adagrad_square(floating* h, intp i, floating grad) noexcept nogil:
    """AdaGrad's sum of squares of element i, updated and returned."""
    h[i] = h[i] + grad * grad
    return h[i]


cdef inline void _adagrad_loop(floating* p, const floating* g, floating* h, intp n,
                               const Step* c, bint decay, bint inside) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating eps = <floating>c.eps
    cdef floating grad
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                roots[j] = _root_arg(_adagrad_square(h, i, grad), eps, inside)
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                _divided_step(p, NULL, i, grad, _from_root(roots[j], eps, inside), lr, 0, False)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        _divided_step(p, NULL, i, grad, _denominator(_adagrad_square(h, i, grad), eps, inside),
                      lr, 0, False)


cdef void _adagrad(floating* p, const floating* g, floating* h, floating* unused1,
                   floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    if c.eps_inside_sqrt:
        _adagrad_loop(p, g, h, n, c, decay, True)
    else:
        _adagrad_loop(p, g, h, n, c, decay, False)


cdef inline floating _rmsprop_square(floating* h, floating* grad_avg, intp i, floating grad,
                                     floating decay_rate, floating keep,
                                     bint centered) noexcept nogil:
    """RMSprop's running averages of element i; returns what the denominator is the root
    of (before eps): h, or h - grad_avg**2 when centered."""
    h[i] = h[i] * decay_rate
    h[i] = h[i] + keep * grad * grad
    if centered:
        grad_avg[i] = grad_avg[i] + keep * (grad - grad_avg[i])
        return h[i] - grad_avg[i] * grad_avg[i]
    return h[i]


cdef inline void _divided_step(floating* p, floating* momentum_buffer, intp i, floating grad,
                               floating denominator, floating lr, floating momentum,
                               bint with_momentum) noexcept nogil:
    """``p -= lr*grad/denominator`` (AdaGrad, RMSprop), or through RMSprop's momentum."""
    if with_momentum:
        momentum_buffer[i] = momentum * momentum_buffer[i] + grad / denominator
        p[i] = p[i] - lr * momentum_buffer[i]
    else:
        p[i] = p[i] - lr * grad / denominator


cdef inline void _rmsprop_loop(floating* p, const floating* g, floating* h,
                               floating* grad_avg, floating* momentum_buffer, intp n,
                               const Step* c, bint decay, bint inside, bint centered,
                               bint with_momentum) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating decay_rate = <floating>c.decay_rate
    cdef floating keep = <floating>(1.0 - c.decay_rate)
    cdef floating eps = <floating>c.eps
    cdef floating momentum = <floating>c.momentum
    cdef floating grad, square
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                square = _rmsprop_square(h, grad_avg, i, grad, decay_rate, keep, centered)
                roots[j] = _root_arg(square, eps, inside)
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                _divided_step(p, momentum_buffer, i, grad, _from_root(roots[j], eps, inside),
                              lr, momentum, with_momentum)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        square = _rmsprop_square(h, grad_avg, i, grad, decay_rate, keep, centered)
        _divided_step(p, momentum_buffer, i, grad, _denominator(square, eps, inside), lr,
                      momentum, with_momentum)


cdef void _rmsprop(floating* p, const floating* g, floating* h, floating* grad_avg,
                   floating* momentum_buffer, intp n, const Step* c, bint decay) noexcept nogil:
    # grad_avg (centered) and momentum_buffer are NULL unless those options are on. Each
    # combination is its own loop (the flags are constants where the loop is inlined).
    cdef bint centered = grad_avg != NULL, with_momentum = momentum_buffer != NULL
    if not centered and not with_momentum:
        if c.eps_inside_sqrt:
            _rmsprop_loop(p, g, h, grad_avg, momentum_buffer, n, c, decay, True, False, False)
        else:
            _rmsprop_loop(p, g, h, grad_avg, momentum_buffer, n, c, decay, False, False, False)
    elif centered and not with_momentum:
        _rmsprop_loop(p, g, h, grad_avg, momentum_buffer, n, c, decay, c.eps_inside_sqrt,
                      True, False)
    elif with_momentum and not centered:
        _rmsprop_loop(p, g, h, grad_avg, momentum_buffer, n, c, decay, c.eps_inside_sqrt,
                      False, True)
    else:
        _rmsprop_loop(p, g, h, grad_avg, momentum_buffer, n, c, decay, c.eps_inside_sqrt,
                      True, True)


cdef inline floating _adam_moments(floating* m, floating* v, floating* v_max, intp i,
                                   floating grad, floating one_minus_beta1,
                                   floating one_minus_beta2, bint amsgrad) noexcept nogil:
    """The book's Adam on element i's moments; returns the second moment it divides by."""
    m[i] = m[i] + one_minus_beta1 * (grad - m[i])
    v[i] = v[i] + one_minus_beta2 * (grad * grad - v[i])
    if amsgrad:
        v_max[i] = _maximum(v_max[i], v[i])
        return v_max[i]
    return v[i]


cdef inline void _adam_loop(floating* p, const floating* g, floating* m, floating* v,
                            floating* v_max, intp n, const Step* c, bint decay,
                            bint amsgrad) noexcept nogil:
    # lr_t is a NumPy float64 in the book, so under NumPy >= 2 the last statement is computed
    # in float64 even for float32 arrays, and rounded once when stored: so here too.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef double lr_t = c.lr_t
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating eps = <floating>c.eps
    cdef bint inside = c.eps_inside_sqrt
    cdef floating grad, second
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        # whole blocks of ROOTS: moments, then their square roots, then the params
        for block in range(n // ROOTS):
            start = block * ROOTS
            for j in range(ROOTS):
                grad = _grad(g[start + j], p[start + j], scale, wd, decayed)
                second = _adam_moments(m, v, v_max, start + j, grad, one_minus_beta1,
                                       one_minus_beta2, amsgrad)
                roots[j] = _root_arg(second, eps, inside)
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                p[start + j] = p[start + j] - lr_t * m[start + j] / _from_root(roots[j], eps,
                                                                               inside)
        start = n - n % ROOTS   # the rest as below
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        second = _adam_moments(m, v, v_max, i, grad, one_minus_beta1, one_minus_beta2, amsgrad)
        p[i] = <floating>(<double>p[i]
                          - lr_t * <double>m[i] / <double>_denominator(second, eps, inside))


cdef void _adam(floating* p, const floating* g, floating* m, floating* v, floating* unused,
                intp n, const Step* c, bint decay) noexcept nogil:
    # The book's Adam.
    _adam_loop(p, g, m, v, NULL, n, c, decay, False)


cdef void _adam_amsgrad(floating* p, const floating* g, floating* m, floating* v,
                        floating* v_max, intp n, const Step* c, bint decay) noexcept nogil:
    # The book's Adam with AMSGrad's v_max.
    _adam_loop(p, g, m, v, v_max, n, c, decay, True)


cdef inline floating _paper_moments(floating* m, floating* v, floating* v_max, intp i,
                                    floating grad, floating beta1, floating beta2,
                                    floating one_minus_beta1, floating one_minus_beta2,
                                    bint amsgrad) noexcept nogil:
    """Kingma & Ba's moments of element i (AdamW's too); returns the second moment the
    step divides by."""
    m[i] = beta1 * m[i] + one_minus_beta1 * grad
    v[i] = beta2 * v[i] + one_minus_beta2 * grad * grad
    if amsgrad:
        v_max[i] = _maximum(v_max[i], v[i])
        return v_max[i]
    return v[i]


cdef inline void _paper_step(floating* p, floating* m, intp i, floating denominator,
                             floating lr, floating bias_correction1) noexcept nogil:
    """Kingma & Ba's step of element i: ``p -= lr*(m/bias_correction1)/denominator``."""
    p[i] = p[i] - lr * (m[i] / bias_correction1) / denominator


cdef inline void _adam_paper_loop(floating* p, const floating* g, floating* m, floating* v,
                                  floating* v_max, intp n, const Step* c, bint decay,
                                  bint inside, bint amsgrad) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating bias_correction1 = <floating>c.bias_correction1
    cdef floating bias_correction2 = <floating>c.bias_correction2
    cdef floating eps = <floating>c.eps
    cdef floating grad, second
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                second = _paper_moments(m, v, v_max, i, grad, beta1, beta2, one_minus_beta1,
                                        one_minus_beta2, amsgrad)
                roots[j] = _root_arg(second / bias_correction2, eps, inside)
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                i = start + j
                _paper_step(p, m, i, _from_root(roots[j], eps, inside), lr, bias_correction1)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        second = _paper_moments(m, v, v_max, i, grad, beta1, beta2, one_minus_beta1,
                                one_minus_beta2, amsgrad)
        _paper_step(p, m, i, _denominator(second / bias_correction2, eps, inside), lr,
                    bias_correction1)


cdef void _adam_paper(floating* p, const floating* g, floating* m, floating* v,
                      floating* v_max, intp n, const Step* c, bint decay) noexcept nogil:
    # Kingma & Ba, Algorithm 1; bias corrections 1 - beta**t computed in Python.
    if v_max == NULL:
        if c.eps_inside_sqrt:
            _adam_paper_loop(p, g, m, v, v_max, n, c, decay, True, False)
        else:
            _adam_paper_loop(p, g, m, v, v_max, n, c, decay, False, False)
    else:
        if c.eps_inside_sqrt:
            _adam_paper_loop(p, g, m, v, v_max, n, c, decay, True, True)
        else:
            _adam_paper_loop(p, g, m, v, v_max, n, c, decay, False, True)


cdef inline void _adamw_step(floating* p, floating* m, intp i, floating root,
                             floating lr_weight_decay, bint decoupled, floating step_size,
                             floating bias_correction2_sqrt, floating eps) noexcept nogil:
    """AdamW's step of element i from the root of its second moment: the decoupled decay
    (a select, for params that decay), then Adam's step."""
    cdef floating param = p[i] - lr_weight_decay * p[i] if decoupled else p[i]
    p[i] = param - step_size * m[i] / (root / bias_correction2_sqrt + eps)


cdef inline void _adamw_loop(floating* p, const floating* g, floating* m, floating* v,
                             floating* v_max, intp n, const Step* c, bint decay,
                             bint amsgrad) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr_weight_decay = <floating>c.decoupled_decay
    cdef bint decoupled = decay and c.decoupled_decay != 0
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating step_size = <floating>c.step_size
    cdef floating bias_correction2_sqrt = <floating>c.bias_correction2_sqrt
    cdef floating eps = <floating>c.eps
    cdef floating grad, second
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    # The decoupled decay only reads p[i], so it may come after the moments.
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                roots[j] = _paper_moments(m, v, v_max, i, grad, beta1, beta2, one_minus_beta1,
                                          one_minus_beta2, amsgrad)
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                i = start + j
                _adamw_step(p, m, i, roots[j], lr_weight_decay, decoupled, step_size,
                            bias_correction2_sqrt, eps)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        second = _paper_moments(m, v, v_max, i, grad, beta1, beta2, one_minus_beta1,
                                one_minus_beta2, amsgrad)
        _adamw_step(p, m, i, _root(second), lr_weight_decay, decoupled, step_size,
                    bias_correction2_sqrt, eps)


cdef void _adamw(floating* p, const floating* g, floating* m, floating* v, floating* v_max,
                 intp n, const Step* c, bint decay) noexcept nogil:
    # torch's AdamW: decoupled decay first (a select, only for params that decay), then Adam.
    if v_max == NULL:
        _adamw_loop(p, g, m, v, v_max, n, c, decay, False)
    else:
        _adamw_loop(p, g, m, v, v_max, n, c, decay, True)


cdef void _nadam(floating* p, const floating* g, floating* m, floating* v, floating* unused,
                 intp n, const Step* c, bint decay) noexcept nogil:
    # torch's NAdam; grad_step and momentum_step carry its momentum schedule.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating bias_correction2 = <floating>c.bias_correction2
    cdef floating eps = <floating>c.eps
    cdef floating grad_step = <floating>c.grad_step
    cdef floating momentum_step = <floating>c.momentum_step
    cdef floating grad, second
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                second = _paper_moments(m, v, NULL, i, grad, beta1, beta2, one_minus_beta1,
                                        one_minus_beta2, False)
                roots[j] = second / bias_correction2
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                _nadam_param(p, m, i, grad, roots[j] + eps, grad_step, momentum_step)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        second = _paper_moments(m, v, NULL, i, grad, beta1, beta2, one_minus_beta1,
                                one_minus_beta2, False)
        _nadam_param(p, m, i, grad, _root(second / bias_correction2) + eps, grad_step,
                     momentum_step)


cdef inline void _nadam_param(floating* p, floating* m, intp i, floating grad,
                              floating denominator, floating grad_step,
                              floating momentum_step) noexcept nogil:
    cdef floating param = p[i] - grad_step * grad / denominator
    p[i] = param - momentum_step * m[i] / denominator


cdef inline void _radam_step(floating* p, floating* m, intp i, floating root, floating lr,
                             floating bias_correction1, floating bias_correction2_sqrt,
                             floating eps, floating rectification) noexcept nogil:
    """RAdam's rectified step of element i from the root of its second moment."""
    p[i] = p[i] - (m[i] / bias_correction1) * lr * (
        bias_correction2_sqrt / (root + eps)) * rectification


cdef inline void _radam_loop(floating* p, const floating* g, floating* m, floating* v, intp n,
                             const Step* c, bint decay, bint rectified) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating bias_correction1 = <floating>c.bias_correction1
    cdef floating bias_correction2_sqrt = <floating>c.bias_correction2_sqrt
    cdef floating eps = <floating>c.eps
    cdef floating rectification = <floating>c.rectification
    cdef floating grad, second
    cdef double roots[ROOTS]
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots and rectified:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                roots[j] = _paper_moments(m, v, NULL, i, grad, beta1, beta2, one_minus_beta1,
                                          one_minus_beta2, False)
            fastopt_soft_roots(roots, ROOTS)
            for j in range(ROOTS):
                i = start + j
                _radam_step(p, m, i, roots[j], lr, bias_correction1, bias_correction2_sqrt, eps,
                            rectification)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        second = _paper_moments(m, v, NULL, i, grad, beta1, beta2, one_minus_beta1,
                                one_minus_beta2, False)
        if rectified:
            _radam_step(p, m, i, _root(second), lr, bias_correction1, bias_correction2_sqrt, eps,
                        rectification)
        else:
            p[i] = p[i] - (m[i] / bias_correction1) * lr


cdef void _radam(floating* p, const floating* g, floating* m, floating* v, floating* unused,
                 intp n, const Step* c, bint decay) noexcept nogil:
    # torch's RAdam: the rectified step when rho_t > 5 (decided in Python), else momentum.
    if c.rectified:
        _radam_loop(p, g, m, v, n, c, decay, True)
    else:
        _radam_loop(p, g, m, v, n, c, decay, False)


cdef void _adamax(floating* p, const floating* g, floating* m, floating* u, floating* unused,
                  intp n, const Step* c, bint decay) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating step_size = <floating>c.step_size
    cdef floating eps = <floating>c.eps
    cdef floating grad
    cdef intp i
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        m[i] = beta1 * m[i] + one_minus_beta1 * grad
        u[i] = _maximum(beta2 * u[i], _abs(grad) + eps)
        p[i] = p[i] - step_size * m[i] / u[i]


cdef void _adadelta(floating* p, const floating* g, floating* v, floating* u, floating* unused,
                    intp n, const Step* c, bint decay) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating rho = <floating>c.rho
    cdef floating one_minus_rho = <floating>(1.0 - c.rho)
    cdef floating eps = <floating>c.eps
    cdef floating grad
    cdef double roots[2 * ROOTS]   # the roots of u + eps, then of v + eps
    cdef intp i, j, block, start = 0
    if floating is double and FASTOPT_SOFT_SQRT and c.soft_roots:
        for block in range(n // ROOTS):   # see _adam_loop
            start = block * ROOTS
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                v[i] = rho * v[i] + one_minus_rho * grad * grad
                roots[j] = u[i] + eps
                roots[ROOTS + j] = v[i] + eps
            fastopt_soft_roots(roots, 2 * ROOTS)
            for j in range(ROOTS):
                i = start + j
                grad = _grad(g[i], p[i], scale, wd, decayed)
                _adadelta_param(p, u, i, roots[j] / roots[ROOTS + j] * grad, lr, rho,
                                one_minus_rho)
        start = n - n % ROOTS
    for i in range(start, n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        v[i] = rho * v[i] + one_minus_rho * grad * grad
        _adadelta_param(p, u, i, _root(u[i] + eps) / _root(v[i] + eps) * grad, lr, rho,
                        one_minus_rho)


cdef inline void _adadelta_param(floating* p, floating* u, intp i, floating d, floating lr,
                                 floating rho, floating one_minus_rho) noexcept nogil:
    """Adadelta's step ``d`` (already computed) into the delta average and the param."""
    u[i] = rho * u[i] + one_minus_rho * d * d
    p[i] = p[i] - lr * d


cdef void _lion(floating* p, const floating* g, floating* m, floating* unused1,
                floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    # Chen et al. 2023; decoupled weight decay inside the step, for params that decay.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating weight_decay = <floating>c.decoupled_decay
    cdef bint decoupled = decay and c.decoupled_decay != 0
    cdef floating grad, direction, step
    cdef intp i
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        direction = _sign(beta1 * m[i] + one_minus_beta1 * grad)
        step = lr * (direction + weight_decay * p[i]) if decoupled else lr * direction
        p[i] = p[i] - step
        m[i] = beta2 * m[i] + one_minus_beta2 * grad


cdef void _adopt(floating* p, const floating* g, floating* m, floating* v, floating* unused,
                 intp n, const Step* c, bint decay) noexcept nogil:
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating eps = <floating>c.eps
    cdef floating clip = <floating>c.clip
    cdef floating grad, normed
    cdef intp i
    if c.first:
        for i in range(n):
            grad = _grad(g[i], p[i], scale, wd, decayed)
            v[i] = v[i] + grad * grad
        return
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        normed = grad / _maximum(_root(v[i]), eps)
        normed = _minimum(_maximum(normed, -clip), clip)
        m[i] = m[i] + one_minus_beta1 * (normed - m[i])
        p[i] = p[i] - lr * m[i]
        v[i] = beta2 * v[i] + one_minus_beta2 * grad * grad


cdef void _lamb(floating* p, const floating* g, floating* m, floating* v, floating* direction,
                intp n, const Step* c, bint decay) noexcept nogil:
    # LAMB's first pass: the moments and the direction, its decoupled decay a select.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating beta1 = <floating>c.beta1
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating bias_correction1 = <floating>c.bias_correction1
    cdef floating bias_correction2_sqrt = <floating>c.bias_correction2_sqrt
    cdef floating eps = <floating>c.eps
    cdef floating weight_decay = <floating>c.decoupled_decay
    cdef bint decoupled = decay and c.decoupled_decay != 0
    cdef floating grad, step
    cdef intp i
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        m[i] = beta1 * m[i] + one_minus_beta1 * grad
        v[i] = beta2 * v[i] + one_minus_beta2 * grad * grad
        step = (m[i] / bias_correction1) / (_root(v[i]) / bias_correction2_sqrt + eps)
        direction[i] = step + weight_decay * p[i] if decoupled else step


cdef void _lamb_apply(floating* p, const floating* g, floating* m, floating* v,
                      floating* direction, intp n, const Step* c, bint decay) noexcept nogil:
    # LAMB's second pass: one param's step, scaled by its trust ratio.
    cdef floating lr = <floating>c.lr
    cdef floating ratio = <floating>c.ratio
    cdef intp i
    for i in range(n):
        p[i] = p[i] - lr * (ratio * direction[i])


cdef inline floating _schedulefree_y(floating x, floating z, floating momentum,
                                     floating one_minus_momentum) noexcept nogil:
    """Schedule-Free's training point ``momentum*x + (1 - momentum)*z``."""
    return momentum * x + one_minus_momentum * z


cdef void _schedulefree_adamw(floating* p, const floating* g, floating* z, floating* v,
                              floating* x, intp n, const Step* c, bint decay) noexcept nogil:
    # schedulefree's AdamWScheduleFreeReference; p holds y. The decay (a select, for params
    # that decay) is at y and moves z.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr_weight_decay = <floating>c.decoupled_decay
    cdef bint decoupled = decay and c.decoupled_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating beta1 = <floating>c.beta1
    cdef floating one_minus_beta1 = <floating>(1.0 - c.beta1)
    cdef floating beta2 = <floating>c.beta2
    cdef floating one_minus_beta2 = <floating>(1.0 - c.beta2)
    cdef floating bias_correction2 = <floating>c.bias_correction2
    cdef floating eps = <floating>c.eps
    cdef floating ckp1 = <floating>c.ckp1
    cdef floating one_minus_ckp1 = <floating>(1.0 - c.ckp1)
    cdef floating grad, base, average
    cdef intp i
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        base = z[i] - lr_weight_decay * p[i] if decoupled else z[i]
        v[i] = beta2 * v[i] + one_minus_beta2 * grad * grad
        base = base - lr * (grad / (_root(v[i] / bias_correction2) + eps))
        z[i] = base
        average = one_minus_ckp1 * x[i] + ckp1 * base
        x[i] = average
        p[i] = _schedulefree_y(average, base, beta1, one_minus_beta1)


cdef void _schedulefree_sgd(floating* p, const floating* g, floating* z, floating* x,
                            floating* unused, intp n, const Step* c, bint decay) noexcept nogil:
    # schedulefree's SGDScheduleFreeReference; p holds y, so coupled decay is at y.
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating momentum = <floating>c.momentum
    cdef floating one_minus_momentum = <floating>(1.0 - c.momentum)
    cdef floating ckp1 = <floating>c.ckp1
    cdef floating one_minus_ckp1 = <floating>(1.0 - c.ckp1)
    cdef floating base, average
    cdef intp i
    for i in range(n):
        base = z[i] - lr * _grad(g[i], p[i], scale, wd, decayed)
        z[i] = base
        average = one_minus_ckp1 * x[i] + ckp1 * base
        x[i] = average
        p[i] = _schedulefree_y(average, base, momentum, one_minus_momentum)


cdef void _schedulefree_train(floating* p, const floating* x, floating* z, floating* unused1,
                              floating* unused2, intp n, const Step* c,
                              bint decay) noexcept nogil:
    # Schedule-Free's train(): y from x (in the grad's place: read only) and z, with the last
    # step's coefficient as ``momentum`` (AdamW's beta1); the same statement as the steps'.
    cdef floating momentum = <floating>c.momentum
    cdef floating one_minus_momentum = <floating>(1.0 - c.momentum)
    cdef intp i
    for i in range(n):
        p[i] = _schedulefree_y(x[i], z[i], momentum, one_minus_momentum)


cdef void _lookahead(floating* p, const floating* g, floating* slow, floating* unused1,
                     floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    # Lookahead's sync (Zhang et al. 2019; timm's Lookahead), not an update rule: the slow
    # weights move toward the fast ones (the param), then the param is set to them. It reads no
    # grad, so it has no grad transform: the wrapper passes the step's grads only because every
    # loop's checks (``_plan``) take one of the param's shape and dtype.
    cdef floating alpha = <floating>c.lookahead_alpha
    cdef intp i
    for i in range(n):
        slow[i] = slow[i] + alpha * (p[i] - slow[i])
        p[i] = slow[i]


cdef void _none(floating* p, const floating* g, floating* unused0, floating* unused1,
                floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    # The first pass of a rule whose every statement follows its per-param norms (LARS): the
    # call only checks, all or none, that the loops take every param.
    pass


cdef inline floating _plus(floating a, floating negated, floating x) noexcept nogil:
    """``a + factor*x`` as NumPy's arrays give it, nan included, from ``negated``, which is
    ``-factor``: ``a - negated*x`` is the same number (IEEE) through a subtraction, which a
    compiler may not commute. So of two nans the result is ``a``'s, as NumPy's add gives
    (x86: the first operand's), where an add's operands may be swapped; a nan ``x`` comes
    through the product unchanged, as through NumPy's ``factor*x``. ``negated`` is made as
    ``0.0 - factor`` (``_negated``), which a compiler may not fold back into an add."""
    return a - negated * x


cdef inline double _negated(double factor) noexcept nogil:
    """``-factor`` for a factor > 0, as ``0.0 - factor``, which stays a subtraction (see
    ``_plus``); rounded to float it is minus the factor rounded."""
    return 0.0 - factor


cdef inline floating _lars_grad(floating grad, floating p, floating negated_decay,
                                bint decoupled, floating ratio) noexcept nogil:
    """LARS's grad: plus decoupled decay (if this param decays), times the trust ratio. (Both
    values are computed and one selected, so the loops vectorise.)"""
    cdef floating decayed = _plus(grad, negated_decay, p)
    return (decayed if decoupled else grad) * ratio


cdef void _lars(floating* p, const floating* g, floating* buffer, floating* unused1,
                floating* unused2, intp n, const Step* c, bint decay) noexcept nogil:
    # LARS, one param after its norms; decay and ratio are that param's (its second pass).
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef floating lr = <floating>c.lr
    cdef floating momentum = <floating>c.momentum
    cdef floating negated_momentum = <floating>_negated(c.momentum)
    cdef floating negated_dampened = <floating>_negated(1.0 - c.dampening)
    cdef floating negated_decay = <floating>_negated(c.decoupled_decay)
    cdef bint decoupled = c.decoupled_decay != 0
    cdef floating ratio = <floating>c.ratio
    cdef floating grad
    cdef intp i
    if buffer == NULL or c.momentum == 0:
        for i in range(n):
            grad = _grad(g[i], p[i], scale, wd, decayed)
            grad = _lars_grad(grad, p[i], negated_decay, decoupled, ratio)
            p[i] = p[i] - lr * grad
    elif c.first:
        for i in range(n):
            grad = _grad(g[i], p[i], scale, wd, decayed)
            grad = _lars_grad(grad, p[i], negated_decay, decoupled, ratio)
            _lars_step(p, buffer, i, grad, grad, lr, negated_momentum, c.nesterov)
    else:
        for i in range(n):
            grad = _grad(g[i], p[i], scale, wd, decayed)
            grad = _lars_grad(grad, p[i], negated_decay, decoupled, ratio)
            _lars_step(p, buffer, i, grad, _plus(momentum * buffer[i], negated_dampened, grad),
                       lr, negated_momentum, c.nesterov)


cdef inline void _lars_step(floating* p, floating* buffer, intp i, floating grad,
                            floating updated, floating lr, floating negated_momentum,
                            bint nesterov) noexcept nogil:
    """Store the momentum buffer's new value ``updated``, then step: Nesterov's
    ``grad + momentum*buffer``, or the buffer (both computed, one selected: vectorised)."""
    cdef floating ahead = _plus(grad, negated_momentum, updated)
    buffer[i] = updated
    p[i] = p[i] - lr * (ahead if nesterov else updated)


cdef inline floating _lerp_small(floating start, floating end, floating weight,
                                 floating negated) noexcept nogil:
    """torch's ``start.lerp(end, weight)`` for ``|weight| < 0.5``, as NumPy rounds
    ``start + weight*(end - start)``: through ``_plus`` (``negated`` is ``_negated(weight)``),
    so that of two nans the result is ``start``'s, as NumPy's add gives; a weight of 0,
    which ``_negated`` does not negate (0.0 - 0 is +0), takes the add itself."""
    if weight == 0:
        return start + weight * (end - start)
    return _plus(start, negated, end - start)


cdef inline floating _lerp_large(floating start, floating end, floating rest) noexcept nogil:
    """torch's ``start.lerp(end, weight)`` for ``|weight| >= 0.5``, as NumPy rounds
    ``end - (end - start)*rest``, ``rest`` being ``1 - weight``. (Adafactor's ``_lerp`` is
    the same pair of forms, with the small one's add as written.)"""
    return end - (end - start) * rest


cdef void _muon(floating* p, const floating* g, floating* buffer, floating* update,
                floating* unused, intp n, const Step* c, bint decay) noexcept nogil:
    # Muon's first pass (fastopt.reference.muon_rule): the momentum buffer, then the update to
    # orthogonalise into the workspace array ``update``; torch's lerp has two forms by the
    # weight's size, chosen once per call. Its decay is decoupled (the second pass's).
    cdef floating scale = <floating>c.grad_scale, wd = <floating>c.weight_decay
    cdef bint decayed = decay and c.weight_decay != 0
    cdef double buffer_weight = 1.0 - c.momentum               # buf.lerp_(g, 1 - momentum)
    cdef bint buffer_small = fabs(buffer_weight) < 0.5
    cdef floating weight = <floating>buffer_weight
    cdef floating negated_weight = <floating>_negated(buffer_weight)
    cdef floating rest = <floating>(1.0 - buffer_weight)
    cdef bint update_small = fabs(c.momentum) < 0.5            # g.lerp(buf, momentum)
    cdef floating momentum = <floating>c.momentum
    cdef floating negated_momentum = <floating>_negated(c.momentum)
    cdef floating momentum_rest = <floating>(1.0 - c.momentum)
    cdef floating grad, kept
    cdef intp i
    for i in range(n):
        grad = _grad(g[i], p[i], scale, wd, decayed)
        if buffer_small:
            kept = _lerp_small(buffer[i], grad, weight, negated_weight)
        else:
            kept = _lerp_large(buffer[i], grad, rest)
        buffer[i] = kept
        if not c.nesterov:
            update[i] = kept
        elif update_small:
            update[i] = _lerp_small(grad, kept, momentum, negated_momentum)
        else:
            update[i] = _lerp_large(grad, kept, momentum_rest)


cdef void _muon_apply(floating* p, const floating* g, floating* buffer, floating* update,
                      floating* unused, intp n, const Step* c, bint decay) noexcept nogil:
    # Muon's second pass (fastopt.reference.muon_apply_rule), after the Newton-Schulz
    # transform of ``update``: the decoupled decay (left out where it is 0), then the step.
    cdef bint decayed = c.decoupled_decay != 0
    cdef floating factor = <floating>(1.0 - c.decoupled_decay)
    cdef floating lr = <floating>c.adjusted_lr
    cdef floating param
    cdef intp i
    for i in range(n):
        param = p[i] * factor if decayed else p[i]
        p[i] = param - lr * update[i]


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


cdef enum:
    STATES = 3   # state slots of every loop


ctypedef struct Task:
    # One param's update: its buffers (state pointers NULL when unused) and element count.
    void* param
    void* grad
    void* state[STATES]
    intp size
    intp offset   # where its elements start in the update's region (_run_all)
    bint single   # float32 rather than float64
    bint decay    # this param decays (weight_decay_filter)


cdef bint _plan(object param, object grad, list states, Task* task) noexcept:
    """Fill ``task`` and return True if the loops can update this param as NumPy would.

    That is: exact ndarrays of one native float32/float64 dtype and one shape, C-contiguous
    and aligned, the targets writeable, and no two sharing memory (a fused loop reads each
    element once, where NumPy's separate statements would see one another's writes).
    ``states`` holds the param's three state arrays, None for a slot the rule does not use.
    """
    if type(param) is not cnp.ndarray or type(grad) is not cnp.ndarray:
        return False
    cdef cnp.ndarray p = <cnp.ndarray>param, g = <cnp.ndarray>grad, s
    cdef int typenum = cnp.PyArray_TYPE(p)
    cdef int k, j
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return False
    # PyArray_ISCARRAY: C-contiguous, aligned, writeable and native byte order
    if not (cnp.PyArray_ISCARRAY(p) and _fits(g, p, False)) or _overlap(p, g):
        return False
    task.param = cnp.PyArray_DATA(p)
    task.grad = cnp.PyArray_DATA(g)
    task.size = cnp.PyArray_SIZE(p)
    task.single = typenum == cnp.NPY_FLOAT
    for k in range(STATES):
        task.state[k] = NULL
        if states[k] is None:
            continue
        if type(states[k]) is not cnp.ndarray:
            return False
        s = <cnp.ndarray>states[k]
        if not _fits(s, p, True) or _overlap(s, p) or _overlap(s, g):
            return False
        for j in range(k):
            if states[j] is not None and _overlap(s, <cnp.ndarray>states[j]):
                return False
        task.state[k] = cnp.PyArray_DATA(s)
    return True


def ready(param, grad, state0=None, state1=None, state2=None, *, str loop=None):
    """Whether the compiled loops can update this param (with these state arrays) exactly as
    NumPy would; otherwise the caller takes NumPy's path. ``loop``: the rule's loop by name,
    needed for a rule that updates each param whole with its own driver (``_PARAM_RULES``:
    its state has other shapes than the param's, in the slots' order); None, or any
    elementwise loop: the state arrays must have the param's shape. A state that is None is
    one not created yet (the update creates it, of the right shape)."""
    cdef Task task
    cdef Factored factored
    if loop is not None and loop in _PARAM_RULES:
        return _adafactor_plan(param, grad, [state0, state1, state2], &factored, True)
    return _plan(param, grad, [state0, state1, state2], &task)


cdef enum:
    STACK_TASKS = 32   # params planned without a heap allocation


# ---------------------------------------------------------------------------------------------
# Threads: a small pool of POSIX threads of fastopt's own, started on the first update that
# uses more than one thread. A large update's elements are cut into chunks of whole 64-byte
# lines (``_run_all``), which the calling thread and the pool's workers claim one at a time
# from one shared atomic word; the caller never waits for a worker that has not claimed a
# chunk. Every loop is elementwise, and every sum is taken in a split that does not depend on
# the thread count (NORM_BLOCK blocks, rows, columns), so the bits do not depend on who runs
# which chunk. The pool is C, in fastopt/_pool.h, which says how claiming, waiting, backing
# off from late workers and forking work. Builds without POSIX threads (MSVC) run on one thread.

cdef extern from "_pool.h":
    const int FASTOPT_POOL
    ctypedef void (*fastopt_chunk_fn)(void* job, intp start, intp stop) noexcept nogil
    void fastopt_pool_run(fastopt_chunk_fn fn, void* job, intp size, intp chunk,
                          int threads, int wake) noexcept nogil
    void fastopt_pool_hold(int hold) noexcept nogil
    long long fastopt_pool_worker_chunks() noexcept nogil
    long long fastopt_pool_wakes() noexcept nogil
    int fastopt_pool_sleepers() noexcept nogil
    int fastopt_pool_workers() noexcept nogil

cdef enum:
    # From how many elements an update (all its params) is shared out to the pool, measured
    # per param with bench/investigations/threads.py and digits_threads.py on 2 shared cores
    # (their results/threads.txt and digits_threads.txt): loops that only stream memory (SGD,
    # Momentum, Nesterov, Lion) lose 1-3% from 2**14 to 2**18 elements when no core is free,
    # and gain 1.1-1.6x from 2**18 when one is; loops bound by sqrt and division (AdaGrad,
    # RMSprop, Adam and the rules beyond the book) gain from 2**14 when a core is free, but
    # the digits example's params of 10,000 elements took 1.02-1.31x as long next to BLAS's
    # threads (a worker's last chunk finishing late): from 2**15.
    STREAMING_MIN = 1 << 18
    DIVIDING_MIN = 1 << 15
    NEVER_SPLIT = 0x7fffffff   # a loop that writes nothing ("none"): never worth a thread
    # An update of fewer than WAKE_FACTOR * parallel_min elements, and fewer than WAKE_MIN,
    # uses the pool only while its workers are awake (they ran a job in the last 50 us, as in
    # back-to-back updates): on a 2-vCPU Intel Xeon VM, an Adam update of the book's
    # TwoLayerNet that woke a sleeping worker (as between the updates of a training loop)
    # took 39.7 us (median; 90th percentile 54 us) on 2 threads against 33.9 us on one, and
    # the late worker then sent larger updates to the caller alone; but SGD on 2**19 float32
    # elements (4 times the split size of the streaming loops would be 2**20) takes 141 us on
    # one thread, which a wake-up repays (bench/investigations/wake.py).
    WAKE_FACTOR = 4
    WAKE_MIN = 1 << 19
    CHUNK_ALIGN = 16   # elements: chunks start on whole 64-byte lines for float32 and float64
    # The smallest chunk, in elements (a multiple of CHUNK_ALIGN): claiming one costs about as
    # much as a few dozen elements of the cheapest loop, so that stays within a few percent.
    CHUNK_MIN = 4096
    # Chunks per thread for large params: enough that a thread that starts late, or loses its
    # core for a while, leaves its share to the others.
    CHUNKS_PER_THREAD = 8
    # The most threads set_threads accepts: no CPU fastopt runs on needs more than this for
    # one param.
    MAX_THREADS = 256


# The run-time settings, read by every update: atomic loads and stores (see this module's
# opening comment), in fastopt/_settings.h.
cdef extern from "_settings.h":
    enum:
        FASTOPT_THREADS     # threads per large param (set_threads)
        FASTOPT_SOFT_ROOTS  # float64 square roots by the software sequence (set_soft_sqrt)
        FASTOPT_FLUSH       # flush subnormals to zero in the loops (set_flush_denormals)
    int fastopt_setting_get(int which) noexcept nogil
    void fastopt_setting_set(int which, int value) noexcept nogil


def threads_supported() -> bool:
    """Whether this build can run the loops on several threads (POSIX threads)."""
    return bool(FASTOPT_POOL)


def max_threads() -> int:
    """The largest thread count ``set_threads`` accepts."""
    return MAX_THREADS


def set_threads(int count):
    """Use up to ``count`` threads per large param (1 <= count <= 256); 1 in builds without
    threads."""
    if not 1 <= count <= MAX_THREADS:
        raise ValueError(f"the number of threads must be >= 1 and <= {MAX_THREADS}; "
                         f"got {count}")
    fastopt_setting_set(FASTOPT_THREADS, count if FASTOPT_POOL else 1)


def get_threads() -> int:
    """The number of threads a large param's update is split into."""
    return fastopt_setting_get(FASTOPT_THREADS)


def pool_workers() -> int:
    """How many worker threads the pool has started in this process (for the tests)."""
    return fastopt_pool_workers()


def pool_worker_chunks() -> int:
    """How many chunks the pool's workers have run in this process (for the tests)."""
    return fastopt_pool_worker_chunks()


def pool_wakes() -> int:
    """How many jobs woke sleeping workers in this process (for the tests)."""
    return fastopt_pool_wakes()


def pool_sleeping_workers() -> int:
    """How many of the pool's workers are asleep now (for the tests)."""
    return fastopt_pool_sleepers()


def hold_pool_workers(bint hold):
    """Tests only: while held, a worker that wakes for a job claims nothing (it waits), as if
    it could not get a core; the callers then run every chunk themselves."""
    fastopt_pool_hold(hold)


cdef inline intp _chunk_size(intp size, int threads, intp smallest) noexcept nogil:
    """Chunks of at least ``smallest`` elements, at most CHUNKS_PER_THREAD per thread, each a
    whole number of CHUNK_ALIGN elements."""
    cdef intp chunks = min((size + smallest - 1) // smallest, <intp>threads * CHUNKS_PER_THREAD)
    cdef intp chunk = (size + chunks - 1) // chunks
    return (chunk + CHUNK_ALIGN - 1) // CHUNK_ALIGN * CHUNK_ALIGN


# ---------------------------------------------------------------------------------------------
# Opt-in flush-to-zero. Subnormal operands make x86 arithmetic take slow microcode assists
# (bench/investigations/denormals.py: Adam 10-60x slower once its state is subnormal). When
# enabled, each run of a loop sets MXCSR's flush-to-zero and denormals-are-zero bits in the
# thread that runs it and restores the thread's previous MXCSR afterwards: nothing outside
# fastopt's loops is affected. Results then differ from NumPy's wherever a value is subnormal.
# The C is in fastopt/_fpflags.h.

cdef extern from "_fpflags.h":
    const int FASTOPT_CAN_FLUSH
    unsigned int fastopt_flush_begin() noexcept nogil
    void fastopt_flush_end(unsigned int saved) noexcept nogil


def can_flush_denormals() -> bool:
    """Whether this build can flush subnormals to zero inside its loops (x86-64)."""
    return bool(FASTOPT_CAN_FLUSH)


def set_flush_denormals(bint enabled):
    """Flush subnormal inputs and results to zero inside the compiled loops, or stop."""
    if enabled and not FASTOPT_CAN_FLUSH:
        raise ValueError("flushing subnormals is only available on x86-64 builds")
    fastopt_setting_set(FASTOPT_FLUSH, enabled)


def get_flush_denormals() -> bool:
    return fastopt_setting_get(FASTOPT_FLUSH) != 0


cdef inline void* _at(void* buffer, intp offset, intp itemsize) noexcept nogil:
    return NULL if buffer == NULL else <void*>(<char*>buffer + offset * itemsize)


cdef void _run_part(Task* task, loop_float run_float, loop_double run_double, const Step* c,
                    intp start, intp stop, bint flush) noexcept nogil:
    """Run ``task``'s loop on elements [start, stop), flushing subnormals if asked."""
    cdef intp itemsize = 4 if task.single else 8
    cdef unsigned int saved = 0
    if flush:
        saved = fastopt_flush_begin()
    if task.single:
        run_float(<float*>_at(task.param, start, itemsize),
                  <const float*>_at(task.grad, start, itemsize),
                  <float*>_at(task.state[0], start, itemsize),
                  <float*>_at(task.state[1], start, itemsize),
                  <float*>_at(task.state[2], start, itemsize), stop - start, c, task.decay)
    else:
        run_double(<double*>_at(task.param, start, itemsize),
                   <const double*>_at(task.grad, start, itemsize),
                   <double*>_at(task.state[0], start, itemsize),
                   <double*>_at(task.state[1], start, itemsize),
                   <double*>_at(task.state[2], start, itemsize), stop - start, c, task.decay)
    if flush:
        fastopt_flush_end(saved)


cdef enum:
    LINE = 64   # bytes in a cache line (and in an AVX-512 register)


cdef void _run_aligned(Task* task, loop_float run_float, loop_double run_double,
                       const Step* c, intp start, intp stop, bint flush) noexcept nogil:
    """Run [start, stop) as a short head up to the param's first 64-byte boundary, then the
    rest, so that the vector loop stores whole cache lines (and so does its state, allocated
    at the param's offset; see fastopt/_base.py). Elementwise loops give the same bits however
    the range is split."""
    cdef intp itemsize = 4 if task.single else 8
    cdef intp misaligned = <intp>(<size_t>task.param + <size_t>(start * itemsize)) % LINE
    cdef intp head = ((LINE - misaligned) % LINE) // itemsize
    if 0 < head < stop - start:
        _run_part(task, run_float, run_double, c, start, start + head, flush)
        start += head
    _run_part(task, run_float, run_double, c, start, stop, flush)


ctypedef struct Job:
    # What a chunk of one param's update needs; it lives on the stack of ``_run_task``.
    Task* task
    loop_float run_float
    loop_double run_double
    const Step* c
    bint flush


cdef void _run_chunk(void* job, intp start, intp stop) noexcept nogil:
    cdef Job* j = <Job*>job
    _run_aligned(j.task, j.run_float, j.run_double, j.c, start, stop, j.flush)


cdef inline bint _wakes(intp size, intp parallel_min) noexcept nogil:
    """Whether an update of ``size`` elements, its loop split from ``parallel_min``, wakes
    the pool's sleeping workers (else it uses them only while they are awake)."""
    return size >= WAKE_FACTOR * parallel_min or size >= WAKE_MIN


cdef void _run_task(Task* task, loop_float run_float, loop_double run_double, const Step* c,
                    int threads, intp parallel_min, bint flush) noexcept nogil:
    """Run one param's loop: on this thread, or from ``parallel_min`` elements in chunks
    claimed by this thread and the pool's workers (see Threads)."""
    cdef Job job
    if threads < 2 or task.size < parallel_min:
        _run_aligned(task, run_float, run_double, c, 0, task.size, flush)
        return
    job.task = task
    job.run_float = run_float
    job.run_double = run_double
    job.c = c
    job.flush = flush
    fastopt_pool_run(_run_chunk, &job, task.size, _chunk_size(task.size, threads, CHUNK_MIN),
                     threads, _wakes(task.size, parallel_min))


ctypedef struct Region:
    # One update's params as one range of elements, which the pool cuts into chunks: param k
    # covers [tasks[k].offset, tasks[k].offset + tasks[k].size), each starting on a whole
    # CHUNK_ALIGN; the gaps between params belong to none. It lives on ``_run_all``'s stack.
    Task* tasks
    Py_ssize_t count
    loop_float run_float
    loop_double run_double
    const Step* c
    bint flush


cdef void _run_region_chunk(void* job, intp start, intp stop) noexcept nogil:
    """Run elements [start, stop) of the region: the parts of every param they cover."""
    cdef Region* r = <Region*>job
    cdef Py_ssize_t low = 0, high = r.count - 1, middle, k
    cdef Task* task
    cdef intp first, last
    while low < high:   # the last param that starts at or before ``start``
        middle = (low + high + 1) // 2
        if r.tasks[middle].offset <= start:
            low = middle
        else:
            high = middle - 1
    k = low
    while k < r.count and r.tasks[k].offset < stop:
        task = &r.tasks[k]
        first = max(start, task.offset) - task.offset
        last = min(stop, task.offset + task.size) - task.offset
        if first < last:
            _run_aligned(task, r.run_float, r.run_double, r.c, first, last, r.flush)
        k += 1


ctypedef struct Span:
    size_t start, stop   # a buffer's bytes
    Py_ssize_t owner     # the param it belongs to


cdef int _span_order(const void* a, const void* b) noexcept nogil:
    cdef size_t x = (<const Span*>a).start, y = (<const Span*>b).start
    return (x > y) - (x < y)


cdef bint _disjoint(Task* tasks, Py_ssize_t count) noexcept nogil:
    """Whether no buffer of one param (the param, its grad, its state) shares memory with a
    buffer of another, so that their chunks may run at once in any order; one param's own
    buffers were checked by ``_plan``. Sorted by start, a buffer overlaps an earlier one of
    another param exactly when it starts before the furthest end among those: that is the
    furthest end of all if another param owns it, else the furthest of the other params'."""
    cdef Span stack[STACK_TASKS * (2 + STATES)]
    cdef Span* spans = stack
    cdef Py_ssize_t n = 0, k, j, best_owner = -1
    cdef size_t best = 0, other = 0, limit, width
    cdef void* buffers[2 + STATES]
    cdef bint disjoint = True
    if count < 2:
        return True
    if count > STACK_TASKS:
        spans = <Span*>malloc(count * (2 + STATES) * sizeof(Span))
        if spans == NULL:
            return False
    for k in range(count):
        width = <size_t>tasks[k].size * (4 if tasks[k].single else 8)
        if width == 0:
            continue
        buffers[0] = tasks[k].param
        buffers[1] = tasks[k].grad
        for j in range(STATES):
            buffers[2 + j] = tasks[k].state[j]
        for j in range(2 + STATES):
            if buffers[j] != NULL:
                spans[n].start = <size_t>buffers[j]
                spans[n].stop = <size_t>buffers[j] + width
                spans[n].owner = k
                n += 1
    qsort(spans, n, sizeof(Span), _span_order)
    for j in range(n):
        limit = best if best_owner != spans[j].owner else other
        if spans[j].start < limit:
            disjoint = False
            break
        if spans[j].stop > best:
            if best_owner != spans[j].owner:
                other = best
            best = spans[j].stop
            best_owner = spans[j].owner
        elif spans[j].owner != best_owner and spans[j].stop > other:
            other = spans[j].stop
    if spans != stack:
        free(spans)
    return disjoint


cdef void _run_all(Task* tasks, Py_ssize_t count, loop_float run_float, loop_double run_double,
                   const Step* c, int threads, intp parallel_min, bint flush) noexcept nogil:
    """Run every param's loop: on this thread when the whole update has fewer than
    ``parallel_min`` elements; otherwise as one region of the pool, whose chunks are claimed
    across params, so that a network of many mid-size params uses every thread (see Threads).
    Params that share memory with one another run one after the other, each split alone."""
    cdef Region region
    cdef intp total = 0, end = 0
    cdef Py_ssize_t k
    if threads >= 2:
        for k in range(count):
            total += tasks[k].size
    if threads < 2 or total < parallel_min:
        for k in range(count):
            _run_aligned(&tasks[k], run_float, run_double, c, 0, tasks[k].size, flush)
        return
    if not _disjoint(tasks, count):
        for k in range(count):
            _run_task(&tasks[k], run_float, run_double, c, threads, parallel_min, flush)
        return
    for k in range(count):
        tasks[k].offset = end
        end = (end + tasks[k].size + CHUNK_ALIGN - 1) // CHUNK_ALIGN * CHUNK_ALIGN
    region.tasks = tasks
    region.count = count
    region.run_float = run_float
    region.run_double = run_double
    region.c = c
    region.flush = flush
    fastopt_pool_run(_run_region_chunk, &region, end, _chunk_size(end, threads, CHUNK_MIN),
                     threads, _wakes(total, parallel_min))


cdef bint _run(object params, object grads, tuple states, int required, object decays,
               loop_float run_float, loop_double run_double, Step* c,
               intp parallel_min) except -1:
    """Update every param, or none.

    ``params``, ``grads``, each state container that is not None (three slots, of which the
    first ``required`` must be given: the loop writes them) and ``decays`` (which params
    decay; None: all) are all lists of the same length, or all dicts, the book's
    style, keyed by str. First plans every param (``_plan``); if any one cannot be taken (or a
    dict lacks its key), returns False having touched nothing. Otherwise runs all the loops in
    one stretch without the GIL (large params split across threads) and returns True. Every
    planned array is held in ``keep`` until its loop has run, so that another thread that
    replaces a list's or dict's entry cannot free it.
    """
    cdef Py_ssize_t k, count
    cdef Task stack[STACK_TASKS]
    cdef Task* tasks = stack
    cdef int threads = fastopt_setting_get(FASTOPT_THREADS)
    cdef bint flush = fastopt_setting_get(FASTOPT_FLUSH)
    cdef bint by_key = type(params) is dict
    cdef type kind = dict if by_key else list
    cdef list keep = []
    cdef object state
    if not by_key and type(params) is not list:
        raise TypeError(f"params must be a list or a dict; got {type(params).__name__}")
    if type(grads) is not kind or (decays is not None and type(decays) is not kind):
        raise TypeError(f"params is a {kind.__name__}, so grads and decays must be too")
    for k in range(STATES):
        if states[k] is None and k < required:
            raise TypeError(f"this rule needs {required} state containers; got None")
        if states[k] is not None and type(states[k]) is not kind:
            raise TypeError(f"params is a {kind.__name__}, so the state must be too")
    count = len(params)
    if not by_key:
        if len(grads) != count or (decays is not None and len(decays) != count):
            raise ValueError("params, grads and decays must have the same length")
        for state in states:
            if state is not None and len(state) != count:
                raise ValueError("params and state lists must have the same length")
    if count > STACK_TASKS:
        tasks = <Task*>malloc(count * sizeof(Task))
        if tasks == NULL:
            raise MemoryError()
    try:
        if by_key:
            k = 0
            for key, param in (<dict>params).items():
                # str keys only, so that looking them up in grads and the state runs no Python
                # code of the keys' own. Code of a foreign key in grads could still swap keys
                # without changing the dict's size, which the dict iteration would not notice:
                # never plan more than ``count`` params.
                if k == count or type(key) is not str or not _plan_entry(
                        key, param, grads, states, decays, &tasks[k], keep):
                    return False
                k += 1
            if k != count:
                return False
        else:
            for k in range(count):
                if not _plan_entry(k, params[k], grads, states, decays, &tasks[k], keep):
                    return False
        c.soft_roots = fastopt_setting_get(FASTOPT_SOFT_ROOTS)   # like threads and flush
        with nogil:
            _run_all(tasks, count, run_float, run_double, c, threads, parallel_min, flush)
        return True
    finally:
        if tasks != stack:
            free(tasks)


cdef bint _plan_entry(object key, object param, object grads, tuple states, object decays,
                      Task* task, list keep) except -1:
    """``_plan`` for one key (str) of dict params or one position of list params; False if
    grads, a state or ``decays`` lacks it. Holds every array it plans in ``keep``."""
    cdef bint by_key = type(key) is str
    cdef object grad = (<dict>grads).get(key) if by_key else (<list>grads)[key]
    cdef object state, entry, decision = True
    cdef list own = [None, None, None]
    cdef int slot
    if grad is None:
        return False
    for slot in range(STATES):
        state = states[slot]
        if state is not None:
            entry = (<dict>state).get(key) if by_key else (<list>state)[key]
            if entry is None:
                return False
            own[slot] = entry
    if decays is not None:
        decision = (<dict>decays).get(key) if by_key else (<list>decays)[key]
        if decision is not True and decision is not False:
            return False
    keep.append((param, grad, own))
    task.decay = decision is True
    return _plan(param, grad, own, task)


cdef int _prepare(Step* c, object grad_scale, double weight_decay) except -1:
    """Zero the step's scalars and set its grad transform."""
    cdef char* raw = <char*>c
    cdef size_t i
    for i in range(sizeof(Step)):
        raw[i] = 0
    c.grad_scale = 1.0 if grad_scale is None else <double>grad_scale
    c.weight_decay = weight_decay
    return 0


# ---------------------------------------------------------------------------------------------
# The loops by name, and the step's scalars by name. Each loop is registered once, below its
# definition's section, with the state slots it writes and the size from which one param is
# split across threads; fastopt/_rules.py's ``Step`` names the loop and gives its scalars as
# a dict of ``Step`` field names. ``run`` (every checked update) and ``CallPlan`` (the call
# path) both take a loop from this table and fill a ``Step`` by name.

ctypedef struct Rule:
    loop_float run_float
    loop_double run_double
    int required          # state slots the loop writes: they must be given
    intp parallel_min     # elements from which one param is split across threads


cdef enum:
    MAX_LOOPS = 64


cdef Rule _loop_table[MAX_LOOPS]
cdef int _loop_count = 0
_LOOPS = {}   # loop name -> its index in _loop_table (written only while importing)


cdef int _register(str name, loop_float run_float, loop_double run_double, int required,
                   intp parallel_min) except -1:
    """Make loop ``name`` callable by name."""
    global _loop_count
    if _loop_count == MAX_LOOPS or name in _LOOPS:
        raise RuntimeError(f"cannot register loop {name!r}")
    _loop_table[_loop_count].run_float = run_float
    _loop_table[_loop_count].run_double = run_double
    _loop_table[_loop_count].required = required
    _loop_table[_loop_count].parallel_min = parallel_min
    _LOOPS[name] = _loop_count
    _loop_count += 1
    return 0


_register("sgd", _sgd[float], _sgd[double], 0, STREAMING_MIN)
_register("momentum", _momentum[float], _momentum[double], 1, STREAMING_MIN)
_register("nesterov", _nesterov[float], _nesterov[double], 1, STREAMING_MIN)
_register("adagrad", _adagrad[float], _adagrad[double], 1, DIVIDING_MIN)
_register("rmsprop", _rmsprop[float], _rmsprop[double], 1, DIVIDING_MIN)
_register("adam", _adam[float], _adam[double], 2, DIVIDING_MIN)
_register("adam_amsgrad", _adam_amsgrad[float], _adam_amsgrad[double], 3, DIVIDING_MIN)
_register("adam_paper", _adam_paper[float], _adam_paper[double], 2, DIVIDING_MIN)
_register("adamw", _adamw[float], _adamw[double], 2, DIVIDING_MIN)
_register("nadam", _nadam[float], _nadam[double], 2, DIVIDING_MIN)
_register("radam", _radam[float], _radam[double], 2, DIVIDING_MIN)
_register("adamax", _adamax[float], _adamax[double], 2, DIVIDING_MIN)
_register("adadelta", _adadelta[float], _adadelta[double], 2, DIVIDING_MIN)
_register("lion", _lion[float], _lion[double], 1, STREAMING_MIN)
_register("adopt", _adopt[float], _adopt[double], 2, DIVIDING_MIN)
_register("lamb", _lamb[float], _lamb[double], 3, DIVIDING_MIN)
_register("lamb_apply", _lamb_apply[float], _lamb_apply[double], 3, STREAMING_MIN)
_register("schedulefree_adamw", _schedulefree_adamw[float], _schedulefree_adamw[double], 3,
          DIVIDING_MIN)
_register("schedulefree_sgd", _schedulefree_sgd[float], _schedulefree_sgd[double], 2,
          STREAMING_MIN)
_register("schedulefree_train", _schedulefree_train[float], _schedulefree_train[double], 1,
          STREAMING_MIN)
_register("lookahead", _lookahead[float], _lookahead[double], 1, STREAMING_MIN)
_register("none", _none[float], _none[double], 0, NEVER_SPLIT)
_register("lars", _lars[float], _lars[double], 0, STREAMING_MIN)
_register("muon", _muon[float], _muon[double], 2, STREAMING_MIN)
_register("muon_apply", _muon_apply[float], _muon_apply[double], 2, STREAMING_MIN)


cdef Rule* _loop_named(str name) except NULL:
    index = _LOOPS.get(name)
    if index is None:
        raise ValueError(f"no compiled loop is named {name!r}; the loops are "
                         f"{sorted(_LOOPS)}")
    return &_loop_table[<int>index]


def loops():
    """The names of the compiled loops, in the order they were registered, then the rules
    that update each param whole (``_PARAM_RULES``)."""
    return tuple(_LOOPS) + _PARAM_RULES


# The Step fields a rule's scalars may fill, by name: (byte offset << 1) | 1 for a flag (bint),
# (byte offset << 1) for a double.
cdef Step _layout
_FIELDS = {}


cdef int _field(str name, void* address, bint flag) except -1:
    _FIELDS[name] = ((<char*>address - <char*>&_layout) << 1) | flag
    return 0


_field("lr", &_layout.lr, False)
_field("momentum", &_layout.momentum, False)
_field("decay_rate", &_layout.decay_rate, False)
_field("rho", &_layout.rho, False)
_field("beta1", &_layout.beta1, False)
_field("beta2", &_layout.beta2, False)
_field("eps", &_layout.eps, False)
_field("lr_t", &_layout.lr_t, False)
_field("bias_correction1", &_layout.bias_correction1, False)
_field("bias_correction2", &_layout.bias_correction2, False)
_field("bias_correction2_sqrt", &_layout.bias_correction2_sqrt, False)
_field("step_size", &_layout.step_size, False)
_field("grad_step", &_layout.grad_step, False)
_field("momentum_step", &_layout.momentum_step, False)
_field("rectification", &_layout.rectification, False)
_field("decoupled_decay", &_layout.decoupled_decay, False)
_field("eps_inside_sqrt", &_layout.eps_inside_sqrt, True)
_field("velocity_first", &_layout.velocity_first, True)
_field("rectified", &_layout.rectified, True)
_field("clip", &_layout.clip, False)
_field("first", &_layout.first, True)
_field("ratio", &_layout.ratio, False)
_field("ckp1", &_layout.ckp1, False)
_field("lookahead_alpha", &_layout.lookahead_alpha, False)
_field("step_lr", &_layout.step_lr, False)
_field("lerp_weight", &_layout.lerp_weight, False)
_field("eps1", &_layout.eps1, False)
_field("eps2", &_layout.eps2, False)
_field("clip_threshold", &_layout.clip_threshold, False)
_field("eps1_of_dtype", &_layout.eps1_of_dtype, True)
_field("dampening", &_layout.dampening, False)
_field("nesterov", &_layout.nesterov, True)
_field("adjusted_lr", &_layout.adjusted_lr, False)


def step_fields():
    """The names a rule's scalars may have (the ``Step`` fields its loops read)."""
    return tuple(_FIELDS)


cdef int _fill(Step* c, dict scalars) except -1:
    """Set ``c``'s fields from ``scalars`` (field name -> number; a flag from any truth value)."""
    cdef char* raw = <char*>c
    cdef Py_ssize_t where
    for name, value in scalars.items():
        field = _FIELDS.get(name)
        if field is None:
            raise ValueError(f"the compiled loops take no scalar named {name!r}; they take "
                             f"{sorted(_FIELDS)}")
        where = field
        if where & 1:
            (<bint*>(raw + (where >> 1)))[0] = bool(value)
        else:
            (<double*>(raw + (where >> 1)))[0] = value
    return 0


def run(str loop not None, params, grads, s0, s1, s2, decays, grad_scale,
        double weight_decay, dict scalars not None):
    """Update every param by compiled loop ``loop`` and return True; or, if any param is not
    one the loops can take (see ``ready``) or a container lacks a key, update none and return
    False.

    Parameters
    ----------
    loop : str
        The loop's name (``loops()``).
    params, grads : list or dict
        The params and their grads (lists of the same length, or dicts keyed by str).
    s0, s1, s2 : list, dict or None
        The rule's three state slots, in its order (None for a slot the rule, with its
        options, does not keep).
    decays : list, dict or None
        Which params decay (None: all).
    grad_scale : float or None
        The clip factor the grads are multiplied by (None: no clipping).
    weight_decay : float
        Coupled decay, ``g + weight_decay*p`` (0 for none).
    scalars : dict
        The rule's scalars by ``Step`` field name (``step_fields()``).
    """
    cdef Step c
    cdef Rule* r
    if loop == "adafactor":   # _PARAM_RULES: state of other shapes, its own driver
        _prepare(&c, grad_scale, weight_decay)
        _fill(&c, scalars)
        return _adafactor_run(params, grads, (s0, s1, s2), decays, &c)
    r = _loop_named(loop)
    _prepare(&c, grad_scale, weight_decay)
    _fill(&c, scalars)
    return _run(params, grads, (s0, s1, s2), r.required, decays, r.run_float, r.run_double, &c,
                r.parallel_min)


# ---------------------------------------------------------------------------------------------
# The call path: an update whose hyperparameters are the objects the last checked update
# checked. fastopt/_base.py builds a ``CallPlan`` after a checked update; every later update
# first offers itself to it (``CallPlan.update``), which runs it in this one call or declines,
# changing nothing, and the checked path takes over.

cdef enum Form:
    # How the step's scalars follow from the step count t (fastopt.reference's _next_step).
    CONSTANT            # none depends on t
    LR_T                # the book's Adam: lr_t = lr*sqrt(1 - beta2**t)/(1 - beta1**t)
    BIAS_CORRECTIONS    # the paper's Adam: 1 - beta1**t, 1 - beta2**t
    STEP_SIZE           # Adamax: lr/(1 - beta1**t)
    STEP_SIZE_AND_SQRT  # AdamW: lr/(1 - beta1**t), sqrt(1 - beta2**t)


_FORMS = {"constant": CONSTANT, "lr_t": LR_T, "bias_corrections": BIAS_CORRECTIONS,
          "step_size": STEP_SIZE, "step_size_and_sqrt": STEP_SIZE_AND_SQRT}

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1


@cython.auto_pickle(False)
cdef class CallPlan:
    """An update as the last checked update planned it, valid while nothing it rests on changes.

    It holds the optimizer's class; the names of the attributes the checks read (the float
    hyperparameters, the options, ``weight_decay_filter`` and ``max_grad_norm``) with the
    objects they held when checked (numbers, bools, None or the filter: never schedules, whose
    value changes with the step); the names of the state attributes in the rule's three slots;
    the rule's loop with its constant scalars; and how its other scalars follow from the step
    count (``form``: the same IEEE operations, in the same order, as fastopt.reference's
    ``_next_step``; ``pow`` and ``sqrt`` are the C library's, as Python's ``**`` and
    ``math.sqrt`` are). A plan without a kernel never runs: it only remembers, for as long as
    it holds, that the checked path must run every update (a schedule, clipping, NAdam).

    Calling it, ``plan(optimizer, params, grads)``, takes the optimizer's lock, checks that
    each of those attributes still holds the same object, however it was set (``setattr``,
    ``__dict__``, a checkpoint load), reads ``iter`` and the state containers from the optimizer's
    ``__dict__``, computes the step's scalars, runs ``_run`` (which checks every param) and
    counts the step. If anything differs, or a param, container or ``iter`` is not one it
    takes, it returns False having changed nothing.
    """
    cdef type owner
    cdef tuple names
    cdef tuple objects
    cdef tuple slots
    cdef readonly bint runs      # False: a plan that only holds (see above)
    cdef readonly bint planned   # False: a snapshot only, not yet planned (fastopt/_base.py)
    cdef bint filtered
    cdef Step base
    cdef Rule rule
    cdef Form form
    cdef double lr, beta1, beta2

    def __init__(self, type owner not None, tuple names not None, tuple objects not None,
                 tuple slots not None, bint filtered, str loop, dict scalars not None,
                 double weight_decay, str form not None, double lr, double beta1,
                 double beta2):
        if len(names) != len(objects) or len(slots) != STATES:
            raise ValueError("one object per name, and three state slots")
        for name in names + slots:
            if name is not None and type(name) is not str:
                raise TypeError("attribute names are str")
        self.owner = owner
        self.names = names
        self.objects = objects
        self.slots = slots
        self.filtered = filtered
        self.runs = loop is not None
        self.planned = True
        _prepare(&self.base, None, weight_decay)
        if self.runs:
            _fill(&self.base, scalars)
            self.rule = _loop_named(loop)[0]
        self.form = _FORMS[form]
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2

    cdef void _at(self, Step* c, double t) noexcept nogil:
        """``c`` = the scalars of step ``t``."""
        c[0] = self.base
        if self.form == LR_T:
            c.lr_t = self.lr * sqrt(1.0 - pow(self.beta2, t)) / (1.0 - pow(self.beta1, t))
        elif self.form == BIAS_CORRECTIONS:
            c.bias_correction1 = 1.0 - pow(self.beta1, t)
            c.bias_correction2 = 1.0 - pow(self.beta2, t)
        elif self.form == STEP_SIZE:
            c.step_size = self.lr / (1.0 - pow(self.beta1, t))
        elif self.form == STEP_SIZE_AND_SQRT:
            c.step_size = self.lr / (1.0 - pow(self.beta1, t))
            c.bias_correction2_sqrt = sqrt(1.0 - pow(self.beta2, t))

    def step_scalars(self, long long t):
        """The scalars of step ``t`` that depend on it, by name (for the tests)."""
        cdef Step c
        self._at(&c, <double>t)
        return {"lr_t": c.lr_t, "bias_correction1": c.bias_correction1,
                "bias_correction2": c.bias_correction2, "step_size": c.step_size,
                "bias_correction2_sqrt": c.bias_correction2_sqrt}

    def holds(self, optimizer):
        """Whether ``optimizer`` is of the planned class and every checked attribute still
        holds the planned object."""
        return type(optimizer) is self.owner and self._holds(optimizer.__dict__)

    cdef bint _holds(self, dict own) except -1:
        cdef Py_ssize_t i
        for i in range(len(self.names)):
            # a borrowed reference, NULL if missing (the names are str: no error to lose)
            if PyDict_GetItem(own, self.names[i]) != <PyObject*>self.objects[i]:
                return False
        return True

    def __call__(self, optimizer, params, grads):
        """Update ``params`` in place as ``optimizer.update`` would and return True; or change
        nothing and return False (then the checked path runs). Takes the optimizer's lock."""
        if not self.runs or type(optimizer) is not self.owner:
            return False
        cdef dict own = optimizer.__dict__
        lock = own.get("_lock")
        if lock is None:
            return False
        lock.acquire()
        try:
            return self._update(own, params, grads)
        finally:
            lock.release()

    def run(self, optimizer, params, grads):
        """The plan's update, for a caller that holds the optimizer's lock."""
        if not self.runs or type(optimizer) is not self.owner:
            return False
        return self._update(optimizer.__dict__, params, grads)

    cdef bint _update(self, dict own, object params, object grads) except -1:
        cdef object kind = type(params)
        cdef object iteration = own.get("iter")
        cdef object decays = None
        cdef object s0 = None, s1 = None, s2 = None
        cdef long long done
        cdef int overflow = 0
        cdef Py_ssize_t count
        cdef Step c
        if not self._holds(own) or type(iteration) is not int:
            return False
        done = PyLong_AsLongLongAndOverflow(iteration, &overflow)
        # t = done + 1 as a double, exactly as Python converts it
        if overflow or not 0 <= done < (1LL << 53) - 1:
            return False
        if (kind is not dict and kind is not list) or type(grads) is not kind:
            return False
        if self.slots[0] is not None:
            s0 = own.get(self.slots[0])
            if type(s0) is not kind:
                return False
        if self.slots[1] is not None:
            s1 = own.get(self.slots[1])
            if type(s1) is not kind:
                return False
        if self.slots[2] is not None:
            s2 = own.get(self.slots[2])
            if type(s2) is not kind:
                return False
        if self.filtered:
            decays = own.get("_decays")
            if type(decays) is not kind:
                return False
        if kind is list:
            count = len(<list>params)
            if (len(<list>grads) != count
                    or (decays is not None and len(<list>decays) != count)
                    or (s0 is not None and len(<list>s0) != count)
                    or (s1 is not None and len(<list>s1) != count)
                    or (s2 is not None and len(<list>s2) != count)):
                return False
        self._at(&c, <double>(done + 1))
        if not _run(params, grads, (s0, s1, s2), self.rule.required, decays,
                    self.rule.run_float, self.rule.run_double, &c, self.rule.parallel_min):
            return False
        own["iter"] = done + 1
        return True


def note(optimizer, tuple names not None):
    """A plan that never runs: which objects ``optimizer``'s attributes ``names`` hold now
    (None for a missing one). fastopt/_base.py plans once they still hold at the next checked
    update."""
    cdef CallPlan plan = CallPlan.__new__(CallPlan)
    cdef dict own = optimizer.__dict__
    for name in names:
        if type(name) is not str:
            raise TypeError("attribute names are str")
    plan.owner = type(optimizer)
    plan.names = names
    plan.objects = tuple([own.get(name) for name in names])
    plan.slots = (None, None, None)
    plan.runs = False
    plan.planned = False
    plan.form = CONSTANT
    _prepare(&plan.base, None, 0.0)
    return plan


# ---------------------------------------------------------------------------------------------
# Gradient clipping: the global L2 norm, summed in float64 in a fixed blocking, and the
# in-place scaling. The blocking is the definition of the sum (fastopt.reference.global_norm
# computes the same in NumPy): each array's elements, as doubles, are squared into blocks of
# NORM_BLOCK; inside a block element i is added to lane i % NORM_LANES, in order, and the
# lanes are combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); an array's block sums are
# combined pairwise (first half + second half, recursively); the arrays' sums are added in
# order starting from 0. The lanes are independent accumulators, so a compiler can vectorise
# them at any width without changing a bit, and blocks can run on any thread. The rounding
# error is at most about (NORM_BLOCK/NORM_LANES + log2(blocks) + arrays) units in the last
# place of the sum: about 1e-13 relative for any realistic size.

cdef enum:
    NORM_BLOCK = 4096
    NORM_LANES = 8


cdef inline double _scaled(floating x, floating scale, bint scaled) noexcept nogil:
    """``x``, or ``x*scale`` rounded to its dtype (the grad a loop reads), as a double."""
    return <double>(x * scale) if scaled else <double>x


cdef double _block_sum(const floating* x, intp n, floating scale, bint scaled) noexcept nogil:
    """Sum of squares of ``x[0:n]`` (n <= NORM_BLOCK), each times ``scale`` first if
    ``scaled``, in NORM_LANES lanes. (``scaled`` is a constant in each call of ``_lanes``,
    so each form vectorises; a flag read inside the loop would keep it scalar.)"""
    if scaled:
        return _lanes(x, n, scale, True)
    return _lanes(x, n, scale, False)


cdef inline double _lanes(const floating* x, intp n, floating scale, bint scaled) noexcept nogil:
    cdef double acc[NORM_LANES]
    cdef intp row, i, j, full = n - n % NORM_LANES
    cdef double value
    for j in range(NORM_LANES):
        acc[j] = 0.0
    for row in range(full // NORM_LANES):
        i = row * NORM_LANES
        for j in range(NORM_LANES):
            value = _scaled(x[i + j], scale, scaled)
            acc[j] = acc[j] + value * value
    for j in range(n - full):
        value = _scaled(x[full + j], scale, scaled)
        acc[j] = acc[j] + value * value
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef double _pairwise(const double* sums, intp n) noexcept nogil:
    if n == 0:
        return 0.0
    if n == 1:
        return sums[0]
    return _pairwise(sums, n // 2) + _pairwise(sums + n // 2, n - n // 2)


ctypedef struct SumJob:
    # What a run of blocks of ``_array_sum`` needs; it lives on that function's stack.
    Task* task
    double* sums
    double scale   # each element is multiplied by it first (in its dtype), if ``scaled``
    bint scaled


cdef void _sum_blocks(void* job, intp first, intp stop) noexcept nogil:
    """The sums of blocks [first, stop) of the job's grad."""
    cdef SumJob* j = <SumJob*>job
    cdef Task* task = j.task
    cdef intp b, start
    for b in range(first, stop):
        start = b * NORM_BLOCK
        if task.single:
            j.sums[b] = _block_sum(<const float*>task.grad + start,
                                   min(task.size - start, <intp>NORM_BLOCK),
                                   <float>j.scale, j.scaled)
        else:
            j.sums[b] = _block_sum(<const double*>task.grad + start,
                                   min(task.size - start, <intp>NORM_BLOCK), j.scale, j.scaled)


cdef int _array_sum(Task* task, int threads, double* result, double scale,
                    bint scaled) noexcept nogil:
    """``result[0]`` = the blocked sum of squares of the task's grad (each element times
    ``scale`` first, in its dtype, if ``scaled``); -1 if out of memory. From STREAMING_MIN
    elements the blocks are shared out by the thread pool; each block's sum and their pairwise
    combination do not depend on which thread summed it."""
    cdef intp blocks = (task.size + NORM_BLOCK - 1) // NORM_BLOCK
    cdef intp chunks
    cdef SumJob job
    if blocks <= 1:
        result[0] = (_block_sum(<const float*>task.grad, task.size, <float>scale, scaled)
                     if task.single
                     else _block_sum(<const double*>task.grad, task.size, scale, scaled))
        return 0
    job.task = task
    job.scale = scale
    job.scaled = scaled
    job.sums = <double*>malloc(blocks * sizeof(double))
    if job.sums == NULL:
        return -1
    if threads < 2 or task.size < STREAMING_MIN:
        _sum_blocks(&job, 0, blocks)
    else:
        # chunks of whole blocks (NORM_BLOCK >= CHUNK_MIN elements each)
        chunks = <intp>threads * CHUNKS_PER_THREAD
        fastopt_pool_run(_sum_blocks, &job, blocks, (blocks + chunks - 1) // chunks, threads,
                         True)
    result[0] = _pairwise(job.sums, blocks)
    free(job.sums)
    return 0


cdef bint _readable(object array, Task* task) noexcept:
    """Point ``task.grad`` at ``array`` if the loops can read it: a C-contiguous, aligned,
    native float32/float64 ndarray (read-only is fine)."""
    if type(array) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>array
    cdef int typenum = cnp.PyArray_TYPE(a)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return False
    if not cnp.PyArray_ISCARRAY_RO(a):
        return False
    task.grad = cnp.PyArray_DATA(a)
    task.size = cnp.PyArray_SIZE(a)
    task.single = typenum == cnp.NPY_FLOAT
    return True


def sum_of_squares(array, scale=None):
    """The blocked float64 sum of squares of one array (see above), each element multiplied
    by ``scale`` first (in the array's dtype) unless it is None; or None if the loops cannot
    read the array (the caller then computes the same sum with NumPy)."""
    cdef Task task
    cdef double result
    cdef int status
    cdef int threads = fastopt_setting_get(FASTOPT_THREADS)
    cdef bint scaled = scale is not None
    cdef double factor = <double>scale if scaled else 1.0
    if not _readable(array, &task):
        return None
    with nogil:
        status = _array_sum(&task, threads, &result, factor, scaled)
    if status != 0:
        raise MemoryError()
    return result


cdef void _scale(floating* g, intp n, double factor) noexcept nogil:
    cdef floating f = <floating>factor
    cdef intp i
    for i in range(n):
        g[i] = g[i] * f


def scale_in_place(list arrays not None, double factor):
    """``a *= factor`` for every array, in its own dtype; all of them, or (returning False)
    none when any is not a writeable C-contiguous aligned native float32/float64 ndarray."""
    cdef Py_ssize_t k, count = len(arrays)
    cdef list keep = list(arrays)
    cdef Task task
    for k in range(count):
        if not _readable(keep[k], &task) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>keep[k]):
            return False
    for k in range(count):
        _readable(keep[k], &task)
        with nogil:
            if task.single:
                _scale(<float*>task.grad, task.size, factor)
            else:
                _scale(<double*>task.grad, task.size, factor)
    return True


# ---------------------------------------------------------------------------------------------
# Adafactor (torch's): state of other shapes than the param's (the row and column factors of
# the second moment), two reductions per param (the param's norm before its step, the
# update's norm before it is applied) and sums over rows and columns. Not an elementwise
# loop, so not one of the table's: ``run`` gives it to ``_adafactor_run``, which checks every
# param and its state (the shapes of fastopt/_rules.py's ``_state_shapes``) before it writes
# anything, then updates param after param, each as fastopt.reference's ``adafactor_rule``
# does, statement by statement: the row and column sums added in index order, the norms in
# the fixed blocking above, the update recomputed element by element where it is needed (for
# its norm, then for the step) and never stored, and the outer product row_var @ col_var one
# product per element. A large param's update is shared out over the thread pool pass by
# pass (``_adafactor_param``), each pass split where no result depends on the split: row_var
# by rows, col_var by columns (each still summed over the rows in order), the variance and
# both norms by NORM_BLOCK blocks (their sums combined pairwise on the calling thread
# afterwards, as ``sum_of_squares`` does), the decay and the step by elements; so the bits
# are the same at every thread count. Params are not laid end to end into one region as the
# elementwise loops' are: a param below the split sizes runs on the calling thread. Its one
# allocation: a C scratch, once per update, for the largest param's block sums, column sums
# and per-batch means (``_adafactor_scratch``).

_PARAM_RULES = ("adafactor",)


ctypedef struct Factored:
    # One param's Adafactor update: its buffers, its size, and its factoring.
    void* param
    void* grad
    void* row     # row_var: batches*rows elements (NULL when not factored)
    void* col     # col_var: batches*cols elements (NULL when not factored)
    void* var     # variance: size elements (NULL when factored)
    intp size
    intp batches  # the product of the dims before the last two (1 for a matrix)
    intp rows     # the second-to-last dim; 0: not factored (fewer than 2 dims)
    intp cols     # the last dim
    bint single
    bint decay


cdef inline floating _lerp(floating start, floating end, floating weight, floating rest,
                           bint small) noexcept nogil:
    """torch's ``start.lerp_(end, weight)`` (``rest``: 1 - weight), by the weight's size."""
    if small:
        return start + weight * (end - start)
    return end - (end - start) * rest


ctypedef struct Place:
    # Where element i of a factored param sits, kept up to date element by element (no
    # integer division per element): its row_var index ``r`` (batch*rows + row), its column
    # ``k``, its batch ``b`` and its row within the batch ``w``.
    intp r
    intp k
    intp b
    intp w


cdef inline void _place(Place* at, intp i, intp rows, intp cols) noexcept nogil:
    """``at``: where element i sits (a vector's, ``rows`` 0: nowhere, never read)."""
    if rows == 0:
        at.r = at.k = at.b = at.w = 0
        return
    at.r = i // cols
    at.k = i - at.r * cols
    at.b = at.r // rows
    at.w = at.r - at.b * rows


cdef inline void _next(Place* at, intp rows, intp cols) noexcept nogil:
    """Move ``at`` on to the next element."""
    if rows == 0:
        return
    at.k += 1
    if at.k == cols:
        at.k = 0
        at.r += 1
        at.w += 1
        if at.w == rows:
            at.w = 0
            at.b += 1


cdef inline floating _adafactor_update(const floating* g, const floating* row,
                                       const floating* col, const floating* var,
                                       const floating* means, intp i, const Place* at,
                                       intp rows, intp cols, floating scale,
                                       floating floor) noexcept nogil:
    """Element i of the update: ``1/sqrt(max(estimate, eps1*eps1)) * g``, the estimate
    ``row_var*col_var/mean(row_var)`` (factored; ``at``: where i sits) or ``variance``."""
    cdef floating estimate
    if rows == 0:
        estimate = var[i]
    else:
        estimate = row[at.r] * col[at.b * cols + at.k] / means[at.b]
    return <floating>1 / _root(_maximum(estimate, floor)) * (g[i] * scale)


cdef double _update_block(const floating* g, const floating* row, const floating* col,
                          const floating* var, const floating* means, intp start, intp n,
                          intp rows, intp cols, floating scale, floating floor) noexcept nogil:
    """``_block_sum`` of the update's elements [start, start + n)."""
    cdef double acc[NORM_LANES]
    cdef intp _, j, i = start, full = n - n % NORM_LANES
    cdef double value
    cdef Place at
    _place(&at, start, rows, cols)
    for j in range(NORM_LANES):
        acc[j] = 0.0
    for _ in range(full // NORM_LANES):
        for j in range(NORM_LANES):
            value = <double>_adafactor_update(g, row, col, var, means, i, &at, rows, cols,
                                              scale, floor)
            acc[j] = acc[j] + value * value
            i += 1
            _next(&at, rows, cols)
    for j in range(n - full):
        value = <double>_adafactor_update(g, row, col, var, means, i, &at, rows, cols, scale,
                                          floor)
        acc[j] = acc[j] + value * value
        i += 1
        _next(&at, rows, cols)
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef enum:
    # The passes of one param's update (``_adafactor_part``), in this order, each split on its
    # own: what its range counts, and from how many elements of the param it is shared out.
    ROWS_PASS     # rows (batches*rows of them): row_var, each row summed in index order
    COLUMNS_PASS  # columns (batches*cols): col_var, each column summed over rows in order
    NORMS_PASS    # NORM_BLOCK blocks: the variance's lerp, the param's and the update's sums
    STEP_PASS     # elements: the decay and the step


ctypedef struct Pass:
    # What a chunk of one pass of ``_adafactor_param`` needs; it lives on that function's
    # stack. The scalars are the param's dtype's values, held as doubles (which hold them
    # exactly).
    Factored* f
    int kind          # ROWS_PASS ... STEP_PASS
    double* sums      # the param's sum of squares per NORM_BLOCK block (NORMS_PASS)
    double* updates   # the update's, per block (NORMS_PASS)
    void* columns     # batches*cols column sums (COLUMNS_PASS)
    void* means       # each batch's floored mean of row_var (NORMS_PASS, STEP_PASS)
    double scale, weight, rest, floor, keep, step
    bint small, decaying, flush


cdef void _adafactor_part(floating* p, Pass* j, intp start, intp stop) noexcept nogil:
    """Pass ``j.kind`` of the param ``p`` over [start, stop) of its range (see Pass), with the
    arithmetic of fastopt.reference's ``adafactor_rule``. No element, row, column or block
    depends on another one of the same pass, so the bits do not depend on the split."""
    cdef Factored* f = j.f
    cdef const floating* g = <const floating*>f.grad
    cdef floating* row = <floating*>f.row
    cdef floating* col = <floating*>f.col
    cdef floating* var = <floating*>f.var
    cdef floating* columns = <floating*>j.columns
    cdef const floating* means = <const floating*>j.means
    cdef floating scale = <floating>j.scale, weight = <floating>j.weight
    cdef floating rest = <floating>j.rest, floor = <floating>j.floor
    cdef floating keep = <floating>j.keep, step = <floating>j.step
    cdef floating x, total
    cdef bint small = j.small
    cdef intp n = f.size, rows = f.rows, cols = f.cols, b, r, k, i, first, last, base, size
    cdef Place at
    if j.kind == ROWS_PASS:
        for r in range(start, stop):   # row_var's flat index: batch*rows + row
            total = 0
            for k in range(cols):
                x = g[r * cols + k] * scale
                total = total + x * x
            row[r] = _lerp(row[r], total / <floating>cols, weight, rest, small)
    elif j.kind == COLUMNS_PASS:
        b = start // cols                # col_var's flat index: batch*cols + column
        while b * cols < stop:
            first = max(start, b * cols)
            last = min(stop, (b + 1) * cols)
            base = b * rows * cols - b * cols   # g's index of column k's row 0, less k
            for k in range(first, last):
                columns[k] = 0
            for r in range(rows):
                for k in range(first, last):
                    x = g[base + r * cols + k] * scale
                    columns[k] = columns[k] + x * x
            for k in range(first, last):
                col[k] = _lerp(col[k], columns[k] / <floating>rows, weight, rest, small)
            b += 1
    elif j.kind == NORMS_PASS:
        # The param is not written before STEP_PASS: its norm is the one before the decay.
        for b in range(start, stop):
            first = b * NORM_BLOCK
            size = min(n - first, <intp>NORM_BLOCK)
            j.sums[b] = _block_sum(p + first, size, <floating>1, False)
            if rows == 0:
                for i in range(first, first + size):
                    x = g[i] * scale
                    var[i] = _lerp(var[i], x * x, weight, rest, small)
            j.updates[b] = _update_block(g, row, col, var, means, first, size, rows, cols,
                                         scale, floor)
    elif j.decaying:   # STEP_PASS: p*keep rounded, then the step, as two statements would
        _place(&at, start, rows, cols)
        for i in range(start, stop):
            x = p[i] * keep
            p[i] = x - step * _adafactor_update(g, row, col, var, means, i, &at, rows, cols,
                                                scale, floor)
            _next(&at, rows, cols)
    else:
        _place(&at, start, rows, cols)
        for i in range(start, stop):
            p[i] = p[i] - step * _adafactor_update(g, row, col, var, means, i, &at, rows, cols,
                                                   scale, floor)
            _next(&at, rows, cols)


cdef void _adafactor_chunk(void* job, intp start, intp stop) noexcept nogil:
    cdef Pass* j = <Pass*>job
    cdef unsigned int saved = 0
    if j.flush:   # in whichever thread runs the chunk
        saved = fastopt_flush_begin()
    if j.f.single:
        _adafactor_part(<float*>j.f.param, j, start, stop)
    else:
        _adafactor_part(<double*>j.f.param, j, start, stop)
    if j.flush:
        fastopt_flush_end(saved)


cdef void _adafactor_pass(Pass* j, int kind, intp size, intp chunk, int threads,
                          intp parallel_min) noexcept nogil:
    """Run pass ``kind`` over its whole range [0, size) of chunks of ``chunk``: on this
    thread when the param has fewer than ``parallel_min`` elements, else shared out by the
    pool as ``_run_task`` shares out one param's loop (the same wake rule)."""
    j.kind = kind
    if threads < 2 or j.f.size < parallel_min:
        _adafactor_chunk(j, 0, size)
        return
    fastopt_pool_run(_adafactor_chunk, j, size, chunk, threads,
                     _wakes(j.f.size, parallel_min))


cdef intp _adafactor_scratch(Factored* f) noexcept nogil:
    """The doubles of scratch ``_adafactor_param`` needs for ``f``: two sums per NORM_BLOCK
    block, then (factored) the column sums and each batch's mean."""
    cdef intp blocks = (f.size + NORM_BLOCK - 1) // NORM_BLOCK
    if f.size == 0:
        return 0
    return 2 * blocks + (f.batches * f.cols + f.batches if f.rows else 0)


cdef void _adafactor_param(floating* p, Factored* f, const Step* c, double* scratch,
                           int threads, bint flush) noexcept nogil:
    """One param's update (fastopt.reference's ``adafactor_rule``), in two passes, four when
    factored (each pass a barrier), split over the pool from STREAMING_MIN (the row and
    column sums, which stream memory) or DIVIDING_MIN elements (the two with a square root
    and a division per element); ``scratch`` holds ``_adafactor_scratch(f)`` doubles. Each
    norm is the pairwise sum of its block sums, on this thread, as ``sum_of_squares``
    combines them."""
    cdef intp n = f.size, rows = f.rows, cols = f.cols, b, r
    cdef intp blocks = (n + NORM_BLOCK - 1) // NORM_BLOCK
    cdef intp chunks = <intp>threads * CHUNKS_PER_THREAD
    cdef double eps1 = c.eps1, root_n, rms, alpha, norm, denominator
    cdef floating total
    cdef floating* means
    cdef Pass j
    if n == 0:
        return
    if c.eps1_of_dtype:
        eps1 = FLT_EPSILON if floating is float else DBL_EPSILON
    j.f = f
    j.sums = scratch
    j.updates = scratch + blocks
    j.columns = <void*>(scratch + 2 * blocks)
    means = <floating*>j.columns + f.batches * cols
    j.means = <void*>means
    j.scale = <floating>c.grad_scale
    j.weight = <floating>c.lerp_weight
    j.rest = <floating>(1.0 - c.lerp_weight)
    j.small = fabs(c.lerp_weight) < 0.5
    j.floor = <floating>(eps1 * eps1)
    j.decaying = f.decay and c.decoupled_decay != 0
    j.keep = <floating>(1.0 - c.decoupled_decay)
    j.flush = flush
    root_n = pow(<double>n, 0.5)
    if rows:
        _adafactor_pass(&j, ROWS_PASS, f.batches * rows,
                        _chunk_size(f.batches * rows, threads, max(CHUNK_MIN // cols, 1)),
                        threads, STREAMING_MIN)
        _adafactor_pass(&j, COLUMNS_PASS, f.batches * cols,
                        _chunk_size(f.batches * cols, threads, max(CHUNK_MIN // rows, 1)),
                        threads, STREAMING_MIN)
        for b in range(f.batches):
            total = 0
            for r in range(rows):
                total = total + (<floating*>f.row)[b * rows + r]
            means[b] = _maximum(total / <floating>rows, <floating>eps1)
    _adafactor_pass(&j, NORMS_PASS, blocks, (blocks + chunks - 1) // chunks, threads,
                    DIVIDING_MIN)   # chunks of whole blocks
    rms = sqrt(_pairwise(j.sums, blocks)) / root_n
    alpha = (rms if rms > c.eps2 else c.eps2) * c.step_lr   # Python's max(eps2, rms)
    norm = sqrt(_pairwise(j.updates, blocks))
    denominator = norm / (root_n * c.clip_threshold)
    if not denominator > 1.0:   # Python's max(1.0, ...)
        denominator = 1.0
    j.step = <floating>(alpha / denominator)
    _adafactor_pass(&j, STEP_PASS, n, _chunk_size(n, threads, CHUNK_MIN), threads,
                    DIVIDING_MIN)


cdef bint _has_shape(object array, cnp.ndarray like, intp* dims, int ndim) noexcept:
    """Whether ``array`` is a writeable C-contiguous aligned native ndarray of ``like``'s
    dtype and shape ``dims[:ndim]``."""
    if type(array) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>array
    cdef int d
    if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(like) or cnp.PyArray_NDIM(a) != ndim
            or not cnp.PyArray_ISCARRAY(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    for d in range(ndim):
        if cnp.PyArray_DIMS(a)[d] != dims[d]:
            return False
    return True


cdef bint _adafactor_plan(object param, object grad, list states, Factored* f,
                          bint missing=False) noexcept:
    """Fill ``f`` and return True if ``_adafactor_param`` can update this param as NumPy
    would: ``_plan``'s conditions, with state of the shapes fastopt/_rules.py declares
    (``row_var`` dims[:-1] + (1,), ``col_var`` dims[:-2] + (1, dims[-1]), ``variance`` (0,)
    for 2 dims or more; ``(0,)``, ``(0,)`` and the param's shape otherwise). ``missing``
    (``ready``'s question, before the update creates a new key's state): a state that is None
    passes, and ``f``'s buffers are not to be used."""
    cdef intp shapes[3][64]
    cdef int ndims[3]
    cdef void* data[3]
    cdef cnp.ndarray p, g, s
    cdef int typenum, ndim, d, k, j
    if type(param) is not cnp.ndarray or type(grad) is not cnp.ndarray:
        return False
    p = <cnp.ndarray>param
    g = <cnp.ndarray>grad
    typenum = cnp.PyArray_TYPE(p)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return False
    if not (cnp.PyArray_ISCARRAY(p) and _fits(g, p, False)) or _overlap(p, g):
        return False
    ndim = cnp.PyArray_NDIM(p)
    if ndim > 64:
        return False
    f.size = cnp.PyArray_SIZE(p)
    f.single = typenum == cnp.NPY_FLOAT
    if ndim >= 2:
        f.rows = cnp.PyArray_DIMS(p)[ndim - 2]
        f.cols = cnp.PyArray_DIMS(p)[ndim - 1]
        f.batches = 1
        for d in range(ndim - 2):
            f.batches *= cnp.PyArray_DIMS(p)[d]
        for d in range(ndim):
            shapes[0][d] = shapes[1][d] = cnp.PyArray_DIMS(p)[d]
        shapes[0][ndim - 1] = 1
        shapes[1][ndim - 2] = 1
        ndims[0] = ndims[1] = ndim
        shapes[2][0] = 0
        ndims[2] = 1
    else:
        f.rows = f.cols = 0
        f.batches = 1
        shapes[0][0] = shapes[1][0] = 0
        ndims[0] = ndims[1] = 1
        for d in range(ndim):
            shapes[2][d] = cnp.PyArray_DIMS(p)[d]
        ndims[2] = ndim
    for k in range(3):
        data[k] = NULL
        if missing and states[k] is None:
            continue
        if not _has_shape(states[k], p, shapes[k], ndims[k]):
            return False
        s = <cnp.ndarray>states[k]
        if _overlap(s, p) or _overlap(s, g):
            return False
        for j in range(k):
            if states[j] is not None and _overlap(s, <cnp.ndarray>states[j]):
                return False
        data[k] = cnp.PyArray_DATA(s)
    f.param = cnp.PyArray_DATA(p)
    f.grad = cnp.PyArray_DATA(g)
    f.row = data[0] if ndim >= 2 else NULL
    f.col = data[1] if ndim >= 2 else NULL
    f.var = NULL if ndim >= 2 else data[2]
    return True


cdef bint _adafactor_run(object params, object grads, tuple states, object decays,
                         Step* c) except -1:
    """``_run`` for Adafactor: every param, or (returning False) none."""
    cdef Py_ssize_t k, count
    cdef Factored stack[STACK_TASKS]
    cdef Factored* tasks = stack
    cdef bint flush = fastopt_setting_get(FASTOPT_FLUSH)
    cdef bint by_key = type(params) is dict
    cdef type kind = dict if by_key else list
    cdef list keep = []
    cdef object grad, entry, decision
    cdef list own
    cdef intp largest = 0
    cdef double* scratch = NULL
    cdef int threads = fastopt_setting_get(FASTOPT_THREADS)
    cdef unsigned int saved = 0
    cdef Factored* f
    if not by_key and type(params) is not list:
        raise TypeError(f"params must be a list or a dict; got {type(params).__name__}")
    if type(grads) is not kind or (decays is not None and type(decays) is not kind):
        raise TypeError(f"params is a {kind.__name__}, so grads and decays must be too")
    for k in range(STATES):
        if type(states[k]) is not kind:
            raise TypeError(f"params is a {kind.__name__}, so the state must be too")
    count = len(params)
    if not by_key:
        if len(grads) != count or (decays is not None and len(decays) != count):
            raise ValueError("params, grads and decays must have the same length")
        for entry in states:
            if len(entry) != count:
                raise ValueError("params and state lists must have the same length")
    keys = list(params)
    if len(keys) != count:
        return False
    if count > STACK_TASKS:
        tasks = <Factored*>malloc(count * sizeof(Factored))
        if tasks == NULL:
            raise MemoryError()
    try:
        for k in range(count):
            key = keys[k] if by_key else k
            if by_key and type(key) is not str:
                return False
            param = (<dict>params).get(key) if by_key else (<list>params)[k]
            grad = (<dict>grads).get(key) if by_key else (<list>grads)[k]
            own = [(<dict>state).get(key) if by_key else (<list>state)[k] for state in states]
            decision = True
            if decays is not None:
                decision = (<dict>decays).get(key) if by_key else (<list>decays)[k]
                if decision is not True and decision is not False:
                    return False
            keep.append((param, grad, own))
            if grad is None or not _adafactor_plan(param, grad, own, &tasks[k]):
                return False
            tasks[k].decay = decision is True
            largest = max(largest, _adafactor_scratch(&tasks[k]))
        if largest:
            scratch = <double*>malloc(largest * sizeof(double))
            if scratch == NULL:
                raise MemoryError()
        with nogil:
            if flush:
                saved = fastopt_flush_begin()
            for k in range(count):
                f = &tasks[k]
                if f.single:
                    _adafactor_param(<float*>f.param, f, c, scratch, threads, flush)
                else:
                    _adafactor_param(<double*>f.param, f, c, scratch, threads, flush)
            if flush:
                fastopt_flush_end(saved)
        return True
    finally:
        free(scratch)
        if tasks != stack:
            free(tasks)


# ---------------------------------------------------------------------------------------------
# For the benchmark: what the loops were compiled for, and the memory limit they run against.

cdef extern from "_simd.h":
    const char* FASTOPT_COMPILED_SIMD


def compiled_simd():
    """The widest SIMD instruction set these loops were compiled to use."""
    return FASTOPT_COMPILED_SIMD.decode()


# Run-time dispatch (setup.py, fastopt/_simd.py): the baseline module, which any x86-64 runs,
# tells which of the wider builds this CPU can run. The compiler's builtins also check that the
# OS saves the wider registers (XGETBV), not only that the CPU has the instructions. The C of
# both is in fastopt/_simd.h.

cdef extern from "_simd.h":
    int fastopt_cpu_level() noexcept nogil


def can_soft_sqrt() -> bool:
    """Whether this build has the software float64 square root (the AVX-512 build)."""
    return bool(FASTOPT_SOFT_SQRT)


def set_soft_sqrt(bint enabled):
    """Take float64 square roots in the update loops by the software sequence (True) or the
    hardware instruction (False). Both give the same bits; only the speed differs."""
    if enabled and not FASTOPT_SOFT_SQRT:
        raise ValueError("the software square root is only in the AVX-512 build")
    fastopt_setting_set(FASTOPT_SOFT_ROOTS, enabled)


def get_soft_sqrt() -> bool:
    return fastopt_setting_get(FASTOPT_SOFT_ROOTS) != 0


def soft_sqrt(double[::1] x not None):
    """``x[:] = sqrt(x)`` in place by the software sequence (the hardware instruction in
    builds without it); for bench/verify_sqrt.py and the tests."""
    with nogil:
        fastopt_soft_roots(&x[0] if x.shape[0] else NULL, x.shape[0])


def time_soft_sqrt(int rounds=15):
    """Seconds for the book's float64 Adam loop over 4096 cached elements with the hardware
    square root and with the software one: the least of ``rounds`` alternated timings of each
    (the least is the run the rest of the machine disturbed least). fastopt/_simd.py reads it
    for CPUs its table does not know, over several rounds, and keeps the answer per machine."""
    cdef intp n = 4096, i
    cdef int k, _round
    cdef Step c
    cdef double* data
    cdef double best[2]
    if not FASTOPT_SOFT_SQRT:
        raise ValueError("the software square root is only in the AVX-512 build")
    _prepare(&c, None, 0.0)
    c.lr_t = 1e-3
    c.beta1 = 0.9
    c.beta2 = 0.999
    c.eps = 1e-7
    data = <double*>malloc(4 * n * sizeof(double))
    if data == NULL:
        raise MemoryError()
    try:
        for i in range(4 * n):   # p, g, m, v: v stays positive and in the fast range
            data[i] = 1.0 + (i % 97) * 1e-3
        best[0] = best[1] = float("inf")
        for _round in range(rounds):
            for k in range(2):
                c.soft_roots = k == 1
                start = perf_counter()
                with nogil:
                    _adam[double](data, data + n, data + 2 * n, data + 3 * n, NULL, n, &c,
                                  False)
                best[k] = min(best[k], perf_counter() - start)
    finally:
        free(data)
    return best[0], best[1]


def cpu_simd_level():
    """The widest of fastopt's SIMD levels this CPU and OS can run: 'baseline', 'avx2' (AVX2
    and FMA) or 'avx512' (AVX-512 F, CD, BW, DQ, VL). Always 'baseline' in builds without
    dispatch (other CPUs, MSVC), and in every module but the baseline one."""
    return ("baseline", "avx2", "avx512")[fastopt_cpu_level()]


cdef void _stream(floating* t0, const floating* s, floating* t1, floating* t2,
                  floating* t3, intp n, const Step* c, bint decay) noexcept nogil:
    # t1, t2 and t3 are NULL when unused
    cdef int targets = c.targets
    cdef intp i
    if targets == 1:
        for i in range(n):
            t0[i] = t0[i] + s[i]
    elif targets == 2:
        for i in range(n):
            t0[i] = t0[i] + s[i]
            t1[i] = t1[i] + s[i]
    elif targets == 3:
        for i in range(n):
            t0[i] = t0[i] + s[i]
            t1[i] = t1[i] + s[i]
            t2[i] = t2[i] + s[i]
    else:
        for i in range(n):
            t0[i] = t0[i] + s[i]
            t1[i] = t1[i] + s[i]
            t2[i] = t2[i] + s[i]
            t3[i] = t3[i] + s[i]


def bandwidth_probe(list targets not None, source):
    """One pass that reads ``source`` and reads and writes 1 to 4 ``targets`` (a param and
    up to three state arrays, as the loops' slots).

    The memory traffic of an update that reads a grad and reads and writes the param and its
    state, with trivial arithmetic, run by the same planner and on the same threads as the
    updates: the benchmark's yardstick for the memory limit.
    """
    cdef Step c
    cdef int count = len(targets)
    if not 1 <= count <= 4:
        raise ValueError("bandwidth_probe takes 1 to 4 targets")
    _prepare(&c, None, 0.0)
    c.targets = count
    if not _run([targets[0]], [source], ([targets[1]] if count > 1 else None,
                                         [targets[2]] if count > 2 else None,
                                         [targets[3]] if count > 3 else None),
                count - 1, None, _stream[float], _stream[double], &c, STREAMING_MIN):
        raise ValueError("targets and source must be C-contiguous, aligned float32 or float64 "
                         "arrays of one dtype and shape, the targets writeable, none sharing "
                         "memory")
