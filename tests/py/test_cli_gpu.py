"""The GPU switches of the one-shot commands and the daemon, and `moed bench`.

    /usr/bin/python3 -m pytest -q -rs tests/py/test_cli_gpu.py

- `moed bench` on the default model, on the CPU, with tiny -p/-n: the
  Markdown table with a row per pp test and the tg test, positive t/s, the
  decode-bandwidth line; bad flags exit 2 with a `moed bench:` message, a
  missing model exits 1 with one line.
- `--gpu 0` of run / perplexity / bench: on a machine (or build) without a
  CUDA device it fails with exit 1 and a message naming CUDA or the GPU,
  never a crash; with a device it runs.  `--routing-trace` with `--gpu` and
  `--no-graph` without `--gpu` are usage errors (2).
- `moed serve` with the default gpu_device (0): without a usable device the
  log says why and that the CPU runs, and /metrics' moed_backend_info says
  cpu; with gpu_device -1 there is no fallback warning.
- With a CUDA device (skipped otherwise, reason "no CUDA device"): bench and
  run on the GPU, and the GPU's perplexity close to the CPU's.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BASE_ARGS, DEFAULT_MODEL, MOED, Daemon

PROMPT = "ROMEO:"
HELDOUT = DEFAULT_MODEL.parent / "heldout.txt"


def moed(*args, timeout=120) -> subprocess.CompletedProcess:
    if not MOED.exists():
        pytest.skip(f"{MOED} is not built (make -j2 all)")
    return subprocess.run([str(MOED), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def need_default():
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"no default model {DEFAULT_MODEL}")


_devices: int | None = None


def cuda_devices() -> int:
    """Usable CUDA devices as `moed version` reports them (0 for a build without CUDA)."""
    global _devices
    if _devices is None:
        _devices = 0
        if MOED.exists():
            out = subprocess.run([str(MOED), "version"], capture_output=True, text=True,
                                 timeout=60).stdout
            m = re.search(r"^cuda: built in; (\d+) device", out, re.M)
            if m:
                _devices = int(m.group(1))
    return _devices


needs_gpu = pytest.mark.skipif(cuda_devices() == 0, reason="no CUDA device")

ROW = re.compile(r"^\| (.+?) \| (.+?) \| +(pp\d+|tg\d+) \| +([0-9.]+) ± ([0-9.]+) \|$", re.M)


def parse_table(out: str) -> dict[str, tuple[str, float, float]]:
    """test -> (backend, mean t/s, sd) from bench's Markdown table."""
    lines = out.splitlines()
    assert re.match(r"^\| model +\| backend +\| +test \| +t/s \|$", lines[0]), out
    assert re.match(r"^\| -+ \| -+ \| -+: \| -+: \|$", lines[1]), out
    rows = {}
    for m in ROW.finditer(out):
        rows[m.group(3)] = (m.group(2).strip(), float(m.group(4)), float(m.group(5)))
    return rows


def assert_gpu_refusal(r: subprocess.CompletedProcess, cmd: str):
    """Exit 1 with one `moed CMD:` line naming CUDA or the GPU; no crash."""
    assert r.returncode == 1, f"exit {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert re.search(rf"^moed {cmd}: .*(CUDA|GPU|cuda|gpu)", r.stderr, re.M), r.stderr


# ---- moed bench on the CPU ---------------------------------------------------------


def test_bench_cpu_table():
    need_default()
    r = moed("bench", "-m", DEFAULT_MODEL, "-p", "16,32", "-n", "8", "-r", "2", "--threads", "1",
             "--batch", "16")
    assert r.returncode == 0, r.stderr
    rows = parse_table(r.stdout)
    assert set(rows) == {"pp16", "pp32", "tg8"}, r.stdout
    for test, (backend, mean, sd) in rows.items():
        assert backend.startswith("CPU"), r.stdout
        assert mean > 0 and sd >= 0, (test, r.stdout)
    m = re.search(r"^tg8: ([0-9.]+) MiB of weights read per decode token .*: ([0-9.]+) GB/s at "
                  r"([0-9.]+) t/s$", r.stdout, re.M)
    assert m, r.stdout
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0
    assert math.isclose(float(m.group(3)), rows["tg8"][1], rel_tol=1e-3)
    assert "moed bench: pp16:" in r.stderr and "moed bench: tg8:" in r.stderr


