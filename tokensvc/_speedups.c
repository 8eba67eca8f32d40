/*
 * tokensvc._speedups: the compiled half of the uncached /v1/verify path.
 *
 * Two things dominate an uncached verify in pure Python: reading the binary v2 macaroon (a
 * Python-level loop over varint-prefixed fields) and the HMAC-SHA256 chain (each step a new
 * key, so OpenSSL's one-shot HMAC pays a MAC-context setup per caveat). Both are done here:
 *
 *   parse_v2(data, max_caveats)  -> Macaroon | None
 *   first_party_chain(key, identifier, caveats) -> (signature, [cid, ...]) | None
 *   hmac_sha256(key, msg)        -> bytes
 *   b64decode(text)              -> bytes | None   (base64 in either alphabet, as
 *                                                   tokensvc.tokenformat.b64decode_any)
 *   decode_tsv1(token, max_caveats) -> Macaroon | None  (checksum, base64 and parse_v2 in one
 *                                                   call, as tokensvc.tokenformat.decode_token)
 *
 * The pure-Python code in tokensvc/macaroon.py and tokensvc/chain.py stays the reference and the
 * fallback: parse_v2 here returns None for anything that is not a well-formed v2 macaroon, and
 * the caller then runs the Python parser, which raises the precise error. So this file only has
 * to agree with Python on well-formed input and refuse everything else; tests/tokensvc/
 * test_speedups.py checks both, with hypothesis over valid and mutated tokens.
 *
 * SHA-256 is OpenSSL's (libcrypto, already loaded by Python's hashlib), through its low-level
 * SHA256_* interface: no context allocation, and its assembly uses the CPU's SHA extensions.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init & co.: deprecated in 3.0, still the fastest */
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 64
#define DIGEST 32

/* libmacaroons v2 field types (doc/format.txt), as in tokensvc/macaroon.py. */
#define F_EOS 0
#define F_LOCATION 1
#define F_IDENTIFIER 2
#define F_VID 4
#define F_SIGNATURE 6
#define VERSION_2 2

/* The Caveat and Macaroon NamedTuple classes, set once by tokensvc/macaroon.py (set_types). */
static PyTypeObject *caveat_type = NULL;
static PyTypeObject *macaroon_type = NULL;

/* ---- HMAC-SHA256 ------------------------------------------------------------------------- */

static void
hmac_sha256(const unsigned char *key, size_t key_len, const unsigned char *msg, size_t msg_len,
            unsigned char out[DIGEST])
{
    unsigned char block[BLOCK];
    unsigned char pad[BLOCK];
    unsigned char inner[DIGEST];
    SHA256_CTX ctx;
    size_t i;

    memset(block, 0, BLOCK);
    if (key_len > BLOCK) {
        SHA256(key, key_len, block);
    }
    else {
        memcpy(block, key, key_len);
    }
    for (i = 0; i < BLOCK; i++) {
        pad[i] = block[i] ^ 0x36;
    }
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, pad, BLOCK);
    SHA256_Update(&ctx, msg, msg_len);
    SHA256_Final(inner, &ctx);
    for (i = 0; i < BLOCK; i++) {
        pad[i] = block[i] ^ 0x5c;
    }
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, pad, BLOCK);
    SHA256_Update(&ctx, inner, DIGEST);
    SHA256_Final(out, &ctx);
    OPENSSL_cleanse(block, BLOCK); /* key material off the stack */
    OPENSSL_cleanse(pad, BLOCK);
}

static PyObject *
py_hmac_sha256(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char out[DIGEST];
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hmac_sha256(key: bytes, msg: bytes)");
        return NULL;
    }
    hmac_sha256((const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]),
                (const unsigned char *)PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]),
                out);
    return PyBytes_FromStringAndSize((const char *)out, DIGEST);
}

/* (signature, [cid, ...]) of a chain of first-party caveats; None if any caveat is third-party
 * (the caller then takes the general path with discharges). */
