#!/bin/bash
# The GPU machine's one call for the CUDA engine (issue 6): build with CUDA
# for sm_90, run the GPU tests (make test-gpu: the cuda_* unit tests, then
# under compute-sanitizer), write the reference-shape model with
# moed-mkmodel and run `moed bench` on it with everything on the GPU.
# Logs go to $OUT; a short table is printed last.
#
#   device run: bash tools/gpu-test.sh        (carry: .deb; see ../shared/DEVICE.md)
#   TESTS=0 skips the tests, BENCH=0 the benchmark; BENCH_ARGS adds flags.
set -u -o pipefail
OUT=${OUT:-/tmp/moed-out}
mkdir -p "$OUT"
DEPS=/opt/deps
mkdir -p "$DEPS"
for f in .deb/*.deb; do dpkg -x "$f" "$DEPS"; done
J=$(nproc)
echo "== machine"
{ lscpu | grep -E 'Model name|^CPU\(s\)'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee "$OUT/machine.txt"
echo "== build"
t0=$(date +%s)
if ! make -j"$J" DEPS="$DEPS" all >"$OUT/build.log" 2>&1; then
    grep -E 'error|Error' "$OUT/build.log" | head -40
    exit 1
fi
echo "built in $(( $(date +%s) - t0 )) s"
bin/moed version | tee "$OUT/version.txt"
status=0
if [ "${TESTS:-1}" = 1 ]; then
    echo "== make test-gpu"
    if ! make DEPS="$DEPS" SHARED=.shared test-gpu >"$OUT/test-gpu.log" 2>&1; then status=1; fi
    grep -vE '^ok ' "$OUT/test-gpu.log" | tail -80
fi
if [ "${BENCH:-1}" = 1 ]; then
    echo "== reference shape"
    REF=/dev/shm/ref.gguf
    bin/moed-mkmodel --preset qwen3-30b-a3b -o "$REF" --threads "$J" 2>&1 | tail -3
    echo "== moed bench (GPU)"
    # shellcheck disable=SC2086
    bin/moed bench -m "$REF" --gpu 0 -p 512 -n 64 -r 3 ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-gpu.txt"
    echo "== moed bench (GPU, no CUDA graph)"
    bin/moed bench -m "$REF" --gpu 0 -p 512 -n 32 -r 2 --no-graph 2>&1 | tee "$OUT/bench-gpu-nograph.txt"
fi
exit $status
