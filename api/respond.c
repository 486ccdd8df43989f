/*
 * api/respond.c: what handlers call: request accessors, complete responses,
 * OpenAI error objects and server-sent events.
 *
 * SSE framing: HTTP/1.1 streams use chunked transfer coding, one chunk per
 * event, so the connection survives the stream (keep-alive) and a proxy or
 * client can tell a finished stream from a cut one (the 0-length chunk).
 * curl -N, httpx (the openai client) and browsers all read chunked SSE.
 * HTTP/1.0 has no chunks: the stream is delimited by closing the connection.
 */
#include "api/http_priv.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- request accessors ------------------------------------------------------ */

uint64_t api_req_id(const struct api_req *r)
{
    return r->id;
}
const char *api_req_method(const struct api_req *r)
{
    return r->method;
}
const char *api_req_path(const struct api_req *r)
{
    return r->txt ? r->txt + r->path_off : "";
}
const char *api_req_query(const struct api_req *r)
{
    return r->txt ? r->txt + r->query_off : "";
}
const char *api_req_route(const struct api_req *r)
{
    return r->route ? r->route->path : "";
}
size_t api_req_header_count(const struct api_req *r)
{
    return r->n_hdrs;
}

struct api_server *api_req_server(const struct api_req *r)
{
    return r->conn ? r->conn->srv : NULL;
}

const char *api_req_header(const struct api_req *r, const char *name)
{
    for (size_t i = 0; i < r->n_hdrs; i++)
        if (strcasecmp(r->txt + r->hdrs[i].name_off, name) == 0)
            return r->txt + r->hdrs[i].val_off;
    return NULL;
}

void api_req_header_at(const struct api_req *r, size_t i, const char **name, const char **value)
{
    *name = i < r->n_hdrs ? r->txt + r->hdrs[i].name_off : NULL;
    *value = i < r->n_hdrs ? r->txt + r->hdrs[i].val_off : NULL;
}

const char *api_req_body(const struct api_req *r, size_t *len)
{
    if (len)
        *len = r->body ? r->body_len : 0;
    return r->body ? r->body : "";
}

void api_req_peer(const struct api_req *r, char *buf, size_t n)
{
    snprintf(buf, n, "%s", r->conn ? r->conn->peer : "?");
}

void api_req_set_hooks(struct api_req *r, const struct api_req_hooks *hooks)
{
    if (hooks)
        r->hooks = *hooks;
    else
        memset(&r->hooks, 0, sizeof r->hooks);
}

size_t api_req_queued_bytes(const struct api_req *r)
{
    if (!r->conn || r->conn->closing)
        return 0;
    return uv_stream_get_write_queue_size((const uv_stream_t *)&r->conn->tcp);
}

static bool field_ok(const char *s, bool name)
{
    if (name && !*s)
        return false;
    for (; *s; s++)
        if (*s == '\r' || *s == '\n' || (name && (*s <= ' ' || *s == ':')))
            return false;
    return true;
}

int api_req_add_header(struct api_req *r, const char *name, const char *value)
{
    if (r->started || !field_ok(name, true) || !field_ok(value, false))
        return MOED_EINVAL;
    size_t nl = strlen(name), vl = strlen(value), add = nl + vl + 4;
    char *e = realloc(r->extra, r->extra_len + add + 1);
    if (!e)
        return MOED_ENOMEM;
    r->extra = e;
    snprintf(e + r->extra_len, add + 1, "%s: %s\r\n", name, value);
    r->extra_len += add;
    return 0;
}

/* ---- status lines and error objects --------------------------------------------- */

const char *api_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

const char *api_error_type(int status)
{
    /* OpenAI answers a bad key with invalid_request_error too (code
     * invalid_api_key); clients dispatch on the status, not the type. */
    if (status >= 500)
        return "server_error";
    return "invalid_request_error";
}

