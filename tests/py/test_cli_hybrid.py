"""The hybrid flags of `moed run` and `moed bench` (sched/hybrid.h, daemon/cli.h).

    /usr/bin/python3 -m pytest -q -rs tests/py/test_cli_hybrid.py

- Usage errors, on any machine: each hybrid flag without --gpu; a bad
  --expert-budget (150%, -1, abc, 1.5, empty, missing); a bad or belady
  --cache-policy; an ablation flag, --cache-policy or --cost without
  --expert-budget; --cost with a missing or a malformed file: exit 2, one
  `moed CMD:` line naming the flag (and the file), nothing on stdout.
- Valid flags (with a real cost file) get past parsing: with a CUDA device
  they run, without one they fail like plain --gpu (exit 1, naming CUDA).
- --help of both commands lists every hybrid flag.
- With a CUDA device (skipped otherwise, reason "no CUDA device"): greedy
  `moed run` at a 25% budget with --force-hybrid writes the same text as all
  on the GPU and ends with the hybrid summaries; `moed bench` prints a
  hybrid line per test and "CUDA 0, hybrid ..." as the backend; every
  ablation flag runs; a budget that holds every expert runs all on the GPU
  (a note says so) unless --force-hybrid.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import DEFAULT_MODEL, MOED, ROOT

PROMPT = "ROMEO:"
COST = ROOT / "bench" / "results" / "cost-h200-2026-11-26.txt"
FLAGS = ("--expert-budget", "--cache-policy", "--static-placement", "--no-prefetch", "--no-plan",
         "--force-hybrid", "--staging", "--cost")


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
    """Usable CUDA devices as `moed version` reports them (0 for a build without CUDA);
    the same probe as test_cli_gpu.py's."""
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


def base(cmd: str) -> list:
    """A command line that is complete but for the hybrid flags (short runs)."""
    if cmd == "run":
        return ["run", "-m", DEFAULT_MODEL, "-p", PROMPT, "-n", "4", "--temp", "0"]
    return ["bench", "-m", DEFAULT_MODEL, "-p", "16", "-n", "4", "-r", "1"]


def assert_usage_error(r: subprocess.CompletedProcess, cmd: str, *words: str):
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout == "", r.stdout
    assert r.stderr.startswith(f"moed {cmd}: ") and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


CMDS = ["run", "bench"]


# ---- usage errors (any machine) -------------------------------------------------------


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("args", [
    ["--expert-budget", "25%"],
    ["--expert-budget", "0.25", "--no-prefetch"],
    ["--no-prefetch"],
    ["--static-placement"],
    ["--force-hybrid"],
    ["--cache-policy", "lru"],
    ["--cost", COST],
], ids=lambda a: " ".join(map(str, a)))
def test_hybrid_flags_need_gpu(cmd, args):
    need_default()
    r = moed(*base(cmd), *args)
    assert_usage_error(r, cmd, args[0], "needs --gpu")


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("budget", ["150%", "-1", "-5%", "abc", "1.5", "", "25%%", "12Q"])
def test_bad_budget(cmd, budget):
    need_default()
    r = moed(*base(cmd), "--gpu", "0", "--expert-budget", budget)
    assert_usage_error(r, cmd, "--expert-budget", f"'{budget}'")


@pytest.mark.parametrize("cmd", CMDS)
def test_budget_without_value(cmd):
    need_default()
    r = moed(*base(cmd), "--gpu", "0", "--expert-budget")
    assert_usage_error(r, cmd, "--expert-budget", "needs a value")


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("policy", ["mru", "", "LRU2", "belady"])
def test_bad_policy(cmd, policy):
    need_default()
    r = moed(*base(cmd), "--gpu", "0", "--expert-budget", "25%", "--cache-policy", policy)
    assert_usage_error(r, cmd, "--cache-policy", "lru, lfu or score")
    if policy == "belady":
        assert "belady" in r.stderr


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("args", [
    ["--no-prefetch"],
    ["--no-plan"],
    ["--static-placement"],
    ["--force-hybrid"],
    ["--staging"],
    ["--cache-policy", "lfu"],
    ["--cost", COST],
], ids=lambda a: " ".join(map(str, a)))
def test_flags_need_expert_budget(cmd, args):
    need_default()
    r = moed(*base(cmd), "--gpu", "0", *args)
    assert_usage_error(r, cmd, args[0], "--expert-budget")


