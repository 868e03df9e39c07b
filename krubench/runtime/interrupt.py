"""SIGTERM (kill, SLURM), SIGINT (Ctrl-C) and SIGHUP (the terminal closed, an ssh session dropped) end a run cleanly: the first finishes the current step, writes
last.pt and exits with 128 + the signal's number; one that comes once training is over lets the final evaluation
and results.json finish, then exits the same way; a second exits at once. A signal that a launcher already
handles (submitit's SIGTERM) is left to it."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
from pathlib import Path

log = logging.getLogger("krubench")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(Exception):
    """Raised by the training loop after it saved last.pt on a stop request, or (`finished`) after the final
    evaluation that a stop request came during."""

    def __init__(self, signum: int, step: int, finished: bool = False):
        name = signal.Signals(signum).name
        super().__init__(f"{name} during the final evaluation: the run finished at step {step} (results.json written), "
                         f"exiting with {128 + signum}" if finished else
                         f"{name} at step {step}: last.pt saved")
        self.signum, self.step, self.finished = signum, step, finished

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """While active, `requested` holds the number of the first of SIGNALS received (None before).
    `on_second(signum)` runs before a second signal ends the process at once."""

    def __init__(self, on_second):
        self.requested: int | None = None
        self.finishing = False  # set once training is over: a signal then lets the final evaluation finish
        self.on_second = on_second
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return self
        for s in SIGNALS:
            # a launcher's own handler stays (submitit's SIGTERM handler is part of its requeue)
            if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = signum
            if self.finishing:
                log_aside(f"{name} received during the final evaluation: finishing it and results.json, then "
                          f"exiting (send it again to exit at once, without results.json)")
            else:
                log_aside(f"{name} received: finishing this step, saving last.pt, then exiting "
                          f"(send it again to exit at once, without saving)")
            return
        log_aside(f"second {name} received: exiting at once, without saving").join(timeout=1.0)
        self.on_second(signum)
        os._exit(128 + signum)


def log_aside(message: str) -> threading.Thread:
    """Log a warning from another thread. A signal handler runs on the main thread between two of its bytecodes,
    also inside a log line's write: logging from there raised "reentrant call inside <_io.BufferedWriter>" and
    lost the line. The thread waits for the
    handler's lock instead, which the main thread releases once the handler has returned."""
    thread = threading.Thread(target=log.warning, args=(message,), daemon=True)
    thread.start()
    return thread


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The command that continues the run in `run_dir`: the same overrides (any hydra.run.dir replaced) and
    hydra.run.dir=<its folder>. Without it, the same command would start anew in a new time-stamped folder."""
    kept = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return shlex.join(["krubench", *kept, f"hydra.run.dir={Path(run_dir).resolve()}"])
