/* The replay's counters (`rules replay --recompute`), compiled: gateway/backtest.py says what
 * they count and why they are not the gateway's Velocity. This is its per-record part, moved
 * out of the interpreter because it is most of a recompute's time (docs/performance.md):
 * per record, every counter of the candidate is read and updated, and a record's provisional
 * updates are settled once its decision is known.
 *
 * The semantics are the velocity script's (state/velocity_script.py), kept value for value:
 * tests/gateway/test_backtest_counters.py gives this and the gateway's Velocity on a
 * MemoryBackend the same random traffic and requires the same features at every record.
 *
 * Python builds the counters' layout (RecomputedCounters) and keeps what needs the rule set's
 * own code: a decision's tier, a `where:` expression, the member digest (only to order members
 * last seen in the same ms at the cap) and the scaling of an amount that is not an int or a
 * float, the last three handed in as callables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* state/window.py: NUMBER_CAP, SUM_SCALE and DISTINCT_CAP; checked against it at import. */
#define NUMBER_CAP (((int64_t)1) << 52)
#define SUM_SCALE 10000
#define DISTINCT_CAP 1000
/* The expired markers are purged once the markers are twice what the last purge kept, and at
 * least this many (memory, not semantics: an expired marker reads as absent either way). Few
 * are live at a time (an event's live a few minutes): the dict stays small enough to be in
 * cache, where purging every 200,000 markers let it grow to a million. */
#define PURGE_AT_LEAST 4096
/* A record's ts (s) must be below this in magnitude (the year 318,000): a clock in ms then fits
 * in 64 bits with any window subtracted. A larger one is a log in another unit. */
#define MAX_TS 1e13

enum kind { WINDOW, RUNNING, DISTINCT, FIRST_SEEN };
enum marker { OUTRIGHT, PROVISIONAL, LATE };   /* what an event's marker guards */

static int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Totals are Python ints in the code this mirrors (only their top saturates, at NUMBER_CAP;
 * negative amounts can take a sum down without bound): 128 bits hold any a log can make. */
typedef __int128 wide;

static wide minw(wide a, wide b) { return a < b ? a : b; }
static wide maxw(wide a, wide b) { return a > b ? a : b; }

static PyObject *long_from_wide(wide v) {
    if (v >= INT64_MIN && v <= INT64_MAX)
        return PyLong_FromLongLong((long long)v);
    PyObject *high = PyLong_FromLongLong((long long)(v >> 64));
    PyObject *low = PyLong_FromUnsignedLongLong((unsigned long long)v);
    PyObject *bits = PyLong_FromLong(64), *shifted = NULL, *result = NULL;
    if (high && low && bits && (shifted = PyNumber_Lshift(high, bits)))
        result = PyNumber_Add(shifted, low);
    Py_XDECREF(high);
    Py_XDECREF(low);
    Py_XDECREF(bits);
    Py_XDECREF(shifted);
    return result;
}

/* ---- one key's values ------------------------------------------------------------------ */

typedef struct { int64_t index; wide value; } Bucket;   /* a window's bucket */
/* A distinct member, last seen at: its text (the store keeps its digest, which is only needed to
 * order members last seen at the same time, so it is computed only then). */
typedef struct { PyObject *text; int64_t at; } Member;

/* A key's values. A window: `number` is the total of its buckets, `items` its buckets sorted by
 * index (no expiry: a read prunes what the store would have expired). Running: `number` is the
 * total. Distinct: `items` its members. first_seen: `number` the mark's ms, `event` the event
 * of a provisional mark (NULL once final). */
typedef struct {
    PyObject_HEAD
    int kind;
    double expiry;
    wide number;
    PyObject *event;
    void *items;
    Py_ssize_t len, cap;
} Entry;

