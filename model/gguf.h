/*
 * GGUF reader and writer.
 *
 * The reader maps a file read-only (or takes a caller's buffer), validates
 * every count, length, size and offset before use, and then exposes
 * metadata and tensor infos that point into the mapping: strings are
 * (ptr, len) views, not NUL-terminated; tensor data is a pointer into the
 * map, never copied.  A file that fails validation is rejected as a whole
 * with one message naming the key or tensor and the bad value.
 *
 * Layout (v2 and v3; v1 is refused): magic "GGUF", u32 version,
 * u64 n_tensors, u64 n_kv, n_kv x (string key, u32 type, value),
 * n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 type,
 * u64 offset), padding to general.alignment (default 32), tensor data.
 * Little-endian only.
 */
#ifndef MOED_MODEL_GGUF_H
#define MOED_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "kernels/cpu/types.h"

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

enum gguf_vtype {
    GGUF_U8 = 0,
    GGUF_I8 = 1,
    GGUF_U16 = 2,
    GGUF_I16 = 3,
    GGUF_U32 = 4,
    GGUF_I32 = 5,
    GGUF_F32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_U64 = 10,
    GGUF_I64 = 11,
    GGUF_F64 = 12,
    GGUF_VTYPE_COUNT
};

/* A string inside the file: not NUL-terminated. */
struct gguf_str {
    const char *ptr;
    uint64_t len;
};

struct gguf_value {
    enum gguf_vtype type;
    union {
        uint64_t u64; /* U8, U16, U32, U64, BOOL (0/1) */
        int64_t i64;  /* I8, I16, I32, I64 */
        double f64;   /* F32, F64 */
        struct gguf_str str;
        struct {
            enum gguf_vtype elem;
            uint64_t n;
            /* Fixed-size elements: raw little-endian data inside the file
             * (possibly unaligned; read through gguf_arr_* helpers). */
            const void *raw;
            /* STRING or ARRAY elements: n parsed values (heap, owned by
             * the struct gguf). NULL for fixed-size elements. */
            struct gguf_value *items;
        } arr;
    } v;
};

struct gguf_kv {
    struct gguf_str key;
    struct gguf_value val;
};

struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension; unused = 1 */
    uint32_t type;             /* enum kern_type */
    uint64_t offset;           /* from the start of the data section */
    uint64_t nbytes;           /* checked against shape and type */
    const void *data;          /* base + data_offset + offset */
};

struct gguf {
    uint32_t version;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    uint32_t alignment;
    uint64_t data_offset; /* start of tensor data in the file */
    const uint8_t *base;  /* whole file */
    size_t size;
    bool mapped; /* base came from mmap (gguf_close unmaps) */
    void *priv;  /* reader internals (name index ...) */
};

/* Map and validate a file. On error *g is left closed and e names the problem
 * (gguf_open's messages start with the path, gguf_open_mem's do not).
 * Arrays may nest up to 8 levels; any byte string is a valid key or name. */
int gguf_open(struct gguf *g, const char *path, struct moed_err *e);
/* Validate a caller-owned buffer (tests, fuzzing); buf must outlive g. */
int gguf_open_mem(struct gguf *g, const void *buf, size_t size, struct moed_err *e);
void gguf_close(struct gguf *g);

/* Metadata lookup: the kv or NULL. */
const struct gguf_kv *gguf_find(const struct gguf *g, const char *key);

/*
 * Typed getters.  They return 0, MOED_ENOTFOUND (key absent) or MOED_ETYPE
 * (key present with another type; the message names key and both types).
 * Integer getters accept any integer type whose value fits the target
 * (a u32 getter takes a u8 or an i64 of 7), and fail with MOED_ERANGE
 * otherwise; gguf_get_f32 accepts F32 and F64.
 */
int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out, struct moed_err *e);
int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, struct moed_err *e);
int gguf_get_i32(const struct gguf *g, const char *key, int32_t *out, struct moed_err *e);
int gguf_get_f32(const struct gguf *g, const char *key, float *out, struct moed_err *e);
int gguf_get_bool(const struct gguf *g, const char *key, bool *out, struct moed_err *e);
int gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out, struct moed_err *e);
/* Added: the same for i64 (any integer that fits) and f64 (F32 or F64). */
int gguf_get_i64(const struct gguf *g, const char *key, int64_t *out, struct moed_err *e);
int gguf_get_f64(const struct gguf *g, const char *key, double *out, struct moed_err *e);
/* An array whose elements have type elem; *out points at the array value. */
int gguf_get_arr(const struct gguf *g, const char *key, enum gguf_vtype elem,
                 const struct gguf_value **out, struct moed_err *e);

