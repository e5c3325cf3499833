/* ngstore._fastpath: the one-state reflex lookup as a CPython method.
 *
 * Everything else in csrc/ is plain C reached through cffi. A single lookup is the one
 * call for which cffi's own costs dominate: converting ten arguments and building a
 * result object from a cffi buffer cost several times the probe itself (a hit took about
 * 1 us against a 110-120 ns empty cffi call). This module does the same work through the
 * CPython API: it reads the 8 floats of a list or tuple, calls the C core's
 * ng_reflex_lookup_f32 through a function pointer bound once at import (the core lives in
 * ngstore._ngcore; nothing is compiled twice), and on a hit builds the ReflexHit (a bytes
 * subclass) in one allocation, as bytes' own constructor does for a subclass.
 *
 * States it takes: a list or tuple of exactly 8 floats or ints, and a one-dimensional
 * buffer of 8 float32 or float64 (a numpy row, strided or not); lookup_token takes the
 * 64-byte image of a Token. For anything else the method returns NOT_SIMPLE and the
 * Python caller takes its general path, which also reports what is wrong with a bad
 * state. No Python code runs while a list's items are read (no __float__ is invoked), so
 * a list cannot change under the loop.
 *
 * One Probe serves one table version for every thread: a call's context (its output and
 * the 1-in-64 timing sample) lives on the C stack, so the Python caller reaches the probe
 * by one attribute read, with no thread-local lookup. The probe keeps the version alive.
 *
 * The GIL: kept for a lookup without a fallback radius (a bounded probe of one cell, as
 * the cffi wrapper of ng_reflex_lookup_f32 does), released for one with it.
 *
 * put_frame is the log's other per-commit call: a one-token commit's record framed and
 * stored into the mapped log segment (ngstore/walmap.py). Through cffi, converting its nine
 * integer arguments took about half of a ~470 ns call; here it takes the payload as the
 * bytes object itself (~220 ns a call) and keeps the GIL, as the cffi wrapper did.
 *
 * buffer_addresses fills the pointer and length arrays of a chunk scan in one call;
 * chunk_record is a point read's bit test and copy. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "ngcore.h"
#include "reflex.h"

/* Returned when the state must go through the general path (not a list or tuple of 8
 * plain numbers). Positive, so that it cannot be mistaken for a C error (< 0). */
#define NOT_SIMPLE (1 << 30)

typedef int (*lookup_f32_t)(ng_reflex_ctx *, const ng_reflex_params *, float, float, float, float, float, float,
                            float, float);

typedef int (*lookup_one_t)(ng_reflex_ctx *, const ng_reflex_params *, int, const void *);

typedef int (*put_frame_t)(uint8_t *, uint64_t, uint64_t, const char *, uint32_t, uint64_t, uint64_t, uint64_t,
                           unsigned);

static lookup_f32_t lookup_f32 = NULL;
static lookup_one_t lookup_one = NULL;
static put_frame_t put_frame_fn = NULL;

typedef struct {
    PyObject_HEAD
    const ng_reflex_table *table; /* one table version; its memory is kept by owner        */
    uint64_t calls;               /* lookups made through this probe (1 in 64 is timed)   */
    PyObject *owner;              /* what keeps the table's handle and segments alive     */
    PyTypeObject *hit_type;       /* ReflexHit: a bytes subclass with __slots__ = ()      */
} Probe;

static int probe_init(Probe *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"table", "owner", "hit_type", NULL};
    PyObject *addr, *owner, *hit_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!", kwlist, &addr, &owner, &PyType_Type, &hit_type))
        return -1;
    PyTypeObject *tp = (PyTypeObject *)hit_type;
    /* The result is built as bytes builds a subclass (tp_alloc, then the bytes): only a
     * subclass with bytes' own layout -- no __dict__, no __weakref__ -- qualifies. */
    if (!PyType_IsSubtype(tp, &PyBytes_Type) || tp->tp_basicsize != PyBytes_Type.tp_basicsize ||
        tp->tp_itemsize != PyBytes_Type.tp_itemsize || tp->tp_dictoffset != 0 || tp->tp_weaklistoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "hit_type must be a bytes subclass with __slots__ = ()");
        return -1;
    }
    void *table = PyLong_AsVoidPtr(addr);
    if (table == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "table must be a non-null address");
        return -1;
    }
    if (lookup_f32 == NULL || lookup_one == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ngstore._fastpath is not bound to the C core (bind() first)");
        return -1;
    }
    Py_INCREF(owner);
    Py_INCREF(hit_type);
    Py_XSETREF(self->owner, owner);
    Py_XSETREF(self->hit_type, tp);
    self->table = (const ng_reflex_table *)table;
    self->calls = 0;
    return 0;
}

