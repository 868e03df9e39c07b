"""scripts/bench_kernels.py runs and prints its tables; its memory measurement holds the kernel to the
issue's bound (a training step of the recurrence peaks at ≤ 2× the stored states). No timing assertions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_kernels.py"


def run(*args: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True).stdout


def test_the_benchmark_prints_its_tables():
    out = run("--sizes", "16", "--steps", "4", "--repeats", "1", "--memory-steps", "50", "--lstm-kru", "3")
    for heading in ("| N | lanes fwd+bwd ms |", "| N | backend | kept for backward MB |", "| N | factorisation |"):
        assert heading in out, out
    assert "| 16 | lanes |" in out and "| 16 | reference |" in out and "| 16 | joint |" in out


def test_a_training_step_of_the_fused_recurrence_peaks_at_twice_the_states():
    N, B, T = 128, 32, 400
    states = B * T * N * 8
    for kernel in ("lanes", "cpp"):
        peak = int(run("--peak-child", kernel, str(N), str(B), str(T), "4").split()[-1])
        assert peak <= 2.05 * states, f"{kernel}: step peak {peak / states:.2f}× the stored states"
