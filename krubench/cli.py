"""The `krubench` command: a Hydra app over the configs in conf/."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import config_dir, register_configs, schemas
from .runtime.files import StorageError
from .sweep import name_only_swept_keys

register_configs()
log = logging.getLogger("krubench")

#: errors that say what the user should change (config values, run directories, checkpoints, data): printed
#: as one message without a traceback, unless HYDRA_FULL_ERROR=1
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, StorageError)

#: launcher / hydra/launcher / hydra/sweeper options that need a Hydra plugin: (its module, the krubench extra)
PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}
PLUGIN_KEYS = {"launcher", "hydra/launcher", "hydra/sweeper", "hparams_search"}


def missing_plugin(overrides) -> str | None:
    """A message naming the pip command when an override chooses a launcher or sweeper whose Hydra plugin is
    not installed (Hydra itself only says "Could not find 'hydra/launcher/joblib'"); None if all are there."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in PLUGIN_KEYS:
            continue
        for choice in value.split(","):
            module, extra = PLUGINS.get(choice, (None, None))
            if module and importlib.util.find_spec(module) is None:
                return (f"{key}={choice} needs the Hydra plugin {module.split('.')[1].replace('_', '-')}, which is "
                        f"not installed: pip install \"krubench[{extra}]\"")
    return None


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """The files Hydra writes to <run dir>/.hydra/ (its output_subdir, null in conf/config.yaml), as name -> text:
    krubench writes them itself once the run is accepted."""
    hydra_cfg = HydraConfig.instance().cfg
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def run(cfg: DictConfig) -> float:
    """Train one run; returns the final validation metric (for Hydra sweepers)."""
    from .data.fetch import DataError
    from .runtime.interrupt import Interrupted, resume_command
    from .runtime.rundir import RunDirBusy, remove_if_unused
    from .sweep import job_device
    from .train import NonFiniteLoss, train  # imported here so `krubench --help` stays quick

    composed = hydra_files(cfg)
    cfg.trainer.device = job_device(cfg.trainer.device)  # parallel sweep jobs: one GPU each
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        results = train(cfg, run_dir, composed)
    except Interrupted as e:
        if e.finished:  # nothing left to resume
            log.warning(str(e))
        elif hydra_cfg.mode == RunMode.RUN:
            log.warning(f"{e}. To resume: {resume_command([*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task], run_dir)}")
        else:
            log.warning(f"{e}. To resume, rerun the sweep's command with hydra.sweep.dir="
                        f"{Path(hydra_cfg.sweep.dir).resolve()}: finished jobs re-report, the others resume")
        sys.exit(e.exit_code)  # 128 + the signal's number, as a shell reports a process the signal ended
    except (*USER_ERRORS, RunDirBusy, NonFiniteLoss, DataError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or hydra_cfg.mode != RunMode.RUN:
            raise  # a sweep reports a failed job itself and goes on with the others
        if not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra):
            remove_if_unused(run_dir)  # the fresh time-stamped folder of a refused run: nothing to keep
        print(f"krubench: error: {e}", file=sys.stderr)
        sys.exit(1)
    return results["final_val"][results["metric"]]


def unwritable_output(overrides, cwd: Path) -> str | None:
    """A message when the folder a run or sweep would write to cannot be written (a read-only file system, no
    permission): Hydra creates it before krubench runs, and would end in a traceback. None if it can be."""
    dirs = {k: v for k, _, v in (o.partition("=") for o in overrides) if k in ("hydra.run.dir", "hydra.sweep.dir")}
    for key, folder in (dirs or {"the working directory": str(cwd)}).items():
        path = Path(folder) if Path(folder).is_absolute() else cwd / folder
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK):  # also False for root on a read-only file system (EROFS)
            what = f"{key}={folder}" if key.startswith("hydra.") else f"{key} {cwd}"
            return (f"{what} cannot be written ({existing} is read-only or not writable): choose a writable folder "
                    "with hydra.run.dir=... (a sweep: hydra.sweep.dir=...), or run from a writable directory")
    return None


def chosen_options(overrides) -> dict[str, list[str]]:
    """The task and model options a command line chooses (each option of a swept choice), composed as `krubench`
    would: config.yaml's defaults, an experiment preset's, the command line's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    choices = [o for o in overrides if "=" in o and "." not in o.partition("=")[0] and not o.startswith(("+", "~"))]
    searchpath = [o for o in overrides if o.startswith("hydra.searchpath=")]  # conf folders of the user's own options
    swept = {k: v.split(",") for k, _, v in (o.partition("=") for o in choices) if k in ("task", "model")}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*searchpath, *(o.split(",")[0] for o in choices)])
    return {group: swept.get(group, [cfg[group].name]) for group in ("task", "model")}


def unknown_key_message(overrides) -> str | None:
    """For a `task.KEY=…` or `model.KEY=…` override whose option has no KEY (Hydra says only "Key 'KEY' not in
    'KRUConfig'"): the option's keys, and the options that have KEY; None if there is none such."""
    keyed = [(k.split(".")[0], k.split(".")[1]) for k, _, _ in (o.partition("=") for o in overrides)
             if k.startswith(("task.", "model.")) and k.count(".") == 1]
    if not keyed:
        return None
    try:
        chosen, options = chosen_options(overrides), schemas()
    except Exception:  # the command line fails for another reason, which Hydra has said
        return None
    for group, key in keyed:
        for option in chosen[group]:
            keys = [f.name for f in dataclasses.fields(options[group][option]) if f.name != "name"]
            if key not in keys:
                owners = [name for name, schema in options[group].items() if key in schema.__dataclass_fields__]
                return (f"{group}.{key} is not a key of {group}={option}, whose keys are {', '.join(keys)}: check the "
                        "spelling" + (f", or choose a {group} that has {key} ({group}={'|'.join(owners)})" if owners
                                      else "") + "; `krubench --help` shows every key of the composed config")
    return None


def main() -> None:
    """The console script: refuse a missing launcher/sweeper plugin with the pip command, or an output folder that
    cannot be written, then run Hydra."""
    if message := missing_plugin(sys.argv[1:]) or unwritable_output(sys.argv[1:], Path.cwd()):
        print(f"krubench: error: {message}", file=sys.stderr)
        sys.exit(1)
    sys.argv[1:] = name_only_swept_keys(sys.argv[1:], Path(config_dir()) / "config.yaml")
    try:
        run()
    except SystemExit as e:
        if e.code not in (0, None) and (message := unknown_key_message(sys.argv[1:])):
            print(f"krubench: error: {message}", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
