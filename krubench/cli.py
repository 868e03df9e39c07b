"""The `krubench` command: a Hydra app over the configs in conf/."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_configs
from .paths import config_dir

register_configs()

#: errors that say what the user should change (config values, run directories, checkpoints, data): printed
#: as one message without a traceback, unless HYDRA_FULL_ERROR=1
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run; returns the final validation metric (for Hydra sweepers)."""
    from .interrupt import Interrupted
    from .rundir import RunDirBusy
    from .sweep import job_device
    from .train import train  # imported here so `krubench --help` stays quick

    cfg.trainer.device = job_device(cfg.trainer.device)  # parallel sweep jobs: one GPU each
    try:
        results = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Interrupted as e:
        sys.exit(e.exit_code)  # 128 + the signal's number, as a shell reports a process the signal ended
    except (*USER_ERRORS, RunDirBusy) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode != RunMode.RUN:
            raise  # a sweep reports a failed job itself and goes on with the others
        print(f"krubench: error: {e}", file=sys.stderr)
        sys.exit(1)
    return results["final_val"][results["metric"]]


if __name__ == "__main__":
    main()
