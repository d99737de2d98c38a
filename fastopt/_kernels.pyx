# cython: language_level=3, cdivision=True
# cdivision=True is part of the meaning here: x/0 must give inf or nan as in NumPy, never
# ZeroDivisionError. Safety directives (boundscheck, wraparound, initializedcheck) come from
# setup.py so FASTOPT_DEBUG_BUILD=1 can turn them back on.
"""Compiled update loops of fastopt: every optimizer's arithmetic lives here.

Each public ``<algo>_step`` takes lists holding, for every parameter to update, the parameter,
its gradient and its state arrays, followed by the hyperparameters as the book uses them, and
updates all of them in place. The Python layer (``fastopt._base``) has already validated the
inputs and explains errors; the checks here only guard memory: every array must be a
C-contiguous, aligned, native-order float32 or float64 ndarray of the parameter's dtype and
size, and targets must be writeable. ``ready()`` tells whether a parameter qualifies.

Order of operations follows ``fastopt.reference`` statement by statement, and each statement
is rounded to the array's dtype as NumPy >= 2 rounds it (Python float scalars are converted to
the array's dtype first), so float64 results are bit-identical to the reference. The only
arithmetic done on scalars here is a single IEEE operation in double (``1 - beta1``,
``momentum * momentum``, ``(1 + momentum) * lr``), which gives the same bits as Python does;
powers (Adam's bias corrections) are computed in Python.
"""
from cython cimport floating
from libc.math cimport sqrt, sqrtf

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
    cdef intp i
    for i in range(n):
        p[i] = p[i] + momentum2 * v[i]
        p[i] = p[i] - step * g[i]
        v[i] = v[i] * momentum
        v[i] = v[i] - lr * g[i]


cdef void _nesterov_velocity_first(floating* p, const floating* g, floating* v,
                                   floating* unused, intp n, const double* c) noexcept nogil:
    # c: lr, momentum. The book's 2016 form: velocity first, then parameter.
    cdef floating lr = <floating>c[0]
    cdef floating momentum = <floating>c[1]
    cdef floating momentum2 = <floating>(c[1] * c[1])
    cdef floating step = <floating>((1.0 + c[1]) * c[0])
    cdef intp i
    for i in range(n):
        v[i] = v[i] * momentum
        v[i] = v[i] - lr * g[i]
        p[i] = p[i] + momentum2 * v[i]
        p[i] = p[i] - step * g[i]


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

cdef inline bint _fits(cnp.ndarray a, int typenum, intp size, bint target) noexcept:
    """Whether ``a`` can be read (or, for a target, written) as ``size`` contiguous elements."""
    if cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_SIZE(a) != size:
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


def ready(param, grad, state0=None, state1=None):
    """Whether the compiled loops can update this parameter exactly as NumPy would.

    True when ``param``, ``grad`` and the given state arrays are exact ndarrays of one dtype
    (native float32 or float64) and size, C-contiguous and aligned, the targets writeable, and
    no two of them share memory (a fused loop reads each element once, where NumPy's separate
    statements would see one another's writes). Otherwise the caller takes NumPy's path.
    """
    if type(param) is not cnp.ndarray or type(grad) is not cnp.ndarray:
        return False
    cdef cnp.ndarray p = param, g = grad, s
    cdef int typenum = cnp.PyArray_TYPE(p)
    cdef intp size = cnp.PyArray_SIZE(p)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return False
    if not (_fits(p, typenum, size, True) and _fits(g, typenum, size, False)):
        return False
    if _overlap(p, g):
        return False
    for state in (state0, state1):
        if state is None:
            continue
        if type(state) is not cnp.ndarray:
            return False
        s = state
        if not _fits(s, typenum, size, True) or _overlap(s, p) or _overlap(s, g):
            return False
    if state0 is not None and state1 is not None and _overlap(state0, state1):
        return False
    return True


