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
 *   set_types(Caveat, Macaroon)  the classes parse_v2 builds (per module object)
 *   _sha256_backend(), _use_evp()  which SHA-256 runs (see "SHA-256"), for tests
 *
 * The pure-Python code in tokensvc/macaroon.py and tokensvc/chain.py stays the reference and the
 * fallback: parse_v2 here returns None for anything that is not a well-formed v2 macaroon, and
 * the caller then runs the Python parser, which raises the precise error. So this file only has
 * to agree with Python on well-formed input and refuse everything else; tests/tokensvc/
 * test_speedups.py checks both, with hypothesis over valid and mutated tokens.
 *
 * SHA-256 is OpenSSL's (libcrypto, already loaded by Python's hashlib), fetched once per module
 * as an EVP_MD and then driven through the digest functions of the provider that implements it
 * (see "SHA-256" below for why, and for the plain-EVP fallback). Only APIs OpenSSL 3 keeps are
 * used: the build passes -Werror=deprecated-declarations (pyproject.toml).
 *
 * Multi-phase initialisation (PEP 489) with all state in the module object — the Caveat and
 * Macaroon classes, the digest context and the lookup tables — so that each interpreter (and each
 * fresh import of the module) gets its own, as subinterpreters require. The functions do not
 * release the GIL: the one digest context per module is only used under it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
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

/* ---- SHA-256 ------------------------------------------------------------------------------
 *
 * Every chain step is an HMAC under a new key (the previous signature), so each costs two
 * SHA-256 runs over about two blocks each, and anything done per run counts. The EVP digest API
 * is what OpenSSL 3 keeps, but on 3.0 EVP_DigestInit_ex2 frees and reallocates the provider's
 * context on every call, which made an HMAC ~15% more instructions than the deprecated
 * SHA256_Init/Update/Final (callgrind). So the EVP_MD is fetched through EVP as usual, and its
 * implementation's own functions (newctx/init/update/final, from the provider that EVP chose:
 * OSSL_PROVIDER_query_operation, the public provider interface EVP itself uses) are called on one
 * context kept in the module state: the same work as SHA256_*, without the deprecated API. The
 * binding is checked against EVP on a known answer at import; where anything is missing or
 * different, plain EVP (one reused EVP_MD_CTX) does the work instead. */

typedef struct {
    EVP_MD *md;
    void *algctx; /* the provider's digest context; NULL: EVP fallback through `evp` */
    OSSL_FUNC_digest_init_fn *init;
    OSSL_FUNC_digest_update_fn *update;
    OSSL_FUNC_digest_final_fn *final;
    OSSL_FUNC_digest_freectx_fn *freectx;
    EVP_MD_CTX *evp;
} sha256_t;

typedef struct {
    /* The Caveat and Macaroon NamedTuple classes, set by tokensvc/macaroon.py (set_types). */
    PyTypeObject *caveat_type;
    PyTypeObject *macaroon_type;
    sha256_t sha;
    /* Sextet of each base64 character, standard (+/) and URL-safe (-_) alike; 0xff: not base64. */
    unsigned char b64_value[256];
    /* CRC-32 tables, slicing-by-8 (see crc32_of). */
    uint32_t crc_table[8][256];
} module_state;

