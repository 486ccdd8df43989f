#!/usr/bin/env python3
"""Convert a Hugging Face checkpoint (or only its tokenizer) to GGUF v3.

    python3 tools/hf2gguf.py [--vocab-only] [--outtype f32|f16|bf16|q8_0] DIR OUT.gguf

DIR holds tokenizer.json + tokenizer_config.json (byte-level BPE) or
tokenizer.model (SentencePiece), and, for a full conversion, config.json and
*.safetensors (model.safetensors or shards with model.safetensors.index.json).
A full conversion without tokenizer files (random-init test models) writes
tokenizer.ggml.model = "none" and <arch>.vocab_size instead of a vocabulary.

--vocab-only needs the Python standard library only.  Weights need numpy
(no torch, no safetensors package: the safetensors reader is below).

Key names, token types, tensor names and layouts follow llama.cpp's
convert_hf_to_gguf.py so that files made here and files users download load
the same way; the few places where this tool writes more are marked
"moed:" below.  Architectures: Qwen3MoeForCausalLM (qwen3moe),
Qwen2MoeForCausalLM (qwen2moe), MixtralForCausalLM (llama with experts),
OlmoeForCausalLM (olmoe).  Facts established for each (see tools/README.md):

- Q/K rows: llama.cpp's converter permutes the rows of q_proj/k_proj (per
  head: HF's [first half | second half] rotate-half order becomes
  interleaved pairs) ONLY for arch "llama" (LlamaModel, which Mixtral uses),
  because llama.cpp runs "normal" (GPT-J style, adjacent pairs) RoPE for
  llama.  qwen2moe, qwen3moe and olmoe are converted by classes that do not
  permute, and llama.cpp runs NEOX-style RoPE (x[i], x[i + d/2] pairs) for
  them.  So: a loader applies NORM rope to llama, NEOX rope to the others.
- Routing (softmax over all experts, then top-k):
    llama (Mixtral): top-k weights renormalised to sum 1 (always, in HF and llama.cpp)
    qwen3moe: HF renormalises iff config norm_topk_prob (transformers default
              False; Qwen3-30B-A3B sets True); llama.cpp always renormalises
    qwen2moe: HF iff norm_topk_prob (default False; released models False);
              llama.cpp never renormalises
    olmoe:    HF iff norm_topk_prob (default False; released models False);
              llama.cpp never renormalises
  llama.cpp's converter writes no key for these four.  moed: this tool
  writes <arch>.expert_weights_norm (bool; llama.cpp's own key name, used by
  its deepseek2 and other archs) with what the checkpoint really does; a
  loader that does not find the key should assume llama.cpp's behaviour
  above (llama, qwen3moe: true; qwen2moe, olmoe: false).
- qwen2moe's shared expert: out += sigmoid(ffn_gate_inp_shexp . x) * shexp(x);
  ffn_gate_inp_shexp is HF's [1, n_embd] written as a 1-D {n_embd} tensor
  (llama.cpp creates it with that shape).
- olmoe's q_norm/k_norm are RMS norms over the whole projection
  ({n_head*head_dim} and {n_head_kv*head_dim}; llama.cpp creates both as
  {n_embd}, so it loads only n_head_kv == n_head), qwen3moe's are per head
  ({head_dim}, shared by all heads).  qwen2moe has q/k/v biases.
- No lm_head (tied embeddings): 'output' is omitted; llama.cpp falls back to
  token_embd for llama and qwen3moe but requires 'output' for qwen2moe/olmoe.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402  (tools/gguf.py)
from gguf import GGMLType, GGUFValueType, GGUFWriter  # noqa: E402

try:
    import numpy as np
except ImportError:
    np = None  # type: ignore[assignment]

log = logging.getLogger("hf2gguf")

# token types (llama.cpp's gguf.TokenType / SentencePiece piece types)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

# llama_ftype values for general.file_type
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
OUTTYPE = {"f32": GGMLType.F32, "f16": GGMLType.F16, "bf16": GGMLType.BF16, "q8_0": GGMLType.Q8_0}


class ConvertError(Exception):
    pass


def _load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ===========================================================================
# vocabulary


# Pre-tokenizer regexes as Hugging Face tokenizer.json spells them.
_RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Exact pre-tokenizer structures -> tokenizer.ggml.pre.  A signature lists
# the pre-tokenizers in order: ("Split", regex) / ("ByteLevel", use_regex) /
# ("Digits", individual_digits).
_PRE_EXACT = {
    (("Split", _RE_QWEN2), ("ByteLevel", False)): "qwen2",
    (("Split", _RE_LLAMA3), ("ByteLevel", False)): "llama-bpe",
    # ByteLevel with its built-in GPT-2 regex
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "starcoder",
}

# tokenizer.ggml.add_bos_token / add_eos_token when neither tokenizer_config.json
# nor the post-processor says (llama.cpp's defaults for these pre types)
_PRE_ADD_BOS_EOS = {"llama-bpe": (True, False), "qwen2": (False, False), "gpt-2": (False, False)}

# general.architecture of a vocabulary-only file without config.json: the
# moed architecture that uses this tokenizer family
_PRE_DEFAULT_ARCH = {"qwen2": "qwen3moe", "llama-bpe": "llama", "gpt-2": "gpt2", "olmo": "olmoe"}


def _pretok_signature(tj: dict) -> tuple:
    pt = tj.get("pre_tokenizer")
    if not pt:
        return ()
    items = pt.get("pretokenizers", []) if pt.get("type") == "Sequence" else [pt]
    sig = []
    for p in items:
        t = p.get("type")
        if t == "Split":
            pat = p.get("pattern", {})
            sig.append(("Split", pat.get("Regex", pat.get("String"))))
        elif t == "ByteLevel":
            sig.append(("ByteLevel", bool(p.get("use_regex", True))))
        elif t == "Digits":
            sig.append(("Digits", bool(p.get("individual_digits", False))))
        else:
            sig.append((t, None))
    return tuple(sig)


def identify_pre(tj: dict, arch: str | None = None) -> str:
    """tokenizer.ggml.pre for a byte-level BPE tokenizer.json.

    llama.cpp's converter identifies the pre-tokenizer by hashing the ids
    that the transformers tokenizer gives for a probe string; without
    transformers we identify it from the pre_tokenizer structure.  The names
    are llama.cpp's, so llama.cpp and moed pick the same regexes.
    """
    sig = _pretok_signature(tj)
    pre = _PRE_EXACT.get(sig)
    if pre == "gpt-2" and arch == "olmoe":
        # OLMoE's GPT-NeoX-style tokenizer: llama.cpp names it "olmo" (same regex as gpt-2)
        pre = "olmo"
    if pre is not None:
        return pre
    splits = [s[1] or "" for s in sig if s[0] == "Split"]
    joined = "\n".join(splits)
    # Structural guesses for the families moed plans next (DeepSeek); their
    # tokenizer.json spell the regexes with literal character ranges.
    if splits and splits[0] == r"\p{N}{1,3}" and "一-龥" in joined and "぀-ゟ" in joined:
        pre = "deepseek-v3"
    elif splits and splits[0] == "[\r\n]" and any("A-Za-z" in s for s in splits):
        pre = "deepseek-llm"
    elif splits and splits[0] == "[\r\n]" and r"\s?\p{L}+" in splits:
        pre = "deepseek-coder"
    elif any(s == _RE_QWEN2 for s in splits):
        pre = "qwen2"
    elif any(s == _RE_LLAMA3 for s in splits):
        pre = "llama-bpe"
    if pre is not None:
        log.warning("pre-tokenizer identified by structure only as %r: check it", pre)
        return pre
    log.warning("unknown pre-tokenizer %r: writing tokenizer.ggml.pre = 'default'", sig)
    return "default"


def does_token_look_special(token: str) -> bool:
    """llama.cpp's rule for added tokens that are not marked special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))  # deepseek's fullwidth bars
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _token_content(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


class Vocab:
    """Everything the tokenizer part of a GGUF holds, as (key, type, value[, elem]) in order."""

    def __init__(self) -> None:
        self.kv: list[tuple[str, GGUFValueType, Any, GGUFValueType | None]] = []
        self.pre: str | None = None
        self.n_tokens = 0

    def add(self, key: str, vtype: GGUFValueType, value: Any, elem: GGUFValueType | None = None) -> None:
        self.kv.append((key, vtype, value, elem))

    def write_to(self, w: GGUFWriter) -> None:
        for key, vtype, value, elem in self.kv:
            w.add_kv(key, value, vtype, elem)


def _special_ids(dir_: Path, tc: dict, added: list[dict], vocab_map: dict[str, int],
                 config: dict | None, n_vocab: int) -> dict[str, int]:
    """bos/eos/unk/sep/pad/cls/mask ids, as gguf-py's SpecialVocab finds them:
    tokenizer_config.json <typ>_token (a string or {"content": ...}) looked up
    among the added tokens (then the vocab), else config.json <typ>_token_id."""
    by_content = {a["content"]: a["id"] for a in added}
    out: dict[str, int] = {}
    for typ in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        content = _token_content(tc.get(f"{typ}_token"))
        tid = None
        if content is not None:
            tid = by_content.get(content, vocab_map.get(content))
        if tid is None and config is not None:
            v = config.get(f"{typ}_token_id")
            if isinstance(v, list):  # e.g. generation eos lists: take the first
                v = v[0] if v else None
            if isinstance(v, int) and not isinstance(v, bool):
                tid = v
        if tid is not None and 0 <= tid < n_vocab:
            out[typ] = tid
        elif tid is not None:
            log.warning("%s token id %d is outside the vocabulary: not written", typ, tid)
    return out


_SPECIAL_KEY = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "cls": "tokenizer.ggml.cls_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
}