static PyObject *
py_first_party_chain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *key, *identifier, *caveats, *cids, *result;
    unsigned char sig[DIGEST];
    Py_ssize_t i, n;

    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "first_party_chain(key: bytes, identifier: bytes, caveats: tuple)");
        return NULL;
    }
    key = args[0];
    identifier = args[1];
    caveats = args[2];
    n = PyTuple_GET_SIZE(caveats);
    for (i = 0; i < n; i++) {
        PyObject *caveat = PyTuple_GET_ITEM(caveats, i);
        if (!PyTuple_Check(caveat) || PyTuple_GET_SIZE(caveat) != 3 ||
            !PyBytes_Check(PyTuple_GET_ITEM(caveat, 0))) {
            PyErr_SetString(PyExc_TypeError, "caveats must be Caveat tuples");
            return NULL;
        }
        if (PyTuple_GET_ITEM(caveat, 1) != Py_None) {
            Py_RETURN_NONE;
        }
    }
    cids = PyList_New(n);
    if (cids == NULL) {
        return NULL;
    }
    hmac_sha256((const unsigned char *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                (const unsigned char *)PyBytes_AS_STRING(identifier),
                PyBytes_GET_SIZE(identifier), sig);
    for (i = 0; i < n; i++) {
        PyObject *cid = PyTuple_GET_ITEM(PyTuple_GET_ITEM(caveats, i), 0);
        hmac_sha256(sig, DIGEST, (const unsigned char *)PyBytes_AS_STRING(cid),
                    PyBytes_GET_SIZE(cid), sig);
        Py_INCREF(cid);
        PyList_SET_ITEM(cids, i, cid);
    }
    result = Py_BuildValue("(y#N)", (const char *)sig, (Py_ssize_t)DIGEST, cids);
    OPENSSL_cleanse(sig, DIGEST);
    return result;
}

/* ---- base64, either alphabet ------------------------------------------------------------ */

/* Sextet of each base64 character, standard (+/) and URL-safe (-_) alike; 0xff: not base64. */
static unsigned char b64_value[256];

static void
b64_init(void)
{
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    int i;
    memset(b64_value, 0xff, sizeof b64_value);
    for (i = 0; i < 62; i++) {
        b64_value[(unsigned char)alphabet[i]] = (unsigned char)i;
    }
    b64_value['+'] = b64_value['-'] = 62;
    b64_value['/'] = b64_value['_'] = 63;
}

/* Decodes in[0..n) into out (room for n / 4 * 3 + 2 bytes); the number of bytes written, or -1
 * where the Python decoder raises: a character outside both alphabets (an inner '=' included),
 * or a length of 4k+1 characters. Trailing '=' are ignored, as many as there are; unused low
 * bits of the last character too, as binascii does. */
static Py_ssize_t
b64_decode_into(const unsigned char *in, Py_ssize_t n, unsigned char *out)
{
    Py_ssize_t full, i, o;

    while (n > 0 && in[n - 1] == '=') {
        n--;
    }
    if (n % 4 == 1) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (b64_value[in[i]] == 0xff) {
            return -1;
        }
    }
    full = n - n % 4;
    for (i = 0, o = 0; i < full; i += 4) {
        unsigned long v = (unsigned long)b64_value[in[i]] << 18 |
                          (unsigned long)b64_value[in[i + 1]] << 12 |
                          (unsigned long)b64_value[in[i + 2]] << 6 | b64_value[in[i + 3]];
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (n % 4 >= 2) {
        unsigned long v = (unsigned long)b64_value[in[i]] << 18 |
                          (unsigned long)b64_value[in[i + 1]] << 12;
        if (n % 4 == 3) {
            v |= (unsigned long)b64_value[in[i + 2]] << 6;
        }
        out[o++] = (unsigned char)(v >> 16);
        if (n % 4 == 3) {
            out[o++] = (unsigned char)(v >> 8);
        }
    }
    return o;
}

/* The bytes of `text`, or None where the Python decoder raises (see b64_decode_into). */
static PyObject *
py_b64decode(PyObject *self, PyObject *arg)
{
    const unsigned char *in;
    Py_ssize_t n;
    PyObject *result;

    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "b64decode(text: bytes)");
        return NULL;
    }
    in = (const unsigned char *)PyBytes_AS_STRING(arg);
    n = PyBytes_GET_SIZE(arg);
    while (n > 0 && in[n - 1] == '=') {
        n--;
    }
    if (n % 4 == 1) {
        Py_RETURN_NONE;
    }
    /* The exact size, so the bytes object is decoded into directly. */
    result = PyBytes_FromStringAndSize(NULL, n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0));
    if (result == NULL) {
        return NULL;
    }
    if (b64_decode_into(in, n, (unsigned char *)PyBytes_AS_STRING(result)) < 0) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    return result;
}

/* ---- binary v2 ------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *data;
    Py_ssize_t end;
} reader;

/* The field at *pos: its type, payload offset and length; *pos moves past it. 0 if malformed.
 * Lengths are unsigned varints of at most 5 bytes, as in tokensvc.macaroon._read_uvarint. */