char *api_error_json(int status, const char *type, const char *message, const char *param,
                     const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    char *out = NULL;
    if (err && cJSON_AddStringToObject(err, "message", message ? message : "") &&
        cJSON_AddStringToObject(err, "type", type ? type : api_error_type(status)) &&
        (param ? cJSON_AddStringToObject(err, "param", param)
               : cJSON_AddNullToObject(err, "param")) &&
        (code ? cJSON_AddStringToObject(err, "code", code) : cJSON_AddNullToObject(err, "code")))
        out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* ---- complete responses ----------------------------------------------------------- */

static int req_check(struct api_req *r)
{
    if (!r || r->finished)
        return MOED_EINVAL;
    if (!r->conn || r->conn->closing || r->conn->shutting)
        return MOED_EIO;
    return 0;
}

/* A final call ends the handler's part whatever happens to the bytes: it
 * gets no on_cancel afterwards. */
static int req_final(struct api_req *r, int rc)
{
    if (r && !r->finished && rc != MOED_EINVAL)
        api__req_finished(r);
    return rc;
}

static bool keep_alive(const struct api_req *r)
{
    const struct api_conn *c = r->conn;
    return r->keep_alive && !r->close_after && !r->err_fatal && !c->close_after_current &&
           !c->srv->draining;
}

/* Status line and headers; clen is the Content-Length, or SIZE_MAX for a
 * streamed body. */
static void head(struct api_req *r, struct api_buf *b, int status, const char *ctype, size_t clen)
{
    bool ka = keep_alive(r);
    if (!ka)
        r->close_after = true;
    api_buf_printf(b, "HTTP/1.1 %d %s\r\nServer: moed\r\n", status, api_status_reason(status));
    if (ctype)
        api_buf_printf(b, "Content-Type: %s\r\n", ctype);
    if (clen != SIZE_MAX)
        api_buf_printf(b, "Content-Length: %zu\r\n", clen);
    else if (r->chunked)
        api_buf_printf(b, "Transfer-Encoding: chunked\r\n");
    api_buf_printf(b, "Connection: %s\r\n", ka ? "keep-alive" : "close");
    if (r->extra)
        api_buf_append(b, r->extra, r->extra_len);
    api_buf_append(b, "\r\n", 2);
    r->status = status;
    r->started = true;
}

int api_respond(struct api_req *r, int status, const char *content_type, const void *body,
                size_t len)
{
    int rc = req_check(r);
    if (rc)
        return req_final(r, rc);
    if (r->started || status < 200 || status > 999 ||
        (content_type && !field_ok(content_type, false)))
        return MOED_EINVAL;
    struct api_buf b;
    api_buf_init(&b);
    head(r, &b, status, content_type, len);
    if (len && !r->head_only)
        api_buf_append(&b, body, len);
    rc = b.oom ? MOED_ENOMEM : api__conn_write(r->conn, b.data, b.len);
    api_buf_free(&b);
    if (rc == MOED_ENOMEM && !r->conn->closing)
        api__conn_close(r->conn);
    return req_final(r, rc);
}

int api_respond_json(struct api_req *r, int status, const struct cJSON *json)
{
    char *text = cJSON_PrintUnformatted((const cJSON *)json);
    if (!text) {
        int rc = api_respond_error(r, 500, NULL, "out_of_memory", "cannot print the response");
        return rc ? rc : MOED_ENOMEM;
    }
    int rc = api_respond(r, status, "application/json", text, strlen(text));
    cJSON_free(text);
    return rc;
}

int api_respond_error(struct api_req *r, int status, const char *param, const char *code,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *body = api_error_json(status, NULL, msg, param, code);
    if (!body)
        return api_respond(r, 503, "text/plain", "out of memory\n", 14);
    int rc = api_respond(r, status, "application/json", body, strlen(body));
    free(body);
    return rc;
}

/* ---- server-sent events -------------------------------------------------------------- */

int api_stream_start(struct api_req *r)
{
    int rc = req_check(r);
    if (rc)
        return rc;
    if (r->started)
        return MOED_EINVAL;
    r->chunked = r->http_major == 1 && r->http_minor >= 1;
    if (!r->chunked)
        r->keep_alive = false; /* HTTP/1.0: the close ends the body */
    api_req_add_header(r, "Cache-Control", "no-cache");
    api_req_add_header(r, "X-Accel-Buffering", "no"); /* nginx: do not buffer the stream */
    struct api_buf b;
    api_buf_init(&b);
    head(r, &b, 200, "text/event-stream; charset=utf-8", SIZE_MAX);
    rc = b.oom ? MOED_ENOMEM : api__conn_write(r->conn, b.data, b.len);
    api_buf_free(&b);
    if (rc) {
        if (!r->conn->closing)
            api__conn_close(r->conn);
        return rc;
    }
    r->streaming = true;
    r->conn->srv->stats.streams_active++;
    return 0;
}

/* One piece of the stream body, as one chunk when chunked.  Refuses (and
 * closes the connection, so the handler gets on_cancel) when the client has
 * let more than max_write_queue bytes pile up. */
static int stream_write(struct api_req *r, const char *data, size_t len)
{
    int rc = req_check(r);
    if (rc)
        return rc;
    if (!r->streaming)
        return MOED_EINVAL;
    if (r->head_only)
        return 0;
    struct api_conn *c = r->conn;
    size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (q + len > c->srv->lim.max_write_queue) {
        api__log(c->srv, 1, "http: %s: client not reading (%zu bytes queued), closing", c->peer, q);
        api__conn_close(c);
        return MOED_EIO;
    }
    struct api_buf b;
    api_buf_init(&b);
    if (r->chunked)
        api_buf_printf(&b, "%zx\r\n", len);
    api_buf_append(&b, data, len);
    if (r->chunked)
        api_buf_append(&b, "\r\n", 2);
    rc = b.oom ? MOED_ENOMEM : api__conn_write(c, b.data, b.len);
    api_buf_free(&b);
    if (rc == MOED_ENOMEM && !c->closing)
        api__conn_close(c);
    if (rc == 0)
        api__req_check_backpressure(r);
    return rc;
}

int api_stream_send_event(struct api_req *r, const char *data, size_t len)
{
    struct api_buf b;
    api_buf_init(&b);
    /* Every line of data gets its own "data: " field (CR, LF or CRLF end a
     * line in SSE), so the data can never end the event early; the client
     * joins the lines with LF and gets data back unchanged (CRs become LFs). */
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < len && data[j] != '\n' && data[j] != '\r')
            j++;
        api_buf_append(&b, "data: ", 6);
        api_buf_append(&b, data + i, j - i);
        api_buf_append(&b, "\n", 1);
        if (j >= len)
            break;
        if (data[j] == '\r' && j + 1 < len && data[j + 1] == '\n')
            j++;
        i = j + 1;
    }
    api_buf_append(&b, "\n", 1);
    int rc = b.oom ? MOED_ENOMEM : stream_write(r, b.data, b.len);
    api_buf_free(&b);
    return rc;
}

