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
#include <stdint.h>
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

/* ================================================================================================
 * The record path compiled: ``articles``, from a message's bytes to its article outcomes.
 *
 * For a clean payload of valid records it returns exactly what the Python path
 * (service.core.events.process_payload_reference) returns: the same Outcome tuples, the same ids,
 * keys and event bytes (the JSON orjson makes of the same dict: keys in that order, '"', '\\' and
 * the control characters escaped as orjson escapes them, everything else, non-ASCII included, copied
 * as UTF-8). For anything it cannot prove it returns None ("not for me") and the caller takes the
 * Python path, which stays the reference and finds the precise problems: so this code never decides
 * an error. tests/unit/test_compiled_path.py and scripts/fuzz_compiled.py compare the two byte for
 * byte. It reads the UTF-8 bytes themselves: the payload is never decoded to a str, the SHA-256
 * reads the values where they lie, and the JSON copies them with their escapes.
 *
 * Why ArticleData (schemas/events.py) would accept every article this path writes, so that pydantic
 * need not validate it again here (where this path cannot prove a value it declines, and the Python
 * path validates with pydantic):
 * - fn: 1 to 18 ASCII digits, so an int from 0 to 10**18 - 1 = MAX_FN (ge=0, le=MAX_FN);
 * - date: YYYY-MM-DD of ASCII digits naming a day that exists in years 0001-9999 (leap years by the
 *   Gregorian rule), exactly the strings date.fromisoformat and pydantic's date accept in that shape;
 *   written as it was read, which is date.isoformat() of that day;
 * - title, text: valid UTF-8 (so a str), at least one code point after trimming (min_length=1), at
 *   most the limits in code points; the title has a character that draws: an ASCII character from
 *   '!' to '~' or one that str.isalnum accepts (categories L and N, tested over every code point),
 *   other than the blank letters; anything else the Python check decides;
 * - extra: names are capital letters lower-cased, values valid UTF-8 (dict[str, str]);
 * - sha256: 64 lower-case hex digits of hashlib.sha256 over the documented normalized record;
 * - no other key (extra="forbid").
 * The id, source, time and kafka* values come from the caller, as on the Python path.
 * ================================================================================================
 */

#define MAX_FIELDS_PER_RECORD 64 /* more: not for me (keeps the duplicate check cheap) */
#define FN_MAX_DIGITS 18

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t
load8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8); /* an unaligned load, without undefined behaviour */
    return x;
}

/* SPEEDUPS_PORTABLE builds the plain C of other compilers with GCC too (to test it). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(SPEEDUPS_PORTABLE)
#define HAVE_VECTORS 1
#endif

static inline int
popcount64(uint64_t x)
{
#ifdef HAVE_VECTORS
    return __builtin_popcountll(x);
#else
    int n = 0;
    for (; x; x &= x - 1) {
        n++;
    }
    return n;
#endif
}

/* Bytes are tested 16 at a time, with the compiler's vector extensions (SSE2 on x86-64, NEON on
 * arm64) where it has them, else 8 at a time in a uint64 (exact for "any", whatever the borrows). */
#ifdef HAVE_VECTORS
typedef unsigned char u8x16 __attribute__((vector_size(16)));

static inline u8x16
load16(const unsigned char *p)
{
    u8x16 v;
    memcpy(&v, p, 16);
    return v;
}

static inline int
any16(u8x16 m)
{
    uint64_t half[2];
    memcpy(half, &m, 16);
    return (half[0] | half[1]) != 0;
}

static inline u8x16
special16(u8x16 v)
{
    return (u8x16)((v < 0x20) | (v == '"') | (v == '\\'));
}

/* Non-zero when one of the 16 bytes at p is below 0x20, '"' or '\\'. */
static inline int
special_block(const unsigned char *p)
{
    return any16(special16(load16(p)));
}

static inline int
special_block64(const unsigned char *p)
{
    return any16(special16(load16(p)) | special16(load16(p + 16)) | special16(load16(p + 32)) |
                 special16(load16(p + 48)));
}

/* Non-zero when one of the 64 bytes at p is not ASCII. */
static inline int
high_block64(const unsigned char *p)
{
    return any16((load16(p) | load16(p + 16) | load16(p + 32) | load16(p + 48)) & 0x80);
}
#else
static inline int
special8(const unsigned char *p)
{
    uint64_t x = load8(p);
    uint64_t quote = x ^ (ONES * '"'), backslash = x ^ (ONES * '\\');
    return (((x - ONES * 0x20) & ~x & HIGHS) | ((quote - ONES) & ~quote & HIGHS) |
            ((backslash - ONES) & ~backslash & HIGHS)) != 0;
}

static inline int
special_block(const unsigned char *p)
{
    return special8(p) || special8(p + 8);
}

static inline int
special_block64(const unsigned char *p)
{
    int any = 0;
    for (int k = 0; k < 64; k += 8) {
        any |= special8(p + k);
    }
    return any;
}

static inline int
high_block64(const unsigned char *p)
{
    uint64_t x = 0;
    for (int k = 0; k < 64; k += 8) {
        x |= load8(p + k);
    }
    return (x & HIGHS) != 0;
}
#endif

/* True when s[0:n] is UTF-8 that Python's strict decoder accepts: the well-formed sequences of the
 * Unicode standard's table 3-7 (no overlong form, no surrogate, nothing above U+10FFFF). *ascii says
 * whether every byte is below 0x80. */
