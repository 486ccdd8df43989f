/*
 * api/post.c: messages from other threads (the engine) to requests on the
 * loop thread.
 *
 * Producers append to one mutex-protected FIFO and call uv_async_send (which
 * never blocks and coalesces wake-ups); the loop thread swaps the whole list
 * out under the lock and delivers it outside the lock, so a producer waits at
 * most for a pointer swap.  A message names its request by id; the loop
 * thread looks the id up in the map of active requests and drops the message
 * when the request has finished or its client has gone.  Messages from one
 * producer thread are delivered in the order posted.
 *
 * Stop closes the queue under the lock before the async handle is closed,
 * so no producer can touch a closing handle.
 */
#include "api/http_priv.h"

#include <stdlib.h>
#include <string.h>

static void msg_free(struct api_msg *m, bool dropped)
{
    if (dropped && m->kind == API_MSG_CALL && m->drop)
        m->drop(m->arg);
    free(m->ctype);
    free(m->param);
    free(m->code);
    free(m);
}

static void deliver(struct api_server *s, struct api_msg *m)
{
    struct api_req *r = api__map_get(s, m->id);
    if (!r) {
        msg_free(m, true);
        return;
    }
    switch (m->kind) {
    case API_MSG_START: api_stream_start(r); break;
    case API_MSG_EVENT: api_stream_send_event(r, m->data, m->len); break;
    case API_MSG_COMMENT: api_stream_comment(r, m->data); break;
    case API_MSG_END: api_stream_end(r, m->flag); break;
    case API_MSG_RESPOND: api_respond(r, m->status, m->ctype, m->data, m->len); break;
    case API_MSG_ERROR: api_respond_error(r, m->status, m->param, m->code, "%s", m->data); break;
    case API_MSG_CALL: m->fn(r, m->arg); break;
    }
    msg_free(m, false);
}

static void on_async(uv_async_t *a)
{
    struct api_server *s = a->data;
    pthread_mutex_lock(&s->mq_lock);
    struct api_msg *m = s->mq_head;
    s->mq_head = s->mq_tail = NULL;
    pthread_mutex_unlock(&s->mq_lock);
    while (m) {
        struct api_msg *next = m->next;
        deliver(s, m);
        m = next;
    }
}

int api__mq_init(struct api_server *s)
{
    s->mq_closed = true; /* until start */
    return pthread_mutex_init(&s->mq_lock, NULL) ? MOED_ENOMEM : 0;
}

int api__mq_start(struct api_server *s)
{
    int rc = uv_async_init(s->loop, &s->async, on_async);
    if (rc)
        return rc;
    s->async.data = s;
    s->async_open = true;
    s->handles_open++;
    pthread_mutex_lock(&s->mq_lock);
    s->mq_closed = false;
    pthread_mutex_unlock(&s->mq_lock);
    return 0;
}

static void drop_all(struct api_msg *m)
{
    while (m) {
        struct api_msg *next = m->next;
        msg_free(m, true);
        m = next;
    }
}

static void on_async_closed(uv_handle_t *h)
{
    api__handle_closed(h->data);
}

void api__mq_close(struct api_server *s)
{
    pthread_mutex_lock(&s->mq_lock);
    s->mq_closed = true;
    struct api_msg *m = s->mq_head;
    s->mq_head = s->mq_tail = NULL;
    pthread_mutex_unlock(&s->mq_lock);
    drop_all(m);
    if (s->async_open) {
        s->async_open = false;
        uv_close((uv_handle_t *)&s->async, on_async_closed);
    }
}

void api__mq_destroy(struct api_server *s)
{
    drop_all(s->mq_head);
    s->mq_head = s->mq_tail = NULL;
    pthread_mutex_destroy(&s->mq_lock);
}

/* ---- producers ------------------------------------------------------------------ */

static struct api_msg *msg_new(enum api_msg_kind kind, uint64_t id, const char *data, size_t len)
{
    if (len > SIZE_MAX - sizeof(struct api_msg) - 1)
        return NULL;
    struct api_msg *m = calloc(1, sizeof *m + len + 1);
    if (!m)
        return NULL;
    m->kind = kind;
    m->id = id;
    m->len = len;
    if (len)
        memcpy(m->data, data, len);
    m->data[len] = '\0';
    return m;
}

static int push(struct api_server *s, struct api_msg *m)
{
    if (!m)
        return MOED_ENOMEM;
    pthread_mutex_lock(&s->mq_lock);
    if (s->mq_closed) {
        pthread_mutex_unlock(&s->mq_lock);
        msg_free(m, true);
        return MOED_EIO;
    }
    if (s->mq_tail)
        s->mq_tail->next = m;
    else
        s->mq_head = m;
    s->mq_tail = m;
    /* Under the lock: stop cannot close the handle in between. */
    uv_async_send(&s->async);
    pthread_mutex_unlock(&s->mq_lock);
    return 0;
}

int api_post_start(struct api_server *s, uint64_t id)
{
    return push(s, msg_new(API_MSG_START, id, NULL, 0));
}

int api_post_event(struct api_server *s, uint64_t id, const char *data, size_t len)
{
    return push(s, msg_new(API_MSG_EVENT, id, data, len));
}

int api_post_comment(struct api_server *s, uint64_t id, const char *text)
{
    return push(s, msg_new(API_MSG_COMMENT, id, text, strlen(text)));
}

int api_post_end(struct api_server *s, uint64_t id, bool send_done)
{
    struct api_msg *m = msg_new(API_MSG_END, id, NULL, 0);
    if (m)
        m->flag = send_done;
    return push(s, m);
}

int api_post_respond(struct api_server *s, uint64_t id, int status, const char *content_type,
                     const char *body, size_t len)
{
    struct api_msg *m = msg_new(API_MSG_RESPOND, id, body, len);
    if (m) {
        m->status = status;
        if (content_type && !(m->ctype = strdup(content_type))) {
            msg_free(m, false);
            m = NULL;
        }
    }
    return push(s, m);
}

int api_post_error(struct api_server *s, uint64_t id, int status, const char *param,
                   const char *code, const char *message)
{
    struct api_msg *m = msg_new(API_MSG_ERROR, id, message, strlen(message));
    if (m) {
        m->status = status;
        if ((param && !(m->param = strdup(param))) || (code && !(m->code = strdup(code)))) {
            msg_free(m, false);
            m = NULL;
        }
    }
    return push(s, m);
}

int api_post_call(struct api_server *s, uint64_t id, api_post_fn fn, void *arg,
                  void (*drop)(void *arg))
{
    struct api_msg *m = msg_new(API_MSG_CALL, id, NULL, 0);
    if (!m) {
        if (drop)
            drop(arg);
        return MOED_ENOMEM;
    }
    m->fn = fn;
    m->arg = arg;
    m->drop = drop;
    return push(s, m);
}
