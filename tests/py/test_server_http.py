"""`moed serve` over plain HTTP: curl -N and raw sockets (issue 4 items 2, 3 and 8).

    /usr/bin/python3 -m pytest -q -rs tests/py/test_server_http.py

These look at the bytes: the SSE framing (`data: {...}\\n\\n` ... `data:
[DONE]\\n\\n`), the chunked transfer coding, keep-alive, pipelining, HTTP/1.0,
Expect: 100-continue, and that a stream never carries broken UTF-8.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from conftest import (SLOW, TINY_NAME, Metrics, check_error_object, parse_sse, request_bytes,
                      serve_available, stream_events)

_serve_ok, _serve_why = serve_available()
if not _serve_ok:  # one line in -rs for the whole file
    pytest.skip(_serve_why, allow_module_level=True)

CURL = shutil.which("curl")
need_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

MODEL = TINY_NAME


def curl(daemon, path, body=None, extra=(), timeout=30):
    """curl -sS -N -i; returns (head text, body bytes)."""
    args = [CURL, "-sS", "-N", "-i", "--max-time", str(int(timeout * SLOW))]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    args += list(extra) + [daemon.base_url + path]
    r = subprocess.run(args, input=json.dumps(body).encode() if body is not None else None,
                       capture_output=True, timeout=timeout * SLOW + 10)
    assert r.returncode == 0, f"curl exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    head, sep, rest = r.stdout.partition(b"\r\n\r\n")
    assert sep, r.stdout[:500]
    return head.decode("latin-1"), rest


def head_header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


# ===========================================================================
# curl -N


@need_curl
def test_curl_completion_stream_bytes(daemon):
    head, body = curl(daemon, "/v1/completions", {
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}})
    assert head.startswith("HTTP/1.1 200"), head
    assert head_header(head, "Content-Type").startswith("text/event-stream")
    assert head_header(head, "Transfer-Encoding") == "chunked"
    assert head_header(head, "Cache-Control") == "no-cache"
    assert head_header(head, "Content-Length") is None
    # exact framing: only data lines, each followed by a blank line, [DONE] last
    assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
    assert re.fullmatch(rb"(data: [^\n]+\n\n)+", body), body[:400]
    objs, done = stream_events(body)
    assert done
    *chunks, usage = objs
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 12
    for c in chunks:
        assert list(c)[:4] == ["id", "object", "created", "model"], list(c)
        assert c["object"] == "text_completion"
        assert "usage" in c and c["usage"] is None
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    # the same text as a non-streamed request
    _, nb = curl(daemon, "/v1/completions", {"model": MODEL, "prompt": "Once upon a time",
                                             "max_tokens": 12, "temperature": 0})
    full = json.loads(nb)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]


@need_curl
def test_curl_chat_stream_bytes(daemon):
    head, body = curl(daemon, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
        "temperature": 0, "stream": True})
    assert head.startswith("HTTP/1.1 200"), head
    assert head_header(head, "Content-Type").startswith("text/event-stream")
    assert re.fullmatch(rb"(data: [^\n]+\n\n)+", body), body[:400]
    objs, done = stream_events(body)
    assert done
    assert objs[0]["object"] == "chat.completion.chunk"
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert objs[-1]["choices"][0]["finish_reason"] == "length"
    assert objs[-1]["choices"][0]["delta"] == {}
    for o in objs:
        assert "usage" not in o or o["usage"] is None


@need_curl
def test_curl_non_stream(daemon):
    head, body = curl(daemon, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert head.startswith("HTTP/1.1 200"), head
    assert head_header(head, "Content-Type").startswith("application/json")
    assert int(head_header(head, "Content-Length")) == len(body)
    obj = json.loads(body)
    assert obj["object"] == "chat.completion"
    assert list(obj)[:4] == ["id", "object", "created", "model"]
    assert obj["usage"]["completion_tokens"] == 3


@need_curl
def test_curl_error_is_json(daemon):
    head, body = curl(daemon, "/v1/completions", {"model": MODEL, "prompt": "x",
                                                  "max_tokens": "many"})
    assert head.startswith("HTTP/1.1 400"), head
    assert head_header(head, "Content-Type").startswith("application/json")
    check_error_object(body, 400, param="max_tokens")


@need_curl
def test_curl_plain_d_without_content_type(daemon):
    """`curl -d JSON` sends application/x-www-form-urlencoded; users do it all
    the time, and the body is JSON all the same."""
    args = [CURL, "-sS", "--max-time", str(int(30 * SLOW)), "-w", "\n%{http_code}",
            "-d", json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}),
            daemon.base_url + "/v1/completions"]
    r = subprocess.run(args, capture_output=True, timeout=60 * SLOW)
    body, _, code = r.stdout.rpartition(b"\n")
    assert code == b"200", r.stdout
    assert json.loads(body)["usage"]["completion_tokens"] == 2


def test_content_type_with_charset(daemon):
    r = daemon.request("POST", "/v1/completions",
                       json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}),
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status == 200, r.body


def test_head_health(daemon):
    with daemon.raw() as c:
        c.send(request_bytes("HEAD", "/health"))
        r = c.read_response(head=True)
        assert r.status == 200
        # no body follows: the connection takes the next request at once
        c.send(request_bytes("GET", "/health"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.json() == {"status": "ok"}


@need_curl
def test_curl_health_and_models(daemon):
    head, _ = curl(daemon, "/health")
    assert head.startswith("HTTP/1.1 200"), head
    head, body = curl(daemon, "/v1/models")
    assert head.startswith("HTTP/1.1 200"), head
    assert json.loads(body)["data"][0]["id"] == MODEL


# ===========================================================================
# raw sockets


def stream_req(path="/v1/completions", version="HTTP/1.1", headers=None, **fields):
    body = {"model": MODEL, "prompt": "The sea", "max_tokens": 8, "temperature": 0,
            "stream": True}
    if path.endswith("chat/completions"):
        body.pop("prompt")
        body["messages"] = [{"role": "user", "content": "The sea"}]
    body.update(fields)
    return request_bytes("POST", path, body, headers=headers, version=version)


def test_raw_chunked_framing(daemon):
    with daemon.raw() as c:
        c.send(stream_req(max_tokens=10))
        r = c.read_response()  # checks every chunk-size line and CRLF
        assert r.status == 200
        assert r.header("Transfer-Encoding") == "chunked"
        assert r.header("Content-Length") is None
        assert r.chunks, "no chunks"
        assert r.raw.endswith(b"0\r\n\r\n")
        objs, done = stream_events(r.body)
        assert done
        assert sum(1 for o in objs if o["choices"][0]["finish_reason"]) == 1
        # keep-alive: the connection takes another request
        c.send(request_bytes("GET", "/health"))
        assert c.read_response().status == 200


def test_raw_keep_alive_sequence(daemon):
    with daemon.raw() as c:
        for i in range(3):
            c.send(request_bytes("POST", "/v1/completions",
                                 {"model": MODEL, "prompt": f"n{i}", "max_tokens": 2}))
            r = c.read_response()
            assert r.status == 200, r.body
            assert r.json()["usage"]["completion_tokens"] == 2
            assert (r.header("Connection") or "").lower() != "close"


def test_raw_pipelined(daemon):
    with daemon.raw() as c:
        c.send(request_bytes("GET", "/health")
               + request_bytes("POST", "/v1/completions",
                               {"model": MODEL, "prompt": "a", "max_tokens": 2})
               + request_bytes("GET", "/v1/models")
               + stream_req(max_tokens=3)
               + request_bytes("GET", "/health", headers={"Connection": "close"}))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
        r4 = c.read_response()
        r5 = c.read_response()
        assert r1.status == 200
        assert r2.status == 200 and r2.json()["object"] == "text_completion"
        assert r3.status == 200 and r3.json()["object"] == "list"
        assert r4.status == 200 and stream_events(r4.body)[1]
        assert r5.status == 200
        assert c.wait_closed(5 * SLOW), "Connection: close not honoured"


def test_raw_connection_close(daemon):
    with daemon.raw() as c:
        c.send(request_bytes("POST", "/v1/completions",
                             {"model": MODEL, "prompt": "a", "max_tokens": 2},
                             headers={"Connection": "close"}))
        r = c.read_response()
        assert r.status == 200
        assert (r.header("Connection") or "").lower() == "close"
        assert c.wait_closed(5 * SLOW)


def test_raw_http10_stream_close_delimited(daemon):
    with daemon.raw() as c:
        c.send(stream_req(version="HTTP/1.0", max_tokens=5))
        r = c.read_response()
        assert r.version in ("HTTP/1.0", "HTTP/1.1")
        assert r.status == 200
        assert r.header("Transfer-Encoding") is None  # no chunked for 1.0
        objs, done = stream_events(r.body)
        assert done
        assert c.eof


def test_raw_http10_non_stream(daemon):
    with daemon.raw() as c:
        c.send(request_bytes("POST", "/v1/completions",
                             {"model": MODEL, "prompt": "a", "max_tokens": 2},
                             version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200
        assert r.json()["usage"]["completion_tokens"] == 2
        assert c.wait_closed(5 * SLOW)


def test_raw_expect_100_continue(daemon):
    body = json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 2}).encode()
    with daemon.raw() as c:
        c.send(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n")
        r = c.read_response()
        assert r.status == 100
        c.send(body)
        r = c.read_response()
        assert r.status == 200
        assert r.json()["usage"]["completion_tokens"] == 2


def test_raw_chunked_request_body(daemon):
    body = json.dumps({"model": MODEL, "prompt": "chunked", "max_tokens": 2}).encode()
    parts = [body[:7], body[7:20], body[20:]]
    enc = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    with daemon.raw() as c:
        c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + enc)
        r = c.read_response()
        assert r.status == 200, r.body
        assert r.json()["usage"]["completion_tokens"] == 2


def test_raw_request_split_into_bytes(daemon):
    """A request written one small piece at a time still parses."""
    req = request_bytes("POST", "/v1/completions",
                        {"model": MODEL, "prompt": "slow but fine", "max_tokens": 2})
    with daemon.raw() as c:
        for i in range(0, len(req), 7):
            c.send(req[i:i + 7])
            time.sleep(0.002)
        r = c.read_response()
        assert r.status == 200, r.body


def test_raw_pipelined_behind_a_stream(daemon):
    """A request pipelined behind a stream is answered after the stream ends."""
    with daemon.raw() as c:
        c.send(stream_req(max_tokens=20) + request_bytes("GET", "/v1/models"))
        r1 = c.read_response()
        assert r1.status == 200 and stream_events(r1.body)[1]
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["object"] == "list"


def test_raw_query_string_ignored_by_routing(daemon):
    with daemon.raw() as c:
        c.send(request_bytes("GET", "/health?verbose=1"))
        assert c.read_response().status == 200


def test_raw_stream_chat_lines(daemon):
    with daemon.raw() as c:
        c.send(stream_req("/v1/chat/completions", max_tokens=6,
                          stream_options={"include_usage": True}))
        r = c.read_response()
        assert r.status == 200
        assert r.header("Content-Type").startswith("text/event-stream")
        ev = parse_sse(r.body)
        assert ev[-1] == b"[DONE]"
        usage = json.loads(ev[-2])
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
        # every chunk but the usage one carries "usage": null
        for e in ev[:-2]:
            o = json.loads(e)
            assert "usage" in o and o["usage"] is None


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_stream_utf8_never_split(daemon, seed):
    """Random tokens of a byte-level BPE often end inside a character: every
    event must still be whole, valid UTF-8, and hold no lone surrogates."""
    with daemon.raw() as c:
        c.send(stream_req(max_tokens=96, temperature=1.5, top_p=1.0, seed=seed,
                          prompt="\u00e9t\u00e9 \u4e2d\u6587 \U0001F600"))
        r = c.read_response()
        assert r.status == 200
        ev = parse_sse(r.body)
        assert ev[-1] == b"[DONE]"
        text = ""
        for e in ev[:-1]:
            s = e.decode("utf-8")  # strict
            o = json.loads(s)
            t = o["choices"][0]["text"]
            t.encode("utf-8")  # raises on a lone surrogate (from a \\ud8xx escape)
            text += t
        assert len(ev) >= 2


def test_metrics_text(daemon):
    daemon.post("/v1/completions", {"model": MODEL, "prompt": "m", "max_tokens": 2})
    r = daemon.get("/metrics")
    assert r.status == 200
    ct = r.header("Content-Type")
    assert ct.startswith("text/plain"), ct
    m = Metrics(r.body.decode())
    assert m.value("moed_http_requests_total", route="/v1/completions", code="200") >= 1
    assert m.types.get("moed_http_requests_total") == "counter"
    assert m.value("moed_http_streams_active") == 0
    # engine metrics the issue asks for (item 7)
    assert m.find(r"^moed_.*prompt.*tokens"), "no prompt-token counter: " + ", ".join(m.names())
    assert m.find(r"^moed_.*(generat|completion|output).*tokens"), \
        "no generated-token counter: " + ", ".join(m.names())
    assert m.find(r"^moed_.*(time_to_first_token|ttft).*_bucket$", exclude="^$"), \
        "no time-to-first-token histogram"
    assert m.find(r"^moed_.*(inter_token|itl|token_latency|tpot).*_bucket$", exclude="^$"), \
        "no inter-token latency histogram"
    assert m.find(r"^moed_.*queue", exclude=r"_bucket$|_sum$|_count$"), "no queue gauge"
    assert m.find(r"^moed_.*kv", exclude=r"_bucket$|_sum$|_count$"), "no KV usage gauge"
    from conftest import running_sequences

    assert running_sequences(m) == 0


# ===========================================================================
# /tokenize, /detokenize (llama.cpp's server shapes)


def test_tokenize_detokenize_round_trip(daemon):
    from conftest import tokenize

    text = "Hello world, this is a test \u00e9\u4e2d"
    r = daemon.post("/tokenize", {"content": text})
    assert r.status == 200, r.body
    ids = r.json()["tokens"]
    assert ids == tokenize(daemon.model, text)
    r = daemon.post("/detokenize", {"tokens": ids})
    assert r.status == 200, r.body
    assert r.json()["content"] == text
    r = daemon.post("/tokenize", {"content": "Hello world", "with_pieces": True})
    assert r.json()["tokens"] == [{"id": 15496, "piece": "Hello"}, {"id": 995, "piece": " world"}]


def test_detokenize_partial_utf8_is_valid_json(daemon):
    """The first byte of a three-byte character alone: the answer is still
    valid UTF-8 (U+FFFD), never a raw byte."""
    from conftest import tokenize

    ids = tokenize(daemon.model, "\U0001F980")  # three byte-tokens in GPT-2's vocabulary
    assert len(ids) >= 2
    r = daemon.post("/detokenize", {"tokens": ids[:1]})
    assert r.status == 200
    r.body.decode("utf-8")  # strict
    assert r.json()["content"].encode("utf-8")
    r = daemon.post("/detokenize", {"tokens": ids})
    assert r.json()["content"] == "\U0001F980"
    r = daemon.post("/tokenize", {"content": "\U0001F980", "with_pieces": True})
    pieces = [t["piece"] for t in r.json()["tokens"]]
    assert pieces[0] == [0xF0, 0x9F], pieces  # bytes that are not UTF-8 come as a byte list
