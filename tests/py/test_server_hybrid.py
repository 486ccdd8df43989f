"""`moed serve` with the hybrid expert executor: configuration and /metrics.

    /usr/bin/python3 -m pytest -q -rs tests/py/test_server_hybrid.py

Everywhere (no GPU needed):
- cost_model: `moed check-config` accepts a file in `moed calibrate`'s
  format, refuses a missing one ("cannot read") and a malformed one naming
  the file and line; `moed serve` with a malformed one exits 1 with that
  line before it listens;
- the CPU backend (gpu_device -1) serves with a cost model set and its
  /metrics have no expert-cache or hybrid series.
With a CUDA device (skipped otherwise, reason "no CUDA device"), on the
default model:
- expert_cache_budget a quarter of the experts' bytes (from `moed info
  --tensors`): the log says hybrid, with the slots, the policy and that the
  cost model is not calibrated (and how to make one); a chat completion
  and a completion work; /metrics has per-layer hits + misses > 0 and experts run on both
  the CPU and the GPU;
- the default budget (0.8 of the free memory) holds every expert of this
  small model: everything on the GPU, no hybrid series.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import BASE_ARGS, MOED, Daemon, free_port
from test_cli_gpu import needs_gpu, serve_args
from test_server_life import serve_fails

# A cost model as `moed calibrate -o` writes it (calibrated = 0: no GPU part).
COST = """# moed cost model (sched/cost.h); times in us, bandwidths in GB/s
calibrated = 0
load_us = 5
h2d_gbs = 54
h2d_shared_gbs = 34
cpu_alone_gbs = 24.6
cpu_shared_gbs = 15.0
cpu_side_us = 10
gpu_side_us = 4
type.f16.bytes = 147456
type.f16.cpu_us = 2.44
type.f16.cpu_us_tok = 3.02
type.f16.gpu_us = 0.33
type.f16.gpu_us_tok = 0.0078
"""

HYBRID_SERIES = ("moed_expert_cache_hits_total", "moed_expert_cache_slots",
                 "moed_experts_run_total", "moed_pcie_bytes_total", "moed_hybrid_info",
                 "moed_hybrid_host_seconds_total", "moed_expert_prediction_tokens_total")


def moed(*args, timeout=60) -> subprocess.CompletedProcess:
    if not MOED.exists():
        pytest.skip(f"{MOED} is not built (make -j2 all)")
    return subprocess.run([str(MOED), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# ---- cost_model -----------------------------------------------------------------------


def test_check_config_cost_model(default_model, tmp_path):
    good = tmp_path / "cost.txt"
    good.write_text(COST)
    r = moed("check-config", "-q", "-m", default_model, "--cost-model", good)
    assert r.returncode == 0, r.stdout + r.stderr

    r = moed("check-config", "-q", "-m", default_model, "--cost-model", tmp_path / "nope.txt")
    assert r.returncode == 1
    assert re.search(r"cost_model = \S*nope\.txt: cannot read", r.stdout + r.stderr), r.stderr

    bad = tmp_path / "bad.txt"
    bad.write_text(COST.replace("h2d_gbs = 54", "h2d_gbs = fast"))
    r = moed("check-config", "-q", "-m", default_model, "--cost-model", bad)
    assert r.returncode == 1
    assert f"{bad}:4:" in r.stdout + r.stderr and "h2d_gbs" in r.stdout + r.stderr, r.stderr


def test_serve_refuses_malformed_cost_model(moed_serve, default_model, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("load_us = 5\nthis is not a cost model\n")
    out = serve_fails(["-m", str(default_model), "--port", str(free_port()), "--cost-model",
                       str(bad)] + BASE_ARGS)
    assert f"{bad}:2:" in out and "cost_model" in out, out


def test_cpu_backend_has_no_hybrid_metrics(moed_serve, default_model, tmp_path):
    cost = tmp_path / "cost.txt"
    cost.write_text(COST)
    with Daemon(default_model, ["--cost-model", str(cost)], name="hybrid-cpu") as d:
        r = d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 4, "temperature": 0})
        assert r.status == 200, r.body[:300]
        m = d.metrics()
    assert m.samples["moed_backend_info"][0][0]["backend"] == "cpu"
    for name in HYBRID_SERIES:
        assert name not in m.samples, name


# ---- with a CUDA device -----------------------------------------------------------------


def experts_bytes(model) -> int:
    """Bytes of the *_exps tensors, from `moed info --tensors`."""
    r = moed("info", model, "--tensors")
    assert r.returncode == 0, r.stderr
    total = sum(int(m.group(1)) for m in
                re.finditer(r"^blk\.\d+\.ffn_\w+_exps\.weight\s.*?\]\s+(\d+)\s+\d+$",
                            r.stdout, re.M))
    assert total > 0, r.stdout
    return total


@needs_gpu
def test_serve_hybrid(moed_serve, default_model):
    budget = experts_bytes(default_model) // 4
    args = serve_args(None) + ["--expert-cache-budget", f"{budget}B", "--cache-policy", "lru"]
    with Daemon(default_model, args, base_args=False, name="hybrid-gpu") as d:
        r = d.post("/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "Speak, ROMEO."}],
                    "max_tokens": 24, "temperature": 0})
        assert r.status == 200, r.body[:300]
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        # plain text, which this model continues (decode steps, not just a prefill)
        r = d.post("/v1/completions", {"prompt": "ROMEO:\n", "max_tokens": 32, "temperature": 0})
        assert r.status == 200, r.body[:300]
        assert r.json()["usage"]["completion_tokens"] > 1
        m = d.metrics()
        log = d.stderr()
    assert re.search(r"info: engine: backend: GPU 0 \(.*\), hybrid: \d+ expert slots \([0-9.]+ "
                     r"[KMG]iB, [0-9.]+% of the \d+ experts", log), log
    assert "cache_policy lru" in log and "CPU thread" in log, log
    assert "not calibrated" in log and "moed calibrate --gpu 0 -o FILE" in log, log
    assert "engine: backend GPU 0" in log and "hybrid" in log, log
    info = m.samples["moed_hybrid_info"][0][0]
    assert info["policy"] == "lru" and info["cost_model"] == "", info
    assert m.value("moed_expert_cache_slots") > 0
    assert m.value("moed_expert_cache_bytes") > 0
    layers = {lb["layer"] for lb, _ in m.samples["moed_expert_cache_hits_total"]}
    assert layers == {"0", "1", "2", "3"}, layers
    assert m.value("moed_expert_cache_hits_total") + m.value("moed_expert_cache_misses_total") > 0
    cpu = m.value("moed_experts_run_total", place="cpu")
    gpu = (m.value("moed_experts_run_total", place="gpu_cached")
           + m.value("moed_experts_run_total", place="gpu_loaded"))
    assert cpu > 0 and gpu > 0, (cpu, gpu)
    assert m.value("moed_pcie_bytes_total", kind="activations") > 0
    assert m.value("moed_hybrid_host_seconds_total", part="all") > 0
    assert m.types.get("moed_expert_cache_hits_total") == "counter"
    assert m.types.get("moed_expert_cache_slots") == "gauge"


@needs_gpu
def test_serve_default_budget_all_on_gpu(moed_serve, default_model):
    with Daemon(default_model, serve_args(None), base_args=False, name="hybrid-off") as d:
        m = d.metrics()
        log = d.stderr()
    if m.samples["moed_backend_info"][0][0]["backend"] != "gpu":
        pytest.skip("the GPU did not take the default model: " + log[-500:])
    assert "every expert on the GPU" in log, log
    for name in HYBRID_SERIES:
        assert name not in m.samples, name

