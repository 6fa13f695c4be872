/* The engine's compiled kernels (see workers/engine/kernels.py): float32 only.
 *
 * Each replaces a sequence of numpy passes by one loop that performs exactly the same
 * float32 operations on every value, in the same order, so the bits are numpy's:
 *
 *   im2col, col2im, conv_out, conv_g_rows   convolution's data movement (conv.py): copies,
 *                                           col2im's adds in kernel-offset order, the bias add
 *   maxpool_backward                        max_pool2d's gradient (pooling.py), finite g_out
 *   relu_backward                           g_out * (out > 0), a NaN made off the mask set to 0
 *   gelu_tanh_inner, gelu_tanh_outer,       GELU's tanh form around numpy's own tanh
 *   gelu_tanh_backward                      (activations.py); Phi = (t + 1) / 2 is not stored
 *   dropout_forward                         the keep mask's hash and the scaled product (dropout.py)
 *   softmax_shift                           softmax's mask add and row maximum (sequence.py)
 *   channel_sums, bn_normalize,             batch norm's statistics and gradient sums in numpy's
 *   bn_input_grad                           summation order, and its per-channel passes (batchnorm.py)
 *
 * Nothing here calls a transcendental function (tanh, exp stay numpy's), nor a matrix
 * product (BLAS's). The only sums are batch norm's, in the order numpy's reduction over
 * (batch, height, width) takes (see channel_sums); the only other reduction is softmax's
 * row maximum, whose order cannot change its value. Built with -ffp-contract=off (no fused
 * multiply-adds) and without -ffast-math; tests/test_kernels.py checks every kernel bit for
 * bit against the numpy passes it replaces.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef Py_ssize_t idx;

/* The elementwise loops are compiled twice, for AVX2 and for the baseline, and the loader
 * picks one for the machine (GCC's and Clang's function multiversioning). Both perform the
 * same IEEE float32 operations (no fused multiply-adds), so they give the same bits. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(DPTRAIN_NO_CLONES)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* A writable (w) or read-only (r) C-contiguous float32 buffer of at least `need` values. */
