"""Steps/s of a real training step of every paper preset that runs on a CPU, for every model that has one,
side by side in one run (results go to BENCHMARKS.md "End to end").

A step is exactly the trainer's (krubench.train.Run.train_step): the task's own batch, loss and read-out, the
unitary penalty, gradient clipping, the schedule and the optimizer with its factor group. The models of one
preset run interleaved, round by round, so that load from other processes hits them alike. For models with
Kronecker factors the table adds the kernel share: the time of the krubench kernels (the recurrence's forward
and backward, torch.profiler's self time of the `krubench::` ops) over the profiled step's, i.e. how much of
a step the recurrence itself is. The last column is the preset's full budget at the measured rate.

    python scripts/bench_e2e.py                                   # all presets, 1 and 2 threads
    python scripts/bench_e2e.py --presets copy_T1000 --models kru lstm --threads 1
    python scripts/bench_e2e.py --override model.kernel=reference  # any config override, applied to all
    python scripts/bench_e2e.py --presets adding_T400 --models lstm --threads 1 --denormals flush keep
    python scripts/bench_e2e.py --memory --presets pixel_mnist --models kru --threads 2   # + the memory table

--memory adds, per preset and model, what a training step keeps for its backward pass (the tensors autograd
saves) and the peak resident memory one step adds (the RSS high-water mark over a step, in a fresh process
after a warm-up step), against the largest kept tensor (for the KRU: its states H, B·T·N complex).

The data sets are read from KRUBENCH_DATA (or data_dir's default): nothing is downloaded if they are there.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter on stderr

import torch
from torch.profiler import ProfilerActivity, profile

from krubench.config import config_dir, register_configs
from krubench.train import Run, configure_cpu, resolve_config, seed_everything

PRESETS = ("copy_T1000", "adding_T750", "pixel_mnist", "ptb_char", "music_jsb")
MODELS = ("kru", "lstm_kru", "rnn", "lstm")


def preset_config(preset: str, model: str, overrides: list[str]) -> dict | None:
    """The resolved config of paper/<preset>_<model> as `krubench experiment=...` would run it (None if there
    is no such preset)."""
    from hydra import compose, initialize_config_dir

    if not (Path(config_dir()) / "experiment" / "paper" / f"{preset}_{model}.yaml").exists():
        return None
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment=paper/{preset}_{model}", *overrides])
    return resolve_config(cfg)


def kernel_share(run: Run) -> float | None:
    """The krubench kernels' share of one profiled training step (None if the step runs none)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run.train_step()
        total = time.perf_counter() - start
    # ops registered with torch.library.register_autograd run their forward under an autograd wrapper
    # ("GeneratedBackwardFor_krubench_<op>"), which the profiler charges with the kernel's self time
    kernels = sum(e.self_cpu_time_total for e in prof.key_averages()
                  if e.key.startswith(("krubench::", "GeneratedBackwardFor_krubench_")))
    return kernels / 1e6 / total if kernels else None


def bench(preset: str, models: list[str], overrides: list[str], rounds: int, scratch: Path,
          denormals: list[str]) -> list[dict]:
    runs = {}
    for name in models:
        config = preset_config(preset, name, overrides)
        if config is None:
            continue
        for mode in denormals:
            torch.set_flush_denormal(mode == "flush")
            seed_everything(0, False)
            run = Run(config, scratch / f"{preset}_{name}_{mode}", torch.device("cpu"))
            run.model.train()
            run.train_step()  # warm-up: first-call allocations, kernel builds
            runs[name, mode] = run
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for (name, mode), run in runs.items():
            torch.set_flush_denormal(mode == "flush")
            start = time.perf_counter()
            run.train_step()
            times[name, mode].append(time.perf_counter() - start)
    torch.set_flush_denormal(True)
    rows = []
    for (name, mode), run in runs.items():
        best = min(times[name, mode])
        rows.append({"preset": preset, "model": name, "denormals": mode, "N": run.config["model"]["hidden_size"],
                     "B": run.config["task"]["batch_size"], "backend": run.backend, "best": best,
                     "median": statistics.median(times[name, mode]), "steps": run.steps,
                     "share": kernel_share(run) if run.has_factors else None})
    return rows


def kept_for_backward(run: Run) -> tuple[int, int]:
    """Bytes of the tensors one training step saves for its backward pass (each storage once), and of the
    largest of them."""
    seen = {}

    def pack(t):
        if t.device.type == "cpu" and t.numel():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run.train_step()
    return sum(seen.values()), max(seen.values(), default=0)


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: the peak-memory measurement needs Linux")


def peak_child(preset: str, model: str, overrides: list[str]) -> None:
    """Prints: bytes kept for backward, the largest kept tensor's bytes, the peak RSS one step adds."""
    config = preset_config(preset, model, overrides)
    seed_everything(0, False)
    with tempfile.TemporaryDirectory() as scratch:
        run = Run(config, Path(scratch), torch.device("cpu"))
        run.model.train()
        kept, largest = kept_for_backward(run)  # also the warm-up: first-call allocations, kernel builds
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark VmHWM to the current RSS
        base = _status_kib("VmRSS")
        run.train_step()
        print(kept, largest, (_status_kib("VmHWM") - base) * 1024)


def memory_rows(presets: list[str], models: list[str], overrides: list[str]) -> None:
    print("\n| preset | model | kept for backward MB | largest kept MB | step peak MB | kept / largest | peak / largest |")
    print("|---|---|---|---|---|---|---|")
    for preset in presets:
        for model in models:
            if preset_config(preset, model, overrides) is None:
                continue
            out = subprocess.run([sys.executable, __file__, "--peak-child", preset, model, *overrides],
                                 capture_output=True, text=True, check=True).stdout
            kept, largest, peak = map(int, out.split()[-3:])
            mb = 1 << 20
            print(f"| {preset} | {model} | {kept / mb:.0f} | {largest / mb:.0f} | {peak / mb:.0f} | "
                  f"{kept / largest:.2f} | {peak / largest:.2f} |", flush=True)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peak-child"]:  # the fresh process of one memory measurement
        return peak_child(argv[1], argv[2], argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help=f"paper presets (default: {PRESETS})")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="models (those without the preset are left out)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch CPU thread counts to run at")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up step each")
    p.add_argument("--override", nargs="*", default=[], help="config overrides for every run, e.g. trainer.threads=1")
    p.add_argument("--denormals", nargs="+", choices=("flush", "keep"), default=["flush"],
                   help="flush denormal floats to zero (the trainer's mode) or keep them; both: side by side "
                        "(the mode is the main thread's: compare at --threads 1)")
    p.add_argument("--memory", action="store_true", help="also the memory of a step (kept for backward, peak)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {args.rounds} rounds; ms per step: best (median)\n")
    print("| preset | model | N | B | threads | denormals | backend | ms per step | steps/s | kernel share | full budget |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for threads in args.threads:
            configure_cpu(threads)
            for preset in args.presets:
                for r in bench(preset, args.models, args.override, args.rounds, Path(scratch), args.denormals):
                    share = "" if r["share"] is None else f"{100 * r['share']:.0f}%"
                    print(f"| {r['preset']} | {r['model']} | {r['N']} | {r['B']} | {threads} | {r['denormals']} | {r['backend']} | "
                          f"{1e3 * r['best']:.0f} ({1e3 * r['median']:.0f}) | {1 / r['best']:.2f} | {share} | "
                          f"{hours(r['steps'] * r['best'])} |", flush=True)
    if args.memory:
        memory_rows(args.presets, args.models, args.override)


if __name__ == "__main__":
    main()
