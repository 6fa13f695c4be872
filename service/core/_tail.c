/* The coordinator's tail of a step in one pass over memory (see service/core/tail.py).
 *
 *   g[i] = (left[i] + right[i]) / count      (or left[i] / count without `right`)
 *   sums[k] = sum over block k of (double)g[i] * (double)g[i]
 *
 * and the optimizers' last step, p -= d * scale (two numpy passes: multiply, subtract),
 * in exactly the arithmetic numpy performs for the same passes: the add and the
 * division in the array's own precision, the squares in double, and each block's
 * squares summed in numpy's pairwise order (numpy/_core/src/umath/loops_utils.h.src:
 * 8 accumulators up to 128 elements, halves split on multiples of 8). Built with
 * -ffp-contract=off so no multiply-add is fused; tests/test_tail.py checks every bit
 * against the numpy passes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PW_BLOCKSIZE 128

#define DEFINE_TAIL(T, SUFFIX)                                                          \
static double pairwise_squares_##SUFFIX(const T *a, Py_ssize_t n)                       \
{                                                                                       \
    if (n < 8) {                                                                        \
        double res = 0.;                                                                \
        for (Py_ssize_t i = 0; i < n; i++) {                                            \
            double d = a[i];                                                            \
            res += d * d;                                                               \
        }                                                                               \
        return res;                                                                     \
    }                                                                                   \
    if (n <= PW_BLOCKSIZE) {                                                            \
        double r[8];                                                                    \
        Py_ssize_t i;                                                                   \
        for (int j = 0; j < 8; j++) {                                                   \
            double d = a[j];                                                            \
            r[j] = d * d;                                                               \
        }                                                                               \
        for (i = 8; i < n - (n % 8); i += 8) {                                          \
            for (int j = 0; j < 8; j++) {                                               \
                double d = a[i + j];                                                    \
                r[j] += d * d;                                                          \
            }                                                                           \
        }                                                                               \
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); \
        for (; i < n; i++) {                                                            \
            double d = a[i];                                                            \
            res += d * d;                                                               \
        }                                                                               \
        return res;                                                                     \
    }                                                                                   \
    Py_ssize_t n2 = n / 2;                                                              \
    n2 -= n2 % 8;                                                                       \
    return pairwise_squares_##SUFFIX(a, n2) + pairwise_squares_##SUFFIX(a + n2, n - n2); \
}                                                                                       \
                                                                                        \
static void tail_##SUFFIX(const T *left, const T *right, T count, T *g, Py_ssize_t n,   \
                          Py_ssize_t block, double *sums)                               \
{                                                                                       \
    for (Py_ssize_t lo = 0, k = 0; lo < n; lo += block, k++) {                          \
        Py_ssize_t hi = n - lo > block ? lo + block : n;                                \
        if (right) {                                                                    \
            for (Py_ssize_t i = lo; i < hi; i++)                                        \
                g[i] = (left[i] + right[i]) / count;                                    \
        } else {                                                                        \
            for (Py_ssize_t i = lo; i < hi; i++)                                        \
                g[i] = left[i] / count;                                                 \
        }                                                                               \
        sums[k] = 0. + pairwise_squares_##SUFFIX(g + lo, hi - lo);                      \
    }                                                                                   \
}

#define DEFINE_SUB_SCALED(T, SUFFIX)                                                    \
static void sub_scaled_##SUFFIX(T *p, const T *d, T scale, Py_ssize_t n)                \
{                                                                                       \
    for (Py_ssize_t i = 0; i < n; i++) {                                                \
        T step = d[i] * scale; /* rounded, as numpy's separate multiply */              \
        p[i] = p[i] - step;                                                             \
    }                                                                                   \
}

DEFINE_TAIL(float, f32)
DEFINE_TAIL(double, f64)
DEFINE_SUB_SCALED(float, f32)
DEFINE_SUB_SCALED(double, f64)

static PyObject *
mean_grad(PyObject *self, PyObject *args)
{
    Py_buffer left, right = {0}, out, sums;
    PyObject *right_obj;
    double count;
    Py_ssize_t block;
    int itemsize;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*Odw*nw*i", &left, &right_obj, &count, &out, &block, &sums, &itemsize))
        return NULL;
    if (right_obj != Py_None && PyObject_GetBuffer(right_obj, &right, PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    Py_ssize_t n = out.len / (itemsize > 0 ? itemsize : 1);
    if ((itemsize != 4 && itemsize != 8) || block < 1 || out.len % itemsize || left.len != out.len
        || (right.buf && right.len != out.len)
        || sums.len != (Py_ssize_t)sizeof(double) * ((n + block - 1) / block)) {
        PyErr_SetString(PyExc_ValueError, "mean_grad: mismatched buffer sizes");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 4)
        tail_f32(left.buf, right.buf, (float)count, out.buf, n, block, sums.buf);
    else
        tail_f64(left.buf, right.buf, count, out.buf, n, block, sums.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&left);
    if (right.buf)
        PyBuffer_Release(&right);
    PyBuffer_Release(&out);
    PyBuffer_Release(&sums);
    return result;
}

static PyObject *
sub_scaled(PyObject *self, PyObject *args)
{
    Py_buffer p, d;
    double scale;
    int itemsize;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "w*y*di", &p, &d, &scale, &itemsize))
        return NULL;
    if ((itemsize != 4 && itemsize != 8) || p.len != d.len || p.len % itemsize) {
        PyErr_SetString(PyExc_ValueError, "sub_scaled: mismatched buffer sizes");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 4)
        sub_scaled_f32(p.buf, d.buf, (float)scale, p.len / 4);
    else
        sub_scaled_f64(p.buf, d.buf, scale, p.len / 8);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&p);
    PyBuffer_Release(&d);
    return result;
}

static PyMethodDef methods[] = {
    {"sub_scaled", sub_scaled, METH_VARARGS,
     "sub_scaled(p, d, scale, itemsize): p -= d * scale, the product rounded first."},
    {"mean_grad", mean_grad, METH_VARARGS,
     "mean_grad(left, right|None, count, out, block, sums, itemsize): out = (left + right) / count, "
     "sums[k] = pairwise sum of out's block k squared in double."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dptrain.core._tail", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__tail(void)
{
    return PyModule_Create(&module);
}
