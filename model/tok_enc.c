/*
 * Encoding: added tokens first, then the model's algorithm on the text
 * between them.
 *
 * Added tokens are found leftmost-first, longest at each position (what
 * tokenizers' AddedVocabulary does); USER_DEFINED ones always, CONTROL and
 * UNKNOWN ones with TOK_ENC_SPECIAL.  The stretches of text between them
 * go to the pre-tokenizer and BPE (gpt2), or to SentencePiece (llama),
 * which prepends its space to each stretch (every stretch starts the text
 * or follows an added token), as sentencepiece does when the Hugging Face
 * tokenizer hands it the stretches one by one.
 */
#include <stdlib.h>

#include "model/tok_impl.h"

struct enc {
    const struct tok *t;
    struct tok_ids *out;
    struct tok_work ws;
    struct tok_pre_scratch *pre;
    struct tok_spans words;
    struct moed_err *e;
};

static int enc_text(struct enc *c, const uint8_t *s, size_t n)
{
    const struct tok *t = c->t;
    if (n == 0)
        return 0;
    if (t->model == TOK_MODEL_SPM) {
        if (tok_spm_text(t, s, n, t->add_space_prefix, c->out, &c->ws))
            return moed_err_set(c->e, MOED_ENOMEM, "tokenizer: out of memory");
        return 0;
    }
    c->words.n = 0;
    int rc = tok_pre_split(t->pre, (const char *)s, n, &c->words, &c->pre, c->e);
    if (rc)
        return rc;
    for (size_t i = 0; i < c->words.n; i++) {
        const struct tok_span *w = &c->words.v[i];
        if (tok_bpe_word(t, s + w->off, w->len, c->out, &c->ws))
            return moed_err_set(c->e, MOED_ENOMEM, "tokenizer: out of memory");
    }
    return 0;
}

static int encode(struct enc *c, const uint8_t *s, size_t len, unsigned flags)
{
    const struct tok *t = c->t;
    if (flags & TOK_ENC_BOS) {
        if (t->bos < 0)
            return moed_err_set(c->e, MOED_ENOTFOUND,
                                "BOS asked for, but the vocabulary has none "
                                "(tokenizer.ggml.bos_token_id)");
        if (tok_ids_push(c->out, t->bos))
            return moed_err_set(c->e, MOED_ENOMEM, "tokenizer: out of memory");
    }
    if (flags & TOK_ENC_EOS && t->eos < 0)
        return moed_err_set(c->e, MOED_ENOTFOUND,
                            "EOS asked for, but the vocabulary has none "
                            "(tokenizer.ggml.eos_token_id)");

    bool special = flags & TOK_ENC_SPECIAL;
    bool scan = t->have_added || (special && t->have_control);
    size_t start = 0;
    int rc;
    for (size_t i = 0; scan && i < len;) {
        int32_t id;
        if (t->added.root[s[i]] < 0) {
            i++;
            continue;
        }
        size_t m = tok_trie_match(&t->added, s + i, len - i, special, &id);
        if (!m) {
            i++;
            continue;
        }
        if ((rc = enc_text(c, s + start, i - start)))
            return rc;
        if (tok_ids_push(c->out, id))
            return moed_err_set(c->e, MOED_ENOMEM, "tokenizer: out of memory");
        i += m;
        start = i;
    }
    if ((rc = enc_text(c, s + start, len - start)))
        return rc;

    if (flags & TOK_ENC_EOS && tok_ids_push(c->out, t->eos))
        return moed_err_set(c->e, MOED_ENOMEM, "tokenizer: out of memory");
    return 0;
}

int tok_encode(const struct tok *t, const char *text, size_t len, unsigned flags,
               struct tok_ids *out, struct moed_err *e)
{
    struct enc c = {.t = t, .out = out, .e = e};
    size_t n0 = out->n;
    int rc = encode(&c, (const uint8_t *)(len ? text : ""), len, flags);
    if (rc)
        out->n = n0; /* nothing half-done */
    tok_work_free(&c.ws);
    tok_pre_scratch_free(c.pre);
    free(c.words.v);
    return rc;
}
