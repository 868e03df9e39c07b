"""Writing files so that a killed process never leaves a half-written one: write a temporary file next to the
target, fsync it, rename it over the target. Checkpoints, results, status files and downloads all write this way."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def read_json_object(path: Path) -> dict:
    """The JSON object (dict) in `path`. Raises ValueError saying why it cannot be read (missing, not a file,
    empty, not JSON, not an object), naming the file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or type(e).__name__})") from e
    except ValueError as e:  # also UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes a killed process never finished (.last.pt.*.tmp, ...).
    Only call it while holding the run directory's lock: otherwise they may be another run's writes."""
    leftovers = list(Path(run_dir).glob(".*.tmp"))
    for p in leftovers:
        p.unlink(missing_ok=True)
    return leftovers
