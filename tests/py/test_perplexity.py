"""`moed perplexity`: the default model's held-out figure, and the convention
checked against an independent float64 reference on a tiny model.

    python3 -m pytest -q -rs tests/py/test_perplexity.py

- test_default_model_heldout: when model/default/moed-shakespeare.gguf and
  heldout.json exist, `moed perplexity` on model/default/heldout.txt with
  heldout.json's window must give heldout.json's ppl within 1 % (the issue's
  bar: the exported GGUF and moed's forward pass agree on real weights); the
  same for llama.cpp's second-half convention (printed on stderr by the same run) against
  heldout.json["llamacpp"].  Skipped, with the reason, while the model is absent.
- test_convention_matches_reference: a tiny random qwen3moe with F16 matrices
  (the default model's types) and a byte-level vocabulary, made by
  moed-mkmodel; tests/py/moe_numpy_ref.py (float64, numpy) computes the same
  windows and scores; moed must agree to 1e-4 for both conventions.  This pins
  down the convention (no BOS, non-overlapping windows, tail dropped, first
  token of each window not scored) independently of the trained model.
- batch invariance, --chunks, and the errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOED = Path(os.environ.get("MOED_BIN", ROOT / "bin" / "moed"))
MKMODEL = Path(os.environ.get("MOED_MKMODEL", ROOT / "bin" / "moed-mkmodel"))
SHARED = Path(os.environ.get("MOED_SHARED", ROOT.parent / "shared"))
TEST_TMP = Path(os.environ.get("MOED_TEST_TMP", ROOT / "build" / "test-tmp"))
DEFAULT = ROOT / "model" / "default"
THREADS = os.environ.get("MOED_TEST_THREADS", "2")

# stderr: llama.cpp's second-half figure of the same run
HALF_LINE = re.compile(r"llama\.cpp's convention .* ppl = ([0-9.]+) \(nll ([0-9.]+) over (\d+) tokens\)")
PPL_LINE = re.compile(r"^ppl = ([0-9.]+) \(nll ([0-9.]+) over (\d+) tokens, (\d+)-token windows(, second half of each)?\)$",
                      re.M)


def need_moed():
    if not MOED.exists():
        pytest.skip(f"{MOED} is not built (make -j2 all)")


def perplexity(model: Path, text: Path, *args, timeout=600) -> dict:
    t0 = time.monotonic()
    r = subprocess.run([str(MOED), "perplexity", "-m", str(model), "-f", str(text), "--threads", THREADS,
                        *map(str, args)], capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    assert r.returncode == 0, f"moed perplexity failed ({r.returncode}):\n{r.stderr}"
    m = PPL_LINE.search(r.stdout)
    assert m, f"no ppl line in:\n{r.stdout}"
    res = {"ppl": float(m.group(1)), "nll": float(m.group(2)), "tokens": int(m.group(3)),
           "window": int(m.group(4)), "half": bool(m.group(5)), "stdout": r.stdout,
           "stderr": r.stderr, "wall": wall}
    h = HALF_LINE.search(r.stderr)
    if h:
        res["second_half"] = {"ppl": float(h.group(1)), "nll": float(h.group(2)), "tokens": int(h.group(3))}
    return res


# ===========================================================================
# the default model


def test_default_model_heldout():
    gguf = DEFAULT / "moed-shakespeare.gguf"
    hj = DEFAULT / "heldout.json"
    txt = DEFAULT / "heldout.txt"
    missing = [p.name for p in (gguf, hj, txt) if not p.exists()]
    if missing:
        pytest.skip(f"the default model is not there yet (model/default/ lacks {', '.join(missing)})")
    need_moed()
    ref = json.loads(hj.read_text())
    if ref.get("gguf_sha256"):
        sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
        assert sha == ref["gguf_sha256"], (
            f"heldout.json belongs to another GGUF (sha256 {ref['gguf_sha256'][:16]}..., "
            f"the file's is {sha[:16]}...)")
    W = int(ref["window"])
    got = perplexity(gguf, txt, "--ctx", W)
    print(f"\nheld-out ppl: moed {got['ppl']:.4f} (nll {got['nll']:.6f}, {got['tokens']} tokens, "
          f"{got['wall']:.1f} s), training script {ref['ppl']:.4f} (nll {ref['nll']:.6f}, "
          f"{ref['tokens_scored']} tokens); relative difference "
          f"{abs(got['ppl'] - ref['ppl']) / ref['ppl'] * 100:.3f} %")
    assert got["tokens"] == ref["tokens_scored"], "not the same tokens scored: tokenization or windows differ"
    assert abs(got["ppl"] - ref["ppl"]) / ref["ppl"] < 0.01

    # llama.cpp's convention: the same run prints it on stderr (what --first-half
    # would print on stdout; test_convention_matches_reference checks that they agree)
    lc = ref.get("llamacpp")
    if lc:
        half = got["second_half"]
        print(f"llama.cpp convention: moed {half['ppl']:.4f} over {half['tokens']} tokens, "
              f"training script {lc['ppl']:.4f} over {lc['tokens_scored']}")
        assert half["tokens"] == lc["tokens_scored"]
        assert abs(half["ppl"] - lc["ppl"]) / lc["ppl"] < 0.01


# ===========================================================================
# the convention, against a float64 reference


SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
    "All:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him, and we'll have corn at our own price.\n"
    "Is't a verdict?\n\nAll:\nNo more talking on't; let it be done: away, away!\n\n"
    "Second Citizen:\nOne word, good citizens.\n\nFirst Citizen:\nWe are accounted poor citizens, the "
    "patricians good.\nWhat authority surfeits on would relieve us: if they\nwould yield us but the "
    "superfluity, while it were\nwholesome, we might guess they relieved us humanely;\n"
)


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory):
    """A random qwen3moe, 2 layers, F16 matrices, byte-level vocabulary (257 tokens
    padded to 512), context 128; and a text of ~1000 bytes (one token per byte)."""
    if not MKMODEL.exists():
        pytest.skip(f"{MKMODEL} is not built (make -j2 all)")
    need_moed()
    d = TEST_TMP / "perplexity"
    d.mkdir(parents=True, exist_ok=True)
    model = d / "tiny-f16.gguf"
    if not model.exists() or model.stat().st_mtime < MKMODEL.stat().st_mtime:
        tmp = model.with_suffix(".tmp")
        r = subprocess.run([str(MKMODEL), "--preset", "tiny-qwen3moe", "--layers", "2", "--ctx", "128",
                            "--type-experts", "F16", "--type-attn", "F16", "--type-embd", "F16",
                            "--type-output", "F16", "--seed", "3", "-o", str(tmp)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        tmp.replace(model)
    text = d / "sample.txt"
    text.write_text(SAMPLE * 2)
    return model, text


def tokenize(model: Path, text: Path) -> list[int]:
    r = subprocess.run([str(MOED), "tokenize", "-m", str(model)], input=text.read_bytes(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return [int(x) for x in r.stdout.split()]


def reference_nll(model: Path, ids: list[int], W: int) -> tuple[float, int, float, int]:
    """(nll, n) of the 'all but first' convention and of llama.cpp's second half,
    float64, computed window by window with the numpy reference forward."""
    np = pytest.importorskip("numpy")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from moe_numpy_ref import RefModel

    m = RefModel(model)
    tot = toth = 0.0
    n = nh = 0
    for k in range(len(ids) // W):
        x = ids[k * W:(k + 1) * W]
        lg = m.forward(x)
        lg = lg - lg.max(axis=-1, keepdims=True)
        lp = lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))
        nll = -lp[np.arange(W - 1), x[1:]]  # logits at 0..W-2 predict 1..W-1
        tot += float(nll.sum())
        n += W - 1
        toth += float(nll[W // 2:].sum())  # predicts W/2+1 .. W-1
        nh += W - 1 - W // 2
    return tot / n, n, toth / nh, nh


def test_convention_matches_reference(tiny_f16):
    model, text = tiny_f16
    ids = tokenize(model, text)
    W = 64
    assert len(ids) % W, "the sample should leave a tail to drop"
    nll, n, nllh, nh = reference_nll(model, ids, W)
    got = perplexity(model, text, "--ctx", W)
    assert got["tokens"] == n == (len(ids) // W) * (W - 1)
    assert got["window"] == W and not got["half"]
    print(f"\ntiny F16 model, {len(ids)} tokens, W={W}: moed nll {got['nll']:.6f}, reference {nll:.6f}")
    assert got["nll"] == pytest.approx(nll, rel=1e-4)
    assert got["ppl"] == pytest.approx(math.exp(nll), rel=1e-4)
    goth = perplexity(model, text, "--ctx", W, "--first-half")
    assert goth["half"] and goth["tokens"] == nh == (len(ids) // W) * (W - 1 - W // 2)
    assert goth["nll"] == pytest.approx(nllh, rel=1e-4)
    # the default run's stderr line gives the same figure
    assert got["second_half"]["tokens"] == nh
    assert f"{got['second_half']['nll']:.6f}" == f"{goth['nll']:.6f}"
    assert "second_half" not in goth


def test_batching_does_not_change_the_figure(tiny_f16):
    model, text = tiny_f16
    W = 48
    base = perplexity(model, text, "--ctx", W)
    # a step shorter than a window, steps straddling windows, one thread
    for args in (("--batch", 7), ("--batch", 100), ("--batch", 1000, "--threads", 1)):
        other = perplexity(model, text, "--ctx", W, *args)
        assert other["stdout"] == base["stdout"], args


def test_default_window_and_chunks(tiny_f16):
    model, text = tiny_f16
    ids = tokenize(model, text)
    # default window: 512, or the model's context (128) when smaller
    got = perplexity(model, text)
    assert got["window"] == 128 and got["tokens"] == (len(ids) // 128) * 127
    one = perplexity(model, text, "--ctx", 64, "--chunks", 1)
    assert one["tokens"] == 63
    assert "no BOS" in one["stderr"]


def test_errors(tiny_f16, tmp_path):
    model, text = tiny_f16
    short = tmp_path / "short.txt"
    short.write_text("To be")
    r = subprocess.run([str(MOED), "perplexity", "-m", str(model), "-f", str(short), "--ctx", "64"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "fewer than one window of 64" in r.stderr
    r = subprocess.run([str(MOED), "perplexity", "-m", str(model), "-f", str(tmp_path / "none.txt")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "none.txt" in r.stderr
    for bad in (["-f", str(text)], ["-m", str(model)], ["-m", str(model), "-f", str(text), "--ctx", "1"],
                ["-m", str(model), "-f", str(text), "--bogus"]):
        r = subprocess.run([str(MOED), "perplexity", *bad], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (bad, r.stderr)
    r = subprocess.run([str(MOED), "perplexity", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "no BOS" in r.stdout