static void probe_dealloc(Probe *self) {
    Py_XDECREF(self->owner);
    Py_XDECREF(self->hit_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The native-order float format of a buffer: 4 for float32, 8 for float64, else 0. */
static int float_format(const Py_buffer *b) {
    const char *f = b->format;
    if (f == NULL) return 0;
    if (*f == '@' || *f == '=') f++;
#if PY_LITTLE_ENDIAN
    else if (*f == '<') f++;
#else
    else if (*f == '>' || *f == '!') f++;
#endif
    if (f[0] == 'f' && f[1] == 0 && b->itemsize == 4) return 4;
    if (f[0] == 'd' && f[1] == 0 && b->itemsize == 8) return 8;
    return 0;
}

/* A one-dimensional buffer of 8 float32 or float64 (a numpy row), as float32 -- a float64
 * rounded as the general path's astype(float32) rounds it. Returns 0, or -1 when the
 * object is not such a buffer (no exception set). */
static int read_buffer(PyObject *state, float s[8]) {
    Py_buffer b;
    if (PyObject_GetBuffer(state, &b, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        return -1;
    }
    const int size = float_format(&b);
    int rc = -1;
    if (size && b.ndim == 1 && b.shape[0] == 8) {
        const Py_ssize_t step = b.strides ? b.strides[0] : size;
        const char *p = (const char *)b.buf;
        for (unsigned i = 0; i < 8; i++, p += step) {
            if (size == 4) {
                memcpy(&s[i], p, 4);
            } else {
                double d;
                memcpy(&d, p, 8);
                s[i] = (float)d;
            }
        }
        rc = 0;
    }
    PyBuffer_Release(&b);
    return rc;
}

/* The 8 values of a list or tuple as float32, as cffi converts a float argument ((float)
 * of the double), or of a float buffer. Returns 0, or -1 when the state is not simple (no
 * exception set). */
static int read_state(PyObject *state, float s[8]) {
    PyObject **items;
    if (PyList_CheckExact(state)) {
        if (PyList_GET_SIZE(state) != 8) return -1;
        items = ((PyListObject *)state)->ob_item;
    } else if (PyTuple_CheckExact(state)) {
        if (PyTuple_GET_SIZE(state) != 8) return -1;
        items = ((PyTupleObject *)state)->ob_item;
    } else if (PyObject_CheckBuffer(state)) {
        return read_buffer(state, s);
    } else {
        return -1;
    }
    for (unsigned i = 0; i < 8; i++) {
        PyObject *o = items[i];
        double d;
        if (PyFloat_Check(o)) { /* float and its subclasses (numpy.float64): no Python code */
            d = PyFloat_AS_DOUBLE(o);
        } else if (PyLong_CheckExact(o)) {
            d = PyLong_AsDouble(o);
            if (d == -1.0 && PyErr_Occurred()) { /* too large: the general path reports it */
                PyErr_Clear();
                return -1;
            }
        } else {
            return -1;
        }
        s[i] = (float)d;
    }
    return 0;
}

/* The params of a call: its first argument, an address. NULL with an exception set. */
static const ng_reflex_params *params_of(PyObject *const *args, Py_ssize_t nargs, const char *usage) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s takes 2 arguments", usage);
        return NULL;
    }
    const ng_reflex_params *p = (const ng_reflex_params *)PyLong_AsVoidPtr(args[0]);
    if (p == NULL && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "params_address must be a non-null address");
    return p;
}

/* A context for one call on the caller's stack, so that one probe serves every thread:
 * its output is per call, and its sampling count is taken from the probe's atomically. */
static inline void ctx_init(Probe *self, ng_reflex_ctx *ctx) {
    ctx->table = self->table;
    ctx->calls = __atomic_fetch_add(&self->calls, 1, __ATOMIC_RELAXED);
}

/* The result of a lookup's status r: a hit_type instance, None, or the negative status. */
static PyObject *answer(Probe *self, const ng_reflex_ctx *ctx, int r) {
    if (r < 0) return PyLong_FromLong(r);
    if (!(r & NG_REFLEX_ANSWERED)) Py_RETURN_NONE;
    const Py_ssize_t size = (Py_ssize_t)sizeof(ng_reflex_hit);
    PyTypeObject *tp = self->hit_type;
    PyObject *hit = tp->tp_alloc(tp, size); /* zeroed, the terminating NUL included */
    if (hit == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(hit), &ctx->out, (size_t)size);
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    ((PyBytesObject *)hit)->ob_shash = -1; /* not computed yet (tp_alloc left 0) */
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    return hit;
}

static PyObject *probe_lookup(Probe *self, PyObject *const *args, Py_ssize_t nargs) {
    const ng_reflex_params *p = params_of(args, nargs, "lookup(params_address, state)");
    if (p == NULL) return NULL;
    float s[8];
    if (read_state(args[1], s) < 0) return PyLong_FromLong(NOT_SIMPLE);
    ng_reflex_ctx ctx;
    ctx_init(self, &ctx);
    int r;
    if (p->fallback_radius > 0) {
        Py_BEGIN_ALLOW_THREADS
        r = lookup_f32(&ctx, p, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
        Py_END_ALLOW_THREADS
    } else {
        r = lookup_f32(&ctx, p, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    }
    return answer(self, &ctx, r);
}

static PyObject *probe_lookup_token(Probe *self, PyObject *const *args, Py_ssize_t nargs) {
    const ng_reflex_params *p = params_of(args, nargs, "lookup_token(params_address, image)");
    if (p == NULL) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0) return NULL;
    if (b.len != 64) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "a token image is 64 bytes, got %zd", b.len);
        return NULL;
    }
    ng_reflex_ctx ctx;
    ctx_init(self, &ctx);
    int r;
    if (p->fallback_radius > 0) {
        Py_BEGIN_ALLOW_THREADS
        r = lookup_one(&ctx, p, NG_REFLEX_STATE_TOKEN, b.buf);
        Py_END_ALLOW_THREADS
    } else {
        r = lookup_one(&ctx, p, NG_REFLEX_STATE_TOKEN, b.buf);
    }
    PyBuffer_Release(&b);
    return answer(self, &ctx, r);
}

