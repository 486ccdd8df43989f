"""Fixtures for the server tests (tests/py/test_server_*.py).

    /usr/bin/python3 -m pytest -q -rs tests/py -k server

What is here:
  - `moed_bin`: bin/moed built (or $MOED_BIN, e.g. build-san/bin/moed for an
    ASan run of the whole suite);
  - `moed_serve`: the same, with a `serve` command; every test that needs a
    daemon depends on it, so until daemon/serve.c exists the whole server
    suite is skipped with that reason (pytest -rs shows it);
  - `tiny_model`: a random-weight tiny-qwen3moe GGUF with GPT-2's tokenizer,
    generated once per session into build/test-tmp/server/;
  - `Daemon`: `moed serve` on a free 127.0.0.1 port with its own
    NOTIFY_SOCKET (an AF_UNIX datagram socket this process reads on a
    thread), waited for until GET /health answers 200, stopped with SIGTERM
    and checked: exit status 0, STOPPING=1 sent, no sanitizer report on
    stderr;
  - `RawConn` and helpers: HTTP/1.1 over a plain socket (exact bytes,
    chunked framing checked), SSE parsing, Prometheus text parsing.

Every network call goes to 127.0.0.1 and has a timeout; each server test is
also stopped by SIGALRM after SERVER_TEST_DEADLINE seconds.  The test files
import the helpers with `from conftest import ...` (this folder is on
sys.path in pytest's default import mode).
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOED = Path(os.environ.get("MOED_BIN", ROOT / "bin" / "moed"))
MKMODEL = Path(os.environ.get("MOED_MKMODEL", ROOT / "bin" / "moed-mkmodel"))
SHARED = Path(os.environ.get("MOED_SHARED", ROOT.parent / "shared"))
GPT2_VOCAB = SHARED / "vocab" / "ggml-vocab-gpt-2.gguf"
TEST_TMP = Path(os.environ.get("MOED_TEST_TMP", ROOT / "build" / "test-tmp"))
SERVER_TMP = TEST_TMP / "server"
DEFAULT_MODEL = ROOT / "model" / "default" / "moed-shakespeare.gguf"

TINY_NAME = "tiny-qwen3moe"
HOST = "127.0.0.1"

# Sanitizers slow everything down; give an ASan daemon more time.
SLOW = float(os.environ.get("MOED_TEST_SLOW", "3" if "san" in str(MOED) else "1"))
SERVER_TEST_DEADLINE = int(90 * SLOW)

# Flags every test daemon gets unless a test overrides them: CPU only, a
# small context (context-overflow tests rely on 512), a small body limit
# (413 tests send little), a short header timeout (slowloris tests wait
# for it), one worker thread (the tests' clients need the other core).
BASE_ARGS = [
    "--gpu-device", "-1",
    "--threads", "1",
    "--ctx-size", "512",
    "--max-body-size", "64K",
    "--header-timeout", "1s",
]
CTX_SIZE = 512
MAX_BODY = 64 * 1024

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "Segmentation fault",
    "SUMMARY: UndefinedBehaviorSanitizer",
)


# ===========================================================================
# build and model


@pytest.fixture(scope="session")
def moed_bin() -> Path:
    if not MOED.exists():
        pytest.skip(f"{MOED} is not built (make -j2 all)")
    return MOED


_serve_probe: tuple[bool, str] | None = None


def serve_available() -> tuple[bool, str]:
    """(True, "") when `moed serve --help` works, else (False, reason)."""
    global _serve_probe
    if _serve_probe is None:
        if not MOED.exists():
            _serve_probe = (False, f"{MOED} is not built (make -j2 all)")
        else:
            try:
                r = subprocess.run([str(MOED), "serve", "--help"], capture_output=True,
                                   text=True, timeout=20)
                out = (r.stdout + r.stderr).strip()
                if r.returncode == 0:
                    _serve_probe = (True, "")
                else:
                    first = out.splitlines()[0] if out else f"exit {r.returncode}"
                    _serve_probe = (False, f"bin/moed has no `serve` command yet ({first})")
            except subprocess.TimeoutExpired:
                _serve_probe = (False, "`moed serve --help` did not return in 20 s")
    return _serve_probe


def pytest_report_header(config):
    """Which moed the server tests run, and whether sources changed since it was built."""
    if not MOED.exists():
        return f"moed: {MOED} not built"
    built = MOED.stat().st_mtime
    newer = [p for d in ("api", "conf", "daemon", "model", "common", "sched", "kernels")
             for p in (ROOT / d).rglob("*.[ch]") if p.stat().st_mtime > built]
    note = f"; {len(newer)} source files are newer: make -j2 all" if newer else ""
    return f"moed: {MOED} (built {time.strftime('%H:%M:%S', time.localtime(built))}{note})"


def pytest_collection_modifyitems(config, items):
    """Skip every test that needs the daemon, once per file in -rs's summary,
    when `moed serve` does not exist yet."""
    need = [it for it in items if "moed_serve" in getattr(it, "fixturenames", ())]
    if not need:
        return
    ok, why = serve_available()
    if not ok:
        for it in need:
            it.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def moed_serve(moed_bin) -> Path:
    ok, why = serve_available()
    if not ok:
        pytest.skip(why)
    # each daemon's stderr is kept there for a look after a failure; start the session clean
    for old in SERVER_TMP.glob("*.stderr"):
        try:
            old.unlink()
        except OSError:
            pass
    return moed_bin


def _make_tiny(path: Path) -> None:
    if not MKMODEL.exists():
        pytest.skip(f"{MKMODEL} is not built (make -j2 all)")
    if not GPT2_VOCAB.exists():
        pytest.skip(f"no {GPT2_VOCAB} (set MOED_SHARED)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.exists() and path.stat().st_mtime >= MKMODEL.stat().st_mtime
    if fresh:
        return
    tmp = path.with_suffix(".tmp")
    r = subprocess.run([str(MKMODEL), "--preset", TINY_NAME, "--vocab-from", str(GPT2_VOCAB),
                        "-o", str(tmp)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"moed-mkmodel failed:\n{r.stdout}{r.stderr}"
    tmp.replace(path)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A random-weight tiny Qwen3-MoE with GPT-2's tokenizer (vocab 50304,
    eos 50256, no chat template: chat falls back to ChatML)."""
    path = SERVER_TMP / f"{TINY_NAME}.gguf"
    _make_tiny(path)
    return path


