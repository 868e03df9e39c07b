"""The `krubench` command: a Hydra app over the configs in conf/."""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import register_configs
from .paths import config_dir

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run; returns the final validation metric (for Hydra sweepers)."""
    from .sweep import job_device
    from .train import train  # imported here so `krubench --help` stays quick

    cfg.trainer.device = job_device(cfg.trainer.device)  # parallel sweep jobs: one GPU each
    results = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return results["final_val"][results["metric"]]


if __name__ == "__main__":
    main()