static int
field_at(const reader *r, Py_ssize_t *pos, int *type, Py_ssize_t *start, Py_ssize_t *length)
{
    Py_ssize_t p = *pos;
    unsigned long long value = 0;
    int shift = 0;

    if (p + 2 > r->end) {
        return 0;
    }
    *type = r->data[p];
    p += 1;
    for (;;) {
        unsigned char byte;
        if (p >= r->end || shift > 28) {
            return 0;
        }
        byte = r->data[p++];
        value |= (unsigned long long)(byte & 0x7f) << shift;
        if (byte < 0x80) {
            break;
        }
        shift += 7;
    }
    if (value > (unsigned long long)(r->end - p)) {
        return 0;
    }
    *start = p;
    *length = (Py_ssize_t)value;
    *pos = p + (Py_ssize_t)value;
    return 1;
}

static PyObject *
bytes_at(const reader *r, Py_ssize_t start, Py_ssize_t length)
{
    return PyBytes_FromStringAndSize((const char *)r->data + start, length);
}

/* A Caveat(cid, vid, location) instance; steals the references it is given. */
static PyObject *
new_caveat(PyObject *cid, PyObject *vid, PyObject *location)
{
    PyObject *caveat = caveat_type->tp_alloc(caveat_type, 3);
    if (caveat == NULL) {
        Py_DECREF(cid);
        Py_DECREF(vid);
        Py_DECREF(location);
        return NULL;
    }
    PyTuple_SET_ITEM(caveat, 0, cid);
    PyTuple_SET_ITEM(caveat, 1, vid);
    PyTuple_SET_ITEM(caveat, 2, location);
    return caveat;
}

