/* The one-row lane of the fast path (asa_format.graphs.fastpath.FastPlan.decide_one), in C.
 *
 * A prompt's decision inside a forward hook meets caches the model's own work has just
 * evicted: there, every NumPy call and every line of Python costs microseconds. This module
 * does the whole one-row decision in one call, with the same steps and the same proofs as
 * FastPlan.decide_one (asa_format/graphs/native.py builds it from a plan and checks it
 * against the Python lane on load):
 *
 *   - the scaler's element-wise steps in IEEE 754 float32/float64, as NumPy and onnxruntime
 *     round them (FLT_EVAL_METHOD 0, no contraction into fused multiply-adds);
 *   - the unique head columns' float64 dot products and the scaled row's sum of squares, in
 *     an order of its own (the error bound covers any summation order);
 *   - the router and the routed probe's probability from plain floats, declining (None)
 *     every row decide_one declines: non-finite norm, a score outside the overflow window,
 *     a failed sum check, a probability within the margin of a boundary.
 *
 * Everything is copied into the object when it is made; a call reads only its row (checked
 * to be C-contiguous float32 of the plan's hidden size) and the object's own arrays.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* float32 steps evaluated in float32, and conversions as IEEE 754 defines them (a double
 * beyond float32's range becomes an infinity): else every Lane refuses to be made. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0 && \
    (defined(__STDC_IEC_559__) || defined(__x86_64__) || defined(__aarch64__) || defined(_M_X64) || defined(_M_ARM64))
#define LANE_EXACT 1
#else
#define LANE_EXACT 0
#endif

#define CHUNK 256
#define LANES 8      /* partial sums per dot product */
#define MAX_HEADS 256 /* unique head columns; more: the Python lane */
#define MAX_TERMS 64  /* router scores; more: the Python lane */
#define WINDOW 700.0

enum { OP_CAST = 0, OP_SUB = 1, OP_DIV = 2, OP_ADD = 3, OP_MUL = 4 };
enum { POST_SOFTMAX = 0, POST_SIGMOID_NORM = 1, POST_SIGMOID_PAIR = 2, POST_NONE = 3 };

typedef struct {
    int op;
    int wide;      /* the step's dtype (and a cast's target): float64 */
    float *c32;    /* the constant row [H], in the step's dtype */
    double *c64;
} Step;

typedef struct {
    int post;      /* POST_*; POST_NONE: the domain has no probe */
    int n;         /* terms: 1 or 2 */
    int k[2];
    double sign[2], bias[2];
    int sum_check;
    double slope, offset;
} Probe;

typedef struct {
    PyObject_HEAD
    Py_ssize_t h, u;
    int n_steps;
    Step *steps;
    double *w;     /* [U, H]: the unique head columns, as rows */
    int r;         /* router scores */
    int *rk;
    double *rsign, *rbias;
    int router_post, router_sum_check;
    double rslope, roffset;
    int d;
    Probe *probes;
} Lane;

static void lane_free_arrays(Lane *self) {
    if (self->steps != NULL) {
        for (int i = 0; i < self->n_steps; i++) {
            PyMem_Free(self->steps[i].c32);
            PyMem_Free(self->steps[i].c64);
        }
    }
    PyMem_Free(self->steps);
    PyMem_Free(self->w);
    PyMem_Free(self->rk);
    PyMem_Free(self->rsign);
    PyMem_Free(self->rbias);
    PyMem_Free(self->probes);
    self->steps = NULL;
    self->w = NULL;
    self->rk = NULL;
    self->rsign = self->rbias = NULL;
    self->probes = NULL;
}