def _template_add_bos_eos(tj: dict, ids: dict[str, int], vocab_of: Callable[[str], int | None]):
    """(add_bos, add_eos) from a TemplateProcessing post-processor, or Nones."""
    pp = tj.get("post_processor") or {}
    procs = pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") != "TemplateProcessing":
            continue
        single = p.get("single") or []
        first = single[0].get("SpecialToken", {}).get("id") if single else None
        last = single[-1].get("SpecialToken", {}).get("id") if single else None
        add_bos = first is not None and ("bos" not in ids or vocab_of(first) == ids["bos"])
        add_eos = last is not None and len(single) > 1 and ("eos" not in ids or vocab_of(last) == ids["eos"])
        return add_bos, add_eos
    return None, None


def _chat_templates(dir_: Path, tc: dict) -> list[tuple[str, str]]:
    """(key, template) pairs: tokenizer_config.json's chat_template (a string,
    or a list of {name, template}), else chat_template.jinja / .json."""
    ct = tc.get("chat_template")
    if ct is None:
        p = dir_ / "chat_template.jinja"
        if p.is_file():
            ct = p.read_text(encoding="utf-8")
        elif (dir_ / "chat_template.json").is_file():
            ct = _load_json(dir_ / "chat_template.json").get("chat_template")
    if ct is None:
        return []
    if isinstance(ct, str):
        return [("tokenizer.chat_template", ct)]
    out, names = [], []
    for item in ct:
        name, tmpl = item.get("name"), item.get("template")
        if not isinstance(name, str) or not isinstance(tmpl, str):
            continue
        if name == "default":
            out.insert(0, ("tokenizer.chat_template", tmpl))
        else:
            out.append((f"tokenizer.chat_template.{name}", tmpl))
            names.append(name)
    if names:
        out.append(("tokenizer.chat_templates", names))  # type: ignore[arg-type]
    return out


