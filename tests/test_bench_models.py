"""scripts/bench_models.py runs every model through a training step and prints one table row each. No timing assertions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from krubench.models import MODELS

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_models.py"


def test_the_benchmark_prints_a_row_per_model():
    out = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "8", "--length", "5", "--batch", "2", "--repeats", "1",
                          "--threads", "1"], capture_output=True, text=True, check=True).stdout
    assert "| model | N | recurrent params | total params | ms per step (best) |" in out
    for name in MODELS:
        assert f"| {name} | 8 |" in out, out