static void Entry_dealloc(Entry *e) {
    if (e->kind == DISTINCT)
        for (Py_ssize_t i = 0; i < e->len; i++)
            Py_DECREF(((Member *)e->items)[i].text);
    PyMem_Free(e->items);
    Py_XDECREF(e->event);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._backtest_counters.Entry",
    .tp_basicsize = sizeof(Entry),
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

static Entry *entry_new(int kind) {
    Entry *e = PyObject_New(Entry, &EntryType);
    if (e == NULL)
        return NULL;
    e->kind = kind;
    e->expiry = 0;
    e->number = 0;
    e->event = NULL;
    e->items = NULL;
    e->len = e->cap = 0;
    return e;
}

/* What one entity value holds for its group's counters, a slot each (NULL when nothing): the
 * Entry of a counter keyed by the entity alone, and for a counter with more key attributes a
 * dict of their values -> Entry. One lookup a record finds them all; the dicts are the
 * entity's own, small, where one dict per counter over every entity made a lookup each, in a
 * dict of millions of tuples. */
typedef struct {
    PyObject_VAR_HEAD
    PyObject *item[1];
} Slots;

static void Slots_dealloc(Slots *s) {
    for (Py_ssize_t i = 0; i < Py_SIZE(s); i++)
        Py_XDECREF(s->item[i]);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyTypeObject SlotsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._backtest_counters.Slots",
    .tp_basicsize = offsetof(Slots, item),
    .tp_itemsize = sizeof(PyObject *),
    .tp_dealloc = (destructor)Slots_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* One event's markers: an event updates a counter once, its step-up repeats only read. A marker
 * per (kind: outright, provisional or late; the entity, i.e. the group; the entity's value),
 * set until its deadline (s); a marker taken back reads as absent (deadline -inf). Looked up
 * by event, once a record: a dict of (kind, entity, value, event) tuples cost a tuple and a
 * lookup in a dict of every live event for each. */
typedef struct { int code; PyObject *value; double until; } Mark;

typedef struct {
    PyObject_HEAD
    Mark *marks;
    Py_ssize_t len, cap;
    double last;           /* the latest deadline: the event is forgotten once it passes */
} Marks;

static void Marks_dealloc(Marks *m) {
    for (Py_ssize_t i = 0; i < m->len; i++)
        Py_DECREF(m->marks[i].value);
    PyMem_Free(m->marks);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyTypeObject MarksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._backtest_counters.Marks",
    .tp_basicsize = sizeof(Marks),
    .tp_dealloc = (destructor)Marks_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* An array of `len` items of `size` bytes, `*cap` of them allocated, with room for one more:
 * the array, moved when it grew; NULL on error. */
static void *reserve(void *items, Py_ssize_t len, Py_ssize_t *cap, size_t size) {
    if (len < *cap)
        return items;
    Py_ssize_t more = *cap ? *cap * 2 : 4;
    void *grown = PyMem_Realloc(items, (size_t)more * size);
    if (grown == NULL)
        return PyErr_NoMemory();
    *cap = more;
    return grown;
}

static int entry_reserve(Entry *e, size_t size) {
    void *items = reserve(e->items, e->len, &e->cap, size);
    if (items == NULL)
        return -1;
    e->items = items;
    return 0;
}

/* ---- counters -------------------------------------------------------------------------- */

typedef struct {
    int kind, is_sum, on_attempt;
    PyObject *feature;     /* the rule attribute */
    PyObject *first;       /* the first key attribute's name */
    PyObject *rest;        /* tuple: the other key attributes' names */
    PyObject *field;       /* what a sum adds or a distinct counts; NULL for count/first_seen */
    PyObject *where;       /* attrs -> bool; NULL when it counts every transaction */
    int64_t width, span;   /* a window's bucket width (ms) and how many buckets a read sums */
    int64_t window_ms;     /* a distinct counter's window, 0 without */
    double ttl_s;
    Py_ssize_t index;      /* in Counters.counters */
    struct Group *group;
    Py_ssize_t slot;       /* its slot in the group's Slots */
} Counter;

/* A counter's key: the entity's value (text) and, when the key has more attributes, their
 * values (text, or a tuple of texts); `rest` NULL when it has not. */
typedef struct { PyObject *first, *rest; } Key;

typedef struct Group {
    PyObject *name;        /* the first key attribute the group's counters share */
    PyObject *slots;       /* entity value -> Slots */
    Py_ssize_t n_slots;
    PyObject *last_value;  /* the value last looked up, and its Slots (NULL when it had none) */
    Slots *last_slots;
    Py_ssize_t n_outright, n_provisional, n_late;
    Counter **outright;    /* read, and counted outright when on: attempt */
    Counter **provisional; /* on: allow count/sum/first_seen, applied provisionally */
    Counter **late;        /* on: allow distinct, counted once forwarded */
} Group;

/* A provisional update of this record, to be settled: an increment to take back or a
 * first-seen mark to make final. */
typedef struct {
    Counter *counter;
    Key key;               /* its own references */
    int64_t value;
} Update;

typedef struct {
    PyObject_HEAD
    Counter *counters;
    Py_ssize_t n_counters;
    Group *groups;
    Py_ssize_t n_groups;
    Counter **resets;      /* reset_on: strong_auth */
    Py_ssize_t n_resets;
    PyObject **results;    /* this record's value of each counter, while it is computed */
    PyObject *markers;     /* event -> Marks */
    Marks *marks;          /* this record's event's, once looked up */
    Py_ssize_t purge_at;   /* purge the markers when they are this many */
    PyObject *digests;     /* member text -> its digest, an int: values recur */
    PyObject *digest_fn, *scaled_fn;
    PyObject *differences; /* feature -> records where the recomputed value differs */
    double event_ttl_s;
    int64_t settle_ms;
    int64_t now;
    double now_s;
    PyObject *event;
    PyObject *attrs;       /* the last record's attributes, as features() returned them */
    Py_ssize_t *pending;   /* this record's provisional markers: their places in its Marks */
    Py_ssize_t n_pending;
    Update *updates;
    Py_ssize_t n_updates, cap_updates;
    PyObject *amount;      /* the last amount scaled, and its scaled value (0 when none) */
    int64_t amount_scaled;
} Counters;

static PyObject *s_ts, *s_features, *s_event_id, *s_request_id, *s_empty;

/* ---- helpers on the record ------------------------------------------------------------- */

/* attrs[name] (borrowed), NULL when absent or None. */
static PyObject *attr(PyObject *attrs, PyObject *name) {
    PyObject *value = PyDict_GetItemWithError(attrs, name);
    return value == Py_None ? NULL : value;
}

/* The key of `c` for these attributes: 1, with `key->rest` a new reference (or NULL); 0 when a
 * key attribute is absent; -1 on error. `key->first` is `first`, borrowed. */
static int counter_key(Counter *c, PyObject *first, PyObject *attrs, Key *key) {
    Py_ssize_t n = PyTuple_GET_SIZE(c->rest);
    key->first = first;
    key->rest = NULL;
    if (n == 0)
        return 1;
    PyObject *rest = n > 1 ? PyTuple_New(n) : NULL;
    if (n > 1 && rest == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = attr(attrs, PyTuple_GET_ITEM(c->rest, i));
        PyObject *text = value ? PyObject_Str(value) : NULL;
        if (text == NULL) {
            Py_XDECREF(rest);
            return PyErr_Occurred() ? -1 : 0;
        }
        if (n == 1)
            rest = text;
        else
            PyTuple_SET_ITEM(rest, i, text);
    }
    key->rest = rest;
    return 1;
}

static int dict_discard(PyObject *dict, PyObject *key) {
    int has = PyDict_Contains(dict, key);
    return has <= 0 ? has : PyDict_DelItem(dict, key);
}

/* 1 when `c` counts this transaction (its where: holds), 0 when not, -1 on error. */
static int counts(Counter *c, PyObject *attrs) {
    if (c->where == NULL)
        return 1;
    PyObject *held = PyObject_CallOneArg(c->where, attrs);
    if (held == NULL)
        return -1;
    int result = PyObject_IsTrue(held);
    Py_DECREF(held);
    return result;
}

static int64_t clamp(int64_t v) { return v > NUMBER_CAP ? NUMBER_CAP : v < -NUMBER_CAP ? -NUMBER_CAP : v; }

/* An int or a float in units of 1/SUM_SCALE, as state.window.scaled_amount computes it:
 * Decimal(str(value)) * SUM_SCALE rounded half to even, clamped. A float's str is its shortest
 * repr (at most 17 digits), so the decimal digits are worked on directly; exact. 0 when it is
 * not finite (scaled_amount: None, which adds nothing). */
static int scaled_number(PyObject *value, int64_t *scaled) {
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (overflow || v > NUMBER_CAP / SUM_SCALE || v < -NUMBER_CAP / SUM_SCALE)
            *scaled = (overflow ? overflow < 0 : v < 0) ? -NUMBER_CAP : NUMBER_CAP;
        else
            *scaled = clamp(v * SUM_SCALE);
        return 0;
    }
    double x = PyFloat_AS_DOUBLE(value);
    if (!isfinite(x)) {
        *scaled = 0;
        return 0;
    }
    char *text = PyOS_double_to_string(x, 'r', 0, 0, NULL);
    if (text == NULL)
        return -1;
    /* text = [-]digits[.digits][e[+-]digits]: value = digits * 10^exponent */
    char digits[40];
    int n = 0, exponent = 0, negative = 0, after_point = 0;
    const char *p = text;
    if (*p == '-') {
        negative = 1;
        p++;
    }
    for (; *p && *p != 'e' && n < (int)sizeof(digits); p++) {
        if (*p == '.') {
            after_point = 1;
            continue;
        }
        exponent -= after_point;
        if (n > 0 || *p != '0')    /* leading zeros dropped */
            digits[n++] = *p;
    }
    if (*p == 'e')
        exponent += atoi(p + 1);
    PyMem_Free(text);
    int shift = exponent + 4;      /* * SUM_SCALE */
    int64_t q = 0;
    if (n == 0) {
        *scaled = 0;
        return 0;
    }
    if (shift >= 0) {
        if (n + shift > 16) {      /* at least 10^16, past NUMBER_CAP */
            *scaled = negative ? -NUMBER_CAP : NUMBER_CAP;
            return 0;
        }
        for (int i = 0; i < n; i++)
            q = q * 10 + (digits[i] - '0');
        for (int i = 0; i < shift; i++)
            q *= 10;
    } else {
        int keep = n + shift;      /* digits left of the point once scaled */
        for (int i = 0; i < keep; i++)
            q = q * 10 + (digits[i] - '0');
        /* the dropped part against a half: above, below, or exactly (then to even) */
        int cmp = -1;
        if (keep >= 0 && keep < n) {
            cmp = digits[keep] > '5' ? 1 : digits[keep] < '5' ? -1 : 0;
            for (int i = keep + 1; cmp == 0 && i < n; i++)
                if (digits[i] != '0')
                    cmp = 1;
        }
        if (cmp > 0 || (cmp == 0 && (q & 1)))
            q++;
    }
    *scaled = clamp(negative ? -q : q);
    return 0;
}

/* What a count or sum adds: 1, or the amount in units of 1/SUM_SCALE (0 when none). The last
 * amount is remembered: a record's sums all scale the same value. */
static int increment(Counters *rc, Counter *c, PyObject *attrs, int64_t *inc) {
    if (!c->is_sum) {
        *inc = 1;
        return 0;
    }
    PyObject *value = PyDict_GetItemWithError(attrs, c->field);
    if (value == NULL && PyErr_Occurred())
        return -1;
    if (value == NULL)
        value = Py_None;
    if (value != rc->amount && (PyFloat_CheckExact(value) || PyLong_CheckExact(value))) {
        int64_t amount;
        if (scaled_number(value, &amount) < 0)
            return -1;
        Py_INCREF(value);
        Py_XSETREF(rc->amount, value);
        rc->amount_scaled = amount;
    } else if (value != rc->amount) {   /* a string, a bool, None: as the store reads it */
        PyObject *scaled = PyObject_CallOneArg(rc->scaled_fn, value);
        if (scaled == NULL)
            return -1;
        int64_t amount = 0;
        if (scaled != Py_None) {
            amount = PyLong_AsLongLong(scaled);
            if (amount == -1 && PyErr_Occurred()) {
                Py_DECREF(scaled);
                return -1;
            }
        }
        Py_DECREF(scaled);
        Py_INCREF(value);
        Py_XSETREF(rc->amount, value);
        rc->amount_scaled = amount;
    }
    *inc = rc->amount_scaled;
    return 0;
}

/* The member's digest, as an integer (the hex digest's order is the integer's). */
static int member_digest(Counters *rc, PyObject *text, uint64_t *digest) {
    PyObject *known = PyDict_GetItemWithError(rc->digests, text);
    if (known == NULL) {
        if (PyErr_Occurred())
            return -1;
        PyObject *hex = PyObject_CallOneArg(rc->digest_fn, text);
        if (hex == NULL)
            return -1;
        known = PyLong_FromUnicodeObject(hex, 16);
        Py_DECREF(hex);
        if (known == NULL || PyDict_SetItem(rc->digests, text, known) < 0) {
            Py_XDECREF(known);
            return -1;
        }
        Py_DECREF(known);   /* the dict holds it */
    }
    *digest = PyLong_AsUnsignedLongLong(known);
    return (*digest == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* The entity value's Slots in its group (borrowed), created when `create`; NULL without an
 * error when it has none. The last one found is remembered: a record's counters of one group
 * look up the same value object in turn. */
static Slots *group_slots(struct Group *g, PyObject *value, int create) {
    if (value == g->last_value)
        return g->last_slots;
    Slots *s = (Slots *)PyDict_GetItemWithError(g->slots, value);
    if (s == NULL) {
        if (PyErr_Occurred() || !create)
            return NULL;
        if ((s = PyObject_NewVar(Slots, &SlotsType, g->n_slots)) == NULL)
            return NULL;
        memset(s->item, 0, (size_t)g->n_slots * sizeof(PyObject *));
        int failed = PyDict_SetItem(g->slots, value, (PyObject *)s);
        Py_DECREF(s);   /* the dict holds it, and never lets it go */
        if (failed)
            return NULL;
    }
    Py_INCREF(value);
    Py_XSETREF(g->last_value, value);
    g->last_slots = s;
    return s;
}

/* The key's entry (borrowed), NULL without an error when absent. */
static Entry *entry_get(Counter *c, const Key *k) {
    Slots *s = group_slots(c->group, k->first, 0);
    PyObject *item = s ? s->item[c->slot] : NULL;
    if (item == NULL || k->rest == NULL)
        return (Entry *)item;
    return (Entry *)PyDict_GetItemWithError(item, k->rest);
}

/* Forget the key's entry, if any. */
static int entry_drop(Counter *c, const Key *k) {
    Slots *s = group_slots(c->group, k->first, 0);
    if (s == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (k->rest == NULL) {
        Py_CLEAR(s->item[c->slot]);
        return 0;
    }
    PyObject *dict = s->item[c->slot];
    return dict == NULL ? 0 : dict_discard(dict, k->rest);
}

/* The key's entry (borrowed), or NULL when absent or expired (then dropped, as the store's
 * expiry would have). Windows keep no expiry. */
static Entry *live(Counters *rc, Counter *c, const Key *k) {
    Entry *e = entry_get(c, k);
    if (e != NULL && c->kind != WINDOW && e->expiry <= rc->now_s) {
        if (entry_drop(c, k) < 0)
            return NULL;
        e = NULL;
    }
    return e;
}

/* A new entry stored under the key in place of none (borrowed: its place holds it). */
static Entry *store_new(Counter *c, const Key *k) {
    Slots *s = group_slots(c->group, k->first, 1);
    if (s == NULL)
        return NULL;
    Entry *e = entry_new(c->kind);
    if (e == NULL)
        return NULL;
    if (k->rest == NULL) {
        s->item[c->slot] = (PyObject *)e;
        return e;
    }
    if (s->item[c->slot] == NULL && (s->item[c->slot] = PyDict_New()) == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    int failed = PyDict_SetItem(s->item[c->slot], k->rest, (PyObject *)e);
    Py_DECREF(e);
    return failed ? NULL : e;
}

static int record_update(Counters *rc, Counter *c, const Key *k, int64_t value) {
    Update *updates = reserve(rc->updates, rc->n_updates, &rc->cap_updates, sizeof(Update));
    if (updates == NULL)
        return -1;
    rc->updates = updates;
    Py_INCREF(k->first);
    Py_XINCREF(k->rest);
    rc->updates[rc->n_updates++] = (Update){c, *k, value};
    return 0;
}

static PyObject *number(Counter *c, wide total) {
    if (total > NUMBER_CAP)
        total = NUMBER_CAP;
    if (!c->is_sum)
        return long_from_wide(total);
    if (total >= -(((wide)1) << 53))   /* exact as a double: one rounding, as Python's */
        return PyFloat_FromDouble((double)total / SUM_SCALE);
    /* Below, the double would round twice: Python's own int division. */
    PyObject *big = long_from_wide(total), *scale = PyLong_FromLong(SUM_SCALE);
    PyObject *result = big && scale ? PyNumber_TrueDivide(big, scale) : NULL;
    Py_XDECREF(big);
    Py_XDECREF(scale);
    return result;
}

/* ---- observe: the feature value, after this record's update when `update` --------------
 * `marker` >= 0: a provisional update (on: allow), recorded to be settled under that marker;
 * a window or running total then reads without it. -1: outright. -2: provisional, but this
 * event already counted (nothing is updated; it reads as a provisional one). */

static PyObject *observe_window(Counters *rc, Counter *c, const Key *k, PyObject *attrs,
                                int update, Py_ssize_t marker) {
    int64_t inc;
    if (increment(rc, c, attrs, &inc) < 0)
        return NULL;
    Entry *e = entry_get(c, k);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    int64_t cur = floordiv(rc->now, c->width);
    wide added = 0;
    if (update && inc) {
        if (e == NULL && (e = store_new(c, k)) == NULL)
            return NULL;
        Bucket *b = e->items;
        Py_ssize_t at = e->len;
        while (at > 0 && b[at - 1].index > cur)   /* the buckets stay sorted by index */
            at--;
        if (at == 0 || b[at - 1].index != cur) {
            if (entry_reserve(e, sizeof(Bucket)) < 0)
                return NULL;
            b = e->items;
            memmove(b + at + 1, b + at, (size_t)(e->len - at) * sizeof(Bucket));
            b[at] = (Bucket){cur, 0};
            e->len++;
            at++;
        }
        Bucket *bucket = &b[at - 1];
        wide before = bucket->value, result = before + inc;
        wide kept = result < NUMBER_CAP ? result : NUMBER_CAP;
        bucket->value = kept;
        e->number += kept - before;
        added = inc - maxw(0, result - NUMBER_CAP);
        if (marker >= 0 && record_update(rc, c, k, inc) < 0)
            return NULL;
    } else if (e == NULL) {
        return PyLong_FromLong(0);
    }
    int64_t oldest = cur - c->span + 1;
    Bucket *b = e->items;
    Py_ssize_t gone = 0;
    while (gone < e->len && b[gone].index < oldest)
        e->number -= b[gone++].value;
    if (gone) {
        memmove(b, b + gone, (size_t)(e->len - gone) * sizeof(Bucket));
        e->len -= gone;
    }
    return number(c, marker != -1 ? e->number - added : e->number);
}

static PyObject *observe_running(Counters *rc, Counter *c, const Key *k, PyObject *attrs,
                                 int update, Py_ssize_t marker) {
    int64_t inc;
    if (increment(rc, c, attrs, &inc) < 0)
        return NULL;
    Entry *e = live(rc, c, k);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    wide total = e ? e->number : 0;
    if (update && inc) {
        wide result = total + inc;
        total = minw(NUMBER_CAP, result);
        if (e == NULL && (e = store_new(c, k)) == NULL)
            return NULL;
        e->number = total;
        e->expiry = rc->now_s + c->ttl_s;
        if (marker >= 0) {
            total -= inc - maxw(0, result - NUMBER_CAP);
            if (record_update(rc, c, k, inc) < 0)
                return NULL;
        }
    }
    return number(c, total);
}

static int same_text(PyObject *a, PyObject *b) {
    return a == b || (PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b)
                      && PyObject_Hash(a) == PyObject_Hash(b) && PyUnicode_Compare(a, b) == 0);
}

/* Drop the least recently seen member, by time then by digest (the store's sorted-set order). */
static int drop_oldest(Counters *rc, Entry *e) {
    Member *m = e->items;
    Py_ssize_t oldest = 0, ties = 0;
    for (Py_ssize_t j = 1; j < e->len; j++) {
        if (m[j].at < m[oldest].at) {
            oldest = j;
            ties = 0;
        } else if (m[j].at == m[oldest].at) {
            ties++;
        }
    }
    if (ties) {   /* rare: members last seen in the same ms; their digests decide */
        uint64_t least, digest;
        if (member_digest(rc, m[oldest].text, &least) < 0)
            return -1;
        for (Py_ssize_t j = oldest + 1; j < e->len; j++) {
            if (m[j].at != m[oldest].at)
                continue;
            if (member_digest(rc, m[j].text, &digest) < 0)
                return -1;
            if (digest < least) {
                least = digest;
                oldest = j;
            }
        }
    }
    Py_DECREF(m[oldest].text);
    m[oldest] = m[--e->len];
    return 0;
}

static PyObject *observe_distinct(Counters *rc, Counter *c, const Key *k, PyObject *attrs,
                                  int update) {
    Entry *e = live(rc, c, k);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    PyObject *member = update ? attr(attrs, c->field) : NULL;
    if (member == NULL && PyErr_Occurred())
        return NULL;
    if (member == NULL && e == NULL)
        return PyLong_FromLong(0);
    if (e == NULL && (e = store_new(c, k)) == NULL)   /* a member comes: it is kept */
        return NULL;
    Member *m = e->items;
    if (c->window_ms > 0) {   /* members last seen a window ago or earlier leave */
        int64_t until = rc->now - c->window_ms;
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < e->len; i++) {
            if (m[i].at > until)
                m[kept++] = m[i];
            else
                Py_DECREF(m[i].text);
        }
        e->len = kept;
    }
    if (member != NULL) {
        PyObject *text = PyObject_Str(member);   /* members are told apart by their text */
        if (text == NULL)
            return NULL;
        Py_ssize_t i = 0;
        while (i < e->len && !same_text(m[i].text, text))
            i++;
        if (i < e->len) {
            Py_DECREF(text);
            m[i].at = rc->now;
        } else {
            if (entry_reserve(e, sizeof(Member)) < 0) {
                Py_DECREF(text);
                return NULL;
            }
            m = e->items;
            m[e->len++] = (Member){text, rc->now};
            if (e->len > DISTINCT_CAP && drop_oldest(rc, e) < 0)
                return NULL;
        }
        e->expiry = rc->now_s + c->ttl_s;
    }
    return PyLong_FromSsize_t(e->len);
}

static PyObject *observe_first_seen(Counters *rc, Counter *c, const Key *k, int update,
                                    Py_ssize_t marker) {
    Entry *e = live(rc, c, k);
    if (e == NULL && PyErr_Occurred())
        return NULL;
    if (update) {
        if (e == NULL) {
            if ((e = store_new(c, k)) == NULL)
                return NULL;
            e->number = rc->now;
            if (marker != -1) {   /* provisional: the event's until settled */
                Py_INCREF(rc->event);
                e->event = rc->event;
            }
        }
        e->expiry = rc->now_s + c->ttl_s;
        if (marker >= 0 && record_update(rc, c, k, rc->now) < 0)
            return NULL;
    }
    if (e == NULL || (e->event != NULL && rc->now - e->number < rc->settle_ms))
        Py_RETURN_NONE;
    return PyLong_FromLongLong(floordiv(rc->now - (int64_t)e->number, 1000));
}

static PyObject *observe(Counters *rc, Counter *c, const Key *k, PyObject *attrs, int update,
                         Py_ssize_t marker) {
    switch (c->kind) {
    case WINDOW: return observe_window(rc, c, k, attrs, update, marker);
    case RUNNING: return observe_running(rc, c, k, attrs, update, marker);
    case DISTINCT: return observe_distinct(rc, c, k, attrs, update);
    default: return observe_first_seen(rc, c, k, update, marker);
    }
}

/* ---- settling a provisional update ------------------------------------------------------ */

/* Take back a provisional increment. A number that saturated kept less than it is asked to
 * give back: withdrawing a positive increment stops at zero (as in the script). */
static int undo(Counters *rc, Counter *c, const Key *k, int64_t inc) {
    wide floor = inc > 0 ? 0 : -NUMBER_CAP;
    if (c->kind == RUNNING) {
        Entry *e = live(rc, c, k);
        if (e != NULL)
            e->number = maxw(floor, e->number - inc);
        return e == NULL && PyErr_Occurred() ? -1 : 0;
    }
    Entry *e = entry_get(c, k);
    if (e == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int64_t index = floordiv(rc->now, c->width);   /* the bucket of its time: this record's */
    Bucket *b = e->items;
    for (Py_ssize_t i = e->len - 1; i >= 0; i--) {
        if (b[i].index == index) {
            wide value = maxw(floor, b[i].value - inc);
            e->number += value - b[i].value;
            b[i].value = value;
            break;
        }
    }
    return 0;
}

/* Make this request's own provisional mark final, or take it back. */
static int settle_mark(Counters *rc, Counter *c, const Key *k, int64_t ms, int forwarded) {
    Entry *e = live(rc, c, k);
    if (e == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (e->event == NULL || e->number != ms)
        return 0;   /* another request's mark, or a final one */
    int same = PyObject_RichCompareBool(e->event, rc->event, Py_EQ);
    if (same <= 0)
        return same;
    if (!forwarded)
        return entry_drop(c, k);
    Py_CLEAR(e->event);
    return 0;
}

/* ---- the record ------------------------------------------------------------------------- */

/* Set this event's marker (kind, entity, value) unless it is live: 1 when the event updates
 * under it, 0 when it already did, -1 on error. `index` gets its place in the event's Marks. */
static int mark(Counters *rc, int kind, Py_ssize_t group, PyObject *value, Py_ssize_t *index) {
    if (rc->marks == NULL) {   /* the event's markers, looked up once a record */
        Marks *found = (Marks *)PyDict_GetItemWithError(rc->markers, rc->event);
        if (found == NULL) {
            if (PyErr_Occurred() || (found = PyObject_New(Marks, &MarksType)) == NULL)
                return -1;
            found->marks = NULL;
            found->len = found->cap = 0;
            found->last = -INFINITY;
            int failed = PyDict_SetItem(rc->markers, rc->event, (PyObject *)found);
            Py_DECREF(found);
            if (failed)
                return -1;
        }
        rc->marks = (Marks *)Py_NewRef(found);
    }
    Marks *m = rc->marks;
    int code = kind * (int)rc->n_groups + (int)group;
    double until = rc->now_s + rc->event_ttl_s;
    Py_ssize_t i = 0;
    while (i < m->len && !(m->marks[i].code == code && same_text(m->marks[i].value, value)))
        i++;
    *index = i;
    if (i < m->len) {
        if (m->marks[i].until > rc->now_s)
            return 0;
        m->marks[i].until = until;
    } else {
        Mark *marks = reserve(m->marks, m->len, &m->cap, sizeof(Mark));
        if (marks == NULL)
            return -1;
        m->marks = marks;
        m->marks[m->len++] = (Mark){code, Py_NewRef(value), until};
    }
    if (until > m->last)
        m->last = until;
    if (PyDict_GET_SIZE(rc->markers) >= rc->purge_at) {   /* the events of live markers stay */
        PyObject *k, *v, *live_markers = PyDict_New();
        Py_ssize_t pos = 0;
        if (live_markers == NULL)
            return -1;
        while (PyDict_Next(rc->markers, &pos, &k, &v))
            if (((Marks *)v)->last > rc->now_s && PyDict_SetItem(live_markers, k, v) < 0) {
                Py_DECREF(live_markers);
                return -1;
            }
        Py_SETREF(rc->markers, live_markers);
        rc->purge_at = 2 * PyDict_GET_SIZE(live_markers);
        if (rc->purge_at < PURGE_AT_LEAST)
            rc->purge_at = PURGE_AT_LEAST;
    }
    return 1;
}

static void clear_updates(Counters *rc) {
    for (Py_ssize_t i = 0; i < rc->n_updates; i++) {
        Py_DECREF(rc->updates[i].key.first);
        Py_XDECREF(rc->updates[i].key.rest);
    }
    rc->n_updates = 0;
}

/* Counters built but not initialised (Counters.__new__ alone) have nothing to work on. */
static int ready(Counters *rc) {
    if (rc->differences == NULL)
        PyErr_SetString(PyExc_RuntimeError, "Counters not initialised");
    return rc->differences != NULL;
}

/* features(record) -> the record's attributes with the counters recomputed at its time. */
static PyObject *Counters_features(Counters *rc, PyObject *record) {
    if (!ready(rc))
        return NULL;
    if (!PyDict_Check(record)) {
        PyErr_SetString(PyExc_TypeError, "a record is a dict");
        return NULL;
    }
    PyObject *ts = PyDict_GetItemWithError(record, s_ts);
    if (ts != NULL && (PyLong_Check(ts) || PyFloat_Check(ts))) {
        double t = PyFloat_AsDouble(ts);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(fabs(t) < MAX_TS)) {   /* the clock's ms must fit, with a window subtracted */
            PyErr_Format(PyExc_ValueError, "ts %R is not a Unix time in seconds", ts);
            return NULL;
        }
        rc->now = (int64_t)floor(t * 1000.0);
        rc->now_s = t;
    } else if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *logged = PyDict_GetItemWithError(record, s_features);
    if (logged == NULL || !PyDict_Check(logged)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a record's features are a dict");
        return NULL;
    }
    /* The logged attributes but the counters' (a copy, then the counters' taken out, costs a
     * fraction of building it key by key). */
    PyObject *attrs = PyDict_Copy(logged);
    if (attrs == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < rc->n_counters; i++)
        if (dict_discard(attrs, rc->counters[i].feature) < 0)
            goto fail;
    /* The event: its id, else the request's, else "". */
    PyObject *event = NULL;
    PyObject *ids[2] = {s_event_id, s_request_id};
    for (int i = 0; i < 2 && event == NULL; i++) {
        PyObject *id = PyDict_GetItemWithError(record, ids[i]);
        if (id == NULL && PyErr_Occurred())
            goto fail;
        int truthy = id ? PyObject_IsTrue(id) : 0;
        if (truthy < 0)
            goto fail;
        if (truthy && (event = PyObject_Str(id)) == NULL)
            goto fail;
    }
    if (event == NULL) {
        Py_INCREF(s_empty);
        event = s_empty;
    }
    Py_XSETREF(rc->event, event);
    Py_CLEAR(rc->marks);
    rc->n_pending = 0;
    clear_updates(rc);

    /* Each counter's value, set on attrs once every counter is read: a where: or key reads
     * the transaction only. */
    for (Py_ssize_t g = 0; g < rc->n_groups; g++) {
        Group *group = &rc->groups[g];
        PyObject *value = attr(attrs, group->name);
        if (value == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        PyObject *first = PyObject_Str(value);
        if (first == NULL)
            goto fail;
        for (int part = 0; part < 2; part++) {
            Py_ssize_t n = part ? group->n_provisional : group->n_outright;
            Counter **list = part ? group->provisional : group->outright;
            int apply = -1;   /* the event's marker for this entity, set with its first counter */
            Py_ssize_t marker = -2;
            for (Py_ssize_t i = 0; i < n; i++) {
                Counter *c = list[i];
                Key key;
                int found = counter_key(c, first, attrs, &key);
                if (found <= 0) {
                    if (found < 0)
                        goto fail_first;
                    continue;
                }
                if (apply == -1) {
                    Py_ssize_t at;
                    apply = mark(rc, part ? PROVISIONAL : OUTRIGHT, g, first, &at);
                    if (apply < 0) {
                        Py_XDECREF(key.rest);
                        goto fail_first;
                    }
                    if (part && apply) {   /* this event's updates, to be settled */
                        marker = rc->n_pending;
                        rc->pending[rc->n_pending++] = at;
                    }
                }
                int update = apply && (part || c->on_attempt);
                if (update && (update = counts(c, attrs)) < 0) {
                    Py_XDECREF(key.rest);
                    goto fail_first;
                }
                PyObject *result = observe(rc, c, &key, attrs, update, part ? marker : -1);
                Py_XDECREF(key.rest);
                if (result == NULL)
                    goto fail_first;
                rc->results[c->index] = result;
            }
        }
        Py_DECREF(first);
        continue;
    fail_first:
        Py_DECREF(first);
        goto fail;
    }
    /* The values found, and where the log said otherwise. */
    for (Py_ssize_t i = 0; i < rc->n_counters; i++) {
        PyObject *name = rc->counters[i].feature, *result = rc->results[i];
        rc->results[i] = NULL;
        if (result == Py_None)
            Py_CLEAR(result);
        if (result != NULL && PyDict_SetItem(attrs, name, result) < 0) {
            Py_DECREF(result);
            goto fail;
        }
        PyObject *was = PyDict_GetItemWithError(logged, name);
        int differs = was ? PyObject_RichCompareBool(was, result ? result : Py_None, Py_NE) : 0;
        Py_XDECREF(result);
        if (differs < 0 || (was == NULL && PyErr_Occurred()))
            goto fail;
        if (differs) {
            PyObject *n = PyDict_GetItemWithError(rc->differences, name);
            if (n == NULL && PyErr_Occurred())
                goto fail;
            PyObject *more = PyLong_FromSsize_t((n ? PyLong_AsSsize_t(n) : 0) + 1);
            if (more == NULL || PyDict_SetItem(rc->differences, name, more) < 0) {
                Py_XDECREF(more);
                goto fail;
            }
            Py_DECREF(more);
        }
    }
    Py_INCREF(attrs);
    Py_XSETREF(rc->attrs, attrs);
    return attrs;
fail:
    for (Py_ssize_t i = 0; i < rc->n_counters; i++)
        Py_CLEAR(rc->results[i]);
    Py_DECREF(attrs);
    return NULL;
}

/* settle(ok, strong): what became of the last record under the candidate. `ok`: forwarded and
 * not failed upstream; `strong`: its tier was proven by answering a challenge. */
static PyObject *Counters_settle(Counters *rc, PyObject *args) {
    int ok, strong;
    if (!ready(rc) || !PyArg_ParseTuple(args, "pp", &ok, &strong))
        return NULL;
    if (!ok) {   /* the markers go too, so that the step-up repeat of the event can count */
        for (Py_ssize_t i = 0; i < rc->n_pending; i++)
            rc->marks->marks[rc->pending[i]].until = -INFINITY;
    }
    for (Py_ssize_t i = 0; i < rc->n_updates; i++) {
        Update *u = &rc->updates[i];
        int failed = u->counter->kind == FIRST_SEEN ? settle_mark(rc, u->counter, &u->key, u->value, ok)
                     : !ok ? undo(rc, u->counter, &u->key, u->value) : 0;
        if (failed < 0)
            return NULL;
    }
    clear_updates(rc);
    rc->n_pending = 0;
    if (!ok || rc->attrs == NULL)
        Py_RETURN_NONE;
    PyObject *attrs = rc->attrs;
    for (Py_ssize_t g = 0; g < rc->n_groups; g++) {   /* on: allow distinct, once forwarded */
        Group *group = &rc->groups[g];
        if (group->n_late == 0)
            continue;
        PyObject *value = attr(attrs, group->name);
        if (value == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        PyObject *first = PyObject_Str(value);
        if (first == NULL)
            return NULL;
        Key keys[group->n_late];   /* rest NULL and first NULL: not counted */
        int any = 0, failed = 0;
        for (Py_ssize_t i = 0; i < group->n_late; i++) {
            Counter *c = group->late[i];
            keys[i] = (Key){NULL, NULL};
            int held = failed ? 0 : counts(c, attrs);
            int found = held > 0 ? counter_key(c, first, attrs, &keys[i]) : held;
            if (found < 0)
                failed = 1;
            else if (found == 0)
                keys[i].first = NULL;
            any |= found > 0;
        }
        Py_ssize_t at;
        int apply = !failed && any ? mark(rc, LATE, g, first, &at) : 0;
        failed |= apply < 0;
        for (Py_ssize_t i = 0; i < group->n_late; i++) {
            if (!failed && apply > 0 && keys[i].first != NULL) {
                PyObject *result = observe(rc, group->late[i], &keys[i], attrs, 1, -1);
                if (result == NULL)
                    failed = 1;
                Py_XDECREF(result);
            }
            Py_XDECREF(keys[i].rest);
        }
        Py_DECREF(first);
        if (failed)
            return NULL;
    }
    for (Py_ssize_t i = 0; strong && i < rc->n_resets; i++) {   /* reset_on: strong_auth */
        Counter *c = rc->resets[i];
        PyObject *value = attr(attrs, c->first);
        if (value == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        PyObject *first = PyObject_Str(value);
        if (first == NULL)
            return NULL;
        Key key;
        int found = counter_key(c, first, attrs, &key);
        int failed = found > 0 ? entry_drop(c, &key) : found;
        Py_XDECREF(key.rest);
        Py_DECREF(first);
        if (failed < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- construction ----------------------------------------------------------------------- */

static void Counters_dealloc(Counters *rc) {
    for (Py_ssize_t i = 0; i < rc->n_counters; i++) {
        Counter *c = &rc->counters[i];
        Py_XDECREF(c->feature);
        Py_XDECREF(c->first);
        Py_XDECREF(c->rest);
        Py_XDECREF(c->field);
        Py_XDECREF(c->where);
    }
    for (Py_ssize_t g = 0; g < rc->n_groups; g++) {
        Py_XDECREF(rc->groups[g].name);
        Py_XDECREF(rc->groups[g].slots);
        Py_XDECREF(rc->groups[g].last_value);
        PyMem_Free(rc->groups[g].outright);
        PyMem_Free(rc->groups[g].provisional);
        PyMem_Free(rc->groups[g].late);
    }
    if (rc->updates)
        clear_updates(rc);
    PyMem_Free(rc->updates);
    PyMem_Free(rc->counters);
    PyMem_Free(rc->groups);
    PyMem_Free(rc->resets);
    if (rc->results)
        for (Py_ssize_t i = 0; i < rc->n_counters; i++)
            Py_XDECREF(rc->results[i]);
    PyMem_Free(rc->results);
    Py_XDECREF(rc->markers);
    Py_XDECREF(rc->digests);
    Py_XDECREF(rc->digest_fn);
    Py_XDECREF(rc->scaled_fn);
    Py_XDECREF(rc->differences);
    Py_XDECREF(rc->event);
    Py_XDECREF(rc->attrs);
    PyMem_Free(rc->pending);
    Py_XDECREF(rc->marks);
    Py_XDECREF(rc->amount);
    Py_TYPE(rc)->tp_free((PyObject *)rc);
}

/* The counters of a list of indexes into rc->counters. */
static Counter **counter_list(Counters *rc, PyObject *indexes, Py_ssize_t *n) {
    PyObject *seq = PySequence_Fast(indexes, "a list of counter indexes");
    if (seq == NULL)
        return NULL;
    *n = PySequence_Fast_GET_SIZE(seq);
    Counter **list = PyMem_Calloc((size_t)*n + 1, sizeof(Counter *));
    for (Py_ssize_t i = 0; list != NULL && i < *n; i++) {
        Py_ssize_t index = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        if (index < 0 || index >= rc->n_counters) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_IndexError, "counter index out of range");
            PyMem_Free(list);
            list = NULL;
            break;
        }
        list[i] = &rc->counters[index];
    }
    if (list == NULL && !PyErr_Occurred())
        PyErr_NoMemory();
    Py_DECREF(seq);
    return list;
}

/* Counters(counters, groups, resets, event_ttl_s, settle_ms, digest, scaled_amount)
 * counters: (kind, feature, first key attribute, other key attributes, field or None, where
 *            or None, is_sum, on_attempt, bucket width ms, buckets, window ms, ttl s) each;
 * groups: (first key attribute, [outright], [provisional], [late]) of counter indexes;
 * resets: [counter index]. */
static int Counters_init(Counters *rc, PyObject *args, PyObject *kwds) {
    PyObject *counters, *groups, *resets, *digest_fn, *scaled_fn;
    double event_ttl_s;
    long long settle_ms;
    if (rc->counters != NULL) {
        PyErr_SetString(PyExc_TypeError, "Counters are built once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!O!OdLOO", &PyList_Type, &counters, &PyList_Type, &groups,
                          &resets, &event_ttl_s, &settle_ms, &digest_fn, &scaled_fn))
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(counters);
    rc->counters = PyMem_Calloc((size_t)n + 1, sizeof(Counter));
    if (rc->counters == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    rc->n_counters = n;
    if ((rc->results = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *))) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Counter *c = &rc->counters[i];
        PyObject *feature, *first, *rest, *field, *where;
        long long width, span, window_ms;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(counters, i), "iUUO!OOppLLLd;a counter's layout",
                              &c->kind, &feature, &first, &PyTuple_Type, &rest, &field,
                              &where, &c->is_sum, &c->on_attempt, &width, &span, &window_ms,
                              &c->ttl_s))
            return -1;
        if (c->kind < WINDOW || c->kind > FIRST_SEEN || (c->kind == WINDOW && width <= 0)) {
            PyErr_SetString(PyExc_ValueError, "a counter's kind or bucket width is wrong");
            return -1;
        }
        c->feature = Py_NewRef(feature);
        c->first = Py_NewRef(first);
        c->rest = Py_NewRef(rest);
        c->index = i;
        c->slot = -1;
        c->width = width;
        c->span = span;
        c->window_ms = window_ms;
        c->field = field == Py_None ? NULL : Py_NewRef(field);
        c->where = where == Py_None ? NULL : Py_NewRef(where);
    }
    Py_ssize_t n_groups = PyList_GET_SIZE(groups);
    rc->groups = PyMem_Calloc((size_t)n_groups + 1, sizeof(Group));
    if (rc->groups == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        Group *group = &rc->groups[g];
        PyObject *outright, *provisional, *late;
        PyObject *name;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(groups, g), "UOOO;a group's layout",
                              &name, &outright, &provisional, &late))
            return -1;
        group->name = Py_NewRef(name);
        rc->n_groups = g + 1;   /* what dealloc frees */
        if ((group->slots = PyDict_New()) == NULL
            || (group->outright = counter_list(rc, outright, &group->n_outright)) == NULL
            || (group->provisional = counter_list(rc, provisional, &group->n_provisional)) == NULL
            || (group->late = counter_list(rc, late, &group->n_late)) == NULL)
            return -1;
        for (int part = 0; part < 2; part++) {   /* the late ones are among the outright */
            Py_ssize_t count = part ? group->n_provisional : group->n_outright;
            for (Py_ssize_t i = 0; i < count; i++) {
                Counter *c = (part ? group->provisional : group->outright)[i];
                if (PyUnicode_Compare(c->first, name) != 0) {
                    PyErr_SetString(PyExc_ValueError, "a group's counter is keyed by another attribute");
                    return -1;
                }
                c->group = group;
                c->slot = group->n_slots++;
            }
        }
    }
    if ((rc->resets = counter_list(rc, resets, &rc->n_resets)) == NULL)
        return -1;
    if ((rc->pending = PyMem_Calloc((size_t)rc->n_groups + 1, sizeof(Py_ssize_t))) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    rc->event_ttl_s = event_ttl_s;
    rc->purge_at = PURGE_AT_LEAST;
    rc->settle_ms = settle_ms;
    rc->digest_fn = Py_NewRef(digest_fn);
    rc->scaled_fn = Py_NewRef(scaled_fn);
    rc->event = Py_NewRef(s_empty);
    if ((rc->markers = PyDict_New()) == NULL || (rc->digests = PyDict_New()) == NULL
        || (rc->differences = PyDict_New()) == NULL)
        return -1;
    return 0;
}

static PyObject *Counters_get_differences(Counters *rc, void *closure) {
    return ready(rc) ? Py_NewRef(rc->differences) : NULL;
}

static PyMethodDef Counters_methods[] = {
    {"features", (PyCFunction)Counters_features, METH_O,
     "features(record) -> the record's attributes with the counters recomputed at its time"},
    {"settle", (PyCFunction)Counters_settle, METH_VARARGS,
     "settle(ok, strong): settle the last record's provisional updates"},
    {NULL},
};

static PyGetSetDef Counters_getset[] = {
    {"differences", (getter)Counters_get_differences, NULL,
     "counter feature -> records where the recomputed value differs from the logged one", NULL},
    {NULL},
};

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._backtest_counters.Counters",
    .tp_basicsize = sizeof(Counters),
    .tp_dealloc = (destructor)Counters_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A candidate rule set's counters, recomputed record by record (gateway/backtest.py).",
    .tp_methods = Counters_methods,
    .tp_getset = Counters_getset,
    .tp_init = (initproc)Counters_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway._backtest_counters",
    "The replay's counters, compiled (gateway/backtest.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__backtest_counters(void) {
    if (PyType_Ready(&EntryType) < 0 || PyType_Ready(&SlotsType) < 0 || PyType_Ready(&MarksType) < 0
        || PyType_Ready(&CountersType) < 0)
        return NULL;
    struct { PyObject **name; const char *text; } names[] = {
        {&s_ts, "ts"}, {&s_features, "features"}, {&s_event_id, "event_id"},
        {&s_request_id, "request_id"}, {&s_empty, ""},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].name = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Counters", (PyObject *)&CountersType) < 0
        || PyModule_AddIntConstant(m, "NUMBER_CAP", (long)NUMBER_CAP) < 0
        || PyModule_AddIntConstant(m, "SUM_SCALE", SUM_SCALE) < 0
        || PyModule_AddIntConstant(m, "DISTINCT_CAP", DISTINCT_CAP) < 0
        || PyModule_AddIntConstant(m, "WINDOW", WINDOW) < 0
        || PyModule_AddIntConstant(m, "RUNNING", RUNNING) < 0
        || PyModule_AddIntConstant(m, "DISTINCT", DISTINCT) < 0
        || PyModule_AddIntConstant(m, "FIRST_SEEN", FIRST_SEEN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