/* Element access for an array value (index must be < n; asserted). */
struct gguf_str gguf_arr_str(const struct gguf_value *arr, uint64_t i);
int64_t gguf_arr_int(const struct gguf_value *arr, uint64_t i); /* any integer elem */
double gguf_arr_float(const struct gguf_value *arr, uint64_t i); /* F32/F64 elem */
/* Added: element i of an array of strings or of arrays, as a value. */
const struct gguf_value *gguf_arr_item(const struct gguf_value *arr, uint64_t i);

/* Convenience: compare a gguf_str with a C string. */
bool gguf_str_eq(struct gguf_str s, const char *c);

/* Tensor lookup by name: the tensor or NULL. */
const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name);

/* Name of a value type ("u32", "string", "array"), "?" if unknown. */
const char *gguf_vtype_name(uint32_t t);

/*
 * Writer.  Builds metadata and tensor infos in memory, then streams the
 * file: gguf_writer_begin writes the header, metadata, tensor infos and
 * padding; tensor data follows with gguf_writer_write_data in the order the
 * tensors were added (so a 17 GB model is generated one tensor at a time,
 * never held whole); gguf_writer_end checks that every tensor was written.
 * gguf_writer_write_file does all three for tensors whose data was given
 * to gguf_writer_add_tensor (the pointer must stay valid until then).
 */
struct gguf_writer;

/* NULL for another version or when out of memory. */
struct gguf_writer *gguf_writer_new(uint32_t version /* 2 or 3 */);
void gguf_writer_free(struct gguf_writer *w);
/*
 * Added: setters and gguf_writer_add_tensor return 0 or MOED_EINVAL /
 * MOED_ENOMEM, and record a message naming the key or tensor; this returns
 * the first such message, or NULL.  That first failure is sticky: begin,
 * write_file and write_mem then fail with it rather than write a file that
 * lacks something the caller asked for.  The writer accepts only what the
 * reader accepts (general.alignment a u32 power of two, bools 0 or 1,
 * arrays nested at most 8 deep, tensor shapes as the reader checks them).
 * A stream that fails, or ends with tensor data missing, removes its file.
 * write_data pieces must not cross a tensor's end.
 */
const char *gguf_writer_error(const struct gguf_writer *w);

/* Setters replace an existing key of the same name. */
int gguf_writer_set_u8(struct gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_set_i8(struct gguf_writer *w, const char *key, int8_t v);
int gguf_writer_set_u16(struct gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_set_i16(struct gguf_writer *w, const char *key, int16_t v);
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_set_i64(struct gguf_writer *w, const char *key, int64_t v);
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_set_f64(struct gguf_writer *w, const char *key, double v);
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v);
/* Array of fixed-size elements (data is n elements of elem, copied). */
int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem,
                        const void *data, uint64_t n);
/* Array of strings (copied). */
int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key, const char *const *v,
                            uint64_t n);
/* Copy a kv (any type, nested arrays included) from a reader. */
int gguf_writer_set_kv(struct gguf_writer *w, const struct gguf_kv *kv);

/* ne[0] is the contiguous dimension. data may be NULL (streamed later). */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t type,
                           uint32_t n_dims, const int64_t *ne, const void *data);

int gguf_writer_begin(struct gguf_writer *w, const char *path, struct moed_err *e);
/* Data of the next tensor, exactly its nbytes (may be called in pieces that add up). */
int gguf_writer_write_data(struct gguf_writer *w, const void *data, size_t n, struct moed_err *e);
int gguf_writer_end(struct gguf_writer *w, struct moed_err *e);
int gguf_writer_write_file(struct gguf_writer *w, const char *path, struct moed_err *e);
/* The whole file in memory (tests and fuzz seeds); caller frees *out. */
int gguf_writer_write_mem(struct gguf_writer *w, uint8_t **out, size_t *size, struct moed_err *e);

#endif
