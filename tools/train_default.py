#!/usr/bin/env python3
"""Train moed's default model: a small qwen3moe on Tiny Shakespeare, exported to GGUF.

One invocation does everything (a few minutes on one H100 at the default size;
the training loop is capped by --time-budget-s, 300 s by default):

  1. split the corpus: train = the first 90 % (by characters, cut just after the
     first newline at or after character floor(0.9 * len)), held-out = the rest;
  2. train a byte-level BPE vocabulary (Hugging Face `tokenizers`) on the train
     part: GPT-2's ByteLevel pre-tokenizer (its own regex, add_prefix_space=False),
     ByteLevel decoder, no normalizer, so that GGUF's tokenizer.ggml.pre = "gpt-2"
     reproduces it; special tokens <|endoftext|> (BOS/EOS/PAD), <|im_start|>,
     <|im_end|> (ChatML); a ChatML chat template;
  3. build a transformers Qwen3MoeForCausalLM (norm_topk_prob=True, the router's
     load-balancing loss as transformers computes it with output_router_logits)
     and train it (AdamW, warm-up + cosine, bf16 autocast on CUDA, fixed seed,
     residual dropout), logging train loss every --log-every steps and held-out
     loss every --eval-every steps; the weights with the best held-out loss are
     kept; when the held-out loss has not improved by 2e-3 for --patience
     evaluations the lr is annealed to its minimum over a short final stretch
     and training ends there; it also ends at --steps or --time-budget-s;
  4. save the Hugging Face checkpoint (+ tokenizer.json, tokenizer_config.json with
     the chat template) under --out-dir/hf, convert it with tools/hf2gguf.py to
     --model-dir/moed-shakespeare.gguf (F16 by default);
  5. read the GGUF back into a fresh transformers model and compute the held-out
     perplexity from the GGUF's weights, in float32, with transformers' own expert
     code (the figure `moed perplexity` must reproduce): --model-dir/heldout.json;
  6. check the tokenizer: HF round trip on the held-out text, transformers'
     AutoTokenizer == tokenizers, a pure-Python GPT-2 BPE over the GGUF's tokens and
     merges == HF's ids, and `bin/moed tokenize` == HF's ids when bin/moed exists;
  7. print greedy and sampled continuations of "ROMEO:" and a summary.

Files written to --model-dir (default model/default): moed-shakespeare.gguf,
train.log (everything printed), heldout.json, heldout.txt (the held-out text,
byte for byte).

Perplexity convention (heldout.json "convention": "nonoverlap-all-but-first"):
the held-out text is tokenized as ONE stream (no BOS, no special tokens);
n_windows = floor(n_tokens / W) non-overlapping windows of W tokens
(window k = ids[k*W : (k+1)*W], the tail is dropped), each evaluated on its own
from position 0 (no BOS, no earlier context); every token of a window except its
first is scored: tokens_scored = n_windows * (W - 1); nll = mean natural-log
negative log-likelihood; ppl = exp(nll).  heldout.json also carries llama.cpp's
convention ("llamacpp"): same windows, only the tokens at positions W/2+1 .. W-1
scored (W/2 - 1 per window; llama.cpp would put BOS first only when the vocabulary
asks for it, and this one does not).

Usage:
    python3 tools/train_default.py --corpus ../shared/corpus/tinyshakespeare.txt
    python3 tools/train_default.py --tiny --device cpu --out-dir /tmp/t --model-dir /tmp/t/model

Needs torch, transformers (5.x), tokenizers, safetensors, numpy (regex optional).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, the template llama.cpp and moed recognise as "chatml"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GGUF_NAME = "moed-shakespeare.gguf"

# Model and training sizes.  "full": the shipped model (F16 GGUF about 18.7 MB).
PRESETS = {
    "full": dict(
        vocab=2048, layers=6, d_model=256, heads=4, kv_heads=2, head_dim=64,
        experts=16, top_k=4, expert_ff=96, ctx=512,
        batch=16, steps=4000, lr=1e-3, min_lr_frac=0.1, warmup=100, wd=0.1, dropout=0.2,
        log_every=10, eval_every=50, patience=5, anneal_frac=0.25,
    ),
    # "cpu": a smaller model for when no GPU time is at hand (about 30 minutes on
    # two CPU cores); the shipped model records which preset made it.
    "cpu": dict(
        vocab=2048, layers=4, d_model=192, heads=3, kv_heads=1, head_dim=64,
        experts=8, top_k=2, expert_ff=128, ctx=256,
        batch=16, steps=600, lr=2e-3, min_lr_frac=0.1, warmup=30, wd=0.1, dropout=0.1,
        log_every=10, eval_every=50, patience=0, anneal_frac=0.25,
    ),
    "tiny": dict(
        vocab=320, layers=2, d_model=64, heads=2, kv_heads=1, head_dim=32,
        experts=4, top_k=2, expert_ff=32, ctx=64,
        batch=8, steps=30, lr=3e-3, min_lr_frac=0.1, warmup=5, wd=0.1, dropout=0.0,
        log_every=5, eval_every=10, patience=0, anneal_frac=0.25,
    ),
}


# ---------------------------------------------------------------------------
# logging


class Log:
    """print() to stdout and to the log file, flushed line by line."""

    def __init__(self) -> None:
        self.f = None
        self.buf: list[str] = []

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "w", encoding="utf-8")
        for line in self.buf:
            self.f.write(line + "\n")
        self.buf = []
        self.f.flush()

    def __call__(self, *a) -> None:
        line = " ".join(str(x) for x in a)
        print(line, flush=True)
        if self.f is not None:
            self.f.write(line + "\n")
            self.f.flush()
        else:
            self.buf.append(line)


log = Log()


# ---------------------------------------------------------------------------
# data


def split_corpus(text: str, frac: float = 0.9) -> tuple[str, str, int]:
    """train = text[:cut], held-out = text[cut:], cut = just past the first '\\n'
    at or after character floor(frac * len(text))."""
    nl = text.find("\n", int(len(text) * frac))
    cut = len(text) if nl < 0 else nl + 1
    return text[:cut], text[cut:], cut


def train_tokenizer(train_text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())  # no unk: byte-level covers every byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()  # decoding is the byte map alone
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([train_text], trainer)
    return tok


def write_tokenizer_files(tok, dir_: Path, ctx: int) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    tok.save(str(dir_ / "tokenizer.json"))
    added = {
        str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False, "special": True}
        for s in SPECIALS
    }
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(dir_ / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------
# model


def build_config(p: dict, vocab_size: int, eos_id: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=p["d_model"],
        intermediate_size=p["expert_ff"] * p["top_k"],  # unused (no dense layers)
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        head_dim=p["head_dim"],
        hidden_act="silu",
        max_position_embeddings=p["ctx"],
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        attention_dropout=0.0,
        decoder_sparse_step=1,
        moe_intermediate_size=p["expert_ff"],
        num_experts_per_tok=p["top_k"],
        num_experts=p["experts"],
        norm_topk_prob=True,
        output_router_logits=False,
        router_aux_loss_coef=0.01,
        mlp_only_layers=[],
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=None,  # no padding_idx row in the embedding
    )


def _dense_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """Same math as transformers' Qwen3MoeExperts (gate_up_proj [E, 2f, d],
    down_proj [E, d, f], out = sum_k w_k * down_k(silu(gate_k x) * up_k x)) as two
    dense GEMMs over all experts, non-selected experts weighted 0: no per-expert
    loop, no host sync; 16/4 times the expert FLOPs, which is cheap at this size."""
    import torch

    E, f2, d = self.gate_up_proj.shape
    f = f2 // 2
    T = hidden_states.shape[0]
    w = torch.zeros(T, E, dtype=top_k_weights.dtype, device=hidden_states.device)
    w = w.scatter(1, top_k_index, top_k_weights)
    gu = torch.nn.functional.linear(hidden_states, self.gate_up_proj.reshape(E * f2, d)).view(T, E, f2)
    h = self.act_fn(gu[..., :f]) * gu[..., f:] * w.unsqueeze(-1).to(gu.dtype)
    wd = self.down_proj.permute(1, 0, 2).reshape(d, E * f)
    out = torch.nn.functional.linear(h.reshape(T, E * f), wd)
    return out.to(hidden_states.dtype)


def set_experts_mode(model, mode: str) -> None:
    """'dense': the function above (training); 'hf': transformers' own eager loop."""
    import types

    for layer in model.model.layers:
        ex = layer.mlp.experts
        if mode == "dense":
            ex.forward = types.MethodType(_dense_experts_forward, ex)
        else:
            ex.__dict__.pop("forward", None)
    if mode == "hf":
        if hasattr(model, "set_experts_implementation"):
            model.set_experts_implementation("eager")
        else:
            model.config._experts_implementation = "eager"


