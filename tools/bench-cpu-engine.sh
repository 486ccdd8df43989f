#!/bin/bash
# CPU engine benchmark for the reference shape (DESIGN.md: Qwen3-30B-A3B,
# experts Q4_K, attention/embeddings/output Q8_0): writes the random-weight
# model with moed-mkmodel if it is missing, then times decode (short prompt,
# greedy, N tokens) and prefill (a P-token prompt: the built-in byte-level
# tokenizer makes one token per byte) with `moed run --profile`.
#
#   tools/bench-cpu-engine.sh [MODEL] [THREADS]      (after `make`)
set -u -o pipefail
MODEL=${1:-/tmp/qwen3-30b-a3b.gguf}
THREADS=${2:-$(nproc)}
N=${N:-64}
P=${P:-512}
[ -f "$MODEL" ] || bin/moed-mkmodel --preset qwen3-30b-a3b -o "$MODEL" --threads "$THREADS" || exit 1
echo "== decode: $N tokens after a short prompt, $THREADS threads"
bin/moed run -m "$MODEL" -p "The quick brown fox" -n "$N" --temp 0 --threads "$THREADS" --profile >/dev/null
prompt=$(head -c 100000 /dev/urandom | base64 -w0 | head -c "$P")
echo "== prefill: $P-token prompt, $THREADS threads"
bin/moed run -m "$MODEL" -p "$prompt" -n 1 --temp 0 --threads "$THREADS" --batch "$P" --profile >/dev/null
