"""Malformed and hostile requests against `moed serve` (issue 4 items 2, 3 and 8).

    /usr/bin/python3 -m pytest -q -rs tests/py/test_server_hostile.py

A table of requests, each sent as exact bytes on its own connection, each
answered with the right status and an OpenAI error object
({"error": {"message", "type", "param", "code"}}, type
invalid_request_error for 4xx), and GET /health still 200 after every one.
Where the transport's rules say so, the connection stays usable after the
error (a 4xx about the request's content) or is closed (a framing or limit
error).  Then the cases a table cannot hold: slowloris, bodies that lie about
their length, bodies over the limit while being sent, connection limits,
the API key.

The daemon runs with --max-body-size 64K, --header-timeout 1s and
--ctx-size 512 (conftest.BASE_ARGS).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from conftest import (CTX_SIZE, MAX_BODY, SLOW, TINY_NAME, ConnectionClosed, RawConn,
                      check_error_object, request_bytes, serve_available, wait_until)

_serve_ok, _serve_why = serve_available()
if not _serve_ok:  # one line in -rs for the whole file
    pytest.skip(_serve_why, allow_module_level=True)

MODEL = TINY_NAME
ANY = ...


@dataclass
class Case:
    id: str
    req: bytes
    status: int | frozenset
    param: object = ANY
    code: object = ANY
    after: str | None = None  # "keep": the connection serves another request; "close": closed
    allow: str | None = None  # 405: a method the Allow header must list
    allow_close: bool = False  # closing without a response is also acceptable


def comp(body, **headers) -> bytes:
    """POST /v1/completions with body (a dict, or exact bytes)."""
    if isinstance(body, dict):
        b = {"model": MODEL, "max_tokens": 2}
        b.update(body)
        body = json.dumps(b).encode()
    return request_bytes("POST", "/v1/completions", body, headers=headers or None)


def comp_without(key, **fields) -> bytes:
    b = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    b.update(fields)
    b.pop(key, None)
    return request_bytes("POST", "/v1/completions", b)


def chatq(body, **headers) -> bytes:
    if isinstance(body, dict):
        b = {"model": MODEL, "max_tokens": 2}
        b.update(body)
        body = json.dumps(b).encode()
    return request_bytes("POST", "/v1/chat/completions", body, headers=headers or None)


USER = [{"role": "user", "content": "hi"}]
P = {"prompt": "hi"}


def p(**kw):
    d = dict(P)
    d.update(kw)
    return d


def c(**kw):
    d = {"messages": USER}
    d.update(kw)
    return d


def starts(prefix):
    return lambda v: isinstance(v, str) and v.startswith(prefix)


LONG_PROMPT = " hello" * (CTX_SIZE + 100)  # one token per " hello" in GPT-2's vocabulary
S400 = 400
BAD_HTTP = frozenset({400})

CASES = [
    # ---- the body is not a JSON object -------------------------------------
    Case("json-truncated", comp(b'{"model": "x", "prompt": "hi",'), S400, param=None, after="keep"),
    Case("json-garbage", comp(b"this is not json"), S400, param=None, after="keep"),
    Case("json-trailing-data", comp(b'{"prompt": "hi"} {"x": 1}'), S400, param=None),
    Case("json-array-body", comp(b"[1, 2, 3]"), S400, code="invalid_type"),
    Case("json-string-body", comp(b'"hello"'), S400),
    Case("json-empty-body", comp(b""), S400, after="keep"),
    Case("json-nul-byte", comp(b'{"prompt": "a\x00b", "max_tokens": 2}'), S400),
    Case("json-escaped-nul", comp(b'{"prompt": "a\\u0000b", "max_tokens": 2}'), S400),
    Case("json-deep-nesting", comp(b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}"), S400),
    Case("json-duplicate-key", comp(b'{"prompt": "hi", "max_tokens": 2, "max_tokens": 3}'), S400,
         param="max_tokens"),
    # ---- text that is not UTF-8 ---------------------------------------------
    Case("utf8-invalid-prompt", comp(b'{"prompt": "abc \xff\xfe def", "max_tokens": 2}'), S400,
         param="prompt"),
    Case("utf8-overlong", comp(b'{"prompt": "\xc0\xaf", "max_tokens": 2}'), S400, param="prompt"),
    Case("utf8-surrogate-bytes", comp(b'{"prompt": "\xed\xa0\x80", "max_tokens": 2}'), S400,
         param="prompt"),
    Case("utf8-lone-surrogate-escape", comp(b'{"prompt": "x\\ud800y", "max_tokens": 2}'), S400),
    Case("utf8-invalid-chat-content",
         chatq(b'{"messages": [{"role": "user", "content": "\xff"}], "max_tokens": 2}'), S400,
         param=starts("messages")),
    Case("utf8-invalid-stop", comp(b'{"prompt": "hi", "stop": "\xfe", "max_tokens": 2}'), S400,
         param=starts("stop")),
    # ---- prompt --------------------------------------------------------------
    Case("prompt-missing", comp_without("prompt"), S400, param="prompt",
         code="missing_required_parameter"),
    Case("prompt-number", comp(p(prompt=5)), S400, param="prompt"),
    Case("prompt-object", comp(p(prompt={"text": "hi"})), S400, param="prompt"),
    Case("prompt-empty-array", comp(p(prompt=[])), S400, param="prompt"),
    Case("prompt-empty-string", comp(p(prompt="")), S400, param="prompt"),
    Case("prompt-id-out-of-vocab", comp(p(prompt=[15496, 99999999])), S400,
         param=starts("prompt")),
    Case("prompt-id-negative", comp(p(prompt=[-1])), S400, param=starts("prompt")),
    Case("prompt-id-float", comp(p(prompt=[1.5])), S400, param=starts("prompt")),
    Case("prompt-batch-of-two", comp(p(prompt=["a", "b"])), S400, param="prompt"),
    Case("prompt-mixed-array", comp(p(prompt=["a", 5])), S400, param="prompt"),
    # ---- counts: max_tokens, n, best_of -------------------------------------------------
    Case("max-tokens-negative", comp(p(max_tokens=-1)), S400, param="max_tokens",
         code="integer_below_min_value"),
    Case("max-tokens-zero", comp(p(max_tokens=0)), S400, param="max_tokens"),
    Case("max-tokens-string", comp(p(max_tokens="12")), S400, param="max_tokens",
         code="invalid_type"),
    Case("max-tokens-fraction", comp(p(max_tokens=1.5)), S400, param="max_tokens"),
    Case("max-tokens-huge", comp(p(max_tokens=1e300)), S400, param="max_tokens"),
    Case("max-tokens-int64-min", comp(b'{"prompt": "hi", "max_tokens": -9223372036854775808}'),
         S400, param="max_tokens"),
    Case("max-tokens-bool", comp(p(max_tokens=True)), S400, param="max_tokens"),
    Case("max-completion-tokens-negative", chatq(c(max_completion_tokens=-5)), S400,
         param="max_completion_tokens"),
    Case("n-2", comp(p(n=2)), S400, param="n"),
    Case("n-0", comp(p(n=0)), S400, param="n"),
    Case("n-negative-huge", comp(p(n=-2**40)), S400, param="n"),
    Case("chat-n-2", chatq(c(n=2)), S400, param="n"),
    Case("best-of-3", comp(p(best_of=3)), S400, param="best_of"),
    # ---- sampling ranges --------------------------------------------------------------
    Case("temperature-negative", comp(p(temperature=-0.5)), S400, param="temperature"),
    Case("temperature-too-high", comp(p(temperature=2.5)), S400, param="temperature"),
    Case("temperature-string", comp(p(temperature="hot")), S400, param="temperature"),
    Case("temperature-nan-literal", comp(b'{"prompt": "hi", "temperature": NaN}'), S400),
    Case("top-p-zero", comp(p(top_p=0)), S400, param="top_p"),
    Case("top-p-above-one", comp(p(top_p=1.5)), S400, param="top_p"),
    Case("top-k-negative", comp(p(top_k=-5)), S400, param="top_k"),
    Case("min-p-two", comp(p(min_p=2)), S400, param="min_p"),
    Case("presence-penalty-high", comp(p(presence_penalty=3)), S400, param="presence_penalty"),
    Case("frequency-penalty-low", comp(p(frequency_penalty=-3)), S400, param="frequency_penalty"),
    Case("repetition-penalty-zero", comp(p(repetition_penalty=0)), S400,
         param="repetition_penalty"),
    Case("seed-string", comp(p(seed="abc")), S400, param="seed"),
    Case("seed-fraction", comp(p(seed=1.5)), S400, param="seed"),
    Case("seed-2-to-70", comp(b'{"prompt": "hi", "seed": 1180591620717411303424}'), S400,
         param="seed"),
    # ---- stop ----------------------------------------------------------------
    Case("stop-five", comp(p(stop=["a", "b", "c", "d", "e"])), S400, param="stop"),
    Case("stop-empty-string", comp(p(stop="")), S400, param=starts("stop")),
    Case("stop-empty-in-list", comp(p(stop=["a", ""])), S400, param=starts("stop")),
    Case("stop-number", comp(p(stop=5)), S400, param=starts("stop")),
    Case("stop-too-long", comp(p(stop="x" * 2000)), S400, param=starts("stop")),
    Case("stop-list-of-numbers", comp(p(stop=[1, 2])), S400, param=starts("stop")),
    # ---- stream, logprobs ---------------------------------------------------------
    Case("stream-string", comp(p(stream="yes")), S400, param="stream"),
    Case("stream-options-without-stream", comp(p(stream_options={"include_usage": True})), S400,
         param=starts("stream_options")),
    Case("stream-options-include-usage-string",
         comp(p(stream=True, stream_options={"include_usage": "yes"})), S400,
         param=starts("stream_options")),
    Case("stream-options-not-object", comp(p(stream=True, stream_options=[1])), S400,
         param=starts("stream_options")),
    Case("logprobs-21", comp(p(logprobs=21)), S400, param="logprobs"),
    Case("logprobs-negative", comp(p(logprobs=-1)), S400, param="logprobs"),
    Case("chat-logprobs-number", chatq(c(logprobs=5)), S400, param="logprobs"),
    Case("chat-top-logprobs-21", chatq(c(logprobs=True, top_logprobs=21)), S400,
         param="top_logprobs"),
    # ---- unsupported features -----------------------------------------------------
    Case("logit-bias", comp(p(logit_bias={"50256": -100})), S400, param="logit_bias"),
    Case("suffix", comp(p(suffix="end")), S400, param="suffix"),
    Case("chat-tools", chatq(c(tools=[{"type": "function", "function": {"name": "f"}}])), S400,
         param="tools"),
    Case("chat-response-format-json", chatq(c(response_format={"type": "json_object"})), S400,
         param=starts("response_format")),
    Case("model-number", comp(p(model=5)), S400, param="model"),
    # ---- messages -------------------------------------------------------------------
    Case("messages-missing", chatq({"max_tokens": 2}), S400, param="messages",
         code="missing_required_parameter"),
    Case("messages-empty", chatq(c(messages=[])), S400, param="messages"),
    Case("messages-string", chatq(c(messages="hi")), S400, param="messages"),
    Case("messages-role-bogus", chatq(c(messages=[{"role": "wizard", "content": "hi"}])), S400,
         param=starts("messages")),
    Case("messages-role-missing", chatq(c(messages=[{"content": "hi"}])), S400,
         param=starts("messages")),
    Case("messages-content-number", chatq(c(messages=[{"role": "user", "content": 5}])), S400,
         param=starts("messages")),
    Case("messages-content-missing", chatq(c(messages=[{"role": "user"}])), S400,
         param=starts("messages")),
    Case("messages-image-part", chatq(c(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}])), S400,
         param=starts("messages")),
    Case("messages-item-not-object", chatq(c(messages=["hi"])), S400, param=starts("messages")),
    # ---- the context -------------------------------------------------------------------
    Case("context-prompt-too-long", comp(p(prompt=LONG_PROMPT)), S400,
         code="context_length_exceeded"),
    Case("context-chat-too-long", chatq(c(messages=[{"role": "user", "content": LONG_PROMPT}])),
         S400, param="messages", code="context_length_exceeded"),
    Case("context-max-tokens-beyond", comp(p(max_tokens=CTX_SIZE + 10)), S400,
         code="context_length_exceeded"),
    Case("context-ids-fill-context", comp(p(prompt=[15496] * CTX_SIZE, max_tokens=None)), S400,
         code="context_length_exceeded"),
    Case("context-stream-too-long", comp(p(prompt=LONG_PROMPT, stream=True)), S400,
         code="context_length_exceeded"),
    Case("stream-bad-param-is-json-400", comp(p(stream=True, max_tokens=-3)), S400,
         param="max_tokens"),
    # ---- /tokenize, /detokenize ------------------------------------------------------
    Case("tokenize-content-missing", request_bytes("POST", "/tokenize", {"text": "hi"}), S400,
         param="content", after="keep"),
    Case("tokenize-content-number", request_bytes("POST", "/tokenize", {"content": 5}), S400,
         param="content"),
    Case("tokenize-invalid-utf8", request_bytes("POST", "/tokenize", b'{"content": "\xff"}'), S400,
         param="content"),
    Case("tokenize-not-json", request_bytes("POST", "/tokenize", b"content=hi"), S400),
    Case("tokenize-flag-not-bool", request_bytes("POST", "/tokenize",
                                                 {"content": "hi", "add_special": "yes"}), S400,
         param="add_special"),
    Case("detokenize-not-array", request_bytes("POST", "/detokenize", {"tokens": "1 2"}), S400,
         param="tokens"),
    Case("detokenize-out-of-vocab", request_bytes("POST", "/detokenize", {"tokens": [1, 10**9]}),
         S400, param="tokens"),
    Case("detokenize-negative", request_bytes("POST", "/detokenize", {"tokens": [-1]}), S400,
         param="tokens"),
    Case("detokenize-fraction", request_bytes("POST", "/detokenize", {"tokens": [1.5]}), S400,
         param="tokens"),
    # a double far outside int64: converting it to an integer before the range check is UB
    Case("detokenize-1e300", request_bytes("POST", "/detokenize", b'{"tokens": [1e300]}'), S400,
         param="tokens"),
    Case("detokenize-minus-1e300", request_bytes("POST", "/detokenize", b'{"tokens": [-1e300]}'),
         S400, param="tokens"),
    Case("detokenize-string-id", request_bytes("POST", "/detokenize", {"tokens": ["1"]}), S400,
         param="tokens"),
    Case("get-tokenize", request_bytes("GET", "/tokenize"), 405, allow="POST"),
    # ---- methods and paths ----------------------------------------------------------------
    Case("get-completions", request_bytes("GET", "/v1/completions"), 405, allow="POST",
         after="keep"),
    Case("delete-chat", request_bytes("DELETE", "/v1/chat/completions"), 405, allow="POST"),
    Case("put-completions-with-body", request_bytes("PUT", "/v1/completions", {"prompt": "hi"}),
         405, allow="POST", after="keep"),
    Case("post-models", request_bytes("POST", "/v1/models", {}), 405, allow="GET"),
    Case("post-health", request_bytes("POST", "/health", b"x"), 405, allow="GET"),
    Case("delete-metrics", request_bytes("DELETE", "/metrics"), 405, allow="GET"),
    Case("unknown-path", request_bytes("GET", "/v2/nothing"), 404, after="keep"),
    Case("root-path", request_bytes("GET", "/"), 404),
    Case("trailing-slash", request_bytes("POST", "/v1/completions/", {"prompt": "hi"}), 404),
    Case("path-traversal", request_bytes("GET", "/../../etc/passwd"), frozenset({400, 404})),
    Case("star-target", request_bytes("OPTIONS", "*"), frozenset({400, 404, 405})),
    # ---- HTTP framing -------------------------------------------------------------------
    Case("garbage-request-line", b"HELLO THERE\r\n\r\n", BAD_HTTP, after="close"),
    Case("unknown-method", b"FROB /health HTTP/1.1\r\nHost: x\r\n\r\n", BAD_HTTP, after="close"),
    Case("bad-version", b"GET /health HTTP/7.3\r\nHost: x\r\n\r\n", frozenset({400, 505}),
         after="close"),
    Case("binary-junk", bytes(range(256)) * 4, BAD_HTTP, after="close", allow_close=True),
    Case("tls-client-hello", bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64, BAD_HTTP,
         after="close", allow_close=True),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", frozenset({400, 505}),
         after="close", allow_close=True),
    Case("content-length-not-number",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", BAD_HTTP,
         after="close"),
    Case("content-length-negative",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", BAD_HTTP,
         after="close"),
    Case("content-length-twice",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
         b"Content-Length: 3\r\n\r\n{}x", BAD_HTTP, after="close"),
    Case("content-length-and-chunked",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", BAD_HTTP, after="close"),
    Case("transfer-encoding-gzip",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nxx",
         frozenset({400, 501}), after="close"),
    Case("bad-chunk-size",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\nhello\r\n0\r\n\r\n", BAD_HTTP, after="close"),
    Case("chunk-size-overflow",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"ffffffffffffffffffff\r\nhello\r\n", frozenset({400, 413}), after="close"),
    Case("header-without-colon", b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
         BAD_HTTP, after="close"),
    # RFC 9112 5.1: whitespace between a field name and the colon MUST be a 400
    # (a proxy in front may read such a header differently: request smuggling)
    Case("header-space-before-colon", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Test : y\r\n\r\n",
         BAD_HTTP, after="close"),
    Case("header-name-with-space", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
         BAD_HTTP, after="close"),
    Case("header-space-before-colon-content-length",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}", BAD_HTTP,
         after="close"),
    Case("header-nul-byte", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", BAD_HTTP,
         after="close"),
    Case("expect-unknown", request_bytes("POST", "/v1/completions", p(),
                                         headers={"Expect": "200-ok"}), 417, after="close"),
    # ---- limits ------------------------------------------------------------------------
    Case("header-too-large", request_bytes("GET", "/health", headers={"X-Big": "a" * 40000}), 431,
         after="close"),
    Case("too-many-headers", request_bytes("GET", "/health",
                                           headers=[(f"X-H{i}", "v") for i in range(600)]), 431,
         after="close"),
    Case("url-too-long", request_bytes("GET", "/health?" + "q" * 40000), frozenset({414, 431}),
         after="close"),
    Case("body-content-length-over-limit",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\n\r\n" % (MAX_BODY * 16), 413, after="close"),
    Case("body-content-length-absurd",
         b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
         b"Content-Length: 99999999999999999999\r\n\r\n",
         frozenset({400, 413}), after="close"),
]

assert len(CASES) >= 30
assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


def check_health(daemon):
    assert daemon.alive(), f"moed died; stderr:\n{daemon.stderr()[-4000:]}"
    r = daemon.get("/health", timeout=5)
    assert r.status == 200, f"/health {r.status} after the case"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(daemon, case: Case):
    statuses = case.status if isinstance(case.status, frozenset) else frozenset({case.status})
    with daemon.raw(timeout=10) as conn:
        try:
            conn.send(case.req)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading it all
        try:
            r = conn.read_response()
        except (ConnectionClosed, ConnectionResetError) as e:
            if not case.allow_close:
                raise AssertionError(f"closed without a response: {e}")
            r = None
        if r is not None:
            assert r.status in statuses, \
                f"status {r.status}, want {sorted(statuses)}: {r.body[:300]!r}"
            assert (r.header("Content-Type") or "").startswith("application/json"), \
                r.headers
            check_error_object(r.body, r.status, param=case.param, code=case.code)
            if r.status == 405:
                allow = r.header("Allow")
                assert allow and case.allow in [m.strip() for m in allow.split(",")], allow
            if case.after == "keep":
                conn.send(request_bytes("GET", "/health"))
                assert conn.read_response().status == 200, "connection unusable after a 4xx"
            elif case.after == "close":
                assert (r.header("Connection") or "").lower() == "close", r.headers
                assert conn.wait_closed(3 * SLOW), "connection left open after a fatal error"
    check_health(daemon)


# ===========================================================================
# cases a table cannot hold


def test_slowloris_header(daemon):
    """Headers trickled one byte at a time never complete: 408 (or a close)
    once --header-timeout (1 s) has passed since the first byte."""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400
    t0 = time.monotonic()
    with daemon.raw(timeout=10) as conn:
        closed = False
        for i in range(len(head)):
            try:
                conn.send(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if conn.wait_closed(0.05):
                closed = True
                break
            if time.monotonic() - t0 > 6 * SLOW:
                break
        elapsed = time.monotonic() - t0
        if conn.buf:
            r = conn.read_response()
            assert r.status == 408, r.status
            check_error_object(r.body, 408)
            closed = conn.wait_closed(3 * SLOW)
        assert closed, f"still open after {elapsed:.1f} s of a trickled head"
        assert 0.8 <= elapsed <= 4 * SLOW, f"cut after {elapsed:.2f} s, header timeout is 1 s"
    check_health(daemon)


def test_slowloris_many(daemon):
    """Twenty idle half-heads at once do not block a real client."""
    conns = [RawConn(daemon.port, timeout=10) for _ in range(20)]
    try:
        for cn in conns:
            cn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2},
                        timeout=10)
        assert r.status == 200
        for cn in conns:
            assert cn.wait_closed(4 * SLOW), "a half-sent head was not cut"
    finally:
        for cn in conns:
            cn.close()
    check_health(daemon)


def test_content_length_lies_short(daemon):
    """Content-Length says 10, 40 bytes follow: the first 10 are the body (not
    JSON: 400), the other 30 are a malformed next request (400, then close)."""
    body = b'{"prompt": "hello there", "max_tokens": 2}'
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 10\r\n\r\n" + body)
    with daemon.raw(timeout=10) as conn:
        conn.send(req)
        r = conn.read_response()
        assert r.status == 400
        check_error_object(r.body, 400)
        try:
            r2 = conn.read_response()
        except ConnectionClosed:
            r2 = None
        if r2 is not None:
            assert r2.status == 400
            check_error_object(r2.body, 400)
        assert conn.wait_closed(3 * SLOW)
    check_health(daemon)


def test_content_length_lies_long(daemon):
    """Content-Length says 5000, 40 bytes come and the client half-closes: the
    server must not wait forever nor answer 200."""
    body = b'{"prompt": "hello there", "max_tokens": 2}'
    with daemon.raw(timeout=10) as conn:
        conn.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n" + body)
        conn.shutdown_write()
        assert conn.wait_closed(5 * SLOW), "no close after EOF inside a body"
        if conn.buf:
            r = conn.read_response()
            assert 400 <= r.status < 500, r.status
            check_error_object(r.body, r.status)
    check_health(daemon)


def test_body_over_limit_while_sending(daemon):
    """A chunked body that grows past --max-body-size (64K) gets 413 without
    the server reading all of it."""
    chunk = b"a" * 8192
    piece = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with daemon.raw(timeout=10) as conn:
        conn.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(64):  # 512K
                conn.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = conn.read_response()
        assert r.status == 413
        check_error_object(r.body, 413)
        assert conn.wait_closed(4 * SLOW)
    check_health(daemon)


def test_huge_valid_body_under_limit(daemon):
    """A body just under the limit parses and is judged on its content."""
    pad = "x" * (MAX_BODY - 200)
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                        "user": pad})
    assert r.status == 200, r.body[:300]


def test_many_errors_then_healthy(daemon):
    """Two hundred bad requests on one keep-alive connection, then real work."""
    with daemon.raw(timeout=10) as conn:
        for i in range(200):
            conn.send(comp(p(max_tokens=-i - 1)))
            r = conn.read_response()
            assert r.status == 400
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": "still here", "max_tokens": 3})
    assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 3
    m = daemon.metrics()
    assert m.value("moed_http_requests_total", route="/v1/completions", code="400") >= 200


def test_exact_context_fit_is_served(daemon):
    """No silent truncation and no off-by-one: prompt + max_tokens == ctx is
    served in full, one more token is refused."""
    ids = [15496] * (CTX_SIZE - 4)
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": ids, "max_tokens": 4,
                                        "temperature": 0}, timeout=60)
    assert r.status == 200, r.body[:300]
    u = r.json()["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == \
        (CTX_SIZE - 4, 4, CTX_SIZE)
    r = daemon.post("/v1/completions", {"model": MODEL, "prompt": ids, "max_tokens": 5})
    assert r.status == 400
    check_error_object(r.body, 400, code="context_length_exceeded")


def test_connection_limit(make_daemon):
    """--max-connections 8: the ninth connection gets 503 and a close; once
    others close, new connections are served again."""
    d = make_daemon(["--max-connections", "8"], name="maxconn")
    time.sleep(0.2)  # the readiness probe's connection has closed
    conns = []
    try:
        for _ in range(8):  # one at a time: each is accepted and counted
            cn = RawConn(d.port, timeout=10)
            conns.append(cn)
            cn.send(request_bytes("GET", "/health"))
            assert cn.read_response().status == 200
        with RawConn(d.port, timeout=10) as extra:
            try:
                extra.send(request_bytes("GET", "/health"))
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = extra.read_response()
            assert r.status == 503
            check_error_object(r.body, 503)
            assert extra.wait_closed(4 * SLOW)
    finally:
        for cn in conns:
            cn.close()
    assert wait_until(lambda: d.get("/health").status == 200, 2), \
        "connections not released after their clients closed"


# ===========================================================================
# the API key


@pytest.fixture(scope="module")
def keyed(moed_serve, tiny_model, tmp_path_factory):
    from conftest import Daemon

    keyfile = tmp_path_factory.mktemp("key") / "api-key"
    keyfile.write_text("  sk-moed-test-0123456789  \n")
    keyfile.chmod(0o600)
    d = Daemon(tiny_model, ["--api-key-file", str(keyfile)], name="keyed").start()
    yield d
    try:
        d.stop()
    finally:
        d.kill()


GOOD_KEY = "sk-moed-test-0123456789"

AUTH_CASES = [
    ("missing", {}),
    ("wrong-key", {"Authorization": "Bearer sk-wrong"}),
    ("key-prefix", {"Authorization": "Bearer sk-moed-test-012345678"}),
    ("key-longer", {"Authorization": "Bearer sk-moed-test-01234567890"}),
    ("empty-bearer", {"Authorization": "Bearer "}),
    ("no-scheme", {"Authorization": GOOD_KEY}),
    ("basic", {"Authorization": "Basic c2stbW9lZDp4"}),
    ("key-with-whitespace-file-trim-only", {"Authorization": f"Bearer  x{GOOD_KEY}"}),
]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("hid,headers", AUTH_CASES, ids=[a for a, _ in AUTH_CASES])
def test_auth_refused(keyed, path, hid, headers):
    body = {"model": MODEL, "max_tokens": 2}
    body.update({"prompt": "hi"} if path == "/v1/completions" else {"messages": USER})
    r = keyed.post(path, body, headers=headers)
    assert r.status == 401, (r.status, r.body[:200])
    e = check_error_object(r.body, 401, code="invalid_api_key")
    assert GOOD_KEY not in r.body.decode(), "the key is echoed"
    assert "sk-wrong" not in e["message"]


def test_auth_refused_before_body_is_read(keyed):
    """A request without the key is refused at its headers: with a body over
    the limit it gets 401 (not 413), at once, without the body being sent."""
    with keyed.raw(timeout=10) as conn:
        conn.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (MAX_BODY * 4))
        r = conn.read_response()
        assert r.status == 401, r.status
        check_error_object(r.body, 401, code="invalid_api_key")


def test_auth_scheme_case_insensitive(keyed):
    """RFC 9110 11.1: the auth scheme is case-insensitive ("bearer KEY")."""
    r = keyed.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1},
                   headers={"Authorization": f"bearer {GOOD_KEY}"})
    assert r.status == 200, r.body[:200]


def test_auth_accepted(keyed):
    r = keyed.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2},
                   headers={"Authorization": f"Bearer {GOOD_KEY}"})
    assert r.status == 200, r.body[:200]
    r = keyed.get("/v1/models", headers={"Authorization": f"Bearer {GOOD_KEY}"})
    assert r.status == 200
    r = keyed.get("/v1/models")
    assert r.status == 401
    check_error_object(r.body, 401)


def test_auth_openai_client(keyed):
    import openai

    with pytest.raises(openai.AuthenticationError):
        keyed.openai(api_key="sk-nope").completions.create(model=MODEL, prompt="x", max_tokens=1)
    r = keyed.openai(api_key=GOOD_KEY).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert r.usage.completion_tokens == 1


def test_auth_key_not_logged(keyed):
    keyed.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1},
               headers={"Authorization": "Bearer sk-wrong-logged?"})
    keyed.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1},
               headers={"Authorization": f"Bearer {GOOD_KEY}"})
    err = keyed.stderr()
    assert GOOD_KEY not in err, "the API key is in the log"
    assert "sk-wrong-logged?" not in err, "a presented key is in the log"


def test_health_after_auth_cases(keyed):
    # /health is for load balancers and systemd checks: no key needed
    assert keyed.get("/health").status == 200
