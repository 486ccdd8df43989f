#!/usr/bin/env python3
"""Summarise a moed routing trace (`moed run ... --routing-trace FILE`).

    python3 tools/trace_summary.py TRACE [--cache-sizes 2,4,8] [--segment-lengths 1,4,16,64]
                                         [--decode-only] [--top 4] [--json OUT]

Standard library only; numpy, when present, speeds up the segment metrics of
long traces (the results are the same).  The file format is documented in
model/trace.h (header "MOEDTRC1", then one fixed-size record per token and layer).

What it prints, per layer and averaged over layers (k = experts per token,
E = experts per layer):

Popularity: how many of the layer's (token, expert) selections each expert got,
its share, the entropy of that distribution in bits and as a fraction of
log2(E) (1 = perfectly balanced), the most-used experts, and max share / (1/E).

Local routing consistency, after Liang et al., "Not All Models Suit Expert
Offloading: On Local Routing Consistency of Mixture-of-Expert Models" (2025,
arXiv 2505.16056; code github.com/ljcleo/moe-lrc).  Segments are every run of
L consecutive tokens of one sequence (sliding, one segment per start
position, as the paper's code does; segments never cross sequences); c_e(S)
is how many tokens of segment S chose expert e.

  SRP(L), segment routing best performance: serve each segment with one fixed
    set of experts, those with c_e(S) >= j, and score that set against the
    real routing as a retrieval of the (token, expert) selections:
      matches(j) = sum_S sum_{e: c_e(S) >= j} c_e(S)
      preds(j)   = sum_S L * |{e: c_e(S) >= j}|
      acts       = sum_S L * k
      F1(j)      = 2 matches(j) / (preds(j) + acts)
    SRP = max over j = 0..L of F1(j) (one threshold for the whole layer; the
    paper's code src/30_srp_calc.py + 31_srp_refine.py).  Also shown: the best j
    and the fixed set's mean size relative to k (preds / acts at that j).
  SCH(L, C), segment cache best hit rate: an oracle that knows each segment
    in advance and holds the best C experts for all of it:
      SCH = mean over segments of (sum of the C largest c_e(S)) / (L * k)
    (the paper's first definition, src/40_sch_calc.py; its later version
    replaces the per-segment oracle by a cache with L tokens of lookahead).
    SCH(L, k) answers "what share of a segment's selections do the best k
    experts of that segment cover".

Cache replacement, simulated per layer with a cache of C experts of that layer,
over the steps in trace order (one step = one fwd_step; the request of a step
at a layer is the set R of distinct experts its tokens chose; a batch-1 decode
step requests exactly k experts).  The experts of R are pinned while the layer
runs: hits = |R & cache|; each miss is loaded, evicting an unpinned victim,
or bypasses the cache when all C slots hold pinned experts (C < |R|).  The
cache starts empty.  Hit rate = hits / sum |R|.
  LRU:    evict the expert used longest ago;
  LFU:    evict the expert with the fewest requests so far (counted over the
          whole trace, cached or not; ties: least recently used);
  Belady: evict the expert whose next request is farthest in the future
          (never again = infinitely far), the optimal demand-paging bound;
  random routing would hit C / E.
Ties left after these rules go to the lower expert id (deterministic).

--decode-only keeps only the tokens that are alone in their sequence in their
step (drops prompt prefill).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:  # optional
    import numpy as np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    np = None

MAGIC = b"MOEDTRC1"
FIXED_HEADER = 40
RECORD_FIXED = 24


# ===========================================================================
# reading


@dataclass
class Trace:
    n_layer: int
    n_expert: int
    n_used: int
    meta: dict
    # one entry per record, in file order
    step: list = field(default_factory=list)
    index: list = field(default_factory=list)
    seq: list = field(default_factory=list)
    pos: list = field(default_factory=list)
    token: list = field(default_factory=list)
    layer: list = field(default_factory=list)
    experts: list = field(default_factory=list)  # tuples of n_used ints
    weights: list = field(default_factory=list)  # tuples of n_used floats
    truncated_bytes: int = 0

    def __len__(self) -> int:
        return len(self.step)


def read_trace(path) -> Trace:
    data = Path(path).read_bytes()
    if len(data) < FIXED_HEADER or data[:8] != MAGIC:
        raise ValueError(f"{path}: not a moed routing trace (no {MAGIC.decode()} header)")
    version, hsize, n_layer, n_expert, n_used, rsize, mlen, _ = struct.unpack_from("<IIiiiIII", data, 8)
    if version != 1:
        raise ValueError(f"{path}: trace version {version}, this tool reads 1")
    if n_layer < 1 or n_expert < 1 or not 1 <= n_used <= n_expert:
        raise ValueError(f"{path}: bad sizes {n_layer} layers, {n_expert} experts, top-{n_used}")
    if rsize != RECORD_FIXED + 8 * n_used or hsize < FIXED_HEADER + mlen or hsize > len(data):
        raise ValueError(f"{path}: inconsistent header (record {rsize}, header {hsize}, meta {mlen})")
    meta_text = data[FIXED_HEADER:FIXED_HEADER + mlen].decode("utf-8", errors="replace")
    try:
        meta = json.loads(meta_text) if meta_text else {}
    except json.JSONDecodeError:
        meta = {"raw": meta_text}
    body = memoryview(data)[hsize:]
    n = len(body) // rsize
    t = Trace(n_layer, n_expert, n_used, meta, truncated_bytes=len(body) - n * rsize)
    words = rsize // 4
    ints = body[: n * rsize].cast("i")
    flts = body[: n * rsize].cast("f")
    if sys.byteorder != "little":  # pragma: no cover
        from array import array

        ai, af = array("i", ints), array("f", flts)
        ai.byteswap()
        af.byteswap()
        ints, flts = ai, af
    k = n_used
    for r in range(n):
        b = r * words
        t.step.append(ints[b])
        t.index.append(ints[b + 1])
        t.seq.append(ints[b + 2])
        t.pos.append(ints[b + 3])
        t.token.append(ints[b + 4])
        L = ints[b + 5]
        if not 0 <= L < n_layer:
            raise ValueError(f"{path}: record {r}: layer {L} of {n_layer}")
        t.layer.append(L)
        ex = tuple(ints[b + 6: b + 6 + k])
        for e in ex:
            if not 0 <= e < n_expert:
                raise ValueError(f"{path}: record {r}: expert {e} of {n_expert}")
        t.experts.append(ex)
        t.weights.append(tuple(flts[b + 6 + k: b + 6 + 2 * k]))
    return t


def write_trace(path, n_layer: int, n_expert: int, n_used: int, records, meta: dict | None = None) -> None:
    """Write a trace in moed's format (for tests and synthetic studies).
    records: iterable of (step, index, seq, pos, token, layer, experts, weights)."""
    mt = json.dumps(meta if meta is not None else {"format": "moed routing trace", "version": 1}).encode()
    hsize = (FIXED_HEADER + len(mt) + 7) & ~7
    rsize = RECORD_FIXED + 8 * n_used
    out = bytearray(struct.pack("<8sIIiiiIII", MAGIC, 1, hsize, n_layer, n_expert, n_used, rsize, len(mt), 0))
    out += mt + bytes(hsize - FIXED_HEADER - len(mt))
    for step, index, seq, pos, token, layer, ex, w in records:
        assert len(ex) == n_used and len(w) == n_used
        out += struct.pack(f"<6i{n_used}i{n_used}f", step, index, seq, pos, token, layer, *ex, *w)
    Path(path).write_bytes(bytes(out))


# ===========================================================================
# organising: per layer, per sequence, per step


def keep_mask(t: Trace, decode_only: bool) -> list:
    """Which records to use: all, or only tokens alone in their (step, seq)."""
    if not decode_only:
        return [True] * len(t)
    per = {}
    for r in range(len(t)):
        if t.layer[r] == t.layer[0]:
            key = (t.step[r], t.seq[r])
            per[key] = per.get(key, 0) + 1
    return [per.get((t.step[r], t.seq[r]), 0) == 1 and t.seq[r] >= 0 for r in range(len(t))]


def layer_sequences(t: Trace, keep) -> list:
    """[layer] -> list of sequences, each the list of expert tuples of its
    tokens in order (step, then batch index).  Records with seq -1 form one
    sequence; a sequence id whose position goes back (a reused slot, a
    rewritten cache) starts a new sequence there."""
    out = [dict() for _ in range(t.n_layer)]
    for r in range(len(t)):
        if keep[r]:
            out[t.layer[r]].setdefault(t.seq[r], []).append(((t.step[r], t.index[r]), t.pos[r], t.experts[r]))
    res = []
    for d in out:
        seqs = []
        for s in sorted(d):
            cur, last = [], None
            for _, pos, ex in sorted(d[s], key=lambda x: x[0]):
                if cur and pos >= 0 and last is not None and pos <= last:
                    seqs.append(cur)
                    cur = []
                cur.append(ex)
                last = pos
            if cur:
                seqs.append(cur)
        res.append(seqs)
    return res


def layer_steps(t: Trace, keep) -> list:
    """[layer] -> list of request sets (frozensets of experts), one per step
    with at least one kept token, in step order."""
    out = [dict() for _ in range(t.n_layer)]
    for r in range(len(t)):
        if keep[r]:
            out[t.layer[r]].setdefault(t.step[r], set()).update(t.experts[r])
    return [[frozenset(d[s]) for s in sorted(d)] for d in out]


# ===========================================================================
# popularity


def popularity(seqs: list, n_expert: int, top: int = 4) -> dict:
    counts = [0] * n_expert
    for s in seqs:
        for ex in s:
            for e in ex:
                counts[e] += 1
    total = sum(counts)
    if total == 0:
        return {"selections": 0}
    p = [c / total for c in counts]
    h = -sum(x * math.log2(x) for x in p if x > 0)
    order = sorted(range(n_expert), key=lambda e: (-counts[e], e))
    return {
        "selections": total,
        "counts": counts,
        "entropy_bits": h,
        "entropy_norm": h / math.log2(n_expert) if n_expert > 1 else 1.0,
        "top": [[e, counts[e], p[e]] for e in order[:top]],
        "max_over_uniform": max(p) * n_expert,
        "unused": sum(1 for c in counts if c == 0),
    }


# ===========================================================================
# segment metrics (Liang et al.)


def _segment_counts_py(seq: list, n_expert: int, L: int):
    """Yield the count vector c(S) of every segment of L consecutive tokens."""
    c = [0] * n_expert
    for i, ex in enumerate(seq):
        for e in ex:
            c[e] += 1
        if i >= L:
            for e in seq[i - L]:
                c[e] -= 1
        if i >= L - 1:
            yield c


def segment_stats(seqs: list, n_expert: int, k: int, L: int, cache_sizes: list, use_numpy: bool = True) -> dict | None:
    """SRP and SCH of one layer's sequences for segment length L; None when no
    sequence has L tokens."""
    # hist[c] = number of (segment, expert) pairs with count c; sch_sum[C] = sum
    # over segments of the C largest counts
    hist = [0] * (L + 1)
    sch_sum = {C: 0 for C in cache_sizes}
    n_seg = 0
    for s in seqs:
        if len(s) < L:
            continue
        if use_numpy and np is not None:
            m = np.zeros((len(s) + 1, n_expert), dtype=np.int64)
            for i, ex in enumerate(s):
                m[i + 1, list(ex)] += 1
            cum = np.cumsum(m, axis=0)
            cnt = cum[L:] - cum[:-L]  # [segments, E]
            n_seg += cnt.shape[0]
            hist_np = np.bincount(cnt.ravel(), minlength=L + 1)
            for c in range(L + 1):
                hist[c] += int(hist_np[c])
            srt = -np.sort(-cnt, axis=1)
            csum = np.cumsum(srt, axis=1)
            for C in cache_sizes:
                sch_sum[C] += int(csum[:, min(C, n_expert) - 1].sum()) if C > 0 else 0
        else:
            for c in _segment_counts_py(s, n_expert, L):
                n_seg += 1
                for x in c:
                    hist[x] += 1
                srt = sorted(c, reverse=True)
                for C in cache_sizes:
                    sch_sum[C] += sum(srt[:C])
    if n_seg == 0:
        return None
    acts = n_seg * L * k
    best = None
    for j in range(L + 1):
        matches = sum(c * hist[c] for c in range(j, L + 1))
        preds = L * sum(hist[c] for c in range(j, L + 1))
        f1 = 2 * matches / (preds + acts) if preds + acts else 0.0
        if best is None or f1 > best[0] + 1e-15:
            best = (f1, j, preds / acts)
    return {
        "segments": n_seg,
        "srp": best[0],
        "srp_threshold": best[1],
        "srp_set_over_k": best[2],
        "sch": {C: sch_sum[C] / acts for C in cache_sizes},
    }


# ===========================================================================
# cache policies


def simulate(requests: list, C: int, policy: str) -> tuple[int, int]:
    """(hits, accesses) of a cache of C experts over a list of request sets."""
    if C <= 0:
        return 0, sum(len(r) for r in requests)
    next_use = []
    if policy == "belady":
        nxt: dict = {}
        for i in range(len(requests) - 1, -1, -1):
            next_use.append({e: nxt.get(e, math.inf) for e in requests[i]})
            for e in requests[i]:
                nxt[e] = i
        next_use.reverse()
        # next_use[i][e]: the next step after i that requests e
    cache: set = set()
    last: dict = {}
    freq: dict = {}
    nx: dict = {}  # belady: next request of each cached expert
    hits = acc = 0
    for i, R in enumerate(requests):
        acc += len(R)
        for e in R:
            freq[e] = freq.get(e, 0) + 1
        hit = R & cache
        hits += len(hit)
        for e in sorted(R - cache):
            if len(cache) >= C:
                cand = [x for x in cache if x not in R]
                if not cand:
                    continue  # every slot pinned: the miss bypasses the cache
                if policy == "lru":
                    v = min(cand, key=lambda x: (last[x], x))
                elif policy == "lfu":
                    v = min(cand, key=lambda x: (freq[x], last[x], x))
                elif policy == "belady":
                    v = min(cand, key=lambda x: (-nx[x], x))
                else:
                    raise ValueError(policy)
                cache.discard(v)
            cache.add(e)
        for e in R:
            last[e] = i
            if policy == "belady":
                nx[e] = next_use[i][e]
    return hits, acc


POLICIES = ("lru", "lfu", "belady")


# ===========================================================================
# the summary


def summarize(t: Trace, cache_sizes: list, seg_lens: list, decode_only: bool = False, top: int = 4,
              use_numpy: bool = True) -> dict:
    keep = keep_mask(t, decode_only)
    seqs = layer_sequences(t, keep)
    steps = layer_steps(t, keep)
    k, E = t.n_used, t.n_expert
    n_tok = sum(len(s) for s in seqs[0]) if seqs else 0
    layers = []
    for l in range(t.n_layer):
        pop = popularity(seqs[l], E, top)
        seg = {L: segment_stats(seqs[l], E, k, L, cache_sizes, use_numpy) for L in seg_lens}
        cache = {}
        for C in cache_sizes:
            cache[C] = {}
            for p in POLICIES:
                h, a = simulate(steps[l], C, p)
                cache[C][p] = h / a if a else None
        layers.append({"layer": l, "popularity": pop, "segments": seg, "cache": cache})

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    avg = {
        "entropy_norm": mean([x["popularity"].get("entropy_norm") for x in layers]),
        "srp": {L: mean([x["segments"][L]["srp"] if x["segments"][L] else None for x in layers]) for L in seg_lens},
        "sch": {L: {C: mean([x["segments"][L]["sch"][C] if x["segments"][L] else None for x in layers])
                    for C in cache_sizes} for L in seg_lens},
        "cache": {C: {p: mean([x["cache"][C][p] for x in layers]) for p in POLICIES} for C in cache_sizes},
    }
    return {
        "n_layer": t.n_layer, "n_expert": E, "n_used": k, "meta": t.meta,
        "records": len(t), "truncated_bytes": t.truncated_bytes,
        "tokens": n_tok, "steps": len(steps[0]) if steps else 0,
        "sequences": len(seqs[0]) if seqs else 0,
        "decode_only": decode_only,
        "cache_sizes": cache_sizes, "segment_lengths": seg_lens,
        "layers": layers, "mean": avg,
    }


def _f(x, pct=True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def format_report(s: dict) -> str:
    k, E = s["n_used"], s["n_expert"]
    out = []
    meta = s["meta"]
    out.append(f"trace: {s['records']} records; {s['n_layer']} layers, {E} experts, top-{k}; "
               f"{s['tokens']} tokens in {s['steps']} steps, {s['sequences']} sequence(s)"
               + (" (decode tokens only)" if s["decode_only"] else ""))
    if meta.get("model"):
        out.append(f"model: {meta['model']}" + (f" ({meta['arch']})" if meta.get("arch") else ""))
    if meta.get("argv"):
        out.append("command: " + " ".join(meta["argv"]))
    if s["truncated_bytes"]:
        out.append(f"note: the file ends with {s['truncated_bytes']} bytes of a partial record (ignored)")
    out.append("")
    out.append("Expert popularity per layer (share of the layer's token-expert selections)")
    out.append(f"{'layer':>5} {'entropy':>8} {'H/log2E':>8} {'max/unif':>8} {'unused':>6}  top experts (id: share %)")
    for x in s["layers"]:
        p = x["popularity"]
        if not p.get("selections"):
            out.append(f"{x['layer']:>5}  (no tokens)")
            continue
        tops = ", ".join(f"{e}: {100 * sh:.1f}" for e, _, sh in p["top"])
        out.append(f"{x['layer']:>5} {p['entropy_bits']:>8.3f} {p['entropy_norm']:>8.3f} "
                   f"{p['max_over_uniform']:>8.2f} {p['unused']:>6}  {tops}")
    out.append(f"{'mean':>5} {'':>8} {_f(s['mean']['entropy_norm'], False):>8}")
    out.append("")
    Ls, Cs = s["segment_lengths"], s["cache_sizes"]
    out.append("Segment routing best performance SRP(L) (best F1 of one fixed expert set per segment), %")
    out.append(f"{'layer':>5} " + " ".join(f"{'L=' + str(L):>8}" for L in Ls))
    for x in s["layers"]:
        out.append(f"{x['layer']:>5} " + " ".join(f"{_f(x['segments'][L]['srp'] if x['segments'][L] else None):>8}"
                                                 for L in Ls))
    out.append(f"{'mean':>5} " + " ".join(f"{_f(s['mean']['srp'][L]):>8}" for L in Ls))
    out.append("")
    out.append("Segment cache best hit rate SCH(L, C) (oracle holding the best C experts of each segment), %")
    out.append(f"{'layer':>5} " + " | ".join(" ".join(f"{f'L={L},C={C}':>9}" for C in Cs) for L in Ls))
    for x in s["layers"]:
        out.append(f"{x['layer']:>5} " + " | ".join(" ".join(
            f"{_f(x['segments'][L]['sch'][C] if x['segments'][L] else None):>9}" for C in Cs) for L in Ls))
    out.append(f"{'mean':>5} " + " | ".join(" ".join(f"{_f(s['mean']['sch'][L][C]):>9}" for C in Cs)
                                            for L in Ls))
    out.append("")
    out.append("Cache hit rate per layer, C experts cached per layer, over the trace's steps, %")
    out.append(f"{'layer':>5} " + " | ".join(" ".join(f"{f'C={C} ' + p:>12}" for p in POLICIES) for C in Cs))
    for x in s["layers"]:
        out.append(f"{x['layer']:>5} " + " | ".join(" ".join(f"{_f(x['cache'][C][p]):>12}" for p in POLICIES)
                                                   for C in Cs))
    out.append(f"{'mean':>5} " + " | ".join(" ".join(f"{_f(s['mean']['cache'][C][p]):>12}" for p in POLICIES)
                                            for C in Cs))
    out.append(f"{'rand':>5} " + " | ".join(f"{_f(min(C, E) / E):>12} {'(C/E)':>12} {'':>12}" for C in Cs))
    return "\n".join(line.rstrip() for line in out)


def _int_list(s: str) -> list:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}': expected comma-separated integers")
    if not v or any(x < 1 for x in v):
        raise argparse.ArgumentTypeError(f"'{s}': expected positive integers")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--cache-sizes", type=_int_list, default=None,
                    help="experts cached per layer (default: k, 2k, 4k)")
    ap.add_argument("--segment-lengths", type=_int_list, default=[1, 4, 16, 64])
    ap.add_argument("--decode-only", action="store_true", help="drop prefill tokens")
    ap.add_argument("--top", type=int, default=4, help="most-used experts shown per layer")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers as JSON ('-': stdout only)")
    a = ap.parse_args(argv)
    try:
        t = read_trace(a.trace)
    except (OSError, ValueError) as e:
        print(f"trace_summary: {e}", file=sys.stderr)
        return 1
    cs = a.cache_sizes or [t.n_used, 2 * t.n_used, 4 * t.n_used]
    s = summarize(t, cs, a.segment_lengths, a.decode_only, a.top)
    if a.json == "-":
        json.dump(s, sys.stdout, indent=1)
        print()
        return 0
    print(format_report(s))
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
