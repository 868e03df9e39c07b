"""The training loop: one task, one model, one optimizer, checkpoints and resume, TensorBoard.

Everything a run writes goes to `run_dir`: tb/ (TensorBoard events), last.pt and best.pt
(checkpoints), status.json, results.json, .lock (held while it runs), and Hydra's krubench.log and .hydra/
(and, when chosen, metrics.csv, wandb/, mlflow.db and loggers.json).
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

from .config import setting_key, validate
from .data.roots import data_dir as data_root
from .models import build_model, default_factor_lr_scale
from .optim import EarlyStopping, Schedule, build_optimizer, load_optimizer_state
from .runtime import checkpoint, files, loggers, rundir, tb
from .runtime.csvlog import CSVMirror
from .runtime.interrupt import Interrupted, StopOnSignal
from .runtime.memory import check_memory
from .runtime.page_faults import PageFaultWatch
from .runtime.results import machine, read_results, write_results, write_status
from .tasks import build_task

log = logging.getLogger("krubench")


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


def configure_cpu(threads: int) -> None:
    """torch's CPU threads (0: its default) and denormal floats flushed to zero. Gradients that fade over
    long sequences reach denormals (< 1.2e-38), each op on one ~100x slower on x86: flushing made adding
    T=400's LSTM 8x faster with identical losses (BENCHMARKS.md "Denormal floats")."""
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # before the first parallel region: worker threads inherit the mode


class NonFiniteLoss(FloatingPointError):
    pass


def non_finite_message(what: str, step: int, saved_step: int | None, fix: str, run_dir: Path) -> str:
    """The NaN stop's message: what became non-finite, what was kept, and the rerun with `fix` (key=value)."""
    rerun = f"add {fix} hydra.run.dir={run_dir} to your command"
    if saved_step is None:
        return (f"the {what} became non-finite at step {step}, before any checkpoint: nothing was saved. "
                f"To start over in this directory, {rerun}; trainer.grad_clip may help too.")
    return (f"the {what} became non-finite at step {step}. {run_dir / checkpoint.LAST} is kept as it was: "
            f"the last checkpoint, from step {saved_step}. To continue from it, {rerun}; "
            f"trainer.grad_clip may help too.")


def clock(seconds: float) -> str:
    """H:MM:SS, as SLURM prints times."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


#: the largest lr the NaN stop suggests: lr/10 of a wildly high lr (1e3) would diverge again
SAFE_LR = 1e-3


def train(cfg: DictConfig, run_dir: Path, hydra_files: dict[str, str] | None = None) -> dict:
    """Train as `cfg` says, writing everything under `run_dir`, which it locks. Returns the results dict (raises
    Interrupted after writing them when a stop signal came during the final evaluation).
    status.json says running once the checks passed (and `hydra_files` are written to .hydra/ then), then ok,
    failed or interrupted; a rerun into a finished run's directory that does not finish leaves its status.json
    as it was, and one that is refused leaves every file as it was."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.locked(run_dir):
        before = rundir.read_status(run_dir)
        rundir.refuse_if_checkpoints_gone(run_dir, before)
        started = False

        def mark_running():
            nonlocal started
            started = True
            write_status(run_dir, "running")
            rundir.write_hydra_files(run_dir, hydra_files or {})

        def on_second_signal(signum):
            if started and not rundir.is_finished(before):
                write_status(run_dir, "interrupted", error="a second signal: exited at once, without saving")

        try:
            with StopOnSignal(on_second_signal) as stop:
                results = _train(cfg, run_dir, mark_running, stop)
            write_status(run_dir, "ok", results["steps"])
        except BaseException as e:
            if started:
                settle_status(run_dir, before, e)
            raise
    if stop.requested:  # it came during the final evaluation, which finished: the exit status still says the signal
        signalled = Interrupted(stop.requested, results["steps"], finished=True)
        log.warning(str(signalled))
        raise signalled
    return results


def settle_status(run_dir: Path, before: dict | None, e: BaseException) -> None:
    """status.json after a run that started ended with `e`: a finished run's as it was, else interrupted or
    failed. On a full disk this write may fail too: then only the log says so."""
    if not rundir.is_finished(before) and not isinstance(e, Interrupted):
        # in krubench.log too: a sweep's or a batch job's console output is often gone
        log.error(f"run failed: {type(e).__name__}: {e}")
    try:
        if rundir.is_finished(before):
            rundir.restore_status(run_dir, before)
        elif isinstance(e, Interrupted):
            write_status(run_dir, "interrupted", e.step)
        else:
            write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
    except OSError as why:
        log.error(f"{run_dir / 'status.json'} could not be updated: {why}")


