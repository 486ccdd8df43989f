/* Error codes and messages: see err.h. */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *moed_strerror(int code)
{
    switch (code) {
    case MOED_OK: return "OK";
    case MOED_EINVAL: return "EINVAL";
    case MOED_EIO: return "EIO";
    case MOED_ENOMEM: return "ENOMEM";
    case MOED_EFORMAT: return "EFORMAT";
    case MOED_ERANGE: return "ERANGE";
    case MOED_ENOTFOUND: return "ENOTFOUND";
    case MOED_ETYPE: return "ETYPE";
    case MOED_EUNSUPPORTED: return "EUNSUPPORTED";
    default: return "EUNKNOWN";
    }
}

int moed_err_set(struct moed_err *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        e->code = code;
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int moed_err_wrap(struct moed_err *e, const char *fmt, ...)
{
    if (!e)
        return MOED_EINVAL;
    char old[MOED_ERR_MSG];
    memcpy(old, e->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* append ": old", truncated to fit (a long context may cut the cause) */
    size_t used = n < 0 ? 0 : (size_t)n, room = sizeof e->msg;
    if (used + 3 < room) {
        size_t k = strnlen(old, room - used - 3);
        e->msg[used] = ':';
        e->msg[used + 1] = ' ';
        memcpy(e->msg + used + 2, old, k);
        e->msg[used + 2 + k] = 0;
    }
    return e->code;
}