static int
utf8_valid(const unsigned char *s, Py_ssize_t n, int *ascii)
{
    Py_ssize_t i = 0;
    int all_ascii = 1;
    while (i < n) {
        if (i + 64 <= n && !high_block64(s + i)) {
            i += 64;
            continue;
        }
        if (i + 8 <= n && (load8(s + i) & HIGHS) == 0) {
            i += 8;
            continue;
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        all_ascii = 0;
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) {
                return 0;
            }
            i += 2;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            if (i + 2 >= n || s[i + 1] < lo || s[i + 1] > hi || (s[i + 2] & 0xC0) != 0x80) {
                return 0;
            }
            i += 3;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            if (i + 3 >= n || s[i + 1] < lo || s[i + 1] > hi || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80) {
                return 0;
            }
            i += 4;
        }
        else {
            return 0;
        }
    }
    *ascii = all_ascii;
    return 1;
}

/* The code point that starts at s[i] (valid UTF-8), and its length in bytes in *len. */
static inline Py_UCS4
decode_at(const unsigned char *s, Py_ssize_t i, Py_ssize_t *len)
{
    unsigned char c = s[i];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    if (c < 0xE0) {
        *len = 2;
        return ((Py_UCS4)(c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
    if (c < 0xF0) {
        *len = 3;
        return ((Py_UCS4)(c & 0x0F) << 12) | ((Py_UCS4)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    }
    *len = 4;
    return ((Py_UCS4)(c & 0x07) << 18) | ((Py_UCS4)(s[i + 1] & 0x3F) << 12) |
           ((Py_UCS4)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
}

/* Where the code point that ends just before s[i] starts (i > 0 at a code point boundary). */
static inline Py_ssize_t
start_before(const unsigned char *s, Py_ssize_t i)
{
    do {
        i--;
    } while ((s[i] & 0xC0) == 0x80);
    return i;
}

/* The number of code points in s[a:b] (valid UTF-8): the bytes that are not continuation bytes. */
static Py_ssize_t
code_points(const unsigned char *s, Py_ssize_t a, Py_ssize_t b, int ascii)
{
    if (ascii) {
        return b - a;
    }
    Py_ssize_t continuations = 0, i = a;
    for (; i + 8 <= b; i += 8) {
        uint64_t x = load8(s + i);
        continuations += popcount64(x & ~(x << 1) & HIGHS); /* bit 7 set, bit 6 clear */
    }
    for (; i < b; i++) {
        continuations += (s[i] & 0xC0) == 0x80;
    }
    return (b - a) - continuations;
}

/* --- the scan, on bytes: the same records as scan_clean (above) finds in the decoded text ------- */

/* Markers are ASCII, and an ASCII byte is never part of a longer UTF-8 sequence: searching the bytes
 * finds exactly the markers of the text. White space and the glue rule read whole code points. */

typedef struct {
    Py_ssize_t name_at, name_len; /* the name chain, e.g. "T-E-X-T" */
    Py_ssize_t a, b;              /* the value, trimmed */
} Field;

typedef struct {
    Field *fields;
    Py_ssize_t n_fields, fields_cap;
    Py_ssize_t *firsts; /* each record's first field */
    Py_ssize_t n_records, records_cap;
} Scan;

static int
grow(void **items, Py_ssize_t *cap, Py_ssize_t need, size_t item_size)
{
    if (need <= *cap) {
        return 0;
    }
    Py_ssize_t cap2 = *cap ? *cap * 2 : 16;
    while (cap2 < need) {
        cap2 *= 2;
    }
    void *p = PyMem_Realloc(*items, (size_t)cap2 * item_size);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *items = p;
    *cap = cap2;
    return 0;
}

static int
add_record(Scan *sc, Py_ssize_t first)
{
    if (grow((void **)&sc->firsts, &sc->records_cap, sc->n_records + 1, sizeof(Py_ssize_t)) < 0) {
        return -1;
    }
    sc->firsts[sc->n_records++] = first;
    return 0;
}

static inline Py_ssize_t
hyphen_b(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    if (i < 0 || i >= n) {
        return -1;
    }
    const unsigned char *p = memchr(s + i, '-', (size_t)(n - i));
    return p == NULL ? -1 : (Py_ssize_t)(p - s);
}

static inline int
literal_b(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, const char *lit, Py_ssize_t len)
{
    return i >= 0 && i <= n - len && memcmp(s + i, lit, (size_t)len) == 0;
}

static Py_ssize_t
start_suffix_b(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    for (Py_ssize_t h = hyphen_b(s, n, i); h >= 0; h = hyphen_b(s, n, h + 1)) {
        if (literal_b(s, n, h, START_SUFFIX, START_LEN)) {
            return h;
        }
    }
    return -1;
}

static inline int
end_marker_b(const unsigned char *s, Py_ssize_t n, Py_ssize_t q, Py_ssize_t chain_at, Py_ssize_t chain_len)
{
    return q >= 0 && q <= n - chain_len - END_LEN && memcmp(s + q, s + chain_at, (size_t)chain_len) == 0 &&
           memcmp(s + q + chain_len, END_SUFFIX, END_LEN) == 0;
}

/* True when the marker at s[q] (q > 0) follows a letter, digit or hyphen: then it is no marker. */
static int
glued_b(const unsigned char *s, Py_ssize_t q)
{
    unsigned char c = s[q - 1];
    if (c < 0x80) {
        return c == '-' || Py_UNICODE_ISALNUM(c);
    }
    Py_ssize_t len;
    return Py_UNICODE_ISALNUM(decode_at(s, start_before(s, q), &len));
}

/* Fills ``sc`` with the records of a clean payload (valid UTF-8): 1; not clean: 0; -1 on error. */
static int
scan_payload(Scan *sc, const unsigned char *s, Py_ssize_t n, Py_ssize_t max_records)
{
    Py_ssize_t len;
    Py_ssize_t pos = 0, record_first = 0, closed = 0;
    if (add_record(sc, 0) < 0) {
        return -1;
    }
    for (;;) {
        Py_ssize_t suffix_at = start_suffix_b(s, n, pos);
        if (suffix_at < 0) {
            break;
        }
        /* The lead: white space, then the name chain [A-Z](-[A-Z])* right up to the suffix. */
        Py_ssize_t i = pos;
        while (i < suffix_at && Py_UNICODE_ISSPACE(decode_at(s, i, &len))) {
            i += len;
        }
        Py_ssize_t chain_at = i;
        if (i >= suffix_at || !is_capital(s[i])) {
            return 0;
        }
        for (i++; i < suffix_at; i += 2) {
            if (s[i] != '-' || i + 1 >= suffix_at || !is_capital(s[i + 1])) {
                return 0;
            }
        }
        Py_ssize_t chain_len = suffix_at - chain_at;
        Py_ssize_t value_at = suffix_at + START_LEN;

        /* The value's hyphens, as in scan_clean: the first that can begin a marker suffix must be
         * the first hyphen of this field's own END marker. */
        Py_ssize_t end_at = -1;
        for (Py_ssize_t h = hyphen_b(s, n, value_at);; h = hyphen_b(s, n, h + 1)) {
            if (h < 0 || h + 1 >= n) {
                return 0;
            }
            if (!is_capital(s[h + 1])) {
                continue;
            }
            if (end_marker_b(s, n, h - 1, chain_at, chain_len)) {
                if (glued_b(s, h - 1)) {
                    return 0;
                }
                end_at = h - 1;
                break;
            }
            if (literal_b(s, n, h, START_SUFFIX, START_LEN) || literal_b(s, n, h, END_SUFFIX, END_LEN)) {
                return 0;
            }
        }

        for (Py_ssize_t k = record_first; k < sc->n_fields; k++) {
            const Field *f = &sc->fields[k];
            if (f->name_len == chain_len && memcmp(s + f->name_at, s + chain_at, (size_t)chain_len) == 0) {
                if (chain_len != 3 || memcmp(s + chain_at, "F-N", 3) != 0) {
                    return 0; /* a duplicate field */
                }
                /* An F-N START in a record that has its FN: a new record begins. */
                if (++closed >= max_records) {
                    return 0;
                }
                record_first = sc->n_fields;
                if (add_record(sc, record_first) < 0) {
                    return -1;
                }
                break;
            }
        }
        if (sc->n_fields - record_first >= MAX_FIELDS_PER_RECORD) {
            return 0;
        }
        Py_ssize_t a = value_at, b = end_at;
        while (a < b && Py_UNICODE_ISSPACE(decode_at(s, a, &len))) {
            a += len;
        }
        while (b > a) {
            Py_ssize_t before = start_before(s, b);
            if (!Py_UNICODE_ISSPACE(decode_at(s, before, &len))) {
                break;
            }
            b = before;
        }
        if (grow((void **)&sc->fields, &sc->fields_cap, sc->n_fields + 1, sizeof(Field)) < 0) {
            return -1;
        }
        sc->fields[sc->n_fields++] = (Field){chain_at, chain_len, a, b};
        pos = end_at + chain_len + END_LEN;
    }
    if (sc->n_fields == record_first || closed >= max_records) {
        return 0;
    }
    while (pos < n) {
        if (!Py_UNICODE_ISSPACE(decode_at(s, pos, &len))) {
            return 0; /* stray text, or a lone END marker, after the last field */
        }
        pos += len;
    }
    return 1;
}

/* --- the checks of article_from_values --------------------------------------------------------- */

static const Py_UCS4 BLANK_LETTERS[] = {0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800};

/* True when the title surely has a visible character (see has_visible_character): an ASCII one from
 * '!' to '~', or one str.isalnum accepts that is not a blank letter. False: let Python decide. */
static int
surely_visible(const unsigned char *s, Py_ssize_t a, Py_ssize_t b)
{
    Py_ssize_t len;
    for (Py_ssize_t i = a; i < b; i += len) {
        Py_UCS4 c = decode_at(s, i, &len);
        if (c < 0x80) {
            if (c >= 0x21 && c <= 0x7E) {
                return 1;
            }
            continue;
        }
        if (Py_UNICODE_ISALNUM(c)) {
            int blank = 0;
            for (size_t k = 0; k < sizeof(BLANK_LETTERS) / sizeof(BLANK_LETTERS[0]); k++) {
                blank |= c == BLANK_LETTERS[k];
            }
            if (!blank) {
                return 1;
            }
        }
    }
    return 0;
}

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* True for YYYY-MM-DD (ASCII digits) naming a day that exists, years 0001-9999. */
static int
valid_date(const unsigned char *d, Py_ssize_t len)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (len != 10 || d[4] != '-' || d[7] != '-') {
        return 0;
    }
    for (int k = 0; k < 10; k++) {
        if (k != 4 && k != 7 && !is_digit(d[k])) {
            return 0;
        }
    }
    int y = (d[0] - '0') * 1000 + (d[1] - '0') * 100 + (d[2] - '0') * 10 + (d[3] - '0');
    int m = (d[5] - '0') * 10 + (d[6] - '0');
    int day = (d[8] - '0') * 10 + (d[9] - '0');
    if (y < 1 || m < 1 || m > 12 || day < 1) {
        return 0;
    }
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return day <= days[m - 1] + (m == 2 && leap);
}

/* --- JSON ---------------------------------------------------------------------------------------- */

/* Bytes an escape adds to a byte of a JSON string, as orjson writes them: \" \\ \b \t \n \f \r, and
 * \u00XX (lower-case hex) for the other control characters; 0 for every other byte. */
static unsigned char ESCAPE_EXTRA[256];

static void
init_escapes(void)
{
    for (int c = 0; c < 0x20; c++) {
        ESCAPE_EXTRA[c] = 5;
    }
    ESCAPE_EXTRA['\b'] = ESCAPE_EXTRA['\t'] = ESCAPE_EXTRA['\n'] = 1;
    ESCAPE_EXTRA['\f'] = ESCAPE_EXTRA['\r'] = 1;
    ESCAPE_EXTRA['"'] = ESCAPE_EXTRA['\\'] = 1;
}


static Py_ssize_t
escaped_len(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t extra = 0, i = 0;
    for (; i + 64 <= n; i += 64) {
        if (special_block64(s + i)) {
            for (int k = 0; k < 64; k++) {
                extra += ESCAPE_EXTRA[s[i + k]];
            }
        }
    }
    for (; i + 16 <= n; i += 16) {
        if (special_block(s + i)) {
            for (int k = 0; k < 16; k++) {
                extra += ESCAPE_EXTRA[s[i + k]];
            }
        }
    }
    for (; i < n; i++) {
        extra += ESCAPE_EXTRA[s[i]];
    }
    return n + extra;
}

static inline char *
put_escaped(char *out, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    if (!ESCAPE_EXTRA[c]) {
        *out++ = (char)c;
        return out;
    }
    *out++ = '\\';
    switch (c) {
    case '"':
    case '\\':
        *out++ = (char)c;
        break;
    case '\b':
        *out++ = 'b';
        break;
    case '\t':
        *out++ = 't';
        break;
    case '\n':
        *out++ = 'n';
        break;
    case '\f':
        *out++ = 'f';
        break;
    case '\r':
        *out++ = 'r';
        break;
    default:
        memcpy(out, "u00", 3);
        out[3] = hex[c >> 4];
        out[4] = hex[c & 0xF];
        out += 5;
    }
    return out;
}

static char *
put_string(char *out, const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 64 <= n; i += 64) {
        if (!special_block64(s + i)) {
            memcpy(out, s + i, 64);
            out += 64;
            continue;
        }
        for (int k = 0; k < 64; k += 16) {
            if (!special_block(s + i + k)) {
                memcpy(out, s + i + k, 16);
                out += 16;
                continue;
            }
            for (int j = 0; j < 16; j++) {
                out = put_escaped(out, s[i + k + j]);
            }
        }
    }
    for (; i + 16 <= n; i += 16) {
        if (!special_block(s + i)) {
            memcpy(out, s + i, 16);
            out += 16;
            continue;
        }
        for (int j = 0; j < 16; j++) {
            out = put_escaped(out, s[i + j]);
        }
    }
    for (; i < n; i++) {
        out = put_escaped(out, s[i]);
    }
    return out;
}

static inline char *
put(char *out, const char *s, Py_ssize_t n)
{
    memcpy(out, s, (size_t)n);
    return out + n;
}

#define PUT_LITERAL(out, lit) put((out), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* Decimal digits of v into buf (at least 20 bytes); returns their number. */
static int
format_int(char *buf, long long v)
{
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int len = 0;
    if (v < 0) {
        buf[len++] = '-';
    }
    while (n) {
        buf[len++] = tmp[--n];
    }
    return len;
}

/* A growable byte buffer for the per-message parts of the event. */
typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int
buf_reserve(Buf *b, Py_ssize_t more)
{
    return grow((void **)&b->data, &b->cap, b->len + more, 1);
}

static int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define BUF_LITERAL(b, lit) buf_put((b), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* Appends str ``obj`` as the inside of a JSON string. 0, or -1 with an exception set (a str that is
 * not UTF-8, with lone surrogates: the caller then says "not for me"). */
static int
buf_put_str(Buf *b, PyObject *obj)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL) {
        return -1;
    }
    Py_ssize_t need = escaped_len((const unsigned char *)s, n);
    if (buf_reserve(b, need) < 0) {
        return -1;
    }
    put_string(b->data + b->len, (const unsigned char *)s, n);
    b->len += need;
    return 0;
}

static int
buf_put_int(Buf *b, long long v)
{
    char digits[24];
    return buf_put(b, digits, format_int(digits, v));
}

/* --- one record ---------------------------------------------------------------------------------- */

typedef struct {
    const Field *fn, *date, *title, *text;
    const Field *extras[MAX_FIELDS_PER_RECORD]; /* in text order */
    int n_extras;
    long long fn_value;
    Py_ssize_t digits_at, digits_len; /* the FN without its leading zeros */
    Py_ssize_t title_json, text_json, extra_json, hash_len;
} Rec;

static inline int
chain_is(const unsigned char *s, const Field *f, const char *chain, Py_ssize_t len)
{
    return f->name_len == len && memcmp(s + f->name_at, chain, (size_t)len) == 0;
}

/* The name's letters ("S-O-U-R-C-E" -> "source") at out; returns the end. */
static char *
put_name(char *out, const unsigned char *s, const Field *f)
{
    for (Py_ssize_t k = 0; k < f->name_len; k += 2) {
        *out++ = (char)(s[f->name_at + k] + ('a' - 'A'));
    }
    return out;
}

/* article_from_values' checks on one record: 1 when it is valid, 0 when Python must decide. */
static int
check_record(Rec *r, const unsigned char *s, const Field *fields, Py_ssize_t count, int ascii,
             Py_ssize_t max_title, Py_ssize_t max_text)
{
    r->fn = r->date = r->title = r->text = NULL;
    r->n_extras = 0;
    Py_ssize_t extra_json = 0, extra_hash = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        const Field *f = &fields[k];
        if (chain_is(s, f, "F-N", 3)) {
            r->fn = f;
        }
        else if (chain_is(s, f, "D-A-T-E", 7)) {
            r->date = f;
        }
        else if (chain_is(s, f, "T-I-T-L-E", 9)) {
            r->title = f;
        }
        else if (chain_is(s, f, "T-E-X-T", 7)) {
            r->text = f;
        }
        else {
            Py_ssize_t letters = (f->name_len + 1) / 2;
            /* ,"name":"value" and, for the digest, U+001F name=value */
            extra_json += (r->n_extras ? 1 : 0) + letters + 5 + escaped_len(s + f->a, f->b - f->a);
            extra_hash += 1 + letters + 1 + (f->b - f->a);
            r->extras[r->n_extras++] = f;
        }
    }
    if (r->fn == NULL || r->date == NULL || r->title == NULL || r->text == NULL) {
        return 0;
    }
    const Field *fn = r->fn;
    Py_ssize_t fn_len = fn->b - fn->a;
    if (fn_len < 1 || fn_len > FN_MAX_DIGITS) {
        return 0;
    }
    long long value = 0;
    for (Py_ssize_t k = fn->a; k < fn->b; k++) {
        if (!is_digit(s[k])) {
            return 0;
        }
        value = value * 10 + (s[k] - '0');
    }
    r->fn_value = value;
    r->digits_at = fn->a;
    while (r->digits_at < fn->b - 1 && s[r->digits_at] == '0') {
        r->digits_at++;
    }
    r->digits_len = fn->b - r->digits_at;

    if (!valid_date(s + r->date->a, r->date->b - r->date->a)) {
        return 0;
    }
    const Field *title = r->title, *text = r->text;
    Py_ssize_t title_chars = code_points(s, title->a, title->b, ascii);
    Py_ssize_t text_chars = code_points(s, text->a, text->b, ascii);
    if (title_chars < 1 || title_chars > max_title || text_chars < 1 || text_chars > max_text) {
        return 0;
    }
    if (!surely_visible(s, title->a, title->b)) {
        return 0;
    }
    r->title_json = escaped_len(s + title->a, title->b - title->a);
    r->text_json = escaped_len(s + text->a, text->b - text->a);
    r->extra_json = extra_json;
    r->hash_len = r->digits_len + 1 + 10 + 1 + (title->b - title->a) + 1 + (text->b - text->a) + extra_hash;
    return 1;
}

/* The constant parts of the event, as orjson writes them; they must stay as in reference._article and
 * schemas/events.py (ARTICLE_EVENT_TYPE, ARTICLE_DATASCHEMA): the differential tests say if not. */
#define J_HEAD "{\"specversion\":\"1.0\",\"id\":\""
#define J_SOURCE "\",\"source\":\""
#define J_SUBJECT "\",\"type\":\"io.markeringest.article.ingested.v1\",\"subject\":\""
#define J_TIME "\",\"time\":\""
#define J_TOPIC                                                                                      \
    "\",\"datacontenttype\":\"application/json\","                                                      \
    "\"dataschema\":\"urn:marker-ingest:schema:article-ingested:v1\",\"kafkatopic\":\""
#define J_PARTITION "\",\"kafkapartition\":"
#define J_OFFSET ",\"kafkaoffset\":"
#define J_INDEX ",\"recordindex\":"
#define J_TRACEPARENT ",\"traceparent\":\""
#define J_DATA ",\"data\":{\"fn\":"
#define J_DATE ",\"date\":\""
#define J_TITLE "\",\"title\":\""
#define J_TEXT "\",\"text\":\""
#define J_EXTRA "\",\"extra\":{"
#define J_SHA256 "},\"sha256\":\""
#define J_TAIL "\"}}"
#define LIT_LEN(lit) ((Py_ssize_t)sizeof(lit) - 1)

/* The per-message parts: [0, id_end) the head up to the id's digits, [id_end, subject_end) up to the
 * subject's, [subject_end, index_end) up to the record index, [index_end, len) up to data.fn. */
typedef struct {
    Buf buf;
    Py_ssize_t id_end, subject_end, index_end;
} Envelope;

static int
build_envelope(Envelope *e, PyObject *id_prefix, PyObject *source_uri, PyObject *time, PyObject *topic,
               long long partition, long long offset, PyObject *traceparent)
{
    Buf *b = &e->buf;
    if (BUF_LITERAL(b, J_HEAD) < 0 || buf_put_str(b, id_prefix) < 0) {
        return -1;
    }
    e->id_end = b->len;
    if (BUF_LITERAL(b, J_SOURCE) < 0 || buf_put_str(b, source_uri) < 0 || BUF_LITERAL(b, J_SUBJECT) < 0) {
        return -1;
    }
    e->subject_end = b->len;
    if (BUF_LITERAL(b, J_TIME) < 0 || buf_put_str(b, time) < 0 || BUF_LITERAL(b, J_TOPIC) < 0 ||
        buf_put_str(b, topic) < 0 || BUF_LITERAL(b, J_PARTITION) < 0 || buf_put_int(b, partition) < 0 ||
        BUF_LITERAL(b, J_OFFSET) < 0 || buf_put_int(b, offset) < 0 || BUF_LITERAL(b, J_INDEX) < 0) {
        return -1;
    }
    e->index_end = b->len;
    if (traceparent != Py_None) {
        if (BUF_LITERAL(b, J_TRACEPARENT) < 0 || buf_put_str(b, traceparent) < 0 || buf_put(b, "\"", 1) < 0) {
            return -1;
        }
    }
    return BUF_LITERAL(b, J_DATA);
}

static inline int
chain_less(const unsigned char *s, const Field *x, const Field *y)
{
    /* Chains compare as their names do: the hyphens sit at the same places. */
    Py_ssize_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(s + x->name_at, s + y->name_at, (size_t)n);
    return c < 0 || (c == 0 && x->name_len < y->name_len);
}

/* SHA-256 of the normalized record (content_digest), as 64 hex digits at out; -1 on error. */
static PyObject *sha256_new = NULL; /* hashlib.sha256, the constructor the Python path calls */
static PyObject *str_digest = NULL;

static int
put_digest(char *out, const unsigned char *s, const Rec *r)
{
    static const char hex[] = "0123456789abcdef";
    PyObject *data = PyBytes_FromStringAndSize(NULL, r->hash_len);
    if (data == NULL) {
        return -1;
    }
    char *w = PyBytes_AS_STRING(data);
    w = put(w, (const char *)s + r->digits_at, r->digits_len);
    *w++ = '\x1f';
    w = put(w, (const char *)s + r->date->a, 10);
    *w++ = '\x1f';
    w = put(w, (const char *)s + r->title->a, r->title->b - r->title->a);
    *w++ = '\x1f';
    w = put(w, (const char *)s + r->text->a, r->text->b - r->text->a);
    /* The extra fields by name (insertion sort: a record has few). */
    const Field *sorted[MAX_FIELDS_PER_RECORD];
    for (int k = 0; k < r->n_extras; k++) {
        const Field *f = r->extras[k];
        int j = k;
        for (; j > 0 && chain_less(s, f, sorted[j - 1]); j--) {
            sorted[j] = sorted[j - 1];
        }
        sorted[j] = f;
    }
    for (int k = 0; k < r->n_extras; k++) {
        const Field *f = sorted[k];
        *w++ = '\x1f';
        w = put_name(w, s, f);
        *w++ = '=';
        w = put(w, (const char *)s + f->a, f->b - f->a);
    }
    assert(w == PyBytes_AS_STRING(data) + r->hash_len);
    PyObject *hash = PyObject_CallOneArg(sha256_new, data);
    Py_DECREF(data);
    if (hash == NULL) {
        return -1;
    }
    PyObject *digest = PyObject_CallMethodNoArgs(hash, str_digest);
    Py_DECREF(hash);
    if (digest == NULL) {
        return -1;
    }
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != 32) {
        Py_DECREF(digest);
        PyErr_SetString(PyExc_SystemError, "sha256().digest() is not 32 bytes");
        return -1;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(digest);
    for (int k = 0; k < 32; k++) {
        out[2 * k] = hex[d[k] >> 4];
        out[2 * k + 1] = hex[d[k] & 0xF];
    }
    Py_DECREF(digest);
    return 0;
}

/* tuple.__new__(outcome_type, items), stealing the references in items (NULLs: an error, all freed). */
static PyObject *
make_outcome(PyTypeObject *type, PyObject **items, Py_ssize_t n)
{
    PyObject *outcome = NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (items[k] == NULL) {
            goto done;
        }
    }
#if PY_VERSION_HEX < 0x030E0000
    /* What tuple's own tp_new does for a subclass (tuple_subtype_new): alloc, then set the items. */
    outcome = type->tp_alloc(type, n);
    if (outcome != NULL) {
        for (Py_ssize_t k = 0; k < n; k++) {
            PyTuple_SET_ITEM(outcome, k, items[k]);
            items[k] = NULL;
        }
    }
#else
    {
        PyObject *tuple = PyTuple_New(n);
        if (tuple != NULL) {
            for (Py_ssize_t k = 0; k < n; k++) {
                PyTuple_SET_ITEM(tuple, k, items[k]);
                items[k] = NULL;
            }
            PyObject *args = PyTuple_Pack(1, tuple);
            Py_DECREF(tuple);
            if (args != NULL) {
                outcome = PyTuple_Type.tp_new(type, args, NULL);
                Py_DECREF(args);
            }
        }
    }
#endif
done:
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_XDECREF(items[k]);
    }
    return outcome;
}

