"""Checkpoints: written atomically (a killed process never leaves a half-written file), and a resume
that refuses to continue a run under a different task or model."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

LAST, BEST = "last.pt", "best.pt"
#: config sections that define a run; resuming with any of them changed is refused
IDENTITY_KEYS = ("task", "model", "seed")


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temporary file next to `path`, fsync it, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, default=str) + "\n").encode()))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, **content) -> None:
    atomic_write(path, lambda f: torch.save(content, f))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(saved: dict, current: dict, keys=IDENTITY_KEYS) -> list[str]:
    """Lines 'key: saved -> current' for every identity value that differs."""
    a = flatten({k: saved.get(k) for k in keys})
    b = flatten({k: current.get(k) for k in keys})
    return [f"  {k}: {a.get(k, '<absent>')!r} (checkpoint) -> {b.get(k, '<absent>')!r} (now)"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def load_for_resume(run_dir: Path, config: dict, resume: str) -> dict | None:
    """The checkpoint to continue from, or None for a fresh start. Raises if the run dir holds a
    checkpoint of another task/model/seed, or any checkpoint when resume=never."""
    path = Path(run_dir) / LAST
    if not path.exists():
        return None
    if resume == "never":
        raise FileExistsError(
            f"{path} exists and trainer.resume=never: choose a new run directory (hydra.run.dir=...) "
            "or set trainer.resume=auto to continue that run"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    diff = config_diff(ckpt["config"], config)
    if diff:
        raise ValueError(
            f"refusing to resume {path}: it was written for a different run. Differences:\n" + "\n".join(diff)
            + "\nUse a new run directory for a new configuration, or restore the values above to continue."
        )
    return ckpt
