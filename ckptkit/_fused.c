/*
 * Fused drift sums over raw tensor chunks: one pass over the bytes instead of numpy's ten.
 *
 * The diff and timeline kernels (ckptkit/diffing/metrics.py, ckptkit/timelines/kernel.py) widen
 * a chunk, then take its squares, differences, absolute values and maxima, each a numpy pass
 * over memory. Here the same sums are taken in one walk: elements are widened in blocks of
 * BLOCK into arrays on the stack (float32 for types of 32 bits or fewer, float64 otherwise, as
 * in the numpy kernels), a block's sums are taken in the working type (the build unrolls them
 * into several partial sums, see setup.py), and the block sums are added in double. The GIL is
 * released, so the callers' threads use both cores.
 *
 * A chunk holding NaN or Inf, or whose sums overflow, is not measured here: the functions return
 * None and the caller takes its exact path, which counts non-finite values. NaN and Inf carry
 * into the sums and show there, except float16's, which the bit-level widening turns into finite
 * numbers of 2**16 or more: their squares push the sum to 2**32 or more, and only then are the
 * chunk's bits looked at.
 *
 * Types are named by one character: 'e' float16, 'b' bfloat16, 'f' float32, 'd' float64.
 * Buffers are any contiguous bytes-like objects (numpy arrays viewed as uint8), at any alignment.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_F16C_PATH 1
#endif

#define BLOCK 256
#define F16_NONFINITE_SQ 4294967296.0 /* 2**32: a widened float16 Inf or NaN squared is at least this */

/* The hot loops are also compiled for AVX2 and picked at load time where the processor has it. */
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define HOT __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef HOT
#define HOT
#endif

enum { T_F16, T_BF16, T_F32, T_F64 };
static const Py_ssize_t ITEMSIZE[] = {2, 2, 4, 8};

static int type_of(int code) {
    switch (code) {
    case 'e': return T_F16;
    case 'b': return T_BF16;
    case 'f': return T_F32;
    case 'd': return T_F64;
    default: return -1;
    }
}

static inline uint16_t load16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float16 bits to float32: the 15 magnitude bits moved into float32 position beside the sign,
   then the exponent rebiased by a multiplication by 2**112 (which also handles subnormals). */
static inline float half_to_float(uint16_t h) {
    uint32_t w = ((uint32_t)(int32_t)(int16_t)h << 13) & 0x8FFFFFFFu;
    return bits_to_float(w) * 0x1p112f;
}

/* Widening n elements into the working type. One function per type, chosen once per chunk: a
   type switched on inside the loop kept the compiler from vectorising it. */
typedef void (*ToF32)(const char *src, Py_ssize_t n, float *dst);
typedef void (*ToF64)(const char *src, Py_ssize_t n, double *dst);

HOT static void f16_to_f32(const char *src, Py_ssize_t n, float *dst) {
    for (Py_ssize_t i = 0; i < n; i++) dst[i] = half_to_float(load16(src + 2 * i));
}

HOT static void bf16_to_f32(const char *src, Py_ssize_t n, float *dst) {
    for (Py_ssize_t i = 0; i < n; i++) dst[i] = bits_to_float((uint32_t)load16(src + 2 * i) << 16);
}

static void f32_to_f32(const char *src, Py_ssize_t n, float *dst) { memcpy(dst, src, (size_t)n * 4); }

#ifdef HAVE_F16C_PATH
/* The processor's own conversion, eight at a time, where it has F16C: it widens subnormals
   exactly, as the bit manipulation does, and Inf and NaN to Inf and NaN, which the sums show. */
__attribute__((target("avx2,f16c"))) static void f16_to_f32_f16c(const char *src, Py_ssize_t n, float *dst) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    for (; i < n; i++) dst[i] = half_to_float(load16(src + 2 * i));
}
#endif

/* Indexed by type; float64 never takes the float32 path. F16C's conversion replaces float16's at import. */
static ToF32 TO_F32[] = {f16_to_f32, bf16_to_f32, f32_to_f32, NULL};

#define DEFINE_TO_F64(NAME, TYPE)                                                                  \
    HOT static void NAME(const char *src, Py_ssize_t n, double *dst) {                             \
        float tmp[BLOCK];                                                                          \
        TO_F32[TYPE](src, n, tmp);                                                                 \
        for (Py_ssize_t i = 0; i < n; i++) dst[i] = (double)tmp[i];                                \
    }