@pytest.fixture(scope="session")
def default_model() -> Path:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"the default model {DEFAULT_MODEL.relative_to(ROOT)} does not exist yet")
    return DEFAULT_MODEL


def tokenize(model: Path, text: str, special: bool = False) -> list[int]:
    """Token ids of text with `moed tokenize` (BOS as the vocabulary asks: none for GPT-2)."""
    args = [str(MOED), "tokenize", "-m", str(model)]
    if special:
        args.append("--special")
    r = subprocess.run(args, input=text.encode(), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return [int(x) for x in r.stdout.split()]


def chatml(messages: list[dict]) -> str:
    """The prompt moed's ChatML fallback renders (model/chat.h), with the
    generation prompt."""
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            c = "\n".join(p["text"] for p in c)
        out.append(f"<|im_start|>{m['role']}\n{c}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


# ===========================================================================
# a watchdog for every server test


@pytest.fixture(autouse=True)
def _server_test_deadline(request):
    """SIGALRM after SERVER_TEST_DEADLINE s for tests in test_server_*.py, so a
    hung daemon fails one test instead of hanging the run."""
    mod = getattr(request.node, "module", None)
    name = getattr(mod, "__name__", "") or ""
    main = threading.current_thread() is threading.main_thread()
    if not name.startswith("test_server_") or not main:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"test ran longer than {SERVER_TEST_DEADLINE} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(SERVER_TEST_DEADLINE)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ===========================================================================
# ports, notify socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class NotifyListener:
    """An AF_UNIX datagram socket for sd_notify; messages are collected on a
    thread as (monotonic time, line) pairs, one per KEY=VALUE line."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.cond:
                for line in data.decode(errors="replace").split("\n"):
                    if line:
                        self.lines.append((now, line))
                self.cond.notify_all()

    def all(self) -> list[str]:
        with self.cond:
            return [l for _, l in self.lines]

    def has(self, line: str) -> bool:
        return line in self.all()

    def wait_for(self, pred, timeout: float) -> str | None:
        """The first line matching pred (a string: equal, or a callable), waiting up to timeout."""
        if isinstance(pred, str):
            want = pred
            pred = lambda l: l == want  # noqa: E731
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, l in self.lines:
                    if pred(l):
                        return l
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def count(self, line: str) -> int:
        return sum(1 for l in self.all() if l == line)

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


# ===========================================================================
# the daemon


class DaemonError(AssertionError):
    pass


_started: list = []  # every Daemon started, so that none outlives an interrupted run


@atexit.register
def _kill_leftovers():
    for d in _started:
        d.kill()


class Daemon:
    """`moed serve -m MODEL --host 127.0.0.1 --port N ARGS...`.

    start() returns once GET /health is 200 (wait=True); stop() sends SIGTERM
    and checks the exit."""

    def __init__(self, model: Path | None, args: list[str] | None = None, *,
                 env: dict | None = None, base_args: bool = True, name: str = "moed",
                 config: str | None = None, port: int | None = None,
                 ready_timeout: float = 30.0):
        self.model = model
        self.args = list(BASE_ARGS if base_args else []) + list(args or [])
        self.extra_env = dict(env or {})
        self.name = name
        self.config_text = config
        self.port = port or free_port()
        self.ready_timeout = ready_timeout * SLOW
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="moed-t-", dir="/tmp"))  # short: AF_UNIX paths
        self.notify = NotifyListener(self.dir / "notify")
        SERVER_TMP.mkdir(parents=True, exist_ok=True)
        self.stderr_path = SERVER_TMP / f"{name}-{self.port}.stderr"
        self.config_path: Path | None = None
        self.returncode: int | None = None

    # ---- life ----

    def command(self) -> list[str]:
        cmd = [str(MOED), "serve"]
        if self.config_text is not None:
            self.config_path = self.dir / "moed.conf"
            self.config_path.write_text(self.config_text)
            cmd += ["-c", str(self.config_path)]
        if self.model is not None:
            cmd += ["-m", str(self.model)]
        cmd += ["--host", HOST, "--port", str(self.port)] + self.args
        return cmd

    def environ(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOED_")}
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> "Daemon":
        for attempt in range(3):
            self._stderr_f = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=self._stderr_f, stderr=self._stderr_f,
                                         env=self.environ(), start_new_session=True)
            _started.append(self)
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except DaemonError:
                err = self.stderr()
                if self.proc.poll() is not None and re.search(r"in use|EADDRINUSE", err, re.I) \
                        and attempt < 2:
                    self.port = free_port()  # lost a race for the port
                    continue
                self.kill()
                self.returncode = self.proc.poll()  # reported here, not again at teardown
                self.close()
                raise
        raise DaemonError("could not start")

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            rc = self.proc.poll()
            if rc is not None:
                raise DaemonError(f"moed serve exited with {rc} before /health was 200; "
                                  f"stderr:\n{self.stderr()[-4000:]}")
            try:
                last = self.get("/health", timeout=1.0).status
                if last == 200:
                    return
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise DaemonError(f"/health not 200 within {timeout:.0f} s (last: {last}); "
                          f"stderr:\n{self.stderr()[-4000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            self.returncode = self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout: float = 30.0, check: bool = True) -> int | None:
        """SIGTERM; wait; with check, assert exit 0, STOPPING=1 and a clean stderr."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
            self.close()
            if check:
                raise DaemonError(f"moed did not exit within {timeout * SLOW:.0f} s of SIGTERM; "
                                  f"stderr:\n{self.stderr()[-4000:]}")
            return None
        # STOPPING=1 is sent before the exit, but the datagram may still be
        # in flight to our reader thread.
        stopping = self.notify.wait_for("STOPPING=1", 2.0) is not None
        self.close()
        if check:
            err = self.stderr()
            assert rc == 0, f"moed exited {rc} after SIGTERM; stderr:\n{err[-4000:]}"
            assert stopping, f"no STOPPING=1 on NOTIFY_SOCKET; got {self.notify_lines}"
            self.check_stderr()
        return rc

    def check_stderr(self) -> None:
        err = self.stderr()
        for m in SANITIZER_MARKERS:
            assert m not in err, f"{m!r} in moed's stderr:\n{err[-6000:]}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        self.notify_lines = self.notify.all()
        self.notify.close()
        try:
            self._stderr_f.close()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    # ---- HTTP ----

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict | None = None, timeout: float = 30.0) -> "Resp":
        """One request on a fresh connection (http.client), the whole body read."""
        h = dict(headers or {})
        if isinstance(body, dict) or isinstance(body, list):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout * SLOW)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Resp(r.status, r.reason, [(k, v) for k, v in r.getheaders()], data, b"")
        finally:
            conn.close()

    def get(self, path: str, timeout: float = 10.0, headers: dict | None = None) -> "Resp":
        return self.request("GET", path, headers=headers, timeout=timeout)

    def post(self, path: str, obj, timeout: float = 30.0, headers: dict | None = None) -> "Resp":
        return self.request("POST", path, obj, headers=headers, timeout=timeout)

    def raw(self, timeout: float = 10.0) -> "RawConn":
        return RawConn(self.port, timeout=timeout * SLOW)

    def metrics(self) -> "Metrics":
        r = self.get("/metrics")
        assert r.status == 200, (r.status, r.body[:500])
        return Metrics(r.body.decode())

    def openai(self, api_key: str = "sk-test", **kw):
        import openai

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60.0 * SLOW)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, **kw)

    # ---- context manager ----

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop()
        else:
            self.kill()
            self.close()