static inline module_state *
state_of(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

/* SHA-256 of data[0..len) into out; 0 on an OpenSSL failure. Inlined into the HMAC: each call
 * is a handful of instructions around the provider's, and there are two per chain step. */
static inline int
sha256_of(sha256_t *s, const unsigned char *data, size_t len, unsigned char out[DIGEST])
{
    if (s->algctx != NULL) {
        size_t out_len;
        return s->init(s->algctx, NULL) && s->update(s->algctx, data, len) &&
               s->final(s->algctx, out, &out_len, DIGEST);
    }
    return EVP_DigestInit_ex2(s->evp, s->md, NULL) && EVP_DigestUpdate(s->evp, data, len) &&
           EVP_DigestFinal_ex(s->evp, out, NULL);
}

/* SHA-256 of a || b: the HMAC of a long message. */
static int
sha256_two(sha256_t *s, const unsigned char *a, size_t a_len, const unsigned char *b,
           size_t b_len, unsigned char out[DIGEST])
{
    if (s->algctx != NULL) {
        size_t out_len;
        return s->init(s->algctx, NULL) && s->update(s->algctx, a, a_len) &&
               s->update(s->algctx, b, b_len) && s->final(s->algctx, out, &out_len, DIGEST);
    }
    return EVP_DigestInit_ex2(s->evp, s->md, NULL) && EVP_DigestUpdate(s->evp, a, a_len) &&
           EVP_DigestUpdate(s->evp, b, b_len) && EVP_DigestFinal_ex(s->evp, out, NULL);
}

/* Whether `want` is one of the colon-separated names of an OSSL_ALGORITHM. */
static int
names_include(const char *names, const char *want)
{
    size_t want_len = strlen(want);
    while (names != NULL && *names != '\0') {
        const char *colon = strchr(names, ':');
        size_t len = colon != NULL ? (size_t)(colon - names) : strlen(names);
        if (len == want_len && OPENSSL_strncasecmp(names, want, len) == 0) {
            return 1;
        }
        names = colon != NULL ? colon + 1 : NULL;
    }
    return 0;
}

/* Bind the provider functions of s->md's implementation (see above); 0 leaves s on EVP. */
static int
sha256_bind_provider(sha256_t *s)
{
    static const unsigned char abc[] = "abc";
    const OSSL_PROVIDER *provider = EVP_MD_get0_provider(s->md);
    const OSSL_ALGORITHM *algorithms, *a;
    const OSSL_DISPATCH *f;
    OSSL_FUNC_digest_newctx_fn *newctx = NULL;
    unsigned char got[DIGEST], want[DIGEST];
    unsigned int want_len = 0;
    int no_cache = 0;

    if (provider == NULL) {
        return 0;
    }
    algorithms = OSSL_PROVIDER_query_operation(provider, OSSL_OP_DIGEST, &no_cache);
    for (a = algorithms; a != NULL && a->algorithm_names != NULL; a++) {
        if (!names_include(a->algorithm_names, "SHA2-256")) {
            continue;
        }
        for (f = a->implementation; f->function_id != 0; f++) {
            switch (f->function_id) {
            case OSSL_FUNC_DIGEST_NEWCTX:
                newctx = OSSL_FUNC_digest_newctx(f);
                break;
            case OSSL_FUNC_DIGEST_INIT:
                s->init = OSSL_FUNC_digest_init(f);
                break;
            case OSSL_FUNC_DIGEST_UPDATE:
                s->update = OSSL_FUNC_digest_update(f);
                break;
            case OSSL_FUNC_DIGEST_FINAL:
                s->final = OSSL_FUNC_digest_final(f);
                break;
            case OSSL_FUNC_DIGEST_FREECTX:
                s->freectx = OSSL_FUNC_digest_freectx(f);
                break;
            default:
                break;
            }
        }
        break;
    }
    /* The functions stay valid while the provider is loaded, which s->md guarantees. */
    if (algorithms != NULL) {
        OSSL_PROVIDER_unquery_operation(provider, OSSL_OP_DIGEST, algorithms);
    }
    if (newctx == NULL || s->init == NULL || s->update == NULL || s->final == NULL ||
        s->freectx == NULL) {
        return 0;
    }
    s->algctx = newctx(OSSL_PROVIDER_get0_provider_ctx(provider));
    if (s->algctx == NULL) {
        return 0;
    }
    /* A known answer, against EVP's: a binding that computes anything else is not used. */
    if (!sha256_of(s, abc, 3, got) ||
        !EVP_Digest(abc, 3, want, &want_len, s->md, NULL) || want_len != DIGEST ||
        memcmp(got, want, DIGEST) != 0) {
        s->freectx(s->algctx);
        s->algctx = NULL;
        return 0;
    }
    return 1;
}

static int
sha256_setup(sha256_t *s)
{
    s->md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    if (s->md == NULL || EVP_MD_get_size(s->md) != DIGEST || EVP_MD_get_block_size(s->md) != BLOCK) {
        ERR_clear_error();
        PyErr_SetString(PyExc_ImportError, "tokensvc._speedups: OpenSSL has no usable SHA-256");
        return -1;
    }
    if (!sha256_bind_provider(s)) {
        s->evp = EVP_MD_CTX_new();
        if (s->evp == NULL) {
            ERR_clear_error();
            PyErr_NoMemory();
            return -1;
        }
    }
    ERR_clear_error();
    return 0;
}

static void
sha256_teardown(sha256_t *s)
{
    if (s->algctx != NULL) {
        s->freectx(s->algctx);
        s->algctx = NULL;
    }
    EVP_MD_CTX_free(s->evp);
    s->evp = NULL;
    EVP_MD_free(s->md);
    s->md = NULL;
}

/* ---- HMAC-SHA256 ------------------------------------------------------------------------- */

/* Zero secret bytes on the stack: memset with a compiler barrier (GCC and Clang), the form
 * BoringSSL's OPENSSL_cleanse takes; OpenSSL 3.0's own costs more than the rest of an HMAC's
 * bookkeeping on 64 bytes. */
static inline void
wipe(void *p, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    OPENSSL_cleanse(p, n);
#endif
}

/* Messages up to this long are hashed from one buffer after the pad: one update call per
 * digest instead of two. Caveats and identifiers are tens of bytes. */
#define SHORT_MSG 192

/* HMAC-SHA256 (RFC 2104); `out` may be `key` (each chain step overwrites its key). 0 on an
 * OpenSSL failure. The key is XORed into one pad, used for the inner then the outer hash. */
static int
hmac_sha256(sha256_t *s, const unsigned char *key, size_t key_len, const unsigned char *msg,
            size_t msg_len, unsigned char out[DIGEST])
{
    unsigned char buf[BLOCK + SHORT_MSG]; /* pad || message, then pad || inner digest */
    unsigned char hashed_key[DIGEST];
    size_t i;
    int ok;

    if (key_len > BLOCK) {
        if (!sha256_of(s, key, key_len, hashed_key)) {
            return 0;
        }
        key = hashed_key;
        key_len = DIGEST;
    }
    memset(buf, 0x36, BLOCK);
    if (key_len == DIGEST) { /* every chain step: whole words, which the compiler keeps in registers */
        for (i = 0; i < DIGEST; i += 8) {
            uint64_t word, pad;
            memcpy(&word, key + i, 8);
            memcpy(&pad, buf + i, 8);
            pad ^= word;
            memcpy(buf + i, &pad, 8);
        }
    }
    else {
        for (i = 0; i < key_len; i++) {
            buf[i] ^= key[i];
        }
    }
    if (msg_len <= SHORT_MSG) {
        memcpy(buf + BLOCK, msg, msg_len);
        ok = sha256_of(s, buf, BLOCK + msg_len, buf + BLOCK);
    }
    else {
        ok = sha256_two(s, buf, BLOCK, msg, msg_len, buf + BLOCK);
    }
    if (ok) {
        for (i = 0; i < BLOCK; i++) {
            buf[i] ^= 0x36 ^ 0x5c;
        }
        ok = sha256_of(s, buf, BLOCK + DIGEST, out);
    }
    wipe(buf, BLOCK + DIGEST); /* key material and the inner digest off the stack */
    if (key == hashed_key) {
        wipe(hashed_key, DIGEST);
    }
    return ok;
}

static PyObject *
hash_failed(void)
{
    ERR_clear_error();
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
    return NULL;
}

static PyObject *
py_hmac_sha256(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char out[DIGEST];
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hmac_sha256(key: bytes, msg: bytes)");
        return NULL;
    }
    if (!hmac_sha256(&state_of(self)->sha, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                     PyBytes_GET_SIZE(args[0]), (const unsigned char *)PyBytes_AS_STRING(args[1]),
                     PyBytes_GET_SIZE(args[1]), out)) {
        return hash_failed();
    }
    return PyBytes_FromStringAndSize((const char *)out, DIGEST);
}