DEFINE_TO_F64(f16_to_f64, T_F16)
DEFINE_TO_F64(bf16_to_f64, T_BF16)
DEFINE_TO_F64(f32_to_f64, T_F32)

static void f64_to_f64(const char *src, Py_ssize_t n, double *dst) { memcpy(dst, src, (size_t)n * 8); }

static const ToF64 TO_F64[] = {f16_to_f64, bf16_to_f64, f32_to_f64, f64_to_f64};

/* Whether float16 elements hold an Inf or NaN (all exponent bits set). */
static int f16_nonfinite(const char *src, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if ((load16(src + 2 * i) & 0x7C00u) == 0x7C00u) return 1;
    return 0;
}

/* Elements whose bytes are equal, for two chunks of one type. */
HOT static Py_ssize_t equal_bits16(const char *a, const char *b, Py_ssize_t n) {
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) count += load16(a + 2 * i) == load16(b + 2 * i);
    return count;
}

static Py_ssize_t equal_bits(Py_ssize_t itemsize, const char *a, const char *b, Py_ssize_t n) {
    Py_ssize_t count = 0, i;
    if (itemsize == 2) return equal_bits16(a, b, n);
    for (i = 0; i < n; i++) count += memcmp(a + itemsize * i, b + itemsize * i, (size_t)itemsize) == 0;
    return count;
}

typedef struct {
    Py_ssize_t identical;
    double sq_a, sq_b, sq_d, sum_abs, max_abs;
} PairSums;

typedef struct {
    double sq_x, sq_d[2], max_abs[2];
} Changes;

/* Kernels for the working type WT, whose bits as a signed integer are ST. The largest |d| is
   found on its bits: for non-negative numbers (Inf and NaN too) the integer order of the bits
   is the numeric order, and an integer maximum vectorises where a float one, whose NaN rules
   the compiler must keep, does not. */
