/* The CUDA entry points of kcuda.h and kc.h for a build without CUDA
 * (MOED_CUDA=0 or no nvcc): each says so instead of failing obscurely. */
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kcuda.h"

#ifndef MOED_HAVE_CUDA
static int no_cuda(struct moed_err *e)
{
    return moed_err_set(e, MOED_EUNSUPPORTED, "built without CUDA (MOED_CUDA=0 or no nvcc)");
}

#define NOCUDA(...) { (void)0, __VA_ARGS__; return no_cuda(e); }
#define U(x) (void)(x)

bool kcuda_built(void) { return false; }
int kcuda_device_count(struct moed_err *e) { return no_cuda(e); }
int kcuda_device_info(int dev, struct kcuda_device *out, struct moed_err *e) NOCUDA(U(dev), U(out))
int kcuda_selftest(int dev, struct moed_err *e) NOCUDA(U(dev))

int kc_set_device(int dev, struct moed_err *e) NOCUDA(U(dev))
int kc_malloc(void **p, size_t n, struct moed_err *e) NOCUDA(*p = 0, U(n))
void kc_free(void *p) { (void)p; }
int kc_host_alloc(void **p, size_t n, struct moed_err *e) NOCUDA(*p = 0, U(n))
void kc_host_free(void *p) { (void)p; }
int kc_stream_new(kc_stream *s, struct moed_err *e) NOCUDA(*s = 0)
void kc_stream_free(kc_stream s) { (void)s; }
int kc_h2d(void *d, const void *s_, size_t n, kc_stream s, struct moed_err *e) NOCUDA(U(d), U(s_), U(n), U(s))
int kc_d2h(void *d, const void *s_, size_t n, kc_stream s, struct moed_err *e) NOCUDA(U(d), U(s_), U(n), U(s))
int kc_d2d(void *d, const void *s_, size_t n, kc_stream s, struct moed_err *e) NOCUDA(U(d), U(s_), U(n), U(s))
int kc_memset(void *d, int b, size_t n, kc_stream s, struct moed_err *e) NOCUDA(U(d), U(b), U(n), U(s))
int kc_sync(kc_stream s, struct moed_err *e) NOCUDA(U(s))
int kc_mem_info(size_t *f, size_t *t, struct moed_err *e) NOCUDA(U(f), U(t))
int kc_capture_begin(kc_stream s, struct moed_err *e) NOCUDA(U(s))
int kc_capture_end(kc_stream s, kc_graph *g, struct moed_err *e) NOCUDA(U(s), *g = 0)
int kc_graph_launch(kc_graph g, kc_stream s, struct moed_err *e) NOCUDA(U(g), U(s))
void kc_graph_free(kc_graph g) { (void)g; }
int kc_event_new(kc_event *ev, struct moed_err *e) NOCUDA(*ev = 0)
void kc_event_free(kc_event ev) { (void)ev; }
int kc_event_record(kc_event ev, kc_stream s, struct moed_err *e) NOCUDA(U(ev), U(s))
int kc_event_wait(kc_stream s, kc_event ev, struct moed_err *e) NOCUDA(U(ev), U(s))
int kc_event_ms(kc_event a, kc_event b, float *ms, struct moed_err *e) NOCUDA(U(a), U(b), U(ms))

int kc_matmul(kc_stream s, const struct kc_mat *w, const float *x, int32_t n_tok, float *out,
              const float *bias, bool acc, struct moed_err *e)
    NOCUDA(U(s), U(w), U(x), U(n_tok), U(out), U(bias), U(acc))
int kc_matmul_multi(kc_stream s, int n_mat, const struct kc_mat *w, const float *x, int32_t n_tok,
                    float *const *out, const float *const *bias, const float *nw, float eps,
                    float *no, struct moed_err *e)
    NOCUDA(U(s), U(n_mat), U(w), U(x), U(n_tok), U(out), U(bias), U(nw), U(eps), U(no))
int kc_moe_route_group(kc_stream s, const float *l, int32_t n_tok, int32_t n_expert, int32_t k,
                       bool norm, int32_t *ids, float *wts, int32_t tile,
                       const struct kc_moe_groups *g, struct moed_err *e)
    NOCUDA(U(s), U(l), U(n_tok), U(n_expert), U(k), U(norm), U(ids), U(wts), U(tile), U(g))
int kc_embed(kc_stream s, const struct kc_mat *t, const int32_t *tok, int32_t n, float *out,
             struct moed_err *e) NOCUDA(U(s), U(t), U(tok), U(n), U(out))
int kc_rmsnorm(kc_stream s, const float *x, const int32_t *rows, int32_t n_tok, int32_t n,
               const float *w, float eps, float *out, struct moed_err *e)
    NOCUDA(U(s), U(x), U(rows), U(n_tok), U(n), U(w), U(eps), U(out))
int kc_swiglu(kc_stream s, float *g, const float *u, int64_t n, struct moed_err *e)
    NOCUDA(U(s), U(g), U(u), U(n))
int kc_add(kc_stream s, float *x, const float *y, int64_t n, struct moed_err *e)
    NOCUDA(U(s), U(x), U(y), U(n))
int kc_qk_rope_store(kc_stream s, const struct kc_attn_shape *sh, float *q, const float *k,
                     const float *v, const float *qn, const float *kn, const struct kc_tok *tok,
                     int32_t n_tok, struct moed_err *e)
    NOCUDA(U(s), U(sh), U(q), U(k), U(v), U(qn), U(kn), U(tok), U(n_tok))
int kc_attention(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                 const struct kc_tok *tok, int32_t n_tok, int32_t n_split, void *ws, float *out,
                 struct moed_err *e) NOCUDA(U(s), U(sh), U(q), U(tok), U(n_tok), U(n_split), U(ws), U(out))
int kc_moe_route(kc_stream s, const float *l, int32_t n_tok, int32_t n_expert, int32_t k, bool norm,
                 int32_t *ids, float *wts, struct moed_err *e)
    NOCUDA(U(s), U(l), U(n_tok), U(n_expert), U(k), U(norm), U(ids), U(wts))
int kc_moe_group(kc_stream s, const int32_t *ids, int32_t n_tok, int32_t k, int32_t n_expert,
                 int32_t tile, const struct kc_moe_groups *g, struct moed_err *e)
    NOCUDA(U(s), U(ids), U(n_tok), U(k), U(n_expert), U(tile), U(g))
int kc_moe_gate_up(kc_stream s, const struct kc_experts *ex, const float *x,
                   const struct kc_moe_groups *g, int32_t tile, int32_t mt, float *act,
                   struct moed_err *e) NOCUDA(U(s), U(ex), U(x), U(g), U(tile), U(mt), U(act))
int kc_moe_down(kc_stream s, const struct kc_experts *ex, const float *act,
                const struct kc_moe_groups *g, int32_t tile, int32_t mt, float *y,
                struct moed_err *e) NOCUDA(U(s), U(ex), U(act), U(g), U(tile), U(mt), U(y))
int kc_moe_combine(kc_stream s, float *x, const float *y, const int32_t *pair_of, const float *wts,
                   int32_t n_tok, int32_t k, int32_t n_embd, const float *shl, const float *shy,
                   struct moed_err *e)
    NOCUDA(U(s), U(x), U(y), U(pair_of), U(wts), U(n_tok), U(k), U(n_embd), U(shl), U(shy))
int kc_host_register(void *p, size_t n, bool ro, struct moed_err *e) NOCUDA(U(p), U(n), U(ro))
void kc_host_unregister(void *p) { (void)p; }
int kc_event_new_sync(kc_event *ev, struct moed_err *e) NOCUDA(*ev = 0)
int kc_event_sync(kc_event ev, struct moed_err *e) NOCUDA(U(ev))
int kc_event_query(kc_event ev, bool *done, struct moed_err *e) NOCUDA(U(ev), *done = false)
#else
typedef int moed_nocuda_unused; /* ISO C wants a non-empty unit */
#endif
