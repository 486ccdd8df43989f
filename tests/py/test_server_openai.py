"""`moed serve` through the real `openai` Python client (issue 4 items 3 and 8).

    /usr/bin/python3 -m pytest -q -rs tests/py/test_server_openai.py

One daemon on the random-weight tiny model (conftest.py) for the module.
The model writes gibberish, so the tests check structure, counts and
determinism, not words: greedy (temperature 0) runs are repeatable, so a
streamed and a non-streamed run of the same request must give the same text,
and a stop string cut out of a greedy run must end the same run right there.
"""

from __future__ import annotations

import math
import time

import pytest

from conftest import TINY_NAME, chatml, check_error_object, serve_available, tokenize

_serve_ok, _serve_why = serve_available()
if not _serve_ok:  # one line in -rs for the whole file
    pytest.skip(_serve_why, allow_module_level=True)

openai = pytest.importorskip("openai", reason="the openai package is not installed")

MODEL = TINY_NAME
PROMPT = "Hello world, this is a test"


@pytest.fixture(scope="module")
def client(daemon):
    return daemon.openai()


def complete(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("temperature", 0)
    return client.completions.create(**kw)


def chat(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", [{"role": "user", "content": "Say something."}])
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(**kw)


def collect_completion_stream(stream):
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    return chunks, text


def collect_chat_stream(stream):
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    return chunks, text


# ===========================================================================
# /v1/models


def test_models_list(client, daemon):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL], ids
    m = models.data[0]
    assert m.object == "model"
    assert isinstance(m.created, int) and m.created > 0
    assert isinstance(m.owned_by, str)
    raw = daemon.get("/v1/models")
    assert raw.status == 200
    assert raw.header("Content-Type").startswith("application/json")
    assert raw.json()["object"] == "list"


# ===========================================================================
# completions


def test_completion_basic(client, tiny_model):
    t0 = int(time.time())
    r = complete(client, max_tokens=8)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == MODEL
    assert abs(r.created - t0) < 120
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert isinstance(c.text, str)
    assert c.finish_reason == "length"
    assert c.logprobs is None
    n_prompt = len(tokenize(tiny_model, PROMPT))
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == n_prompt + 8


@pytest.mark.parametrize("n", [1, 3, 17])
def test_completion_max_tokens_length(client, n):
    r = complete(client, max_tokens=n)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == n


def test_completion_greedy_is_repeatable(client):
    a = complete(client, max_tokens=12).choices[0].text
    b = complete(client, max_tokens=12).choices[0].text
    assert a == b


def test_completion_token_id_prompt(client, tiny_model):
    ids = tokenize(tiny_model, PROMPT)
    by_text = complete(client, max_tokens=10)
    by_ids = complete(client, prompt=ids, max_tokens=10)
    assert by_ids.usage.prompt_tokens == len(ids)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_completion_prompt_list_of_one(client):
    a = complete(client, max_tokens=6)
    b = complete(client, prompt=[PROMPT], max_tokens=6)
    assert b.choices[0].text == a.choices[0].text
    assert b.usage.prompt_tokens == a.usage.prompt_tokens


def test_completion_stream_matches_non_stream(client):
    ref = complete(client, max_tokens=16)
    chunks, text = collect_completion_stream(complete(client, max_tokens=16, stream=True))
    assert text == ref.choices[0].text
    assert chunks, "no chunks"
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    for c in chunks:
        assert c.object == "text_completion"
        assert c.model == MODEL
        assert len(c.choices) == 1 and c.choices[0].index == 0
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1]), finishes
    # without include_usage no chunk carries usage
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_completion_stream_include_usage(client, tiny_model):
    chunks, text = collect_completion_stream(complete(
        client, max_tokens=9, stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == []
    n_prompt = len(tokenize(tiny_model, PROMPT))
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens,
            last.usage.total_tokens) == (n_prompt, 9, n_prompt + 9)
    assert body, "only a usage chunk"
    for c in body:
        assert c.usage is None  # "usage": null on every other chunk
        assert len(c.choices) == 1
    assert body[-1].choices[0].finish_reason == "length"
    assert text == complete(client, max_tokens=9).choices[0].text


def test_completion_logprobs(client):
    r = complete(client, max_tokens=6, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None
    n = r.usage.completion_tokens
    assert n == 6
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n
    assert all(b >= a for a, b in zip(lp.text_offset, lp.text_offset[1:])), lp.text_offset
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert isinstance(tok, str)
        assert l <= 1e-6 and math.isfinite(l)
        assert len(top) == 3, top
        assert all(v <= 1e-6 for v in top.values())
        # greedy: the chosen token is the most likely one
        assert abs(l - max(top.values())) < 1e-3, (tok, l, top)
    if not any(t.startswith("bytes:") for t in lp.tokens):
        assert "".join(lp.tokens) == r.choices[0].text
    # the logprobs request does not change the text
    assert r.choices[0].text == complete(client, max_tokens=6).choices[0].text


def test_completion_logprobs_stream(client):
    ref = complete(client, max_tokens=8, logprobs=2)
    chunks, text = collect_completion_stream(complete(client, max_tokens=8, logprobs=2,
                                                      stream=True))
    assert text == ref.choices[0].text
    toks, lps = [], []
    for c in chunks:
        lp = c.choices[0].logprobs
        if lp is not None and lp.tokens:
            toks += lp.tokens
            lps += lp.token_logprobs
    assert toks == ref.choices[0].logprobs.tokens
    assert all(abs(a - b) < 1e-4 for a, b in zip(lps, ref.choices[0].logprobs.token_logprobs))


def _greedy_tokens(client, n=24):
    r = complete(client, max_tokens=n, logprobs=1)
    return r.choices[0].text, r.choices[0].logprobs.tokens


def _straddling_stop(text, tokens):
    """A stop string made of the end of one token and the start of the next,
    with its first occurrence in text, or None."""
    pos = 0
    for a, b in zip(tokens, tokens[1:]):
        start = pos
        pos += len(a)
        if a.startswith("bytes:") or b.startswith("bytes:") or "\ufffd" in a + b:
            continue
        if len(a) >= 2 and len(b) >= 2 and (a[-2:] + b[:2]).strip():
            s = a[-2:] + b[:2]
            i = text.find(s)
            if i > 0 and i == start + len(a) - 2:  # first occurrence is the straddling one
                return s, i
    return None


def test_stop_straddling_tokens(client):
    text, tokens = _greedy_tokens(client)
    found = _straddling_stop(text, tokens)
    if not found:
        pytest.skip(f"no two-character-token pair in this greedy output: {tokens!r}")
    stop, i = found
    r = complete(client, max_tokens=24, stop=stop)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[:i], (stop, text)
    assert stop not in r.choices[0].text
    assert r.usage.completion_tokens <= 24

    chunks, streamed = collect_completion_stream(complete(client, max_tokens=24, stop=stop,
                                                          stream=True))
    assert streamed == text[:i]
    assert chunks[-1].choices[0].finish_reason == "stop"
    for c in chunks:
        assert stop not in c.choices[0].text


def test_stop_list_earliest_wins_and_absent_stop(client):
    text, tokens = _greedy_tokens(client)
    if len(text) < 12:
        pytest.skip(f"greedy text too short: {text!r}")
    late, early = text[8:11], text[3:5]
    if not late.strip() or not early.strip():
        pytest.skip(f"whitespace stops in {text!r}")
    i = min(text.find(early), text.find(late))
    r = complete(client, max_tokens=24, stop=["\x01never\x02", late, early, "zzzzqqqq"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[:i]
    r = complete(client, max_tokens=24, stop=["\x01never\x02"])
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].text == text


def test_seed_determinism(client):
    kw = dict(max_tokens=16, temperature=1.0, top_p=1.0)
    a = complete(client, seed=1234, **kw).choices[0].text
    b = complete(client, seed=1234, **kw).choices[0].text
    assert a == b, "same seed, different text"
    _, s = collect_completion_stream(complete(client, seed=1234, stream=True, **kw))
    assert s == a, "same seed, streamed text differs"
    others = {complete(client, seed=sd, **kw).choices[0].text for sd in (1, 2, 3)}
    assert others != {a}, "three other seeds all gave the seed-1234 text"


def test_completion_echo(client):
    """echo: the prompt comes first, then the completion; usage counts the
    completion only."""
    ref = complete(client, max_tokens=6)
    r = complete(client, max_tokens=6, echo=True)
    assert r.choices[0].text == PROMPT + ref.choices[0].text
    assert r.usage.completion_tokens == 6
    _, text = collect_completion_stream(complete(client, max_tokens=6, echo=True, stream=True))
    assert text == PROMPT + ref.choices[0].text


def test_penalties_and_extensions_accepted(client):
    r = complete(client, max_tokens=5, temperature=0.7, top_p=0.9, seed=7,
                 presence_penalty=0.5, frequency_penalty=0.5,
                 extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
                             "some_unknown_field": {"x": 1}},
                 user="tester")
    assert r.usage.completion_tokens == 5


# ===========================================================================
# chat


def test_chat_basic(client, tiny_model):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something."}]
    t0 = int(time.time())
    r = chat(client, messages=msgs, max_tokens=8)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    assert abs(r.created - t0) < 120
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str)
    assert c.finish_reason == "length"
    assert c.logprobs is None
    n_prompt = len(tokenize(tiny_model, chatml(msgs), special=True))
    assert r.usage.prompt_tokens == n_prompt, "prompt is not the ChatML fallback rendering"
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == n_prompt + 8


def test_chat_max_completion_tokens(client):
    r = chat(client, max_completion_tokens=5)
    assert r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"


def test_chat_content_parts_equal_joined_string(client):
    parts = chat(client, max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Say"}, {"type": "text", "text": "something."}]}])
    joined = chat(client, max_tokens=6, messages=[{"role": "user",
                                                    "content": "Say\nsomething."}])
    assert parts.usage.prompt_tokens == joined.usage.prompt_tokens
    assert parts.choices[0].message.content == joined.choices[0].message.content


def test_chat_multi_turn_and_developer_role(client):
    r = chat(client, max_tokens=4, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again"}])
    assert r.usage.completion_tokens == 4


def test_chat_stream_shape(client):
    ref = chat(client, max_tokens=12)
    chunks, text = collect_chat_stream(chat(client, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    assert text == ref.choices[0].message.content
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == MODEL
    first = body[0].choices[0]
    assert first.delta.role == "assistant"
    assert first.delta.content == ""
    assert first.finish_reason is None
    fin = body[-1].choices[0]
    assert fin.finish_reason == "length"
    assert fin.delta.content in (None, "")
    for c in body[1:-1]:
        assert c.usage is None
        assert c.choices[0].finish_reason is None
        assert c.choices[0].delta.role in (None, "assistant")


def test_chat_logprobs(client):
    r = chat(client, max_tokens=5, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert len(lp.content) == r.usage.completion_tokens == 5
    for t in lp.content:
        assert isinstance(t.token, str)
        assert t.logprob <= 1e-6
        assert isinstance(t.bytes, list) and all(0 <= b < 256 for b in t.bytes)
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-3  # greedy
    assert b"".join(bytes(t.bytes) for t in lp.content).decode("utf-8", "replace") \
        .replace("\ufffd", "") == r.choices[0].message.content.replace("\ufffd", "")


def test_chat_logprobs_stream_count(client):
    chunks, _ = collect_chat_stream(chat(client, max_tokens=7, logprobs=True, top_logprobs=1,
                                         stream=True, stream_options={"include_usage": True}))
    n = 0
    for c in chunks:
        if c.choices and c.choices[0].logprobs is not None and c.choices[0].logprobs.content:
            n += len(c.choices[0].logprobs.content)
    assert n == chunks[-1].usage.completion_tokens == 7


def test_chat_stop(client):
    ref = chat(client, max_tokens=20).choices[0].message.content
    if len(ref) < 8 or not ref[4:7].strip():
        pytest.skip(f"greedy chat text unsuitable: {ref!r}")
    stop = ref[4:7]
    i = ref.find(stop)
    r = chat(client, max_tokens=20, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ref[:i]
    chunks, text = collect_chat_stream(chat(client, max_tokens=20, stop=[stop], stream=True))
    assert text == ref[:i]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_chat_seed(client):
    kw = dict(max_tokens=10, temperature=1.0, seed=99)
    assert chat(client, **kw).choices[0].message.content == \
        chat(client, **kw).choices[0].message.content


# ===========================================================================
# errors as the client sees them


def test_client_bad_request_n2(client):
    with pytest.raises(openai.BadRequestError) as ei:
        complete(client, max_tokens=4, n=2)
    assert ei.value.status_code == 400
    assert ei.value.param == "n"


def test_client_bad_request_stream(client):
    # errors are found before the 200 headers: a stream request gets a 400 too
    with pytest.raises(openai.BadRequestError) as ei:
        list(chat(client, max_tokens=-1, stream=True))
    assert ei.value.param in ("max_tokens", "max_completion_tokens")


def test_client_context_length(client):
    with pytest.raises(openai.BadRequestError) as ei:
        complete(client, prompt=" hello" * 700, max_tokens=4)
    assert ei.value.code == "context_length_exceeded"


def test_client_unknown_model_is_404_or_served(client):
    """A model name other than the served one: 404 model_not_found, or served
    under the daemon's own name (llama.cpp's behaviour); never a 5xx."""
    try:
        r = complete(client, model="no-such-model", max_tokens=2)
    except openai.NotFoundError as e:
        assert e.code == "model_not_found"
    else:
        assert r.usage.completion_tokens == 2


# ===========================================================================
# the default model (model/default/moed-shakespeare.gguf), once it exists


@pytest.fixture(scope="module")
def shakespeare(moed_serve, default_model):
    from conftest import Daemon

    d = Daemon(default_model, name="default-model").start()
    yield d
    try:
        d.stop()
    finally:
        d.kill()


def test_default_model_writes_text(shakespeare):
    cl = shakespeare.openai()
    ids = [m.id for m in cl.models.list().data]
    assert ids == ["moed-shakespeare"], ids
    r = cl.completions.create(model=ids[0], prompt="ROMEO:\n", max_tokens=48, temperature=0.7,
                              seed=3)
    text = r.choices[0].text
    assert r.usage.completion_tokens == 48 or r.choices[0].finish_reason == "stop"
    assert text.strip(), "empty text"
    wordy = sum(ch.isalpha() or ch in " \n',.;:!?-" for ch in text) / len(text)
    assert wordy > 0.9, f"does not look like text: {text!r}"


def test_default_model_chat(shakespeare):
    cl = shakespeare.openai()
    msgs = [{"role": "user", "content": "Speak, friend."}]
    r = cl.chat.completions.create(model="moed-shakespeare", messages=msgs, max_tokens=24,
                                   temperature=0)
    assert r.choices[0].message.role == "assistant"
    # ChatML markers are control tokens of this vocabulary: one id each
    n = len(tokenize(shakespeare.model, chatml(msgs), special=True))
    assert r.usage.prompt_tokens == n
    chunks, text = collect_chat_stream(cl.chat.completions.create(
        model="moed-shakespeare", messages=msgs, max_tokens=24, temperature=0, stream=True))
    assert text == r.choices[0].message.content
    assert "<|im_start|>" not in text


def test_chat_template_kwargs_enable_thinking(make_daemon):
    """chat_template_kwargs.enable_thinking reaches the chat template: with
    Qwen3's, false opens the answer with an empty <think></think> block, so
    the prompt has more tokens; a wrong type is 400 naming the field."""
    d = make_daemon(["--chat-template", "qwen3"], name="thinking")
    msgs = [{"role": "user", "content": "Hello there"}]

    def prompt_tokens(**extra):
        r = d.post("/v1/chat/completions", {"model": TINY_NAME, "messages": msgs,
                                            "max_tokens": 1, **extra})
        assert r.status == 200, (r.status, r.body[:300])
        return r.json()["usage"]["prompt_tokens"]

    default = prompt_tokens()
    on = prompt_tokens(chat_template_kwargs={"enable_thinking": True})
    off = prompt_tokens(chat_template_kwargs={"enable_thinking": False})
    assert on == default, (on, default)
    assert off > on, (off, on)
    assert prompt_tokens(chat_template_kwargs={"unknown": 1}) == default
    for kw, param in (({"enable_thinking": "no"}, "chat_template_kwargs.enable_thinking"),
                      ({"enable_thinking": 1}, "chat_template_kwargs.enable_thinking"),
                      (True, "chat_template_kwargs")):
        r = d.post("/v1/chat/completions", {"model": TINY_NAME, "messages": msgs,
                                            "max_tokens": 1, "chat_template_kwargs": kw})
        assert r.status == 400, (kw, r.status, r.body[:300])
        check_error_object(r.body, 400, param=param)
