#!/usr/bin/env python3
"""A bounded loopback load generator for `moed serve`.

    tools/loadtest.py --port 8080 --clients 64 --duration 60
    tools/loadtest.py --port 8080 --clients 16 --duration 10 --route chat --json out.json
    tools/loadtest.py --port 8080 --clients 64 --duration 60 --pid $(pidof moed)

N clients, each on its own keep-alive connection, send streaming requests
(POST /v1/completions or /v1/chat/completions with stream and
stream_options.include_usage) one after another for T seconds; requests in
flight at the deadline are allowed to finish (bounded by --timeout).  Plain
asyncio and raw HTTP/1.1: no third-party packages, no proxies, and only
loopback: any host other than 127.0.0.1, localhost or ::1 is refused.

Each response is checked: status 200, text/event-stream, chunked framing,
every event a JSON chunk, a usage chunk whose completion_tokens matches
max_tokens when the finish reason is "length", and `data: [DONE]` last.
Anything else counts as an error, by kind.

Reported: requests, errors, completion tokens per second (all clients
together), requests per second, time to first token (TTFT: request sent to
the first event carrying text), inter-token latency (ITL: gaps between
successive text events) and request latency percentiles; with --pid, the
daemon's RSS over the run; from GET /metrics before and after, the
running-sequences and queue gauges (after the run they must fall back to 0:
a leaked sequence shows up there) and the request counters.

Exit status 0 when there were no errors and the gauges went back to 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import time

LOOPBACK = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1", "[::1]": "::1"}
MAX_CLIENTS = 1024
MAX_DURATION = 3600.0

RUNNING_SEQ = (r"^moed_requests_running$", r"^moed_.*(running|active).*(seq|sequence)",
               r"^moed_.*(seq|sequence).*(running|active)")
QUEUE = (r"^moed_requests_queued$", r"^moed_.*queue.*(depth|size|len|length|requests|waiting)",
         r"^moed_.*(queued|waiting)")


def loopback_host(host: str) -> str:
    """The address to connect to, or SystemExit for anything not loopback."""
    h = host.strip().lower()
    if h not in LOOPBACK:
        raise SystemExit(f"loadtest: refusing host {host!r}: only 127.0.0.1, localhost and ::1 "
                         "(this tool never sends load off the machine)")
    return LOOPBACK[h]


def percentile(xs: list[float], p: float) -> float:
    """Linear interpolation between closest ranks; nan for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ---------------------------------------------------------------------------
# HTTP/1.1 on asyncio streams


class Dropped(Exception):
    """This client hangs up mid-stream on purpose (--disconnect-every)."""


