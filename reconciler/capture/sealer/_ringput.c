/* The request path's end of a capture ring, in C: one call copies a record into the next row.

   The pure-Python RowRing.put does the same steps (ring.py); this one exists because the Python version costs
   3-7 us a record between requests, when its code and objects have left the caches, against well under 1 us
   here (docs/privacy.md, Cost). It is built when a C compiler is there at install time (hatch_build.py) and
   used when it imports; the Python path is the fallback and the reference the tests hold this one to.

   Concurrency: a put runs whole while holding the GIL and calls no Python code (exact dicts, exact ndarrays,
   buffer and dtype calls of numpy's own C), so two puts never interleave, and close() cannot land inside one.
   The module does not declare free-threading support: a free-threaded interpreter keeps the GIL on for it.
   The rows-written count is published with a release store after the row, for the sealer process's reads. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring's row head is little-endian: the Python path serves big-endian machines"
#endif

#define PUT 1
#define FULL 0
#define OTHER (-1)
#define MAX_DIMS 32

static PyObject *str_dtype;  /* "dtype", interned at import: not a new string per tensor per put */

typedef struct {
    PyObject *name;    /* str: the key in the inputs or outputs dict */
    PyObject *dtype;   /* numpy dtype the layout holds */
    Py_ssize_t ndim;
    Py_ssize_t shape[MAX_DIMS];
    Py_ssize_t at;     /* offset in the row */
    Py_ssize_t nbytes;
} Field;

typedef struct {
    PyObject_HEAD
    Py_buffer buffer;           /* the ring's shared mapping, writable; held until release() */
    int has_buffer;
    uint64_t *ctrl;             /* [0] rows written (ours), [1] rows taken (the sealer's) */
    char *rows;
    uint64_t capacity;
    Py_ssize_t size;            /* bytes of a row */
    PyTypeObject *ndarray;      /* numpy.ndarray: only exact arrays are copied here */
    Py_ssize_t n_in, n_out;
    Field *fields;              /* n_in inputs, then n_out outputs */
    int closed;
    int wake_fd;                /* -1: none */
    uint64_t wake_mask;
} Writer;

static void
writer_clear_fields(Writer *self)
{
    if (self->fields != NULL) {
        for (Py_ssize_t i = 0; i < self->n_in + self->n_out; i++) {
            Py_XDECREF(self->fields[i].name);
            Py_XDECREF(self->fields[i].dtype);
        }
        PyMem_Free(self->fields);
        self->fields = NULL;
    }
}

static void
writer_release_buffer(Writer *self)
{
    if (self->has_buffer) {
        PyBuffer_Release(&self->buffer);
        self->has_buffer = 0;
    }
    self->ctrl = NULL;
    self->rows = NULL;
    self->closed = 1;
}

static void
writer_dealloc(Writer *self)
{
    writer_release_buffer(self);
    writer_clear_fields(self);
    Py_XDECREF(self->ndarray);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Writer(buffer, ctrl_bytes, capacity, size, ndarray, inputs, outputs, wake_fd, wake_mask)
   inputs/outputs: sequences of (name, dtype, shape, at, nbytes). */
static int
read_fields(Writer *self, PyObject *seq, Py_ssize_t first, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Field *f = &self->fields[first + i];
        PyObject *item = PySequence_GetItem(seq, i);
        if (item == NULL)
            return -1;
        PyObject *name, *dtype, *shape;
        Py_ssize_t at, nbytes;
        int ok = PyArg_ParseTuple(item, "UOOnn", &name, &dtype, &shape, &at, &nbytes);
        if (!ok) {
            Py_DECREF(item);
            return -1;
        }
        PyObject *dims = PySequence_Fast(shape, "shape must be a sequence");
        if (dims == NULL) {
            Py_DECREF(item);
            return -1;
        }
        f->ndim = PySequence_Fast_GET_SIZE(dims);
        if (f->ndim > MAX_DIMS) {
            Py_DECREF(dims);
            Py_DECREF(item);
            PyErr_SetString(PyExc_ValueError, "too many dimensions");
            return -1;
        }
        for (Py_ssize_t d = 0; d < f->ndim; d++) {
            f->shape[d] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(dims, d));
            if (f->shape[d] == -1 && PyErr_Occurred()) {
                Py_DECREF(dims);
                Py_DECREF(item);
                return -1;
            }
        }
        Py_DECREF(dims);
        if (at < 0 || nbytes < 0 || at + nbytes > self->size) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_ValueError, "a field lies outside the row");
            return -1;
        }
        Py_INCREF(name);
        Py_INCREF(dtype);
        f->name = name;
        f->dtype = dtype;
        f->at = at;
        f->nbytes = nbytes;
        Py_DECREF(item);
    }
    return 0;
}

