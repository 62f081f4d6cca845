/* A transaction's fact as the rule engine reads it, written as JSON text in one pass
 * (rules/ruleset.py, RuleSet.decide): building a dict per transaction and dumping it cost more
 * than the engine's own matching (docs/performance.md).
 *
 * encode(fields, attrs, route_prefix, route, slow) -> the fact's members, without braces.
 * fields: (name, its JSON key and colon as bytes, the value types it takes (a bitmask), its
 * kind) for every attribute the rules read. A value of a type it takes, in the range written
 * without a check, goes as it is; any other value is `slow(name, value, kind)`'s text (which
 * checks its type and range, and raises ValueError). None when a string written as it is (the
 * route's, or an attribute's) is not valid Unicode (a lone surrogate), once every value is
 * checked: a wrong type elsewhere is the error then, as when the fact was a dict that failed
 * only when dumped. None at once when `slow`'s text is not valid Unicode (as the dict's
 * building failed there).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* rules/ruleset.py's _SHORT and _FAST_NUMBER, checked against them at import. */
#define SHORT 4096
#define FAST_NUMBER 1e15
enum { TAKES_FLOAT = 1, TAKES_INT = 2, TAKES_STR = 4, TAKES_BOOL = 8 };

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buffer;

static int put(Buffer *b, const char *text, Py_ssize_t n) {
    if (b->len + n > b->cap) {
        Py_ssize_t cap = (b->cap ? b->cap : 1024);
        while (cap < b->len + n)
            cap *= 2;
        char *data = PyMem_Realloc(b->data, (size_t)cap);
        if (data == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, (size_t)n);
    b->len += n;
    return 0;
}

/* A double as repr writes it (the shortest text that reads back the same), ".0" added to an
 * integral one: in the range the callers allow, never an exponent, which the engine cannot
 * read. */
static int put_double(Buffer *b, double x) {
    char *text = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL)
        return -1;
    int failed = put(b, text, (Py_ssize_t)strlen(text));
    PyMem_Free(text);
    return failed;
}

/* A string as orjson writes it: UTF-8, with '"', '\\' and the control characters escaped. */
static int put_string(Buffer *b, PyObject *value) {
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(value, &n);
    if (text == NULL)
        return -1;
    if (put(b, "\"", 1) < 0)
        return -1;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        char escaped[8];
        const char *form = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n"
                           : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b"
                           : c == '\f' ? "\\f" : NULL;
        if (form == NULL) {
            snprintf(escaped, sizeof escaped, "\\u%04x", c);
            form = escaped;
        }
        if (put(b, text + start, i - start) < 0 || put(b, form, (Py_ssize_t)strlen(form)) < 0)
            return -1;
        start = i + 1;
    }
    return put(b, text + start, n - start) < 0 ? -1 : put(b, "\"", 1);
}

/* A string written as it is: 0, or 1 when it is not valid Unicode (nothing written; the
 * caller says so once every value is checked); -1 on another error. */
static int put_checked(Buffer *b, PyObject *value) {
    if (put_string(b, value) == 0)
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return -1;
    PyErr_Clear();
    return 1;
}

/* The value written as it is, 1 (2 when it is a string that is not valid Unicode); 0 when it
 * needs the slow path; -1 on error. */
static int put_fast(Buffer *b, PyObject *value, long takes) {
    PyTypeObject *type = Py_TYPE(value);
    if (type == &PyFloat_Type && (takes & TAKES_FLOAT)) {
        double x = PyFloat_AS_DOUBLE(value);
        if (!((1e-4 <= x && x < FAST_NUMBER) || (-FAST_NUMBER < x && x <= -1e-4) || x == 0))
            return 0;
        return put_double(b, x) < 0 ? -1 : 1;
    }
    if (type == &PyLong_Type && (takes & TAKES_INT)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (overflow || !(-FAST_NUMBER < (double)v && (double)v < FAST_NUMBER))
            return 0;
        return put_double(b, (double)v) < 0 ? -1 : 1;   /* exact below 2**53 */
    }
    if (type == &PyUnicode_Type && (takes & TAKES_STR)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(value);
        Py_ssize_t nul = n > SHORT ? 0 : PyUnicode_FindChar(value, 0, 0, n, 1);
        if (nul != -1)
            return nul == -2 ? -1 : 0;
        int unencodable = put_checked(b, value);
        return unencodable < 0 ? -1 : 1 + unencodable;
    }
    if (type == &PyBool_Type && (takes & TAKES_BOOL)) {
        return (value == Py_True ? put(b, "true", 4) : put(b, "false", 5)) < 0 ? -1 : 1;
    }
    return 0;
}

