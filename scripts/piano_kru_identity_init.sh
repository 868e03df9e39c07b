#!/usr/bin/env bash
# Why the JSB-chosen KRU set-up (identity init, factors at lr, lr 3e-3) fails Piano-midi seed 0 at step 1
# (results/sweeps/music_piano_kru_n100_initid_scale1_lr3e-3_s0, RESULTS.md): the first batch's loss and gradient,
# on the C++ kernel and on the reference. Runs into /tmp (nothing kept but the log lines).
# Usage (from the repository root): bash scripts/piano_kru_identity_init.sh > results/diagnostics/piano_kru_identity_init.txt
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KRUBENCH_DATA:-}" ] && [ -d ../shared/data ]; then export KRUBENCH_DATA=$PWD/../shared/data; fi
for kernel in cpp reference; do
  for init in identity unitary; do
    dir=$(mktemp -d)
    echo "## kernel $kernel, model.init=$init (seed 0, the first steps)"
    krubench experiment=paper/music_piano_kru model.init=$init optim.factor_lr_scale=1.0 optim.lr=3e-3 seed=0 \
      model.kernel=$kernel trainer.steps=2 trainer.log_every=1 trainer.val_every=1000 task.eval_limit=2 \
      trainer.threads=1 trainer.progress=never hydra.run.dir=$dir/run 2>&1 | grep -E "step [0-9]+/|error:" | sed 's/^.*\] - //'
    rm -rf "$dir"
  done
done
