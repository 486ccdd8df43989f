/*
 * Tokenizer: text <-> token ids for the vocabularies GGUF files carry.
 *
 * Two algorithms, chosen by tokenizer.ggml.model:
 *   "gpt2"   byte-level BPE: the text is split into words by the model
 *            family's pre-tokenizer (PCRE2 regexes chosen by
 *            tokenizer.ggml.pre), each word's bytes are mapped to GPT-2's
 *            printable "byte characters" and merged pairwise in the order of
 *            tokenizer.ggml.merges (lowest rank first, leftmost first).
 *   "llama"  SentencePiece BPE with scores: spaces become U+2581, a space is
 *            prepended (add_space_prefix), characters are merged pairwise,
 *            highest-scoring vocabulary piece first; characters with no piece
 *            fall back to <0xXX> byte tokens.
 * Added tokens are matched in the text before either algorithm runs
 * (leftmost, then longest): USER_DEFINED tokens always, CONTROL and UNKNOWN
 * tokens only with TOK_ENC_SPECIAL.
 *
 * Invalid UTF-8 in the input is never an error.  Byte-level BPE encodes the
 * invalid bytes as their own byte tokens (the regexes treat them as
 * separators, so each run of them becomes a word of its own); SentencePiece
 * encodes each invalid byte with its <0xXX> token.  Either way tok_decode
 * gives the input back byte for byte, as far as the vocabulary has a token
 * for each byte: gpt-2's and SentencePiece's with byte fallback do; others
 * lack bytes that valid UTF-8 never holds (C0, C1, F5-FF) and some control
 * characters, and those bytes encode as <unk>, or are dropped when there
 * is no <unk> (as Hugging Face's BPE does with unknown characters).
 *
 * A struct tok is immutable after tok_load and does not point into the
 * GGUF (the file may be closed); encode and decode may run on several
 * threads at once.  Ids are int32_t in [0, tok_n_vocab); TOK_NULL is "none".
 */
#ifndef MOED_MODEL_TOK_H
#define MOED_MODEL_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct gguf;
struct tok;

#define TOK_NULL (-1)

enum tok_model {
    TOK_MODEL_BPE = 1, /* "gpt2": byte-level BPE with merges */
    TOK_MODEL_SPM = 2, /* "llama": SentencePiece BPE with scores */
};

/* tokenizer.ggml.token_type values (llama.cpp's numbering). */
enum tok_type {
    TOK_TYPE_UNDEFINED = 0, /* treated as NORMAL */
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

/*
 * Load the tokenizer from a GGUF's metadata.  Required: tokenizer.ggml.model,
 * .tokens; .merges for "gpt2"; .scores for "llama".  Optional: .token_type
 * (default NORMAL), .pre (default gpt-2's), .bos/.eos/.eot/.unknown/
 * .padding/.seperator (sic, llama.cpp's key; .separator too) _token_id
 * (-1 means none), .add_bos_token, .add_eos_token, .add_space_prefix
 * (SentencePiece only; default true), tokenizer.chat_template.
 * Array lengths that differ from the token count, ids out of range, bad
 * token types and wrong value types are errors naming the key (and index).
 * Recoverable oddities (an unknown or missing .pre, merges naming texts
 * that are not tokens, no token for printable ASCII bytes) load with a
 * message in tok_warning().
 *
 * Not done: Unicode normalisation (Qwen2's tokenizer.json asks for NFC;
 * text that is not NFC can tokenize differently from Hugging Face's), and
 * added tokens' lstrip/rstrip/single_word flags (GGUF does not carry them).
 */
int tok_load(struct tok **out, const struct gguf *g, struct moed_err *e);
void tok_free(struct tok *t);

/* "" when loading had nothing to say, else one line for the user. */
const char *tok_warning(const struct tok *t);

enum tok_model tok_model(const struct tok *t);
uint32_t tok_n_vocab(const struct tok *t);
/* The pre-tokenizer in use ("gpt-2", "llama-bpe", ...; "" for SPM). */
const char *tok_pre_name(const struct tok *t);

/* The token's text as stored in the vocabulary ("Ġthe", "▁the", "<0x0A>"),
 * NUL-terminated, length in *len (may be NULL); NULL for a bad id. */
const char *tok_text(const struct tok *t, int32_t id, size_t *len);
/* The bytes the token stands for ("Ġthe" -> " the", "<0x0A>" -> "\n"),
 * whatever its type; NULL for a bad id. */
const char *tok_piece(const struct tok *t, int32_t id, size_t *len);
enum tok_type tok_type(const struct tok *t, int32_t id); /* UNDEFINED for a bad id */
float tok_score(const struct tok *t, int32_t id);        /* 0 without scores */
/* Text -> id (exact vocabulary text, e.g. "<|im_end|>"), TOK_NULL if none. */
int32_t tok_find(const struct tok *t, const char *text, size_t len);
/* Longest piece in bytes (sizes buffers for streaming). */
size_t tok_max_piece(const struct tok *t);

/* Special ids (TOK_NULL when the vocabulary has none). */
int32_t tok_bos(const struct tok *t);
int32_t tok_eos(const struct tok *t);
int32_t tok_eot(const struct tok *t);
int32_t tok_unk(const struct tok *t);
int32_t tok_pad(const struct tok *t);
int32_t tok_sep(const struct tok *t);
/* CONTROL or UNKNOWN: rendered only on request, matched only on request. */
bool tok_is_control(const struct tok *t, int32_t id);
/* Ends generation: EOS, EOT, or a CONTROL token named like one of the
 * usual end-of-turn markers (<|im_end|>, <|eot_id|>, <|end|>, ...). */
bool tok_is_eog(const struct tok *t, int32_t id);
/* What the vocabulary asks for (add_bos_token, add_eos_token). SPM
 * defaults to BOS on, EOS off; BPE to both off. */
bool tok_wants_bos(const struct tok *t);
bool tok_wants_eos(const struct tok *t);
/* tokenizer.chat_template (NUL-terminated) or NULL. */
const char *tok_chat_template(const struct tok *t);

/* A growable id list; encode appends.  Zero-initialise, free with
 * tok_ids_free. */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};
