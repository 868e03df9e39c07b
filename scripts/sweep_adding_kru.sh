#!/usr/bin/env bash
# Why the KRU (N=128, 2x2 complex factors) does not reach MSE ≈0 on the adding problem by the paper's sample counts
# (Fig. 2: ≈0 by ~150K samples at T=200, ~370K at T=750; ours at 1,000K: ≈0 only at T=100, and T=750 ends above half
# the baseline). Each lever of the preset moved alone on T=200 (the cheapest T where we miss), seed 0, 10,000 steps
# = 200K samples, judged on the validation MSE (best and final); the base is the preset itself (its 50,000-step
# run results/runs/adding_T200_kru_s0 follows the same curve to step 10,000: constant schedule, same seed), and
# results/sweeps/adding_T200_kru_{N512,lr3e-4}_s0 are the two levers moved earlier at the same budget. After the
# levers of the music account (lr, batch, λ, factor lr, init, clipping), the factor shapes (4·4·4·2; 16·8), real
# factors, a cosine schedule and Adam.
# RESULTS.md ("Fig. 2: the KRU's shortfall") reads these runs. Usage (from the repository root):
#   bash scripts/sweep_adding_kru.sh [PATTERN] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647  # docs/kernels.md "Large tensors on the CPU"
COMMON="trainer.threads=1 trainer.progress=never"
ROOT=$PWD
commands() {  # T, seed, name, then the overrides of that lever (10,000 steps unless they say otherwise)
  while read -r T seed name overrides; do
    local dir=results/sweeps/adding_T${T}_kru_${name}_s$seed
    case " $overrides " in *" trainer.steps="*) ;; *) overrides="trainer.steps=10000 $overrides";; esac
    echo "python -m krubench.cli experiment=paper/adding_T${T}_kru $overrides seed=$seed $COMMON hydra.run.dir=$ROOT/$dir"
  done <<'LEVERS'
200 0 scale1 optim.factor_lr_scale=1.0
200 0 initid model.init=identity
200 0 lr3e-3 optim.lr=3e-3
200 0 clip0 trainer.grad_clip=0
200 0 pen0.1 trainer.unitary_penalty=0.1
200 0 batch50 task.batch_size=50 trainer.steps=4000
200 0 initid_scale1 model.init=identity optim.factor_lr_scale=1.0
200 0 base
200 0 f4 model.factors=[4,4,4,2]
200 0 f16x8 model.factors=[16,8]
200 0 real model.complex=false
200 0 cosine schedule=cosine
200 0 adam optim=adam
200 0 pen0.01 trainer.unitary_penalty=0.01
200 0 pen1 trainer.unitary_penalty=1.0
750 0 adam optim=adam trainer.steps=50000
200 1 adam optim=adam
200 2 adam optim=adam
200 0 adam_cosine optim=adam schedule=cosine
200 0 adam_pen0.1 optim=adam trainer.unitary_penalty=0.1
LEVERS
}
source scripts/unfinished.sh  # finished runs are skipped
if [ -n "${DRY_RUN:-}" ]; then commands | unfinished | grep -e "${1:-.}"; exit 0; fi  # DRY_RUN=1: print what would run
# from a snapshot of HEAD, as scripts/run_cpu.sh does: code edited while the sweep runs cannot change it
snapshot=$ROOT/.runtree/$(git rev-parse --short HEAD)
mkdir -p "$ROOT/.runtree"
(flock 9; [ -d "$snapshot" ] || git worktree add --quiet --detach -f "$snapshot" HEAD) 9>"$ROOT/.runtree/.lock"
commands | unfinished | grep -e "${1:-.}" | (cd "$snapshot" && PYTHONPATH="$snapshot" xargs -P "${2:-1}" -I{} bash -c "{} > /dev/null 2>&1 || echo 'FAILED: {}'")
