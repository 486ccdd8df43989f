#!/bin/bash
# The hybrid engine's benchmark (issue 7) on the GPU machine, in one device
# call: build, write the reference-shape model, calibrate the cost model on
# this machine, then `moed bench` at expert budgets 0/25/50/75% (hybrid,
# calibrated) and 100% (everything on the GPU), and the ablations at 25%:
# static placement by layer (the peer's way), no prefetch, LRU, LFU, the
# built-in (uncalibrated) cost model.  $OUT gets bench.txt (every run's
# output with its command), summary.txt, cost.txt, calibrate.txt; a table is
# printed last.
#
#   device run: bash bench/hybrid.sh      (carry: .deb; see ../shared/DEVICE.md)
#   PP, TG, REPS: test sizes (default 512, 64, 2); ABL=0 skips the ablations.
set -u -o pipefail
OUT=${OUT:-/tmp/moed-out}
mkdir -p "$OUT"
DEPS=/opt/deps
mkdir -p "$DEPS"
for f in .deb/*.deb; do dpkg -x "$f" "$DEPS"; done
J=$(nproc)
{ lscpu | grep -E 'Model name|^CPU\(s\)'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } | tee "$OUT/machine.txt"
t0=$(date +%s)
if ! make -j"$J" DEPS="$DEPS" bin/moed bin/moed-mkmodel >/tmp/build.log 2>&1; then
    grep -E 'error|Error' /tmp/build.log | head -40
    exit 1
fi
echo "built in $(( $(date +%s) - t0 )) s"
REF=/dev/shm/ref.gguf
bin/moed-mkmodel --preset qwen3-30b-a3b -o "$REF" --threads "$J" 2>&1 | tail -1
timeout 150 bin/moed calibrate -m "$REF" --gpu 0 --threads "$J" -o "$OUT/cost.txt" >"$OUT/calibrate.txt" 2>&1
bin/moed calibrate --show "$OUT/cost.txt" | tail -4
PP=${PP:-512} TG=${TG:-64} REPS=${REPS:-2}
: >"$OUT/bench.txt"
: >"$OUT/summary.txt"
run() { # name, flags...
    local name=$1; shift
    local log=/tmp/bench-$name.txt
    timeout 200 bin/moed bench -m "$REF" --gpu 0 -p "$PP" -n "$TG" -r "$REPS" "$@" >"$log" 2>&1
    local rc=$?
    { echo "== $name: moed bench -m REF --gpu 0 -p $PP -n $TG -r $REPS $* (rc $rc)"; cat "$log"; } >>"$OUT/bench.txt"
    echo "== $name: $* (rc $rc)"
    grep -E '^\| ref|hybrid:' "$log" | sed -E 's/; host\/layer/\n      host\/layer/'
    pp=$(grep -E "\| +pp$PP \|" "$log" | awk -F'|' '{print $5}' | awk '{print $1}')
    tg=$(grep -E "\| +tg$TG \|" "$log" | awk -F'|' '{print $5}' | awk '{print $1}')
    printf '%-18s pp%s %10s   tg%s %8s\n' "$name" "$PP" "${pp:--}" "$TG" "${tg:--}" >>"$OUT/summary.txt"
}
C="--cost $OUT/cost.txt"
run b000 --expert-budget 0% $C
run b025 --expert-budget 25% $C
run b050 --expert-budget 50% $C
run b075 --expert-budget 75% $C
run b100
if [ "${ABL:-1}" = 1 ]; then
    run b025-static --expert-budget 25% --static-placement $C
    run b025-noprefetch --expert-budget 25% --no-prefetch $C
    run b025-lru --expert-budget 25% --cache-policy lru $C
    run b025-lfu --expert-budget 25% --cache-policy lfu $C
    run b025-builtin --expert-budget 25%
fi
rm -f "$REF"
echo "== summary (tok/s)"
cat "$OUT/summary.txt"