def add_dropout_hooks(model, p: float) -> list:
    """Residual dropout on each attention and MoE branch output (training only:
    F.dropout is the identity in eval mode).  Not part of the architecture."""
    import torch.nn.functional as F

    hooks = []
    if p <= 0:
        return hooks

    def attn_hook(m, args, out):
        return (F.dropout(out[0], p, m.training),) + tuple(out[1:])

    def mlp_hook(m, args, out):
        return F.dropout(out, p, m.training)

    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_hook(attn_hook))
        hooks.append(layer.mlp.register_forward_hook(mlp_hook))
    return hooks


def count_params(model) -> dict:
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    n_exp = sum(p.numel() for nm, p in model.named_parameters() if ".experts." in nm)
    n_emb = model.model.embed_tokens.weight.numel()
    active = n - n_exp + n_exp * k // E
    return {"total": n, "experts": n_exp, "active_per_token": active, "embedding": n_emb}


def flops_per_token(cfg, ctx: int, dense_experts: bool) -> float:
    """Training FLOPs per token (6 * matmul params touched + attention), the
    embedding lookup excluded; dense_experts counts all experts."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    hd = cfg.head_dim
    attn_w = d * hd * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2)
    E = cfg.num_experts if dense_experts else cfg.num_experts_per_tok
    moe_w = E * 3 * d * cfg.moe_intermediate_size + d * cfg.num_experts
    head = d * cfg.vocab_size
    # attention scores: QK^T and AV, 2 FLOPs per multiply-add, causal (half the
    # ctx x ctx square), times 3 for forward + backward
    attn_scores = 3 * 2 * 2 * (ctx / 2) * cfg.num_attention_heads * hd
    return 6.0 * (L * (attn_w + moe_w) + head) + L * attn_scores


# ---------------------------------------------------------------------------
# evaluation


def window_nll(model, ids, W: int, device, amp: bool, batch: int = 0) -> dict:
    """Sum of -log p over the convention's scored tokens (see the module doc):
    'all' = every token but each window's first, 'half' = llama.cpp's second half."""
    import torch

    n_win = len(ids) // W
    batch = batch or max(1, 16384 // W)
    if n_win == 0:
        raise SystemExit(f"held-out text has {len(ids)} tokens, fewer than one window of {W}")
    data = torch.tensor(ids[: n_win * W], dtype=torch.long).view(n_win, W)
    tot_all = tot_half = 0.0
    first = W // 2
    was_training = model.training
    model.eval()
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with torch.no_grad():
        for i in range(0, n_win, batch):
            x = data[i:i + batch].to(device)
            with ac:
                logits = model(input_ids=x, use_cache=False).logits
            lp = torch.log_softmax(logits.float()[:, :-1], dim=-1)
            nll = -lp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).double()  # [b, W-1]
            tot_all += nll.sum().item()
            tot_half += nll[:, first:].sum().item()  # predicts positions first+1 .. W-1
    if was_training:
        model.train()
    n_all = n_win * (W - 1)
    n_half = n_win * (W - 1 - first)
    return {"n_windows": n_win, "n_all": n_all, "nll_all": tot_all / n_all,
            "n_half": n_half, "nll_half": tot_half / n_half}


# ---------------------------------------------------------------------------
# GGUF read-back


def load_gguf_into_hf(model, path: Path) -> int:
    """Copy the GGUF's tensors into a qwen3moe transformers model (the inverse of
    hf2gguf's mapping); every parameter must be set.  Returns tensors read."""
    import numpy as np
    import torch

    sys.path.insert(0, str(TOOLS))
    import gguf

    r = gguf.GGUFReader(str(path))
    params = dict(model.named_parameters())
    done: set[str] = set()

    def arr(name: str):
        t = r.tensor(name)
        if t.ggml_type == gguf.GGMLType.Q8_0:
            a = gguf.decode_q8_0(r.tensor_bytes(t), t.ne[0])
            return np.asarray(a, dtype=np.float32).reshape(tuple(reversed(t.ne)))
        return np.asarray(r.tensor_array(t), dtype=np.float32)

    def put(hf: str, a) -> None:
        p = params[hf]
        a = torch.from_numpy(np.array(a, dtype=np.float32))  # a writable copy
        if tuple(a.shape) != tuple(p.shape):
            raise SystemExit(f"GGUF read-back: {hf}: shape {tuple(a.shape)} != {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(a.to(p.dtype))
        done.add(hf)

    put("model.embed_tokens.weight", arr("token_embd.weight"))
    put("model.norm.weight", arr("output_norm.weight"))
    if "lm_head.weight" in params and not model.config.tie_word_embeddings:
        put("lm_head.weight", arr("output.weight"))
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm", "ffn_gate_inp": "mlp.gate",
    }
    for i in range(model.config.num_hidden_layers):
        for g, h in names.items():
            put(f"model.layers.{i}.{h}.weight", arr(f"blk.{i}.{g}.weight"))
        gate, up = arr(f"blk.{i}.ffn_gate_exps.weight"), arr(f"blk.{i}.ffn_up_exps.weight")
        put(f"model.layers.{i}.mlp.experts.gate_up_proj", np.concatenate([gate, up], axis=1))
        put(f"model.layers.{i}.mlp.experts.down_proj", arr(f"blk.{i}.ffn_down_exps.weight"))
    missing = sorted(set(params) - done)
    if missing:
        raise SystemExit(f"GGUF read-back: parameters not in the GGUF: {missing[:5]}")
    return len(r.tensors)


