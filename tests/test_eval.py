"""krubench-eval: a run's best or last checkpoint evaluated on a split gives the numbers the run reported."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA, small_run_config
from krubench.evaluate import evaluate, main
from krubench.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    results = train(small_run_config(root, "trainer.steps=6", "trainer.val_every=2", "model.kernel=reference"),
                    root / "run")
    return root / "run", results


def test_best_and_last_checkpoints_give_the_reported_numbers(run):
    run_dir, results = run
    best = evaluate(run_dir, "val", "best")
    assert best["step"] == results["best_val"]["step"]
    assert best["metrics"][results["metric"]] == pytest.approx(results["best_val"][results["metric"]], rel=1e-6)
    last = evaluate(run_dir, "val", "last")
    assert last["step"] == 6 and last["metrics"] == pytest.approx(results["final_val"], rel=1e-6)
    assert last["baseline"] == pytest.approx(results["baseline"]) and last["units"]["loss_bits"] == "bits per time step"


def test_the_command_prints_metrics_with_units_and_baselines(run, capsys):
    run_dir, _ = run
    assert main([str(run_dir), "--checkpoint", "last"]) == 0
    out = capsys.readouterr().out
    assert "last checkpoint (step 6) on val" in out and "bits per time step" in out and "memoryless baseline" in out
    assert main([str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "best"


def test_clear_errors(run, tmp_path, capsys):
    run_dir, _ = run
    assert main([str(run_dir), "--split", "test"]) == 1
    assert "--split test is not a split of task copy: use one of val" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run_dir), "--checkpoint", "middle"])


@pytest.mark.slow
def test_runs_as_a_module_without_writing_to_the_run(run):
    run_dir, _ = run
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "krubench.evaluate", str(run_dir), "--json"], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(proc.stdout)["split"] == "val"
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")
def test_a_held_out_split_gives_the_runs_test_numbers(tmp_path):
    from conftest import compose_config

    cfg = compose_config(["trainer=debug", "task=music", "task.dataset=jsb", "model=lstm", "model.hidden_size=8",
                          "task.batch_size=2", "task.eval_limit=4", "trainer.steps=2", "trainer.val_every=2",
                          f"data_dir={SHARED_DATA}"])
    results = train(cfg, tmp_path / "run")
    out = evaluate(tmp_path / "run", "test", "best")
    assert out["metrics"] == pytest.approx(results["test"], rel=1e-6)
