#!/usr/bin/env bash
# The GPU check, one prepared script for a 10-minute device run. Phases, in order of priority, each under its
# own timeout and all within GPU_CHECK_BUDGET seconds (default 570; a phase gets what is left, and is skipped
# when under 20 s are left):
#   preflight  torch/CUDA/cuDNN/driver versions, nvcc, CUDA_HOME, libcudart, ninja, pytest, compute-sanitizer
#   build      the cpp and cuda backends (krubench-build)
#   tests      tests/test_kernels.py and tests/test_lstm_kru_kernel.py, the cuda rows
#   bench      forward and backward, 2×2 factors at N 128/512/1024 and the paper's music (2,2,5,5) and PTB (3×137,
#              3×331) factors, B 32/128, T 1000, the kernel the recurrence chose, vs nn.RNN (cuDNN, with the
#              kernels it ran), the HBM floor and the fused kernel on merged factors (PTB: on its own factors)
#   e2e        a training step of the pixel MNIST and PTB KRU presets (synthetic data): steps/s, the full run's time
#   large      N 1024/2048/4096 × B 133/257 × T 200: complex64 vs complex128 on the GPU, and the cpp backend
#   memcheck, racecheck   compute-sanitizer on a tiny forward+backward of every kernel, where installed
# GPU_CHECK_SKIP="tests large ...": phases not to run (for a short device budget); GPU_CHECK_BENCH_ARGS: extra
# arguments of the bench phase (e.g. "--batches 32 128" to leave out B=1024).
# Output: OUTDIR/summary.md (one Markdown document: the phases' verdicts, then each phase's table, for
# BENCHMARKS.md) and one log per phase, memcheck and racecheck sharing one (at most 8 files in all: the device
# tool's limit).
#   bash scripts/gpu_check.sh [--dry-run] [OUTDIR]   # OUTDIR: default $OUT, else /tmp/gpu_check
# --dry-run: on the CPU at tiny sizes (the cpp backend standing in for cuda), to check the script itself.
# Needs python3 with torch, pytest and filelock; krubench runs from this checkout (no install needed).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=""
if [[ "${1:-}" == "--dry-run" ]]; then
  dry="--dry-run"
  shift
fi
out=${1:-${OUT:-/tmp/gpu_check}}
budget=${GPU_CHECK_BUDGET:-570}
mkdir -p "$out"
rm -f "$out"/*.log  # phases append to their logs
summary=$out/summary.md
verdicts=$(mktemp) tables=$(mktemp)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}

# phase NAME LIMIT_S LOG COMMAND...: runs COMMAND under min(LIMIT_S, what is left of the budget), output to
# the terminal and appended to LOG, its tables into the summary; records ok / FAILED (rc) / TIMED OUT / skipped.
phase() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((budget - SECONDS - 5))
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
    echo "| $name | skipped: GPU_CHECK_SKIP | 0 |" >>"$verdicts"
    return 0
  fi
  if ((left < 20)); then
    echo "| $name | skipped: the ${budget} s budget is spent | 0 |" >>"$verdicts"
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "== $name (at most ${limit} s)"
  local started=$SECONDS this
  this=$(mktemp)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$this"
  local rc=${PIPESTATUS[0]} result=ok
  cat "$this" >>"$log"
  ((rc == 124 || rc == 137)) && result="TIMED OUT after ${limit} s"
  ((rc != 0 && rc != 124 && rc != 137)) && result="FAILED (exit $rc)"
  echo "| $name | $result | $((SECONDS - started)) |" >>"$verdicts"
  # the phase's tables and verdict lines, as Markdown blocks (blank lines around each table and heading)
  grep -E '^(###|\||HBM floor|sanitize case|missing|[0-9]+ (passed|failed)|FAILED |ERROR |=+ ERROR SUMMARY)' "$this" |
    awk '{ row = /^\|/; if (NR > 1 && (row != prev || /^###/ || was_heading)) print ""; print; prev = row; was_heading = /^###/ }
         END { print "" }' >>"$tables"
  rm -f "$this"
  return "$rc"
}

py=(python3 scripts/gpu_check.py)
if ! phase preflight 60 "$out/preflight.log" "${py[@]}" preflight $dry; then
  echo "preflight found something missing: see above" >&2
  preflight_failed=1
fi

if [[ -z "$dry" ]]; then
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c \
    "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)}
  export TORCH_CUDA_ARCH_LIST
  backends=all
  tests=(tests/test_kernels.py tests/test_lstm_kru_kernel.py -k cuda)
else
  backends=cpp
  tests=(tests/test_kernels.py -k "cpp and (opcheck or tanh)")
fi

if [[ -z "${preflight_failed:-}" ]] &&
  phase build 300 "$out/build.log" python3 -c \
    "from krubench.ops.doctor import build_main; raise SystemExit(build_main(['--backend', '$backends']))"; then
  phase tests 150 "$out/tests.log" python3 -m pytest -q --noconftest -p no:cacheprovider "${tests[@]}"
  # shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of words
  phase bench 240 "$out/bench.log" "${py[@]}" bench $dry ${GPU_CHECK_BENCH_ARGS:-}
  phase e2e 90 "$out/e2e.log" "${py[@]}" e2e $dry
  phase large 150 "$out/large.log" "${py[@]}" large $dry
  if [[ -z "$dry" ]] && command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      phase "$tool" 90 "$out/sanitizer.log" compute-sanitizer --tool "$tool" --error-exitcode 3 "${py[@]}" sanitize
    done
  else
    phase sanitize-case 60 "$out/sanitize.log" "${py[@]}" sanitize $dry
    why="compute-sanitizer is not installed"
    [[ -n "$dry" ]] && why="dry run"
    echo "| memcheck, racecheck | skipped: $why | 0 |" >>"$verdicts"
  fi
fi

{
  echo "## GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')${dry:+, dry run on the CPU})"
  echo
  echo "| phase | result | s |"
  echo "|---|---|---|"
  cat "$verdicts"
  echo
  cat "$tables"
} >"$summary"
rm -f "$verdicts" "$tables"
echo
cat "$summary"
grep -qE 'FAILED|TIMED OUT' "$summary" && exit 1
[[ -n "${preflight_failed:-}" ]] && exit 1
exit 0
