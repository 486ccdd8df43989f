/*
 * moed-mkmodel --preset NAME -o FILE [options]: write a GGUF model of a real
 * MoE architecture's shape with seeded random weights (see mkmodel.h).
 *
 * Exit status: 0; 1 when the model cannot be written (one line on stderr,
 * "moed-mkmodel: message"); 2 for a usage error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "tools/mkmodel.h"

static const char *gib(char *buf, size_t n, uint64_t b)
{
    snprintf(buf, n, "%.2f GiB", (double)b / (1u << 30));
    return buf;
}

int main(int argc, char **argv)
{
    struct mkm_spec s;
    struct moed_err e = {0};
    memset(&s, 0, sizeof s);
    s.log = stderr;
    int rc = mkm_parse_args(&s, argc, argv, stdout, &e);
    if (rc == 1)
        return 0;
    if (rc) {
        fprintf(stderr, "moed-mkmodel: %s\n", e.msg);
        return 2;
    }
    struct mkm_stats st;
    rc = mkm_write(&s, &st, &e);
    if (rc) {
        fprintf(stderr, "moed-mkmodel: %s\n", e.msg);
        return 1;
    }
    if (!s.log && !s.dry_run)
        return 0;
    FILE *f = s.dry_run ? stdout : s.log;
    char b1[32];
    fprintf(f, "moed-mkmodel: %s%s: %s '%s', %u layers, d %u, %u/%u heads x %u, %u experts "
            "top-%u, ff %u", s.dry_run ? "would write " : "wrote ", s.out ? s.out : "(dry run)",
            mkm_arch_name(s.arch), s.name, s.n_layer, s.n_embd, s.n_head, s.n_head_kv,
            s.head_dim, s.n_expert, s.n_expert_used, s.n_ff_exp);
    if (s.n_ff_shexp)
        fprintf(f, " + shared %u", s.n_ff_shexp);
    fprintf(f, ", vocab %u (tokenizer: %u tokens)\n", s.n_vocab, st.n_vocab_tok);
    fprintf(f, "moed-mkmodel: %u tensors, %.3f B parameters, experts %s, attention %s, "
            "embeddings %s, output %s, router %s, norms %s; %" PRIu64 " bytes (%s)\n",
            st.n_tensors, (double)st.n_params / 1e9,
            kern_type_name((uint32_t)s.type[MKM_G_EXPERTS]),
            kern_type_name((uint32_t)s.type[MKM_G_ATTN]),
            kern_type_name((uint32_t)s.type[MKM_G_EMBD]),
            s.tied ? "tied" : kern_type_name((uint32_t)s.type[MKM_G_OUTPUT]),
            kern_type_name((uint32_t)s.type[MKM_G_ROUTER]),
            kern_type_name((uint32_t)s.type[MKM_G_NORM]), st.file_bytes,
            gib(b1, sizeof b1, st.file_bytes));
    if (!s.dry_run && st.seconds > 0)
        fprintf(f, "moed-mkmodel: %.2f s, %.0f MB/s with %d threads (%.0f MB/s per thread), "
                "init %s, seed %" PRIu64 "\n", st.seconds, (double)st.data_bytes / st.seconds / 1e6,
                st.threads, (double)st.data_bytes / st.seconds / 1e6 / st.threads,
                s.init == MKM_INIT_BLOCKS ? "blocks" : "gauss", s.seed);
    return 0;
}
