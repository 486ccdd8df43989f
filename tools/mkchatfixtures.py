#!/usr/bin/env python3
"""Render sample conversations with the real Jinja chat templates.

    python3 tools/mkchatfixtures.py [--shared ../shared] [--out tests/fixtures/chat]

Reads the "chat_template" of ../shared/hf-tokenizers/{qwen3,llama3}/
tokenizer_config.json, renders every conversation in CASES below with jinja2
set up as Hugging Face transformers sets it up for apply_chat_template
(sandboxed, trim_blocks and lstrip_blocks on, raise_exception, strftime_now
and a tojson without HTML escaping; the special tokens of
tokenizer_config.json as variables), and writes tests/fixtures/chat/<family>.json:

    {"family": ..., "source": ..., "bos_token": ..., "eos_token": ..., "template": ...,
     "cases": [{"name", "messages": [{"role", "content"[, "reasoning_content"]}],
                "add_generation_prompt", ["enable_thinking",] "expected"}]}

tests/unit/test_chat.c recognises "template" (a copy of the real template, so
the test needs no ../shared; it also checks the copy against ../shared when
that is there), renders the same conversations with moed's built-in format
and checks byte-for-byte equality with "expected".  A conversation
the template rejects (raise_exception) is written with "error": true and no
"expected".  Needs Python 3 and jinja2 (Debian: python3-jinja2).
"""

import argparse
import datetime
import json
import os
import sys

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:  # pragma: no cover
    sys.exit("mkchatfixtures: needs jinja2 (pip install jinja2, or apt install python3-jinja2)")


class TemplateError(Exception):
    pass


