#!/bin/bash
# One call on the GPU machine (the device tool): unpack the Debian packages
# carried in .deb/ (see ../shared/DEVICE.md), build with CUDA for sm_90,
# print `moed version` (CPU ISA, CUDA self-test), run the unit tests whose
# names match $TESTS (default: the kernel tests, which exercise AVX-512
# there), then run `moed bench-kernels $BENCH_ARGS` unless BENCH=0.
# Logs go to $OUT (the device tool brings them back).
#
#   device run: bash tools/gpu-check.sh      (carry: .deb)
set -u -o pipefail
OUT=${OUT:-/tmp/moed-out}
mkdir -p "$OUT"
DEPS=/opt/deps
mkdir -p "$DEPS"
for f in .deb/*.deb; do dpkg -x "$f" "$DEPS"; done
J=$(nproc)
echo "== machine"
lscpu | grep -E 'Model name|^CPU\(s\)|Thread|NUMA node\(s\)' | tee "$OUT/machine.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/machine.txt"
echo "== build"
if ! make -j"$J" DEPS="$DEPS" all >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    exit 1
fi
echo "== version"
bin/moed version | tee "$OUT/version.txt"
echo "== unit tests: ${TESTS:=quant dot matmul pool isa}"
# shellcheck disable=SC2086
MOED_SHARED=${MOED_SHARED:-.shared} bin/moed-tests $TESTS 2>&1 | tee "$OUT/unit.log" | grep -vE '^ok ' 
if [ "${BENCH:-1}" = 1 ]; then
    echo "== bench-kernels ${BENCH_ARGS:-}"
    # shellcheck disable=SC2086
    bin/moed bench-kernels ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-kernels.txt"
fi
