"""One run per run directory: an advisory lock held for the run's life, and the status.json of a finished
run kept as it was when a rerun into its directory is refused, fails or is interrupted."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import LAST
from .files import atomic_write, atomic_write_json, read_json_object, storage_error
from .results import RESULTS, STATUS

log = logging.getLogger("krubench")

LOCK = ".lock"
HYDRA = ".hydra"  # the composed config and the overrides of the run's last accepted command


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


@contextmanager
def locked(run_dir: Path):
    """Hold an exclusive flock on run_dir/.lock. The file names its holder while held and is emptied on
    release; the kernel drops the lock when its process dies, so a lock left by a killed run is never in
    the way (it is only reported)."""
    path = Path(run_dir) / LOCK
    try:
        f = open(path, "a+")
    except OSError as e:  # a read-only file system, a full disk
        raise storage_error(e, path) from e
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


def dead_holder(run_dir: Path) -> int | None:
    """The pid that run_dir/.lock names if that process, on this host, has ended without releasing the lock
    (killed by SIGKILL, the out-of-memory killer, a scheduler's hard limit: no status written); else None,
    also when the holder is on another host, which cannot be checked from here. Reads the file only: taking
    the lock to test it could make a run starting at that moment fail."""
    try:
        text = (Path(run_dir) / LOCK).read_text()
    except OSError:
        return None
    named = re.match(r"pid (\d+) on host (\S+) ", text)
    if not named or named[2] != socket.gethostname():
        return None
    try:
        os.kill(int(named[1]), 0)
    except ProcessLookupError:
        return int(named[1])
    except PermissionError:  # alive, another user's
        return None
    return None


def read_status(run_dir: Path) -> dict | None:
    try:
        return read_json_object(Path(run_dir) / STATUS)
    except ValueError:
        return None


def is_finished(status: dict | None) -> bool:
    return status is not None and status.get("status") == "ok"


def refuse_if_checkpoints_gone(run_dir: Path, status: dict | None) -> None:
    """Refuse a run directory holding a finished run without its last.pt (a committed run folder, its checkpoints
    not committed): a run there would train from scratch over the run's results.json, tb/ and krubench.log, and a
    re-report needs the checkpoints."""
    run_dir = Path(run_dir)
    if (is_finished(status) or (run_dir / RESULTS).exists()) and not (run_dir / LAST).exists():
        raise FileExistsError(f"{run_dir} holds a finished run whose checkpoints are gone (no {LAST}): "
                              "a run there would train from scratch over its results.json, tb/ and krubench.log. "
                              f"Choose a new run directory (hydra.run.dir=...), or put its {LAST} back to re-report.")


def restore_status(run_dir: Path, status: dict) -> None:
    """Put back a finished run's status.json after a rerun that did not finish."""
    atomic_write_json(Path(run_dir) / STATUS, status)
    log.warning(f"{Path(run_dir) / STATUS} left as it was: the rerun did not finish, the earlier run did")


def write_hydra_files(run_dir: Path, texts: dict[str, str]) -> None:
    """<run dir>/.hydra/<name> for each name -> text, written atomically."""
    if texts:
        (Path(run_dir) / HYDRA).mkdir(exist_ok=True)
    for name, text in texts.items():
        atomic_write(Path(run_dir) / HYDRA / name, lambda f: f.write(text.encode()))


#: what a run directory holds before krubench accepts the run: Hydra's log file and the lock
BEFORE_START = {"krubench.log", LOCK}


def remove_if_unused(run_dir: Path) -> bool:
    """Remove `run_dir` if it holds nothing but BEFORE_START (a run refused before it started: a config error), and
    its parents up to two levels up (outputs/<date>/) that this leaves empty. True if it was removed."""
    run_dir = Path(run_dir)
    try:
        names = {p.name for p in run_dir.iterdir()}
        if not names <= BEFORE_START:
            return False
        for name in names:
            (run_dir / name).unlink()
        run_dir.rmdir()
        for parent in run_dir.parents[:2]:
            parent.rmdir()  # fails if anything else is there: then it stays
    except OSError:
        pass
    return not run_dir.exists()