static void lane_dealloc(Lane *self) {
    lane_free_arrays(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The buffer holds native-order items of struct format `fmt` and size `itemsize` ('<' or
 * '>' only where it is the host's own order). */
static int native_items(const Py_buffer *view, char fmt, Py_ssize_t itemsize) {
    const char *f = view->format == NULL ? "B" : view->format;
    if (f[0] == '@' || f[0] == '=' || (f[0] == '<' && PY_LITTLE_ENDIAN) || (f[0] == '>' && !PY_LITTLE_ENDIAN)) f++;
    return view->itemsize == itemsize && f[0] == fmt && f[1] == '\0';
}

/* A copy of a C-contiguous buffer of exactly `n` items of `itemsize` bytes, format `fmt`. */
static void *copy_buffer(PyObject *obj, Py_ssize_t n, Py_ssize_t itemsize, char fmt, const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return NULL;
    if (!native_items(&view, fmt, itemsize) || view.len != n * itemsize) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of type '%c'", what, n, fmt);
        return NULL;
    }
    void *out = PyMem_Malloc((size_t)(n * itemsize) + 1);
    if (out == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(out, view.buf, (size_t)(n * itemsize));
    PyBuffer_Release(&view);
    return out;
}

static int as_int(PyObject *o, long lo, long hi, int *out, const char *what) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s: %ld outside [%ld, %ld]", what, v, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int as_double(PyObject *o, double *out) {
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* terms: a sequence of (column, sign, bias) */
static int read_terms(PyObject *seq, Py_ssize_t u, int max, int *n, int *k, double *sign, double *bias) {
    PyObject *fast = PySequence_Fast(seq, "terms must be a sequence");
    if (fast == NULL) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len < 1 || len > max) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%zd terms (1 to %d)", len, max);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "a term is (column, sign, bias)");
            return -1;
        }
        if (as_int(PyTuple_GET_ITEM(t, 0), 0, (long)u - 1, &k[i], "term column") ||
            as_double(PyTuple_GET_ITEM(t, 1), &sign[i]) || as_double(PyTuple_GET_ITEM(t, 2), &bias[i])) {
            Py_DECREF(fast);
            return -1;
        }
    }
    *n = (int)len;
    Py_DECREF(fast);
    return 0;
}

/* Lane(hidden_size, steps, weights, router, probes)
 *   steps:   [(op, wide, constant row or None)]   (op: 0 cast, 1 sub, 2 div, 3 add, 4 mul)
 *   weights: float64 [U * H], the unique head columns as rows (FastPlan._unique_t)
 *   router:  (post, sum_check, slope, offset, terms)
 *   probes:  [None or (post, sum_check, slope, offset, terms)] per domain */
