#!/usr/bin/env bash
# The reduced-budget CPU runs behind RESULTS.md: paper presets, most with fewer steps than the preset (and
# smaller evaluation sets where noted), two runs at a time, one thread each, on a shared 2-core CPU.
# These are NOT the paper's budgets unless a line says "full preset budget".
# Usage (from the repository root): bash results/run_cpu.sh [PATTERN]   (only the runs whose command matches)
#   then: krubench-report results/runs --out RESULTS.md --plots results
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON="trainer.threads=1 trainer.progress=never"
commands() {
  for m in kru lstm rnn; do  # copy T=1000: 600 of the preset's 10,000 steps, 100 validation sequences (preset: 500)
    echo "krubench experiment=paper/copy_T1000_$m trainer.steps=600 task.val_size=100 $COMMON hydra.run.dir=results/runs/copy_T1000_$m"
  done
  for m in kru lstm rnn; do  # adding T=100: the full preset budget, 10,000 steps
    echo "krubench experiment=paper/adding_T100_$m trainer.val_every=200 $COMMON hydra.run.dir=results/runs/adding_T100_$m"
  done
  # adding T=100, KRU with the soft unitary constraint λ=0.01 (our choice): the preset's λ=0 run diverged at step 5,132
  echo "krubench experiment=paper/adding_T100_kru model.penalty=0.01 trainer.val_every=200 $COMMON hydra.run.dir=results/runs/adding_T100_kru_penalty"
  for m in kru lstm rnn; do  # adding T=400: 1,000 of the preset's 10,000 steps
    echo "krubench experiment=paper/adding_T400_$m trainer.steps=1000 trainer.val_every=200 $COMMON hydra.run.dir=results/runs/adding_T400_$m"
  done
  for m in kru lstm_kru lstm rnn; do  # JSB Chorales: the full preset budget, 3,000 steps (≈100 epochs; our choice)
    echo "krubench experiment=paper/music_jsb_$m $COMMON hydra.run.dir=results/runs/music_jsb_$m"
  done
  for m in kru lstm_kru lstm rnn; do  # JSB Chorales, a second seed
    echo "krubench experiment=paper/music_jsb_$m seed=1 $COMMON hydra.run.dir=results/runs/music_jsb_${m}_seed1"
  done
  echo "krubench experiment=paper/adding_T100_kru model.penalty=0.01 seed=1 trainer.val_every=200 $COMMON hydra.run.dir=results/runs/adding_T100_kru_penalty_seed1"
  # PTB char, LSTM N=512: 200 of the preset's 5,220 steps; valid/test on their first 50,000 characters only
  echo "krubench experiment=paper/ptb_char_lstm trainer.steps=200 trainer.val_every=100 task.eval_limit=50000 $COMMON hydra.run.dir=results/runs/ptb_char_lstm"
  # pixel MNIST, KRU N=512: 200 of the preset's 38,500 steps; val/test on their first 1,000 images only
  echo "krubench experiment=paper/pixel_mnist_kru trainer.steps=200 trainer.val_every=100 task.eval_limit=1000 $COMMON hydra.run.dir=results/runs/pixel_mnist_kru"
}
commands | grep -e "${1:-.}" | xargs -P 2 -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'"
find results/runs -name '*.pt' -delete  # checkpoints are not part of the results
