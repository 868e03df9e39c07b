"""The experiment trackers beside TensorBoard (always on): Weights & Biases (logger=wandb) and MLflow
(logger=mlflow), or both (logger=[wandb,mlflow]). Each gets every scalar TensorBoard gets, the config as its
parameters, and the final results (the `hparam/...` scalars, at the end). By default both write under the run
directory, W&B offline and MLflow into a SQLite file, so neither needs a network or an account.

A resumed run continues the same W&B and MLflow runs: their ids are kept in <run dir>/loggers.json. Unlike
TensorBoard, neither can hide the points an interrupted process logged after its last checkpoint: those steps
appear twice in MLflow (W&B keeps the first)."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from .files import atomic_write_json, read_json_object

log = logging.getLogger("krubench")

IDS = "loggers.json"
#: logger -> (the module it needs, the krubench extra that installs it)
PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def chosen(config: dict) -> list[str]:
    return [name for name in PACKAGES if (config.get("logger") or {}).get(name) is not None]


def check(config: dict) -> None:
    """Refuse, before the run starts, a logger whose package is not installed, naming the pip command."""
    for name in chosen(config):
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"logger={name} needs the package {module}, which is not installed: "
                             f"pip install \"krubench[{extra}]\"")


class Mirror:
    """A SummaryWriter that also sends each add_scalar to a tracker; everything else is the writer's."""

    def __init__(self, writer):
        self._writer = writer
        self.finished = False  # the final results were logged: the run ends as finished, not interrupted

    def add_scalar(self, tag: str, value, step: int, *args, **kwargs) -> None:
        self._writer.add_scalar(tag, value, step, *args, **kwargs)
        self.finished = self.finished or tag.startswith("hparam/")
        self.log(tag, float(value), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self.end()

    def __getattr__(self, name):
        return getattr(self._writer, name)


class WandbMirror(Mirror):
    def __init__(self, writer, cfg: dict, config: dict, run_dir: Path, run_id: str | None):
        super().__init__(writer)
        import wandb

        self.run = wandb.init(project=cfg["project"], entity=cfg["entity"], mode=cfg["mode"], group=cfg["group"],
                              tags=list(cfg["tags"]), dir=str(run_dir), name=run_dir.name, id=run_id,
                              resume="allow", config=config,
                              settings=wandb.Settings(console="off", silent=True))  # the log stays krubench's
        where = f"offline in {Path(self.run.dir).parent} (upload: wandb sync {Path(self.run.dir).parent})" \
            if cfg["mode"] == "offline" else f"at {self.run.url}"
        log.info(f"W&B run {self.run.id} {where}")

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, tag: str, value: float, step: int) -> None:
        self.run.log({tag: value}, step=step)

    def end(self) -> None:
        self.run.finish(exit_code=0 if self.finished else 1)


class MLflowMirror(Mirror):
    def __init__(self, writer, cfg: dict, config: dict, run_dir: Path, run_id: str | None):
        super().__init__(writer)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from .tb import hparams_of

        uri = cfg["tracking_uri"] or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = client.get_experiment_by_name(cfg["experiment"])
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(
                cfg["experiment"], artifact_location=(run_dir / "mlartifacts").resolve().as_uri())
            run_id = client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        # MLflow keeps a parameter's first value: a value changed on resume (optim.lr) is in the run's config.yaml
        logged = client.get_run(run_id).data.params
        params = [Param(k, str(v)[:6000]) for k, v in hparams_of(config).items() if k not in logged]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            client.log_batch(run_id, params=params[start:start + 100])
        log.info(f"MLflow run {run_id} in {uri}")

    def log(self, tag: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, tag, value, step=step)

    def end(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if self.finished else "KILLED")


MIRRORS = {"wandb": WandbMirror, "mlflow": MLflowMirror}


def wrap(writer, config: dict, run_dir: Path):
    """`writer` with the chosen trackers mirroring it, each continuing its run of an earlier start of this run
    (the ids in run_dir/loggers.json)."""
    names = chosen(config)
    if not names:
        return writer
    path = Path(run_dir) / IDS
    ids = read_json_object(path) if path.exists() else {}
    for name in names:
        writer = MIRRORS[name](writer, config["logger"][name], config, Path(run_dir), ids.get(name))
        ids[name] = writer.run_id
    atomic_write_json(path, ids)
    return writer
