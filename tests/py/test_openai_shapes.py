"""moed's OpenAI JSON (api/oai_resp.c, api/oai_err.c) against the openai package.

    python3 -m pytest -q tests/py/test_openai_shapes.py

The unit test `oai_shapes_write` (bin/moed-tests) writes the objects the C
builders produce for fixed inputs, including whole streams run through the
stop matcher, into $MOED_TEST_TMP/oai-shapes.  Here they are
  - validated with the openai package's pydantic types (Completion,
    ChatCompletion, ChatCompletionChunk, ErrorObject), and
  - fed to a real openai.OpenAI client through an httpx mock transport, as
    HTTP bodies and SSE streams, so the client's own parsing (and its error
    classes) sees exactly what moed would send.
Skips, with the reason, when `openai` is not importable or bin/moed-tests is
not built.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

openai = pytest.importorskip(
    "openai", reason="the openai package is not installed (pip install openai)"
)
pydantic = pytest.importorskip("pydantic")

# The HTTP library the client is built on: httpx, renamed httpx2 in newer
# openai releases; the mock transport must come from the same one.
import openai._base_client as _oai_base  # noqa: E402

httpx = getattr(_oai_base, "httpx2", None) or getattr(_oai_base, "httpx", None)
if httpx is None or not hasattr(httpx, "MockTransport"):
    pytest.skip("cannot find the openai client's httpx module", allow_module_level=True)

from openai.types import Completion  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402
from openai.types.shared import ErrorObject  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TESTS_BIN = Path(os.environ.get("MOED_TESTS_BIN", ROOT / "bin" / "moed-tests"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    if not TESTS_BIN.exists():
        pytest.skip(f"{TESTS_BIN} is not built (make all)")
    tmp = tmp_path_factory.mktemp("oai")
    env = dict(os.environ, MOED_TEST_TMP=str(tmp))
    run = subprocess.run(
        [str(TESTS_BIN), "oai_shapes_write"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok   oai_shapes_write" in run.stdout, run.stdout
    return tmp / "oai-shapes"


def load(d: Path, name: str) -> dict:
    return json.loads((d / name).read_text(encoding="utf-8"))


def load_lines(d: Path, name: str) -> list[dict]:
    return [json.loads(l) for l in (d / name).read_text(encoding="utf-8").splitlines() if l]


# ===========================================================================
# pydantic validation against the types


def test_completion_body(shapes):
    c = Completion.model_validate(load(shapes, "completion.json"))
    assert c.object == "text_completion"
    assert c.id.startswith("cmpl-")
    assert c.choices[0].text == "Hi there"
    assert c.choices[0].finish_reason == "length"
    assert c.choices[0].logprobs is None
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 2, 7)


def test_completion_logprobs(shapes):
    c = Completion.model_validate(load(shapes, "completion_logprobs.json"))
    lp = c.choices[0].logprobs
    assert lp.tokens == ["Hi", "bytes:\\xe4\\xbd"]
    assert lp.token_logprobs == [-0.25, -9999.0]
    assert lp.top_logprobs == [{"Hi": -0.25, "Hey": -1.5}, {"bytes:\\xa0": -3.0, "bytes:\\xe4\\xbd": -9999.0}]
    assert lp.text_offset == [0, 2]


def test_chat_body(shapes):
    c = ChatCompletion.model_validate(load(shapes, "chat.json"))
    assert c.object == "chat.completion"
    assert c.id == "chatcmpl-abc" and c.created == 1700000000 and c.model == "tiny"
    assert c.system_fingerprint == "fp_moed"
    m = c.choices[0].message
    assert m.role == "assistant" and m.content == "Hi \u4f60!"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.total_tokens == 7


def test_chat_logprobs(shapes):
    c = ChatCompletion.model_validate(load(shapes, "chat_logprobs.json"))
    content = c.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hi", "bytes:\\xe4\\xbd"]
    assert content[1].bytes == [0xE4, 0xBD]
    assert content[1].logprob == -9999.0
    assert [t.token for t in content[0].top_logprobs] == ["Hi", "Hey"]
    assert content[0].top_logprobs[1].bytes == list(b"Hey")


def check_stream_tail(raw: list[dict]):
    # include_usage: every chunk has the key "usage", null but for the last,
    # which has no choices
    assert all("usage" in c for c in raw)
    assert all(c["usage"] is None for c in raw[:-1])
    assert raw[-1]["choices"] == []
    assert raw[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    assert len({c["id"] for c in raw}) == 1 and len({c["created"] for c in raw}) == 1


@pytest.mark.parametrize("name", ["chat_stream.jsonl", "chat_stream_logprobs.jsonl"])
def test_chat_stream(shapes, name):
    raw = load_lines(shapes, name)
    chunks = [ChatCompletionChunk.model_validate(c) for c in raw]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert first.finish_reason is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, w\u00f6rld "  # the stop string "END" never shows
    fin = chunks[-2].choices[0]
    assert fin.finish_reason == "stop" and raw[-2]["choices"][0]["delta"] == {}
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    check_stream_tail(raw)
    if "logprobs" in name:
        toks = [t.token for c in chunks[1:-2] for t in c.choices[0].logprobs.content]
        assert toks == ["Hello", ",", "bytes: w\\xc3", "bytes:\\xb6rld", " E", "ND"]


@pytest.mark.parametrize("name", ["completion_stream.jsonl", "completion_stream_logprobs.jsonl"])
def test_completion_stream(shapes, name):
    raw = load_lines(shapes, name)
    for c in raw:
        try:
            Completion.model_validate(c)
        except pydantic.ValidationError as e:
            # The types declare finish_reason non-null, yet OpenAI streams null
            # there until the last chunk (the client builds chunks without
            # validating).  That must be the only difference.
            for err in e.errors():
                assert err["loc"] == ("choices", 0, "finish_reason"), err
                assert err["input"] is None, err
    assert "".join(c["choices"][0]["text"] for c in raw if c["choices"]) == "Hello, w\u00f6rld "
    assert raw[-2]["choices"][0]["finish_reason"] == "stop"
    check_stream_tail(raw)
    if "logprobs" in name:
        offs = [o for c in raw[:-2] for o in c["choices"][0]["logprobs"]["text_offset"]]
        assert offs == [0, 5, 6, 9, 12, 14]


def test_error_objects(shapes):
    e = load(shapes, "error.json")
    assert set(e) == {"error"} and list(e["error"]) == ["message", "type", "param", "code"]
    obj = ErrorObject.model_validate(e["error"])
    assert obj.type == "invalid_request_error" and obj.param == "temperature"
    assert obj.code == "invalid_type"
    e = ErrorObject.model_validate(load(shapes, "error_context.json")["error"])
    assert e.code == "context_length_exceeded"
    assert e.message.startswith("This model's maximum context length is 4096 tokens.")


# ===========================================================================
# a real client reading our bytes


def client_for(handler) -> "openai.OpenAI":
    return openai.OpenAI(
        api_key="test",
        base_url="http://moed.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def sse(objs: list[dict]) -> bytes:
    body = "".join(f"data: {json.dumps(o, ensure_ascii=False)}\n\n" for o in objs)
    return (body + "data: [DONE]\n\n").encode()


def test_client_reads_bodies(shapes):
    chat, cmpl = load(shapes, "chat_logprobs.json"), load(shapes, "completion.json")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=chat if request.url.path.endswith("/chat/completions") else cmpl)

    cl = client_for(handler)
    r = cl.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(r, ChatCompletion)
    assert r.choices[0].logprobs.content[0].token == "Hi"
    r = cl.completions.create(model="tiny", prompt="hi")
    assert r.choices[0].text == "Hi there" and r.usage.total_tokens == 7


def test_client_reads_streams(shapes):
    chat, cmpl = load_lines(shapes, "chat_stream.jsonl"), load_lines(shapes, "completion_stream.jsonl")

    def handler(request: httpx.Request) -> httpx.Response:
        objs = chat if request.url.path.endswith("/chat/completions") else cmpl
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(objs))

    cl = client_for(handler)
    got = list(
        cl.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(got) == len(chat)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Hello, w\u00f6rld "
    assert got[-1].usage.completion_tokens == 6
    got = list(cl.completions.create(model="tiny", prompt="hi", stream=True))
    assert "".join(c.choices[0].text for c in got if c.choices) == "Hello, w\u00f6rld "
    assert got[-2].choices[0].finish_reason == "stop"


def test_client_raises_our_errors(shapes):
    err = load(shapes, "error.json")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=err)

    with pytest.raises(openai.BadRequestError) as ei:
        client_for(handler).completions.create(model="tiny", prompt="hi", temperature=0.5)
    assert ei.value.status_code == 400
    assert ei.value.code == "invalid_type" and ei.value.param == "temperature"
    assert ei.value.type == "invalid_request_error"
