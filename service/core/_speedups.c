/* The hot path of the marker-text scanner in C: ``scan_clean`` for a whole payload.
 *
 * Same contract and results as ``service.core.parser._scan_clean_py`` (the reference, kept in Python and
 * used where this module was not built): the records of a *clean* payload, else None. Clean means
 * only white space outside the fields, every field closed by its own END marker before any other
 * marker suffix, no duplicate field, at most ``max_records`` records. Anything else returns None and
 * the caller takes the full Python path, which finds the precise problem; so this code never decides
 * an error, it only recognises the common case faster. tests/unit/test_speedups.py checks it
 * against the Python reference on generated input, and the fuzz command does so at length.
 *
 * White space is Py_UNICODE_ISSPACE (what str.strip, str.isspace and the regex \s use), a glued
 * marker is one after '-' or an alphanumeric character (Py_UNICODE_ISALNUM, what str.isalnum uses).
 * Every index is checked against the text's length before it is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char START_SUFFIX[] = "-S-T-A-R-T.";
static const char END_SUFFIX[] = "-E-N-D.";
#define START_LEN 11
#define END_LEN 7

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
} Text;

static inline Py_UCS4
at(const Text *t, Py_ssize_t i)
{
    return PyUnicode_READ(t->kind, t->data, i);
}

static inline int
is_capital(Py_UCS4 c)
{
    return c >= 'A' && c <= 'Z';
}

/* True when the ASCII literal ``lit`` (``len`` characters) is in the text at ``i``. */
static inline int
has_literal(const Text *t, Py_ssize_t i, const char *lit, Py_ssize_t len)
{
    if (i < 0 || i > t->n - len) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < len; k++) {
        if (at(t, i + k) != (Py_UCS4)(unsigned char)lit[k]) {
            return 0;
        }
    }
    return 1;
}

/* The offset of the next '-' at or after ``i``, or -1. */
static Py_ssize_t
next_hyphen(const Text *t, Py_ssize_t i)
{
    if (i < 0 || i >= t->n) {
        return -1;
    }
    switch (t->kind) {
    case PyUnicode_1BYTE_KIND: {
        const Py_UCS1 *d = (const Py_UCS1 *)t->data;
        const void *p = memchr(d + i, '-', (size_t)(t->n - i));
        return p == NULL ? -1 : (Py_ssize_t)((const Py_UCS1 *)p - d);
    }
    case PyUnicode_2BYTE_KIND: {
        const Py_UCS2 *d = (const Py_UCS2 *)t->data;
        for (; i < t->n; i++) {
            if (d[i] == '-') {
                return i;
            }
        }
        return -1;
    }
    default: {
        const Py_UCS4 *d = (const Py_UCS4 *)t->data;
        for (; i < t->n; i++) {
            if (d[i] == '-') {
                return i;
            }
        }
        return -1;
    }
    }
}

/* The offset of the next START suffix ("-S-T-A-R-T.") at or after ``i``, or -1. */
static Py_ssize_t
find_start_suffix(const Text *t, Py_ssize_t i)
{
    for (Py_ssize_t h = next_hyphen(t, i); h >= 0; h = next_hyphen(t, h + 1)) {
        if (has_literal(t, h, START_SUFFIX, START_LEN)) {
            return h;
        }
    }
    return -1;
}

/* True when the END marker of the field named by the chain at ``chain_at`` (``chain_len``
 * characters, e.g. "T-E-X-T") is in the text at ``q``. */
static inline int
has_end_marker(const Text *t, Py_ssize_t q, Py_ssize_t chain_at, Py_ssize_t chain_len)
{
    if (q < 0 || q > t->n - chain_len - END_LEN) {
        return 0;
    }
    for (Py_ssize_t k = 0; k < chain_len; k++) {
        if (at(t, q + k) != at(t, chain_at + k)) {
            return 0;
        }
    }
    return has_literal(t, q + chain_len, END_SUFFIX, END_LEN);
}