static int
writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    PyObject *buffer, *ndarray, *inputs, *outputs;
    Py_ssize_t ctrl_bytes, capacity, size;
    int wake_fd;
    unsigned long long wake_mask;
    if (!PyArg_ParseTuple(args, "OnnnO!OOiK", &buffer, &ctrl_bytes, &capacity, &size, &PyType_Type, &ndarray,
                          &inputs, &outputs, &wake_fd, &wake_mask))
        return -1;
    if (self->has_buffer || self->fields != NULL) {
        PyErr_SetString(PyExc_TypeError, "Writer is initialised once");
        return -1;
    }
    if (ctrl_bytes < 16 || ctrl_bytes % 8 || capacity <= 0 || size < 9) {
        PyErr_SetString(PyExc_ValueError, "bad ring geometry");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->buffer, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0)
        return -1;
    self->has_buffer = 1;
    if (self->buffer.len < ctrl_bytes + capacity * size || ((uintptr_t)self->buffer.buf) % 8) {
        writer_release_buffer(self);
        PyErr_SetString(PyExc_ValueError, "the buffer is smaller than the ring's geometry");
        return -1;
    }
    self->ctrl = (uint64_t *)self->buffer.buf;
    self->rows = (char *)self->buffer.buf + ctrl_bytes;
    self->capacity = (uint64_t)capacity;
    self->size = size;
    Py_INCREF(ndarray);
    self->ndarray = (PyTypeObject *)ndarray;
    self->n_in = PySequence_Size(inputs);
    self->n_out = PySequence_Size(outputs);
    if (self->n_in < 0 || self->n_out < 0)
        return -1;
    self->fields = PyMem_Calloc((size_t)(self->n_in + self->n_out) + 1, sizeof(Field));
    if (self->fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (read_fields(self, inputs, 0, self->n_in) < 0 || read_fields(self, outputs, self->n_in, self->n_out) < 0)
        return -1;
    self->closed = 0;
    self->wake_fd = wake_fd;
    self->wake_mask = (uint64_t)wake_mask;
    return 0;
}

/* Copy each field's array into the row at `row`: 1, or 0 when an array is not what the layout holds. */
static int
copy_fields(Writer *self, PyObject *arrays, Py_ssize_t first, Py_ssize_t n, char *row)
{
    if (!PyDict_CheckExact(arrays) || PyDict_GET_SIZE(arrays) != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Field *f = &self->fields[first + i];
        PyObject *a = PyDict_GetItemWithError(arrays, f->name);  /* borrowed */
        if (a == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (Py_TYPE(a) != self->ndarray)
            return 0;
        PyObject *dtype = PyObject_GetAttr(a, str_dtype);
        if (dtype == NULL) {
            PyErr_Clear();
            return 0;
        }
        int same = dtype == f->dtype;
        if (!same) {
            same = PyObject_RichCompareBool(dtype, f->dtype, Py_EQ);
            if (same < 0) {
                PyErr_Clear();
                same = 0;
            }
        }
        Py_DECREF(dtype);
        if (!same)
            return 0;
        Py_buffer view;
        if (PyObject_GetBuffer(a, &view, PyBUF_C_CONTIGUOUS) < 0) {  /* (shape and strides, C order) */
            PyErr_Clear();
            return 0;
        }
        int fits = view.len == f->nbytes && view.ndim == f->ndim;
        for (Py_ssize_t d = 0; fits && d < f->ndim; d++)
            fits = view.shape[d] == f->shape[d];
        if (fits)
            memcpy(row + f->at, view.buf, (size_t)f->nbytes);
        PyBuffer_Release(&view);
        if (!fits)
            return 0;
    }
    return 1;
}

/* put(t, code, inputs, outputs) -> 1 written, 0 full (dropped), -1 not this layout or closed */
static PyObject *
writer_put(Writer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "put(t, code, inputs, outputs)");
        return NULL;
    }
    double t = PyFloat_AsDouble(args[0]);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    long code = PyLong_AsLong(args[1]);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    if (code < 0 || code > 255) {
        PyErr_SetString(PyExc_ValueError, "code is a byte");
        return NULL;
    }
    if (self->closed || self->ctrl == NULL)  /* (closed, released, or never initialised) */
        return PyLong_FromLong(OTHER);
    uint64_t h = self->ctrl[0];
    uint64_t taken = __atomic_load_n(&self->ctrl[1], __ATOMIC_ACQUIRE);
    if (h - taken >= self->capacity)
        return PyLong_FromLong(FULL);
    char *row = self->rows + (Py_ssize_t)(h % self->capacity) * self->size;
    if (!copy_fields(self, args[2], 0, self->n_in, row) ||
        !copy_fields(self, args[3], self->n_in, self->n_out, row))
        return PyLong_FromLong(OTHER);
    unsigned char c = (unsigned char)code;
    memcpy(row, &t, 8);
    memcpy(row + 8, &c, 1);
    __atomic_store_n(&self->ctrl[0], h + 1, __ATOMIC_RELEASE);  /* the row is whole before its count says so */
    if (!((h + 1) & self->wake_mask) && self->wake_fd >= 0) {
        ssize_t ignored = write(self->wake_fd, "w", 1);  /* (full: wake-ups wait already; EPIPE: it is gone) */
        (void)ignored;
    }
    return PyLong_FromLong(PUT);
}

