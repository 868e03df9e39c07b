#!/usr/bin/env bash
# The runs behind RESULTS.md: the paper presets (conf/experiment/paper/) at their full budgets on a 2-core CPU,
# one thread each, two at a time.
# Usage (from the repository root): bash scripts/run_cpu.sh [PATTERN] [JOBS]   (JOBS: runs at a time, default 2)
#   Only the runs whose command matches PATTERN; in the order below (most telling first). Finished runs
#   (status.json "ok") are skipped; unfinished ones resume from their last.pt.
#   DRY_RUN=1 prints the commands instead.
#   The runs use a snapshot of the checkout (a git worktree of HEAD under .runtree/, krubench run from it
#   with `python -m krubench.cli`), so that editing the code while the queue runs cannot change or break
#   the runs still to start (commit first: uncommitted changes are not in the snapshot).
#   Then: krubench-report results/runs --out RESULTS.md --plots results   (the table and the figures)
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # docs/kernels.md "Large tensors on the CPU"
# the data sets of the krubench workspace (../shared/data) unless KRUBENCH_DATA says otherwise: no downloads
if [ -z "${KRUBENCH_DATA:-}" ] && [ -d ../shared/data ]; then export KRUBENCH_DATA=$PWD/../shared/data; fi
COMMON="trainer.threads=1 trainer.progress=never"
ROOT=$PWD
run() {  # run PRESET SEEDS [OVERRIDES...]
  local preset=$1 seeds=$2; shift 2
  for seed in $seeds; do
    local dir="$ROOT/results/runs/${preset}_s$seed"
    echo "python -m krubench.cli experiment=paper/$preset seed=$seed $* $COMMON hydra.run.dir=$dir"
  done
}
commands() {
  # The paper's set-ups, most telling first. Table 4: JSB and Piano-midi, every row, 3 seeds
  # (each run 1-10 min)
  for d in jsb piano; do for m in kru lstm_kru rnn lstm; do run music_${d}_$m "0 1 2"; done; done
  # Fig. 2 at the paper's 1,000K samples (50,000 steps): the KRU's seed 0 at every T first, then seeds 1 and 2,
  # then LSTM and RNN (1 seed). The 10,000-step runs (results/runs/adding_*_steps10k_*) kept no last.pt to continue
  for T in 100 200 400 750; do run adding_T${T}_kru 0; done
  for T in 100 200 400 750; do run adding_T${T}_kru "1 2"; done
  for T in 100 200 400 750; do run adding_T${T}_lstm 0; run adding_T${T}_rnn 0; done
  # Table 2: the KRU n=512 at full budget (≈ 6 h a run on one thread), tested on all 10,000 test images
  run pixel_mnist_kru 0; run permuted_mnist_kru 0
  # Table 3, the ≈120K block: KRU n=411, LSTM n=150, RNN n=300; then the ≈420K block
  run ptb_char_kru 0; run ptb_char_lstm 0; run ptb_char_rnn 0
  run ptb_char_kru_n993 0; run ptb_char_lstm_n300 0; run ptb_char_rnn_n600 0; run ptb_char_lstm_kru 0
  # Fig. 1 (finished: 10,000 steps, read at 5,000) and the extension beyond the paper: Nottingham and MuseData
  run copy_T1000_kru "0 1 2"; run copy_T1000_lstm 0; run copy_T1000_rnn 0
  run copy_T2000_kru "0 1 2"; run copy_T2000_lstm 0; run copy_T2000_rnn 0
  for d in nottingham musedata; do
    run music_${d}_kru "0 1 2"; run music_${d}_lstm_kru 0; run music_${d}_lstm 0; run music_${d}_rnn 0
  done
  # the unitary peers: JSB (N=128, the extension), copy T=1000 (finished)
  for m in urnn fcurnn eurnn exprnn; do run music_jsb_$m 0; done
  for m in exprnn eurnn fcurnn urnn; do run copy_T1000_$m 0; done
  for m in eurnn fcurnn exprnn; do run copy_T1000_$m 1; done
  # the uRNN rows of Figs. 1 and 2 beyond T=1000 / T=100 and 400 (2-12 h a run)
  run copy_T2000_fcurnn 0; run adding_T200_fcurnn 0; run adding_T750_fcurnn 0; run adding_T200_urnn 0; run copy_T2000_urnn 0
}
source scripts/unfinished.sh  # finished runs are skipped
if [ -n "${DRY_RUN:-}" ]; then commands | unfinished | grep -e "${1:-.}"; exit 0; fi  # DRY_RUN=1: print what would run
snapshot=$ROOT/.runtree/$(git rev-parse --short HEAD)
# one chain at a time creates it (two chains started together raced on git's worktree lock)
mkdir -p "$ROOT/.runtree"
(flock 9; [ -d "$snapshot" ] || git worktree add --quiet --detach -f "$snapshot" HEAD) 9>"$ROOT/.runtree/.lock"
commands | unfinished | grep -e "${1:-.}" | (cd "$snapshot" && PYTHONPATH="$snapshot" xargs -P "${2:-2}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'")
