"""Regenerate tests/data/runs/: tiny finished runs (results.json, status.json, TensorBoard events) of a few
paper presets, shrunk to a handful of steps, plus a failed and an unfinished run, for the report tests.
Checkpoints are deleted (the report does not read them). Run once from the repository root:

    KRUBENCH_DATA=../shared/data python tests/data/make_runs.py
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/conftest.py: compose the config as the CLI does

from conftest import compose_config  # noqa: E402
from krubench.runtime.results import write_status  # noqa: E402
from krubench.train import train  # noqa: E402

OUT = HERE / "runs"
SMALL = ["trainer.steps=6", "trainer.val_every=2", "trainer.log_every=1", "trainer.ckpt_every=6",
         "trainer.progress=never", "trainer.threads=1", "trainer.deterministic=true"]
RUNS = {  # folder -> overrides
    "sweep/0_copy_kru_seed=0": ["experiment=paper/copy_T1000_kru", "seed=0"],
    "sweep/1_copy_kru_seed=1": ["experiment=paper/copy_T1000_kru", "seed=1"],
    "sweep/2_copy_lstm_seed=0": ["experiment=paper/copy_T1000_lstm", "seed=0"],
    "adding_kru": ["experiment=paper/adding_T100_kru"],
    "pixel_mnist_kru": ["experiment=paper/pixel_mnist_kru", "task.batch_size=10", "task.eval_limit=20",
                        "task.eval_batch_size=20", f"data_dir={os.environ.get('KRUBENCH_DATA', '../shared/data')}"],
}
TINY_TASK = {"copy": ["task.batch_size=4", "task.val_size=4", "model.hidden_size=16"],
             "adding": ["task.batch_size=4", "task.val_size=4", "model.hidden_size=16"], "pixel_mnist": []}


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    for folder, overrides in RUNS.items():
        task = overrides[0].split("/")[1].split("_")[0]
        task = "pixel_mnist" if task == "pixel" else task
        run = OUT / folder
        train(compose_config([*overrides, *SMALL, *TINY_TASK[task]]), run)
        for ckpt in run.glob("*.pt"):
            ckpt.unlink()
    failed, running = OUT / "sweep" / "3_copy_rnn_seed=0", OUT / "sweep" / "4_copy_rnn_seed=1"
    for folder in (failed, running):
        folder.mkdir(parents=True)
    write_status(failed, "failed", error="NonFiniteLoss: the loss became non-finite at step 3")
    write_status(running, "running")


if __name__ == "__main__":
    main()
