#!/usr/bin/env bash
# The GPU check, as one prepared script for a short `device` session: build the cpp and cuda backends,
# run the kernel tests on the GPU (tests/test_kernels.py, cuda rows), then benchmark the fused CUDA
# kernel against cuDNN's nn.RNN (N=1024, B=128, T=1000, forward+backward) and the memory-traffic floor.
#   bash scripts/gpu_check.sh [OUTDIR]        # logs go to OUTDIR (default $OUT, else /tmp/gpu_check)
# Needs python3 with torch, pytest and filelock; krubench runs from this checkout (no install needed).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())")} || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'arch', '$TORCH_CUDA_ARCH_LIST')"

echo "== build"
python3 -c "from krubench.ops.cli import build_main; raise SystemExit(build_main(['--backend', 'all']))" \
  2>&1 | tee "$out/build.log" || exit 1

echo "== GPU kernel tests"
python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_kernels.py -k cuda 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}

echo "== benchmark"
python3 scripts/bench_kernels.py --device cuda --batch 128 --steps 1000 --sizes 1024 --repeats 5 \
  --skip-reference-above 0 2>&1 | tee "$out/bench.log"
exit "$tests"
