"""Numpy reference forward pass of the four MoE architectures, read from a GGUF
file alone (float64).  Used by tests/py/test_fixtures.py, which checks that it
reproduces transformers' logits stored in tests/fixtures/<arch>/ref.json, and by
tools/mkfixtures.py, which uses its "act_q8" variant to choose prompts whose
greedy run survives llama.cpp-style activation quantization.

It is the executable statement of the GGUF layout conventions that moed's C
engine relies on (tests/fixtures/README.md lists them): tensor orientation,
llama's permuted Q/K rows with adjacent-pair RoPE vs NEOX RoPE for
qwen2moe/qwen3moe/olmoe, per-head (qwen3moe) vs whole-projection (olmoe)
QK-norm, softmax -> top-k -> optional renormalisation, the qwen2moe shared
expert with its sigmoid gate, tied output.  numpy only.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gguf  # noqa: E402
from gguf import GGMLType, GGUFReader  # noqa: E402


def _dequant(r: GGUFReader, t) -> "np.ndarray":
    a = r.tensor_array(t)
    if t.ggml_type == GGMLType.Q8_0:
        a = gguf.decode_q8_0(a, t.ne[0]).reshape(t.shape)
    elif t.ggml_type == GGMLType.BF16:
        a = gguf.bf16_bits_to_f32(a)
    elif t.ggml_type not in (GGMLType.F32, GGMLType.F16):
        raise ValueError(f"{t.name}: type {GGMLType(t.ggml_type).name} not handled here")
    return np.asarray(a, dtype=np.float64)  # numpy shape = reversed(ne): [out, in] for matrices


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _silu(x):
    return x / (1.0 + np.exp(-x))


class RefModel:
    # llama.cpp's behaviour when a file lacks <arch>.expert_weights_norm
    NORM_DEFAULT = {"llama": True, "qwen3moe": True, "qwen2moe": False, "olmoe": False}

    def __init__(self, path: Path):
        r = GGUFReader(path)
        self.meta = {k: f.value for k, f in r.fields.items()}
        A = self.arch = r.get("general.architecture")
        g = lambda k, d=None: r.get(f"{A}.{k}", d)  # noqa: E731
        self.n_layer = g("block_count")
        self.d = g("embedding_length")
        self.nh = g("attention.head_count")
        self.nkv = g("attention.head_count_kv")
        self.hd = g("attention.key_length", self.d // self.nh)
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.base = g("rope.freq_base", 10000.0)
        self.n_rot = g("rope.dimension_count", self.hd)
        self.k = g("expert_used_count")
        self.norm_topk = g("expert_weights_norm", self.NORM_DEFAULT[A])
        self.neox = A != "llama"  # llama: rows permuted in the file, adjacent-pair RoPE
        self.w = {t.name: _dequant(r, t) for t in r.tensors}
        self.types = {t.name: GGMLType(t.ggml_type) for t in r.tensors}
        self.ne = {t.name: list(t.ne) for t in r.tensors}
        r.close()
        assert self.n_rot == self.hd
        self.mut: set = set()  # deliberate mistakes, to show the fixtures catch them (tests below)

    def aq(self, x, wname: str):
        """The input of a matmul with weight wname.  With the "act_q8" variant, a
        Q8_0 weight's input is itself rounded to Q8_0 (blocks of 32 along the row),
        as llama.cpp's CPU Q8_0 dot products do: an estimate of what a C engine
        that quantizes activations should expect against the q8_0 reference."""
        if "act_q8" not in self.mut or self.types[wname] != GGMLType.Q8_0:
            return x
        x32 = np.asarray(x, dtype=np.float32)
        return gguf.decode_q8_0(gguf.encode_q8_0(x32), x32.shape[-1]).reshape(x32.shape).astype(np.float64)

    def rope(self, x, pos):
        """x [T, H, hd] rotated at positions pos [T]."""
        half = self.hd // 2
        base = 10000.0 if "rope_base_10000" in self.mut else self.base
        inv = base ** (-2.0 * np.arange(half) / self.hd)
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        neox = self.neox != ("rope_style_swapped" in self.mut)
        if neox:
            a, b = x[..., :half], x[..., half:]
        else:
            a, b = x[..., 0::2], x[..., 1::2]
        ra, rb = a * cos - b * sin, a * sin + b * cos
        if neox:
            return np.concatenate([ra, rb], axis=-1)
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = ra, rb
        return out

    def attention(self, i: int, h, pos):
        w, b = self.w, f"blk.{i}."
        T = h.shape[0]
        hq = self.aq(h, b + "attn_q.weight")
        q = hq @ w[b + "attn_q.weight"].T
        k = hq @ w[b + "attn_k.weight"].T
        v = hq @ w[b + "attn_v.weight"].T
        if b + "attn_q.bias" in w and "no_qkv_bias" not in self.mut:  # qwen2moe
            q, k, v = q + w[b + "attn_q.bias"], k + w[b + "attn_k.bias"], v + w[b + "attn_v.bias"]
        qn, kn = w.get(b + "attn_q_norm.weight"), w.get(b + "attn_k_norm.weight")
        if "no_qk_norm" in self.mut:
            qn = kn = None
        if qn is not None and qn.shape[0] != self.hd:  # olmoe: over the whole projection
            q, k = _rms(q, qn, self.eps), _rms(k, kn, self.eps)
        q = q.reshape(T, self.nh, self.hd)
        k = k.reshape(T, self.nkv, self.hd)
        v = v.reshape(T, self.nkv, self.hd)
        if qn is not None and qn.shape[0] == self.hd:  # qwen3moe: per head
            q, k = _rms(q, qn, self.eps), _rms(k, kn, self.eps)
        q, k = self.rope(q, pos), self.rope(k, pos)
        grp = self.nh // self.nkv
        if "gqa_modulo" in self.mut:  # the classic mistake: kv head h % nkv
            k, v = np.tile(k, (1, grp, 1)), np.tile(v, (1, grp, 1))
        else:
            k, v = np.repeat(k, grp, axis=1), np.repeat(v, grp, axis=1)  # head h uses kv head h // grp
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(self.hd)
        s = np.where(np.tril(np.ones((T, T), dtype=bool))[None], s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, self.nh * self.hd)
        return self.aq(o, b + "attn_output.weight") @ w[b + "attn_output.weight"].T

    def moe(self, i: int, h, gaps=None):
        w, b = self.w, f"blk.{i}."
        logits = h @ w[b + "ffn_gate_inp.weight"].T  # [T, E]
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        order = np.argsort(-p, axis=-1, kind="stable")
        top = order[:, : self.k]
        if gaps is not None:
            srt = np.take_along_axis(logits, order, axis=-1)
            gaps.append(float((srt[:, self.k - 1] - srt[:, self.k]).min()))
        wt = np.take_along_axis(p, top, axis=-1)
        if self.norm_topk != ("norm_topk_flipped" in self.mut):
            wt = wt / wt.sum(axis=-1, keepdims=True)
        gate, up, down = w[b + "ffn_gate_exps.weight"], w[b + "ffn_up_exps.weight"], w[b + "ffn_down_exps.weight"]
        out = np.zeros_like(h)
        hq = self.aq(h, b + "ffn_gate_exps.weight")
        for t in range(h.shape[0]):
            for e, we in zip(top[t], wt[t]):
                a = _silu(gate[e] @ hq[t]) * (up[e] @ hq[t])
                out[t] += we * (down[e] @ self.aq(a, b + "ffn_down_exps.weight"))
        if b + "ffn_gate_inp_shexp.weight" in w:  # qwen2moe shared expert, sigmoid-gated
            sg = 1.0 / (1.0 + np.exp(-(h @ w[b + "ffn_gate_inp_shexp.weight"])))
            if "no_shexp_gate" in self.mut:
                sg = np.ones_like(sg)
            hq = self.aq(h, b + "ffn_gate_shexp.weight")
            sh = _silu(hq @ w[b + "ffn_gate_shexp.weight"].T) * (hq @ w[b + "ffn_up_shexp.weight"].T)
            out += sg[:, None] * (self.aq(sh, b + "ffn_down_shexp.weight") @ w[b + "ffn_down_shexp.weight"].T)
        return out

    def forward(self, ids, gaps=None):
        """Logits [T, n_vocab] of one sequence at positions 0..T-1."""
        w = self.w
        x = w["token_embd.weight"][np.asarray(ids)]
        pos = np.arange(len(ids))
        for i in range(self.n_layer):
            b = f"blk.{i}."
            an, fn = w[b + "attn_norm.weight"], w[b + "ffn_norm.weight"]
            if "swap_layer_norms" in self.mut:
                an, fn = fn, an
            x = x + self.attention(i, _rms(x, an, self.eps), pos)
            x = x + self.moe(i, _rms(x, fn, self.eps), gaps)
        out = w.get("output.weight", w["token_embd.weight"])  # tied: token_embd
        if "output_is_token_embd" in self.mut:
            out = w["token_embd.weight"]
        oname = "token_embd.weight" if "output.weight" not in w or "output_is_token_embd" in self.mut else "output.weight"
        return self.aq(_rms(x, w["output_norm.weight"], self.eps), oname) @ out.T