/* (signature, [cid, ...]) of a chain of first-party caveats; None if any caveat is third-party
 * (the caller then takes the general path with discharges). */
static PyObject *
py_first_party_chain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    sha256_t *sha = &state_of(self)->sha;
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
    if (!hmac_sha256(sha, (const unsigned char *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                     (const unsigned char *)PyBytes_AS_STRING(identifier),
                     PyBytes_GET_SIZE(identifier), sig)) {
        return hash_failed();
    }
    for (i = 0; i < n; i++) {
        PyObject *cid = PyTuple_GET_ITEM(PyTuple_GET_ITEM(caveats, i), 0);
        if (!hmac_sha256(sha, sig, DIGEST, (const unsigned char *)PyBytes_AS_STRING(cid),
                         PyBytes_GET_SIZE(cid), sig)) {
            wipe(sig, DIGEST);
            return hash_failed();
        }
    }
    cids = PyList_New(n);
    if (cids == NULL) {
        wipe(sig, DIGEST);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *cid = PyTuple_GET_ITEM(PyTuple_GET_ITEM(caveats, i), 0);
        PyList_SET_ITEM(cids, i, Py_NewRef(cid));
    }
    result = Py_BuildValue("(y#N)", (const char *)sig, (Py_ssize_t)DIGEST, cids);
    wipe(sig, DIGEST);
    return result;
}

/* ---- base64, either alphabet ------------------------------------------------------------ */