/* A well-formed binary v2 macaroon in data[0..size) as a Macaroon; None if it is not one. */
static PyObject *
parse_v2_buffer(const unsigned char *data, Py_ssize_t size, Py_ssize_t max_caveats)
{
    reader r;
    Py_ssize_t pos, start, length, loc_start = 0, loc_length = 0;
    int type, has_location = 0;
    PyObject *caveats = NULL, *identifier = NULL, *location = NULL, *signature = NULL;
    PyObject *caveat_tuple = NULL, *macaroon = NULL;

    r.data = data;
    r.end = size;
    if (r.end < 4 || r.data[0] != VERSION_2) {
        Py_RETURN_NONE;
    }

    /* [location] identifier EOS */
    pos = 1;
    if (!field_at(&r, &pos, &type, &start, &length)) {
        Py_RETURN_NONE;
    }
    if (type == F_LOCATION) {
        has_location = 1;
        loc_start = start;
        loc_length = length;
        if (!field_at(&r, &pos, &type, &start, &length)) {
            Py_RETURN_NONE;
        }
    }
    if (type != F_IDENTIFIER || pos >= r.end || r.data[pos] != F_EOS) {
        Py_RETURN_NONE;
    }
    pos += 1;
    identifier = bytes_at(&r, start, length);
    if (identifier == NULL) {
        return NULL;
    }
    if (has_location) {
        location = bytes_at(&r, loc_start, loc_length);
        if (location == NULL) {
            goto error;
        }
    }
    else {
        location = Py_NewRef(Py_None);
    }

    /* ([location] identifier [vid] EOS)* EOS */
    caveats = PyList_New(0);
    if (caveats == NULL) {
        goto error;
    }
    for (;;) {
        Py_ssize_t cid_start, cid_length, cl_start = 0, cl_length = 0;
        int has_cl = 0;
        PyObject *caveat;

        if (pos >= r.end) {
            goto malformed;
        }
        if (r.data[pos] == F_EOS) {
            pos += 1;
            break;
        }
        if (PyList_GET_SIZE(caveats) >= max_caveats) {
            goto malformed;
        }
        if (!field_at(&r, &pos, &type, &start, &length)) {
            goto malformed;
        }
        if (type == F_LOCATION) {
            has_cl = 1;
            cl_start = start;
            cl_length = length;
            if (!field_at(&r, &pos, &type, &start, &length)) {
                goto malformed;
            }
        }
        if (type != F_IDENTIFIER) {
            goto malformed;
        }
        cid_start = start;
        cid_length = length;
        if (pos < r.end && r.data[pos] == F_EOS) {
            PyObject *cid;
            if (has_cl) {
                goto malformed; /* a location on a first-party caveat */
            }
            pos += 1;
            cid = bytes_at(&r, cid_start, cid_length);
            if (cid == NULL) {
                goto error;
            }
            caveat = new_caveat(cid, Py_NewRef(Py_None), Py_NewRef(Py_None));
        }
        else {
            PyObject *cid, *vid, *cl;
            if (!field_at(&r, &pos, &type, &start, &length)) {
                goto malformed;
            }
            if (type != F_VID || pos >= r.end || r.data[pos] != F_EOS) {
                goto malformed;
            }
            pos += 1;
            cid = bytes_at(&r, cid_start, cid_length);
            vid = bytes_at(&r, start, length);
            cl = has_cl ? bytes_at(&r, cl_start, cl_length) : Py_NewRef(Py_None);
            if (cid == NULL || vid == NULL || cl == NULL) {
                Py_XDECREF(cid);
                Py_XDECREF(vid);
                Py_XDECREF(cl);
                goto error;
            }
            caveat = new_caveat(cid, vid, cl);
        }
        if (caveat == NULL) {
            goto error;
        }
        if (PyList_Append(caveats, caveat) < 0) {
            Py_DECREF(caveat);
            goto error;
        }
        Py_DECREF(caveat);
    }

    /* signature, and nothing after it */
    if (!field_at(&r, &pos, &type, &start, &length) || type != F_SIGNATURE || length != DIGEST ||
        pos != r.end) {
        goto malformed;
    }
    signature = bytes_at(&r, start, length);
    if (signature == NULL) {
        goto error;
    }
    caveat_tuple = PyList_AsTuple(caveats);
    if (caveat_tuple == NULL) {
        goto error;
    }
    Py_CLEAR(caveats);
    macaroon = macaroon_type->tp_alloc(macaroon_type, 4);
    if (macaroon == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(macaroon, 0, identifier);
    PyTuple_SET_ITEM(macaroon, 1, caveat_tuple);
    PyTuple_SET_ITEM(macaroon, 2, signature);
    PyTuple_SET_ITEM(macaroon, 3, location);
    return macaroon;

malformed:
    Py_XDECREF(identifier);
    Py_XDECREF(location);
    Py_XDECREF(caveats);
    Py_RETURN_NONE;
error:
    Py_XDECREF(identifier);
    Py_XDECREF(location);
    Py_XDECREF(caveats);
    Py_XDECREF(signature);
    Py_XDECREF(caveat_tuple);
    return NULL;
}

/* The (bytes, max_caveats: int) arguments of parse_v2 and decode_tsv1, once set_types has given
 * the classes to build; 0 with an exception set otherwise. */
static int
bytes_and_limit(PyObject *const *args, Py_ssize_t nargs, const char *usage,
                Py_ssize_t *max_caveats)
{
    if (caveat_type == NULL || macaroon_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "tokensvc._speedups.set_types was not called");
        return 0;
    }
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return 0;
    }
    *max_caveats = PyLong_AsSsize_t(args[1]);
    return !(*max_caveats == -1 && PyErr_Occurred());
}

static PyObject *
py_parse_v2(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t max_caveats;

    if (!bytes_and_limit(args, nargs, "parse_v2(data: bytes, max_caveats: int)", &max_caveats)) {
        return NULL;
    }
    return parse_v2_buffer((const unsigned char *)PyBytes_AS_STRING(args[0]),
                           PyBytes_GET_SIZE(args[0]), max_caveats);
}

/* ---- the tsv1 token form ------------------------------------------------------------------ */

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32), eight bytes per step ("slicing-by-8", tables
 * made at import): a byte-at-a-time loop waits on each table lookup before the next, which made
 * the checksum cost more than base64 and parsing together. zlib's own is not linked so that its
 * headers are not needed at build time. */
static uint32_t crc_table[8][256];