static int lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t h;
    PyObject *steps, *weights, *router, *probes;
    static char *kwlist[] = {"hidden_size", "steps", "weights", "router", "probes", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOOOO", kwlist, &h, &steps, &weights, &router, &probes))
        return -1;
    lane_free_arrays(self);
    if (!LANE_EXACT) {
        PyErr_SetString(PyExc_RuntimeError, "float32 arithmetic here is not IEEE 754 single precision");
        return -1;
    }
    if (h < 1 || h > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "hidden_size out of range");
        return -1;
    }
    self->h = h;
    /* steps */
    PyObject *fs = PySequence_Fast(steps, "steps must be a sequence");
    if (fs == NULL) return -1;
    Py_ssize_t ns = PySequence_Fast_GET_SIZE(fs);
    if (ns > 64) {
        Py_DECREF(fs);
        PyErr_SetString(PyExc_ValueError, "too many scaler steps");
        return -1;
    }
    self->steps = PyMem_Calloc((size_t)ns + 1, sizeof(Step));
    if (self->steps == NULL) {
        Py_DECREF(fs);
        PyErr_NoMemory();
        return -1;
    }
    self->n_steps = (int)ns;
    int wide = 0;
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(fs, i);
        Step *s = &self->steps[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 ||
            as_int(PyTuple_GET_ITEM(t, 0), OP_CAST, OP_MUL, &s->op, "step op") ||
            as_int(PyTuple_GET_ITEM(t, 1), 0, 1, &s->wide, "step dtype")) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a step is (op, wide, constant)");
            Py_DECREF(fs);
            return -1;
        }
        if (s->op == OP_CAST) {
            wide = s->wide;
            continue;
        }
        if (s->wide != wide) {
            Py_DECREF(fs);
            PyErr_SetString(PyExc_ValueError, "a step's dtype differs from its input's");
            return -1;
        }
        if (wide)
            s->c64 = copy_buffer(PyTuple_GET_ITEM(t, 2), h, 8, 'd', "step constant");
        else
            s->c32 = copy_buffer(PyTuple_GET_ITEM(t, 2), h, 4, 'f', "step constant");
        if (s->c32 == NULL && s->c64 == NULL) {
            Py_DECREF(fs);
            return -1;
        }
    }
    Py_DECREF(fs);
    if (wide) {
        PyErr_SetString(PyExc_ValueError, "the scaler must end in float32");
        return -1;
    }
    /* weights */
    Py_buffer view;
    if (PyObject_GetBuffer(weights, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return -1;
    Py_ssize_t items = view.itemsize == 8 ? view.len / 8 : -1;
    PyBuffer_Release(&view);
    if (items < h || items % h != 0 || items / h > MAX_HEADS) {
        PyErr_SetString(PyExc_ValueError, "weights: float64 [U * H], U <= 256");
        return -1;
    }
    self->u = items / h;
    self->w = copy_buffer(weights, items, 8, 'd', "weights");
    if (self->w == NULL) return -1;
    /* router */
    PyObject *post, *check, *slope, *offset, *terms;
    if (!PyArg_ParseTuple(router, "OOOOO", &post, &check, &slope, &offset, &terms)) return -1;
    if (as_int(post, POST_SOFTMAX, POST_SIGMOID_PAIR, &self->router_post, "router post") ||
        as_int(check, 0, 1, &self->router_sum_check, "router sum check") ||
        as_double(slope, &self->rslope) || as_double(offset, &self->roffset))
        return -1;
    self->rk = PyMem_Calloc(MAX_TERMS, sizeof(int));
    self->rsign = PyMem_Calloc(MAX_TERMS, sizeof(double));
    self->rbias = PyMem_Calloc(MAX_TERMS, sizeof(double));
    if (self->rk == NULL || self->rsign == NULL || self->rbias == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (read_terms(terms, self->u, MAX_TERMS, &self->r, self->rk, self->rsign, self->rbias)) return -1;
    int domains = self->router_post == POST_SIGMOID_PAIR ? 2 : self->r;
    if (self->router_post == POST_SIGMOID_PAIR && self->r != 1) {
        PyErr_SetString(PyExc_ValueError, "a sigmoid pair router has one score");
        return -1;
    }
    /* probes */
    PyObject *fp = PySequence_Fast(probes, "probes must be a sequence");
    if (fp == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(fp) != domains) {
        Py_DECREF(fp);
        PyErr_SetString(PyExc_ValueError, "one probe entry per domain");
        return -1;
    }
    self->d = domains;
    self->probes = PyMem_Calloc((size_t)domains, sizeof(Probe));
    if (self->probes == NULL) {
        Py_DECREF(fp);
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < domains; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(fp, i);
        Probe *pr = &self->probes[i];
        if (p == Py_None) {
            pr->post = POST_NONE;
            continue;
        }
        if (!PyArg_ParseTuple(p, "OOOOO", &post, &check, &slope, &offset, &terms) ||
            as_int(post, POST_SOFTMAX, POST_SIGMOID_PAIR, &pr->post, "probe post") ||
            as_int(check, 0, 1, &pr->sum_check, "probe sum check") || as_double(slope, &pr->slope) ||
            as_double(offset, &pr->offset) || read_terms(terms, self->u, 2, &pr->n, pr->k, pr->sign, pr->bias)) {
            Py_DECREF(fp);
            return -1;
        }
        if (pr->n != (pr->post == POST_SIGMOID_PAIR ? 1 : 2)) {
            Py_DECREF(fp);
            PyErr_SetString(PyExc_ValueError, "a probe's terms do not match its form");
            return -1;
        }
    }
    Py_DECREF(fp);
    return 0;
}

static inline double sigmoid(double s) { return 1.0 / (1.0 + exp(-s)); }

/* The scaler's steps on row[i0 : i0 + n] into f32 (float32 result; xs: float64 work), one
 * step at a time over the chunk: element-wise, so the values NumPy and onnxruntime give. */
static void scale_chunk(const Lane *self, const float *row, Py_ssize_t i0, Py_ssize_t n, float *f32, double *xs) {
    memcpy(f32, row + i0, (size_t)n * sizeof(float));
    for (int s = 0; s < self->n_steps; s++) {
        const Step *st = &self->steps[s];
        if (st->op == OP_CAST) {
            if (st->wide)
                for (Py_ssize_t j = 0; j < n; j++) xs[j] = (double)f32[j];
            else
                for (Py_ssize_t j = 0; j < n; j++) f32[j] = (float)xs[j];
        } else if (st->wide) {
            const double *c = st->c64 + i0;
            switch (st->op) {
            case OP_SUB: for (Py_ssize_t j = 0; j < n; j++) xs[j] = xs[j] - c[j]; break;
            case OP_DIV: for (Py_ssize_t j = 0; j < n; j++) xs[j] = xs[j] / c[j]; break;
            case OP_ADD: for (Py_ssize_t j = 0; j < n; j++) xs[j] = xs[j] + c[j]; break;
            default: for (Py_ssize_t j = 0; j < n; j++) xs[j] = xs[j] * c[j]; break;
            }
        } else {
            const float *c = st->c32 + i0;
            switch (st->op) {
            case OP_SUB: for (Py_ssize_t j = 0; j < n; j++) f32[j] = f32[j] - c[j]; break;
            case OP_DIV: for (Py_ssize_t j = 0; j < n; j++) f32[j] = f32[j] / c[j]; break;
            case OP_ADD: for (Py_ssize_t j = 0; j < n; j++) f32[j] = f32[j] + c[j]; break;
            default: for (Py_ssize_t j = 0; j < n; j++) f32[j] = f32[j] * c[j]; break;
            }
        }
    }
}

enum { DECLINED = 0, DECIDED = 1, NO_PROBE = 2, NOT_TAKEN = 3, FAILED = -1 };

/* The decision of one row: DECIDED (best, p), NO_PROBE (best), DECLINED (the row needs
 * onnxruntime), NOT_TAKEN (not a C-contiguous float32 row of the hidden size) or FAILED
 * (a Python exception is set). */
/* The row to decide: obj itself (b < 0: C-contiguous float32 of the hidden size), or row
 * (b, p) of obj, a [B, T, H] float32 buffer whose rows are contiguous (any outer strides).
 * NULL with no exception: a buffer this lane does not take; NULL with an exception: an
 * index out of range. On success the caller releases view. */
static const float *get_row(const Lane *self, PyObject *obj, Py_ssize_t b, Py_ssize_t p, Py_buffer *view) {
    int flags = b < 0 ? (PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) : PyBUF_RECORDS_RO;
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        return NULL;
    }
    if (!native_items(view, 'f', 4)) {
        PyBuffer_Release(view);
        return NULL;
    }
    if (b < 0) {
        if (view->len != self->h * 4) {
            PyBuffer_Release(view);
            return NULL;
        }
        return (const float *)view->buf;
    }
    if (view->ndim != 3 || view->shape == NULL || view->strides == NULL || view->shape[2] != self->h ||
        (self->h > 1 && view->strides[2] != 4) || view->suboffsets != NULL) {
        PyBuffer_Release(view);
        return NULL;
    }
    if (b >= view->shape[0] || p < 0 || p >= view->shape[1]) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_IndexError, "row index out of range");
        return NULL;
    }
    return (const float *)((const char *)view->buf + b * view->strides[0] + p * view->strides[1]);
}