class ProtocolError(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    m = re.match(rb"^HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise ProtocolError("bad_status_line", repr(lines[0][:80]))
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return int(m.group(1)), headers


async def read_body(reader, headers, on_data=None) -> bytes:
    """The whole body (chunked, Content-Length or to EOF); on_data(bytes) per piece."""
    out = bytearray()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                n = int(line[:-2].split(b";")[0], 16)
            except ValueError:
                raise ProtocolError("bad_chunk", repr(line[:40]))
            if n == 0:
                if await reader.readuntil(b"\r\n") != b"\r\n":
                    raise ProtocolError("bad_chunk", "trailer")
                return bytes(out)
            data = await reader.readexactly(n)
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("bad_chunk", "no CRLF after data")
            out += data
            if on_data:
                on_data(data)
    if "content-length" in headers:
        data = await reader.readexactly(int(headers["content-length"]))
        if on_data:
            on_data(data)
        return data
    while True:
        data = await reader.read(65536)
        if not data:
            return bytes(out)
        out += data
        if on_data:
            on_data(data)


# ---------------------------------------------------------------------------
# one streaming request


class Stats:
    def __init__(self):
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.latency: list[float] = []
        self.status: dict[int, int] = {}
        self.dropped = 0
        self.started = 0

    def error(self, kind: str, detail: str = ""):
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{kind}: {detail}"[:300])


def build_request(args, host_hdr: str, i: int, n: int) -> bytes:
    body = {"model": args.model, "max_tokens": args.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": args.temperature}
    if args.seed is not None:
        body["seed"] = args.seed + i * 100003 + n
    prompt = f"{args.prompt} ({i}.{n})" if args.vary_prompt else args.prompt
    if args.route == "chat":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = prompt
    data = json.dumps(body).encode()
    hdr = [f"POST {path} HTTP/1.1", f"Host: {host_hdr}", "Content-Type: application/json",
           f"Content-Length: {len(data)}", "Accept: text/event-stream"]
    if args.api_key:
        hdr.append(f"Authorization: Bearer {args.api_key}")
    return ("\r\n".join(hdr) + "\r\n\r\n").encode() + data


async def one_request(args, reader, writer, req: bytes, st: Stats, drop: bool = False) -> bool:
    """Send one streaming request on an open connection and check it.
    Returns whether the connection can be reused.  drop: hang up after the
    first text event (raises Dropped)."""
    t0 = time.monotonic()
    writer.write(req)
    await writer.drain()
    status, headers = await read_head(reader)
    st.status[status] = st.status.get(status, 0) + 1
    times: list[float] = []
    pending = bytearray()
    events: list[bytes] = []

    def on_data(d: bytes):
        now = time.monotonic()
        pending.extend(d)
        while True:
            i = pending.find(b"\n\n")
            if i < 0:
                break
            ev = bytes(pending[:i])
            del pending[:i + 2]
            events.append(ev)
            if ev.startswith(b"data: {"):
                # an event with text (not the role-only first chat chunk, not usage)
                try:
                    o = json.loads(ev[6:])
                except ValueError:
                    continue
                ch = o.get("choices") or []
                if ch:
                    c = ch[0]
                    txt = c.get("text")
                    if txt is None:
                        txt = (c.get("delta") or {}).get("content")
                    if txt:
                        times.append(now)
                        if drop:
                            raise Dropped()

    body = await read_body(reader, headers, on_data if status == 200 else None)
    t_end = time.monotonic()
    keep = headers.get("connection", "").lower() != "close"
    if status != 200:
        st.error(f"http_{status}", body[:200].decode(errors="replace"))
        return keep
    if not headers.get("content-type", "").startswith("text/event-stream"):
        st.error("not_sse", headers.get("content-type", ""))
        return keep
    if pending:
        st.error("partial_event", bytes(pending[:100]).decode(errors="replace"))
        return keep
    if not events or events[-1] != b"data: [DONE]":
        st.error("no_done", repr(events[-1:])[:100])
        return keep
    usage = finish = None
    for ev in events[:-1]:
        if not ev.startswith(b"data: "):
            if ev.startswith(b":"):
                continue
            st.error("bad_event", ev[:100].decode(errors="replace"))
            return keep
        try:
            o = json.loads(ev[6:].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            st.error("bad_json", str(e))
            return keep
        if "error" in o:
            st.error("error_event", json.dumps(o)[:200])
            return keep
        if o.get("usage"):
            usage = o["usage"]
        for c in o.get("choices") or []:
            if c.get("finish_reason"):
                finish = c["finish_reason"]
    if usage is None:
        st.error("no_usage")
        return keep
    if finish not in ("stop", "length"):
        st.error("bad_finish", repr(finish))
        return keep
    if finish == "length" and usage.get("completion_tokens") != args.max_tokens:
        st.error("usage_mismatch", f"length with {usage.get('completion_tokens')} tokens")
        return keep
    st.ok += 1
    st.completion_tokens += usage.get("completion_tokens", 0)
    st.prompt_tokens += usage.get("prompt_tokens", 0)
    st.latency.append(t_end - t0)
    if times:
        st.ttft.append(times[0] - t0)
        st.itl.extend(b - a for a, b in zip(times, times[1:]))
    return keep


async def client(args, addr: str, i: int, deadline: float, st: Stats):
    host_hdr = f"[{addr}]:{args.port}" if ":" in addr else f"{addr}:{args.port}"
    reader = writer = None
    n = 0
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(addr, args.port), args.timeout)
            req = build_request(args, host_hdr, i, n)
            n += 1
            st.started += 1
            drop = bool(args.disconnect_every) and st.started % args.disconnect_every == 0
            keep = await asyncio.wait_for(one_request(args, reader, writer, req, st, drop),
                                          args.timeout)
            if not keep or args.new_connection:
                writer.close()
                writer = None
        except Dropped:
            st.dropped += 1
            writer = _drop(writer)
        except asyncio.TimeoutError:
            st.error("timeout", f"client {i} request {n}")
            writer = _drop(writer)
        except ProtocolError as e:
            st.error(e.kind, str(e))
            writer = _drop(writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            st.error("connection", f"{type(e).__name__}: {e}")
            writer = _drop(writer)
            await asyncio.sleep(0.05)
        except (asyncio.LimitOverrunError, ValueError) as e:
            st.error("protocol", f"{type(e).__name__}: {e}")
            writer = _drop(writer)
    _drop(writer)


def _drop(writer):
    if writer is not None:
        try:
            writer.close()
        except Exception:
            pass
    return None


# ---------------------------------------------------------------------------
# /metrics and RSS


async def get(addr, port, path, api_key=None, timeout=10.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    try:
        h = f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n"
        if api_key:
            h += f"Authorization: Bearer {api_key}\r\n"
        writer.write((h + "\r\n").encode())
        await writer.drain()
        status, headers = await asyncio.wait_for(read_head(reader), timeout)
        body = await asyncio.wait_for(read_body(reader, headers), timeout)
        return status, body
    finally:
        _drop(writer)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def gauge(metrics: dict[str, float], patterns) -> tuple[str | None, float | None]:
    names = sorted({k.split("{")[0] for k in metrics})
    for p in patterns:
        for n in names:
            if re.search(p, n) and not re.search(r"_bucket$|_sum$|_count$|^moed_http_", n):
                return n, sum(v for k, v in metrics.items() if k.split("{")[0] == n)
    return None, None


async def scrape(addr, port, api_key) -> dict[str, float] | None:
    try:
        status, body = await get(addr, port, "/metrics", api_key)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError):
        return None
    return parse_metrics(body.decode(errors="replace")) if status == 200 else None


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def rss_sampler(pid: int, samples: list[tuple[float, int]], stop: asyncio.Event, t0: float):
    while not stop.is_set():
        r = rss_kib(pid)
        if r is not None:
            samples.append((time.monotonic() - t0, r))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


# ---------------------------------------------------------------------------


async def run(args) -> dict:
    addr = loopback_host(args.host)
    st = Stats()
    before = await scrape(addr, args.port, args.api_key)
    try:
        status, _ = await get(addr, args.port, "/health", args.api_key)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        raise SystemExit(f"loadtest: cannot reach {addr}:{args.port}: {e}")
    if status != 200:
        raise SystemExit(f"loadtest: GET /health is {status}, not 200")
    rss: list[tuple[float, int]] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    sampler = asyncio.create_task(rss_sampler(args.pid, rss, stop, t0)) if args.pid else None
    deadline = t0 + args.duration
    await asyncio.gather(*(client(args, addr, i, deadline, st) for i in range(args.clients)))
    wall = time.monotonic() - t0
    # settle: the daemon's gauges must come back to 0
    settle_t0 = time.monotonic()
    after = None
    running = queued = None
    run_name = q_name = None
    while True:
        after = await scrape(addr, args.port, args.api_key)
        if after is not None:
            run_name, running = gauge(after, RUNNING_SEQ)
            q_name, queued = gauge(after, QUEUE)
            streams = after.get("moed_http_streams_active")
            if (running in (None, 0)) and (queued in (None, 0)) and (streams in (None, 0)):
                break
        if time.monotonic() - settle_t0 > args.settle:
            break
        await asyncio.sleep(0.2)
    settled_s = time.monotonic() - settle_t0
    if sampler:
        stop.set()
        await sampler
    health_after, _ = await get(addr, args.port, "/health", args.api_key)

    def pct(xs):
        return {p: round(percentile(xs, p) * 1000, 2) for p in (50, 90, 99)} | {
            "max": round(max(xs) * 1000, 2) if xs else math.nan, "n": len(xs)}

    res = {
        "host": addr, "port": args.port, "route": args.route, "clients": args.clients,
        "duration_s": args.duration, "wall_s": round(wall, 2), "max_tokens": args.max_tokens,
        "requests_ok": st.ok, "requests_dropped": st.dropped,
        "errors": sum(st.errors.values()), "errors_by_kind": st.errors,
        "error_samples": st.error_samples, "status_counts": st.status,
        "completion_tokens": st.completion_tokens, "prompt_tokens": st.prompt_tokens,
        "tokens_per_s": round(st.completion_tokens / wall, 1) if wall > 0 else 0,
        "requests_per_s": round(st.ok / wall, 2) if wall > 0 else 0,
        "ttft_ms": pct(st.ttft), "itl_ms": pct(st.itl), "latency_ms": pct(st.latency),
        "health_after": health_after,
        "metrics": {
            "running_sequences_gauge": run_name, "running_sequences_after": running,
            "queue_gauge": q_name, "queue_after": queued,
            "streams_active_after": after.get("moed_http_streams_active") if after else None,
            "settled_in_s": round(settled_s, 2),
        },
    }
    if before and after:
        def total(m, name):
            return sum(v for k, v in m.items() if k.split("{")[0] == name)
        res["metrics"]["http_requests_delta"] = total(after, "moed_http_requests_total") - \
            total(before, "moed_http_requests_total")
        res["metrics"]["cancelled_delta"] = total(after, "moed_http_requests_cancelled_total") - \
            total(before, "moed_http_requests_cancelled_total")
    if rss:
        vals = [r for _, r in rss]
        half = [r for t, r in rss if t >= wall / 2]
        first_half = [r for t, r in rss if t < wall / 2]
        res["rss_kib"] = {"start": vals[0], "end": vals[-1], "max": max(vals),
                          "max_first_half": max(first_half) if first_half else None,
                          "max_second_half": max(half) if half else None,
                          "samples": len(vals)}
    res["leak_free"] = (running in (None, 0)) and (queued in (None, 0)) and \
        (res["metrics"]["streams_active_after"] in (None, 0))
    return res


def report(res: dict) -> str:
    t = res["ttft_ms"]
    i = res["itl_ms"]
    lat = res["latency_ms"]
    m = res["metrics"]
    lines = [
        f"loadtest: {res['clients']} clients x {res['duration_s']:g} s, {res['route']}, "
        f"max_tokens {res['max_tokens']}, {res['host']}:{res['port']} (wall {res['wall_s']} s)",
        f"  requests ok {res['requests_ok']}, dropped on purpose {res['requests_dropped']}, "
        f"errors {res['errors']} {res['errors_by_kind'] or ''}",
        f"  tokens {res['completion_tokens']} generated: {res['tokens_per_s']} tok/s, "
        f"{res['requests_per_s']} req/s",
        f"  TTFT ms     p50 {t[50]}  p90 {t[90]}  p99 {t[99]}  max {t['max']}  (n {t['n']})",
        f"  ITL ms      p50 {i[50]}  p90 {i[90]}  p99 {i[99]}  max {i['max']}  (n {i['n']})",
        f"  latency ms  p50 {lat[50]}  p90 {lat[90]}  p99 {lat[99]}  max {lat['max']}",
        f"  after: {m['running_sequences_gauge']} = {m['running_sequences_after']}, "
        f"{m['queue_gauge']} = {m['queue_after']}, streams active = {m['streams_active_after']} "
        f"(settled in {m['settled_in_s']} s), /health {res['health_after']}",
    ]
    if "rss_kib" in res:
        r = res["rss_kib"]
        lines.append(f"  RSS MiB: start {r['start'] / 1024:.1f}, end {r['end'] / 1024:.1f}, "
                     f"max {r['max'] / 1024:.1f} (first half max "
                     f"{(r['max_first_half'] or 0) / 1024:.1f}, second half max "
                     f"{(r['max_second_half'] or 0) / 1024:.1f})")
    for s in res["error_samples"][:5]:
        lines.append(f"  error: {s}")
    lines.append("  result: " + ("PASS" if res["errors"] == 0 and res["leak_free"] else "FAIL"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="127.0.0.1, localhost or ::1 only")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-c", "--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("-d", "--duration", type=float, default=10.0,
                    help="seconds to start new requests for (default 10)")
    ap.add_argument("--route", choices=("completions", "chat"), default="completions")
    ap.add_argument("--model", default="moed", help="model field of the requests")
    ap.add_argument("--prompt", default="Once upon a time, in a land far away,")
    ap.add_argument("--vary-prompt", action="store_true", help="make every prompt different")
    ap.add_argument("-n", "--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=None, help="base seed (per request: varied)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds to wait after the run for the gauges to reach 0")
    ap.add_argument("--new-connection", action="store_true",
                    help="a new connection for every request (default: keep-alive)")
    ap.add_argument("--disconnect-every", type=int, default=0, metavar="K",
                    help="every K-th request hangs up after its first token (cancellation "
                         "under load; the gauges must still reach 0)")
    ap.add_argument("--api-key", default=None, help="or $MOED_API_KEY")
    ap.add_argument("--pid", type=int, default=None, help="daemon pid: sample its RSS")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    loopback_host(args.host)
    if not 1 <= args.clients <= MAX_CLIENTS:
        ap.error(f"--clients must be 1..{MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_DURATION:
        ap.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    if not 1 <= args.port <= 65535:
        ap.error("--port must be 1..65535")
    if args.max_tokens < 1:
        ap.error("--max-tokens must be >= 1")
    args.api_key = args.api_key or os.environ.get("MOED_API_KEY") or None
    res = asyncio.run(run(args))
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return 0 if res["errors"] == 0 and res["leak_free"] else 1


if __name__ == "__main__":
    sys.exit(main())