cdef int _run(list params, list grads, list states0, list states1,
              loop_float run_float, loop_double run_double, const double* c) except -1:
    """Check every parameter's arrays, then run its loop with the GIL released."""
    cdef Py_ssize_t k, count = len(params)
    cdef cnp.ndarray p, g, s
    cdef int typenum
    cdef intp size
    cdef void* data[4]
    if len(grads) != count or any(
            states is not None and len(states) != count for states in (states0, states1)):
        raise ValueError("params, grads and state lists must have the same length")
    for k in range(count):
        p = params[k]
        g = grads[k]
        typenum = cnp.PyArray_TYPE(p)
        size = cnp.PyArray_SIZE(p)
        if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
            raise TypeError(f"param {k}: the kernels take float32 or float64 arrays")
        if not (_fits(p, typenum, size, True) and _fits(g, typenum, size, False)):
            raise ValueError(
                f"param {k} and its grad must be C-contiguous, aligned, native-order arrays "
                f"of one dtype and size, and the param writeable")
        data[0] = cnp.PyArray_DATA(p)
        data[1] = cnp.PyArray_DATA(g)
        data[2] = NULL
        data[3] = NULL
        if states0 is not None:
            s = states0[k]
            if not _fits(s, typenum, size, True):
                raise ValueError(f"state of param {k} must be a writeable C-contiguous "
                                 f"array of the param's dtype and size")
            data[2] = cnp.PyArray_DATA(s)
        if states1 is not None:
            s = states1[k]
            if not _fits(s, typenum, size, True):
                raise ValueError(f"state of param {k} must be a writeable C-contiguous "
                                 f"array of the param's dtype and size")
            data[3] = cnp.PyArray_DATA(s)
        if typenum == cnp.NPY_FLOAT:
            with nogil:
                run_float(<float*>data[0], <const float*>data[1], <float*>data[2],
                          <float*>data[3], size, c)
        else:
            with nogil:
                run_double(<double*>data[0], <const double*>data[1], <double*>data[2],
                           <double*>data[3], size, c)
    return 0


# ---------------------------------------------------------------------------------------------
# Public entries: one per update rule, arguments in the order of fastopt.reference's rules.

def sgd_step(list params, list grads, double lr):
    """``p -= lr*g`` for every param."""
    cdef double c[1]
    c[0] = lr
    _run(params, grads, None, None, _sgd[float], _sgd[double], c)


def momentum_step(list params, list grads, list v, double lr, double momentum):
    """``v = momentum*v - lr*g; p += v`` for every param."""
    cdef double c[2]
    c[0] = lr
    c[1] = momentum
    _run(params, grads, v, None, _momentum[float], _momentum[double], c)


def nesterov_step(list params, list grads, list v, double lr, double momentum,
                  bint velocity_first):
    """Nesterov momentum; the book's 2016 order when ``velocity_first``."""
    cdef double c[2]
    c[0] = lr
    c[1] = momentum
    if velocity_first:
        _run(params, grads, v, None, _nesterov_velocity_first[float],
             _nesterov_velocity_first[double], c)
    else:
        _run(params, grads, v, None, _nesterov[float], _nesterov[double], c)


def adagrad_step(list params, list grads, list h, double lr, double eps, bint eps_inside_sqrt):
    """``h += g*g; p -= lr*g / (sqrt(h) + eps)`` for every param."""
    cdef double c[3]
    c[0] = lr
    c[1] = eps
    c[2] = eps_inside_sqrt
    _run(params, grads, h, None, _adagrad[float], _adagrad[double], c)


def rmsprop_step(list params, list grads, list h, double lr, double decay_rate, double eps,
                 bint eps_inside_sqrt):
    """``h *= decay_rate; h += (1-decay_rate)*g*g; p -= lr*g / (sqrt(h) + eps)``."""
    cdef double c[4]
    c[0] = lr
    c[1] = decay_rate
    c[2] = eps
    c[3] = eps_inside_sqrt
    _run(params, grads, h, None, _rmsprop[float], _rmsprop[double], c)


def adam_step(list params, list grads, list m, list v, double lr_t, double beta1,
              double beta2, double eps, bint eps_inside_sqrt):
    """The book's Adam: ``m += (1-beta1)*(g-m); v += (1-beta2)*(g**2-v);
    p -= lr_t*m / (sqrt(v) + eps)``."""
    cdef double c[5]
    c[0] = lr_t
    c[1] = beta1
    c[2] = beta2
    c[3] = eps
    c[4] = eps_inside_sqrt
    _run(params, grads, m, v, _adam[float], _adam[double], c)


def adam_paper_step(list params, list grads, list m, list v, double lr, double beta1,
                    double beta2, double bias_correction1, double bias_correction2,
                    double eps, bint eps_inside_sqrt):
    """Adam as in the paper's Algorithm 1 (bias-corrected moments)."""
    cdef double c[7]
    c[0] = lr
    c[1] = beta1
    c[2] = beta2
    c[3] = bias_correction1
    c[4] = bias_correction2
    c[5] = eps
    c[6] = eps_inside_sqrt
    _run(params, grads, m, v, _adam_paper[float], _adam_paper[double], c)
