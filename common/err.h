/*
 * One error convention for the whole tree (after libuv): every fallible call
 * returns 0 or a negative MOED_E* code, and fills a struct moed_err whose
 * message names the thing that was wrong (file, key, tensor, option) and the
 * bad value.  Nothing below daemon/ exits or prints; callers decide.
 */
#ifndef MOED_COMMON_ERR_H
#define MOED_COMMON_ERR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {

#endif

enum {
    MOED_OK = 0,
    MOED_EINVAL = -1,       /* bad argument or value */
    MOED_EIO = -2,          /* open/read/write/mmap failed */
    MOED_ENOMEM = -3,       /* allocation failed or size overflow */
    MOED_EFORMAT = -4,      /* malformed input file or data */
    MOED_ERANGE = -5,       /* value out of the allowed range */
    MOED_ENOTFOUND = -6,    /* key, tensor, token ... does not exist */
    MOED_ETYPE = -7,        /* value exists but has another type */
    MOED_EUNSUPPORTED = -8, /* valid, but not implemented by moed */
};

#define MOED_ERR_MSG 320

struct moed_err {
    int code;
    char msg[MOED_ERR_MSG];
};

/* Name of a code ("EFORMAT"), never NULL. */
const char *moed_strerror(int code);

/* Record code and a printf-style message in e (e may be NULL); returns code
 * so callers can write `return moed_err_set(e, MOED_EINVAL, "...", ...);`. */
int moed_err_set(struct moed_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix the existing message: "context: old message". Returns e->code. */
int moed_err_wrap(struct moed_err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif
