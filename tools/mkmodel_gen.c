/*
 * moed-mkmodel: the weights, and the parallel stream that writes them.
 *
 * Random numbers: every row of every tensor has its own splitmix64 stream,
 * seeded from (tensor seed, row index); the tensor seed comes from (spec
 * seed, tensor name).  Rows are generated in any order on any thread and
 * give the same bytes.
 *
 * "blocks" weights: the quants are random bits; the block scales are drawn
 * (jittered by a uniform factor in [0.75, 1.25]) and sized so that the
 * dequantized values have mean ~0 and standard deviation sigma.  Types
 * whose quants are offset (Q4_0: q - 8, Q5_0: q - 16, Q3_K, Q6_K) would
 * have a mean of -half a step; the one most negative value is mapped to
 * zero instead, so the values are symmetric.  Types with a min (Q4_1,
 * Q5_1, Q2_K, Q4_K, Q5_K) get min = scale * mid-range.  Q8_0 never gets
 * -128 (ggml's quantizers never write it, and some SIMD kernels rely on
 * that).
 *
 * The stream: the file is cut into jobs of whole rows (about 4 MiB each,
 * one tensor per job).  Worker threads take jobs in file order and fill a
 * ring of 2 * threads + 2 buffers; the calling thread writes finished
 * buffers in order through gguf_writer_write_data.  A worker may run at
 * most a ring's length ahead of the writer, so memory is bounded by the
 * ring whatever the model's size.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kernels/cpu/quant.h"
#include "tools/mkmodel_impl.h"

#define GOLDEN 0x9E3779B97F4A7C15ull
#define JOB_BYTES (4u << 20)

/* ---- random numbers -------------------------------------------------------- */

struct rng {
    uint64_t s;
};

static inline uint64_t rng_next(struct rng *g) /* splitmix64 */
{
    g->s += GOLDEN;
    return mkm_mix(g->s);
}

static inline float rng_unit(struct rng *g) /* [0, 1) */
{
    return (float)(rng_next(g) >> 40) * (1.0f / 16777216.0f);
}

/* ~N(0, 1): the sum of four 16-bit uniforms (Irwin-Hall), |x| < 3.47 */
static inline float rng_gauss(struct rng *g)
{
    uint64_t u = rng_next(g);
    uint32_t s = (uint32_t)(u & 0xFFFF) + (uint32_t)((u >> 16) & 0xFFFF) +
                 (uint32_t)((u >> 32) & 0xFFFF) + (uint32_t)(u >> 48);
    /* mean 2 * 65535, std 65536 / sqrt(3) (approximately) */
    return ((float)s - 131070.0f) * (1.7320508f / 65536.0f);
}

static void rng_bytes(struct rng *g, void *dst, size_t n)
{
    uint8_t *p = dst;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t x = rng_next(g);
        memcpy(p, &x, 8);
    }
    if (n) {
        uint64_t x = rng_next(g);
        memcpy(p, &x, n);
    }
}

/* ---- quantized blocks of a given standard deviation ------------------------ */

/* Block scale jitter f ~ U[0.75, 1.25]: E[f^2] = 1 + 1/48, undone here. */
#define JITTER_NORM 0.98974332f

static inline float jitter(struct rng *g) { return (0.75f + 0.5f * rng_unit(g)) * JITTER_NORM; }

/* Standard deviations of the quants as drawn (see the file comment). */
#define STD_Q8 73.4677f   /* -127..127, 0 twice */
#define STD_Q4S 4.18330f  /* -7..7, 0 twice */
#define STD_Q5S 8.80341f  /* -15..15, 0 twice */
#define STD_U4 4.60977f   /* 0..15 */
#define STD_U5 9.23309f   /* 0..31 */
#define STD_U2 1.11803f   /* 0..3 */
#define STD_Q3S 1.87083f  /* -3..3, 0 twice */
#define STD_Q6S 18.0416f  /* -31..31, 0 twice */

/* Q4_0 / Q4_1 nibbles; sym: nibble 0 (q - 8 = -8) becomes 8 (0). */
static void nibbles(struct rng *g, uint8_t *qs, bool sym)
{
    rng_bytes(g, qs, 16);
    if (sym)
        for (int i = 0; i < 16; i++) {
            if (!(qs[i] & 0x0F))
                qs[i] |= 0x08;
            if (!(qs[i] & 0xF0))
                qs[i] |= 0x80;
        }
}

/* Q5_0 / Q5_1: element j's 5th bit is bit j of qh (j < 16: low nibble of
 * qs[j]; j >= 16: high nibble of qs[j - 16]). */
static void nibbles5(struct rng *g, uint8_t *qs, uint8_t *qh, bool sym)
{
    rng_bytes(g, qs, 16);
    uint32_t h = (uint32_t)rng_next(g);
    if (sym)
        for (int j = 0; j < 16; j++) {
            if (!(qs[j] & 0x0F) && !(h >> j & 1))
                h |= 1u << j;
            if (!(qs[j] & 0xF0) && !(h >> (j + 16) & 1))
                h |= 1u << (j + 16);
        }
    memcpy(qh, &h, 4);
}

/* Q4_K / Q5_K scales: 6-bit sc[j] and m[j] packed as kern_q4_K_scale_min
 * reads them. */
static void pack_q4_K_scales(uint8_t *q, const uint8_t *sc, const uint8_t *m)
{
    memset(q, 0, 12);
    for (int j = 0; j < 4; j++) {
        q[j] = sc[j];
        q[j + 4] = m[j];
    }
    for (int j = 4; j < 8; j++) {
        q[j + 4] = (uint8_t)((sc[j] & 15) | ((m[j] & 15) << 4));
        q[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        q[j] |= (uint8_t)((m[j] >> 4) << 6);
    }
}

/* 6-bit sub-block scales in [32, 63] and the super-block scale d for
 * values of std sigma from quants of std qstd; returns d. */
static float k_scales(struct rng *g, uint8_t *sc, int n, int lo, int hi, float sigma, float qstd)
{
    double ss = 0;
    for (int j = 0; j < n; j++) {
        sc[j] = (uint8_t)(lo + (int)(rng_unit(g) * (float)(hi - lo + 1)));
        ss += (double)sc[j] * sc[j];
    }
    return sigma * jitter(g) / (qstd * (float)sqrt(ss / n));
}

static void blocks_row(uint32_t type, struct rng *g, float sigma, void *dst, int64_t n)
{
    uint8_t *out = dst;
    switch (type) {
    case KT_Q8_0:
        for (int64_t i = 0; i < n / 32; i++) {
            block_q8_0 *b = (block_q8_0 *)out + i;
            b->d = kern_f32_to_f16(sigma * jitter(g) / STD_Q8);
            int8_t q[32];
            rng_bytes(g, q, 32);
            for (int k = 0; k < 32; k++) /* branch-free: vectorised */
                q[k] = (int8_t)(q[k] == INT8_MIN ? 0 : q[k]);
            memcpy(b->qs, q, 32);
        }
        return;
    case KT_Q4_0:
        for (int64_t i = 0; i < n / 32; i++) {
            block_q4_0 *b = (block_q4_0 *)out + i;
            b->d = kern_f32_to_f16(sigma * jitter(g) / STD_Q4S);
            nibbles(g, b->qs, true);
        }
        return;
    case KT_Q4_1:
        for (int64_t i = 0; i < n / 32; i++) {
            block_q4_1 *b = (block_q4_1 *)out + i;
            float d = sigma * jitter(g) / STD_U4;
            b->d = kern_f32_to_f16(d);
            b->m = kern_f32_to_f16(-7.5f * kern_f16_to_f32(b->d));
            nibbles(g, b->qs, false);
        }
        return;
    case KT_Q5_0:
        for (int64_t i = 0; i < n / 32; i++) {
            block_q5_0 *b = (block_q5_0 *)out + i;
            b->d = kern_f32_to_f16(sigma * jitter(g) / STD_Q5S);
            nibbles5(g, b->qs, b->qh, true);
        }
        return;
    case KT_Q5_1:
        for (int64_t i = 0; i < n / 32; i++) {
            block_q5_1 *b = (block_q5_1 *)out + i;
            b->d = kern_f32_to_f16(sigma * jitter(g) / STD_U5);
            b->m = kern_f32_to_f16(-15.5f * kern_f16_to_f32(b->d));
            nibbles5(g, b->qs, b->qh, false);
        }
        return;
    case KT_Q4_K:
    case KT_Q5_K:
        for (int64_t i = 0; i < n / QK_K; i++) {
            bool five = type == KT_Q5_K;
            uint8_t sc[8];
            float d = k_scales(g, sc, 8, 32, 63, sigma, five ? STD_U5 : STD_U4);
            kern_f16 hd = kern_f32_to_f16(d);
            /* min m = sc: w = d sc q - dmin sc = d sc (q - mid) */
            kern_f16 hdmin = kern_f32_to_f16((five ? 15.5f : 7.5f) * kern_f16_to_f32(hd));
            if (five) {
                block_q5_K *b = (block_q5_K *)out + i;
                b->d = hd;
                b->dmin = hdmin;
                pack_q4_K_scales(b->scales, sc, sc);
                rng_bytes(g, b->qh, sizeof b->qh);
                rng_bytes(g, b->qs, sizeof b->qs);
            } else {
                block_q4_K *b = (block_q4_K *)out + i;
                b->d = hd;
                b->dmin = hdmin;
                pack_q4_K_scales(b->scales, sc, sc);
                rng_bytes(g, b->qs, sizeof b->qs);
            }
        }
        return;
    case KT_Q6_K:
        for (int64_t i = 0; i < n / QK_K; i++) {
            block_q6_K *b = (block_q6_K *)out + i;
            uint8_t sc[16];
            b->d = kern_f32_to_f16(k_scales(g, sc, 16, 64, 127, sigma, STD_Q6S));
            for (int j = 0; j < 16; j++)
                b->scales[j] = (int8_t)sc[j];
            rng_bytes(g, b->ql, sizeof b->ql);
            rng_bytes(g, b->qh, sizeof b->qh);
            /* q = low nibble | 2 high bits << 4, minus 32; q = 0 -> 32
             * (ggml's dequantize_row_q6_K layout) */
            for (int h = 0; h < 2; h++) {
                uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
                for (int l = 0; l < 32; l++) {
                    if (!(ql[l] & 0x0F) && !(qh[l] & 0x03))
                        qh[l] |= 0x02;
                    if (!(ql[l + 32] & 0x0F) && !(qh[l] & 0x0C))
                        qh[l] |= 0x08;
                    if (!(ql[l] & 0xF0) && !(qh[l] & 0x30))
                        qh[l] |= 0x20;
                    if (!(ql[l + 32] & 0xF0) && !(qh[l] & 0xC0))
                        qh[l] |= 0x80;
                }
            }
        }
        return;
    case KT_Q2_K:
        for (int64_t i = 0; i < n / QK_K; i++) {
            block_q2_K *b = (block_q2_K *)out + i;
            uint8_t sc[16];
            float d = k_scales(g, sc, 16, 8, 15, sigma, STD_U2);
            for (int j = 0; j < 16; j++)
                b->scales[j] = (uint8_t)(sc[j] | (sc[j] << 4)); /* min = scale */
            b->d = kern_f32_to_f16(d);
            b->dmin = kern_f32_to_f16(1.5f * kern_f16_to_f32(b->d));
            rng_bytes(g, b->qs, sizeof b->qs);
        }
        return;
    case KT_Q3_K:
        for (int64_t i = 0; i < n / QK_K; i++) {
            block_q3_K *b = (block_q3_K *)out + i;
            uint8_t sc[16];
            b->d = kern_f32_to_f16(k_scales(g, sc, 16, 16, 31, sigma, STD_Q3S));
            /* stored scale = sc + 32, 6 bits, as kern_q3_K_scale reads it */
            memset(b->scales, 0, sizeof b->scales);
            for (int j = 0; j < 16; j++) {
                int v = sc[j] + 32;
                b->scales[j < 8 ? j : j - 8] |= (uint8_t)((v & 15) << (j < 8 ? 0 : 4));
                b->scales[8 + (j & 3)] |= (uint8_t)((v >> 4) << (2 * (j >> 2)));
            }
            rng_bytes(g, b->qs, sizeof b->qs);
            rng_bytes(g, b->hmask, sizeof b->hmask);
            /* q = 2 bits of qs[32h + l] at shift 2j, minus 4 unless bit
             * 4h + j of hmask[l]; q = -4 -> 0 */
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < 4; j++)
                    for (int l = 0; l < 32; l++)
                        if (!((b->qs[32 * h + l] >> (2 * j)) & 3))
                            b->hmask[l] |= (uint8_t)(1u << (4 * h + j));
        }
        return;
    default:
        assert(!"type checked by mkm_type_ok");
    }
}

static bool is_float_type(uint32_t t) { return t == KT_F32 || t == KT_F16 || t == KT_BF16; }

void mkm_fill_rows(const struct mkm_tensor *t, enum mkm_init init, uint64_t row0,
                   uint64_t nrows, void *dst, float *scratch)
{
    const int64_t n = t->ne[0];
    for (uint64_t r = 0; r < nrows; r++) {
        struct rng g = {mkm_mix(t->seed + (row0 + r + 1) * GOLDEN)};
        uint8_t *out = (uint8_t *)dst + r * t->row_bytes;
        if (t->fill == MKM_FILL_MATRIX && init == MKM_INIT_BLOCKS && !is_float_type(t->type)) {
            blocks_row(t->type, &g, t->sigma, out, n);
            continue;
        }
        float mean = t->fill == MKM_FILL_NORM ? 1.0f : 0.0f;
        float sd = t->fill == MKM_FILL_NORM ? MKM_NORM_STD : t->sigma;
        float *x = t->type == KT_F32 ? (float *)(void *)out : scratch;
        for (int64_t i = 0; i < n; i++)
            x[i] = mean + sd * rng_gauss(&g);
        if (t->type != KT_F32) {
            int rc = kern_quant_row_ref(t->type, x, out, n);
            assert(rc == 0);
            (void)rc;
        }
    }
}

