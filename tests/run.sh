#!/bin/sh
# The test command behind `make test`: builds, runs the unit tests, runs them
# again under ASan+UBSan, runs each fuzz target for a bounded time, and
# closes with one summary line.  Set FUZZ_SECONDS to change the fuzz budget.
set -u
JOBS=$(nproc 2>/dev/null || echo 2)
log=build/test-logs
mkdir -p "$log"
status=0
total_pass=0 total_fail=0 total_skip=0

tally() { # $1 = log file with a "N passed, N failed, N skipped" line (ours or pytest's)
    line=$(grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed' "$1" | tail -1)
    if [ -z "$line" ]; then # pytest: "3 failed, 29 passed, 2 skipped in 8.5s"
        line=$(grep -E '[0-9]+ (passed|failed)' "$1" | tail -1)
        [ -n "$line" ] || return
        p=$(echo "$line" | sed -nE 's/.*\b([0-9]+) passed.*/\1/p')
        f=$(echo "$line" | sed -nE 's/.*\b([0-9]+) failed.*/\1/p')
        s=$(echo "$line" | sed -nE 's/.*\b([0-9]+) skipped.*/\1/p')
        total_pass=$((total_pass + ${p:-0})) total_fail=$((total_fail + ${f:-0}))
        total_skip=$((total_skip + ${s:-0}))
        return
    fi
    p=$(echo "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p')
    total_pass=$((total_pass + p)) total_fail=$((total_fail + f)) total_skip=$((total_skip + ${s:-0}))
}

step() { # $1 = name, rest = command; output to the log, tail on failure
    name=$1; shift
    echo "== $name"
    if "$@" >"$log/$name.log" 2>&1; then
        grep -E '^(skip|[a-z-]+: [0-9]+ passed)|[0-9]+ passed' "$log/$name.log"
    else
        echo "!! $name failed; last lines of $log/$name.log:"
        tail -60 "$log/$name.log"
        status=1
    fi
    tally "$log/$name.log"
}

step build make -j"$JOBS" all
# whether the CUDA code was compiled (it is whenever nvcc is found) and why
# the GPU tests will skip here
[ -x bin/moed ] && bin/moed version 2>&1 | grep -E '^cuda' | sed 's/^/   /'
step unit bin/moed-tests
step build-san make -j"$JOBS" SAN=1 all
step unit-san build-san/bin/moed-tests
if command -v clang >/dev/null; then
    step fuzz make fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
else
    echo "skip fuzz: skipped: clang not installed"
fi
# Python-driven tests run with Debian's python3 (deps.sh installs pytest and
# numpy for it), whatever python3 comes first on PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
step pytest "$PY" -m pytest -q -rs -p no:cacheprovider tests/py
echo "tests: $total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" = 0 ] || status=1
exit $status
