"""The small files a run leaves for people and for the report: status.json while and after it runs,
results.json when it finishes."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from .files import atomic_write_json, read_json_object

log = logging.getLogger("krubench")

STATUS, RESULTS = "status.json", "results.json"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("krubench", "hydra-core", "omegaconf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def machine() -> dict:
    """What the run ran on: the CPU's model name (Linux's /proc/cpuinfo, else platform's), its cores, and the
    GPU's name when CUDA is there. Hosts can change between the sessions of a resumed run: the log has a line
    per start, results.json the last."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def git_revision(folder: Path = Path(__file__).resolve().parent) -> dict | None:
    """The git commit of the checkout krubench runs from, and whether it has uncommitted changes; None when
    krubench is not run from a git checkout (an installed wheel) or git is missing."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def write_status(run_dir: Path, status: str, step: int | None = None, error: str | None = None) -> None:
    """status: running | ok (with the steps done) | failed (with the error message)."""
    record = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if step is not None:
        record["step"] = step
    if error is not None:
        record["error"] = error
    atomic_write_json(Path(run_dir) / STATUS, record)


def write_results(run_dir: Path, results: dict, before: dict | None = None) -> None:
    """results.json with the versions and git commit krubench runs from. A re-report (a rerun into a finished
    run, which trains nothing; `before`: the results.json it replaces, as read_results gave it) keeps the
    provenance and wall time of the run that trained, and records its own under "reported_by": the numbers are
    the trained weights', whichever checkout evaluated them."""
    here = {"versions": versions(), "machine": machine(), "git": git_revision()}
    before = before or {}
    if "git" in before:
        kept = {k: before[k] for k in ("versions", "machine", "git", "wall_time_s") if k in before}
        record = {**results, **kept, "reported_by": {**here, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    else:
        record = {**results, **here}
    atomic_write_json(Path(run_dir) / RESULTS, record)


def read_results(run_dir: Path) -> dict:
    """The run's results.json; {} when there is none, or when it is damaged (with a warning naming it: the
    re-report writes it anew)."""
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return {}
    try:
        return read_json_object(path)
    except ValueError as e:
        log.warning(f"{e}: written anew from the checkpoints")
        return {}