def load_bpe_vocab(dir_: Path, config: dict | None = None, arch: str | None = None) -> Vocab:
    """A byte-level BPE tokenizer.json (GPT-2 style: Qwen, Llama 3, OLMoE ...)."""
    tj = _load_json(dir_ / "tokenizer.json")
    tc_path = dir_ / "tokenizer_config.json"
    tc = _load_json(tc_path) if tc_path.is_file() else {}
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json model type {model.get('type')!r} is not BPE")

    vocab_map: dict[str, int] = model["vocab"]
    added: list[dict] = tj.get("added_tokens", [])
    n = max(vocab_map.values(), default=-1) + 1
    n = max([n] + [a["id"] + 1 for a in added])
    if config is not None and isinstance(config.get("vocab_size"), int):
        if config["vocab_size"] < n:
            raise ConvertError(f"config vocab_size {config['vocab_size']} < tokenizer's {n} ids")
        n = config["vocab_size"]  # the embedding's rows: pad the tail

    tokens: list[str | None] = [None] * n
    types = [TT_NORMAL] * n
    for tok, i in vocab_map.items():
        tokens[i] = tok
    for a in added:  # added tokens are stored as their text (llama.cpp: pre-normalized)
        i, text = a["id"], a["content"]
        tokens[i] = text
        if a.get("special") or does_token_look_special(text):
            types[i] = TT_CONTROL
        else:
            types[i] = TT_USER_DEFINED
    n_pad = 0
    for i in range(n):
        if tokens[i] is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = TT_UNUSED
            n_pad += 1
    if n_pad:
        log.info("filled %d unused ids with [PAD{id}]", n_pad)

    merges = model.get("merges", [])
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    pre = identify_pre(tj, arch)
    v = Vocab()
    v.pre = pre
    v.n_tokens = n
    v.add("tokenizer.ggml.model", GGUFValueType.STRING, "gpt2")
    v.add("tokenizer.ggml.pre", GGUFValueType.STRING, pre)
    v.add("tokenizer.ggml.tokens", GGUFValueType.ARRAY, tokens, GGUFValueType.STRING)
    v.add("tokenizer.ggml.token_type", GGUFValueType.ARRAY, types, GGUFValueType.INT32)
    v.add("tokenizer.ggml.merges", GGUFValueType.ARRAY, merges, GGUFValueType.STRING)

    ids = _special_ids(dir_, tc, added, vocab_map, config, n)
    for typ in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        if typ in ids:
            v.add(_SPECIAL_KEY[typ], GGUFValueType.UINT32, ids[typ])

    def vocab_of(content: str) -> int | None:
        for a in added:
            if a["content"] == content:
                return a["id"]
        return vocab_map.get(content)

    add_bos, add_eos = tc.get("add_bos_token"), tc.get("add_eos_token")
    t_bos, t_eos = _template_add_bos_eos(tj, ids, vocab_of)
    d_bos, d_eos = _PRE_ADD_BOS_EOS.get(pre, (None, None))
    add_bos = add_bos if isinstance(add_bos, bool) else t_bos if t_bos is not None else d_bos
    add_eos = add_eos if isinstance(add_eos, bool) else t_eos if t_eos is not None else d_eos
    if add_bos is not None:
        v.add("tokenizer.ggml.add_bos_token", GGUFValueType.BOOL, bool(add_bos))
    if add_eos is not None:
        v.add("tokenizer.ggml.add_eos_token", GGUFValueType.BOOL, bool(add_eos))
    for key, tmpl in _chat_templates(dir_, tc):
        if isinstance(tmpl, list):
            v.add(key, GGUFValueType.ARRAY, tmpl, GGUFValueType.STRING)
        else:
            v.add(key, GGUFValueType.STRING, tmpl)
    return v


# --- SentencePiece (tokenizer.model) ----------------------------------------


