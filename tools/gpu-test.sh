#!/bin/bash
# The GPU machine's one call for the CUDA engine (issue 6): build with CUDA
# for sm_90, write the reference-shape model with moed-mkmodel and run
# `moed bench` on it with everything on the GPU, then the GPU tests (the
# cuda_* unit tests, as make test-gpu does) and the same under
# compute-sanitizer memcheck.
# Logs go to $OUT; a short table is printed last.
#
#   device run: bash tools/gpu-test.sh        (carry: .deb; see ../shared/DEVICE.md)
#   TESTS=0 skips the tests, BENCH=0 the benchmark, CALIB=0 moed calibrate; BENCH_ARGS adds flags;
#   SAN_TESTS picks the tests run under memcheck (default cuda_), SAN_SECONDS bounds it.
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
# the benchmark first (a few minutes of device time are precious), then the
# tests, then the same under compute-sanitizer (bounded by SAN_SECONDS)
REF=/dev/shm/ref.gguf
if [ "${BENCH:-1}" = 1 ] || [ "${CALIB:-1}" = 1 ]; then
    echo "== reference shape"
    bin/moed-mkmodel --preset qwen3-30b-a3b -o "$REF" --threads "$J" 2>&1 | tail -3
fi
if [ "${CALIB:-1}" = 1 ]; then
    echo "== moed calibrate (GPU 0, $J threads)"
    timeout 180 bin/moed calibrate -m "$REF" --gpu 0 --threads "$J" -o "$OUT/cost-gpu0.txt" 2>&1 | tee "$OUT/calibrate.txt" | tail -40
    bin/moed calibrate --show "$OUT/cost-gpu0.txt" 2>&1 | tail -20
fi
if [ "${BENCH:-1}" = 1 ]; then
    echo "== moed bench (GPU)"
    # shellcheck disable=SC2086
    bin/moed bench -m "$REF" --gpu 0 -p 512,2048 -n 64 -r 3 ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-gpu.txt"
    echo "== moed bench (GPU, no CUDA graph)"
    bin/moed bench -m "$REF" --gpu 0 -p 0 -n 32 -r 2 --no-graph 2>&1 | tail -4 | tee "$OUT/bench-gpu-nograph.txt"
fi
rm -f "$REF"
if [ "${TESTS:-1}" = 1 ]; then
    echo "== GPU tests"
    # the models the tests write go to tmpfs: registering (cudaHostRegister) a
    # mapping of a file just written on this machine's ext4 root hung there
    export MOED_TEST_TMP=${MOED_TEST_TMP:-/dev/shm/moed-test}
    mkdir -p "$MOED_TEST_TMP"
    MOED_SHARED=.shared bin/moed-tests cuda_ gpu_slots >"$OUT/test-gpu.log" 2>&1 || status=1
    grep -vE '^ok ' "$OUT/test-gpu.log" | tail -60
    echo "== the commands and the daemon on the GPU (tests/py/test_cli_gpu.py)"
    python3 -m pytest -q -rs -p no:cacheprovider tests/py/test_cli_gpu.py tests/py/test_cli_hybrid.py \
        tests/py/test_server_hybrid.py >"$OUT/pytest-gpu.log" 2>&1 || status=1
    tail -15 "$OUT/pytest-gpu.log"
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -n "$SAN" ]; then
        echo "== GPU tests under compute-sanitizer memcheck (at most ${SAN_SECONDS:=300} s)"
        timeout "$SAN_SECONDS" "$SAN" --tool memcheck --leak-check full --report-api-errors no --error-exitcode 1 \
            bin/moed-tests ${SAN_TESTS:-cuda_} >"$OUT/test-gpu-memcheck.log" 2>&1
        rc=$?
        [ $rc = 124 ] && echo "memcheck: stopped after $SAN_SECONDS s (tests so far below)"
        [ $rc != 0 ] && [ $rc != 124 ] && status=1
        grep -E '^(FAIL|unit:)|ERROR SUMMARY|LEAK SUMMARY|Invalid|bytes leaked' "$OUT/test-gpu-memcheck.log" | tail -20
        grep -c '^ok ' "$OUT/test-gpu-memcheck.log" | sed 's/^/memcheck: tests passed: /'
    fi
fi
exit $status
