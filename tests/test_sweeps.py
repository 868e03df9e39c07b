"""Sweeps beyond one run, through the installed `krubench`: the launcher presets compose, a 2-job sweep runs
through submitit's local executor (subprocesses, as on SLURM but without a cluster), a job signalled as on
a SLURM time limit requeues itself and resumes from last.pt, and a killed sweep rerun in its folder
resumes its unfinished jobs. The joblib launcher runs 2 jobs at once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config, krubench_command, run_cli
from krubench.config import MAX_LABEL, config_dir, run_label
from krubench.sweep import NAME_EXCLUDES, name_only_swept_keys

TINY = ["trainer=debug", "task.T=10", "task.val_size=40", "model.hidden_size=16", "trainer.threads=1"]
LONG = [*TINY, "trainer.steps=3000", "trainer.ckpt_every=50", "trainer.val_every=1000"]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())


def results(job: Path) -> dict:
    return json.loads((job / "results.json").read_text())


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting for the sweep"
        time.sleep(0.2)


def submitit_job_pids(sweep: Path) -> list[int]:
    """The processes running submitit jobs of this sweep (what SLURM would signal)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"submitit.core._submit" in cmd and any(str(sweep).encode() in part for part in cmd):
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("launcher,target", [("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
                                             ("slurm", "SlurmLauncher")])
def test_launcher_presets_compose(launcher, target):
    hydra = compose_config([f"launcher={launcher}"], return_hydra_config=True).hydra
    assert hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        launcher_cfg = OmegaConf.to_container(hydra.launcher)
        assert launcher_cfg["gpus_per_node"] == 1 and launcher_cfg["max_num_timeout"] > 0
        assert launcher_cfg["timeout_min"] > launcher_cfg["signal_delay_s"] / 60
    else:
        assert hydra.callbacks.prebuild_kernels._target_ == "krubench.sweep.PrebuildKernels"


@pytest.mark.parametrize("task, direction", [("copy", "minimize"), ("pixel_mnist", "maximize"), ("ptb_char", "minimize")])
def test_optuna_preset_takes_the_direction_from_the_task(task, direction):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    hydra = compose_config(["hparams_search=optuna", f"task={task}"], return_hydra_config=True).hydra
    assert hydra.sweeper._target_.endswith("OptunaSweeper") and hydra.sweeper.direction == direction
    assert set(hydra.sweeper.params) == {"optim.lr", "optim.factor_lr_scale", "trainer.grad_clip"}


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", *TINY,
             "trainer.steps=2", "model.kernel=reference"], cwd=tmp_path)  # no -m: the preset is a sweep
    jobs = job_dirs(sweep)
    assert len(jobs) == 2 and all(j.name.startswith(f"{i}_copy_T10_kru_") for i, j in enumerate(jobs))
    assert all("optim.lr=" in j.name for j in jobs) and "hparams_search" not in jobs[0].name
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == min(results(j)["final_val"]["loss"] for j in jobs)


@pytest.mark.slow
def test_joblib_runs_two_jobs(tmp_path):
    run_cli(["-m", "launcher=joblib", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY, "trainer.steps=2",
             "model=kru,lstm"], cwd=tmp_path)
    jobs = job_dirs(tmp_path / "sweep")
    assert [results(j)["model"] for j in jobs] == ["kru", "lstm"]
    assert "launcher" not in jobs[0].name  # the launcher does not change a job's folder


