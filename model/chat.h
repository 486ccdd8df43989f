/*
 * Chat templates: a list of messages -> the prompt text the model was
 * trained on.
 *
 * GGUF files carry the model's Hugging Face chat template as Jinja source
 * (tokenizer.chat_template).  moed runs no Jinja: it recognises the template's
 * family by distinctive markers in that text (chat_template_detect) and
 * renders with a built-in C implementation of it that produces exactly the
 * string transformers' apply_chat_template produces for plain-text
 * conversations (tests/unit/test_chat.c compares with the real templates).
 * The families and the variants told apart inside them:
 *
 *   chatml          <|im_start|>role\n...<|im_end|>\n (Qwen1.5/2/2.5, most
 *                   fine-tunes); a default system prompt written into the
 *                   template (Qwen2/2.5's "You are Qwen ...") is found and used
 *   qwen3           ChatML plus Qwen3's <think> handling (enable_thinking;
 *                   reasoning kept only after the last user query)
 *   qwen3-thinking  Qwen3 "Thinking-2507": the generation prompt opens <think>\n
 *   llama3          <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
 *                   (Llama 3; content trimmed as Jinja's |trim does)
 *   llama3.1        Llama 3.1/3.2/3.3: a system header that always carries
 *                   "Cutting Knowledge Date" and "Today Date"
 *   mistral         Mixtral-8x7B / Mistral v0.1-0.2 official ("v1"):
 *                   <s> [INST] sys\n\nuser [/INST] answer</s>
 *   mistral-legacy  their first template: <s>[INST] user [/INST]answer</s>
 *   mistral-v3      Mistral 7B v0.3, Mixtral-8x22B: [INST] user[/INST] answer</s>,
 *                   the system prompt prepended to the last user message
 *   mistral-v3-tekken, mistral-v7, mistral-v7-tekken   (Nemo, Large 2411, Small 3)
 *   deepseek2       DeepSeek-V2(-Lite)-Chat: <bos>sys\n\nUser: ...\n\nAssistant: ...<eos>
 *   deepseek3       DeepSeek-V3: <bos>sys<｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>
 *   deepseek-r1     DeepSeek-R1: as V3, reasoning dropped from history, the
 *                   generation prompt opens <think>\n
 *   deepseek3.1     DeepSeek-V3.1: <｜Assistant｜></think> opens an answer
 *                   (<think> when enable_thinking is 1)
 *   tulu            OLMoE / OLMo-2 / Tulu: <|user|>\n...\n<|assistant|>\n...<eos>
 *   gpt-oss         OpenAI harmony: <|start|>role<|message|>...<|end|>
 *
 * Anything else (or no template at all) falls back to chatml, and
 * chat_template_warning says so in one line for the daemon to show at
 * start-up.  The config option chat_template names a format instead
 * (chat_template_from_name).
 *
 * BOS: the llama3, mistral, deepseek and tulu templates write the BOS text
 * themselves ({{ bos_token }}).  chat_template_adds_bos tells the caller
 * not to add another one when tokenizing (tok_encode without TOK_ENC_BOS).
 * The prompt's markers are control tokens, so it is tokenized with
 * TOK_ENC_SPECIAL, as transformers does.  That also turns marker text
 * inside a message into control tokens; struct chat_prompt's spans say
 * which bytes came from messages, for a caller that would rather encode
 * those without TOK_ENC_SPECIAL (at the cost of possibly different merges
 * at the joins than the whole string would get).
 *
 * Plain text only: tools, tool calls and images are not rendered; a tool
 * result (role tool) is, by the formats that have a plain-text turn for it
 * (chatml, qwen3, llama3).
 *
 * Validation (chat_render fails with MOED_EINVAL, the message naming the
 * message index): an empty list, an unknown role, a role order the format
 * cannot express (mistral, mistral-legacy, -v3, -v3-tekken: user and
 * assistant alternate, starting with user, after an optional first system
 * message; gpt-oss: a system message only first), a tool message in the
 * other formats (their templates drop it or need tool calls), assistant
 * text holding gpt-oss channel tags.  Where the real template silently
 * drops a message (a lone system message for mistral, a later system
 * message for gpt-oss, tool results), moed reports it instead.  The API
 * layer answers 400.
 *
 * Deviation on purpose: mistral-legacy's template raises an error for any
 * system message; moed folds a first system message into the first user
 * message as the same models' newer official template (mistral) does.
 *
 * A struct chat_template is immutable after creation; chat_render may run on
 * several threads at once.
 */
#ifndef MOED_MODEL_CHAT_H
#define MOED_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/err.h"

struct tok;
struct chat_template;

enum chat_role {
    CHAT_ROLE_SYSTEM = 0,
    CHAT_ROLE_USER = 1,
    CHAT_ROLE_ASSISTANT = 2,
    CHAT_ROLE_TOOL = 3, /* a tool's result, as plain text */
    CHAT_ROLE_COUNT
};