static int lane_core(Lane *self, PyObject *obj, Py_ssize_t rb, Py_ssize_t rp, double tau, int *best_out, double *p_out) {
    if (self->w == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the lane was not initialised");
        return FAILED;
    }
    Py_buffer view;
    const float *row = get_row(self, obj, rb, rp, &view);
    if (row == NULL) return PyErr_Occurred() ? FAILED : NOT_TAKEN;
    const Py_ssize_t h = self->h, u = self->u;
    double acc[MAX_HEADS];
    double ss[LANES] = {0.0};
    float f32[CHUNK];
    double xs[CHUNK];
    for (Py_ssize_t k = 0; k < u; k++) acc[k] = 0.0;
    for (Py_ssize_t i0 = 0; i0 < h; i0 += CHUNK) {
        const Py_ssize_t n = h - i0 < CHUNK ? h - i0 : CHUNK;
        scale_chunk(self, row, i0, n, f32, xs);
        for (Py_ssize_t j = 0; j < n; j++) xs[j] = (double)f32[j]; /* exact */
        /* the sum of squares and each head's dot product over the chunk: LANES interleaved
         * partial sums in one fixed order (the error bound covers any order) */
        Py_ssize_t m0 = n - n % LANES;
        for (Py_ssize_t m = 0; m < m0; m += LANES)
            for (int t = 0; t < LANES; t++) ss[t] += xs[m + t] * xs[m + t];
        for (Py_ssize_t m = m0; m < n; m++) ss[0] += xs[m] * xs[m];
        for (Py_ssize_t k = 0; k < u; k++) {
            const double *w = self->w + k * h + i0;
            double a[LANES] = {0.0};
            for (Py_ssize_t m = 0; m < m0; m += LANES)
                for (int t = 0; t < LANES; t++) a[t] += w[m + t] * xs[m + t];
            for (Py_ssize_t m = m0; m < n; m++) a[0] += w[m] * xs[m];
            double total = 0.0;
            for (int t = 0; t < LANES; t++) total += a[t];
            acc[k] += total;
        }
    }
    PyBuffer_Release(&view);
    double sumsq = 0.0;
    for (int t = 0; t < LANES; t++) sumsq += ss[t];
    double xnorm = sqrt(sumsq);
    if (!(xnorm < INFINITY)) return DECLINED;
    /* the router */
    double margin = self->rslope * xnorm + self->roffset;
    int best = 0;
    double v[MAX_TERMS];
    for (int t = 0; t < self->r; t++) {
        v[t] = acc[self->rk[t]] * self->rsign[t] + self->rbias[t];
        if (!(-WINDOW < v[t] && v[t] < WINDOW)) return DECLINED;
    }
    if (self->router_post == POST_SOFTMAX) {
        double total = 0.0;
        for (int t = 0; t < self->r; t++) {
            v[t] = exp(v[t]);
            total += v[t];
            if (v[t] > v[best]) best = t;
        }
        if (self->r > 1) {
            double second = -1.0;
            for (int t = 0; t < self->r; t++)
                if (t != best && v[t] > second) second = v[t];
            if (!((v[best] - second) / total > margin)) return DECLINED;
        }
    } else {
        double probs[MAX_TERMS];
        int np_;
        if (self->router_sum_check) {
            double sum = 0.0;
            for (int t = 0; t < self->r; t++) sum += sigmoid(v[t]);
            if (!(sum >= 0.5)) return DECLINED;
        }
        if (self->router_post == POST_SIGMOID_PAIR) {
            double t0 = sigmoid(v[0]);
            probs[0] = 1.0 - t0;
            probs[1] = t0;
            np_ = 2;
        } else {
            double total = 0.0;
            for (int t = 0; t < self->r; t++) {
                probs[t] = sigmoid(v[t]);
                total += probs[t];
            }
            for (int t = 0; t < self->r; t++) probs[t] = probs[t] / total;
            np_ = self->r;
        }
        for (int t = 1; t < np_; t++)
            if (probs[t] > probs[best]) best = t;
        if (np_ > 1) {
            double second = -INFINITY;
            for (int t = 0; t < np_; t++)
                if (t != best && probs[t] > second) second = probs[t];
            if (!(probs[best] - second > margin)) return DECLINED;
        }
    }
    /* the routed probe */
    const Probe *pr = &self->probes[best];
    *best_out = best;
    if (pr->post == POST_NONE) return NO_PROBE;
    double s[2];
    for (int t = 0; t < pr->n; t++) {
        s[t] = acc[pr->k[t]] * pr->sign[t] + pr->bias[t];
        if (!(-WINDOW < s[t] && s[t] < WINDOW)) return DECLINED;
    }
    double p;
    if (pr->post == POST_SIGMOID_NORM) {
        double t0 = sigmoid(s[0]), t1 = sigmoid(s[1]);
        if (!(t0 + t1 >= 0.5) && pr->sum_check) return DECLINED;
        p = t1 / (t0 + t1);
    } else if (pr->post == POST_SOFTMAX) {
        double m = s[0] > s[1] ? s[0] : s[1];
        double e0 = exp(s[0] - m), e1 = exp(s[1] - m);
        p = e1 / (e0 + e1);
    } else {
        p = sigmoid(s[0]);
    }
    margin = pr->slope * xnorm + pr->offset;
    if (!(fabs(p - tau) > margin && fabs(p - (1.0 - tau)) > margin)) return DECLINED;
    *p_out = p;
    return DECIDED;
}