/* ---- the parallel stream ----------------------------------------------------- */

struct job {
    uint32_t tensor;
    uint64_t row0, nrows;
    size_t bytes;
};

struct slot {
    uint8_t *buf;
    size_t job;
    bool ready;
};

struct stream {
    const struct mkm_plan *plan;
    enum mkm_init init;
    struct job *jobs;
    size_t n_jobs;
    struct slot *slots;
    size_t n_slots;
    int64_t max_ne0;

    pthread_mutex_t mu;
    pthread_cond_t cv_free, cv_ready;
    size_t next_job; /* next job a worker takes */
    size_t written;  /* jobs the writer has consumed */
    bool stop;
    int worker_err;
};

static void *worker(void *arg)
{
    struct stream *st = arg;
    float *scratch = malloc((size_t)st->max_ne0 * sizeof *scratch);
    pthread_mutex_lock(&st->mu);
    if (!scratch) {
        st->worker_err = MOED_ENOMEM;
        st->stop = true;
        pthread_cond_broadcast(&st->cv_ready);
    }
    for (;;) {
        while (!st->stop && st->next_job < st->n_jobs && st->next_job >= st->written + st->n_slots)
            pthread_cond_wait(&st->cv_free, &st->mu);
        if (st->stop || st->next_job >= st->n_jobs)
            break;
        size_t j = st->next_job++;
        struct slot *sl = &st->slots[j % st->n_slots];
        pthread_mutex_unlock(&st->mu);
        const struct job *jb = &st->jobs[j];
        mkm_fill_rows(&st->plan->t[jb->tensor], st->init, jb->row0, jb->nrows, sl->buf, scratch);
        pthread_mutex_lock(&st->mu);
        sl->job = j;
        sl->ready = true;
        pthread_cond_broadcast(&st->cv_ready);
    }
    pthread_mutex_unlock(&st->mu);
    free(scratch);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int build_jobs(struct stream *st, struct moed_err *e)
{
    const struct mkm_plan *p = st->plan;
    size_t n = 0, max_bytes = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct mkm_tensor *t = &p->t[i];
        uint64_t per = t->row_bytes >= JOB_BYTES ? 1 : JOB_BYTES / t->row_bytes;
        n += (size_t)((t->nrows + per - 1) / per);
        if (t->ne[0] > st->max_ne0)
            st->max_ne0 = t->ne[0];
    }
    st->jobs = malloc((n ? n : 1) * sizeof *st->jobs);
    if (!st->jobs)
        return moed_err_set(e, MOED_ENOMEM, "job list: out of memory");
    for (size_t i = 0; i < p->n; i++) {
        const struct mkm_tensor *t = &p->t[i];
        uint64_t per = t->row_bytes >= JOB_BYTES ? 1 : JOB_BYTES / t->row_bytes;
        for (uint64_t r = 0; r < t->nrows; r += per) {
            uint64_t k = t->nrows - r < per ? t->nrows - r : per;
            size_t bytes = (size_t)(k * t->row_bytes);
            st->jobs[st->n_jobs++] = (struct job){(uint32_t)i, r, k, bytes};
            if (bytes > max_bytes)
                max_bytes = bytes;
        }
    }
    st->slots = calloc(st->n_slots, sizeof *st->slots);
    if (!st->slots)
        return moed_err_set(e, MOED_ENOMEM, "buffers: out of memory");
    for (size_t i = 0; i < st->n_slots; i++)
        if (!(st->slots[i].buf = malloc(max_bytes ? max_bytes : 1)))
            return moed_err_set(e, MOED_ENOMEM, "buffers (%zu x %zu bytes): out of memory",
                                st->n_slots, max_bytes);
    return 0;
}

