"""Smoke test of tools/train_default.py at toy size on the CPU (pytest).

    python3 -m pytest -q tests/py/test_train_default.py   # ~10 s where torch is (a minute on a busy CPU)

Runs the whole script once (--tiny, 12 steps, on the first 120,000 characters of
$MOED_SHARED/corpus/tinyshakespeare.txt): tokenizer, training, save, hf2gguf,
GGUF read-back, held-out figure, samples.  Then checks the files it writes, the
GGUF's metadata and tensor types, the perplexity JSON's arithmetic, and that
bin/moed (when built) loads the file and tokenizes like Hugging Face.  Skipped,
with the reason shown, where torch / transformers / tokenizers / numpy are missing
(Debian's python3 in `make test`); the tests that need only the standard library
(the corpus split) always run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))

import gguf  # noqa: E402
import train_default  # noqa: E402  (imports nothing heavy at module level)

SHARED = Path(os.environ.get("MOED_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus" / "tinyshakespeare.txt"
MOED = ROOT / "bin" / "moed"

_missing = [m for m in ("torch", "transformers", "tokenizers", "numpy", "safetensors")
            if importlib.util.find_spec(m) is None]
need_torch = pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} "
                                f"(pip install -r tools/requirements-train.txt)")
need_corpus = pytest.mark.skipif(not CORPUS.is_file(), reason=f"no {CORPUS}")
need_moed = pytest.mark.skipif(not (MOED.is_file() and os.access(MOED, os.X_OK)),
                               reason=f"{MOED} not built")

LINE = "ROMEO:\nBut, soft! what light through yonder window breaks? 'Tis the east, and Juliet is the sun.\n"


# ---------------------------------------------------------------------------
# standard library only


def test_split_corpus_at_line_boundary():
    text = "".join(f"line {i}\n" for i in range(100))
    train, held, cut = train_default.split_corpus(text)
    assert train + held == text and len(train) == cut
    assert train.endswith("\n") and cut >= int(0.9 * len(text))
    assert text.find("\n", int(0.9 * len(text))) + 1 == cut
    # no newline after the 90 % point: everything is train
    assert train_default.split_corpus("a" * 50) == ("a" * 50, "", 50)


@need_corpus
def test_split_of_the_real_corpus():
    text = CORPUS.read_text(encoding="utf-8")
    train, held, cut = train_default.split_corpus(text)
    assert cut == 1003856 and len(held) == 111538  # documented in model/default/README.md
    assert text[cut - 1] == "\n" and held.startswith("\nGREMIO:\nGood morrow, neighbour Baptista.\n")


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="needs tokenizers")
@need_corpus
def test_tokenizer_training_is_deterministic():
    train, held, _ = train_default.split_corpus(CORPUS.read_text(encoding="utf-8")[:120000])
    a, b = (train_default.train_tokenizer(train, 400) for _ in range(2))
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 400
    assert [a.token_to_id(s) for s in train_default.SPECIALS] == [0, 1, 2]
    assert a.decode(a.encode(held).ids) == held


# ---------------------------------------------------------------------------
# the whole script at toy size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if _missing:
        pytest.skip(f"needs {', '.join(_missing)}")
    if not CORPUS.is_file():
        pytest.skip(f"no {CORPUS}")
    d = tmp_path_factory.mktemp("train")
    corpus = d / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:120000], encoding="utf-8")
    model_dir, out_dir = d / "model", d / "out"
    cmd = [sys.executable, str(TOOLS / "train_default.py"), "--tiny", "--device", "cpu",
           "--corpus", str(corpus), "--out-dir", str(out_dir), "--model-dir", str(model_dir),
           "--steps", "12", "--eval-every", "6", "--seed", "7"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = corpus.read_text(encoding="utf-8")
    return {"model": model_dir, "out": out_dir, "stdout": r.stdout, "corpus": text,
            "gguf": model_dir / train_default.GGUF_NAME}


@need_torch
@need_corpus
def test_files_written(run):
    for name in (train_default.GGUF_NAME, "train.log", "heldout.json", "heldout.txt"):
        assert (run["model"] / name).is_file(), name
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (run["out"] / "hf" / name).is_file(), name
    log = (run["model"] / "train.log").read_text(encoding="utf-8")
    assert log.startswith("command: python3 ") and "--seed 7" in log.splitlines()[0]
    for s in ("tokenizer round trip on the held-out text: OK", "expert code check",
              "eval step     0", "eval step    12", "GGUF read back", "AutoTokenizer == tokenizers",
              "summary: params"):
        assert s in log, s
    assert "step    10/12" in log  # train loss lines (--log-every 5)
    tc = json.loads((run["out"] / "hf" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tc["chat_template"] and tc["eos_token"] == "<|endoftext|>"


@need_torch
@need_corpus
def test_heldout_json(run):
    h = json.loads((run["model"] / "heldout.json").read_text())
    _, held, cut = train_default.split_corpus(run["corpus"])
    assert (run["model"] / "heldout.txt").read_bytes() == held.encode("utf-8")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(run["out"] / "hf" / "tokenizer.json"))
    n = len(tok.encode(held).ids)
    W = h["window"]
    assert W == train_default.PRESETS["tiny"]["ctx"]
    assert h["n_tokens"] == n and h["n_windows"] == n // W
    assert h["tokens_scored"] == h["n_windows"] * (W - 1)
    assert h["llamacpp"]["tokens_scored"] == h["n_windows"] * (W - 1 - W // 2)
    assert h["convention"] == "nonoverlap-all-but-first"
    assert math.isclose(h["ppl"], math.exp(h["nll"]), rel_tol=1e-4)
    assert 1.0 < h["ppl"] < 400  # better than uniform over 320 tokens after a few steps
    # F16 weights read back from the GGUF give nearly the checkpoint's figure
    assert abs(h["nll"] - h["nll_checkpoint_weights"]) < 1e-3


@need_torch
@need_corpus
def test_gguf_contents(run):
    r = gguf.GGUFReader(str(run["gguf"]))
    P = train_default.PRESETS["tiny"]
    assert r.get("general.architecture") == "qwen3moe"
    assert r.get("tokenizer.ggml.model") == "gpt2" and r.get("tokenizer.ggml.pre") == "gpt-2"
    toks = r.get("tokenizer.ggml.tokens")
    assert len(toks) == P["vocab"] and toks[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert list(r.get("tokenizer.ggml.token_type"))[:4] == [3, 3, 3, 1]
    assert r.get("tokenizer.ggml.eos_token_id") == 0 and r.get("tokenizer.ggml.bos_token_id") == 0
    assert r.get("tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in r.get("tokenizer.chat_template")
    assert r.get("qwen3moe.block_count") == P["layers"]
    assert r.get("qwen3moe.embedding_length") == P["d_model"]
    assert r.get("qwen3moe.context_length") == P["ctx"]
    assert r.get("qwen3moe.expert_count") == P["experts"]
    assert r.get("qwen3moe.expert_used_count") == P["top_k"]
    assert r.get("qwen3moe.expert_feed_forward_length") == P["expert_ff"]
    assert r.get("qwen3moe.attention.head_count") == P["heads"]
    assert r.get("qwen3moe.attention.head_count_kv") == P["kv_heads"]
    assert r.get("qwen3moe.attention.key_length") == P["head_dim"]
    assert r.get("qwen3moe.expert_weights_norm") is True
    assert abs(r.get("qwen3moe.rope.freq_base") - 10000.0) < 1e-3
    types = {t.name: gguf.GGMLType(t.ggml_type) for t in r.tensors}
    assert types["token_embd.weight"] == gguf.GGMLType.F16 and types["output.weight"] == gguf.GGMLType.F16
    assert types["blk.0.ffn_gate_exps.weight"] == gguf.GGMLType.F16
    assert types["blk.0.ffn_gate_inp.weight"] == gguf.GGMLType.F32
    assert types["blk.0.attn_q_norm.weight"] == gguf.GGMLType.F32
    down = next(t for t in r.tensors if t.name == "blk.1.ffn_down_exps.weight")
    assert list(down.ne) == [P["expert_ff"], P["d_model"], P["experts"]]
    assert len(r.tensors) == 3 + 12 * P["layers"]
    out = subprocess.run([sys.executable, str(TOOLS / "gguf.py"), str(run["gguf"])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "blk.0.ffn_up_exps.weight" in out.stdout


@need_torch
@need_corpus
def test_python_bpe_over_gguf_vocab_matches_hf(run):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(run["out"] / "hf" / "tokenizer.json"))
    toks, merges, pre = train_default.gguf_vocab(run["gguf"])
    assert pre == "gpt-2"
    for s in (LINE, "  two  spaces\n\n\nand 123 numbers, it's ok'll  \t", "caf\u00e9 \u00fcber \u4e2d\u6587 \U0001f600"):
        ids = train_default.gpt2_bpe_encode(toks, merges, s)
        if ids is None:
            pytest.skip("no regex module")
        assert ids == tok.encode(s).ids, s
        assert tok.decode(ids) == s


@need_torch
@need_corpus
@need_moed
def test_moed_reads_and_tokenizes_like_hf(run):
    from tokenizers import Tokenizer

    info = subprocess.run([str(MOED), "info", str(run["gguf"])], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "qwen3moe" in info.stdout
    tok = Tokenizer.from_file(str(run["out"] / "hf" / "tokenizer.json"))
    _, held, _ = train_default.split_corpus(run["corpus"])
    for text in (LINE, held[:3000]):
        assert train_default.moed_tokenize(MOED, run["gguf"], text) == tok.encode(text).ids