@pytest.mark.parametrize("cmd", CMDS)
def test_cost_missing_file(cmd, tmp_path):
    need_default()
    path = tmp_path / "nope.txt"
    r = moed(*base(cmd), "--gpu", "0", "--expert-budget", "25%", "--cost", path)
    assert_usage_error(r, cmd, "--cost", str(path))


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("text", [
    "bogus = 1\n",
    "h2d_gbs = fast\n",
    "h2d_gbs = -3\n",
    "type.q4_k.cpu_us = 1\n",  # a type without its bytes
], ids=["unknown-key", "bad-number", "out-of-range", "incomplete-type"])
def test_cost_malformed_file(cmd, tmp_path, text):
    need_default()
    path = tmp_path / "cost.txt"
    path.write_text(text)
    r = moed(*base(cmd), "--gpu", "0", "--expert-budget", "25%", "--cost", path)
    assert_usage_error(r, cmd, "--cost", str(path))


@pytest.mark.parametrize("cmd", CMDS)
def test_help_lists_hybrid_flags(cmd):
    r = moed(cmd, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: moed {cmd}"), r.stdout
    for flag in FLAGS:
        assert re.search(rf"^  {flag}\b", r.stdout, re.M), (flag, r.stdout)
    assert r.stdout.rstrip().endswith("this text"), r.stdout
    assert max(len(l) for l in r.stdout.splitlines()) <= 100, r.stdout


# ---- valid flags get past parsing --------------------------------------------------------


@pytest.mark.parametrize("cmd", CMDS)
@pytest.mark.parametrize("args", [
    ["--expert-budget", "25%"],
    ["--expert-budget", "0.25", "--force-hybrid", "--cache-policy", "lru", "--cost", COST],
    ["--expert-budget", "0%", "--static-placement", "--no-prefetch", "--no-plan", "--staging"],
    ["--expert-budget", "1M", "--cache-policy", "lfu"],
], ids=lambda a: " ".join(str(x) for x in a if "/" not in str(x)))
def test_valid_flags_parse(cmd, args):
    need_default()
    r = moed(*base(cmd), "--gpu", "0", *args)
    if cuda_devices() == 0:
        assert r.returncode == 1, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert re.search(rf"^moed {cmd}: .*(CUDA|GPU|cuda|gpu)", r.stderr, re.M), r.stderr
        if cmd == "bench":
            assert r.stdout == ""
    else:
        assert r.returncode == 0, r.stderr


# ---- with a CUDA device -------------------------------------------------------------------

ROW = re.compile(r"^\| (.+?) \| (.+?) \| +(pp\d+|tg\d+) \| +([0-9.]+) ± ([0-9.]+) \|$", re.M)
HYBRID = re.compile(
    r"^(?P<test>(?:pp|tg)\d+) hybrid: budget (?P<slots>\d+) slots, [0-9.]+ [GM]iB, "
    r"(?P<share>[0-9.]+)% of experts; policy (?P<policy>[^;]+); "
    r"plan cpu (?P<cpu>[0-9.]+)% gpu-cached (?P<cached>[0-9.]+)% gpu-loaded (?P<loaded>[0-9.]+)% "
    r"of (?P<act>\d+) activated; hit rate (?P<hit>[0-9.]+%|-); "
    r"loads (?P<loads>[0-9.]+)/token \(\+(?P<streamed>[0-9.]+) streamed; "
    r"(?P<behind>[0-9.]+) behind the CPU\), "
    r"evictions (?P<evictions>[0-9.]+)/token; "
    r"prefetches (?P<prefetches>\d+), prefetch hits (?P<phits>\d+); prediction (?P<pred>[0-9.]+%|-); "
    r"PCIe (?P<pcie>[0-9.]+) MB/token \(loads [0-9.]+, activations [0-9.]+\); "
    r"host/layer (?P<host>[0-9.]+) us, wait/layer [0-9.]+ us, cpu/layer [0-9.]+ us, "
    r"predict/layer [0-9.]+ us, overhead/layer -?[0-9.]+ us; "
    r"cost corrections cpu x[0-9.]+, h2d x[0-9.]+$", re.M)


def bench_rows(out: str) -> dict[str, str]:
    return {m.group(3): m.group(2).strip() for m in ROW.finditer(out)}


def hybrid_lines(out: str) -> dict[str, re.Match]:
    return {m.group("test"): m for m in HYBRID.finditer(out)}


def same_policy(got: str, want: str) -> bool:
    """"score (no prefetch, staging)": the policy and its ablations; "staging" may be
    added where registering the model file for copies fell back to staging buffers."""
    def split(p):
        name, _, rest = p.partition(" (")
        return name, {x for x in rest.rstrip(")").split(", ") if x}
    gn, ga = split(got)
    wn, wa = split(want)
    return gn == wn and wa <= ga and ga - wa <= {"staging"}


def check_line(m: re.Match):
    mix = float(m["cpu"]) + float(m["cached"]) + float(m["loaded"])
    assert int(m["act"]) > 0 and abs(mix - 100) < 0.5, m.group(0)
    assert float(m["host"]) > 0, m.group(0)


@needs_gpu
def test_run_hybrid_same_text_as_all_gpu():
    need_default()
    args = ["run", "-m", DEFAULT_MODEL, "-p", PROMPT, "-n", "32", "--temp", "0", "--gpu", "0"]
    ref = moed(*args)
    assert ref.returncode == 0, ref.stderr
    hy = moed(*args, "--expert-budget", "25%", "--force-hybrid")
    assert hy.returncode == 0, hy.stderr
    assert hy.stdout == ref.stdout, f"all-GPU:\n{ref.stdout}\nhybrid:\n{hy.stdout}"
    assert re.search(r"loaded in \d+ ms; GPU 0: .*no CUDA graphs; hybrid: \d+ of \d+ experts "
                     r"in GPU slots", hy.stderr), hy.stderr
    for part in ("prefill", "decode"):
        assert re.search(rf"^moed run: hybrid {part}: budget \d+ slots, .*overhead/layer", hy.stderr,
                         re.M), hy.stderr
    assert "moed run: hybrid" not in ref.stderr


@needs_gpu
def test_bench_hybrid_line():
    need_default()
    r = moed("bench", "-m", DEFAULT_MODEL, "--gpu", "0", "--expert-budget", "0.25",
             "--force-hybrid", "-p", "16", "-n", "8", "-r", "1")
    assert r.returncode == 0, r.stderr
    rows = bench_rows(r.stdout)
    assert set(rows) == {"pp16", "tg8"}, r.stdout
    assert all(b.startswith("CUDA 0, hybrid ") for b in rows.values()), r.stdout
    lines = hybrid_lines(r.stdout)
    assert set(lines) == {"pp16", "tg8"}, r.stdout
    for m in lines.values():
        check_line(m)
        assert same_policy(m["policy"], "score"), m.group(0)
        assert abs(float(m["share"]) - 25) < 5, m.group(0)
    assert re.search(r"^GPU 0: .*no CUDA graphs; hybrid: \d+ of \d+ experts in GPU slots .*; "
                     r"CPU: \d+ threads?", r.stdout, re.M), r.stdout


@needs_gpu
@pytest.mark.parametrize("args,policy", [
    (["--cache-policy", "lru"], "lru"),
    (["--cache-policy", "lfu"], "lfu"),
    (["--static-placement"], "static"),
    (["--no-prefetch"], "score (no prefetch)"),
    (["--no-plan"], "score (no plan)"),
    (["--staging"], "score (staging)"),
    (["--cost", COST], "score"),
    (["--expert-budget", "0%"], "score"),
    (["-t", "1"], "score"),
], ids=["lru", "lfu", "static", "no-prefetch", "no-plan", "staging", "cost", "min-pool",
        "one-thread"])
def test_bench_ablations(args, policy):
    need_default()
    budget = [] if "--expert-budget" in args else ["--expert-budget", "25%"]
    r = moed("bench", "-m", DEFAULT_MODEL, "--gpu", "0", *budget, "--force-hybrid", *args,
             "-p", "16", "-n", "8", "-r", "1")
    assert r.returncode == 0, r.stderr
    lines = hybrid_lines(r.stdout)
    assert set(lines) == {"pp16", "tg8"}, r.stdout
    for m in lines.values():
        check_line(m)
        assert same_policy(m["policy"], policy), (policy, m.group(0))
        if "--static-placement" in args or "--no-plan" in args:
            assert float(m["loaded"]) == 0, m.group(0)
        if {"--static-placement", "--no-prefetch", "--no-plan"} & set(args):
            assert int(m["prefetches"]) == 0, m.group(0)


@needs_gpu
def test_bench_full_budget_is_all_gpu():
    need_default()
    r = moed("bench", "-m", DEFAULT_MODEL, "--gpu", "0", "--expert-budget", "100%",
             "-p", "16", "-n", "4", "-r", "1")
    assert r.returncode == 0, r.stderr
    assert "gives every expert a GPU slot" in r.stderr, r.stderr
    assert all(b == "CUDA 0" for b in bench_rows(r.stdout).values()), r.stdout
    assert not hybrid_lines(r.stdout), r.stdout