def test_bench_only_tg_and_kv_f16():
    need_default()
    r = moed("bench", "-m", DEFAULT_MODEL, "-p", "0", "-n", "4", "-r", "1", "--threads", "1",
             "--kv-type", "f16", "--seed", "7")
    assert r.returncode == 0, r.stderr
    rows = parse_table(r.stdout)
    assert list(rows) == ["tg4"] and rows["tg4"][1] > 0, r.stdout
    assert "f16" in r.stdout


def test_bench_help():
    r = moed("bench", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: moed bench"), r.stdout
    for flag in ("--gpu", "-p", "-n", "-r", "--threads", "--batch", "--kv-type", "--no-graph",
                 "--seed"):
        assert flag in r.stdout
    top = moed("--help")
    assert re.search(r"^  bench -m FILE", top.stdout, re.M), top.stdout


@pytest.mark.parametrize("args", [
    [],
    ["-m"],
    ["-p", "x"],
    ["-p", "16,-1"],
    ["-n", "-1"],
    ["-n", "many"],
    ["-r", "0"],
    ["--batch", "0"],
    ["--threads", "0"],
    ["--gpu", "-1"],
    ["--kv-type", "q8_0"],
    ["--bogus"],
    ["-p", "0", "-n", "0"],
    ["--no-graph"],
    ["--seed", "-3"],
], ids=lambda a: " ".join(a) or "no-args")
def test_bench_usage_errors(args):
    full = ["bench"] + (["-m", str(DEFAULT_MODEL)] + args if args and args != ["-m"] else args)
    r = moed(*full)
    assert r.returncode == 2, f"{full}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stderr.startswith("moed bench: "), r.stderr
    assert r.stdout == ""


def test_bench_missing_model(tmp_path):
    r = moed("bench", "-m", tmp_path / "nope.gguf", "-p", "8", "-n", "2")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("moed bench: "), r.stderr


# ---- --gpu without a device, usage errors ---------------------------------------------


def test_run_gpu_either_runs_or_refuses():
    need_default()
    r = moed("run", "-m", DEFAULT_MODEL, "-p", PROMPT, "-n", "4", "--temp", "0", "--gpu", "0")
    if cuda_devices() == 0:
        assert_gpu_refusal(r, "run")
    else:
        assert r.returncode in (0, 1), r.stderr
        if r.returncode == 1:  # e.g. a weight type without a GPU kernel
            assert_gpu_refusal(r, "run")
        else:
            assert re.search(r"loaded in \d+ ms; GPU 0", r.stderr), r.stderr


def test_bench_gpu_either_runs_or_refuses():
    need_default()
    r = moed("bench", "-m", DEFAULT_MODEL, "-p", "16", "-n", "4", "-r", "1", "--gpu", "0")
    if cuda_devices() == 0:
        assert_gpu_refusal(r, "bench")
        assert r.stdout == ""
    else:
        assert r.returncode in (0, 1), r.stderr
        if r.returncode == 1:
            assert_gpu_refusal(r, "bench")


def test_perplexity_gpu_either_runs_or_refuses():
    need_default()
    r = moed("perplexity", "-m", DEFAULT_MODEL, "-f", HELDOUT, "--chunks", "2", "--gpu", "0")
    if cuda_devices() == 0:
        assert_gpu_refusal(r, "perplexity")
    else:
        assert r.returncode in (0, 1), r.stderr
        if r.returncode == 1:
            assert_gpu_refusal(r, "perplexity")


def test_routing_trace_with_gpu_is_a_usage_error(tmp_path):
    need_default()
    trace = tmp_path / "t.bin"
    r = moed("run", "-m", DEFAULT_MODEL, "-p", PROMPT, "-n", "2", "--gpu", "0",
             "--routing-trace", trace)
    assert r.returncode == 2, r.stderr
    assert "--routing-trace" in r.stderr and "--gpu" in r.stderr, r.stderr
    assert not trace.exists()


@pytest.mark.parametrize("cmd", ["run", "perplexity"])
def test_no_graph_needs_gpu(cmd):
    need_default()
    extra = ["-p", PROMPT] if cmd == "run" else ["-f", HELDOUT]
    r = moed(cmd, "-m", DEFAULT_MODEL, *extra, "--no-graph")
    assert r.returncode == 2 and "--no-graph needs --gpu" in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["run", "perplexity"])
def test_gpu_flag_range(cmd):
    need_default()
    extra = ["-p", PROMPT] if cmd == "run" else ["-f", HELDOUT]
    r = moed(cmd, "-m", DEFAULT_MODEL, *extra, "--gpu", "-1")
    assert r.returncode == 2 and "--gpu" in r.stderr, r.stderr


