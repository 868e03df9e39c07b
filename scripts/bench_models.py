"""Time per training step of every krubench model side by side, in one run (results go to BENCHMARKS.md).

A step is what the trainer does: forward over a (B, T) batch of 10-class one-hot inputs (the copy task's),
cross-entropy at every step, backward, gradient clipping and an RMSprop step with the factor group. Each
model is built as `model=<name> model.hidden_size=N` (its conf/model defaults otherwise) on the kernel the
trainer would pick; the models of one N run interleaved, round by round, so that load from other processes
hits them alike; the table gives the best round (and the median) in ms per step.

    python scripts/bench_models.py                           # CPU, N=128, B=20, T=1020 (copy T=1000)
    python scripts/bench_models.py --sizes 64 128 --length 200 --models kru urnn exprnn
    python scripts/bench_models.py --preset copy_T1000 --threads 1  # each model at its copy preset's N
    python scripts/bench_models.py --models urnn eurnn --sizes 256 512 --recurrence dense reference  # the peers' rule
    python scripts/bench_models.py --device cuda --batch 128
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from krubench.config import register_configs
from krubench.models import MODELS, build_model
from krubench.models.unitary import RECURRENCES
from krubench.optim import build_optimizer
from krubench.train import configure_cpu

CLASSES = 10  # copy task: 8 symbols, blank, delimiter


def model_config(name: str, hidden_size: int | None, preset: str | None) -> dict | None:
    """The model config composed as the CLI would: conf/model/<name>.yaml with hidden_size set, or the model
    of the preset paper/<preset>_<name> (None if there is none)."""
    from hydra import compose, initialize_config_dir

    from krubench.config import config_dir

    if preset is not None:
        if not (Path(config_dir()) / "experiment" / "paper" / f"{preset}_{name}.yaml").exists():
            return None
        overrides = [f"experiment=paper/{preset}_{name}"]
    else:
        overrides = [f"model={name}", f"model.hidden_size={hidden_size}"]
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)


def training_step(config: dict, batch: int, length: int, device: torch.device):
    """(a callable running one training step, the model's parameter counts)."""
    model = build_model(config, CLASSES, CLASSES).to(device)
    optim = build_optimizer({"name": "rmsprop", "lr": 1e-4, "alpha": None, "momentum": None, "eps": 1e-8,
                             "weight_decay": 0.0, "factor_lr_scale": 0.1}, model)
    x = torch.nn.functional.one_hot(torch.randint(CLASSES, (batch, length), device=device), CLASSES).float()
    target = torch.randint(CLASSES, (batch, length), device=device)

    def step():
        y, _ = model(x)  # (B, T, classes)
        loss = torch.nn.functional.cross_entropy(y.reshape(-1, CLASSES), target.reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, model.param_counts()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=[128], help="hidden sizes N")
    p.add_argument("--preset", help="instead of --sizes: each model as in its preset paper/<PRESET>_<model>, "
                                    "e.g. copy_T1000 (models without one are left out)")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--length", type=int, default=1020, help="time steps T per sequence (copy T=1000: 1020)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up step each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    p.add_argument("--recurrence", nargs="+", choices=RECURRENCES,
                   help="the unitary peers: a row for each model.recurrence given (default: their config's, auto)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    configure_cpu(args.threads)  # as the trainer: threads, denormals flushed
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, T {args.length}, {args.repeats} rounds\n")
    print("| model | N | recurrent params | total params | ms per step (best) | median | steps/s |")
    print("|---|---|---|---|---|---|---|")
    for N in [None] if args.preset else args.sizes:
        steps, counts, times, sizes = {}, {}, {}, {}
        for name in args.models:
            config = model_config(name, N, args.preset)
            if config is None:
                print(f"(no preset paper/{args.preset}_{name}: {name} left out)")
                continue
            for recurrence in args.recurrence if args.recurrence and "recurrence" in config else [None]:
                key = name if recurrence is None else f"{name} ({recurrence})"
                sizes[key] = config["hidden_size"]
                variant = config if recurrence is None else {**config, "recurrence": recurrence}
                steps[key], counts[key] = training_step(variant, args.batch, args.length, device)
                steps[key]()  # warm-up: first-call allocations, kernel builds
                times[key] = []
        for _ in range(args.repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        for name in steps:
            best, median = min(times[name]), statistics.median(times[name])
            print(f"| {name} | {sizes[name]} | {counts[name]['recurrent']:,} | {counts[name]['total']:,} | {1e3 * best:.1f} | "
                  f"{1e3 * median:.1f} | {1 / best:.2f} |")


if __name__ == "__main__":
    main()
