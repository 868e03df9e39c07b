"""Building the compiled backends: the nvcc compile check (so a CUDA compile error fails CI without a
GPU), the build lock and its timeout, stale lock files, the cache folder, and the console scripts."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from krubench.ops import build

SCRIPTS = Path(sys.executable).parent


def script(name: str) -> str:
    found = SCRIPTS / name if (SCRIPTS / name).exists() else shutil.which(name)
    assert found, f"the {name} console script is not installed: run pip install -e ."
    return str(found)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"), reason="no nvcc")
def test_cuda_sources_compile_with_nvcc():
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    proc = subprocess.run([script("krubench-build"), "--backend", "cuda"], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"the CUDA backend does not compile:\n{proc.stdout}\n{proc.stderr}"
    assert "cuda: ready" in proc.stdout


def test_build_dir_is_keyed_by_versions_under_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = build.build_dir("cpp")
    assert folder.parent.parent == tmp_path and folder.name == "krubench_cpu"
    assert torch.__version__.replace("+", "_") in folder.parent.name


def test_build_dir_is_keyed_by_the_sources_and_the_flags(monkeypatch, tmp_path):
    """Two checkouts (or revisions) never share a build folder; the same sources and flags always do."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    checkouts = [shutil.copytree(build.source_dir(), tmp_path / name) for name in ("a", "b")]
    monkeypatch.setattr(build, "source_dir", lambda: checkouts[0])
    first = build.build_dir("cpp")
    assert build.build_dir("cpp") == first and first.parent.name.endswith(f"-src{build.source_tag('cpp')}")
    (checkouts[0] / "kron_math.h").write_text((checkouts[0] / "kron_math.h").read_text() + "\n// edited\n")
    edited = build.build_dir("cpp")
    assert edited != first
    monkeypatch.setattr(build, "source_dir", lambda: checkouts[1])  # same sources as `first`, another checkout
    assert build.build_dir("cpp") not in (first, edited)
    flags = build._flags

    def more_flags(backend):
        out = flags(backend)
        return {**out, "extra_cflags": [*out["extra_cflags"], "-DKRUBENCH_TEST"]}

    other = build.build_dir("cpp")
    monkeypatch.setattr(build, "_flags", more_flags)
    assert build.build_dir("cpp") != other


@pytest.mark.skipif(torch.cuda.is_available(), reason="a visible GPU gives the arch")
@pytest.mark.parametrize("broken", ["a compiler that fails (CXX=/bin/false)", "TORCH_EXTENSIONS_DIR is a file"])
def test_model_kernel_auto_falls_back_to_the_reference_when_the_build_cannot_run(tmp_path, broken):
    # In a process of its own: torch versions a JIT extension loaded again from another folder in one process
    # (krubench_cpp_v1, …), and loading that second copy of the kernels' operators aborts the process.
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    if broken.startswith("a compiler"):
        env["CXX"] = "/bin/false"
    else:
        (tmp_path / "file").write_text("")
        env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "file")
    code = ("import logging; logging.basicConfig(level=logging.WARNING)\n"
            "from krubench.ops import dispatch\n"
            "print(dispatch.backend_for('auto', 'cpu'))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "reference"
    assert "the cpp Kronecker backend is unavailable, using the reference instead" in proc.stderr


def test_the_cuda_arch_must_be_named_without_a_gpu(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with pytest.raises(build.BuildError, match="set TORCH_CUDA_ARCH_LIST"):
        build.cuda_arch_list()


def test_a_build_held_by_another_process_times_out_instead_of_hanging(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = str(build.build_dir("cpp")) + ".lock"
    Path(lock).parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from filelock import FileLock
        with FileLock({lock!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(build, "LOCK_TIMEOUT_S", 1.0)
        started = time.time()
        with pytest.raises(build.BuildError, match="krubench-build"):
            build.build("cpp")
        assert time.time() - started < 30
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_file_of_an_older_torch_is_removed(monkeypatch, caplog):
    """torch < 2.9 waits forever on the lock file a killed build leaves; under our own OS lock no other
    build can be running, so the file is stale and goes (newer torch recreates it as its OS lock)."""
    build.build("cpp")  # built (and cached) by the kernel tests already
    (build.build_dir("cpp") / "lock").touch()
    monkeypatch.setattr(build, "_torch_uses_baton", lambda cpp_extension: True)
    with caplog.at_level(logging.WARNING, logger="krubench"):
        build.build("cpp")
    assert any("stale build lock" in r.getMessage() for r in caplog.records)


def test_doctor_reports_first_without_torchs_cuda_warning():
    """Importing cpp_extension on a machine with nvcc but no GPU logs torch's "No CUDA runtime is found", which
    came before the doctor's first row. The backends' checks are stubbed: only the report's start is tested."""
    stubbed = textwrap.dedent("""
        from krubench.ops import dispatch, doctor
        doctor._check = lambda backend, device: "stubbed"
        dispatch.backend_for = lambda kernel, device: "stubbed"
        doctor.doctor_main([])
    """)
    proc = subprocess.run([sys.executable, "-c", stubbed], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "No CUDA runtime" not in proc.stdout + proc.stderr
    assert proc.stdout.split(":")[0].strip() == "python" and "GPU:" in proc.stdout


@pytest.mark.slow
def test_doctor_lists_versions_and_working_backends():
    proc = subprocess.run([script("krubench-doctor")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for row in ("torch:", "nvcc:", "C++ compiler:", "reference: ok", "cpp: ok", "model.kernel=auto runs: cpp"):
        assert row in proc.stdout, f"{row!r} missing from krubench-doctor's output:\n{proc.stdout}"
