"""Rewrite the results.json of runs written by an earlier krubench in today's form, once: krubench-report reads
only that form, and lists a run in an earlier one as skipped, naming this command. What changes: the config's
moved keys under their new names (config.MOVED_KEYS), the trainer and schedule keys the run predates at the
defaults it ran with (no schedule: constant; no early stopping; no CSV log), and the run's `setting`. Runs already in today's form are left as they are, byte for byte.

    python -m krubench.report.migrate RUN_DIRS...     # folders searched recursively for results.json
    python -m krubench.report.migrate --dry-run RUN_DIRS...

Prints each file it rewrites. Checkpoints need no migration: a resume reads an older checkpoint's config as
today's (config.upgrade_config)."""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ..config import config_dir, register_configs, setting_key, upgrade_config
from ..runtime.files import atomic_write_json, read_json_object
from ..runtime.results import RESULTS


@functools.cache
def added_defaults() -> dict[str, dict]:
    """The trainer and schedule sections as `krubench` composes them by default: what a run that predates one of
    their keys ran with."""
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config")
    return {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True) for k in ("trainer", "schedule")}


def migrated(results: dict) -> dict:
    """`results` in today's form (a new dict, keys in the order a run writes them)."""
    config = upgrade_config(results["config"])
    for group, values in added_defaults().items():
        config[group] = {**values, **config.get(group, {})}
    out = {}
    for key, value in results.items():
        out[key] = config if key == "config" else value
        if key == "task" and "setting" not in results:
            out["setting"] = setting_key(config["task"])
    return out


def needs_migration(results: dict) -> bool:
    return migrated(results) != results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--dry-run", action="store_true", help="list the files that would be rewritten")
    args = p.parse_args(argv)
    for path in sorted(f for root in args.run_dirs for f in root.rglob(RESULTS)):
        results = read_json_object(path)
        if needs_migration(results):
            print(path)
            if not args.dry_run:
                atomic_write_json(path, migrated(results))


if __name__ == "__main__":
    main()