static int
get_f32(PyObject *obj, Py_buffer *view, int writable, idx need, const char *name)
{
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (view->itemsize != 4 || view->format == NULL || strcmp(view->format, "f") != 0 || view->len / 4 < need) {
        PyErr_Format(PyExc_ValueError, "%s: a float32 buffer of at least %zd values is required", name, need);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

static int
get_bytes(PyObject *obj, Py_buffer *view, int writable, idx need, const char *name)
{
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: a buffer of at least %zd bytes is required", name, need);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

static void
release(Py_buffer *views, int n)
{
    for (int i = 0; i < n; i++)
        if (views[i].obj != NULL)
            PyBuffer_Release(&views[i]);
}

/* ---- convolution: the window geometry ------------------------------------------------
 * An example's padded input is C planes of `plane` values. Kernel offset (i, j) reads, in
 * plane c, the `rows` x `cols` grid at c plane + i di + j dj + r row_step + q col_step
 * (stride-1 layers read one run: rows = 1, cols = L, col_step = 1). im2col's matrix is
 * (C kh kw, block, rows cols): row (c, i, j), then the block's example, then the grid. */
typedef struct {
    idx C, plane, kh, kw, di, dj, rows, cols, row_step, col_step, block;
} Geometry;

static idx
geometry_L(const Geometry *g) { return g->rows * g->cols; }

/* Every index a window reads stays inside its example, and [b0, b1) fits the block: checked
 * before any loop runs, so a wrong geometry raises instead of touching memory. */
static int
geometry_ok(const Geometry *g, idx b0, idx b1)
{
    idx last = (g->C - 1) * g->plane + (g->kh - 1) * g->di + (g->kw - 1) * g->dj + (g->rows - 1) * g->row_step +
               (g->cols - 1) * g->col_step;
    if (g->C < 1 || g->kh < 1 || g->kw < 1 || g->rows < 1 || g->cols < 1 || g->plane < 1 || g->di < 0 ||
        g->dj < 0 || g->row_step < 0 || g->col_step < 1 || b0 < 0 || b1 < b0 || b1 - b0 > g->block ||
        last >= g->C * g->plane) {
        PyErr_SetString(PyExc_ValueError, "im2col/col2im: the window geometry leaves the example");
        return 0;
    }
    return 1;
}

/* (first, second, b0, b1, C, plane, kh, kw, di, dj, rows, cols, row_step, col_step, block): the
 * arguments of im2col and col2im, the geometry checked. */
static int
window_args(PyObject *args, PyObject **first, PyObject **second, idx *b0, idx *b1, Geometry *g)
{
    if (!PyArg_ParseTuple(args, "OOnnnnnnnnnnnnn", first, second, b0, b1, &g->C, &g->plane, &g->kh, &g->kw,
                          &g->di, &g->dj, &g->rows, &g->cols, &g->row_step, &g->col_step, &g->block))
        return 0;
    return geometry_ok(g, *b0, *b1);
}

/* im2col(xp, cols, b0, b1, C, plane, kh, kw, di, dj, rows, cols_, row_step, col_step, block) */
static PyObject *
im2col(PyObject *self, PyObject *args)
{
    PyObject *xo, *co;
    idx b0, b1;
    Geometry g;
    Py_buffer v[2] = {{0}};
    if (!window_args(args, &xo, &co, &b0, &b1, &g))
        return NULL;
    idx L = geometry_L(&g), ex = g.C * g.plane;
    if (get_f32(xo, &v[0], 0, b1 * ex, "im2col xp") < 0 ||
        get_f32(co, &v[1], 1, g.C * g.kh * g.kw * g.block * L, "im2col cols") < 0) {
        release(v, 2);
        return NULL;
    }
    const float *xp = v[0].buf;
    float *out = v[1].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx c = 0; c < g.C; c++)
        for (idx i = 0; i < g.kh; i++)
            for (idx j = 0; j < g.kw; j++) {
                float *row = out + ((c * g.kh + i) * g.kw + j) * g.block * L;
                for (idx b = b0; b < b1; b++) {
                    const float *src = xp + b * ex + c * g.plane + i * g.di + j * g.dj;
                    float *dst = row + (b - b0) * L;
                    if (g.col_step == 1)
                        for (idx r = 0; r < g.rows; r++)
                            memcpy(dst + r * g.cols, src + r * g.row_step, (size_t)g.cols * sizeof(float));
                    else
                        for (idx r = 0; r < g.rows; r++)
                            for (idx q = 0; q < g.cols; q++)
                                dst[r * g.cols + q] = src[r * g.row_step + q * g.col_step];
                }
            }
    Py_END_ALLOW_THREADS
    release(v, 2);
    Py_RETURN_NONE;
}

/* col2im(g_cols, g_pad, b0, b1, geometry...): g_pad += each offset's columns, offsets in
 * (i, j) order for every value, as numpy's one strided add per offset does. */
static PyObject *
col2im(PyObject *self, PyObject *args)
{
    PyObject *co, *go;
    idx b0, b1;
    Geometry g;
    Py_buffer v[2] = {{0}};
    if (!window_args(args, &co, &go, &b0, &b1, &g))
        return NULL;
    idx L = geometry_L(&g), ex = g.C * g.plane;
    if (get_f32(co, &v[0], 0, g.C * g.kh * g.kw * g.block * L, "col2im g_cols") < 0 ||
        get_f32(go, &v[1], 1, b1 * ex, "col2im g_pad") < 0) {
        release(v, 2);
        return NULL;
    }
    const float *cols = v[0].buf;
    float *gp = v[1].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx b = b0; b < b1; b++)
        for (idx c = 0; c < g.C; c++)
            for (idx i = 0; i < g.kh; i++)
                for (idx j = 0; j < g.kw; j++) {
                    const float *src = cols + ((c * g.kh + i) * g.kw + j) * g.block * L + (b - b0) * L;
                    float *dst = gp + b * ex + c * g.plane + i * g.di + j * g.dj;
                    for (idx r = 0; r < g.rows; r++) {
                        float *d = dst + r * g.row_step;
                        const float *s = src + r * g.cols;
                        if (g.col_step == 1)
                            for (idx q = 0; q < g.cols; q++)
                                d[q] = d[q] + s[q];
                        else
                            for (idx q = 0; q < g.cols; q++)
                                d[q * g.col_step] = d[q * g.col_step] + s[q];
                    }
                }
    Py_END_ALLOW_THREADS
    release(v, 2);
    Py_RETURN_NONE;
}

/* conv_out(out_t, bias|None, out, b0, b1, Co, block, L, oh, ow, ystep): out[b, co, y, x] =
 * out_t[co, b - b0, y ystep + x] (+ bias[co]); conv_g_rows: the reverse copy, without bias. */
static PyObject *
conv_move(PyObject *args, int to_rows)
{
    PyObject *to, *bo, *oo;
    idx b0, b1, Co, block, L, oh, ow, ystep;
    Py_buffer v[3] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnn", &to, &bo, &oo, &b0, &b1, &Co, &block, &L, &oh, &ow, &ystep))
        return NULL;
    if (b0 < 0 || b1 < b0 || b1 - b0 > block || oh < 1 || ow < 1 || ystep < ow || (oh - 1) * ystep + ow > L) {
        PyErr_SetString(PyExc_ValueError, "conv_out/conv_g_rows: the output grid leaves the block");
        return NULL;
    }
    int has_bias = bo != Py_None;
    if (get_f32(to, &v[0], to_rows, Co * block * L, "conv block") < 0 ||
        (has_bias && get_f32(bo, &v[1], 0, Co, "conv bias") < 0) ||
        get_f32(oo, &v[2], !to_rows, b1 * Co * oh * ow, "conv activation") < 0) {
        release(v, 3);
        return NULL;
    }
    float *t = v[0].buf, *o = v[2].buf;
    const float *bias = has_bias ? v[1].buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    for (idx b = b0; b < b1; b++)
        for (idx co = 0; co < Co; co++) {
            float *a = o + (b * Co + co) * oh * ow;
            float *r = t + (co * block + (b - b0)) * L;
            for (idx y = 0; y < oh; y++) {
                float *ay = a + y * ow, *ry = r + y * ystep;
                if (to_rows)
                    memcpy(ry, ay, (size_t)ow * sizeof(float));
                else if (bias) {
                    float beta = bias[co];
                    for (idx x = 0; x < ow; x++)
                        ay[x] = ry[x] + beta;
                } else
                    memcpy(ay, ry, (size_t)ow * sizeof(float));
            }
        }
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

static PyObject *conv_out(PyObject *self, PyObject *args) { return conv_move(args, 0); }
static PyObject *conv_g_rows(PyObject *self, PyObject *args) { return conv_move(args, 1); }

/* maxpool_backward(xp, out, g_out, g_pad, claimed, B C, Hp, Wp, oh, ow, kh, kw, sh, sw, write):
 * per plane, offset by offset in (i, j) order: hit = (window value == max) and no earlier
 * offset hit; share = g_out * hit (g_out is finite here, so a miss gives g_out * 0, the
 * signed zero, as numpy's product does); write: g_pad = share (windows that tile), else
 * g_pad += share. Branch-free: hits are unpredictable. */
VECTOR_CLONES static void
maxpool_plane(const float *x, const float *m, const float *gy, float *d, unsigned char *claimed, idx Wp, idx oh,
              idx ow, idx kh, idx kw, idx sh, idx sw, int write)
{
    if (write) {  /* each value in one window: window by window, the same hits and shares */
        for (idx y = 0; y < oh; y++)
            for (idx q = 0; q < ow; q++) {
                const float *xw = x + y * sh * Wp + q * sw;
                float *dw = d + y * sh * Wp + q * sw;
                uint32_t g = bits_of(gy[y * ow + q]), sign = g & 0x80000000u, claimed_w = 0;
                float top = m[y * ow + q];
                for (idx i = 0; i < kh; i++)
                    for (idx j = 0; j < kw; j++) {
                        uint32_t hit = (uint32_t)(xw[i * Wp + j] == top) & (claimed_w ^ 1u);
                        claimed_w |= hit;
                        dw[i * Wp + j] = float_of((g & (0u - hit)) | sign);
                    }
            }
        return;
    }
    memset(claimed, 0, (size_t)(oh * ow));
    for (idx i = 0; i < kh; i++)
        for (idx j = 0; j < kw; j++)
            for (idx y = 0; y < oh; y++) {
                const float *xr = x + (y * sh + i) * Wp + j, *mr = m + y * ow, *gr = gy + y * ow;
                float *dr = d + (y * sh + i) * Wp + j;
                unsigned char *cr = claimed + y * ow;
                for (idx q = 0; q < ow; q++) {
                    uint32_t hit = (uint32_t)(xr[q * sw] == mr[q]) & (uint32_t)(cr[q] == 0);
                    cr[q] |= (unsigned char)hit;
                    float share = float_of(bits_of(gr[q]) & ((0u - hit) | 0x80000000u));
                    dr[q * sw] = write ? share : dr[q * sw] + share;
                }
            }
}

static PyObject *
maxpool_backward(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo, *go, *po, *clo;
    idx planes, Hp, Wp, oh, ow, kh, kw, sh, sw;
    int write;
    Py_buffer v[5] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOOOnnnnnnnnnp", &xo, &oo, &go, &po, &clo, &planes, &Hp, &Wp, &oh, &ow, &kh, &kw,
                          &sh, &sw, &write))
        return NULL;
    if (oh < 1 || ow < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || (oh - 1) * sh + kh > Hp ||
        (ow - 1) * sw + kw > Wp) {
        PyErr_SetString(PyExc_ValueError, "maxpool_backward: the windows leave the padded input");
        return NULL;
    }
    idx n_out = oh * ow;
    if (get_f32(xo, &v[0], 0, planes * Hp * Wp, "maxpool xp") < 0 ||
        get_f32(oo, &v[1], 0, planes * n_out, "maxpool out") < 0 ||
        get_f32(go, &v[2], 0, planes * n_out, "maxpool g_out") < 0 ||
        get_f32(po, &v[3], 1, planes * Hp * Wp, "maxpool g_pad") < 0 ||
        get_bytes(clo, &v[4], 1, n_out, "maxpool claimed") < 0) {
        release(v, 5);
        return NULL;
    }
    const float *xp = v[0].buf, *out = v[1].buf, *g = v[2].buf;
    float *gp = v[3].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx p = 0; p < planes; p++)
        maxpool_plane(xp + p * Hp * Wp, out + p * n_out, g + p * n_out, gp + p * Hp * Wp, v[4].buf, Wp, oh, ow, kh,
                      kw, sh, sw, write);
    Py_END_ALLOW_THREADS
    release(v, 5);
    Py_RETURN_NONE;
}

