"""Checkpoints: written atomically (a killed process never leaves a half-written file), holding only tensors
and plain data (loaded with `weights_only=True`, so a crafted file cannot run code) and a sha256 digest of that
content (checked on load, so a damaged file is refused instead of resumed). A resume refuses to continue a run
under a different task, model, seed or optimizer."""
from __future__ import annotations

import hashlib
import io
import logging
import random
from pathlib import Path
from typing import Any

import torch

from ..config import INCIDENTAL_KEYS, flatten, upgrade_config
from .files import atomic_write

log = logging.getLogger("krubench")

LAST, BEST = "last.pt", "best.pt"
#: config sections that define a run; resuming with any of them changed is refused (the schedule too: the lr of
#: the steps already taken was the old schedule's, and the report would credit the run to the new one)
IDENTITY_KEYS = ("task", "model", "seed", "schedule")
DIGEST = "sha256"  # the key of the content digest inside a checkpoint


#: what a resume reads from a checkpoint, and the types it must have (a key absent from an older checkpoint is
#: not checked, except step and model)
NUMBER = (int, float)
FIELDS = {"step": (int,), "model": (dict,), "optimizer": (dict,), "rng": (dict,), "task": (dict,), "config": (dict,),
          "schedule": (dict,), "early_stopping": (dict,), "best": (*NUMBER, type(None)),
          "best_step": (int, type(None)), "elapsed": NUMBER}
REQUIRED = ("step", "model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, not a krubench checkpoint, or from another run."""


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


def content_digest(obj: Any) -> str:
    """sha256 over the structure and values of nested dicts/lists/tuples of tensors and plain values."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"tensor {t.dtype} {tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"dict {len(x)}:".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__} {len(x)}:".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"{type(x).__name__} {x!r};".encode())

    feed(obj)
    return h.hexdigest()


def save(path: Path, **content) -> None:
    buffer = io.BytesIO()  # serialised first: torch.save to a full disk fails with "unexpected pos", not ENOSPC
    torch.save({**content, DIGEST: content_digest(content)}, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load(path: Path, map_location="cpu") -> dict:
    """A checkpoint's content, its digest checked. Raises CheckpointError naming the file if it is damaged.
    Checkpoints written before digests existed load with a warning."""
    path = Path(path)
    what_to_do = (f"Move it aside (mv {path} {path}.bad) and rerun: the run continues from scratch, "
                  "or choose a new run directory (hydra.run.dir=...).")
    if path.exists() and not path.is_file():  # a named pipe would block the load forever, waiting for a writer
        raise CheckpointError(f"{path} is not a regular file: a checkpoint is a file krubench wrote. {what_to_do}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, empty, random bytes, or a pickle of something other than tensors
        raise CheckpointError(f"{path} is damaged or not a krubench checkpoint ({load_failure(e)}). "
                              f"{what_to_do}") from e
    if not isinstance(ckpt, dict) or "step" not in ckpt:
        raise CheckpointError(f"{path} is not a krubench checkpoint (no step in it). {what_to_do}")
    for key, kinds in FIELDS.items():
        value = ckpt.get(key)
        if (key in ckpt or key in REQUIRED) and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise CheckpointError(f"{path} is not a usable krubench checkpoint: its {key} is {value!r:.40}, not "
                                  f"{' or '.join(k.__name__ for k in kinds)}. {what_to_do}")
    stored = ckpt.pop(DIGEST, None)
    if stored is None:
        log.warning(f"{path} is an old-format checkpoint without a digest: loaded without an integrity check")
    elif stored != content_digest(ckpt):
        raise CheckpointError(f"{path} is damaged: its content does not match its sha256 digest. {what_to_do}")
    if "config" in ckpt:  # written by an earlier krubench: its keys as they are named now
        ckpt["config"] = upgrade_config(ckpt["config"])
    return ckpt


def load_failure(e: Exception) -> str:
    """Why torch.load failed, in its own words, without its advice to retry with weights_only=False: that load
    runs any code the file holds."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else type(e).__name__


def config_diff(saved: dict, current: dict, keys=IDENTITY_KEYS) -> list[str]:
    """Lines 'key: saved -> current' for every identity value that differs; the backend keys among them
    (INCIDENTAL_KEYS: the same math) may differ, and be absent from a checkpoint written before they existed.
    A key the checkpoint predates that is null now (off, as a new key's default is) is no difference."""
    a = flatten({k: saved.get(k) for k in keys})
    b = flatten({k: current.get(k) for k in keys})
    return [f"  {k}: {a.get(k, '<absent>')!r} (checkpoint) -> {b.get(k, '<absent>')!r} (now)"
            for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>") and not k.startswith(INCIDENTAL_KEYS)
            and not (k not in a and b[k] is None)]


def load_for_resume(run_dir: Path, config: dict, resume: str) -> dict | None:
    """The checkpoint to continue from, or None for a fresh start. Raises if the run dir holds a
    checkpoint of another task/model/seed/optimizer, or any checkpoint when resume=never."""
    path = Path(run_dir) / LAST
    if not path.exists():
        return None
    if resume == "never":
        raise FileExistsError(
            f"{path} exists and trainer.resume=never: choose a new run directory (hydra.run.dir=...) "
            "or set trainer.resume=auto to continue that run"
        )
    ckpt = load(path)
    diff = config_diff(ckpt["config"], config)
    if diff:
        raise CheckpointError(
            f"refusing to resume {path}: it was written for a different run. Differences:\n" + "\n".join(diff)
            + "\nUse a new run directory for a new configuration, or restore the values above to continue."
        )
    saved, now = ckpt["config"]["optim"]["name"], config["optim"]["name"]
    if saved != now:
        raise CheckpointError(
            f"refusing to resume {path} with optim.name={now}: it was trained with optim.name={saved}, whose "
            f"state {now} cannot continue. Rerun with optim={saved} to continue it (optim.lr and the other "
            f"values may change), or choose a new run directory (hydra.run.dir=...) to train with {now} from scratch."
        )
    return ckpt


def optim_changes(saved: dict, current: dict) -> list[str]:
    """'optim.lr changed 0.001 -> 0.0005' for every optimizer value that differs from the checkpoint's."""
    a, b = flatten(saved["optim"], "optim"), flatten(current["optim"], "optim")
    return [f"{k} changed {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
