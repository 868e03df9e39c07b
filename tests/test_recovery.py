"""Failure modes of a run and what happens (the table in docs/failures.md, "When things go wrong"): damaged,
tampered or crafted checkpoints, old-format checkpoints, the run-directory lock, status.json of a finished run,
signals, TensorBoard after kills, config errors and the NaN stop's recovery, run as a user would."""
import errno
import io
import json
import logging
import os
import pickle
import re
import resource
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import krubench_command, run_cli, run_cli_killed_at, small_run_config
from krubench.runtime import checkpoint, files, rundir, tb
from krubench.runtime import results as results_module
from krubench.runtime.interrupt import Interrupted, StopOnSignal
from krubench.report.table import find_runs
from krubench.tasks.copy import CopyTask
from krubench.train import NonFiniteLoss, train

TINY = ["trainer=debug", "task.T=10", "task.val_size=40", "model.hidden_size=16"]


@pytest.fixture
def finished(tmp_path):
    """A finished 5-step run directory."""
    run = tmp_path / "run"
    train(small_run_config(tmp_path, "trainer.steps=5"), run)
    return run


# ---- checkpoints ----

def flip_bytes_inside_a_tensor(path: Path) -> None:
    data = bytearray(path.read_bytes())
    weights = torch.load(path, weights_only=True)["model"]
    tensor = max(weights.values(), key=torch.Tensor.numel).numpy().tobytes()
    at = data.index(tensor) + len(tensor) // 2
    data[at:at + 32] = bytes(b ^ 0xFF for b in data[at:at + 32])
    path.write_bytes(bytes(data))


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch crafted-pickle-ran",)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "random", "crafted"])
def test_a_damaged_or_crafted_checkpoint_is_refused_naming_the_file(finished, tmp_path, damage, monkeypatch):
    path = finished / "last.pt"
    if damage == "flipped":
        flip_bytes_inside_a_tensor(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(pickle.dumps({"step": 1, "model": RunsCode()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(path))) as e:
        train(small_run_config(tmp_path), finished)
    assert f"mv {path} {path}.bad" in str(e.value)
    assert "weights_only" not in str(e.value)  # torch's advice to load it unsafely is not ours to repeat
    if damage == "crafted":
        assert "is damaged or not a krubench checkpoint" in str(e.value)
    assert not (tmp_path / "crafted-pickle-ran").exists()
    assert json.loads((finished / "status.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_naming_it(finished, name):
    """A named pipe would block the load forever, waiting for a writer."""
    path = finished / name
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(checkpoint.CheckpointError, match=f"^{re.escape(str(path))} is not a regular file"):
        checkpoint.load(path)


@pytest.mark.parametrize("field, value", [("step", "abc"), ("step", -1.5), ("best", "x"), ("model", None),
                                          ("elapsed", [1])])
def test_a_checkpoint_with_a_valid_digest_but_wrong_types_is_refused_naming_the_field(finished, tmp_path, field,
                                                                                       value):
    ckpt = torch.load(finished / "last.pt", weights_only=True)
    del ckpt[checkpoint.DIGEST]
    checkpoint.save(finished / "last.pt", **{**ckpt, field: value})  # a digest of the wrong content
    with pytest.raises(checkpoint.CheckpointError, match=f"{re.escape(str(finished / 'last.pt'))} is not a usable "
                                                         f"krubench checkpoint: its {field} is"):
        train(small_run_config(tmp_path, "trainer.steps=7"), finished)


def test_an_old_format_checkpoint_resumes_with_a_warning(finished, tmp_path, caplog):
    """What the code before digests wrote: torch.save of the same dict, without the digest."""
    old = torch.load(finished / "last.pt", weights_only=True)
    del old[checkpoint.DIGEST]
    torch.save(old, finished / "last.pt")
    with caplog.at_level("INFO", logger="krubench"):
        results = train(small_run_config(tmp_path), finished)
    assert results["steps"] == 10
    assert any("old-format checkpoint" in r.getMessage() for r in caplog.records)
    assert checkpoint.DIGEST in torch.load(finished / "last.pt", weights_only=True)  # rewritten in the new format


def test_a_checkpoint_written_before_a_key_moved_resumes(finished, tmp_path):
    """model.penalty (earlier krubench) is read as trainer.unitary_penalty: the run continues, not refused as
    another run's."""
    old = checkpoint.load(finished / "last.pt")
    old["config"]["model"]["penalty"] = old["config"]["trainer"].pop("unitary_penalty")
    checkpoint.save(finished / "last.pt", **old)
    assert "penalty" in torch.load(finished / "last.pt", weights_only=True)["config"]["model"]
    assert train(small_run_config(tmp_path), finished)["steps"] == 10


def test_resume_refuses_another_schedule_and_accepts_another_merge_upto(finished, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="schedule.name: 'constant' \\(checkpoint\\) -> 'cosine'"):
        train(small_run_config(tmp_path, "trainer.steps=7", "schedule=cosine"), finished)
    assert train(small_run_config(tmp_path, "trainer.steps=7", "model.merge_upto=2"), finished)["steps"] == 7


def test_a_checkpoint_written_before_schedules_resumes_as_constant(finished, tmp_path):
    ckpt = torch.load(finished / "last.pt", weights_only=True)
    del ckpt["config"]["schedule"], ckpt[checkpoint.DIGEST]
    checkpoint.save(finished / "last.pt", **ckpt)
    assert train(small_run_config(tmp_path, "trainer.steps=7"), finished)["steps"] == 7


def test_checkpoints_hold_only_tensors_and_plain_data(finished):
    for name in ("last.pt", "best.pt"):
        ckpt = checkpoint.load(finished / name)
        assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and ckpt["step"] > 0


def test_temporary_files_of_killed_writes_are_removed(finished, tmp_path):
    leftover = finished / ".last.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    train(small_run_config(tmp_path), finished)
    assert not leftover.exists()


# ---- the lock and status.json ----

def test_a_second_run_into_a_locked_directory_is_refused_naming_the_holder(finished, tmp_path):
    with rundir.locked(finished):
        with pytest.raises(rundir.RunDirBusy, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            train(small_run_config(tmp_path), finished)
    assert json.loads((finished / "status.json").read_text())["status"] == "ok"


def test_a_lock_left_by_a_dead_process_is_taken_over(finished, tmp_path, caplog):
    (finished / rundir.LOCK).write_text("pid 99999999 on host elsewhere since 2020-01-01T00:00:00\n")
    with caplog.at_level("INFO", logger="krubench"):
        assert train(small_run_config(tmp_path), finished)["steps"] == 10
    assert any("pid 99999999 on host elsewhere" in r.getMessage() for r in caplog.records)
    assert (finished / rundir.LOCK).read_text() == ""  # released


def test_a_failed_rerun_leaves_a_finished_run_finished(finished, tmp_path, monkeypatch):
    before = (finished / "status.json").read_text()
    with pytest.raises(ValueError, match="model.name"):
        train(small_run_config(tmp_path, "model=rnn"), finished)  # refused
    monkeypatch.setattr(CopyTask, "train_loss", lambda *a: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLoss):
        train(small_run_config(tmp_path), finished)  # more steps, failing
    assert (finished / "status.json").read_text() == before
    runs, skipped = find_runs([finished.parent])
    assert [r.dir for r in runs] == [finished] and not skipped


@pytest.mark.parametrize("rerun", [["trainer.steps=5"], ["trainer.steps=7", "seed=1"]], ids=["same config", "another"])
def test_a_finished_run_whose_checkpoints_are_gone_is_refused_before_anything_is_written(finished, tmp_path, rerun):
    """As a committed run folder (checkpoints not committed): training there would overwrite its results."""
    for name in ("last.pt", "best.pt"):
        (finished / name).unlink()
    contents = lambda: {p: p.read_bytes() for p in finished.rglob("*") if p.is_file() and p.name != rundir.LOCK}
    before = contents()
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(finished))} holds a finished run whose checkpoints "
                                              f"are gone .*\\(hydra.run.dir="):
        train(small_run_config(tmp_path, *rerun), finished)
    assert contents() == before


def test_a_rerun_into_a_finished_run_keeps_the_provenance_of_the_run_that_trained(finished, tmp_path, monkeypatch):
    trained = json.loads((finished / "results.json").read_text())
    other = {"commit": "f" * 40, "dirty": True}  # as if a later checkout re-reported it
    monkeypatch.setattr(results_module, "git_revision", lambda: other)
    again = train(small_run_config(tmp_path, "trainer.steps=5"), finished)
    assert again["steps"] == 5
    reported = json.loads((finished / "results.json").read_text())
    assert reported["git"] == trained["git"] and reported["wall_time_s"] == trained["wall_time_s"]
    assert reported["reported_by"]["git"] == other and reported["final_val"] == trained["final_val"]
    more = train(small_run_config(tmp_path, "trainer.steps=7"), finished)  # trains on: its own provenance
    assert more["steps"] == 7
    assert json.loads((finished / "results.json").read_text())["git"] == other


@pytest.mark.parametrize("damage", ["best.pt moved aside", "results.json corrupt"])
def test_a_finished_run_re_reports_after_best_pt_moved_aside_or_results_json_damaged(tmp_path, monkeypatch,
                                                                                     caplog, damage):
    monkeypatch.setattr(CopyTask, "splits", ("val", "test"))  # a task with a held-out split, as pixel MNIST
    run = tmp_path / "run"
    trained = train(small_run_config(tmp_path, "trainer.steps=5"), run)
    if damage == "best.pt moved aside":
        (run / "best.pt").rename(run / "best.pt.bad")  # as the checkpoint error advises
    else:
        (run / "results.json").write_text('{"task": "copy", ')
    again = train(small_run_config(tmp_path, "trainer.steps=5"), run)
    assert again["test"] == trained["test"] and again["final_val"] == trained["final_val"]
    assert json.loads((run / "results.json").read_text())["test"] == trained["test"]
    assert str(run / ("best.pt" if damage == "best.pt moved aside" else "results.json")) in caplog.text


def test_a_re_report_warns_once_of_each_problem(tmp_path, monkeypatch, caplog):
    """A damaged results.json was read, and warned of, by the held-out evaluation and again by its writer."""
    monkeypatch.setattr(CopyTask, "splits", ("val", "test"))
    run = tmp_path / "run"
    train(small_run_config(tmp_path, "trainer.steps=5"), run)
    old = torch.load(run / "last.pt", weights_only=True)
    del old[checkpoint.DIGEST]
    torch.save(old, run / "last.pt")  # an old-format checkpoint: a warning of its own
    (run / "best.pt").rename(run / "best.pt.bad")
    (run / "results.json").write_text('{"task": "copy", ')
    with caplog.at_level("WARNING", logger="krubench"):
        train(small_run_config(tmp_path, "trainer.steps=5"), run)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(set(warnings)) == 3, warnings


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_marks_the_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    fsync, checkpoints = os.fsync, []

    def room_for_one_checkpoint(fd):  # small files (status.json) still fit
        if os.fstat(fd).st_size > 10_000:
            checkpoints.append(fd)
            if len(checkpoints) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", room_for_one_checkpoint)
    with pytest.raises(files.StorageError, match=f"^no space left on {re.escape(str(run))}: writing best.pt failed"):
        train(small_run_config(tmp_path, "trainer.steps=4", "trainer.ckpt_every=2", "trainer.val_every=100"), run)
    assert checkpoint.load(run / "last.pt")["step"] == 2
    assert not list(run.glob(".*.tmp"))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "no space left on" in status["error"]


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_naming_the_file_and_marks_the_run(tmp_path):
    run = tmp_path / "run"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a checkpoint is ~23 kB
    proc = subprocess.run([*krubench_command(), *TINY, "trainer.steps=3", f"hydra.run.dir={run}"], cwd=tmp_path,
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{run / 'best.pt'} would exceed the file size limit (ulimit -f)" in proc.stderr  # the first checkpoint
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "file size limit" in status["error"]


def test_a_nan_stop_caused_by_the_unitary_penalty_suggests_a_lower_penalty(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"unitary penalty term became non-finite .* add "
                                            r"trainer.unitary_penalty=<lower, e.g. 1e\+299>"):
        train(small_run_config(tmp_path, "trainer.unitary_penalty=1e300"), tmp_path / "run")


# ---- signals ----

class SignalsWhileWritten(io.RawIOBase):
    """A file that sends this process `signum` while its first bytes are being written: the signal handler runs
    inside the BufferedWriter above it, as when a signal arrives during a log line's write."""

    def __init__(self, signum):
        self.signum, self.data = signum, bytearray()

    def writable(self):
        return True

    def write(self, b):
        if self.signum is not None:
            signum, self.signum = self.signum, None
            os.kill(os.getpid(), signum)  # the handler runs before this call returns
        self.data += b
        return len(b)


def test_a_stop_signal_during_a_log_write_is_logged(capsys):
    """Logged from the handler itself, the message was lost ("reentrant call inside <_io.BufferedWriter>")."""
    raw = SignalsWhileWritten(signal.SIGTERM)
    handler = logging.StreamHandler(io.TextIOWrapper(io.BufferedWriter(raw), write_through=True))
    logger = logging.getLogger("krubench")
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a run: StopOnSignal takes only a default
    logger.addHandler(handler)
    try:
        with StopOnSignal(on_second=None) as stop:
            assert signal.getsignal(signal.SIGTERM) == stop.handle  # else the signal would end pytest
            logger.warning("step 3/10 loss 0.5")
            deadline = time.time() + 10
            while b"SIGTERM received" not in raw.data and time.time() < deadline:
                time.sleep(0.01)
        assert stop.requested == signal.SIGTERM
    finally:
        logger.removeHandler(handler)
        signal.signal(signal.SIGTERM, previous)
    assert b"step 3/10 loss 0.5" in raw.data and b"SIGTERM received: finishing this step" in raw.data
    assert "Logging error" not in capsys.readouterr().err


def test_a_stop_signal_during_the_final_evaluation_finishes_it_and_exits_with_the_signal(tmp_path, monkeypatch,
                                                                                         caplog):
    """It logged "saving last.pt, then exiting" and exited 0; results.json and status ok are written either way."""
    run, log_hparams = tmp_path / "run", tb.log_hparams

    def signalled(*args):  # the signal comes during the final evaluation
        os.kill(os.getpid(), signal.SIGTERM)
        return log_hparams(*args)

    monkeypatch.setattr(tb, "log_hparams", signalled)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a run: StopOnSignal takes only a default
    try:
        with caplog.at_level("INFO", logger="krubench"), pytest.raises(Interrupted) as e:
            train(small_run_config(tmp_path), run)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert json.loads((run / "results.json").read_text())["steps"] == 10
    assert json.loads((run / "status.json").read_text())["status"] == "ok"
    assert "saving last.pt, then exiting" not in caplog.text
    assert "SIGTERM during the final evaluation: the run finished" in caplog.text


# ---- the command line ----

def default_stop_signals():
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def start(args, cwd):
    """The command line in the background. Its output goes to files, not pipes: nobody reads a pipe while the run
    goes on, and a run logging every step fills one (64 KiB) and then blocks in write(), deaf to signals."""
    # SIGINT and SIGHUP at their defaults, as for a run started in a terminal: a pytest started as a shell's
    # background job (`pytest &`) passes SIGINT on ignored, one started under nohup SIGHUP, and a run that inherits
    # that rightly ignores Ctrl-C or the terminal closing
    fd, out = tempfile.mkstemp(dir=cwd, prefix="krubench-", suffix=".out")
    os.close(fd)
    out = Path(out)
    with out.open("w") as sink:
        proc = subprocess.Popen([*krubench_command(), *args], cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=default_stop_signals)
    proc.output = out
    return proc


def wait_for_log(run: Path, pattern: str, proc, timeout: float = 180) -> None:
    """Until the run's krubench.log matches `pattern`."""
    deadline = time.time() + timeout
    log = run / "krubench.log"
    while time.time() < deadline:
        if log.exists() and re.search(pattern, log.read_text()):
            return
        assert proc.poll() is None, proc.output.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in {log}")


@pytest.mark.slow
def test_sigterm_saves_and_exits_143_and_a_second_run_is_locked_out(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.steps=100000", "trainer.ckpt_every=1000", "trainer.val_every=100000",
            f"hydra.run.dir={run}"]
    proc = start(args, tmp_path)
    wait_for_log(run, r"step 3/", proc)
    second = run_cli(args, cwd=tmp_path, check=False)
    assert second.returncode == 1 and f"is in use by pid {proc.pid} on host" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] >= 3
    assert checkpoint.load(run / "last.pt")["step"] == status["step"]
    assert "SIGTERM received" in (run / "krubench.log").read_text()
    done = run_cli([*args[:-3], f"trainer.steps={status['step'] + 2}", args[-1]], cwd=tmp_path)
    assert f"at step {status['step']}" in done.stdout + done.stderr
    assert json.loads((run / "results.json").read_text())["steps"] == status["step"] + 2


@pytest.mark.slow
def test_sighup_as_when_the_terminal_closes_saves_and_marks_the_run_interrupted(tmp_path):
    run = tmp_path / "run"
    proc = start([*TINY, "trainer.steps=100000", "trainer.ckpt_every=1000", "trainer.val_every=100000",
                  f"hydra.run.dir={run}"], tmp_path)
    try:
        wait_for_log(run, r"step 3/", proc)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    finally:
        proc.kill()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] >= 3
    assert checkpoint.load(run / "last.pt")["step"] == status["step"]


@pytest.mark.slow
def test_a_second_sigint_exits_at_once(tmp_path):
    run = tmp_path / "run"
    # the signals come during the first validation, a long one (10,000 sequences on the reference kernel, one
    # thread: seconds to minutes), which a stop request does not cut short: the second one always finds the run
    # still there. (Sent during a training step, the first one's step and save could end before the second.)
    proc = start([*TINY, "task.T=1000", "task.val_size=10000", "model.kernel=reference", "trainer.threads=1",
                  "trainer.steps=100000", "trainer.val_every=1", f"hydra.run.dir={run}"], tmp_path)
    try:
        wait_for_log(run, r"step 1/", proc)  # logged just before the validation starts
        proc.send_signal(signal.SIGINT)
        wait_for_log(run, r"SIGINT received", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        proc.kill()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "second signal" in status["error"]
    log = (run / "krubench.log").read_text()
    assert "exiting at once" in log and "validation" not in log  # it did not wait for the validation to end


def tensorboard_view(run: Path) -> dict:
    """Every scalar point (steps and values), and the steps of every other summary (texts, chart layout,
    hparams) as TensorBoard's server reads them (its plugin accumulator, which also purges those)."""
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["steps_per_s"] = [s for s, _ in out.pop("train/steps_per_s")]  # a timing: compare its steps only
    server = plugin_event_accumulator.EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    server.Reload()
    out["all summaries"] = {tag: [e.step for e in server.Tensors(tag)] for tag in server.Tags()["tensors"]}
    return out


@pytest.mark.slow
def test_tensorboard_after_kills_and_resumes_equals_an_uninterrupted_run(tmp_path):
    args = [*TINY, "trainer.steps=30", "trainer.ckpt_every=7"]
    run_cli([*args, f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path)
    run = tmp_path / "killed"
    for kill_at in (r"^step 3/", r"^step 9/", r"^step 9/", r"^step 23/"):  # before a checkpoint, after, again
        run_cli_killed_at(kill_at, [*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    run_cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert tensorboard_view(run) == tensorboard_view(tmp_path / "straight")


@pytest.mark.slow
def test_a_config_error_is_one_line_unless_hydra_full_error(tmp_path):
    proc = run_cli(["optim.lr=inf"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "krubench: error: optim.lr=inf must be a finite number"
    full = subprocess.run([*krubench_command(), "optim.lr=inf"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "optim.lr=inf" in full.stderr


@pytest.mark.slow
def test_the_nan_stop_recovery_works_as_printed(tmp_path):
    """The issue's case: optim.lr=1e3 blows up at step 1, with one line and no traceback. The rerun the message
    suggests, with the lower optim.lr it names, runs to the end."""
    run = tmp_path / "run"
    args = [*TINY, "trainer.ckpt_every=10", f"hydra.run.dir={run}"]
    failed = run_cli([*args, "optim.lr=1e3"], cwd=tmp_path, check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    suggested = re.search(r"add optim.lr=<lower, e.g. (\S+)> (hydra.run.dir=\S+) to your command", failed.stderr)
    assert suggested and suggested.group(2) == f"hydra.run.dir={run}", failed.stderr
    done = run_cli([*args[:-1], f"optim.lr={suggested.group(1)}", suggested.group(2)], cwd=tmp_path)
    assert json.loads((run / "results.json").read_text())["steps"] == 10, done.stderr
    assert all(torch.isfinite(v).all() for v in checkpoint.load(run / "last.pt")["model"].values())


def test_the_resume_command_quotes_what_a_shell_would_split():
    from krubench.runtime.interrupt import resume_command

    command = resume_command(["hydra.run.dir=old", "model.factors=[4,4,8]", "trainer.steps=9"], Path("/runs/a b"))
    assert command == "krubench 'model.factors=[4,4,8]' trainer.steps=9 'hydra.run.dir=/runs/a b'"


@pytest.mark.slow
def test_ctrl_c_ends_with_the_command_that_resumes_the_time_stamped_run(tmp_path):
    """The default folder is time-stamped: rerunning the same command would start anew. The last line says how
    to continue, and that command does."""
    proc = start([*TINY, "trainer.steps=2000", "trainer.ckpt_every=1000", "trainer.val_every=1000",
                  "trainer.log_every=1"], tmp_path)
    try:
        deadline = time.time() + 180
        while not (runs := list(tmp_path.glob("outputs/*/*_copy_T10_kru"))) and time.time() < deadline:
            time.sleep(0.05)
        wait_for_log(runs[0], r"step 3/", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 128 + signal.SIGINT
    finally:
        proc.kill()
    last = proc.output.read_text().strip().splitlines()[-1]
    assert re.search(r"SIGINT at step \d+: last.pt saved. To resume: krubench ", last), last
    command = last.split("To resume: ")[1]
    assert command.endswith(f"hydra.run.dir={runs[0].resolve()}")
    done = run_cli(shlex.split(command)[1:], cwd=tmp_path)
    assert "resumed from" in done.stdout + done.stderr
    assert json.loads((runs[0] / "results.json").read_text())["steps"] == 2000
    assert len(list(tmp_path.glob("outputs/*/*"))) == 1  # no new folder


def test_a_run_interrupted_before_any_validation_resumes_with_fewer_steps_and_finishes(tmp_path, monkeypatch):
    """Stopped at step 4 before its first validation, then rerun with trainer.steps=2: nothing left to train, and
    there was no best yet (it crashed in tb.log_hparams on best None): the final weights are validated as the best."""
    import krubench.train as train_module

    run, train_step = tmp_path / "run", train_module.Run.train_step

    def signalled_at_step_4(self):
        out = train_step(self)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_module.Run, "train_step", signalled_at_step_4)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a run: StopOnSignal takes only a default
    try:
        with pytest.raises(Interrupted):
            train(small_run_config(tmp_path, "trainer.steps=10", "trainer.val_every=100"), run)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert checkpoint.load(run / "last.pt")["best"] is None
    monkeypatch.setattr(train_module.Run, "train_step", train_step)
    results = train(small_run_config(tmp_path, "trainer.steps=2", "trainer.val_every=100"), run)
    assert results["steps"] == 4 and results["best_val"] == {"loss": results["final_val"]["loss"], "step": 4}
    assert (run / "best.pt").is_file()