@pytest.fixture(scope="module")
def daemon(moed_serve, tiny_model):
    """One daemon on the tiny model per test module, stopped (and checked) at the end."""
    d = Daemon(tiny_model, name="module").start()
    yield d
    try:
        d.stop()
    finally:
        d.kill()


@pytest.fixture
def make_daemon(moed_serve, tiny_model):
    """Factory for daemons of one test: make_daemon(args, ...) -> started Daemon.
    Any still running at the end is SIGTERMed; the exit is checked unless the
    test already stopped it."""
    made: list[Daemon] = []

    def make(args=None, *, model=tiny_model, start=True, **kw):
        d = Daemon(model, args, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    errors = []
    for d in made:
        if d.proc is not None and d.returncode is None and d.proc.poll() is None:
            try:
                d.stop()
            except AssertionError as e:
                errors.append(str(e))
            finally:
                d.kill()
        elif d.proc is not None and d.returncode is None:
            # it exited and the test never looked: that was not expected
            d.returncode = d.proc.returncode
            d.close()
            errors.append(f"moed exited on its own with {d.returncode}; stderr:\n"
                          f"{d.stderr()[-3000:]}")
    assert not errors, "\n\n".join(errors)


# ===========================================================================
# raw HTTP


class ConnectionClosed(Exception):
    pass


@dataclass
class Resp:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes  # what came over the socket for this response (RawConn only)
    chunks: list[bytes] = field(default_factory=list)  # chunked framing: each chunk's data
    version: str = "HTTP/1.1"

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


class RawConn:
    """HTTP/1.1 on a plain socket: send exact bytes, read exact responses."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosed(f"EOF after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionClosed(f"EOF in a line: {self.buf[:200]!r}")
        i = self.buf.index(b"\r\n")
        out, self.buf = self.buf[:i], self.buf[i + 2:]
        return out

    def read_response(self, head: bool = False, on_chunk=None) -> Resp:
        """One response.  head: a response to HEAD (no body).  on_chunk(data)
        is called for each chunk as it arrives (streams)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionClosed(f"EOF before a complete response head: {self.buf[:300]!r}")
        i = self.buf.index(b"\r\n\r\n")
        headb, self.buf = self.buf[:i], self.buf[i + 4:]
        raw = headb + b"\r\n\r\n"
        lines = headb.split(b"\r\n")
        m = re.match(rb"^(HTTP/1\.[01]) (\d{3}) ?(.*)$", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        version, status, reason = m.group(1).decode(), int(m.group(2)), m.group(3).decode()
        headers = []
        for l in lines[1:]:
            k, sep, v = l.partition(b":")
            assert sep, f"bad header line {l!r}"
            assert k == k.strip() and k, f"bad header name {l!r}"
            headers.append((k.decode(), v.strip().decode("latin-1")))
        r = Resp(status, reason, headers, b"", raw, version=version)
        if status in (100, 101) or 100 <= status < 200 or status in (204, 304) or head:
            return r
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if "chunked" in te:
            assert cl is None, "both Content-Length and chunked in a response"
            body = []
            while True:
                sl = self._line()
                raw_piece = sl + b"\r\n"
                assert re.fullmatch(rb"[0-9a-fA-F]+", sl), f"bad chunk size line {sl!r}"
                n = int(sl, 16)
                if n == 0:
                    trailer = self._line()
                    assert trailer == b"", f"unexpected trailer {trailer!r}"
                    r.raw += raw_piece + b"\r\n"
                    break
                data = self._take(n)
                crlf = self._take(2)
                assert crlf == b"\r\n", f"chunk not followed by CRLF: {crlf!r}"
                r.raw += raw_piece + data + b"\r\n"
                r.chunks.append(data)
                body.append(data)
                if on_chunk:
                    on_chunk(data)
            r.body = b"".join(body)
        elif cl is not None:
            assert re.fullmatch(r"\d+", cl), f"bad Content-Length {cl!r}"
            r.body = self._take(int(cl))
            r.raw += r.body
        else:
            # close-delimited (HTTP/1.0 streams)
            parts = []
            while True:
                if self.buf:
                    parts.append(self.buf)
                    if on_chunk:
                        on_chunk(self.buf)
                    self.buf = b""
                if not self._fill():
                    break
            r.body = b"".join(parts)
            r.raw += r.body
        return r

    def wait_closed(self, timeout: float) -> bool:
        """True when the server closes (EOF or reset) within timeout; data that
        arrives meanwhile is kept in buf."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                self.eof = True
                return True
            if not d:
                self.eof = True
                return True
            self.buf += d
        return False


def request_bytes(method: str, path: str, body: bytes | str | dict | None = None,
                  headers: dict | list | None = None, version: str = "HTTP/1.1") -> bytes:
    """An exact request: Host and (with a body) Content-Length added unless given."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    if "host" not in names:
        hs.insert(0, ("Host", f"{HOST}"))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    if body is not None and "content-type" not in names:
        hs.append(("Content-Type", "application/json"))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


# ===========================================================================
# SSE and OpenAI objects


def parse_sse(body: bytes, strict: bool = True) -> list[bytes]:
    """The data of each event of a text/event-stream body (comments dropped).
    strict: the body is exactly a sequence of `data: X\\n\\n` or `: C\\n\\n`
    blocks, each data a single line, as moed writes them."""
    events = []
    if strict:
        assert body.endswith(b"\n\n"), f"stream does not end with a blank line: {body[-80:]!r}"
    blocks = body.split(b"\n\n")
    if blocks and blocks[-1] == b"":
        blocks.pop()
    for b in blocks:
        lines = b.split(b"\n")
        data = []
        for l in lines:
            if l.startswith(b":"):
                continue
            if strict:
                assert l.startswith(b"data: "), f"not an SSE data line: {l[:200]!r}"
            if l.startswith(b"data:"):
                v = l[5:]
                data.append(v[1:] if v.startswith(b" ") else v)
        if data:
            events.append(b"\n".join(data))
    return events


def stream_events(body: bytes) -> tuple[list[dict], bool]:
    """The JSON objects of a stream and whether it ended with `data: [DONE]`
    as its last event (and only there)."""
    ev = parse_sse(body)
    done = bool(ev) and ev[-1] == b"[DONE]"
    objs = []
    for e in ev[:-1] if done else ev:
        assert e != b"[DONE]", "[DONE] before the end of the stream"
        objs.append(json.loads(e.decode("utf-8")))  # strict UTF-8
    return objs, done


def check_error_object(body: bytes | dict, status: int, param=..., code=...) -> dict:
    """body is {"error": {"message", "type", "param", "code"}} with the type
    OpenAI gives for status; param and code checked when given (a set: any
    of; param may also be a predicate)."""
    obj = json.loads(body) if isinstance(body, (bytes, str)) else body
    assert isinstance(obj, dict) and set(obj) == {"error"}, f"not an error object: {obj!r}"
    e = obj["error"]
    assert isinstance(e, dict), obj
    assert set(e) >= {"message", "type", "param", "code"}, f"error object misses keys: {e!r}"
    assert isinstance(e["message"], str) and e["message"].strip(), e
    want_type = "invalid_request_error" if 400 <= status < 500 else "server_error"
    assert e["type"] == want_type, f"type {e['type']!r} for {status}, want {want_type!r}"
    assert e["param"] is None or isinstance(e["param"], str), e
    assert e["code"] is None or isinstance(e["code"], str), e
    if param is not ...:
        if callable(param):
            ok = param(e["param"])
        elif isinstance(param, (set, frozenset)):
            ok = e["param"] in param
        else:
            ok = e["param"] == param
        assert ok, f"param {e['param']!r}, want {param!r} ({e['message']})"
    if code is not ...:
        ok = e["code"] in code if isinstance(code, (set, frozenset)) else e["code"] == code
        assert ok, f"code {e['code']!r}, want {code!r} ({e['message']})"
    return e


# ===========================================================================
# Prometheus text


class Metrics:
    """Samples of a Prometheus text exposition: name -> [(labels dict, value)]."""

    LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
    LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[str, list[tuple[dict, float]]] = {}
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    self.types[parts[2]] = parts[3]
                continue
            if line.startswith("#"):
                continue
            m = self.LINE.match(line)
            assert m, f"bad metrics line {line!r}"
            labels = dict(self.LABEL.findall(m.group(3) or ""))
            v = m.group(4)
            value = float("inf") if v == "+Inf" else float("-inf") if v == "-Inf" else float(v)
            self.samples.setdefault(m.group(1), []).append((labels, value))

    def names(self) -> list[str]:
        return sorted(self.samples)

    def value(self, name: str, **labels) -> float | None:
        """Sum of the samples of name whose labels include labels; None if absent."""
        if name not in self.samples:
            return None
        return sum(v for l, v in self.samples[name]
                   if all(l.get(k) == str(x) for k, x in labels.items()))

    def find(self, *patterns: str,
             exclude: str = r"_bucket$|_sum$|_count$|^moed_http_") -> str | None:
        """The first metric name matching one of the regexes (in order)."""
        for p in patterns:
            for n in self.names():
                if re.search(p, n) and not re.search(exclude, n):
                    return n
        return None


RUNNING_SEQ_PATTERNS = (
    r"^moed_requests_running$",
    r"^moed_.*(running|active).*(seq|sequence)",
    r"^moed_.*(seq|sequence).*(running|active)",
    r"^moed_.*batch.*(size|seqs|sequences)",
)
GENERATED_PATTERNS = (r"^moed_.*(generat|completion|output).*tokens.*total$",)
PROMPT_PATTERNS = (r"^moed_.*prompt.*tokens.*total$",)
QUEUE_PATTERNS = (r"^moed_requests_queued$",
                  r"^moed_.*queue.*(depth|size|len|length|requests|waiting)",
                  r"^moed_.*(queued|waiting).*(requests|seq)")


def running_sequences(m: Metrics) -> float:
    name = m.find(*RUNNING_SEQ_PATTERNS)
    assert name, ("no running-sequences gauge in /metrics (issue 4 item 7); names: "
                  + ", ".join(m.names()))
    return m.value(name)


def engine_idle(m: Metrics) -> bool:
    """No sequence running, queued or being prepared, no stream open."""
    if running_sequences(m) != 0:
        return False
    q = m.find(*QUEUE_PATTERNS)
    if q and m.value(q) != 0:
        return False
    for extra in ("moed_requests_preparing", "moed_http_streams_active"):
        v = m.value(extra)
        if v is not None and v != 0:
            return False
    return True


def wait_until(pred, timeout: float, interval: float = 0.05):
    """pred() until truthy or timeout; returns the last value."""
    end = time.monotonic() + timeout * SLOW
    v = pred()
    while not v and time.monotonic() < end:
        time.sleep(interval)
        v = pred()
    return v
