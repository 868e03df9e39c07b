"""What a sweep adds to a single run: one GPU per parallel job, and compiled kernels built once before the
jobs start (never concurrently inside workers). Used by the launcher presets in conf/launcher/."""
from __future__ import annotations

import logging

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("krubench")


def job_device(device: str) -> str:
    """`trainer.device` for this job: in a multirun with several visible GPUs, `auto` becomes cuda:<job number
    mod GPU count>, so parallel jobs (launcher=joblib) spread over the GPUs; anything else is unchanged."""
    gpus = torch.cuda.device_count()
    if device != "auto" or gpus < 2 or HydraConfig.get().mode != RunMode.MULTIRUN:
        return device
    return f"cuda:{HydraConfig.get().job.num % gpus}"


class PrebuildKernels(Callback):
    """Build the compiled Kronecker backends for this machine (C++ always, CUDA when a GPU is visible) in the
    launching process, before any job starts: jobs then only load the cached build. A backend that cannot
    build is reported once here; jobs fall back to the reference as they would anyway."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from .ops import dispatch  # the slow torch.utils.cpp_extension import only when a sweep starts

        for backend in ("cpp", "cuda") if torch.cuda.is_available() else ("cpp",):
            why = dispatch.load(backend)
            log.info(f"prebuilt the {backend} Kronecker backend" if why is None else
                     f"the {backend} Kronecker backend is unavailable ({why}); jobs will use the reference")
