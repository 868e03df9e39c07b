"""The training loop: one task, one model, one optimizer, checkpoints and resume, TensorBoard.

Everything a run writes goes to `run_dir`: tb/ (TensorBoard events), last.pt and best.pt
(checkpoints), status.json, results.json, .lock (held while it runs), and Hydra's krubench.log and .hydra/.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import checkpoint, rundir, tb
from .csvlog import CSVMirror
from .config import validate
from .data.paths import data_dir as data_root
from .interrupt import Interrupted, StopOnSignal
from .memory import check_memory
from .models import build_model, default_factor_lr_scale
from .page_faults import PageFaultWatch
from .results import write_results, write_status
from .schedule import EarlyStopping, Schedule
from .tasks import build_task

log = logging.getLogger("krubench")


def build_optimizer(cfg: dict, model) -> torch.optim.Optimizer:
    """Two parameter groups: the model's factor_parameters() (Kronecker factors, a peer's W) at lr × factor_lr_scale,
    and everything else at lr."""
    factors = {id(p) for p in model.factor_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in factors]},
              {"params": model.factor_parameters(), "lr": cfg["lr"] * cfg["factor_lr_scale"]}]
    groups = [g for g in groups if g["params"]]
    common = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
    if cfg["name"] == "rmsprop":
        return torch.optim.RMSprop(groups, alpha=cfg["alpha"] or 0.99, momentum=cfg["momentum"] or 0.0,
                                   eps=cfg["eps"], **common)
    if cfg["name"] == "adam":
        return torch.optim.Adam(groups, betas=tuple(cfg["betas"] or (0.9, 0.999)), eps=cfg["eps"], **common)
    return torch.optim.SGD(groups, momentum=cfg["momentum"] or 0.0, **common)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments and step counts under the current config's hyperparameters (lr, weight decay, ...),
    so that an explicit optim.lr=... on resume applies instead of the checkpoint's value."""
    current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, values in zip(optimizer.param_groups, current):
        group.update(values)
        for p in group["params"]:  # RMSprop resumed with momentum > 0 after none: start its buffer at zero
            s = optimizer.state.get(p)
            if s and isinstance(optimizer, torch.optim.RMSprop) and group["momentum"] > 0:
                s.setdefault("momentum_buffer", torch.zeros_like(p))


def parameters_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name} but torch sees no CUDA device: use trainer.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


class NonFiniteLoss(FloatingPointError):
    pass


def non_finite_message(what: str, step: int, saved_step: int | None, lr: float, run_dir: Path) -> str:
    rerun = f"add optim.lr=<lower, e.g. {lr / 10:g}> hydra.run.dir={run_dir} to your command"
    if saved_step is None:
        return (f"the {what} became non-finite at step {step}, before any checkpoint: nothing was saved. "
                f"To start over in this directory, {rerun}; trainer.grad_clip or model.penalty may help too.")
    return (f"the {what} became non-finite at step {step}. {run_dir / checkpoint.LAST} is kept as it was: "
            f"the last checkpoint, from step {saved_step}. To continue from it, {rerun}; "
            f"trainer.grad_clip or model.penalty may help too.")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as `cfg` says, writing everything under `run_dir`, which it locks. Returns the results dict.
    status.json says running once the checks passed, then ok, failed or interrupted; a rerun into a finished
    run's directory that does not finish leaves its status.json as it was."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.locked(run_dir):
        before = rundir.read_status(run_dir)
        started = False

        def mark_running():
            nonlocal started
            started = True
            write_status(run_dir, "running")

        def on_second_signal(signum):
            if started and not rundir.is_finished(before):
                write_status(run_dir, "interrupted", error="a second signal: exited at once, without saving")

        try:
            with StopOnSignal(on_second_signal) as stop:
                results = _train(cfg, run_dir, mark_running, stop)
            write_status(run_dir, "ok", results["steps"])
            return results
        except BaseException as e:
            if started and rundir.is_finished(before):
                rundir.restore_status(run_dir, before)
            elif started and isinstance(e, Interrupted):
                write_status(run_dir, "interrupted", e.step)
            elif started:
                write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
            raise