static int parse_double(PyObject *o, double *out) {
    *out = PyFloat_AsDouble(o);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* decide(row, tau): FastPlan.decide_one's (domain index, probability or None, False), None
 * (the row needs onnxruntime), or NotImplemented (a row this lane does not take). */
static PyObject *lane_decide(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    double tau, p = 0.0;
    int best = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decide(row, tau)");
        return NULL;
    }
    if (parse_double(args[1], &tau)) return NULL;
    switch (lane_core(self, args[0], -1, 0, tau, &best, &p)) {
    case DECIDED: return Py_BuildValue("(idO)", best, p, Py_False);
    case NO_PROBE: return Py_BuildValue("(iOO)", best, Py_None, Py_False);
    case DECLINED: Py_RETURN_NONE;
    case NOT_TAKEN: Py_RETURN_NOTIMPLEMENTED;
    default: return NULL;
    }
}

/* decide_gated(row, tau, no_probe) or decide_gated(hidden, tau, no_probe, b, p):
 * FastPlan.decide_gated's (domain index, probability, gate) of the row, or of row (b, p) of
 * a [B, T, H] buffer, with no_probe for a domain without probe and the gate rule of
 * asa_format.gating.gate_of; None or NotImplemented as decide. */
static PyObject *lane_decide_gated(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    double tau, no_probe, p = 0.0;
    int best = 0;
    Py_ssize_t b = -1, at = 0;
    if (nargs != 3 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "decide_gated(row, tau, no_probe) or decide_gated(hidden, tau, no_probe, b, p)");
        return NULL;
    }
    if (parse_double(args[1], &tau) || parse_double(args[2], &no_probe)) return NULL;
    if (nargs == 5) {
        if (!PyLong_Check(args[3]) || !PyLong_Check(args[4])) {
            PyErr_SetString(PyExc_TypeError, "b and p must be ints");
            return NULL;
        }
        b = PyLong_AsSsize_t(args[3]);
        at = PyLong_AsSsize_t(args[4]);
        if ((b == -1 || at == -1) && PyErr_Occurred()) return NULL;
        if (b < 0) {
            PyErr_SetString(PyExc_IndexError, "row index out of range");
            return NULL;
        }
    }
    switch (lane_core(self, args[0], b, at, tau, &best, &p)) {
    case NO_PROBE: p = no_probe; /* fall through */
    case DECIDED: {
        int gate = p >= tau ? 1 : (p <= 1.0 - tau ? -1 : 0);
        return Py_BuildValue("(idi)", best, p, gate);
    }
    case DECLINED: Py_RETURN_NONE;
    case NOT_TAKEN: Py_RETURN_NOTIMPLEMENTED;
    default: return NULL;
    }
}