static PyMethodDef probe_methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))probe_lookup, METH_FASTCALL,
     "lookup(params_address, state) -> ReflexHit | None | int: the reflex answering a list or tuple of\n"
     "8 numbers, or a buffer of 8 float32 or float64; an int is a negative C status, or NOT_SIMPLE\n"
     "for a state of another form."},
    {"lookup_token", (PyCFunction)(void (*)(void))probe_lookup_token, METH_FASTCALL,
     "lookup_token(params_address, image) -> ReflexHit | None | int: the same for the 64-byte image\n"
     "of a Token (its coordinates); an int is a negative C status."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProbeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ngstore._fastpath.Probe",
    .tp_basicsize = sizeof(Probe),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Probe(table, owner, hit_type): single-state lookups on one table version, from any thread.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)probe_init,
    .tp_dealloc = (destructor)probe_dealloc,
    .tp_methods = probe_methods,
};

static PyObject *bind(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *f32, *one, *frame;
    if (!PyArg_ParseTuple(args, "OOO:bind", &f32, &one, &frame)) return NULL;
    void *a = PyLong_AsVoidPtr(f32), *b = a ? PyLong_AsVoidPtr(one) : NULL, *c = b ? PyLong_AsVoidPtr(frame) : NULL;
    if (a == NULL || b == NULL || c == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bind() needs three non-null addresses");
        return NULL;
    }
    lookup_f32 = (lookup_f32_t)a;
    lookup_one = (lookup_one_t)b;
    put_frame_fn = (put_frame_t)c;
    Py_RETURN_NONE;
}

/* An unsigned 64-bit argument: an int in [0, 2**64); else an exception is set and *ok is 0. */
static uint64_t u64_arg(PyObject *o, int *ok) {
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "put_frame: integer arguments expected");
        *ok = 0;
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) *ok = 0;
    return (uint64_t)v;
}

static PyObject *put_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "put_frame(address, limit, offset, payload, salt, position, synced, type) takes 8 arguments");
        return NULL;
    }
    if (put_frame_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ngstore._fastpath is not bound to the C core (bind() first)");
        return NULL;
    }
    if (!PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "put_frame: the payload must be bytes");
        return NULL;
    }
    int ok = 1;
    uint64_t address = u64_arg(args[0], &ok), limit = ok ? u64_arg(args[1], &ok) : 0,
             offset = ok ? u64_arg(args[2], &ok) : 0, salt = ok ? u64_arg(args[4], &ok) : 0,
             position = ok ? u64_arg(args[5], &ok) : 0, synced = ok ? u64_arg(args[6], &ok) : 0,
             type = ok ? u64_arg(args[7], &ok) : 0;
    if (!ok) return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(args[3]);
    if (address == 0 || (uint64_t)len > UINT32_MAX || type > 0xFF) {
        PyErr_SetString(PyExc_ValueError, "put_frame: a null address, a payload of 4 GiB or more, or a type past 255");
        return NULL;
    }
    int r = put_frame_fn((uint8_t *)(uintptr_t)address, limit, offset, PyBytes_AS_STRING(args[3]), (uint32_t)len,
                         salt, position, synced, (unsigned)type);
    return PyLong_FromLong(r);
}