def _pb_fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited
    values come back as (start, end) offsets into buf."""
    pos, end = start, len(buf) if end is None else end

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise ConvertError("tokenizer.model: truncated varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        field, wt = key >> 3, key & 7
        if wt == 0:
            yield field, wt, varint()
        elif wt == 1:
            yield field, wt, buf[pos:pos + 8]
            pos += 8
        elif wt == 2:
            ln = varint()
            if pos + ln > end:
                raise ConvertError("tokenizer.model: truncated field")
            yield field, wt, (pos, pos + ln)
            pos += ln
        elif wt == 5:
            yield field, wt, buf[pos:pos + 4]
            pos += 4
        else:
            raise ConvertError(f"tokenizer.model: unsupported wire type {wt}")


def read_sentencepiece_model(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) for each id of a SentencePiece ModelProto
    (field 1: repeated SentencePiece {1: piece, 2: score, 3: type})."""
    buf = path.read_bytes()
    pieces = []
    for field, wt, val in _pb_fields(buf):
        if field != 1 or wt != 2:
            continue
        piece, score, ptype = "", 0.0, 1  # proto defaults: type NORMAL
        for f2, w2, v2 in _pb_fields(buf, *val):
            if f2 == 1 and w2 == 2:
                piece = buf[v2[0]:v2[1]].decode("utf-8")
            elif f2 == 2 and w2 == 5:
                (score,) = struct.unpack("<f", v2)
            elif f2 == 3 and w2 == 0:
                ptype = v2
        pieces.append((piece, score, ptype))
    if not pieces:
        raise ConvertError(f"{path}: no pieces found (not a SentencePiece model?)")
    return pieces