def gguf_vocab(path: Path):
    sys.path.insert(0, str(TOOLS))
    import gguf

    r = gguf.GGUFReader(str(path))
    return r.get("tokenizer.ggml.tokens"), r.get("tokenizer.ggml.merges"), r.get("tokenizer.ggml.pre")


def gpt2_bpe_encode(tokens, merges, text: str):
    """GPT-2 byte-level BPE (the algorithm tokenizer.ggml.pre = gpt-2 names):
    regex split, bytes -> printable byte characters, merges by rank.  None
    when the `regex` module is missing."""
    try:
        import regex
    except ImportError:
        return None
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    benc = {b: chr(c) for b, c in zip(bs, cs)}
    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
    vocab = {t: i for i, t in enumerate(tokens)}
    cache: dict[str, list[int]] = {}
    out: list[int] = []
    for word in pat.findall(text):
        ids = cache.get(word)
        if ids is None:
            parts = [benc[b] for b in word.encode("utf-8")]
            while len(parts) > 1:
                best = min(range(len(parts) - 1),
                           key=lambda j: ranks.get((parts[j], parts[j + 1]), 1 << 30))
                if (parts[best], parts[best + 1]) not in ranks:
                    break
                parts[best:best + 2] = [parts[best] + parts[best + 1]]
            ids = cache[word] = [vocab[p] for p in parts]
        out.extend(ids)
    return out


