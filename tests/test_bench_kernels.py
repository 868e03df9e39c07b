"""scripts/bench_kernels.py runs and prints its tables; its memory measurement holds the kernel to the
issue's bound (a training step of the recurrence peaks at ≤ 2× the stored states). No timing assertions."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_kernels.py"


def run(*args: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_the_benchmark_prints_its_tables():
    out = run("--sizes", "16", "--steps", "4", "--repeats", "1", "--memory-steps", "50", "--lstm-kru", "3")
    for heading in ("| N | lanes fwd+bwd ms |", "| N | backend | kept for backward MB |", "| N | factorisation |"):
        assert heading in out, out
    assert "| 16 | lanes |" in out and "| 16 | reference |" in out and "| 16 | joint |" in out


@pytest.mark.slow
def test_a_training_step_of_the_fused_recurrence_peaks_at_twice_the_states():
    N, B, T = 128, 32, 400
    states = B * T * N * 8
    for kernel in ("lanes", "cpp"):
        peak = int(run("--peak-child", kernel, str(N), str(B), str(T), "4").split()[-1])
        assert peak <= 2.05 * states, f"{kernel}: step peak {peak / states:.2f}× the stored states"


def test_ab_revisions_runs_a_command_in_both_trees_alternately(tmp_path):
    """scripts/ab_revisions.sh: a worktree of REV with its own caches, and this checkout, round by round."""
    root = SCRIPT.parent.parent
    ab = root / "scripts" / "ab_revisions.sh"
    probe = "import krubench, pathlib; print(pathlib.Path(krubench.__file__).parent.parent)"
    try:
        out = subprocess.run(["bash", str(ab), "HEAD", "2", "--", sys.executable, "-c", probe], capture_output=True,
                             text=True, check=True, cwd=root, env={**os.environ, "AB_DIR": str(tmp_path)}).stdout
    finally:
        for tree in tmp_path.glob("*/tree"):
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], capture_output=True)
    lines = [line for line in out.splitlines() if not line.startswith("==")]
    assert len(lines) == 4 and out.count("== round") == 2, out
    trees = [line.split("] ", 1)[1] for line in lines]
    assert trees[0] == trees[2] and trees[1] == trees[3] == str(root) and trees[0].startswith(str(tmp_path)), out


@pytest.mark.slow
def test_bench_freed_memory_prints_both_allocator_settings(tmp_path):
    script = SCRIPT.parent / "bench_freed_memory.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # krubench, python3
    out = subprocess.run(["bash", str(script), "adding_T100_kru", "4", "task.val_size=20", "model.hidden_size=16"],
                         capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines()[2:]]
    assert [r[1].strip() for r in rows] == ["default", "keeps freed memory"], out
    assert all(float(r[2]) > 0 and int(r[3]) > 0 for r in rows), out


@pytest.mark.slow
def test_the_gpu_check_script_parses_and_its_phases_dry_run_on_the_cpu():
    """scripts/gpu_check.sh is valid bash; scripts/gpu_check.py's phases run on the CPU at tiny sizes
    (--dry-run, the cpp backend standing in for cuda) and print their Markdown tables."""
    root = SCRIPT.parent.parent
    subprocess.run(["bash", "-n", str(root / "scripts" / "gpu_check.sh")], check=True)
    check = root / "scripts" / "gpu_check.py"
    outputs = {phase: subprocess.run([sys.executable, str(check), phase, "--dry-run"], capture_output=True, text=True,
                                     check=True).stdout for phase in ("preflight", "sanitize", "large", "bench", "e2e")}
    assert "| nvcc |" in outputs["preflight"] and "| libcudart |" in outputs["preflight"]
    assert "every kernel ran" in outputs["sanitize"]
    assert "| 256 | 5 | 6 |" in outputs["large"] and "FAIL" not in outputs["large"]
    assert "| N=64, 2×2 | 5 | 10 | cpp |" in outputs["bench"] and "HBM floor" in outputs["bench"]
    assert "| music, 2×2×5×5 | 5 | 10 | cpp |" in outputs["bench"]
    assert "× the KRU's)" in outputs["bench"]  # the fused kernel on merged factors, beside 2×2 rows
    for preset in ("pixel_mnist_kru", "ptb_char_kru", "ptb_char_kru_n993"):
        assert f"| {preset} | 4 | 12 | cpp |" in outputs["e2e"]


@pytest.mark.slow
def test_the_end_to_end_benchmark_prints_speed_and_memory_and_holds_the_kru_step_to_its_states():
    """scripts/bench_e2e.py on a small copy task: both tables; the fused KRU layer keeps little more than its
    states H for the backward pass (no (B, T, 2N) input or gradient tensor), while a dense RNN keeps 2×."""
    out = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_e2e.py"), "--memory", "--presets", "copy_T1000",
                          "--models", "kru", "rnn", "--threads", "1", "--rounds", "1", "--override", "task.T=400"],
                         capture_output=True, text=True, check=True).stdout
    assert "| copy_T1000 | kru | 128 | 20 | 1 | flush | cpp |" in out and "| copy_T1000 | rnn | 128 | 20 | 1 | flush | none |" in out
    rows = {line.split(" | ")[1]: line.split(" | ") for line in out.splitlines()
            if line.startswith("| copy_T1000 |") and line.count("|") == 8}
    assert set(rows) == {"kru", "rnn"}, out
    assert float(rows["kru"][5]) <= 1.15 and float(rows["rnn"][5]) >= 1.9, out  # kept / largest kept