/* buffer_addresses(buffers, pointers, lengths, n): the address and length of each of the n
 * buffers (contiguous, any object with the buffer protocol) stored into the arrays at the
 * addresses pointers (const uint8_t *[n]) and lengths (uint64_t[n]). One call for what
 * a cffi export per buffer did (~0.3 us each, a tenth of a millisecond per 300 chunks of
 * a column scan). The buffers must outlive every use of the addresses. */
static PyObject *buffer_addresses(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "buffer_addresses(buffers, pointers, lengths, n) takes 4 arguments");
        return NULL;
    }
    const uint8_t **ptrs = (const uint8_t **)PyLong_AsVoidPtr(args[1]);
    uint64_t *lens = ptrs ? (uint64_t *)PyLong_AsVoidPtr(args[2]) : NULL;
    const Py_ssize_t n = lens ? PyLong_AsSsize_t(args[3]) : -1;
    if (ptrs == NULL || lens == NULL || n < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "buffer_addresses: null arrays or a negative n");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "buffer_addresses: buffers must be a sequence");
    if (seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "buffer_addresses: n is not the number of buffers");
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer b;
        if (PyObject_GetBuffer(items[i], &b, PyBUF_SIMPLE) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        ptrs[i] = (const uint8_t *)b.buf;
        lens[i] = (uint64_t)b.len;
        PyBuffer_Release(&b);
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

/* chunk_record(chunk, slot, records_bytes): the 64 bytes of record slot of a token chunk
 * value (any object with the buffer protocol: a mapped LMDB value), as bytes; None when
 * the chunk's presence bitmap, which begins at records_bytes, has the slot's bit clear.
 * A point read's last step (docs/format.md, the token chunk): in Python the bit test and
 * the copy (a memoryview slice, then bytes) took ~250 ns of a ~1.3 us get_token. */
static PyObject *chunk_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "chunk_record(chunk, slot, records_bytes) takes 3 arguments");
        return NULL;
    }
    const Py_ssize_t slot = PyLong_AsSsize_t(args[1]);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    const Py_ssize_t records = PyLong_AsSsize_t(args[2]);
    if (records == -1 && PyErr_Occurred()) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = NULL;
    if (slot < 0 || records < 0 || slot >= records / 64 || records + slot / 8 >= b.len) {
        PyErr_Format(PyExc_ValueError,
                     "chunk_record: slot %zd of a chunk of %zd record bytes and %zd bytes in all is out of range",
                     slot, records, b.len);
    } else {
        const uint8_t *p = (const uint8_t *)b.buf;
        if ((p[records + slot / 8] >> (slot % 8)) & 1)
            out = PyBytes_FromStringAndSize((const char *)p + 64 * slot, 64);
        else
            out = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef module_methods[] = {
    {"bind", bind, METH_VARARGS,
     "bind(f32, one, frame): the addresses of the C core's ng_reflex_lookup_f32, ng_reflex_lookup_one and\n"
     "ng_wal_put_frame."},
    {"put_frame", (PyCFunction)(void (*)(void))put_frame, METH_FASTCALL,
     "put_frame(address, limit, offset, payload, salt, position, synced, type) -> int: ng_wal_put_frame of\n"
     "the bytes payload at the mapped address (an int): 0, or a negative C status (NG_ERANGE: past limit)."},
    {"buffer_addresses", (PyCFunction)(void (*)(void))buffer_addresses, METH_FASTCALL,
     "buffer_addresses(buffers, pointers, lengths, n): each buffer's address and length into the arrays\n"
     "at the addresses pointers (const uint8_t *[n]) and lengths (uint64_t[n])."},
    {"chunk_record", (PyCFunction)(void (*)(void))chunk_record, METH_FASTCALL,
     "chunk_record(chunk, slot, records_bytes) -> bytes | None: the 64-byte record slot of a token\n"
     "chunk value, or None when the presence bitmap at records_bytes has its bit clear."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ngstore._fastpath",
    "The one-state reflex lookup and the mapped log frame through the CPython API (see csrc/cpython/fastpath.c).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&ProbeType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", NG_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "NOT_SIMPLE", NOT_SIMPLE) < 0 ||
        PyModule_AddIntConstant(m, "HIT_SIZE", (long)sizeof(ng_reflex_hit)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ProbeType);
    if (PyModule_AddObject(m, "Probe", (PyObject *)&ProbeType) < 0) {
        Py_DECREF(&ProbeType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