def _train(cfg: DictConfig, run_dir: Path, mark_running, stop: StopOnSignal) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # plain dict, stored everywhere
    if config["optim"]["factor_lr_scale"] is None:  # null: the model's own split, stored as resolved
        config["optim"]["factor_lr_scale"] = default_factor_lr_scale(config["model"]["name"])
    validate(config)
    tcfg = config["trainer"]
    device = pick_device(tcfg["device"])
    check_memory(config, device)  # before the task and model allocate anything
    ckpt = checkpoint.load_for_resume(run_dir, config, tcfg["resume"])
    if leftovers := checkpoint.remove_temp_files(run_dir):
        log.info(f"removed {len(leftovers)} temporary file(s) of writes a killed run never finished")
    mark_running()
    if tcfg["threads"] > 0:
        torch.set_num_threads(tcfg["threads"])
    seed_everything(config["seed"], tcfg["deterministic"])

    task = build_task(config["task"], seed=config["seed"], data_dir=config["data_dir"])
    model = build_model(config["model"], task.input_size, task.output_size).to(device)
    optimizer = build_optimizer(config["optim"], model)
    schedule = Schedule(config["schedule"], optimizer, tcfg["steps"], task.higher_is_better)
    early = EarlyStopping(tcfg["early_stop_patience"], tcfg["early_stop_min_delta"], task.higher_is_better)
    penalty_weight = config["model"].get("penalty", 0.0)
    has_factors = bool(model.factor_parameters())
    counts, baselines, backend = model.param_counts(), task.baselines(), model.kron_backend(device)

    # ---- resume ----
    step, best, best_step, elapsed = 0, None, None, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        load_optimizer_state(optimizer, ckpt["optimizer"])
        checkpoint.set_rng_state(ckpt["rng"])
        task.load_state_dict(ckpt["task"])
        schedule.load_state_dict(ckpt.get("schedule", {}))  # absent from checkpoints older than schedules
        early.load_state_dict(ckpt.get("early_stopping", {}))
        step, best, best_step, elapsed = ckpt["step"], ckpt["best"], ckpt["best_step"], ckpt["elapsed"]
        log.info(f"resumed from {run_dir / checkpoint.LAST} at step {step}")
        for change in checkpoint.optim_changes(ckpt["config"], config):
            log.info(f"{change} on resume")
    saved_step = step if ckpt is not None else None  # the step last.pt holds

    log.info(task.describe())
    log.info(f"model {config['model']['name']}: {counts['total']:,} parameters, {counts['recurrent']:,} recurrent; "
             f"Kronecker backend: {backend}; device: {device}")
    log.info(f"run directory: {run_dir}")

    writer = tb.open_writer(run_dir, step, task)
    if tcfg["csv_log"]:
        writer = CSVMirror(writer, run_dir, step)
    if step == 0:
        writer.add_text("config", "    " + OmegaConf.to_yaml(config).replace("\n", "\n    "))
        writer.add_text("backend", f"Kronecker backend: {backend}, device: {device}")

    def save(path, at_step):
        checkpoint.save(path, model=model.state_dict(), optimizer=optimizer.state_dict(), step=at_step,
                        rng=checkpoint.rng_state(), task=task.state_dict(), best=best, best_step=best_step,
                        schedule=schedule.state_dict(), early_stopping=early.state_dict(),
                        elapsed=elapsed + time.time() - started, config=config)

    def save_last():
        nonlocal saved_step
        if not parameters_finite(model):  # a bad update: keep the last checkpoint, which is finite
            raise NonFiniteLoss(non_finite_message("parameters", step, saved_step, config["optim"]["lr"], run_dir))
        writer.flush()  # TensorBoard holds every point up to the checkpoint: a resume logs only later ones
        save(run_dir / checkpoint.LAST, step)
        saved_step = step

    def better(value):
        return best is None or (value > best if task.higher_is_better else value < best)

    steps = tcfg["steps"]
    started, window_start, window_steps = time.time(), time.time(), 0
    faults = PageFaultWatch(device)
    val = task.evaluate(model, device) if step >= steps or early.stopped else None  # finished: just re-report
    progress = {"auto": None, "always": False, "never": True}[tcfg["progress"]]
    model.train()
    with logging_redirect_tqdm(), tqdm(total=steps, initial=step, disable=progress, desc="train",
                                       dynamic_ncols=True) as bar:
        while step < steps and not early.stopped:
            loss = task.train_loss(model, step, device)
            penalty = model.unitary_penalty() if has_factors else None
            total = loss + penalty_weight * penalty if penalty_weight > 0 else loss
            optimizer.zero_grad(set_to_none=True)
            if torch.isfinite(total):
                total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"] or math.inf)
            if not torch.isfinite(total) or not torch.isfinite(grad_norm):
                what = "loss" if not torch.isfinite(total) else "gradient norm"
                raise NonFiniteLoss(non_finite_message(what, step, saved_step, config["optim"]["lr"], run_dir))
            schedule.apply(step + 1)  # the lrs of this update
            optimizer.step()
            step += 1
            window_steps += 1
            bar.update(1)
            if hint := faults.check(step):
                log.info(hint)

            if step % tcfg["log_every"] == 0 or step == steps:
                rate = window_steps / max(time.time() - window_start, 1e-9)
                window_start, window_steps = time.time(), 0
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/grad_norm", grad_norm.item(), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                writer.add_scalar("train/steps_per_s", rate, step)
                line = f"step {step}/{steps} loss {loss.item():.4g} (baseline {baselines['loss']:.4f})"
                if penalty is not None:
                    writer.add_scalar("kru/unitary_penalty", penalty.item(), step)
                    line += f" unitary penalty {penalty.item():.3g}"
                bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
                log.info(f"{line} {rate:.1f} steps/s")

            if step % tcfg["val_every"] == 0 or step == steps:
                val = task.evaluate(model, device)
                for k, v in val.items():
                    writer.add_scalar(f"val/{k}", v, step)
                tb.log_baselines(writer, baselines, step)
                log.info(f"step {step} validation " + ", ".join(f"{k} {v:.4f}" for k, v in val.items())
                         + f" | memoryless baseline loss {baselines['loss']:.4f}")
                if better(val[task.metric]) and parameters_finite(model):
                    best, best_step = val[task.metric], step
                    save(run_dir / checkpoint.BEST, step)
                schedule.on_validation(val[task.metric])
                if early.on_validation(val[task.metric]):
                    log.info(f"early stop at step {step}: validation {task.metric} has not improved on "
                             f"{early.best:.4g} by more than {early.min_delta:g} for {early.stale} validations")

            if step % tcfg["ckpt_every"] == 0 or step == steps or stop.requested or early.stopped:
                save_last()
            if stop.requested:
                writer.close()
                raise Interrupted(stop.requested, step)

    wall = elapsed + time.time() - started
    final_metrics = {f"hparam/val_{k}": v for k, v in val.items()} | {f"hparam/best_val_{task.metric}": best}
    held_out = {}
    if len(task.splits) > 1:  # held-out splits are measured once, with the best-on-validation weights
        model.load_state_dict(checkpoint.load(run_dir / checkpoint.BEST, map_location=device)["model"])
        held_out = {split: task.evaluate(model, device, split) for split in task.splits if split != "val"}
        for split, metrics in held_out.items():
            log.info(f"{split} (best checkpoint, step {best_step}): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            final_metrics |= {f"hparam/{split}_{k}": v for k, v in metrics.items()}
    tb.log_hparams(writer, config, final_metrics, step)
    writer.close()
    results = {
        "task": config["task"]["name"], "model": config["model"]["name"], "seed": config["seed"],
        "metric": task.metric, "final_val": val, "best_val": {task.metric: best, "step": best_step}, **held_out,
        "baseline": baselines, "params": counts, "steps": step, "wall_time_s": wall,
        "stopped_early": early.stopped, "backend": backend, "device": str(device), "config": config,
        "data_root": str(data_root(config["data_dir"])) if task.needs_data else None,  # where the data was read
    }
    write_results(run_dir, results)
    log.info(f"done: {step} steps in {wall:.0f} s; validation {task.metric} {val[task.metric]:.4f} "
             f"(best {best:.4f} at step {best_step}; memoryless baseline {baselines[task.metric]:.4f}); "
             f"results in {run_dir / 'results.json'}")
    return results
