"""The installed `krubench` command, run as a user would: from a temporary directory, one run, a
multirun sweep, a killed run resumed, and a wheel that carries its configs."""
import contextlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, krubench_command, run_cli, run_cli_killed_at
from krubench.ops import build
from krubench.runtime import rundir

TINY = ["trainer=debug", "task.T=10", "task.val_size=40", "model.hidden_size=16"]


def scalars(run_dir: Path) -> dict:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_one_run_from_a_temp_dir(tmp_path):
    proc = run_cli([*TINY, "trainer.steps=2", "trainer.val_every=1"], cwd=tmp_path)
    runs = list((tmp_path / "outputs").glob("*/*_copy_T10_kru"))
    assert len(runs) == 1, proc.stderr
    run = runs[0]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 and results["task"] == "copy" and results["model"] == "kru"
    assert results["params"]["recurrent"] == 8 * 4
    assert results["baseline"]["loss"] == pytest.approx(10 * 2.0794415 / 30)
    assert results["backend"] and results["versions"]["torch"]
    assert re.fullmatch(r"[0-9a-f]{40}", results["git"]["commit"]) and isinstance(results["git"]["dirty"], bool)
    assert results["data_root"] is None  # a synthetic task reads no data
    assert json.loads((run / "status.json").read_text())["status"] == "ok"
    assert (run / "last.pt").exists() and (run / "best.pt").exists() and (run / "krubench.log").exists()
    tags = scalars(run)
    for tag in ("train/loss", "val/loss", "val/baseline", "val/loss_bits", "val/baseline_loss_bits",
                "val/recall_accuracy", "kru/unitary_penalty", "train/lr", "train/steps_per_s"):
        assert tag in tags, tag
    assert tags["val/baseline"][0][1] == pytest.approx(results["baseline"]["loss"])
    log = (run / "krubench.log").read_text()
    assert "memoryless baseline" in log and "32 recurrent" in log