static PyObject *encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_Check(args[0]) || !PyDict_Check(args[1]) || !PyBytes_Check(args[2])
        || !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "encode(fields, attrs, route_prefix, route, slow)");
        return NULL;
    }
    PyObject *fields = args[0], *attrs = args[1], *slow = args[4];
    Buffer b = {NULL, 0, 0};
    int unencodable = 0;
    if (put(&b, PyBytes_AS_STRING(args[2]), PyBytes_GET_SIZE(args[2])) < 0
        || (unencodable = put_checked(&b, args[3])) < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
        PyObject *field = PyTuple_GET_ITEM(fields, i);
        if (!PyTuple_Check(field) || PyTuple_GET_SIZE(field) != 4
            || !PyBytes_Check(PyTuple_GET_ITEM(field, 1)) || !PyLong_Check(PyTuple_GET_ITEM(field, 2))) {
            PyErr_SetString(PyExc_TypeError, "a field is (name, JSON key and colon, types taken, kind)");
            goto fail;
        }
        PyObject *name = PyTuple_GET_ITEM(field, 0), *prefix = PyTuple_GET_ITEM(field, 1);
        long takes = PyLong_AsLong(PyTuple_GET_ITEM(field, 2));
        if (takes == -1 && PyErr_Occurred())
            goto fail;
        PyObject *value = PyDict_GetItemWithError(attrs, name);
        if (value == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        if (value == Py_None)
            continue;
        if (put(&b, ",", 1) < 0 || put(&b, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix)) < 0)
            goto fail;
        Py_INCREF(value);   /* a `slow` call may run any code */
        int fast = put_fast(&b, value, takes);
        if (fast == 0) {
            PyObject *text = PyObject_CallFunctionObjArgs(slow, name, value,
                                                          PyTuple_GET_ITEM(field, 3), NULL);
            Py_ssize_t n;
            const char *utf8 = text ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
            int unicode = utf8 == NULL && text != NULL && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError);
            fast = utf8 == NULL || put(&b, utf8, n) < 0 ? -1 : 1;
            Py_XDECREF(text);
            if (unicode) {
                PyErr_Clear();
                Py_DECREF(value);
                PyMem_Free(b.data);
                Py_RETURN_NONE;
            }
        }
        Py_DECREF(value);
        if (fast < 0)
            goto fail;
        unencodable |= fast == 2;
    }
    if (unencodable) {
        PyMem_Free(b.data);
        Py_RETURN_NONE;
    }
    PyObject *result = PyUnicode_DecodeUTF8(b.data, b.len, NULL);
    PyMem_Free(b.data);
    return result;
fail:
    PyMem_Free(b.data);
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(fields, attrs, route_prefix, route, slow) -> the fact's JSON members"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rules._fact", "A transaction's fact as the engine reads it.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fact(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "SHORT", SHORT) < 0
        || PyModule_AddIntConstant(m, "FAST_NUMBER", (long)FAST_NUMBER) < 0
        || PyModule_AddIntConstant(m, "TAKES_FLOAT", TAKES_FLOAT) < 0
        || PyModule_AddIntConstant(m, "TAKES_INT", TAKES_INT) < 0
        || PyModule_AddIntConstant(m, "TAKES_STR", TAKES_STR) < 0
        || PyModule_AddIntConstant(m, "TAKES_BOOL", TAKES_BOOL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
