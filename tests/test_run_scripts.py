"""The scripts behind RESULTS.md (`scripts/run_cpu.sh`, `scripts/sweep_*.sh`) queue hours of runs each: with
DRY_RUN=1 every one prints its runs and starts or copies nothing, and every run it prints composes (its preset and
overrides exist), so a typo cannot surface hours into a queue."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, compose_config

SCRIPTS = sorted([REPO / "scripts" / "run_cpu.sh", *(REPO / "scripts").glob("sweep_*.sh")])


def dry_run(script: Path, root: Path) -> list[str]:
    """The runs `script` would start in a checkout without results (a copy of scripts/ under `root`)."""
    if not (root / "scripts").exists():
        shutil.copytree(REPO / "scripts", root / "scripts")
    proc = subprocess.run(["bash", str(root / "scripts" / script.name)], cwd=root, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def run_overrides(command: str) -> list[str]:
    """A printed run's config overrides: the words after `krubench` (or `python -m krubench.cli`), less hydra.*."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w in ("krubench", "krubench.cli")) + 1
    return [w for w in words[start:] if not w.startswith("hydra.")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_run_script_dry_run_prints_runs_that_compose_and_starts_nothing(script, tmp_path):
    commands = dry_run(script, tmp_path)
    assert commands, f"{script.name} printed no run"
    assert not (tmp_path / "results").exists(), f"{script.name} with DRY_RUN=1 wrote {list(tmp_path.rglob('results/*'))}"
    for command in commands:
        assert "hydra.run.dir=" in command, command  # each run in its own folder: resumable, found by the report
        cfg = compose_config(run_overrides(command))
        assert cfg.trainer.threads == 1, command  # two runs at a time on two cores


def test_a_dry_run_selects_by_pattern(tmp_path):
    commands = dry_run(REPO / "scripts" / "run_cpu.sh", tmp_path)
    picked = subprocess.run(["bash", "scripts/run_cpu.sh", "ptb_char_lstm_n300 "], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "DRY_RUN": "1"}).stdout.splitlines()
    assert picked == [c for c in commands if "paper/ptb_char_lstm_n300 " in c] and len(picked) == 1


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_run_script_skips_finished_runs(script, tmp_path):
    """A fresh clone holds the finished runs' folders but no checkpoints: rerunning one would train it again over
    its committed results."""
    commands = dry_run(script, tmp_path)
    folder = Path(shlex.split(commands[0].split("hydra.run.dir=")[1])[0])
    folder = folder if folder.is_absolute() else tmp_path / folder
    folder.mkdir(parents=True)
    (folder / "status.json").write_text('{\n  "status": "ok",\n  "step": 10\n}\n')
    assert dry_run(script, tmp_path) == commands[1:]