@pytest.mark.slow
def test_tensorboard_text_custom_scalars_and_hparams(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.steps=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    plugins = set(acc.PluginTagToContent("hparams")) | set(acc.PluginTagToContent("custom_scalars"))
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info", "custom_scalars__config__"} <= plugins
    assert "_hparams_/experiment" not in plugins  # TensorBoard builds one experiment from all runs' sessions
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert list((run / "tb").iterdir()) == [p for p in (run / "tb").iterdir() if p.is_file()]  # hparams in the same run


@pytest.mark.slow  # a CLI subprocess
def test_help_lists_the_groups_without_internal_ones(tmp_path):
    out = run_cli(["--help"], cwd=tmp_path).stdout
    presets = next(line for line in out.splitlines() if line.startswith("experiment/paper: "))
    assert "task: adding, copy, music, pixel_mnist, ptb_char" in out and " adding_T100_kru," in presets
    assert "experiment/paper/setting" not in out and "== Config ==" in out and "\ntask:\n  name: copy" in out


@pytest.mark.slow  # a CLI subprocess
def test_completion_offers_values_not_enum_reprs(tmp_path):
    env = {**os.environ, "COMP_LINE": "krubench task=music task.dataset="}
    proc = subprocess.run([*krubench_command(), "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == ["task.dataset=jsb"], proc.stdout


@pytest.mark.parametrize("override, extra", [("launcher=joblib", "joblib"), ("launcher=slurm", "slurm"),
                                             ("hydra/launcher=submitit_local", "slurm"),
                                             ("hparams_search=optuna", "optuna")])
def test_a_missing_launcher_plugin_names_the_pip_command(monkeypatch, capsys, override, extra):
    import importlib.util

    from krubench import cli

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # as if the plugin were not installed
    monkeypatch.setattr(sys, "argv", ["krubench", "--multirun", override, "seed=0,1"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 1
    assert f'not installed: pip install "krubench[{extra}]"' in capsys.readouterr().err
    assert cli.missing_plugin(["launcher=nothing_we_know", "seed=1"]) is None


#: twenty overrides every job shares: named in full, they made a job folder's name too long for the file system
SHARED = [*TINY, "trainer.steps=1", "trainer.val_every=1", "trainer.threads=1", "trainer.log_every=1",
          "trainer.ckpt_every=1", "trainer.grad_clip=0.5", "trainer.deterministic=false", "optim.lr=0.002",
          "optim.weight_decay=0.0001", "optim.eps=1e-07", "optim.alpha=0.9", "optim.momentum=0.0",
          "schedule.warmup_steps=0", "task.batch_size=4", "seed=3", "trainer.early_stop_min_delta=0.0"]


@pytest.mark.slow
def test_multirun_names_jobs_by_the_swept_keys(tmp_path):
    assert len(SHARED) >= 20
    run_cli(["--multirun", *SHARED, "model=kru,lstm"], cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "multirun").glob("*/*/*") if (p / "results.json").exists())
    assert [j.name for j in jobs] == ["0_copy_T10_kru_model=kru", "1_copy_T10_lstm_model=lstm"]
    assert json.loads((jobs[0] / "results.json").read_text())["config"]["optim"]["lr"] == 0.002  # in the config
    assert "seed=3" in (jobs[0] / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_preset_sweep_folders_name_the_setting(tmp_path):
    """experiment= is left out of the folder names (it holds a "/"): the setting says which preset ran."""
    run_cli(["--multirun", "experiment=paper/copy_T1000_rnn,paper/copy_T2000_rnn", "model.hidden_size=4",
             "task.val_size=2", "trainer=debug", "trainer.steps=1", "trainer.val_every=1"], cwd=tmp_path)
    jobs = sorted(p.name for p in (tmp_path / "multirun").glob("*/*/*") if (p / "results.json").exists())
    assert [j.split("_model.")[0] for j in jobs] == ["0_copy_T1000_rnn", "1_copy_T2000_rnn"], jobs


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.steps=400", "trainer.ckpt_every=20", "trainer.val_every=1000",
            f"hydra.run.dir={run}"]
    run_cli_killed_at(r"^step 25/", args, cwd=tmp_path)  # after its first checkpoint (step 20)
    assert (run / "last.pt").exists(), "the run never wrote a checkpoint"
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    assert not (run / "results.json").exists()
    done = run_cli(args, cwd=tmp_path)
    assert "resumed from" in done.stderr + done.stdout
    assert json.loads((run / "results.json").read_text())["steps"] == 400
    steps = [s for s, _ in scalars(run)["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # no duplicate points from the killed process


@pytest.mark.slow
def test_resume_with_another_model_is_refused(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.steps=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    proc = run_cli([*TINY, "trainer.steps=2", "model.hidden_size=32", f"hydra.run.dir={run}"], cwd=tmp_path,
                   check=False)
    assert proc.returncode != 0
    assert "model.hidden_size: 16 (checkpoint) -> 32 (now)" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((run / "status.json").read_text())["status"] == "ok"  # the finished run stays finished


@pytest.mark.slow
@pytest.mark.parametrize("state", ["finished", "running"])
def test_a_refused_rerun_leaves_the_runs_hydra_files_as_they_were(tmp_path, state):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.steps=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    before = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    assert set(before) == {"config.yaml", "hydra.yaml", "overrides.yaml"} and "trainer.steps=1" in before["overrides.yaml"]
    with rundir.locked(run) if state == "running" else contextlib.nullcontext():
        proc = run_cli([*TINY, "task=adding", "model=lstm", f"hydra.run.dir={run}"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == before


@pytest.mark.slow
def test_a_corrupt_data_file_is_one_line_naming_it(tmp_path):
    data = tmp_path / "data" / "ptb_char"
    data.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (data / f"ptb.char.{split}.txt").write_text("a b c\n")
    proc = subprocess.run([*krubench_command(), "task=ptb_char", "trainer=debug", f"data_dir={tmp_path / 'data'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "KRUBENCH_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"krubench: error: {data / 'ptb.char.train.txt'} fails its checksum" in proc.stderr


@pytest.mark.slow
def test_bad_value_fails_before_running(tmp_path):
    proc = run_cli(["model.hidden_size=100"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "model.hidden_size=100 is not a power of model.factor_size=2" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override, error", [("optim.lr=-1", "optim.lr=-1.0 must be positive"),  # krubench's check
                                             ("model.hiden_size=3", "Key 'hiden_size' not in")])  # Hydra's
def test_a_config_error_leaves_no_run_folder(tmp_path, override, error):
    proc = run_cli([*TINY, override], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and error in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


@pytest.mark.slow
def test_a_refused_run_in_a_chosen_folder_leaves_it(tmp_path):
    run = tmp_path / "mine"
    proc = run_cli([*TINY, "optim.lr=-1", f"hydra.run.dir={run}"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and run.is_dir()  # the user named it: not ours to remove


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("krubench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("krubench/conf/config.yaml", "krubench/conf/task/copy.yaml", "krubench/conf/model/kru.yaml",
              "krubench/conf/optim/rmsprop.yaml", "krubench/conf/trainer/debug.yaml",
              "krubench/conf/experiment/paper/copy_T1000_kru.yaml", "krubench/conf/launcher/slurm.yaml",
              "krubench/report/paper_numbers.yaml", "krubench/cuda/kru_cpu.cpp", "krubench/cuda/kru_cuda.cu",
              *(f"krubench/cuda/{f}" for f in build.EXTENSIONS["cpp"][1]), "krubench/cuda/cpu_recurrence.h"):
        assert f in names, f
    # Installed from the wheel (no checkout beside it), the app composes its config from the package.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import krubench.config as c; print(c.config_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(site / "krubench" / "conf")
    proc = subprocess.run([sys.executable, "-m", "krubench.cli", "--cfg", "job", "model=lstm"], cwd=tmp_path,
                          env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "name: lstm" in proc.stdout


def test_an_output_folder_that_cannot_be_written_is_one_line_before_hydra_creates_it(tmp_path, monkeypatch):
    """Hydra makes the run folder before krubench runs: on a read-only file system that was Hydra's traceback."""
    from krubench.cli import unwritable_output

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    message = unwritable_output([f"hydra.run.dir={locked / 'a' / 'run'}", "seed=1"], tmp_path)
    assert message.startswith(f"hydra.run.dir={locked / 'a' / 'run'} cannot be written ({locked} is read-only")
    assert unwritable_output(["hydra.sweep.dir=rel/sweep"], locked).startswith("hydra.sweep.dir=rel/sweep cannot")
    assert unwritable_output([], locked).startswith(f"the working directory {locked} cannot be written")
    assert unwritable_output([f"hydra.run.dir={tmp_path / 'ok'}"], locked) is None


@pytest.mark.slow  # the console script in a subprocess, on a read-only tmpfs where the machine lets root mount one
def test_a_read_only_file_system_is_one_line_naming_the_folder(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        proc = run_cli(["trainer=debug", "trainer.steps=2", f"hydra.run.dir={mnt / 'run'}"], cwd=tmp_path, check=False)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"krubench: error: hydra.run.dir={mnt / 'run'} cannot be written ({mnt} is read-only or not writable): choose a "
        "writable folder with hydra.run.dir=... (a sweep: hydra.sweep.dir=...), or run from a writable directory"]