int api_stream_send_json(struct api_req *r, const struct cJSON *json)
{
    char *text = cJSON_PrintUnformatted((const cJSON *)json);
    if (!text)
        return MOED_ENOMEM;
    int rc = api_stream_send_event(r, text, strlen(text));
    cJSON_free(text);
    return rc;
}

int api_stream_comment(struct api_req *r, const char *text)
{
    if (!field_ok(text, false))
        return MOED_EINVAL;
    while (*text == ':' || *text == ' ')
        text++; /* accept ": keepalive" as well as "keepalive" */
    struct api_buf b;
    api_buf_init(&b);
    api_buf_printf(&b, ": %s\n\n", text);
    int rc = b.oom ? MOED_ENOMEM : stream_write(r, b.data, b.len);
    api_buf_free(&b);
    return rc;
}

int api_stream_end(struct api_req *r, bool send_done)
{
    int rc = req_check(r);
    if (rc)
        return req_final(r, rc);
    if (!r->streaming)
        return MOED_EINVAL;
    if (send_done) {
        static const char done[] = "data: [DONE]\n\n";
        rc = stream_write(r, done, sizeof done - 1);
    }
    if (rc == 0 && r->chunked && !r->head_only)
        rc = api__conn_write(r->conn, "0\r\n\r\n", 5);
    return req_final(r, rc);
}

bool api_stream_congested(const struct api_req *r)
{
    return r->congested;
}