static void
b64_init(unsigned char b64_value[256])
{
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    int i;
    memset(b64_value, 0xff, 256);
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
b64_decode_into(const unsigned char b64_value[256], const unsigned char *in, Py_ssize_t n,
                unsigned char *out)
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
    if (b64_decode_into(state_of(self)->b64_value, in, n,
                        (unsigned char *)PyBytes_AS_STRING(result)) < 0) {
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
new_caveat(PyTypeObject *caveat_type, PyObject *cid, PyObject *vid, PyObject *location)
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
parse_v2_buffer(const module_state *st, const unsigned char *data, Py_ssize_t size,
                Py_ssize_t max_caveats)
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
            caveat = new_caveat(st->caveat_type, cid, Py_NewRef(Py_None), Py_NewRef(Py_None));
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
            caveat = new_caveat(st->caveat_type, cid, vid, cl);
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
    macaroon = st->macaroon_type->tp_alloc(st->macaroon_type, 4);
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
bytes_and_limit(const module_state *st, PyObject *const *args, Py_ssize_t nargs,
                const char *usage, Py_ssize_t *max_caveats)
{
    if (st->caveat_type == NULL || st->macaroon_type == NULL) {
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
    const module_state *st = state_of(self);
    Py_ssize_t max_caveats;

    if (!bytes_and_limit(st, args, nargs, "parse_v2(data: bytes, max_caveats: int)",
                         &max_caveats)) {
        return NULL;
    }
    return parse_v2_buffer(st, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                           PyBytes_GET_SIZE(args[0]), max_caveats);
}

/* ---- the tsv1 token form ------------------------------------------------------------------ */

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32), eight bytes per step ("slicing-by-8", tables
 * made at import): a byte-at-a-time loop waits on each table lookup before the next, which made
 * the checksum cost more than base64 and parsing together. zlib's own is not linked so that its
 * headers are not needed at build time. */
static void
crc_init(uint32_t crc_table[8][256])
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
crc32_of(const uint32_t crc_table[8][256], const unsigned char *data, Py_ssize_t n)
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
    const module_state *st = state_of(self);
    const unsigned char *raw;
    unsigned char *payload;
    Py_ssize_t n, dot, max_caveats, decoded;
    uint32_t crc;
    PyObject *result;
    int i;

    if (!bytes_and_limit(st, args, nargs, "decode_tsv1(token: bytes, max_caveats: int)",
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
    crc = crc32_of(st->crc_table, raw, dot);
    for (i = 0; i < CHECK_LEN; i++) {
        if (raw[dot + 1 + i] != (unsigned char)hex[(crc >> (28 - 4 * i)) & 0xf]) {
            Py_RETURN_NONE;
        }
    }
    payload = PyMem_Malloc((size_t)((dot - TSV1_PREFIX_LEN) / 4 * 3 + 3));
    if (payload == NULL) {
        return PyErr_NoMemory();
    }
    decoded = b64_decode_into(st->b64_value, raw + TSV1_PREFIX_LEN, dot - TSV1_PREFIX_LEN,
                              payload);
    if (decoded < 0) {
        PyMem_Free(payload);
        Py_RETURN_NONE;
    }
    result = parse_v2_buffer(st, payload, decoded, max_caveats);
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
    module_state *st = state_of(self);

    Py_XSETREF(st->caveat_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(st->macaroon_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* Which SHA-256 the module runs: "provider" (the fast binding) or "evp" (the fallback). */
static PyObject *
py_sha256_backend(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(state_of(self)->sha.algctx != NULL ? "provider" : "evp");
}

/* Switch this module object to the EVP fallback, so that tests can hold it to the standard
 * library too (on a fresh module instance: the state is per module). */
static PyObject *
py_use_evp(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    sha256_t *s = &state_of(self)->sha;
    if (s->evp == NULL) {
        s->evp = EVP_MD_CTX_new();
        if (s->evp == NULL) {
            ERR_clear_error();
            return PyErr_NoMemory();
        }
    }
    if (s->algctx != NULL) {
        s->freectx(s->algctx);
        s->algctx = NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"_sha256_backend", py_sha256_backend, METH_NOARGS,
     "Which SHA-256 this module runs: 'provider' or 'evp'."},
    {"_use_evp", py_use_evp, METH_NOARGS, "Use the EVP fallback in this module (tests)."},
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

static int
speedups_exec(PyObject *module)
{
    module_state *st = state_of(module);

    b64_init(st->b64_value);
    crc_init(st->crc_table);
    return sha256_setup(&st->sha);
}

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = state_of(module);
    if (st != NULL) {
        Py_VISIT(st->caveat_type);
        Py_VISIT(st->macaroon_type);
    }
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    module_state *st = state_of(module);
    if (st != NULL) {
        Py_CLEAR(st->caveat_type);
        Py_CLEAR(st->macaroon_type);
    }
    return 0;
}

static void
speedups_free(void *module)
{
    module_state *st = state_of((PyObject *)module);
    speedups_clear((PyObject *)module);
    if (st != NULL) {
        sha256_teardown(&st->sha);
    }
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* All state is per module object, and nothing is shared between them. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* The module's one digest context is used under the GIL only. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tokensvc._speedups",
    .m_doc = "Compiled macaroon parsing and HMAC chain for the verify path.",
    .m_size = sizeof(module_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}
