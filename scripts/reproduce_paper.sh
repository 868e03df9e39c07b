#!/usr/bin/env bash
# The paper's experiments: one Hydra sweep per figure/table over the presets in conf/experiment/paper/
# (their comments give the source of every value; several are unverified). Usage:
#
#   bash scripts/reproduce_paper.sh fig1                      # copy memory, T=1000 and 2000
#   bash scripts/reproduce_paper.sh peers                     # uRNN, FC-uRNN, EURNN, expRNN on the same pipeline
#   bash scripts/reproduce_paper.sh mnist launcher=slurm hydra.launcher.partition=gpu    # extra Hydra args
#   SEEDS=0 bash scripts/reproduce_paper.sh all               # every figure and table, one seed
#   krubench-report multirun/paper --out RESULTS.md            # the table and plots beside the paper's numbers
#
# Each sweep writes to a fixed folder, multirun/paper/<name>: rerun the same command after an interruption
# and finished jobs re-report while the others resume from their last.pt. Real-data tasks read
# $KRUBENCH_DATA (or download on first use; `krubench-data download all` fetches ahead of time).
set -euo pipefail

SEEDS=${SEEDS:-0,1,2}  # the paper's seeds are unknown; three per row give a mean ± std

sweep() {  # sweep <name> <comma-separated presets> [extra Hydra args]
  local name=$1 presets=$2
  shift 2
  ( set -x; krubench --multirun "experiment=$presets" "seed=$SEEDS" "hydra.sweep.dir=multirun/paper/$name" "$@" )
}

what=${1:-help}
[ $# -gt 0 ] && shift
case "$what" in
  fig1)  # Fig. 1: copy memory, KRU vs LSTM vs RNN
    sweep fig1 paper/copy_T1000_kru,paper/copy_T1000_lstm,paper/copy_T1000_rnn,paper/copy_T2000_kru,paper/copy_T2000_lstm,paper/copy_T2000_rnn "$@" ;;
  fig2)  # Fig. 2: adding problem
    sweep fig2 paper/adding_T100_kru,paper/adding_T100_lstm,paper/adding_T100_rnn,paper/adding_T200_kru,paper/adding_T200_lstm,paper/adding_T200_rnn,paper/adding_T400_kru,paper/adding_T400_lstm,paper/adding_T400_rnn,paper/adding_T750_kru,paper/adding_T750_lstm,paper/adding_T750_rnn "$@" ;;
  mnist)  # Table 2: pixel and permuted MNIST (test accuracy); its RC and FC uRNN n=512 and EURNN rows are in peers
    sweep mnist paper/pixel_mnist_kru,paper/pixel_mnist_lstm_kru,paper/pixel_mnist_lstm,paper/pixel_mnist_rnn,paper/pixel_mnist_fcurnn_n116,paper/permuted_mnist_kru,paper/permuted_mnist_lstm_kru,paper/permuted_mnist_lstm,paper/permuted_mnist_rnn,paper/permuted_mnist_fcurnn_n116 "$@" ;;
  table3)  # Table 3: PTB char (test BPC), the ≈120K block then the ≈420K block
    sweep table3 paper/ptb_char_kru,paper/ptb_char_lstm,paper/ptb_char_rnn,paper/ptb_char_kru_n993,paper/ptb_char_lstm_kru,paper/ptb_char_lstm_n300,paper/ptb_char_rnn_n600 "$@" ;;
  table4)  # Table 4: JSB and Piano-midi (test NLL per time step); Nottingham and MuseData: our extension
    sweep table4 paper/music_jsb_kru,paper/music_jsb_lstm_kru,paper/music_jsb_lstm,paper/music_jsb_rnn,paper/music_piano_kru,paper/music_piano_lstm_kru,paper/music_piano_lstm,paper/music_piano_rnn,paper/music_nottingham_kru,paper/music_nottingham_lstm_kru,paper/music_nottingham_lstm,paper/music_nottingham_rnn,paper/music_musedata_kru,paper/music_musedata_lstm_kru,paper/music_musedata_lstm,paper/music_musedata_rnn "$@" ;;
  peers)  # the unitary RNNs KRU grew out of (uRNN, FC-uRNN, EURNN, expRNN): copy T=1000 (uRNN and FC-uRNN at T=2000
           # too, Fig. 1), adding T=100/400 (uRNN at T=200, FC-uRNN at T=200 and 750, Fig. 2), JSB, MNIST;
           # PTB char for EURNN and expRNN (the peers with published PTB numbers)
    sweep peers paper/copy_T1000_urnn,paper/copy_T1000_fcurnn,paper/copy_T1000_eurnn,paper/copy_T1000_exprnn,paper/copy_T2000_urnn,paper/copy_T2000_fcurnn,paper/adding_T100_urnn,paper/adding_T100_fcurnn,paper/adding_T100_eurnn,paper/adding_T100_exprnn,paper/adding_T400_urnn,paper/adding_T400_fcurnn,paper/adding_T400_eurnn,paper/adding_T400_exprnn,paper/adding_T200_urnn,paper/adding_T200_fcurnn,paper/adding_T750_fcurnn,paper/music_jsb_urnn,paper/music_jsb_fcurnn,paper/music_jsb_eurnn,paper/music_jsb_exprnn,paper/pixel_mnist_urnn,paper/pixel_mnist_fcurnn,paper/pixel_mnist_eurnn,paper/pixel_mnist_exprnn,paper/permuted_mnist_urnn,paper/permuted_mnist_fcurnn,paper/permuted_mnist_eurnn,paper/permuted_mnist_exprnn,paper/ptb_char_eurnn,paper/ptb_char_exprnn "$@" ;;
  all)
    for t in fig1 fig2 mnist table3 table4 peers; do "$0" "$t" "$@"; done ;;
  *)
    echo "usage: $0 fig1|fig2|mnist|table3|table4|peers|all [Hydra overrides, e.g. launcher=slurm]" >&2; exit 2 ;;
esac
