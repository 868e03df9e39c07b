#!/usr/bin/env bash
# The first steps of the paper-set-up presets that are too slow to run here in full (PTB char, MNIST n=512): their
# speed beside other runs (steps/s in krubench.log) and whether the loss blows up at once (the PTB KRUs with one large
# factor, RESULTS.md "Table 3: large factors"). 12 steps each, evaluation cut to a prefix (task.eval_limit: these are
# no results). All with optim.factor_lr_scale=0.1, which the PTB KRU presets lower to 0.01 (RESULTS.md "Table 3").
# Usage (from the repository root): bash scripts/first_steps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KRUBENCH_DATA:-}" ] && [ -d ../shared/data ]; then export KRUBENCH_DATA=$PWD/../shared/data; fi
out=results/diagnostics/first_steps
short="trainer.steps=12 trainer.log_every=4 trainer.val_every=1000 trainer.threads=1 trainer.progress=never task.eval_limit=256"
for p in ptb_char_kru ptb_char_lstm ptb_char_rnn ptb_char_kru_n993 ptb_char_lstm_kru pixel_mnist_kru; do
  krubench experiment=paper/$p optim.factor_lr_scale=0.1 $short hydra.run.dir=$out/$p || true
done
for v in "initid model.init=identity" "scale0.01 optim.factor_lr_scale=0.01" "lr1e-4 optim.lr=1e-4"; do
  set -- $v; name=$1; shift
  krubench experiment=paper/ptb_char_kru optim.factor_lr_scale=0.1 "$@" $short trainer.log_every=1 hydra.run.dir=$out/ptb_char_kru_$name || true
done
