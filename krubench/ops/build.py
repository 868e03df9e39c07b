"""Build and load the compiled backends from the sources in `cuda/` with `torch.utils.cpp_extension`.

Built on first use (or up front with `krubench-build`) into a cache folder keyed by the torch, CUDA and
Python versions (plus the CUDA arch list, or the CPU's instruction set for the `-march=native` C++
build) and a hash of the kernel sources and compile flags (so two checkouts, or two revisions, never
rebuild one folder in turn), under `$TORCH_EXTENSIONS_DIR` if set, else `$XDG_CACHE_HOME/krubench` (`~/.cache/krubench`).
A build is guarded by an OS file lock (released by the kernel if the builder dies) with a timeout, so
parallel sweep workers wait for one build instead of racing, and never wait forever.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from filelock import FileLock, Timeout

log = logging.getLogger("krubench")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# emu: the CUDA kernels compiled as host C++ and run by an emulator (cuda/kru_emu.h), for the tests
EXTENSIONS = {"cpp": ("krubench_cpu", ["kru_cpu.cpp", "kru_cpu_recurrence.cpp", "kru_cpu_layer.cpp", "kru_cpu_lstm.cpp"]),
              "cuda": ("krubench_cuda", ["kru_cuda.cu"]),
              "emu": ("krubench_emu", ["kru_emu.cpp"])}
LOCK_TIMEOUT_S = float(os.environ.get("KRUBENCH_BUILD_TIMEOUT", "900"))  # longest wait for another build


class BuildError(RuntimeError):
    """A compiled backend could not be built or loaded; the message says why and what to do."""


def source_dir() -> Path:
    """The C++/CUDA sources: inside the package in a wheel (krubench/cuda), at the top level in a checkout."""
    for candidate in (PACKAGE_DIR / "cuda", PACKAGE_DIR.parent / "cuda"):
        if (candidate / "kron_math.h").is_file():
            return candidate
    raise BuildError(f"the kernel sources are missing: neither {PACKAGE_DIR / 'cuda'} nor {PACKAGE_DIR.parent / 'cuda'} "
                     "holds kron_math.h. Reinstall krubench (pip install -e . from a checkout).")


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST, or the arch of the visible GPU. Without either, torch cannot pick one."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        return archs
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    raise BuildError("no GPU is visible to choose the CUDA arch: set TORCH_CUDA_ARCH_LIST (e.g. 9.0 for H100, 8.0 "
                     "for A100) to compile the CUDA backend without a GPU")


def _cpu_tag() -> str:
    """A short hash of the CPU's model and flags: a `-march=native` build is only valid on a CPU like it."""
    info = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        info += "".join([ln for ln in lines if ln.startswith(("model name", "flags"))][:2])
    return hashlib.sha1(info.encode()).hexdigest()[:8]


def source_tag(backend: str) -> str:
    """A short hash of the kernel sources (every .h/.cpp/.cu of source_dir(), name and content) and of the
    compile flags (which hold the sources' paths: each checkout gets its own folder, as torch would otherwise
    rebuild a shared one whenever the other checkout loads it)."""
    h = hashlib.sha256()
    for f in sorted(p for p in source_dir().iterdir() if p.suffix in (".h", ".cpp", ".cu")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps({k: v for k, v in _flags(backend).items() if k != "verbose"}, sort_keys=True).encode())
    return h.hexdigest()[:12]


def build_dir(backend: str) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "krubench")
    key = f"torch{torch.__version__}-cuda{torch.version.cuda or 'none'}-py{sys.version_info[0]}{sys.version_info[1]}"
    key += f"-sm{cuda_arch_list().replace(' ', '_').replace(';', '_')}" if backend == "cuda" else f"-cpu{_cpu_tag()}"
    key += f"-src{source_tag(backend)}"
    return Path(root) / key.replace("+", "_") / EXTENSIONS[backend][0]


def cudart_dir(cuda_home: str) -> Path:
    """The folder of libcudart.so: CUDA_HOME/lib64 normally; nvcc found at /usr/local/bin makes torch
    guess CUDA_HOME=/usr/local while the libraries sit in /usr/local/cuda/lib."""
    home = Path(cuda_home)
    for folder in (home / "lib64", home / "lib", home / "cuda" / "lib64", home / "cuda" / "lib"):
        if (folder / "libcudart.so").exists():
            return folder
    raise BuildError(f"libcudart.so is not under CUDA_HOME={cuda_home} (lib64/, lib/, cuda/lib64/, cuda/lib/): set "
                     "CUDA_HOME to the CUDA toolkit's folder (the one holding bin/nvcc and lib64/)")


