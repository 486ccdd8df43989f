"""The exactness fixtures (tests/fixtures/<arch>/, made by tools/mkfixtures.py):
well-formed, consistent with their GGUF files, and reproduced by an
independent numpy forward pass that reads nothing but the GGUF files.

    python3 -m pytest -q tests/py/test_fixtures.py
    python3 tests/py/test_fixtures.py          # prints the errors per arch

The numpy model (tests/py/moe_numpy_ref.py, float64) is the executable
statement of the GGUF layout conventions that moed's C engine relies on
(tests/fixtures/README.md lists them); test_fixtures_catch_mistakes shows that
each convention matters.  numpy only; the tests that need numpy skip without it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf import GGMLType, GGUFReader  # noqa: E402

try:
    import numpy as np

    from moe_numpy_ref import RefModel  # the numpy forward pass
except ImportError:  # numpy missing: the numpy tests skip
    np = RefModel = None

FIX = Path(os.environ.get("MOED_FIXTURES", ROOT / "tests" / "fixtures"))
ARCHS = ["qwen3moe", "qwen2moe", "llama", "olmoe"]
N_GREEDY, N_DECODE = 32, 8
TOL = 1e-4  # numpy float64 vs transformers float32, logits of magnitude ~4
MAX_FIXTURE_BYTES = 6_000_000

need_np = pytest.mark.skipif(np is None, reason="numpy not installed")


def load_ref(arch: str) -> dict:
    return json.loads((FIX / arch / "ref.json").read_text(encoding="utf-8"))


_models: dict = {}


def model(arch: str, kind: str) -> RefModel:
    key = (arch, kind)
    if key not in _models:
        _models[key] = RefModel(FIX / arch / f"model-{kind}.gguf")
    return _models[key]


def check_arch(arch: str, kind: str) -> dict:
    """Errors of the numpy forward pass against ref.json (max abs over logits)."""
    ref = load_ref(arch)
    m = model(arch, kind)
    err_prompt = err_decode = err_margin = 0.0
    gaps: list = []
    greedy_ok = True
    for s in ref["sequences"]:
        r = s if kind == "f32" else s["q8_0"]
        P = len(s["prompt"])
        # one causal pass over prompt + greedy[:31]: row P-1+i chose greedy[i]
        seq = s["prompt"] + r["greedy"][: N_GREEDY - 1]
        lg = m.forward(seq, gaps)
        err_prompt = max(err_prompt, float(np.abs(lg[:P] - np.asarray(r["prompt_logits"])).max()))
        rows = lg[P - 1:]
        greedy_ok &= [int(x) for x in rows.argmax(axis=-1)] == r["greedy"]
        srt = np.sort(rows, axis=-1)
        err_margin = max(err_margin, float(np.abs((srt[:, -1] - srt[:, -2]) - np.asarray(r["greedy_margins"])).max()))
        if kind == "f32":
            err_decode = max(err_decode, float(np.abs(rows[:N_DECODE] - np.asarray(s["decode_logits"])).max()))
    return {"prompt": err_prompt, "decode": err_decode, "margin": err_margin, "greedy_ok": greedy_ok,
            "min_router_gap": min(gaps)}


# ===========================================================================
# tests


@pytest.mark.parametrize("arch", ARCHS)
def test_ref_json_well_formed(arch):
    ref = load_ref(arch)
    V = ref["n_vocab"]
    assert ref["arch"] == arch and ref["config"]["vocab_size"] == V
    assert ref["config"]["architectures"] == [ref["hf_class"]]
    assert ref["transformers"] and ref["torch"] and isinstance(ref["seed"], int)
    seqs = ref["sequences"]
    assert len(seqs) >= 2 and len({len(s["prompt"]) for s in seqs}) >= 2  # different lengths
    for s in seqs:
        P = len(s["prompt"])
        for r in (s, s["q8_0"]):
            assert all(isinstance(t, int) and 0 <= t < V for t in s["prompt"] + r["greedy"])
            assert len(r["greedy"]) == N_GREEDY and len(r["greedy_margins"]) == N_GREEDY
            assert len(r["prompt_logits"]) == P and all(len(row) == V for row in r["prompt_logits"])
            assert min(r["greedy_margins"]) > 1e-3  # well above float rounding
            # greedy[0] is chosen by the last prompt position
            last = r["prompt_logits"][-1]
            assert max(range(V), key=last.__getitem__) == r["greedy"][0]
        dec = s["decode_logits"]
        assert len(dec) == N_DECODE and all(len(row) == V for row in dec)
        assert dec[0] == s["prompt_logits"][-1]
        for i, row in enumerate(dec):
            srt = sorted(row)
            assert max(range(V), key=row.__getitem__) == s["greedy"][i]
            assert abs((srt[-1] - srt[-2]) - s["greedy_margins"][i]) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_metadata_matches_config(arch):
    ref = load_ref(arch)
    cfg = ref["config"]
    for kind in ("f32", "q8_0"):
        r = GGUFReader(FIX / arch / f"model-{kind}.gguf")
        A = arch
        assert r.get("general.architecture") == arch
        assert r.get("tokenizer.ggml.model") == "none"
        assert r.get(f"{A}.vocab_size") == ref["n_vocab"]
        assert r.get(f"{A}.block_count") == cfg["num_hidden_layers"]
        assert r.get(f"{A}.embedding_length") == cfg["hidden_size"]
        assert r.get(f"{A}.attention.head_count") == cfg["num_attention_heads"]
        assert r.get(f"{A}.attention.head_count_kv") == cfg["num_key_value_heads"]
        assert r.get(f"{A}.expert_count") == cfg.get("num_local_experts", cfg.get("num_experts"))
        assert r.get(f"{A}.expert_used_count") == cfg["num_experts_per_tok"]
        norm = True if arch == "llama" else cfg["norm_topk_prob"]
        assert r.get(f"{A}.expert_weights_norm") is norm
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
        assert r.get(f"{A}.rope.freq_base") == pytest.approx(theta, rel=1e-7)
        assert r.get(f"{A}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
        emb = r.tensor("token_embd.weight")
        assert emb.ne == [cfg["hidden_size"], ref["n_vocab"]]
        names = {t.name for t in r.tensors}
        assert ("output.weight" in names) == (not cfg.get("tie_word_embeddings", False))
        for t in r.tensors:
            matrix = not (len(t.ne) == 1 or t.name.endswith("_norm.weight") or ".ffn_gate_inp" in t.name)
            want = GGMLType.Q8_0 if (kind == "q8_0" and matrix) else GGMLType.F32
            assert t.ggml_type == want, t.name
        r.close()


def test_fixture_sizes():
    files = [p for p in FIX.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert {p.parent.name for p in files if p.name == "ref.json"} == set(ARCHS)
    assert total < MAX_FIXTURE_BYTES, f"tests/fixtures is {total} bytes"


@need_np
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_numpy_forward_reproduces_transformers(arch, kind):
    e = check_arch(arch, kind)
    assert e["prompt"] < TOL, e
    assert e["decode"] < TOL, e
    assert e["margin"] < 2 * TOL, e
    assert e["greedy_ok"], e
    assert e["min_router_gap"] > 1e-5, e  # the numpy pass picks HF's experts with room to spare


MUTATIONS = {
    # mistake -> the archs whose fixtures must catch it
    "rope_style_swapped": ARCHS,         # NEOX for llama's permuted rows, adjacent pairs for the others
    "rope_base_10000": ARCHS,            # ignoring rope.freq_base (every fixture has a non-default base)
    "norm_topk_flipped": ARCHS,          # renormalising the top-k weights when the model does not, or the reverse
    "swap_layer_norms": ARCHS,           # attn_norm / ffn_norm mixed up (norm weights are random, not 1)
    "gqa_modulo": ["qwen3moe", "qwen2moe", "llama"],  # olmoe has n_kv == n_head
    "no_qk_norm": ["qwen3moe", "olmoe"],
    "no_qkv_bias": ["qwen2moe"],
    "no_shexp_gate": ["qwen2moe"],
    "output_is_token_embd": ["qwen2moe", "llama", "olmoe"],  # qwen3moe's fixture is tied
}


@need_np
@pytest.mark.parametrize("arch,mistake", [(a, m) for m, archs in MUTATIONS.items() for a in archs])
def test_fixtures_catch_mistakes(arch, mistake):
    """Each convention matters: the numpy pass with one deliberate mistake misses
    the reference logits by far more than the tolerance."""
    ref = load_ref(arch)
    m = RefModel(FIX / arch / "model-f32.gguf")
    m.mut = {mistake}
    s = ref["sequences"][1]
    err = float(np.abs(m.forward(s["prompt"]) - np.asarray(s["prompt_logits"])).max())
    assert err > 100 * TOL, f"{arch} {mistake}: {err}"


@need_np
def test_hf2gguf_without_tokenizer(tmp_path):
    """A checkpoint without tokenizer files (as mkfixtures saves them) converts:
    tokenizer.ggml.model = "none", <arch>.vocab_size, no other tokenizer keys."""
    import hf2gguf
    from test_tools import V, _tiny_model

    d = tmp_path / "m"
    _tiny_model(d, "olmoe")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    out = tmp_path / "m.gguf"
    assert hf2gguf.main(["--outtype", "f32", str(d), str(out)]) == 0
    r = GGUFReader(out)
    assert r.get("tokenizer.ggml.model") == "none" and r.get("olmoe.vocab_size") == V
    assert [k for k in r.fields if k.startswith("tokenizer.")] == ["tokenizer.ggml.model"]
    assert r.tensor("token_embd.weight").ne[1] == V
    r.close()
    # --vocab-only still needs a tokenizer
    assert hf2gguf.main(["--vocab-only", str(d), str(tmp_path / "v.gguf")]) == 1


if __name__ == "__main__":
    for a in ARCHS:
        for kd in ("f32", "q8_0"):
            e = check_arch(a, kd)
            dec = f"{e['decode']:.2e}" if kd == "f32" else "   -    "
            print(f"{a:9s} {kd:5s} max|numpy - transformers|: prompt {e['prompt']:.2e}  "
                  f"decode {dec}  margins {e['margin']:.2e}  greedy {'ok' if e['greedy_ok'] else 'DIFFERS'}  "
                  f"min router gap {e['min_router_gap']:.2e}")
