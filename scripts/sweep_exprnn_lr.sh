#!/usr/bin/env bash
# expRNN's lr on adding. Its paper has no adding runs: at its copy lr 2e-4 it stays on the memoryless baseline for
# 10,000 steps at T=100 and T=400; at the adding setting's lr 1e-3 (every other model's; the orthogonal part still at
# lr/10) it learns both, so the presets use 1e-3 (their runs: results/runs/, `scripts/run_cpu.sh`). This is the 2e-4
# arm, seed 0, for RESULTS.md's comparison.
# Usage (from the repository root): bash scripts/sweep_exprnn_lr.sh [PATTERN] [JOBS]   (DRY_RUN=1 prints the runs instead)
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # docs/kernels.md "Large tensors on the CPU"
COMMON="trainer.threads=1 trainer.progress=never"
commands() {
  for T in 100 400; do
    echo "krubench experiment=paper/adding_T${T}_exprnn optim.lr=2e-4 trainer.steps=10000 seed=0 $COMMON hydra.run.dir=results/sweeps/adding_T${T}_exprnn_lr2e-4_s0"
  done
}
source scripts/unfinished.sh  # finished runs are skipped
if [ -n "${DRY_RUN:-}" ]; then commands | unfinished | grep -e "${1:-.}"; exit 0; fi  # DRY_RUN=1: print what would run
commands | unfinished | grep -e "${1:-.}" | xargs -P "${2:-1}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'"