def resolve_config(cfg: DictConfig) -> dict:
    """The composed config as a run stores and uses it: a plain dict, defaults that depend on the model
    filled in, validated."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # plain dict, stored everywhere
    if config["optim"]["factor_lr_scale"] is None:  # null: the model's own split, stored as resolved
        config["optim"]["factor_lr_scale"] = default_factor_lr_scale(config["model"]["name"])
    validate(config)
    return config


def _train(cfg: DictConfig, run_dir: Path, mark_running, stop: StopOnSignal) -> dict:
    """The loop, top to bottom: check and resume, then step, log, validate and checkpoint until the budget
    (or early stopping, or a signal) ends it, then the held-out splits and results.json."""
    config = resolve_config(cfg)
    loggers.check(config)
    tcfg = config["trainer"]
    device = pick_device(tcfg["device"])
    check_memory(config, device)  # before the task and model allocate anything
    ckpt = checkpoint.load_for_resume(run_dir, config, tcfg["resume"])
    if leftovers := files.remove_temp_files(run_dir):
        log.info(f"removed {len(leftovers)} temporary file(s) of writes a killed run never finished")
    mark_running()
    configure_cpu(tcfg["threads"])
    seed_everything(config["seed"], tcfg["deterministic"])

    run = Run(config, run_dir, device)
    if ckpt is not None:
        run.resume(ckpt)
    run.open_log()

    steps, every = tcfg["steps"], lambda n: run.step % tcfg[n] == 0 or run.step == steps
    rereport = run.finished()  # a rerun into a finished run: just re-report
    stop.finishing = rereport  # nothing to train: a signal lets the evaluation finish
    val = None
    if rereport:  # never validated (stopped before its first validation, rerun with fewer steps): its weights are the best
        val = run.validate() if run.best is None else run.task.evaluate(run.model, device)
    progress = {"auto": None, "always": False, "never": True}[tcfg["progress"]]
    run.model.train()
    with logging_redirect_tqdm(), tqdm(total=steps, initial=run.step, disable=progress, desc="train",
                                       dynamic_ncols=True) as bar:
        while not run.finished():
            loss, penalty, grad_norm = run.train_step()
            bar.update(1)
            if every("log_every"):
                run.log_train(loss, penalty, grad_norm)
                bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
            if every("val_every"):
                val = run.validate()
            if every("ckpt_every") or stop.requested or run.early.stopped:
                run.save_last()
            if stop.requested:
                run.writer.close()
                raise Interrupted(stop.requested, run.step)
    stop.finishing = True
    return run.finish(val, rereport)


class Run:
    """One run's objects and counters, and the named steps of its loop (see _train)."""

    def __init__(self, config: dict, run_dir: Path, device: torch.device):
        tcfg = config["trainer"]
        self.config, self.run_dir, self.device, self.steps = config, run_dir, device, tcfg["steps"]
        self.task = build_task(config["task"], seed=config["seed"], data_dir=config["data_dir"])
        self.model = build_model(config["model"], self.task.input_size, self.task.output_size).to(device)
        self.optimizer = build_optimizer(config["optim"], self.model)
        self.schedule = Schedule(config["schedule"], self.optimizer, self.steps, self.task.higher_is_better)
        self.early = EarlyStopping(tcfg["early_stop_patience"], tcfg["early_stop_min_delta"],
                                   self.task.higher_is_better)
        self.penalty_weight = tcfg["unitary_penalty"]
        self.has_factors = bool(self.model.factor_parameters())
        self.grad_clip = tcfg["grad_clip"] or math.inf
        self.counts, self.baselines = self.model.param_counts(), self.task.baselines()
        self.backend = self.model.kron_backend(device)
        self.step, self.best, self.best_step, self.elapsed = 0, None, None, 0.0
        self.saved_step = None  # the step last.pt holds
        self.started = self.window_start = time.time()
        self.window_steps = 0
        self.faults = PageFaultWatch(device)

    def resume(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        checkpoint.set_rng_state(ckpt["rng"])
        self.task.load_state_dict(ckpt["task"])
        self.schedule.load_state_dict(ckpt.get("schedule", {}))  # absent from checkpoints older than schedules
        self.early.load_state_dict(ckpt.get("early_stopping", {}))
        self.step, self.best, self.best_step = ckpt["step"], ckpt["best"], ckpt["best_step"]
        self.elapsed = ckpt["elapsed"]
        self.saved_step = self.step
        log.info(f"resumed from {self.run_dir / checkpoint.LAST} at step {self.step}")
        for change in checkpoint.optim_changes(ckpt["config"], self.config):
            log.info(f"{change} on resume")

    def open_log(self) -> None:
        """The run's description in krubench.log; TensorBoard's writer (and the CSV, W&B and MLflow mirrors), from
        this step on."""
        config, counts = self.config, self.counts
        log.info(self.task.describe())
        log.info(f"model {config['model']['name']}: {counts['total']:,} parameters, {counts['recurrent']:,} "
                 f"recurrent; {self.model.describe_compute(self.device)}; device: {self.device}")
        log.info(f"run directory: {self.run_dir}")
        host = machine()
        log.info(f"machine: {host['cpu']}, {host['cores']} cores" + (f", {host['gpu']}" if "gpu" in host else ""))
        self.writer = tb.open_writer(self.run_dir, self.step, self.task)
        if config["trainer"]["csv_log"]:
            self.writer = CSVMirror(self.writer, self.run_dir, self.step)
        self.writer = loggers.wrap(self.writer, config, self.run_dir)
        if self.step == 0:
            self.writer.add_text("config", "    " + OmegaConf.to_yaml(config).replace("\n", "\n    "))
            self.writer.add_text("backend", f"{self.model.describe_compute(self.device)}, device: {self.device}")
        self.started = self.window_start = time.time()
        self.first_step = self.step  # this session's first: its pace, validations included, gives the ETA

    def finished(self) -> bool:
        return self.step >= self.steps or self.early.stopped

    def train_step(self):
        """One update. Returns the task loss, the unitary penalty (None without factors) and the gradient norm."""
        loss = self.task.train_loss(self.model, self.step, self.device)
        penalty = self.model.unitary_penalty() if self.has_factors else None
        total = loss + self.penalty_weight * penalty if self.penalty_weight > 0 else loss
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(total):
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if not torch.isfinite(total) or not torch.isfinite(grad_norm):
            what = ("loss" if not torch.isfinite(loss) else "unitary penalty term" if not torch.isfinite(total)
                    else "gradient norm")
            raise NonFiniteLoss(self.non_finite(what))
        self.schedule.apply(self.step + 1)  # the lrs of this update
        self.optimizer.step()
        self.step += 1
        self.window_steps += 1
        if hint := self.faults.check(self.step):
            log.info(hint)
        return loss, penalty, grad_norm

    def non_finite(self, what: str) -> str:
        if what == "unitary penalty term":
            fix = f"trainer.unitary_penalty=<lower, e.g. {self.penalty_weight / 10:g}>"
        else:
            fix = f"optim.lr=<lower, e.g. {min(self.config['optim']['lr'] / 10, SAFE_LR):g}>"
        return non_finite_message(what, self.step, self.saved_step, fix, self.run_dir)

    def log_train(self, loss, penalty, grad_norm) -> None:
        step, writer = self.step, self.writer
        rate = self.window_steps / max(time.time() - self.window_start, 1e-9)
        self.window_start, self.window_steps = time.time(), 0
        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("train/grad_norm", grad_norm.item(), step)
        writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
        writer.add_scalar("train/steps_per_s", rate, step)
        line = f"step {step}/{self.steps} loss {loss.item():.4g} (baseline {self.baselines['loss']:.4f})"
        if penalty is not None:
            writer.add_scalar("kru/unitary_penalty", penalty.item(), step)
            line += f" unitary penalty {penalty.item():.3g}"
        now = time.time()
        eta = (self.steps - step) * (now - self.started) / max(step - self.first_step, 1)  # this session's pace
        log.info(f"{line} {rate:.1f} steps/s, elapsed {clock(self.elapsed + now - self.started)}, ETA {clock(eta)}")

    def validate(self) -> dict:
        """The validation metrics, logged; best.pt when they improved; the schedule and early stopping told."""
        task, step = self.task, self.step
        val = task.evaluate(self.model, self.device)
        for k, v in val.items():
            self.writer.add_scalar(f"val/{k}", v, step)
        tb.log_baselines(self.writer, self.baselines, step)
        log.info(f"step {step} validation " + ", ".join(f"{k} {v:.4f}" for k, v in val.items())
                 + f" | memoryless baseline loss {self.baselines['loss']:.4f}")
        value = val[task.metric]
        better = self.best is None or (value > self.best if task.higher_is_better else value < self.best)
        if better and parameters_finite(self.model):
            self.best, self.best_step = value, step
            self.save(self.run_dir / checkpoint.BEST)
        self.schedule.on_validation(value)
        if self.early.on_validation(value):
            log.info(f"early stop at step {step}: validation {task.metric} has not improved on "
                     f"{self.early.best:.4g} by more than {self.early.min_delta:g} for {self.early.stale} validations")
        return val

    def save(self, path: Path) -> None:
        checkpoint.save(path, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), step=self.step,
                        rng=checkpoint.rng_state(), task=self.task.state_dict(), best=self.best,
                        best_step=self.best_step, schedule=self.schedule.state_dict(),
                        early_stopping=self.early.state_dict(), elapsed=self.elapsed + time.time() - self.started,
                        config=self.config)

    def save_last(self) -> None:
        if not parameters_finite(self.model):  # a bad update: keep the last checkpoint, which is finite
            raise NonFiniteLoss(self.non_finite("parameters"))
        self.writer.flush()  # TensorBoard holds every point up to the checkpoint: a resume logs only later ones
        self.save(self.run_dir / checkpoint.LAST)
        self.saved_step = self.step

    def held_out(self, earlier: dict) -> dict:
        """Every split's metrics with best.pt's weights, whole (val too: its own, unsubsampled), for tasks with held-out
        splits. Without a usable best.pt (moved aside, damaged), a re-report keeps the numbers results.json held
        (`earlier`, {} for a run that trained), and a run that trained uses its final weights."""
        splits = list(self.task.splits)
        if len(splits) < 2:
            return {}
        path = self.run_dir / checkpoint.BEST
        try:
            self.model.load_state_dict(checkpoint.load(path, map_location=self.device)["model"])
            weights = f"best checkpoint, step {self.best_step}"
        except checkpoint.CheckpointError:
            problem = (f"{path} is missing" if not path.exists() else f"{path} is damaged" if path.is_file()
                       else f"{path} is not a regular file")
            if kept := {split: earlier[split] for split in splits if isinstance(earlier.get(split), dict)}:
                log.warning(f"{problem}: the held-out numbers in results.json are kept")
                return kept
            weights = f"final weights, step {self.step}: {problem}"
            log.warning(f"{problem}: the held-out splits are evaluated with the final weights (step {self.step})")
        held_out = {split: self.task.evaluate(self.model, self.device, split, whole=True) for split in splits}
        for split, metrics in held_out.items():
            log.info(f"{split} ({weights}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return held_out

    def finish(self, val: dict, rereport: bool = False) -> dict:
        """Every split whole with the best-on-validation weights (results.json's "val" and "test"), the final
        validation whole, the HParams summary and results.json
        (`rereport`: a run that trained nothing this time keeps the trained run's provenance)."""
        task, config, run_dir, best = self.task, self.config, self.run_dir, self.best
        wall = self.elapsed + time.time() - self.started
        final_metrics = {f"hparam/val_{k}": v for k, v in val.items()} | {f"hparam/best_val_{task.metric}": best}
        if task.val_limit is not None:  # validation ran on a subsample: the final one reads the whole split
            val = task.evaluate(self.model, self.device, "val", whole=True)
            log.info("final validation on the whole split: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
            final_metrics |= {f"hparam/val_{k}": v for k, v in val.items()}
        earlier = read_results(run_dir) if rereport else {}  # read once: a damaged one is warned of once
        held_out = self.held_out(earlier)
        for split, metrics in held_out.items():
            if split != "val":  # hparam/val_* are the final weights'
                final_metrics |= {f"hparam/{split}_{k}": v for k, v in metrics.items()}
        tb.log_hparams(self.writer, config, final_metrics, self.step)
        self.writer.close()
        results = {
            "task": config["task"]["name"], "setting": setting_key(config["task"]), "model": config["model"]["name"],
            "seed": config["seed"],
            "metric": task.metric, "final_val": val, "best_val": {task.metric: best, "step": self.best_step},
            **held_out, "baseline": self.baselines, "params": self.counts, "steps": self.step, "wall_time_s": wall,
            "stopped_early": self.early.stopped, "backend": self.backend, "device": str(self.device),
            "config": config,
            "data_root": str(data_root(config["data_dir"])) if task.needs_data else None,  # where the data was read
        }
        write_results(run_dir, results, earlier)
        log.info(f"done: {self.step} steps in {wall:.0f} s; validation {task.metric} {val[task.metric]:.4f} "
                 f"(best {best:.4f} at step {self.best_step}; memoryless baseline {self.baselines[task.metric]:.4f}); "
                 f"results in {run_dir / 'results.json'}")
        return results
