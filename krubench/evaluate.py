"""`krubench-eval RUN_DIR [--split test] [--checkpoint best|last]`: evaluate a run's checkpoint on a whole split of
its task (task.eval_limit does not apply), with the config stored in the checkpoint, and print each metric beside the memoryless baseline and its
unit (or JSON). Nothing in the run directory is written, so it can run beside a training run."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runtime import checkpoint

CHECKPOINTS = {"best": checkpoint.BEST, "last": checkpoint.LAST}


def evaluate(run_dir: Path, split: str = "val", which: str = "best", device: str = "auto",
             data_dir: str | None = None) -> dict:
    """{"split", "checkpoint", "step", "metrics", "baseline", "units", ...} of `which` checkpoint of the run in
    `run_dir` on `split`. Raises FileNotFoundError or ValueError saying what to pass instead."""
    from .models import build_model
    from .tasks import TASKS, build_task
    from .train import pick_device

    run_dir = Path(run_dir)
    if which not in CHECKPOINTS:
        raise ValueError(f"--checkpoint {which} is not one of {', '.join(CHECKPOINTS)}")
    path = run_dir / CHECKPOINTS[which]
    if not path.exists():
        present = [k for k, name in CHECKPOINTS.items() if (run_dir / name).exists()]
        raise FileNotFoundError(f"{path} does not exist: " + (
            f"use --checkpoint {present[0]}" if present else f"{run_dir} holds no checkpoint (is it a run directory?)"))
    ckpt = checkpoint.load(path)
    config = ckpt["config"]
    splits = TASKS[config["task"]["name"]].splits
    if split not in splits:
        raise ValueError(f"--split {split} is not a split of task {config['task']['name']}: use one of {', '.join(splits)}")
    dev = pick_device(device)
    task = build_task(config["task"], seed=config["seed"], data_dir=data_dir or config["data_dir"])
    model = build_model(config["model"], task.input_size, task.output_size).to(dev)
    model.load_state_dict(ckpt["model"])
    model.eval()
    metrics = task.evaluate(model, dev, split, whole=True)
    return {"run_dir": str(run_dir), "checkpoint": which, "step": ckpt["step"], "split": split,
            "task": config["task"]["name"], "model": config["model"]["name"], "seed": config["seed"],
            "metric": task.metric, "metrics": metrics, "baseline": task.baselines(), "units": task.units}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="krubench-eval", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("run_dir", type=Path, help="a run directory (holding best.pt / last.pt)")
    p.add_argument("--split", default="val", help="the task's split: val (default), or test where the task has one")
    p.add_argument("--checkpoint", default="best", choices=tuple(CHECKPOINTS),
                   help="best (best validation metric, default) or last")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="the data root, if the data moved since training (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = evaluate(args.run_dir, args.split, args.checkpoint, args.device, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"krubench-eval: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['task']} / {out['model']} seed {out['seed']}: {out['checkpoint']} checkpoint (step {out['step']}) "
          f"on {out['split']}")
    for k, v in out["metrics"].items():
        baseline = out["baseline"].get(k)
        print(f"  {k:<16} {v:.6g} {out['units'].get(k, '')}"
              + (f"   (memoryless baseline {baseline:.6g})" if baseline is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