/* relu_backward(out, g_out, g_in, n): numpy's g_in = g_out * (out > 0), then 0 where out <= 0
 * and that product is NaN (inf * 0, NaN * 0). So: g_out on the mask; off it, g_out * 0, the
 * zero with g_out's sign, or 0 for a non-finite g_out. Written on the bits: branch-free. */
VECTOR_CLONES static void
relu_loop(const float *out, const float *g, float *gi, idx n)
{
    for (idx k = 0; k < n; k++) {
        uint32_t gb = bits_of(g[k]), on = 0u - (uint32_t)(out[k] > 0.0f);
        uint32_t finite = 0u - (uint32_t)((gb & 0x7F800000u) != 0x7F800000u);
        gi[k] = float_of((gb & on) | (gb & 0x80000000u & finite & ~on));
    }
}

static PyObject *
relu_backward(PyObject *self, PyObject *args)
{
    PyObject *oo, *go, *io;
    idx n;
    Py_buffer v[3] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOn", &oo, &go, &io, &n))
        return NULL;
    if (get_f32(oo, &v[0], 0, n, "relu out") < 0 || get_f32(go, &v[1], 0, n, "relu g_out") < 0 ||
        get_f32(io, &v[2], 1, n, "relu g_in") < 0) {
        release(v, 3);
        return NULL;
    }
    const float *out = v[0].buf, *g = v[1].buf;
    float *gi = v[2].buf;
    Py_BEGIN_ALLOW_THREADS
    relu_loop(out, g, gi, n);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

/* GELU, tanh form. inner: t = ((x x) c + 1) x s, numpy's passes t = x x; t *= c; t += 1;
 * t *= x; t *= s (each constant a float32, as numpy casts a Python float); numpy's tanh
 * then runs on t; outer: Phi = (t + 1) 0.5, out = Phi x. */
VECTOR_CLONES static void
gelu_inner_loop(const float *x, float *t, idx n, float c, float s)
{
    for (idx k = 0; k < n; k++) {
        float a = x[k] * x[k];
        a = a * c;
        a = a + 1.0f;
        a = a * x[k];
        t[k] = a * s;
    }
}

VECTOR_CLONES static void
gelu_outer_loop(const float *x, const float *t, float *out, idx n)
{
    for (idx k = 0; k < n; k++)
        out[k] = ((t[k] + 1.0f) * 0.5f) * x[k];
}

/* Phi is computed again from t, with forward's operations (the same bits), rather than stored. */
VECTOR_CLONES static void
gelu_backward_loop(const float *x, const float *t, const float *g, float *gi, idx n, float c3, float h)
{
    for (idx k = 0; k < n; k++) {
        float d = x[k] * x[k];
        d = d * c3;
        d = d + 1.0f;
        d = d * h;
        d = d * x[k];
        float u = t[k] * t[k];
        u = 1.0f - u;
        d = d * u;
        gi[k] = (((t[k] + 1.0f) * 0.5f) + d) * g[k];
    }
}

static PyObject *
gelu_tanh_inner(PyObject *self, PyObject *args)
{
    PyObject *xo, *to;
    idx n;
    double c, s;
    Py_buffer v[2] = {{0}};
    if (!PyArg_ParseTuple(args, "OOndd", &xo, &to, &n, &c, &s))
        return NULL;
    if (get_f32(xo, &v[0], 0, n, "gelu x") < 0 || get_f32(to, &v[1], 1, n, "gelu t") < 0) {
        release(v, 2);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    gelu_inner_loop(v[0].buf, v[1].buf, n, (float)c, (float)s);
    Py_END_ALLOW_THREADS
    release(v, 2);
    Py_RETURN_NONE;
}

static PyObject *
gelu_tanh_outer(PyObject *self, PyObject *args)
{
    PyObject *xo, *to, *oo;
    idx n;
    Py_buffer v[3] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOn", &xo, &to, &oo, &n))
        return NULL;
    if (get_f32(xo, &v[0], 0, n, "gelu x") < 0 || get_f32(to, &v[1], 0, n, "gelu t") < 0 ||
        get_f32(oo, &v[2], 1, n, "gelu out") < 0) {
        release(v, 3);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    gelu_outer_loop(v[0].buf, v[1].buf, v[2].buf, n);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

/* backward: d = ((x x) c3 + 1) h x (1 - t t); g_in = (Phi + d) g_out, with c3 = 3 c and
 * h = s / 2 as numpy's passes use them (float32 casts of Python floats). */
static PyObject *
gelu_tanh_backward(PyObject *self, PyObject *args)
{
    PyObject *xo, *to, *go, *io;
    idx n;
    double c3, h;
    Py_buffer v[4] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOOndd", &xo, &to, &go, &io, &n, &c3, &h))
        return NULL;
    if (get_f32(xo, &v[0], 0, n, "gelu x") < 0 || get_f32(to, &v[1], 0, n, "gelu t") < 0 ||
        get_f32(go, &v[2], 0, n, "gelu g_out") < 0 || get_f32(io, &v[3], 1, n, "gelu g_in") < 0) {
        release(v, 4);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    gelu_backward_loop(v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, (float)c3, (float)h);
    Py_END_ALLOW_THREADS
    release(v, 4);
    Py_RETURN_NONE;
}

/* dropout_forward(x, row_keys (uint32 per example), keep, out, rows, size, threshold, scale):
 * z = fmix32(row_key + j 0x9E3779B9) for position j (wrapping), keep = z >= threshold,
 * out = (x scale) keep: numpy's passes in dropout.py. */
static inline uint32_t
fmix32(uint32_t z)
{
    z ^= z >> 16;
    z *= 0x85EBCA6Bu;
    z ^= z >> 13;
    z *= 0xC2B2AE35u;
    z ^= z >> 16;
    return z;
}

/* One example: keep = z >= threshold; out = (x scale) * keep, i.e. x scale where kept and
 * (x scale) * 0 (a signed zero, or NaN from inf) where dropped, chosen on the bits. */
VECTOR_CLONES static void
dropout_row(const float *x, uint32_t key, unsigned char *keep, float *out, idx size, uint32_t threshold, float scale)
{
    for (idx j = 0; j < size; j++) {
        uint32_t z = fmix32(key + (uint32_t)j * 0x9E3779B9u);
        uint32_t k = z >= threshold, mask = 0u - k;
        float v = x[j] * scale, dropped = v * 0.0f;
        keep[j] = (unsigned char)k;
        out[j] = float_of((bits_of(v) & mask) | (bits_of(dropped) & ~mask));
    }
}

static PyObject *
dropout_forward(PyObject *self, PyObject *args)
{
    PyObject *xo, *ko, *keo, *oo;
    idx rows, size;
    unsigned long threshold;
    double scale;
    Py_buffer v[4] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOOnnkd", &xo, &ko, &keo, &oo, &rows, &size, &threshold, &scale))
        return NULL;
    if (get_f32(xo, &v[0], 0, rows * size, "dropout x") < 0 ||
        get_bytes(ko, &v[1], 0, rows * 4, "dropout row keys") < 0 ||
        get_bytes(keo, &v[2], 1, rows * size, "dropout keep") < 0 ||
        get_f32(oo, &v[3], 1, rows * size, "dropout out") < 0) {
        release(v, 4);
        return NULL;
    }
    const float *x = v[0].buf;
    const uint32_t *row_keys = v[1].buf;
    unsigned char *keep = v[2].buf;
    float *out = v[3].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx r = 0; r < rows; r++)
        dropout_row(x + r * size, row_keys[r], keep + r * size, out + r * size, size, (uint32_t)threshold,
                    (float)scale);
    Py_END_ALLOW_THREADS
    release(v, 4);
    Py_RETURN_NONE;
}

/* ---- batch norm: per-channel sums in numpy's order ----------------------------------------
 * numpy reduces a (B, C, H, W) array over axes (0, 2, 3) plane by plane: each (b, c) plane's
 * H W values are summed pairwise (numpy/_core/src/umath/loops_utils.h.src: 8 accumulators up
 * to 128 values, halves split on multiples of 8), and the planes' sums are added to the
 * channel's total in b order, starting from 0. In float64 for batch norm's statistics (the
 * float32 values cast exactly), in float32 for its parameter gradients. PAIRWISE defines one
 * such sum over the values ELEM(i) in type T. */
#define PW_BLOCKSIZE 128
#define PAIRWISE(NAME, T, ARGS, ELEM)                                                    \
static T NAME ARGS                                                                     \
{                                                                                      \
    if (n < 8) {                                                                       \
        T res = 0.;                                                                    \
        for (idx i = 0; i < n; i++)                                                    \
            res += ELEM(i);                                                            \
        return res;                                                                    \
    }                                                                                  \
    if (n <= PW_BLOCKSIZE) {                                                           \
        T r[8];                                                                        \
        idx i;                                                                         \
        for (int j = 0; j < 8; j++)                                                    \
            r[j] = ELEM(j);                                                            \
        for (i = 8; i < n - (n % 8); i += 8)                                           \
            for (int j = 0; j < 8; j++)                                                \
                r[j] += ELEM(i + j);                                                   \
        T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));     \
        for (; i < n; i++)                                                             \
            res += ELEM(i);                                                            \
        return res;                                                                    \
    }                                                                                  \
    idx n2 = n / 2;                                                                    \
    n2 -= n2 % 8;                                                                      \
    return NAME(PW_CALL_LEFT) + NAME(PW_CALL_RIGHT);                                   \
}

/* (double)a[i] */
#define ELEM_CAST(i) ((double)a[i])
#define PW_CALL_LEFT a, n2
#define PW_CALL_RIGHT a + n2, n - n2
PAIRWISE(pw_f64, double, (const float *a, idx n), ELEM_CAST)
/* a[i] in float32 */
#define ELEM_F32(i) (a[i])
PAIRWISE(pw_f32, float, (const float *a, idx n), ELEM_F32)
#undef PW_CALL_LEFT
#undef PW_CALL_RIGHT
/* ((double)a[i] - mean)^2: numpy's var forms x - mean in float64, squares it, then sums */
static inline double sq_dev(float a, double mean) { double d = (double)a - mean; return d * d; }
#define ELEM_SQDEV(i) sq_dev(a[i], mean)
#define PW_CALL_LEFT a, mean, n2
#define PW_CALL_RIGHT a + n2, mean, n - n2
PAIRWISE(pw_sq_dev, double, (const float *a, double mean, idx n), ELEM_SQDEV)
#undef PW_CALL_LEFT
#undef PW_CALL_RIGHT
/* a[i] b[i] rounded to float32, as a product numpy stores before summing it */
static inline float product(float a, float b) { return a * b; }
#define ELEM_PROD(i) product(a[i], b[i])
#define PW_CALL_LEFT a, b, n2
#define PW_CALL_RIGHT a + n2, b + n2, n - n2
PAIRWISE(pw_prod, float, (const float *a, const float *b, idx n), ELEM_PROD)
#undef PW_CALL_LEFT
#undef PW_CALL_RIGHT

/* channel_sums(kind, a, b|mean|None, out, B, C, HW, chunk): out[c] = the sum over b, in order
 * from 0, of plane (b, c)'s pairwise sum. kind 0: of (double)a (out float64), each plane summed
 * as pieces of `chunk` values in order (numpy casts float32 to float64 through its iterator's
 * buffer, np.getbufsize() values at a time, and sums each buffer pairwise); 1: of
 * ((double)a - mean[c])^2 (mean float64, out float64); 2: of a (float32); 3: of a b rounded to
 * float32 (float32). C must be at least 2: with one channel numpy's reduction is one flat sum. */
static PyObject *
channel_sums(PyObject *self, PyObject *args)
{
    PyObject *ao, *bo, *oo;
    int kind;
    idx B, C, HW, chunk;
    Py_buffer v[3] = {{0}};
    if (!PyArg_ParseTuple(args, "iOOOnnnn", &kind, &ao, &bo, &oo, &B, &C, &HW, &chunk))
        return NULL;
    if (kind < 0 || kind > 3 || B < 0 || C < 2 || HW < 1 || chunk < 1 || ((kind == 1 || kind == 3) && bo == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "channel_sums: bad arguments");
        return NULL;
    }
    int wide = kind < 2;
    if (get_f32(ao, &v[0], 0, B * C * HW, "channel_sums a") < 0)
        goto fail;
    if (kind == 1 && get_bytes(bo, &v[1], 0, C * 8, "channel_sums mean") < 0)
        goto fail;
    if (kind == 3 && get_f32(bo, &v[1], 0, B * C * HW, "channel_sums b") < 0)
        goto fail;
    if (wide ? get_bytes(oo, &v[2], 1, C * 8, "channel_sums out") < 0 : get_f32(oo, &v[2], 1, C, "channel_sums out") < 0)
        goto fail;
    const float *a = v[0].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx c = 0; c < C; c++) {
        double wsum = 0.;
        float fsum = 0.f;
        for (idx b = 0; b < B; b++) {
            idx at = (b * C + c) * HW;
            if (kind == 0)
                for (idx lo = 0; lo < HW; lo += chunk)
                    wsum = wsum + pw_f64(a + at + lo, HW - lo < chunk ? HW - lo : chunk);
            else if (kind == 1)
                wsum = wsum + pw_sq_dev(a + at, ((const double *)v[1].buf)[c], HW);
            else if (kind == 2)
                fsum = fsum + pw_f32(a + at, HW);
            else
                fsum = fsum + pw_prod(a + at, (const float *)v[1].buf + at, HW);
        }
        if (wide)
            ((double *)v[2].buf)[c] = wsum;
        else
            ((float *)v[2].buf)[c] = fsum;
    }
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
fail:
    release(v, 3);
    return NULL;
}

/* Per-channel affine passes over (B, C, HW), each numpy's broadcast passes in one loop:
 * bn_normalize: xhat = (x - mean[c]) inv[c]; with gamma: out = xhat gamma[c] + beta[c].
 * bn_scale: out = a s[c] (g_xhat = g_out gamma).
 * bn_input_grad: g_in = ((g_xhat - mean_g[c]) - xhat mean_gx[c]) inv[c]. */
VECTOR_CLONES static void
normalize_plane(const float *x, float m, float inv, float *xhat, float *out, float gamma, float beta, int affine,
                idx n)
{
    for (idx i = 0; i < n; i++) {
        float h = (x[i] - m) * inv;
        xhat[i] = h;
        if (affine)
            out[i] = h * gamma + beta;
    }
}

VECTOR_CLONES static void
input_grad_plane(const float *g, const float *xhat, float mean_g, float mean_gx, float inv, float *gi, idx n)
{
    for (idx i = 0; i < n; i++)
        gi[i] = ((g[i] - mean_g) - xhat[i] * mean_gx) * inv;
}

static PyObject *
bn_normalize(PyObject *self, PyObject *args)
{
    PyObject *xo, *mo, *io, *go, *bo, *ho, *oo;
    idx B, C, HW;
    Py_buffer v[7] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOOOOOnnn", &xo, &mo, &io, &go, &bo, &ho, &oo, &B, &C, &HW))
        return NULL;
    int affine = go != Py_None;
    idx n = B * C * HW;
    if (get_f32(xo, &v[0], 0, n, "bn x") < 0 || get_f32(mo, &v[1], 0, C, "bn mean") < 0 ||
        get_f32(io, &v[2], 0, C, "bn inv") < 0 || (affine && (get_f32(go, &v[3], 0, C, "bn gamma") < 0 ||
        get_f32(bo, &v[4], 0, C, "bn beta") < 0 || get_f32(oo, &v[6], 1, n, "bn out") < 0)) ||
        get_f32(ho, &v[5], 1, n, "bn xhat") < 0) {
        release(v, 7);
        return NULL;
    }
    const float *x = v[0].buf, *m = v[1].buf, *inv = v[2].buf, *gamma = v[3].buf, *beta = v[4].buf;
    float *xhat = v[5].buf, *out = v[6].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx b = 0; b < B; b++)
        for (idx c = 0; c < C; c++) {
            idx at = (b * C + c) * HW;
            normalize_plane(x + at, m[c], inv[c], xhat + at, affine ? out + at : NULL, affine ? gamma[c] : 0.f,
                            affine ? beta[c] : 0.f, affine, HW);
        }
    Py_END_ALLOW_THREADS
    release(v, 7);
    Py_RETURN_NONE;
}