def test_usage_texts_mention_gpu():
    for cmd in ("run", "perplexity"):
        r = moed(cmd, "--help")
        assert r.returncode == 0 and "--gpu N" in r.stdout and "--no-graph" in r.stdout, r.stdout


def test_run_cpu_unchanged():
    need_default()
    r = moed("run", "-m", DEFAULT_MODEL, "-p", PROMPT, "-n", "4", "--temp", "0", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert re.search(r"loaded in \d+ ms; 1 thread, ", r.stderr), r.stderr


# ---- moed serve: the backend at start-up ------------------------------------------------


def serve_args(gpu_device: str | None) -> list[str]:
    args = []
    skip = False
    for a in BASE_ARGS:  # the test default, without its --gpu-device -1
        if skip:
            skip = False
            continue
        if a == "--gpu-device":
            skip = True
            continue
        args.append(a)
    args += ["--ctx-size", "256"]
    if gpu_device is not None:
        args += ["--gpu-device", gpu_device]
    return args


def backend_info(d: Daemon) -> dict:
    samples = d.metrics().samples.get("moed_backend_info")
    assert samples and len(samples) == 1, samples
    labels, value = samples[0]
    assert value == 1
    return labels


def test_serve_default_gpu_device(moed_serve, default_model):
    with Daemon(default_model, serve_args(None), base_args=False, name="gpu-default") as d:
        r = d.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert r.status == 200, r.body[:300]
        info = backend_info(d)
        log = d.stderr()
    assert re.search(r"info: engine: backend: (CPU|GPU)", log), log
    if cuda_devices() == 0:
        assert re.search(r"warn: engine: GPU 0: .*(CUDA|GPU|device).*; running on the CPU", log), log
        assert info["backend"] == "cpu" and info["device"] == "-1", info
        assert "engine: backend CPU (gpu_device 0 unusable" in log, log
    elif info["backend"] == "cpu":  # the GPU did not take it: the log must say why
        assert "running on the CPU" in log, log
    else:
        assert info["device"] == "0" and info["name"], info


def test_serve_cpu_only_no_fallback_warning(moed_serve, default_model):
    with Daemon(default_model, serve_args("-1"), base_args=False, name="gpu-off") as d:
        info = backend_info(d)
        log = d.stderr()
    assert info["backend"] == "cpu", info
    assert "running on the CPU" not in log, log
    assert "engine: backend CPU (gpu_device -1)" in log, log


# ---- with a CUDA device -----------------------------------------------------------------


@needs_gpu
def test_bench_on_gpu():
    need_default()
    r = moed("bench", "-m", DEFAULT_MODEL, "-p", "64", "-n", "16", "-r", "2", "--gpu", "0")
    assert r.returncode == 0, r.stderr
    rows = parse_table(r.stdout)
    assert set(rows) == {"pp64", "tg16"}, r.stdout
    assert all(b.startswith("CUDA 0") and t > 0 for b, t, _ in rows.values()), r.stdout
    assert re.search(r"^GPU 0: .+, sm_\d+", r.stdout, re.M), r.stdout
    assert re.search(r"^GPU memory: forward pass [0-9.]+ GiB", r.stdout, re.M), r.stdout
    r2 = moed("bench", "-m", DEFAULT_MODEL, "-p", "0", "-n", "8", "-r", "1", "--gpu", "0",
              "--no-graph")
    assert r2.returncode == 0, r2.stderr
    assert "no CUDA graphs" in r2.stdout


@needs_gpu
def test_run_on_gpu():
    need_default()
    r = moed("run", "-m", DEFAULT_MODEL, "-p", PROMPT, "-n", "8", "--temp", "0", "--gpu", "0")
    assert r.returncode == 0, r.stderr
    assert re.search(r"loaded in \d+ ms; GPU 0: ", r.stderr), r.stderr
    assert re.search(r"decode \d+ tokens", r.stderr), r.stderr


@needs_gpu
def test_perplexity_gpu_matches_cpu():
    need_default()
    ppl = {}
    for name, extra in (("cpu", []), ("gpu", ["--gpu", "0"])):
        r = moed("perplexity", "-m", DEFAULT_MODEL, "-f", HELDOUT, "--chunks", "8", *extra)
        assert r.returncode == 0, r.stderr
        ppl[name] = float(re.search(r"^ppl = ([0-9.]+)", r.stdout, re.M).group(1))
    # the GPU's prefill matmuls round activations to bf16: close, not equal
    assert math.isclose(ppl["gpu"], ppl["cpu"], rel_tol=0.02), ppl