#define DEFINE_KERNELS(SUFFIX, WT, ST, ABS_MASK, TABLE)                                            \
    HOT static double sum_sq_##SUFFIX(const WT *x, Py_ssize_t m) {                                 \
        WT q = 0;                                                                                  \
        for (Py_ssize_t i = 0; i < m; i++) q += x[i] * x[i];                                       \
        return (double)q;                                                                          \
    }                                                                                              \
    /* Adds sum (a-b)^2 to *sq, sum |a-b| to *ab; raises *mx to the bits of max |a-b|. */          \
    HOT static void diff_sums_##SUFFIX(const WT *a, const WT *b, Py_ssize_t m, double *sq,         \
                                       double *ab, ST *mx) {                                       \
        WT q = 0, s = 0;                                                                           \
        ST top = *mx;                                                                              \
        for (Py_ssize_t i = 0; i < m; i++) {                                                       \
            WT d = a[i] - b[i], ad;                                                                \
            ST u;                                                                                  \
            memcpy(&u, &d, sizeof u);                                                              \
            u &= ABS_MASK;                                                                         \
            memcpy(&ad, &u, sizeof ad);                                                            \
            q += d * d;                                                                            \
            s += ad;                                                                               \
            top = u > top ? u : top;                                                               \
        }                                                                                          \
        *sq += (double)q;                                                                          \
        *ab += (double)s;                                                                          \
        *mx = top;                                                                                 \
    }                                                                                              \
    static double from_bits_##SUFFIX(ST u) { WT v; memcpy(&v, &u, sizeof v); return (double)v; }   \
    /* Returns 1 when an element is Inf or NaN (the sums show it, or float16's bits do). */        \
    static int pair_##SUFFIX(int ta, const char *a, int tb, const char *b, Py_ssize_t n,           \
                             PairSums *out) {                                                      \
        WT xa[BLOCK], xb[BLOCK];                                                                   \
        const int same_type = ta == tb;                                                            \
        const Py_ssize_t sa = ITEMSIZE[ta], sb = ITEMSIZE[tb];                                     \
        double sq_b = 0;                                                                           \
        ST top = 0;                                                                                \
        for (Py_ssize_t lo = 0; lo < n; lo += BLOCK) {                                             \
            Py_ssize_t m = n - lo < BLOCK ? n - lo : BLOCK;                                        \
            const char *pa = a + lo * sa, *pb = b + lo * sb;                                       \
            TABLE[ta](pa, m, xa);                                                                  \
            double qa = sum_sq_##SUFFIX(xa, m);                                                    \
            out->sq_a += qa;                                                                       \
            if (same_type && memcmp(pa, pb, (size_t)(m * sa)) == 0) {                              \
                out->identical += m;                                                               \
                out->sq_b += qa;                                                                   \
                continue;                                                                          \
            }                                                                                      \
            TABLE[tb](pb, m, xb);                                                                  \
            double qb = sum_sq_##SUFFIX(xb, m);                                                    \
            out->sq_b += qb;                                                                       \
            sq_b += qb;                                                                            \
            diff_sums_##SUFFIX(xa, xb, m, &out->sq_d, &out->sum_abs, &top);                        \
            if (same_type) {                                                                       \
                out->identical += equal_bits(sa, pa, pb, m);                                       \
            } else {                                                                               \
                Py_ssize_t same = 0;                                                               \
                for (Py_ssize_t i = 0; i < m; i++) same += xa[i] == xb[i];                         \
                out->identical += same;                                                            \
            }                                                                                      \
        }                                                                                          \
        out->max_abs = from_bits_##SUFFIX(top);                                                    \
        if (ta == T_F16 && out->sq_a >= F16_NONFINITE_SQ && f16_nonfinite(a, n)) return 1;         \
        if (tb == T_F16 && sq_b >= F16_NONFINITE_SQ && f16_nonfinite(b, n)) return 1;              \
        return 0;                                                                                  \
    }                                                                                              \
    /* |x|^2 and, for each reference r (finite, as measured before), |x - r|^2 and max |x - r|. */ \
    static int changes_##SUFFIX(int tx, const char *x, int nref, const int *tr,                    \
                                const char *const *r, Py_ssize_t n, Changes *out) {                \
        WT xx[BLOCK], xr[BLOCK];                                                                   \
        ST top[2] = {0, 0};                                                                        \
        double ignored = 0;                                                                        \
        for (Py_ssize_t lo = 0; lo < n; lo += BLOCK) {                                             \
            Py_ssize_t m = n - lo < BLOCK ? n - lo : BLOCK;                                        \
            TABLE[tx](x + lo * ITEMSIZE[tx], m, xx);                                               \
            out->sq_x += sum_sq_##SUFFIX(xx, m);                                                   \
            for (int k = 0; k < nref; k++) {                                                       \
                TABLE[tr[k]](r[k] + lo * ITEMSIZE[tr[k]], m, xr);                                  \
                diff_sums_##SUFFIX(xx, xr, m, &out->sq_d[k], &ignored, &top[k]);                   \
            }                                                                                      \
        }                                                                                          \
        for (int k = 0; k < nref; k++) out->max_abs[k] = from_bits_##SUFFIX(top[k]);               \
        return tx == T_F16 && out->sq_x >= F16_NONFINITE_SQ && f16_nonfinite(x, n);                \
    }

DEFINE_KERNELS(f32, float, int32_t, 0x7FFFFFFF, TO_F32)
DEFINE_KERNELS(f64, double, int64_t, 0x7FFFFFFFFFFFFFFFll, TO_F64)

/* A contiguous buffer of n elements of the type named by code, or -1 with an exception set. */
static int take(PyObject *obj, int code, Py_buffer *view, Py_ssize_t *n) {
    int type = type_of(code);
    if (type < 0) {
        PyErr_Format(PyExc_ValueError, "unknown type code %c", code);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len % ITEMSIZE[type]) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "buffer length is not a whole number of elements");
        return -1;
    }
    *n = view->len / ITEMSIZE[type];
    return type;
}

static int wide(int type) { return type == T_F64; }

PyDoc_STRVAR(pair_sums_doc,
"pair_sums(a, code_a, b, code_b) -> (identical, sum_sq_a, sum_sq_b, sum_sq_diff, sum_abs, max_abs) or None\n\n"
"Drift sums of two chunks of equal length; None when either holds NaN or Inf or the sums overflow.");