static PyObject *
bn_input_grad(PyObject *self, PyObject *args)
{
    PyObject *go, *ho, *mgo, *mxo, *io, *oo;
    idx B, C, HW;
    Py_buffer v[6] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOOOOnnn", &go, &ho, &mgo, &mxo, &io, &oo, &B, &C, &HW))
        return NULL;
    idx n = B * C * HW;
    if (get_f32(go, &v[0], 0, n, "bn g_xhat") < 0 || get_f32(ho, &v[1], 0, n, "bn xhat") < 0 ||
        get_f32(mgo, &v[2], 0, C, "bn mean_g") < 0 || get_f32(mxo, &v[3], 0, C, "bn mean_gx") < 0 ||
        get_f32(io, &v[4], 0, C, "bn inv") < 0 || get_f32(oo, &v[5], 1, n, "bn g_in") < 0) {
        release(v, 6);
        return NULL;
    }
    const float *g = v[0].buf, *xhat = v[1].buf, *mg = v[2].buf, *mx = v[3].buf, *inv = v[4].buf;
    float *gi = v[5].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx b = 0; b < B; b++)
        for (idx c = 0; c < C; c++) {
            idx at = (b * C + c) * HW;
            input_grad_plane(g + at, xhat + at, mg[c], mx[c], inv[c], gi + at, HW);
        }
    Py_END_ALLOW_THREADS
    release(v, 6);
    Py_RETURN_NONE;
}