def load_spm_vocab(dir_: Path, config: dict | None = None) -> Vocab:
    """tokenizer.model (SentencePiece: Mixtral, Mistral, Llama 2), as llama.cpp's
    _create_vocab_sentencepiece does it."""
    pieces = read_sentencepiece_model(dir_ / "tokenizer.model")
    n = len(pieces)
    if config is not None and isinstance(config.get("vocab_size"), int):
        n = config["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [TT_UNUSED] * n
    spm_type = {2: TT_UNKNOWN, 3: TT_CONTROL, 5: TT_UNUSED, 6: TT_BYTE}  # NORMAL/USER_DEFINED -> NORMAL
    for i, (piece, score, ptype) in enumerate(pieces):
        if i >= n:
            log.warning("tokenizer.model has more pieces than vocab_size %d", n)
            break
        tokens[i], scores[i], types[i] = piece, score, spm_type.get(ptype, TT_NORMAL)
    tc_path = dir_ / "tokenizer_config.json"
    tc = _load_json(tc_path) if tc_path.is_file() else {}
    at_path = dir_ / "added_tokens.json"
    if at_path.is_file():
        for text, i in _load_json(at_path).items():
            if 0 <= i < n:
                tokens[i], scores[i], types[i] = text, -1000.0, TT_USER_DEFINED
    for sid, data in (tc.get("added_tokens_decoder") or {}).items():
        i, text = int(sid), data.get("content", "")
        if not 0 <= i < n:
            continue
        if data.get("special") or does_token_look_special(text):
            types[i] = TT_CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[i] = TT_USER_DEFINED
        tokens[i], scores[i] = text, -1000.0

    v = Vocab()
    v.pre = "default"
    v.n_tokens = n
    v.add("tokenizer.ggml.model", GGUFValueType.STRING, "llama")
    v.add("tokenizer.ggml.pre", GGUFValueType.STRING, "default")
    v.add("tokenizer.ggml.tokens", GGUFValueType.ARRAY, tokens, GGUFValueType.STRING)
    v.add("tokenizer.ggml.scores", GGUFValueType.ARRAY, scores, GGUFValueType.FLOAT32)
    v.add("tokenizer.ggml.token_type", GGUFValueType.ARRAY, types, GGUFValueType.INT32)
    by_text = {t: i for i, t in enumerate(tokens)}
    added = [{"content": t, "id": i} for t, i in by_text.items() if types[i] in (TT_CONTROL, TT_USER_DEFINED, TT_UNKNOWN)]
    ids = _special_ids(dir_, tc, added, by_text, config, n)
    for typ in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        if typ in ids:
            v.add(_SPECIAL_KEY[typ], GGUFValueType.UINT32, ids[typ])
    add_bos, add_eos = tc.get("add_bos_token"), tc.get("add_eos_token")
    # SentencePiece llama tokenizers add BOS unless told otherwise
    v.add("tokenizer.ggml.add_bos_token", GGUFValueType.BOOL, True if add_bos is None else bool(add_bos))
    v.add("tokenizer.ggml.add_eos_token", GGUFValueType.BOOL, False if add_eos is None else bool(add_eos))
    if isinstance(tc.get("add_prefix_space"), bool):
        v.add("tokenizer.ggml.add_space_prefix", GGUFValueType.BOOL, tc["add_prefix_space"])
    for key, tmpl in _chat_templates(dir_, tc):
        if isinstance(tmpl, list):
            v.add(key, GGUFValueType.ARRAY, tmpl, GGUFValueType.STRING)
        else:
            v.add(key, GGUFValueType.STRING, tmpl)
    return v


def load_vocab(dir_: Path, config: dict | None = None, arch: str | None = None) -> Vocab:
    """Pick the tokenizer the way llama.cpp's converter does for these models:
    SentencePiece when tokenizer.model is there (Mixtral), else tokenizer.json."""
    tj_path = dir_ / "tokenizer.json"
    if (dir_ / "tokenizer.model").is_file():
        if not tj_path.is_file() or not _is_byte_level(_load_json(tj_path)):
            return load_spm_vocab(dir_, config)
    if tj_path.is_file():
        tj = _load_json(tj_path)
        if not _is_byte_level(tj):
            raise ConvertError("tokenizer.json is not a byte-level BPE tokenizer and there is "
                               "no tokenizer.model: not supported")
        return load_bpe_vocab(dir_, config, arch)
    raise ConvertError(f"{dir_}: no tokenizer.json or tokenizer.model")


def has_tokenizer(dir_: Path) -> bool:
    """Whether dir_ holds tokenizer files that load_vocab reads."""
    return (dir_ / "tokenizer.json").is_file() or (dir_ / "tokenizer.model").is_file()


def _is_byte_level(tj: dict) -> bool:
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel":
                return True
            return any(has(x) for x in node.values())
        if isinstance(node, list):
            return any(has(x) for x in node)
        return False

    return tj.get("model", {}).get("type") == "BPE" and (has(tj.get("pre_tokenizer")) or has(tj.get("decoder")))


# ===========================================================================
# safetensors


_ST_DTYPE = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


class SafetensorsFile:
    """Minimal safetensors reader: u64 header length, JSON header
    {name: {dtype, shape, data_offsets: [begin, end]}}, then the data.
    Tensors are numpy views of a read-only memory map (nothing is loaded
    until used)."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ConvertError(f"{path}: truncated safetensors header")
            (hlen,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if hlen > size - 8:
                raise ConvertError(f"{path}: header length {hlen} past the end")
            header = json.loads(f.read(hlen))
        self.meta = header.pop("__metadata__", None)
        self.base = 8 + hlen
        self.entries = header
        self._map = None
        for name, e in header.items():
            b, en = e["data_offsets"]
            if e["dtype"] not in _ST_DTYPE:
                raise ConvertError(f"{path}: tensor {name}: dtype {e['dtype']} not supported")
            n = 1
            for d in e["shape"]:
                n *= d
            if en - b != n * np.dtype(_ST_DTYPE[e["dtype"]]).itemsize or self.base + en > size:
                raise ConvertError(f"{path}: tensor {name}: bad data_offsets {e['data_offsets']}")

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def raw(self, name: str):
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        e = self.entries[name]
        b, en = e["data_offsets"]
        return self._map[self.base + b:self.base + en].view(_ST_DTYPE[e["dtype"]]).reshape(e["shape"])

    def f32(self, name: str, index: int | None = None):
        """The tensor (or its index-th slab along dim 0) as float32."""
        a = self.raw(name)
        if index is not None:
            a = a[index]
        if self.entries[name]["dtype"] == "BF16":
            return gguf.bf16_bits_to_f32(a)
        return np.asarray(a, dtype=np.float32)


class Checkpoint:
    """All tensors of a checkpoint directory, by name."""

    def __init__(self, dir_: Path):
        idx = dir_ / "model.safetensors.index.json"
        if idx.is_file():
            files = sorted(set(_load_json(idx)["weight_map"].values()))
        else:
            files = sorted(p.name for p in dir_.glob("*.safetensors"))
        if not files:
            if any(dir_.glob("*.bin")) or any(dir_.glob("*.pt")):
                raise ConvertError(f"{dir_}: only PyTorch .bin/.pt weights; save them as safetensors first")
            raise ConvertError(f"{dir_}: no *.safetensors files")
        self.where: dict[str, SafetensorsFile] = {}
        for fn in files:
            st = SafetensorsFile(dir_ / fn)
            for k in st.keys():
                if k in self.where:
                    raise ConvertError(f"tensor {k} is in {self.where[k].path.name} and {fn}")
                self.where[k] = st

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].shape(name)

    def f32(self, name: str, index: int | None = None):
        return self.where[name].f32(name, index)


# ===========================================================================
# models


ARCHS = {
    "Qwen3MoeForCausalLM": "qwen3moe",
    "Qwen2MoeForCausalLM": "qwen2moe",
    "MixtralForCausalLM": "llama",
    "OlmoeForCausalLM": "olmoe",
}


def _hp(cfg: dict, *names: str, default: Any = None) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    return default


def _rope_params(cfg: dict) -> dict:
    """rope settings: transformers v5 puts them under rope_parameters, v4 in
    rope_theta + rope_scaling."""
    rp = dict(cfg.get("rope_scaling") or {})
    rp.update(cfg.get("rope_parameters") or {})
    if "rope_theta" not in rp and cfg.get("rope_theta") is not None:
        rp["rope_theta"] = cfg["rope_theta"]
    if "rope_type" not in rp and "type" in rp:
        rp["rope_type"] = rp["type"]
    return rp


def set_model_params(w: GGUFWriter, arch: str, cfg: dict, outtype: str) -> None:
    """<arch>.* keys, as llama.cpp's TextModel.set_gguf_parameters and the
    per-arch classes write them."""
    a = arch
    w.add_uint32(f"{a}.block_count", cfg["num_hidden_layers"])
    if (v := _hp(cfg, "max_position_embeddings")) is not None:
        w.add_uint32(f"{a}.context_length", v)
    w.add_uint32(f"{a}.embedding_length", cfg["hidden_size"])
    if (v := _hp(cfg, "intermediate_size")) is not None:
        w.add_uint32(f"{a}.feed_forward_length", v)
    w.add_uint32(f"{a}.attention.head_count", cfg["num_attention_heads"])
    w.add_uint32(f"{a}.attention.head_count_kv", _hp(cfg, "num_key_value_heads", default=cfg["num_attention_heads"]))
    rp = _rope_params(cfg)
    rt = (rp.get("rope_type") or "default").lower()
    if rt == "linear" and rp.get("factor") is not None:
        w.add_string(f"{a}.rope.scaling.type", "linear")
        w.add_float32(f"{a}.rope.scaling.factor", rp["factor"])
    elif rt == "yarn" and rp.get("factor") is not None:
        w.add_string(f"{a}.rope.scaling.type", "yarn")
        w.add_float32(f"{a}.rope.scaling.factor", rp["factor"])
        w.add_uint32(f"{a}.rope.scaling.original_context_length", rp["original_max_position_embeddings"])
    elif rt not in ("default", "llama3"):
        log.warning("rope type %r not converted", rt)
    if rp.get("rope_theta") is not None:
        w.add_float32(f"{a}.rope.freq_base", rp["rope_theta"])
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", _hp(cfg, "rms_norm_eps", default=1e-5 if arch == "olmoe" else 1e-6))
    w.add_uint32(f"{a}.expert_count", _hp(cfg, "num_local_experts", "num_experts"))
    w.add_uint32(f"{a}.expert_used_count", cfg["num_experts_per_tok"])
    if (hd := cfg.get("head_dim")) is not None:
        w.add_uint32(f"{a}.attention.key_length", hd)
        w.add_uint32(f"{a}.attention.value_length", hd)
    if arch in ("qwen2moe", "qwen3moe"):
        if (v := cfg.get("moe_intermediate_size")) is not None:
            w.add_uint32(f"{a}.expert_feed_forward_length", v)
        if (v := cfg.get("shared_expert_intermediate_size")) is not None:
            w.add_uint32(f"{a}.expert_shared_feed_forward_length", v)
    if arch == "llama":
        w.add_uint32(f"{a}.vocab_size", cfg["vocab_size"])
        rope_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_uint32(f"{a}.rope.dimension_count", rope_dim)
    # moed: what the checkpoint's router really does (see the module doc)
    norm = True if arch == "llama" else bool(cfg.get("norm_topk_prob", False))
    w.add_bool(f"{a}.expert_weights_norm", norm)
    w.add_uint32("general.file_type", FILE_TYPE[outtype])
    w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)


def _check_supported(arch: str, cfg: dict) -> None:
    if arch in ("qwen2moe", "qwen3moe"):
        if cfg.get("mlp_only_layers"):
            raise ConvertError(f"mlp_only_layers={cfg['mlp_only_layers']}: dense layers in a {arch} "
                               "are not supported (llama.cpp does not load them either)")
        if cfg.get("decoder_sparse_step", 1) != 1:
            raise ConvertError(f"decoder_sparse_step={cfg['decoder_sparse_step']}: only 1 is supported")
    for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_experts_per_tok", "vocab_size"):
        if not isinstance(cfg.get(k), int):
            raise ConvertError(f"config.json: {k} missing or not an integer")
    if _hp(cfg, "num_local_experts", "num_experts") is None:
        raise ConvertError("config.json: no num_experts / num_local_experts")


def permute_rope_rows(w, n_head: int):
    """llama.cpp's LlamaModel.permute: within each head, rows [0..d/2) and
    [d/2..d) (HF rotate-half order) become interleaved pairs (GPT-J order)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_MAP = [
    # (HF suffix after "model.layers.N.", GGUF suffix after "blk.N.")
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"),
    ("mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"),
    ("mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"),
    ("mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"),
]
_LAYER_MAP_D = dict(_LAYER_MAP)
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_EXPERT_RE = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$")
_FUSED_RE = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(gate_up_proj|down_proj|gate_proj|up_proj)(?:\.weight)?$")
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)$")
_EXPERT_W = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.rotary_emb\.|^model\.mtp\.)")