def moed_tokenize(moed: Path, gguf_path: Path, text: str):
    r = subprocess.run([str(moed), "tokenize", "-m", str(gguf_path)], input=text.encode("utf-8"),
                       capture_output=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"moed tokenize: rc {r.returncode}: {r.stderr.decode(errors='replace')[-300:]}")
    return [int(x) for x in r.stdout.split()]


# ---------------------------------------------------------------------------
# main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "tinyshakespeare.txt")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "build" / "train-default",
                    help="work directory: the Hugging Face checkpoint goes to OUT_DIR/hf")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "model" / "default",
                    help=f"where {GGUF_NAME}, train.log, heldout.json, heldout.txt go")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (smoke test, seconds on a CPU)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="model and training sizes (default full; --tiny is --preset tiny)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, help="optimizer steps (cosine schedule length)")
    ap.add_argument("--time-budget-s", type=float, default=300.0,
                    help="stop training when the loop has run this long (export still runs); "
                         "the schedule is shortened early on if the measured step time says it will not fit")
    ap.add_argument("--batch", type=int, help="sequences per step")
    ap.add_argument("--ctx", type=int, help="sequence length = perplexity window")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--log-every", type=int)
    ap.add_argument("--patience", type=int,
                    help="evaluations without a held-out improvement of 2e-3 after which the learning "
                         "rate is annealed to its minimum over max(2 evals, 25%% of the steps so far) "
                         "and training ends (0: never; the full cosine runs)")
    ap.add_argument("--vocab", type=int, help="vocabulary size incl. special tokens")
    ap.add_argument("--outtype", choices=["f16", "q8_0", "f32", "bf16"], default="f16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training model")
    ap.add_argument("--experts", choices=["dense", "hf"], default="dense",
                    help="expert code for training: dense GEMMs (default) or transformers' loop")
    ap.add_argument("--no-samples", action="store_true")
    ap.add_argument("--moed", type=Path, default=ROOT / "bin" / "moed",
                    help="moed binary for the tokenizer check (skipped when absent)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    t_start = time.time()
    args = parse_args(argv)
    preset = args.preset or ("tiny" if args.tiny else "full")
    P = dict(PRESETS[preset])
    for k in ("steps", "batch", "ctx", "lr", "dropout", "eval_every", "log_every", "patience", "vocab"):
        v = getattr(args, k)
        if v is not None:
            P[k] = v

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    import transformers
    import tokenizers
    from transformers import AutoTokenizer, Qwen3MoeForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    model_dir, out_dir = args.model_dir, args.out_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.open(model_dir / "train.log")
    try:
        rel = os.path.relpath(Path(sys.argv[0]).resolve(), Path.cwd())
    except ValueError:
        rel = sys.argv[0]
    cmd = " ".join(shlex.quote(a) for a in ["python3", rel] + (sys.argv[1:] if argv is None else list(argv)))
    log(f"command: {cmd}")
    log(f"versions: python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}")
    dname = torch.cuda.get_device_name(dev) if cuda else "cpu"
    log(f"device: {dev} ({dname}); seed {args.seed}; preset {preset}: "
        + json.dumps(P, sort_keys=True))

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    # 1. data + tokenizer ----------------------------------------------------
    raw = args.corpus.read_bytes()
    text = raw.decode("utf-8")
    train_text, held_text, cut = split_corpus(text)
    log(f"corpus: {args.corpus} ({len(raw)} bytes, {len(text)} chars, sha256 "
        f"{hashlib.sha256(raw).hexdigest()[:16]}); split at char {cut}: train {len(train_text)} chars, "
        f"held-out {len(held_text)} chars")
    t0 = time.time()
    tok = train_tokenizer(train_text, P["vocab"])
    V = tok.get_vocab_size()
    eos_id = tok.token_to_id("<|endoftext|>")
    train_ids = tok.encode(train_text).ids
    held_ids = tok.encode(held_text).ids
    log(f"tokenizer: {V} tokens (specials {[tok.token_to_id(s) for s in SPECIALS]}), trained in "
        f"{time.time() - t0:.1f} s (tokenizer.json sha256 {hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]}); train {len(train_ids)} tokens ({len(train_text) / len(train_ids):.2f} "
        f"chars/token), held-out {len(held_ids)} tokens")
    if tok.decode(held_ids, skip_special_tokens=False) != held_text:
        raise SystemExit("tokenizer round trip FAILED on the held-out text")
    log("tokenizer round trip on the held-out text: OK")
    hf_dir = out_dir / "hf"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    write_tokenizer_files(tok, hf_dir, P["ctx"])

    # 2. model ---------------------------------------------------------------
    W = P["ctx"]
    cfg = build_config(P, V, eos_id)
    model = Qwen3MoeForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model.to(dev)
    pc = count_params(model)
    log(f"model: qwen3moe {P['layers']} layers, d_model {P['d_model']}, heads {P['heads']}/{P['kv_heads']} x "
        f"{P['head_dim']}, {P['experts']} experts top-{P['top_k']} ff {P['expert_ff']}, vocab {V}, ctx {W}; "
        f"params {pc['total']:,} (experts {pc['experts']:,}, active/token {pc['active_per_token']:,})")

    # dense experts == transformers' loop (fp32, a few tokens)
    model.eval()
    with torch.no_grad():
        x = torch.tensor([train_ids[:min(W, 64)]], device=dev)
        set_experts_mode(model, "hf")
        ref = model(input_ids=x).logits.float()
        set_experts_mode(model, args.experts)
        got = model(input_ids=x).logits.float()
    diff = (ref - got).abs().max().item()
    log(f"expert code check ({args.experts} vs transformers' loop, fp32): max |dlogit| {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit("dense experts disagree with transformers")

    # 3. training --------------------------------------------------------------
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    hooks = add_dropout_hooks(model, P["dropout"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt_kw = dict(lr=P["lr"], betas=(0.9, 0.99), eps=1e-8)
    if cuda:
        opt_kw["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": P["wd"]},
                             {"params": no_decay, "weight_decay": 0.0}], **opt_kw)
    fwd = torch.compile(model) if args.compile else model
    data = torch.tensor(train_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(args.seed)
    B = P["batch"]
    train_sample = train_ids[: 64 * W]  # a fixed train sample, scored like the held-out text
    min_lr = P["lr"] * P["min_lr_frac"]
    # schedule: linear warm-up, then cosine from (s0, lr0) to min_lr at step `steps`;
    # a plateau of the held-out loss restarts the cosine from the current step and
    # lr over a short anneal (see --patience)
    sched = {"s0": P["warmup"], "lr0": P["lr"], "end": P["steps"], "annealing": False}

    def lr_at(s: int) -> float:
        if s < P["warmup"]:
            return P["lr"] * (s + 1) / P["warmup"]
        prog = min(1.0, max(0.0, (s - sched["s0"]) / max(1, sched["end"] - sched["s0"])))
        return min_lr + 0.5 * (sched["lr0"] - min_lr) * (1 + math.cos(math.pi * prog))

    def batch():
        ix = torch.randint(0, len(data) - W + 1, (B,), generator=gen)
        x = torch.stack([data[i:i + W] for i in ix.tolist()])
        return x.pin_memory().to(dev, non_blocking=True) if cuda else x

    def snapshot():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    fpt = flops_per_token(cfg, W, args.experts == "dense")
    log(f"training: up to {P['steps']} steps x {B} x {W} tokens = {P['steps'] * B * W / len(train_ids):.1f} "
        f"epochs of {len(train_ids)} tokens; ~{fpt * B * W / 1e12:.3f} TFLOP/step ({fpt / 1e6:.1f} MFLOP/token); "
        f"AdamW lr {P['lr']} warmup {P['warmup']} cosine to {min_lr:.2g}, betas (0.9, 0.99), wd {P['wd']}, "
        f"clip 1.0, dropout {P['dropout']}, router aux coef {cfg.router_aux_loss_coef}; held-out eval every "
        f"{P['eval_every']} steps, plateau patience {P['patience']}")
    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    best = {"loss": float("inf"), "step": -1, "state": None}
    plateau_ref = float("inf")
    since_best = 0
    history = []
    acc_ce = torch.zeros((), device=dev)
    acc_aux = torch.zeros((), device=dev)
    acc_n = 0
    t_train = time.time()
    t_fit = None
    ev_time = [0.0, 0]  # seconds in evaluations, evaluations
    stop_reason = "end of schedule"
    model.train()
    step = 0
    tokens_seen = 0
    while True:
        last = step >= sched["end"]
        over = time.time() - t_train > args.time_budget_s
        if step % P["eval_every"] == 0 or last or over:
            te = time.time()
            ev = window_nll(model, held_ids, W, dev, cuda)
            evt = window_nll(model, train_sample, W, dev, cuda)
            ev_time[0] += time.time() - te
            ev_time[1] += 1
            el = time.time() - t_train
            improved = ev["nll_all"] < best["loss"]
            if improved:
                best = {"loss": ev["nll_all"], "step": step, "state": snapshot()}
            if ev["nll_all"] < plateau_ref - 2e-3:
                plateau_ref, since_best = ev["nll_all"], 0
            else:
                since_best += 1
            history.append({"step": step, "heldout": ev["nll_all"], "train_sample": evt["nll_all"], "t": el})
            log(f"eval step {step:5d}  held-out {ev['nll_all']:.4f} (ppl {math.exp(ev['nll_all']):7.2f})  "
                f"train-sample {evt['nll_all']:.4f}  lr {lr_at(step):.2e}  {'*best*' if improved else ''}"
                f"  [{el:.0f} s]")
            if last:
                break
            if over:
                stop_reason = f"time budget {args.time_budget_s:.0f} s"
                break
            if P["patience"] and since_best >= P["patience"] and not sched["annealing"]:
                n = max(2 * P["eval_every"], int(P["anneal_frac"] * step))
                n = min(n, sched["end"] - step)
                sched.update(s0=step, lr0=lr_at(step), end=step + n, annealing=True)
                log(f"held-out loss has not improved by 2e-3 for {since_best} evaluations: annealing "
                    f"lr {sched['lr0']:.2e} -> {min_lr:.2e} over {n} steps (to step {sched['end']})")
                stop_reason = "plateau, then anneal"
        for g in opt.param_groups:
            g["lr"] = lr = lr_at(step)
        x = batch()
        with amp():
            out = fwd(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
        loss = out.loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += x.numel()
        aux = out.aux_loss.detach().float()
        acc_ce += loss.detach().float() - cfg.router_aux_loss_coef * aux
        acc_aux += aux
        acc_n += 1
        if step == 10:
            if cuda:
                torch.cuda.synchronize()
            t_fit, ev_fit = time.time(), ev_time[0]
        if step == 60 and t_fit is not None:
            # fit the schedule into the time budget from the measured step and eval times
            if cuda:
                torch.cuda.synchronize()
            per = (time.time() - t_fit - (ev_time[0] - ev_fit)) / 50
            per_ev = ev_time[0] / max(1, ev_time[1])
            left = args.time_budget_s - (time.time() - t_train)

            def need(end: int) -> float:
                return (end - step) * per + ((end - step) / P["eval_every"] + 1) * per_ev

            if need(sched["end"]) > left * 0.95:
                new = step
                while need(new + 1) <= left * 0.95:
                    new += 1
                log(f"step time {per * 1e3:.1f} ms, evaluation {per_ev:.2f} s: {sched['end']} steps do not "
                    f"fit {args.time_budget_s:.0f} s; schedule shortened to {new} steps")
                sched["end"] = new
            else:
                log(f"step time {per * 1e3:.1f} ms ({B * W / per / 1e3:.0f}k tok/s, "
                    f"{fpt * B * W / per / 1e12:.2f} TFLOP/s), evaluation {per_ev:.2f} s: {sched['end']} "
                    f"steps would take about {need(sched['end']) + time.time() - t_train:.0f} s")
        if step % P["log_every"] == 0:
            el = time.time() - t_train
            log(f"step {step:5d}/{sched['end']}  lr {lr:.2e}  train {acc_ce.item() / acc_n:.4f}  "
                f"aux {acc_aux.item() / acc_n:.3f}  gnorm {gn.item():.2f}  "
                f"{tokens_seen / el / 1e3:.0f}k tok/s  [{el:.0f} s]")
            acc_ce.zero_()
            acc_aux.zero_()
            acc_n = 0
    train_s = time.time() - t_train
    log(f"training stopped after {step} steps ({stop_reason}), {train_s:.0f} s, "
        f"{tokens_seen / len(train_ids):.1f} epochs; best held-out {best['loss']:.4f} at step {best['step']}")
    for h in hooks:
        h.remove()
    model.load_state_dict(best["state"])
    del best["state"], opt, fwd
    model.eval()

    # 4. export ------------------------------------------------------------------
    model.config.output_router_logits = False
    model.save_pretrained(str(hf_dir))
    write_tokenizer_files(tok, hf_dir, W)  # again: save_pretrained must not have replaced them
    gguf_path = model_dir / GGUF_NAME
    conv = [sys.executable, str(TOOLS / "hf2gguf.py"), "--outtype", args.outtype,
            "--name", "moed-shakespeare", str(hf_dir), str(gguf_path)]
    t0 = time.time()
    r = subprocess.run(conv, capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stdout + r.stderr)
        raise SystemExit("hf2gguf failed")
    if r.stderr.strip():
        log(r.stderr.strip())
    gsize = gguf_path.stat().st_size
    gsha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    log(f"wrote {gguf_path} ({gsize:,} bytes, {gsize / 1e6:.2f} MB, {args.outtype}) in {time.time() - t0:.1f} s")
    (model_dir / "heldout.txt").write_bytes(held_text.encode("utf-8"))

    # 5. held-out perplexity from the GGUF's own weights -----------------------
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ev_train = window_nll(model, held_ids, W, dev, False)  # fp32, checkpoint weights
    ref_model = Qwen3MoeForCausalLM(cfg)
    ref_model.config._attn_implementation = "sdpa"
    n_t = load_gguf_into_hf(ref_model, gguf_path)
    ref_model.to(dev).eval()
    set_experts_mode(ref_model, "hf")
    with torch.no_grad():
        wdiff = max((a.float() - b.float().to(a.device)).abs().max().item()
                    for (_, a), (_, b) in zip(sorted(model.state_dict().items()),
                                              sorted(ref_model.state_dict().items())))
    ev = window_nll(ref_model, held_ids, W, dev, False)
    log(f"GGUF read back ({n_t} tensors; max |w_gguf - w_trained| {wdiff:.2e}); held-out, fp32, "
        f"transformers' expert loop: nll {ev['nll_all']:.5f} ppl {math.exp(ev['nll_all']):.4f} "
        f"(checkpoint weights: nll {ev_train['nll_all']:.5f})")
    held = {
        "window": W,
        "n_windows": ev["n_windows"],
        "tokens_scored": ev["n_all"],
        "nll": round(ev["nll_all"], 6),
        "ppl": round(math.exp(ev["nll_all"]), 4),
        "convention": "nonoverlap-all-but-first",
        "convention_text": (
            "held-out text tokenized as one stream, no BOS, no special tokens; "
            "n_windows = floor(n_tokens / window) non-overlapping windows ids[k*W:(k+1)*W] "
            "(tail dropped), each evaluated alone from position 0; all tokens but each window's "
            "first are scored; nll = mean natural-log NLL, ppl = exp(nll)"),
        "llamacpp": {
            "tokens_scored": ev["n_half"], "nll": round(ev["nll_half"], 6),
            "ppl": round(math.exp(ev["nll_half"]), 4),
            "convention": "same windows; only positions W/2+1 .. W-1 scored (llama.cpp perplexity, no BOS)",
        },
        "n_tokens": len(held_ids),
        "heldout_file": "heldout.txt",
        "heldout_chars": len(held_text),
        "heldout_sha256": hashlib.sha256(held_text.encode("utf-8")).hexdigest(),
        "split": f"corpus chars [{cut}:], cut just past the first newline at or after floor(0.9*len)",
        "corpus_sha256": hashlib.sha256(raw).hexdigest(),
        "weights": f"read back from {GGUF_NAME} ({args.outtype}), evaluated in float32 by transformers "
                   f"{transformers.__version__} (eager experts, sdpa attention) on {dname}",
        "nll_checkpoint_weights": round(ev_train["nll_all"], 6),
        "gguf_sha256": gsha,
        "best_step": best["step"],
        "seed": args.seed,
        "command": cmd,
    }
    with open(model_dir / "heldout.json", "w", encoding="utf-8") as f:
        json.dump(held, f, indent=2)
        f.write("\n")
    log(f"wrote {model_dir / 'heldout.json'}")

    # 6. tokenizer checks ------------------------------------------------------
    hft = AutoTokenizer.from_pretrained(str(hf_dir))
    a_ids = hft(held_text, add_special_tokens=True)["input_ids"]
    if list(a_ids) != held_ids:
        raise SystemExit("AutoTokenizer ids differ from tokenizers' ids on the held-out text")
    chat = hft.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    log(f"AutoTokenizer == tokenizers on the held-out text; chat template renders {chat!r}")
    toks, merges, pre = gguf_vocab(gguf_path)
    if pre != "gpt-2":
        raise SystemExit(f"GGUF tokenizer.ggml.pre is {pre!r}, expected 'gpt-2'")
    py_ids = gpt2_bpe_encode(toks, merges, held_text)
    if py_ids is None:
        log("pure-Python GPT-2 BPE check skipped (no regex module)")
    elif py_ids != held_ids:
        n = next((i for i, (a, b) in enumerate(zip(py_ids, held_ids)) if a != b), min(len(py_ids), len(held_ids)))
        raise SystemExit(f"GPT-2 BPE over the GGUF vocabulary differs from HF at token {n}")
    else:
        log(f"pure-Python GPT-2 BPE over the GGUF's tokens+merges == HF ids ({len(py_ids)} tokens)")
    if args.moed.is_file() and os.access(args.moed, os.X_OK):
        try:
            m_ids = moed_tokenize(args.moed, gguf_path, held_text)
            if m_ids != held_ids:
                n = next((i for i, (a, b) in enumerate(zip(m_ids, held_ids)) if a != b),
                         min(len(m_ids), len(held_ids)))
                log(f"WARNING: moed tokenize differs from HF at token {n} ({len(m_ids)} vs {len(held_ids)} ids)")
            else:
                log(f"moed tokenize == HF ids on the held-out text ({len(m_ids)} tokens)")
        except Exception as e:  # noqa: BLE001 - a check, not the product
            log(f"moed tokenize check not run: {e}")
    else:
        log(f"moed tokenize check skipped: no {args.moed}")

    # 7. samples ------------------------------------------------------------------
    if not args.no_samples:
        for prompt in ("ROMEO:", "First Citizen:\n"):
            x = torch.tensor([tok.encode(prompt).ids], device=dev)
            n_new = 24 if args.tiny else 120
            with torch.no_grad():
                g = ref_model.generate(x, max_new_tokens=n_new, do_sample=False, pad_token_id=eos_id)
                torch.manual_seed(args.seed)
                s = ref_model.generate(x, max_new_tokens=n_new, do_sample=True, temperature=0.8,
                                       top_k=40, pad_token_id=eos_id)
            log(f"--- greedy, prompt {prompt!r}:\n{tok.decode(g[0].tolist())}")
            log(f"--- temperature 0.8 top-k 40, prompt {prompt!r}:\n{tok.decode(s[0].tolist())}")

    log("=" * 72)
    hb = next((h for h in history if h["step"] == best["step"]), history[-1])
    log(f"summary: params {pc['total']:,} ({pc['active_per_token']:,} active/token); GGUF {gsize / 1e6:.2f} MB "
        f"({args.outtype}); {step} steps in {train_s:.0f} s on {dname}; best step {best['step']}; "
        f"train-sample loss {hb['train_sample']:.4f}; held-out nll {held['nll']:.4f} "
        f"ppl {held['ppl']:.3f} (W={W}, {held['tokens_scored']} tokens); wall {time.time() - t_start:.0f} s")
    log(f"GGUF sha256 {gsha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
