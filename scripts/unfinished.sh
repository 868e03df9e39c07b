# Sourced by the run scripts (run_cpu.sh, sweep_*.sh). `commands | unfinished` passes on the runs whose folder
# (hydra.run.dir=, relative to the repository root) does not hold a finished run: rerunning a finished run's command where its last.pt is gone
# (a fresh clone keeps no checkpoints) would train it again from scratch over the committed results.
unfinished() {
  local cmd dir
  while IFS= read -r cmd; do
    dir=${cmd##*hydra.run.dir=}; dir=${dir%% *}
    grep -qs '"status": "ok"' "$dir/status.json" || echo "$cmd"
  done
}