static void
crc_init(void)
{
    uint32_t c;
    int n, k;
    for (n = 0; n < 256; n++) {
        c = (uint32_t)n;
        for (k = 0; k < 8; k++) {
            c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
        }
        crc_table[0][n] = c;
    }
    for (n = 0; n < 256; n++) {
        c = crc_table[0][n];
        for (k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xff] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

static uint32_t
crc32_of(const unsigned char *data, Py_ssize_t n)
{
    uint32_t c = 0xffffffffU;
    while (n >= 8) {
        /* Little-endian assembly of the next eight bytes, whatever the host's byte order. */
        uint32_t lo = c ^ ((uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                           (uint32_t)data[3] << 24);
        uint32_t hi = (uint32_t)data[4] | (uint32_t)data[5] << 8 | (uint32_t)data[6] << 16 |
                      (uint32_t)data[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        data += 8;
        n -= 8;
    }
    while (n-- > 0) {
        c = crc_table[0][(c ^ *data++) & 0xff] ^ (c >> 8);
    }
    return c ^ 0xffffffffU;
}

#define TSV1_PREFIX "tsv1_"
#define TSV1_PREFIX_LEN 5
#define CHECK_LEN 8

/* `tsv1_` + base64url(binary v2) + `.` + 8 lowercase hex digits of CRC-32 of all before the dot,
 * as a Macaroon (tokensvc.tokenformat.decode_token's one-call path); None for anything else —
 * another form, a checksum mismatch, bad base64, a v1 payload, a malformed macaroon — where
 * the Python code then decides (and names the error). */
static PyObject *
py_decode_tsv1(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *raw;
    unsigned char *payload;
    Py_ssize_t n, dot, max_caveats, decoded;
    uint32_t crc;
    PyObject *result;
    int i;

    if (!bytes_and_limit(args, nargs, "decode_tsv1(token: bytes, max_caveats: int)",
                         &max_caveats)) {
        return NULL;
    }
    raw = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    n = PyBytes_GET_SIZE(args[0]);
    /* The last dot, as bytes.rpartition finds it: the checksum is everything after it. */
    if (n < TSV1_PREFIX_LEN + 1 + CHECK_LEN || memcmp(raw, TSV1_PREFIX, TSV1_PREFIX_LEN) != 0) {
        Py_RETURN_NONE;
    }
    dot = n - CHECK_LEN - 1;
    if (raw[dot] != '.' || memchr(raw + dot + 1, '.', CHECK_LEN) != NULL) {
        Py_RETURN_NONE;
    }
    crc = crc32_of(raw, dot);
    for (i = 0; i < CHECK_LEN; i++) {
        if (raw[dot + 1 + i] != (unsigned char)hex[(crc >> (28 - 4 * i)) & 0xf]) {
            Py_RETURN_NONE;
        }
    }
    payload = PyMem_Malloc((size_t)((dot - TSV1_PREFIX_LEN) / 4 * 3 + 3));
    if (payload == NULL) {
        return PyErr_NoMemory();
    }
    decoded = b64_decode_into(raw + TSV1_PREFIX_LEN, dot - TSV1_PREFIX_LEN, payload);
    if (decoded < 0) {
        PyMem_Free(payload);
        Py_RETURN_NONE;
    }
    result = parse_v2_buffer(payload, decoded, max_caveats);
    PyMem_Free(payload);
    return result;
}

/* The NamedTuple classes parse_v2 builds: plain tuple subclasses of 3 and 4 fields. */
static PyObject *
py_set_types(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyTuple_Type) ||
        ((PyTypeObject *)args[0])->tp_dictoffset != 0 ||
        ((PyTypeObject *)args[1])->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError,
                        "set_types(Caveat, Macaroon): tuple subclasses without __dict__");
        return NULL;
    }
    Py_XSETREF(caveat_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(macaroon_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"hmac_sha256", (PyCFunction)(void (*)(void))py_hmac_sha256, METH_FASTCALL,
     "HMAC-SHA256(key, msg)."},
    {"first_party_chain", (PyCFunction)(void (*)(void))py_first_party_chain, METH_FASTCALL,
     "(signature, cids) of a first-party caveat chain, or None if a caveat is third-party."},
    {"parse_v2", (PyCFunction)(void (*)(void))py_parse_v2, METH_FASTCALL,
     "A well-formed binary v2 macaroon as a Macaroon, or None."},
    {"decode_tsv1", (PyCFunction)(void (*)(void))py_decode_tsv1, METH_FASTCALL,
     "A well-formed tsv1_ token (bytes) as a Macaroon, or None."},
    {"b64decode", py_b64decode, METH_O,
     "Base64 in either alphabet, padded or not, or None if malformed."},
    {"set_types", (PyCFunction)(void (*)(void))py_set_types, METH_FASTCALL,
     "Set the Caveat and Macaroon classes parse_v2 builds."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tokensvc._speedups",
    "Compiled macaroon parsing and HMAC chain for the verify path.", -1, methods, NULL, NULL,
    NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    b64_init();
    crc_init();
    return PyModule_Create(&module);
}