def hf_environment():
    """jinja2 as transformers' _compile_jinja_template configures it."""

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def token_text(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def u(text):
    return {"role": "user", "content": text}


def a(text, reasoning=None):
    m = {"role": "assistant", "content": text}
    if reasoning is not None:
        m["reasoning_content"] = reasoning
    return m


def s(text):
    return {"role": "system", "content": text}


def t(text):
    return {"role": "tool", "content": text}


# Conversations shared by both families: (name, messages, add_generation_prompt).
COMMON = [
    ("one_user", [u("Hello!")], True),
    ("one_user_no_prompt", [u("Hello!")], False),
    ("system_user", [s("You are a helpful assistant."), u("What is 2+2?")], True),
    ("multi_turn", [s("Be brief."), u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")],
     True),
    ("ends_with_assistant", [u("Hi"), a("Hello there.")], False),
    ("ends_with_assistant_prompt", [u("Hi"), a("Hello there.")], True),
    ("no_system_multi", [u("a"), a("b"), u("c"), a("d"), u("e")], True),
    ("whitespace", [s("  padded system \n"), u("\n\t lead and trail \t\n"),
                    a("  spaced answer  "), u(" x ")], True),
    ("unicode_space", [u("\u00a0\u3000nbsp and ideographic\u2028\u2003"), a("\u200b zero-width "),
                       u("\u0085next-line\x1f")], True),
    ("empty_content", [s(""), u(""), a(""), u("")], True),
    ("utf8", [u("Grüße, 世界! 🙂 — naïve café"), a("¡Hola! Привет 👋"), u("日本語で")], True),
    ("markup_in_content", [u("<|im_start|>user <|eot_id|> {{ x }} {% if %} [INST]"),
                           a("</s> <s> <|end|>"), u("\\n literal backslash-n")], True),
    ("newlines", [u("line1\nline2\n\n"), a("\n\nanswer\n\n"), u("\n")], True),
    ("system_middle", [u("Hi"), a("Hello."), s("Now answer in French."), u("How are you?")], True),
    ("two_users", [u("First."), u("Second.")], True),
    ("tool_result", [u("What is the weather?"), a("Let me check."),
                     t('{"temp": 21}'), t("sunny"), u("Thanks.")], True),
]

# Qwen3's <think> handling.
QWEN3 = [
    ("think_in_history", [u("Q1"), a("<think>\nreasoning one\n</think>\n\nAnswer one."), u("Q2")],
     True),
    ("think_last_assistant", [u("Q1"), a("<think>\nr\n</think>\n\nA1")], False),
    ("think_after_last_query_not_last",
     [u("Q1"), a("<think>r1</think>A1"), a("plain follow-up"), a("<think>\n\nr3\n\n</think>A3")],
     False),
    ("think_no_open_tag", [u("Q"), a("just reasoning</think>\n\nanswer")], False),
    ("think_two_closes", [u("Q"), a("<think>a</think>b</think>\nc")], False),
    ("think_nested_open", [u("Q"), a("x<think>y<think>\nz\n</think>\n\nw")], False),
    ("last_assistant_plain", [u("Q1"), a("A1 without thinking")], False),
    ("last_assistant_empty", [u("Q1"), a("")], False),
    ("reasoning_field", [u("Q1"), a("A1", reasoning="\nthought\n"), u("Q2"),
                         a("A2", reasoning="more")], False),
    ("reasoning_field_empty", [u("Q1"), a("A1", reasoning="")], False),
    ("reasoning_field_with_think_in_content", [u("Q1"), a("<think>x</think>A1", reasoning="r")],
     False),
    ("reasoning_before_last_query", [u("Q1"), a("A1", reasoning="r"), u("Q2")], True),
    ("tool_response_user_is_not_a_query",
     [u("Q1"), a("<think>r1</think>call"), u("<tool_response>\n42\n</tool_response>"),
      a("<think>r2</think>done")], False),
    ("only_tool_like_users",
     [u("<tool_response>x</tool_response>"), a("<think>r</think>A")], False),
    ("assistant_first", [a("<think>r</think>Greeting."), u("Hi")], True),
    ("tool_first", [t("result"), u("Q")], True),
    ("system_only", [s("Just a system prompt.")], True),
    ("assistant_only", [a("<think>t</think>\nx")], False),
]


def cases_for(family):
    out = []
    for name, msgs, agp in COMMON:
        out.append({"name": name, "messages": msgs, "add_generation_prompt": agp})
    if family == "qwen3":
        for name, msgs, agp in QWEN3:
            out.append({"name": name, "messages": msgs, "add_generation_prompt": agp})
        # enable_thinking: absent (the template's default), true and false.
        for et in (True, False):
            for name, msgs, agp in [COMMON[2], COMMON[3], QWEN3[0]]:
                out.append({"name": "%s_thinking_%s" % (name, str(et).lower()), "messages": msgs,
                            "add_generation_prompt": agp, "enable_thinking": et})
        out.append({"name": "no_prompt_thinking_false", "messages": [u("Hi")],
                    "add_generation_prompt": False, "enable_thinking": False})
    return out


def render(env, tmpl, config, case):
    kwargs = {}
    for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if k in config:
            kwargs[k] = token_text(config[k])
    if "additional_special_tokens" in config:
        kwargs["additional_special_tokens"] = config["additional_special_tokens"]
    if "enable_thinking" in case:
        kwargs["enable_thinking"] = case["enable_thinking"]
    return tmpl.render(messages=case["messages"], tools=None, documents=None,
                       add_generation_prompt=case["add_generation_prompt"], **kwargs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.environ.get("MOED_SHARED", "../shared"))
    ap.add_argument("--out", default="tests/fixtures/chat")
    args = ap.parse_args()
    env = hf_environment()
    os.makedirs(args.out, exist_ok=True)
    for family in ("qwen3", "llama3"):
        src = os.path.join(args.shared, "hf-tokenizers", family, "tokenizer_config.json")
        with open(src, encoding="utf-8") as f:
            config = json.load(f)
        tmpl = env.from_string(config["chat_template"])
        cases = cases_for(family)
        for case in cases:
            try:
                case["expected"] = render(env, tmpl, config, case)
            except TemplateError:
                case["error"] = True
        doc = {
            "family": family,
            "source": "hf-tokenizers/%s/tokenizer_config.json" % family,
            "generator": "tools/mkchatfixtures.py (jinja2 %s)" % jinja2.__version__,
            "bos_token": token_text(config.get("bos_token")),
            "eos_token": token_text(config.get("eos_token")),
            "template": config["chat_template"],
            "cases": cases,
        }
        path = os.path.join(args.out, family + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("%s: %d cases" % (path, len(cases)))


if __name__ == "__main__":
    main()