/* The event id: id_prefix followed by the decimal index. */
static PyObject *
event_id(PyObject *id_prefix, const char *digits, int n_digits)
{
    if (PyUnicode_IS_ASCII(id_prefix)) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(id_prefix);
        PyObject *id = PyUnicode_New(len + n_digits, 127);
        if (id != NULL) {
            memcpy(PyUnicode_1BYTE_DATA(id), PyUnicode_1BYTE_DATA(id_prefix), (size_t)len);
            memcpy(PyUnicode_1BYTE_DATA(id) + len, digits, (size_t)n_digits);
        }
        return id;
    }
    PyObject *tail = PyUnicode_FromStringAndSize(digits, n_digits);
    if (tail == NULL) {
        return NULL;
    }
    PyObject *id = PyUnicode_Concat(id_prefix, tail);
    Py_DECREF(tail);
    return id;
}

/* One record's Outcome: (index, event id, key, event, None, fn). */
static PyObject *
record_outcome(PyTypeObject *type, const unsigned char *s, const Rec *r, const Envelope *e,
               PyObject *id_prefix, long long first_index, Py_ssize_t index, Py_ssize_t event_len)
{
    char id_digits[24], index_digits[24];
    int id_len = format_int(id_digits, first_index + index);
    int index_len = format_int(index_digits, index);
    const char *env = e->buf.data;
    PyObject *event = PyBytes_FromStringAndSize(NULL, event_len);
    if (event == NULL) {
        return NULL;
    }
    char *w = PyBytes_AS_STRING(event);
    w = put(w, env, e->id_end);
    w = put(w, id_digits, id_len);
    w = put(w, env + e->id_end, e->subject_end - e->id_end);
    w = put(w, (const char *)s + r->digits_at, r->digits_len);
    w = put(w, env + e->subject_end, e->index_end - e->subject_end);
    w = put(w, index_digits, index_len);
    w = put(w, env + e->index_end, e->buf.len - e->index_end);
    w = put(w, (const char *)s + r->digits_at, r->digits_len);
    w = PUT_LITERAL(w, J_DATE);
    w = put(w, (const char *)s + r->date->a, 10);
    w = PUT_LITERAL(w, J_TITLE);
    w = put_string(w, s + r->title->a, r->title->b - r->title->a);
    w = PUT_LITERAL(w, J_TEXT);
    w = put_string(w, s + r->text->a, r->text->b - r->text->a);
    w = PUT_LITERAL(w, J_EXTRA);
    for (int k = 0; k < r->n_extras; k++) {
        const Field *f = r->extras[k];
        if (k) {
            *w++ = ',';
        }
        *w++ = '"';
        w = put_name(w, s, f);
        w = PUT_LITERAL(w, "\":\"");
        w = put_string(w, s + f->a, f->b - f->a);
        *w++ = '"';
    }
    w = PUT_LITERAL(w, J_SHA256);
    if (put_digest(w, s, r) < 0) {
        Py_DECREF(event);
        return NULL;
    }
    w = PUT_LITERAL(w + 64, J_TAIL);
    if (w != PyBytes_AS_STRING(event) + event_len) {
        Py_DECREF(event);
        PyErr_SetString(PyExc_SystemError, "articles: the event's length was miscounted");
        return NULL;
    }
    PyObject *items[6] = {PyLong_FromSsize_t(index), NULL, NULL, event, Py_NewRef(Py_None), NULL};
    if (items[0] != NULL) {
        items[1] = event_id(id_prefix, id_digits, id_len);
    }
    if (items[1] != NULL) {
        items[2] = PyBytes_FromStringAndSize((const char *)s + r->digits_at, r->digits_len);
    }
    if (items[2] != NULL) {
        items[5] = PyLong_FromLongLong(r->fn_value);
    }
    return make_outcome(type, items, 6);
}

