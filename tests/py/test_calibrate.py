"""`moed calibrate`: the cost model measured on this machine (CPU part).

    /usr/bin/python3 -m pytest -q -rs tests/py/test_calibrate.py

- on a small Q4_K model (moed-mkmodel) with 2 threads and a tiny budget it
  writes a file that `moed calibrate --show` loads, whose q4_k row has a
  positive, finite cpu_us_tok and whose cpu_alone_gbs is positive and
  finite; calibrated = 0 without --gpu, and stderr has the table; the
  tile-64 (prefill) segment gpu_mma_us/gpu_mma_us_tok is there (the
  defaults' estimate scaled, without --gpu) and --show has its columns;
- --show of a file from before the tile-64 keys loads and shows them as
  unknown ("-");
- without -o the file goes to stdout and loads the same way;
- --show of a broken file exits 1 naming the file and line;
- usage errors exit 2 with a `moed calibrate:` line;
- --gpu on a machine (or build) without a CUDA device exits 1 with a
  message naming CUDA (skipped where a device is usable).
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest

from conftest import MKMODEL, MOED, TEST_TMP

TMP = TEST_TMP / "calibrate"


def moed(*args, timeout=120) -> subprocess.CompletedProcess:
    if not MOED.exists():
        pytest.skip(f"{MOED} is not built (make -j2 all)")
    return subprocess.run([str(MOED), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def small_model():
    if not MKMODEL.exists():
        pytest.skip(f"{MKMODEL} is not built (make -j2 all)")
    TMP.mkdir(parents=True, exist_ok=True)
    path = TMP / "small-q4k.gguf"
    r = subprocess.run([str(MKMODEL), "--preset", "tiny-qwen3moe", "--type-experts", "Q4_K",
                        "--d-model", "256", "--ff-exp", "256", "--init", "blocks",
                        "-o", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return path


def parse_cost(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            k, v = (s.strip() for s in line.split("=", 1))
            out[k] = v
    return out


def check_cost(kv: dict[str, str]):
    assert kv["calibrated"] == "0"
    for key in ("type.q4_k.cpu_us_tok", "cpu_alone_gbs"):
        v = float(kv[key])
        assert math.isfinite(v) and v > 0, (key, v)
    assert float(kv["type.q4_k.cpu_us"]) >= 0
    assert int(kv["type.q4_k.bytes"]) > 0
    assert float(kv["cpu_shared_gbs"]) <= float(kv["cpu_alone_gbs"])
    for key in ("type.q4_k.gpu_mma_us", "type.q4_k.gpu_mma_us_tok"):
        v = float(kv[key])
        assert math.isfinite(v) and v > 0, (key, v)


def test_calibrate_cpu_file_and_show(small_model):
    out = TMP / "out.txt"
    out.unlink(missing_ok=True)
    r = moed("calibrate", "-m", small_model, "--threads", 2, "-o", out, "--seconds", 0.2)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    kv = parse_cost(out.read_text())
    check_cost(kv)
    # the table of measurements and fits on stderr
    assert re.search(r"CPU fit: t_cpu\(n\) = [0-9.]+ \+ [0-9.]+ n us; worst residual", r.stderr)
    assert re.search(r"^\s+64\s+\d+\s+[0-9.]+", r.stderr, re.M)
    assert "GPU: not measured" in r.stderr

    s = moed("calibrate", "--show", out)
    assert s.returncode == 0, s.stderr
    assert "calibrated      no" in s.stdout
    row = re.search(r"^q4_k\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)", s.stdout, re.M)
    assert row, s.stdout
    assert int(row.group(1)) == int(kv["type.q4_k.bytes"])
    assert float(row.group(3)) > 0
    header = re.search(r"^type\s.*$", s.stdout, re.M).group(0).split()
    assert header[:9] == ["type", "bytes", "cpu_us", "cpu_us_tok", "gpu_us", "gpu_us_tok",
                          "gpu_mma_us", "gpu_mma_us_tok", "load_us"], header
    cols = re.search(r"^q4_k\s.*$", s.stdout, re.M).group(0).split()
    assert abs(float(cols[6]) - float(kv["type.q4_k.gpu_mma_us"])) < 1e-3, cols
    assert abs(float(cols[7]) - float(kv["type.q4_k.gpu_mma_us_tok"])) < 1e-4, cols


def test_show_old_file_without_mma():
    TMP.mkdir(parents=True, exist_ok=True)
    old = TMP / "old.txt"
    old.write_text("calibrated = 1\nload_us = 2\nh2d_gbs = 46\nh2d_shared_gbs = 44\n"
                   "cpu_alone_gbs = 64\ncpu_shared_gbs = 57\ncpu_side_us = 17\n"
                   "gpu_side_us = 8\ntype.q4_k.bytes = 2654208\ntype.q4_k.cpu_us = 32\n"
                   "type.q4_k.cpu_us_tok = 10\ntype.q4_k.gpu_us = 10\n"
                   "type.q4_k.gpu_us_tok = 1.1\n")
    s = moed("calibrate", "--show", old)
    assert s.returncode == 0, s.stderr
    cols = re.search(r"^q4_k\s.*$", s.stdout, re.M).group(0).split()
    assert cols[6] == "-" and cols[7] == "-", cols
    assert "-: unknown" in s.stdout
    bad = TMP / "bad-mma.txt"
    bad.write_text(old.read_text() + "type.q4_k.gpu_mma_us = -1\n")
    r = moed("calibrate", "--show", bad)
    assert r.returncode == 1
    assert "type.q4_k.gpu_mma_us" in r.stderr and r.stderr.count("\n") == 1


def test_calibrate_stdout(small_model):
    r = moed("calibrate", "-m", small_model, "--threads", 1, "--seconds", 0.05)
    assert r.returncode == 0, r.stderr
    check_cost(parse_cost(r.stdout))


def test_show_errors():
    TMP.mkdir(parents=True, exist_ok=True)
    bad = TMP / "bad.txt"
    bad.write_text("calibrated = 0\nh2d_gbs = fast\n")
    r = moed("calibrate", "--show", bad)
    assert r.returncode == 1
    assert r.stderr.startswith("moed calibrate: ") and f"{bad}:2" in r.stderr
    assert r.stderr.count("\n") == 1
    r = moed("calibrate", "--show", TMP / "missing.txt")
    assert r.returncode == 1 and "missing.txt" in r.stderr


@pytest.mark.parametrize("args", [
    [],
    ["--bogus"],
    ["-m"],
    ["-m", "x.gguf", "--threads", "0"],
    ["-m", "x.gguf", "--seconds", "abc"],
    ["-m", "x.gguf", "--seconds", "0"],
    ["-m", "x.gguf", "--gpu", "-1"],
    ["--show", "a.txt", "-m", "x.gguf"],
])
def test_usage_errors(args):
    r = moed("calibrate", *args)
    assert r.returncode == 2, (args, r.stderr)
    assert r.stderr.startswith("moed calibrate: ")
    assert r.stderr.count("\n") == 1


def test_missing_model():
    r = moed("calibrate", "-m", TMP / "no-such.gguf", "--seconds", 0.05)
    assert r.returncode == 1
    assert r.stderr.startswith("moed calibrate: ") and r.stderr.count("\n") == 1


def cuda_devices() -> int:
    out = moed("version").stdout
    m = re.search(r"^cuda: built in; (\d+) device", out, re.M)
    return int(m.group(1)) if m else 0


def test_gpu_without_cuda(small_model):
    if cuda_devices() > 0:
        pytest.skip("a CUDA device is usable here")
    r = moed("calibrate", "-m", small_model, "--threads", 2, "--seconds", 0.05, "--gpu", 0,
             "-o", TMP / "gpu.txt")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("moed calibrate: --gpu 0: ") and "CUDA" in last, r.stderr
