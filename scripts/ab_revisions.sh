#!/usr/bin/env bash
# Time one command on two revisions side by side: a git worktree of REV (its own kernel build cache) and
# this checkout, alternating for ROUNDS rounds, so that both see the same machine state. Each line of
# output is prefixed with the revision that printed it. For kernel and training-step comparisons in
# BENCHMARKS.md (absolute times on a shared machine are noise; read the pairs).
#   bash scripts/ab_revisions.sh REV [ROUNDS] -- python scripts/bench_kernels.py --sizes 512 --memory-steps 0
# The command runs from the root of each tree (use paths relative to it) with that tree's krubench first
# on PYTHONPATH. The worktree and its caches stay in ${AB_DIR:-/tmp/krubench-ab}/REV for the next call.
set -euo pipefail
rev=${1:?usage: ab_revisions.sh REV [ROUNDS] -- COMMAND...}; shift
rounds=3
if [ "${1:-}" != "--" ]; then rounds=${1:?}; shift; fi
[ "${1:-}" = "--" ] || { echo "ab_revisions.sh: put -- before the command" >&2; exit 2; }
shift
here=$(cd "$(dirname "$0")/.." && pwd)
sha=$(git -C "$here" rev-parse --short "$rev")
base=${AB_DIR:-/tmp/krubench-ab}/$sha
if [ ! -d "$base/tree" ]; then
  mkdir -p "$base"
  git -C "$here" worktree add --quiet --detach -f "$base/tree" "$sha"
fi
run() {  # run TREE LABEL [env...]: the command in TREE, its output prefixed with LABEL
  local tree=$1 label=$2; shift 2
  (cd "$tree" && env PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" "$@" "${cmd[@]}" 2>&1 | sed "s/^/[$label] /")
}
cmd=("$@")
for ((r = 1; r <= rounds; r++)); do
  echo "== round $r/$rounds"
  run "$base/tree" "$sha" TORCH_EXTENSIONS_DIR="$base/ext" XDG_CACHE_HOME="$base/cache"
  run "$here" "$(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet || echo +)"
done