/* The length of one record's event. */
static Py_ssize_t
event_length(const Envelope *e, const Rec *r, long long first_index, Py_ssize_t index)
{
    char digits[24];
    return e->buf.len + format_int(digits, first_index + index) + format_int(digits, index) +
           2 * r->digits_len + LIT_LEN(J_DATE) + 10 + LIT_LEN(J_TITLE) + r->title_json + LIT_LEN(J_TEXT) +
           r->text_json + LIT_LEN(J_EXTRA) + r->extra_json + LIT_LEN(J_SHA256) + 64 + LIT_LEN(J_TAIL);
}

/* An int argument as a long long; 0 with *ok = 0 when it is not an int that fits (not for me).
 * Exactly int: orjson writes a bool as true, an int subclass as it may. */
static long long
int_arg(PyObject *obj, int *ok)
{
    if (!PyLong_CheckExact(obj)) {
        *ok = 0;
        return 0;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
    }
    return v;
}

PyDoc_STRVAR(
    articles_doc,
    "articles(outcome_type, payload, id_prefix, first_index, source_uri, time, topic, partition, offset,\n"
    "         traceparent, max_records, max_title_chars, max_text_chars, max_event_bytes, /)\n--\n\n"
    "The article outcomes of a clean payload of valid records, else None (the Python path decides).\n"
    "Record i gets the id id_prefix + str(first_index + i); each event is at most max_event_bytes.\n"
    "Same results as service.core.events.process_payload_reference.");

