"""scripts/bench_models.py runs every model through a training step and prints one table row each. No timing assertions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from krubench.models import MODELS

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_models.py"


def run(*args: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), "--length", "5", "--batch", "2", "--repeats", "1", "--threads",
                           "1", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_the_benchmark_prints_a_row_per_model():
    out = run("--sizes", "8")
    assert "| model | N | recurrent params | total params | ms per step (best) |" in out
    for name in MODELS:
        assert f"| {name} | 8 |" in out, out


@pytest.mark.slow
def test_models_as_their_presets_have_them():
    out = run("--preset", "copy_T1000", "--models", "exprnn", "lstm", "lstm_kru")
    assert "| exprnn | 190 | 17,955 |" in out and "| lstm | 68 |" in out, out
    assert "no preset paper/copy_T1000_lstm_kru: lstm_kru left out" in out


@pytest.mark.slow
def test_the_peers_recurrence_choices_get_a_row_each():
    out = run("--sizes", "8", "--models", "urnn", "kru", "--recurrence", "dense", "reference")
    assert "| urnn (dense) | 8 | 56 |" in out and "| urnn (reference) | 8 | 56 |" in out, out
    assert "| kru | 8 |" in out  # a model without the choice: one row, as without --recurrence