/* "system", "user", "assistant", "tool"; "?" for a bad value. */
const char *chat_role_name(enum chat_role r);
/* Parse a request's role string ("developer" is OpenAI's newer name for
 * "system").  Unknown: MOED_EINVAL, "messages[idx].role: unknown role ...". */
int chat_role_parse(const char *s, size_t len, size_t idx, enum chat_role *out, struct moed_err *e);

struct chat_msg {
    enum chat_role role;
    const char *content; /* UTF-8, any bytes; NULL only with content_len 0 */
    size_t content_len;
    /* Assistant messages, optional: the model's reasoning (OpenAI-style
     * "reasoning_content"; gpt-oss's "thinking").  NULL: none given (then
     * qwen3 takes it from <think>...</think> in content). */
    const char *reasoning;
    size_t reasoning_len;
};

enum chat_family {
    CHAT_FAMILY_CHATML,
    CHAT_FAMILY_QWEN3,
    CHAT_FAMILY_LLAMA3,
    CHAT_FAMILY_MISTRAL,
    CHAT_FAMILY_DEEPSEEK2,
    CHAT_FAMILY_DEEPSEEK3,
    CHAT_FAMILY_TULU,
    CHAT_FAMILY_GPT_OSS,
};

/*
 * A built-in format by name (see the list above; case-insensitive).  bos and
 * eos are the vocabulary's BOS/EOS texts for {{ bos_token }} / {{ eos_token }};
 * NULL means the family's usual text ("<s>", "<|begin_of_text|>", ...).
 * Unknown name: MOED_EINVAL, the message listing the valid names.
 */
int chat_template_from_name(struct chat_template **out, const char *name, const char *bos,
                            const char *eos, struct moed_err *e);
/*
 * Recognise a Jinja template's family.  Never fails for an unrecognised
 * template (or text NULL / empty): the result is chatml with a warning.
 * Errors: MOED_ENOMEM only.
 */
int chat_template_detect(struct chat_template **out, const char *text, const char *bos,
                         const char *eos, struct moed_err *e);
/*
 * What the daemon calls: name (the chat_template option) when non-empty,
 * else the tokenizer's tokenizer.chat_template; BOS/EOS texts from the
 * vocabulary ("" when it has none).
 */
int chat_template_for_tok(struct chat_template **out, const struct tok *t, const char *name,
                          struct moed_err *e);
void chat_template_free(struct chat_template *t);

/* The format in use, as chat_template_from_name takes it ("mistral-v3"). */
const char *chat_template_name(const struct chat_template *t);
enum chat_family chat_template_family(const struct chat_template *t);
/* The rendered prompt starts with the BOS text: do not add BOS again. */
bool chat_template_adds_bos(const struct chat_template *t);
/* "" or one line for the user (unrecognised template, fallback used). */
const char *chat_template_warning(const struct chat_template *t);
/* The names chat_template_from_name accepts, comma-separated. */
const char *chat_template_names(void);

struct chat_opts {
    bool add_generation_prompt; /* end with the assistant's turn opening */
    /* qwen3: -1 the template's default (thinking on), 0 off (an empty
     * <think></think> opens the answer), 1 on.  deepseek3.1: thinking
     * only with 1 (its default is off).  Other formats ignore it. */
    int enable_thinking;
    /* gpt-oss "Reasoning: ..." (low, medium, high); NULL: medium. */
    const char *reasoning_effort;
    /* The date that llama3.1 (Llama 3.2's strftime_now) and gpt-oss print;
     * NULL: today, local time, as transformers' strftime_now. */
    const struct tm *today;
};
#define CHAT_OPTS_DEFAULT ((struct chat_opts){.add_generation_prompt = true, .enable_thinking = -1})

/* Bytes [off, off + len) of the prompt are content (or reasoning) of
 * message msg, copied as given. */
struct chat_span {
    size_t off, len;
    size_t msg;
};

/* The rendered prompt (NUL-terminated).  Zero-initialise; chat_render
 * resets it first, so one struct can be reused; free with chat_prompt_free. */
struct chat_prompt {
    char *text;
    size_t len, cap;
    struct chat_span *spans;
    size_t n_spans, cap_spans;
};
void chat_prompt_free(struct chat_prompt *p);

/* Check that the format can express msgs; MOED_EINVAL with a message
 * naming the index and the problem. */
int chat_validate(const struct chat_template *t, const struct chat_msg *msgs, size_t n,
                  struct moed_err *e);
/* Validate, then render.  Errors: MOED_EINVAL (as chat_validate, or a bad
 * option), MOED_ENOMEM. */
int chat_render(const struct chat_template *t, const struct chat_msg *msgs, size_t n,
                const struct chat_opts *o, struct chat_prompt *out, struct moed_err *e);

#endif
