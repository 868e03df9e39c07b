#!/usr/bin/env bash
# Why the KRU n=411 (complex 3×3 ⊗ 137×137, Table 3's ≈120K row) falls short of the paper's 1.65 / 1.60 BPC on PTB
# char: each lever of the preset moved alone, seed 0, over the first 5 of its 20 epochs (1,305 steps, ≈ 20 min a
# run on one thread), judged on the validation BPC at step 1,305 against the preset's own run at that step
# (results/runs/ptb_char_kru_s0: the preset has a constant lr, so its first 1,305 steps are this sweep's base).
# Then the lever that moved it most (lr 3e-3: 1.99 BPC at step 1,305 against 2.25) over the preset's whole 20 epochs.
# Then the same lr given to the LSTM n=150 and the RNN n=300 (Table 3's ≈120K peers, 20 epochs, ≈ 25 min each): is
# the lr the KRU's shortfall, or the set-up all three share?
# The test split is not looked at. RESULTS.md ("Table 3: why the KRU falls short") reads the runs.
# Usage (from the repository root): bash scripts/sweep_ptb_kru.sh [PATTERN] [JOBS] (DRY_RUN=1 prints the runs instead)
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # docs/kernels.md "Large tensors on the CPU"
if [ -z "${KRUBENCH_DATA:-}" ] && [ -d ../shared/data ]; then export KRUBENCH_DATA=$PWD/../shared/data; fi
COMMON="trainer.threads=1 trainer.progress=never"
commands() {  # most telling first
  while read -r preset name overrides; do  # the preset (conf/experiment/paper/), the run's name, the lever
    dir=results/sweeps/${name}_s0
    case $overrides in *trainer.steps=*) steps= ;; *) steps=trainer.steps=1305 ;; esac  # 5 epochs unless the line says
    echo "krubench experiment=paper/$preset $overrides $steps seed=0 $COMMON hydra.run.dir=$dir"
  done <<'LEVERS'
ptb_char_kru ptb_char_kru_n411_lr3e-3 optim.lr=3e-3
ptb_char_kru ptb_char_kru_n411_scale0.1 optim.factor_lr_scale=0.1
ptb_char_kru ptb_char_kru_n411_pen0.1 trainer.unitary_penalty=0.1
ptb_char_kru ptb_char_kru_n411_initid model.init=identity
ptb_char_kru ptb_char_kru_n411_lr3e-4 optim.lr=3e-4
ptb_char_kru ptb_char_kru_n411_batch32 task.batch_size=32
ptb_char_kru ptb_char_kru_n411_clip0 trainer.grad_clip=0
ptb_char_kru ptb_char_kru_n411_lr3e-3_full optim.lr=3e-3 trainer.steps=5220
ptb_char_lstm ptb_char_lstm_n150_lr3e-3_full optim.lr=3e-3 trainer.steps=5220
ptb_char_rnn ptb_char_rnn_n300_lr3e-3_full optim.lr=3e-3 trainer.steps=5220
LEVERS
}
source scripts/unfinished.sh  # finished runs are skipped
if [ -n "${DRY_RUN:-}" ]; then commands | unfinished | grep -e "${1:-.}"; exit 0; fi
commands | unfinished | grep -e "${1:-.}" | xargs -P "${2:-1}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'"