static PyObject *
make_record(PyObject *record_type, Py_ssize_t start, PyObject *fields, PyObject *starts)
{
    /* tuple.__new__(record_type, (start, fields, starts)): a NamedTuple without its Python __new__. */
    PyObject *start_obj = PyLong_FromSsize_t(start);
    if (start_obj == NULL) {
        return NULL;
    }
    PyObject *items = PyTuple_Pack(3, start_obj, fields, starts);
    Py_DECREF(start_obj);
    if (items == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, items);
    Py_DECREF(items);
    if (args == NULL) {
        return NULL;
    }
    PyObject *record = PyTuple_Type.tp_new((PyTypeObject *)record_type, args, NULL);
    Py_DECREF(args);
    return record;
}

/* The lower-cased field name of a chain: its letters ("T-E-X-T" -> "text"). */
static PyObject *
chain_name(const Text *t, Py_ssize_t chain_at, Py_ssize_t chain_len)
{
    Py_ssize_t len = (chain_len + 1) / 2;
    PyObject *name = PyUnicode_New(len, 127);
    if (name == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(name);
    for (Py_ssize_t k = 0; k < len; k++) {
        out[k] = (Py_UCS1)(at(t, chain_at + 2 * k) + ('a' - 'A'));
    }
    return name;
}

static int
is_fn(PyObject *name)
{
    return PyUnicode_GET_LENGTH(name) == 2 && memcmp(PyUnicode_1BYTE_DATA(name), "fn", 2) == 0;
}

PyDoc_STRVAR(scan_clean_doc,
             "scan_clean(record_type, text, max_records, /)\n--\n\n"
             "The records of a clean payload as record_type(start, values, value_starts), else None.\n"
             "Same results as service.core.parser._scan_clean_py.");

static PyObject *
scan_clean(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_clean expects (record_type, text, max_records)");
        return NULL;
    }
    PyObject *record_type = args[0];
    PyObject *str = args[1];
    if (!PyType_Check(record_type) || !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass");
        return NULL;
    }
    if (!PyUnicode_Check(str)) {
        PyErr_SetString(PyExc_TypeError, "text must be a str");
        return NULL;
    }
    Py_ssize_t max_records = PyLong_AsSsize_t(args[2]);
    if (max_records == -1 && PyErr_Occurred()) {
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(str) < 0) {
        return NULL;
    }
#endif
    Text t = {PyUnicode_KIND(str), PyUnicode_DATA(str), PyUnicode_GET_LENGTH(str)};

    PyObject *records = PyList_New(0);
    PyObject *fields = PyDict_New();
    PyObject *starts = PyDict_New();
    PyObject *name = NULL;
    PyObject *value = NULL;
    PyObject *value_start = NULL;
    PyObject *record = NULL;
    PyObject *result = NULL;
    if (records == NULL || fields == NULL || starts == NULL) {
        goto error;
    }
    Py_ssize_t record_start = 0;
    Py_ssize_t pos = 0;
    for (;;) {
        Py_ssize_t suffix_at = find_start_suffix(&t, pos);
        if (suffix_at < 0) {
            break;
        }
        /* The lead: white space, then the name chain [A-Z](-[A-Z])* right up to the suffix. */
        Py_ssize_t i = pos;
        while (i < suffix_at && Py_UNICODE_ISSPACE(at(&t, i))) {
            i++;
        }
        Py_ssize_t chain_at = i;
        if (i >= suffix_at || !is_capital(at(&t, i))) {
            goto not_clean; /* stray text, or a START suffix with no name */
        }
        for (i++; i < suffix_at; i += 2) {
            if (at(&t, i) != '-' || i + 1 >= suffix_at || !is_capital(at(&t, i + 1))) {
                goto not_clean;
            }
        }
        Py_ssize_t chain_len = suffix_at - chain_at;
        Py_ssize_t value_at = suffix_at + START_LEN;

        /* Walk the value's hyphens: the first that can begin a marker suffix must be the first
         * hyphen of this field's own END marker, which starts one character before it. */
        Py_ssize_t end_at = -1;
        for (Py_ssize_t h = next_hyphen(&t, value_at);; h = next_hyphen(&t, h + 1)) {
            if (h < 0 || h + 1 >= t.n) {
                goto not_clean; /* unterminated (or the text ends with "-") */
            }
            if (!is_capital(at(&t, h + 1))) {
                continue;
            }
            if (has_end_marker(&t, h - 1, chain_at, chain_len)) {
                /* h - 2 >= value_at - 2 > 0: the character before the END marker. */
                Py_UCS4 before = at(&t, h - 2);
                if (before == '-' || Py_UNICODE_ISALNUM(before)) {
                    goto not_clean; /* glued: not a marker, let the full path decide */
                }
                end_at = h - 1;
                break;
            }
            if (has_literal(&t, h, START_SUFFIX, START_LEN) || has_literal(&t, h, END_SUFFIX, END_LEN)) {
                goto not_clean; /* another marker, or marker-like text, inside the value */
            }
        }

        name = chain_name(&t, chain_at, chain_len);
        if (name == NULL) {
            goto error;
        }
        int seen = PyDict_Contains(fields, name);
        if (seen < 0) {
            goto error;
        }
        if (seen) {
            if (!is_fn(name)) {
                goto not_clean; /* a duplicate field */
            }
            /* An F-N START in a record that has its FN: a new record begins at its name. */
            record = make_record(record_type, record_start, fields, starts);
            if (record == NULL || PyList_Append(records, record) < 0) {
                goto error;
            }
            Py_CLEAR(record);
            if (PyList_GET_SIZE(records) >= max_records) {
                goto not_clean;
            }
            record_start = chain_at;
            Py_SETREF(fields, PyDict_New());
            Py_SETREF(starts, PyDict_New());
            if (fields == NULL || starts == NULL) {
                goto error;
            }
        }
        /* The value, without surrounding white space (str.strip). */
        Py_ssize_t a = value_at, b = end_at;
        while (a < b && Py_UNICODE_ISSPACE(at(&t, a))) {
            a++;
        }
        while (b > a && Py_UNICODE_ISSPACE(at(&t, b - 1))) {
            b--;
        }
        value = PyUnicode_Substring(str, a, b);
        value_start = PyLong_FromSsize_t(value_at);
        if (value == NULL || value_start == NULL || PyDict_SetItem(fields, name, value) < 0 ||
            PyDict_SetItem(starts, name, value_start) < 0) {
            goto error;
        }
        Py_CLEAR(name);
        Py_CLEAR(value);
        Py_CLEAR(value_start);
        pos = end_at + chain_len + END_LEN;
    }
    if (PyDict_GET_SIZE(fields) == 0 || PyList_GET_SIZE(records) >= max_records) {
        goto not_clean;
    }
    for (Py_ssize_t i = pos; i < t.n; i++) {
        if (!Py_UNICODE_ISSPACE(at(&t, i))) {
            goto not_clean; /* stray text, or a lone END marker, after the last field */
        }
    }
    record = make_record(record_type, record_start, fields, starts);
    if (record == NULL || PyList_Append(records, record) < 0) {
        goto error;
    }
    Py_DECREF(record);
    Py_DECREF(fields);
    Py_DECREF(starts);
    return records;

not_clean:
    result = Py_NewRef(Py_None);
error: /* result stays NULL: the exception set is raised */
    Py_XDECREF(records);
    Py_XDECREF(fields);
    Py_XDECREF(starts);
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(value_start);
    Py_XDECREF(record);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_clean", (PyCFunction)(void (*)(void))scan_clean, METH_FASTCALL, scan_clean_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "service.core._speedups",
    "C speedups of the marker-ingest core (optional: service.core.parser falls back to Python).",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
