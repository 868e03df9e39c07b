"""What a sweep adds to a single run: job folders named by the swept keys only, one GPU per parallel job, and
compiled kernels built once before the jobs start (never concurrently inside workers). The callback is used by
the launcher presets in conf/launcher/."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("krubench")

#: the Hydra key whose list of keys stay out of a sweep job's folder name (conf/config.yaml holds the keys that
#: never belong there: where data is read, threads, progress bar, logging and checkpoint intervals, ...)
NAME_EXCLUDES = "hydra.job.config.override_dirname.exclude_keys"


def is_sweep(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.startswith(("hparams_search=", "hydra.mode=MULTIRUN")) for a in argv)


def name_only_swept_keys(argv: list[str], config_yaml: Path) -> list[str]:
    """The command line of a sweep with the keys given one value (shared by every job) added to NAME_EXCLUDES, so
    a job folder is named by the keys that differ between jobs (`3_copy_T1000_rnn_model=rnn,seed=1`) instead of
    every override: twenty shared overrides made names too long for the file system. The keys travel in the
    jobs' own config (hydra.overrides.hydra), so every launcher, a requeued SLURM job and a rerun in the sweep's
    folder name a job alike. Unchanged when it is no sweep or the command sets NAME_EXCLUDES itself."""
    if not is_sweep(argv) or any(a.startswith(NAME_EXCLUDES + "=") for a in argv):
        return argv
    from omegaconf import OmegaConf

    never = list(OmegaConf.load(config_yaml).hydra.job.config.override_dirname.exclude_keys)
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # a malformed override: Hydra reports it itself, with its own message
        return argv
    shared = [o.key_or_group for o in overrides if not o.is_hydra_override() and not o.is_sweep_override()]
    excluded = list(dict.fromkeys(never + shared))
    return [*argv, f"{NAME_EXCLUDES}=[{','.join(excluded)}]"]


def job_device(device: str) -> str:
    """`trainer.device` for this job: in a multirun with several visible GPUs, `auto` becomes cuda:<job number
    mod GPU count>, so parallel jobs (launcher=joblib) spread over the GPUs; anything else is unchanged."""
    import torch  # here: `krubench --help` does not wait for torch

    gpus = torch.cuda.device_count()
    if device != "auto" or gpus < 2 or HydraConfig.get().mode != RunMode.MULTIRUN:
        return device
    return f"cuda:{HydraConfig.get().job.num % gpus}"


class PrebuildKernels(Callback):
    """Build the compiled Kronecker backends for this machine (C++ always, CUDA when a GPU is visible) in the
    launching process, before any job starts: jobs then only load the cached build. A backend that cannot
    build is reported once here; jobs fall back to the reference as they would anyway."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import torch

        from .ops import dispatch  # the slow torch.utils.cpp_extension import only when a sweep starts

        for backend in ("cpp", "cuda") if torch.cuda.is_available() else ("cpp",):
            why = dispatch.load(backend)
            log.info(f"prebuilt the {backend} Kronecker backend" if why is None else
                     f"the {backend} Kronecker backend is unavailable ({why}); jobs will use the reference")
