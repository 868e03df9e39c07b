#!/usr/bin/env bash
# Does the KRU (N=128, the presets otherwise unchanged) learn adding T=400 and T=750 given 20,000 steps
# instead of the presets' 10,000? And do LSTM and RNN, given the same (seed 0, after the KRU's runs)? Each run continues its finished 10,000-step run of results/runs/ (last.pt,
# kept on the machine that ran it) in a copy of its folder: with the constant schedule and the runner's exact
# resume (RNG, optimizer, task state) that is the 20,000-step run from scratch, minus its first half's time.
# Where last.pt is gone (a fresh clone), the run starts from scratch (the same run by that argument; not checked).
# Usage (from the repository root): bash scripts/sweep_adding_budget.sh [PATTERN] [JOBS]   (DRY_RUN=1 prints the runs instead)
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # docs/kernels.md "Large tensors on the CPU"
COMMON="trainer.threads=1 trainer.progress=never"
commands() {  # prints the runs to do, having copied each one's 10,000-step folder (only those PATTERN selects)
  for run in "T400 0 kru" "T750 0 kru" "T400 1 kru" "T750 1 kru" "T400 2 kru" "T750 2 kru" \
             "T400 0 lstm" "T400 0 rnn" "T750 0 lstm" "T750 0 rnn"; do
    read -r T seed model <<< "$run"
    local src=results/runs/adding_${T}_${model}_steps10k_s$seed dst=results/sweeps/adding_${T}_${model}_steps20k_s$seed
    local cmd="krubench experiment=paper/adding_${T}_${model} seed=$seed trainer.steps=20000 $COMMON hydra.run.dir=$dst"
    echo "$cmd" | grep -q -e "${1:-.}" || continue
    grep -qs '"status": "ok"' "$dst/status.json" && continue
    [ -n "${DRY_RUN:-}" ] || [ -d "$dst" ] || [ ! -f "$src/last.pt" ] || { mkdir -p "$dst" && cp -r "$src/." "$dst/" && rm -f "$dst/status.json" "$dst/results.json"; }  # not finished: the report skips it
    echo "$cmd"
  done
}
if [ -n "${DRY_RUN:-}" ]; then commands "${1:-.}"; exit 0; fi  # DRY_RUN=1: print what would run (copying nothing)
commands "${1:-.}" | xargs -P "${2:-1}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'"