/* softmax_shift(x, mask|None, out, r0, r1, n, mask_rows): rows [r0, r1) of the (rows, n) x as
 * out = a - max(a), a = x + mask[r % mask_rows] (or x): numpy's `x += mask`, then the row
 * maximum subtracted. The maximum has numpy's semantics (a NaN in the row wins); which zero it
 * is when +0 and -0 tie can differ from numpy's, and cannot matter: a - (+-0) is a unless a is
 * a zero itself, and exp of either zero is 1, which is all softmax does next. */
VECTOR_CLONES static void
shift_row(const float *x, const float *mask, float *out, idx n)
{
    for (idx j = 0; j < n; j++)
        out[j] = mask ? x[j] + mask[j] : x[j];
    float top = out[0];
    for (idx j = 1; j < n; j++)
        top = (top >= out[j] || top != top) ? top : out[j];
    for (idx j = 0; j < n; j++)
        out[j] = out[j] - top;
}

static PyObject *
softmax_shift(PyObject *self, PyObject *args)
{
    PyObject *xo, *mo, *oo;
    idx r0, r1, n, mask_rows;
    Py_buffer v[3] = {{0}};
    if (!PyArg_ParseTuple(args, "OOOnnnn", &xo, &mo, &oo, &r0, &r1, &n, &mask_rows))
        return NULL;
    int masked = mo != Py_None;
    if (r0 < 0 || r1 < r0 || n < 1 || mask_rows < 1) {
        PyErr_SetString(PyExc_ValueError, "softmax_shift: bad rows");
        return NULL;
    }
    if (get_f32(xo, &v[0], 0, r1 * n, "softmax x") < 0 || (masked && get_f32(mo, &v[1], 0, mask_rows * n,
        "softmax mask") < 0) || get_f32(oo, &v[2], 1, r1 * n, "softmax out") < 0) {
        release(v, 3);
        return NULL;
    }
    const float *x = v[0].buf, *mask = masked ? v[1].buf : NULL;
    float *out = v[2].buf;
    Py_BEGIN_ALLOW_THREADS
    for (idx r = r0; r < r1; r++)
        shift_row(x + r * n, mask ? mask + (r % mask_rows) * n : NULL, out + r * n, n);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"im2col", im2col, METH_VARARGS, "im2col(xp, cols, b0, b1, C, plane, kh, kw, di, dj, rows, cols, row_step, "
                                     "col_step, block): examples [b0, b1)'s windows into the (C kh kw, block, L) buffer."},
    {"col2im", col2im, METH_VARARGS, "col2im(g_cols, g_pad, b0, b1, <im2col's geometry>): add the columns back, "
                                     "offsets in order."},
    {"conv_out", conv_out, METH_VARARGS, "conv_out(out_t, bias|None, out, b0, b1, Co, block, L, oh, ow, ystep)."},
    {"conv_g_rows", conv_g_rows, METH_VARARGS, "conv_g_rows(g_rows, None, g_out, b0, b1, Co, block, L, oh, ow, ystep)."},
    {"maxpool_backward", maxpool_backward, METH_VARARGS,
     "maxpool_backward(xp, out, g_out, g_pad, claimed, planes, Hp, Wp, oh, ow, kh, kw, sh, sw, write)."},
    {"relu_backward", relu_backward, METH_VARARGS, "relu_backward(out, g_out, g_in, n)."},
    {"gelu_tanh_inner", gelu_tanh_inner, METH_VARARGS, "gelu_tanh_inner(x, t, n, c, s): tanh's argument."},
    {"gelu_tanh_outer", gelu_tanh_outer, METH_VARARGS, "gelu_tanh_outer(x, t, out, n): out = (t + 1) / 2 x."},
    {"gelu_tanh_backward", gelu_tanh_backward, METH_VARARGS, "gelu_tanh_backward(x, t, g_out, g_in, n, c3, h)."},
    {"channel_sums", channel_sums, METH_VARARGS, "channel_sums(kind, a, b|mean|None, out, B, C, HW, chunk): numpy's sums "
                                                 "over axes (0, 2, 3), bit for bit."},
    {"bn_normalize", bn_normalize, METH_VARARGS, "bn_normalize(x, mean, inv, gamma|None, beta|None, xhat, out|None, "
                                                 "B, C, HW)."},
    {"bn_input_grad", bn_input_grad, METH_VARARGS, "bn_input_grad(g_xhat, xhat, mean_g, mean_gx, inv, g_in, B, C, HW)."},
    {"softmax_shift", softmax_shift, METH_VARARGS, "softmax_shift(x, mask|None, out, r0, r1, n, mask_rows): "
                                                   "out = a - rowmax(a), a = x + mask."},
    {"dropout_forward", dropout_forward, METH_VARARGS,
     "dropout_forward(x, row_keys, keep, out, rows, size, threshold, scale)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dptrain.engine._kernels", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
