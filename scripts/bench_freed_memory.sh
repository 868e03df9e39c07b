#!/usr/bin/env bash
# Training steps/s and peak resident memory of a preset with glibc's defaults vs keeping freed memory
# (MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_; docs/kernels.md, "Large tensors on the CPU"), one run each,
# through the installed CLI. Results go to BENCHMARKS.md, "Training runs with large tensors".
#   bash scripts/bench_freed_memory.sh PRESET [STEPS] [OVERRIDES...]
#   KRUBENCH_DATA=../shared/data bash scripts/bench_freed_memory.sh pixel_mnist_kru 16 task.val_size=200
# steps/s is that of the last logged window (the second half of the steps); peak RSS is getrusage's for the run.
set -euo pipefail
preset=${1:?usage: bench_freed_memory.sh PRESET [STEPS] [OVERRIDES...]}
steps=${2:-16}
shift $(( $# >= 2 ? 2 : 1 ))
echo "| preset | glibc | steps/s | peak RSS MB |"
echo "|---|---|---|---|"
for keep in "" "MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647"; do
  dir=$(mktemp -d)
  # the child's peak RSS (KiB) from getrusage, so that no `time` binary is needed
  (cd "$dir" && env $keep python3 -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:]).returncode
open("rss", "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r)' krubench "experiment=paper/$preset" "trainer.steps=$steps" \
     "trainer.log_every=$((steps / 2))" trainer.val_every=1000000 trainer.ckpt_every=1000000 trainer.progress=never \
     "$@" > log 2>&1) || { echo "krubench failed; its log:" >&2; cat "$dir/log" >&2; exit 1; }
  rate=$(grep -o "[0-9.]* steps/s" "$dir/log" | tail -1 | cut -d' ' -f1)
  label=default
  [ -n "$keep" ] && label="keeps freed memory"
  echo "| $preset | $label | $rate | $(( $(cat "$dir/rss") / 1024 )) |"
  rm -rf "$dir"
done
