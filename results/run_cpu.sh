#!/usr/bin/env bash
# The runs behind RESULTS.md: the paper presets (conf/experiment/paper/) at their full budgets on a 2-core CPU,
# one thread each, two at a time; MNIST and PTB at the share of their budget written on their line.
# Usage (from the repository root): bash results/run_cpu.sh [PATTERN] [JOBS]   (JOBS: runs at a time, default 2)
#   Only the runs whose command matches PATTERN; in the order below (most telling first). Finished runs
#   (status.json "ok") are skipped; unfinished ones resume from their last.pt.
#   DRY_RUN=1 prints the commands instead.
#   The runs use a snapshot of the checkout (a git worktree of HEAD under .runtree/, krubench run from it
#   with `python -m krubench.cli`), so that editing the code while the queue runs cannot change or break
#   the runs still to start (commit first: uncommitted changes are not in the snapshot).
#   Then: krubench-report results/runs --out RESULTS.md --plots results   (the table and the figures)
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # README "Large tensors on the CPU"
# the data sets of the krubench workspace (../shared/data) unless KRUBENCH_DATA says otherwise: no downloads
if [ -z "${KRUBENCH_DATA:-}" ] && [ -d ../shared/data ]; then export KRUBENCH_DATA=$PWD/../shared/data; fi
COMMON="trainer.threads=1 trainer.progress=never"
ROOT=$PWD
run() {  # run PRESET SEEDS [OVERRIDES...]
  local preset=$1 seeds=$2; shift 2
  for seed in $seeds; do
    local dir="$ROOT/results/runs/${preset}_s$seed"
    grep -qs '"status": "ok"' "$dir/status.json" && continue
    echo "python -m krubench.cli experiment=paper/$preset seed=$seed $* $COMMON hydra.run.dir=$dir"
  done
}
commands() {
  run copy_T1000_kru "0 1 2"; run copy_T1000_lstm 0; run copy_T1000_rnn 0
  # adding T=100's KRU seeds are the stability sweep's factor_lr_scale=0.1 arm (results/sweeps/): the preset's
  # exact configuration, so they are not run twice
  run adding_T100_lstm 0; run adding_T100_rnn 0
  for T in 200 400 750; do run adding_T${T}_kru "0 1 2"; run adding_T${T}_lstm 0; run adding_T${T}_rnn 0; done
  run copy_T2000_kru "0 1 2"; run copy_T2000_lstm 0; run copy_T2000_rnn 0
  for d in jsb nottingham piano musedata; do
    run music_${d}_kru "0 1 2"; run music_${d}_lstm_kru 0; run music_${d}_lstm 0; run music_${d}_rnn 0
  done
  # Not full budgets (RESULTS.md gives the full budgets' wall time from the measured steps/s):
  # pixel and permuted MNIST, KRU N=128: 5,500 of 38,500 steps (10 epochs); validation on the first 1,000 images
  run pixel_mnist_kru 0 model.hidden_size=128 trainer.steps=5500 task.eval_limit=1000
  run permuted_mnist_kru 0 model.hidden_size=128 trainer.steps=5500 task.eval_limit=1000
  # PTB char, KRU N=1024 and LSTM N=512: the full 5,220 steps (20 epochs; 1.9 and 3.5 h on a quiet core, BENCHMARKS.md;
  # 1,044 until the faster kernel of 30 Nov); valid/test on their first 100,000 characters
  run ptb_char_kru 0 task.eval_limit=100000; run ptb_char_lstm 0 task.eval_limit=100000
  # the unitary peers (issue 14) at full budget: JSB first (minutes), then adding T=100 and T=400, copy T=1000 (hours:
  # the peers are pure PyTorch loops over time; the uRNN at N=470 on copy ≈ 10 h on a quiet core, the others 1–3.4 h; README)
  for m in urnn fcurnn eurnn exprnn; do run music_jsb_$m 0; done
  for m in exprnn eurnn fcurnn urnn; do run adding_T100_$m 0; done
  run adding_T100_exprnn 1; run adding_T400_exprnn 1  # a second seed for the lr its presets changed to (1 Dec)
  for m in exprnn eurnn fcurnn urnn; do run adding_T400_$m 0; done
  for m in exprnn eurnn fcurnn urnn; do run copy_T1000_$m 0; done
  for m in eurnn fcurnn exprnn; do run copy_T1000_$m 1; done  # a second seed on the headline task (1 Dec)
}
if [ -n "${DRY_RUN:-}" ]; then commands | grep -e "${1:-.}"; exit 0; fi  # DRY_RUN=1: print what would run
snapshot=$ROOT/.runtree/$(git rev-parse --short HEAD)
# one chain at a time creates it (two chains started together raced on git's worktree lock)
mkdir -p "$ROOT/.runtree"
(flock 9; [ -d "$snapshot" ] || git worktree add --quiet --detach -f "$snapshot" HEAD) 9>"$ROOT/.runtree/.lock"
commands | grep -e "${1:-.}" | (cd "$snapshot" && PYTHONPATH="$snapshot" xargs -P "${2:-2}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'")
