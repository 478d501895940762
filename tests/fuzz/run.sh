#!/usr/bin/env bash
# Runs fuzz_abi for `make fuzz`: first the seeds once each (they must still reach a
# successful decode and run, or the fuzzer would rarely get past validation), then RUNS
# executions over the corpus in WORK/corpus and the seeds, and prints one summary line.
# A crash's input lands in WORK/crashes/ (reproduce: fuzz_abi <file>; FUZZ_ABI_TRACE=1
# prints each call).
#   tests/fuzz/run.sh <fuzz_abi> <work dir> <runs> [libFuzzer options...]
set -uo pipefail
if (($# < 3)); then
    echo "usage: $0 <fuzz_abi> <work dir> <runs> [libFuzzer options...]" >&2
    exit 2
fi
fuzzer=$1 work=$2 runs=$3
shift 3
seeds=$(cd "$(dirname "$0")" && pwd)/seeds
mkdir -p "$work/corpus" "$work/crashes"

# What fuzz_abi prints at exit: "fuzz_abi: N inputs; calls ok/all: ... decode X/Y ... run X/Y ...".
ok_calls() { sed -n "s/.* $1 \([0-9]*\)\/[0-9]*.*/\1/p" <<<"$2" | tail -1; }

seed_log=$("$fuzzer" "$seeds"/*.bin 2>&1)
rc=$?
stats=$(grep '^fuzz_abi: [0-9]* inputs' <<<"$seed_log" | tail -1)
if ((rc != 0)) || [[ -z $stats ]]; then
    echo "$seed_log"
    echo "fuzz: FAILED: a seed input fails (exit status $rc)"
    exit 1
fi
decodes=$(ok_calls decode "$stats") plan_runs=$(ok_calls run "$stats")
if [[ ${decodes:-0} == 0 || ${plan_runs:-0} == 0 ]]; then
    echo "$stats"
    echo "fuzz: FAILED: the seeds reach no successful decode or run: tests/fuzz/make_seeds.py and fuzz_abi.cpp's" \
         "input format disagree (regenerate the seeds)"
    exit 1
fi
echo "fuzz: the seeds reach $decodes successful decodes and $plan_runs successful runs"

# The inputs of bugs found before: each must now pass.
regressions=$(cd "$(dirname "$0")" && pwd)/crashes
if ! regression_log=$("$fuzzer" "$regressions"/*.bin 2>&1); then
    echo "$regression_log" | tail -30
    echo "fuzz: FAILED: an input of a fixed bug (tests/fuzz/crashes) fails again"
    exit 1
fi
echo "fuzz: the $(ls "$regressions"/*.bin | wc -l) inputs of fixed bugs pass"

log=$work/fuzz.log
marker=$work/.started
: >"$marker"
echo "fuzz: $runs executions (log: $log)"
"$fuzzer" -runs="$runs" -max_len=512 -timeout=60 -print_final_stats=1 -artifact_prefix="$work/crashes/" "$@" \
    "$work/corpus" "$seeds" >"$log" 2>&1
rc=$?

executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
seconds=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
coverage=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1)
stats=$(grep '^fuzz_abi: [0-9]* inputs' "$log" | tail -1)
mapfile -t crashes < <(find "$work/crashes" -type f -newer "$marker" | sort)
if ((rc != 0)) && ((${#crashes[@]} == 0)); then
    tail -40 "$log"
    echo "fuzz: FAILED: fuzz_abi exited with status $rc and left no crash input"
    exit 1
fi
if ((${#crashes[@]})); then
    grep -m1 -E 'property violated|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' "$log" || true
fi
echo "fuzz: ${executions:-?} executions in ${seconds:-?} s (${rate:-?} exec/s), ${coverage:-no coverage line};" \
     "calls ok: decode $(ok_calls decode "$stats"), run $(ok_calls run "$stats"), dense $(ok_calls dense "$stats");" \
     "crashes: ${#crashes[@]}${crashes:+ (${crashes[*]})}"
((${#crashes[@]} == 0))