@pytest.mark.slow
def test_submitit_local_sweep_and_requeue_on_timeout_signal(tmp_path):
    """Both jobs get submitit's timeout signal (SIGUSR2, what SLURM sends before the time limit) after their
    first checkpoint: each requeues itself, and the requeued job resumes from last.pt in the same folder."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([*krubench_command(), "-m", "launcher=submitit_local", f"hydra.sweep.dir={sweep}", *LONG,
                             "model=kru,lstm"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sweep.is_dir() and len(job_dirs(sweep)) == 2
                 and all((j / "last.pt").exists() for j in job_dirs(sweep)))
        signalled = [j for j in job_dirs(sweep) if not (j / "results.json").exists()]
        pids = submitit_job_pids(sweep)
        assert signalled and len(pids) == len(signalled), (pids, signalled)
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    jobs = job_dirs(sweep)
    assert [results(j)["model"] for j in jobs] == ["kru", "lstm"] and all(results(j)["steps"] == 3000 for j in jobs)
    for job in signalled:
        assert "resumed from" in (job / "krubench.log").read_text(), job


@pytest.mark.slow
def test_killed_sweep_resumes_when_rerun_in_its_folder(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "launcher=submitit_local", f"hydra.sweep.dir={sweep}", *LONG, "model=kru,lstm"]
    proc = subprocess.Popen([*krubench_command(), *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: sweep.is_dir() and any((j / "last.pt").exists() for j in job_dirs(sweep)))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every job, as when a node dies
        proc.wait()
    interrupted = [j for j in job_dirs(sweep) if (j / "last.pt").exists() and not (j / "results.json").exists()]
    assert interrupted and all(json.loads((j / "status.json").read_text())["status"] == "running" for j in interrupted)
    run_cli(args, cwd=tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2 and all(results(j)["steps"] == 3000 for j in jobs)
    for job in interrupted:
        log = (job / "krubench.log").read_text()
        assert "resumed from" in log, log[-3000:]


def test_parallel_jobs_get_one_gpu_each(monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from krubench.sweep import job_device

    def job(mode: RunMode, num: int) -> None:  # what Hydra sets up before calling the app
        cfg = compose_config([], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode, cfg.hydra.job.num = mode, num
        HydraConfig.instance().set_config(cfg)

    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored after the test
    job(RunMode.MULTIRUN, 5)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert job_device("auto") == "cuda:1" and job_device("cpu") == "cpu" and job_device("cuda:0") == "cuda:0"
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert job_device("auto") == "auto"  # one GPU (or a SLURM job's own GPU): nothing to spread
    job(RunMode.RUN, 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert job_device("auto") == "auto"  # a single run keeps torch's choice


def test_an_override_value_never_makes_a_job_folder_a_path(tmp_path):
    hydra = compose_config(["trainer.device=../../x"], return_hydra_config=True)
    label = run_label(hydra.task, "kru", "trainer.device=../../x")
    assert "/" not in label and label.endswith("trainer.device=..%2F..%2Fx")
    assert (tmp_path / label).resolve().parent == tmp_path.resolve()


def job_label(argv: list[str], job: list[str]) -> str:
    """The folder label of the sweep job that runs `job` (one value per key) of the sweep command `argv`."""
    argv = name_only_swept_keys(argv, Path(config_dir()) / "config.yaml")
    hydra = [a for a in argv if a.startswith("hydra.")]
    cfg = compose_config([*job, *hydra], return_hydra_config=True)
    return run_label(cfg.task, cfg.model.name, cfg.hydra.job.override_dirname)


def test_a_job_is_named_by_its_swept_keys_only():
    shared = ["trainer=debug", "task.T=10", "optim.lr=0.002", "trainer.threads=1"]
    argv = ["-m", *shared, "model=kru,lstm", "seed=range(0,3)", "trainer.log_every=1,2"]
    assert job_label(argv, [*shared, "model=lstm", "seed=2", "trainer.log_every=2"]) == "copy_T10_lstm_model=lstm,seed=2"
    # a search's trials: the sampled keys are not on the command line, so they stay in the name
    argv = ["hparams_search=optuna", "trainer=debug"]
    assert job_label(argv, ["trainer=debug", "optim.lr=0.003"]) == "copy_T100_kru_optim.lr=0.003"


def test_a_single_run_or_an_explicit_exclusion_keeps_the_command_line():
    config = Path(config_dir()) / "config.yaml"
    assert name_only_swept_keys(["seed=1", "model=lstm"], config) == ["seed=1", "model=lstm"]
    mine = ["-m", "seed=1,2", f"{NAME_EXCLUDES}=[data_dir]"]
    assert name_only_swept_keys(mine, config) == mine


def test_long_labels_are_cut_and_stay_distinct():
    task = compose_config([]).task
    swept = ",".join(f"model.key{i}=value{i}" for i in range(20))
    labels = {run_label(task, "kru", f"{swept},seed={seed}") for seed in range(3)}
    assert len(labels) == 3 and all(len(label) == MAX_LABEL and "~" in label for label in labels)
    assert run_label(task, "kru", "seed=1") == "copy_T100_kru_seed=1"  # short labels are left whole