# torch >= 2.12's headers need C++20, and its cpp_extension asks for it; older ones ask for C++17, which
# our sources do not all compile under (seen on a GPU machine with torch 2.11): ask for C++20 everywhere.
CXX_STD = "-std=c++20"


def _flags(backend: str, src: Path | None = None) -> dict:
    src = src or source_dir()
    name, files = EXTENSIONS[backend]
    flags = dict(name=name, sources=[str(src / f) for f in files], extra_include_paths=[str(src)],
                 extra_cflags=["-O3", CXX_STD], is_python_module=False, verbose=os.environ.get("KRUBENCH_BUILD_VERBOSE") == "1")
    if backend == "cpp":
        # -fno-trapping-math: the kernels never unmask FP exceptions, and without it GCC keeps a select
        # between two FP results (modReLU's backward) as a branch, so that lanes loop stayed scalar
        # (BENCHMARKS.md); results are the same (no reassociation, unlike -ffast-math)
        flags["extra_cflags"] += ["-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
        flags["extra_ldflags"] = ["-fopenmp"]
    elif backend == "emu":
        flags["extra_cflags"] = ["-O1", CXX_STD, "-fno-math-errno"]  # -O1: a quick build of test code
    else:
        from torch.utils.cpp_extension import CUDA_HOME

        flags["extra_cuda_cflags"] = ["-O3", CXX_STD]
        flags["extra_ldflags"] = [f"-L{cudart_dir(CUDA_HOME)}"]
    return flags


def _torch_uses_baton(cpp_extension) -> bool:
    """torch < 2.9 guards a build folder with a lock *file* that a killed build leaves behind (and later
    builds wait on forever); newer torch uses an OS lock that dies with its holder."""
    return hasattr(cpp_extension, "FileBaton") and not hasattr(cpp_extension, "FileLock")


def import_cpp_extension():
    """torch.utils.cpp_extension, imported without its warning "No CUDA runtime is found" on a machine with nvcc
    but no GPU: expected when building the C++ backend there, and noise in every run's log (and ahead of
    krubench-doctor's report, which says there is no GPU itself)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension  # slow import: only when a kernel is wanted

    return cpp_extension


def build(backend: str) -> Path:
    """Compile (if needed) and load `backend` ('cpp', 'cuda' or 'emu'); returns its build folder.
    Raises BuildError saying why and what to do."""
    cpp_extension = import_cpp_extension()

    if backend == "cuda":
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        if cpp_extension.CUDA_HOME is None:
            raise BuildError("nvcc was not found: install the CUDA toolkit matching torch "
                             f"(CUDA {torch.version.cuda}) and set CUDA_HOME")
    folder = build_dir(backend)
    started = time.time()
    try:
        folder.mkdir(parents=True, exist_ok=True)  # fails where TORCH_EXTENSIONS_DIR is a file or read-only
        with FileLock(str(folder) + ".lock", timeout=LOCK_TIMEOUT_S):
            stale = folder / "lock"  # older torch's FileBaton marker: left behind only by a killed build
            if _torch_uses_baton(cpp_extension) and stale.exists():
                log.warning(f"removing the stale build lock {stale} left by an interrupted build")
                stale.unlink()
            cpp_extension.load(build_directory=str(folder), **_flags(backend))
    except Timeout as e:
        raise BuildError(f"another process has been building in {folder} for over {LOCK_TIMEOUT_S:.0f} s: let it "
                         f"finish and retry, run `krubench-build` once before a sweep, or raise "
                         f"KRUBENCH_BUILD_TIMEOUT") from e
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:  # SubprocessError: a broken $CXX
        lines = str(e).strip().splitlines() or [type(e).__name__]
        cause = next((ln.strip() for ln in lines[1:] if "error" in ln.lower()), "")
        raise BuildError(f"building {EXTENSIONS[backend][0]} in {folder} failed ({lines[0]}{'; ' + cause if cause else ''}): run "
                         f"`KRUBENCH_BUILD_VERBOSE=1 krubench-build --backend {backend}` for the compiler output") from e
    log.debug(f"{backend} backend ready in {time.time() - started:.1f} s ({folder})")
    return folder