/* close() -> the rows not taken yet; no put writes after it */
static PyObject *
writer_close(Writer *self, PyObject *unused)
{
    self->closed = 1;
    self->wake_fd = -1;
    if (self->ctrl == NULL)
        return PyLong_FromLong(0);
    uint64_t h = self->ctrl[0], taken = __atomic_load_n(&self->ctrl[1], __ATOMIC_ACQUIRE);
    return PyLong_FromUnsignedLongLong(h - taken);
}

/* release(): let go of the mapping (after close; puts then return -1) */
static PyObject *
writer_release(Writer *self, PyObject *unused)
{
    writer_release_buffer(self);
    Py_RETURN_NONE;
}

static PyMethodDef writer_methods[] = {
    {"put", (PyCFunction)(void (*)(void))writer_put, METH_FASTCALL,
     "put(t, code, inputs, outputs): copy one record into the next row: 1, 0 (full) or -1 (not this layout)"},
    {"close", (PyCFunction)writer_close, METH_NOARGS, "no more rows; the rows not taken yet"},
    {"release", (PyCFunction)writer_release, METH_NOARGS, "let go of the ring's mapping"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "reconciler.capture.sealer._ringput.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The agent's end of one capture ring: put() copies a record into the next row.",
    .tp_methods = writer_methods,
    .tp_init = (initproc)writer_init,
    .tp_new = PyType_GenericNew,
};

/* The sealer's end: the count words read with acquire and written with release semantics, so that on a weakly
   ordered CPU (ARM) it never reads a row before the count that publishes it, nor hands a row back before its
   copy of it is done. */
/* args[0] and args[1] of load_acquire and store_release: the count word (0 or 1) of a ring's buffer, held in
   `view` (the caller releases it); NULL with an exception set. */
static uint64_t *
count_word(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage, Py_buffer *view, int flags)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s", usage);
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], view, flags) < 0)
        return NULL;
    if (index < 0 || index > 1 || view->len < 16 || ((uintptr_t)view->buf) % 8) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "count word: index 0 or 1 of an aligned buffer of 16 bytes or more");
        return NULL;
    }
    return (uint64_t *)view->buf + index;
}

static PyObject *
load_acquire(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    uint64_t *word = count_word(args, nargs, 2, "load_acquire(buffer, index)", &view, PyBUF_SIMPLE);
    if (word == NULL)
        return NULL;
    uint64_t value = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *
store_release(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long value = nargs == 3 ? PyLong_AsUnsignedLongLong(args[2]) : 0;
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    uint64_t *word = count_word(args, nargs, 3, "store_release(buffer, index, value)", &view,
                                PyBUF_WRITABLE | PyBUF_SIMPLE);
    if (word == NULL)
        return NULL;
    __atomic_store_n(word, (uint64_t)value, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"load_acquire", (PyCFunction)(void (*)(void))load_acquire, METH_FASTCALL,
     "load_acquire(buffer, index): count word 0 or 1 of a ring, read with acquire semantics"},
    {"store_release", (PyCFunction)(void (*)(void))store_release, METH_FASTCALL,
     "store_release(buffer, index, value): count word 0 or 1 of a ring, written with release semantics"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ringput_module = {
    PyModuleDef_HEAD_INIT, "_ringput", "The request path's copy into a capture ring, in C (see ring.py).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__ringput(void)
{
    str_dtype = PyUnicode_InternFromString("dtype");
    if (str_dtype == NULL || PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&ringput_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