static PyObject *
articles(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "articles expects 14 arguments");
        return NULL;
    }
    PyObject *outcome_type = args[0], *payload = args[1], *id_prefix = args[2], *source_uri = args[4];
    PyObject *time = args[5], *topic = args[6], *traceparent = args[9];
    if (!PyType_Check(outcome_type) || !PyType_IsSubtype((PyTypeObject *)outcome_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "outcome_type must be a tuple subclass");
        return NULL;
    }
    if (!PyUnicode_Check(id_prefix) || !PyUnicode_Check(source_uri) || !PyUnicode_Check(time) ||
        !PyUnicode_Check(topic) || (traceparent != Py_None && !PyUnicode_Check(traceparent))) {
        PyErr_SetString(PyExc_TypeError, "id_prefix, source_uri, time, topic and traceparent must be str");
        return NULL;
    }
    int ok = 1;
    long long first_index = int_arg(args[3], &ok);
    long long partition = int_arg(args[7], &ok);
    long long offset = int_arg(args[8], &ok);
    long long max_records = int_arg(args[10], &ok);
    long long max_title = int_arg(args[11], &ok);
    long long max_text = int_arg(args[12], &ok);
    long long max_event = int_arg(args[13], &ok);
    /* Not for me: no hashlib.sha256, a payload that is not bytes, an int beyond 64 bits, or ids whose
     * index could pass the largest int64 (a redrive origin of 10 digits is far from it). */
    if (!ok || sha256_new == NULL || !PyBytes_Check(payload) || first_index < 0 ||
        first_index > LLONG_MAX / 2) {
        Py_RETURN_NONE;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    if (n >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) {
        s += 3; /* one leading byte order mark */
        n -= 3;
    }
    int ascii;
    if (!utf8_valid(s, n, &ascii)) {
        Py_RETURN_NONE;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(id_prefix) < 0) {
        return NULL;
    }
#endif

    PyObject *result = NULL;
    Scan sc = {NULL, 0, 0, NULL, 0, 0};
    Rec *recs = NULL;
    Envelope env = {{NULL, 0, 0}, 0, 0, 0};
    PyObject *list = NULL;
    Py_ssize_t record_limit = max_records > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)max_records;
    int clean = scan_payload(&sc, s, n, record_limit);
    if (clean <= 0) {
        goto end; /* -1: the error set is raised; 0: not clean, not for me */
    }
    recs = PyMem_Malloc((size_t)sc.n_records * sizeof(Rec));
    if (recs == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    Py_ssize_t title_limit = max_title > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)max_title;
    Py_ssize_t text_limit = max_text > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)max_text;
    for (Py_ssize_t i = 0; i < sc.n_records; i++) {
        Py_ssize_t first = sc.firsts[i];
        Py_ssize_t stop = i + 1 < sc.n_records ? sc.firsts[i + 1] : sc.n_fields;
        if (!check_record(&recs[i], s, sc.fields + first, stop - first, ascii, title_limit, text_limit)) {
            goto end;
        }
    }
    if (build_envelope(&env, id_prefix, source_uri, time, topic, partition, offset, traceparent) < 0) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear(); /* a str with lone surrogates: let the Python path say what it says */
        }
        goto end;
    }
    for (Py_ssize_t i = 0; i < sc.n_records; i++) {
        if (event_length(&env, &recs[i], first_index, i) > max_event) {
            goto end; /* over the size limit: the Python path makes it a dead letter */
        }
    }
    list = PyList_New(sc.n_records);
    if (list == NULL) {
        goto end;
    }
    for (Py_ssize_t i = 0; i < sc.n_records; i++) {
        PyObject *outcome = record_outcome((PyTypeObject *)outcome_type, s, &recs[i], &env, id_prefix,
                                           first_index, i, event_length(&env, &recs[i], first_index, i));
        if (outcome == NULL) {
            goto end;
        }
        PyList_SET_ITEM(list, i, outcome);
    }
    result = list;
    list = NULL;

end:
    if (result == NULL && !PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
    Py_XDECREF(list);
    PyMem_Free(sc.fields);
    PyMem_Free(sc.firsts);
    PyMem_Free(recs);
    PyMem_Free(env.buf.data);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_clean", (PyCFunction)(void (*)(void))scan_clean, METH_FASTCALL, scan_clean_doc},
    {"articles", (PyCFunction)(void (*)(void))articles, METH_FASTCALL, articles_doc},
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
    init_escapes();
    if (str_digest == NULL) {
        str_digest = PyUnicode_InternFromString("digest");
        if (str_digest == NULL) {
            return NULL;
        }
    }
    if (sha256_new == NULL) {
        /* Held for the life of the process, as the module is (single-phase init). Without it,
         * articles() declines every payload and the Python path (which needs it too) decides. */
        PyObject *hashlib = PyImport_ImportModule("hashlib");
        if (hashlib != NULL) {
            sha256_new = PyObject_GetAttrString(hashlib, "sha256");
            Py_DECREF(hashlib);
        }
        if (sha256_new == NULL) {
            PyErr_Clear();
        }
    }
    return PyModule_Create(&module);
}
