"""Tests of tools/trace_summary.py (routing-trace summaries) and of the traces
`moed run --routing-trace` writes.

    python3 -m pytest -q tests/py/test_trace_summary.py

The synthetic traces are small enough to work out by hand; each expected
number is derived in a comment next to it.  The end-to-end test needs bin/moed
and the tiny model of conftest.py (skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import trace_summary as ts  # noqa: E402

MOED = ROOT / "bin" / "moed"


def one_seq_records(layers: list[list[tuple]], seq: int = 0, step0: int = 0):
    """Records of one sequence decoded one token per step: layers[l][i] is the
    expert tuple of token i at layer l (weights: uniform)."""
    recs = []
    n = len(layers[0])
    for i in range(n):
        for l, toks in enumerate(layers):
            ex = toks[i]
            recs.append((step0 + i, 0, seq, i, 100 + i, l, ex, [1.0 / len(ex)] * len(ex)))
    return recs


def summarize(tmp_path, name, n_layer, E, k, recs, cache_sizes, seg_lens, **kw):
    p = tmp_path / name
    ts.write_trace(p, n_layer, E, k, recs)
    t = ts.read_trace(p)
    return ts.summarize(t, cache_sizes, seg_lens, **kw)


# ===========================================================================
# format


def test_read_write_roundtrip(tmp_path):
    recs = [(0, 0, 0, 0, 7, 0, (3, 1), [0.75, 0.25]), (0, 0, 0, 0, 7, 1, (0, 2), [0.5, 0.5]),
            (1, 0, 0, 1, 9, 0, (1, 3), [0.6, 0.4]), (1, 0, 0, 1, 9, 1, (2, 0), [0.9, 0.1])]
    p = tmp_path / "t.trace"
    ts.write_trace(p, 2, 4, 2, recs, meta={"format": "moed routing trace", "model": "m.gguf"})
    data = p.read_bytes()
    assert data[:8] == b"MOEDTRC1"
    hsize = int.from_bytes(data[12:16], "little")
    assert hsize % 8 == 0 and len(data) == hsize + 4 * (24 + 16)
    t = ts.read_trace(p)
    assert (t.n_layer, t.n_expert, t.n_used, len(t)) == (2, 4, 2, 4)
    assert t.meta["model"] == "m.gguf"
    assert t.step == [0, 0, 1, 1] and t.layer == [0, 1, 0, 1] and t.token == [7, 7, 9, 9]
    assert t.experts[2] == (1, 3)
    assert t.weights[0] == (0.75, 0.25)
    # a partial last record (a killed writer) is dropped, with a note
    p.write_bytes(data + data[hsize:hsize + 10])
    t = ts.read_trace(p)
    assert len(t) == 4 and t.truncated_bytes == 10
    # not a trace
    p.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="not a moed routing trace"):
        ts.read_trace(p)
    # an expert out of range
    ts.write_trace(p, 1, 4, 1, [(0, 0, 0, 0, 0, 0, (4,), [1.0])])
    with pytest.raises(ValueError, match="expert 4 of 4"):
        ts.read_trace(p)


# ===========================================================================
# hand-computed figures


def test_top1_sequence(tmp_path):
    # one layer, 4 experts, top-1: 0 0 1 1 0 0 2 2
    seq = [(e,) for e in (0, 0, 1, 1, 0, 0, 2, 2)]
    s = summarize(tmp_path, "a.trace", 1, 4, 1, one_seq_records([seq]), [1, 2], [1, 2, 4],
                  use_numpy=False)
    assert s["tokens"] == 8 and s["steps"] == 8 and s["sequences"] == 1
    lay = s["layers"][0]
    pop = lay["popularity"]
    # counts 4, 2, 2, 0: shares 1/2, 1/4, 1/4: H = 1.5 bits, / log2(4) = 0.75
    assert pop["counts"] == [4, 2, 2, 0]
    assert pop["entropy_bits"] == pytest.approx(1.5)
    assert pop["entropy_norm"] == pytest.approx(0.75)
    assert pop["max_over_uniform"] == pytest.approx(2.0)
    assert pop["unused"] == 1
    assert [e for e, _, _ in pop["top"][:3]] == [0, 1, 2]

    seg = lay["segments"]
    # L = 1: every token is its own segment: F1 1 and full coverage
    assert seg[1]["srp"] == pytest.approx(1.0) and seg[1]["sch"][1] == pytest.approx(1.0)
    # L = 2: 7 segments 00 01 11 10 00 02 22; acts = 7 * 2 * 1 = 14.
    #   j = 2: the 4 uniform segments keep their expert: matches 8, preds 2 * 4 = 8,
    #          F1 = 16 / 22;
    #   j = 1: every selected expert: matches 14, preds 2 * (4 + 3 * 2) = 20,
    #          F1 = 28 / 34 = 14 / 17 (the best; j = 0: 28 / 70)
    assert seg[2]["segments"] == 7
    assert seg[2]["srp"] == pytest.approx(14 / 17)
    assert seg[2]["srp_threshold"] == 1
    assert seg[2]["srp_set_over_k"] == pytest.approx(20 / 14)
    #   SCH(2, 1): the best expert of each segment covers 2 1 2 1 2 1 2 = 11 of 14
    assert seg[2]["sch"][1] == pytest.approx(11 / 14)
    assert seg[2]["sch"][2] == pytest.approx(1.0)
    # L = 4: 5 segments 0011 0110 1100 1002 0022; counts over the 4 experts:
    #   hist c=0: 9 pairs, c=1: 2, c=2: 9; acts = 5 * 4 = 20
    #   j = 2: matches 18, preds 4 * 9 = 36, F1 = 36 / 56 = 9 / 14 (the best)
    #   j = 1: matches 20, preds 4 * 11 = 44, F1 = 40 / 64
    assert seg[4]["srp"] == pytest.approx(9 / 14)
    assert seg[4]["srp_threshold"] == 2
    #   SCH(4, 1) = (2 + 2 + 2 + 2 + 2) / 20; SCH(4, 2) = (4 + 4 + 4 + 3 + 4) / 20
    assert seg[4]["sch"][1] == pytest.approx(0.5)
    assert seg[4]["sch"][2] == pytest.approx(19 / 20)

    c = lay["cache"]
    # C = 1: a hit exactly when the expert repeats: 4 of 8, whatever the policy
    assert c[1] == {"lru": 0.5, "lfu": 0.5, "belady": 0.5}
    # C = 2: misses at 0, 1 and 2's first use only: 5 of 8
    assert c[2] == {"lru": 5 / 8, "lfu": 5 / 8, "belady": 5 / 8}
    assert s["mean"]["srp"][2] == pytest.approx(14 / 17)


def test_policies_differ(tmp_path):
    # two layers of 9 tokens, 3 experts used of 4, top-1, a cache of 2
    cyc = [(e,) for e in (0, 1, 2, 0, 1, 2, 0, 1, 2)]
    hot = [(e,) for e in (0, 0, 0, 1, 2, 0, 1, 2, 0)]
    s = summarize(tmp_path, "b.trace", 2, 4, 1, one_seq_records([cyc, hot]), [2], [3])
    c0, c1 = s["layers"][0]["cache"][2], s["layers"][1]["cache"][2]
    # cyclic 0 1 2 with room for 2: LRU and LFU always evict the next one
    # needed (0 hits); Belady keeps the sooner one: hits at steps 3, 5, 7
    assert c0["lru"] == 0 and c0["lfu"] == 0
    assert c0["belady"] == pytest.approx(3 / 9)
    # 0 0 0 1 2 0 1 2 0: LRU hits only the two repeats of 0 at steps 1, 2;
    # LFU keeps 0 (most used): hits at 1, 2, 5, 8; Belady: at 1, 2, 5, 7
    assert c1["lru"] == pytest.approx(2 / 9)
    assert c1["lfu"] == pytest.approx(4 / 9)
    assert c1["belady"] == pytest.approx(4 / 9)
    assert s["mean"]["cache"][2]["belady"] == pytest.approx((3 / 9 + 4 / 9) / 2)
    # popularity of layer 1: 5, 2, 2, 0 of 9
    assert s["layers"][1]["popularity"]["counts"] == [5, 2, 2, 0]
    # L = 3 on the cyclic layer: every segment holds 0, 1, 2 once: SCH(3, 2) = 2/3,
    # SRP: j = 1 predicts the 3 experts for 3 tokens: matches 3, preds 9,
    # acts 3 per segment: F1 = 6 / 12 = 0.5 (j = 0: 6 / 15)
    seg = s["layers"][0]["segments"][3]
    assert seg["segments"] == 7
    assert seg["sch"][2] == pytest.approx(2 / 3)
    assert seg["srp"] == pytest.approx(0.5)


def test_pinned_experts_and_bypass(tmp_path):
    # top-2 of 3 experts; steps request {0,1}, {1,2}, {0,1}
    seq = [(0, 1), (1, 2), (1, 0)]
    s = summarize(tmp_path, "c.trace", 1, 3, 2, one_seq_records([seq]), [1, 2], [1])
    c = s["layers"][0]["cache"]
    # C = 1: step 0 loads 0, then 1 finds the only slot pinned and bypasses;
    # step 1 evicts 0 for 1, 2 bypasses; step 2 hits 1, 0 bypasses: 1 of 6
    assert c[1] == {"lru": 1 / 6, "lfu": 1 / 6, "belady": 1 / 6}
    # C = 2: step 1 hits 1 and evicts 0 for 2; step 2 hits 1, evicts 2: 2 of 6
    assert c[2] == {"lru": 2 / 6, "lfu": 2 / 6, "belady": 2 / 6}
    # segments of 1 token: its 2 experts cover it fully with C = 2, half with C = 1
    seg = s["layers"][0]["segments"][1]
    assert seg["sch"][2] == pytest.approx(1.0) and seg["sch"][1] == pytest.approx(0.5)


def test_batches_sequences_and_decode_only(tmp_path):
    # step 0: prefill of sequence 0 (3 tokens, experts 0 0 1) and sequence 1
    # (2 tokens, experts 2 3); steps 1-2: one decode token each of both
    recs = []
    batch0 = [(0, 0, (0,)), (0, 1, (0,)), (0, 2, (1,)), (1, 0, (2,)), (1, 1, (3,))]
    for i, (sq, ps, ex) in enumerate(batch0):
        recs.append((0, i, sq, ps, 5, 0, ex, [1.0]))
    for st, (a, b) in enumerate([((1,), (3,)), ((1,), (2,))], start=1):
        recs.append((st, 0, 0, 2 + st, 5, 0, a, [1.0]))
        recs.append((st, 1, 1, 1 + st, 5, 0, b, [1.0]))
    s = summarize(tmp_path, "d.trace", 1, 4, 1, recs, [2], [2])
    assert s["tokens"] == 9 and s["steps"] == 3 and s["sequences"] == 2
    # segments of 2 within each sequence (never across): seq 0 = 0 0 1 1 1,
    # seq 1 = 2 3 3 2: 4 + 3 = 7 segments; best-1 coverage: 2 1 2 2 | 1 2 1 = 11 of 14
    seg = s["layers"][0]["segments"][2]
    assert seg["segments"] == 7
    # steps request {0,1,2,3}, {1,3}, {1,2} with C = 2: step 0 loads 0 and 1 and
    # bypasses 2, 3 (all slots pinned); step 1 hits 1, evicts 0 for 3; step 2
    # hits 1, evicts 3 for 2: 2 hits of 8 (LRU; the others agree here)
    assert s["layers"][0]["cache"][2]["lru"] == pytest.approx(2 / 8)
    # decode only: the prefill step goes; 4 tokens, 2 steps
    d = summarize(tmp_path, "d.trace", 1, 4, 1, recs, [2], [2], decode_only=True)
    assert d["tokens"] == 4 and d["steps"] == 2
    # steps {1,3}, {1,2}: hit 1 in the second: 1 of 4
    assert d["layers"][0]["cache"][2]["lru"] == pytest.approx(1 / 4)


def test_reused_sequence_id_starts_a_new_sequence(tmp_path):
    # one id, positions 0 1 2 then 0 1 2 again (a server slot reused): two
    # sequences of 3, so 2 + 2 segments of 2 tokens, not 5
    ex = [(0,), (0,), (1,), (2,), (2,), (3,)]
    recs = [(i, 0, 4, i % 3, 5, 0, e, [1.0]) for i, e in enumerate(ex)]
    s = summarize(tmp_path, "e.trace", 1, 4, 1, recs, [1], [2])
    assert s["sequences"] == 2
    seg = s["layers"][0]["segments"][2]
    assert seg["segments"] == 4
    # best expert of 00 01 | 22 23: 2 1 2 1 of 8
    assert seg["sch"][1] == pytest.approx(6 / 8)


def test_numpy_and_python_agree(tmp_path):
    pytest.importorskip("numpy")
    rng = random.Random(7)
    E, k, L = 16, 4, 2
    layers = []
    for _ in range(L):
        toks = []
        cur = rng.sample(range(E), k)
        for _ in range(120):
            if rng.random() < 0.3:  # some locality
                cur = rng.sample(range(E), k)
            toks.append(tuple(cur))
        layers.append(toks)
    p = tmp_path / "r.trace"
    ts.write_trace(p, L, E, k, one_seq_records(layers))
    t = ts.read_trace(p)
    a = ts.summarize(t, [4, 8], [1, 4, 16, 64], use_numpy=True)
    b = ts.summarize(t, [4, 8], [1, 4, 16, 64], use_numpy=False)
    for la, lb in zip(a["layers"], b["layers"]):
        for Lx in (1, 4, 16, 64):
            assert la["segments"][Lx]["srp"] == pytest.approx(lb["segments"][Lx]["srp"])
            assert la["segments"][Lx]["sch"] == pytest.approx(lb["segments"][Lx]["sch"])
    # LRU <= Belady always; a random-ish trace still beats C/E with locality
    for la in a["layers"]:
        for C in (4, 8):
            assert la["cache"][C]["lru"] <= la["cache"][C]["belady"] + 1e-12
            assert la["cache"][C]["lfu"] <= la["cache"][C]["belady"] + 1e-12


def test_cli_text_and_json(tmp_path):
    seq = [(e,) for e in (0, 0, 1, 1, 0, 0, 2, 2)]
    p = tmp_path / "a.trace"
    ts.write_trace(p, 1, 4, 1, one_seq_records([seq]))
    tool = ROOT / "tools" / "trace_summary.py"
    r = subprocess.run([sys.executable, str(tool), str(p), "--cache-sizes", "1,2",
                        "--segment-lengths", "2,4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Segment routing best performance" in r.stdout
    assert "82.4" in r.stdout  # SRP(2) = 14/17
    r = subprocess.run([sys.executable, str(tool), str(p), "--segment-lengths", "2", "--json", "-"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["cache_sizes"] == [1, 2, 4]  # default: k, 2k, 4k
    assert j["layers"][0]["segments"]["2"]["srp"] == pytest.approx(14 / 17)
    r = subprocess.run([sys.executable, str(tool), str(tmp_path / "missing")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "trace_summary:" in r.stderr


# ===========================================================================
# end to end: moed run --routing-trace


def test_moed_run_trace(tmp_path, moed_bin, tiny_model):
    out = tmp_path / "run.trace"
    n = 12
    r = subprocess.run([str(moed_bin), "run", "-m", str(tiny_model), "-p", "Hello world, said",
                        "-n", str(n), "--temp", "0", "--threads", "1", "--routing-trace", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    prompt = [int(x) for x in subprocess.run(
        [str(moed_bin), "tokenize", "-m", str(tiny_model)], input=b"Hello world, said",
        capture_output=True, timeout=30).stdout.split()]
    t = ts.read_trace(out)
    assert t.truncated_bytes == 0
    assert t.meta["format"] == "moed routing trace" and t.meta["arch"] == "qwen3moe"
    assert t.meta["argv"][0] == "run" and "--routing-trace" in t.meta["argv"]
    L, k = t.n_layer, t.n_used
    # one prefill step of the prompt, then n - 1 decode steps (the last token
    # is sampled but never fed back)
    n_tok = len(prompt) + n - 1
    assert len(t) == L * n_tok
    assert f"{L * n_tok} records" in r.stderr
    steps = sorted(set(t.step))
    assert steps == list(range(n))
    first = [i for i in range(len(t)) if t.step[i] == 0 and t.layer[i] == 0]
    assert [t.token[i] for i in first] == prompt
    assert [t.pos[i] for i in first] == list(range(len(prompt)))
    for i in range(len(t)):
        assert t.seq[i] == 0
        if t.step[i] > 0:
            assert t.index[i] == 0 and t.pos[i] == len(prompt) + t.step[i] - 1
        assert len(set(t.experts[i])) == k
        assert sum(t.weights[i]) == pytest.approx(1.0, abs=1e-5)  # qwen3moe renormalises
        assert list(t.weights[i]) == sorted(t.weights[i], reverse=True)
    # the same run without the trace writes the same text (greedy)
    r2 = subprocess.run([str(moed_bin), "run", "-m", str(tiny_model), "-p", "Hello world, said",
                         "-n", str(n), "--temp", "0", "--threads", "1"],
                        capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0 and r2.stdout == r.stdout
    s = ts.summarize(t, [4, 8], [1, 4])
    assert s["tokens"] == n_tok and s["layers"][0]["popularity"]["selections"] == n_tok * k
    # an unwritable trace path: a one-line error, exit 1, before any work
    r3 = subprocess.run([str(moed_bin), "run", "-m", str(tiny_model), "-p", "x", "-n", "2",
                         "--routing-trace", str(tmp_path / "no" / "such" / "dir")],
                        capture_output=True, text=True, timeout=60)
    assert r3.returncode == 1 and "--routing-trace" in r3.stderr
