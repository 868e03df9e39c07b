"""Writing files so that a killed process never leaves a half-written one: write a temporary file next to the
target, fsync it, rename it over the target. Checkpoints, results, status files and downloads all write this way."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class StorageError(OSError):
    """A write the file system refused for want of room (full disk, quota, `ulimit -f`) or as read-only."""


#: errno -> what it means for the folder written to
STORAGE_ERRORS = {errno.ENOSPC: "no space left on {folder}", errno.EDQUOT: "no space left on {folder} (disk quota)",
                  errno.EFBIG: "{path} would exceed the file size limit (ulimit -f)",
                  errno.EROFS: "{folder} is on a read-only file system"}


def storage_error(e: OSError, path: Path) -> OSError:
    """`e` as a StorageError naming the folder and what to do when it is one of STORAGE_ERRORS, else `e`."""
    if e.errno not in STORAGE_ERRORS:
        return e
    problem = STORAGE_ERRORS[e.errno].format(folder=Path(path).parent, path=path)
    error = StorageError(f"{problem}: writing {Path(path).name} failed, and the file as it was before is kept. "
                         "Make room (or write elsewhere: hydra.run.dir=...) and rerun the same command to continue "
                         "from the last checkpoint")
    error.errno = e.errno
    return error


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temporary file next to `path`, fsync it, then rename over `path`. Raises
    StorageError when the file system has no room or is read-only; `path` is then as it was."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise storage_error(e, path) from e
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