/* scaled(row): the scaler's float32 result as bytes (what the decision multiplies); None
 * for a row this lane does not take. */
static PyObject *lane_scaled(Lane *self, PyObject *obj) {
    if (self->w == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the lane was not initialised");
        return NULL;
    }
    Py_buffer view;
    const float *row = get_row(self, obj, -1, 0, &view);
    if (row == NULL) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, self->h * 4);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    float *dst = (float *)PyBytes_AS_STRING(out);
    double xs[CHUNK];
    for (Py_ssize_t i0 = 0; i0 < self->h; i0 += CHUNK) {
        const Py_ssize_t n = self->h - i0 < CHUNK ? self->h - i0 : CHUNK;
        scale_chunk(self, row, i0, n, dst + i0, xs);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef lane_methods[] = {
    {"decide", (PyCFunction)(void (*)(void))lane_decide, METH_FASTCALL,
     "decide(row, tau): (domain, probability or None, False), None, or NotImplemented"},
    {"scaled", (PyCFunction)lane_scaled, METH_O, "scaled(row): the scaler's float32 result as bytes, or None"},
    {"decide_gated", (PyCFunction)(void (*)(void))lane_decide_gated, METH_FASTCALL,
     "decide_gated(row, tau, no_probe[, b, p]): (domain, probability, gate), None, or NotImplemented"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "asa_format.graphs._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A FastPlan's one-row decision, compiled (asa_format.graphs.native)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lane_init,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_methods = lane_methods,
};

static struct PyModuleDef lane_module = {
    PyModuleDef_HEAD_INIT, "_lane", "The fast path's one-row lane in C.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&lane_module);
    if (m == NULL) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