static PyObject *pair_sums(PyObject *self, PyObject *args) {
    PyObject *oa, *ob;
    int ca, cb;
    if (!PyArg_ParseTuple(args, "OCOC:pair_sums", &oa, &ca, &ob, &cb)) return NULL;
    Py_buffer va, vb;
    Py_ssize_t na, nb;
    int ta = take(oa, ca, &va, &na);
    if (ta < 0) return NULL;
    int tb = take(ob, cb, &vb, &nb);
    if (tb < 0) {
        PyBuffer_Release(&va);
        return NULL;
    }
    if (na != nb) {
        PyBuffer_Release(&va);
        PyBuffer_Release(&vb);
        PyErr_SetString(PyExc_ValueError, "chunks of different lengths");
        return NULL;
    }
    PairSums s = {0};
    int bad;
    Py_BEGIN_ALLOW_THREADS
    if (wide(ta) || wide(tb))
        bad = pair_f64(ta, va.buf, tb, vb.buf, na, &s);
    else
        bad = pair_f32(ta, va.buf, tb, vb.buf, na, &s);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    if (bad || !isfinite(s.sq_a) || !isfinite(s.sq_b) || !isfinite(s.sq_d) || !isfinite(s.sum_abs))
        Py_RETURN_NONE;
    return Py_BuildValue("(nddddd)", s.identical, s.sq_a, s.sq_b, s.sq_d, s.sum_abs, s.max_abs);
}

PyDoc_STRVAR(changes_doc,
"changes(x, code_x, refs) -> (sum_sq_x, ((sum_sq_diff, max_abs), ...)) or None\n\n"
"The sum of squares of chunk x and, for each (chunk, code) in refs (at most two), the sum of squares\n"
"and largest magnitude of x - chunk; None when a chunk holds NaN or Inf or a sum overflows.");

static PyObject *changes(PyObject *self, PyObject *args) {
    PyObject *ox, *refs;
    int cx;
    if (!PyArg_ParseTuple(args, "OCO!:changes", &ox, &cx, &PyTuple_Type, &refs)) return NULL;
    Py_ssize_t nref = PyTuple_GET_SIZE(refs);
    if (nref > 2) {
        PyErr_SetString(PyExc_ValueError, "at most two references");
        return NULL;
    }
    Py_buffer vx, vr[2];
    Py_ssize_t nx, nr;
    int tx = take(ox, cx, &vx, &nx), tr[2];
    if (tx < 0) return NULL;
    const char *rp[2];
    int any_wide = wide(tx);
    Py_ssize_t got = 0;
    for (; got < nref; got++) {
        PyObject *pair = PyTuple_GET_ITEM(refs, got), *obj;
        int code;
        if (!PyTuple_Check(pair)) {
            PyErr_SetString(PyExc_TypeError, "changes: each reference is a (chunk, code) tuple");
            break;
        }
        if (!PyArg_ParseTuple(pair, "OC:changes", &obj, &code)) break;
        tr[got] = take(obj, code, &vr[got], &nr);
        if (tr[got] < 0) break;
        if (nr != nx) {
            PyBuffer_Release(&vr[got]);
            PyErr_SetString(PyExc_ValueError, "chunks of different lengths");
            break;
        }
        rp[got] = vr[got].buf;
        any_wide |= wide(tr[got]);
    }
    if (got < nref) {
        for (Py_ssize_t k = 0; k < got; k++) PyBuffer_Release(&vr[k]);
        PyBuffer_Release(&vx);
        return NULL;
    }
    Changes s = {0};
    int bad;
    Py_BEGIN_ALLOW_THREADS
    if (any_wide)
        bad = changes_f64(tx, vx.buf, (int)nref, tr, rp, nx, &s);
    else
        bad = changes_f32(tx, vx.buf, (int)nref, tr, rp, nx, &s);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < nref; k++) PyBuffer_Release(&vr[k]);
    PyBuffer_Release(&vx);
    if (bad || !isfinite(s.sq_x)) Py_RETURN_NONE;
    PyObject *out = PyTuple_New(nref);
    if (out == NULL) return NULL;
    for (Py_ssize_t k = 0; k < nref; k++) {
        if (!isfinite(s.sq_d[k])) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyObject *item = Py_BuildValue("(dd)", s.sq_d[k], s.max_abs[k]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, item);
    }
    return Py_BuildValue("(dN)", s.sq_x, out);
}

static PyMethodDef methods[] = {
    {"pair_sums", pair_sums, METH_VARARGS, pair_sums_doc},
    {"changes", changes, METH_VARARGS, changes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ckptkit._fused",
    "Fused drift sums over raw tensor chunks (see ckptkit.diffing.fused).", -1, methods,
};

PyMODINIT_FUNC PyInit__fused(void) {
#ifdef HAVE_F16C_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) TO_F32[T_F16] = f16_to_f32_f16c;
#endif
    return PyModule_Create(&module);
}
