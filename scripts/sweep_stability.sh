#!/usr/bin/env bash
# The sweep behind the KRU presets' stability settings (optim.factor_lr_scale, trainer.unitary_penalty): adding T=100,
# seeds 0-2, with and without each of the two. RESULTS.md ("How the KRU presets were chosen") reads its runs.
# Usage (from the repository root): bash scripts/sweep_stability.sh [PATTERN] [JOBS]   (DRY_RUN=1 prints the runs instead)
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # docs/kernels.md "Large tensors on the CPU"
COMMON="trainer.threads=1 trainer.progress=never"  # at 10,000 steps (trainer.steps below), not the presets' 50,000
# In order of how much each tells: the control, then each setting alone, then both. A rerun resumes
# unfinished runs and only re-reports finished ones.
commands() {
  for setting in "1.0 0.0 0" "0.1 0.0 0 1 2" "1.0 0.1 0 1 2" "0.1 0.1 0 1 2" "1.0 0.0 1 2"; do
    read -r scale lam seeds <<< "$setting"
    for seed in $seeds; do
      echo "krubench experiment=paper/adding_T100_kru trainer.steps=10000 optim.factor_lr_scale=$scale trainer.unitary_penalty=$lam seed=$seed $COMMON hydra.run.dir=results/sweeps/adding_T100_kru_scale${scale}_pen${lam}_s$seed"
    done
  done
}
source scripts/unfinished.sh  # finished runs are skipped
if [ -n "${DRY_RUN:-}" ]; then commands | unfinished | grep -e "${1:-.}"; exit 0; fi  # DRY_RUN=1: print what would run
commands | unfinished | grep -e "${1:-.}" | xargs -P "${2:-1}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'"
