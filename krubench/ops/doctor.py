"""Console scripts for the compiled backends: `krubench-build` (compile once before a sweep, so that
parallel workers only load) and `krubench-doctor` (versions, and which backends build and agree with
the reference)."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time

import torch

from . import build, dispatch
from .recurrence import kru_recurrence_ref


def _wanted_backends(choice: str) -> list[str]:
    if choice != "all":
        return [choice]
    gpu = torch.cuda.is_available() or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    return ["cpp", "cuda"] if gpu else ["cpp"]


def build_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="krubench-build", description="Compile krubench's Kronecker kernels into the "
                                "build cache (respects MAX_JOBS, TORCH_CUDA_ARCH_LIST, TORCH_EXTENSIONS_DIR).")
    p.add_argument("--backend", choices=["all", "cpp", "cuda"], default="all",
                   help="all (default): cpp, plus cuda if a GPU is visible or TORCH_CUDA_ARCH_LIST is set")
    p.add_argument("--verbose", action="store_true", help="print the compiler's commands and output")
    args = p.parse_args(argv)
    if args.verbose:
        os.environ["KRUBENCH_BUILD_VERBOSE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    status = 0
    for backend in _wanted_backends(args.backend):
        started = time.time()
        print(f"building the {backend} backend ...", flush=True)
        try:
            if backend == "cuda":
                build.build("cpp")  # the CUDA library implements the operators the CPU library defines
            folder = build.build(backend)
            print(f"{backend}: ready in {time.time() - started:.0f} s ({folder})")
        except build.BuildError as e:
            print(f"{backend}: FAILED: {e}", file=sys.stderr)
            status = 1
    return status


def _version(cmd: list[str]) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        return "not found"
    out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True).stdout.strip().splitlines()
    release = [ln for ln in out if "release" in ln]  # nvcc: "Cuda compilation tools, release 13.0, V13.0.88"
    return (release or out or ["unknown"])[0]


def _check(backend: str, device: str) -> str:
    """Build/load `backend` and compare one small recurrence with the reference: 'ok' or why not."""
    reason = dispatch.load(backend)
    if reason is not None:
        return f"unavailable: {reason}"
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 5, 8, dtype=torch.complex64, generator=g)
    h0 = torch.zeros(3, 8, dtype=torch.complex64)
    factors = [torch.randn(2, 2, dtype=torch.complex64, generator=g) / 2 for _ in range(3)]
    ref = kru_recurrence_ref(u, h0, factors, "tanh")
    got = dispatch.kru_recurrence(u.to(device), h0.to(device), [f.to(device) for f in factors], "tanh",
                                  kernel=backend).cpu()
    err = (got - ref).abs().max().item()
    return "ok" if err < 1e-4 else f"WRONG: max error {err:.2g} against the reference; please report it"


def doctor_main(argv=None) -> int:
    argparse.ArgumentParser(prog="krubench-doctor", description="Versions, and which Kronecker backends work "
                            "here (builds them if needed).").parse_args(argv)
    cpp_extension = build.import_cpp_extension()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible (torch finds no CUDA device)"
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else "nvcc"
    rows = {
        "python": sys.version.split()[0],
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        "GPU": gpu,
        "nvcc": _version([nvcc, "--version"]),
        "C++ compiler": _version([os.environ.get("CXX", "c++"), "--version"]),
        "ninja": _version(["ninja", "--version"]),
        "build cache": str(build.build_dir("cpp").parent.parent),
        "MAX_JOBS": os.environ.get("MAX_JOBS", "(torch's default)"),
        "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "(the visible GPU's)"),
    }
    for key, value in rows.items():
        print(f"{key:>22}: {value}")
    print(f"{'reference':>22}: ok (pure PyTorch, always available)")
    print(f"{'cpp':>22}: {_check('cpp', 'cpu')}", flush=True)
    if torch.cuda.is_available():
        print(f"{'cuda':>22}: {_check('cuda', 'cuda')}")
    else:
        print(f"{'cuda':>22}: not checked (no GPU visible); `TORCH_CUDA_ARCH_LIST=9.0 krubench-build --backend cuda` "
              "compiles it anyway")
    print(f"{'model.kernel=auto runs':>22}: {dispatch.backend_for('auto', 'cpu')} on the CPU"
          + (f", {dispatch.backend_for('auto', 'cuda')} on the GPU" if torch.cuda.is_available() else ""))
    return 0
