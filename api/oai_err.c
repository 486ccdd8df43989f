/*
 * api/oai_err.c: OpenAI error objects (see openai.h).  The JSON has exactly
 * the shape api_error_json() gives the transport's own errors, so a client
 * sees one kind of error object whichever layer refused its request; this
 * file does not call the transport, so the request parser links alone (the
 * fuzz target).
 */
#include "api/openai.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

int oai_error_set(struct oai_error *e, int status, const char *param, const char *code,
                  const char *fmt, ...)
{
    if (!e)
        return MOED_EINVAL;
    e->status = status;
    copy_field(e->param, sizeof e->param, param);
    copy_field(e->code, sizeof e->code, code);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    if (n < 0) {
        e->message[0] = '\0';
    } else if ((size_t)n >= sizeof e->message) {
        /* cut short: drop a last character that lost some of its bytes */
        size_t end = sizeof e->message - 1, i = end;
        while (i > 0 && end - i < 3 && ((unsigned char)e->message[i - 1] & 0xC0) == 0x80)
            i--;
        if (i > 0 && (unsigned char)e->message[i - 1] >= 0xC0 &&
            utf8_next((const unsigned char *)e->message + i - 1, end - (i - 1)) <= 0)
            e->message[i - 1] = '\0';
    }
    return MOED_EINVAL;
}

char *oai_error_json(const struct oai_error *e)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    char *out = NULL;
    if (err && cJSON_AddStringToObject(err, "message", e->message) &&
        cJSON_AddStringToObject(err, "type",
                                e->status >= 500 ? "server_error" : "invalid_request_error") &&
        (e->param[0] ? cJSON_AddStringToObject(err, "param", e->param)
                     : cJSON_AddNullToObject(err, "param")) &&
        (e->code[0] ? cJSON_AddStringToObject(err, "code", e->code)
                    : cJSON_AddNullToObject(err, "code")))
        out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

int oai_error_context_length(struct oai_error *e, int64_t n_prompt, int64_t max_tokens,
                             int64_t n_ctx)
{
    if (max_tokens <= 0)
        return oai_error_set(e, 400, "messages", "context_length_exceeded",
                             "This model's maximum context length is %" PRId64
                             " tokens. However, your messages resulted in %" PRId64
                             " tokens. Please reduce the length of the messages.",
                             n_ctx, n_prompt);
    return oai_error_set(e, 400, "messages", "context_length_exceeded",
                         "This model's maximum context length is %" PRId64
                         " tokens. However, you requested %" PRId64 " tokens (%" PRId64
                         " in the messages, %" PRId64
                         " in the completion). Please reduce the length of the messages or "
                         "completion.",
                         n_ctx, n_prompt + max_tokens, n_prompt, max_tokens);
}
