"""Shared test helpers: compose the real config (as the CLI would) and run the installed CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from krubench.config import register_configs
from krubench.config import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the workspace's real data sets (tests that need them skip without)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one torch CPU thread. The tests' ops are tiny, and a second thread only waits for a
    core: under `pytest -n 2` on 2 cores it made a 12-step run 2x slower (the uRNN's FFT backward 40x). Set
    before each test because a run's `trainer.threads` sets the process-wide count. The kernels'
    multi-threaded paths have their own tests (`test_*_thread_count*`), which set the count they need."""
    torch.set_num_threads(1)


def compose_config(overrides=(), return_hydra_config: bool = False) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def small_run_config(tmp_path: Path, *overrides: str) -> DictConfig:
    """A tiny run: debug trainer, small KRU and copy task, quiet."""
    return compose_config(["trainer=debug", "task.T=10", "task.val_size=40", "model.hidden_size=16",
                           "trainer.progress=never", *overrides])


def krubench_command() -> list[str]:
    """The installed console script next to this interpreter (what a user runs)."""
    script = Path(sys.executable).parent / "krubench"
    if not script.exists():
        found = shutil.which("krubench")
        assert found, "the krubench console script is not installed: run pip install -e ."
        script = Path(found)
    return [str(script)]


def run_cli(args, cwd: Path, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `krubench` command in `cwd`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*krubench_command(), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# The command line that SIGKILLs itself right after it logs a line matching argv[1] (as when a node dies there).
# A test that waits for the line and then kills races the run: a tiny run's last 16 steps take 40 ms.
_KILLED_AT = """
import logging, os, re, signal, sys
pattern = re.compile(sys.argv.pop(1))
handle = logging.Logger.handle
def handle_then_die(self, record):
    handle(self, record)
    if pattern.search(record.getMessage()):
        os.kill(os.getpid(), signal.SIGKILL)
logging.Logger.handle = handle_then_die
from krubench.cli import main
main()
"""


def run_cli_killed_at(pattern: str, args, cwd: Path, timeout: float = 300) -> None:
    """Run the CLI (as `krubench`, in `cwd`) until it logs a message matching `pattern`, and SIGKILL it there."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT, pattern, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == -9, f"{args} was to be killed at {pattern!r} but exited {proc.returncode}:\n" \
                                  f"{proc.stdout}\n{proc.stderr}"


@pytest.fixture
def compose_cfg():
    return compose_config