/* Generate every job on nthreads workers and write them in order. */
static int stream_data(struct stream *st, struct gguf_writer *w, int nthreads, FILE *progress,
                       struct moed_err *e)
{
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    if (!th)
        return moed_err_set(e, MOED_ENOMEM, "threads: out of memory");
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv_free, NULL);
    pthread_cond_init(&st->cv_ready, NULL);
    int started = 0, rc = 0;
    for (; started < nthreads; started++)
        if ((errno = pthread_create(&th[started], NULL, worker, st)) != 0) {
            rc = moed_err_set(e, MOED_EIO, "cannot start thread %d: %s", started,
                              strerror(errno));
            break;
        }
    uint64_t total = 0, done = 0, next_report = 1ull << 30;
    for (size_t j = 0; j < st->n_jobs; j++)
        total += st->jobs[j].bytes;
    double t0 = now_s();
    for (size_t j = 0; j < st->n_jobs && !rc && started; j++) {
        struct slot *sl = &st->slots[j % st->n_slots];
        pthread_mutex_lock(&st->mu);
        while (!st->stop && !(sl->ready && sl->job == j))
            pthread_cond_wait(&st->cv_ready, &st->mu);
        int werr = st->worker_err;
        pthread_mutex_unlock(&st->mu);
        if (werr) {
            rc = moed_err_set(e, werr, "a generator thread ran out of memory");
            break;
        }
        rc = gguf_writer_write_data(w, sl->buf, st->jobs[j].bytes, e);
        done += st->jobs[j].bytes;
        pthread_mutex_lock(&st->mu);
        sl->ready = false;
        st->written = j + 1;
        pthread_cond_broadcast(&st->cv_free);
        pthread_mutex_unlock(&st->mu);
        if (progress && done >= next_report) {
            double dt = now_s() - t0;
            fprintf(progress, "moed-mkmodel: %.1f of %.1f GiB, %.0f MB/s\n", done / 1073741824.0,
                    total / 1073741824.0, dt > 0 ? done / dt / 1e6 : 0);
            next_report += 1ull << 30;
        }
    }
    pthread_mutex_lock(&st->mu);
    st->stop = true;
    pthread_cond_broadcast(&st->cv_free);
    pthread_cond_broadcast(&st->cv_ready);
    pthread_mutex_unlock(&st->mu);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    pthread_cond_destroy(&st->cv_free);
    pthread_cond_destroy(&st->cv_ready);
    pthread_mutex_destroy(&st->mu);
    return rc;
}

int mkm_write(const struct mkm_spec *s, struct mkm_stats *stats, struct moed_err *e)
{
    struct mkm_stats st0 = {0};
    struct mkm_stats *st = stats ? stats : &st0;
    memset(st, 0, sizeof *st);
    struct mkm_plan plan;
    int rc = mkm_plan_build(&plan, s, e);
    if (rc)
        return rc;
    struct gguf_writer *w = gguf_writer_new(3);
    if (!w) {
        mkm_plan_free(&plan);
        return moed_err_set(e, MOED_ENOMEM, "GGUF writer: out of memory");
    }
    uint64_t header = 0;
    rc = mkm_meta_set(w, s, &plan, &st->n_vocab_tok, &header, e);
    uint32_t align = s->alignment ? s->alignment : GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < plan.n; i++) {
        const struct mkm_tensor *t = &plan.t[i];
        st->data_bytes = (st->data_bytes + t->nbytes + align - 1) / align * align;
        st->n_params += (uint64_t)t->ne[0] * t->nrows;
    }
    st->n_tensors = (uint32_t)plan.n;
    st->file_bytes = header + st->data_bytes;
    st->threads = s->threads > 0 ? s->threads : 1;

    struct stream sm = {.plan = &plan, .init = s->init};
    if (!rc && !s->dry_run) {
        sm.n_slots = 2 * (size_t)st->threads + 2;
        rc = build_jobs(&sm, e);
        if (!rc)
            rc = gguf_writer_begin(w, s->out, e);
        if (!rc) {
            int nth = st->threads;
            if ((size_t)nth > sm.n_jobs)
                nth = sm.n_jobs ? (int)sm.n_jobs : 1;
            double t0 = now_s();
            rc = stream_data(&sm, w, nth, s->progress ? s->log : NULL, e);
            if (!rc)
                rc = gguf_writer_end(w, e);
            st->seconds = now_s() - t0;
        }
        struct stat sb;
        if (!rc && stat(s->out, &sb) == 0 && S_ISREG(sb.st_mode) &&
            (uint64_t)sb.st_size != st->file_bytes)
            rc = moed_err_set(e, MOED_EIO, "%s: %" PRIu64 " bytes written, %" PRIu64
                              " planned (a bug in moed-mkmodel)", s->out, (uint64_t)sb.st_size,
                              st->file_bytes);
    }
    if (sm.slots)
        for (size_t i = 0; i < sm.n_slots; i++)
            free(sm.slots[i].buf);
    free(sm.slots);
    free(sm.jobs);
    gguf_writer_free(w);
    mkm_plan_free(&plan);
    return rc;
}