void tok_ids_free(struct tok_ids *ids);

enum {
    TOK_ENC_BOS = 1u << 0,     /* prepend BOS (error if the vocabulary has none) */
    TOK_ENC_EOS = 1u << 1,     /* append EOS (same) */
    TOK_ENC_SPECIAL = 1u << 2, /* match CONTROL/UNKNOWN token texts in the input */
};
/* TOK_ENC_BOS / TOK_ENC_EOS as tok_wants_bos / tok_wants_eos say. */
unsigned tok_enc_defaults(const struct tok *t);

/* Tokenize len bytes of text (any bytes) and append the ids to out.
 * Errors: MOED_ENOTFOUND (BOS/EOS asked for but absent), MOED_ENOMEM,
 * MOED_ERANGE (the regex engine gave up on the input; message says where). */
int tok_encode(const struct tok *t, const char *text, size_t len, unsigned flags,
               struct tok_ids *out, struct moed_err *e);

/* A growable byte string; decode appends and keeps it NUL-terminated. */
struct tok_bytes {
    char *p;
    size_t n, cap;
};
void tok_bytes_free(struct tok_bytes *b);

enum {
    /* Render CONTROL/UNKNOWN/UNUSED tokens as their text (otherwise they
     * produce nothing). USER_DEFINED tokens always render. */
    TOK_DEC_SPECIAL = 1u << 0,
    /* SentencePiece with add_space_prefix: drop the one space that encoding
     * prepends (at the start and after each added token), so that
     * decode(encode(s)) == s (unless s holds U+2581 itself, which
     * SentencePiece cannot tell from a space).  No effect on BPE. */
    TOK_DEC_STRIP_SPACE = 1u << 1,
};

/* Append the bytes of ids to out: exactly the bytes the tokens stand for,
 * so the result may be invalid UTF-8 (use tok_stream for text to show).
 * Errors: MOED_EINVAL for an id out of range (message names index and id),
 * MOED_ENOMEM. */
int tok_decode(const struct tok *t, const int32_t *ids, size_t n, unsigned flags,
               struct tok_bytes *out, struct moed_err *e);

/*
 * Streaming detokenizer: feed ids one at a time, get back only complete,
 * valid UTF-8 characters; an incomplete sequence at the end of a token is
 * held until the next token completes it.  Bytes that cannot be part of a
 * valid character come out as U+FFFD, one per maximal invalid subpart
 * (Unicode's recommended practice, as WHATWG decoders do); a sequence still
 * incomplete at tok_stream_flush becomes one U+FFFD.  So the concatenated
 * output is always valid UTF-8, and equals tok_decode's bytes whenever
 * those are valid UTF-8.  Flags as for tok_decode.
 */
struct tok_stream {
    const struct tok *t;
    unsigned flags;
    bool at_start;   /* no token yet, or the last one was an added token */
    uint8_t pend[4]; /* bytes of an incomplete character */
    uint8_t npend, need;
    char *buf; /* output of the last call */
    size_t cap;
};
int tok_stream_init(struct tok_stream *s, const struct tok *t, unsigned flags, struct moed_err *e);
void tok_stream_free(struct tok_stream *s);
/* *out, *len: the characters completed by this id (possibly none), valid
 * until the next call.  MOED_EINVAL for a bad id (the stream is unchanged). */
int tok_stream_feed(struct tok_stream *s, int32_t id, const char **out, size_t *len,
                    struct moed_err *e);
/* End of stream: whatever is held, as U+FFFD. Resets for reuse. */
void tok_stream_flush(struct tok_stream *s, const char **out, size_t *len);

#endif
