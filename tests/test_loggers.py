"""The trackers beside TensorBoard, offline (no network, no account): a short run with logger=wandb writes its
scalars, config and results into <run dir>/wandb/offline-run-*, one with logger=mlflow into the SQLite store in
the run directory, and a resumed run continues the same W&B / MLflow run. A missing package names the pip command."""
from __future__ import annotations

import json
import struct

import pytest

from conftest import small_run_config
from krubench.runtime import loggers
from krubench.runtime.interrupt import Interrupted
from krubench.train import train

STEPS = ["trainer.steps=4", "trainer.val_every=2", "trainer.log_every=2", "trainer.ckpt_every=2",
         "model.kernel=reference"]


def wandb_records(run_dir) -> list:
    """The records of every offline W&B run under run_dir, in order. W&B's .wandb file is a LevelDB-style log
    (a 7-byte header, then 32 KiB blocks of records: crc32, length, type, payload) of protobuf Records; the
    reader that wandb once shipped is now in its Go core."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, payload = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
                pos += left
                continue
            payload += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = pb.Record()
                record.ParseFromString(payload)
                records.append(record)
                payload = b""
    return records


def wandb_history(records) -> dict[str, list[tuple[int, float]]]:
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for k, v in items.items():
                if not k.startswith("_"):
                    history.setdefault(k, []).append((items["_step"], v))
    return history


def test_wandb_offline_run_holds_the_scalars_config_and_results(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    results = train(small_run_config(tmp_path, *STEPS, "logger=wandb"), run)
    run_id = json.loads((run / loggers.IDS).read_text())["wandb"]
    assert [p.name.endswith(run_id) for p in (run / "wandb").glob("offline-run-*")] == [True]
    records = wandb_records(run)
    started = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert started.run_id == run_id and started.project == "krubench" and started.display_name == "run"
    config = {u.key: json.loads(u.value_json) for u in started.config.update}
    assert config["model"]["hidden_size"] == 16 and config["optim"]["lr"] == 1e-3
    history = wandb_history(records)
    assert [s for s, _ in history["train/loss"]] == [2, 4] and [s for s, _ in history["val/loss"]] == [2, 4]
    assert history["hparam/val_loss"] == [(4, pytest.approx(results["final_val"]["loss"]))]


def test_wandb_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    interrupt_at_step(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(small_run_config(tmp_path, *STEPS, "logger=wandb"), run)
    first = json.loads((run / loggers.IDS).read_text())["wandb"]
    monkeypatch.undo()
    train(small_run_config(tmp_path, *STEPS, "logger=wandb"), run)
    assert json.loads((run / loggers.IDS).read_text())["wandb"] == first
    started = [r.run.run_id for r in wandb_records(run) if r.WhichOneof("record_type") == "run"]
    assert started == [first, first]  # two offline folders of one run: wandb sync uploads them as one
    assert [s for s, _ in wandb_history(wandb_records(run))["train/loss"]] == [2, 4]


def test_mlflow_store_in_the_run_dir_holds_params_metrics_and_results(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    interrupt_at_step(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(small_run_config(tmp_path, *STEPS, "logger=mlflow"), run)
    monkeypatch.undo()
    results = train(small_run_config(tmp_path, *STEPS, "logger=mlflow"), run)
    run_id = json.loads((run / loggers.IDS).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("krubench").experiment_id])) == 1  # resumed, not new
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert mlrun.data.params["model.hidden_size"] == "16" and "trainer.threads" not in mlrun.data.params
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4]
    assert mlrun.data.metrics["hparam/val_loss"] == pytest.approx(results["final_val"]["loss"])


def test_a_missing_tracker_package_names_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r'logger=wandb needs the package wandb, which is not installed: '
                                         r'pip install "krubench\[wandb\]"'):
        train(small_run_config(tmp_path, *STEPS, "logger=[wandb,mlflow]"), run)
    assert not (run / "status.json").exists()  # refused before the run started


def test_tensorboard_alone_is_the_default(tmp_path):
    run = tmp_path / "run"
    cfg = small_run_config(tmp_path, *STEPS)
    assert cfg.logger.wandb is None and cfg.logger.mlflow is None
    train(cfg, run)
    assert (run / "tb").is_dir() and not (run / loggers.IDS).exists() and not (run / "wandb").exists()


def interrupt_at_step(monkeypatch, step: int) -> None:
    """SIGTERM this process once the run has logged `step`: it saves last.pt there and raises Interrupted."""
    import os
    import signal

    from krubench.train import Run

    log_train = Run.log_train

    def log_then_signal(self, *args):
        log_train(self, *args)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)  # the run's handler (StopOnSignal) runs before this returns

    monkeypatch.setattr(Run, "log_train", log_then_signal)