class PlannedTensor:
    def __init__(self, name: str, ne: list[int], kind: str, produce: Callable[[Any], Iterable[Any]]):
        self.name, self.ne, self.kind, self.produce = name, ne, kind, produce


def _tensor_type(name: str, ne: list[int], outtype: str) -> GGMLType:
    """llama.cpp's choice: norms, 1-D tensors, biases and the routers stay F32;
    Q8_0 falls back to F16 when rows are not a multiple of 32."""
    if (len(ne) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
            or ".ffn_gate_inp." in name or ".ffn_gate_inp_shexp." in name):
        return GGMLType.F32
    t = OUTTYPE[outtype]
    if t == GGMLType.Q8_0 and ne[0] % 32:
        log.warning("%s: row of %d is not a multiple of 32: F16 instead of Q8_0", name, ne[0])
        return GGMLType.F16
    return t


_CHUNK_ELEMS = 1 << 24  # rows are encoded in chunks of about 64 MiB of float32


def _rows_chunks(a, gt: GGMLType) -> Iterator[Any]:
    """Encode a 2-D-or-more float array in slices of rows (bounded memory)."""
    rows = a.reshape(-1, a.shape[-1])
    step = max(1, _CHUNK_ELEMS // max(1, rows.shape[1]))
    for i in range(0, rows.shape[0], step):
        yield gguf.encode(np.asarray(rows[i:i + step], dtype=np.float32), gt)


def plan_tensors(ck: Checkpoint, arch: str, cfg: dict) -> list[PlannedTensor]:
    """Map every checkpoint tensor to its GGUF tensor (name, ne, data source)."""
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = _hp(cfg, "num_key_value_heads", default=n_head)
    n_expert = _hp(cfg, "num_local_experts", "num_experts")
    permute = arch == "llama"

    planned: list[PlannedTensor] = []
    experts: dict[tuple[int, str], dict[int, str]] = {}
    fused: dict[tuple[int, str], str] = {}
    unmapped: list[str] = []

    def simple(hf: str, gg: str) -> None:
        shape = ck.shape(hf)
        squeeze = gg.endswith("ffn_gate_inp_shexp.weight")
        if squeeze:
            if len(shape) != 2 or shape[0] != 1:
                raise ConvertError(f"{hf}: shape {shape}, expected [1, n_embd]")
            shape = (shape[1],)
        ne = list(reversed(shape))
        perm_heads = None
        if permute and hf.endswith(("q_proj.weight", "q_proj.bias")):
            perm_heads = n_head
        elif permute and hf.endswith(("k_proj.weight", "k_proj.bias")):
            perm_heads = n_head_kv

        def produce(gt, hf=hf, shape=shape, perm_heads=perm_heads):
            if perm_heads is None and len(shape) >= 2:
                # rows are independent: stream them from the map
                st = ck.where[hf]
                raw = st.raw(hf).reshape(shape)
                if st.entries[hf]["dtype"] == "BF16":
                    rows = raw.reshape(-1, shape[-1])
                    step = max(1, _CHUNK_ELEMS // max(1, shape[-1]))
                    for i in range(0, rows.shape[0], step):
                        yield gguf.encode(gguf.bf16_bits_to_f32(rows[i:i + step]), gt)
                    return
                yield from _rows_chunks(raw, gt)
                return
            a = ck.f32(hf).reshape(shape)
            if perm_heads is not None:
                a = permute_rope_rows(a, perm_heads)
            yield gguf.encode(a, gt)

        planned.append(PlannedTensor(gg, ne, "w", produce))

    for hf in ck.names():
        if hf in _GLOBAL_MAP:
            simple(hf, _GLOBAL_MAP[hf])
            continue
        if _IGNORED.search(hf):
            continue
        m = _EXPERT_RE.match(hf)
        if m and m.group(3) in _EXPERT_W:
            bid, xid, w = int(m.group(1)), int(m.group(2)), _EXPERT_W[m.group(3)]
            if not (0 <= bid < n_layer and 0 <= xid < n_expert):
                raise ConvertError(f"{hf}: layer or expert index out of range")
            experts.setdefault((bid, w), {})[xid] = hf
            continue
        m = _FUSED_RE.match(hf)
        if m:
            fused[(int(m.group(1)), m.group(2))] = hf
            continue
        m = _LAYER_RE.match(hf)
        if m and m.group(2) in _LAYER_MAP_D:
            bid = int(m.group(1))
            if not 0 <= bid < n_layer:
                raise ConvertError(f"{hf}: layer {bid} >= num_hidden_layers {n_layer}")
            simple(hf, f"blk.{bid}.{_LAYER_MAP_D[m.group(2)]}")
            continue
        unmapped.append(hf)
    if unmapped:
        raise ConvertError(f"cannot map {len(unmapped)} tensor(s), e.g. {unmapped[:5]}")

    # experts: one 3-D tensor per (layer, gate/up/down), ne = {in, out, n_expert};
    # streamed one expert at a time (expert e's matrix is the e-th slab)
    for (bid, w), by_x in sorted(experts.items()):
        missing = [x for x in range(n_expert) if x not in by_x]
        if missing:
            raise ConvertError(f"layer {bid} {w}: experts {missing[:8]} missing")
        shapes = {ck.shape(by_x[x]) for x in range(n_expert)}
        if len(shapes) != 1:
            raise ConvertError(f"layer {bid} {w}: experts of different shapes {shapes}")
        (shape,) = shapes

        def produce(gt, names=[by_x[x] for x in range(n_expert)]):
            for nm in names:
                yield gguf.encode(ck.f32(nm), gt)

        planned.append(PlannedTensor(f"blk.{bid}.ffn_{w}_exps.weight", [shape[1], shape[0], n_expert], "w", produce))

    # transformers v5 fused experts: gate_up_proj [E, 2*ff, d], down_proj [E, d, ff]
    d_model = cfg["hidden_size"]
    for (bid, kind), hf in sorted(fused.items()):
        shape = ck.shape(hf)
        if len(shape) != 3 or shape[0] != n_expert:
            raise ConvertError(f"{hf}: shape {shape}, expected [{n_expert}, ., .]")
        transpose = False
        if kind == "down_proj":
            if shape[1] != d_model:
                if shape[2] == d_model:
                    transpose = True
                else:
                    raise ConvertError(f"{hf}: shape {shape} has no dim {d_model}")
        elif shape[2] != d_model:
            if shape[1] == d_model:
                transpose = True
            else:
                raise ConvertError(f"{hf}: shape {shape} has no dim {d_model}")
        parts = ["gate", "up"] if kind == "gate_up_proj" else [_EXPERT_W[kind]]
        for pi, part in enumerate(parts):
            def produce(gt, hf=hf, pi=pi, n_parts=len(parts), transpose=transpose):
                for x in range(n_expert):  # one expert at a time from the map
                    m = ck.f32(hf, x)
                    m = m.T if transpose else m
                    rows = m.shape[0] // n_parts
                    yield gguf.encode(np.ascontiguousarray(m[pi * rows:(pi + 1) * rows]), gt)
            out_dim = (shape[2] if transpose else shape[1]) // len(parts)
            in_dim = shape[1] if transpose else shape[2]
            planned.append(PlannedTensor(f"blk.{bid}.ffn_{part}_exps.weight", [in_dim, out_dim, n_expert], "w", produce))

    names = {p.name for p in planned}
    for req in ("token_embd.weight", "output_norm.weight"):
        if req not in names:
            raise ConvertError(f"checkpoint has no tensor for {req}")
    if "output.weight" not in names:
        log.info("no lm_head: tied embeddings, 'output' omitted")
    for bid in range(n_layer):
        for part in ("gate", "up", "down"):
            if f"blk.{bid}.ffn_{part}_exps.weight" not in names:
                raise ConvertError(f"layer {bid}: no {part} expert weights")

    def order(p: PlannedTensor):
        m = re.match(r"blk\.(\d+)\.", p.name)
        return (0, 0, "") if p.name == "token_embd.weight" else (
            (1, int(m.group(1)), p.name) if m else (2, 0, p.name))

    planned.sort(key=order)
    return planned


def convert(dir_: Path, out: Path, outtype: str = "f16", vocab_only: bool = False,
            arch_override: str | None = None, name: str | None = None) -> None:
    cfg_path = dir_ / "config.json"
    cfg = _load_json(cfg_path) if cfg_path.is_file() else None
    if cfg is not None and "text_config" in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    arch = arch_override
    if arch is None and cfg is not None:
        hf_arch = (cfg.get("architectures") or [None])[0]
        arch = ARCHS.get(hf_arch)
        if arch is None and not vocab_only:
            raise ConvertError(f"architecture {hf_arch!r} not supported (supported: {', '.join(ARCHS)})")
    if not vocab_only:
        if cfg is None:
            raise ConvertError(f"{dir_}: no config.json (use --vocab-only for a tokenizer)")
        if np is None:
            raise ConvertError("converting weights needs numpy (pip install numpy)")
        _check_supported(arch, cfg)

    vocab: Vocab | None
    if vocab_only or has_tokenizer(dir_):
        vocab = load_vocab(dir_, cfg, arch)
    else:
        # moed: a checkpoint without tokenizer files (random-init test models)
        # converts to a file with tokenizer.ggml.model = "none" (llama.cpp's
        # LLAMA_VOCAB_TYPE_NONE) and <arch>.vocab_size; ids are used as they are.
        log.warning("%s: no tokenizer.json or tokenizer.model: writing tokenizer.ggml.model = 'none'", dir_)
        vocab = None
    if arch is None:
        arch = _PRE_DEFAULT_ARCH.get(vocab.pre or "", "llama")
    w = GGUFWriter(out)
    w.add_string("general.architecture", arch)
    w.add_string("general.name", name or dir_.resolve().name)
    ck = None
    if not vocab_only:
        set_model_params(w, arch, cfg, outtype)
        if vocab is None:
            if arch != "llama":  # llama writes it always (set_model_params)
                w.add_uint32(f"{arch}.vocab_size", cfg["vocab_size"])
        elif vocab.n_tokens != cfg["vocab_size"]:
            raise ConvertError(f"vocabulary has {vocab.n_tokens} tokens, config vocab_size {cfg['vocab_size']}")
        ck = Checkpoint(dir_)
    if vocab is None:
        w.add_string("tokenizer.ggml.model", "none")
    else:
        vocab.write_to(w)
    if ck is not None:
        for p in plan_tensors(ck, arch, cfg):
            gt = _tensor_type(p.name, p.ne, outtype)
            w.add_tensor(p.name, p.ne, gt, (lambda p=p, gt=gt: p.produce(gt)))
        emb = [p for p in w.tensors if p.name == "token_embd.weight"][0]
        if emb.ne[1] != cfg["vocab_size"]:
            raise ConvertError(f"token_embd has {emb.ne[1]} rows, vocab_size is {cfg['vocab_size']}")
    w.write()
    log.info("wrote %s: %d keys, %d tensors", out, len(w.kv), len(w.tensors))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert a Hugging Face MoE checkpoint (qwen3moe, qwen2moe, Mixtral, OLMoE) "
                    "or only its tokenizer to GGUF v3.")
    ap.add_argument("dir", type=Path, help="model or tokenizer directory")
    ap.add_argument("out", type=Path, help="output .gguf")
    ap.add_argument("--vocab-only", action="store_true", help="write only the tokenizer (stdlib only)")
    ap.add_argument("--outtype", choices=sorted(OUTTYPE), default="f16",
                    help="type of the weight matrices (norms, biases, routers stay f32); default f16")
    ap.add_argument("--arch", help="general.architecture to write (default: from config.json, "
                                   "or from the tokenizer family for --vocab-only)")
    ap.add_argument("--name", help="general.name (default: the directory's name)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hf2gguf: %(levelname)s: %(message)s")
    try:
        convert(args.dir, args.out, args.outtype, args.vocab_only, args.arch, args.name)
    except (ConvertError, gguf.GGUFError, OSError, KeyError, json.JSONDecodeError) as e:
        msg = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        print(f"hf2gguf: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
