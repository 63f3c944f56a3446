/* Compiled fast path of esmm.aliccp.rawformat: one pass over a block of raw Ali-CCP lines.
 *
 * Called through ctypes (the module init below exists only so that setuptools builds and
 * Python imports it like any extension). It reads every line's header and every entry's field
 * key, feature id and value into caller-owned arrays, with exactly the rules of the NumPy
 * path. It never guesses: at the first line that breaks a rule it stops and returns
 * SCAN_BAD_LINE, and the caller re-parses the block with the NumPy path, which finds every bad
 * line and says what is wrong with it. Values outside the exact fast path (signs, exponents,
 * more than 19 digits) are left as NaN and listed, for Python's float() to read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define NL 10
#define COMMA 44
#define SEP1 1
#define SEP2 2
#define SEP3 3

enum { SCAN_OK = 0, SCAN_BAD_LINE = -1, SCAN_FULL = -2 };

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Separators and every other byte below '-' (45) may not appear inside a token. */
static inline int is_stop(uint8_t c) { return c < 45; }

/* Decimal digits [p, e), 1..maxlen of them. */
static inline int parse_digits(const uint8_t *p, const uint8_t *e, int maxlen, int64_t *out) {
    int64_t n = e - p;
    if (n < 1 || n > maxlen) return 0;
    int64_t v = 0;
    for (; p < e; p++) {
        unsigned d = (unsigned)*p - '0';
        if (d > 9) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static inline int parse_hex(const uint8_t *p, const uint8_t *e, uint64_t *out) {
    int64_t n = e - p;
    if (n < 1 || n > 16) return 0;
    uint64_t v = 0;
    for (; p < e; p++) {
        uint8_t c = *p;
        unsigned d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        v = (v << 4) | d;
    }
    *out = v;
    return 1;
}

/* Plain decimals ("1", "0.69315", ".5", "2."): mantissa / 10^f, both exact in a double, so
 * the quotient is correctly rounded -- the same double as Python's float(). 0: not plain. */
static inline int parse_plain_decimal(const uint8_t *p, const uint8_t *e, double *out) {
    int64_t n = e - p;
    uint64_t m = 0;
    int digits = 0, frac = -1;
    for (int64_t i = 0; i < n; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (d <= 9) {
            if (++digits > 19) return 0;
            m = m * 10 + d;
            if (frac >= 0) frac++;
        } else if (p[i] == '.' && frac < 0) {
            frac = 0;
        } else {
            return 0;
        }
    }
    if (digits == 0 || m >= (1ULL << 53)) return 0;
    if (frac < 0) frac = 0;
    if (frac > 22) return 0;
    *out = (double)m / POW10[frac];
    return 1;
}

/* kind 0: skeleton (sample_id,click,conversion,cfi,feature_num,list); 1: common (cfi,num,list).
 * Line outputs have room for max_lines, entry outputs for max_entries, odd-value outputs for
 * max_odd. fidx: the entry's field as an index into known_keys (-1: unknown). Returns
 * SCAN_OK and the counts, or SCAN_BAD_LINE (*n_lines_out: its index) or SCAN_FULL. */
int esmm_scan_block(const uint8_t *buf, int64_t len, int kind, int64_t max_lines,
                    int64_t max_entries, int64_t max_odd, const uint64_t *known_keys,
                    int64_t n_known, int64_t *sample_id, int8_t *click, int8_t *conversion,
                    uint64_t *cfi, int64_t *n_ent, uint64_t *fkey, int8_t *fidx, int64_t *ids,
                    double *vals, int64_t *odd_entry, int64_t *odd_start, int64_t *odd_end,
                    int64_t *n_lines_out, int64_t *n_entries_out, int64_t *n_odd_out) {
    const int n_commas = kind == 0 ? 5 : 2;
    const uint8_t *p = buf, *end = buf + len;
    int64_t line = 0, ent = 0, odd = 0;
    *n_lines_out = 0;
    while (p < end) {
        if (line >= max_lines) return SCAN_FULL;
        const uint8_t *col[6];
        const uint8_t *q = p;
        int c = 0;
        /* header columns: each runs to the next comma and holds no other stop byte */
        col[0] = q;
        while (c < n_commas) {
            while (q < end && !is_stop(*q)) q++;
            if (q >= end || *q != COMMA) goto bad;
            col[++c] = ++q;
        }
        int64_t num, v;
        if (kind == 0) {
            if (!parse_digits(col[0], col[1] - 1, 18, &sample_id[line])) goto bad;
            if (!parse_digits(col[1], col[2] - 1, 1, &v) || v > 1) goto bad;
            click[line] = (int8_t)v;
            if (!parse_digits(col[2], col[3] - 1, 1, &v) || v > 1) goto bad;
            conversion[line] = (int8_t)v;
            if (!parse_hex(col[3], col[4] - 1, &cfi[line])) goto bad;
            if (!parse_digits(col[4], col[5] - 1, 9, &num)) goto bad;
        } else {
            if (!parse_hex(col[0], col[1] - 1, &cfi[line])) goto bad;
            if (!parse_digits(col[1], col[2] - 1, 9, &num)) goto bad;
        }
        /* feature list: entries field 0x02 id 0x03 value, separated by 0x01; may be empty */
        int64_t first = ent;
        if (q < end && *q != NL) {
            for (;;) {
                const uint8_t *f = q;
                while (q < end && !is_stop(*q)) q++;
                if (q >= end || *q != SEP2 || q == f || q - f > 8) goto bad;
                uint64_t key = 0;
                for (const uint8_t *k = q - 1; k >= f; k--) key = (key << 8) | *k;
                const uint8_t *i0 = ++q;
                while (q < end && !is_stop(*q)) q++;
                if (q >= end || *q != SEP3) goto bad;
                int64_t id;
                if (!parse_digits(i0, q, 18, &id)) goto bad;
                const uint8_t *v0 = ++q;
                while (q < end && !is_stop(*q)) q++;
                if (q == v0 || (q < end && *q != SEP1 && *q != NL)) goto bad;
                if (ent >= max_entries) return SCAN_FULL;
                fkey[ent] = key;
                int8_t fi = -1;
                for (int64_t k = 0; k < n_known; k++)
                    if (known_keys[k] == key) { fi = (int8_t)k; break; }
                fidx[ent] = fi;
                ids[ent] = id;
                if (!parse_plain_decimal(v0, q, &vals[ent])) {
                    if (odd >= max_odd) return SCAN_FULL;
                    vals[ent] = Py_NAN;
                    odd_entry[odd] = ent;
                    odd_start[odd] = v0 - buf;
                    odd_end[odd] = q - buf;
                    odd++;
                }
                ent++;
                if (q >= end || *q == NL) break;
                q++; /* past 0x01: another entry must follow */
            }
        }
        n_ent[line] = ent - first;
        if (num != n_ent[line]) goto bad;
        if (q < end) q++; /* past the newline */
        p = q;
        line++;
        continue;
    bad:
        *n_lines_out = line;
        return SCAN_BAD_LINE;
    }
    *n_lines_out = line;
    *n_entries_out = ent;
    *n_odd_out = odd;
    return SCAN_OK;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rawscan",
                                    "C scanner for raw Ali-CCP blocks (used via ctypes).", -1,
                                    NULL};

PyMODINIT_FUNC PyInit__rawscan(void) { return PyModule_Create(&module); }
