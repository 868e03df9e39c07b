"""One run per run directory: an advisory lock held for the run's life, and the status.json of a finished
run kept as it was when a rerun into its directory is refused, fails or is interrupted."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .files import atomic_write_json
from .results import STATUS

log = logging.getLogger("krubench")

LOCK = ".lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


@contextmanager
def locked(run_dir: Path):
    """Hold an exclusive flock on run_dir/.lock. The file names its holder while held and is emptied on
    release; the kernel drops the lock when its process dies, so a lock left by a killed run is never in
    the way (it is only reported)."""
    path = Path(run_dir) / LOCK
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunDirBusy(f"{run_dir} is in use by {holder}: two runs in one directory would overwrite each "
                         "other's checkpoints. Wait for it to end (or stop it), or choose another run directory "
                         "(hydra.run.dir=...).") from None
    f.seek(0)
    if stale := f.read().strip():
        log.info(f"the run directory's lock was last held by {stale}, which has ended without releasing it")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    f.flush()
    try:
        yield
    finally:
        f.seek(0)
        f.truncate()
        f.close()  # releases the lock


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None


def is_finished(status: dict | None) -> bool:
    return status is not None and status.get("status") == "ok"


def restore_status(run_dir: Path, status: dict) -> None:
    """Put back a finished run's status.json after a rerun that did not finish."""
    atomic_write_json(Path(run_dir) / STATUS, status)
    log.warning(f"{Path(run_dir) / STATUS} left as it was: the rerun did not finish, the earlier run did")
